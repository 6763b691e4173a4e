// Unit tests of the arena with policy.backing "secretmem" / "auto" (linked directly, no
// preload): blocks live in memfd_secret memory, which this very process can use while
// /proc/self/mem cannot read it; a kernel without memfd_secret (injected through the core's
// seam) follows the lock-failure policy; freed pages stay committed; a fork child gets a copy
// of its own.
#include <criterion/criterion.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "arena.hpp"
#include "helpers.hpp"
#include "memlock.h"

using mlshim::Backing;
using mlshim::LockFailurePolicy;
using mlshim::SecureArena;
using namespace memlock_test;

namespace {

SecureArena arena;
mlshim::StatsPage *stats;
std::string g_log;  // what the arena reported, one "level|what|why" line each

void reporter(mlshim::LogLevel level, const char *what, const char *why) {
    g_log += std::to_string(static_cast<int>(level)) + "|" + what + "|" + why + "\n";
}

void make_arena(Backing backing, LockFailurePolicy policy = LockFailurePolicy::fallback, bool purge_at_once = false) {
    stats = mlshim::stats_create(false);
    cr_assert_not_null(stats);
    mlshim::ArenaOptions o;
    o.pool_bytes = 64u << 20;
    o.max_locked = 16u << 20;
    o.on_lock_failure = policy;
    o.backing = backing;
    if (purge_at_once) o.purge_slack = o.purge_burst = 0, o.purge_delay_ns = 0;
    unsigned actions = mlshim::kActionAll;
    cr_assert_eq(arena.init(o, &actions, 1, stats, reporter), 0);
}

int g_secret_answer = 0;
int fake_memfd_secret(unsigned, int *) { return g_secret_answer; }

// The kernel without memfd_secret: every other call real.
void without_memfd_secret(int answer) {
    g_secret_answer = answer;
    memlock_syscalls t{};
    t.memfd_secret = fake_memfd_secret;
    memlock_set_syscalls(&t);
}

}  // namespace

Test(arena_secretmem, blocks_live_in_secretmem_unreadable_from_outside) {
    make_arena(Backing::secretmem);
    const std::size_t sizes[] = {16, 100, 4096, 65536, 1u << 20};
    for (std::size_t n : sizes) {
        auto *p = static_cast<unsigned char *>(arena.alloc(0, n));
        cr_assert_not_null(p, "size %zu", n);
        cr_assert(in_secretmem(p), "size %zu not in secretmem", n);
        cr_assert(range_has_flag(p, n, "lo") && range_has_flag(p, n, "dd"), "size %zu", n);
        std::memset(p, 0xa5, n);
        cr_assert_eq(p[n - 1], 0xa5);
        cr_assert(readable_through_proc_mem(p) == false, "size %zu read through /proc/self/mem", n);
        arena.free(p);
        cr_assert_eq(p[0], 0, "size %zu not wiped", n);
    }
    cr_assert_eq(stats->backing, mlshim::kStatsBackingSecretmem);
    cr_assert_gt(stats->secret_bytes.load(), 0u);
    cr_assert_eq(stats->secret_bytes.load(), stats->locked_bytes.load());
    cr_assert_eq(stats->lock_failures.load(), 0u);
    cr_assert(g_log.empty(), "%s", g_log.c_str());
}

// The budget (max_locked) is all the secretmem there is: beyond it, the lock-failure policy
// serves blocks unlocked, out of secretmem (the check can fail: the first block is inside;
// the second straddles the end of the budget).
Test(arena_secretmem, max_locked_bounds_the_secretmem_and_fallback_serves_beyond) {
    make_arena(Backing::secretmem);
    void *inside = arena.alloc(0, 8u << 20);
    void *beyond = arena.alloc(0, 12u << 20);
    cr_assert(inside && beyond);
    cr_assert(in_secretmem(inside));
    cr_assert(!in_secretmem(static_cast<char *>(beyond) + (12u << 20) - 1));
    cr_assert_leq(stats->secret_bytes.load(), 16u << 20);
    cr_assert_geq(stats->unlocked_bytes.load(), 4u << 20);
    cr_assert(g_log.find("cannot lock arena memory (policy fallback") != std::string::npos, "%s", g_log.c_str());
}

