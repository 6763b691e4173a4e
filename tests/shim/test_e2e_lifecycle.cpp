// End-to-end: a shimmed program across fork(2) and under multi-threaded traffic.
#include <criterion/criterion.h>

#include <cerrno>
#include <cstring>
#include <sys/syscall.h>
#include <string>
#include <nlohmann/json.hpp>
#include <vector>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

// mlock is not inherited: the child's arena pages are locked again by the shim, and the child
// reads and frees the blocks its parent allocated. args: e2e_fork's arguments.
void check_forked_child(const std::vector<std::string> &args) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_fork");
    std::vector<std::string> argv{shim_program("e2e_fork")};
    argv.insert(argv.end(), args.begin(), args.end());
    RunOptions opts = shim_options(config, argv);
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
    cr_assert(r.out.find("clone stored tid") == std::string::npos, "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());

    // stats.file is written by the process that read the config only (a fork child may be
    // sandboxed: docs/shim.md), so the child leaves none.
    cr_assert(::access(dir.file("stats." + *child_pid + ".json").c_str(), F_OK) != 0, "the fork child wrote a stats file");
    const std::string ps = stats_of(dir, static_cast<pid_t>(std::stol(*parent_pid)));
    cr_assert_geq(stat_value(ps, "matched_allocations"), 64u, "%s", ps.c_str());
    cr_assert_leq(stat_value(ps, "live_bytes"), 4096u, "%s", ps.c_str());
}

}  // namespace

Test(e2e_lifecycle, forked_child_relocks_arena_and_frees_parent_blocks) { check_forked_child({}); }

// The same for a child made by syscall(SYS_clone, SIGCHLD, 0, ...), which runs no atfork
// handler (vsftpd's per-connection processes): the shim's own fork handlers run around it.
Test(e2e_lifecycle, raw_clone_child_relocks_arena_and_frees_parent_blocks) { check_forked_child({"0", "clone"}); }

// The same for a child made by glibc's clone(fn, stack, SIGCHLD | CLONE_PARENT_SETTID, arg,
// &tid) (sandboxes, container tools), which runs no atfork handler either: the shim's child
// handler runs on the child's stack before fn, and clone still stores the child's pid in tid.
Test(e2e_lifecycle, libc_clone_child_relocks_arena_and_frees_parent_blocks) {
    check_forked_child({"0", "libc-clone"});
}

// The same with CLONE_VFORK: the parent stays suspended in clone while the child is inspected.
Test(e2e_lifecycle, libc_clone_vfork_child_relocks_arena_and_frees_parent_blocks) {
    check_forked_child({"0", "libc-clone-vfork"});
}

// The same for a child made by _Fork (glibc 2.34 and later), which runs no atfork handler:
// the shim makes the child's memory its own all the same, with no handler run.
Test(e2e_lifecycle, underscore_fork_child_relocks_arena_and_frees_parent_blocks) { check_forked_child({"0", "_Fork"}); }

namespace {

// Runs e2e_clone MODE under the shim with the end-to-end rules; it must exit 0 within a minute.
RunResult run_e2e_clone(const char *mode) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_clone");
    RunOptions opts = shim_options(config, {shim_program("e2e_clone"), mode});
    opts.timeout_ms = 60000;
    const RunResult r = run_program(opts);
    cr_assert_not(r.timed_out, "hung: %s", r.describe().c_str());
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    return r;
}

}  // namespace

// A thread-like child of glibc's clone (CLONE_VM, CLONE_FS, CLONE_FILES, the tid arguments)
// shares the parent's memory and so its arena and its locks: clone passes through untouched,
// no fork handler runs, and parent and child read and free each other's blocks.
Test(e2e_lifecycle, libc_clone_with_clone_vm_passes_through) {
    const RunResult r = run_e2e_clone("vm");
    cr_assert_str_eq(r.out.c_str(), "vm-child-exit 0\ntids ok\nok\n");
    cr_assert_str_empty(r.err.c_str());
}

