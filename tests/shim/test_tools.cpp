// The operators' tools, run for real: memlock-run (config, limits, programs it must refuse,
// exec in place), memlock-inspect (on live shimmed processes, checked against smaps) and
// `make install` into a temporary DESTDIR.
#include <criterion/criterion.h>
#include <sys/resource.h>
#include <elf.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/capability.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config.hpp"
#include "memlock.h"
#include "stats.hpp"
#include "e2e.hpp"
#include "../../tools/tool.hpp"

using namespace memlock_test;

// Compares whole texts and shows both on failure.
#define assert_text(actual, expected)                                                              \
    do {                                                                                           \
        const std::string got_ = (actual), want_ = (expected);                                     \
        cr_assert(got_ == want_, "got:\n%s\nexpected:\n%s", got_.c_str(), want_.c_str());         \
    } while (0)

namespace {

std::string tool(const std::string &name) { return shim_build_dir() + "/" + name; }
std::string config(const std::string &name) { return source_dir() + "/config/" + name; }

// The tools' environment: nothing inherited that would choose the shim or config for them.
RunOptions tool_opts(std::vector<std::string> argv) {
    RunOptions o;
    o.argv = std::move(argv);
    o.unset_env = {"MEMLOCK_SHIM_LIB", "MEMLOCK_SHIM_CONFIG", "LD_PRELOAD", "MEMLOCK_SHIM_ON_CONFIG_ERROR",
                   "MEMLOCK_RUN_PID", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"};
    return o;
}

RunResult run(std::vector<std::string> argv) { return run_program(tool_opts(std::move(argv))); }

// memlock-run --config CONFIG --check --user nobody, under an 8 MiB RLIMIT_MEMLOCK; `before`
// goes between prlimit and memlock-run (a launcher).
RunResult check_user_nobody(const std::string &cfg, std::vector<std::string> before = {}) {
    std::vector<std::string> argv{"prlimit", "--memlock=8388608:8388608"};
    argv.insert(argv.end(), before.begin(), before.end());
    argv.insert(argv.end(), {tool("memlock-run"), "--config", cfg, "--check", "--user", "nobody"});
    return run(std::move(argv));
}

// memlock-run --config CONFIG [extra...] -- PROGRAM...
std::vector<std::string> wrap(const std::string &cfg, std::vector<std::string> program,
                              std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{tool("memlock-run"), "--config", cfg};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back("--");
    argv.insert(argv.end(), program.begin(), program.end());
    return argv;
}

std::string version() {
    auto v = read_file(source_dir() + "/VERSION");
    return v ? v->substr(0, v->find('\n')) : "?";
}

// A copy of config/default.json with another on_lock_failure (and max_locked).
std::string policy_config(const TempDir &dir, const std::string &policy, const std::string &max_locked = "64MiB") {
    const std::string path = dir.file(policy + ".json");
    write_file(path, "{\"version\": 1, \"rules\": [{\"name\": \"keys\", \"size\": 32}, {\"name\": \"pages\", "
                     "\"size\": 1024}], \"policy\": {\"max_locked\": \"" + max_locked +
                         "\", \"on_lock_failure\": \"" + policy + "\"}}");
    return path;
}

}  // namespace

TestSuite(tools, .timeout = 120);

// ---- memlock-run: options ------------------------------------------------------------------

Test(tools, run_version_and_help) {
    auto r = run({tool("memlock-run"), "--version"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_text(r.out, "memlock-run " + version() + "\n");
    r = run({tool("memlock-run"), "--help"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    for (const char *part : {"Usage: memlock-run", "--check", "64   usage error", "77   locked-memory limit",
                             "78   no config", "126  PROGRAM cannot be preloaded", "127  PROGRAM not found"})
        cr_assert(contains(r.out, part), "--help lacks \"%s\":\n%s", part, r.out.c_str());
}

Test(tools, run_usage_errors_exit_64) {
    auto r = run({tool("memlock-run"), "--config", config("default.json")});
    cr_assert(r.exited_with(64), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: no program to run (see memlock-run --help)\n");
    r = run({tool("memlock-run"), "--frobnicate", "true"});
    cr_assert(r.exited_with(64), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: unknown option --frobnicate (see memlock-run --help)\n");
    r = run({tool("memlock-run"), "--config"});
    cr_assert(r.exited_with(64), "%s", r.describe().c_str());
}

// ---- memlock-run: configs --------------------------------------------------------------------

Test(tools, run_invalid_config_gives_the_parsers_message_and_exit_78) {
    TempDir dir;
    const std::string bad = real(dir.path()) + "/bad.json";
    write_file(bad, "{\"version\": 1, \"rules\": [{\"name\": \"k\", \"sise\": 32}]}");
    // The message is the shared parser's own.
    mlshim::Config c;
    std::string error;
    cr_assert(!mlshim::load_config_file(bad, c, error));
    assert_text(error, bad + ": rules[0]: unknown key \"sise\"");

    for (bool check : {false, true}) {
        auto argv = check ? std::vector<std::string>{tool("memlock-run"), "--config", bad, "--check"}
                          : wrap(bad, {shim_program("tools_pid")});
        auto r = run(argv);
        cr_assert(r.exited_with(78), "%s", r.describe().c_str());
        assert_text(r.err, "memlock-run: " + error +
                               "\nmemlock-run: fix the config (see docs/config.md); nothing was started\n");
        cr_assert(!contains(r.out, "pid="), "the program ran: %s", r.out.c_str());
    }
}

Test(tools, run_syntax_error_and_missing_config) {
    TempDir dir;
    const std::string bad = real(dir.path()) + "/syntax.json";
    write_file(bad, "{\"version\": 1,\n \"rules\": [}\n");
    auto r = run(wrap(bad, {"true"}));
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "memlock-run: " + bad + ":2:"), "%s", r.err.c_str());

    const std::string missing = real(dir.path()) + "/missing.json";
    r = run(wrap(missing, {"true"}));
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "memlock-run: " + missing + ": No such file or directory\n"), "%s", r.err.c_str());
}

Test(tools, run_without_config_exits_78_and_takes_it_from_the_environment) {
    auto r = run({tool("memlock-run"), "--", shim_program("tools_pid")});
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: no config: pass --config FILE or set MEMLOCK_SHIM_CONFIG\n");

    auto o = tool_opts({tool("memlock-run"), "--check"});
    o.env = {{"MEMLOCK_SHIM_CONFIG", config("size-only.json")}};
    r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "config:  " + real(config("size-only.json")) + ": valid (2 rules, programs: any)\n"),
              "%s", r.out.c_str());
}

Test(tools, run_check_reports_needs_and_has_and_runs_nothing) {
    auto r = run({tool("memlock-run"), "--config", config("default.json"), "--check", "--",
                  shim_program("tools_pid")});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    struct rlimit rl;
    ::getrlimit(RLIMIT_MEMLOCK, &rl);
    const std::string expected =
        "config:  " + real(config("default.json")) + ": valid (1 rule, programs: any)\n" +
        "shim:    " + real(tool("libmemlock_shim.so")) + "\n" +
        "program: " + shim_program("tools_pid") + ": can be preloaded (loads " + real(shim_program("tools_pid")) +
        ")\n" +
        "rules:   \"tls-libraries-and-their-callees\": nothing " + real(shim_program("tools_pid")) +
        " links matches \"libcrypto.so*\" or \"libssl.so*\" or \"libgnutls.so*\" or \"libnettle.so*\" or "
        "\"libhogweed.so*\": the rule protects nothing unless the program loads one later (dlopen)\n" +
        "needs:   up to 64 MiB locked (policy.max_locked), 0 B locked at start-up (policy.prealloc), "
        "on_lock_failure fallback\n";
    cr_assert(r.out.rfind(expected, 0) == 0, "got:\n%s\nexpected to start with:\n%s", r.out.c_str(),
              expected.c_str());
    cr_assert(contains(r.out, "; CAP_IPC_LOCK yes\nlimits:  sufficient\n"), "%s", r.out.c_str());
    cr_assert(!contains(r.out, "pid="), "--check ran the program");
    assert_text(r.err, "");
}

// A program that defines malloc itself takes every allocation before the shim: --check says so.
Test(tools, run_check_warns_of_a_program_with_its_own_malloc) {
    const std::string prog = shim_program("own_allocator");
    const auto r = run({tool("memlock-run"), "--config", config("size-only.json"), "--check", "--", prog});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "program: " + prog + ": can be preloaded"), "%s", r.out.c_str());
    cr_assert(!contains(r.out, "ok\n"), "--check ran the program");
    assert_text(r.err, "memlock-run: " + real(prog) +
                           " defines its own malloc, which comes before the shim in the lookup order: the program's "
                           "allocations never reach the shim, and no rule sees them\n");
}

// memlock-run --check -- PROGRAM under a config of rules by module, with tests/libs' libraries in
// LD_LIBRARY_PATH (and LD_PRELOAD as given).
RunResult check_modules(const TempDir &dir, const std::string &rules, const std::string &prog,
                        const std::string &preload = "") {
    const std::string cfg = dir.file("modules.json");
    write_file(cfg, "{\"version\": 1, \"rules\": [" + rules + "]}");
    auto o = tool_opts({tool("memlock-run"), "--config", cfg, "--check", "--", shim_program(prog)});
    o.env = {{"LD_LIBRARY_PATH", shim_build_dir() + "/libs"}};
    if (!preload.empty()) o.env.emplace_back("LD_PRELOAD", preload);
    return run_program(o);
}

// The --check line of a rule by module that nothing PROGRAM links matches.
std::string links_nothing(const std::string &rule, const std::string &prog, const std::string &glob) {
    return "\nrules:   \"" + rule + "\": nothing " + real(shim_program(prog)) + " links matches \"" + glob +
           "\": the rule protects nothing unless the program loads one later (dlopen)\n";
}

// A program that has a library built in and exports its functions (as NodeSource's node has
// OpenSSL): nothing it links matches the rule's module, and the library installed (here in
// LD_LIBRARY_PATH) has 66 functions, all of which the program exports itself.
Test(tools, run_check_warns_of_a_library_built_into_the_program) {
    TempDir dir;
    const auto r = check_modules(dir, R"({"name": "testlib", "module": "libmemlock_testlib.so*"})", "testlib_builtin");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, links_nothing("testlib", "testlib_builtin", "libmemlock_testlib.so*")), "%s",
              r.out.c_str());
    assert_text(r.err, "memlock-run: " + real(shim_program("testlib_builtin")) + " has " + shim_build_dir() +
                           "/libs/libmemlock_testlib.so built in: it exports 66 of that library's 66 functions itself "
                           "(memlock_testlib_malloc, memlock_testlib_f0, memlock_testlib_f1, ...); rule \"testlib\" "
                           "selects by module (\"libmemlock_testlib.so*\"), which cannot select code built into "
                           "another object: select by function name instead (\"symbol\"; config/openssl-linked.json "
                           "does so for OpenSSL)\n");
}

// The library linked (DT_NEEDED) or preloaded (LD_PRELOAD), or the program's own name: the
// rules match something, and --check says nothing of them.
Test(tools, run_check_says_nothing_of_a_module_the_program_links) {
    TempDir dir;
    const std::string rules = R"({"name": "testlib", "module": "libmemlock_testlib.so*"},
        {"name": "program", "module": "testlib_*"})";
    auto r = check_modules(dir, rules, "testlib_linked");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "\nprogram: ") && !contains(r.out, "rules:"), "%s", r.out.c_str());
    assert_text(r.err, "");
    r = check_modules(dir, rules, "testlib_builtin", shim_build_dir() + "/libs/libmemlock_testlib.so");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "\nprogram: ") && !contains(r.out, "rules:"), "%s", r.out.c_str());
    assert_text(r.err, "");
}

