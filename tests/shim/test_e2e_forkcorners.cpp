// End-to-end: fork and libc contract corners (tests/progs/fork_corners.c), each run without
// the shim, with match-none and with match-all. A hang is a failure: run_three_ways kills a
// run after its timeout and fails the test, whatever the machine's speed.
#include <criterion/criterion.h>

#include <string>

#include "e2e.hpp"
#include "helpers.hpp"
#include "three_ways.hpp"

using namespace memlock_test;

namespace {

ThreeWays corners(const char *mode, ThreeWayOptions o = {}) {
    const std::string prog = shim_program("fork_corners");
    cr_assert(file_exists(prog), "%s missing: run `make progs`", prog.c_str());
    o.timeout_ms = 300000;  // a watchdog for a hang, far above a slow run
    return run_three_ways({prog, mode}, o);
}

}  // namespace

// fork is async-signal-safe: a handler that forks while the program is inside fork (after
// every prepare handler, before the parent handlers) must not find the shim's locks taken.
Test(e2e_fork_corners, fork_from_a_signal_handler_during_fork_never_hangs) {
    const ThreeWays t = corners("signal");
    t.expect_same(0);
    cr_assert_str_eq(t.without().result.out.c_str(), "nested forks during fork: yes\n");
}

// glibc bug 19431's pattern: getline holds a FILE lock and reallocates, fflush(NULL) holds the
// stdio list lock and waits for that FILE lock, and fork takes the list lock after the
// prepare handlers. Under match-all getline's buffers are arena blocks.
Test(e2e_fork_corners, fork_against_getline_and_fflush_never_hangs) {
    const ThreeWays t = corners("stdio");
    t.expect_same(0);
    cr_assert_str_eq(t.without().result.out.c_str(), "forks: 100\n");
    cr_assert_gt(t.all().stats.total("matched_allocations"), 0u, "%s", t.all().stats.describe().c_str());
}

// _Fork runs no fork handler and may be called from a signal handler: made while this thread
// or another holds an arena lock (under match-all the three threads' bursts of blocks refill
// and flush their caches under the pools' locks), its child locks its arena again without
// taking a lock, and exits. (That the child's arena is locked: e2e_lifecycle.)
Test(e2e_fork_corners, underscore_fork_from_a_signal_handler_among_allocating_threads_never_hangs) {
    const ThreeWays t = corners("bare");
    t.expect_same(0);
    cr_assert_str_eq(t.without().result.out.c_str(), "_Fork children: all exited 0\n");
    cr_assert_gt(t.all().stats.total("matched_allocations"), 0u, "%s", t.all().stats.describe().c_str());
}

// munlockall is a system call, which a signal handler may make: the arena's locking again
// after it must not wait for the arena's locks, which a fork in another thread holds from its
// prepare handler on while glibc's fork then waits for its allocator's locks, one of which the
// thread the handler interrupted holds (the blocks of 2 to 60 KiB are glibc's under the
// end-to-end rules, none matches them: this run hung before).
Test(e2e_fork_corners, munlockall_from_a_signal_handler_during_fork_never_hangs) {
    const ThreeWays t = corners("unlockall");
    t.expect_same(0);
    cr_assert_str_eq(t.without().result.out.c_str(), "forks: 1000\n");

    TempDir dir;
    RunOptions r = shim_options(prepare_e2e(dir, "fork_corners", false), {shim_program("fork_corners"), "unlockall"});
    r.timeout_ms = 120000;  // a watchdog for a hang, far above a slow run (about 2 s here)
    const RunResult rules = run_program(r);
    cr_assert(rules.exited_with(0), "%s", rules.describe().c_str());
    cr_assert_str_eq(rules.out.c_str(), "forks: 1000\n");
}

// A library loaded at start-up that binds _Fork when the loader relocates it (-z now), which
// is before the preloaded shim's own relocation: the program starts, finds _Fork and makes a
// child with it, as without the shim.
Test(e2e_fork_corners, a_library_that_binds_underscore_fork_at_start_up_runs_as_without_the_shim) {
    const std::string prog = shim_program("fork_bare_lib");
    cr_assert(file_exists(prog), "%s missing: run `make progs`", prog.c_str());
    const ThreeWays t = run_three_ways({prog});
    t.expect_same(0);
    cr_assert_str_eq(t.without().result.out.c_str(), "has _Fork: yes\nchild-exit 7\n");
}

// posix_memalign returns ENOMEM and sets errno to ENOMEM, as glibc's does, on the arena path too.
Test(e2e_fork_corners, posix_memalign_failure_sets_errno) {
    const ThreeWays t = corners("errno");
    t.expect_same(0);
    cr_assert_str_eq(t.without().result.out.c_str(), "posix_memalign: ENOMEM, errno ENOMEM, memptr untouched\n");
}

