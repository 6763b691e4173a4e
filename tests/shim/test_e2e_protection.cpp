// End-to-end: where a shimmed program's blocks live and what is left of them after free.
// Every program runs as a child with the shim preloaded; the test looks at it from outside
// (/proc/PID/smaps, exit status, stderr, the stats file).
#include <criterion/criterion.h>
#include <signal.h>

#include <string>
#include <vector>

#include "e2e.hpp"
#include "three_ways.hpp"

using namespace memlock_test;

namespace {

// dir/all.json: one rule that matches every allocation, no policy.
std::string match_all(const TempDir &dir) {
    const std::string path = dir.file("all.json");
    cr_assert(write_file(path, R"({"version": 1, "rules": [{"name": "all", "min_size": 0}]})"));
    return path;
}

// Runs PROG (e2e_layout or a build of it) under the end-to-end rules and checks from outside
// that its matched blocks, and only those, are locked and excluded from dumps.
void check_layout(const std::string &prog, const std::vector<std::pair<std::string, std::string>> &env = {}) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, prog);
    RunOptions opts = shim_options(config, {shim_program(prog)});
    for (const auto &e : env) opts.env.push_back(e);
    LiveProgram child;
    start_until_ready(child, opts);
    const auto pid_text = line_value(child.out(), "pid");
    cr_assert(pid_text.has_value());
    const pid_t pid = static_cast<pid_t>(std::stol(*pid_text));
    cr_assert_eq(pid, child.pid());

    const auto maps = read_smaps(pid);
    cr_assert(!maps.empty(), "cannot read /proc/%d/smaps", static_cast<int>(pid));
    unsigned matched = 0, plain = 0;
    for (const auto &b : printed_blocks(child.out())) {
        const char *line = b.line.c_str();
        cr_assert_not_null(b.addr, "bad address in: %s", line);
        const auto over = mappings_overlapping(maps, b.addr, b.size);
        cr_assert(!over.empty(), "block %s is in no mapping", line);
        const bool want = b.matched;
        cr_assert(range_has_flag(b.addr, b.size, "lo", want, pid), "%s: lo should be %s", line, want ? "set" : "absent");
        cr_assert(range_has_flag(b.addr, b.size, "dd", want, pid), "%s: dd should be %s", line, want ? "set" : "absent");
        for (const auto &m : over) {
            if (want) cr_assert_gt(m.locked_kb, 0u, "%s: mapping %lx-%lx has Locked: 0 kB", line,
                                   static_cast<unsigned long>(m.start), static_cast<unsigned long>(m.end));
            else cr_assert_eq(m.locked_kb, 0u, "%s: mapping %s is locked", line, m.path.c_str());
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

}  // namespace

Test(e2e_protection, matching_blocks_locked_and_dontdump_heap_is_not) { check_layout("e2e_layout"); }

// A sanitizer runtime is a library after the shim that intercepts malloc, dlopen, strcmp and
// pthread_mutex_lock, and calls malloc from the executable's preinit_array, before libc is
// initialised, while it makes those interceptors: the shim must find the next allocator
// without calling them or dlopen. e2e_layout_preinit's library does what such a runtime does
// at start-up with every interceptor still null (gcc 12's runtimes happen to have made some
// by their first malloc). AddressSanitizer checks that its runtime comes first unless told
// not to, and LeakSanitizer cannot see into the arena; ThreadSanitizer checks neither.
Test(e2e_protection, programs_built_with_asan_or_tsan_run_protected) {
    check_layout("e2e_layout_preinit");
    check_layout("e2e_layout_asan", {{"ASAN_OPTIONS", "verify_asan_link_order=0:detect_leaks=0"}});
    check_layout("e2e_layout_tsan");
}

Test(e2e_protection, freed_and_moved_blocks_leave_no_copy) {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_wipe");
    RunOptions opts = shim_options(config, {shim_program("e2e_wipe")});
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
    prepare_e2e(dir, "e2e_wipe");
    RunOptions opts;
    opts.argv = {shim_program("e2e_wipe")};
    opts.unset_env = {"LD_PRELOAD", "MEMLOCK_SHIM_CONFIG"};
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(1), "%s", r.describe().c_str());
    cr_assert(r.out.find("FAIL free-1000") != std::string::npos, "%s", r.describe().c_str());
}

