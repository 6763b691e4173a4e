// memlock-inspect - what the memlock shim protects in a running process, and whether it
// protects it as configured.
//
// Everything comes from /proc/PID, which is the kernel's view whatever namespace the target
// runs in: /proc/PID/status (its user, its PIDs in each PID namespace, NSpid), /proc/PID/maps
// (the shim's counters page, the memfd mapping "/memfd:memlock-shim (deleted)"), that page
// read through /proc/PID/mem (layout in shim/stats.hpp) and /proc/PID/smaps (the arena: the
// mappings inside the reservation the shim publishes, their Locked kB and lo/dd flags).
// Nothing is written, and no path the target chose is ever opened.
//
// Reading maps, smaps and mem passes the kernel's ptrace access check. When it refuses and
// memlock-inspect may change user (it runs as root), a child switches to the target's user
// and group and reads them there (a container's root has no CAP_SYS_PTRACE, but may become
// www-data). That user may stop or kill the child: it has kChildAnswerSeconds to answer, then it
// is killed and the status is "unknown". A target that is not dumpable or holds capabilities
// no process of its user may read either: no child is made, and the status is "unknown" too,
// never "not protected".
//
// Text output shows what the target chose (its path, rule names, the allocator's path) through
// mltool::printable: control characters and what is not UTF-8 as \xNN.
//
// Every value read from the target is copied first, then validated (magic, layout, pid,
// bounds): the target may change or unmap it at any moment.
//
// Exit status: 0 protected as configured, 1 degraded, 2 not shimmed or no such process,
// 3 unknown (the kernel refuses the look), 4 nothing matched yet (the shim is active but no
// rule has matched an allocation), 64 usage. With --all, the worst status of all processes
// that are shimmed, that cannot be seen, or that were meant to run the shim and do not (2 if
// there are none), worst first: 3, 2, 1, 4, 0.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "config.hpp"
#include "prometheus.hpp"
#include "stats.hpp"
#include "tool.hpp"

using mltool::die;
using mltool::human_bytes;
using mltool::printable;
using mltool::usage_error;
using json = nlohmann::ordered_json;

namespace {

constexpr int kProtected = 0;
constexpr int kDegraded = 1;
constexpr int kNotShimmed = 2;
constexpr int kUnknown = 3;
constexpr int kNothingMatched = 4;

// How bad a status is, for --all's worst status.
int severity(int status) {
    static const int rank[] = {0, 2, 3, 4, 1};  // indexed by status
    return status >= 0 && status <= 4 ? rank[status] : 5;
}

// A caller rule that has checked at least kQuietChecks allocations and matched none gets a
// warning; one that matched fewer than 1 in kFewMatchesPer of them, a note.
constexpr std::uint64_t kQuietChecks = 10000;
constexpr std::uint64_t kFewMatchesPer = 10000;

void usage() {
    std::printf(
        "Usage: memlock-inspect [--json | --prometheus] PID\n"
        "       memlock-inspect [--json | --prometheus] --all\n"
        "\n"
        "Shows what the memlock shim protects in a running process: the arena's mappings from\n"
        "/proc/PID/smaps (VmFlags lo = locked, dd = excluded from core dumps; the resident kB of\n"
        "locked mappings), the shim's live counters (its \"/memfd:memlock-shim\" page, read through\n"
        "/proc/PID/mem) and warnings. --all inspects every process that maps such a page, in any\n"
        "container, every process the kernel does not let it see, and lists as not protected every\n"
        "process whose LD_PRELOAD names the shim that does not have it. Reading another user's\n"
        "process needs root (or its user).\n"
        "\n"
        "  --json          one JSON object (an array with --all) instead of text\n"
        "  --prometheus    the Prometheus text format (node_exporter's textfile collector)\n"
        "  --help, --version\n"
        "\n"
        "Exit status (for health checks; with --all, the worst over all processes):\n"
        "  0   protected as configured\n"
        "  1   degraded: lock failures, fallbacks, denied or overflowing allocations, unlocked arena pages\n"
        "  2   not protected: no such process, the shim is not loaded or not active (with --all:\n"
        "      a process meant to run the shim does not, or no shimmed process)\n"
        "  3   unknown: the kernel refuses to show the process (not dumpable, and no CAP_SYS_PTRACE);\n"
        "      the message says what to run instead\n"
        "  4   nothing matched yet: the shim is active, but no rule has matched an allocation, so\n"
        "      nothing is protected so far (with --all, ranked between protected and degraded)\n"
        "  64  usage error\n");
}

struct Region {
    std::uint64_t start = 0, end = 0;
    std::string perms;
    std::uint64_t size_kb = 0, rss_kb = 0, locked_kb = 0;
    bool lo = false, dd = false;
};


std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
    return buf;
}

std::string proc(int pid, const char *what) { return "/proc/" + std::to_string(pid) + "/" + what; }

// What memlock-inspect reads of one process (copies, taken as this process or as the
// target's user). read_process() fills it; everything after works on it alone.
struct ProcessView {
    // unanswered: the child reading as the target's user did not answer in time (killed).
    enum Access : int { gone = 0, ok = 1, refused = 2, unanswered = 3 } access = gone;
    std::string name;               // status Name: (readable without ptrace access)
    std::string exe;                // /proc/PID/exe, if readable
    std::vector<int> nspids;        // NSpid: its PID in each namespace, ours first, its own last
    int ppid = 0;                   // PPid: its parent's PID in ours (0: none)
    int uid = -1, gid = -1;         // effective ids (status)
    bool has_caps = false;          // CapPrm (status) is not empty
    bool exited = false;            // State: Z or X (status): it has exited, no memory is left to read
    bool switched = false;          // read as the target's user
    std::string maps, smaps;        // the texts, as read
    bool shim_loaded = false;       // maps names libmemlock_shim.so
    bool preload_names_shim = false;  // the environment it started with has LD_PRELOAD naming the shim
    bool secure_exec = false;       // AT_SECURE in its auxv: the loader ignored LD_PRELOAD
    std::vector<std::uint64_t> candidates;  // where the counters page may be: the memfd, then
                                            // shared anonymous pages of its size (no memfd_create)
    bool memfd = false;             // candidates[0] is the memfd mapping
    std::uint64_t page_at = 0;      // the counters page's address (0: none found)
    std::string page;               // its bytes (sizeof StatsPage) when read
    std::string rows;               // the rule rows of the slots with an owner (kStatsSlots rows,
                                    // zero where not read), when the page was read
    std::string why;                // when refused or the page could not be read: the errno text

