// helpers.hpp - test utilities shared by every test binary of memlock-shim.
//
// Header-only, C++17 + POSIX (Linux /proc), no test-framework dependency: functions report
// failure through their return values (empty optional, -1, ok == false), never by aborting,
// so each test decides what to assert.
//
//   read_smaps(pid)            mappings of a process, with Locked and VmFlags
//   find_mapping(addr, pid)    the mapping that contains an address
//   in_secretmem / readable_through_proc_mem   a memfd_secret mapping; a read through /proc/self/mem
//   read_through_proc_mem(addr, n)   n bytes at addr as /proc/self/mem gives them
//   range_has_flag(...)        every byte of a range lies in mappings carrying a VmFlags token
//   status_kb(pid, "VmLck")    a "kB" field of /proc/PID/status (vm_locked_kb: VmLck)
//   run_program(opts)          fork+execve with extra env, child setup, cwd, full stdout/stderr
//                              (raise_core_limit: a setup for tests that need a kernel core dump)
//   start_program_into(child, opts)   the same child kept running (LiveProgram) while the test
//                              inspects it; run_program is start + finish
//   with_memlock_limit(...)    argv that runs a command without CAP_IPC_LOCK under a low
//                              RLIMIT_MEMLOCK (prlimit + capsh, see docs/overview.md)
//   write_file / read_file / TempDir / self_exe / shell_quote / count_occurrences / split_lines
//   under_qemu_user / SKIP_UNDER_QEMU_USER   the aarch64 unit run under qemu-user
//   free_tcp_ports(n)          n consecutive TCP ports free on 127.0.0.1 now (outside the ephemeral range)
//   shim_build_dir / shim_program / shim_env / line_value / json_uint   end-to-end runs of the
//                              built shim (see that section)
#ifndef MEMLOCK_TESTS_HELPERS_HPP
#define MEMLOCK_TESTS_HELPERS_HPP

#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

extern char **environ;

namespace memlock_test {

// ---- /proc/PID/smaps --------------------------------------------------------------------

struct Mapping {
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;       // exclusive
    std::string perms;            // e.g. "rw-p"
    std::string path;             // "" for anonymous, "[heap]", a file path, ...
    std::size_t size_kb = 0;      // "Size:"
    std::size_t rss_kb = 0;       // "Rss:"
    std::size_t pss_kb = 0;       // "Pss:" (shared pages count in part)
    std::size_t anon_huge_kb = 0; // "AnonHugePages:" (transparent huge pages mapped whole)
    std::size_t locked_kb = 0;    // "Locked:" (the Pss of a locked mapping)
    std::size_t private_dirty_kb = 0;  // "Private_Dirty:" (written pages no other process maps)
    std::set<std::string> flags;  // "VmFlags:" tokens, e.g. "lo", "dd"