namespace {

// e2e_badfree MODE under the shim dies of SIGABRT, its stderr exactly
// "memlock-shim: fatal: " + call + "(): " + fatal + " BLOCK\n" (BLOCK: the address it printed).
RunResult expect_bad_free_aborts(const char *mode, const std::string &fatal, const std::string &call = "free") {
    TempDir dir;
    const std::string config = prepare_e2e(dir, "e2e_badfree");
    const RunResult r = run_program(shim_options(config, {shim_program("e2e_badfree"), mode}));
    cr_assert(r.killed_by(SIGABRT), "%s", r.describe().c_str());
    const auto block = line_value(r.out, "block");
    cr_assert(block.has_value(), "%s", r.describe().c_str());
    const std::string expected = "memlock-shim: fatal: " + call + "(): " + fatal + " " + *block + "\n";
    cr_assert_str_eq(r.err.c_str(), expected.c_str());
    return r;
}

}  // namespace

Test(e2e_protection, double_free_of_arena_block_aborts_with_exact_message) {
    const RunResult r = expect_bad_free_aborts("double", "double free: block of the secure arena freed twice");
    cr_assert(r.out.find("returned") == std::string::npos);
}

Test(e2e_protection, invalid_free_of_arena_pointer_aborts_with_exact_message) {
    expect_bad_free_aborts("interior", "invalid pointer: not a live block of the secure arena");
}

// realloc of an arena pointer that is not a live block (freed, or inside a block) is fatal
// too, and the message names realloc, whatever size is asked for (0 included).
Test(e2e_protection, realloc_of_a_dead_arena_pointer_aborts_naming_realloc) {
    for (const char *mode : {"realloc-freed", "realloc-freed-0", "realloc-interior"}) {
        const RunResult r = expect_bad_free_aborts(mode, "invalid pointer: not a live block of the secure arena", "realloc");
        cr_assert(r.out.find("returned") == std::string::npos, "%s: %s", mode, r.describe().c_str());
    }
}

// A pointer inside a live block is not a block: realloc and malloc_usable_size refuse it as
// free does, in a small block and in a page-aligned one.
Test(e2e_protection, pointer_inside_a_block_is_refused_by_realloc_and_usable_size) {
    const std::string bad = "invalid pointer: not a live block of the secure arena";
    RunResult r = expect_bad_free_aborts("realloc-unaligned", bad, "realloc");
    cr_assert(r.out.find("a block") == std::string::npos, "%s", r.describe().c_str());
    for (const char *mode : {"usable-unaligned", "usable-aligned"}) {
        r = expect_bad_free_aborts(mode, bad, "malloc_usable_size");
        cr_assert(r.out.find("usable") == std::string::npos, "%s: %s", mode, r.describe().c_str());
    }
}

// A rule's actions choose what its blocks get: 32-byte blocks only dontdump (+ wipe), the
// 512..2048 range only lock (+ wipe). Each action set is a pool of its own.
Test(e2e_protection, rule_actions_select_lock_and_dontdump) {
    TempDir dir;
    prepare_e2e(dir, "e2e_layout");
    const std::string config = dir.file("actions.json");
    cr_assert(write_file(config, R"({"version": 1, "rules": [
        {"name": "keys", "size": 32, "actions": ["dontdump", "wipe"]},
        {"name": "buffers", "min_size": 512, "max_size": 2048, "actions": ["lock", "wipe"]}]})"));
    RunOptions opts = shim_options(config, {shim_program("e2e_layout")});
    LiveProgram child;
    start_until_ready(child, opts);
    const pid_t pid = child.pid();
    unsigned keys = 0, buffers = 0;
    for (const auto &b : printed_blocks(child.out())) {
        if (!b.matched) continue;
        const bool key = b.size == 32;
        cr_assert(range_has_flag(b.addr, b.size, "dd", key, pid), "%s: dd should be %s", b.line.c_str(),
                  key ? "set" : "absent");
        cr_assert(range_has_flag(b.addr, b.size, "lo", !key, pid), "%s: lo should be %s", b.line.c_str(),
                  key ? "absent" : "set");
        ++(key ? keys : buffers);
    }
    cr_assert_eq(keys, 2u);
    cr_assert_eq(buffers, 3u);
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
}

