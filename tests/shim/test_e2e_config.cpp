// End-to-end: what a shimmed program does with every class of bad config (and with none).
// The program never starts with an invalid config: exit status 78 and exactly two lines on
// stderr, unless MEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected (docs/config.md).
#include <criterion/criterion.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <linux/capability.h>

#include <filesystem>
#include <string>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

const char *const kOverride = "MEMLOCK_SHIM_ON_CONFIG_ERROR";

std::string hello() { return need_built("e2e_hello"); }

// The path the shim names: /proc/self/exe of the program.
std::string exe_path() {
    std::error_code ec;
    const auto p = std::filesystem::canonical(hello(), ec);
    cr_assert(!ec);
    return p.string();
}

RunResult run_hello(const std::string &config, const char *override_value = nullptr,
                    std::function<bool()> setup = nullptr) {
    RunOptions opts = shim_options(config, {hello()});
    opts.unset_env = {kOverride};
    if (override_value) opts.env.emplace_back(kOverride, override_value);
    opts.setup = std::move(setup);
    return run_program(opts);
}

std::string refusal(const std::string &error) {
    return "memlock-shim: " + error + "\nmemlock-shim: refusing to run " + exe_path() +
           " unprotected (exit 78); fix this or set MEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected\n";
}

// Fails closed with exactly `error`; runs (exit 0) with the override, logging the error.
void expect_config_error(const std::string &config, const std::string &error,
                         std::function<bool()> setup = nullptr) {
    const RunResult r = run_hello(config, nullptr, setup);
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    cr_assert_str_empty(r.out.c_str(), "the program ran: %s", r.out.c_str());
    const std::string refused = refusal(error);
    assert_log_eq(r.err, refused.c_str());

    const RunResult u = run_hello(config, "run-unprotected", setup);
    cr_assert(u.exited_with(0), "%s", u.describe().c_str());
    cr_assert_str_eq(u.out.c_str(), "hello 3\n");
    const std::string expected = "memlock-shim: error: " + error + "\nmemlock-shim: warning: running " + exe_path() +
                                 " UNPROTECTED (MEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected)\n";
    assert_log_eq(u.err, expected.c_str());
}

std::string config_with(const TempDir &dir, const std::string &text) {
    cr_assert(dir.ok());
    const std::string path = dir.file("rules.json");
    cr_assert(write_file(path, text));
    return path;
}

}  // namespace

Test(e2e_config, missing_file) {
    TempDir dir;
    const std::string path = dir.file("absent.json");
    expect_config_error(path, path + ": No such file or directory");
}

Test(e2e_config, directory_instead_of_file) {
    TempDir dir;
    cr_assert(dir.ok());
    expect_config_error(dir.path(), dir.path() + ": Is a directory");
}

// Root reads any file: the child loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (bounding
// set, so execve does not give them back) before the program starts.
Test(e2e_config, unreadable_file) {
    TempDir dir;
    const std::string path = config_with(dir, R"({"version": 1, "rules": []})");
    cr_assert_eq(::chmod(path.c_str(), 0), 0);
    const auto drop_dac = [] {
        return ::prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) == 0 &&
               ::prctl(PR_CAPBSET_DROP, CAP_DAC_READ_SEARCH, 0, 0, 0) == 0;
    };
    expect_config_error(path, path + ": Permission denied", drop_dac);
}

Test(e2e_config, syntax_error) {
    TempDir dir;
    const std::string path = config_with(dir, "{\"version\": 1,\n \"rules\": [}\n");
    expect_config_error(path, path + ":2:12: unexpected '}' (expected a value)");
}

Test(e2e_config, truncated_document) {
    TempDir dir;
    const std::string path = config_with(dir, "{\"version\": 1, \"rules\": [\n");
    expect_config_error(path, path + ":2:1: unexpected end of input (expected a value)");
}

Test(e2e_config, unknown_key) {
    TempDir dir;
    const std::string path = config_with(dir, R"({"version": 1, "rules": [{"name": "k", "sise": 32}]})");
    expect_config_error(path, path + ": rules[0]: unknown key \"sise\"");
}

