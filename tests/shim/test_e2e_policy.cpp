// End-to-end: what the shim does when the arena cannot be locked, under each policy.
// The limit comes from outside (RLIMIT_MEMLOCK of 128 KiB without CAP_IPC_LOCK, set by
// prlimit + capsh) or from the config (policy.max_locked). e2e_policy asks for 1 MiB of
// matching 1000-byte blocks, far more than either allows.
#include <criterion/criterion.h>
#include <signal.h>

#include <cerrno>
#include <string>
#include <vector>

#include "e2e.hpp"
#include "memlock.h"

using namespace memlock_test;

namespace {

constexpr std::size_t kRlimit = 131072;
const char *const kBlocks = "1024";  // x 1000 bytes
const char *const kMaxLocked64K = R"(, "max_locked": "64KiB")";

struct Setup {
    std::string config;
    std::string stats;
};

// policy_extra: members added to "policy" (after on_lock_failure).
Setup prepare(const TempDir &dir, const std::string &policy, const std::string &policy_extra = "") {
    cr_assert(dir.ok(), "no temp dir");
    need_built("e2e_policy");
    Setup s{dir.file("rules.json"), dir.file("stats.json")};
    cr_assert(write_file(s.config, R"({"version": 1,
  "rules": [{"name": "buffers", "min_size": 512, "max_size": 2048}],
  "policy": {"on_lock_failure": ")" + policy + "\"" + policy_extra + R"(},
  "stats": {"file": ")" + s.stats + R"("}})"));
    return s;
}

// argv that runs e2e_policy (args appended) with the shim under RLIMIT_MEMLOCK = 128 KiB and
// without CAP_IPC_LOCK.
std::vector<std::string> limited(const Setup &s, const std::vector<std::string> &args) {
    return shimmed_under_memlock_limit(kRlimit, s.config, shim_program("e2e_policy"), args);
}

// e2e_policy `args` (default: kBlocks) under the shim with `s`, no limits changed.
RunResult run_shimmed(const Setup &s, const std::vector<std::string> &args = {kBlocks}) {
    std::vector<std::string> argv{shim_program("e2e_policy")};
    argv.insert(argv.end(), args.begin(), args.end());
    RunOptions opts = plain_env(argv);
    opts.env = shim_env(s.config);
    return run_program(opts);
}

bool starts_with(const std::string &s, const std::string &prefix) { return s.compare(0, prefix.size(), prefix) == 0; }
bool ends_with(const std::string &s, const std::string &suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

const std::string kLockWarning = "memlock-shim: warning: cannot lock arena memory";

// stderr is exactly one line; returns it.
std::string single_stderr_line(const RunResult &r) {
    const auto lines = split_lines(r.err);
    cr_assert_eq(lines.size(), 1u, "expected one line on stderr:\n%s", r.describe().c_str());
    return lines[0];
}

// stderr is exactly one warning line about the lock failure, ending with `why`.
void expect_one_lock_warning(const RunResult &r, const std::string &why) {
    std::string line = without_origin(single_stderr_line(r));
    if (!line.empty() && line.back() == '\n') line.pop_back();
    cr_assert(ends_with(r.err, "\n"), "%s", r.describe().c_str());
    cr_assert(starts_with(line, kLockWarning), "%s", r.describe().c_str());
    cr_assert(ends_with(line, ": " + why), "warning does not end with \": %s\":\n%s", why.c_str(),
              r.describe().c_str());
}

// A matching malloc failed with ENOMEM before all kBlocks were allocated.
void expect_denied_before_the_end(const RunResult &r) {
    const auto at = line_value(r.out, "null errno=ENOMEM at");
    cr_assert(at.has_value(), "no matching malloc failed with ENOMEM:\n%s", r.describe().c_str());
    cr_assert_lt(std::stol(*at), 1024);
}

const std::string kFatalPrefix = "memlock-shim: fatal: cannot lock arena memory (policy on_lock_failure=abort): ";

}  // namespace

Test(e2e_policy, fallback_under_rlimit_serves_unlocked_dontdump_memory_and_warns_once) {
    need_limit_tools();
    TempDir dir;
    const Setup s = prepare(dir, "fallback");
    RunOptions opts = plain_env(limited(s, {kBlocks, "hold"}));
    LiveProgram prog;
    start_until_ready(prog, opts);
    const auto pid_text = line_value(prog.out(), "pid");
    const auto first = line_value(prog.out(), "first"), last = line_value(prog.out(), "last");
    cr_assert(pid_text && first && last, "%s", prog.out().c_str());
    const pid_t pid = static_cast<pid_t>(std::stol(*pid_text));
    cr_assert_eq(pid, prog.pid(), "prlimit/capsh/sh should exec the program in place");
    // Every block stays out of core dumps; the ones beyond the limit are not locked.
    cr_assert(range_has_flag(parse_pointer(*first), 1000, "dd", true, pid), "first block is not dd");
    cr_assert(range_has_flag(parse_pointer(*last), 1000, "dd", true, pid), "last block is not dd");
    cr_assert(range_has_flag(parse_pointer(*last), 1000, "lo", false, pid), "last block is locked");
    cr_assert_leq(vm_locked_kb(pid), static_cast<long>(kRlimit / 1024));

    const RunResult r = prog.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("allocated 1024\n") != std::string::npos, "%s", r.describe().c_str());
    expect_one_lock_warning(r, memlock_strerror(ENOMEM));
    const std::string st = read_stats(s.stats);
    cr_assert_geq(stat_value(st, "fallbacks"), 1u, "%s", st.c_str());
    cr_assert_geq(stat_value(st, "lock_failures"), 1u, "%s", st.c_str());
    cr_assert_geq(stat_value(st, "matched_allocations"), 1024u, "%s", st.c_str());
    cr_assert_gt(stat_value(st, "unlocked_bytes"), 0u, "%s", st.c_str());
    cr_assert_leq(stat_value(st, "locked_bytes"), kRlimit, "%s", st.c_str());
    cr_assert_eq(stat_value(st, "denied"), 0u, "%s", st.c_str());
}

Test(e2e_policy, deny_under_rlimit_returns_null_with_enomem) {
    need_limit_tools();
    TempDir dir;
    const Setup s = prepare(dir, "deny");
    const RunResult r = run_program(plain_env(limited(s, {kBlocks})));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    expect_denied_before_the_end(r);
    cr_assert(r.out.find("\ndone\n") != std::string::npos, "%s", r.describe().c_str());
    expect_one_lock_warning(r, memlock_strerror(ENOMEM));
    const std::string st = read_stats(s.stats);
    cr_assert_geq(stat_value(st, "denied"), 1u, "%s", st.c_str());
    cr_assert_geq(stat_value(st, "lock_failures"), 1u, "%s", st.c_str());
    cr_assert_eq(stat_value(st, "fallbacks"), 0u, "%s", st.c_str());
    cr_assert_eq(stat_value(st, "unlocked_bytes"), 0u, "%s", st.c_str());
}

Test(e2e_policy, abort_under_rlimit_dies_with_exact_fatal_line) {
    need_limit_tools();
    TempDir dir;
    const Setup s = prepare(dir, "abort");
    const RunResult r = run_program(plain_env(limited(s, {kBlocks})));
    cr_assert(r.killed_by(SIGABRT), "%s", r.describe().c_str());
    const std::string expected = kFatalPrefix + memlock_strerror(ENOMEM) + "\n";
    cr_assert_str_eq(r.err.c_str(), expected.c_str());
}

// policy.max_locked below what the program needs: the same three paths, no limits changed.
Test(e2e_policy, fallback_when_max_locked_is_reached) {
    TempDir dir;
    const Setup s = prepare(dir, "fallback", kMaxLocked64K);
    const RunResult r = run_shimmed(s);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("allocated 1024\n") != std::string::npos, "%s", r.describe().c_str());
    const std::string warning = single_stderr_line(r);
    cr_assert(starts_with(warning, kLockWarning), "%s", r.describe().c_str());
    cr_assert(warning.find("max_locked") != std::string::npos, "warning does not name max_locked: %s",
              r.describe().c_str());
    const std::string st = read_stats(s.stats);
    cr_assert_geq(stat_value(st, "fallbacks"), 1u, "%s", st.c_str());
    cr_assert_geq(stat_value(st, "lock_failures"), 1u, "%s", st.c_str());
    cr_assert_leq(stat_value(st, "locked_bytes"), 65536u, "%s", st.c_str());
    cr_assert_eq(stat_value(st, "max_locked"), 65536u, "%s", st.c_str());
}