// glibc's debugging allocator exports only versioned symbols: calls the shim passes through
// must still reach it, for every allocation function (glibc 2.36's aligned_alloc is another
// name of its memalign, with a version of its own). With MALLOC_CHECK_=3 it reports the size
// asked for as usable, and its free aborts on a block glibc's allocator made; under match-all
// the blocks are the arena's, which rounds to its 16-byte granule.
Test(e2e_fork_corners, passed_through_calls_reach_glibc_debugging_allocator) {
    const std::string debug = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0";
    cr_assert(file_exists(debug), "%s missing (package libc6)", debug.c_str());
    ThreeWayOptions o;
    o.preload_after = debug;
    o.env = {{"MALLOC_CHECK_", "3"}};
    const ThreeWays t = corners("debug", o);
    for (const auto &r : t.runs) cr_assert(r.result.exited_with(0), "%s\n%s", mode_name(r.mode), r.result.describe().c_str());
    const char *expected =
        "malloc usable 7\ncalloc usable 7\nrealloc usable 7\naligned_alloc usable 7\nmemalign usable 7\n"
        "posix_memalign usable 7\nvalloc usable 7\npvalloc usable 4096\n";
    cr_assert_str_eq(t.without().result.out.c_str(), expected);
    cr_assert_str_eq(t.none().result.out.c_str(), expected);
    cr_assert(t.all().result.out.rfind("malloc usable 16\n", 0) == 0, "%s", t.all().result.out.c_str());
}

// aligned_alloc's rule for an alignment that is not a power of two is the next allocator's:
// glibc before 2.38 serves it as memalign does, a C17 allocator (glibc 2.38 and later;
// libc17aligned.so here) refuses it with EINVAL. The shim answers as the next allocator does,
// under match-none, match-all and the end-to-end rules, whose window holds the 64-byte calls
// that no rule matches (they reach the next allocator with the caller's alignment); a block of
// a matching size that the next allocator would serve comes from the arena.
Test(e2e_fork_corners, aligned_alloc_refuses_the_alignments_the_next_allocator_refuses) {
    const std::string c17 = shim_build_dir() + "/libs/libc17aligned.so";
    cr_assert(file_exists(c17), "%s missing: run `make progs`", c17.c_str());
    for (const std::string &after : {std::string(), c17}) {
        ThreeWayOptions o;
        o.preload_after = after;
        const ThreeWays t = corners("aligned", o);
        t.expect_same(0);
        const std::string &expected = t.without().result.out;
        if (!after.empty())
            cr_assert_str_eq(expected.c_str(),
                             "aligned_alloc(64, 32): ok\naligned_alloc(65, 32): EINVAL\naligned_alloc(0, 32): EINVAL\n"
                             "aligned_alloc(3, 32): EINVAL\naligned_alloc(65, 64): EINVAL\naligned_alloc(0, 64): EINVAL\n"
                             "aligned_alloc(65, 4096): EINVAL\n");

        TempDir dir;
        cr_assert(dir.ok());
        const std::string config = dir.file("rules.json"), stats = dir.file("stats.json");
        cr_assert(write_file(config, e2e_rules_config(stats)));
        RunOptions r = shim_options(config, {shim_program("fork_corners"), "aligned"});
        for (auto &kv : r.env)
            if (kv.first == "LD_PRELOAD" && !after.empty()) kv.second += " " + after;
        const RunResult rules = run_program(r);
        cr_assert(rules.exited_with(0), "%s\n%s", after.c_str(), rules.describe().c_str());
        cr_assert_str_eq(rules.out.c_str(), expected.c_str());
        unsigned long long served32 = 0;
        for (const auto &line : split_lines(expected))
            if (line.find(", 32): ok") != std::string::npos) ++served32;
        cr_assert_eq(stat_value(read_stats(stats), "matched_allocations"), served32, "%s", expected.c_str());
    }
}

// pvalloc rounds to whole pages before the rules see the size, but a call no rule takes
// reaches the next allocator with the caller's size: glibc 2.36 rounds pvalloc(0) to a
// 1-byte block, not a page. config/default.json's caller rule (no libcrypto is loaded here)
// has every size up to 16 KiB in its window and matches none.
Test(e2e_fork_corners, an_unmatched_pvalloc_reaches_the_next_allocator_with_the_callers_size) {
    const std::string prog = shim_program("fork_corners");
    cr_assert(file_exists(prog), "%s missing: run `make progs`", prog.c_str());
    RunOptions plain;
    plain.argv = {prog, "pvalloc"};
    plain.unset_env = {"LD_PRELOAD", "MEMLOCK_SHIM_CONFIG"};
    const RunResult without = run_program(plain);
    cr_assert(without.exited_with(0), "%s", without.describe().c_str());
    cr_assert(without.out.rfind("pvalloc(0) usable ", 0) == 0, "%s", without.out.c_str());
    const RunResult r = run_program(shim_options(source_dir() + "/config/default.json", {prog, "pvalloc"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), without.out.c_str());
}
