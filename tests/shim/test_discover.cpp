// memlock-discover, run for real: on tests/progs/discover_secrets (known secrets in heap
// blocks from a library and from the program, a freed block, the main stack, a thread's
// stack and static data: each must be placed where it is) and on nginx serving HTTPS with an
// RSA key. In both, the config it proposes must leave no heap copy when verified, and the
// same verification without those rules must find the copies (so the check can fail).
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "config.hpp"
#include "e2e.hpp"

using namespace memlock_test;

namespace {

std::string discover() { return shim_build_dir() + "/memlock-discover"; }

std::string random_hex(std::size_t bytes) {
    std::ifstream in("/dev/urandom", std::ios::binary);
    std::string hex;
    char digits[] = "0123456789abcdef";
    for (std::size_t i = 0; i < bytes; ++i) {
        const auto b = static_cast<unsigned char>(in.get());
        hex += digits[b >> 4];
        hex += digits[b & 15];
    }
    return hex;
}

RunOptions tool_run(std::vector<std::string> argv) {
    RunOptions o = plain_env(std::move(argv));
    o.timeout_ms = 120000;
    return o;
}

// The report lines of one kind ("[heap]", "[stack]", ...) that mention `secret`.
std::vector<std::string> copies_of(const std::string &out, const std::string &tag, const std::string &secret) {
    std::vector<std::string> found;
    for (const auto &line : split_lines(out))
        if (line.rfind("  " + tag + " ", 0) == 0 && line.find(" " + secret + ":") != std::string::npos)
            found.push_back(line);
    return found;
}

void expect_copy(const std::string &out, const std::string &tag, const std::string &secret, const std::string &where) {
    const auto lines = copies_of(out, tag, secret);
    cr_assert(lines.size() == 1, "expected one %s copy of %s, got %zu in:\n%s", tag.c_str(), secret.c_str(), lines.size(),
              out.c_str());
    cr_expect(lines[0].find(where) != std::string::npos, "%s copy of %s: expected \"%s\" in:\n%s", tag.c_str(),
              secret.c_str(), where.c_str(), lines[0].c_str());
}

// The state letter of /proc/PID/stat ('S', 'T', ...), 0 when there is no such process.
char proc_state_of(pid_t pid) {
    const auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    if (!stat) return 0;
    const auto paren = stat->rfind(')');
    return paren != std::string::npos && paren + 2 < stat->size() ? (*stat)[paren + 2] : 0;
}

std::string summary(const std::string &out) {
    for (const auto &line : split_lines(out))
        if (line.rfind("summary: ", 0) == 0) return line;
    return "(no summary line)";
}

void expect_summary(const std::string &out, const std::string &want) {
    const std::string got = summary(out);
    cr_expect(got == want, "expected\n%s\ngot\n%s\nin:\n%s", want.c_str(), got.c_str(), out.c_str());
}

// ---- the program of known secrets ----------------------------------------------------------------

struct Secrets {
    std::string lib_heap = random_hex(48), prog_heap = random_hex(64), stack = random_hex(64),
                static_data = random_hex(64), thread = random_hex(64);
    std::vector<std::string> args(const std::vector<std::string> &options, const std::string &mode = "") const {
        std::vector<std::string> a = {discover()};
        for (const auto &s : {lib_heap, prog_heap, stack, static_data, thread}) {
            a.push_back("--secret-hex");
            a.push_back(s);
        }
        a.insert(a.end(), options.begin(), options.end());
        for (const auto &s : {std::string("--"), shim_program("discover_secrets"), lib_heap, prog_heap, stack, static_data, thread})
            a.push_back(s);
        if (!mode.empty()) a.push_back(mode);
        return a;
    }
};

}  // namespace