Test(arena_secretmem, enosys_under_fallback_warns_once_and_locks_anonymous_memory) {
    without_memfd_secret(ENOSYS);
    make_arena(Backing::secretmem);
    auto *p = static_cast<unsigned char *>(arena.alloc(0, 64));
    cr_assert_not_null(p);
    cr_assert(!in_secretmem(p));
    cr_assert(range_has_flag(p, 64, "lo") && range_has_flag(p, 64, "dd"));
    cr_assert_eq(stats->backing, mlshim::kStatsBackingAnonymous);
    cr_assert_eq(stats->secret_bytes.load(), 0u);
    cr_assert_eq(stats->lock_failures.load(), 1u);
    cr_assert_eq(stats->fallbacks.load(), 1u);
    cr_assert_str_eq(g_log.c_str(),
                     "1|policy.backing secretmem: memfd_secret is unavailable (policy fallback: arena memory is "
                     "locked anonymous memory, which root can read through /proc/PID/mem)|memfd_secret: ENOSYS: the "
                     "kernel lacks it (Linux < 5.14, CONFIG_SECRETMEM off, or a seccomp filter)\n");
}

Test(arena_secretmem, auto_without_memfd_secret_is_anonymous_at_info_level) {
    without_memfd_secret(MEMLOCK_ESECRET_DISABLED);
    make_arena(Backing::automatic);
    void *p = arena.alloc(0, 64);
    cr_assert(p && !in_secretmem(p) && range_has_flag(p, 64, "lo"));
    cr_assert_eq(stats->lock_failures.load(), 0u);
    cr_assert(g_log.rfind("2|policy.backing auto: arena memory is locked anonymous memory|memfd_secret is disabled at boot",
                          0) == 0,
              "%s", g_log.c_str());
}

Test(arena_secretmem, disabled_at_boot_under_deny_refuses_matching_allocations) {
    without_memfd_secret(MEMLOCK_ESECRET_DISABLED);
    make_arena(Backing::secretmem, LockFailurePolicy::deny);
    errno = 0;
    cr_assert_null(arena.alloc(0, 64));
    cr_assert_eq(errno, ENOMEM);
    cr_assert_null(arena.alloc(0, 1u << 20));
    cr_assert_geq(stats->denied.load(), 1u);
    cr_assert_eq(std::count(g_log.begin(), g_log.end(), '\n'), 1, "%s", g_log.c_str());
    cr_assert(g_log.find("1|cannot lock arena memory (policy deny: matching allocations fail with ENOMEM)|memfd_secret "
                         "is disabled at boot") == 0,
              "%s", g_log.c_str());
}

Test(arena_secretmem, enosys_under_abort_stops_at_the_first_matching_allocation, .signal = SIGABRT) {
    without_memfd_secret(ENOSYS);
    make_arena(Backing::secretmem, LockFailurePolicy::abort);
    arena.alloc(0, 64);
}

// The kernel cannot give back part of a memfd_secret file: freed pages stay committed (and
// counted), are reused, and the arena says so once.
Test(arena_secretmem, freed_pages_stay_committed_and_are_reused) {
    make_arena(Backing::secretmem, LockFailurePolicy::fallback, true);
    void *big = arena.alloc(0, 4u << 20);
    std::memset(big, 0x5a, 4u << 20);
    const std::uint64_t committed = stats->secret_bytes.load();
    arena.free(big);
    cr_assert_eq(stats->secret_bytes.load(), committed);
    cr_assert_eq(stats->purged_bytes.load(), 0u);
    void *again = arena.alloc(0, 4u << 20);
    cr_assert_eq(again, big);
    cr_assert_eq(static_cast<unsigned char *>(again)[12345], 0, "not wiped");
    arena.free(again);
    cr_assert_eq(std::count(g_log.begin(), g_log.end(), '\n'), 1, "%s", g_log.c_str());
    cr_assert(g_log.find("2|freed secretmem arena memory stays committed") == 0, "%s", g_log.c_str());
}

