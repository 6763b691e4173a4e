// End-to-end: a shimmed program across fork(2) and under multi-threaded traffic.
#include <criterion/criterion.h>

#include <string>
#include <vector>

#include "e2e.hpp"

using namespace memlock_test;

// mlock is not inherited: the child's arena pages are locked again by the shim, and the child
// reads and frees the blocks its parent allocated.
Test(e2e_lifecycle, forked_child_relocks_arena_and_frees_parent_blocks) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_fork");
    RunOptions opts = shim_options(config, {shim_program("e2e_fork")});
    LiveProgram prog;
    start_until_ready(prog, opts);
    const auto child_pid = line_value(prog.out(), "child");
    const auto parent_pid = line_value(prog.out(), "parent");
    cr_assert(child_pid.has_value() && parent_pid.has_value(), "%s", prog.out().c_str());
    const pid_t child = static_cast<pid_t>(std::stol(*child_pid));
    const auto blocks = line_values(prog.out(), "block");
    cr_assert_eq(blocks.size(), 64u, "%s", prog.out().c_str());
    const auto maps = read_smaps(child);
    cr_assert(!maps.empty());
    for (const auto &b : blocks) {
        const void *addr = parse_pointer(b);
        cr_assert_not_null(addr);
        // The smallest block is 32 bytes; checking its first 32 covers the page it starts on.
        cr_assert(range_has_flag(addr, 32, "lo", true, child), "child: block %s is not locked", b.c_str());
        cr_assert(range_has_flag(addr, 32, "dd", true, child), "child: block %s is not dontdump", b.c_str());
        const auto m = find_mapping(maps, addr);
        cr_assert(m.has_value());
        cr_assert_gt(m->locked_kb, 0u, "child: block %s in a mapping with Locked: 0 kB", b.c_str());
    }
    cr_assert_gt(vm_locked_kb(child), 0);

    const RunResult r = prog.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    for (const char *line : {"\nchild-done\n", "\nchild-exit 0\n", "\nparent-ok\n"})
        cr_assert(r.out.find(line) != std::string::npos, "missing %s in\n%s", line + 1, r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());

    // stats.file is written by the process that read the config only (a fork child may be
    // sandboxed: docs/shim.md), so the child leaves none.
    cr_assert(::access(dir.file("stats." + *child_pid + ".json").c_str(), F_OK) != 0, "the fork child wrote a stats file");
    const std::string ps = stats_of(dir, static_cast<pid_t>(std::stol(*parent_pid)));
    cr_assert_geq(stat_value(ps, "matched_allocations"), 64u, "%s", ps.c_str());
    cr_assert_leq(stat_value(ps, "live_bytes"), 4096u, "%s", ps.c_str());
}

// 4 threads x 200k rounds of matched and unmatched allocations, some freed by another thread.
Test(e2e_lifecycle, threads_stress_with_cross_thread_frees) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_threads");
    RunOptions opts = shim_options(config, {shim_program("e2e_threads"), "200000"});
    opts.timeout_ms = 120000;
    LiveProgram prog;
    cr_assert_not_null(start_program_into(prog, opts));
    const pid_t pid = prog.pid();
    const RunResult r = prog.finish(120000);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("\nok\n") != std::string::npos, "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
    const auto matched = line_value(r.out, "matched");
    cr_assert(matched.has_value());
    const unsigned long long expected = std::stoull(*matched);
    cr_assert_geq(expected, 4u * 200000u);
    const std::string s = stats_of(dir, pid);
    cr_assert_geq(stat_value(s, "matched_allocations"), expected, "%s", s.c_str());
    cr_assert_geq(stat_value(s, "frees"), expected, "%s", s.c_str());
    cr_assert_leq(stat_value(s, "matched_allocations") - stat_value(s, "frees"), 4u, "%s", s.c_str());
    cr_assert_leq(stat_value(s, "live_bytes"), 4096u, "%s", s.c_str());
    cr_assert_eq(stat_value(s, "denied"), 0u, "%s", s.c_str());
}

// fork while other threads allocate: the arena's locks are consistent in every child, which
// allocates, frees and frees a block from before the fork (a lock left held would hang it).
Test(e2e_lifecycle, fork_while_threads_allocate) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_forkthreads");
    RunOptions opts = shim_options(config, {shim_program("e2e_forkthreads"), "100"});
    opts.timeout_ms = 120000;
    const RunResult r = run_program(opts);
    cr_assert_not(r.timed_out, "a child hung after fork: %s", r.describe().c_str());
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "forks 100 ok\n");
    cr_assert_str_empty(r.err.c_str());
}