    // The counters page found is the memfd mapping.
    bool page_in_memfd() const { return memfd && page_at == candidates[0]; }
};

bool readable_text(const std::string &path, std::string &out, int &err) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err = errno, false;
    out.clear();
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0 && out.size() < (std::size_t{256} << 20))
        out.append(buf, static_cast<std::size_t>(n));
    err = n < 0 ? errno : 0;
    ::close(fd);
    return n >= 0;
}

// Where the counters page may be, and whether the shim is mapped, from the text of
// /proc/PID/maps: the memfd mapping first, then (for a shim on a kernel without memfd_create)
// shared anonymous mappings of the page's size. At most 16 candidates.
void parse_maps(ProcessView &v) {
    std::istringstream in(v.maps);
    const std::string memfd = std::string("/memfd:") + mlshim::kStatsMemfdName + " (deleted)";
    std::vector<std::uint64_t> fallback;
    // The kernel maps the page's bytes in whole pages of its own (16 or 64 KiB on some aarch64
    // kernels); the target runs on this kernel.
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t mapped = (mlshim::kStatsPageBytes + page - 1) / page * page;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string range, perms, offset, dev, inode, path;
        fields >> range >> perms >> offset >> dev >> inode;
        std::getline(fields >> std::ws, path);
        if (path.find("libmemlock_shim.so") != std::string::npos) v.shim_loaded = true;
        // The memfd mapping is private (older shims mapped it shared), the anonymous page shared.
        if (path != memfd && (path != "/dev/zero (deleted)" || perms.size() < 4 || perms[3] != 's')) continue;
        const auto dash = range.find('-');
        const std::uint64_t start = std::strtoull(range.c_str(), nullptr, 16);
        const std::uint64_t end = dash == std::string::npos ? 0 : std::strtoull(range.c_str() + dash + 1, nullptr, 16);
        if (end <= start || end - start < sizeof(mlshim::StatsPage)) continue;
        if (path == memfd && !v.memfd) v.candidates.push_back(start), v.memfd = true;
        else if (end - start == mapped) fallback.push_back(start);
    }
    v.candidates.insert(v.candidates.end(), fallback.begin(), fallback.end());
    if (v.candidates.size() > 16) v.candidates.resize(16);
}

bool denied(int err) { return err == EACCES || err == EPERM; }

// Why a process that does not map the shim may still have been meant to: the environment it
// was started with (/proc/PID/environ) has LD_PRELOAD naming the shim, and whether it started in
// secure-execution mode (AT_SECURE in /proc/PID/auxv), in which the dynamic loader ignores
// LD_PRELOAD. Both stay false where the files cannot be read.
void read_exec_state(int pid, ProcessView &v) {
    std::string env_text, auxv;
    int err = 0;
    if (readable_text(proc(pid, "environ"), env_text, err)) v.preload_names_shim = mltool::environ_preloads_shim(env_text);
    std::uint64_t secure = 0;
    if (readable_text(proc(pid, "auxv"), auxv, err)) v.secure_exec = mltool::auxv_entry(auxv, AT_SECURE, secure) && secure;
}

// Reads the rule rows of the slots that have an owner (the others are zero: reading them
// would only make the target's kernel allocate the pages). Rows that cannot be read stay zero.
void read_rule_rows(int fd, ProcessView &v) {
    alignas(mlshim::StatsPage) unsigned char copy[sizeof(mlshim::StatsPage)];
    std::memcpy(copy, v.page.data(), sizeof copy);
    const auto &page = *reinterpret_cast<const mlshim::StatsPage *>(copy);
    const std::size_t used = mlshim::stats_rule_entries(page) * sizeof(mlshim::StatsRuleCount);
    v.rows.assign(sizeof(mlshim::StatsRuleRow) * mlshim::kStatsSlots, '\0');
    for (unsigned i = 0; i < mlshim::kStatsSlots && used; ++i) {
        if (page.slots[i].owner.load() == 0) continue;
        const std::size_t at = sizeof(mlshim::StatsRuleRow) * i;
        if (::pread(fd, &v.rows[at], used, static_cast<off_t>(v.page_at + mlshim::kStatsRowsOffset + at)) !=
            static_cast<ssize_t>(used))
            std::memset(&v.rows[at], 0, used);
    }
}

