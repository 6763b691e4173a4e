// test_faults.cpp - the arena when the OS says no: mlock and madvise failing through the core
// seam (memlock_set_syscalls), in process, under threads and across fork. Built with ASan and
// UBSan (Makefile: build/tests/test_stress). Criterion runs each test in a process of its own.
//
// After every run: no block lost its contents, every freed block of a wiping pool read zero,
// and the counters agree with what happened (allocations == frees once all is freed, each
// injected failure counted once, locked + unlocked == committed).
#include <criterion/criterion.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "arena.hpp"
#include "helpers.hpp"
#include "memlock.h"

using namespace mlshim;
using namespace memlock_test;

namespace {

SecureArena arena;
StatsPage *stats;
std::atomic<unsigned> reports{0};

// The process totals, as memlock-inspect sums them (rule totals plus the threads' rows).
StatsTotals totals() { return stats_totals(*stats, stats_rule_rows(stats)); }

void count_report(LogLevel, const char *, const char *) { reports.fetch_add(1); }

int make_arena(LockFailurePolicy policy, std::size_t max_locked = 64u << 20) {
    stats = stats_create(false);
    cr_assert_not_null(stats);
    stats->rules = kStatsRules;  // every rule entry counted (the shim sets the rules in force)
    ArenaOptions o;
    o.pool_bytes = 64u << 20;
    o.max_locked = max_locked;
    o.on_lock_failure = policy;
    const unsigned actions = kActionAll;
    return arena.init(o, &actions, 1, stats, count_report);
}

// ---- the fake system calls ------------------------------------------------------------------

// Every `g_every`-th lock call fails with `g_errno` (0: none fail); madvise fails with
// `g_madvise_errno` when set. Counters are atomic: threads lock concurrently.
std::atomic<unsigned> g_every{0};
std::atomic<int> g_errno{ENOMEM};
std::atomic<int> g_madvise_errno{0};
std::atomic<unsigned> g_lock_calls{0}, g_lock_failures{0};
memlock_syscalls g_real;
using Mlock2Fn = int (*)(const void *, std::size_t, unsigned);
Mlock2Fn g_real_mlock2 = nullptr;

int lock_result() {
    const unsigned every = g_every.load();
    if (every && g_lock_calls.fetch_add(1) % every == every - 1) {
        g_lock_failures.fetch_add(1);
        return g_errno.load();
    }
    return 0;
}
int fake_mlock(const void *addr, std::size_t len) {
    const int rc = lock_result();
    return rc ? rc : g_real.mlock(addr, len);
}
[[maybe_unused]] int fake_mlock2(const void *addr, std::size_t len, unsigned flags) {
    const int rc = lock_result();
    return rc ? rc : g_real_mlock2(addr, len, flags);
}
int fake_madvise(void *addr, std::size_t len, int advice) {
    const int rc = g_madvise_errno.load();
    return rc ? rc : g_real.madvise(addr, len, advice);
}

// The core may lock through mlock or mlock2 (MLOCK_ONFAULT): both go through the fake.
// mlock2 is set only where the seam has it.
template <typename T>
auto set_mlock2(T &table, int) -> decltype(table.mlock2 = fake_mlock2, void()) {
    g_real_mlock2 = table.mlock2;
    table.mlock2 = fake_mlock2;
}
template <typename T>
void set_mlock2(T &, long) {}

void install_fakes(unsigned every, int err = ENOMEM) {
    memlock_get_syscalls(&g_real);
    memlock_syscalls fake = g_real;
    fake.mlock = fake_mlock;
    fake.madvise = fake_madvise;
    set_mlock2(fake, 0);
    g_every = every;
    g_errno = err;
    memlock_set_syscalls(&fake);
}

bool all_zero(const void *p, std::size_t n) {
    auto *c = static_cast<const volatile unsigned char *>(p);
    for (std::size_t i = 0; i < n; ++i)
        if (c[i]) return false;
    return true;
}

std::size_t pick(unsigned &seed) {
    seed = seed * 1103515245u + 12345u;
    static const std::size_t sizes[] = {32, 100, 1000, 4096, 30000, 65536, 100000, 300000};
    return sizes[(seed >> 16) % 8];
}

struct Outcome {
    std::atomic<long> nulls{0}, broken{0}, unwiped{0}, got{0};
};

// Threads allocating, filling, checking and freeing; every freed small block must read zero
// (it sits in the freeing thread's cache). NULL must come with ENOMEM.
void run_threads(Outcome &o, int threads, int per_thread) {
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&o, t, per_thread] {
            unsigned seed = 7u + static_cast<unsigned>(t);
            struct Held {
                unsigned char *p;
                std::size_t n;
                unsigned char v;
            };
            std::vector<Held> held;
            auto release = [&o](const Held &h) {
                for (std::size_t i = 0; i < h.n; i += 127)
                    if (h.p[i] != h.v) {
                        o.broken.fetch_add(1);
                        break;
                    }
                arena.free(h.p);
                if (h.n <= kMaxSmall && !all_zero(h.p, h.n)) o.unwiped.fetch_add(1);
            };
            for (int i = 0; i < per_thread; ++i) {
                const std::size_t n = pick(seed);
                errno = 0;
                auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
                if (!p) {
                    if (errno != ENOMEM) o.broken.fetch_add(1);
                    o.nulls.fetch_add(1);
                    continue;
                }
                o.got.fetch_add(1);
                if (!all_zero(p, n)) o.unwiped.fetch_add(1);  // fresh blocks come out zero
                const auto v = static_cast<unsigned char>(0x80 | (i & 0x7f));
                std::memset(p, v, n);
                held.push_back({p, n, v});
                if (held.size() > 24) {
                    release(held.front());
                    held.erase(held.begin());
                }
            }
            for (const Held &h : held) release(h);
        });
    for (auto &t : ts) t.join();
}

