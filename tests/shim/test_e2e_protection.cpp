// End-to-end: where a shimmed program's blocks live and what is left of them after free.
// Every program runs as a child with the shim preloaded; the test looks at it from outside
// (/proc/PID/smaps, exit status, stderr, the stats file).
#include <criterion/criterion.h>
#include <signal.h>

#include <string>
#include <vector>

#include "helpers.hpp"

using namespace memlock_test;

namespace {

// Rules of the end-to-end programs: 32-byte blocks and 512..2048-byte blocks match.
std::string rules_config(const TempDir &dir) {
    return R"({"version": 1,
  "rules": [{"name": "keys", "size": 32}, {"name": "buffers", "min_size": 512, "max_size": 2048}],
  "stats": {"file": ")" + dir.file("stats.%p.json") + R"("}})";
}

std::string prepare(const TempDir &dir, const std::string &prog) {
    cr_assert(dir.ok(), "no temp dir");
    cr_assert(file_exists(shim_library()), "%s missing: run `make shim progs` (MEMLOCK_TEST_BUILD=%s)",
              shim_library().c_str(), shim_build_dir().c_str());
    cr_assert(file_exists(shim_program(prog)), "%s missing: run `make progs`", shim_program(prog).c_str());
    const std::string config = dir.file("rules.json");
    cr_assert(write_file(config, rules_config(dir)));
    return config;
}

std::string stats_of(const TempDir &dir, pid_t pid) {
    const auto text = read_file(dir.file("stats." + std::to_string(pid) + ".json"));
    cr_assert(text.has_value(), "no stats file for pid %d", static_cast<int>(pid));
    return *text;
}

unsigned long long stat_value(const std::string &json, const char *key) {
    const auto v = json_uint(json, key);
    cr_assert(v.has_value(), "stats have no \"%s\": %s", key, json.c_str());
    return *v;
}

}  // namespace

Test(e2e_protection, matching_blocks_locked_and_dontdump_heap_is_not) {
    TempDir dir;
    const std::string config = prepare(dir, "e2e_layout");
    RunOptions opts;
    opts.argv = {shim_program("e2e_layout")};
    opts.env = shim_env(config);
    LiveProgram child;
    cr_assert_not_null(start_program_into(child, opts));
    cr_assert(child.wait_for_line("ready"), "no ready line\nstdout: %s\nstderr: %s", child.out().c_str(),
              child.err().c_str());
    const auto pid_text = line_value(child.out(), "pid");
    cr_assert(pid_text.has_value());
    const pid_t pid = static_cast<pid_t>(std::stol(*pid_text));
    cr_assert_eq(pid, child.pid());

    const auto maps = read_smaps(pid);
    cr_assert(!maps.empty(), "cannot read /proc/%d/smaps", static_cast<int>(pid));
    unsigned matched = 0, plain = 0;
    for (const auto &line : split_lines(child.out())) {
        std::istringstream in(line);
        std::string kind, addr_text;
        std::size_t size = 0;
        if (!(in >> kind >> addr_text >> size) || (kind != "match" && kind != "plain")) continue;
        const void *addr = parse_pointer(addr_text);
        cr_assert_not_null(addr, "bad address in: %s", line.c_str());
        const auto over = mappings_overlapping(maps, addr, size);
        cr_assert(!over.empty(), "block %s is in no mapping", line.c_str());
        const bool want = kind == "match";
        cr_assert(range_has_flag(addr, size, "lo", want, pid), "%s: lo should be %s", line.c_str(),
                  want ? "set" : "absent");
        cr_assert(range_has_flag(addr, size, "dd", want, pid), "%s: dd should be %s", line.c_str(),
                  want ? "set" : "absent");
        for (const auto &m : over) {
            if (want) cr_assert_gt(m.locked_kb, 0u, "%s: mapping %lx-%lx has Locked: 0 kB", line.c_str(),
                                   static_cast<unsigned long>(m.start), static_cast<unsigned long>(m.end));
            else cr_assert_eq(m.locked_kb, 0u, "%s: mapping %s is locked", line.c_str(), m.path.c_str());
        }
        ++(want ? matched : plain);
    }
    cr_assert_eq(matched, 5u, "stdout: %s", child.out().c_str());
    cr_assert_eq(plain, 3u, "stdout: %s", child.out().c_str());
    cr_assert_gt(vm_locked_kb(pid), 0);

    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("\ndone\n") != std::string::npos, "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
    const std::string stats = stats_of(dir, pid);
    cr_assert_geq(stat_value(stats, "matched_allocations"), 5u, "%s", stats.c_str());
    cr_assert_geq(stat_value(stats, "frees"), 5u, "%s", stats.c_str());
    cr_assert_gt(stat_value(stats, "locked_bytes"), 0u, "%s", stats.c_str());
    cr_assert_eq(stat_value(stats, "lock_failures"), 0u, "%s", stats.c_str());
}

