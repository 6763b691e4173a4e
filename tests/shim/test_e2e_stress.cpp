// End-to-end stress and faults: programs under the shim pushed until something gives.
//
//   - threads x fork x exec storms (stress_storm): every child and every exec'd program exits
//     0, no block changes under its owner, every freed matched block reads zero;
//   - RLIMIT_MEMLOCK exhausted mid-run (stress_memlimit under prlimit + capsh) under each
//     lock-failure policy: fallback serves on (unlocked, still dontdump, still wiped), deny
//     returns NULL/ENOMEM and earlier blocks stay intact, abort dies with the exact fatal line;
//   - the allocator after the shim failing (libfailalloc.so preloaded after the shim): calls
//     the arena does not serve fail cleanly with ENOMEM, matched calls keep working.
// After each run the stats file must agree with the program: matched_allocations == frees +
// the blocks the program still held at exit (it prints "live N").
// No timing thresholds: only exit statuses, output, /proc and the counters.
#include <criterion/criterion.h>
#include <signal.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <vector>

#include "e2e.hpp"
#include "memlock.h"

using namespace memlock_test;

namespace {

constexpr std::size_t kRlimit = 131072;

// The stress programs' rules: sizes 77 and 1500..1600 are secret, nothing else.
std::string write_config(const TempDir &dir, const std::string &policy, const std::string &stats_file) {
    cr_assert(dir.ok(), "no temp dir");
    need_built("");
    const std::string path = dir.file("stress.json");
    cr_assert(write_file(path, R"({"version": 1,
  "rules": [{"name": "stress-small", "size": 77},
            {"name": "stress-buffers", "min_size": 1500, "max_size": 1600}],
  "policy": {"on_lock_failure": ")" + policy + R"("},
  "stats": {"file": ")" + stats_file + R"("}})"));
    return path;
}

// argv that runs PROG ARGS with the shim under RLIMIT_MEMLOCK = kRlimit, without CAP_IPC_LOCK.
std::vector<std::string> limited(const std::string &config, const std::string &prog,
                                  const std::vector<std::string> &args) {
    need_limit_tools();
    return shimmed_under_memlock_limit(kRlimit, config, prog, args);
}

long out_number(const RunResult &r, const std::string &key) {
    const auto v = line_value(r.out, key);
    cr_assert(v.has_value(), "no \"%s\" line:\n%s", key.c_str(), r.describe().c_str());
    return std::stol(*v);
}

// The counters agree with what the program held at exit: matched == frees + live blocks,
// and no block is counted live that the program did not keep.
void expect_consistent(const std::string &stats, long live_blocks, std::size_t block_bytes) {
    const auto matched = stat_value(stats, "matched_allocations"), frees = stat_value(stats, "frees");
    cr_assert_eq(matched, frees + static_cast<unsigned long long>(live_blocks),
                 "matched_allocations != frees + %ld live blocks: %s", live_blocks, stats.c_str());
    cr_assert_eq(stat_value(stats, "live_bytes"), static_cast<unsigned long long>(live_blocks) * block_bytes, "%s",
                 stats.c_str());
}

bool has_line(const RunResult &r, const std::string &line) {
    for (const auto &l : split_lines(r.out))
        if (l == line) return true;
    return false;
}

const std::string kFatalPrefix = "memlock-shim: fatal: cannot lock arena memory (policy on_lock_failure=abort): ";

}  // namespace

// ---- threads x fork x exec ------------------------------------------------------------------

