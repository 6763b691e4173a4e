// End-to-end: policy.scrub_stack. A key that a returned function left on a thread's stack is
// gone from the process's memory (read through /proc/PID/mem) once the thread frees a block a
// rule wipes, also in a thread whose first free was on a coroutine's stack; the same program
// without the policy keeps it (so the search would find it); a copy deeper than the window
// stays. Nothing live is scrubbed: not by a handler on a signal stack inside a live frame, not
// by a CLONE_VM child running on its parent's stack; a thread on a stack the program mapped
// does not read the inaccessible page below it; pthread_getattr_np (which frees under a lock
// of glibc's) returns; behind another library's pthread_create, threads are left alone.
#include <criterion/criterion.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

const char *const kRule = R"({"version": 1, "rules": [{"name": "keys", "size": 32}])";

// dir/NAME.json: the rule, and `policy` if not empty.
std::string write_config(const TempDir &dir, const char *name, const std::string &policy) {
    const std::string path = dir.file(std::string(name) + ".json");
    cr_assert(write_file(path, kRule + (policy.empty() ? std::string() : ", \"policy\": " + policy) + "}"));
    return path;
}

// RunOptions that preload tests/libs/signal_in_free.c (its free raises SIGUSR1 on every thread
// but the main one), after the shim with `config` or, without shim, alone.
RunOptions with_signal_in_free(const std::string &config, std::vector<std::string> argv, bool shim) {
    const std::string lib = shim_build_dir() + "/libs/libsignal_in_free.so";
    cr_assert(file_exists(lib), "%s missing", lib.c_str());
    RunOptions o = shim_options(config, std::move(argv));
    for (auto &kv : o.env)
        if (kv.first == "LD_PRELOAD") kv.second = shim ? shim_library() + ":" + lib : lib;
    return o;
}

// The 32-byte key e2e_stackscrub derives from its printed seed.
std::string key_of(const std::string &out) {
    const auto hex = line_value(out, "seed");
    cr_assert(hex.has_value(), "no seed in: %s", out.c_str());
    std::uint64_t s = std::stoull(*hex, nullptr, 16);
    std::string key;
    for (int i = 0; i < 32; ++i) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        key.push_back(static_cast<char>(s >> 24));
    }
    return key;
}

// Copies of `needle` in every readable mapping of process pid.
std::size_t copies_in_memory(pid_t pid, const std::string &needle) {
    std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
    const int mem = ::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
    cr_assert(maps && mem >= 0, "cannot read the memory of pid %d", static_cast<int>(pid));
    std::size_t copies = 0;
    for (std::string line; std::getline(maps, line);) {
        std::istringstream in(line);
        std::string range, perms;
        in >> range >> perms;
        if (perms[0] != 'r' || line.find("[vvar") != std::string::npos || line.find("[vsyscall]") != std::string::npos)
            continue;
        const std::size_t dash = range.find('-');
        const std::uint64_t lo = std::stoull(range.substr(0, dash), nullptr, 16);
        const std::uint64_t hi = std::stoull(range.substr(dash + 1), nullptr, 16);
        std::string bytes(hi - lo, '\0');
        std::size_t got = 0;
        for (ssize_t n; got < bytes.size(); got += static_cast<std::size_t>(n))
            if ((n = ::pread(mem, &bytes[got], bytes.size() - got, static_cast<off_t>(lo + got))) <= 0) break;
        bytes.resize(got);
        copies += count_occurrences(bytes, needle);
    }
    ::close(mem);
    return copies;
}

// Runs e2e_stackscrub MODE KIB under `config` and counts the key's copies while it waits.
std::size_t copies_left(const std::string &config, const char *mode, const char *kib) {
    LiveProgram child;
    start_until_ready(child, shim_options(config, {shim_program("e2e_stackscrub"), mode, kib}));
    const std::size_t copies = copies_in_memory(child.pid(), key_of(child.out()));
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
    return copies;
}

}  // namespace

Test(e2e_stackscrub, a_key_left_on_the_stack_is_gone_after_a_wiped_free) {
    need_built("e2e_stackscrub");
    TempDir dir;
    const std::string without = write_config(dir, "without", ""),
                      with = write_config(dir, "with", R"({"scrub_stack": "64KiB"})");
    for (const char *mode : {"main", "thread", "coroutine"}) {
        const std::size_t before = copies_left(without, mode, "16");
        cr_assert_eq(before, 1u, "%s: without scrub_stack the key is on the stack (%zu copies)", mode, before);
        cr_assert_eq(copies_left(with, mode, "16"), 0u, "%s: the key survived scrub_stack", mode);
    }
}

Test(e2e_stackscrub, only_the_window_below_the_free_is_scrubbed) {
    need_built("e2e_stackscrub");
    TempDir dir;
    // 96 KiB below main's frame, past a 64 KiB window; 16 KiB below, inside a 32 KiB one.
    const std::string config = write_config(dir, "64k", R"({"scrub_stack": "64KiB"})");
    cr_assert_eq(copies_left(config, "main", "96"), 1u);
    const std::string small = write_config(dir, "32k", R"({"scrub_stack": "32KiB"})");
    cr_assert_eq(copies_left(small, "main", "16"), 0u);
}