// Reads maps, smaps and the counters page of `pid` with this process's credentials.
void collect(int pid, ProcessView &v) {
    char exe[4096];
    const ssize_t n = ::readlink(proc(pid, "exe").c_str(), exe, sizeof exe - 1);
    if (n > 0) v.exe.assign(exe, static_cast<std::size_t>(n));
    int err = 0;
    if (!readable_text(proc(pid, "maps"), v.maps, err) || (v.maps.empty() && denied(err))) {
        v.access = denied(err) ? ProcessView::refused : ProcessView::gone;
        v.why = std::strerror(err);
        return;
    }
    v.access = ProcessView::ok;
    parse_maps(v);
    if (!v.shim_loaded) read_exec_state(pid, v);
    if (v.candidates.empty()) return;
    if (!readable_text(proc(pid, "smaps"), v.smaps, err) && denied(err)) {
        v.access = ProcessView::refused;
        v.why = std::strerror(err);
        return;
    }
    const int fd = ::open(proc(pid, "mem").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (denied(errno)) v.access = ProcessView::refused;
        v.why = std::strerror(errno);
        v.page_at = v.candidates[0];
        return;
    }
    // The memfd is the page; a shared anonymous candidate only if it starts with the magic.
    for (std::size_t i = 0; i < v.candidates.size(); ++i) {
        std::string page(sizeof(mlshim::StatsPage), '\0');
        const ssize_t got = ::pread(fd, &page[0], page.size(), static_cast<off_t>(v.candidates[i]));
        err = errno;
        const bool memfd = i == 0 && v.memfd;
        if (got == static_cast<ssize_t>(page.size()) &&
            (memfd || std::memcmp(page.data(), mlshim::kStatsMagic, sizeof mlshim::kStatsMagic) == 0)) {
            v.page_at = v.candidates[i];
            v.page = std::move(page);
            read_rule_rows(fd, v);
            break;
        }
        if (got < 0 && denied(err)) {
            v.access = ProcessView::refused;
            v.why = std::strerror(err);
            break;
        }
        if (memfd) {
            v.page_at = v.candidates[i];
            v.why = got < 0 ? std::strerror(err) : "short read";
            break;
        }
    }
    ::close(fd);
}

// Serialises the fields collect() fills, for the child that reads as the target's user.
void put(std::string &out, const std::string &s) {
    const std::uint64_t n = s.size();
    out.append(reinterpret_cast<const char *>(&n), sizeof n);
    out += s;
}
bool take(const std::string &in, std::size_t &at, std::string &s) {
    std::uint64_t n;
    if (in.size() - at < sizeof n) return false;
    std::memcpy(&n, in.data() + at, sizeof n);
    at += sizeof n;
    if (in.size() - at < n) return false;
    s.assign(in, at, n);
    at += n;
    return true;
}

// How long the child that reads as the target's user has to answer. That user may stop it
// (SIGSTOP) or slow it, not trace it (a process that changed user is not dumpable).
constexpr int kChildAnswerSeconds = 5;

// Milliseconds from now until `deadline` (CLOCK_MONOTONIC), 0 when it has passed.
int ms_until(const timespec &deadline) {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    const long long ms = (deadline.tv_sec - now.tv_sec) * 1000LL + (deadline.tv_nsec - now.tv_nsec) / 1000000;
    return ms > 0 ? static_cast<int>(ms) : 0;
}

// Can a process of the target's user read it once it has become that user (and holds no
// capability)? Not when the target is not dumpable (the kernel then gives the files in its
// /proc/PID to root) or holds capabilities: the kernel refuses the look to such a reader too.
bool its_user_may_read(int pid, const ProcessView &v) {
    struct stat st {};
    return !v.has_caps && ::stat(proc(pid, "status").c_str(), &st) == 0 && static_cast<int>(st.st_uid) == v.uid;
}

// collect() in a child that first becomes the target's user and group (no supplementary
// groups). false when the switch is not allowed or the child failed; when the child does not
// answer within kChildAnswerSeconds, it is killed and v.access is unanswered.
bool collect_as_target(int pid, ProcessView &v) {
    if (v.uid < 0 || v.gid < 0) return false;
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return false;
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        return false;
    }
    if (child == 0) {
        ::close(fds[0]);
        // A change of user clears the parent-death signal: it is set after.
        if (::setgroups(0, nullptr) != 0 || ::setresgid(v.gid, v.gid, v.gid) != 0 ||
            ::setresuid(v.uid, v.uid, v.uid) != 0 || ::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 ||
            ::getppid() != parent)
            ::_exit(1);
        ProcessView w;
        collect(pid, w);
        std::string out(1, static_cast<char>(w.access));
        std::string page_at = std::to_string(w.page_at);
        std::string exec_state{w.preload_names_shim ? '1' : '0', w.secure_exec ? '1' : '0'};
        for (const std::string *f : {&w.exe, &w.maps, &w.smaps, &w.page, &w.rows, &w.why, &page_at, &exec_state})
            put(out, *f);
        for (std::size_t at = 0; at < out.size();) {
            const ssize_t n = ::write(fds[1], out.data() + at, out.size() - at);
            if (n <= 0) ::_exit(1);
            at += static_cast<std::size_t>(n);
        }
        ::_exit(0);
    }
    ::close(fds[1]);
    timespec deadline{};
    ::clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += kChildAnswerSeconds;
    std::string in;
    char buf[65536];
    bool answered = false;  // read to the end
    for (;;) {
        pollfd p{fds[0], POLLIN, 0};
        const int ready = ::poll(&p, 1, ms_until(deadline));
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) break;
        const ssize_t n = ::read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            answered = n == 0;
            break;
        }
        in.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    if (!answered) ::kill(child, SIGKILL);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    if (!answered) {
        v.access = ProcessView::unanswered;
        return false;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || in.empty()) return false;
    ProcessView w = v;
    std::size_t at = 1;
    std::string page_at, exec_state;
    w.access = static_cast<ProcessView::Access>(in[0]);
    for (std::string *f : {&w.exe, &w.maps, &w.smaps, &w.page, &w.rows, &w.why, &page_at, &exec_state})
        if (!take(in, at, *f)) return false;
    w.preload_names_shim = exec_state.size() == 2 && exec_state[0] == '1';
    w.secure_exec = exec_state.size() == 2 && exec_state[1] == '1';
    if (w.access == ProcessView::ok && w.page.size() != sizeof(mlshim::StatsPage)) w.page.clear();
    if (w.page.empty() || w.rows.size() != sizeof(mlshim::StatsRuleRow) * mlshim::kStatsSlots) w.rows.clear();
    w.switched = true;
    w.shim_loaded = w.memfd = false;
    w.candidates.clear();
    parse_maps(w);
    w.page_at = std::strtoull(page_at.c_str(), nullptr, 10);
    if (w.access != ProcessView::refused && w.exe.empty()) w.exe = v.exe;
    v = std::move(w);
    return true;
}