    bool has_flag(const std::string &f) const { return flags.count(f) != 0; }
    bool contains(const void *p) const {
        const auto a = reinterpret_cast<std::uintptr_t>(p);
        return a >= start && a < end;
    }
};

// "/proc/self" for pid 0, else "/proc/<pid>".
inline std::string proc_dir(pid_t pid = 0) {
    return pid == 0 ? std::string("/proc/self") : "/proc/" + std::to_string(pid);
}

namespace detail {
// True for a smaps header line "start-end perms offset dev inode [path]".
inline bool parse_smaps_header(const std::string &line, Mapping &m) {
    std::istringstream in(line);
    std::string range, offset, dev, inode;
    if (!(in >> range >> m.perms >> offset >> dev >> inode)) return false;
    const auto dash = range.find('-');
    if (dash == std::string::npos || dash == 0 || dash + 1 == range.size()) return false;
    if (range.find_first_not_of("0123456789abcdef-") != std::string::npos) return false;
    m.start = static_cast<std::uintptr_t>(std::stoull(range.substr(0, dash), nullptr, 16));
    m.end = static_cast<std::uintptr_t>(std::stoull(range.substr(dash + 1), nullptr, 16));
    std::string rest;
    std::getline(in, rest);
    const auto first = rest.find_first_not_of(' ');
    m.path = first == std::string::npos ? std::string() : rest.substr(first);
    return true;
}

// "Key:   123 kB" -> 123 when line starts with key + ':'.
inline std::optional<std::size_t> parse_kb_field(const std::string &line, const std::string &key) {
    if (line.size() <= key.size() || line.compare(0, key.size(), key) != 0 || line[key.size()] != ':')
        return std::nullopt;
    return static_cast<std::size_t>(std::strtoull(line.c_str() + key.size() + 1, nullptr, 10));
}
}  // namespace detail

// All mappings of a process (pid 0 = this process), in address order. Empty if unreadable.
inline std::vector<Mapping> read_smaps(pid_t pid = 0) {
    std::vector<Mapping> out;
    std::ifstream in(proc_dir(pid) + "/smaps");
    std::string line;
    while (std::getline(in, line)) {
        Mapping m;
        if (detail::parse_smaps_header(line, m)) {
            out.push_back(std::move(m));
            continue;
        }
        if (out.empty()) continue;
        Mapping &cur = out.back();
        if (auto v = detail::parse_kb_field(line, "Size")) cur.size_kb = *v;
        else if (auto r = detail::parse_kb_field(line, "Rss")) cur.rss_kb = *r;
        else if (auto p = detail::parse_kb_field(line, "Pss")) cur.pss_kb = *p;
        else if (auto h = detail::parse_kb_field(line, "AnonHugePages")) cur.anon_huge_kb = *h;
        else if (auto l = detail::parse_kb_field(line, "Locked")) cur.locked_kb = *l;
        else if (auto d = detail::parse_kb_field(line, "Private_Dirty")) cur.private_dirty_kb = *d;
        else if (line.compare(0, 8, "VmFlags:") == 0) {
            std::istringstream fl(line.substr(8));
            std::string tok;
            while (fl >> tok) cur.flags.insert(tok);
        }
    }
    return out;
}

// The mapping that contains addr, if any.
inline std::optional<Mapping> find_mapping(const std::vector<Mapping> &maps, const void *addr) {
    for (const auto &m : maps)
        if (m.contains(addr)) return m;
    return std::nullopt;
}
inline std::optional<Mapping> find_mapping(const void *addr, pid_t pid = 0) {
    return find_mapping(read_smaps(pid), addr);
}

// Is addr in a memfd_secret mapping (smaps names it "/secretmem (deleted)")?
inline bool in_secretmem(const void *addr) {
    const auto m = find_mapping(addr);
    return m && m->path.rfind("/secretmem", 0) == 0;
}

// Can this process read the byte at addr through /proc/self/mem, as root's debugger would?
// nullopt when /proc/self/mem cannot be opened (compare with true or false to assert).
inline std::optional<bool> readable_through_proc_mem(const void *addr) {
    const int fd = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    unsigned char c;
    const bool ok = ::pread(fd, &c, 1, static_cast<off_t>(reinterpret_cast<std::uintptr_t>(addr))) == 1;
    ::close(fd);
    return ok;
}

// The n bytes at addr as a read through /proc/self/mem gives them (the kernel's view, as a
// debugger or a core dump writer reads memory); nullopt when the file cannot be opened or
// read that far.
inline std::optional<std::vector<unsigned char>> read_through_proc_mem(const void *addr, std::size_t n) {
    const int fd = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return std::nullopt;
    std::vector<unsigned char> out(n);
    std::size_t got = 0;
    while (got < n) {
        const ssize_t r = ::pread(fd, out.data() + got, n - got,
                                  static_cast<off_t>(reinterpret_cast<std::uintptr_t>(addr) + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += static_cast<std::size_t>(r);
    }
    ::close(fd);
    if (got < n) return std::nullopt;
    return out;
}

// Mappings overlapping [addr, addr+len). pre: len > 0.
inline std::vector<Mapping> mappings_overlapping(const std::vector<Mapping> &maps, const void *addr,
                                                 std::size_t len) {
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    std::vector<Mapping> out;
    for (const auto &m : maps)
        if (m.start < a + len && a < m.end) out.push_back(m);
    return out;
}

// Under qemu-user (the aarch64 unit run of tests/reach/test-aarch64-units.sh, which sets
// MEMLOCK_TEST_QEMU_USER=1) a guest's madvise never reaches the kernel and mlock2's
// MLOCK_ONFAULT is not passed through, so nothing in /proc shows their effect; tests that
// assert it skip there with SKIP_UNDER_QEMU_USER (Criterion's cr_skip_test).
inline bool under_qemu_user() {
    const char *v = std::getenv("MEMLOCK_TEST_QEMU_USER");
    return v && std::strcmp(v, "1") == 0;
}
#define SKIP_UNDER_QEMU_USER(why)                                                      \
    do {                                                                                \
        if (memlock_test::under_qemu_user()) cr_skip_test("under qemu-user: %s", why); \
    } while (0)

// True iff [addr, addr+len) is fully mapped and every mapping over it has `flag` (or, with
// want == false, none of them has it). A locked or advised range may span several VMAs.
inline bool range_has_flag(const void *addr, std::size_t len, const std::string &flag, bool want = true,
                           pid_t pid = 0) {
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    const auto maps = mappings_overlapping(read_smaps(pid), addr, len);
    std::uintptr_t covered = a;
    for (const auto &m : maps) {
        if (m.start > covered) return false;  // hole
        if (m.has_flag(flag) != want) return false;
        covered = m.end;
    }
    return !maps.empty() && covered >= a + len;
}

// ---- /proc/PID/status -------------------------------------------------------------------

// A "kB" field of /proc/PID/status (e.g. "VmLck", "VmRSS"); -1 if absent.
inline long status_kb(pid_t pid, const std::string &key) {
    std::ifstream in(proc_dir(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (auto v = detail::parse_kb_field(line, key)) return static_cast<long>(*v);
    return -1;
}
inline long vm_locked_kb(pid_t pid = 0) { return status_kb(pid, "VmLck"); }

// ---- ports -------------------------------------------------------------------------------

// The first of n consecutive TCP ports that are free on 127.0.0.1 now (a daemon a test starts
// listens there), chosen at random outside the kernel's ephemeral range: a port from that
// range, free when probed, can be taken by a client connection of a test beside this one
// before the daemon binds it. Nothing stays bound; a random start keeps tests side by side
// apart. 0 if none was found.
inline int free_tcp_ports(unsigned n = 1) {
    int lo = 32768, hi = 60999;
    if (FILE *f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "re")) {
        if (std::fscanf(f, "%d %d", &lo, &hi) != 2) lo = 32768, hi = 60999;
        std::fclose(f);
    }
    const int span[2][2] = {{10000, lo - static_cast<int>(n)}, {hi + 1, 65536 - static_cast<int>(n)}};
    std::random_device rd;
    for (int attempt = 0; attempt < 256; ++attempt) {
        const int *s = span[rd() % 2];
        if (s[1] <= s[0]) s = span[s == span[0]];
        // No room outside the ephemeral range: the kernel's pick (bind to port 0).
        int first = s[1] <= s[0] ? 0 : s[0] + static_cast<int>(rd() % static_cast<unsigned>(s[1] - s[0]));
        std::vector<int> fds;
        bool ok = true;
        for (unsigned k = 0; k < n && ok; ++k) {
            const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) return 0;
            fds.push_back(fd);
            sockaddr_in a{};
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a.sin_port = htons(static_cast<std::uint16_t>(first ? first + static_cast<int>(k) : 0));
            socklen_t len = sizeof a;
            ok = ::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0 &&
                 ::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0;
            if (ok && !first) first = ntohs(a.sin_port) - static_cast<int>(k);
        }
        for (int fd : fds) ::close(fd);
        if (ok) return first;
    }
    return 0;
}

// ---- files ------------------------------------------------------------------------------

inline bool write_file(const std::string &path, const std::string &content, mode_t mode = 0644) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return false;
    std::size_t done = 0;
    while (done < content.size()) {
        const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ::close(fd);
            return false;
        }
        done += static_cast<std::size_t>(n);
    }
    return ::close(fd) == 0;
}

// Whole file as bytes; nullopt if it cannot be opened.
inline std::optional<std::string> read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline bool file_exists(const std::string &path) { return ::access(path.c_str(), F_OK) == 0; }

// The canonical path of `path` (symbolic links resolved), or `path` when it cannot be resolved.
inline std::string real(const std::string &path) {
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

inline bool contains(const std::string &text, const std::string &part) { return text.find(part) != std::string::npos; }

// Non-overlapping occurrences of needle in haystack. pre: !needle.empty().
inline std::size_t count_occurrences(const std::string &haystack, const std::string &needle) {
    std::size_t n = 0;
    for (auto pos = haystack.find(needle); pos != std::string::npos;
         pos = haystack.find(needle, pos + needle.size()))
        ++n;
    return n;
}

// Lines of text without their '\n' (a last line without '\n' counts too).
inline std::vector<std::string> split_lines(const std::string &text) {
    std::vector<std::string> lines;
    std::size_t at = 0;
    while (at < text.size()) {
        const auto nl = text.find('\n', at);
        if (nl == std::string::npos) {
            lines.push_back(text.substr(at));
            break;
        }
        lines.push_back(text.substr(at, nl - at));
        at = nl + 1;
    }
    return lines;
}

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
public:
    explicit TempDir(const std::string &prefix = "memlock-test") {
        const char *base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base && *base ? base : "/tmp") + "/" + prefix + ".XXXXXX";
        if (::mkdtemp(&tmpl[0]) != nullptr) path_ = tmpl;
    }
    ~TempDir() {
        if (!path_.empty()) {
            std::error_code ec;
            std::filesystem::remove_all(path_, ec);
        }
    }
    TempDir(const TempDir &) = delete;
    TempDir &operator=(const TempDir &) = delete;