// A module that nothing linked and nothing installed matches: the line, no warning.
Test(tools, run_check_says_when_nothing_the_program_links_matches_a_module) {
    TempDir dir;
    const auto r = check_modules(dir, R"({"name": "absent", "module": "libmemlock_absent.so*"})", "testlib_linked");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, links_nothing("absent", "testlib_linked", "libmemlock_absent.so*") + "needs:   "), "%s",
              r.out.c_str());
    assert_text(r.err, "");
}

// The program names its loader (PT_INTERP) and its audit libraries: --check lists its
// dependencies only with the system's loader, and never runs code the program chose.
Test(tools, run_check_runs_no_loader_the_program_names) {
    TempDir dir;
    const std::string loader = dir.file("loader"), ran = dir.file("ran"), prog = dir.file("prog");
    cr_assert(write_file(loader, "#!/bin/sh\necho ran > " + ran + "\n"));
    cr_assert_eq(::chmod(loader.c_str(), 0755), 0);
    RunOptions cc = plain_env({"cc", "-x", "c", "-", "-o", prog, "-Wl,--dynamic-linker=" + loader});
    cc.stdin_data = "int main(void) { return 0; }\n";
    const RunResult built = run_program(cc);
    cr_assert(built.exited_with(0), "%s", built.describe().c_str());
    const std::string cfg = dir.file("modules.json");
    cr_assert(write_file(cfg, R"({"version": 1, "rules": [{"name": "tls", "module": "libcrypto.so*"}]})"));
    const RunResult r = run_program(tool_opts({tool("memlock-run"), "--config", cfg, "--check", "--", prog}));
    cr_assert(!file_exists(ran), "memlock-run --check ran the program's loader");
    cr_assert(contains(r.out, "\nrules:   not checked: " + prog + " names " + loader + " as its loader, not this "
                              "system's "),
              "%s", r.describe().c_str());
    // Nor the audit library a program names (DT_AUDIT), which the loader's --list would run.
    const std::string audit = dir.file("audit.so"), audited = dir.file("audited"), audprog = dir.file("audprog");
    RunOptions lib = plain_env({"cc", "-shared", "-fPIC", "-x", "c", "-", "-o", audit});
    lib.stdin_data = "#include <fcntl.h>\nunsigned la_version(unsigned v) { creat(\"" + audited + "\", 0644); return v; }\n";
    cr_assert(run_program(lib).exited_with(0));
    cc.argv = {"cc", "-x", "c", "-", "-o", audprog, "-Wl,--audit=" + audit};
    cr_assert(run_program(cc).exited_with(0));
    const RunResult a = run_program(tool_opts({tool("memlock-run"), "--config", cfg, "--check", "--", audprog}));
    cr_assert(!file_exists(audited), "memlock-run --check ran the program's audit library");
    cr_assert(contains(a.out, "\nrules:   not checked: " + audprog + " names audit libraries (DT_AUDIT), which "
                              "listing its dependencies would run\n"),
              "%s", a.describe().c_str());
}

// A worker that drops to an unprivileged user keeps RLIMIT_MEMLOCK and loses CAP_IPC_LOCK:
// --check --user says that it can lock up to its limit (the first region locked on fault at
// start-up, regions mapped locked as the arena grows), that a process it forks locks that again,
// and what prealloc adds.
Test(tools, run_check_user_reports_what_the_workers_can_lock) {
    const std::string user = "\nuser:    nobody (uid 65534): RLIMIT_MEMLOCK soft 8 MiB, hard 8 MiB (kept across the "
                             "switch); CAP_IPC_LOCK no (dropped with the switch)\n";
    auto r = check_user_nobody(config("openssl.json"));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, user +
                                  "worker:  can lock 8 MiB of max_locked 64 MiB: the arena locks its first region "
                                  "(or policy.prealloc) on fault at start-up, before the switch, and maps the regions "
                                  "it grows by locked (mremap or mmap MAP_LOCKED, no mlock call), after the switch only up to "
                                  "RLIMIT_MEMLOCK in all; beyond that on_lock_failure applies\n"
                                  "forked:  a process forked after the switch locks its 8 MiB again within the user's "
                                  "limit\n"
                                  "prealloc: 0 B committed and locked at start-up, before the switch (what a worker "
                                  "may lock beyond RLIMIT_MEMLOCK; resident from the start)\n"),
              "%s", r.out.c_str());
    cr_assert(!contains(r.out, "suggest:"), "%s", r.out.c_str());
    // A budget within the limit: forked processes lock it again.
    TempDir dir;
    const std::string small = dir.file("small.json");
    cr_assert(write_file(small, R"({"version": 1, "rules": [{"name": "k", "size": 32}], "policy": {"max_locked": "4MiB"}})"));
    r = check_user_nobody(small);
    cr_assert(contains(r.out, "forked:  a process forked after the switch locks its 4 MiB again within the user's limit\n"),
              "%s", r.out.c_str());

    r = run({tool("memlock-run"), "--config", config("openssl.json"), "--check", "--user", "no-such-user-here"});
    cr_assert(r.exited_with(64), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: --user: no such user: no-such-user-here (see memlock-run --help)\n");
    r = run({tool("memlock-run"), "--config", config("openssl.json"), "--user", "nobody", "true"});
    cr_assert(r.exited_with(64), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: --user goes with --check (see memlock-run --help)\n");
}

// Under policy.backing "secretmem" nothing is locked on fault: the budget is a memfd_secret
// mapping made at start-up, unswappable by nature, and a process forked after the switch maps a
// file of its own under the user's limit, or copies its arena into anonymous memory and locks
// what fits of it.
Test(tools, run_check_user_under_secretmem_says_the_budget_is_memfd_secret_memory) {
    int fd = -1;
    if (memlock_secret_create(&fd) != 0) cr_skip_test("no memfd_secret on this kernel");
    ::close(fd);
    TempDir dir;
    const std::string secret = dir.file("secret.json");
    cr_assert(write_file(secret, R"({"version": 1, "rules": [{"name": "k", "size": 32}], "policy": {"backing": "secretmem"}})"));
    auto r = check_user_nobody(secret);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "\nworker:  keeps the 64 MiB of memfd_secret memory mapped at start-up, before the switch "
                              "(policy.max_locked 64 MiB, policy.backing secretmem): the arena memory it commits there "
                              "is never swapped (secretmem pages cannot be), without any locking call; beyond it "
                              "on_lock_failure applies\n"
                              "forked:  a process forked after the switch cannot map the 64 MiB of memfd_secret memory "
                              "of its own under the user's RLIMIT_MEMLOCK (8 MiB): it copies its arena into anonymous "
                              "memory (readable by root through /proc/PID/mem) and locks only 8 MiB of it, the pages in "
                              "use first (the rest still out of core dumps and wiped; memlock-inspect says degraded); "
                              "if the workers fork, set \"max_locked\": \"8MiB\" in policy or raise the limit to "
                              "64 MiB\n"
                              "prealloc: not needed (the memfd_secret memory is mapped at start-up)\n"),
              "%s", r.out.c_str());
    cr_assert(!contains(r.out, "on fault"), "%s", r.out.c_str());
    // A budget within the limit: forked processes map secretmem of their own.
    cr_assert(write_file(secret, R"({"version": 1, "rules": [{"name": "k", "size": 32}],
  "policy": {"backing": "secretmem", "max_locked": "4MiB"}})"));
    r = check_user_nobody(secret);
    cr_assert(contains(r.out, "\nforked:  a process forked after the switch maps the 4 MiB of memfd_secret memory of "
                              "its own within the user's limit\n"),
              "%s", r.out.c_str());
    cr_assert(!contains(r.out, "on fault"), "%s", r.out.c_str());
}

// Without lock-on-fault (mlock2 answering ENOSYS, as before Linux 4.4) the arena mlocks memory
// as it commits it, bounded by the limit after the switch: --check --user suggests prealloc.
Test(tools, run_check_user_without_lock_on_fault_suggests_prealloc) {
    const std::string launcher = shim_program("enosys_exec");
    cr_assert(file_exists(launcher), "%s is not built (make progs)", launcher.c_str());
    auto r = check_user_nobody(config("openssl.json"), {launcher, std::to_string(SYS_mlock2)});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "\nworker:  can lock 8 MiB of max_locked 64 MiB: this kernel has no lock-on-fault (mlock2 "
                              "MLOCK_ONFAULT), so the arena mlocks memory as it commits it, and after the switch only up "
                              "to RLIMIT_MEMLOCK in all; beyond that on_lock_failure applies\n"
                              "suggest: \"prealloc\": \"8MiB\" in policy: committed and locked at start-up, before the "
                              "switch and before any sandbox that forbids mlock (sshd's preauth child is killed by it); "
                              "resident from the start\n"),
              "%s", r.out.c_str());
}

// ---- memlock-run: limits and CAP_IPC_LOCK ----------------------------------------------------

Test(tools, run_low_limit_without_cap_says_what_to_change_and_follows_fallback) {
    TempDir dir;
    auto r = run(with_memlock_limit(65536, wrap(policy_config(dir, "fallback"), {shim_program("tools_pid")})));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "shim=" + real(tool("libmemlock_shim.so"))), "%s", r.describe().c_str());
    for (const char *part :
         {"memlock-run: the config may lock up to 64 MiB (policy.max_locked) but the program can lock only 64 KiB "
          "(RLIMIT_MEMLOCK soft 64 KiB, hard 64 KiB; no CAP_IPC_LOCK)\n",
          "memlock-run:   docker run --ulimit memlock=67108864:67108864 ...   or   docker run --cap-add IPC_LOCK "
          "...\n",
          "memlock-run:   systemd unit: LimitMEMLOCK=67108864   or   AmbientCapabilities=CAP_IPC_LOCK\n",
          "memlock-run:   Kubernetes container: securityContext: {capabilities: {add: [\"IPC_LOCK\"]}}\n",
          "memlock-run: policy.on_lock_failure is fallback: starting anyway"})
        cr_assert(contains(r.err, part), "stderr lacks \"%s\":\n%s", part, r.err.c_str());

    // --quiet keeps the warnings out.
    r = run(with_memlock_limit(65536, wrap(policy_config(dir, "fallback"), {shim_program("tools_pid")}, {"--quiet"})));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(!contains(r.err, "memlock-run:"), "%s", r.err.c_str());
}

// Under SECBIT_NOROOT root's exec gets no capabilities from its bounding set.
Test(tools, run_check_under_noroot_securebits_reports_no_cap_ipc_lock) {
    if (::geteuid() != 0 || !have_program("setpriv")) cr_skip_test("needs root and setpriv");
    auto r = run({"setpriv", "--securebits", "+noroot", tool("memlock-run"), "--config", config("default.json"),
                  "--check"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "; CAP_IPC_LOCK no\n"), "%s", r.out.c_str());
}

// Root with CAP_IPC_LOCK under a limit below max_locked: sufficient, and a note says what a
// process that drops the capability keeps (a daemon that drops its capabilities and stays root
// is not a user switch, which --user models).
Test(tools, run_check_notes_a_limit_that_holds_only_through_cap_ipc_lock) {
    if (::geteuid() != 0 || !have_program("prlimit")) cr_skip_test("needs root and prlimit");
    auto r = run({"prlimit", "--memlock=8388608:8388608", tool("memlock-run"), "--config", config("default.json"),
                  "--check"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "has:     RLIMIT_MEMLOCK soft 8 MiB, hard 8 MiB; CAP_IPC_LOCK yes\n"
                              "limits:  sufficient\n"
                              "note:    sufficient through CAP_IPC_LOCK alone: a process that drops it (a user "
                              "switch, see --user; or a daemon that drops its capabilities and stays root) locks up "
                              "to RLIMIT_MEMLOCK (8 MiB) in all, and policy.prealloc beyond it\n"),
              "%s", r.out.c_str());
    TempDir dir;
    r = run({"prlimit", "--memlock=8388608:8388608", tool("memlock-run"), "--config",
             policy_config(dir, "fallback", "8MiB"), "--check"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "limits:  sufficient\n") && !contains(r.out, "note:"), "%s", r.out.c_str());
}

