// Unit tests of SecureArena, linked directly (no preload). Criterion runs each test in a
// process of its own, so every test builds a fresh arena.
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstddef>
#include <ctime>
#include <vector>

#include "arena.hpp"
#include "helpers.hpp"
#include "memlock.h"

using mlshim::SecureArena;
using namespace memlock_test;

namespace {

SecureArena arena;
mlshim::StatsPage *stats;
mlshim::ForkPlan fork_plan;  // where the arena plans a fork child's work (as the shim's)

// Purging as soon as anything is free (the unit tests' default is the shim's: 2 MiB of slack).
bool g_purge_at_once = false;

void make_arena(std::size_t max_locked = 64u << 20,
                mlshim::LockFailurePolicy policy = mlshim::LockFailurePolicy::fallback,
                std::size_t prealloc = 0, unsigned actions = mlshim::kActionAll,
                mlshim::ArenaReporter reporter = nullptr, unsigned npools = 1) {
    stats = mlshim::stats_create(false);
    cr_assert_not_null(stats);
    stats->rules = mlshim::kStatsRules;  // every rule entry counted (the shim sets the rules in force)
    mlshim::ArenaOptions o;
    o.pool_bytes = 64u << 20;
    if (g_purge_at_once) o.purge_slack = o.purge_burst = 0, o.purge_delay_ns = 0;
    o.max_locked = max_locked;
    o.on_lock_failure = policy;
    o.prealloc = prealloc;
    const std::vector<unsigned> each(npools, actions);  // the same actions for every pool
    cr_assert_eq(arena.init(o, each.data(), npools, stats, reporter), 0);
    arena.set_fork_plan(&fork_plan);
}

// The process totals, as memlock-inspect sums them (rule totals plus the threads' rows).
mlshim::StatsTotals totals() { return mlshim::stats_totals(*stats, mlshim::stats_rule_rows(stats)); }

bool all_zero(const void *p, std::size_t n) {
    auto *c = static_cast<const unsigned char *>(p);
    for (std::size_t i = 0; i < n; ++i)
        if (c[i]) return false;
    return true;
}

// The bytes a first touch at p makes resident: a huge page where the arena asked for them
// there (smaps "hg": the kernel faults in a huge page at a time where it can), else a page.
std::size_t bytes_per_touch(const void *p) {
    if (!range_has_flag(p, 1, "hg")) return memlock_page_size();
    const auto text = read_file("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
    cr_assert(text.has_value(), "a range advised huge pages, but no hpage_pmd_size");
    return std::stoull(*text);
}

// After make_arena, a first 32-byte block (`key`); returns the size the arena commits whole
// pages in, or 0 (said in the log) where transparent huge pages are off.
std::size_t huge_page_size(void *&key) {
    key = arena.alloc(0, 32);
    cr_assert_not_null(key);
    const std::size_t huge = bytes_per_touch(key);
    if (huge != memlock_page_size()) return huge;
    cr_log_warn("no transparent huge pages here (THP never or missing): the arena commits slab by slab");
    return 0;
}

// Before fork: plans the child's work as the shim's prepare handler does in a process with
// one thread (`planned`), or plans none (as in a process with more).
void plan_fork(bool planned) { arena.plan_fork(planned && !mlshim::stats_moves_after_fork(stats)); }

// In a fork child: takes the arena over as the shim's child handler does, its counters
// included: by the plan where it holds, else reading the arena.
void take_over_in_child() {
    arena.postfork_child_locks();
    if (fork_plan.holds()) {
        arena.postfork_child_planned(fork_plan);
        return;
    }
    stats = mlshim::stats_after_fork(stats, arena.thread_slot(), false);
    arena.set_stats(stats);
    arena.postfork_child();
}

// Forks a child that takes the arena over (plan_fork(planned), take_over_in_child) and exits
// with what `child` returns there. Returns the child's wait status.
template <typename F> int status_of_fork_child(F child, bool planned = true) {
    plan_fork(planned);
    arena.prefork();
    const pid_t pid = fork();
    if (pid == 0) {
        take_over_in_child();
        _exit(child());
    }
    arena.postfork_parent();
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return status;
}

}  // namespace

Test(arena_classes, every_size_gets_the_smallest_class_that_fits) {
    for (std::size_t n = 0; n <= mlshim::kMaxSmall; ++n) {
        unsigned c = SecureArena::class_of(n);
        cr_assert_lt(c, mlshim::kNumClasses, "size %zu", n);
        cr_assert_geq(SecureArena::class_size(c), n, "size %zu", n);
        if (c > 0) cr_assert_lt(SecureArena::class_size(c - 1), n, "size %zu", n);
    }
    // Waste above 128 bytes is at most a quarter of the block.
    for (unsigned c = 8; c < mlshim::kNumClasses; ++c)
        cr_assert_leq(SecureArena::class_size(c) - SecureArena::class_size(c - 1), SecureArena::class_size(c) / 4);
}

Test(arena, blocks_are_zeroed_locked_and_not_dumped) {
    make_arena();
    const std::size_t sizes[] = {1, 16, 32, 100, 4096, 65536, 65537, 1u << 20};
    for (std::size_t n : sizes) {
        auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
        cr_assert_not_null(p, "size %zu", n);
        cr_assert(arena.owns(p));
        cr_assert_geq(arena.usable_size(p), n);
        cr_assert(all_zero(p, arena.usable_size(p)), "fresh block of %zu bytes is zero", n);
        cr_assert(range_has_flag(p, n, "lo"), "size %zu locked", n);
        cr_assert(range_has_flag(p, n, "dd"), "size %zu dontdump", n);
        std::memset(p, 0xa5, n);
    }
    cr_assert_gt(vm_locked_kb(), 0);
    cr_assert_gt(stats->locked_bytes.load(), 0u);
}

Test(arena, a_freed_block_reads_as_zero_and_comes_back_zero) {
    make_arena();
    for (std::size_t n : {32u, 1000u, 70000u}) {
        auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
        std::memset(p, 0x5a, n);
        arena.free(p);
        cr_assert(all_zero(p, n), "freed block of %zu bytes wiped", n);
        auto *q = static_cast<unsigned char *>(arena.alloc(0, n));
        cr_assert_eq(q, p, "the freed block is reused");
        cr_assert(all_zero(q, n));
        arena.free(q);
    }
}

// The whole block is wiped, up to its usable size (a program may use that much), for every
// way of wiping: inline stores (up to 128 bytes), wide stores with a tail of less than 128
// bytes (160, 18,432), whole 128-byte steps (4 KiB, the largest class), a page run.
Test(arena, a_freed_block_is_wiped_up_to_its_usable_size) {
    make_arena();
    for (std::size_t n : {100u, 150u, 16712u, 4096u, 65536u, 70000u}) {
        auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
        cr_assert_not_null(p);
        const std::size_t usable = arena.usable_size(p);
        std::memset(p, 0x5a, usable);
        arena.free(p);
        cr_assert(all_zero(p, usable), "freed block of %zu bytes wiped up to %zu", n, usable);
    }
}

// Whatever a program wrote wherever in a block (its first and last usable byte, bytes alone
// in otherwise empty 128-byte steps, a run across steps, the slack past the size asked for),
// no byte of it is left once the block is freed: read back through /proc/self/mem, as a
// debugger or a core dump writer reads it, and through the block when it is handed out again
// (slab blocks).
// Every way of wiping: inline stores (24, 100), wide blocks with a tail under 128 bytes (150,
// 1,000, 16,712 in 18,432), whole 128-byte steps (4 KiB, the largest class), page runs.
Test(arena, a_freed_block_keeps_no_byte_written_anywhere_in_it) {
    make_arena();
    std::uint32_t seed = 20261203;
    auto next = [&seed] {
        seed = seed * 1664525u + 1013904223u;
        return static_cast<std::size_t>(seed >> 8);
    };
    for (std::size_t n : {24u, 100u, 150u, 1000u, 4096u, 16712u, 65536u, 70000u, 1u << 20}) {
        for (int round = 0; round < 8; ++round) {
            auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
            cr_assert_not_null(p);
            const std::size_t usable = arena.usable_size(p);
            p[0] = 0x01;
            p[usable - 1] = 0x80;
            for (int k = 0; k < 16; ++k) p[next() % usable] = static_cast<unsigned char>(next() | 1);
            const std::size_t at = next() % usable;
            std::memset(p + at, 0xff, std::min(usable - at, next() % 300));
            arena.free(p);
            const auto back = read_through_proc_mem(p, usable);
            cr_assert(back.has_value(), "/proc/self/mem reads the freed block of %zu bytes", n);
            cr_assert(all_zero(back->data(), usable), "freed block of %zu bytes (round %d) is zero up to %zu", n, round,
                      usable);
            // A slab block is handed out again at once (the thread's cache); a page run may
            // be carved elsewhere, and is then read back through /proc/self/mem only.
            auto *q = static_cast<unsigned char *>(arena.alloc(0, n));
            if (n <= mlshim::kMaxSmall) cr_assert_eq(q, p, "the freed block of %zu bytes is handed out again", n);
            cr_assert(all_zero(q, arena.usable_size(q)), "the next block of %zu bytes comes back zero", n);
            arena.free(q);
        }
    }
}

Test(arena, a_pool_without_wipe_keeps_contents) {
    make_arena(64u << 20, mlshim::LockFailurePolicy::fallback, 0, mlshim::kActionLock | mlshim::kActionDontdump);
    auto *p = static_cast<unsigned char *>(arena.alloc(0, 64));
    std::memset(p, 0x77, 64);
    cr_assert_not(arena.wipes(p));
    arena.free(p);
    cr_assert_eq(p[10], 0x77);
}

Test(arena, every_power_of_two_alignment) {
    make_arena();
    for (std::size_t align = 16; align <= (1u << 20); align <<= 1) {
        for (std::size_t n : {std::size_t{1}, align / 2 + 1, align, 3 * align + 5}) {
            void *p = arena.alloc(0, n, align);
            cr_assert_not_null(p);
            cr_assert_eq(reinterpret_cast<std::uintptr_t>(p) % align, 0u, "align %zu size %zu", align, n);
            cr_assert_geq(arena.usable_size(p), n);
            arena.free(p);
        }
    }
}

// Blocks of 2 MiB aligned to 2 MiB (huge-page buffers) lie side by side: 24 of them, 48 MiB,
// fit a 64 MiB max_locked, locked, and the arena's address space grows by little more than
// they take. Carving each with 2 MiB of room for its alignment spent 4 MiB of max_locked per
// block, and the 17th was refused.
Test(arena, blocks_of_a_large_alignment_spend_what_they_take) {
    make_arena(64u << 20, mlshim::LockFailurePolicy::deny);
    constexpr std::size_t kTwo = 2u << 20;
    void *p[24];
    for (auto &q : p) {
        q = arena.alloc(0, kTwo, kTwo);
        cr_assert_not_null(q, "block %zu of 24", static_cast<std::size_t>(&q - p));
        cr_assert_eq(reinterpret_cast<std::uintptr_t>(q) % kTwo, 0u);
        static_cast<unsigned char *>(q)[kTwo - 1] = 1;
        cr_assert(range_has_flag(q, kTwo, "lo"));
    }
    const std::uint64_t reserved = stats->reserved_bytes.load();
    cr_assert_leq(reserved, (24u + 2u) * kTwo, "%llu", static_cast<unsigned long long>(reserved));
    for (void *q : p) arena.free(q);
    // Freed, they are taken again where they were.
    for (int round = 0; round < 4; ++round) {
        void *q = arena.alloc(0, kTwo, kTwo);
        cr_assert_not_null(q);
        arena.free(q);
    }
    cr_assert_eq(stats->reserved_bytes.load(), reserved);
}

// A buffer that grows, freed and asked for again larger each time (1 MiB, 2 MiB, ... 40 MiB,
// one live at a time), takes its free pages back and carves only what it lacks: 40 MiB of
// blocks fit a 48 MiB max_locked. Carved after its free run instead, each doubling spent the
// address space and the lock of all the sizes before it, and the 32 MiB block was refused.
Test(arena, a_block_larger_than_the_free_run_at_the_frontier_grows_it) {
    make_arena(48u << 20, mlshim::LockFailurePolicy::deny);
    constexpr std::size_t kMiB = 1u << 20;
    for (std::size_t k = 1; k <= 40; ++k) {
        auto *p = static_cast<unsigned char *>(arena.alloc(0, k * kMiB));
        cr_assert_not_null(p, "%zu MiB", k);
        p[k * kMiB - 1] = 1;
        cr_assert(range_has_flag(p, k * kMiB, "lo"), "%zu MiB", k);
        arena.free(p);
    }
    const std::uint64_t reserved = stats->reserved_bytes.load();
    cr_assert_leq(reserved, 48 * kMiB, "%llu", static_cast<unsigned long long>(reserved));
    cr_assert_eq(stats->denied.load(), 0u);
}

Test(arena, errno_is_preserved_by_free) {
    make_arena();
    void *small = arena.alloc(0, 40), *large = arena.alloc(0, 200000);
    errno = 1234;
    arena.free(small);
    arena.free(large);
    cr_assert_eq(errno, 1234);
}

Test(arena, double_free_is_fatal, .signal = SIGABRT) {
    make_arena();
    void *p = arena.alloc(0, 32);
    arena.free(p);
    arena.free(p);
}

Test(arena, double_free_of_a_large_block_is_fatal, .signal = SIGABRT) {
    make_arena();
    void *p = arena.alloc(0, 300000);
    arena.free(p);
    arena.free(p);
}

Test(arena, interior_pointer_free_is_fatal, .signal = SIGABRT) {
    make_arena();
    auto *p = static_cast<char *>(arena.alloc(0, 64));
    arena.free(p + 16);
}

// p + 8 is inside the granule whose state says "live block": only its alignment tells it apart.
Test(arena, a_pointer_inside_a_blocks_first_granule_is_fatal, .signal = SIGABRT) {
    make_arena();
    auto *p = static_cast<char *>(arena.alloc(0, 32));
    arena.free(p + 8);
}

Test(arena, never_allocated_pointer_free_is_fatal, .signal = SIGABRT) {
    make_arena();
    auto *p = static_cast<char *>(arena.alloc(0, 64));
    arena.free(p + 64 * 100);  // a block of the same slab never handed out
}

Test(arena, ten_thousand_small_secrets_lock_at_most_125_percent_of_their_bytes) {
    make_arena();
    // Warm up one block so the first slab's lock is not charged to the measurement alone.
    void *warm = arena.alloc(0, 32);
    std::uint64_t before = stats->locked_bytes.load();
    std::vector<void *> blocks;
    for (int i = 0; i < 10000; ++i) blocks.push_back(arena.alloc(0, 32));
    std::uint64_t grown = stats->locked_bytes.load() - before;
    cr_assert_leq(grown * 100, 10000u * 32 * 125, "locked %llu bytes for 320000", (unsigned long long)grown);
    for (void *b : blocks) arena.free(b);
    arena.free(warm);
}

Test(arena, max_locked_reached_under_deny_refuses_with_enomem) {
    make_arena(128 * 1024, mlshim::LockFailurePolicy::deny);
    std::vector<void *> got;
    void *p;
    errno = 0;
    while ((p = arena.alloc(0, 4096)) != nullptr && got.size() < 100000) got.push_back(p);
    cr_assert_null(p);
    cr_assert_eq(errno, ENOMEM);
    cr_assert_gt(got.size(), 0u);
    cr_assert_leq(stats->locked_bytes.load(), 128u * 1024);
    cr_assert_geq(stats->lock_failures.load(), 1u);
    cr_assert_geq(stats->denied.load(), 1u);
    // Memory already handed out stays usable and locked.
    cr_assert(range_has_flag(got[0], 4096, "lo"));
}

Test(arena, max_locked_reached_under_fallback_serves_unlocked_but_dontdump) {
    make_arena(128 * 1024, mlshim::LockFailurePolicy::fallback);
    void *last = nullptr;
    for (int i = 0; i < 200; ++i) last = arena.alloc(0, 4096);
    cr_assert_not_null(last);
    cr_assert_geq(stats->fallbacks.load(), 1u);
    cr_assert_gt(stats->unlocked_bytes.load(), 0u);
    cr_assert_leq(stats->locked_bytes.load(), 128u * 1024);
    cr_assert(range_has_flag(last, 4096, "dd"));
    cr_assert(range_has_flag(last, 4096, "lo", false));
}

Test(arena, max_locked_reached_under_abort_is_fatal, .signal = SIGABRT) {
    make_arena(128 * 1024, mlshim::LockFailurePolicy::abort);
    for (int i = 0; i < 200; ++i) arena.alloc(0, 4096);
}

namespace {
int failing_mlock(const void *, std::size_t) { return EPERM; }
int failing_mlock2(const void *, std::size_t, unsigned) { return EPERM; }
}  // namespace

Test(arena, an_mlock_error_at_start_up_follows_the_policy) {
    memlock_syscalls fake{failing_mlock, nullptr, nullptr, failing_mlock2, nullptr};
    memlock_set_syscalls(&fake);
    make_arena(64u << 20, mlshim::LockFailurePolicy::deny);
    errno = 0;
    cr_assert_null(arena.alloc(0, 32));
    cr_assert_eq(errno, ENOMEM);
    cr_assert_geq(stats->denied.load(), 1u);
}

namespace {
std::atomic<int> g_lock_calls{0};
int counting_mlock(const void *, std::size_t) { return ++g_lock_calls, 0; }
int counting_mlock2(const void *a, std::size_t n, unsigned flags) {
    ++g_lock_calls;
    return static_cast<int>(::syscall(SYS_mlock2, a, n, flags)) ? errno : 0;
}
}  // namespace

// A seccomp sandbox installed after start-up may kill on mlock: the arena locks its budget
// once, at start-up, and after that neither new slabs, page runs, nor giving memory back
// make a lock or unlock call.
Test(arena, no_lock_call_after_start_up) {
    memlock_syscalls fake{counting_mlock, counting_mlock, nullptr, counting_mlock2, nullptr};
    memlock_set_syscalls(&fake);
    g_purge_at_once = true;
    make_arena();
    int at_start = g_lock_calls.load();
    cr_assert_eq(at_start, 1, "one lock call for the pool's budget");
    std::vector<void *> blocks;
    for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 20000; ++i) blocks.push_back(arena.alloc(0, i % 2 ? 48 : 3000));
        for (int i = 0; i < 20; ++i) blocks.push_back(arena.alloc(0, 1u << 20));
        for (void *b : blocks) arena.free(b);
        blocks.clear();
    }
    cr_assert_eq(g_lock_calls.load(), at_start);
    cr_assert_gt(stats->purged_bytes.load(), 0u);
    memlock_set_syscalls(nullptr);
}

