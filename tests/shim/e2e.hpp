// e2e.hpp - what the end-to-end tests (test_e2e_*.cpp, test_tools.cpp) share on top of
// helpers.hpp:
//
//   need_built(prog)              the shim library and build/progs/PROG exist
//   e2e_rules_config(stats)       the end-to-end programs' rules (keys: 32, buffers: 512..2048)
//   prepare_e2e(dir, prog)        need_built + dir/rules.json with those rules (and stats.%p.json)
//   read_stats / stats_of / stat_value   the stats file and its counters
//   shim_options(config, argv)    RunOptions that preload the shim with `config`
//   plain_env(argv)               RunOptions that inherit neither the shim nor its config
//   shimmed_under_memlock_limit   argv running a shimmed program under a low RLIMIT_MEMLOCK
//   start_until_ready(child, opts)   start a LiveProgram and wait for its "ready" line
//   marker_bytes(out, key)        a marker the child printed in hex
//   printed_blocks(out)           the "match|plain ADDR SIZE" lines e2e_layout prints
//   without_origin(err)           the shim's stderr without " (program NAME, pid N)" / " (pid N)"
//   assert_log_eq(err, expected)  cr_assert_str_eq on without_origin(err)
//
// Helpers end the test (cr_assert) on a failure of their own.
#ifndef MEMLOCK_TESTS_E2E_HPP
#define MEMLOCK_TESTS_E2E_HPP

#include <criterion/criterion.h>

#include <sstream>
#include <string>
#include <vector>

#include "helpers.hpp"

namespace memlock_test {

// The shim library is built, and build/progs/PROG too unless prog is "". Returns
// shim_program(prog).
inline std::string need_built(const std::string &prog) {
    cr_assert(file_exists(shim_library()), "%s missing: run `make shim progs` (MEMLOCK_TEST_BUILD=%s)",
              shim_library().c_str(), shim_build_dir().c_str());
    if (!prog.empty())
        cr_assert(file_exists(shim_program(prog)), "%s missing: run `make progs`", shim_program(prog).c_str());
    return shim_program(prog);
}

// The rules of the end-to-end programs: 32-byte blocks ("keys") and 512..2048-byte blocks
// ("buffers") match. stats_file: where each process writes its counters ("" = nowhere).
inline std::string e2e_rules_config(const std::string &stats_file) {
    std::string config =
        R"({"version": 1,
  "rules": [{"name": "keys", "size": 32}, {"name": "buffers", "min_size": 512, "max_size": 2048}])";
    if (!stats_file.empty()) config += R"(,
  "stats": {"file": ")" + stats_file + R"("})";
    return config + "}";
}

// Checks that the shim and PROG are built, writes dir/rules.json with the end-to-end rules
// (with_stats: each process writes dir/stats.PID.json, see stats_of) and returns its path.
inline std::string prepare_e2e(const TempDir &dir, const std::string &prog, bool with_stats = true) {
    cr_assert(dir.ok(), "no temp dir");
    need_built(prog);
    const std::string config = dir.file("rules.json");
    cr_assert(write_file(config, e2e_rules_config(with_stats ? dir.file("stats.%p.json") : "")));
    return config;
}

// The text of a stats file the shim wrote.
inline std::string read_stats(const std::string &path) {
    const auto text = read_file(path);
    cr_assert(text.has_value(), "no stats file %s", path.c_str());
    return *text;
}

// The stats file of process `pid` under a prepare_e2e config.
inline std::string stats_of(const TempDir &dir, pid_t pid) {
    return read_stats(dir.file("stats." + std::to_string(pid) + ".json"));
}

// A counter of a stats file.
inline unsigned long long stat_value(const std::string &json, const char *key) {
    const auto v = json_uint(json, key);
    cr_assert(v.has_value(), "stats have no \"%s\": %s", key, json.c_str());
    return *v;
}

// RunOptions for argv under the shim with `config` (the rest of the environment inherited).
inline RunOptions shim_options(const std::string &config, std::vector<std::string> argv) {
    RunOptions o;
    o.argv = std::move(argv);
    o.env = shim_env(config);
    return o;
}

// RunOptions for argv that inherit neither the shim nor its config from the test's environment.
inline RunOptions plain_env(std::vector<std::string> argv) {
    RunOptions o;
    o.argv = std::move(argv);
    o.unset_env = {"LD_PRELOAD", "MEMLOCK_SHIM_CONFIG", "MEMLOCK_SHIM_ON_CONFIG_ERROR"};
    return o;
}

// The tools shimmed_under_memlock_limit runs.
inline void need_limit_tools() {
    cr_assert(have_program("prlimit") && have_program("capsh") && have_program("env"),
              "prlimit, capsh and env are needed");
}