Test(discover, places_every_copy_and_its_config_leaves_no_heap_copy) {
    need_built("discover_secrets");
    TempDir dir;
    const Secrets s;
    const std::string proposed = dir.file("proposed.json");
    RunResult r = run_program(tool_run(s.args({"--config-out", proposed})));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const std::string &out = r.out;
    expect_copy(out, "[heap]", "hex#1",
                "heap block of 48 bytes allocated by alloc_helper <- load_secret_key <- main <- ");
    expect_copy(out, "[heap]", "hex#1", "(libsecretlib.so <- discover_secrets <- ");
    expect_copy(out, "[heap]", "hex#2", "heap block of 64 bytes allocated by program_alloc <- keep_in_program <- main");
    expect_copy(out, "[freed-heap]", "hex#2",
                "freed (not wiped) heap block of 128 bytes allocated by program_alloc <- keep_in_program <- main");
    expect_copy(out, "[stack]", "hex#3", "in the main thread's stack");
    expect_copy(out, "[static]", "hex#4", "in static data");
    expect_copy(out, "[static]", "hex#4", "discover_secrets");
    expect_copy(out, "[stack]", "hex#5", "in the stack of thread ");
    expect_summary(out, "summary: copies=6 protected=0 outside=6 heap=2 freed-heap=1 stack=2 static=1 file=0 anon=0");
    cr_expect(out.find("\n  2 copies on stacks: no rule moves them; policy.scrub_stack wipes what returned functions "
                       "left there (docs/config.md).\n  1 copies in static data: no rule can reach them (the program "
                       "keeps them there).\n") != std::string::npos,
              "%s", out.c_str());

    // The proposal is a valid config (the shim's own parser) with at least one rule.
    mlshim::Config config;
    std::string error;
    cr_assert(mlshim::load_config_file(proposed, config, error), "%s", error.c_str());
    cr_assert(!config.rules.empty());

    // Under it every heap copy is in the arena; the stack and static copies stay where they are.
    r = run_program(tool_run(s.args({"--verify", "--config", proposed})));
    cr_assert(r.exited_with(0), "%s\n--- config ---\n%s", r.describe().c_str(), read_file(proposed).value_or("").c_str());
    expect_summary(r.out, "summary: copies=5 protected=2 outside=3 heap=0 freed-heap=0 stack=2 static=1 file=0 anon=0");
    cr_expect(r.out.find("verify: 0 heap copies left outside the arena: every heap copy is protected\n") != std::string::npos,
              "%s", r.out.c_str());
    cr_expect_eq(copies_of(r.out, "[arena]", "hex#1").size(), 1u, "%s", r.out.c_str());
    cr_expect_eq(copies_of(r.out, "[arena]", "hex#2").size(), 1u, "%s", r.out.c_str());

    // Verifying a config that protects nothing finds the heap copies and fails.
    const std::string none = dir.file("none.json");
    cr_assert(write_file(none, R"({"version": 1, "rules": []})"));
    r = run_program(tool_run(s.args({"--verify", "--config", none})));
    cr_assert(r.exited_with(1), "%s", r.describe().c_str());
    cr_expect(r.out.find("verify: 3 heap copies left outside the arena\n") != std::string::npos, "%s", r.out.c_str());
}

// Without SIGUSR1 or --after, a process is scanned as it exits (stopped in the shim's
// destructor): the blocks it never freed are still there.
// A program whose own malloc comes before the shim: no heap block is recorded, and the shim
// says why on the program's stderr.
Test(discover, says_when_the_program_s_own_malloc_hides_its_heap) {
    const std::string prog = need_built("own_allocator");
    const RunResult r = run_program(tool_run({discover(), "--secret-hex", random_hex(16), "--", prog}));
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    const std::string expected =
        "memlock-shim: warning: " + real(prog) +
        " defines its own malloc, which comes before the shim in the lookup order: the program's allocations never "
        "reach the shim, and no rule sees them: memlock-discover sees none of its heap blocks\n";
    assert_log_eq(r.err, expected.c_str());
}

// A run that finds no copy at all proves nothing: it says so, and exits 2 (1 when verifying).
Test(discover, a_run_that_finds_no_copy_says_so_and_does_not_pass) {
    TempDir dir;
    const std::string config = dir.file("c.json");
    cr_assert(write_file(config, R"({"version": 1, "rules": [{"name": "k", "size": 32}]})"));
    const std::string hello = need_built("e2e_hello");
    RunResult r = run_program(tool_run({discover(), "--secret-hex", random_hex(16), "--", hello}));
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    cr_expect(contains(r.out, "\n  no copy of the secrets was found: the program had not loaded them when the snapshot was "
                              "taken (take it later: --after, or SIGUSR1 once it serves), or keeps them elsewhere.\n"
                              "proposed rules: none (no copy found)\n"),
              "%s", r.out.c_str());
    r = run_program(tool_run({discover(), "--secret-hex", random_hex(16), "--verify", "--config", config, "--", hello}));
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    cr_expect(contains(r.out, "verify: 0 heap copies left outside the arena (no copy found at all: nothing was verified)\n"),
              "%s", r.out.c_str());
}