// Reads what memlock-inspect needs of `pid`: the one place that touches the process.
ProcessView read_process(int pid) {
    ProcessView v;
    std::string status;
    int err = 0;
    if (!readable_text(proc(pid, "status"), status, err)) return v;  // gone
    std::istringstream in(status);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream f(line);
        std::string key;
        f >> key;
        int a = -1, b = -1;
        if (key == "Name:") std::getline(f >> std::ws, v.name);
        else if (key == "Uid:" && (f >> a >> b)) v.uid = b;
        else if (key == "Gid:" && (f >> a >> b)) v.gid = b;
        else if (key == "CapPrm:") v.has_caps = line.find_first_not_of("0 \t", 7) != std::string::npos;
        else if (key == "PPid:") f >> v.ppid;
        else if (key == "State:") {
            char state = 0;
            v.exited = (f >> state) && (state == 'Z' || state == 'X');
        }
        else if (key == "NSpid:")
            while (f >> a) v.nspids.push_back(a);
    }
    collect(pid, v);
    if (v.access == ProcessView::refused && static_cast<int>(::geteuid()) != v.uid && its_user_may_read(pid, v))
        collect_as_target(pid, v);
    return v;
}

// Where memlock-inspect has CAP_SYS_PTRACE.
constexpr const char *kWhereCapSysPtrace =
    "(as root on the host, or with `podman exec --privileged` / `docker exec --privileged` in a container)";

bool have_cap_sys_ptrace() {
    std::string status;
    int err;
    if (!readable_text("/proc/self/status", status, err)) return false;
    const auto at = status.find("CapEff:");
    return at != std::string::npos && ((std::strtoull(status.c_str() + at + 7, nullptr, 16) >> 19) & 1);
}

// What to do when the kernel refuses to show a process.
std::string refused_remedy(const ProcessView &v) {
    if (::geteuid() != 0)
        return "run memlock-inspect as root (or as the process's user, uid " + std::to_string(v.uid) + ")";
    if (!have_cap_sys_ptrace())
        return "the process is not dumpable (it changed user or called prctl(PR_SET_DUMPABLE, 0)) or holds "
               "capabilities memlock-inspect lacks, and memlock-inspect has no CAP_SYS_PTRACE: run it with "
               "CAP_SYS_PTRACE " + std::string(kWhereCapSysPtrace);
    return "it refuses even with CAP_SYS_PTRACE (another user namespace, or a security module): run "
           "memlock-inspect in the process's own namespace or on the host";
}

// Can this kernel (and this process) create a memfd? When not, a shim's counters are in an
// anonymous page that no other process can find.
bool memfd_works() {
    const int fd = static_cast<int>(::syscall(SYS_memfd_create, "memlock-inspect-probe", 1u /* MFD_CLOEXEC */));
    if (fd >= 0) ::close(fd);
    return fd >= 0 || errno != ENOSYS;
}

struct Report {
    int pid = 0;
    std::string exe;
    std::vector<int> nspids;
    bool switched = false;
    int uid = -1;
    std::string page_kind;        // where the counters were: the memfd, or a shared anonymous page
    int status = kNotShimmed;
    std::string verdict;          // one line: why this status
    bool listed = false;          // --all lists it: a counters page was found, the kernel refused the
                                  // look, or it was meant to run the shim and does not
    std::optional<json> counters; // the stats page, as the shim formats it
    std::vector<Region> arena;
    std::uint64_t resident_kb = 0, locked_kb = 0, unlocked_kb = 0;
    std::uint64_t locked_range_kb = 0;  // arena mappings flagged lo (pages lock as they are touched)
    std::uint64_t dumpable_kb = 0;      // arena mappings without dd
    std::vector<std::string> warnings;  // each makes the status degraded
    std::vector<std::string> notes;
};

// Caller rules that have matched nothing (a warning) or almost nothing (a note) of the
// allocations they checked: their module or symbol may not be where this program allocates.
void check_rules(const json &rules, Report &r) {
    const std::string where = (r.exe.empty() ? "?" : r.exe) + " (pid " + std::to_string(r.pid) + ")";
    for (const auto &e : rules) {
        if (!e.contains("consulted")) continue;
        const std::uint64_t checked = e["consulted"].get<std::uint64_t>();
        const std::uint64_t matched = e["matched_allocations"].get<std::uint64_t>();
        if (checked < kQuietChecks) continue;
        const std::string rule = "caller rule \"" + e["name"].get<std::string>() + "\" (" +
                                 e["caller"].get<std::string>() + ")";
        if (matched == 0)
            r.warnings.push_back(rule + " has matched none of the " + std::to_string(checked) +
                                 " allocations it checked in " + where +
                                 ": no allocation comes from that module or symbol (check the name; memlock-discover "
                                 "shows where this program allocates its secrets)");
        else if (matched < checked / kFewMatchesPer)
            r.notes.push_back(rule + " has matched only " + std::to_string(matched) + " of the " +
                              std::to_string(checked) + " allocations it checked in " + where);
    }
}

