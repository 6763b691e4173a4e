// test_tsan.cpp - the arena and the rules under threads, built with -fsanitize=thread
// (Makefile: build/tests/test_tsan). Linked directly, no preload.
//
// Not a Criterion binary: Criterion cannot start under ThreadSanitizer ("Could not initialize
// inheritable arena" with gcc, a crash inside libcriterion with clang; its shared arena
// collides with TSan's memory layout). A small harness takes its place: every test runs in a
// forked child of its own (so each builds a fresh arena, as Criterion would), a failed CHECK
// or a TSan report (halt_on_error=1, exit status 66) fails it.
//   test_tsan            runs every test, prints "ok NAME" / "FAIL NAME", exits 1 on failure
//   test_tsan NAME...    runs the named tests only
//
// What ThreadSanitizer must find nothing in:
//   - blocks allocated by one thread and freed by another (the thread caches, the central
//     lists, the per-page metadata and the per-granule block states);
//   - threads that exit while their caches hold blocks (the exit hook returns them);
//   - more threads than there are stats slots (the shared slot's atomic updates), and a
//     reader summing the per-thread counters while their owners write them;
//   - rules compiled once and matched concurrently by size and by caller (the caller index is
//     rebuilt while others read it, as after a dlclose).
// And what must hold once the threads are joined: every block came back (allocations ==
// frees, out_bytes == 0), no block was handed to two threads at once, every freed block
// read as zero.
#include <dlfcn.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "arena.hpp"
#include "callers.hpp"
#include "config.hpp"
#include "helpers.hpp"
#include "rules.hpp"
#include "runtime.hpp"

using namespace mlshim;

// ---- harness ------------------------------------------------------------------------------