// Freed memory beyond the slack goes back to the kernel: it stays reserved, dontdump and
// locked (on fault), and comes back zero-filled and locked.
Test(arena, freed_memory_goes_back_to_the_kernel_and_returns_locked) {
    g_purge_at_once = true;
    make_arena();
    std::vector<void *> blocks;
    for (int i = 0; i < 20000; ++i) {
        void *b = arena.alloc(0, 1000);
        std::memset(b, 0x5a, 1000);
        blocks.push_back(b);
    }
    void *big = arena.alloc(0, 8u << 20);
    std::memset(big, 0x5a, 8u << 20);
    std::uint64_t peak_committed = stats->committed_bytes.load();
    cr_assert_geq(peak_committed, 20000u * 1000 + (8u << 20));
    for (void *b : blocks) arena.free(b);
    arena.free(big);
    // What stays: the thread cache's blocks and the slabs they are in.
    cr_assert_leq(stats->committed_bytes.load(), 1u << 20, "committed %llu after freeing everything",
                  (unsigned long long)stats->committed_bytes.load());
    cr_assert_leq(stats->locked_bytes.load(), stats->committed_bytes.load());
    cr_assert_geq(stats->purged_bytes.load(), peak_committed - (1u << 20));
    cr_assert(range_has_flag(big, 8u << 20, "dd"));
    cr_assert(range_has_flag(big, 8u << 20, "lo"));
    unsigned char resident[16];
    cr_assert_eq(memlock_resident(big, 16 * 4096, resident), 0);
    for (unsigned char r : resident) cr_assert_eq(r & 1, 0, "given back");
    void *again = arena.alloc(0, 8u << 20);
    cr_assert(all_zero(again, 8u << 20));
    cr_assert(range_has_flag(again, 8u << 20, "lo"));
    cr_assert_geq(stats->committed_bytes.load(), 8u << 20);
    arena.free(again);
}

