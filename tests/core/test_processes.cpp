// test_processes.cpp - behaviour that needs its own process: the real RLIMIT_MEMLOCK path, the
// core-dump limit, and what a real core dump contains. Children are this test binary re-run in
// a child mode (child_modes.cpp).
#include <criterion/criterion.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <random>
#include <string>

#include "core_test.hpp"
#include "helpers.hpp"
#include "memlock.hpp"

using memlock_test::RunOptions;
using memlock_test::RunResult;

namespace {

rlimit core_limit() {
    rlimit rl{};
    cr_assert_eq(getrlimit(RLIMIT_CORE, &rl), 0);
    return rl;
}

// Sets the soft RLIMIT_CORE (unprivileged while it stays <= hard).
void set_soft_core(rlim_t soft) {
    rlimit rl = core_limit();
    rl.rlim_cur = soft;
    cr_assert_eq(setrlimit(RLIMIT_CORE, &rl), 0);
}

std::string random_hex_marker() {
    std::random_device rd;
    std::string s;
    char b[3];
    for (int i = 0; i < 16; ++i) {
        std::snprintf(b, sizeof b, "%02x", rd() & 0xff);
        s += b;
    }
    return s;
}

std::string unhex(const std::string &hex) {
    std::string out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    return out;
}

bool sanitized() {
#if defined(__SANITIZE_ADDRESS__)
    return true;
#else
    return false;
#endif
}

}  // namespace

// ---- the real limit path ------------------------------------------------------------------

Test(limits, without_cap_ipc_lock_mlock_over_rlimit_memlock_is_enomem) {
    if (!memlock_test::have_program("prlimit") || !memlock_test::have_program("capsh"))
        cr_skip_test("prlimit or capsh missing");
    RunOptions o;
    o.argv = memlock_test::with_memlock_limit(65536, {memlock_test::self_exe()});
    o.env = {{core_test::kChildModeEnv, "mlock_limit"}};
    const RunResult r = memlock_test::run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());

    auto has = [&](const char *line) { return r.out.find(line) != std::string::npos; };
    const std::string enomem = std::to_string(ENOMEM);
    cr_assert(has(("c_lock_128k=" + enomem + "\n").c_str()), "%s", r.describe().c_str());
    cr_assert(has(("cxx_lock_128k=" + enomem + ":system\n").c_str()), "%s", r.describe().c_str());
    cr_assert(has("c_lock_4k=0\n"), "small lock under the limit failed: %s", r.describe().c_str());
    cr_assert(has(("require=" + enomem + ":system empty=1\n").c_str()), "%s", r.describe().c_str());
    cr_assert(has(("best_effort=0 usable=1 locked=0 lock_error=" + enomem + ":system dontdump=1\n").c_str()),
              "%s", r.describe().c_str());
}

Test(limits, the_same_child_with_cap_ipc_lock_locks_128k) {
    // Control for the test above: the limit, not the child, makes mlock fail.
    RunOptions o;
    o.argv = {memlock_test::self_exe()};
    o.env = {{core_test::kChildModeEnv, "mlock_limit"}};
    o.setup = [] {
        rlimit rl{65536, 65536};
        return setrlimit(RLIMIT_MEMLOCK, &rl) == 0;  // CAP_IPC_LOCK kept: limit not enforced
    };
    const RunResult r = memlock_test::run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("c_lock_128k=0\n") != std::string::npos, "%s", r.describe().c_str());
    cr_assert(r.out.find("best_effort=0 usable=1 locked=1 lock_error=0:") != std::string::npos, "%s",
              r.describe().c_str());
}

// ---- core-dump limit ----------------------------------------------------------------------

Test(core_dumps, disable_lowers_only_the_soft_limit_and_restore_puts_it_back) {
    set_soft_core(1 << 20);
    const rlimit orig = core_limit();
    memlock_core_limit saved{};
    cr_assert_eq(memlock_disable_core_dumps(&saved), 0);
    cr_assert_eq(saved.soft, static_cast<unsigned long long>(orig.rlim_cur));
    cr_assert_eq(saved.hard, static_cast<unsigned long long>(orig.rlim_max));
    const rlimit off = core_limit();
    cr_assert_eq(off.rlim_cur, 0u);
    cr_assert_eq(off.rlim_max, orig.rlim_max, "hard limit changed");

    cr_assert_eq(memlock_restore_core_dumps(&saved), 0);
    const rlimit back = core_limit();
    cr_assert_eq(back.rlim_cur, orig.rlim_cur);
    cr_assert_eq(back.rlim_max, orig.rlim_max);
}