// The mappings inside the arena's reservation [start, end) (reserved and committed parts),
// from the text of /proc/PID/smaps.
std::vector<Region> read_arena(const std::string &smaps, std::uint64_t arena_start, std::uint64_t arena_end) {
    std::vector<Region> out;
    std::istringstream in(smaps);
    std::string line;
    Region cur;
    bool have = false, anon = false;
    auto flush = [&] {
        if (have && anon && cur.start >= arena_start && cur.end <= arena_end) out.push_back(cur);
    };
    while (std::getline(in, line)) {
        std::istringstream f(line);
        std::string first;
        f >> first;
        const auto dash = first.find('-');
        if (dash != std::string::npos && first.back() != ':') {  // "start-end perms offset dev inode [path]"
            flush();
            cur = Region{};
            have = true;
            cur.start = std::strtoull(first.c_str(), nullptr, 16);
            cur.end = std::strtoull(first.c_str() + dash + 1, nullptr, 16);
            std::string offset, dev, inode, path;
            f >> cur.perms >> offset >> dev >> inode;
            std::getline(f >> std::ws, path);
            anon = path.empty() || path == "/secretmem (deleted)";  // policy.backing secretmem
        } else if (first == "Size:") {
            f >> cur.size_kb;
        } else if (first == "Rss:") {
            f >> cur.rss_kb;
        } else if (first == "VmFlags:") {
            std::string flag;
            while (f >> flag) {
                cur.lo |= flag == "lo";
                cur.dd |= flag == "dd";
            }
            // Every resident page of a locked mapping is locked in this process. (smaps' own
            // Locked: is a proportional share: a forked worker that shares pages with its
            // parent would show a fraction of what it holds locked.)
            cur.locked_kb = cur.lo ? cur.rss_kb : 0;
        }
    }
    flush();
    return out;
}

// The counters, from the copy of the page: checked (magic, layout, for a shared anonymous
// page its pid among the target's PIDs, bounds) before use. Sets r.verdict and returns
// nullopt when they are not valid.
std::optional<json> parse_counters(const ProcessView &v, Report &r) {
    const std::string where = "counters page at " + hex(v.page_at);
    if (v.page.size() != sizeof(mlshim::StatsPage)) {
        r.verdict = where + ": cannot read it through /proc/" + std::to_string(r.pid) + "/mem: " + v.why;
        return std::nullopt;
    }
    alignas(mlshim::StatsPage) unsigned char copy[sizeof(mlshim::StatsPage)];
    std::memcpy(copy, v.page.data(), sizeof copy);
    const auto &page = *reinterpret_cast<const mlshim::StatsPage *>(copy);
    // The memfd mapping is private: what it holds is this process's, made by it or by a process
    // it was forked from (a fork child does not write its pid there). A shared anonymous page
    // may be another process's (a fork child of a shim without memfd_create maps its own).
    const bool memfd = v.page_in_memfd();
    const bool own_pid = memfd || std::find(v.nspids.begin(), v.nspids.end(), page.pid) != v.nspids.end() ||
                         (v.nspids.empty() && page.pid == r.pid);
    const std::uint64_t reserved = page.reserved_bytes.load();
    if (std::memcmp(page.magic, mlshim::kStatsMagic, sizeof page.magic) != 0)
        r.verdict = where + ": not a memlock-shim stats page";
    else if (page.layout != mlshim::kStatsLayout)
        r.verdict = where + ": stats layout " + std::to_string(page.layout) + ", this memlock-inspect reads " +
                    std::to_string(mlshim::kStatsLayout) + " (use the memlock-inspect of the shim's release)";
    else if (!own_pid)
        r.verdict = where + ": written by pid " + std::to_string(page.pid) + ", not by this process";
    else if (page.rules > mlshim::kConfigMaxRules || reserved > (std::uint64_t{1} << 57) ||
             page.arena_start > (std::uint64_t{1} << 57))
        r.verdict = where + ": values out of range";
    else {
        // The counters and "per_rule" as the shim writes them to stats.file, summed over the
        // rule rows read (those of the slots with an owner; none when they could not be read).
        std::vector<mlshim::StatsRuleRow> rows(v.rows.empty() ? 0 : mlshim::kStatsSlots);
        if (!rows.empty()) std::memcpy(static_cast<void *>(rows.data()), v.rows.data(), v.rows.size());
        std::vector<char> buf(mlshim::kStatsJsonBytes);
        const std::size_t n =
            mlshim::stats_format_json(page, rows.empty() ? nullptr : rows.data(), buf.data(), buf.size());
        std::optional<json> out = json::parse(std::string(buf.data(), n), nullptr, false);
        if (!out->is_discarded()) {
            (*out)["pid"] = v.nspids.empty() ? r.pid : v.nspids.back();  // as the process sees itself
            return out;
        }
        r.verdict = where + ": cannot format it";
    }
    return std::nullopt;
}

// The name of the parent of a running process that has neither the shim nor LD_PRELOAD naming
// it, when that parent runs the shim with an active config; "" otherwise.
std::string shimmed_parent(const ProcessView &v) {
    if (v.shim_loaded || v.preload_names_shim || v.maps.empty() || v.ppid <= 0) return "";
    const ProcessView parent = read_process(v.ppid);
    Report r;
    r.pid = v.ppid;
    const std::optional<json> c = parent.page_at ? parse_counters(parent, r) : std::nullopt;
    return c && (*c)["active"].get<bool>() ? parent.name + " (pid " + std::to_string(v.ppid) + ")" : "";
}

// The path of the library of a valgrind tool that replaces the allocator
// (mlshim::is_valgrind_allocator_preload) in a process's maps text, under which the shim
// passes everything through (docs/operators.md); "" when there is none.
std::string valgrind_tool_library(const std::string &maps) {
    for (std::size_t at = maps.find("/vgpreload_"); at != std::string::npos; at = maps.find("/vgpreload_", at + 1)) {
        if (!mlshim::is_valgrind_allocator_preload(maps.c_str() + at + 1)) continue;
        const std::size_t begin = maps.rfind(' ', at) + 1, end = maps.find('\n', at);
        return maps.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    }
    return "";
}