// A traced thread whose cancellation is pending (it cancelled itself, deferred) allocates
// (e2e_cancel alloc): the trace record's send, a cancellation point, does not act on it inside
// malloc (the shim's noexcept code: std::terminate); its pthread_testcancel does.
Test(discover, a_traced_thread_with_a_pending_cancellation_allocates_and_is_cancelled_after) {
    const std::string prog = need_built("e2e_cancel");
    const RunResult r = run_program(tool_run({discover(), "--secret-hex", random_hex(16), "--", prog, "alloc", "10"}));
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    cr_assert(!contains(r.err, "terminate"), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "allocated 10\ncancelled\n"), "%s", r.describe().c_str());
}

// A process of the program that runs without the shim's tracing (forked by a traced process,
// then started again with its environment emptied, as postfix's master starts smtpd) is
// scanned at the snapshot as well, by mapping, and named with the reason; its copies are not
// taken for a traced image's blocks, and the run does not pass for complete.
Test(discover, names_a_process_of_the_program_it_could_not_trace) {
    need_built("discover_secrets");
    const Secrets s;
    RunResult r = run_program(tool_run(s.args({}, "clean-child")));
    cr_assert(r.exited_with(2), "%s", r.describe().c_str());
    const auto scanned = line_values(r.out, "scanned");
    cr_assert_eq(scanned.size(), 2u, "%s", r.out.c_str());
    cr_expect(contains(r.out, " on SIGUSR1, not traced: the shim is not loaded: the process that started it removed "
                              "LD_PRELOAD from its environment\n"),
              "%s", r.out.c_str());
    expect_copy(r.out, "[anon]", "hex#1", "in the heap ([heap]: malloc's memory)");
    expect_copy(r.out, "[static]", "hex#4", "in static data of discover_secrets");
    expect_summary(r.out, "summary: copies=6 protected=0 outside=6 heap=0 freed-heap=0 stack=2 static=1 file=0 anon=3");
    cr_expect(contains(r.out, "\n  6 copies in processes the shim did not trace (\"not traced\" above): no rule reaches "
                              "them until those processes run with the shim.\nproposed rules: none for the traced "
                              "processes (no heap copy outside the arena there)\n"),
              "%s", r.out.c_str());
    // Verifying a config there fails: the copies are left outside protected memory.
    TempDir dir;
    const std::string config = dir.file("c.json");
    cr_assert(write_file(config, R"({"version": 1, "rules": [{"name": "k", "min_size": 48, "max_size": 128}]})"));
    r = run_program(tool_run(s.args({"--verify", "--config", config}, "clean-child")));
    cr_assert(r.exited_with(1), "%s", r.describe().c_str());
    cr_expect(contains(r.out, "verify: 0 heap copies left outside the arena, and 6 in processes not traced\n"), "%s",
              r.out.c_str());
}

Test(discover, scans_a_process_as_it_exits) {
    need_built("discover_secrets");
    const Secrets s;
    const RunResult r = run_program(tool_run(s.args({}, "exit")));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const auto scanned = line_values(r.out, "scanned");
    cr_assert_eq(scanned.size(), 1u, "%s", r.out.c_str());
    cr_expect(r.out.find(") at exit\n") != std::string::npos, "%s", r.out.c_str());
    expect_copy(r.out, "[heap]", "hex#1", "heap block of 48 bytes allocated by alloc_helper <- load_secret_key <- main");
    expect_copy(r.out, "[heap]", "hex#2", "heap block of 64 bytes allocated by program_alloc <- keep_in_program <- main");
    expect_copy(r.out, "[static]", "hex#4", "in static data");
}