// A slab freed by one size class serves any other, and page runs: mixed phases stay within
// 1.3x of their live bytes.
Test(arena, slabs_freed_by_one_class_serve_another) {
    make_arena();
    const std::size_t sizes[] = {16, 200, 3000, 40, 100000};
    std::uint64_t worst = 0;
    for (std::size_t n : sizes) {
        std::vector<void *> blocks;
        std::size_t count = (24u << 20) / n;
        for (std::size_t i = 0; i < count; ++i) blocks.push_back(arena.alloc(0, n));
        std::uint64_t live = stats->out_bytes.load(), committed = stats->committed_bytes.load();
        cr_assert_leq(committed * 10, live * 13, "size %zu: committed %llu for %llu live", n,
                      (unsigned long long)committed, (unsigned long long)live);
        worst = std::max<std::uint64_t>(worst, committed);
        for (void *b : blocks) arena.free(b);
    }
    cr_assert_leq(worst, 40u << 20);
}

Test(arena, address_space_beyond_the_arena_is_a_few_percent) {
    make_arena();
    const std::uint64_t reserved = stats->reserved_bytes.load() + arena.side_bytes();
    cr_assert_leq(reserved, (std::uint64_t{64} << 20) * 108 / 100, "reserved %llu for a 64 MiB arena",
                  (unsigned long long)reserved);
}

// Bytes of the mappings kept out of core dumps: the arena's, and no other in this process.
std::uint64_t dontdump_bytes() {
    std::uint64_t n = 0;
    for (const Mapping &m : read_smaps())
        if (m.has_flag("dd")) n += m.end - m.start;
    return n;
}

// A thread's first cache of each pool lies in the mapping made at start-up for the pools:
// each mapping more is one more for every fork to copy and for every fork child to unmap.
Test(arena, the_first_threads_caches_map_no_memory) {
    make_arena(64u << 20, mlshim::LockFailurePolicy::fallback, 0, mlshim::kActionAll, nullptr, 3);
    const std::uint64_t before = dontdump_bytes();
    for (unsigned pool = 0; pool < 3; ++pool) {
        void *b = arena.alloc(pool, 32);
        cr_assert_not_null(b);
        arena.free(b);
    }
    cr_assert_eq(dontdump_bytes(), before, "the caches of three pools mapped %lld bytes more",
                 static_cast<long long>(dontdump_bytes() - before));
}

// Only what is used is mapped: at start-up one region (not max_arena, not the lock budget),
// later what the blocks need plus what is left of the last region; the side tables follow it.
Test(arena, only_the_address_space_in_use_is_mapped) {
    make_arena();
    const std::uint64_t region = mlshim::kMinRegion;
    cr_assert_leq(stats->reserved_bytes.load(), region, "a 64 MiB arena maps one region at start-up");
    // Beyond a twelfth of the blocks' range: the pools and three tables, each in whole pages.
    const std::uint64_t slack = std::max<std::uint64_t>(64u << 10, 4 * memlock_page_size()) * 12;
    cr_assert_leq(arena.side_bytes() * 12, stats->reserved_bytes.load() + slack, "side tables for it only");
    std::vector<void *> blocks;
    for (int i = 0; i < 40; ++i) {
        blocks.push_back(arena.alloc(0, 1u << 20));
        cr_assert_not_null(blocks.back());
    }
    const std::uint64_t reserved = stats->reserved_bytes.load();
    cr_assert_geq(reserved, 40u << 20);
    cr_assert_leq(reserved, (40u << 20) + 2 * region, "what the blocks need: %llu", (unsigned long long)reserved);
    cr_assert_leq(arena.side_bytes() * 12, reserved + slack, "side tables: %zu", arena.side_bytes());
    for (void *b : blocks) arena.free(b);
}

// Past its first reservation the arena grows by regions appended to it: blocks there are
// arena blocks like any other (owned, dontdump, wiped, freed, grown in place), and a block
// larger than the arena gets a region of its own.
Test(arena, the_arena_grows_by_regions_beyond_its_first_reservation) {
    make_arena(1u << 20);
    std::vector<unsigned char *> small;
    for (std::size_t i = 0; i < (80u << 20) / 4096; ++i) {  // 80 MiB of 4 KiB blocks
        auto *p = static_cast<unsigned char *>(arena.alloc(0, 4096));
        cr_assert_not_null(p, "block %zu", i);
        std::memset(p, 0x5a, 4096);
        small.push_back(p);
    }
    cr_assert_geq(stats->reserved_bytes.load(), 80u << 20, "more regions");
    unsigned char *later = small.back();
    cr_assert(arena.owns(later));
    cr_assert_eq(arena.pool_of(later), 0u);
    cr_assert(range_has_flag(later, 4096, "dd"), "a later region is dontdump");
    auto *big = static_cast<unsigned char *>(arena.alloc(0, 128u << 20));
    cr_assert_not_null(big, "a block twice the arena's size");
    cr_assert(arena.owns(big));
    cr_assert_geq(arena.usable_size(big), 128u << 20);
    cr_assert(range_has_flag(big, 128u << 20, "dd"));
    big[0] = 1, big[(128u << 20) - 1] = 2;
    cr_assert_geq(stats->reserved_bytes.load(), 208u << 20);
    for (unsigned char *p : small) arena.free(p);
    arena.free(big);
    cr_assert_eq(stats->overflows.load() + stats->denied.load(), 0u);
    // Freed memory of the later regions serves again, zeroed.
    auto *again = static_cast<unsigned char *>(arena.alloc(0, 96u << 20));
    cr_assert_not_null(again);
    cr_assert(all_zero(again, 4096) && all_zero(again + (96u << 20) - 4096, 4096));
    arena.free(again);
}

// A program that goes idle right after freeing its data makes no further call that could
// purge: the free that takes the pool past slack + burst (4 MiB by default, docs/shim.md)
// gives the pages back at once.
Test(arena, an_idle_pool_keeps_at_most_slack_and_burst_after_its_data_goes) {
    make_arena();
    constexpr std::size_t kIdleBound = 4u << 20;
    std::vector<void *> runs;
    for (int i = 0; i < 30; ++i) {
        runs.push_back(arena.alloc(0, 1u << 20));
        cr_assert_not_null(runs.back());
        std::memset(runs.back(), 0x5a, 1u << 20);
    }
    for (void *r : runs) arena.free(r);
    const std::uint64_t committed = stats->committed_bytes.load();
    cr_assert_leq(committed, kIdleBound, "%llu bytes committed, nothing live",
                  (unsigned long long)committed);
    cr_assert_geq(stats->purged_bytes.load(), (30u << 20) - kIdleBound);
}