namespace {

__attribute__((format(printf, 5, 6))) void check_at(bool ok, const char *what, const char *file, int line,
                                                  const char *fmt, ...) {
    if (ok) return;
    std::fprintf(stderr, "%s:%d: check failed: %s", file, line, what);
    if (*fmt) {
        std::fputs(": ", stderr);
        va_list ap;
        va_start(ap, fmt);
        std::vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    std::fputc('\n', stderr);
    std::fflush(stderr);
    std::_Exit(1);
}

struct TestCase {
    const char *name;
    void (*fn)();
};
std::vector<TestCase> &registry() {
    static std::vector<TestCase> tests;
    return tests;
}
struct Register {
    Register(const char *name, void (*fn)()) { registry().push_back({name, fn}); }
};

}  // namespace

// CHECK(cond) or CHECK(cond, "printf format", args...): ends the test's process on failure.
#define CHECK(cond, ...) check_at(static_cast<bool>(cond), #cond, __FILE__, __LINE__, "" __VA_ARGS__)
#define TSAN_TEST(suite, name)                                  \
    static void suite##_##name();                               \
    static Register register_##suite##_##name(#suite "::" #name, suite##_##name); \
    static void suite##_##name()

namespace {

SecureArena arena;
StatsPage *stats;

void make_arena(const std::vector<unsigned> &pools) {
    stats = stats_create(false);
    CHECK(nullptr != stats);
    stats->rules = kStatsRules;  // every rule entry counted (the shim sets the rules in force)
    ArenaOptions o;
    o.pool_bytes = 64u << 20;
    CHECK((arena.init(o, pools.data(), static_cast<unsigned>(pools.size()), stats, nullptr)) == (0));
}

// The process totals, as memlock-inspect sums them (rule totals plus the threads' rows).
StatsTotals totals() { return stats_totals(*stats, stats_rule_rows(stats)); }

bool all_zero(const void *p, std::size_t n) {
    auto *c = static_cast<const volatile unsigned char *>(p);
    for (std::size_t i = 0; i < n; ++i)
        if (c[i]) return false;
    return true;
}

// Small sizes (several classes) and the odd page run.
std::size_t pick_size(unsigned &seed) {
    seed = seed * 1103515245u + 12345u;
    static const std::size_t sizes[] = {16, 32, 48, 100, 256, 1000, 4096, 20000, 65536, 70000};
    return sizes[(seed >> 16) % (sizeof sizes / sizeof sizes[0])];
}

struct Block {
    unsigned char *p;
    std::size_t n;
    unsigned char fill;
};

// A queue of blocks handed from producers to consumers.
class Handoff {
public:
    void push(const Block &b) {
        std::lock_guard<std::mutex> g(m_);
        q_.push_back(b);
    }
    bool pop(Block &b) {
        std::lock_guard<std::mutex> g(m_);
        if (q_.empty()) return false;
        b = q_.back();
        q_.pop_back();
        return true;
    }

private:
    std::mutex m_;
    std::vector<Block> q_;
};

// Frees b in the calling thread and checks it was intact and reads as zero afterwards (the
// block sits in this thread's cache, or on a central list for page runs, until reused).
// Returns false on a broken block.
bool check_and_free(const Block &b, unsigned pool_wipes) {
    for (std::size_t i = 0; i < b.n; i += 61)
        if (b.p[i] != b.fill) return false;
    if (b.p[b.n - 1] != b.fill) return false;
    const bool small = b.n <= kMaxSmall;
    arena.free(b.p);
    // A small block stays in this thread's cache, so nobody can have reused it yet.
    if (pool_wipes && small && !all_zero(b.p, b.n)) return false;
    return true;
}

}  // namespace

TSAN_TEST(tsan_arena, blocks_freed_by_other_threads_and_threads_exiting_with_cached_blocks) {
    make_arena({kActionAll, kActionWipe | kActionDontdump});
    constexpr int kProducers = 3, kConsumers = 3, kPerProducer = 3000;
    Handoff handoff;
    std::atomic<int> producers_left{kProducers};
    std::atomic<int> broken{0};
    std::atomic<bool> stop_reader{false};

    // A reader that sums the per-thread counters while their owners write them.
    std::thread reader([&] {
        while (!stop_reader.load(std::memory_order_relaxed)) {
            StatsTotals t = totals();
            (void)t;
            (void)stats->out_bytes.load(std::memory_order_relaxed);
            std::this_thread::yield();
        }
    });
    std::vector<std::thread> threads;
    for (int t = 0; t < kProducers; ++t)
        threads.emplace_back([&, t] {
            unsigned seed = 17u + static_cast<unsigned>(t);
            std::vector<Block> own;
            for (int i = 0; i < kPerProducer; ++i) {
                const std::size_t n = pick_size(seed);
                const unsigned pool = (seed >> 8) & 1;
                auto *p = static_cast<unsigned char *>(arena.alloc(pool, n));
                if (!p) {
                    broken.fetch_add(1);
                    continue;
                }
                const auto fill = static_cast<unsigned char>(0x80 | (i & 0x7f));
                std::memset(p, fill, n);
                Block b{p, n, fill};
                if (i % 3 == 0) own.push_back(b);   // freed here, later
                else handoff.push(b);               // freed by a consumer
                if (own.size() > 40) {
                    if (!check_and_free(own.front(), 1)) broken.fetch_add(1);
                    own.erase(own.begin());
                }
            }
            // Free what is left, then allocate a few more into the cache and exit with them
            // cached (the blocks go back through the exit hook).
            for (const Block &b : own)
                if (!check_and_free(b, 1)) broken.fetch_add(1);
            for (int i = 0; i < 8; ++i) arena.free(arena.alloc(0, 32));
            producers_left.fetch_sub(1);
        });
    for (int t = 0; t < kConsumers; ++t)
        threads.emplace_back([&] {
            Block b;
            for (;;) {
                if (handoff.pop(b)) {
                    if (!check_and_free(b, 1)) broken.fetch_add(1);
                } else if (producers_left.load() == 0) {
                    if (!handoff.pop(b)) break;
                    if (!check_and_free(b, 1)) broken.fetch_add(1);
                } else {
                    std::this_thread::yield();
                }
            }
        });
    for (auto &t : threads) t.join();
    stop_reader.store(true);
    reader.join();

    CHECK((broken.load()) == (0), "%d blocks lost their contents, were not wiped or not allocated", broken.load());
    const StatsTotals t = totals();
    CHECK((t.allocs) == (static_cast<std::uint64_t>(kProducers) * (kPerProducer + 8)));
    CHECK((t.allocs) == (t.frees), "allocs %llu frees %llu", (unsigned long long)t.allocs, (unsigned long long)t.frees);
    CHECK((t.live) == (0));
    // Every thread that cached blocks has exited: every block is back on a central list.
    CHECK((stats->out_bytes.load()) == (0u), "out_bytes %llu after every thread exited",
                 (unsigned long long)stats->out_bytes.load());
    CHECK((stats->peak_bytes.load()) >= (1u));
}

TSAN_TEST(tsan_arena, no_block_is_handed_to_two_threads_at_once) {
    make_arena({kActionAll});
    constexpr int kThreads = 4, kRounds = 400, kHeld = 64;
    std::mutex m;
    std::set<void *> live;
    std::atomic<int> duplicates{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] {
            unsigned seed = 99u + static_cast<unsigned>(t);
            std::vector<void *> held;
            for (int r = 0; r < kRounds; ++r) {
                for (int i = 0; i < kHeld; ++i) {
                    void *p = arena.alloc(0, pick_size(seed) % 2000 + 1);
                    std::lock_guard<std::mutex> g(m);
                    if (!live.insert(p).second) duplicates.fetch_add(1);
                    held.push_back(p);
                }
                for (void *p : held) {
                    {
                        std::lock_guard<std::mutex> g(m);
                        live.erase(p);
                    }
                    arena.free(p);
                }
                held.clear();
            }
        });
    for (auto &t : threads) t.join();
    CHECK((duplicates.load()) == (0));
    const StatsTotals t = totals();
    CHECK((t.allocs) == (t.frees));
    CHECK((t.allocs) == (static_cast<std::uint64_t>(kThreads) * kRounds * kHeld));
}