    bool ok() const { return !path_.empty(); }
    const std::string &path() const { return path_; }
    std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

// Absolute path of the running executable (for re-executing a test binary in a child mode).
inline std::string self_exe() {
    std::error_code ec;
    auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::string() : p.string();
}

// Quotes s for /bin/sh: 'it'\''s'.
inline std::string shell_quote(const std::string &s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

// ---- child processes --------------------------------------------------------------------

struct RunOptions {
    std::vector<std::string> argv;                          // argv[0] is searched in PATH if it has no '/'
    std::vector<std::pair<std::string, std::string>> env;   // added to (or replacing in) the environment
    std::vector<std::string> unset_env;                     // removed from the environment
    bool inherit_env = true;                                // start from this process's environ
    std::string cwd;                                        // "" = unchanged
    std::string stdin_data;                                 // written to the child's stdin, then closed
    // Runs in the child after fork, before execve (setrlimit, prctl...). Must not allocate
    // if the parent has threads. Return false to make the child exit with status 126.
    std::function<bool()> setup;
    int timeout_ms = 60000;                                 // SIGKILL after this; <= 0 = none
};

// A RunOptions::setup that raises the child's RLIMIT_CORE soft limit to its hard limit, so
// that the kernel writes its core dump.
inline bool raise_core_limit() {
    struct rlimit rl;
    if (::getrlimit(RLIMIT_CORE, &rl) != 0) return false;
    rl.rlim_cur = rl.rlim_max;
    return ::setrlimit(RLIMIT_CORE, &rl) == 0;
}

struct RunResult {
    bool started = false;   // fork and execve succeeded
    int exec_errno = 0;     // errno of a failed execve (started == false)
    int exit_code = -1;     // exit status if the child exited, else -1
    int term_signal = 0;    // terminating signal if killed, else 0
    bool core_dumped = false;
    bool timed_out = false;
    std::string out;        // everything written to stdout
    std::string err;        // everything written to stderr

    bool exited_with(int code) const { return started && term_signal == 0 && exit_code == code; }
    bool killed_by(int sig) const { return started && term_signal == sig; }
    // One line for assertion messages.
    std::string describe() const {
        std::string s = "started=" + std::to_string(started) + " exit=" + std::to_string(exit_code) +
                        " signal=" + std::to_string(term_signal);
        if (exec_errno) s += std::string(" exec_error=") + std::strerror(exec_errno);
        if (timed_out) s += " TIMED-OUT";
        return s + "\n--- stdout ---\n" + out + "--- stderr ---\n" + err;
    }
};

namespace detail {
inline std::string resolve_in_path(const std::string &prog) {
    if (prog.find('/') != std::string::npos) return prog;
    const char *path = std::getenv("PATH");
    std::istringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        const std::string cand = (dir.empty() ? "." : dir) + "/" + prog;
        if (::access(cand.c_str(), X_OK) == 0) return cand;
    }
    return prog;
}

inline void write_all_fd(int fd, const char *p, std::size_t n) {
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

// A forked child whose stdin, stdout and stderr are pipes held by the parent.
struct Spawned {
    pid_t pid = -1;        // < 0: a pipe or fork failed (nothing is left open)
    int in = -1, out = -1, err = -1;
    int exec_errno = -1;   // read end that receives a failed execve's errno (-1 unless asked for)
};

// Forks and execs opts.argv with the environment, cwd and setup RunOptions describes
// (stdin_data and timeout_ms are the caller's). With report_exec_errno, a failed execve
// writes its errno to Spawned::exec_errno; the child exits 127 either way.
inline Spawned spawn(const RunOptions &opts, bool report_exec_errno) {
    Spawned child;
    if (opts.argv.empty()) return child;

    // Everything the child needs is built before fork: the child does not allocate.
    const std::string exe = resolve_in_path(opts.argv[0]);
    std::vector<char *> argv;
    for (const auto &a : opts.argv) argv.push_back(const_cast<char *>(a.c_str()));
    argv.push_back(nullptr);

    std::vector<std::string> env_store;
    auto overridden = [&](const std::string &entry) {
        const std::string key = entry.substr(0, entry.find('='));
        for (const auto &kv : opts.env)
            if (kv.first == key) return true;
        for (const auto &u : opts.unset_env)
            if (u == key) return true;
        return false;
    };
    if (opts.inherit_env)
        for (char **e = environ; e && *e; ++e)
            if (!overridden(*e)) env_store.emplace_back(*e);
    for (const auto &kv : opts.env) env_store.push_back(kv.first + "=" + kv.second);
    std::vector<char *> envp;
    for (auto &s : env_store) envp.push_back(&s[0]);
    envp.push_back(nullptr);

    int in_p[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1}, exec_p[2] = {-1, -1};
    auto close_all = [&] {
        for (int *p : {in_p, out_p, err_p, exec_p})
            for (int i = 0; i < 2; ++i)
                if (p[i] >= 0) ::close(p[i]);
    };
    if (::pipe2(in_p, O_CLOEXEC) || ::pipe2(out_p, O_CLOEXEC) || ::pipe2(err_p, O_CLOEXEC) ||
        (report_exec_errno && ::pipe2(exec_p, O_CLOEXEC))) {
        close_all();
        return child;
    }

    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
        close_all();
        return child;
    }
    if (pid == 0) {
        ::dup2(in_p[0], 0);
        ::dup2(out_p[1], 1);
        ::dup2(err_p[1], 2);
        ::signal(SIGPIPE, SIG_DFL);
        if (!opts.cwd.empty() && ::chdir(opts.cwd.c_str()) != 0) ::_exit(126);
        if (opts.setup && !opts.setup()) ::_exit(126);
        ::execve(exe.c_str(), argv.data(), envp.data());
        if (exec_p[1] >= 0) {
            const int e = errno;
            write_all_fd(exec_p[1], reinterpret_cast<const char *>(&e), sizeof e);
        }
        ::_exit(127);
    }
    ::close(in_p[0]);
    ::close(out_p[1]);
    ::close(err_p[1]);
    if (exec_p[1] >= 0) ::close(exec_p[1]);
    child.pid = pid;
    child.in = in_p[1];
    child.out = out_p[0];
    child.err = err_p[0];
    child.exec_errno = exec_p[0];
    return child;
}
}  // namespace detail

// A child started by start_program (or run_program): stdin, stdout and stderr are pipes held
// by the test, so the test can wait for a line, inspect /proc/PID, then let the child finish.
class LiveProgram {
public:
    LiveProgram() = default;
    LiveProgram(const LiveProgram &) = delete;
    LiveProgram &operator=(const LiveProgram &) = delete;
    ~LiveProgram() {
        if (pid_ > 0 && !reaped_) {
            ::kill(pid_, SIGKILL);
            int st;
            while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
            }
        }
        for (int fd : {in_, out_, err_, exec_errno_})
            if (fd >= 0) ::close(fd);
    }