// Free pages between the slack and slack + burst wait for the purge delay, then go back at
// the pool's next operation off the thread cache: here a thread cache's first refill.
Test(arena, free_pages_beyond_the_slack_go_back_at_a_refill_after_the_delay) {
    stats = mlshim::stats_create(false);
    cr_assert_not_null(stats);
    mlshim::ArenaOptions o;
    o.pool_bytes = 64u << 20;
    o.purge_slack = o.purge_burst = 2u << 20;
    o.purge_delay_ns = 200'000'000;
    unsigned actions = mlshim::kActionAll;
    cr_assert_eq(arena.init(o, &actions, 1, stats, nullptr), 0);
    void *runs[4], *between[4];  // live runs between the freed ones keep them from merging
    for (int i = 0; i < 4; ++i) {
        runs[i] = arena.alloc(0, 1u << 20);
        std::memset(runs[i], 0x5a, 1u << 20);
        between[i] = arena.alloc(0, 128u << 10);
    }
    // (Asked before any purge: a huge page given back in part no longer says "hg".)
    const std::size_t ahead = bytes_per_touch(runs[3]) > memlock_page_size() ? bytes_per_touch(runs[3]) : 0;
    for (int i = 0; i < 3; ++i) arena.free(runs[i]);  // past the slack: the first purge
    const std::uint64_t purged = stats->purged_bytes.load();
    cr_assert_gt(purged, 0u);
    arena.free(runs[3]);  // past the slack again, within the delay: kept
    cr_assert_eq(stats->purged_bytes.load(), purged);
    const timespec pause{0, 300'000'000};
    nanosleep(&pause, nullptr);
    void *b = arena.alloc(0, 32);  // the thread's first block of its class: a refill
    cr_assert_not_null(b);
    cr_assert_gt(stats->purged_bytes.load(), purged, "the refill after the delay gave the free run back");
    // What stays committed: the slack, the live blocks and, on huge pages, the rest of the
    // huge page the pool committed whole (not in a free run: it is not given back).
    cr_assert_leq(stats->committed_bytes.load(), o.purge_slack + (1u << 20) + ahead);
    arena.free(b);
    for (void *r : between) arena.free(r);
}

// Past the growth cap (16 times the first reservation) the arena refuses; under fallback
// the caller serves the block from the next allocator.
Test(arena, past_the_growth_cap_a_block_is_left_to_the_next_allocator_under_fallback) {
    make_arena();
    errno = 0;
    cr_assert_null(arena.alloc(0, std::size_t{2} << 30));
    cr_assert(arena.serves_overflow());
    cr_assert_eq(stats->denied.load(), 0u);
    cr_assert_leq(stats->reserved_bytes.load(), std::uint64_t{16} * (64u << 20));
}

Test(arena, a_block_larger_than_the_arena_is_denied_under_deny) {
    make_arena(64u << 20, mlshim::LockFailurePolicy::deny);
    errno = 0;
    cr_assert_null(arena.alloc(0, 128u << 20));
    cr_assert_eq(errno, ENOMEM);
    cr_assert_not(arena.serves_overflow());
    cr_assert_eq(stats->denied.load(), 1u);
}

Test(arena, a_block_larger_than_the_arena_is_fatal_under_abort, .signal = SIGABRT) {
    make_arena(64u << 20, mlshim::LockFailurePolicy::abort);
    arena.alloc(0, 128u << 20);
}

Test(arena, prealloc_locks_up_front) {
    make_arena(64u << 20, mlshim::LockFailurePolicy::fallback, 1u << 20);
    std::uint64_t locked = stats->locked_bytes.load();
    cr_assert_geq(locked, 1u << 20);
    void *p = arena.alloc(0, 32);
    cr_assert(range_has_flag(p, 32, "lo"));
    cr_assert_eq(stats->locked_bytes.load(), locked, "served from the preallocated memory");
}

Test(arena, counters_follow_allocations) {
    make_arena();
    void *a = arena.alloc(0, 32), *b = arena.alloc(0, 100), *c = arena.alloc(0, 100000);
    mlshim::StatsTotals t = totals();
    cr_assert_eq(t.allocs, 3u);
    const std::size_t page = memlock_page_size();
    cr_assert_eq(t.live_bytes(), 32u + 112u + (100000 + page - 1) / page * page);  // a page run: whole pages
    arena.free(a);
    arena.free(b);
    arena.free(c);
    t = totals();
    cr_assert_eq(t.frees, 3u);
    cr_assert_eq(t.live_bytes(), 0u);
    cr_assert_geq(stats->peak_bytes.load(), 32u + 112u + (100000 + page - 1) / page * page);
}

namespace {

void *churn(void *arg) {
    auto *shared = static_cast<std::vector<void *> *>(arg);
    std::vector<void *> mine;
    for (int round = 0; round < 200; ++round) {
        for (int i = 0; i < 100; ++i) {
            auto *p = static_cast<unsigned char *>(arena.alloc(0, 16 + (i * 37) % 3000));
            if (!p) abort();
            p[0] = 1;
            mine.push_back(p);
        }
        for (void *p : mine) arena.free(p);
        mine.clear();
    }
    for (int i = 0; i < 1000; ++i) shared->push_back(arena.alloc(0, 48));
    return nullptr;
}

}  // namespace

Test(arena, threads_share_the_arena_and_free_each_others_blocks) {
    make_arena();
    std::vector<void *> from[2];
    pthread_t t[2];
    for (int i = 0; i < 2; ++i) pthread_create(&t[i], nullptr, churn, &from[i]);
    for (auto &th : t) pthread_join(th, nullptr);
    // Free what the (now exited) threads allocated, from this thread.
    for (auto &v : from)
        for (void *p : v) arena.free(p);
    mlshim::StatsTotals s = totals();
    cr_assert_eq(s.allocs, 2u * (200 * 100 + 1000));
    cr_assert_eq(s.allocs, s.frees);
    cr_assert_eq(s.live_bytes(), 0u);
}

namespace {

void *alloc_for_rule_3(void *arg) {
    auto *out = static_cast<std::vector<void *> *>(arg);
    for (int i = 0; i < 1000; ++i) out->push_back(arena.alloc(0, 40, 16, 3));
    return nullptr;
}

mlshim::StatsRuleFigures rule_figures(unsigned rule) {
    const mlshim::StatsRuleRow *rows[mlshim::kStatsSlots];
    for (unsigned i = 0; i < mlshim::kStatsSlots; ++i) rows[i] = mlshim::stats_rule_rows(stats) + i;
    return mlshim::stats_rule_figures(*stats, rule, rows, mlshim::kStatsSlots);
}

}  // namespace

// Per-rule counts follow a block from the thread that allocated it (and exited: its row is
// published) to the thread that frees it; a page run counts too. 40 bytes are a 48-byte block.
Test(arena, per_rule_counts_follow_blocks_across_threads) {
    make_arena();
    std::vector<void *> from[2];
    for (auto &v : from) {  // one after the other: the second sees the first's published total
        pthread_t t;
        pthread_create(&t, nullptr, alloc_for_rule_3, &v);
        pthread_join(t, nullptr);
    }
    for (void *p : from[0]) arena.free(p);
    for (std::size_t i = 0; i < from[1].size(); i += 2) arena.free(from[1][i]);
    void *big = arena.alloc(0, 100000, 16, 7);
    arena.free(big);
    const mlshim::StatsRuleFigures f = rule_figures(3);
    cr_assert_eq(f.matches, 2000u);
    cr_assert_eq(f.live_bytes, 500u * 48);
    cr_assert_eq(f.peak_bytes, 2000u * 48);
    const mlshim::StatsRuleFigures g = rule_figures(7);
    cr_assert_eq(g.matches, 1u);
    cr_assert_eq(g.live_bytes, 0u);
    const std::size_t page = memlock_page_size();
    cr_assert_eq(g.peak_bytes, (100000 + page - 1) / page * page);  // a page run: whole pages
    cr_assert_eq(rule_figures(0).matches, 0u);
}

namespace {

struct Allocs {
    unsigned rule, n, freed;  // allocate n 16-byte blocks for `rule`, free `freed` of them
};

void *allocate_and_keep(void *arg) {
    const auto *a = static_cast<const Allocs *>(arg);
    for (unsigned i = 0; i < a->n; ++i) {
        void *p = arena.alloc(0, 16, 16, a->rule);
        if (i < a->freed) arena.free(p);
    }
    return nullptr;
}

void run_thread(Allocs a) {
    pthread_t t;
    pthread_create(&t, nullptr, allocate_and_keep, &a);
    pthread_join(t, nullptr);
}

// The sums over the rule entries of the per-rule figures.
mlshim::StatsTotals rule_sums() {
    mlshim::StatsTotals t{0, 0, 0};
    for (unsigned i = 0; i < mlshim::kStatsRules; ++i) {
        const mlshim::StatsRuleFigures f = rule_figures(i);
        t.allocs += f.matches;
        t.live += static_cast<std::int64_t>(f.live_bytes);
    }
    return t;
}

void assert_totals(std::uint64_t allocs, std::uint64_t frees, std::uint64_t live) {
    const mlshim::StatsTotals t = totals(), sums = rule_sums();
    cr_assert_eq(t.allocs, allocs);
    cr_assert_eq(t.frees, frees);
    cr_assert_eq(t.live_bytes(), live);
    cr_assert_eq(sums.allocs, allocs, "the rules' matches add up to the process's");
    cr_assert_eq(sums.live_bytes(), live, "the rules' live bytes add up to the process's");
    char json[2048], want[160];
    mlshim::stats_format_json(*stats, mlshim::stats_rule_rows(stats), json, sizeof json);
    std::snprintf(want, sizeof want, "\"matched_allocations\": %llu, \"frees\": %llu, \"live_bytes\": %llu,",
                  static_cast<unsigned long long>(allocs), static_cast<unsigned long long>(frees),
                  static_cast<unsigned long long>(live));
    cr_assert(std::strstr(json, want), "%s in %s", want, json);
}

}  // namespace