Test(e2e_protection, freed_and_moved_blocks_leave_no_copy) {
    TempDir dir;
    const std::string config = prepare(dir, "e2e_wipe");
    RunOptions opts;
    opts.argv = {shim_program("e2e_wipe")};
    opts.env = shim_env(config);
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    for (const char *check : {"free-32", "free-1000", "free-2048", "realloc-arena-move-old-zero",
                              "realloc-arena-move-contents", "realloc-into-arena-old-wiped",
                              "realloc-into-arena-old-head", "realloc-into-arena-contents"})
        cr_assert(r.out.find(std::string("ok ") + check + "\n") != std::string::npos, "no \"ok %s\"\n%s", check,
                  r.describe().c_str());
    cr_assert(r.out.find("FAIL") == std::string::npos, "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
}

// The same program without the shim sees glibc's leftovers: the checks can fail.
Test(e2e_protection, wipe_checks_see_glibc_leftovers_without_shim) {
    TempDir dir;
    prepare(dir, "e2e_wipe");
    RunOptions opts;
    opts.argv = {shim_program("e2e_wipe")};
    opts.unset_env = {"LD_PRELOAD", "MEMLOCK_SHIM_CONFIG"};
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(1), "%s", r.describe().c_str());
    cr_assert(r.out.find("FAIL free-1000") != std::string::npos, "%s", r.describe().c_str());
}

Test(e2e_protection, double_free_of_arena_block_aborts_with_exact_message) {
    TempDir dir;
    const std::string config = prepare(dir, "e2e_badfree");
    RunOptions opts;
    opts.argv = {shim_program("e2e_badfree"), "double"};
    opts.env = shim_env(config);
    const RunResult r = run_program(opts);
    cr_assert(r.killed_by(SIGABRT), "%s", r.describe().c_str());
    const auto block = line_value(r.out, "block");
    cr_assert(block.has_value(), "%s", r.describe().c_str());
    const std::string expected =
        "memlock-shim: fatal: free(): double free: block of the secure arena freed twice " + *block + "\n";
    cr_assert_str_eq(r.err.c_str(), expected.c_str());
    cr_assert(r.out.find("returned") == std::string::npos);
}

Test(e2e_protection, invalid_free_of_arena_pointer_aborts_with_exact_message) {
    TempDir dir;
    const std::string config = prepare(dir, "e2e_badfree");
    RunOptions opts;
    opts.argv = {shim_program("e2e_badfree"), "interior"};
    opts.env = shim_env(config);
    const RunResult r = run_program(opts);
    cr_assert(r.killed_by(SIGABRT), "%s", r.describe().c_str());
    const auto block = line_value(r.out, "block");
    cr_assert(block.has_value(), "%s", r.describe().c_str());
    const std::string expected =
        "memlock-shim: fatal: free(): invalid pointer: not a live block of the secure arena " + *block + "\n";
    cr_assert_str_eq(r.err.c_str(), expected.c_str());
}

// A rule's actions choose what its blocks get: 32-byte blocks only dontdump (+ wipe), the
// 512..2048 range only lock (+ wipe). Each action set is a pool of its own.
Test(e2e_protection, rule_actions_select_lock_and_dontdump) {
    TempDir dir;
    prepare(dir, "e2e_layout");
    const std::string config = dir.file("actions.json");
    cr_assert(write_file(config, R"({"version": 1, "rules": [
        {"name": "keys", "size": 32, "actions": ["dontdump", "wipe"]},
        {"name": "buffers", "min_size": 512, "max_size": 2048, "actions": ["lock", "wipe"]}]})"));
    RunOptions opts;
    opts.argv = {shim_program("e2e_layout")};
    opts.env = shim_env(config);
    LiveProgram child;
    cr_assert_not_null(start_program_into(child, opts));
    cr_assert(child.wait_for_line("ready"), "stdout: %s\nstderr: %s", child.out().c_str(), child.err().c_str());
    const pid_t pid = child.pid();
    unsigned keys = 0, buffers = 0;
    for (const auto &line : split_lines(child.out())) {
        std::istringstream in(line);
        std::string kind, addr_text;
        std::size_t size = 0;
        if (!(in >> kind >> addr_text >> size) || kind != "match") continue;
        const void *addr = parse_pointer(addr_text);
        const bool key = size == 32;
        cr_assert(range_has_flag(addr, size, "dd", key, pid), "%s: dd should be %s", line.c_str(),
                  key ? "set" : "absent");
        cr_assert(range_has_flag(addr, size, "lo", !key, pid), "%s: lo should be %s", line.c_str(),
                  key ? "absent" : "set");
        ++(key ? keys : buffers);
    }
    cr_assert_eq(keys, 2u);
    cr_assert_eq(buffers, 3u);
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
}