// --pid: a running process is scanned by mapping, then left running. Without the shim its heap
// copies are in malloc's heap; under rules that match them they are in the arena, and the exit
// status says whether any copy lies outside protected memory.
Test(discover, scans_a_running_process_and_leaves_it_running) {
    need_built("discover_secrets");
    TempDir dir;
    const Secrets s;
    const std::vector<std::string> prog = {shim_program("discover_secrets"), s.lib_heap, s.prog_heap, s.stack, s.static_data,
                                           s.thread, "wait"};
    auto scan = [&](pid_t pid, const std::vector<std::string> &secrets) {
        std::vector<std::string> a = {discover()};
        for (const auto &x : secrets) {
            a.push_back("--secret-hex");
            a.push_back(x);
        }
        a.push_back("--pid");
        a.push_back(std::to_string(pid));
        return run_program(tool_run(a));
    };

    LiveProgram plain;
    start_program_into(plain, plain_env(prog));
    cr_assert(plain.wait_for_line("waiting"), "%s%s", plain.out().c_str(), plain.err().c_str());
    RunResult r = scan(plain.pid(), {s.lib_heap, s.prog_heap, s.stack, s.static_data, s.thread});
    cr_assert(r.exited_with(1), "%s", r.describe().c_str());
    expect_summary(r.out, "summary: copies=6 protected=0 outside=6 heap=0 freed-heap=0 stack=2 static=1 file=0 anon=3");
    expect_copy(r.out, "[anon]", "hex#1", "in the heap ([heap]: malloc's memory)");
    expect_copy(r.out, "[stack]", "hex#3", "in the main thread's stack");
    expect_copy(r.out, "[static]", "hex#4", "in static data of discover_secrets");
    cr_expect(r.out.find("running: 6 copies outside protected memory\n") != std::string::npos, "%s", r.out.c_str());
    cr_expect(r.out.find("note: not scanned") == std::string::npos, "%s", r.out.c_str());
    // A secret shorter than 15 bytes is searched for byte by byte: the same copy is found.
    r = scan(plain.pid(), {s.lib_heap.substr(0, 16)});
    cr_assert(r.exited_with(1), "%s", r.describe().c_str());
    expect_summary(r.out, "summary: copies=1 protected=0 outside=1 heap=0 freed-heap=0 stack=0 static=0 file=0 anon=1");
    // SIGCONT takes effect asynchronously: wait (a hang guard, not a measurement) for it to run again.
    for (int i = 0; i < 2500 && proc_state_of(plain.pid()) == 'T'; ++i) ::usleep(2000);
    cr_expect_neq(proc_state_of(plain.pid()), 'T', "the scanned process was not resumed");

    // The process's children are not scanned, and the report names them.
    std::vector<std::string> under_shell = {"/bin/sh", "-c", "\"$0\" \"$@\" & wait"};
    under_shell.insert(under_shell.end(), prog.begin(), prog.end());
    LiveProgram shell;
    start_program_into(shell, plain_env(under_shell));
    cr_assert(shell.wait_for_line("waiting"), "%s%s", shell.out().c_str(), shell.err().c_str());
    r = scan(shell.pid(), {s.lib_heap});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    expect_summary(r.out, "summary: copies=0 protected=0 outside=0 heap=0 freed-heap=0 stack=0 static=0 file=0 anon=0");
    const auto note = line_value(r.out, "note: not scanned, children of the processes given (add --pid for each):");
    cr_assert(note.has_value(), "%s", r.out.c_str());
    cr_expect(note->find(" (discover_secret)") != std::string::npos, "%s", r.out.c_str());

    const std::string config = dir.file("heap.json");
    cr_assert(write_file(config, R"({"version": 1, "rules": [{"name": "k", "size": 48}, {"name": "p", "min_size": 64, "max_size": 128}]})"));
    LiveProgram shimmed;
    start_program_into(shimmed, shim_options(config, prog));
    cr_assert(shimmed.wait_for_line("waiting"), "%s%s", shimmed.out().c_str(), shimmed.err().c_str());
    r = scan(shimmed.pid(), {s.lib_heap, s.prog_heap});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    expect_summary(r.out, "summary: copies=2 protected=2 outside=0 heap=0 freed-heap=0 stack=0 static=0 file=0 anon=0");
    expect_copy(r.out, "[arena]", "hex#2", "in protected memory (never dumped, locked)");
    cr_expect(r.out.find("running: 0 copies outside protected memory: every copy found is locked and never dumped\n") !=
                  std::string::npos,
              "%s", r.out.c_str());
    // Under the secretmem backing the blocks cannot be read by anyone: the report says so.
    const std::string secret_config = dir.file("secretmem.json");
    cr_assert(write_file(secret_config, R"({"version": 1, "rules": [{"name": "k", "size": 48}], "policy": {"backing": "secretmem"}})"));
    LiveProgram hidden;
    start_program_into(hidden, shim_options(secret_config, prog));
    cr_assert(hidden.wait_for_line("waiting"), "%s%s", hidden.out().c_str(), hidden.err().c_str());
    r = scan(hidden.pid(), {s.lib_heap});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    expect_summary(r.out, "summary: copies=0 protected=0 outside=0 heap=0 freed-heap=0 stack=0 static=0 file=0 anon=0");
    cr_expect(r.out.find("of memfd_secret memory (the shim's secretmem backing) cannot be read, by this tool or any other "
                         "process, root included") != std::string::npos,
              "%s", r.out.c_str());
    cr_expect(r.out.find("could not be read (") == std::string::npos, "%s", r.out.c_str());
    // A process already stopped stays stopped.
    cr_assert_eq(::kill(shimmed.pid(), SIGSTOP), 0);
    for (int i = 0; i < 500 && proc_state_of(shimmed.pid()) != 'T'; ++i) ::usleep(2000);
    r = scan(shimmed.pid(), {s.lib_heap});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_expect_eq(proc_state_of(shimmed.pid()), 'T', "a process stopped before the scan was resumed by it");
}