// matched_allocations, frees and live_bytes (stats.file, memlock-inspect) are sums over the
// rule counters: counts of this thread (unpublished), of a thread that exited (published),
// of threads beyond the slots (counted in the rule totals directly), of a page run, and of a
// thread that a fork leaves behind (published in the child) all add up.
Test(arena, process_totals_are_the_sums_of_the_rule_counts) {
    make_arena();
    std::vector<void *> mine;
    for (int i = 0; i < 10; ++i) mine.push_back(arena.alloc(0, 32, 16, 1));
    for (int i = 0; i < 4; ++i) arena.free(mine[i]);
    run_thread({2, 5, 0});
    assert_totals(15, 4, 6 * 32 + 5 * 16);

    // Every slot taken: the next thread counts in the shared slot.
    for (auto &slot : stats->slots) {
        std::int32_t none = 0;
        slot.owner.compare_exchange_strong(none, -1);
    }
    run_thread({3, 4, 1});
    for (auto &slot : stats->slots)
        if (slot.owner.load() == -1) slot.owner.store(0);
    void *run = arena.alloc(0, 100000, 16, mlshim::kStatsOtherRules);  // a page run, "other rules"
    const std::uint64_t live = 6 * 32 + 5 * 16 + 3 * 16 + arena.usable_size(run);
    assert_totals(20, 5, live);

    // A thread that holds unpublished counts when the process forks.
    static std::atomic<int> phase{0};
    pthread_t holder;
    pthread_create(&holder, nullptr, [](void *) -> void * {
        arena.free(arena.alloc(0, 64, 16, 4));
        void *keep = arena.alloc(0, 64, 16, 4);
        phase.store(1);
        while (phase.load() != 2) sched_yield();
        arena.free(keep);
        return nullptr;
    }, nullptr);
    while (phase.load() != 1) sched_yield();
    assert_totals(22, 6, live + 64);
    const pid_t pid = fork();
    if (pid == 0) {
        // The holder is gone in the child: its row is published, its slot free; nothing is lost.
        stats = mlshim::stats_after_fork(stats, arena.thread_slot(), true);
        const mlshim::StatsTotals t = totals();
        const mlshim::StatsRuleFigures f = mlshim::stats_rule_figures(*stats, 4, nullptr, 0);
        _exit(t.allocs == 22 && t.frees == 6 && t.live_bytes() == live + 64 && f.matches == 2 ? 0 : 1);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    phase.store(2);
    pthread_join(holder, nullptr);
    for (std::size_t i = 4; i < mine.size(); ++i) arena.free(mine[i]);
    arena.free(run);
    assert_totals(22, 14, 5 * 16 + 3 * 16);
}

Test(arena, a_forked_child_relocks_and_frees_blocks_from_before_the_fork) {
    make_arena();
    auto *p = static_cast<unsigned char *>(arena.alloc(0, 32));
    p[0] = 42;
    arena.prefork();
    pid_t pid = fork();
    if (pid == 0) {
        arena.postfork_child_locks();
        arena.postfork_child();
        bool ok = range_has_flag(p, 32, "lo") && range_has_flag(p, 32, "dd") && p[0] == 42;
        arena.free(p);
        void *q = arena.alloc(0, 32);
        _exit(ok && q == p ? 0 : 1);
    }
    arena.postfork_parent();
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    cr_assert_eq(p[0], 42, "the parent's block is untouched");
}

// What a fork child locks, planned in the parent: the stretches postfork_child would lock,
// each whole, for as long as the arena does not grow (a block that grows it invalidates the
// plan), and none when not wanted (a process with more than one thread).
Test(arena, a_fork_plan_holds_what_the_child_locks_until_the_arena_grows) {
    make_arena();
    void *a = arena.alloc(0, 3u << 20);
    cr_assert_not_null(a);
    arena.plan_fork(true);
    cr_assert(fork_plan.holds());
    cr_assert_eq(fork_plan.n, 1u, "the first region and the one grown after it lie end to end");
    const auto at = reinterpret_cast<std::uintptr_t>(a);
    cr_assert(fork_plan.at[0].lo <= at && at + (3u << 20) <= fork_plan.at[0].hi);
    arena.plan_fork(false);
    cr_assert_not(fork_plan.holds());
    arena.plan_fork(true);
    cr_assert(fork_plan.holds());
    void *b = arena.alloc(0, 3u << 20);
    cr_assert_not_null(b);
    cr_assert_not(fork_plan.holds(), "the arena grew: the plan no longer holds");
    arena.plan_fork(true);
    const auto bt = reinterpret_cast<std::uintptr_t>(b);
    cr_assert(fork_plan.holds() && fork_plan.at[fork_plan.n - 1].lo <= bt && bt + (3u << 20) <= fork_plan.at[fork_plan.n - 1].hi);
    // The planned child locks both blocks again, and frees them.
    const int status = status_of_fork_child([&] {
        if (!range_has_flag(a, 3u << 20, "lo") || !range_has_flag(b, 3u << 20, "lo")) return 1;
        arena.free(a);
        arena.free(b);
        return 0;
    });
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    arena.free(b);
    arena.free(a);
}

namespace {
int g_plans_in_madvise = 0;
// madvise as the kernel's, after making a fork plan: as a signal handler that forks would,
// from inside the arena's growth (which advises the new region before it is in place).
int planning_madvise(void *a, std::size_t n, int advice) {
    ++g_plans_in_madvise;
    arena.plan_fork(true);
    return ::madvise(a, n, advice) ? errno : 0;
}
}  // namespace

// A plan made while the arena grows, before the growth is in place, does not hold once it
// is: it misses the new region. Made again, it holds and covers it.
Test(arena, a_fork_plan_made_while_the_arena_grows_does_not_hold) {
    make_arena();
    memlock_syscalls fake{nullptr, nullptr, planning_madvise, nullptr, nullptr};
    memlock_set_syscalls(&fake);
    void *b = arena.alloc(0, 3u << 20);  // past the first region: the arena grows
    memlock_set_syscalls(nullptr);
    cr_assert_not_null(b);
    cr_assert_gt(g_plans_in_madvise, 0, "the arena grew without advising the new region");
    cr_assert_not(fork_plan.holds(), "a plan made before the growth was in place still holds");
    arena.plan_fork(true);
    const auto bt = reinterpret_cast<std::uintptr_t>(b);
    cr_assert(fork_plan.holds() && fork_plan.at[fork_plan.n - 1].lo <= bt && bt + (3u << 20) <= fork_plan.at[fork_plan.n - 1].hi);
    arena.free(b);
}

namespace {
std::atomic<int> g_unlock_calls{0};
int counting_munlock(const void *a, std::size_t n) {
    ++g_unlock_calls;
    return ::munlock(a, n) ? errno : 0;
}
// mlock2 as the kernel's, but refusing more than 2 MiB in one call, as RLIMIT_MEMLOCK would.
int mlock2_upto_2mib(const void *a, std::size_t n, unsigned flags) {
    ++g_lock_calls;
    if (n > (2u << 20)) return ENOMEM;
    return static_cast<int>(::syscall(SYS_mlock2, a, n, flags)) ? errno : 0;
}

// A pool grown past its first region: 3 MiB live in `a` (the first region and the one grown
// after it lie end to end). Forks; the child reports what it locked and how many lock and
// unlock calls its fork handler made, and exits with child_status of those.
template <typename F> void fork_with_grown_pool(F child_status, bool planned = true) {
    make_arena();
    void *a = arena.alloc(0, 3u << 20);
    cr_assert_not_null(a);
    std::memset(a, 1, 3u << 20);
    const int locks = g_lock_calls.load(), unlocks = g_unlock_calls.load();
    const int status = status_of_fork_child([&] {
        return child_status(range_has_flag(a, 3u << 20, "lo"), g_lock_calls.load() - locks,
                            g_unlock_calls.load() - unlocks);
    }, planned);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    memlock_set_syscalls(nullptr);
    arena.free(a);
}
}  // namespace

// mlock is not inherited: the fork child locks its arena again, one call for each stretch of
// address space that locks the same way. Two calls on one mapping (the first region and a
// region grown after it) would split it and join it again, each a walk of its pages.
// The same with the plan the parent made (a process with one thread) and without one (the
// child reads the arena, as after a fork in a process with more).
void fork_locks_end_to_end_in_one_call(bool planned) {
    memlock_syscalls fake{counting_mlock, counting_munlock, nullptr, counting_mlock2, nullptr};
    memlock_set_syscalls(&fake);
    fork_with_grown_pool([](bool locked, int lock_calls, int unlock_calls) {
        return locked && lock_calls == 1 && unlock_calls == 0 ? 0 : 1 + (locked ? 0 : 1) + lock_calls * 4;
    }, planned);
}
Test(arena, a_fork_child_locks_regions_end_to_end_in_one_call) { fork_locks_end_to_end_in_one_call(true); }
Test(arena, a_fork_child_without_a_plan_locks_regions_end_to_end_in_one_call) { fork_locks_end_to_end_in_one_call(false); }

// Where the one call is refused (the limit), the child locks piece by piece, as far as the
// limit lets it, and unlocks nothing: here each region alone fits, and all ends locked.
void fork_refused_one_call_locks_piece_by_piece(bool planned) {
    memlock_syscalls fake{counting_mlock, counting_munlock, nullptr, mlock2_upto_2mib, nullptr};
    memlock_set_syscalls(&fake);
    fork_with_grown_pool([](bool locked, int lock_calls, int unlock_calls) {
        const bool ok = locked && lock_calls == 3 && unlock_calls == 0 && stats->lock_failures.load() == 0;
        return ok ? 0 : 1 + (locked ? 0 : 1) + lock_calls * 4 + unlock_calls * 32;
    }, planned);
}
Test(arena, a_fork_child_refused_one_call_locks_piece_by_piece) { fork_refused_one_call_locks_piece_by_piece(true); }
Test(arena, a_fork_child_without_a_plan_refused_one_call_locks_piece_by_piece) {
    fork_refused_one_call_locks_piece_by_piece(false);
}

namespace {
// The system call itself: AddressSanitizer's mlock does nothing.
int real_mlock(const void *a, std::size_t n) { return ::syscall(SYS_mlock, a, n) ? errno : 0; }
// mlock2 as a kernel without lock-on-fault answers it (Linux < 4.4; qemu-user).
int mlock2_missing(const void *, std::size_t, unsigned) { return ENOSYS; }
}  // namespace

// Without lock-on-fault, regions grown after start-up are mapped MAP_LOCKED, and their pages
// lock as they are committed. A fork child inherits them unlocked: it locks the pages
// committed and maps the rest locked again, so that the pages it commits there lock too;
// nothing falls back, nothing warns.
Test(arena, without_lock_on_fault_a_fork_child_keeps_grown_regions_locked) {
    memlock_syscalls fake{real_mlock, nullptr, nullptr, mlock2_missing, nullptr};
    memlock_set_syscalls(&fake);
    make_arena();
    void *a = arena.alloc(0, 3u << 20);
    cr_assert_not_null(a);
    std::memset(a, 1, 3u << 20);
    cr_assert(range_has_flag(a, 3u << 20, "lo"));
    const int status = status_of_fork_child([&] {
        if (!range_has_flag(a, 3u << 20, "lo")) return 1;
        if (stats->lock_failures.load()) return 2;
        // The block the parent wrote is intact and writable (nothing was mapped over it).
        auto *bytes = static_cast<unsigned char *>(a);
        for (std::size_t i = 0; i < (3u << 20); ++i)
            if (bytes[i] != 1) return 7;
        std::memset(a, 2, 3u << 20);
        // Committed in the child, in what the grown region had left.
        auto *b = static_cast<unsigned char *>(arena.alloc(0, 512u << 10));
        if (!b) return 3;
        std::memset(b, 1, 512u << 10);
        if (!range_has_flag(b, 512u << 10, "lo") || !range_has_flag(b, 512u << 10, "dd")) return 4;
        std::size_t locked_kb = 0;
        for (const auto &m : mappings_overlapping(read_smaps(), b, 512u << 10)) locked_kb += m.locked_kb;
        if (locked_kb < 512) return 5;
        return stats->lock_failures.load() || stats->fallbacks.load() ? 6 : 0;
    });
    memlock_set_syscalls(nullptr);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %#x (1: committed pages not locked, 2: locking failed, 3: no block, 4: the "
              "new block is not locked or dumpable, 5: its pages are not locked, 6: fell back, 7: the "
              "parent's block changed)", status);
    arena.free(a);
}