// A child of glibc's clone with CLONE_SETTLS and without CLONE_VM runs on a thread pointer
// its parent made, through which the shim's fork handler could not reach its own state: clone
// passes through, the child runs, and the shim says once that its arena stays unlocked.
Test(e2e_lifecycle, libc_clone_with_settls_passes_through_and_says_the_arena_stays_unlocked) {
    const RunResult r = run_e2e_clone("settls");
    cr_assert_str_eq(r.out.c_str(), "settls-child-exit 7\n");
    assert_log_eq(r.err, "memlock-shim: warning: clone with CLONE_SETTLS and without CLONE_VM: the child's arena is "
                         "not locked again (it may go to swap; still wiped and out of core dumps)\n");
}

// Clone calls that fail come back as without the shim, with the program's other thread alive
// (the fork handlers take their locks then): glibc's clone refusing a NULL fn and the kernel
// refusing CLONE_SIGHAND without CLONE_VM (EINVAL, the parent's handler restoring); clone3
// through syscall(3) with an unreadable struct clone_args (EFAULT, not a crash in the shim),
// also one whose flags and stack are readable and the rest not. Then the other thread and a
// clone3 fork child allocate and free matching blocks: no lock was left held.
Test(e2e_lifecycle, failing_clone_calls_return_errno_and_release_the_fork_locks) {
    const RunResult r = run_e2e_clone("failures");
    const std::string einval = std::strerror(EINVAL), efault = std::strerror(EFAULT);
    const std::string expected = "clone-null-fn -1 " + einval + "\nclone-sighand-without-vm -1 " + einval +
                                 "\nclone3-prot-none -1 " + efault + "\nclone3-unmapped -1 " + efault +
                                 "\nclone3-straddling -1 " + efault + "\nclone3-child-exit 0\nok\n";
    cr_assert_str_eq(r.out.c_str(), expected.c_str());
    cr_assert_str_empty(r.err.c_str());
}

// Every page a fork child writes is a copy-on-write fault, dear on a paravirtualised machine:
// the fork handlers write nothing of the shim's own data (.data, .bss) or of its counters in
// either process, until the child counts something. Seen from outside in the child's smaps
// while the parent waits: a page written by either process after the fork is Private_Dirty in
// the child; one neither wrote is still shared with the parent.
Test(e2e_lifecycle, a_fork_child_writes_no_page_of_the_shim) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_fork");
    LiveProgram prog;
    start_until_ready(prog, shim_options(config, {shim_program("e2e_fork")}));
    const auto child = line_value(prog.out(), "child");
    cr_assert(child.has_value(), "%s", prog.out().c_str());
    const auto maps = read_smaps(static_cast<pid_t>(std::stol(*child)));
    std::size_t shim_rw = 0, counters = 0;
    std::uintptr_t shim_end = 0;
    for (const auto &m : maps) {
        const bool shim = m.path.find("libmemlock_shim.so") != std::string::npos;
        const bool bss = m.path.empty() && m.start == shim_end && shim_end != 0;
        if (shim) shim_end = m.end;
        if ((shim && m.perms[1] == 'w') || bss) {
            ++shim_rw;
            cr_assert_eq(m.private_dirty_kb, 0u, "the child wrote %zu kB of the shim's %s at %#lx", m.private_dirty_kb,
                         bss ? ".bss" : "data", static_cast<unsigned long>(m.start));
        }
        if (m.path.find("/memfd:memlock-shim") != std::string::npos) {
            ++counters;
            cr_assert_eq(m.private_dirty_kb, 0u, "the child wrote %zu kB of its counters", m.private_dirty_kb);
        }
    }
    cr_assert(shim_rw >= 1 && counters == 1, "shim data mappings %zu, counters mappings %zu", shim_rw, counters);
    // Its counters are still its parent's page, and memlock-inspect reads them as the child's:
    // protected, under the child's pid, with the 64 blocks it inherited.
    const RunResult in = run_program(plain_env({shim_build_dir() + "/memlock-inspect", "--json", *child}));
    const auto j = nlohmann::json::parse(in.out, nullptr, false);
    cr_assert(in.exited_with(0) && !j.is_discarded(), "%s", in.describe().c_str());
    cr_assert_eq(j["status"].get<std::string>(), "protected", "%s", in.out.c_str());
    cr_assert_eq(j["counters"]["pid"].get<long>(), std::stol(*child), "%s", in.out.c_str());
    cr_assert_eq(j["counters"]["matched_allocations"].get<long>(), 64, "%s", in.out.c_str());
    const RunResult r = prog.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
}

