// Where the shim can and cannot go: musl programs (refused by memlock-run before they start,
// named by memlock-inspect), AddressSanitizer builds (started by memlock-run with the options
// they need) and kernels without mlock2 (imitated by a seccomp filter that
// answers ENOSYS: build/progs/enosys_exec). The older glibc, the tarball and arm64 are proved
// by tests/reach/*.sh.
#include <criterion/criterion.h>
#include <sys/syscall.h>

#include <string>
#include <vector>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

std::string tool(const std::string &name) { return shim_build_dir() + "/" + name; }
std::string config(const std::string &name) { return shim_build_dir() + "/../config/" + name; }

// The tools' environment: nothing inherited that would choose the shim or config for them.
RunOptions tool_opts(std::vector<std::string> argv) {
    RunOptions o = plain_env(std::move(argv));
    o.unset_env.push_back("MEMLOCK_SHIM_LIB");
    return o;
}

#define assert_text(actual, expected)                                                              \
    do {                                                                                           \
        const std::string got_ = (actual), want_ = (expected);                                     \
        cr_assert(got_ == want_, "got:\n%s\nexpected:\n%s", got_.c_str(), want_.c_str());         \
    } while (0)

std::string musl_refusal(const std::string &prog) {
    return "memlock-run: " + prog +
           ": a musl libc program (loaded by /lib/ld-musl-x86_64.so.1); the shim is built for glibc and musl's "
           "loader cannot load it, so it would fail to start. Use a glibc build of the program (e.g. from a Debian- "
           "or Ubuntu-based image instead of Alpine); musl programs are not supported\n";
}

}  // namespace

TestSuite(reach, .timeout = 120);

// ---- musl ------------------------------------------------------------------------------------