    bool started() const { return pid_ > 0; }
    pid_t pid() const { return pid_; }
    const std::string &out() const { return out_text_; }
    const std::string &err() const { return err_text_; }

    // Reads the child's output until stdout holds a line equal to `line`. False on EOF of
    // stdout or after timeout_ms (a hang guard, not a measurement).
    bool wait_for_line(const std::string &line, int timeout_ms = 60000) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        for (;;) {
            for (const auto &l : split_lines(out_text_))
                if (l == line && out_text_.find(line + "\n") != std::string::npos) return true;
            if (out_ < 0) return false;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) return false;
            pump(static_cast<int>(left.count()));
        }
    }

    // Writes text to the child's stdin, which stays open. pre: started().
    void send(const std::string &text) { detail::write_all_fd(in_, text.data(), text.size()); }

    // Closes the child's stdin, reads its remaining output and waits for it. SIGKILL after
    // timeout_ms (<= 0 = no limit).
    RunResult finish(int timeout_ms = 60000) {
        RunResult r;
        if (pid_ <= 0) return r;
        if (in_ >= 0) {
            ::close(in_);
            in_ = -1;
        }
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        while (out_ >= 0 || err_ >= 0) {
            int wait_ms = -1;
            if (timeout_ms > 0) {
                const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now());
                if (left.count() <= 0) {
                    ::kill(pid_, SIGKILL);
                    r.timed_out = true;
                    break;
                }
                wait_ms = static_cast<int>(left.count());
            }
            if (!pump(wait_ms)) break;
        }
        int status = 0;
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        reaped_ = true;
        if (exec_errno_ >= 0) {
            int e = 0;
            if (::read(exec_errno_, &e, sizeof e) == static_cast<ssize_t>(sizeof e)) r.exec_errno = e;
            ::close(exec_errno_);
            exec_errno_ = -1;
        }
        r.started = r.exec_errno == 0;
        if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
        if (WIFSIGNALED(status)) {
            r.term_signal = WTERMSIG(status);
            r.core_dumped = WCOREDUMP(status);
        }
        r.out = out_text_;
        r.err = err_text_;
        return r;
    }