namespace {
std::uintptr_t g_refuse_at = 0;  // mlock_refusing refuses calls here (EAGAIN)
bool g_refuse_once = true;        // only the first
int mlock_refusing(const void *a, std::size_t n) {
    if (reinterpret_cast<std::uintptr_t>(a) == g_refuse_at) {
        if (g_refuse_once) g_refuse_at = 0;
        return EAGAIN;
    }
    return real_mlock(a, n);
}
std::atomic<int> g_dontdump_calls{0};
int counting_madvise(void *a, std::size_t n, int advice) {
    g_dontdump_calls += advice == MADV_DONTDUMP;
    return ::madvise(a, n, advice) ? errno : 0;
}
}  // namespace

// When one of a fork child's calls is refused, the calls after it are made one piece at a
// time, and what the calls before it locked is not asked again: the pages never committed of
// a region it mapped locked again are not mapped again (the kernel would count them against
// RLIMIT_MEMLOCK twice). Two pools, each grown past its first region, without lock-on-fault;
// the refused call is the one for the second pool's grown regions.
// Two pools without lock-on-fault, each grown by 4 MiB of regions past its first region, 3 MiB
// of which hold a block (a in the first pool, b in the second); the grown regions lie end to
// end, the second pool's after the first's. The child's calls lock [a, +3 MiB), map the rest
// of the first pool's regions again, and are refused at b (once, or every time).
void *g_a, *g_b;
void make_two_grown_pools(bool refuse_once) {
    static memlock_syscalls fake{mlock_refusing, nullptr, counting_madvise, mlock2_missing, nullptr};
    memlock_set_syscalls(&fake);
    make_arena(64u << 20, mlshim::LockFailurePolicy::fallback, 0, mlshim::kActionAll, nullptr, 2);
    g_a = arena.alloc(0, 3u << 20);
    g_b = arena.alloc(1, 3u << 20);
    cr_assert(g_a && g_b);
    std::memset(g_b, 1, 3u << 20);
    g_refuse_at = reinterpret_cast<std::uintptr_t>(g_b);
    g_refuse_once = refuse_once;
    cr_assert_gt(g_refuse_at, reinterpret_cast<std::uintptr_t>(g_a), "the second pool grew first");
}

Test(arena, a_fork_child_that_is_refused_one_call_maps_no_region_locked_again_twice) {
    make_two_grown_pools(true);
    void *a = g_a, *b = g_b;
    const int before = g_dontdump_calls.load();
    const int status = status_of_fork_child([&] {
        if (g_refuse_at) return 1;  // no call was refused: nothing to check
        if (stats->lock_failures.load()) return 2;
        if (!range_has_flag(a, 3u << 20, "lo") || !range_has_flag(b, 3u << 20, "lo")) return 3;
        // One region of each pool had pages never committed: two mapped again, one call each.
        return g_dontdump_calls.load() - before == 2 ? 0 : 4 + (g_dontdump_calls.load() - before);
    });
    memlock_set_syscalls(nullptr);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %#x (1: no call refused, 2: locking failed, 3: not locked, 4 + n: n regions mapped "
              "locked again)", status);
    arena.free(b);
    arena.free(a);
}

// Refused every time, only the regions from the refused call's on fall short: the first
// pool's, before it, stay locked regions, and what the child commits there locks without a
// fallback.
Test(arena, a_fork_child_refused_in_a_run_of_regions_keeps_those_before_it_locked) {
    make_two_grown_pools(false);
    void *a = g_a, *b = g_b;
    const int status = status_of_fork_child([&] {
        if (stats->lock_failures.load() != 1) return 1;
        const std::uint64_t fallbacks = stats->fallbacks.load();
        void *c = arena.alloc(0, 512u << 10);  // in what the first pool's regions have left
        if (!c) return 2;
        std::memset(c, 1, 512u << 10);
        if (!range_has_flag(c, 512u << 10, "lo")) return 3;
        return stats->fallbacks.load() == fallbacks && stats->lock_failures.load() == 1 ? 0 : 4;
    });
    memlock_set_syscalls(nullptr);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %#x (1: the refusal did not count once, 2: no block, 3: not locked, 4: served as a "
              "fallback)", status);
    arena.free(b);
    arena.free(a);
}

namespace {
std::uintptr_t g_whole_at = 0;  // the one address mlock2_limited locks more than 1 MiB at
// mlock2 as the kernel's, but refusing more than 2 MiB in one call, and more than 1 MiB
// anywhere but at g_whole_at: a limit that lets a fork child lock its first region whole and,
// of a region grown after it, only the pages in use.
int mlock2_limited(const void *a, std::size_t n, unsigned flags) {
    if (n > (2u << 20) || (n > (1u << 20) && reinterpret_cast<std::uintptr_t>(a) != g_whole_at)) return ENOMEM;
    return static_cast<int>(::syscall(SYS_mlock2, a, n, flags)) ? errno : 0;
}
}  // namespace

// A fork child that could lock of a grown region only the pages in use (a lower limit) holds
// them locked outside the ranges it locks whole; its own fork children lock them again.
Test(arena, pages_a_fork_child_locked_one_by_one_stay_locked_in_its_children) {
    make_arena();
    g_whole_at = stats->arena_start;
    memlock_syscalls fake{nullptr, nullptr, nullptr, mlock2_limited, nullptr};
    memlock_set_syscalls(&fake);
    // 2.5 MiB of 1000-byte blocks: slabs fill the first region, and some of the region grown
    // after it; `grown` spans the blocks there.
    std::vector<void *> blocks;
    std::uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < 2560; ++i) {
        void *b = arena.alloc(0, 1000);
        cr_assert_not_null(b);
        std::memset(b, 1, 1000);
        blocks.push_back(b);
        const auto at = reinterpret_cast<std::uintptr_t>(b);
        if (at >= g_whole_at + (2u << 20)) lo = std::min(lo, at), hi = std::max(hi, at + 1000);
    }
    cr_assert_lt(lo, hi, "no block beyond the first region");
    const void *grown = reinterpret_cast<const void *>(lo);
    const std::size_t grown_len = hi - lo;
    cr_assert(range_has_flag(grown, grown_len, "lo"));
    const int status = status_of_fork_child([&] {
        // 1: the child did not lock the pages in use of the grown region, 8: it locked the
        // region whole (no fallback: nothing to check); then its child's status: 2 + (1: the
        // pages are not locked there, 2: its lock failures counted).
        if (!range_has_flag(grown, grown_len, "lo")) return 1;
        if (stats->lock_failures.load() == 0) return 8;
        const std::uint64_t failures = stats->lock_failures.load();
        plan_fork(true);  // a plan cannot hold the pages locked one by one: the child reads the arena
        arena.prefork();
        const pid_t pid = fork();
        if (pid == 0) {
            take_over_in_child();
            _exit((range_has_flag(grown, grown_len, "lo") ? 0 : 1) + (stats->lock_failures.load() != failures ? 2 : 0));
        }
        arena.postfork_parent();
        int st = 0;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) return 9;
        return WEXITSTATUS(st) ? 2 + WEXITSTATUS(st) : 0;
    });
    memlock_set_syscalls(nullptr);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    for (void *b : blocks) arena.free(b);
}