void expect_clean(const Outcome &o) {
    cr_assert_eq(o.broken.load(), 0, "%ld blocks lost their contents (or NULL without ENOMEM)", o.broken.load());
    cr_assert_eq(o.unwiped.load(), 0, "%ld blocks not zero when fresh or after free", o.unwiped.load());
    const StatsTotals t = totals();
    cr_assert_eq(t.allocs, static_cast<std::uint64_t>(o.got.load()));
    cr_assert_eq(t.allocs, t.frees);
    cr_assert_eq(t.live, 0);
    cr_assert_eq(stats->out_bytes.load(), 0u, "every thread exited: every block is back");
}

// Runs `body` in a forked child with stderr captured; returns {wait status, stderr}.
template <typename F>
std::pair<int, std::string> in_child(F body) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    std::fflush(nullptr);
    const pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        body();
        _exit(0);
    }
    close(fds[1]);
    std::string err;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) err.append(buf, static_cast<std::size_t>(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return {status, err};
}

}  // namespace

// ---- mlock failing now and then ---------------------------------------------------------

// The arena locks its budget once, at start-up (no lock call after it): a failing lock
// there leaves the memory beyond what could be locked to the policy.
Test(faults, mlock_failing_at_start_up_under_fallback_serves_everything) {
    install_fakes(1);
    cr_assert_eq(make_arena(LockFailurePolicy::fallback), 0);
    const unsigned at_start = g_lock_calls.load();
    Outcome o;
    run_threads(o, 4, 1500);
    expect_clean(o);
    cr_assert_eq(o.nulls.load(), 0, "fallback never refuses");
    cr_assert_gt(g_lock_failures.load(), 0u, "no failure was injected");
    cr_assert_eq(g_lock_calls.load(), at_start, "no lock call after start-up");
    cr_assert_geq(stats->lock_failures.load(), 1u);
    cr_assert_eq(stats->fallbacks.load(), stats->lock_failures.load(), "each failure counted once");
    cr_assert_gt(stats->unlocked_bytes.load(), 0u);
    cr_assert_eq(stats->locked_bytes.load(), 0u);
    cr_assert_geq(stats->locked_bytes.load() + stats->unlocked_bytes.load(), stats->committed_bytes.load(),
                 "locked %llu + unlocked %llu < committed %llu", (unsigned long long)stats->locked_bytes.load(),
                 (unsigned long long)stats->unlocked_bytes.load(), (unsigned long long)stats->committed_bytes.load());
    cr_assert_eq(stats->denied.load(), 0u);
    cr_assert_eq(reports.load(), 1u, "one warning, not one per failure");
}

Test(faults, a_small_lock_budget_under_deny_refuses_some_and_keeps_the_rest) {
    install_fakes(0);
    cr_assert_eq(make_arena(LockFailurePolicy::deny, 256u << 10), 0);
    Outcome o;
    run_threads(o, 4, 1500);
    expect_clean(o);
    cr_assert_gt(o.nulls.load(), 0, "no allocation was refused");
    cr_assert_gt(o.got.load(), 0);
    cr_assert_geq(stats->lock_failures.load(), 1u);
    cr_assert_geq(stats->denied.load(), static_cast<std::uint64_t>(o.nulls.load()));
    cr_assert_eq(stats->fallbacks.load(), 0u);
    cr_assert_eq(stats->unlocked_bytes.load(), 0u);
    cr_assert_geq(stats->locked_bytes.load(), stats->committed_bytes.load(), "nothing unlocked was handed out: locked %llu, committed %llu",
                 (unsigned long long)stats->locked_bytes.load(), (unsigned long long)stats->committed_bytes.load());
}