Test(e2e_config, unknown_top_level_key) {
    TempDir dir;
    const std::string path = config_with(dir, R"({"version": 1, "rules": [], "polcy": {}})");
    expect_config_error(path, path + ": unknown key \"polcy\"");
}

Test(e2e_config, wrong_type) {
    TempDir dir;
    const std::string path = config_with(dir, R"({"version": 1, "rules": {"name": "k"}})");
    expect_config_error(path, path + ": rules: expected an array of rules, got an object");
}

Test(e2e_config, bad_size_string) {
    TempDir dir;
    const std::string path =
        config_with(dir, R"({"version": 1, "rules": [{"name": "k", "min_size": "12 parsecs"}]})");
    expect_config_error(path, path + ": rules[0].min_size: expected a size (bytes as an integer or a string like "
                                     "\"64KiB\"), got \"12 parsecs\"");
}

Test(e2e_config, bad_policy_value) {
    TempDir dir;
    const std::string path =
        config_with(dir, R"({"version": 1, "rules": [], "policy": {"on_lock_failure": "explode"}})");
    expect_config_error(path, path + ": policy.on_lock_failure: expected one of \"fallback\", \"deny\", \"abort\", "
                                     "got \"explode\"");
}

Test(e2e_config, empty_file) {
    TempDir dir;
    const std::string path = config_with(dir, "");
    expect_config_error(path, path + ": empty file (expected a JSON object)");
}

Test(e2e_config, missing_version) {
    TempDir dir;
    const std::string path = config_with(dir, R"({"rules": []})");
    expect_config_error(path, path + ": missing required key \"version\"");
}

// A bad MEMLOCK_SHIM_ON_CONFIG_ERROR is reported at every start, whether the config is good or
// bad, and the default (fail) applies.
const char *const kBadOverride = "memlock-shim: warning: MEMLOCK_SHIM_ON_CONFIG_ERROR=\"yes\" is not "
                                 "\"run-unprotected\" or \"fail\": a config error will stop this program (fail)\n";

Test(e2e_config, invalid_override_value_is_reported_and_fails_closed) {
    TempDir dir;
    const std::string path = config_with(dir, "");
    const RunResult r = run_hello(path, "yes");
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    cr_assert_str_empty(r.out.c_str());
    const std::string expected = kBadOverride + refusal(path + ": empty file (expected a JSON object)");
    assert_log_eq(r.err, expected.c_str());
}

Test(e2e_config, invalid_override_value_is_reported_with_a_good_config) {
    TempDir dir;
    const std::string path = config_with(dir, R"({"version": 1, "rules": [{"name": "keys", "size": 32}]})");
    const RunResult r = run_hello(path, "yes");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\n");
    assert_log_eq(r.err, kBadOverride);
}

Test(e2e_config, override_fail_is_the_default) {
    TempDir dir;
    const std::string path = config_with(dir, "");
    const RunResult r = run_hello(path, "fail");
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    const std::string expected = refusal(path + ": empty file (expected a JSON object)");
    assert_log_eq(r.err, expected.c_str());
}

Test(e2e_config, no_config_runs_and_says_so_once) {
    hello();
    RunOptions opts;
    opts.argv = {hello()};
    opts.env = shim_env("");
    opts.unset_env = {"MEMLOCK_SHIM_CONFIG", kOverride};
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\n");
    assert_log_eq(r.err, "memlock-shim: warning: MEMLOCK_SHIM_CONFIG is not set: nothing is protected, "
                                    "every allocation passes through\n");
}