// Under that limit, a page run that crosses from the first region into the one grown after
// it keeps its pages in the grown region locked in the fork child: the pages in use there are
// found from the run's head in the region before.
std::string g_warning;  // the arena's last warning (record_warning)
void record_warning(mlshim::LogLevel, const char *what, const char *) { g_warning = what; }

Test(arena, a_run_crossing_into_a_region_that_did_not_lock_whole_stays_locked_after_fork) {
    make_arena(64u << 20, mlshim::LockFailurePolicy::fallback, 0, mlshim::kActionAll, record_warning);
    g_whole_at = stats->arena_start;
    memlock_syscalls fake{nullptr, nullptr, nullptr, mlock2_limited, nullptr};
    memlock_set_syscalls(&fake);
    const std::uintptr_t boundary = g_whole_at + (2u << 20);
    void *a = arena.alloc(0, 1900u << 10);
    auto *b = static_cast<unsigned char *>(arena.alloc(0, 512u << 10));
    cr_assert(a && b);
    std::memset(b, 1, 512u << 10);
    const auto at = reinterpret_cast<std::uintptr_t>(b);
    cr_assert(at < boundary && at + (512u << 10) > boundary, "the run %p does not cross %#lx", b,
              static_cast<unsigned long>(boundary));
    const int status = status_of_fork_child([&] {
        // 8: the grown region locked whole (the limit is not in force: nothing to check).
        if (stats->lock_failures.load() == 0) return 8;
        if (!range_has_flag(b, 512u << 10, "lo") || b[(512u << 10) - 1] != 1) return 1;
        // The figures count the first region, which locked whole, too.
        const std::size_t in_grown = (at + (512u << 10) - boundary) >> 10;
        const std::string said = "locked " + std::to_string(2048 + in_grown) + " of the 4096 KiB locked before fork, "
                                 "every page in use among them; " + std::to_string(2048 - in_grown) + " KiB stays unlocked";
        if (g_warning.find(said) == std::string::npos) {
            std::fprintf(stderr, "warning: %s\nexpected: %s\n", g_warning.c_str(), said.c_str());
            return 2;
        }
        return 0;
    });
    memlock_set_syscalls(nullptr);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %#x (1: the run's pages in the grown region are not locked, 2: the warning's figures)",
              status);
    arena.free(b);
    arena.free(a);
}

// Under that limit, freed runs hold no block: their pages are not locked again, though the
// pages inside a free run still name the runs they belonged to (only a free run's first and
// last pages are rewritten when runs merge).
Test(arena, freed_runs_crossing_into_a_region_that_did_not_lock_whole_are_not_locked_after_fork) {
    make_arena();
    g_whole_at = stats->arena_start;
    memlock_syscalls fake{nullptr, nullptr, nullptr, mlock2_limited, nullptr};
    memlock_set_syscalls(&fake);
    const std::uintptr_t boundary = g_whole_at + (2u << 20);
    void *a = arena.alloc(0, 1000u << 10), *b = arena.alloc(0, 1400u << 10);
    cr_assert(a && b);
    const auto at = reinterpret_cast<std::uintptr_t>(b);
    cr_assert(at < boundary && at + (1400u << 10) > boundary, "the run %p does not cross %#lx", b,
              static_cast<unsigned long>(boundary));
    arena.free(a);
    arena.free(b);
    const int status = status_of_fork_child([&] {
        if (stats->lock_failures.load() == 0) return 8;  // the limit is not in force
        return range_has_flag(reinterpret_cast<void *>(boundary), 2u << 20, "lo", false) ? 0 : 1;
    });
    memlock_set_syscalls(nullptr);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %#x (1: pages of the grown region that hold no block are locked)", status);
}

Test(arena, freed_neighbouring_runs_merge_and_are_reused) {
    make_arena();
    void *a = arena.alloc(0, 100000), *b = arena.alloc(0, 100000), *c = arena.alloc(0, 100000);
    cr_assert_eq(static_cast<char *>(b), static_cast<char *>(a) + arena.usable_size(a));
    arena.free(a);
    arena.free(b);
    // One merged run serves a block as large as both.
    void *ab = arena.alloc(0, 2 * arena.usable_size(c));
    cr_assert_eq(ab, a);
    cr_assert(all_zero(ab, 2 * arena.usable_size(c)));
    arena.free(ab);
    arena.free(c);
}

Test(arena, a_run_freed_at_the_frontier_is_carved_again_without_growing) {
    make_arena();
    void *warm = arena.alloc(0, 32);
    void *big = arena.alloc(0, 1u << 20);
    std::uint64_t committed = stats->committed_bytes.load(), locked = stats->locked_bytes.load();
    arena.free(big);
    void *again = arena.alloc(0, 1u << 20);
    cr_assert_eq(again, big);
    cr_assert_eq(stats->locked_bytes.load(), locked, "no new locking for memory given back");
    cr_assert_eq(stats->committed_bytes.load(), committed, "nor new committing");
    cr_assert_leq(stats->locked_bytes.load(), stats->committed_bytes.load());
    cr_assert(range_has_flag(again, 1u << 20, "lo"));
    arena.free(again);
    arena.free(warm);
}

Test(arena, a_run_grows_in_place) {
    make_arena();
    auto *p = static_cast<unsigned char *>(arena.alloc(0, 100000));
    std::memset(p, 0x11, 100000);
    cr_assert(arena.grow_in_place(p, 300000));
    cr_assert_geq(arena.usable_size(p), 300000u);
    cr_assert_eq(p[99999], 0x11);
    cr_assert(all_zero(p + 100000, 200000), "the new part is zero");
    cr_assert(range_has_flag(p, 300000, "lo"));
    cr_assert(range_has_flag(p, 300000, "dd"));
    mlshim::StatsTotals t = totals();
    cr_assert_eq(t.live_bytes(), arena.usable_size(p));
    // Blocked by a neighbour: no growth, nothing changed.
    void *q = arena.alloc(0, 100000);
    std::size_t before = arena.usable_size(p);
    cr_assert_not(arena.grow_in_place(p, before + 100000));
    cr_assert_eq(arena.usable_size(p), before);
    cr_assert_not(arena.grow_in_place(arena.alloc(0, 64), 200000), "small blocks do not grow");
    arena.free(q);
    arena.free(p);
    cr_assert_eq(totals().live_bytes(), 64u);
}

// Past the first region too: the regions a locking pool grows by lock on fault as well.
Test(arena, a_large_block_costs_only_the_pages_used_and_is_still_wiped) {
    make_arena();
    const std::size_t page = memlock_page_size(), n = 32u << 20;
    auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
    cr_assert_not_null(p);
    cr_assert(range_has_flag(p, n, "lo"), "locked as a whole");
    p[0] = 0x42;
    p[n / 2] = 0x42;
    std::vector<unsigned char> vec(n / page);
    cr_assert_eq(memlock_resident(p, n, vec.data()), 0);
    std::size_t resident = 0;
    for (unsigned char v : vec) resident += v & 1;
    // On huge pages, the two huge pages touched (or fewer pages where the kernel had none).
    const std::size_t touched = 2 * (bytes_per_touch(p) / page);
    cr_assert(resident >= 2 && resident <= touched, "only the two touched pages are resident: %zu", resident);
    arena.free(p);
    cr_assert_eq(p[0], 0);
    cr_assert_eq(p[n / 2], 0);
    cr_assert_eq(memlock_resident(p, n, vec.data()), 0);
    resident = 0;
    for (unsigned char v : vec) resident += v & 1;
    cr_assert(resident <= touched, "wiping paged nothing in: %zu", resident);
}

// Past max_locked (policy fallback) a large block is served unlocked. Freeing it wipes the
// pages it touched and pages nothing else in: its untouched pages are dropped, not written
// (the process's peak RSS, reset just before the free, stays below the block's size).
Test(arena, an_unlocked_large_block_is_wiped_without_paging_in_its_untouched_pages) {
    make_arena(128 * 1024, mlshim::LockFailurePolicy::fallback);
    const std::size_t n = 32u << 20;
    auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
    cr_assert_not_null(p);
    cr_assert(range_has_flag(p + n / 2, n / 2, "lo", false), "its second half served unlocked");
    p[0] = 0x42;
    p[n / 2] = 0x42;
    const long rss_kb = status_kb(0, "VmRSS");
    if (!write_file("/proc/self/clear_refs", "5")) cr_skip_test("/proc/self/clear_refs cannot be written here: no peak RSS to reset");
    arena.free(p);
    const long peak_kb = status_kb(0, "VmHWM");
    cr_assert_lt(peak_kb - rss_kb, static_cast<long>(n / 4 / 1024), "the free paged in %ld KiB", peak_kb - rss_kb);
    cr_assert_eq(p[0], 0);
    cr_assert_eq(p[n / 2], 0);
}