// Each mode exits 0 when nothing live changed (3, or a signal, when it did; a hang when the
// scrub waited on glibc's lock; a fault when it read a page the program made inaccessible).
Test(e2e_stackscrub, live_frames_and_glibc_locks_are_left_alone) {
    need_built("e2e_stackscrub");
    TempDir dir;
    const std::string config = write_config(dir, "1m", R"({"scrub_stack": "1MiB"})");
    for (const char *mode : {"altstack", "altstack-syscall", "clone-vm", "clone-vfork", "getattr", "own-stack"}) {
        const RunResult r = run_program(shim_options(config, {shim_program("e2e_stackscrub"), mode}));
        cr_assert(r.exited_with(0), "%s: %s", mode, r.describe().c_str());
        cr_assert_str_empty(r.err.c_str());
    }
}

// A thread that blocks every signal before it allocates (one that is cancelled, and whose
// handlers reach a cancellation point, must: a handler that runs while glibc's allocator holds
// a lock, in a thread whose cancellation is pending, ends the thread with the lock held, and
// every later thread hangs on it) is not entered by the shim's look-up of its stack with
// signals open: the shim's free and pthread_getattr_np's allocations run before the start
// routine. A library after the shim raises SIGUSR1 in every free on another thread; its handler
// runs inside none of them, as without the shim.
Test(e2e_stackscrub, a_new_thread_allocates_nothing_with_signals_open_before_its_start_routine) {
    need_built("e2e_stackscrub");
    TempDir dir;
    const std::string config = write_config(dir, "64k", R"({"scrub_stack": "64KiB"})");
    for (bool shim : {false, true}) {
        const RunResult r = run_program(with_signal_in_free(config, {shim_program("e2e_stackscrub"), "masked"}, shim));
        cr_assert(r.exited_with(0), "%s", r.describe().c_str());
        cr_assert_str_eq(r.err.c_str(), "handlers inside free on other threads: 0\n", "%s the shim", shim ? "with" : "without");
    }
}

// Threads without a guard page (whose stack look-up reads /proc/self/maps: open and read are
// cancellation points), each cancelled as soon as pthread_create returns (e2e_cancel start):
// the look-up does not act on the pending cancellation (it would unwind through the shim's
// noexcept code: std::terminate), and each thread's start routine meets it, as without the shim.
Test(e2e_stackscrub, a_thread_cancelled_at_once_is_cancelled_in_its_start_routine) {
    need_built("e2e_cancel");
    TempDir dir;
    const std::string config = write_config(dir, "64k", R"({"scrub_stack": "64KiB"})");
    const RunResult r = run_program(shim_options(config, {shim_program("e2e_cancel"), "start", "300"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "ran 300, cancelled 300 of 300\n");
}

// A signal that arrives while the stack's look-up blocks signals (here raised by the look-up's
// own free: tests/libs/signal_in_free.c after the shim) is handled as the creator's mask comes
// back, before the start routine, and its handler's write acts on the pending cancellation:
// the thread ends cancelled, as it would at its start routine's first instruction. Restored in
// a frame with cleanups and no entry for that call, the forced unwind ended the process in
// std::terminate ("terminate called without an active exception").
Test(e2e_stackscrub, a_signal_handled_as_a_cancelled_thread_starts_ends_it_cancelled) {
    need_built("e2e_cancel");
    TempDir dir;
    const std::string config = write_config(dir, "64k", R"({"scrub_stack": "64KiB"})");
    const RunResult r = run_program(with_signal_in_free(config, {shim_program("e2e_cancel"), "signal", "300"}, true));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const std::string tail = "cancelled 300 of 300\n";
    cr_assert(r.out.size() > tail.size() && r.out.compare(r.out.size() - tail.size(), tail.size(), tail) == 0, "%s",
              r.describe().c_str());
}

// A library before the shim that intercepts pthread_create (a sanitizer runtime) starts its
// threads in its own routine, which the shim's would run before: the shim does not look
// thread stacks up then, says so, and the threads run (the library's realloc ends the process
// when called in a thread it has not set up, as pthread_getattr_np's would be).
Test(e2e_stackscrub, behind_another_pthread_create_only_the_main_thread_is_scrubbed) {
    need_built("e2e_stackscrub");
    TempDir dir;
    const std::string config = write_config(dir, "64k", R"({"scrub_stack": "64KiB"})");
    const std::string lib = shim_build_dir() + "/libs/libthread_interposer.so";
    RunOptions o = shim_options(config, {shim_program("e2e_stackscrub"), "getattr"});
    for (auto &kv : o.env)
        if (kv.first == "LD_PRELOAD") kv.second = lib + ":" + shim_library();
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const std::string expected = "memlock-shim: warning: policy.scrub_stack: " + lib +
                                 " defines pthread_create before the shim: only the main thread's stack is scrubbed\n";
    assert_log_eq(r.err, expected.c_str());
}