// Why a process without a counters page is not protected; r.listed when it was meant to run the
// shim: LD_PRELOAD names it. A process named on the command line (`named`) whose parent runs
// the shim is told so; --all does not list such processes, since whether the parent's config
// applies to them (its `programs`) is the parent's own reading: a shimmed sshd's login shells
// are not meant to run the shim.
void explain_unprotected(const ProcessView &v, Report &r, bool named) {
    r.listed = !v.shim_loaded && v.preload_names_shim;
    if (!named && !r.listed) return;  // --all shows no verdict of a process it does not list
    const std::string valgrind = v.shim_loaded ? valgrind_tool_library(v.maps) : "";
    if (!valgrind.empty())
        r.verdict = "the shim is loaded but passes every allocation through: the program runs under valgrind (" +
                    valgrind + " is loaded), whose allocator takes its malloc calls";
    else if (v.shim_loaded)
        r.verdict = "the shim is loaded but not protecting anything (no config, no rules, or the config's programs "
                    "do not match)";
    else if (mltool::is_musl_loader(mltool::elf_interpreter(proc(r.pid, "exe"))))
        r.verdict = "a musl libc program: the shim is built for glibc and cannot be loaded into it (use a glibc "
                    "build of the program)";
    else if (v.preload_names_shim && v.secure_exec)
        r.verdict = "the shim is not loaded: LD_PRELOAD names it, but the program started in secure-execution mode "
                    "(AT_SECURE: its real and effective user or group IDs differed at exec, or it gained "
                    "capabilities), in which the dynamic loader ignores LD_PRELOAD, as for a daemon that "
                    "re-executes itself after changing only its real user ID (squid's kids); load the shim "
                    "through /etc/ld.so.preload (system-wide mode)";
    else if (v.preload_names_shim)
        r.verdict = "the shim is not loaded although LD_PRELOAD names it: the dynamic loader did not load it (a "
                    "wrong path, or a library of another architecture: the loader said why on the program's "
                    "stderr when it started)";
    else if (const std::string parent = named ? shimmed_parent(v) : std::string(); !parent.empty()) {
        r.verdict = "the shim is not loaded: its parent " + parent + " runs it, but started this process without "
                    "LD_PRELOAD in its environment (a daemon that cleans its children's environment: have it pass "
                    "LD_PRELOAD and MEMLOCK_SHIM_CONFIG on; see docs/operators.md, \"Processes started without "
                    "the shim\")";
    } else
        r.verdict = "the shim is not loaded (start the program with memlock-run)";
}

// named: the PID was given on the command line (not found by --all).
Report inspect(int pid, bool named) {
    Report r;
    r.pid = pid;
    const ProcessView v = read_process(pid);
    r.listed = v.page_at || v.access == ProcessView::refused || v.access == ProcessView::unanswered;
    r.exe = v.exe.empty() ? v.name : v.exe;
    r.nspids = v.nspids;
    r.switched = v.switched;
    r.uid = v.uid;
    if (v.access == ProcessView::gone) {
        r.verdict = "no such process";
        return r;
    }
    if (v.exited) {  // a zombie has no maps: without this it would read as a process without the shim
        r.verdict = "the process has exited (a zombie its parent has not reaped): it has no memory left to inspect";
        return r;
    }
    if (v.access == ProcessView::unanswered) {
        r.status = kUnknown;
        r.verdict = "memlock-inspect cannot read it: the process that reads it as its user (uid " +
                    std::to_string(v.uid) + ") did not answer within " + std::to_string(kChildAnswerSeconds) +
                    " s and was killed (that user can stop it): run memlock-inspect with CAP_SYS_PTRACE " +
                    kWhereCapSysPtrace;
        return r;
    }
    if (v.access == ProcessView::refused) {
        r.status = kUnknown;
        r.verdict = "the kernel refuses to show its memory (" + v.why + "): " + refused_remedy(v);
        return r;
    }
    if (!v.page_at) {
        if (v.shim_loaded && !memfd_works()) {
            r.status = kUnknown;
            r.verdict = "the shim is loaded, but this kernel has no memfd_create: its counters are in an anonymous "
                        "page no other process can find (check /proc/" + std::to_string(pid) + "/smaps for lo dd)";
        } else {
            explain_unprotected(v, r, named);
        }
        return r;
    }
    r.page_kind = v.page_in_memfd()
                      ? std::string("/memfd:") + mlshim::kStatsMemfdName
                      : "a shared anonymous page (no memfd_create)";
    r.counters = parse_counters(v, r);
    if (r.counters) {
        const std::uint64_t start = (*r.counters)["arena_start"].get<std::uint64_t>();
        r.arena = read_arena(v.smaps, start, start + (*r.counters)["reserved_bytes"].get<std::uint64_t>());
    }
    for (const auto &g : r.arena) {
        r.resident_kb += g.rss_kb;
        r.locked_kb += g.locked_kb;
        if (g.lo) r.locked_range_kb += g.size_kb;
        if (!g.lo && g.perms[0] == 'r') r.unlocked_kb += g.rss_kb;
        if (!g.dd) r.dumpable_kb += g.size_kb;
    }
    if (!r.counters) {
        r.status = kDegraded;
        r.warnings.push_back("cannot read the counters: " + r.verdict);
        r.verdict = "degraded";
        return r;
    }
    const json &c = *r.counters;
    if (!c["active"].get<bool>()) {
        r.verdict = "the shim is loaded but its arena is not active (it runs unprotected)";
        return r;
    }
    auto count = [&](const char *key) { return c[key].get<std::uint64_t>(); };
    auto check = [&](const char *key, const std::string &what) {
        if (count(key) > 0) r.warnings.push_back(std::to_string(count(key)) + " " + what);
    };
    check("lock_failures", "lock failure(s): mlock failed or policy.max_locked was reached");
    check("fallbacks", "fallback(s): arena memory served unlocked (" + human_bytes(count("unlocked_bytes")) +
                           "; still excluded from core dumps and wiped)");
    check("denied", "matching allocation(s) refused (ENOMEM)");
    check("overflows", "matching allocation(s) served by the program's allocator, unprotected: the arena could "
                       "not grow (the shim's warning says why: policy.max_arena reached, the kernel refusing more "
                       "address space, or a sandbox refusing mprotect, for which policy.prealloc)");
    const std::optional<bool> all_lock = c["all_rules_lock"].get<bool>();
    if (r.unlocked_kb > 0) {
        const std::string what = human_bytes(r.unlocked_kb * 1024) + " of arena memory is resident but not locked";
        if (all_lock.value_or(true)) r.warnings.push_back(what);
        else r.notes.push_back(what + " (expected: some rules do not have the lock action)");
    }
    // The arena locks on fault: the kernel's Locked kB count the pages touched so far, the lo
    // flag the whole locked range, which must cover what the shim locked.
    if (r.locked_range_kb * 1024 < count("locked_bytes"))
        r.warnings.push_back("the kernel has " + human_bytes(r.locked_range_kb * 1024) + " of the arena locked, the " +
                             "shim locked " + human_bytes(count("locked_bytes")));
    if (r.dumpable_kb > 0 && all_lock.value_or(true))
        r.notes.push_back(human_bytes(r.dumpable_kb * 1024) + " of the arena is not excluded from core dumps "
                          "(expected only for rules without the dontdump action)");
    check_rules(c["per_rule"], r);
    if (const auto before = c.find("allocator_before_shim"); before != c.end() && before->is_string())
        r.warnings.push_back("malloc is defined by " + before->get<std::string>() + ", " + mlshim::kBeforeShim);
    const std::uint64_t max_locked = count("max_locked");
    if (max_locked > 0 && count("locked_bytes") * 10 >= max_locked * 9)
        r.notes.push_back("locked memory is at " + std::to_string(count("locked_bytes") * 100 / max_locked) +
                          "% of policy.max_locked (" + human_bytes(max_locked) + "): consider raising it");
    if (!r.warnings.empty()) {
        r.status = kDegraded;
        r.verdict = "degraded";
    } else if (count("matched_allocations") == 0) {
        // Active, but nothing is in the arena: "protected" would claim what has not happened.
        r.status = kNothingMatched;
        r.verdict = "the shim is active, but no rule has matched an allocation yet: nothing is protected so far";
    } else {
        r.status = kProtected;
        r.verdict = "protected";
    }
    return r;
}