// Where the kernel offers transparent huge pages, a locking pool commits slab by slab until
// it passes half a huge page, then whole huge pages, which fault in as huge pages: the
// counters count what is committed, all of it locked.
Test(arena, a_pool_commits_whole_huge_pages_once_past_half_of_one) {
    make_arena();
    void *key;
    const std::size_t huge = huge_page_size(key);
    cr_assert_eq(stats->committed_bytes.load(), 64u << 10, "below half a huge page: one slab");
    if (!huge) return;
    void *a = arena.alloc(0, 1u << 20), *b = arena.alloc(0, 2u << 20);
    cr_assert(a && b);
    std::memset(a, 1, 1u << 20);
    std::memset(b, 2, 2u << 20);
    // The slab, the 1 MiB run (past half: to the end of the first huge page), the 2 MiB run
    // (a huge page of its own, whole).
    cr_assert_eq(stats->committed_bytes.load(), 2 * huge);
    cr_assert_eq(stats->locked_bytes.load(), 2 * huge);
    const auto m = find_mapping(b);
    cr_assert(m.has_value() && m->has_flag("lo") && m->has_flag("hg"));
    cr_assert_geq(m->anon_huge_kb, huge >> 10, "AnonHugePages %zu kB", m->anon_huge_kb);
    cr_assert_eq(m->locked_kb, m->rss_kb);
    arena.free(a);
    arena.free(b);
    arena.free(key);
}

// A fork child counts half a huge page from the end of the memory it inherited: past its
// parent's pages it commits slab by slab (a few pages, not a zeroed, locked huge page) until
// it has committed half a huge page itself, then whole huge pages again.
namespace {
void check_fork_child_commits_whole_huge_pages_only_past_half_of_its_own() {
    make_arena();
    void *key;
    const std::size_t huge = huge_page_size(key);
    if (!huge) return;
    // The parent fills its first huge page but for 64 KiB (past half: committed whole).
    void *a = arena.alloc(0, huge - (128u << 10));
    cr_assert_not_null(a);
    cr_assert_eq(stats->committed_bytes.load(), huge);
    const int status = status_of_fork_child([&] {
        // 128 KiB: half of it in the parent's huge page, half beyond; then 1 MiB more, which
        // takes the child past half a huge page of its own.
        const std::uint64_t inherited = stats->committed_bytes.load();
        void *b = arena.alloc(0, 128u << 10);
        if (!b) return 2;
        std::memset(b, 1, 128u << 10);
        const std::uint64_t first = stats->committed_bytes.load() - inherited;
        // What it touched lies on small pages: the arena holds one huge page, the parent's
        // (a region grown in place is inaccessible until committed, not read-write).
        std::size_t huge_kb = 0;
        for (const auto &m : mappings_overlapping(read_smaps(), a, 2 * huge)) huge_kb += m.anon_huge_kb;
        void *c = arena.alloc(0, 1u << 20);
        const std::uint64_t then = stats->committed_bytes.load() - inherited;
        if (!c) return 2;
        if (huge_kb > huge >> 10) return 3;
        return first <= (128u << 10) && then == huge ? 0 : 1;
    });
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %#x (1: it committed a huge page for a 128 KiB run, or none past half of its own; "
              "3: its 128 KiB faulted in as a huge page)",
              status);
    arena.free(a);
    arena.free(key);
}

// Makes madvise with MADV_WIPEONFORK refused (EINVAL), as before Linux 4.14, or (ignored)
// answered 0 without effect together with an advice no kernel has, as under qemu-user.
// False where seccomp filters cannot be installed here.
bool filter_wipe_on_fork(bool ignored) {
#if defined(__x86_64__)
    const std::uint32_t arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    const std::uint32_t arch = AUDIT_ARCH_AARCH64;
#endif
    const std::uint32_t answer = ignored ? SECCOMP_RET_ERRNO | 0 : SECCOMP_RET_ERRNO | EINVAL;
    sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 18 /* MADV_WIPEONFORK */, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ignored ? 0xffffffffu : 18u, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, answer),
    };
    sock_fprog prog = {static_cast<unsigned short>(sizeof f / sizeof *f), f};
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}
}  // namespace

Test(arena, a_fork_child_commits_whole_huge_pages_only_past_half_of_its_own) {
    check_fork_child_commits_whole_huge_pages_only_past_half_of_its_own();
}

// Where the kernel cannot wipe a page for the fork child (no MADV_WIPEONFORK), or says it did
// without doing it, the arena still tells the child from its parent. (The filter stays with
// the test's own process.)
Test(arena, a_fork_child_is_told_where_madvise_refuses_wipe_on_fork) {
    if (!filter_wipe_on_fork(false)) {
        cr_log_warn("no seccomp filter here: the arena without MADV_WIPEONFORK is not checked");
        return;
    }
    check_fork_child_commits_whole_huge_pages_only_past_half_of_its_own();
}

Test(arena, a_fork_child_is_told_where_madvise_ignores_every_advice) {
    if (!filter_wipe_on_fork(true)) {
        cr_log_warn("no seccomp filter here: the arena under an madvise that ignores advice is not checked");
        return;
    }
    check_fork_child_commits_whole_huge_pages_only_past_half_of_its_own();
}

// A fork child that commits past half a huge page of its own commits whole huge pages from
// there on, but does not collapse the huge page it filled with small pages until then
// (MADV_COLLAPSE copies them into a new huge page and zeroes the rest: a cost per postgres
// backend, for forks that a fork child seldom makes).
Test(arena, a_fork_child_does_not_collapse_the_huge_page_it_filled_with_small_pages) {
    make_arena();
    void *key;
    const std::size_t huge = huge_page_size(key);
    if (!huge) return;
    // The parent fills its first huge page but for 64 KiB.
    void *a = arena.alloc(0, huge - (128u << 10));
    cr_assert_not_null(a);
    std::memset(a, 1, huge - (128u << 10));
    const int status = status_of_fork_child([&] {
        // 128 KiB: half in the parent's huge page, half in the next one (small pages, as the
        // child has committed less than half a huge page itself); then 1 MiB more, which takes
        // it past half of its own: the rest of that next huge page is committed whole.
        void *b = arena.alloc(0, 128u << 10);
        if (!b) return 2;
        std::memset(b, 1, 128u << 10);
        void *c = arena.alloc(0, 1u << 20);
        if (!c) return 2;
        std::memset(c, 1, 1u << 20);
        const auto next = reinterpret_cast<const char *>((reinterpret_cast<std::uintptr_t>(a) & ~(huge - 1)) + huge);
        std::size_t huge_kb = 0;
        for (const auto &m : mappings_overlapping(read_smaps(), next, huge)) huge_kb += m.anon_huge_kb;
        return huge_kb == 0 ? 0 : 1;
    });
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %#x (1: the huge page it filled with small pages was collapsed)", status);
    arena.free(a);
    arena.free(key);
}

namespace {

std::atomic<bool> g_growing{true};
std::atomic<int> g_forks{0};

void *grow(void *) {
    // 150 runs of about 220 KB: each grows the 64 MiB pool (carve, commit, lock). The first
    // after the first fork, the others after the next: at least one fork meets the growth.
    for (int i = 0; i < 150; ++i) {
        while (g_forks < (i == 0 ? 1 : 2)) sched_yield();
        if (!arena.alloc(0, 200000 + 4096 * static_cast<std::size_t>(i % 7))) abort();
    }
    g_growing = false;
    return nullptr;
}

}  // namespace

// fork takes the arena's locks in the order the allocation paths do (pool, then the lock
// budget): a thread that grows the arena while another forks must not deadlock them.
Test(arena, fork_while_another_thread_grows_the_arena, .timeout = 120) {
    make_arena(1u << 30);
    pthread_t t;
    pthread_create(&t, nullptr, grow, nullptr);
    int forks = 0;
    do {
        arena.prefork();
        pid_t pid = fork();
        if (pid == 0) {
            arena.postfork_child_locks();
            arena.postfork_child();
            _exit(arena.alloc(0, 300000) ? 0 : 1);
        }
        arena.postfork_parent();
        int status = 0;
        waitpid(pid, &status, 0);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        g_forks = ++forks;
    } while (g_growing);
    pthread_join(t, nullptr);
    cr_assert_geq(forks, 2);
}

Test(arena, double_free_of_a_run_given_back_to_the_frontier_is_fatal, .signal = SIGABRT) {
    make_arena();
    void *p = arena.alloc(0, 300000);  // the newest run: freeing it gives it back to the frontier
    arena.free(p);
    arena.free(p);
}

// Wide blocks are wiped 128 bytes at a time, stores only where a load found a byte that is not
// zero: a single byte in any of a chunk's four 32-byte lanes, and in the block's tail, is found.
Test(arena, a_single_byte_in_any_lane_of_a_wide_block_is_wiped) {
    make_arena();
    for (std::size_t n : {144u, 440u, 4096u, 18000u, 70000u}) {
        auto *probe = static_cast<unsigned char *>(arena.alloc(0, n));
        cr_assert_not_null(probe);
        const std::size_t usable = arena.usable_size(probe);
        arena.free(probe);
        for (std::size_t at : {std::size_t{0}, std::size_t{31}, std::size_t{32}, std::size_t{63}, std::size_t{64},
                               std::size_t{95}, std::size_t{96}, std::size_t{127}, std::size_t{128 + 100},
                               usable - 33, usable - 1}) {
            if (at >= usable) continue;  // inside the block only: its neighbours are free blocks
            auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
            cr_assert_not_null(p);
            p[at] = 0x5a;
            arena.free(p);
            const auto back = read_through_proc_mem(p, usable);
            cr_assert(back.has_value(), "/proc/self/mem reads the freed block of %zu bytes", n);
            cr_assert(all_zero(back->data(), usable), "the byte at %zu of a freed %zu-byte block is wiped", at, n);
        }
    }
}