// A program that detaches (forks, and its first process exits at once, as gpg-agent --daemon
// and most daemons do by default) is still the program: --after scans the daemon when the
// time comes, not the first process as it exits, and the daemon is ended afterwards.
Test(discover, follows_a_program_that_detaches) {
    need_built("discover_secrets");
    const Secrets s;
    const RunResult r = run_program(tool_run(s.args({"--after", "3"}, "daemon")));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const auto daemon = line_value(r.out, "daemon");
    cr_assert(daemon.has_value(), "%s", r.out.c_str());
    const auto left = read_file("/proc/" + *daemon + "/stat");
    if (left) ::kill(std::stoi(*daemon), SIGKILL);
    cr_expect(!left.has_value(), "the daemon is still running after memlock-discover returned: %s", left.value_or("").c_str());
    cr_expect(r.out.find("scanned pid " + *daemon + " (discover_secret) after 3 s\n") != std::string::npos, "%s",
              r.out.c_str());  // the name as the kernel keeps it, 15 characters
    expect_copy(r.out, "[heap]", "hex#1", "heap block of 48 bytes allocated by alloc_helper <- load_secret_key <- main");
    expect_copy(r.out, "[heap]", "hex#2", "heap block of 64 bytes allocated by program_alloc <- keep_in_program <- main");
    expect_copy(r.out, "[stack]", "hex#5", "in the stack of thread ");
}