// Under a plain LD_PRELOAD (a systemd drop-in, a shell's export) a script's commands inherit
// the preload and the config: what is wrong with them is said by the script, which its parent
// did not run under the shim, and at info level by each command it runs.
Test(e2e_config, a_script_says_once_what_its_commands_inherit) {
    const std::string script = "ls / >/dev/null; cat </dev/null; echo $$";
    RunOptions opts;
    opts.argv = {"/bin/sh", "-c", script};
    opts.env = shim_env("");
    opts.unset_env = {"MEMLOCK_SHIM_CONFIG", kOverride};
    RunResult r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    std::string pid = r.out.substr(0, r.out.find('\n'));
    std::string expected = "memlock-shim: warning: MEMLOCK_SHIM_CONFIG is not set: nothing is protected, every "
                           "allocation passes through (program sh, pid " + pid + ")\n";
    cr_assert_str_eq(r.err.c_str(), expected.c_str());

    const std::string unloaded = "rule \"openssl-and-its-callees\": no loaded object matches \"libcrypto.so*\" or "
                                 "\"libssl.so*\" yet (it may be loaded later)";
    TempDir dir;
    const std::string rule = R"({"name": "openssl-and-its-callees", "module": ["libcrypto.so*", "libssl.so*"], "depth": 8})";
    opts.env = shim_env(config_with(dir, R"({"version": 1, "rules": [)" + rule + "]}"));
    r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    pid = r.out.substr(0, r.out.find('\n'));
    expected = "memlock-shim: warning: " + unloaded + " (program sh, pid " + pid + ")\n";
    cr_assert_str_eq(r.err.c_str(), expected.c_str());

    TempDir info;
    opts.env = shim_env(config_with(info, R"({"version": 1, "rules": [)" + rule +
                                              R"(], "log": {"level": "info", "file": "stderr"}})"));
    r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "memlock-shim: warning: " + unloaded + " (program sh, pid "), "%s", r.err.c_str());
    cr_assert(contains(r.err, "memlock-shim: info: " + unloaded + " (program ls, pid "), "%s", r.err.c_str());
    cr_assert(contains(r.err, "memlock-shim: info: " + unloaded + " (program cat, pid "), "%s", r.err.c_str());
    cr_assert(!contains(r.err, "warning: " + unloaded + " (program ls"), "%s", r.err.c_str());

    // A config that names its programs may not apply to the parent, which then said nothing:
    // each command it applies to warns.
    TempDir listed;
    opts.env = shim_env(config_with(listed, R"({"version": 1, "programs": ["ls", "cat"], "rules": [)" + rule + "]}"));
    r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "memlock-shim: warning: " + unloaded + " (program ls, pid "), "%s", r.err.c_str());
    cr_assert(contains(r.err, "memlock-shim: warning: " + unloaded + " (program cat, pid "), "%s", r.err.c_str());
    cr_assert(!contains(r.err, "(program sh, pid "), "%s", r.err.c_str());
}

Test(e2e_config, valid_config_runs_silently) {
    TempDir dir;
    const std::string path = config_with(dir, R"({"version": 1, "rules": [{"name": "keys", "size": 32}]})");
    const RunResult r = run_hello(path);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\n");
    cr_assert_str_empty(r.err.c_str());
}

// Started as "ld.so --preload SHIM PROGRAM", /proc/self/exe is the loader: the config's
// `programs`, a module rule naming the program and the messages still go by the program's own
// file, not the loader's.
Test(e2e_config, a_program_started_by_the_loader_is_known_by_its_own_file) {
    RunOptions o;
    o.argv = {"readelf", "-lW", hello()};
    o.unset_env = {"LD_PRELOAD"};
    const RunResult elf = run_program(o);
    cr_assert(elf.exited_with(0), "%s", elf.describe().c_str());
    const std::string tag = "[Requesting program interpreter: ";
    const auto at = elf.out.find(tag), end = elf.out.find(']', at);
    cr_assert(at != std::string::npos && end != std::string::npos, "%s", elf.out.c_str());
    const std::string loader = elf.out.substr(at + tag.size(), end - at - tag.size());

    TempDir dir;
    const std::string stats = dir.file("stats.json");
    const std::string path = config_with(dir, R"({"version": 1, "programs": ["e2e_hello"],
        "rules": [{"name": "own", "module": "e2e_hello", "size": 32}], "log": {"level": "info"},
        "stats": {"file": ")" + stats + R"("}})");
    RunOptions run;
    run.argv = {loader, "--preload", shim_library(), hello()};
    run.env = {{"MEMLOCK_SHIM_CONFIG", path}};
    run.unset_env = {"LD_PRELOAD", kOverride};
    const RunResult r = run_program(run);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\n");
    const std::string said = "memlock-shim: info: protecting 1 rule(s) from " + path + " in " + exe_path();
    cr_assert(contains(r.err, said), "%s", r.err.c_str());
    cr_assert_eq(stat_value(read_stats(stats), "matched_allocations"), 1u, "%s", read_stats(stats).c_str());
}

