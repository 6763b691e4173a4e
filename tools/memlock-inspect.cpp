// memlock-inspect - what the memlock shim protects in a running process, and whether it
// protects it as configured.
//
// Sources: /proc/PID/maps (which stats file the process maps), the stats page itself
// (/dev/shm/memlock-shim.<pid>, mapped read-only; layout in shim/stats.hpp), /proc/PID/smaps
// (the arena: the mappings inside the reservation the shim publishes, their Locked kB and
// lo/dd flags) and the
// config named by /proc/PID/environ (does every rule lock?). Nothing is written.
//
// Exit status: 0 protected as configured, 1 degraded, 2 not shimmed or no such process,
// 64 usage. With --all, the worst status of all shimmed processes (2 if there are none).
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "config.hpp"
#include "stats.hpp"
#include "tool.hpp"

using mltool::die;
using mltool::human_bytes;
using mltool::usage_error;
using json = nlohmann::ordered_json;

namespace {

constexpr int kProtected = 0;
constexpr int kDegraded = 1;
constexpr int kNotShimmed = 2;

void usage() {
    std::printf(
        "Usage: memlock-inspect [--json] PID\n"
        "       memlock-inspect [--json] --all\n"
        "\n"
        "Shows what the memlock shim protects in a running process: the arena's mappings from\n"
        "/proc/PID/smaps (VmFlags lo = locked, dd = excluded from core dumps; the resident kB of\n"
        "locked mappings), the shim's\n"
        "live counters (/dev/shm/memlock-shim.PID) and warnings. --all inspects every process that\n"
        "maps a /dev/shm/memlock-shim.* file. Reading another user's process needs root.\n"
        "\n"
        "  --json          one JSON object (an array with --all) instead of text\n"
        "  --help, --version\n"
        "\n"
        "Exit status (for health checks; with --all, the worst over all processes):\n"
        "  0   protected as configured\n"
        "  1   degraded: lock failures, fallbacks, denied allocations or unlocked arena pages\n"
        "  2   not protected: no such process, the shim is not loaded or not active (with --all:\n"
        "      no shimmed process)\n"
        "  64  usage error\n");
}

struct Region {
    std::uint64_t start = 0, end = 0;
    std::string perms;
    std::uint64_t size_kb = 0, rss_kb = 0, locked_kb = 0;
    bool lo = false, dd = false;
};

struct Report {
    int pid = 0;
    std::string exe;
    int status = kNotShimmed;
    std::string verdict;          // one line: why this status
    std::optional<json> counters; // the stats page, as the shim formats it
    std::vector<Region> arena;
    std::uint64_t resident_kb = 0, locked_kb = 0, unlocked_kb = 0;
    std::uint64_t locked_range_kb = 0;  // arena mappings flagged lo (pages lock as they are touched)
    std::uint64_t dumpable_kb = 0;      // arena mappings without dd
    std::vector<std::string> warnings;  // each makes the status degraded
    std::vector<std::string> notes;
};

std::string proc(int pid, const char *what) { return "/proc/" + std::to_string(pid) + "/" + what; }

std::string stats_file(int pid) {
    char buf[64];
    return mlshim::stats_path(pid, buf, sizeof buf);
}

// The inode through which `pid` maps its own stats file, and whether it maps the shim.
struct MapsInfo {
    bool readable = false;
    bool shim_loaded = false;
    std::optional<unsigned long> stats_inode;
};

MapsInfo read_maps(int pid) {
    MapsInfo m;
    std::ifstream in(proc(pid, "maps"));
    const std::string own = stats_file(pid);
    std::string line;
    while (std::getline(in, line)) {
        m.readable = true;
        std::istringstream fields(line);
        std::string range, perms, offset, dev, path;
        unsigned long inode = 0;
        fields >> range >> perms >> offset >> dev >> inode;
        std::getline(fields >> std::ws, path);
        if (path == own) m.stats_inode = inode;
        if (path.find("libmemlock_shim.so") != std::string::npos) m.shim_loaded = true;
    }
    return m;
}

// The mappings inside the arena's reservation [start, end) (reserved and committed parts),
// as the shim publishes it in its counters.
std::vector<Region> read_arena(int pid, std::uint64_t arena_start, std::uint64_t arena_end) {
    std::vector<Region> out;
    std::ifstream in(proc(pid, "smaps"));
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
            anon = path.empty();
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

// Does every rule of the process's config lock its blocks? nullopt when it cannot be read.
std::optional<bool> config_locks_everything(int pid) {
    std::ifstream in(proc(pid, "environ"), std::ios::binary);
    std::string entry, path;
    while (std::getline(in, entry, '\0'))
        if (entry.rfind("MEMLOCK_SHIM_CONFIG=", 0) == 0) path = entry.substr(20);
    mlshim::Config config;
    std::string error;
    if (path.empty() || !mlshim::load_config_file(path, config, error)) return std::nullopt;
    for (const auto &r : config.rules)
        if (!(r.actions & mlshim::kActionLock)) return false;
    return true;
}

// The counters of `pid`, from the stats file it maps (checked: same inode, magic, layout,
// pid). Sets r.verdict and returns nullopt when they cannot be read.
std::optional<json> read_counters(int pid, unsigned long inode, Report &r) {
    const std::string path = stats_file(pid);
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || ::fstat(fd, &st) != 0) {
        r.verdict = path + ": " + std::strerror(errno) + (errno == EACCES ? " (run as root or as its user)" : "");
        if (fd >= 0) ::close(fd);
        return std::nullopt;
    }
    void *mem = MAP_FAILED;
    if (st.st_ino == inode && static_cast<std::size_t>(st.st_size) >= sizeof(mlshim::StatsPage))
        mem = ::mmap(nullptr, sizeof(mlshim::StatsPage), PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (mem == MAP_FAILED) {
        r.verdict = path + ": not the file the process maps, or too short";
        return std::nullopt;
    }
    const auto &page = *static_cast<const mlshim::StatsPage *>(mem);
    std::optional<json> out;
    if (std::memcmp(page.magic, mlshim::kStatsMagic, sizeof page.magic) != 0)
        r.verdict = path + ": not a memlock-shim stats page";
    else if (page.layout != mlshim::kStatsLayout)
        r.verdict = path + ": stats layout " + std::to_string(page.layout) + ", this memlock-inspect reads " +
                    std::to_string(mlshim::kStatsLayout) + " (use the memlock-inspect of the shim's release)";
    else if (page.pid != pid)
        r.verdict = path + ": written by pid " + std::to_string(page.pid);
    else {
        char buf[2048];
        const std::size_t n = mlshim::stats_format_json(page, buf, sizeof buf);
        out = json::parse(std::string(buf, n), nullptr, false);
        if (out->is_discarded()) out.reset();
    }
    ::munmap(mem, sizeof(mlshim::StatsPage));
    return out;
}

Report inspect(int pid) {
    Report r;
    r.pid = pid;
    char exe[4096];
    const ssize_t n = ::readlink(proc(pid, "exe").c_str(), exe, sizeof exe - 1);
    if (n > 0) r.exe.assign(exe, static_cast<std::size_t>(n));

    const MapsInfo maps = read_maps(pid);
    if (!maps.readable) {
        r.verdict = ::access(proc(pid, "").c_str(), F_OK) == 0 ? "cannot read " + proc(pid, "maps") + " (run as root)"
                                                               : "no such process";
        return r;
    }
    if (!maps.stats_inode) {
        r.verdict = maps.shim_loaded ? "the shim is loaded but not protecting anything (no config, no rules, "
                                       "the config's programs do not match, or /dev/shm is not writable)"
                                     : "the shim is not loaded (start the program with memlock-run)";
        return r;
    }
    r.counters = read_counters(pid, *maps.stats_inode, r);
    if (r.counters) {
        const std::uint64_t start = (*r.counters)["arena_start"].get<std::uint64_t>();
        r.arena = read_arena(pid, start, start + (*r.counters)["reserved_bytes"].get<std::uint64_t>());
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
    const std::optional<bool> all_lock = config_locks_everything(pid);
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
    const std::uint64_t max_locked = count("max_locked");
    if (max_locked > 0 && count("locked_bytes") * 10 >= max_locked * 9)
        r.notes.push_back("locked memory is at " + std::to_string(count("locked_bytes") * 100 / max_locked) +
                          "% of policy.max_locked (" + human_bytes(max_locked) + "): consider raising it");
    r.status = r.warnings.empty() ? kProtected : kDegraded;
    r.verdict = r.warnings.empty() ? "protected" : "degraded";
    return r;
}

const char *status_name(int s) { return s == kProtected ? "protected" : s == kDegraded ? "degraded" : "not protected"; }

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
    return buf;
}

json to_json(const Report &r) {
    json j = {{"pid", r.pid}, {"executable", r.exe}, {"status", status_name(r.status)},
              {"exit_status", r.status}, {"reason", r.verdict}};
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

void print_text(const Report &r) {
    std::printf("pid %d (%s): %s\n", r.pid, r.exe.empty() ? "?" : r.exe.c_str(),
                r.status == kNotShimmed ? ("not protected: " + r.verdict).c_str() : status_name(r.status));
    if (r.status == kNotShimmed) return;
    if (r.counters) {
        const json &c = *r.counters;
        auto b = [&](const char *key) { return human_bytes(c[key].get<std::uint64_t>()); };
        auto u = [&](const char *key) { return std::to_string(c[key].get<std::uint64_t>()); };
        std::printf("  counters (%s): %u rule(s), on_lock_failure %s\n", stats_file(r.pid).c_str(),
                    c["rules"].get<unsigned>(), c["on_lock_failure"].get<std::string>().c_str());
        std::printf("    matched allocations %s, frees %s, live %s, peak %s\n", u("matched_allocations").c_str(),
                    u("frees").c_str(), b("live_bytes").c_str(), b("peak_bytes").c_str());
        std::printf("    arena reserved %s, committed %s, locked %s of max_locked %s, unlocked %s\n",
                    b("reserved_bytes").c_str(), b("committed_bytes").c_str(), b("locked_bytes").c_str(),
                    b("max_locked").c_str(), b("unlocked_bytes").c_str());
        std::printf("    lock failures %s, fallbacks %s, denied %s\n", u("lock_failures").c_str(),
                    u("fallbacks").c_str(), u("denied").c_str());
    }
    std::printf("  arena mappings (smaps, inside the arena's reservation):\n");
    for (const auto &g : r.arena)
        std::printf("    %s-%s %s %10s  rss %-10s locked %-10s %s\n", hex(g.start).c_str(), hex(g.end).c_str(),
                    g.perms.c_str(), human_bytes(g.size_kb * 1024).c_str(), human_bytes(g.rss_kb * 1024).c_str(),
                    human_bytes(g.locked_kb * 1024).c_str(), g.lo ? "lo dd" : "dd");
    std::printf("  arena total: resident %s, locked %s, unlocked %s\n", human_bytes(r.resident_kb * 1024).c_str(),
                human_bytes(r.locked_kb * 1024).c_str(), human_bytes(r.unlocked_kb * 1024).c_str());
    for (const auto &w : r.warnings) std::printf("  WARNING: %s\n", w.c_str());
    for (const auto &n : r.notes) std::printf("  note: %s\n", n.c_str());
}

// Every process (but this one) that maps its /dev/shm/memlock-shim.<pid> file.
std::vector<int> shimmed_processes() {
    std::vector<int> pids;
    DIR *d = ::opendir("/proc");
    if (!d) die(kNotShimmed, "cannot read /proc");
    while (const dirent *e = ::readdir(d)) {
        char *end = nullptr;
        const long pid = std::strtol(e->d_name, &end, 10);
        if (pid <= 0 || *end || pid == ::getpid()) continue;
        if (read_maps(static_cast<int>(pid)).stats_inode) pids.push_back(static_cast<int>(pid));
    }
    ::closedir(d);
    std::sort(pids.begin(), pids.end());
    return pids;
}

}  // namespace

int main(int argc, char **argv) {
    mltool::g_tool = "memlock-inspect";
    bool as_json = false, all = false;
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
    if (all) {
        pids = shimmed_processes();
        if (pids.empty() && !as_json) die(kNotShimmed, "no process maps a /dev/shm/memlock-shim.* file");
    }

    int worst = pids.empty() ? kNotShimmed : kProtected;
    json array = json::array();
    for (int pid : pids) {
        const Report r = inspect(pid);
        worst = std::max(worst, r.status);
        if (as_json) array.push_back(to_json(r));
        else print_text(r);
    }
    if (as_json) std::printf("%s\n", (all ? array : array[0]).dump(2).c_str());
    return worst;
}