private:
    friend LiveProgram *start_program_into(LiveProgram &, const RunOptions &);
    friend RunResult run_program(const RunOptions &);

    // Takes over a spawned child. False if it did not start.
    bool adopt(const detail::Spawned &s) {
        if (s.pid < 0) return false;
        pid_ = s.pid;
        in_ = s.in;
        out_ = s.out;
        err_ = s.err;
        exec_errno_ = s.exec_errno;
        return true;
    }

    // One poll round over stdout and stderr; false if poll failed.
    bool pump(int wait_ms) {
        struct pollfd fds[2] = {{out_, POLLIN, 0}, {err_, POLLIN, 0}};
        const int n = ::poll(fds, 2, wait_ms);
        if (n < 0) return errno == EINTR;
        if (n == 0) return true;
        char buf[65536];
        int *own[2] = {&out_, &err_};
        std::string *sink[2] = {&out_text_, &err_text_};
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0) continue;
            const ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
            if (got > 0) {
                sink[i]->append(buf, static_cast<std::size_t>(got));
            } else if (got == 0 || errno != EINTR) {
                ::close(*own[i]);
                *own[i] = -1;
            }
        }
        return true;
    }

    pid_t pid_ = -1;
    bool reaped_ = false;
    int in_ = -1, out_ = -1, err_ = -1;
    int exec_errno_ = -1;  // see detail::Spawned::exec_errno
    std::string out_text_, err_text_;
};