Test(reach, run_refuses_a_musl_program_before_it_starts) {
    const std::string prog = need_built("musl_probe");
    TempDir dir;
    const std::string started = dir.file("started");
    // Without memlock-run the program runs (the loader is there): the refusal is memlock-run's.
    cr_assert(run_program(tool_opts({prog, started})).exited_with(0));
    cr_assert(file_exists(started));
    ::unlink(started.c_str());

    auto r = run_program(tool_opts({tool("memlock-run"), "--config", config("default.json"), "--", prog, started}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, musl_refusal(prog));
    assert_text(r.out, "");
    cr_assert(!file_exists(started), "the musl program was started");

    r = run_program(tool_opts({tool("memlock-run"), "--config", config("default.json"), "--check", "--", prog}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, musl_refusal(prog));
    cr_assert(!file_exists(started), "the musl program was started");
}

Test(reach, run_refuses_a_script_whose_interpreter_is_musl) {
    const std::string prog = need_built("musl_probe");
    TempDir dir;
    const std::string script = dir.file("script");
    cr_assert(write_file(script, "#!" + prog + "\n", 0755));
    auto r = run_program(tool_opts({tool("memlock-run"), "--config", config("default.json"), "--", script}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, musl_refusal(prog));
}

// ---- sanitizer builds ------------------------------------------------------------------------

// AddressSanitizer refuses a library preloaded ahead of its runtime unless told otherwise:
// memlock-run tells it, and turns LeakSanitizer off, unless ASAN_OPTIONS already decides.
Test(reach, run_starts_an_asan_program_with_the_shim_ahead_of_its_runtime) {
    const std::string prog = need_built("e2e_layout_asan");
    TempDir dir;
    const std::string rules = prepare_e2e(dir, "e2e_layout_asan", false);
    const std::string why = " (ASan refuses a library preloaded ahead of its runtime, and LeakSanitizer cannot see "
                            "pointers kept in the arena)\n";
    RunOptions o = tool_opts({tool("memlock-run"), "--config", rules, "--", prog});
    o.unset_env.push_back("ASAN_OPTIONS");
    auto r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("\ndone\n") != std::string::npos, "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: " + prog +
                           " is built with AddressSanitizer: ASAN_OPTIONS gets verify_asan_link_order=0:detect_leaks=0" +
                           why);

    o = tool_opts({tool("memlock-run"), "--config", rules, "--", prog});
    o.env.push_back({"ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1"});
    r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: " + prog + " is built with AddressSanitizer: ASAN_OPTIONS gets verify_asan_link_order=0" +
                           why);
}

Test(reach, inspect_names_a_musl_process) {
    const std::string prog = need_built("musl_probe");
    TempDir dir;
    LiveProgram child;
    start_until_ready(child, tool_opts({prog, dir.file("started"), "wait"}));
    auto r = run_program(tool_opts({tool("memlock-inspect"), std::to_string(child.pid())}));
    child.finish();
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    cr_assert(r.out.find("): not protected: a musl libc program: the shim is built for glibc and cannot be loaded "
                         "into it (use a glibc build of the program)\n") != std::string::npos,
              "%s", r.out.c_str());
}

// ---- kernels without mlock2 ------------------------------------------------------------------

// The seccomp launcher installs its filter (it exits 125 unless each listed call then fails
// with ENOSYS), refuses a bad list, and the filter is inherited across exec.
Test(reach, enosys_exec_takes_the_listed_calls_away) {
    const std::string launcher = need_built("enosys_exec");
    auto r = run_program(plain_env({launcher, std::to_string(SYS_mlock2), "true"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_text(r.err, "");
    r = run_program(plain_env({launcher, "x", "true"}));
    cr_assert(r.exited_with(125), "%s", r.describe().c_str());
    assert_text(r.err, "enosys_exec: bad system call list: x\n");
    r = run_program(plain_env({launcher, std::to_string(SYS_mlock2), launcher, std::to_string(SYS_mlock2), "true"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
}

// Before Linux 4.4 there is no mlock2: the arena locks with mlock, and the matched blocks
// are locked and excluded from dumps as on a new kernel.
Test(reach, without_mlock2_matched_blocks_are_still_locked) {
    TempDir dir;
    const std::string config_path = prepare_e2e(dir, "e2e_layout");
    need_built("enosys_exec");
    LiveProgram child;
    start_until_ready(child, shim_options(config_path, {shim_program("enosys_exec"), std::to_string(SYS_mlock2),
                                                        shim_program("e2e_layout")}));
    const pid_t pid = child.pid();
    const auto maps = read_smaps(pid);
    cr_assert(!maps.empty(), "cannot read /proc/%d/smaps", static_cast<int>(pid));
    unsigned matched = 0;
    for (const auto &b : printed_blocks(child.out())) {
        cr_assert_not_null(b.addr, "bad address in: %s", b.line.c_str());
        cr_assert(range_has_flag(b.addr, b.size, "lo", b.matched, pid), "%s: lo should be %s", b.line.c_str(),
                  b.matched ? "set" : "absent");
        cr_assert(range_has_flag(b.addr, b.size, "dd", b.matched, pid), "%s: dd should be %s", b.line.c_str(),
                  b.matched ? "set" : "absent");
        if (!b.matched) continue;
        ++matched;
        for (const auto &m : mappings_overlapping(maps, b.addr, b.size)) {
            cr_assert_gt(m.locked_kb, 0u, "%s: Locked: 0 kB", b.line.c_str());
            // mlock (not mlock2's lock-on-fault) locks every page of the range at once.
            cr_assert_eq(m.locked_kb * 1024, m.end - m.start, "%s: mapping %lx-%lx only partly locked",
                         b.line.c_str(), static_cast<unsigned long>(m.start), static_cast<unsigned long>(m.end));
        }
    }
    cr_assert_eq(matched, 5u, "stdout: %s", child.out().c_str());
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const std::string stats = stats_of(dir, pid);
    cr_assert_eq(stat_value(stats, "lock_failures"), 0u, "%s", stats.c_str());
    cr_assert_gt(stat_value(stats, "locked_bytes"), 0u, "%s", stats.c_str());
}