Test(e2e_stress, threads_fork_exec_storm_all_exit_zero_and_counters_agree) {
    TempDir dir;
    const std::string config = write_config(dir, "fallback", dir.file("stats.%p.json"));
    const int rounds = 50;
    RunOptions opts = plain_env({need_built("stress_storm"), std::to_string(rounds), "/bin/true"});
    opts.env = shim_env(config);
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(has_line(r, "storm ok " + std::to_string(rounds)), "%s", r.describe().c_str());
    cr_assert(r.err.empty(), "%s", r.describe().c_str());

    // One stats file per process that exited through the shim: the storm and each /bin/true
    // it exec'd (the shim was loaded and active in every one of them).
    std::vector<std::string> files;
    for (const auto &e : std::filesystem::directory_iterator(dir.path()))
        if (e.path().filename().string().rfind("stats.", 0) == 0) files.push_back(e.path().string());
    cr_assert_eq(files.size(), static_cast<std::size_t>(rounds + 1), "%zu stats files", files.size());
    for (const auto &f : files) {
        const std::string st = read_stats(f);
        cr_assert(st.find("\"active\": true") != std::string::npos, "%s: %s", f.c_str(), st.c_str());
        cr_assert_geq(stat_value(st, "matched_allocations"), stat_value(st, "frees"), "%s", st.c_str());
    }
    // The storm's own counters: 10 blocks of 77 bytes (class 80) held at exit.
    const std::string st = read_stats(dir.file("stats." + std::to_string(out_number(r, "pid")) + ".json"));
    cr_assert_gt(stat_value(st, "matched_allocations"), 1000u, "%s", st.c_str());
    expect_consistent(st, out_number(r, "live"), 80);
}

Test(e2e_stress, storm_under_rlimit_memlock_with_fallback_survives) {
    TempDir dir;
    const std::string config = write_config(dir, "fallback", dir.file("stats.%p.json"));
    // After a fork the child locks the arena again; under the limit that fails and the
    // fallback policy carries on unlocked (one warning per process at most).
    RunOptions opts = plain_env(limited(config, need_built("stress_storm"), {"20", "/bin/true"}));
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(has_line(r, "storm ok 20"), "%s", r.describe().c_str());
    for (const auto &l : split_lines(r.err))
        cr_assert(l.rfind("memlock-shim: warning: cannot lock arena memory", 0) == 0, "unexpected stderr line: %s",
                  l.c_str());
}

// ---- RLIMIT_MEMLOCK exhausted mid-run -------------------------------------------------------

Test(e2e_stress, memlock_exhausted_under_fallback_completes_unlocked_dontdump_and_wiped) {
    TempDir dir;
    const std::string stats = dir.file("stats.json");
    const std::string config = write_config(dir, "fallback", stats);
    RunOptions opts = plain_env(limited(config, need_built("stress_memlimit"), {"400", "hold"}));
    LiveProgram prog;
    start_until_ready(prog, opts);
    const pid_t pid = static_cast<pid_t>(std::stol(*line_value(prog.out(), "pid")));
    cr_assert_eq(pid, prog.pid(), "prlimit/capsh/sh should exec the program in place");
    const void *first = parse_pointer(*line_value(prog.out(), "first"));
    const void *last = parse_pointer(*line_value(prog.out(), "last"));
    cr_assert(range_has_flag(first, 1536, "dd", true, pid), "first block is not dd");
    cr_assert(range_has_flag(last, 1536, "dd", true, pid), "last block is not dd");
    cr_assert(range_has_flag(last, 1536, "lo", false, pid), "last block is locked beyond the limit");
    cr_assert_leq(vm_locked_kb(pid), static_cast<long>(kRlimit / 1024));

    const RunResult r = prog.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const long allocated = out_number(r, "allocated"), live = out_number(r, "live");
    cr_assert_eq(allocated, 400, "%s", r.describe().c_str());
    cr_assert_eq(out_number(r, "wiped"), allocated - live, "every freed block read zero: %s", r.describe().c_str());
    const std::string st = read_stats(stats);
    cr_assert_geq(stat_value(st, "fallbacks"), 1u, "%s", st.c_str());
    cr_assert_geq(stat_value(st, "lock_failures"), 1u, "%s", st.c_str());
    cr_assert_gt(stat_value(st, "unlocked_bytes"), 0u, "%s", st.c_str());
    cr_assert_leq(stat_value(st, "locked_bytes"), kRlimit, "%s", st.c_str());
    cr_assert_eq(stat_value(st, "denied"), 0u, "%s", st.c_str());
    cr_assert_leq(stat_value(st, "committed_bytes"), stat_value(st, "locked_bytes") + stat_value(st, "unlocked_bytes"),
                  "%s", st.c_str());
    expect_consistent(st, live, 1536);
}