// Starts opts.argv (same environment rules as run_program; stdin_data and timeout_ms are not
// used) into `child`. Returns &child, or nullptr if the child could not be started.
inline LiveProgram *start_program_into(LiveProgram &child, const RunOptions &opts) {
    return child.adopt(detail::spawn(opts, false)) ? &child : nullptr;
}

// Runs opts.argv in a child and waits for it, capturing stdout and stderr completely.
inline RunResult run_program(const RunOptions &opts) {
    LiveProgram child;
    if (!child.adopt(detail::spawn(opts, true))) return RunResult{};
    // stdin: small payloads only (tests); a large one could block before the child reads.
    detail::write_all_fd(child.in_, opts.stdin_data.data(), opts.stdin_data.size());
    return child.finish(opts.timeout_ms);
}

// argv that runs `argv` with CAP_IPC_LOCK dropped and RLIMIT_MEMLOCK (soft and hard) set to
// `memlock_bytes`: prlimit --memlock=N:N capsh --drop=cap_ipc_lock -- -c 'exec ARGV...'.
// Needs root (capsh drops from the bounding set) and the prlimit and capsh tools.
inline std::vector<std::string> with_memlock_limit(std::size_t memlock_bytes,
                                                   const std::vector<std::string> &argv) {
    std::string cmd = "exec";
    for (const auto &a : argv) cmd += " " + shell_quote(a);
    const std::string n = std::to_string(memlock_bytes);
    return {"prlimit", "--memlock=" + n + ":" + n, "capsh", "--drop=cap_ipc_lock", "--", "-c", cmd};
}

// True if the tool is found in PATH.
inline bool have_program(const std::string &name) {
    return detail::resolve_in_path(name).find('/') != std::string::npos &&
           ::access(detail::resolve_in_path(name).c_str(), X_OK) == 0;
}