Test(core_dumps, argument_and_kernel_errors) {
    cr_assert_eq(memlock_disable_core_dumps(nullptr), EINVAL);
    cr_assert_eq(memlock_restore_core_dumps(nullptr), EINVAL);
    const rlimit orig = core_limit();
    const memlock_core_limit bad{2, 1};  // soft > hard: the kernel says EINVAL
    cr_assert_eq(memlock_restore_core_dumps(&bad), EINVAL);
    const rlimit after = core_limit();
    cr_assert_eq(after.rlim_cur, orig.rlim_cur);
    cr_assert_eq(after.rlim_max, orig.rlim_max);
}

Test(core_dumps, guard_sets_soft_zero_and_restores) {
    set_soft_core(123456);
    {
        memlock::CoreDumpGuard g;
        cr_assert(g.active());
        cr_assert(!g.error());
        cr_assert_eq(core_limit().rlim_cur, 0u);
    }
    cr_assert_eq(core_limit().rlim_cur, 123456u, "guard did not restore the soft limit");
}

namespace {

struct DumpRun {
    RunResult result;
    std::string core;  // the core file's bytes, empty if none
    bool found = false;
};

// Runs the "dump" child in a temp dir and collects its core file (named core or core.PID).
DumpRun run_dump_child(const std::string &secret_hex, const std::string &plain_hex, bool guard) {
    memlock_test::TempDir dir;
    cr_assert(dir.ok());
    RunOptions o;
    o.argv = {memlock_test::self_exe()};
    o.cwd = dir.path();
    o.env = {{core_test::kChildModeEnv, "dump"},
             {"MEMLOCK_MARK_SECRET", secret_hex},
             {"MEMLOCK_MARK_PLAIN", plain_hex},
             {"MEMLOCK_GUARD", guard ? "1" : "0"}};
    DumpRun d;
    d.result = memlock_test::run_program(o);
    for (const auto &e : std::filesystem::directory_iterator(dir.path())) {
        if (e.path().filename().string().rfind("core", 0) == 0) {
            auto bytes = memlock_test::read_file(e.path().string());
            if (bytes) {
                d.core = std::move(*bytes);
                d.found = true;
            }
        }
    }
    return d;
}

void skip_unless_plain_core_files() {
    if (sanitized()) cr_skip_test("core dumps of sanitizer builds are not checked");
    auto pattern = memlock_test::read_file("/proc/sys/kernel/core_pattern");
    if (!pattern || pattern->rfind("core", 0) != 0)
        cr_skip_test("core_pattern is not a plain file name (use gcore there)");
    if (core_limit().rlim_max == 0) cr_skip_test("hard RLIMIT_CORE is 0");
}

}  // namespace

Test(core_dumps, locked_buffer_pages_stay_out_of_a_real_core_dump) {
    SKIP_UNDER_QEMU_USER("the core dump is written by qemu, not the kernel");
    skip_unless_plain_core_files();
    const std::string secret = random_hex_marker(), plain = random_hex_marker();
    const DumpRun d = run_dump_child(secret, plain, false);
    cr_assert(d.result.killed_by(SIGABRT), "%s", d.result.describe().c_str());
    cr_assert(d.found, "no core file written");
    const std::size_t plain_hits = memlock_test::count_occurrences(d.core, unhex(plain));
    const std::size_t secret_hits = memlock_test::count_occurrences(d.core, unhex(secret));
    cr_assert_geq(plain_hits, 1024u, "control marker missing from the core (%zu)", plain_hits);
    cr_assert_lt(secret_hits, 4u, "LockedBuffer contents in the core dump (%zu copies)", secret_hits);
}

Test(core_dumps, guard_prevents_the_core_dump) {
    skip_unless_plain_core_files();
    const DumpRun d = run_dump_child(random_hex_marker(), random_hex_marker(), true);
    cr_assert(d.result.killed_by(SIGABRT), "%s", d.result.describe().c_str());
    cr_assert(!d.found, "core file written despite CoreDumpGuard");
    cr_assert(!d.result.core_dumped);
}