Test(tools, run_low_limit_check_output) {
    TempDir dir;
    auto r = run(with_memlock_limit(65536, {tool("memlock-run"), "--config", policy_config(dir, "fallback"), "--check"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "has:     RLIMIT_MEMLOCK soft 64 KiB, hard 64 KiB; CAP_IPC_LOCK no\n"
                              "limits:  INSUFFICIENT\n"),
              "%s", r.out.c_str());
}

Test(tools, run_low_limit_under_deny_runs_and_under_abort_refuses_with_77) {
    TempDir dir;
    auto r = run(with_memlock_limit(65536, wrap(policy_config(dir, "deny"), {shim_program("tools_pid")})));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "pid="), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "memlock-run: policy.on_lock_failure is deny: starting anyway; matching allocations "
                              "beyond the limit will fail (ENOMEM)\n"),
              "%s", r.err.c_str());

    r = run(with_memlock_limit(65536, wrap(policy_config(dir, "abort"), {shim_program("tools_pid")})));
    cr_assert(r.exited_with(77), "%s", r.describe().c_str());
    assert_text(r.out, "");
    const std::string last = "memlock-run: policy.on_lock_failure is abort: refusing to start (exit 77)\n";
    cr_assert(r.err.size() > last.size() && r.err.compare(r.err.size() - last.size(), last.size(), last) == 0, "%s",
              r.err.c_str());
}

Test(tools, run_raises_the_soft_limit_toward_the_hard_one) {
    struct rlimit rl;
    ::getrlimit(RLIMIT_MEMLOCK, &rl);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < (2u << 20)) cr_skip_test("hard RLIMIT_MEMLOCK below 2 MiB");
    TempDir dir;
    const std::string cfg = policy_config(dir, "abort", "1MiB");
    const std::string limit = "--memlock=65536:" + std::to_string(2u << 20);
    auto argv = with_memlock_limit(65536, {tool("memlock-run"), "--config", cfg, "--check"});
    argv[1] = limit;
    auto r = run(argv);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "has:     RLIMIT_MEMLOCK soft 1 MiB, hard 2 MiB; CAP_IPC_LOCK no\n"
                              "raised:  soft RLIMIT_MEMLOCK from 64 KiB to 1 MiB (the program inherits it)\n"
                              "limits:  sufficient\n"),
              "%s", r.out.c_str());

    // The program inherits the raised limit (sh prints it in KiB).
    argv = with_memlock_limit(65536, wrap(cfg, {"/bin/sh", "-c", "ulimit -l"}));
    argv[1] = limit;
    r = run(argv);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_text(r.out, "1024\n");
    assert_text(r.err, "memlock-run: raised the soft RLIMIT_MEMLOCK from 64 KiB to 1 MiB\n");
}

// ---- memlock-run: programs a preload cannot reach --------------------------------------------