// A program that locks, advises and unlocks its own blocks (libsodium's sodium_mlock and
// sodium_munlock: mlock, MADV_DONTDUMP, then MADV_DODUMP, munlock), through libc, through
// syscall(2), or with mlockall and munlockall (also from a signal handler that interrupts the
// arena, and from a fork handler that runs while the shim's holds the arena's locks: neither
// hangs): the arena's pages stay locked and out of core dumps, and a secret written there
// afterwards is in no dump; the same calls on a page the program mapped itself still take
// effect there.
Test(e2e_protection, a_programs_own_munlock_and_dodump_leave_arena_pages_protected) {
    TempDir dir;
    const std::string config = match_all(dir);
    const std::string atfork = shim_build_dir() + "/libs/libatfork_grow.so";
    cr_assert(file_exists(atfork), "%s missing", atfork.c_str());
    for (const char *mode : {"munlock", "sodium", "syscall", "munlockall", "signal", "fork"}) {
        RunOptions opts = shim_options(config, {shim_program("e2e_ownlock"), mode});
        if (std::string(mode) == "fork") {
            for (auto &[name, value] : opts.env)
                if (name == "LD_PRELOAD") value += " " + atfork;
            opts.env.emplace_back("ATFORK_MUNLOCKALL", "1");
        }
        opts.timeout_ms = 120000;
        LiveProgram child;
        start_until_ready(child, opts);
        const pid_t pid = child.pid();
        const auto secret = line_value(child.out(), "secret"), plain = line_value(child.out(), "plain");
        cr_assert(secret && plain, "%s: %s", mode, child.out().c_str());
        const void *at = parse_pointer(*secret), *own = parse_pointer(*plain);
        cr_assert(at && own, "%s: %s", mode, child.out().c_str());
        for (const char *flag : {"lo", "dd"}) {
            cr_assert(range_has_flag(at, 16, flag, true, pid), "%s: the secret's page lacks %s", mode, flag);
            cr_assert(range_has_flag(own, 1, flag, false, pid), "%s: the program's own page keeps %s", mode, flag);
        }
        const std::string key = marker_bytes(child.out(), "key");
        cr_assert_eq(count_occurrences(gcore_dump(dir, pid), key), 0u, "%s: the secret is in the dump", mode);
        const RunResult r = child.finish();
        cr_assert(r.exited_with(0), "%s: %s", mode, r.describe().c_str());
        cr_assert_str_empty(r.err.c_str(), "%s", mode);
    }
}

// Two threads that call munlockall in turn, the second mlockall before each, 200,000 times
// each (e2e_ownlock race): a call that lands inside the relock the other thread's munlockall
// started rewrites the lock flags of the range being locked, and the relock's mlock2 fails
// with ENOMEM that no limit gave (the process has CAP_IPC_LOCK). The arena asks again: under
// config/default.json and under a rule that matches every allocation, no warning and no lock
// failure (memlock-inspect; under match-all, protected as configured), and the secret's page
// is locked and out of core dumps.
Test(e2e_protection, munlockall_and_mlockall_beside_the_arena_s_relock_cost_it_no_lock) {
    TempDir dir;
    const std::string all = match_all(dir);
    for (const std::string &config : {source_dir() + "/config/default.json", all}) {
        RunOptions opts = shim_options(config, {shim_program("e2e_ownlock"), "race"});
        opts.timeout_ms = 300000;
        LiveProgram child;
        start_until_ready(child, opts);
        const RunResult in = run_program(plain_env({shim_build_dir() + "/memlock-inspect", std::to_string(child.pid())}));
        cr_assert(contains(in.out, "lock failures 0, fallbacks 0,"), "%s: %s", config.c_str(), in.describe().c_str());
        if (config == all) cr_assert(in.exited_with(0), "%s", in.describe().c_str());
        if (config == all) {
            const auto secret = line_value(child.out(), "secret");
            cr_assert(secret, "%s", child.out().c_str());
            for (const char *flag : {"lo", "dd"})
                cr_assert(range_has_flag(parse_pointer(*secret), 16, flag, true, child.pid()), "the secret's page lacks %s", flag);
        }
        const RunResult r = child.finish();
        cr_assert(r.exited_with(0), "%s", r.describe().c_str());
        cr_assert(!contains(r.err, "cannot lock"), "%s: %s", config.c_str(), r.err.c_str());
    }
}

// A program that locks 64 KiB of its own (as gpg-agent its secure memory) under a 256 KiB
// RLIMIT_MEMLOCK and without CAP_IPC_LOCK, with mlock, mlock2 and syscall(2): the arena,
// which locked on fault at start-up as much of its first region as the limit let it, gives
// back what no block has used, so the program's lock succeeds as without the shim, under a
// rule that matches every allocation and under the TLS profile, which matches none here. The
// program's page is locked, and a block it allocates afterwards is out of core dumps.
Test(e2e_protection, a_programs_own_mlock_fits_the_limit_the_arena_holds_unused) {
    if (::geteuid() != 0) cr_skip_test("needs root: capsh drops CAP_IPC_LOCK");
    need_limit_tools();
    TempDir dir;
    const std::string all = match_all(dir);
    for (const std::string &config : {all, source_dir() + "/config/default.json"})
        for (const char *call : {"mlock", "mlock2", "syscall"}) {
            LiveProgram child;
            start_until_ready(child, plain_env(shimmed_under_memlock_limit(256 << 10, config, shim_program("e2e_ownlimit"),
                                                                           {std::to_string(64 << 10), call})));
            const auto mlock = line_value(child.out(), "result"), own = line_value(child.out(), "own"),
                       block = line_value(child.out(), "block");
            cr_assert(mlock && own && block, "%s: %s", call, child.out().c_str());
            cr_assert_str_eq(mlock->c_str(), "0", "%s under %s: the program's own lock failed\n%s", call, config.c_str(),
                             child.err().c_str());
            cr_assert(range_has_flag(parse_pointer(*own), 64 << 10, "lo", true, child.pid()), "%s", call);
            if (config == all)
                cr_assert(range_has_flag(parse_pointer(*block), 32, "dd", true, child.pid()), "%s", call);
            const RunResult r = child.finish();
            cr_assert(r.exited_with(0), "%s: %s", call, r.describe().c_str());
        }
}