// Anonymous memory that lies right after a program's image but past its segments (a runtime's
// own mmap: Erlang's carriers after a library) is not that object's .bss: no rule reaches
// static data, and the report must not say so of memory the program mapped itself.
Test(discover, anonymous_memory_after_an_image_is_not_its_bss) {
    need_built("discover_adjacent");
    const std::string secret = random_hex(32);
    const RunResult r = run_program(tool_run({discover(), "--secret-hex", secret, "--", shim_program("discover_adjacent"), secret}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    expect_copy(r.out, "[anon]", "hex#1", "in other anonymous memory");
    expect_summary(r.out, "summary: copies=1 protected=0 outside=1 heap=0 freed-heap=0 stack=0 static=0 file=0 anon=1");
}

// malloc carves a smaller block out of the start of a larger freed one and leaves the rest as it
// was: a copy there is still the freed block's, and the rule proposed for it selects the block
// that was freed (rsyslog frees the buffer it read its key file into, and later blocks reuse its
// start).
Test(discover, a_copy_in_the_unreused_part_of_a_freed_block_is_that_block_s) {
    need_built("discover_split");
    TempDir dir;
    const std::string secret = random_hex(32), proposed = dir.file("proposed.json");
    RunResult r = run_program(
        tool_run({discover(), "--secret-hex", secret, "--config-out", proposed, "--", shim_program("discover_split"), secret}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    expect_copy(r.out, "[freed-heap]", "hex#1", "freed (not wiped) heap block of 4096 bytes allocated by read_key_file <- main");
    expect_summary(r.out, "summary: copies=1 protected=0 outside=1 heap=0 freed-heap=1 stack=0 static=0 file=0 anon=0");
    mlshim::Config config;
    std::string error;
    cr_assert(mlshim::load_config_file(proposed, config, error), "%s", error.c_str());
    cr_assert(!config.rules.empty(), "%s", r.out.c_str());

    // Under the proposal the buffer is served from the arena and wiped when it is freed.
    r = run_program(tool_run({discover(), "--secret-hex", secret, "--verify", "--config", proposed, "--",
                              shim_program("discover_split"), secret}));
    cr_expect(r.out.find("verify: 0 heap copies left outside the arena") != std::string::npos, "%s", r.describe().c_str());
    cr_expect(summary(r.out).find(" outside=0 ") != std::string::npos, "%s", r.out.c_str());
}

// A writable file mapping is static data only when it is a module's .data (private, of an ELF
// object); a shared one is a file's contents, which the kernel writes back, and a private one of
// another file the process's own copy: the report says which.
Test(discover, a_writable_file_mapping_is_static_data_only_for_a_module) {
    need_built("discover_adjacent");
    TempDir dir;
    const std::string secret = random_hex(32), file = dir.file("shared.bin");
    const RunResult r =
        run_program(tool_run({discover(), "--secret-hex", secret, "--", shim_program("discover_adjacent"), secret, file}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    const auto files = copies_of(r.out, "[file]", "hex#1");
    cr_assert_eq(files.size(), 2u, "%s", r.out.c_str());
    cr_expect(files[0].find("in a shared writable mapping of " + file + " (written back to the file)") != std::string::npos ||
                  files[1].find("in a shared writable mapping of " + file + " (written back to the file)") != std::string::npos,
              "%s", r.out.c_str());
    cr_expect(r.out.find("in a private writable mapping of " + file + ".private (the process's own copy)") != std::string::npos,
              "%s", r.out.c_str());
    expect_summary(r.out, "summary: copies=3 protected=0 outside=3 heap=0 freed-heap=0 stack=0 static=0 file=2 anon=1");
}

// The path /proc/PID/maps shows for a mapped file is the process's to choose. Mapping a file of
// its own under a tmpfs only its mount namespace sees, it has memlock-discover (root, outside
// that namespace) find at that path what was put there: a symlink to an ELF file, a FIFO, a
// hard link to that ELF file, or a symlinked directory above one; or it names its file with a
// newline, which the kernel shows as "\012", and a symlink or FIFO has that literal name. The
// scan reads the mapped file only (through /proc/PID/map_files, or, without CAP_SYS_ADMIN and
// CAP_CHECKPOINT_RESTORE, through a path that reaches the same device and inode): the copy in
// it stays a file's copy, not static data of the ELF file, the scan ends instead of blocking
// on the FIFO with the process stopped, and the process is resumed. The ELF file mapped under
// its own name shows that a module is still read.
Test(discover, reads_only_the_file_a_process_maps_not_what_its_path_names_elsewhere) {
    need_built("discover_swapped");
    const std::string elf = need_built("e2e_hello");
    std::vector<std::vector<std::string>> routes = {{discover()}};
    if (::geteuid() == 0 && have_program("setpriv"))
        routes.push_back({"setpriv", "--bounding-set", "-sys_admin,-checkpoint_restore", discover()});
    for (const auto &route : routes)
        for (const std::string mode : {"symlink", "fifo", "file", "dir", "newline", "newline-fifo"}) {
            const bool newline = mode.rfind("newline", 0) == 0;
            if (!newline && ::geteuid() != 0) continue;  // a mount namespace of its own takes root
            TempDir dir;
            const std::string decoy = dir.file("decoy"), kept = dir.file("kept"), hide = dir.file("shadow");
            for (const auto &to : {decoy, kept}) cr_assert(run_program(plain_env({"cp", elf, to})).exited_with(0));
            cr_assert_eq(::mkdir(hide.c_str(), 0700), 0);
            std::string file = hide + "/mapped";
            int planted = -1;
            if (mode == "symlink") {
                planted = ::symlink(decoy.c_str(), file.c_str());
            } else if (mode == "fifo") {
                planted = ::mkfifo(file.c_str(), 0600);
            } else if (mode == "file") {
                planted = ::link(decoy.c_str(), file.c_str());
            } else if (mode == "dir") {
                const std::string other = dir.file("other");
                planted = ::mkdir(other.c_str(), 0700) || ::link(decoy.c_str(), (other + "/mapped").c_str()) ||
                          ::symlink(other.c_str(), (hide + "/sub").c_str());
                file = hide + "/sub/mapped";
            } else {
                file = dir.file("mapped\n");
                const std::string escaped = dir.file("mapped\\012");
                planted = mode == "newline" ? ::symlink(decoy.c_str(), escaped.c_str()) : ::mkfifo(escaped.c_str(), 0600);
            }
            cr_assert_eq(planted, 0, "%s: %s", mode.c_str(), std::strerror(errno));
            const std::string hex1 = random_hex(32), hex2 = random_hex(32);
            std::vector<std::string> prog = {shim_program("discover_swapped"), file, kept, hex1, hex2};
            if (!newline) prog.push_back(hide);
            LiveProgram target;
            start_until_ready(target, plain_env(prog));
            std::vector<std::string> argv = route;
            for (const auto &a : {std::string("--secret-hex"), hex1, std::string("--secret-hex"), hex2, std::string("--pid"),
                                  std::to_string(target.pid())})
                argv.push_back(a);
            RunOptions o = tool_run(argv);
            o.timeout_ms = 30000;  // SIGKILL then: a scan blocked on the FIFO fails rather than hangs
            const RunResult r = run_program(o);
            cr_assert(r.exited_with(1), "%s, %s: %s", route[0].c_str(), mode.c_str(), r.describe().c_str());
            expect_copy(r.out, "[file]", "hex#1", "in a private writable mapping of " + dir.path() + "/");
            expect_copy(r.out, "[static]", "hex#2", "in static data of kept");
            expect_summary(r.out, "summary: copies=2 protected=0 outside=2 heap=0 freed-heap=0 stack=0 static=1 file=1 anon=0");
            for (int i = 0; i < 2500 && proc_state_of(target.pid()) == 'T'; ++i) ::usleep(2000);
            cr_expect_neq(proc_state_of(target.pid()), 'T', "%s, %s: the scanned process was not resumed", route[0].c_str(),
                          mode.c_str());
        }
}

Test(discover, rejects_bad_input_with_a_clear_message) {
    struct Case {
        std::vector<std::string> args;
        int status;
        std::string err;
    };
    TempDir dir;
    const std::string junk = dir.file("junk.pem");
    cr_assert(write_file(junk, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"));
    const Case cases[] = {
        {{"--secret-hex", "00112233445566", "--", "true"}, 64,
         "memlock-discover: --secret-hex #1: 7 bytes is too short to search for (at least 8) (see memlock-discover --help)\n"},
        {{"--secret-hex", "0011223344556g77", "--", "true"}, 64,
         "memlock-discover: --secret-hex #1: not hex: \"0011223344556g77\" (see memlock-discover --help)\n"},
        {{"--secret-hex", "0011223344556677"}, 64,
         "memlock-discover: no program to run (memlock-discover [OPTIONS] -- PROGRAM [ARGS], or --pid PID) (see "
         "memlock-discover --help)\n"},
        {{"--secret-hex", "0011223344556677", "--pid", "12x"}, 64,
         "memlock-discover: --pid: expected a process ID, got \"12x\" (see memlock-discover --help)\n"},
        {{"--secret-hex", "0011223344556677", "--pid", "1", "--", "true"}, 64,
         "memlock-discover: --pid scans running processes; -- PROGRAM runs one: use one (see memlock-discover --help)\n"},
        {{"--secret-hex", "0011223344556677", "--pid", "1", "--after", "3"}, 64,
         "memlock-discover: --pid takes no --verify, --config, --config-out or --after (a running process is scanned as "
         "it is) (see memlock-discover --help)\n"},
        {{"--secret-hex", "0011223344556677", "--pid", "2147483647"}, 69,
         "memlock-discover: pid 2147483647: no such process\n"},
        {{"--", "true"}, 64,
         "memlock-discover: nothing to look for: give --key FILE or --secret-hex HEX (see memlock-discover --help)\n"},
        {{"--verify", "--secret-hex", "0011223344556677", "--", "true"}, 64,
         "memlock-discover: --verify and --config FILE go together (see memlock-discover --help)\n"},
        {{"--key", dir.file("missing.pem"), "--", "true"}, 66,
         "memlock-discover: --key " + dir.file("missing.pem") + ": No such file or directory\n"},
    };
    for (const Case &c : cases) {
        std::vector<std::string> argv = {discover()};
        argv.insert(argv.end(), c.args.begin(), c.args.end());
        const RunResult r = run_program(tool_run(argv));
        cr_expect(r.exited_with(c.status), "%s: %s", c.args[0].c_str(), r.describe().c_str());
        cr_expect_str_eq(r.err.c_str(), c.err.c_str());
    }
    const RunResult r = run_program(tool_run({discover(), "--key", junk, "--", "true"}));
    cr_expect(r.exited_with(66), "%s", r.describe().c_str());
    const std::string want = "memlock-discover: --key " + junk + ": cannot read a private key from it: a damaged or unknown PKCS#8 key\n";
    cr_expect_str_eq(r.err.c_str(), want.c_str());
}

// ---- nginx serving HTTPS with an RSA key ----------------------------------------------------------

namespace {

// nginx's port: one the kernel picks free (another `make test` may run beside this one).
std::string nginx_port() {
    static const std::string port = std::to_string(free_tcp_ports());
    return port;
}

// A fixed place (under the build folder) so that the fini fixture can find the pid file even
// when an assertion ended the test early.
std::string nginx_dir() { return shim_build_dir() + "/discover-nginx"; }

void stop_nginx() {
    const auto pid = read_file(nginx_dir() + "/nginx.pid");
    if (pid && std::atoi(pid->c_str()) > 0) ::kill(-std::atoi(pid->c_str()), SIGKILL);  // its process group
}

void write_nginx_setup() {
    const std::string d = nginx_dir();
    cr_assert(run_program(plain_env({"sh", "-c", "rm -rf " + d + " && mkdir -p " + d})).exited_with(0));
    const RunResult key = run_program(plain_env(
        {"sh", "-c", "cd " + d + " && openssl genrsa -out key.pem 2048 && openssl req -new -x509 -key key.pem "
                                 "-out cert.pem -days 2 -subj /CN=localhost"}));
    cr_assert(key.exited_with(0), "%s", key.describe().c_str());
    cr_assert(write_file(d + "/nginx.conf", "daemon off;\nmaster_process on;\nworker_processes 1;\npid " + d +
                                                "/nginx.pid;\nerror_log " + d +
                                                "/error.log;\nevents { worker_connections 64; }\nhttp {\n  access_log off;\n"
                                                "  client_body_temp_path " + d + "/body;\n  proxy_temp_path " + d +
                                                "/proxy;\n  fastcgi_temp_path " + d + "/fcgi;\n  uwsgi_temp_path " + d +
                                                "/uwsgi;\n  scgi_temp_path " + d + "/scgi;\n  server {\n    listen 127.0.0.1:" +
                                                nginx_port() + " ssl;\n    ssl_certificate " + d +
                                                "/cert.pem;\n    ssl_certificate_key " + d +
                                                "/key.pem;\n    location / { return 200 \"hello\\n\"; }\n  }\n}\n"));
}

bool https_ok() {
    const RunResult r = run_program(plain_env({"curl", "-sk", "--max-time", "5", "https://127.0.0.1:" + nginx_port() + "/"}));
    return r.exited_with(0) && r.out == "hello\n";
}

// Runs memlock-discover on nginx, waits until nginx serves HTTPS, makes a request, then asks
// for the snapshot (SIGUSR1). Returns the tool's result.
RunResult discover_nginx(const std::vector<std::string> &options) {
    std::vector<std::string> argv = {discover(), "--key", nginx_dir() + "/key.pem"};
    argv.insert(argv.end(), options.begin(), options.end());
    for (const auto &a : {std::string("--"), std::string("/usr/sbin/nginx"), std::string("-c"), nginx_dir() + "/nginx.conf",
                          std::string("-e"), nginx_dir() + "/error.log"})
        argv.push_back(a);
    LiveProgram tool;
    cr_assert_not_null(start_program_into(tool, tool_run(argv)));
    bool served = false;
    for (int i = 0; i < 300 && !(served = https_ok()); ++i) ::usleep(100000);
    cr_assert(served, "nginx never served HTTPS under memlock-discover\n%s", read_file(nginx_dir() + "/error.log").value_or("").c_str());
    cr_assert(https_ok());
    ::kill(tool.pid(), SIGUSR1);
    return tool.finish(120000);
}

}  // namespace

Test(discover, nginx_key_copies_and_a_config_that_moves_them_all, .fini = stop_nginx, .timeout = 300) {
    need_built("");
    if (!have_program("nginx") && ::access("/usr/sbin/nginx", X_OK) != 0) cr_skip_test("nginx is not installed");
    cr_assert(have_program("curl") && have_program("openssl"), "curl and openssl are needed");
    write_nginx_setup();
    const std::string proposed = nginx_dir() + "/proposed.json";

    RunResult r = discover_nginx({"--config-out", proposed});
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    // Both processes are scanned, and the key's parts are found in heap blocks libcrypto allocated.
    cr_expect_eq(line_values(r.out, "scanned").size(), 2u, "%s", r.out.c_str());
    cr_expect(r.out.find("(libcrypto.so.3") != std::string::npos, "%s", r.out.c_str());
    for (const char *part : {"rsa p (little-endian)", "rsa q (little-endian)", "rsa d (little-endian)"})
        cr_expect(!copies_of(r.out, "[heap]", part).empty(), "no heap copy of %s in:\n%s", part, r.out.c_str());
    cr_expect(r.out.find(" heap=0 ") == std::string::npos, "%s", summary(r.out).c_str());
    cr_expect(r.out.find("note: nginx has no local symbols (stripped)") != std::string::npos ||
                  r.out.find("note: libcrypto.so.3 has no local symbols (stripped)") != std::string::npos,
              "%s", r.out.c_str());
    mlshim::Config config;
    std::string error;
    cr_assert(mlshim::load_config_file(proposed, config, error), "%s", error.c_str());

    // Under the proposed config nginx still serves, and no copy is left in the heap.
    r = discover_nginx({"--verify", "--config", proposed});
    cr_assert(r.exited_with(0), "%s\n--- config ---\n%s", r.describe().c_str(), read_file(proposed).value_or("").c_str());
    cr_expect(summary(r.out).find(" heap=0 freed-heap=0 ") != std::string::npos, "%s", r.out.c_str());
    cr_expect(summary(r.out).find(" protected=0 ") == std::string::npos, "%s", r.out.c_str());
}
