// End-to-end: real core dumps of a shimmed process hold none of the secrets that live in
// matching blocks, while the same kind of marker in non-matching blocks is there (so the
// search would have found the secret). Markers are generated at run time by the child.
#include <criterion/criterion.h>
#include <signal.h>

#include <string>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

// The secret is absent, the public marker present (1024 copies are in one heap block).
void check_dump(const std::string &dump, const std::string &out, const char *what) {
    const std::string secret = marker_bytes(out, "secret"), pub = marker_bytes(out, "public");
    cr_assert_neq(secret, pub);
    cr_assert_gt(dump.size(), 0u, "%s is empty", what);
    const std::size_t secrets = count_occurrences(dump, secret), publics = count_occurrences(dump, pub);
    cr_assert_eq(secrets, 0u, "%s holds %zu copies of the secret marker", what, secrets);
    cr_assert_geq(publics, 1024u, "%s holds only %zu copies of the public marker", what, publics);
}

// Runs gcore on a live e2e_secrets and checks the dump; the process survives and exits 0.
void gcore_check(const TempDir &dir, const std::string &config) {
    cr_assert(have_program("gcore"), "gcore is not installed");
    RunOptions opts = shim_options(config, {shim_program("e2e_secrets"), "wait"});
    LiveProgram child;
    start_until_ready(child, opts);
    const std::string prefix = dir.file("gcore");
    RunOptions g;
    g.argv = {"gcore", "-o", prefix, std::to_string(child.pid())};
    const RunResult gr = run_program(g);
    cr_assert(gr.exited_with(0), "gcore failed: %s", gr.describe().c_str());
    const auto dump = read_file(prefix + "." + std::to_string(child.pid()));
    cr_assert(dump.has_value(), "gcore wrote no %s.%d", prefix.c_str(), static_cast<int>(child.pid()));
    check_dump(*dump, child.out(), "the gcore dump");
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("\ndone\n") != std::string::npos, "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
}

std::string core_pattern() {
    const auto p = read_file("/proc/sys/kernel/core_pattern");
    return p ? *p : std::string();
}

}  // namespace

Test(e2e_coredump, kernel_core_dump_holds_no_secret) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_secrets", false);
    const std::string pattern = core_pattern();
    if (!pattern.empty() && pattern[0] == '|') {
        // Cores go to a helper program, not to a file: prove it with gcore instead.
        cr_log_info("core_pattern is a pipe (%s): using gcore", pattern.c_str());
        gcore_check(dir, config);
        return;
    }
    RunOptions opts = shim_options(config, {shim_program("e2e_secrets"), "abort"});
    opts.cwd = dir.path();
    opts.setup = raise_core_limit;
    const RunResult r = run_program(opts);
    cr_assert(r.killed_by(SIGABRT), "%s", r.describe().c_str());
    cr_assert(r.core_dumped, "no core dumped (RLIMIT_CORE hard limit 0?): %s", r.describe().c_str());
    const auto pid = line_value(r.out, "pid");
    cr_assert(pid.has_value(), "%s", r.describe().c_str());
    // core_pattern "core": ./core, or ./core.PID with kernel.core_uses_pid = 1. A pattern
    // with other specifiers is not handled here.
    std::string path;
    for (const std::string &name : {std::string("core"), "core." + *pid})
        if (file_exists(dir.file(name))) path = dir.file(name);
    cr_assert(!path.empty(), "no core file in %s (core_pattern %s)", dir.path().c_str(), pattern.c_str());
    const auto dump = read_file(path);
    cr_assert(dump.has_value());
    check_dump(*dump, r.out, "the kernel core dump");
}

Test(e2e_coredump, gcore_of_live_process_holds_no_secret) {
    TempDir dir;
    gcore_check(dir, prepare_e2e(dir, "e2e_secrets", false));
}