namespace {

// The THP mode in force (/sys/kernel/mm/transparent_hugepage/enabled: "always", "madvise",
// "never"), or "" where the kernel has no transparent huge pages.
std::string thp_mode() {
    const auto text = read_file("/sys/kernel/mm/transparent_hugepage/enabled");
    if (!text) return "";
    const auto open = text->find('['), close = text->find(']');
    return open == std::string::npos || close < open ? "" : text->substr(open + 1, close - open - 1);
}

// The mappings of process `pid` that hold [lo, hi): their smaps totals, and whether every
// one of them is locked (lo) and dontdump (dd).
struct ArenaView {
    std::size_t rss_kb = 0, pss_kb = 0, locked_kb = 0, huge_kb = 0;
    bool lo = true, dd = true;
};

ArenaView arena_view(pid_t pid, const void *lo, const void *hi) {
    const std::size_t len = static_cast<std::size_t>(static_cast<const char *>(hi) - static_cast<const char *>(lo));
    ArenaView v;
    const auto maps = mappings_overlapping(read_smaps(pid), lo, len);
    cr_assert(!maps.empty(), "pid %d: nothing mapped at %p", static_cast<int>(pid), lo);
    for (const auto &m : maps) {
        v.rss_kb += m.rss_kb, v.pss_kb += m.pss_kb, v.locked_kb += m.locked_kb, v.huge_kb += m.anon_huge_kb;
        v.lo = v.lo && m.has_flag("lo"), v.dd = v.dd && m.has_flag("dd");
    }
    return v;
}

// Runs `argv` (e2e_fork with 4 MiB of blocks, as such or through a wrapper) and checks the
// arena range holding the 4 MiB in the parent and in its fork child: locked (lo, and all of
// its resident memory counted under Locked: Locked is the mapping's Pss when it is locked),
// dontdump, resident; on huge pages (AnonHugePages) when `huge`, none when `small`. `range`:
// the output line that gives the range ("bulk LO HI").
void check_fork_arena(const RunOptions &opts, bool huge, bool small, const char *range = "bulk") {
    LiveProgram prog;
    start_until_ready(prog, opts);
    const auto parent = line_value(prog.out(), "parent"), child = line_value(prog.out(), "child");
    const auto bulk = line_value(prog.out(), range);
    cr_assert(parent && child && bulk, "%s", prog.out().c_str());
    const auto space = bulk->find(' ');
    const void *lo = parse_pointer(bulk->substr(0, space)), *hi = parse_pointer(bulk->substr(space + 1));
    cr_assert(lo && hi && hi > lo, "bulk %s", bulk->c_str());
    for (const auto &[who, pid] : {std::pair{"parent", std::stol(*parent)}, std::pair{"child", std::stol(*child)}}) {
        const ArenaView v = arena_view(static_cast<pid_t>(pid), lo, hi);
        cr_assert(v.lo && v.dd, "%s: the 4 MiB of blocks are not all in lo dd mappings", who);
        cr_assert_geq(v.rss_kb, 4000u, "%s: the 4 MiB of blocks are not resident", who);
        cr_assert(v.locked_kb == v.pss_kb && v.locked_kb > 0, "%s: Locked %zu kB, Pss %zu kB", who, v.locked_kb,
                  v.pss_kb);
        if (huge) cr_assert_geq(v.huge_kb, 2048u, "%s: no huge page among the 4 MiB (AnonHugePages %zu kB)", who, v.huge_kb);
        if (small) cr_assert_eq(v.huge_kb, 0u, "%s: AnonHugePages %zu kB", who, v.huge_kb);
    }
    const RunResult r = prog.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("\nparent-ok\n") != std::string::npos, "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
}

}  // namespace