// ---- end-to-end runs of the built shim ------------------------------------------------------
//
//   shim_build_dir()           $MEMLOCK_TEST_BUILD, else "build" under the working directory
//   source_dir()               the source tree: $MEMLOCK_TEST_SRCDIR, else found
//   shim_library() / shim_program(name)   build/libmemlock_shim.so, build/progs/NAME
//   shim_env(config)           LD_PRELOAD + MEMLOCK_SHIM_CONFIG for RunOptions::env
//   line_value / json_uint     reading what children print (split_lines: see files)

// Absolute build directory of the project (where libmemlock_shim.so and progs/ live).
inline std::string shim_build_dir() {
    const char *env = std::getenv("MEMLOCK_TEST_BUILD");
    std::error_code ec;
    std::filesystem::path p = env && *env ? std::filesystem::path(env) : std::filesystem::current_path(ec) / "build";
    auto abs = std::filesystem::absolute(p, ec);
    return ec ? p.string() : abs.lexically_normal().string();
}
// The source tree (config/, scripts/): $MEMLOCK_TEST_SRCDIR, the working directory or the
// build directory's parent, the first that holds config/match-all.json.
inline std::string source_dir() {
    const char *env = std::getenv("MEMLOCK_TEST_SRCDIR");
    std::vector<std::string> candidates;
    if (env && *env) candidates.push_back(env);
    std::error_code ec;
    candidates.push_back(std::filesystem::current_path(ec).string());
    candidates.push_back(shim_build_dir() + "/..");
    for (const auto &c : candidates)
        if (file_exists(c + "/config/match-all.json")) return c;
    std::fprintf(stderr, "config/match-all.json not found (run from the repository root or set MEMLOCK_TEST_SRCDIR)\n");
    std::abort();
}

inline std::string shim_library() { return shim_build_dir() + "/libmemlock_shim.so"; }
inline std::string shim_program(const std::string &name) { return shim_build_dir() + "/progs/" + name; }

// Environment that preloads the shim with a config file ("" = MEMLOCK_SHIM_CONFIG unset:
// the caller must also list it in RunOptions::unset_env).
inline std::vector<std::pair<std::string, std::string>> shim_env(const std::string &config) {
    std::vector<std::pair<std::string, std::string>> env{{"LD_PRELOAD", shim_library()}};
    if (!config.empty()) env.emplace_back("MEMLOCK_SHIM_CONFIG", config);
    return env;
}

// The rest of the first line that starts with "key " ("pid 123" -> "123"); nullopt if none.
inline std::optional<std::string> line_value(const std::string &text, const std::string &key) {
    for (const auto &l : split_lines(text))
        if (l.size() > key.size() && l.compare(0, key.size(), key) == 0 && l[key.size()] == ' ')
            return l.substr(key.size() + 1);
    return std::nullopt;
}

// Every value of lines "key VALUE..." (first word after the key), in order.
inline std::vector<std::string> line_values(const std::string &text, const std::string &key) {
    std::vector<std::string> out;
    for (const auto &l : split_lines(text))
        if (l.size() > key.size() && l.compare(0, key.size(), key) == 0 && l[key.size()] == ' ') {
            std::istringstream in(l.substr(key.size() + 1));
            std::string word;
            in >> word;
            out.push_back(word);
        }
    return out;
}

// "0x7f..." (as printf %p writes it) -> pointer value; nullptr if it does not parse.
inline const void *parse_pointer(const std::string &s) {
    char *end = nullptr;
    const unsigned long long v = std::strtoull(s.c_str(), &end, 16);
    return end && *end == '\0' && !s.empty() ? reinterpret_cast<const void *>(static_cast<std::uintptr_t>(v))
                                             : nullptr;
}

// An unsigned integer member of a flat JSON object ({"key": 123, ...}); nullopt if absent.
inline std::optional<unsigned long long> json_uint(const std::string &json, const std::string &key) {
    const std::string quoted = "\"" + key + "\"";
    auto at = json.find(quoted);
    if (at == std::string::npos) return std::nullopt;
    at = json.find(':', at + quoted.size());
    if (at == std::string::npos) return std::nullopt;
    ++at;
    while (at < json.size() && json[at] == ' ') ++at;
    if (at >= json.size() || json[at] < '0' || json[at] > '9') return std::nullopt;
    return std::strtoull(json.c_str() + at, nullptr, 10);
}

}  // namespace memlock_test

#endif  // MEMLOCK_TESTS_HELPERS_HPP