// Free secretmem pages cannot go back, so they are not what the purge slack counts: they never
// make the pool look over it (no rescans for nothing), and never keep it from giving back free
// anonymous pages (beyond max_locked) at once past slack + burst.
Test(arena_secretmem, free_secretmem_pages_do_not_hold_back_giving_back_the_rest) {
    stats = mlshim::stats_create(false);
    cr_assert_not_null(stats);
    mlshim::ArenaOptions o;
    o.pool_bytes = 64u << 20;
    o.max_locked = 4u << 20;
    o.backing = Backing::secretmem;
    o.purge_slack = o.purge_burst = 0;
    o.purge_delay_ns = UINT64_MAX;  // nothing waits for the delay: only the at-once purge runs
    unsigned actions = mlshim::kActionAll;
    cr_assert_eq(arena.init(o, &actions, 1, stats, reporter), 0);
    void *secret = arena.alloc(0, 4u << 20), *anon = arena.alloc(0, 1u << 20);
    cr_assert(secret && anon);
    cr_assert(in_secretmem(secret) && !in_secretmem(anon));
    std::memset(secret, 1, 4u << 20);
    std::memset(anon, 2, 1u << 20);
    const std::uint64_t secret_bytes = stats->secret_bytes.load();
    arena.free(secret);
    cr_assert_eq(stats->purged_bytes.load(), 0u);
    arena.free(anon);
    cr_assert_eq(stats->purged_bytes.load(), 1u << 20, "the free anonymous pages went back at once");
    cr_assert_eq(stats->secret_bytes.load(), secret_bytes);
    cr_assert(g_log.find("2|freed secretmem arena memory stays committed") != std::string::npos, "%s", g_log.c_str());
}

// A plain fork shares a secretmem mapping; the arena's fork handler gives the child a copy of
// its own: live blocks keep their contents, and neither process sees the other's writes.
Test(arena_secretmem, a_fork_child_gets_a_copy_of_its_own) {
    make_arena(Backing::secretmem);
    auto *small = static_cast<unsigned char *>(arena.alloc(0, 32));
    auto *large = static_cast<unsigned char *>(arena.alloc(0, 1u << 20));
    small[0] = 'A';
    large[(1u << 20) - 1] = 'B';
    int go[2], done[2];
    cr_assert_eq(pipe(go), 0);
    cr_assert_eq(pipe(done), 0);
    arena.prefork();
    pid_t pid = fork();
    if (pid == 0) {
        arena.postfork_child_locks();
        arena.postfork_child();
        int bad = 0;
        if (small[0] != 'A' || large[(1u << 20) - 1] != 'B') bad |= 1;
        if (!in_secretmem(small) || !range_has_flag(small, 32, "lo")) bad |= 2;
        small[0] = 'C';  // the parent must not see it
        arena.free(large);
        char c = 0;
        if (write(done[1], "x", 1) != 1 || read(go[0], &c, 1) != 1) bad |= 4;
        if (small[0] != 'C') bad |= 8;  // nor the child the parent's
        _exit(bad);
    }
    arena.postfork_parent();
    char c = 0;
    cr_assert_eq(read(done[0], &c, 1), 1);
    cr_assert_eq(small[0], 'A', "the parent sees the child's write");
    cr_assert_eq(large[(1u << 20) - 1], 'B', "the child's free wiped the parent's block");
    small[0] = 'P';
    cr_assert_eq(write(go[1], "x", 1), 1);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
}