// A program's own mlock that fails whatever the arena holds leaves the arena's locks alone:
// as root (CAP_IPC_LOCK, so no limit) one of a range whose last page is not mapped, and under
// a 256 KiB RLIMIT_MEMLOCK without CAP_IPC_LOCK one of 1 MiB. Both answer ENOMEM as without
// the shim, and a 16 KiB block allocated afterwards, above what the arena had committed, is
// locked: the arena gave back nothing for a call that could not succeed.
Test(e2e_protection, a_programs_own_mlock_that_cannot_fit_leaves_the_arena_locked) {
    if (::geteuid() != 0) cr_skip_test("needs root: capsh drops CAP_IPC_LOCK");
    need_limit_tools();
    TempDir dir;
    const std::string all = dir.file("all.json");
    cr_assert(write_file(all, R"({"version": 1, "rules": [{"name": "all", "min_size": 0}],
                                  "policy": {"on_lock_failure": "fallback"}})"));
    const std::vector<RunOptions> runs = {
        shim_options(all, {shim_program("e2e_ownlimit"), std::to_string(64 << 10), "unmapped"}),
        plain_env(shimmed_under_memlock_limit(256 << 10, all, shim_program("e2e_ownlimit"), {std::to_string(1 << 20), "mlock"})),
    };
    for (const RunOptions &opts : runs) {
        const char *how = opts.argv.back().c_str();
        LiveProgram child;
        start_until_ready(child, opts);
        const auto mlock = line_value(child.out(), "result"), run = line_value(child.out(), "run");
        cr_assert(mlock && run, "%s", child.out().c_str());
        cr_assert_str_eq(mlock->c_str(), "ENOMEM", "%s", how);
        cr_assert(range_has_flag(parse_pointer(*run), 16 << 10, "lo", true, child.pid()),
                  "%s: the arena gave back its locks for a call that failed anyway\n%s", how, child.err().c_str());
        const RunResult r = child.finish();
        cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    }
}

// A fork handler that runs after the shim's, while it holds every arena lock, locks 64 KiB of
// its own (refused under a 256 KiB RLIMIT_MEMLOCK, which the arena holds), advises them
// MADV_DODUMP and unlocks them (tests/libs/atfork_grow.c, ATFORK_OWNLOCK=1): none of the
// shim's answers waits for a lock, so the fork completes, with and without the limit.
Test(e2e_protection, a_fork_handlers_own_mlock_munlock_and_dodump_never_hang) {
    if (::geteuid() != 0) cr_skip_test("needs root: capsh drops CAP_IPC_LOCK");
    need_limit_tools();
    TempDir dir;
    const std::string all = match_all(dir), atfork = shim_build_dir() + "/libs/libatfork_grow.so";
    cr_assert(file_exists(atfork), "%s missing", atfork.c_str());
    const std::vector<std::string> cmd = {"env", "LD_PRELOAD=" + shim_library() + " " + atfork, "MEMLOCK_SHIM_CONFIG=" + all,
                                          "ATFORK_OWNLOCK=1", shim_program("e2e_ownlimit"), "4096", "fork"};
    for (bool limited : {false, true}) {
        RunOptions opts = plain_env(limited ? with_memlock_limit(256 << 10, cmd) : cmd);
        opts.timeout_ms = 60000;  // a watchdog for a hang
        LiveProgram child;
        start_until_ready(child, opts);
        const auto forked = line_value(child.out(), "result");
        cr_assert(forked && *forked == "0", "limited %d: the fork failed\n%s", limited, child.out().c_str());
        const RunResult r = child.finish();
        cr_assert(r.exited_with(0), "limited %d: %s", limited, r.describe().c_str());
    }
}