// The same on a thread whose cancellation is pending (it cancelled itself, deferred) when it
// allocates (e2e_cancel alloc): the warning's write, a cancellation point, does not act on it
// inside malloc (the shim's noexcept code: std::terminate); the thread's pthread_testcancel does.
Test(e2e_policy, a_warning_on_a_thread_with_a_pending_cancellation_does_not_act_on_it) {
    TempDir dir;
    need_built("e2e_cancel");
    const Setup s = prepare(dir, "fallback", kMaxLocked64K);
    RunOptions opts = plain_env({shim_program("e2e_cancel"), "alloc", kBlocks});
    opts.env = shim_env(s.config);
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "allocated 1024\ncancelled\n", "%s", r.describe().c_str());
    cr_assert(starts_with(single_stderr_line(r), kLockWarning), "%s", r.describe().c_str());
}

// A thread whose cancellation is pending calls exit (e2e_cancel exit 7): the shim's exit
// handler writes stats.file (open, write, close: cancellation points) without acting on it,
// and the process exits 7 with the file written, as it exits 7 without the shim ("terminate
// called without an active exception" and SIGABRT, no file, before).
Test(e2e_policy, exit_on_a_thread_with_a_pending_cancellation_writes_the_stats_file) {
    TempDir dir;
    need_built("e2e_cancel");
    const Setup s = prepare(dir, "fallback");
    RunOptions opts = plain_env({shim_program("e2e_cancel"), "exit", "7"});
    opts.env = shim_env(s.config);
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(7), "%s", r.describe().c_str());
    const std::string st = read_stats(s.stats);
    cr_assert_geq(stat_value(st, "matched_allocations"), 1u, "%s", st.c_str());
}