// More threads than stats slots: the rest share one slot, updated with atomics.
TSAN_TEST(tsan_arena, more_threads_than_stats_slots_keep_exact_counters) {
    make_arena({kActionAll});
    constexpr int kThreads = kStatsSlots + 16, kPairs = 50;
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&] {
            // Hold one block across the barrier: every thread is registered (holds a slot,
            // or the shared one) while the others are.
            void *first = arena.alloc(0, 48);
            ready.fetch_add(1);
            while (!go.load()) std::this_thread::yield();
            for (int i = 0; i < kPairs; ++i) arena.free(arena.alloc(0, 16 + (i % 8) * 16));
            arena.free(first);
        });
    while (ready.load() < kThreads) std::this_thread::yield();
    // Every slot is taken now, so some threads are on the shared slot.
    const StatsTotals mid = totals();
    CHECK((mid.allocs) == (static_cast<std::uint64_t>(kThreads)));
    // The threads without a slot of their own count straight into the rule totals.
    CHECK((stats->rule_totals[0].matches.load()) > (0u), "no thread used the shared slot");
    go.store(true);
    for (auto &t : threads) t.join();
    const StatsTotals t = totals();
    CHECK((t.allocs) == (static_cast<std::uint64_t>(kThreads) * (kPairs + 1)));
    CHECK((t.frees) == (t.allocs));
    CHECK((t.live) == (0));
    CHECK((stats->out_bytes.load()) == (0u));
}

// ---- rules and callers ------------------------------------------------------------------

// The allocation path as the hooks see it: match() with the interposed function's return
// address. The two callers differ only in name; a symbol rule picks one of them.
extern "C" __attribute__((noinline)) int tsan_hook(std::size_t n) {
    int pool = match(n, __builtin_return_address(0));
    __asm__ volatile("" ::: "memory");
    return pool;
}
extern "C" __attribute__((noinline)) int tsan_secret_caller(std::size_t n) {
    int pool = tsan_hook(n);
    __asm__ volatile("" ::: "memory");
    return pool;
}
extern "C" __attribute__((noinline)) int tsan_plain_caller(std::size_t n) {
    int pool = tsan_hook(n);
    __asm__ volatile("" ::: "memory");
    return pool;
}

namespace {

Rule rule(const char *name, std::size_t lo, std::size_t hi, unsigned actions, const char *symbol = "") {
    Rule r;
    r.name = name;
    r.min_size = lo;
    r.max_size = hi;
    r.actions = actions;
    r.symbol = symbol;
    return r;
}

// The expected pool for a size from `secret` (or the plain) caller, by the rules below.
int expected_pool(std::size_t n, bool secret) {
    if (n == 32) return 0;
    if (n >= 512 && n <= 2048) return 1;
    if (secret && n >= 100 && n <= 200) return 2;
    return -1;
}

}  // namespace