// A process with a few MiB of matched blocks, where the kernel offers transparent huge pages:
// its locking pool commits whole huge pages, so the blocks lie on huge pages (a fork child's
// relock walks one entry per 2 MiB), locked and dontdump in the parent and in its fork child.
// Where THP is "never" (or missing), the test says so and checks the 4 KiB pages instead.
Test(e2e_lifecycle, a_few_mib_of_blocks_lie_on_huge_pages_locked_in_parent_and_fork_child) {
    SKIP_UNDER_QEMU_USER("smaps shows no effect of madvise or mlock2 on fault");
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_fork", false);
    const std::string mode = thp_mode();
    const bool thp = mode == "always" || mode == "madvise";
    if (!thp)
        cr_log_warn("transparent huge pages are %s on this machine: only the 4 KiB arena pages are checked",
                    mode.empty() ? "missing" : mode.c_str());
    check_fork_arena(shim_options(config, {shim_program("e2e_fork"), "4"}), thp, !thp && mode != "always");
}

// The same where the kernel says "never" (a copy of the sysfs file that says so, mounted over
// it in a private mount namespace): the arena commits slab by slab and locks its 4 KiB pages,
// in the parent and in its fork child. (With THP "always" in force khugepaged may still
// collapse them: only the locking is checked then.)
Test(e2e_lifecycle, without_huge_pages_the_arena_locks_small_pages_in_parent_and_fork_child) {
    SKIP_UNDER_QEMU_USER("smaps shows no effect of madvise or mlock2 on fault");
    const char *sysfs = "/sys/kernel/mm/transparent_hugepage/enabled";
    if (thp_mode().empty()) cr_skip_test("no transparent huge pages in this kernel: the other test covers it");
    cr_assert(have_program("unshare") && have_program("mount"), "unshare and mount are needed");
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_fork", false);
    const std::string never = dir.file("enabled");
    cr_assert(write_file(never, "always madvise [never]\n"));
    // Mounting needs CAP_SYS_ADMIN (root here; not in an unprivileged container): say so.
    const RunResult probe = run_program(plain_env({"unshare", "-m", "--propagation", "private", "mount", "--bind", never, sysfs}));
    if (!probe.exited_with(0)) cr_skip_test("cannot mount over %s here: %s", sysfs, probe.describe().c_str());
    RunOptions opts = plain_env({"unshare", "-m", "--propagation", "private", "sh", "-c",
                                 "mount --bind \"$1\" \"$2\" && exec env LD_PRELOAD=\"$3\" "
                                 "MEMLOCK_SHIM_CONFIG=\"$4\" \"$5\" 4",
                                 "sh", never, sysfs, shim_library(), config, shim_program("e2e_fork")});
    check_fork_arena(opts, false, thp_mode() != "always");
}

// Without lock-on-fault (a filter answers ENOSYS for mlock2, as Linux before 4.4 does) the
// arena locks with mlock and maps the regions it grows by MAP_LOCKED: the 4 MiB of blocks,
// past its first region, are locked in the parent and in its fork child, with no warning.
Test(e2e_lifecycle, without_lock_on_fault_a_grown_arena_is_locked_in_parent_and_fork_child) {
    SKIP_UNDER_QEMU_USER("smaps shows no effect of madvise");
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_fork", false);
    need_built("enosys_exec");
    check_fork_arena(shim_options(config, {shim_program("enosys_exec"), std::to_string(SYS_mlock2),
                                           shim_program("e2e_fork"), "4"}),
                     false, false);
}

// A fork handler that runs after the shim's (a library preloaded after the shim registers
// its handler first) and allocates 4 MiB of matched blocks, growing the arena right before
// the fork: the region the arena grew by is locked in the child too. (The shim's handler
// plans what the child locks; growing the arena drops the plan.)
Test(e2e_lifecycle, blocks_a_later_fork_handler_allocates_are_locked_in_the_fork_child) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_fork");
    const std::string lib = shim_build_dir() + "/libs/libatfork_grow.so";
    cr_assert(file_exists(lib), "%s missing", lib.c_str());
    RunOptions opts = shim_options(config, {shim_program("e2e_fork"), "1"});
    for (auto &[name, value] : opts.env)
        if (name == "LD_PRELOAD") value += " " + lib;
    opts.env.emplace_back("ATFORK_GROW_MIB", "4");
    check_fork_arena(opts, false, false, "grown");
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