// A daemon that closes its descriptors and opens its own takes over the number of log.file's
// descriptor: the shim's lines then go to stderr, never into the program's file (nor
// anywhere when the program took stderr's number too), and the program's first file gets the
// number it gets without the shim.
Test(e2e_config, a_program_that_takes_log_files_descriptor_over_gets_none_of_its_lines) {
    TempDir dir;
    const std::string log = dir.file("shim.log"), data = dir.file("data.txt");
    const std::string path = config_with(dir, R"({"version": 1,
        "rules": [{"name": "buffers", "min_size": 512, "max_size": 2048}],
        "policy": {"on_lock_failure": "fallback", "max_locked": "64KiB"},
        "log": {"file": ")" + log + R"("}})");
    const RunResult r = run_program(shim_options(path, {need_built("e2e_fds"), data, "1024"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "fd 3\ndone\n");
    const std::string written = read_file(data).value_or("?");
    cr_assert_str_eq(written.c_str(), "line1\nline2\n");
    cr_assert_eq(split_lines(r.err).size(), 1u, "%s", r.err.c_str());
    cr_assert(contains(r.err, "memlock-shim: warning: cannot lock arena memory"), "%s", r.err.c_str());
    const std::string logged = read_file(log).value_or("?");
    cr_assert_str_empty(logged.c_str());

    const RunResult all = run_program(shim_options(path, {need_built("e2e_fds"), data, "1024", "stderr"}));
    cr_assert(all.exited_with(0), "%s", all.describe().c_str());
    cr_assert_str_eq(all.out.c_str(), "fd 3\ndone\n");
    const std::string again = read_file(data).value_or("?");
    cr_assert_str_eq(again.c_str(), "line1\nline2\n");
    cr_assert_str_empty(all.err.c_str());
}

// Under RLIMIT_FSIZE 0 (sshd's sandboxed child sets it so), a write or ftruncate of a file
// raises SIGXFSZ, which kills: the shim then keeps its counters in a shared mapping, sends
// what log.file cannot take to stderr and reports that stats.file could not be written; a
// stderr that is a file at the limit takes no line and kills nothing either.
Test(e2e_config, a_file_size_limit_kills_no_program) {
    TempDir dir;
    const std::string log = dir.file("shim.log"), stats = dir.file("stats.json");
    const std::string path = config_with(dir, R"({"version": 1, "rules": [{"name": "keys", "size": 32}],
        "log": {"file": ")" + log + R"(", "level": "info"}, "stats": {"file": ")" + stats + R"("}})");
    const auto no_file_growth = [] {
        const struct rlimit zero = {0, 0};
        return ::setrlimit(RLIMIT_FSIZE, &zero) == 0;
    };
    const RunResult r = run_hello(path, nullptr, no_file_growth);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\n");
    cr_assert(contains(r.err, "memlock-shim: info: protecting 1 rule(s) from " + path), "%s", r.err.c_str());
    cr_assert(contains(r.err, "memlock-shim: warning: stats.file: cannot write " + stats +
                                  ": EFBIG: file too large (RLIMIT_FSIZE) (program e2e_hello, pid "),
              "%s", r.err.c_str());
    const std::string logged = read_file(log).value_or("?");
    cr_assert_str_empty(logged.c_str());
    cr_assert(!file_exists(stats));

    TempDir other;
    const std::string to_stderr = config_with(other, R"({"version": 1, "programs": ["e2e_hello"],
        "rules": [{"name": "keys", "size": 32}], "log": {"level": "info"}})");
    const std::string errors = other.file("stderr.txt");
    RunOptions o = shim_options(to_stderr, {"sh", "-c", "exec \"$0\" 2>>\"$1\"", hello(), errors});
    o.setup = no_file_growth;
    const RunResult f = run_program(o);
    cr_assert(f.exited_with(0), "%s", f.describe().c_str());
    cr_assert_str_eq(f.out.c_str(), "hello 3\n");
    const std::string said = read_file(errors).value_or("?");
    cr_assert_str_empty(said.c_str());
}