const char *status_name(int s) {
    return s == kProtected        ? "protected"
           : s == kDegraded       ? "degraded"
           : s == kUnknown        ? "unknown"
           : s == kNothingMatched ? "nothing matched"
                                  : "not protected";
}

json to_json(const Report &r) {
    json j = {{"pid", r.pid}, {"executable", r.exe}, {"status", status_name(r.status)},
              {"exit_status", r.status}, {"reason", r.verdict}, {"nspid", r.nspids}};
    if (r.switched) j["read_as_uid"] = r.uid;
    if (r.counters) j["counters"] = *r.counters;
    json regions = json::array();
    for (const auto &g : r.arena)
        regions.push_back({{"start", hex(g.start)}, {"end", hex(g.end)}, {"perms", g.perms}, {"size_kb", g.size_kb},
                           {"rss_kb", g.rss_kb}, {"locked_kb", g.locked_kb}, {"lo", g.lo}, {"dd", g.dd}});
    j["arena"] = {{"regions", regions}, {"resident_kb", r.resident_kb}, {"locked_kb", r.locked_kb},
                  {"unlocked_kb", r.unlocked_kb}};
    j["warnings"] = r.warnings;
    j["notes"] = r.notes;
    return j;
}

mltool::ProcessMetrics to_metrics(const Report &r) {
    mltool::ProcessMetrics m;
    m.pid = r.pid;
    m.program = r.exe;
    m.status = r.status;
    m.counters = r.counters ? &*r.counters : nullptr;
    m.arena_resident_bytes = r.resident_kb * 1024;
    m.arena_locked_bytes = r.locked_kb * 1024;
    m.arena_unlocked_bytes = r.unlocked_kb * 1024;
    m.warnings = r.warnings.size();
    return m;
}

// The VmFlags of a mapping that memlock-inspect reports, as smaps spells them: "lo dd", "lo",
// "dd", or "-" for neither.
std::string vm_flags(const Region &g) {
    const std::string flags = std::string(g.lo ? " lo" : "") + (g.dd ? " dd" : "");
    return flags.empty() ? "-" : flags.substr(1);
}