TSAN_TEST(tsan_rules, rules_compiled_once_match_concurrently_while_the_caller_index_is_rebuilt) {
    const char *const text = R"({"version": 1, "rules": [
        {"name": "keys", "size": 32},
        {"name": "buffers", "min_size": 512, "max_size": 2048, "actions": ["wipe"]},
        {"name": "secret-callers", "min_size": 100, "max_size": 200, "symbol": "tsan_secret_*", "depth": 1,
         "actions": ["lock", "wipe"]}],
      "programs": ["test_tsan", "/usr/*/python3*"]})";
    Config config;
    std::string error;
    CHECK(parse_config(text, "tsan.json", config, error), "%s", error.c_str());
    const RuleTable table = compile_rules(config.rules);
    CHECK((table.pool_actions.size()) == (3u));
    for (const SizeRule &r : table.rules) g_rules[g_nrules++] = r;
    open_window(table.lo, table.hi);
    const std::string why = callers_init(table.conditions, nullptr);
    CHECK(why.empty(), "%s", why.c_str());
    // Sanity, single-threaded.
    CHECK((tsan_secret_caller(150)) == (2));
    CHECK((tsan_plain_caller(150)) == (-1));

    const std::string lib = memlock_test::shim_build_dir() + "/libs/libsecretlib.so";
    std::atomic<bool> stop{false};
    std::atomic<int> wrong{0};
    std::atomic<long> matched{0};
    // The loaded objects change under the matchers: a library comes and goes, and the shim's
    // dlclose hook says so (callers_objects_changed), which makes the next lookup re-index.
    std::thread loader([&] {
        for (int i = 0; i < 40 && !stop.load(); ++i) {
            void *h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
            if (h) dlclose(h);
            callers_objects_changed();
            std::this_thread::yield();
        }
    });
    std::vector<std::thread> matchers;
    for (int t = 0; t < 4; ++t)
        matchers.emplace_back([&, t] {
            static const std::size_t sizes[] = {1, 31, 32, 33, 99, 100, 150, 200, 201, 511, 512, 1000, 2048, 2049, 1u << 20};
            const char *const exes[] = {"/usr/bin/test_tsan", "/usr/local/bin/python3.11", "/bin/sh", "test_tsan"};
            for (int round = 0; round < 3000; ++round) {
                for (std::size_t n : sizes) {
                    const bool secret = (round + t) % 2 == 0;
                    const int got = secret ? tsan_secret_caller(n) : tsan_plain_caller(n);
                    if (got != expected_pool(n, secret)) wrong.fetch_add(1);
                    if (got >= 0) {
                        matched.fetch_add(1, std::memory_order_relaxed);
                        if (table.rules[static_cast<std::size_t>(got)].pool != static_cast<unsigned>(got)) wrong.fetch_add(1);
                    }
                }
                const bool want_prog = round % 4 != 2;
                if (program_matches(config, exes[round % 4]) != want_prog) wrong.fetch_add(1);
                if (!glob_match("tsan_secret_*", "tsan_secret_caller") || glob_match("tsan_secret_*", "tsan_plain_caller"))
                    wrong.fetch_add(1);
            }
        });
    for (auto &m : matchers) m.join();
    stop.store(true);
    loader.join();
    CHECK((wrong.load()) == (0), "%d wrong verdicts", wrong.load());
    CHECK((matched.load()) > (0));
}

// The whole path, concurrently: match, then allocate from the pool the rule picked.
TSAN_TEST(tsan_rules, matched_allocations_land_in_their_rules_pools) {
    std::vector<Rule> rules = {rule("keys", 32, 32, kActionAll), rule("buffers", 512, 2048, kActionWipe),
                               rule("nodump", 64, 64, kActionDontdump | kActionWipe)};
    const RuleTable table = compile_rules(rules);
    for (const SizeRule &r : table.rules) g_rules[g_nrules++] = r;
    open_window(table.lo, table.hi);
    make_arena(table.pool_actions);
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            unsigned seed = 5u + static_cast<unsigned>(t);
            static const std::size_t sizes[] = {32, 64, 512, 1000, 2048, 100};
            std::vector<void *> held;
            for (int i = 0; i < 5000; ++i) {
                seed = seed * 1103515245u + 12345u;
                const std::size_t n = sizes[(seed >> 16) % 6];
                const int pool = match(n, nullptr);
                if (pool < 0) {
                    if (n != 100) wrong.fetch_add(1);
                    continue;
                }
                void *p = arena.alloc(static_cast<unsigned>(pool), n);
                if (!p || arena.pool_of(p) != static_cast<unsigned>(pool) ||
                    arena.wipes(p) != ((table.pool_actions[static_cast<unsigned>(pool)] & kActionWipe) != 0))
                    wrong.fetch_add(1);
                held.push_back(p);
                if (held.size() > 16) {
                    arena.free(held.front());
                    held.erase(held.begin());
                }
            }
            for (void *p : held) arena.free(p);
        });
    for (auto &t : threads) t.join();
    CHECK((wrong.load()) == (0));
    const StatsTotals t = totals();
    CHECK((t.allocs) == (t.frees));
    CHECK((stats->out_bytes.load()) == (0u));
}

int main(int argc, char **argv) {
    int failed = 0, ran = 0;
    for (const TestCase &t : registry()) {
        bool wanted = argc < 2;
        for (int i = 1; i < argc; ++i) wanted = wanted || std::strcmp(argv[i], t.name) == 0;
        if (!wanted) continue;
        ++ran;
        std::fflush(nullptr);
        const pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) {
            t.fn();
            std::fflush(nullptr);
            std::_Exit(0);
        }
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        std::printf("%s %s", ok ? "ok" : "FAIL", t.name);
        if (!ok && WIFEXITED(status)) std::printf(" (exit %d%s)", WEXITSTATUS(status),
                                                  WEXITSTATUS(status) == 66 ? ": ThreadSanitizer report" : "");
        if (!ok && WIFSIGNALED(status)) std::printf(" (signal %d)", WTERMSIG(status));
        std::printf("\n");
        failed += !ok;
    }
    std::printf("test_tsan: %d test(s), %d failed\n", ran, failed);
    return failed || ran == 0 ? 1 : 0;
}