Test(faults, mlock_failing_under_abort_dies_with_the_exact_fatal_line) {
    const auto [status, err] = in_child([] {
        install_fakes(1, EAGAIN);
        if (make_arena(LockFailurePolicy::abort) != 0) _exit(3);
        arena.alloc(0, 64);
        _exit(4);  // not reached
    });
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "status 0x%x, stderr: %s", status, err.c_str());
    const std::string expected = std::string("memlock-shim: fatal: cannot lock arena memory (policy on_lock_failure=abort): ") +
                                 memlock_strerror(EAGAIN) + "\n";
    cr_assert_str_eq(err.c_str(), expected.c_str());
}

// ---- madvise failing ------------------------------------------------------------------------

Test(faults, madvise_failing_at_init_leaves_an_arena_that_owns_nothing) {
    install_fakes(0);
    g_madvise_errno = EINVAL;
    const int rc = make_arena(LockFailurePolicy::fallback);
    cr_assert_eq(rc, EINVAL, "init returned %d", rc);
    int probe;
    cr_assert_not(arena.owns(&probe));
    cr_assert_not(arena.owns(nullptr));
    // The seam working again, a fresh arena works.
    g_madvise_errno = 0;
    static SecureArena second;
    const unsigned actions = kActionAll;
    ArenaOptions o;
    o.pool_bytes = 64u << 20;
    cr_assert_eq(second.init(o, &actions, 1, stats, nullptr), 0);
    void *p = second.alloc(0, 100);
    cr_assert_not_null(p);
    cr_assert(range_has_flag(p, 100, "dd"));
    second.free(p);
}

// ---- fork: the child locks again, and that may fail ---------------------------------------

namespace {

// Parent: blocks with contents; then the child, whose re-locking fails, checks and frees them.
void fork_with_failing_relock(LockFailurePolicy policy, int &status, std::string &err) {
    install_fakes(0);
    cr_assert_eq(make_arena(policy), 0);
    std::vector<unsigned char *> blocks;
    for (int i = 0; i < 64; ++i) {
        auto *p = static_cast<unsigned char *>(arena.alloc(0, i % 2 ? 48 : 5000));
        cr_assert_not_null(p);
        std::memset(p, i + 1, i % 2 ? 48 : 5000);
        blocks.push_back(p);
    }
    cr_assert(range_has_flag(blocks[0], 48, "lo"));
    g_every = 1;  // from here on every lock fails (nothing in the parent locks any more)
    std::tie(status, err) = in_child([&] {
        arena.prefork();
        const pid_t pid = fork();
        if (pid < 0) _exit(2);
        if (pid > 0) {
            arena.postfork_parent();
            int st = 0;
            waitpid(pid, &st, 0);
            _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st));
        }
        arena.postfork_child_locks();
        arena.postfork_child();
        for (std::size_t i = 0; i < blocks.size(); ++i) {
            const std::size_t n = i % 2 ? 48 : 5000;
            for (std::size_t k = 0; k < n; ++k)
                if (blocks[i][k] != static_cast<unsigned char>(i + 1)) _exit(5);
            arena.free(blocks[i]);
            if (n <= kMaxSmall && !all_zero(blocks[i], n)) _exit(6);
        }
        // Still serving, unlocked now.
        void *p = arena.alloc(0, 48);
        if (!p || !range_has_flag(p, 48, "dd")) _exit(7);
        if (range_has_flag(blocks[0], 48, "lo")) _exit(8);  // mlock is not inherited
        if (stats->lock_failures.load() < 1) _exit(9);
        if (reports.load() < 1) _exit(10);  // the operator was told
        _exit(0);
    });
}

}  // namespace

Test(faults, relock_failing_after_fork_under_fallback_keeps_serving) {
    int status = 0;
    std::string err;
    fork_with_failing_relock(LockFailurePolicy::fallback, status, err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x (exit %d), stderr: %s", status,
              WIFEXITED(status) ? WEXITSTATUS(status) : -1, err.c_str());
}

Test(faults, relock_failing_after_fork_under_abort_dies_with_the_exact_fatal_line) {
    int status = 0;
    std::string err;
    fork_with_failing_relock(LockFailurePolicy::abort, status, err);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 100 + SIGABRT, "grandchild status 0x%x, stderr: %s", status,
              err.c_str());
    const std::string expected =
        std::string("memlock-shim: fatal: cannot lock arena memory after fork (policy on_lock_failure=abort): ") +
        memlock_strerror(ENOMEM) + "\n";
    cr_assert_str_eq(err.c_str(), expected.c_str());
}