// The arena's address space used up (policy.max_arena) under fallback: new matching blocks
// come from the next allocator, but a matched block shrunk by more than half stays in the
// arena, where it was, instead of moving out of it.
Test(e2e_policy, a_shrink_with_the_arena_full_keeps_the_block_in_the_arena) {
    TempDir dir;
    const Setup s = prepare(dir, "fallback", R"(, "max_locked": "1MiB", "max_arena": "1MiB")");
    const RunResult r = run_shimmed(s, {"40000", "shrink"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("allocated 40000\n") != std::string::npos, "%s", r.describe().c_str());
    cr_assert_geq(stat_value(read_stats(s.stats), "overflows"), 1u, "the arena never ran out:\n%s", r.describe().c_str());
    cr_expect(r.out.find("shrunk dontdump") != std::string::npos, "the shrunk block left the arena:\n%s", r.describe().c_str());
    cr_expect(r.out.find("content kept\n") != std::string::npos, "%s", r.describe().c_str());
    cr_expect(r.out.find("after a malloc that succeeded") == std::string::npos,
              "a block the next allocator served past the full arena changed errno:\n%s", r.describe().c_str());
}

// The same under deny: the arena cannot lock more, and the shrink neither counts a denial
// nor fails; the block stays where it was. Denials counted against the same run without the
// shrink ("big").
Test(e2e_policy, a_shrink_under_deny_with_the_arena_full_keeps_the_block_and_denies_nothing) {
    TempDir dir;
    const Setup s = prepare(dir, "deny", kMaxLocked64K);
    std::uint64_t denied[2];
    for (int shrink = 0; shrink < 2; ++shrink) {
        const RunResult r = run_shimmed(s, {kBlocks, shrink ? "shrink" : "big"});
        cr_assert(r.exited_with(0), "%s", r.describe().c_str());
        expect_denied_before_the_end(r);
        denied[shrink] = stat_value(read_stats(s.stats), "denied");
        if (!shrink) continue;
        cr_expect(r.out.find("shrunk dontdump") != std::string::npos, "the shrunk block left the arena:\n%s", r.describe().c_str());
        cr_expect(r.out.find("content kept\n") != std::string::npos, "%s", r.describe().c_str());
    }
    cr_expect_geq(denied[0], 1u);
    cr_expect_eq(denied[1], denied[0], "the shrink counted a denial (%lu, %lu without it)", static_cast<unsigned long>(denied[1]),
                 static_cast<unsigned long>(denied[0]));
}

// Under fallback with the lock budget spent: new blocks are served unlocked, but a block shrunk
// by more than half keeps its lock (it stays where it was rather than move to unlocked memory).
Test(e2e_policy, a_shrink_with_the_lock_budget_spent_keeps_the_block_locked) {
    TempDir dir;
    const Setup s = prepare(dir, "fallback", kMaxLocked64K);
    const RunResult r = run_shimmed(s, {kBlocks, "shrink"});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_geq(stat_value(read_stats(s.stats), "fallbacks"), 1u, "the lock budget was never spent:\n%s", r.describe().c_str());
    cr_expect(r.out.find("shrunk dontdump locked\n") != std::string::npos, "the shrunk block lost its lock:\n%s", r.describe().c_str());
    cr_expect(r.out.find("content kept\n") != std::string::npos, "%s", r.describe().c_str());
}

Test(e2e_policy, deny_when_max_locked_is_reached) {
    TempDir dir;
    const Setup s = prepare(dir, "deny", kMaxLocked64K);
    const RunResult r = run_shimmed(s);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    expect_denied_before_the_end(r);
    cr_assert(starts_with(single_stderr_line(r), kLockWarning), "%s", r.describe().c_str());
    const std::string st = read_stats(s.stats);
    cr_assert_geq(stat_value(st, "denied"), 1u, "%s", st.c_str());
    cr_assert_leq(stat_value(st, "locked_bytes"), 65536u, "%s", st.c_str());
}

Test(e2e_policy, abort_when_max_locked_is_reached) {
    TempDir dir;
    const Setup s = prepare(dir, "abort", kMaxLocked64K);
    const RunResult r = run_shimmed(s);
    cr_assert(r.killed_by(SIGABRT), "%s", r.describe().c_str());
    const std::string fatal = single_stderr_line(r);
    cr_assert(starts_with(r.err, kFatalPrefix), "%s", r.describe().c_str());
    cr_assert(fatal.find("max_locked") != std::string::npos, "%s", r.describe().c_str());
}

// ---- a fork child that may lock less than its parent ----------------------------------------

namespace {

// e2e_forklimit: a parent that locks a 32 MiB budget as root, lowers RLIMIT_MEMLOCK to
// `limit` and drops to user 65534 (a daemon dropping privileges), then forks; the child waits
// on stdin. Returns the child's pid once it is ready.
pid_t start_forklimit(const TempDir &dir, LiveProgram &prog, std::size_t limit, const std::string &policy) {
    if (::geteuid() != 0) cr_skip_test("needs root: the parent locks with CAP_IPC_LOCK, then drops it");
    need_built("e2e_forklimit");
    const std::string config = dir.file("rules.json");
    cr_assert(write_file(config, R"({"version": 1, "rules": [{"name": "all", "min_size": 0}],
  "policy": {"max_locked": "32MiB", "on_lock_failure": ")" + policy + R"("}})"));
    start_until_ready(prog, shim_options(config, {shim_program("e2e_forklimit"), std::to_string(limit)}));
    const auto child = line_value(prog.out(), "child");
    cr_assert(child.has_value(), "%s", prog.out().c_str());
    return static_cast<pid_t>(std::stol(*child));
}

// The child of a forklimit parent, allowed `limit_kib`, locks that much, every page that holds
// a block among it, and says once what stays unlocked and why (not "policy.max_locked
// reached"), naming itself and its PID. What it allocates later, beyond that, is served
// unlocked without another line.
void expect_pages_in_use_locked_first(std::size_t limit_kib) {
    TempDir dir;
    LiveProgram prog;
    const pid_t child = start_forklimit(dir, prog, limit_kib << 10, "fallback");
    const auto blocks = line_values(prog.out(), "block");
    cr_assert_eq(blocks.size(), 64u, "%s", prog.out().c_str());
    for (const auto &b : blocks)
        cr_assert(range_has_flag(parse_pointer(b), 1000, "lo", true, child), "child: block %s is not locked\n%s",
                  b.c_str(), prog.err().c_str());
    cr_assert_eq(vm_locked_kb(child), limit_kib, "the child locks all that its RLIMIT_MEMLOCK allows");
    const RunResult r = prog.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const std::string limit = std::to_string(limit_kib), unlocked = std::to_string(4096 - limit_kib);
    const std::string expected =
        "memlock-shim: warning: cannot lock all arena memory again after fork (policy fallback: the rest is served "
        "unlocked, still wiped and out of core dumps): locked " + limit + " of the 4096 KiB locked before fork, every "
        "page in use among them; " + unlocked + " KiB stays unlocked (RLIMIT_MEMLOCK " + limit + " KiB): " +
        std::string(memlock_strerror(ENOMEM)) + " (program e2e_forklimit, pid " + std::to_string(child) + ")\n";
    cr_assert_str_eq(r.err.c_str(), expected.c_str());
}

}  // namespace

// The parent's arena had 4 MiB mapped locked (of a 32 MiB max_locked); its blocks lie above
// 3 MiB of freed pages at the bottom of the arena, in a region mapped after start-up, so
// locking from the bottom alone would miss them. A child that may lock 1 MiB locks them.
Test(e2e_policy, fork_child_under_a_lower_rlimit_locks_what_fits_pages_in_use_first) {
    expect_pages_in_use_locked_first(1024);
}

// A child that may lock 2 MiB could lock the start-up range of freed pages whole, which would
// leave no room for the region that holds the blocks: the pages in use come first there too.
Test(e2e_policy, fork_child_whose_rlimit_fits_a_range_of_free_pages_still_locks_the_pages_in_use) {
    expect_pages_in_use_locked_first(2048);
}

// A limit below the pages in use: the child locks what fits of them, and says how much.
Test(e2e_policy, fork_child_whose_rlimit_is_below_the_pages_in_use_locks_part_of_them) {
    TempDir dir;
    LiveProgram prog;
    const pid_t child = start_forklimit(dir, prog, 64u << 10, "deny");
    cr_assert_eq(vm_locked_kb(child), 64);
    const RunResult r = prog.finish();
    const std::string line = without_origin(r.err);
    const std::string head =
        "memlock-shim: warning: cannot lock all arena memory again after fork (policy deny: matching allocations that "
        "need memory beyond it fail with ENOMEM): locked 64 of the 4096 KiB locked before fork, only 64 of the ";
    cr_assert(starts_with(line, head), "%s", r.describe().c_str());
    cr_assert(ends_with(line, " KiB in use among them; 4032 KiB stays unlocked (RLIMIT_MEMLOCK 64 KiB): " +
                                  std::string(memlock_strerror(ENOMEM)) + "\n"),
              "%s", r.describe().c_str());
}