// What came from the target (its path, rule names, the allocator's path in a warning) is
// printed through printable(): one line each, nothing a terminal acts on.
void print_text(const Report &r) {
    const bool short_form = r.status == kNotShimmed || r.status == kUnknown;
    const bool with_reason = short_form || r.status == kNothingMatched;
    std::printf("pid %d (%s): %s\n", r.pid, r.exe.empty() ? "?" : printable(r.exe).c_str(),
                with_reason ? (std::string(status_name(r.status)) + ": " + printable(r.verdict)).c_str()
                            : status_name(r.status));
    if (r.nspids.size() > 1)
        std::printf("  pid %d in its own PID namespace\n", r.nspids.back());
    if (short_form) return;
    if (r.counters) {
        const json &c = *r.counters;
        auto b = [&](const char *key) { return human_bytes(c[key].get<std::uint64_t>()); };
        auto u = [&](const char *key) { return std::to_string(c[key].get<std::uint64_t>()); };
        std::printf("  counters (%s, through /proc/%d/mem%s): %u rule(s), on_lock_failure %s\n",
                    r.page_kind.c_str(), r.pid, r.switched ? (", as uid " + std::to_string(r.uid)).c_str() : "",
                    c["rules"].get<unsigned>(), c["on_lock_failure"].get<std::string>().c_str());
        std::printf("    matched allocations %s, frees %s, live %s, peak %s\n", u("matched_allocations").c_str(),
                    u("frees").c_str(), b("live_bytes").c_str(), b("peak_bytes").c_str());
        std::printf("    arena reserved %s, committed %s, locked %s of max_locked %s, unlocked %s\n",
                    b("reserved_bytes").c_str(), b("committed_bytes").c_str(), b("locked_bytes").c_str(),
                    b("max_locked").c_str(), b("unlocked_bytes").c_str());
        std::printf("    lock failures %s, fallbacks %s, denied %s, overflows %s\n", u("lock_failures").c_str(),
                    u("fallbacks").c_str(), u("denied").c_str(), u("overflows").c_str());
        std::printf("    given back to the kernel %s\n", b("purged_bytes").c_str());
        if (c.contains("backing"))
            std::printf("    backing %s, in memfd_secret memory %s\n", c["backing"].get<std::string>().c_str(),
                        b("secret_bytes").c_str());
        std::printf("  rules (matched allocations, live, peak):\n");
        for (const auto &e : c["per_rule"]) {
            std::string name = printable(e["name"].get<std::string>()) + (e.contains("truncated") ? "..." : "");
            std::printf("    %-24s %12llu %10s %10s", name.c_str(),
                        static_cast<unsigned long long>(e["matched_allocations"].get<std::uint64_t>()),
                        human_bytes(e["live_bytes"].get<std::uint64_t>()).c_str(),
                        human_bytes(e["peak_bytes"].get<std::uint64_t>()).c_str());
            if (e.contains("caller"))
                std::printf("  %s, checked %llu", printable(e["caller"].get<std::string>()).c_str(),
                            static_cast<unsigned long long>(e["consulted"].get<std::uint64_t>()));
            if (e.contains("covers")) std::printf("  %s", printable(e["covers"].get<std::string>()).c_str());
            std::printf("\n");
        }
    }
    std::printf("  arena mappings (smaps, inside the arena's reservation):\n");
    for (const auto &g : r.arena)
        std::printf("    %s-%s %s %10s  rss %-10s locked %-10s %s\n", hex(g.start).c_str(), hex(g.end).c_str(),
                    g.perms.c_str(), human_bytes(g.size_kb * 1024).c_str(), human_bytes(g.rss_kb * 1024).c_str(),
                    human_bytes(g.locked_kb * 1024).c_str(), vm_flags(g).c_str());
    std::printf("  arena total: resident %s, locked %s, unlocked %s\n", human_bytes(r.resident_kb * 1024).c_str(),
                human_bytes(r.locked_kb * 1024).c_str(), human_bytes(r.unlocked_kb * 1024).c_str());
    for (const auto &w : r.warnings) std::printf("  WARNING: %s\n", printable(w).c_str());
    for (const auto &n : r.notes) std::printf("  note: %s\n", printable(n).c_str());
}

// The reports of the processes (but this one) --all lists, in any PID namespace, by PID: those
// with a counters page, those the kernel does not let this one see (they may be shimmed: never
// left out), and those meant to run the shim that do not.
std::vector<Report> listed_processes() {
    std::vector<Report> reports;
    DIR *d = ::opendir("/proc");
    if (!d) die(kNotShimmed, "cannot read /proc");
    while (const dirent *e = ::readdir(d)) {
        char *end = nullptr;
        const long pid = std::strtol(e->d_name, &end, 10);
        if (pid <= 0 || *end || pid == ::getpid()) continue;
        Report r = inspect(static_cast<int>(pid), false);
        if (r.listed) reports.push_back(std::move(r));
    }
    ::closedir(d);
    std::sort(reports.begin(), reports.end(), [](const Report &a, const Report &b) { return a.pid < b.pid; });
    return reports;
}

}  // namespace

int main(int argc, char **argv) {
    mltool::g_tool = "memlock-inspect";
    bool as_json = false, as_prometheus = false, all = false;
    std::vector<int> pids;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            usage();
            return 0;
        } else if (a == "--version") {
            std::printf("memlock-inspect %s\n", MEMLOCK_VERSION);
            return 0;
        } else if (a == "--json") {
            as_json = true;
        } else if (a == "--prometheus") {
            as_prometheus = true;
        } else if (a == "--all") {
            all = true;
        } else {
            char *end = nullptr;
            const long pid = std::strtol(a.c_str(), &end, 10);
            if (a.empty() || *end || pid <= 0 || pid > 0x7fffffff) usage_error("not a process id: " + a);
            pids.push_back(static_cast<int>(pid));
        }
    }
    if (all == !pids.empty() || pids.size() > 1) usage_error("give one PID or --all");
    if (as_json && as_prometheus) usage_error("give --json or --prometheus, not both");
    const std::vector<Report> reports = all ? listed_processes() : std::vector<Report>{inspect(pids[0], true)};
    if (reports.empty() && !as_json && !as_prometheus)
        die(kNotShimmed, "no process maps a memlock-shim counters page or was meant to run the shim and does not");

    int worst = reports.empty() ? kNotShimmed : kProtected;
    json array = json::array();
    for (const Report &r : reports) {
        if (severity(r.status) > severity(worst)) worst = r.status;
        if (as_json) array.push_back(to_json(r));
        else if (!as_prometheus) print_text(r);
    }
    if (as_json)
        std::printf("%s\n", (all ? array : array[0]).dump(2, ' ', false, json::error_handler_t::replace).c_str());
    if (as_prometheus) {
        // A PID that the shim is neither in nor meant to be in adds no series.
        std::vector<mltool::ProcessMetrics> metrics;
        for (const auto &r : reports)
            if (r.listed || r.status != kNotShimmed) metrics.push_back(to_metrics(r));
        std::fputs(mltool::format_prometheus(metrics).c_str(), stdout);
    }
    return worst;
}