// argv that runs PROG ARGS with the shim (config) under RLIMIT_MEMLOCK = limit_bytes and
// without CAP_IPC_LOCK. Only PROG is shimmed: env sets the preload after prlimit and capsh
// have run. Run it with plain_env.
inline std::vector<std::string> shimmed_under_memlock_limit(std::size_t limit_bytes, const std::string &config,
                                                            const std::string &prog,
                                                            const std::vector<std::string> &args) {
    std::vector<std::string> cmd = {"env", "LD_PRELOAD=" + shim_library(), "MEMLOCK_SHIM_CONFIG=" + config, prog};
    cmd.insert(cmd.end(), args.begin(), args.end());
    return with_memlock_limit(limit_bytes, cmd);
}

// Starts opts.argv into `child` and waits until it prints the line "ready".
inline void start_until_ready(LiveProgram &child, const RunOptions &opts) {
    cr_assert_not_null(start_program_into(child, opts), "cannot start %s", opts.argv.at(0).c_str());
    cr_assert(child.wait_for_line("ready"), "no ready line\nstdout: %s\nstderr: %s", child.out().c_str(),
              child.err().c_str());
}

// The 16 bytes of a marker the child printed as "KEY <32 hex digits>".
inline std::string marker_bytes(const std::string &out, const char *key) {
    const auto hex = line_value(out, key);
    cr_assert(hex.has_value() && hex->size() == 32, "no %s marker in: %s", key, out.c_str());
    std::string bytes;
    for (std::size_t i = 0; i < 32; i += 2) bytes += static_cast<char>(std::stoul(hex->substr(i, 2), nullptr, 16));
    return bytes;
}

// What gcore dumps of the live process pid (the file is removed: dumps are large).
inline std::string gcore_dump(const TempDir &dir, pid_t pid) {
    cr_assert(have_program("gcore"), "gcore is not installed");
    const std::string prefix = dir.file("gcore");
    RunOptions g;
    g.argv = {"gcore", "-o", prefix, std::to_string(pid)};
    g.unset_env = {"LD_PRELOAD", "MEMLOCK_SHIM_CONFIG"};
    const RunResult gr = run_program(g);
    cr_assert(gr.exited_with(0), "gcore failed: %s", gr.describe().c_str());
    const std::string path = prefix + "." + std::to_string(pid);
    const auto dump = read_file(path);
    cr_assert(dump.has_value() && !dump->empty(), "gcore wrote no %s", path.c_str());
    std::error_code ec;
    std::filesystem::remove(path, ec);
    return *dump;
}

// One "match ADDR SIZE" or "plain ADDR SIZE" line (e2e_layout: a block the rules match, or not).
struct PrintedBlock {
    std::string line;
    bool matched = false;
    const void *addr = nullptr;  // nullptr if ADDR does not parse
    std::size_t size = 0;
};

// Every such line of `out`, in order; other lines are skipped.
inline std::vector<PrintedBlock> printed_blocks(const std::string &out) {
    std::vector<PrintedBlock> blocks;
    for (const auto &line : split_lines(out)) {
        std::istringstream in(line);
        std::string kind, addr_text;
        std::size_t size = 0;
        if (!(in >> kind >> addr_text >> size) || (kind != "match" && kind != "plain")) continue;
        blocks.push_back({line, kind == "match", parse_pointer(addr_text), size});
    }
    return blocks;
}

// The shim's log lines end with " (program NAME, pid N)" and its refusal names " (pid N)"
// after the program: `err` without them, for tests that compare the rest exactly.
inline std::string without_origin(const std::string &err) {
    if (err.empty()) return err;
    std::string out;
    for (const auto &line : split_lines(err)) {
        std::string l = line;
        const auto tail = l.rfind(" (program ");
        if (tail != std::string::npos && l.back() == ')' && l.find(", pid ", tail) != std::string::npos)
            l.erase(tail);
        const auto refusal = l.find(" (pid ");
        if (l.rfind("memlock-shim: refusing to run ", 0) == 0 && refusal != std::string::npos)
            l.erase(refusal, l.find(')', refusal) + 1 - refusal);
        out += l + "\n";
    }
    return out;
}

}  // namespace memlock_test

// cr_assert_str_eq on the shim's stderr without the origins (without_origin).
#define assert_log_eq(err, expected, ...)                                       \
    do {                                                                        \
        const std::string got_log_ = memlock_test::without_origin(err);         \
        cr_assert_str_eq(got_log_.c_str(), expected, ##__VA_ARGS__);            \
    } while (0)

#endif  // MEMLOCK_TESTS_E2E_HPP