Test(tools, run_refuses_a_static_program_with_126) {
    const std::string prog = shim_program("tools_static");
    auto r = run(wrap(config("default.json"), {prog}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: " + prog +
                           ": statically linked (no PT_INTERP): there is no dynamic loader to apply LD_PRELOAD, "
                           "so it would run unprotected\n");
    assert_text(r.out, "");
}

// The kernel starts an executable in secure-execution mode, where the loader ignores
// LD_PRELOAD, when memlock-run's own real and effective IDs differ, when the exec leaves the
// effective user or group other than the real one, or gives capabilities to a user other than
// root. Those are refused; root starting its own setuid-root program (Debian's exim4), a
// setgid program of its own group, or one with file capabilities is not. Each verdict is set
// beside what the loader does with a plain LD_PRELOAD started the same way: whatever
// memlock-run lets through loads the shim.
Test(tools, run_refuses_only_programs_started_in_secure_execution_with_126) {
    if (::geteuid() != 0 || !have_program("setpriv")) cr_skip_test("needs root and setpriv");
    TempDir dir;
    cr_assert_eq(::chmod(dir.path().c_str(), 0755), 0);
    struct statvfs fs;
    if (::statvfs(dir.path().c_str(), &fs) == 0 && (fs.f_flag & ST_NOSUID))
        cr_skip_test("%s is on a nosuid mount: the kernel ignores setuid bits there", dir.path().c_str());
    const std::string copy = dir.file("tools_pid"), cfg = dir.file("default.json");
    auto bytes = read_file(shim_program("tools_pid"));
    auto cfg_bytes = read_file(config("default.json"));
    cr_assert(bytes && write_file(copy, *bytes, 0755) && cfg_bytes && write_file(cfg, *cfg_bytes, 0644));
    const std::string tail = "; the dynamic loader ignores LD_PRELOAD for such programs, so it would run unprotected\n";
    // `why` empty: memlock-run starts `prog` and the shim loads; else it refuses with `why`,
    // and when every kernel agrees (`secure`), a plain LD_PRELOAD does not load either.
    auto check = [&](const std::vector<std::string> &as, const std::string &prog, const std::string &why,
                     bool secure = true) {
        std::vector<std::string> argv = as, direct = as;
        for (const std::string &a : wrap(cfg, {prog})) argv.push_back(a);
        for (const std::string &a : {std::string("env"), "LD_PRELOAD=" + shim_library(), prog}) direct.push_back(a);
        const RunResult r = run(argv), d = run(direct);
        cr_assert(d.exited_with(0), "%s", d.describe().c_str());
        if (why.empty()) {
            cr_assert(r.exited_with(0), "%s", r.describe().c_str());
            cr_assert(contains(r.out, "shim=" + shim_library() + "\n"), "%s", r.out.c_str());
            cr_assert(contains(d.out, "shim=" + shim_library() + "\n"), "%s", d.out.c_str());
            return;
        }
        cr_assert(r.exited_with(126), "%s", r.describe().c_str());
        assert_text(r.err, "memlock-run: " + prog + ": " + why + tail);
        assert_text(r.out, "");
        if (secure) cr_assert(contains(d.out, "shim=none\n"), "%s", d.out.c_str());
    };
    const std::vector<std::string> root, nobody{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
    auto mode = [&](uid_t uid, gid_t gid, mode_t m) {
        cr_assert(::chown(copy.c_str(), uid, gid) == 0 && ::chmod(copy.c_str(), m) == 0);
    };

    mode(0, 0, 0755);
    check({"setpriv", "--euid=65534"}, copy, "memlock-run runs with real uid 0 and effective uid 65534");
    check({"setpriv", "--egid=65534", "--clear-groups"}, copy, "memlock-run runs with real gid 0 and effective gid 65534");
    mode(0, 0, 04755);
    check(root, copy, "");
    check(nobody, copy, "setuid to uid 0, started by uid 65534");
    // The effective uid changes (0 from 65534): secure since Linux 6.17.
    check({"setpriv", "--euid=65534"}, copy, "memlock-run runs with real uid 0 and effective uid 65534", false);
    mode(65534, 0, 04755);
    check(root, copy, "setuid to uid 65534, started by uid 0");
    check(nobody, copy, "");
    mode(0, 65534, 02755);
    check(root, copy, "setgid to gid 65534, started by gid 0");
    mode(0, 65534, 02745);  // no group execute: a locking mark, not setgid
    check(root, copy, "");
    mode(0, 0, 02755);
    check(root, copy, "");

    // The kernel ignores a script's own bits: its interpreter, which runs the program, counts.
    mode(0, 0, 0755);
    const std::string script = dir.file("script");
    cr_assert(write_file(script, "#!/bin/sh\nexec " + copy + "\n", 0755));
    cr_assert(::chown(script.c_str(), 65534, 65534) == 0 && ::chmod(script.c_str(), 06755) == 0);
    check(root, script, "");

    if (!have_program("setcap")) return;
    cr_assert(run({"setcap", "cap_net_raw+ep", copy}).exited_with(0));
    if (!run({copy}).exited_with(0)) return;  // cap_net_raw is not in this container's bounding set
    check(root, copy, "");
    check(nobody, copy, "has file capabilities (see getcap), started by uid 65534");
}

// env(1) in a #! line that clears the environment, or unsets or sets the shim's variables,
// takes the preload away before the program runs; a line whose program or environment
// memlock-run cannot tell exactly (env's quoting, a nested -S, an abbreviated option, a
// changed PATH or directory, env run again) is refused as well.
Test(tools, run_refuses_a_script_whose_env_drops_the_preload_with_126) {
    TempDir dir;
    const std::string prog = shim_program("tools_pid"), script = dir.file("script");
    const std::string other_env = dir.file("other-name");
    cr_assert_eq(::symlink("/usr/bin/env", other_env.c_str()), 0);
    const std::string unclear = ": cannot tell which program env runs, or with what environment (";
    const std::vector<std::pair<std::string, std::string>> cases{
        {"-i " + prog, " clears the environment (-i)"},
        {"-vi " + prog, " clears the environment (-i)"},
        {"- " + prog, " clears the environment (-)"},
        {"-- - " + prog, " clears the environment (-)"},
        {"--ignore-environment " + prog, " clears the environment (--ignore-environment)"},
        {"-u LD_PRELOAD " + prog, " unsets LD_PRELOAD"},
        {"-uMEMLOCK_SHIM_CONFIG " + prog, " unsets MEMLOCK_SHIM_CONFIG"},
        {"--unset=LD_PRELOAD " + prog, " unsets LD_PRELOAD"},
        {"LD_PRELOAD= " + prog, " sets LD_PRELOAD"},
        {"-u \"LD_PRELOAD\" " + prog, unclear + "quotes, escapes, variables or comments in the -S text)"},
        {"-u\\_LD_PRELOAD " + prog, unclear + "quotes, escapes, variables or comments in the -S text)"},
        {"${NONE}LD_PRELOAD= " + prog, unclear + "quotes, escapes, variables or comments in the -S text)"},
        {"-SLD_PRELOAD=x " + prog, unclear + "option -SLD_PRELOAD=x)"},
        {"--ignore-env " + prog, unclear + "option --ignore-env)"},
        {"PATH=/nowhere tools_pid", unclear + "PATH=...)"},
        {"-u PATH tools_pid", unclear + "-u PATH)"},
        {"-C / " + prog, unclear + "-C: env changes the working directory first)"},
    };
    // The script holds `text`: memlock-run refuses it with exactly `err`, or starts it and the
    // program loads the shim.
    auto run_script = [&](const std::string &text) {
        cr_assert(write_file(script, text, 0755));
        return run(wrap(config("default.json"), {script}));
    };
    auto refused = [&](const std::string &text, const std::string &err) {
        const RunResult r = run_script(text);
        cr_assert(r.exited_with(126), "%s: %s", text.c_str(), r.describe().c_str());
        assert_text(r.err, "memlock-run: " + err + "\n");
    };
    auto loads = [&](const std::string &text) {
        const RunResult r = run_script(text);
        cr_assert(r.exited_with(0), "%s: %s", text.c_str(), r.describe().c_str());
        cr_assert(contains(r.out, "shim=" + shim_library() + "\n"), "%s", r.out.c_str());
    };
    for (const auto &[args, why] : cases) {
        const std::string tail =
            why.rfind(unclear, 0) == 0 ? "; name the program itself" : ", so the program would run unprotected";
        refused("#!/usr/bin/env -S " + args + "\n", script + ": #!/usr/bin/env" + why + tail);
    }
    for (const std::string &line : {"#!/usr/bin/env -S env -i " + prog, "#!/usr/bin/env -S /usr/bin/env " + prog})
        refused(line + "\n", script + ": #!/usr/bin/env runs env again; name the program itself");
    // env under another name is env all the same.
    refused("#!" + other_env + " -S LD_PRELOAD= " + prog + "\n",
            script + ": #!" + other_env + " sets LD_PRELOAD, so the program would run unprotected");
    // Other options and variables leave it.
    loads("#!/usr/bin/env -S -v -u HOME A=1 " + prog + "\n");
    // An interpreter path longer than the kernel reads of the line: the kernel runs nothing.
    refused("#!/" + std::string(300, 'a') + "\n",
            script + ": the #! line's interpreter path goes past the 255 bytes the kernel reads of it");
    // A line ended by the end of the file keeps its trailing blanks: env is given "NAME ".
    const std::string spaced = dir.file("tools_pid ");
    auto stat_bytes = read_file(shim_program("tools_static"));
    cr_assert(stat_bytes && write_file(spaced, *stat_bytes, 0755));
    refused("#!/usr/bin/env " + dir.file("tools_pid") + " ",
            spaced + ": statically linked (no PT_INTERP): there is no dynamic loader to apply LD_PRELOAD, so it "
                     "would run unprotected");
    // A newline as the 256th byte still ends the line the kernel reads.
    cr_assert(dir.path().size() < 240, "temporary directory path too long: %s", dir.path().c_str());
    const std::string sub = dir.file(std::string(253 - dir.path().size() - 5, 'd'));
    cr_assert_eq(::mkdir(sub.c_str(), 0755), 0);
    const std::string interp = sub + "/pid";
    auto bytes = read_file(prog);
    cr_assert(interp.size() == 253 && bytes && write_file(interp, *bytes, 0755));
    loads("#!" + interp + "\n");
}

// A program whose dynamic loader cannot be run: execvp, as env runs it, would go on to the
// next file of that name in PATH, which memlock-run did not check.
Test(tools, run_refuses_a_program_whose_loader_cannot_run_with_126) {
    TempDir dir;
    auto bytes = read_file(shim_program("tools_pid"));
    cr_assert(bytes);
    const auto at = bytes->find("ld-linux");
    cr_assert(at != std::string::npos);
    const auto from = bytes->rfind('\0', at) + 1, to = bytes->find('\0', at);
    (*bytes)[to - 1] = 'X';  // ld-linux-x86-64.so.2 -> ld-linux-x86-64.so.X
    const std::string loader = bytes->substr(from, to - from), copy = dir.file("prog");
    cr_assert(write_file(copy, *bytes, 0755));
    RunResult r = run(wrap(config("default.json"), {"/usr/bin/env", copy}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: " + copy + ": its dynamic loader " + loader +
                           " cannot be run: No such file or directory\n");
    // A loader that is a directory (access(X_OK) says yes; execve says EACCES).
    std::string dir_loader = *bytes;
    dir_loader.replace(from, 5, std::string("/tmp\0", 5));
    cr_assert(write_file(copy, dir_loader, 0755));
    r = run(wrap(config("default.json"), {"/usr/bin/env", copy}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: " + copy + ": its dynamic loader /tmp is not a regular file: the kernel will not "
                                               "run it\n");
    // An ELF the kernel does not execute (a relocatable object's type): execvp would hand it to
    // /bin/sh, or go on in PATH without one.
    std::string relocatable = *bytes;
    relocatable[16] = ET_REL;  // e_type, little-endian
    relocatable[17] = 0;
    cr_assert(write_file(copy, relocatable, 0755));
    r = run(wrap(config("default.json"), {"/usr/bin/env", copy}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: " + copy + ": not an ELF executable or a #! script\n");
}

// memlock-run -- env ... PROGRAM: env's program is checked as memlock-run's own would be.
Test(tools, run_follows_env_on_its_command_line) {
    const std::string prog = shim_program("tools_pid"), stat = shim_program("tools_static");
    RunResult r = run(wrap(config("default.json"), {"/usr/bin/env", "-i", prog}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: /usr/bin/env clears the environment (-i), so the program would run unprotected\n");
    r = run(wrap(config("default.json"), {"env", "A=1", stat}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "memlock-run: " + stat + ": statically linked"), "%s", r.err.c_str());
    r = run(wrap(config("default.json"), {"env", "A=1", prog}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "shim=" + shim_library() + "\n"), "%s", r.out.c_str());
}

Test(tools, run_missing_and_not_executable_programs) {
    auto r = run(wrap(config("default.json"), {"/nonexistent/program"}));
    cr_assert(r.exited_with(127), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: /nonexistent/program: No such file or directory\n");

    auto o = tool_opts(wrap(config("default.json"), {"no-such-program-here"}));
    o.env = {{"PATH", "/usr/bin:/bin"}};
    r = run_program(o);
    cr_assert(r.exited_with(127), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: no-such-program-here: command not found in PATH (/usr/bin:/bin)\n");

    TempDir dir;
    const std::string plain = dir.file("plain");
    write_file(plain, "#!/bin/sh\necho hi\n", 0644);
    r = run(wrap(config("default.json"), {plain}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: " + plain + ": not executable (chmod +x, or check the mount's noexec)\n");
}

Test(tools, run_checks_a_scripts_interpreter) {
    TempDir dir;
    const std::string ok = dir.file("ok.sh");
    write_file(ok, "#!/bin/sh\necho \"script $LD_PRELOAD\"\n", 0755);
    auto r = run(wrap(config("default.json"), {ok}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_text(r.out, "script " + real(tool("libmemlock_shim.so")) + "\n");

    const std::string bad = dir.file("static-interp");
    write_file(bad, "#!" + shim_program("tools_static") + " -x\n", 0755);
    r = run(wrap(config("default.json"), {bad}));
    cr_assert(r.exited_with(126), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "memlock-run: " + shim_program("tools_static") + ": statically linked"), "%s",
              r.err.c_str());
}

// ---- memlock-run: the exec -------------------------------------------------------------------

Test(tools, run_keeps_the_pid_and_loads_the_shim) {
    LiveProgram child;
    cr_assert(start_program_into(child, tool_opts(wrap(config("size-only.json"), {shim_program("tools_pid")}))));
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_text(r.out, "pid=" + std::to_string(child.pid()) + "\nshim=" + real(tool("libmemlock_shim.so")) + "\n");
}

// Under the OpenSSL profile a shell script that loads no libcrypto hears once that the rule
// protects nothing in it, from the program memlock-run started, and not again from each
// command it runs (they inherit the preload); at info level those say it too. The program
// memlock-run started keeps the warning through an exec (`exec sh`, as an entrypoint script
// ends in `exec "$@"`).
Test(tools, run_warns_of_an_unloaded_module_in_its_program_and_not_in_each_command) {
    const std::string unloaded = "rule \"openssl-and-its-callees\": no loaded object matches \"libcrypto.so*\" or "
                                 "\"libssl.so*\" yet (it may be loaded later)";
    auto r = run(wrap(config("openssl.json"), {"/bin/sh", "-c", "ls / >/dev/null; cat </dev/null; echo $$; exec sh -c true"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const std::string pid = r.out.substr(0, r.out.find('\n'));
    const std::string warning = "memlock-shim: warning: " + unloaded + " (program sh, pid " + pid + ")\n";
    assert_text(r.err, warning + warning);

    TempDir dir;
    const std::string info = dir.file("info.json");
    write_file(info, R"({"version": 1, "rules": [{"name": "openssl-and-its-callees", "module": ["libcrypto.so*",
        "libssl.so*"], "depth": 8, "max_size": "16KiB"}], "log": {"level": "info", "file": "stderr"}})");
    r = run(wrap(info, {"/bin/sh", "-c", "ls / >/dev/null"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "memlock-shim: warning: " + unloaded + " (program sh, pid "), "%s", r.err.c_str());
    cr_assert(contains(r.err, "memlock-shim: info: " + unloaded + " (program ls, pid "), "%s", r.err.c_str());
    cr_assert(!contains(r.err, "warning: " + unloaded + " (program ls"), "%s", r.err.c_str());
}

Test(tools, run_prepends_the_shim_to_ld_preload_and_sets_an_absolute_config) {
    auto o = tool_opts({tool("memlock-run"), "--config", "config/size-only.json", "--", "/bin/sh", "-c",
                        "echo \"$LD_PRELOAD\"; echo \"$MEMLOCK_SHIM_CONFIG\""});
    o.cwd = source_dir();
    // An older copy of the shim is dropped; other preloads are kept (this one does not exist:
    // the loader warns and goes on).
    o.env = {{"LD_PRELOAD", "/old/lib/libmemlock_shim.so /nonexistent/libkeep.so"}};
    auto r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_text(r.out,
                real(tool("libmemlock_shim.so")) + ":/nonexistent/libkeep.so\n" + real(config("size-only.json")) + "\n");
}

Test(tools, run_shim_option_and_missing_shim) {
    auto r = run({tool("memlock-run"), "--config", config("default.json"), "--shim", "/nonexistent/libmemlock_shim.so",
                  "--", "true"});
    cr_assert(r.exited_with(69), "%s", r.describe().c_str());
    assert_text(r.err, "memlock-run: cannot find the shim library (--shim: /nonexistent/libmemlock_shim.so); "
                       "install it (make install) or pass --shim PATH\n");
    r = run({tool("memlock-run"), "--config", config("default.json"), "--shim", "/etc/passwd", "--", "true"});
    cr_assert(r.exited_with(69), "%s", r.describe().c_str());
}

// ---- memlock-inspect ---------------------------------------------------------------------------

namespace {

// Sums over the arena as smaps shows it: the mappings inside the reservation the shim
// publishes in its counters (arena_start, reserved_bytes).
struct SmapsArena {
    std::size_t regions = 0, locked_kb = 0, unlocked_rss_kb = 0;
    std::size_t locked_range_bytes = 0;  // mappings flagged lo (they lock pages as touched)
};
SmapsArena smaps_arena(pid_t pid, const nlohmann::json &counters) {
    const auto start = counters["arena_start"].get<std::uintptr_t>();
    const auto end = start + counters["reserved_bytes"].get<std::uintptr_t>();
    SmapsArena a;
    for (const auto &m : read_smaps(pid)) {
        if (!m.path.empty() || m.start < start || m.end > end) continue;
        cr_assert(m.has_flag("dd"), "arena mapping %lx without dd", static_cast<unsigned long>(m.start));
        ++a.regions;
        a.locked_kb += m.locked_kb;
        if (m.has_flag("lo")) a.locked_range_bytes += m.end - m.start;
        if (!m.has_flag("lo") && m.perms[0] == 'r') a.unlocked_rss_kb += m.rss_kb;
    }
    return a;
}

// Starts tools_hold through memlock-run with config/size-only.json (extra: memlock-run's
// options; memlock_limit > 0: under that RLIMIT_MEMLOCK without CAP_IPC_LOCK) and waits
// until it holds its blocks.
void start_hold(LiveProgram &child, std::vector<std::string> extra = {}, std::size_t memlock_limit = 0) {
    auto argv = wrap(config("size-only.json"), {shim_program("tools_hold")}, std::move(extra));
    start_until_ready(child, tool_opts(memlock_limit > 0 ? with_memlock_limit(memlock_limit, argv) : argv));
}

// memlock-inspect PID and --json PID on a live child, its arena as smaps shows it meanwhile;
// then the child is let go.
struct Inspection {
    RunResult text, js;
    nlohmann::json j;
    SmapsArena smaps;
};
Inspection inspect(LiveProgram &child) {
    const std::string pid = std::to_string(child.pid());
    Inspection in;
    in.text = run({tool("memlock-inspect"), pid});
    in.js = run({tool("memlock-inspect"), "--json", pid});
    in.j = nlohmann::json::parse(in.js.out, nullptr, false);
    cr_assert(!in.j.is_discarded(), "not JSON:\n%s", in.js.out.c_str());
    in.smaps = smaps_arena(child.pid(), in.j["counters"]);
    child.finish();
    return in;
}

}  // namespace

Test(tools, inspect_a_protected_process_matches_smaps) {
    LiveProgram child;
    start_hold(child);
    const std::string pid = std::to_string(child.pid());
    const Inspection in = inspect(child);
    const RunResult &text = in.text, &js = in.js;
    const nlohmann::json &j = in.j;
    const SmapsArena &smaps = in.smaps;

    cr_assert(text.exited_with(0), "%s", text.describe().c_str());
    cr_assert(text.out.rfind("pid " + pid + " (" + real(shim_program("tools_hold")) + "): protected\n", 0) == 0, "%s",
              text.out.c_str());
    cr_assert(contains(text.out, "lock failures 0, fallbacks 0, denied 0, overflows 0\n"), "%s", text.out.c_str());
    cr_assert(!contains(text.out, "WARNING"), "%s", text.out.c_str());

    cr_assert(js.exited_with(0), "%s", js.describe().c_str());
    cr_assert_eq(j["pid"].get<int>(), child.pid());
    assert_text(j["status"].get<std::string>(), "protected");
    cr_assert_eq(j["exit_status"].get<int>(), 0);
    cr_assert_geq(j["counters"]["matched_allocations"].get<unsigned long long>(), 512u);
    cr_assert_eq(j["arena"]["regions"].size(), smaps.regions);
    cr_assert_gt(smaps.locked_kb, 0u);
    cr_assert_eq(j["arena"]["locked_kb"].get<std::size_t>(), smaps.locked_kb);
    // The arena locks its budget on fault at start-up: Locked kB count the pages touched,
    // locked_bytes the pages in use, and the lo ranges cover both.
    cr_assert_leq(j["counters"]["locked_bytes"].get<std::size_t>(), smaps.locked_range_bytes);
    cr_assert_leq(smaps.locked_kb * 1024, smaps.locked_range_bytes);
    cr_assert_eq(j["arena"]["unlocked_kb"].get<std::size_t>(), 0u);
    cr_assert_eq(j["warnings"].size(), 0u);
}

// Under valgrind's memcheck the shim passes every allocation through (docs/operators.md):
// memlock-inspect says so, naming valgrind's library, not "no config, no rules".
Test(tools, inspect_says_the_shim_passes_everything_through_under_valgrind) {
    cr_assert(file_exists("/usr/bin/valgrind"), "valgrind missing: run scripts/install-deps.sh");
    LiveProgram child;
    start_until_ready(child, tool_opts(wrap(config("size-only.json"), {"/usr/bin/valgrind", "-q", shim_program("tools_hold")})));
    const std::string pid = std::to_string(child.pid());
    const RunResult text = run({tool("memlock-inspect"), pid});
    const RunResult js = run({tool("memlock-inspect"), "--json", pid});
    child.finish();
    cr_assert(text.exited_with(2), "%s", text.describe().c_str());
    cr_assert(contains(text.out, "): not protected: the shim is loaded but passes every allocation through: the "
                                 "program runs under valgrind (") &&
                  contains(text.out, "/vgpreload_memcheck-") &&
                  contains(text.out, ".so is loaded), whose allocator takes its malloc calls\n"),
              "%s", text.out.c_str());
    const nlohmann::json j = nlohmann::json::parse(js.out, nullptr, false);
    cr_assert(!j.is_discarded(), "not JSON:\n%s", js.out.c_str());
    assert_text(j["status"].get<std::string>(), "not protected");
    cr_assert(contains(j["reason"].get<std::string>(), "runs under valgrind"), "%s", js.out.c_str());
}

// A program that defines malloc itself (as programs that link jemalloc or mimalloc in do)
// keeps every allocation from the shim, even under memlock-run, which preloads the shim first:
// degraded, naming the program, and nothing in the arena.
Test(tools, inspect_warns_of_a_malloc_before_the_shim) {
    const std::string prog = shim_program("own_allocator");
    LiveProgram child;
    start_until_ready(child, tool_opts(wrap(config("size-only.json"), {prog, "hold"})));
    const Inspection in = inspect(child);
    const std::string warning = "malloc is defined by " + real(prog) +
                                ", which comes before the shim in the lookup order: the program's allocations "
                                "never reach the shim, and no rule sees them";
    cr_assert(in.text.exited_with(1), "%s", in.text.describe().c_str());
    cr_assert(contains(in.text.out, "): degraded\n"), "%s", in.text.out.c_str());
    cr_assert(contains(in.text.out, "\n  WARNING: " + warning + "\n"), "%s", in.text.out.c_str());
    assert_text(in.j["status"].get<std::string>(), "degraded");
    assert_text(in.j["counters"]["allocator_before_shim"].get<std::string>(), real(prog));
    cr_assert_eq(in.j["counters"]["matched_allocations"].get<unsigned long long>(), 0u);
    cr_assert_eq(in.smaps.locked_kb, 0u);
}

Test(tools, inspect_a_degraded_process_exits_1) {
    LiveProgram child;
    start_hold(child, {"--quiet"}, 65536);
    const Inspection in = inspect(child);
    const RunResult &text = in.text;
    const nlohmann::json &j = in.j;
    const SmapsArena &smaps = in.smaps;

    cr_assert(text.exited_with(1), "%s", text.describe().c_str());
    cr_assert(contains(text.out, "): degraded\n"), "%s", text.out.c_str());
    cr_assert(contains(text.out, "  WARNING: "), "%s", text.out.c_str());
    cr_assert(contains(text.out, "fallback(s): arena memory served unlocked"), "%s", text.out.c_str());
    assert_text(j["status"].get<std::string>(), "degraded");
    cr_assert_gt(j["counters"]["fallbacks"].get<unsigned long long>(), 0u);
    cr_assert_gt(smaps.unlocked_rss_kb, 0u);
    cr_assert_eq(j["arena"]["unlocked_kb"].get<std::size_t>(), smaps.unlocked_rss_kb);
    cr_assert_eq(j["arena"]["locked_kb"].get<std::size_t>(), smaps.locked_kb);
}

Test(tools, inspect_all_lists_shimmed_processes) {
    LiveProgram child;
    start_hold(child);
    auto js = run({tool("memlock-inspect"), "--all", "--json"});
    child.finish();
    const auto j = nlohmann::json::parse(js.out, nullptr, false);
    cr_assert(!j.is_discarded() && j.is_array(), "%s", js.describe().c_str());
    bool found = false;
    for (const auto &p : j) found |= p["pid"].get<int>() == child.pid();
    cr_assert(found, "pid %d missing from:\n%s", child.pid(), js.out.c_str());
}

// --all --prometheus over two protected processes and a degraded one: promtool accepts the
// text, and each process's samples carry its pid, program and memlock-inspect's verdict.
Test(tools, inspect_all_prometheus_covers_protected_and_degraded_processes) {
    cr_assert(have_program("promtool"), "promtool (package prometheus) is needed");
    LiveProgram ok1, ok2, degraded;
    start_hold(ok1);
    start_hold(ok2);
    start_hold(degraded, {"--quiet"}, 65536);
    const auto prom = run({tool("memlock-inspect"), "--all", "--prometheus"});
    const auto js = run({tool("memlock-inspect"), "--all", "--json"});
    for (LiveProgram *c : {&ok1, &ok2, &degraded}) c->finish();
    // The worst status on the host: at least degraded (other shimmed processes may be worse, and
    // a process memlock-inspect may not look at is unknown, 3).
    cr_assert(prom.exited_with(1) || prom.exited_with(2) || prom.exited_with(3), "%s", prom.describe().c_str());
    RunOptions check = tool_opts({"promtool", "check", "metrics"});
    check.stdin_data = prom.out;
    const auto lint = run_program(check);
    cr_assert(lint.exited_with(0) && lint.err.empty() && lint.out.empty(), "promtool: %s\n%s",
              lint.describe().c_str(), prom.out.c_str());

    const auto all = nlohmann::json::parse(js.out, nullptr, false);
    cr_assert(!all.is_discarded(), "%s", js.describe().c_str());
    auto series = [&](const char *name, const LiveProgram &c) {
        const std::string head = std::string(name) + "{pid=\"" + std::to_string(c.pid()) + "\",program=\"" +
                                 real(shim_program("tools_hold")) + "\"} ";
        const auto at = prom.out.find("\n" + head);
        cr_assert(at != std::string::npos, "no %s in:\n%s", head.c_str(), prom.out.c_str());
        return std::stoull(prom.out.substr(at + 1 + head.size()));
    };
    for (const LiveProgram *c : {&ok1, &ok2, &degraded}) {
        const bool bad = c == &degraded;
        cr_assert_eq(series("memlock_shim_status", *c), bad ? 1u : 0u);
        nlohmann::json mine;
        for (const auto &p : all)
            if (p["pid"].get<int>() == c->pid()) mine = p;
        cr_assert(mine.is_object(), "pid %d missing from --json", c->pid());
        for (const char *key : {"matched_allocations", "fallbacks", "lock_failures"})
            cr_assert_eq(series(("memlock_shim_" + std::string(key) + "_total").c_str(), *c),
                         mine["counters"][key].get<unsigned long long>(), "%s", key);
        cr_assert_eq(series("memlock_shim_arena_locked_bytes", *c), mine["arena"]["locked_kb"].get<unsigned long long>() * 1024);
        cr_assert_eq(series("memlock_shim_warnings", *c), mine["warnings"].size());
    }
    cr_assert_gt(series("memlock_shim_fallbacks_total", degraded), 0u);
    cr_assert_gt(series("memlock_shim_arena_unlocked_bytes", degraded), 0u);
    cr_assert_eq(count_occurrences(prom.out, "# TYPE memlock_shim_status gauge\n"), 1u);
}

// A process that has exited and is not yet reaped (a zombie) has no maps: memlock-inspect says it
// has exited, not that it runs without the shim, and exits 2 as for a process that is gone.
Test(tools, inspect_a_zombie_says_it_has_exited) {
    const pid_t child = ::fork();
    cr_assert(child >= 0);
    if (child == 0) ::_exit(0);
    std::string state;
    for (int i = 0; i < 500 && state != "Z"; ++i) {  // until the child is a zombie (at most 5 s)
        const auto stat = read_file("/proc/" + std::to_string(child) + "/stat");
        state = stat && stat->rfind(')') != std::string::npos ? stat->substr(stat->rfind(')') + 2, 1) : "";
        if (state != "Z") ::usleep(10000);
    }
    cr_assert_eq(state, "Z");
    auto r = run({tool("memlock-inspect"), std::to_string(child)});
    auto j = run({tool("memlock-inspect"), "--json", std::to_string(child)});
    int st = 0;
    ::waitpid(child, &st, 0);
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "): not protected: the process has exited (a zombie its parent has not reaped)"), "%s",
              r.out.c_str());
    cr_assert(!contains(r.out, "the shim is not loaded"), "%s", r.out.c_str());
    cr_assert(j.exited_with(2), "%s", j.describe().c_str());
    const auto doc = nlohmann::json::parse(j.out, nullptr, false);
    cr_assert(!doc.is_discarded(), "%s", j.out.c_str());
    cr_assert(contains(doc["reason"].get<std::string>(), "the process has exited"), "%s", j.out.c_str());
}

Test(tools, inspect_unshimmed_missing_and_usage) {
    auto r = run({tool("memlock-inspect"), std::to_string(::getpid())});
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "): not protected: the shim is not loaded (start the program with memlock-run)\n"), "%s",
              r.out.c_str());

    auto pid_max = read_file("/proc/sys/kernel/pid_max");
    const std::string gone = std::to_string(std::stol(pid_max ? *pid_max : "4194304") + 1);
    r = run({tool("memlock-inspect"), "--json", gone});
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    cr_assert(!j.is_discarded(), "%s", r.out.c_str());
    assert_text(j["reason"].get<std::string>(), "no such process");

    for (std::vector<std::string> argv :
         {std::vector<std::string>{}, {"abc"}, {"1", "2"}, {"--all", "1"}, {"--json", "--prometheus", "1"}}) {
        argv.insert(argv.begin(), tool("memlock-inspect"));
        r = run(argv);
        cr_assert(r.exited_with(64), "%s", r.describe().c_str());
    }
    r = run({tool("memlock-inspect"), "--version"});
    assert_text(r.out, "memlock-inspect " + version() + "\n");
    r = run({tool("memlock-inspect"), "--help"});
    cr_assert(r.exited_with(0) && contains(r.out, "1   degraded") && contains(r.out, "4   nothing matched yet"), "%s",
              r.describe().c_str());
}

namespace {

// What memlock-inspect --all says of `pid` in text (its line), --json (its entry) and
// --prometheus (its memlock_shim_status sample), while it is not protected: each exits with
// the host's worst status, 2 or 3 (a process memlock-inspect may not look at).
struct AllListing {
    std::string line, status_sample;
    nlohmann::json entry;
};
AllListing inspect_all_about(const std::string &pid) {
    const RunResult text = run({tool("memlock-inspect"), "--all"});
    const RunResult js = run({tool("memlock-inspect"), "--all", "--json"});
    const RunResult prom = run({tool("memlock-inspect"), "--all", "--prometheus"});
    for (const RunResult *r : {&text, &js, &prom})
        cr_assert(r->exited_with(2) || r->exited_with(3), "%s", r->describe().c_str());
    AllListing a;
    for (const auto &l : split_lines(text.out))
        if (l.rfind("pid " + pid + " (", 0) == 0) a.line = l;
    const auto all = nlohmann::json::parse(js.out, nullptr, false);
    cr_assert(!all.is_discarded() && all.is_array(), "%s", js.describe().c_str());
    for (const auto &p : all)
        if (std::to_string(p["pid"].get<int>()) == pid) a.entry = p;
    cr_assert(a.entry.is_object(), "pid %s missing from:\n%s", pid.c_str(), js.out.c_str());
    for (const auto &l : split_lines(prom.out))
        if (l.rfind("memlock_shim_status{pid=\"" + pid + "\",", 0) == 0) a.status_sample = l;
    return a;
}

// memlock-inspect PID (text and --json) on a process it must call not protected with `reason`,
// and --all, which lists it with the same line.
// The report on `pid` given by PID; with `in_all`, --all lists it the same way.
void expect_not_protected(const std::string &pid, const std::string &program, const std::string &reason,
                          bool in_all = true) {
    const std::string line = "pid " + pid + " (" + program + "): not protected: " + reason;
    const RunResult r = run({tool("memlock-inspect"), pid});
    const RunResult js = run({tool("memlock-inspect"), "--json", pid});
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    assert_text(r.out, line + "\n");
    const auto j = nlohmann::json::parse(js.out, nullptr, false);
    cr_assert(!j.is_discarded() && js.exited_with(2), "%s", js.describe().c_str());
    assert_text(j["reason"].get<std::string>(), reason);
    if (!in_all) {
        const RunResult listing = run({tool("memlock-inspect"), "--all"});
        cr_assert(!contains(listing.out, "pid " + pid + " ("), "%s", listing.out.c_str());
        return;
    }
    const AllListing all = inspect_all_about(pid);
    assert_text(all.line, line);
    assert_text(all.entry["status"].get<std::string>(), "not protected");
    cr_assert_eq(all.entry["exit_status"].get<int>(), 2);
    assert_text(all.entry["reason"].get<std::string>(), reason);
    assert_text(all.status_sample, "memlock_shim_status{pid=\"" + pid + "\",program=\"" + program + "\"} 2");
}

}  // namespace

// A program executed with its real user ID changed and its effective one still root (squid's
// master re-executes its kids so) starts in secure-execution mode: the loader ignores
// LD_PRELOAD. memlock-inspect says so rather than "start the program with memlock-run"; and
// when the loader could not load the shim LD_PRELOAD names, it says that. --all lists both.
Test(tools, inspect_says_why_a_preloaded_shim_is_not_loaded) {
    const std::string hold = shim_program("tools_hold");
    struct Case {
        std::vector<std::string> argv;
        std::string preload, reason;
    };
    const Case cases[] = {
        {{"setpriv", "--ruid=65534", "--", hold}, shim_library(),
         "the shim is not loaded: LD_PRELOAD names it, but the program started in secure-execution mode (AT_SECURE: "
         "its real and effective user or group IDs differed at exec, or it gained capabilities), in which the "
         "dynamic loader ignores LD_PRELOAD, as for a daemon that re-executes itself after changing only its real "
         "user ID (squid's kids); load the shim through /etc/ld.so.preload (system-wide mode)"},
        {{hold}, "/nonexistent/libmemlock_shim.so",
         "the shim is not loaded although LD_PRELOAD names it: the dynamic loader did not load it (a wrong path, or "
         "a library of another architecture: the loader said why on the program's stderr when it started)"},
    };
    for (const Case &c : cases) {
        RunOptions o = tool_opts(c.argv);
        o.env = {{"LD_PRELOAD", c.preload}, {"MEMLOCK_SHIM_CONFIG", config("size-only.json")}};
        LiveProgram child;
        start_until_ready(child, o);
        expect_not_protected(std::to_string(child.pid()), real(hold), c.reason);
        child.finish();
    }
}

// A shimmed parent that starts its child with an empty environment (postfix's master does so
// unless import_environment passes LD_PRELOAD on): the child has neither the shim nor LD_PRELOAD.
// memlock-inspect names the parent rather than "start the program with memlock-run". --all
// does not list the child: only the parent's config says whether it was meant to run the shim
// (its `programs`), as a shimmed sshd's login shells are not.
Test(tools, inspect_names_the_shimmed_parent_of_a_child_started_with_a_clean_environment) {
    LiveProgram parent;
    start_until_ready(parent, tool_opts(wrap(config("size-only.json"),
                                             {shim_program("tools_cleanenv"), shim_program("tools_hold")}, {"--quiet"})));
    const auto at = parent.out().find("child=");
    cr_assert(at != std::string::npos, "%s", parent.out().c_str());
    const std::string child = std::to_string(std::stoi(parent.out().substr(at + 6)));
    expect_not_protected(child, real(shim_program("tools_hold")),
                         "the shim is not loaded: its parent tools_cleanenv (pid " + std::to_string(parent.pid()) +
                             ") runs it, but started this process without LD_PRELOAD in its environment (a daemon "
                             "that cleans its children's environment: have it pass LD_PRELOAD and MEMLOCK_SHIM_CONFIG "
                             "on; see docs/operators.md, \"Processes started without the shim\")",
                         false);
    const RunResult exited = parent.finish();
    cr_assert(exited.exited_with(0), "%s", exited.describe().c_str());
}

// ---- memlock-inspect: per-rule counters and an honest status ----------------------------------

namespace {

// tools_rules (its allocation patterns are in its header) under memlock-run with `rules`
// (JSON array text) and a stats.file; returns memlock-inspect's text, --json and --prometheus
// on it, then lets it go and reads the counters it wrote to its stats.file at exit.
struct RuleInspection {
    RunResult text, js, prom;
    nlohmann::json j, file;
    std::string pid, program;
};
RuleInspection inspect_rules(const std::string &rules, const std::string &prog = "tools_rules") {
    TempDir dir;
    const std::string cfg = dir.file("rules.json");
    cr_assert(write_file(cfg, "{\"version\": 1, \"rules\": " + rules + ", \"stats\": {\"file\": \"" +
                                  dir.file("stats.%p.json") + "\"}}"));
    LiveProgram child;
    start_until_ready(child, tool_opts(wrap(cfg, {shim_program(prog)}, {"--quiet"})));
    RuleInspection in;
    in.pid = std::to_string(child.pid());
    in.program = real(shim_program(prog));
    in.text = run({tool("memlock-inspect"), in.pid});
    in.js = run({tool("memlock-inspect"), "--json", in.pid});
    in.prom = run({tool("memlock-inspect"), "--prometheus", in.pid});
    const RunResult exited = child.finish();
    cr_assert(exited.exited_with(0), "%s", exited.describe().c_str());
    in.j = nlohmann::json::parse(in.js.out, nullptr, false);
    cr_assert(!in.j.is_discarded(), "not JSON:\n%s", in.js.describe().c_str());
    const auto file = read_file(dir.file("stats." + in.pid + ".json"));
    cr_assert(file, "no stats.file %s", dir.file("stats." + in.pid + ".json").c_str());
    in.file = nlohmann::json::parse(*file, nullptr, false);
    cr_assert(!in.file.is_discarded(), "stats.file is not JSON:\n%s", file->c_str());
    return in;
}

const char *const kKnownRules =
    R"([{"name": "keys", "size": 40}, {"name": "pages", "size": 3000},
        {"name": "secret", "symbol": "rulestats_make_secret", "size": 64}])";

// The per_rule entry named `name`.
nlohmann::json rule_entry(const nlohmann::json &j, const std::string &name) {
    for (const auto &e : j["counters"]["per_rule"])
        if (e["name"] == name) return e;
    cr_assert_fail("no rule %s in:\n%s", name.c_str(), j.dump(2).c_str());
    return {};
}

}  // namespace

// Usable sizes: malloc(40) is a 48-byte block, malloc(3000) a 3072-byte one.
Test(tools, inspect_counts_matches_live_and_peak_per_rule) {
    const RuleInspection in = inspect_rules(kKnownRules);
    cr_assert(in.text.exited_with(0), "%s", in.text.describe().c_str());
    cr_assert(in.text.out.rfind("pid " + in.pid + " (" + in.program + "): protected\n", 0) == 0, "%s",
              in.text.out.c_str());
    cr_assert_eq(in.j["counters"]["per_rule"].size(), 3u, "%s", in.js.out.c_str());
    struct Want {
        const char *name;
        unsigned long long matches, live, peak;
    };
    for (const Want &w : {Want{"keys", 100, 50 * 48, 100 * 48}, Want{"pages", 10, 0, 10 * 3072},
                          Want{"secret", 10, 10 * 64, 10 * 64}}) {
        const nlohmann::json e = rule_entry(in.j, w.name);
        cr_assert_eq(e["matched_allocations"].get<unsigned long long>(), w.matches, "%s: %s", w.name, e.dump().c_str());
        cr_assert_eq(e["live_bytes"].get<unsigned long long>(), w.live, "%s: %s", w.name, e.dump().c_str());
        cr_assert_eq(e["peak_bytes"].get<unsigned long long>(), w.peak, "%s: %s", w.name, e.dump().c_str());
    }
    const nlohmann::json secret = rule_entry(in.j, "secret");
    assert_text(secret["caller"].get<std::string>(), "symbol rulestats_make_secret depth 4, 64 bytes");
    cr_assert_eq(secret["consulted"].get<unsigned long long>(), 10u, "%s", secret.dump().c_str());
    cr_assert(!rule_entry(in.j, "keys").contains("consulted"));
    cr_assert(contains(in.text.out, "  rules (matched allocations, live, peak):\n"), "%s", in.text.out.c_str());
    cr_assert(contains(in.text.out, "    pages                              10        0 B     30 KiB\n"), "%s",
              in.text.out.c_str());
}

// stats.file carries the per-rule counters under the names memlock-inspect --json uses: the
// program is idle from "ready" to its exit, so the file written at exit equals what inspect
// read while it ran. Names and caller texts with quotes, backslashes and control characters
// stay valid JSON and read back unchanged.
Test(tools, stats_file_has_the_per_rule_counters_inspect_shows) {
    const RuleInspection in = inspect_rules(
        R"([{"name": "k\"e\\ys\t1", "size": 40}, {"name": "pages", "size": 3000},
            {"name": "secret", "symbol": "rulestats_make_secret", "size": 64},
            {"name": "ghost", "module": "no\"such*", "size": 200}])");
    const nlohmann::json &rules = in.file["per_rule"];
    cr_assert_eq(rules.size(), 4u, "%s", in.file.dump(2).c_str());
    cr_assert_eq(rules, in.j["counters"]["per_rule"], "stats.file:\n%s\nmemlock-inspect:\n%s", rules.dump(2).c_str(),
                 in.j["counters"]["per_rule"].dump(2).c_str());
    assert_text(rules[0]["name"].get<std::string>(), "k\"e\\ys\t1");
    cr_assert_eq(rules[0]["matched_allocations"].get<unsigned long long>(), 100u, "%s", rules[0].dump().c_str());
    cr_assert_eq(rules[0]["live_bytes"].get<unsigned long long>(), 50u * 48, "%s", rules[0].dump().c_str());
    cr_assert_eq(rules[0]["peak_bytes"].get<unsigned long long>(), 100u * 48, "%s", rules[0].dump().c_str());
    cr_assert(!rules[0].contains("consulted") && !rules[0].contains("caller"), "%s", rules[0].dump().c_str());
    cr_assert_eq(rules[1]["live_bytes"].get<unsigned long long>(), 0u, "%s", rules[1].dump().c_str());
    cr_assert_eq(rules[1]["peak_bytes"].get<unsigned long long>(), 10u * 3072, "%s", rules[1].dump().c_str());
    assert_text(rules[2]["caller"].get<std::string>(), "symbol rulestats_make_secret depth 4, 64 bytes");
    cr_assert_eq(rules[2]["consulted"].get<unsigned long long>(), 10u, "%s", rules[2].dump().c_str());
    cr_assert_eq(rules[2]["live_bytes"].get<unsigned long long>(), 640u, "%s", rules[2].dump().c_str());
    assert_text(rules[3]["caller"].get<std::string>(), "module no\"such* depth 1, 200 bytes");
    cr_assert_eq(rules[3]["consulted"].get<unsigned long long>(), 20000u, "%s", rules[3].dump().c_str());
    cr_assert_eq(rules[3]["matched_allocations"].get<unsigned long long>(), 0u, "%s", rules[3].dump().c_str());
    cr_assert_eq(in.file["matched_allocations"].get<unsigned long long>(), 120u, "%s", in.file.dump(2).c_str());
}

// Rules beyond the 63rd share the last entry, "other rules", in stats.file as in memlock-inspect.
Test(tools, stats_file_counts_rules_beyond_the_63rd_together) {
    std::string rules = R"([{"name": "keys", "size": 40})";
    for (int i = 1; i < 69; ++i) rules += R"(, {"name": "r)" + std::to_string(i) + R"(", "size": )" + std::to_string(5000 + i) + "}";
    rules += R"(, {"name": "pages", "size": 3000}])";
    const RuleInspection in = inspect_rules(rules);
    const nlohmann::json &per_rule = in.file["per_rule"];
    cr_assert_eq(per_rule.size(), 64u, "%s", in.file.dump().c_str());
    cr_assert_eq(per_rule, in.j["counters"]["per_rule"], "stats.file:\n%s\nmemlock-inspect:\n%s",
                 per_rule.dump().c_str(), in.j["counters"]["per_rule"].dump().c_str());
    const nlohmann::json want = nlohmann::json::parse(
        R"json({"name": "other rules", "covers": "rules 64 to 70 (counted together)", "matched_allocations": 10,
                "live_bytes": 0, "peak_bytes": 30720})json");
    cr_assert_eq(per_rule[63], want, "%s", per_rule[63].dump().c_str());
}

// A symbol rule naming a function the program never calls, while the program makes 20000
// allocations the rule checks: a warning naming the rule, the program and its pid; degraded.
Test(tools, inspect_warns_about_a_caller_rule_that_matches_nothing) {
    const RuleInspection in = inspect_rules(
        R"([{"name": "keys", "size": 40}, {"name": "ghost", "symbol": "rulestats_never_called", "size": 200}])");
    const std::string warning = "caller rule \"ghost\" (symbol rulestats_never_called depth 4, 200 bytes) has matched none of "
                                "the 20000 allocations it checked in " + in.program + " (pid " + in.pid +
                                "): no allocation comes from that module or symbol (check the name; memlock-discover "
                                "shows where this program allocates its secrets)";
    cr_assert(in.text.exited_with(1), "%s", in.text.describe().c_str());
    cr_assert(contains(in.text.out, "): degraded\n"), "%s", in.text.out.c_str());
    cr_assert(contains(in.text.out, "  WARNING: " + warning + "\n"), "%s", in.text.out.c_str());
    cr_assert(in.js.exited_with(1), "%s", in.js.describe().c_str());
    cr_assert_eq(in.j["warnings"].size(), 1u, "%s", in.js.out.c_str());
    assert_text(in.j["warnings"][0].get<std::string>(), warning);
    cr_assert_eq(rule_entry(in.j, "ghost")["consulted"].get<unsigned long long>(), 20000u);
    cr_assert_eq(rule_entry(in.j, "keys")["matched_allocations"].get<unsigned long long>(), 100u);
}

// Every rule matched nothing: not "protected", but "nothing matched", exit 4.
Test(tools, inspect_says_nothing_matched_rather_than_protected) {
    const RuleInspection in = inspect_rules(R"([{"name": "odd", "size": 12345}])", "tools_hold");
    cr_assert(in.text.exited_with(4), "%s", in.text.describe().c_str());
    cr_assert(in.text.out.rfind("pid " + in.pid + " (" + in.program +
                                    "): nothing matched: the shim is active, but no rule has matched an allocation "
                                    "yet: nothing is protected so far\n",
                                0) == 0,
              "%s", in.text.out.c_str());
    cr_assert(!contains(in.text.out, "protected\n"), "%s", in.text.out.c_str());
    cr_assert(in.js.exited_with(4), "%s", in.js.describe().c_str());
    assert_text(in.j["status"].get<std::string>(), "nothing matched");
    cr_assert_eq(in.j["exit_status"].get<int>(), 4);
    cr_assert(contains(in.prom.out, "\nmemlock_shim_status{pid=\"" + in.pid + "\",program=\"" + in.program + "\"} 4\n"),
              "%s", in.prom.out.c_str());
}

// --prometheus on a live process: per-rule series with a rule label, escaped, that promtool accepts.
Test(tools, inspect_prometheus_has_per_rule_series) {
    cr_assert(have_program("promtool"), "promtool (package prometheus) is needed");
    const RuleInspection in = inspect_rules(
        R"([{"name": "k\"e\\ys", "size": 40}, {"name": "ghost", "symbol": "rulestats_never_called", "size": 200}])");
    cr_assert(in.prom.exited_with(1), "%s", in.prom.describe().c_str());
    RunOptions check = tool_opts({"promtool", "check", "metrics"});
    check.stdin_data = in.prom.out;
    const auto lint = run_program(check);
    cr_assert(lint.exited_with(0) && lint.err.empty() && lint.out.empty(), "promtool: %s\n%s",
              lint.describe().c_str(), in.prom.out.c_str());
    const std::string labels = "{pid=\"" + in.pid + "\",program=\"" + in.program + "\",rule=";
    for (const std::string &line :
         {std::string("# TYPE memlock_shim_rule_peak_bytes gauge"), "memlock_shim_rule_matched_allocations_total" + labels +
                                                           "\"k\\\"e\\\\ys\"} 100",
          "memlock_shim_rule_live_bytes" + labels + "\"k\\\"e\\\\ys\"} 2400",
          "memlock_shim_rule_peak_bytes" + labels + "\"k\\\"e\\\\ys\"} 4800",
          "memlock_shim_rule_consulted_total" + labels + "\"ghost\"} 20000"})
        cr_assert(contains(in.prom.out, "\n" + line + "\n"), "no line %s in:\n%s", line.c_str(), in.prom.out.c_str());
}

// A counters page of another layout (an older shim's) is refused, and says which memlock-inspect to use.
Test(tools, inspect_refuses_a_counters_page_of_another_layout) {
    LiveProgram child;
    start_until_ready(child, tool_opts({shim_program("tools_oldlayout")}));
    const std::string pid = std::to_string(child.pid());
    const RunResult text = run({tool("memlock-inspect"), pid});
    child.finish();
    cr_assert(text.exited_with(1), "%s", text.describe().c_str());
    const auto at = text.out.find("  WARNING: cannot read the counters: counters page at ");
    cr_assert(at != std::string::npos, "%s", text.out.c_str());
    cr_assert(contains(text.out.substr(at), ": stats layout 3, this memlock-inspect reads " +
                                                std::to_string(mlshim::kStatsLayout) +
                                                " (use the memlock-inspect of the shim's release)\n"),
              "%s", text.out.c_str());
    cr_assert_neq(mlshim::kStatsLayout, 3u);
}

// mltool::printable, which text output applies to what the target chose: control characters, DEL
// and backslashes as \xNN (as the shim's log lines), and so each byte of an ill-formed UTF-8
// sequence and of a C1 control character; well-formed characters as they are.
Test(tools, printable_escapes_controls_backslashes_and_what_is_not_utf8) {
    const std::pair<std::string, std::string> cases[] = {
        {"/usr/sbin/sshd", "/usr/sbin/sshd"},
        {"x): not protected\npid 1 (sshd): protected", "x): not protected\\x0apid 1 (sshd): protected"},
        {"\x1b[2J\r\t\x7f\\", "\\x1b[2J\\x0d\\x09\\x7f\\x5c"},
        {std::string("a\0b", 3), "a\\x00b"},
        {"\xc2\x9b" "31m\xc2\x85", "\\xc2\\x9b31m\\xc2\\x85"},           // C1 controls
        {"evil\xff\xfe\xc0\xaf\xed\xa0\x80\xe2\x82", "evil\\xff\\xfe\\xc0\\xaf\\xed\\xa0\\x80\\xe2\\x82"},
        {"\xc2\xa0\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "\xc2\xa0\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"},  // kept
    };
    for (const auto &[in, want] : cases) assert_text(mltool::printable(in), want);
}

namespace {

// A copy of build/progs/PROG in `dir` under `name` (any bytes but '/' and NUL: a user chooses
// the names of the programs that run). Returns its path.
std::string copy_program(const TempDir &dir, const std::string &prog, const std::string &name) {
    const std::string path = dir.file(name);
    std::error_code ec;
    std::filesystem::copy_file(shim_program(prog), path, ec);
    cr_assert(!ec && ::chmod(path.c_str(), 0755) == 0, "cannot copy %s: %s", prog.c_str(), ec.message().c_str());
    return path;
}

// The lines of `text` that begin with "pid PID (".
std::size_t report_lines(const std::string &text, const std::string &pid) {
    std::size_t n = 0;
    for (const auto &l : split_lines(text)) n += l.rfind("pid " + pid + " (", 0) == 0;
    return n;
}

// The report of process `pid` in memlock-inspect's text: from its "pid PID (" line to the next
// process's line, without the other processes --all lists (this host may run others).
std::string report_of(const std::string &text, const std::string &pid) {
    const std::string head = "pid " + pid + " (";
    const std::size_t at = text.rfind(head, 0) == 0 ? 0 : text.find("\n" + head);
    if (at == std::string::npos) return {};
    const std::size_t end = text.find("\npid ", at + 1);
    return text.substr(at, end == std::string::npos ? std::string::npos : end + 1 - at);
}

}  // namespace

// Text output escapes what the target chose (its path, its rule names) as the shim's log lines
// do: control characters, DEL and backslashes as \xNN, and so every byte of a sequence that is not
// UTF-8. A path with a newline cannot forge a report line, nor an escape sequence reach the terminal.
Test(tools, inspect_text_escapes_a_hostile_program_path_and_rule_name) {
    TempDir dir;
    const std::string name = "x): not protected\npid 1 (sshd): protected\x1b[2J\\\xff";
    const std::string prog = copy_program(dir, "tools_hold", name);
    const std::string cfg = dir.file("rules.json");
    cr_assert(write_file(cfg, R"({"version": 1, "rules": [{"name": "keys\n  WARNING: \u001b[31mnone", "size": 32}]})"));
    LiveProgram child;
    start_until_ready(child, tool_opts(wrap(cfg, {prog})));
    const std::string pid = std::to_string(child.pid());
    const RunResult text = run({tool("memlock-inspect"), pid});
    const RunResult all = run({tool("memlock-inspect"), "--all"});
    child.finish();
    cr_assert(text.exited_with(0), "%s", text.describe().c_str());
    const std::string shown = "pid " + pid + " (" + real(dir.path()) +
                              "/x): not protected\\x0apid 1 (sshd): protected\\x1b[2J\\x5c\\xff): protected\n";
    cr_assert(text.out.rfind(shown, 0) == 0, "%s", text.out.c_str());
    cr_assert(contains(text.out, "\n    keys\\x0a  WARNING: \\x1b[31mnone "), "%s", text.out.c_str());
    for (const RunResult *r : {&text, &all}) {
        cr_assert_eq(report_lines(r->out, pid), 1u, "%s", r->out.c_str());
        const std::string own = report_of(r->out, pid);
        cr_assert(!contains(r->out, "\npid 1 (sshd)") && !contains(r->out, "\x1b") && !contains(r->out, "\xff") &&
                      !contains(own, "\n  WARNING: "),
                  "%s", r->out.c_str());
    }
}

// --prometheus on a process whose path is not UTF-8: its program label has U+FFFD for each
// ill-formed sequence, and promtool accepts the whole text (a rejected text loses every process's
// series).
Test(tools, inspect_prometheus_replaces_what_is_not_utf8_in_a_program_path) {
    cr_assert(have_program("promtool"), "promtool (package prometheus) is needed");
    TempDir dir;
    const std::string prog = copy_program(dir, "tools_hold", "evil\xff\xfe\xc0\xaf\xed\xa0\x80\xe2\x82");
    LiveProgram child;
    start_until_ready(child, tool_opts(wrap(config("size-only.json"), {prog})));
    const std::string pid = std::to_string(child.pid());
    const RunResult prom = run({tool("memlock-inspect"), "--all", "--prometheus"});
    child.finish();
    RunOptions check = tool_opts({"promtool", "check", "metrics"});
    check.stdin_data = prom.out;
    const auto lint = run_program(check);
    cr_assert(lint.exited_with(0) && lint.err.empty() && lint.out.empty(), "promtool: %s\n%s",
              lint.describe().c_str(), prom.out.c_str());
    std::string fffd;
    for (int i = 0; i < 8; ++i) fffd += "\xef\xbf\xbd";
    cr_assert(contains(prom.out, "\nmemlock_shim_status{pid=\"" + pid + "\",program=\"" + real(dir.path()) + "/evil" +
                                     fffd + "\"} 0\n"),
              "%s", prom.out.c_str());
}

// An arena mapping that is locked but no longer excluded from core dumps (the program made a
// page dumpable again) shows "lo" alone in text, as --json has "lo": true, "dd": false.
Test(tools, inspect_text_shows_the_flags_each_arena_mapping_has) {
    LiveProgram child;
    start_until_ready(child, tool_opts(wrap(config("size-only.json"), {shim_program("tools_hold"), "dodump"})));
    const auto at = line_value(child.out(), "dodump");
    cr_assert(at, "%s", child.out().c_str());
    const std::string pid = std::to_string(child.pid());
    const RunResult text = run({tool("memlock-inspect"), pid});
    const RunResult js = run({tool("memlock-inspect"), "--json", pid});
    child.finish();
    const auto j = nlohmann::json::parse(js.out, nullptr, false);
    cr_assert(!j.is_discarded(), "%s", js.describe().c_str());
    bool found = false;
    for (const auto &g : j["arena"]["regions"])
        if (g["start"] == *at) {
            found = true;
            cr_assert(g["lo"].get<bool>() && !g["dd"].get<bool>(), "%s", js.out.c_str());
        }
    cr_assert(found, "no region at %s in:\n%s", at->c_str(), js.out.c_str());
    std::size_t lo_dd = 0, lo = 0;
    for (const auto &l : split_lines(text.out)) {
        if (l.rfind("    " + *at + "-", 0) == 0) cr_assert(l.size() > 3 && l.compare(l.size() - 3, 3, " lo") == 0, "%s", l.c_str());
        lo_dd += l.size() > 6 && l.compare(l.size() - 6, 6, " lo dd") == 0;
        lo += l.size() > 3 && l.compare(l.size() - 3, 3, " lo") == 0;
    }
    cr_assert(lo == 1 && lo_dd > 0, "%s", text.out.c_str());
}

namespace {

// The output and exit status of argv run as root without CAP_SYS_PTRACE (a container's root), its
// first fork child stopped before it runs (SIGSTOP, as the user it switches to may send):
// traced until that fork, then let go. forked: that child's pid (0: argv did not fork).
struct StoppedChildRun {
    std::string out;
    int status = -1;
    pid_t forked = 0;
};
StoppedChildRun run_with_its_child_stopped(const std::vector<std::string> &argv) {
    int out[2];
    cr_assert(::pipe2(out, O_CLOEXEC) == 0);
    const pid_t pid = ::fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        std::vector<char *> args;
        for (const auto &a : argv) args.push_back(const_cast<char *>(a.c_str()));
        args.push_back(nullptr);
        if (::dup2(out[1], STDOUT_FILENO) < 0 || ::prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE) != 0 ||
            ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0 || ::raise(SIGSTOP) != 0)
            ::_exit(126);
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    ::close(out[1]);
    StoppedChildRun r;
    int st = 0;
    cr_assert(::waitpid(pid, &st, __WALL) == pid && WIFSTOPPED(st));
    cr_assert(::ptrace(PTRACE_SETOPTIONS, pid, nullptr, PTRACE_O_TRACEFORK | PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL) == 0);
    cr_assert(::ptrace(PTRACE_CONT, pid, nullptr, nullptr) == 0);
    while (::waitpid(pid, &st, __WALL) == pid && WIFSTOPPED(st)) {
        const int event = st >> 16;
        if (event == PTRACE_EVENT_FORK) {
            unsigned long child = 0;
            cr_assert(::ptrace(PTRACE_GETEVENTMSG, pid, nullptr, &child) == 0);
            r.forked = static_cast<pid_t>(child);
            int cst = 0;
            cr_assert(::waitpid(r.forked, &cst, __WALL) == r.forked && WIFSTOPPED(cst));
            // Queued while it is traced, the signal stops it once let go, before it runs.
            cr_assert(::kill(r.forked, SIGSTOP) == 0);
            cr_assert(::ptrace(PTRACE_DETACH, r.forked, nullptr, reinterpret_cast<void *>(SIGSTOP)) == 0);
            cr_assert(::ptrace(PTRACE_DETACH, pid, nullptr, nullptr) == 0);
            break;
        }
        const long sig = event == 0 && WSTOPSIG(st) != SIGTRAP ? WSTOPSIG(st) : 0;
        cr_assert(::ptrace(PTRACE_CONT, pid, nullptr, reinterpret_cast<void *>(sig)) == 0);
    }
    char buf[4096];
    ssize_t n;
    while ((n = ::read(out[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0) r.out.append(buf, static_cast<std::size_t>(n));
    ::close(out[0]);
    if (r.forked) cr_assert(::waitpid(pid, &st, 0) == pid);
    r.status = st;
    return r;
}

}  // namespace

// Root without CAP_SYS_PTRACE reads another user's process in a child that becomes that user,
// whom the child cannot keep from stopping it. A stopped child is killed when its time is up: the
// process is "unknown", memlock-inspect says why, and nothing is left behind.
Test(tools, inspect_kills_its_reading_child_when_the_target_user_stops_it) {
    LiveProgram target;
    // Shimmed: its counters page is read through /proc/PID/mem, which only its user may read.
    std::vector<std::string> argv{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
    for (const auto &a : wrap(config("size-only.json"), {shim_program("tools_hold")}, {"--quiet"})) argv.push_back(a);
    start_until_ready(target, tool_opts(argv));
    const std::string pid = std::to_string(target.pid());
    const StoppedChildRun r = run_with_its_child_stopped({tool("memlock-inspect"), pid});
    target.finish();
    cr_assert(r.forked > 0, "memlock-inspect did not fork: %s", r.out.c_str());
    cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 3, "status %d: %s", r.status, r.out.c_str());
    // Its status Name: (its executable's link is not readable without CAP_SYS_PTRACE).
    assert_text(r.out, "pid " + pid + " (tools_hold): unknown: memlock-inspect cannot read it: the process that reads it as its user "
                           "(uid 65534) did not answer within 5 s and was killed (that user can stop it): run "
                           "memlock-inspect with CAP_SYS_PTRACE (as root on the host, or with `podman exec "
                           "--privileged` / `docker exec --privileged` in a container)\n");
    cr_assert(::kill(r.forked, 0) != 0 && errno == ESRCH, "child %d is still there", r.forked);
}

// ---- make install ------------------------------------------------------------------------------

Test(tools, install_into_destdir_then_run_through_the_installed_wrapper) {
    TempDir dir;
    const std::string dest = real(dir.path());
    auto install = [&] {
        return run({"make", "--no-print-directory", "-C", source_dir(), "install", "DESTDIR=" + dest,
                    "PREFIX=/usr/local"});
    };
    auto r = install();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const std::string root = dest + "/usr/local";
    for (const char *f : {"/bin/memlock-run", "/bin/memlock-inspect", "/bin/memlock-discover", "/lib/libmemlock_shim.so",
                          "/etc/memlock-shim/default.json", "/etc/memlock-shim/size-only.json",
                          "/share/doc/memlock-shim/operators.md", "/share/doc/memlock-shim/config.md",
                          "/share/doc/memlock-shim/deploy/systemd/memlock-shim.conf",
                          "/share/doc/memlock-shim/deploy/container/Dockerfile"})
        cr_assert(file_exists(root + f), "%s%s was not installed", root.c_str(), f);

    // The installed wrapper finds the installed shim through ../lib, with nothing set.
    const std::string cfg = root + "/etc/memlock-shim/size-only.json";
    r = run({root + "/bin/memlock-run", "--config", cfg, "--", shim_program("tools_pid")});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "shim=" + root + "/lib/libmemlock_shim.so\n"), "%s", r.describe().c_str());

    // A config the operator edited survives a second install.
    const std::string edited = "{\"version\": 1, \"rules\": []}\n";
    cr_assert(write_file(root + "/etc/memlock-shim/default.json", edited));
    r = install();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_text(read_file(root + "/etc/memlock-shim/default.json").value_or(""), edited);
}

// The core library as a C program's build sees it: headers, libraries and memlock.pc from a
// DESTDIR install, found through pkg-config; the example links (shared and static) and runs.
Test(tools, install_core_then_link_a_c_program_through_pkg_config) {
    TempDir dir;
    const std::string dest = real(dir.path());
    auto r = run({"make", "--no-print-directory", "-C", source_dir(), "install", "DESTDIR=" + dest, "PREFIX=/usr/local"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const std::string lib = dest + "/usr/local/lib";
    const std::string pc = "export PKG_CONFIG_PATH=" + lib + "/pkgconfig PKG_CONFIG_SYSROOT_DIR=" + dest + "; ";
    const std::string example = source_dir() + "/core/examples/minimal.c";
    r = run({"sh", "-c", pc + "cc -std=c11 -Wall -Werror $(pkg-config --cflags memlock) " + shell_quote(example) +
                             " -o " + dir.file("shared") + " $(pkg-config --libs memlock)"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    r = run({"sh", "-c", "LD_LIBRARY_PATH=" + lib + " " + dir.file("shared")});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    r = run({"sh", "-c", "LD_LIBRARY_PATH=" + lib + " ldd " + dir.file("shared") + " | grep -q " + shell_quote(lib + "/libmemlock.so.0")});
    cr_assert(r.exited_with(0), "the program does not use the installed libmemlock.so.0");
    // Static: Libs.private brings what libmemlock.a needs.
    r = run({"sh", "-c", pc + "cc -std=c11 $(pkg-config --cflags memlock) " + shell_quote(example) + " -o " +
                             dir.file("static") + " " + lib + "/libmemlock.a $(pkg-config --static --libs-only-l memlock | sed 's/-lmemlock//')"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    r = run({dir.file("static")});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
}