Test(e2e_stress, memlock_exhausted_under_deny_fails_cleanly_and_keeps_earlier_blocks) {
    TempDir dir;
    const std::string stats = dir.file("stats.json");
    const std::string config = write_config(dir, "deny", stats);
    const RunResult r = run_program(plain_env(limited(config, need_built("stress_memlimit"), {"400"})));
    cr_assert(r.exited_with(0), "earlier blocks intact, freed blocks wiped: %s", r.describe().c_str());
    const auto at = line_value(r.out, "null errno=ENOMEM at");
    cr_assert(at.has_value(), "no matched malloc failed with ENOMEM:\n%s", r.describe().c_str());
    cr_assert_lt(std::stol(*at), 400);
    cr_assert_gt(std::stol(*at), 0, "nothing could be allocated at all");
    const long allocated = out_number(r, "allocated"), live = out_number(r, "live");
    cr_assert_eq(out_number(r, "wiped"), allocated - live, "%s", r.describe().c_str());
    const std::string st = read_stats(stats);
    cr_assert_geq(stat_value(st, "denied"), 1u, "%s", st.c_str());
    cr_assert_eq(stat_value(st, "fallbacks"), 0u, "%s", st.c_str());
    cr_assert_eq(stat_value(st, "unlocked_bytes"), 0u, "%s", st.c_str());
    cr_assert_leq(stat_value(st, "locked_bytes"), kRlimit, "%s", st.c_str());
    expect_consistent(st, live, 1536);
}

Test(e2e_stress, memlock_exhausted_under_abort_dies_with_the_exact_fatal_line) {
    TempDir dir;
    const std::string config = write_config(dir, "abort", dir.file("stats.json"));
    const RunResult r = run_program(plain_env(limited(config, need_built("stress_memlimit"), {"400"})));
    cr_assert(r.killed_by(SIGABRT), "%s", r.describe().c_str());
    const std::string expected = kFatalPrefix + memlock_strerror(ENOMEM) + "\n";
    cr_assert_str_eq(r.err.c_str(), expected.c_str());
}

// ---- the next allocator failing ---------------------------------------------------------------

namespace {

RunResult run_failing(const TempDir &dir, const std::string &stats, const std::string &every, const std::string &rounds) {
    const std::string config = write_config(dir, "fallback", stats);
    const std::string fail_lib = shim_build_dir() + "/libs/libfailalloc.so";
    cr_assert(file_exists(fail_lib), "%s missing: run `make %s`", fail_lib.c_str(), "build/libs/libfailalloc.so");
    RunOptions opts = plain_env({need_built("stress_failalloc"), every, rounds});
    opts.env = {{"LD_PRELOAD", shim_library() + " " + fail_lib}, {"MEMLOCK_SHIM_CONFIG", config}};
    return run_program(opts);
}

}  // namespace

Test(e2e_stress, next_allocator_failing_every_third_call_unmatched_fail_cleanly_matched_work) {
    TempDir dir;
    const std::string stats = dir.file("stats.json");
    const RunResult r = run_failing(dir, stats, "3", "3000");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(has_line(r, "failalloc ok"), "%s", r.describe().c_str());
    cr_assert_gt(out_number(r, "injected"), 0, "%s", r.describe().c_str());
    cr_assert_gt(out_number(r, "unmatched_failures"), 0, "%s", r.describe().c_str());
    cr_assert(r.err.empty(), "%s", r.describe().c_str());
    const std::string st = read_stats(stats);
    cr_assert_eq(stat_value(st, "denied"), 0u, "%s", st.c_str());
    expect_consistent(st, out_number(r, "live"), 1536);
}

Test(e2e_stress, next_allocator_failing_every_call_still_serves_matched_sizes) {
    TempDir dir;
    const std::string stats = dir.file("stats.json");
    const RunResult r = run_failing(dir, stats, "1", "500");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(has_line(r, "failalloc ok"), "%s", r.describe().c_str());
    cr_assert_gt(out_number(r, "injected"), 0, "%s", r.describe().c_str());
    const std::string st = read_stats(stats);
    expect_consistent(st, out_number(r, "live"), 1536);
}
