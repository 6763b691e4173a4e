// memlock-discover - finds where a program keeps a secret, and proposes the rules that move
// every heap copy into the shim's arena.
//
// It runs the program under the shim in tracing mode (shim/trace.hpp: every heap block's
// address, size and call stack arrive on a socket), takes a snapshot (after --after seconds,
// on SIGUSR1, or as each process exits), scans every readable mapping of each traced process
// through /proc/PID/mem for the secrets, places each copy (arena, heap block and who
// allocated it, thread stack, static data, file mapping, other memory), and proposes the
// smallest rule set it can find that covers the heap copies. With --pid it scans running
// processes instead, placing each copy by mapping only. See docs/operators.md.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "config.hpp"
#include "keyfile.hpp"
#include "elf.hpp"
#include "tool.hpp"
#include "trace.hpp"

namespace {

using mltool::die;
using mltool::say;
using mltool::usage_error;

constexpr int kExitCopiesLeft = 1;     // --verify: heap copies remain outside the arena
// A run that shows less than the program: no copy found at all, or copies in processes of
// the program that the shim did not trace (no rule can be proposed or checked for them).
constexpr int kExitIncomplete = 2;
constexpr int kExitNoInput = 66;       // EX_NOINPUT: the key cannot be read
constexpr int kExitUnavailable = 69;   // EX_UNAVAILABLE: the program could not be traced
constexpr std::size_t kMinSecret = 8;  // shorter byte strings match by chance
constexpr std::size_t kMinComponent = 16;
constexpr std::size_t kNeedleBytes = 32;  // the leading bytes of a component searched for
constexpr std::size_t kMaxNeedle = 64;
constexpr unsigned kMaxRuleDepth = 8;
constexpr int kStopTimeoutMs = 10000;

// ---- options -------------------------------------------------------------------------------

struct Options {
    std::vector<std::string> keys;
    std::vector<std::string> secret_hex;
    double after = 0;  // 0: no timer
    std::string config_out;
    bool verify = false;
    std::string config;
    std::vector<int> pids;  // --pid: live processes to scan instead of a program to run
    std::vector<std::string> argv;
};

void usage() {
    std::printf(
        "usage: memlock-discover [--key FILE]... [--secret-hex HEX]... [--after SECONDS]\n"
        "                        [--config-out FILE] [--verify --config FILE] -- PROGRAM [ARGS...]\n"
        "       memlock-discover [--key FILE]... [--secret-hex HEX]... --pid PID...\n"
        "\n"
        "Runs PROGRAM under the shim in tracing mode, finds every copy of the secrets in its\n"
        "memory (and its children's), says where each copy lives and who allocated it, and\n"
        "proposes rules that move every heap copy into the arena.\n"
        "\n"
        "  --key FILE         a PEM or DER private key (RSA, EC, Ed25519, X25519, ...): searches for\n"
        "                     its private components (both byte orders) and runs of its PEM text\n"
        "  --secret-hex HEX   also search for these bytes (at least %zu)\n"
        "  --after SECONDS    snapshot after SECONDS (default: on SIGUSR1 to memlock-discover, or as\n"
        "                     each process exits); after a timed or SIGUSR1 snapshot the program is\n"
        "                     ended (SIGTERM, then SIGKILL after 10 s)\n"
        "  --config-out FILE  write the proposed rules there as a config (validated by the shim's parser)\n"
        "  --verify --config FILE\n"
        "                     run the program protected by FILE instead, and report the copies left\n"
        "  --pid PID          scan this running process instead (repeatable): it is stopped while its\n"
        "                     memory is read, then resumed; copies are placed by mapping only (no\n"
        "                     allocation records, so no rules are proposed)\n"
        "\n"
        "A snapshot (--after, SIGUSR1) also scans the program's processes that run without the shim's\n"
        "tracing (a daemon's children started with a cleaned environment), placing their copies by\n"
        "mapping, and names them \"not traced\".\n"
        "\n"
        "exit status: 0 done (--verify: no heap copy outside the arena; --pid: no copy outside protected\n"
        "memory); 1 --verify: copies left (heap, or in processes not traced), --pid: copies outside\n"
        "protected memory; 2 (not --pid) incomplete: no copy of the secrets found at all, or (without\n"
        "--verify) copies in processes not traced; 64 usage; 66 key unreadable; 69 the program could not be\n"
        "traced or a process could not be read; 78 invalid config\n",
        kMinSecret);
    std::exit(0);
}

Options parse_args(int argc, char **argv) {
    Options o;
    int i = 1;
    for (; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage_error(a + " needs a value");
            return argv[++i];
        };
        if (a == "--") {
            ++i;
            break;
        } else if (a == "-h" || a == "--help") {
            usage();
        } else if (a == "--key") {
            o.keys.push_back(value());
        } else if (a == "--secret-hex") {
            o.secret_hex.push_back(value());
        } else if (a == "--after") {
            const std::string v = value();
            char *end = nullptr;
            o.after = std::strtod(v.c_str(), &end);
            if (v.empty() || *end || !(o.after > 0) || o.after > 86400)
                usage_error("--after: expected seconds (0 < SECONDS <= 86400), got \"" + v + "\"");
        } else if (a == "--config-out") {
            o.config_out = value();
        } else if (a == "--verify") {
            o.verify = true;
        } else if (a == "--config") {
            o.config = value();
        } else if (a == "--pid") {
            const std::string v = value();
            char *end = nullptr;
            const long pid = std::strtol(v.c_str(), &end, 10);
            if (v.empty() || *end || pid <= 0 || pid > INT_MAX) usage_error("--pid: expected a process ID, got \"" + v + "\"");
            o.pids.push_back(static_cast<int>(pid));
        } else {
            usage_error("unknown option " + a);
        }
    }
    for (; i < argc; ++i) o.argv.push_back(argv[i]);
    if (!o.pids.empty()) {
        if (!o.argv.empty()) usage_error("--pid scans running processes; -- PROGRAM runs one: use one");
        if (o.verify || !o.config_out.empty() || o.after > 0)
            usage_error("--pid takes no --verify, --config, --config-out or --after (a running process is scanned as it is)");
    } else if (o.argv.empty()) {
        usage_error("no program to run (memlock-discover [OPTIONS] -- PROGRAM [ARGS], or --pid PID)");
    }
    if (o.keys.empty() && o.secret_hex.empty()) usage_error("nothing to look for: give --key FILE or --secret-hex HEX");
    if (o.verify != !o.config.empty()) usage_error("--verify and --config FILE go together");
    if (o.verify && !o.config_out.empty()) usage_error("--config-out proposes rules; --verify checks them: use one");
    return o;
}

// ---- secrets -------------------------------------------------------------------------------

struct Needle {
    std::string secret;  // what it is, for the report: "rsa p", "PEM text", "hex#1"
    std::string order;   // "big-endian", "little-endian", "" (raw bytes, PEM)
    std::string bytes;
};

// A component's leading bytes, in both byte orders (BIGNUMs are little-endian limbs in memory).
void add_component(std::vector<Needle> &out, std::vector<std::string> &skipped, const std::string &name,
                   const std::string &be) {
    if (be.size() < kMinComponent) {
        skipped.push_back(name + " (" + std::to_string(be.size()) + " bytes)");
        return;
    }
    const std::string lead = be.substr(0, std::min(be.size(), kNeedleBytes));
    out.push_back({name, "big-endian", lead});
    out.push_back({name, "little-endian", std::string(lead.rbegin(), lead.rend())});
}

// 32-byte windows of the base64 body of every PEM block in `text`.
void add_pem_windows(std::vector<Needle> &out, const std::string &text) {
    std::istringstream in(text);
    std::string line;
    bool body = false;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.rfind("-----BEGIN", 0) == 0) body = true;
        else if (line.rfind("-----END", 0) == 0) body = false;
        else if (body && line.find(':') == std::string::npos)
            for (std::size_t at = 0; at + kNeedleBytes <= line.size(); at += kNeedleBytes)
                out.push_back({"PEM text", "", line.substr(at, kNeedleBytes)});
    }
}

std::string load_key(const std::string &path, std::vector<Needle> &out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) die(kExitNoInput, "--key " + path + ": " + std::strerror(errno));
    const std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const bool pem = data.find("-----BEGIN") != std::string::npos;
    keyfile::Key key;
    const std::string why = keyfile::parse(data, key);
    if (!why.empty()) die(kExitNoInput, "--key " + path + ": cannot read a private key from it: " + why);
    std::vector<std::string> skipped;
    const std::size_t before = out.size();
    for (const auto &part : key.parts) {
        if (part.number) add_component(out, skipped, part.name, part.bytes);
        else if (part.bytes.size() >= kMinComponent) out.push_back({part.name, "", part.bytes});
        else skipped.push_back(part.name);
    }
    const std::string &type = key.type, &what = key.what;
    if (out.size() == before) die(kExitNoInput, "--key " + path + ": no private component of this " + type + " key is long enough to search for");
    if (!skipped.empty()) {
        std::string list;
        for (const auto &s : skipped) list += (list.empty() ? "" : ", ") + s;
        mltool::warn("--key " + path + ": too short to search for without false matches: " + list);
    }
    std::size_t windows = out.size();
    if (pem) add_pem_windows(out, data);
    windows = out.size() - windows;
    return path + ": " + what + (windows ? " and " + std::to_string(windows) + " windows of its PEM text" : "");
}

std::string parse_hex(const std::string &hex, std::size_t index) {
    std::string bytes;
    const std::string label = "--secret-hex #" + std::to_string(index);
    if (hex.size() % 2) usage_error(label + ": odd number of hex digits");
    for (std::size_t i = 0; i < hex.size(); i += 2) {
        char *end = nullptr;
        const std::string two = hex.substr(i, 2);
        long v = std::strtol(two.c_str(), &end, 16);
        if (*end || !std::isxdigit(static_cast<unsigned char>(two[0])))
            usage_error(label + ": not hex: \"" + hex + "\"");
        bytes += static_cast<char>(v);
    }
    if (bytes.size() < kMinSecret)
        usage_error(label + ": " + std::to_string(bytes.size()) + " bytes is too short to search for (at least " +
                    std::to_string(kMinSecret) + ")");
    if (bytes.size() > kMaxNeedle) bytes.resize(kMaxNeedle);
    return bytes;
}

// Finds every needle in a buffer: a 64 Ki-bit filter on the first two bytes, then the
// needles that share the first eight.
class Matcher {
public:
    explicit Matcher(const std::vector<Needle> &needles) : needles_(needles), filter_(65536, false) {
        std::size_t shortest = SIZE_MAX;
        for (std::size_t i = 0; i < needles.size(); ++i) {
            const std::string &b = needles[i].bytes;
            filter_[static_cast<unsigned char>(b[0]) | static_cast<unsigned char>(b[1]) << 8] = true;
            by_prefix_[word(b.data())].push_back(i);
            longest_ = std::max(longest_, b.size());
            shortest = std::min(shortest, b.size());
        }
        // A copy of a needle of 15 bytes or more holds a whole 8-aligned word at one of its
        // first 8 offsets: memory is then looked up one aligned word at a time, not byte by byte.
        by_word_ = shortest >= 15;
        if (!by_word_) return;
        seen_.assign(kSeenBits / 64, 0);
        for (std::size_t i = 0; i < needles.size(); ++i)
            for (unsigned d = 0; d < 8; ++d) {
                const std::uint64_t w = word(needles[i].bytes.data() + d);
                words_[w].push_back({i, d});
                seen_[slot(w) / 64] |= std::uint64_t{1} << (slot(w) % 64);
            }
    }
    std::size_t longest() const { return longest_; }
    // Calls hit(offset, needle index) for each match starting in [0, limit) of buf[0, len),
    // where buf[0] lies at an address that is a multiple of 8.
    template <typename F> void scan(const unsigned char *buf, std::size_t len, std::size_t limit, F hit) const {
        if (!by_word_) {
            for (std::size_t i = 0; i < limit && i + kMinSecret <= len; ++i) {
                if (!filter_[buf[i] | buf[i + 1] << 8]) continue;
                auto it = by_prefix_.find(word(reinterpret_cast<const char *>(buf + i)));
                if (it == by_prefix_.end()) continue;
                for (std::size_t k : it->second) check(buf, len, i, k, hit);
            }
            return;
        }
        for (std::size_t i = 0; i + 8 <= len && i < limit + 8; i += 8) {
            const std::uint64_t w = word(reinterpret_cast<const char *>(buf + i));
            if (!(seen_[slot(w) / 64] >> (slot(w) % 64) & 1)) continue;
            auto it = words_.find(w);
            if (it == words_.end()) continue;
            for (const auto &[k, d] : it->second)
                if (i >= d && i - d < limit) check(buf, len, i - d, k, hit);
        }
    }

private:
    static constexpr std::size_t kSeenBits = std::size_t{1} << 20;  // 128 KiB: in the cache while scanning
    static std::uint64_t word(const char *p) {
        std::uint64_t v;
        std::memcpy(&v, p, sizeof v);
        return v;
    }
    static std::size_t slot(std::uint64_t w) { return static_cast<std::size_t>((w * 0x9E3779B97F4A7C15ull) >> 44); }
    template <typename F> void check(const unsigned char *buf, std::size_t len, std::size_t at, std::size_t k, F &hit) const {
        const std::string &b = needles_[k].bytes;
        if (at + b.size() <= len && std::memcmp(buf + at, b.data(), b.size()) == 0) hit(at, k);
    }
    const std::vector<Needle> &needles_;
    std::vector<bool> filter_;
    std::unordered_map<std::uint64_t, std::vector<std::size_t>> by_prefix_;
    bool by_word_ = false;
    std::vector<std::uint64_t> seen_;  // a bit per slot() of the needles' words
    std::unordered_map<std::uint64_t, std::vector<std::pair<std::size_t, unsigned>>> words_;  // (needle, offset)
    std::size_t longest_ = 0;
};

// ---- the traced processes ------------------------------------------------------------------

constexpr std::size_t kMaxPrior = 4;

struct Block {
    std::uint64_t size = 0;
    std::vector<std::uint64_t> frames;
    // Freed blocks this one was allocated over (oldest first): a copy inside it may be one
    // of theirs, left unwiped (malloc does not clear what it hands out).
    std::vector<Block> prior;
    // For a freed block that later blocks reused in part: the bytes from its table address
    // that nothing has reused since (0: all `size`). Its table address is then where that
    // part starts; `size` stays the size it was allocated with, which rules select by.
    std::uint64_t left = 0;
    std::uint64_t extent() const { return left ? left : std::max<std::uint64_t>(size, 1); }
};
using BlockTable = std::map<std::uint64_t, Block>;

struct Process {
    BlockTable live;
    BlockTable freed;  // blocks freed (without a wipe) and not reused since
    std::uint64_t random_at = 0, random = 0;  // the traced image's fingerprint (shim/trace.hpp)
    bool exiting = false;
    bool scanned = false;
};

// Moves the entries of `t` that overlap [lo, hi) into `prior` (with their own history). What
// lies outside [lo, hi) of such an entry stays in `t`: malloc carves a smaller block out of a
// larger freed one and leaves the rest as it was, copies included.
void take_overlapping(BlockTable &t, std::uint64_t lo, std::uint64_t hi, std::vector<Block> &prior) {
    auto it = t.upper_bound(lo);
    if (it != t.begin() && std::prev(it)->first + std::prev(it)->second.extent() > lo) --it;
    std::vector<BlockTable::value_type> rest;
    while (it != t.end() && it->first < hi) {
        Block &b = it->second;
        const std::uint64_t start = it->first, end = start + b.extent();
        if (start < lo || end > hi) {
            Block part;
            part.size = b.size;
            part.frames = b.frames;
            part.prior = b.prior;
            if (start < lo) {
                part.left = lo - start;
                rest.emplace_back(start, part);
            }
            if (end > hi) {
                part.left = end - hi;
                rest.emplace_back(hi, std::move(part));
            }
        }
        for (Block &older : b.prior) prior.push_back(std::move(older));
        b.prior.clear();
        prior.push_back(std::move(b));
        it = t.erase(it);
    }
    for (auto &r : rest) t.insert(std::move(r));
    if (prior.size() > kMaxPrior) prior.erase(prior.begin(), prior.end() - kMaxPrior);
}

const BlockTable::value_type *find_block(const BlockTable &t, std::uint64_t addr) {
    auto it = t.upper_bound(addr);
    if (it == t.begin()) return nullptr;
    --it;
    return addr < it->first + it->second.extent() ? &*it : nullptr;
}

// ---- a process's memory map, its modules and their symbols -----------------------------------

struct Mapping {
    std::uint64_t lo = 0, hi = 0, offset = 0;
    unsigned dev_major = 0, dev_minor = 0;  // the mapped file's device and inode (0 for anonymous memory)
    std::uint64_t inode = 0;
    std::string perms, path;  // path: as the kernel shows it (the target's to choose, escaped)
    bool dontdump = false, locked = false;
};

std::vector<Mapping> read_maps(int pid) {
    std::vector<Mapping> maps;
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmFlags:", 0) == 0) {
            if (!maps.empty()) {
                maps.back().dontdump = line.find(" dd") != std::string::npos;
                maps.back().locked = line.find(" lo") != std::string::npos;
            }
            continue;
        }
        Mapping m;
        char perms[8] = {};
        unsigned long long lo, hi, off, inode;
        int name_at = 0;
        if (std::sscanf(line.c_str(), "%llx-%llx %7s %llx %x:%x %llu%n", &lo, &hi, perms, &off, &m.dev_major, &m.dev_minor,
                        &inode, &name_at) < 7 ||
            line.find(':') == std::string::npos || line.compare(0, 1, " ") == 0 || std::isupper(static_cast<unsigned char>(line[0])))
            continue;
        m.lo = lo;
        m.hi = hi;
        m.offset = off;
        m.inode = inode;
        m.perms = perms;
        std::size_t p = static_cast<std::size_t>(name_at);
        while (p < line.size() && line[p] == ' ') ++p;
        m.path = line.substr(p);
        maps.push_back(m);
    }
    return maps;
}

const Mapping *mapping_of(const std::vector<Mapping> &maps, std::uint64_t addr) {
    auto it = std::upper_bound(maps.begin(), maps.end(), addr, [](std::uint64_t a, const Mapping &m) { return a < m.lo; });
    if (it == maps.begin()) return nullptr;
    --it;
    return addr < it->hi ? &*it : nullptr;
}

bool is_file(const Mapping &m) { return !m.path.empty() && m.path[0] == '/' && m.path.find(" (deleted)") == std::string::npos; }

// A descriptor open for reading on the file that mapping m of process pid maps, or -1. Its
// path is the process's to choose: one in a mount namespace of its own names, from here,
// whatever lies there (a symlink, a FIFO, another file, a symlink for a directory), and the
// kernel shows a newline in a name as "\012", which can be another file's literal name. So the
// file is reached through the kernel's own reference to it, /proc/PID/map_files/LO-HI (which
// needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), else through the path without following a
// symlink at its end, and is opened only when it is a regular file and, reached through the
// path, has the device and inode of the maps line. Nothing is opened before that check
// (O_PATH), so no FIFO or device is ever opened, and nothing here waits on the process.
int open_mapped_file(int pid, const Mapping &m) {
    char ref[80];
    std::snprintf(ref, sizeof ref, "/proc/%d/map_files/%llx-%llx", pid, static_cast<unsigned long long>(m.lo),
                  static_cast<unsigned long long>(m.hi));
    int at = ::open(ref, O_PATH | O_CLOEXEC);
    const bool by_kernel = at >= 0;
    if (!by_kernel) at = ::open(m.path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (at < 0) return -1;
    struct stat st;
    const bool same = ::fstat(at, &st) == 0 && S_ISREG(st.st_mode) &&
                      (by_kernel || (st.st_ino == m.inode && major(st.st_dev) == m.dev_major && minor(st.st_dev) == m.dev_minor));
    const int fd = same ? ::open(("/proc/self/fd/" + std::to_string(at)).c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC) : -1;
    ::close(at);
    return fd;
}

std::string base_name(const std::string &path) {
    const std::size_t slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

struct Module {
    std::string path;
    std::string name;  // what a rule's module glob names: the soname, else the file's name
    bool stripped = false;
    bool ok = false;
    struct Fn {
        std::uint64_t lo, hi;
        std::string name;
    };
    std::vector<Fn> functions;  // sorted by lo
    std::vector<ElfW(Phdr)> loads;
};

class Symbolizer {
public:
    // The module that file mapping `map` of process pid maps (read as open_mapped_file allows).
    const Module &module(int pid, const Mapping &map) {
        const Key key{map.path, map.dev_major, map.dev_minor, map.inode};
        auto it = modules_.find(key);
        if (it != modules_.end()) return *it->second;
        auto m = std::make_unique<Module>();
        m->path = map.path;
        m->name = base_name(map.path);
        const int fd = open_mapped_file(pid, map);
        const mlshim::ElfView elf(fd);
        if (fd >= 0) ::close(fd);
        if (elf.ok()) {
            m->ok = true;
            const std::string so = elf.soname();
            if (!so.empty()) m->name = so;
            m->stripped = !elf.has_symtab();
            elf.each_function([&](const char *name, std::uintptr_t value, std::size_t size) {
                m->functions.push_back({value, value + size, name});
            });
            std::sort(m->functions.begin(), m->functions.end(), [](const Module::Fn &a, const Module::Fn &b) { return a.lo < b.lo; });
            unsigned n = 0;
            const ElfW(Phdr) *ph = elf.phdrs(n);
            for (unsigned i = 0; i < n; ++i)
                if (ph[i].p_type == PT_LOAD) m->loads.push_back(ph[i]);
        }
        return *modules_.emplace(key, std::move(m)).first->second;
    }

    // The function containing the file address `vaddr` of module m, or "".
    static std::string function_at(const Module &m, std::uint64_t vaddr) {
        auto it = std::upper_bound(m.functions.begin(), m.functions.end(), vaddr,
                                   [](std::uint64_t a, const Module::Fn &f) { return a < f.lo; });
        while (it != m.functions.begin()) {
            --it;
            if (vaddr < it->hi) return it->name;
            if (it->hi <= vaddr && it->lo + (1u << 20) < vaddr) break;  // nested symbols are rare and near
        }
        return std::string();
    }

    // The file (link-time) address of `addr` inside mapping `m` of module `mod`, or 0.
    static std::uint64_t file_vaddr(const Module &mod, const Mapping &m, std::uint64_t addr) {
        const std::uint64_t file_off = addr - m.lo + m.offset;
        for (const auto &ph : mod.loads)
            if (file_off >= ph.p_offset && file_off < ph.p_offset + ph.p_filesz) return ph.p_vaddr + (file_off - ph.p_offset);
        return 0;
    }

    // Where the memory image of the segment that mapping `m` of module `mod` maps from its file
    // ends (its .bss included, up to a page), or 0 when mod's segments do not say.
    static std::uint64_t image_end(const Module &mod, const Mapping &m, std::uint64_t page) {
        std::uint64_t end = 0;
        for (const auto &ph : mod.loads) {
            const std::uint64_t from = ph.p_offset & ~(page - 1);
            if (m.offset < from || m.offset >= ph.p_offset + ph.p_filesz) continue;
            // m.lo maps file offset m.offset, which the segment puts at p_vaddr + (m.offset - p_offset).
            const std::uint64_t bias = m.lo - (ph.p_vaddr + m.offset - ph.p_offset);
            end = std::max(end, (bias + ph.p_vaddr + ph.p_memsz + page - 1) & ~(page - 1));
        }
        return end;
    }

private:
    using Key = std::tuple<std::string, unsigned, unsigned, std::uint64_t>;  // path, device, inode
    std::map<Key, std::unique_ptr<Module>> modules_;
};

struct Frame {
    std::string module;  // Module::name, "" if unknown
    std::string path;
    std::string function;  // "" if no symbol covers it
    bool stripped = false;
};

constexpr const char *kShimName = "libmemlock_shim.so";

// Names the frames of a stack in the address space described by `maps`; drops the shim's own
// frames at the top (the rest starts at the allocation's depth-1 caller, as the rules count).
std::vector<Frame> symbolize(Symbolizer &sym, int pid, const std::vector<Mapping> &maps, const std::vector<std::uint64_t> &pcs,
                             std::unordered_map<std::uint64_t, Frame> &cache) {
    std::vector<Frame> out;
    bool top = true;
    for (std::uint64_t pc : pcs) {
        auto c = cache.find(pc);
        Frame f;
        if (c != cache.end()) {
            f = c->second;
        } else {
            const Mapping *m = mapping_of(maps, pc - 1);
            if (m && is_file(*m)) {
                const Module &mod = sym.module(pid, *m);
                f.module = mod.name;
                f.path = mod.path;
                f.stripped = mod.stripped;
                if (std::uint64_t v = Symbolizer::file_vaddr(mod, *m, pc - 1)) f.function = Symbolizer::function_at(mod, v);
            } else if (m) {
                f.module = m->path.empty() ? "?" : m->path;
            }
            cache.emplace(pc, f);
        }
        if (top && base_name(f.path) == kShimName) continue;
        top = false;
        out.push_back(f);
    }
    return out;
}

// ---- scanning --------------------------------------------------------------------------------

enum class Place { arena, heap, freed, stack, static_data, file, anon };
const char *place_tag(Place p) {
    switch (p) {
    case Place::arena: return "arena";
    case Place::heap: return "heap";
    case Place::freed: return "freed-heap";
    case Place::stack: return "stack";
    case Place::static_data: return "static";
    case Place::file: return "file";
    case Place::anon: return "anon";
    }
    return "?";
}

struct Copy {
    int pid = 0;
    std::uint64_t addr = 0;
    std::set<std::string> secrets;  // "rsa p (big-endian)", "PEM text x7", ...
    Place place = Place::anon;
    std::string where;              // the human description
    std::uint64_t block = 0, block_size = 0;
    std::vector<Frame> frames;      // heap and freed-heap: the allocation's callers
    struct Earlier {
        std::uint64_t size;
        std::vector<Frame> frames;
    };
    std::vector<Earlier> earlier;   // blocks freed unwiped at this place before (Block::prior)
};

struct Snapshot {
    std::vector<Copy> copies;
    std::vector<std::string> processes;  // "pid 123 (nginx) at exit"
    // Every live block of the scanned processes, symbolized: what a rule would also match.
    struct Other {
        std::uint64_t size;
        std::vector<Frame> frames;
    };
    std::vector<Other> others;
    std::set<std::string> stripped;  // modules on a heap copy's stack without local symbols
    // Readable mappings whose memory the kernel would not give: (pid, path) -> bytes, errno.
    std::map<std::pair<int, std::string>, std::pair<std::uint64_t, int>> unreadable;
    std::set<int> untraced;  // processes of the program scanned without allocation records
};

std::string comm_of(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
    std::string s;
    std::getline(in, s);
    return s;
}

// The stack pointer of every thread of pid (from /proc/PID/task/TID/syscall of a stopped process).
std::map<std::uint64_t, int> thread_sps(int pid) {
    std::map<std::uint64_t, int> sps;
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR *d = opendir(dir.c_str());
    if (!d) return sps;
    while (dirent *e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::ifstream in(dir + "/" + e->d_name + "/syscall");
        std::vector<std::string> fields;
        std::string f;
        while (in >> f) fields.push_back(f);
        if (fields.size() >= 3) sps[std::strtoull(fields[fields.size() - 2].c_str(), nullptr, 16)] = std::atoi(e->d_name);
    }
    closedir(d);
    return sps;
}

std::string frames_text(const std::vector<Frame> &frames, std::size_t max = 6) {
    std::string fn, mods;
    std::string last_mod;
    for (std::size_t i = 0; i < frames.size() && i < max; ++i) {
        fn += (i ? " <- " : "") + (frames[i].function.empty() ? std::string("?") : frames[i].function);
        if (frames[i].module != last_mod) mods += (mods.empty() ? "" : " <- ") + frames[i].module;
        last_mod = frames[i].module;
    }
    if (frames.size() > max) fn += " <- ...";
    return fn + " (" + mods + ")";
}

class Scanner {
public:
    Scanner(const std::vector<Needle> &needles) : needles_(needles), matcher_(needles) {}

    // False when the process's memory cannot be read (warned). proc: the process's allocation
    // records; nullptr for a process the shim did not trace (--pid, or a process of the program
    // that runs without the shim's tracing), whose copies are placed by mapping only.
    bool scan(int pid, const Process *proc, const std::string &when, Snapshot &snap) {
        const std::vector<Mapping> maps = read_maps(pid);
        const auto sps = thread_sps(pid);
        std::unordered_map<std::uint64_t, Frame> cache;
        const std::string comm = comm_of(pid);
        snap.processes.push_back("pid " + std::to_string(pid) + " (" + comm + ") " + when);
        const int fd = ::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            mltool::warn("pid " + std::to_string(pid) + ": cannot read its memory: " + std::strerror(errno));
            return false;
        }
        std::map<std::pair<std::uint64_t, int>, Copy> found;  // by (location, place)
        const std::size_t overlap = matcher_.longest() - 1;
        std::vector<unsigned char> buf;
        for (const Mapping &m : maps) {
            if (m.perms.empty() || m.perms[0] != 'r' || m.path.rfind("[vvar", 0) == 0 || m.path == "[vsyscall]") continue;
            constexpr std::size_t kChunk = 1 << 20;
            for (std::uint64_t at = m.lo; at < m.hi; at += kChunk) {
                const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(m.hi - at, kChunk + overlap));
                buf.resize(want);
                const ssize_t got = ::pread(fd, buf.data(), want, static_cast<off_t>(at));
                if (got < 0) {
                    auto &u = snap.unreadable[{pid, m.path.empty() ? "[anon]" : m.path}];
                    u.first += m.hi - at;
                    u.second = errno;
                }
                if (got <= 0) break;
                const std::size_t limit = std::min<std::size_t>(static_cast<std::size_t>(got), kChunk);
                matcher_.scan(buf.data(), static_cast<std::size_t>(got), limit, [&](std::size_t off, std::size_t k) {
                    place(pid, proc, maps, sps, m, at + off, k, found, cache);
                });
            }
        }
        ::close(fd);
        for (auto &entry : found) snap.copies.push_back(std::move(entry.second));
        if (proc)
            for (const auto &b : proc->live) snap.others.push_back({b.second.size, symbolize(sym_, pid, maps, b.second.frames, cache)});
        // Stripped modules among the callers a rule would look at, where a name was wanted.
        for (const Copy &c : snap.copies)
            for (std::size_t d = 0; d < c.frames.size() && d < kMaxRuleDepth; ++d)
                if (c.pid == pid && c.frames[d].stripped && c.frames[d].function.empty() && d < 3)
                    snap.stripped.insert(c.frames[d].module);
        return true;
    }

private:
    // The earlier blocks at this address that could have left the copy (newest first, at most
    // two). Information for the operator: the rules cover the block that holds the copy, and
    // --verify shows whether the writer was an earlier one.
    void add_earlier(Copy &c, const Block &b, int pid, const std::vector<Mapping> &maps,
                     std::unordered_map<std::uint64_t, Frame> &cache) {
        for (auto it = b.prior.rbegin(); it != b.prior.rend() && c.earlier.size() < 2; ++it) {
            c.earlier.push_back({it->size, symbolize(sym_, pid, maps, it->frames, cache)});
            c.where += "\n      reused memory: earlier a block of " + std::to_string(it->size) + " bytes allocated by " +
                       frames_text(c.earlier.back().frames);
        }
    }

    // Fills c for a copy inside a traced heap block (live or freed). Returns the block's address.
    std::uint64_t heap_copy(Copy &c, Place place, const char *what, const BlockTable::value_type &b, int pid,
                            const std::vector<Mapping> &maps, std::unordered_map<std::uint64_t, Frame> &cache) {
        c.place = place;
        c.block = b.first;
        c.block_size = b.second.size;
        c.frames = symbolize(sym_, pid, maps, b.second.frames, cache);
        c.where = what + std::to_string(c.block_size) + " bytes allocated by " + frames_text(c.frames);
        add_earlier(c, b.second, pid, maps, cache);
        return b.first;
    }

    // Is anonymous mapping m the .bss of the object that file mapping prev (just below it) maps?
    // Only as far as the object's segment reaches: a runtime's own mmap can land right after a
    // library too (Erlang's carriers), and may then grow or merge with its .bss.
    bool in_bss(int pid, const Mapping &prev, const Mapping &m) {
        if (!is_file(prev) || prev.hi != m.lo || !m.path.empty() || m.perms.size() < 2 || m.perms[1] != 'w') return false;
        const Module &mod = sym_.module(pid, prev);
        if (!mod.ok) return true;  // no segments to go by: what lies right after a file's mapping
        return m.hi <= Symbolizer::image_end(mod, prev, static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)));
    }

    void place(int pid, const Process *proc, const std::vector<Mapping> &maps, const std::map<std::uint64_t, int> &sps,
               const Mapping &m, std::uint64_t addr, std::size_t k, std::map<std::pair<std::uint64_t, int>, Copy> &found,
               std::unordered_map<std::uint64_t, Frame> &cache) {
        Copy c;
        c.pid = pid;
        c.addr = addr;
        std::uint64_t key = addr;
        const Needle &n = needles_[k];
        const std::string secret = n.secret + (n.order.empty() ? "" : " (" + n.order + ")");
        if (m.dontdump) {
            c.place = Place::arena;
            c.where = std::string("protected memory (never dumped") + (m.locked ? ", locked" : ", NOT locked") + ")";
        } else if (const auto *b = proc ? find_block(proc->live, addr) : nullptr) {
            key = heap_copy(c, Place::heap, "heap block of ", *b, pid, maps, cache);
        } else if (const auto *fb = proc ? find_block(proc->freed, addr) : nullptr) {
            key = heap_copy(c, Place::freed, "freed (not wiped) heap block of ", *fb, pid, maps, cache);
        } else if (m.path == "[stack]") {
            c.place = Place::stack;
            c.where = "the main thread's stack";
        } else if (auto sp = sps.lower_bound(m.lo); sp != sps.end() && sp->first < m.hi) {
            c.place = Place::stack;
            c.where = "the stack of thread " + std::to_string(sp->second);
        } else if (is_file(m)) {
            const bool writable = m.perms.size() > 1 && m.perms[1] == 'w';
            const bool shared = m.perms.size() > 3 && m.perms[3] == 's';
            // A module's .data is a private writable mapping of an ELF object; other files
            // mapped that way are the process's own copies of a file.
            c.place = writable && !shared && sym_.module(pid, m).ok ? Place::static_data : Place::file;
            c.where = c.place == Place::static_data ? "static data of " + base_name(m.path)
                      : !writable                  ? "file-backed mapping of " + m.path
                      : shared                     ? "a shared writable mapping of " + m.path + " (written back to the file)"
                                                   : "a private writable mapping of " + m.path + " (the process's own copy)";
        } else if (const Mapping *prev = &m == maps.data() ? nullptr : &m - 1; prev && in_bss(pid, *prev, m)) {
            c.place = Place::static_data;
            c.where = "static data (.bss) of " + base_name(prev->path);
        } else {
            c.place = Place::anon;
            if (!proc)
                c.where = m.path == "[heap]" ? "the heap ([heap]: malloc's memory)"
                                             : "anonymous memory (malloc's large blocks and thread heaps, or the program's own)" +
                                                   (m.path.empty() ? std::string() : " " + m.path);
            else
                c.where = m.path == "[heap]" ? "heap memory outside any recorded block (allocator data, or allocated before tracing)"
                                             : "other anonymous memory" + (m.path.empty() ? std::string() : " " + m.path);
        }
        // Outside blocks a copy is one address; the windows of one PEM text, one page.
        if (!c.block && n.secret == "PEM text") key = addr & ~std::uint64_t{4095};
        auto [it, fresh] = found.emplace(std::make_pair(key, static_cast<int>(c.place)), c);
        if (!fresh) it->second.addr = std::min(it->second.addr, addr);
        if (n.secret == "PEM text") pem_hits_[{pid, key}]++;
        it->second.secrets.insert(secret);
    }

public:
    // "PEM text" hits at one location count once, with the number of windows found.
    void finish(Snapshot &snap) {
        for (Copy &c : snap.copies) {
            if (!c.secrets.count("PEM text")) continue;
            const std::uint64_t key = c.block ? c.block : c.addr & ~std::uint64_t{4095};
            const unsigned hits = pem_hits_[{c.pid, key}];
            c.secrets.erase("PEM text");
            c.secrets.insert("PEM text (" + std::to_string(hits) + " windows)");
        }
    }

private:
    const std::vector<Needle> &needles_;
    Matcher matcher_;
    Symbolizer sym_;
    std::map<std::pair<int, std::uint64_t>, unsigned> pem_hits_;
};

// ---- running the program -----------------------------------------------------------------------

std::string dir_of(const std::string &path) {
    const std::size_t slash = path.rfind('/');
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string self_dir() {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? dir_of(std::string(buf, static_cast<std::size_t>(n))) : ".";
}

// The state letter of a /proc stat file (a process's or one thread's), or 0 when it is gone.
char stat_state(const std::string &path) {
    std::ifstream in(path);
    std::string s;
    std::getline(in, s);
    const std::size_t close = s.rfind(')');
    return close == std::string::npos || close + 2 >= s.size() ? 0 : s[close + 2];
}

char proc_state(int pid) { return stat_state("/proc/" + std::to_string(pid) + "/stat"); }

// The processes whose parent (the ppid of /proc/PID/stat) is one of `parents`.
std::vector<int> children_of(const std::vector<int> &parents) {
    std::vector<int> out;
    DIR *d = opendir("/proc");
    if (!d) return out;
    while (const dirent *e = readdir(d)) {
        char *end = nullptr;
        const long pid = std::strtol(e->d_name, &end, 10);
        if (pid <= 0 || *end) continue;
        std::ifstream in(std::string("/proc/") + e->d_name + "/stat");
        std::string stat;
        std::getline(in, stat);
        const std::size_t close = stat.rfind(')');
        char state = 0;
        int ppid = 0;
        if (close == std::string::npos || std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) != 2) continue;
        if (std::find(parents.begin(), parents.end(), ppid) != parents.end()) out.push_back(static_cast<int>(pid));
    }
    closedir(d);
    return out;
}

// Have all threads of pid stopped (a group stop reaches each thread on its own)? A thread
// that has exited meanwhile counts as stopped.
bool all_threads_stopped(int pid) {
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR *d = opendir(dir.c_str());
    if (!d) return false;
    bool all = true;
    while (dirent *e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        const char st = stat_state(dir + "/" + e->d_name + "/stat");
        if (st != 0 && st != 'T' && st != 't' && st != 'Z' && st != 'X') all = false;
    }
    closedir(d);
    return all;
}

// Waits until pid and all its threads are stopped; false when it died or did not stop in time.
bool wait_stopped(int pid) {
    for (int waited = 0; waited < kStopTimeoutMs; waited += 2) {
        const char st = proc_state(pid);
        if ((st == 'T' || st == 't') && all_threads_stopped(pid)) return true;
        if (st == 0 || st == 'Z' || st == 'X') return false;
        ::usleep(2000);
    }
    return false;
}

std::string seconds_text(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g s", s);
    return buf;
}

double now_seconds() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// The bytes of /proc/PID/NAME ("" when it cannot be read).
std::string proc_file(int pid, const char *name) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/" + name, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Why a process of the program sent no trace record.
std::string why_untraced(int pid) {
    for (const Mapping &m : read_maps(pid))
        if (m.path.find(kShimName) != std::string::npos)
            return "the shim is loaded, but its trace socket did not reach it (MEMLOCK_SHIM_TRACE removed, or the "
                   "descriptor closed)";
    if (!mltool::environ_preloads_shim(proc_file(pid, "environ")))
        return "the shim is not loaded: the process that started it removed LD_PRELOAD from its environment";
    std::uint64_t secure = 0;
    if (mltool::auxv_entry(proc_file(pid, "auxv"), AT_SECURE, secure) && secure)
        return "LD_PRELOAD names the shim, but the loader did not load it (secure execution: a set-user-ID or "
               "set-group-ID program, or real and effective user IDs apart at exec)";
    return "LD_PRELOAD names the shim, but the loader did not load it (a wrong path, or a library of another "
           "architecture)";
}

class Session {
public:
    Session(const Options &o, Scanner &scanner) : o_(o), scanner_(scanner) {}

    Snapshot run(const std::string &config_path) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
            die(kExitUnavailable, std::string("socketpair: ") + std::strerror(errno));
        int rcvbuf = 4 << 20;
        ::setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        sock_ = sv[0];
        sigset_t set;
        sigemptyset(&set);
        for (int s : {SIGUSR1, SIGCHLD, SIGINT, SIGTERM}) sigaddset(&set, s);
        sigprocmask(SIG_BLOCK, &set, nullptr);
        const int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
        const std::string run_tool = self_dir() + "/memlock-run";
        // A program that detaches (forks, and its first process exits: gpg-agent --daemon, most
        // daemons by default) is still the program: its orphans become this process's children,
        // so that the session lasts until every process of it has exited, and ending the
        // program reaches them.
        ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        child_ = ::fork();
        if (child_ < 0) die(kExitUnavailable, std::string("fork: ") + std::strerror(errno));
        if (child_ == 0) {
            ::setpgid(0, 0);
            sigprocmask(SIG_UNBLOCK, &set, nullptr);
            const int fd = ::fcntl(sv[1], F_DUPFD, 900);  // high, out of the way of the program's own fds
            ::setenv(mlshim::kTraceEnv, std::to_string(fd).c_str(), 1);
            std::vector<std::string> args = {run_tool, "--config", config_path, "--"};
            args.insert(args.end(), o_.argv.begin(), o_.argv.end());
            std::vector<char *> cargs;
            for (auto &a : args) cargs.push_back(const_cast<char *>(a.c_str()));
            cargs.push_back(nullptr);
            ::execv(run_tool.c_str(), cargs.data());
            std::fprintf(stderr, "memlock-discover: %s: %s\n", run_tool.c_str(), std::strerror(errno));
            ::_exit(kExitUnavailable);
        }
        ::close(sv[1]);
        const double deadline = o_.after > 0 ? now_seconds() + o_.after : 0;
        bool all_done = false;  // no child left: the program and every process it left behind exited
        while (!all_done) {
            int timeout = -1;
            if (deadline > 0 && !snapshot_taken_) timeout = std::max(0, static_cast<int>((deadline - now_seconds()) * 1000) + 1);
            if (ending_) timeout = 200;  // to see the SIGKILL deadline
            pollfd fds[2] = {{sock_, POLLIN, 0}, {sfd, POLLIN, 0}};
            const int rc = ::poll(fds, 2, timeout);
            if (rc < 0 && errno != EINTR) die(kExitUnavailable, std::string("poll: ") + std::strerror(errno));
            if (fds[0].revents & POLLIN) drain(false);
            if (fds[1].revents & POLLIN) {
                signalfd_siginfo si;
                while (::read(sfd, &si, sizeof si) == sizeof si) {
                    if (si.ssi_signo == SIGUSR1 && !snapshot_taken_) snapshot_all("on SIGUSR1");
                    if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM) end_program();
                }
                all_done = reap();
            }
            if (deadline > 0 && !snapshot_taken_ && now_seconds() >= deadline)
                snapshot_all("after " + seconds_text(o_.after));
            if (ending_ && !all_done && now_seconds() > kill_at_) kill_program();  // each tick: new orphans too
        }
        drain(false);
        ::close(sock_);  // from here on a process's exit record fails to send, and it does not stop
        // A descendant that sent its exit record after the last read is stopped: resume it.
        for (const auto &entry : procs_)
            if (proc_state(entry.first) == 'T') ::kill(entry.first, SIGCONT);
        ::close(sfd);
        sigprocmask(SIG_UNBLOCK, &set, nullptr);
        if (!records_)
            die(kExitUnavailable, "no trace came back from " + o_.argv[0] +
                                      ": the shim did not start in it (see the messages above; a static or setuid "
                                      "program cannot be preloaded)");
        scanner_.finish(snap_);
        return std::move(snap_);
    }

    int exit_status() const { return exit_status_; }

private:
    // Reaps every child that has exited (the program's first process keeps its status);
    // true when none is left.
    bool reap() {
        for (;;) {
            int status;
            const pid_t pid = ::waitpid(-1, &status, WNOHANG);
            if (pid == child_) {
                exit_status_ = status;
                child_reaped_ = true;
            }
            if (pid > 0) continue;
            return pid < 0 && errno == ECHILD;
        }
    }

    // Sends sig to every child of this process: the program's first process and the processes
    // of the program whose parent has exited (a daemon that detached), traced or not; with
    // `groups`, to the whole process group of each that leads one (a daemon's workers).
    static void signal_children(int sig, bool groups) {
        for (const pid_t pid : children_of({static_cast<int>(::getpid())})) {
            if (groups && ::getpgid(pid) == pid) ::kill(-pid, sig);
            ::kill(pid, sig);
        }
    }

    // SIGKILL to the program: its first process's group (while that process is not reaped: its
    // ID is then still taken), and every child of this process with its group. What is left
    // of the program becomes this process's children as their parents die, for the next call.
    void kill_program() {
        if (!child_reaped_) ::kill(-child_, SIGKILL);
        signal_children(SIGKILL, true);
    }

    void apply(const mlshim::TraceRecord &r, std::size_t len) {
        ++records_;
        // Records still queued from the image a process ran before it exec'd one without
        // tracing; a start or fork record is a traced image (a new one, or a child whose fork
        // record came after the snapshot sorted it).
        const auto kind = static_cast<mlshim::TraceKind>(r.kind);
        if (untraced_.count(r.pid) && kind != mlshim::TraceKind::start && kind != mlshim::TraceKind::fork) {
            if (kind == mlshim::TraceKind::exit) ::kill(r.pid, SIGCONT);  // it stopped itself for a scan
            return;
        }
        untraced_.erase(r.pid);
        Process &p = procs_[r.pid];
        switch (static_cast<mlshim::TraceKind>(r.kind)) {
        case mlshim::TraceKind::start:
            p = Process();
            p.random_at = r.addr;
            p.random = r.size;
            break;
        case mlshim::TraceKind::fork: {
            Process child = procs_.count(r.parent) ? procs_[r.parent] : Process();
            child.exiting = child.scanned = false;
            for (auto &b : p.live) child.live[b.first] = b.second;  // recorded before the fork record
            p = std::move(child);
            p.random_at = r.addr;
            p.random = r.size;
            break;
        }
        case mlshim::TraceKind::alloc: {
            Block b;
            b.size = r.size;
            const std::size_t n = std::min<std::size_t>(r.nframes, (len - mlshim::kTraceHeaderBytes) / 8);
            b.frames.assign(r.frames, r.frames + n);
            take_overlapping(p.freed, r.addr, r.addr + std::max<std::uint64_t>(r.size, 1), b.prior);
            p.live[r.addr] = std::move(b);
            break;
        }
        case mlshim::TraceKind::free: {
            auto it = p.live.find(r.addr);
            if (it != p.live.end()) {
                p.freed[it->first] = std::move(it->second);
                p.live.erase(it);
            }
            break;
        }
        case mlshim::TraceKind::exit:
            p.exiting = true;
            if (!wait_stopped(r.pid)) break;
            if (!snapshot_taken_ && !p.scanned) {
                drain(true);
                scanner_.scan(r.pid, &procs_[r.pid], "at exit", snap_);
                procs_[r.pid].scanned = true;
            }
            ::kill(r.pid, SIGCONT);
            break;
        }
    }

    // Reads every record queued. nested: from inside an exit record (no further exit handling).
    void drain(bool nested) {
        mlshim::TraceRecord r;
        for (;;) {
            const ssize_t n = ::recv(sock_, &r, sizeof r, MSG_DONTWAIT);
            if (n < static_cast<ssize_t>(mlshim::kTraceHeaderBytes)) break;
            if (nested && static_cast<mlshim::TraceKind>(r.kind) == mlshim::TraceKind::exit) {
                pending_exits_.push_back(r.pid);
                continue;
            }
            apply(r, static_cast<std::size_t>(n));
        }
        if (!nested) {
            std::vector<int> exits;
            exits.swap(pending_exits_);
            for (int pid : exits) {
                mlshim::TraceRecord e{};
                e.kind = static_cast<std::uint32_t>(mlshim::TraceKind::exit);
                e.pid = pid;
                apply(e, mlshim::kTraceHeaderBytes);
            }
        }
    }

    static bool alive(int pid) {
        const char st = proc_state(pid);
        return st != 0 && st != 'Z' && st != 'X';
    }

    // Does pid still run the image whose records it sent? A traced process that exec'd a
    // program without the shim's tracing sends nothing more, and its table is not that image's.
    // Where its auxv or memory cannot be read (it exec'd a set-user-ID program, or another
    // user's), it cannot tell: the table stays.
    bool still_traced(int pid) const {
        const auto it = procs_.find(pid);
        if (it == procs_.end()) return false;
        std::uint64_t at = 0, random = 0;
        if (!mltool::auxv_entry(proc_file(pid, "auxv"), AT_RANDOM, at)) return true;
        const int fd = ::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
        const bool read = fd >= 0 && ::pread(fd, &random, sizeof random, static_cast<off_t>(at)) == sizeof random;
        if (fd >= 0) ::close(fd);
        return !read || (at == it->second.random_at && random == it->second.random);
    }

    // The program's live processes that run no traced image: started with the environment
    // cleaned (postfix's master), in secure-execution mode, or with the trace socket closed.
    std::vector<int> untraced_processes() const {
        std::vector<int> out;
        for (std::vector<int> level = children_of({static_cast<int>(::getpid())}); !level.empty(); level = children_of(level))
            for (int pid : level)
                if (alive(pid) && !still_traced(pid)) out.push_back(pid);
        return out;
    }

    void snapshot_all(const std::string &when) {
        snapshot_taken_ = true;
        drain(true);  // the fork records of children forked just before: traced, not untraced
        const std::vector<int> untraced = untraced_processes();
        for (int pid : untraced) {
            procs_.erase(pid);
            untraced_.insert(pid);
        }
        std::vector<int> stopped;
        for (auto &[pid, p] : procs_)
            if (!p.scanned && !p.exiting && alive(pid) && ::kill(pid, SIGSTOP) == 0) stopped.push_back(pid);
        for (int pid : untraced)
            if (::kill(pid, SIGSTOP) == 0) stopped.push_back(pid);
        std::vector<int> ready;
        for (int pid : stopped)
            if (wait_stopped(pid)) ready.push_back(pid);
        drain(true);
        for (int pid : ready) {
            const bool traced = !untraced_.count(pid);
            if (!scanner_.scan(pid, traced ? &procs_[pid] : nullptr, when, snap_)) continue;
            if (traced) {
                procs_[pid].scanned = true;
            } else {
                snap_.untraced.insert(pid);
                snap_.processes.back() += ", not traced: " + why_untraced(pid);
            }
        }
        for (int pid : stopped) ::kill(pid, SIGCONT);
        end_program();
    }

    void end_program() {
        if (ending_) return;
        ending_ = true;
        signal_children(SIGTERM, false);  // the first process, or the daemons it left
        kill_at_ = now_seconds() + 10;
    }

    const Options &o_;
    Scanner &scanner_;
    Snapshot snap_;
    std::map<int, Process> procs_;
    std::set<int> untraced_;  // processes of the program found running an image that does not trace
    std::vector<int> pending_exits_;
    int sock_ = -1;
    pid_t child_ = -1;
    int exit_status_ = 0;
    bool child_reaped_ = false;
    unsigned long long records_ = 0;
    bool snapshot_taken_ = false;
    bool ending_ = false;
    double kill_at_ = 1e300;
};

// ---- the report ------------------------------------------------------------------------------

struct Counts {
    std::size_t by_place[7] = {};
    std::size_t total = 0;
    std::size_t untraced = 0, untraced_unseen = 0;  // outside the arena, in processes not traced (of which file, anon)
    std::size_t rule_reachable() const { return by_place[int(Place::heap)] + by_place[int(Place::freed)]; }
};

Counts count(const Snapshot &s) {
    Counts c;
    for (const Copy &copy : s.copies) {
        ++c.by_place[static_cast<int>(copy.place)];
        ++c.total;
        if (s.untraced.count(copy.pid) && copy.place != Place::arena) {
            ++c.untraced;
            c.untraced_unseen += copy.place == Place::anon || copy.place == Place::file;
        }
    }
    return c;
}

// Copies of the secrets may lie where no reader reaches: the shim's secretmem backing.
bool unreadable_secretmem(const Snapshot &s) {
    for (const auto &entry : s.unreadable)
        if (entry.first.second.rfind("/secretmem", 0) == 0) return true;
    return false;
}

void print_report(const Snapshot &s, const Counts &c, bool traced) {
    for (const auto &p : s.processes) std::printf("scanned %s\n", p.c_str());
    std::vector<const Copy *> sorted;
    for (const Copy &copy : s.copies) sorted.push_back(&copy);
    std::sort(sorted.begin(), sorted.end(), [](const Copy *a, const Copy *b) {
        return a->pid != b->pid ? a->pid < b->pid : a->place != b->place ? a->place < b->place : a->addr < b->addr;
    });
    for (const Copy *copy : sorted) {
        std::string what;
        for (const auto &x : copy->secrets) what += (what.empty() ? "" : ", ") + x;
        std::printf("  [%s] pid %d 0x%llx: %s: in %s\n", place_tag(copy->place), copy->pid,
                    static_cast<unsigned long long>(copy->addr), what.c_str(), copy->where.c_str());
    }
    const std::size_t outside = c.total - c.by_place[int(Place::arena)];
    std::printf("summary: copies=%zu protected=%zu outside=%zu heap=%zu freed-heap=%zu stack=%zu static=%zu file=%zu anon=%zu\n",
                c.total, c.by_place[int(Place::arena)], outside, c.by_place[int(Place::heap)],
                c.by_place[int(Place::freed)], c.by_place[int(Place::stack)], c.by_place[int(Place::static_data)],
                c.by_place[int(Place::file)], c.by_place[int(Place::anon)]);
    std::printf("  %zu of %zu copies are inside the arena (locked, never dumped); %zu are outside.\n",
                c.by_place[int(Place::arena)], c.total, outside);
    if (c.rule_reachable())
        std::printf("  %zu heap copies (live or freed without a wipe) can be moved into the arena by rules.\n",
                    c.rule_reachable());
    if (const std::size_t stack = c.by_place[int(Place::stack)])
        std::printf("  %zu copies on stacks: no rule moves them; policy.scrub_stack wipes what returned functions "
                    "left there (docs/config.md).\n",
                    stack);
    if (const std::size_t static_data = c.by_place[int(Place::static_data)])
        std::printf("  %zu copies in static data: no rule can reach them (the program keeps them there).\n", static_data);
    if (!traced && c.by_place[int(Place::anon)])
        std::printf("  %zu copies in the heap or other anonymous memory: memlock-discover -- PROGRAM shows which "
                    "allocations hold them and proposes the rules that move them.\n",
                    c.by_place[int(Place::anon)]);
    const std::size_t unseen =
        c.by_place[int(Place::file)] + (traced ? c.by_place[int(Place::anon)] : 0) - c.untraced_unseen;
    if (unseen)
        std::printf("  %zu copies in file-backed or other memory (not heap blocks the shim saw): no rule reaches them.\n",
                    unseen);
    if (c.untraced)
        std::printf("  %zu copies in processes the shim did not trace (\"not traced\" above): no rule reaches them "
                    "until those processes run with the shim.\n",
                    c.untraced);
    if (!c.total && !unreadable_secretmem(s))
        std::printf(traced ? "  no copy of the secrets was found: the program had not loaded them when the snapshot "
                             "was taken (take it later: --after, or SIGUSR1 once it serves), or keeps them elsewhere.\n"
                           : "  no copy of the secrets was found in the processes scanned.\n");
    for (const auto &[where, u] : s.unreadable) {
        const std::string bytes = mltool::human_bytes(u.first);
        if (where.second.rfind("/secretmem", 0) == 0)
            std::printf("note: pid %d: %s of memfd_secret memory (the shim's secretmem backing) cannot be read, by this "
                        "tool or any other process, root included: copies in it are out of every reader's reach and "
                        "never dumped\n",
                        where.first, bytes.c_str());
        else
            std::printf("note: pid %d: %s of %s could not be read (%s): copies there were not searched\n", where.first,
                        bytes.c_str(), where.second.c_str(), std::strerror(u.second));
    }
    for (const auto &m : s.stripped)
        std::printf("note: %s has no local symbols (stripped): its internal functions have no names, so the rules "
                    "name it as a module\n", m.c_str());
}

// ---- proposing rules -------------------------------------------------------------------------

struct Candidate {
    bool by_module = true;
    std::string name;  // module name or function name
    unsigned depth = 1;
    std::uint64_t min_size = 0, max_size = UINT64_MAX;
    std::vector<std::size_t> covers;  // indexes of the targets
    std::uint64_t other_bytes = 0, other_blocks = 0;
};

bool frame_matches(const Candidate &c, const std::vector<Frame> &frames, std::uint64_t size) {
    if (size < c.min_size || size > c.max_size) return false;
    for (unsigned d = 0; d < c.depth && d < frames.size(); ++d)
        if (c.by_module ? frames[d].module == c.name : frames[d].function == c.name) return true;
    return false;
}

std::string glob_escape(const std::string &s) {
    std::string out;
    for (char ch : s) {
        if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\') out += '\\';
        out += ch;
    }
    return out;
}

std::string json_string(const std::string &s) {
    std::string out = "\"";
    for (char ch : s) {
        if (ch == '"' || ch == '\\') out += '\\';
        out += ch;
    }
    return out + "\"";
}

std::uint64_t pow2_floor(std::uint64_t n) { return n ? std::uint64_t{1} << (63 - __builtin_clzll(n)) : 0; }
std::uint64_t pow2_ceil(std::uint64_t n) { return n <= 1 ? 1 : std::uint64_t{1} << (64 - __builtin_clzll(n - 1)); }

void measure(Candidate &c, const Snapshot &s) {
    c.other_bytes = c.other_blocks = 0;
    for (const auto &o : s.others)
        if (frame_matches(c, o.frames, o.size)) {
            c.other_bytes += o.size;
            ++c.other_blocks;
        }
}

// Greedy weighted set cover over the heap copies: a rule costs 1, plus 1 per 64 KiB of other
// live heap it would also move into the arena, plus a little per frame it unwinds.
std::vector<Candidate> propose(const Snapshot &s) {
    std::vector<const Copy *> targets;
    for (const Copy &c : s.copies)
        if ((c.place == Place::heap || c.place == Place::freed) && !c.frames.empty()) targets.push_back(&c);
    std::map<std::tuple<bool, std::string, unsigned>, Candidate> cands;
    auto add_candidates = [&](const std::vector<Frame> &frames) {
        for (unsigned d = 1; d <= kMaxRuleDepth && d <= frames.size(); ++d) {
            const Frame &f = frames[d - 1];
            if (!f.module.empty() && f.module != "?" && f.module[0] != '[')
                cands[{true, f.module, d}] = Candidate{true, f.module, d, 0, UINT64_MAX, {}, 0, 0};
            if (!f.function.empty()) cands[{false, f.function, d}] = Candidate{false, f.function, d, 0, UINT64_MAX, {}, 0, 0};
        }
    };
    for (const Copy *t : targets) add_candidates(t->frames);
    std::vector<Candidate> pool;
    for (auto &entry : cands) {
        Candidate &c = entry.second;
        // Limited to the sizes it covers, with room for keys of other sizes: every allocation of
        // a size no rule names passes straight through, so the limits save each other call the
        // caller lookup (and, deeper than depth 1, the unwind).
        std::uint64_t lo = UINT64_MAX, hi = 0;
        auto widen = [&](std::uint64_t size) {
            lo = std::min(lo, size);
            hi = std::max(hi, size);
        };
        for (std::size_t i = 0; i < targets.size(); ++i) {
            if (!frame_matches(c, targets[i]->frames, targets[i]->block_size)) continue;
            c.covers.push_back(i);
            widen(targets[i]->block_size);
        }
        c.min_size = pow2_floor(lo) / 2;
        c.max_size = pow2_ceil(hi) * 2;
        measure(c, s);
        pool.push_back(c);
    }
    auto cost = [](const Candidate &c) {
        return 1.0 + static_cast<double>(c.other_bytes) / 65536.0 + 0.05 * (c.depth - 1) + (c.by_module ? 0 : 0.01);
    };
    std::vector<bool> covered(targets.size(), false);
    std::vector<Candidate> chosen;
    for (;;) {
        const Candidate *best = nullptr;
        double best_ratio = 0;
        std::size_t best_new = 0;
        for (const Candidate &c : pool) {
            std::size_t fresh = 0;
            for (std::size_t i : c.covers) fresh += !covered[i];
            if (!fresh) continue;
            const double ratio = cost(c) / static_cast<double>(fresh);
            if (!best || ratio < best_ratio) {
                best = &c;
                best_ratio = ratio;
                best_new = fresh;
            }
        }
        if (!best || !best_new) break;
        for (std::size_t i : best->covers) covered[i] = true;
        chosen.push_back(*best);
    }
    return chosen;
}

std::string rule_json(const Candidate &c, unsigned index) {
    std::string j = "{\"name\": \"discovered-" + std::to_string(index) + "\", ";
    j += std::string(c.by_module ? "\"module\": " : "\"symbol\": ") + json_string(glob_escape(c.name));
    j += ", \"depth\": " + std::to_string(c.depth);
    if (c.min_size) j += ", \"min_size\": " + std::to_string(c.min_size);
    if (c.max_size != UINT64_MAX) j += ", \"max_size\": " + std::to_string(c.max_size);
    return j + "}";
}

std::string config_json(const std::vector<Candidate> &rules) {
    std::string j = "{\n  \"version\": 1,\n  \"rules\": [";
    for (std::size_t i = 0; i < rules.size(); ++i) j += std::string(i ? ",\n" : "\n") + "    " + rule_json(rules[i], static_cast<unsigned>(i + 1));
    return j + (rules.empty() ? "]\n}\n" : "\n  ]\n}\n");
}

std::string write_temp(const std::string &text) {
    char path[] = "/tmp/memlock-discover.XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd < 0) die(kExitUnavailable, std::string("mkstemp: ") + std::strerror(errno));
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    if (!ok) die(kExitUnavailable, std::string(path) + ": cannot write");
    return path;
}

// ---- scanning running processes (--pid) --------------------------------------------------------

// Stops pid (unless it is stopped already), scans it, resumes it. The signals that end the
// tool from a terminal are held meanwhile, so that it never leaves the process stopped; no
// file the scan reads can make it wait (open_mapped_file).
void scan_stopped(int pid, Scanner &scanner, Snapshot &snap) {
    const std::string name = "pid " + std::to_string(pid);
    const char st = proc_state(pid);
    if (st == 0) die(kExitUnavailable, name + ": no such process");
    if (st == 'Z' || st == 'X') die(kExitUnavailable, name + ": the process has exited (a zombie): nothing to scan");
    const bool was_stopped = st == 'T' || st == 't';
    sigset_t held, before;
    sigemptyset(&held);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) sigaddset(&held, s);
    sigprocmask(SIG_BLOCK, &held, &before);
    if (!was_stopped && ::kill(pid, SIGSTOP) != 0)
        die(kExitUnavailable, name + ": cannot stop it to read its memory: " + std::strerror(errno) +
                                  " (run as root or as the process's user)");
    const bool stopped = wait_stopped(pid);
    const bool read = stopped && scanner.scan(pid, nullptr, "(running)", snap);
    if (!was_stopped) ::kill(pid, SIGCONT);
    sigprocmask(SIG_SETMASK, &before, nullptr);
    if (!stopped) die(kExitUnavailable, name + ": it did not stop, or exited, within " + seconds_text(kStopTimeoutMs / 1000.0));
    if (!read)
        die(kExitUnavailable, name + ": its memory cannot be read (root, or the process's user where "
                                     "kernel.yama.ptrace_scope allows it, can read it)");
}

// The children of each of pids that pids does not name (a server's workers, a postmaster's
// backends), as " 123 (nginx)" items.
std::string children_left_out(const std::vector<int> &pids) {
    std::string out;
    for (const int pid : children_of(pids))
        if (std::find(pids.begin(), pids.end(), pid) == pids.end())
            out += " " + std::to_string(pid) + " (" + comm_of(pid) + ")";
    return out;
}

// --pid: where the copies of the secrets lie in running processes, by mapping.
int scan_running(const std::vector<int> &pids, const std::vector<Needle> &needles) {
    Scanner scanner(needles);
    Snapshot snap;
    for (int pid : pids) scan_stopped(pid, scanner, snap);
    scanner.finish(snap);
    const Counts counts = count(snap);
    print_report(snap, counts, false);
    if (const std::string left = children_left_out(pids); !left.empty())
        std::printf("note: not scanned, children of the processes given (add --pid for each):%s\n", left.c_str());
    const std::size_t outside = counts.total - counts.by_place[int(Place::arena)];
    std::printf("running: %zu copies outside protected memory%s\n", outside,
                outside ? "" : counts.total ? ": every copy found is locked and never dumped" : " (no copy found)");
    return outside ? kExitCopiesLeft : 0;
}

}  // namespace

int main(int argc, char **argv) {
    mltool::g_tool = "memlock-discover";
    const Options o = parse_args(argc, argv);
    std::vector<Needle> needles;
    for (const auto &k : o.keys) std::printf("looking for %s\n", load_key(k, needles).c_str());
    for (std::size_t i = 0; i < o.secret_hex.size(); ++i) {
        needles.push_back({"hex#" + std::to_string(i + 1), "", parse_hex(o.secret_hex[i], i + 1)});
        std::printf("looking for hex#%zu: %zu bytes\n", i + 1, needles.back().bytes.size());
    }
    if (!o.pids.empty()) return scan_running(o.pids, needles);
    std::string config_path;
    std::string temp_config;
    if (o.verify) {
        mlshim::Config config;
        std::string error;
        if (!mlshim::load_config_file(o.config, config, error)) die(mltool::kExitConfig, error);
        char resolved[PATH_MAX];
        config_path = ::realpath(o.config.c_str(), resolved) ? resolved : o.config;
        std::printf("verifying %s (%zu rules)\n", config_path.c_str(), config.rules.size());
    } else {
        temp_config = config_path = write_temp("{\"version\": 1, \"rules\": []}\n");
    }
    std::fflush(stdout);

    Scanner scanner(needles);
    Session session(o, scanner);
    const Snapshot snap = session.run(config_path);
    if (!temp_config.empty()) ::unlink(temp_config.c_str());
    const Counts counts = count(snap);
    print_report(snap, counts, true);
    const bool nothing = !counts.total && !unreadable_secretmem(snap);
    if (o.verify) {
        const bool left = counts.rule_reachable() + counts.untraced > 0;
        std::printf("verify: %zu heap copies left outside the arena%s%s\n", counts.rule_reachable(),
                    counts.untraced ? (", and " + std::to_string(counts.untraced) + " in processes not traced").c_str() : "",
                    left ? "" : nothing ? " (no copy found at all: nothing was verified)" : ": every heap copy is protected");
        return left ? kExitCopiesLeft : nothing ? kExitIncomplete : 0;
    }
    const std::vector<Candidate> rules = propose(snap);
    if (rules.empty()) {
        std::printf("proposed rules: none%s\n", nothing          ? " (no copy found)"
                                               : counts.untraced ? " for the traced processes (no heap copy outside the arena there)"
                                                                 : " needed (no heap copy outside the arena)");
    } else {
        std::printf("proposed rules (%zu):\n", rules.size());
        for (std::size_t i = 0; i < rules.size(); ++i)
            std::printf("  %s\n    covers %zu heap copies; would also move %llu other live blocks (%s) into the arena\n",
                        rule_json(rules[i], static_cast<unsigned>(i + 1)).c_str(), rules[i].covers.size(),
                        static_cast<unsigned long long>(rules[i].other_blocks), mltool::human_bytes(rules[i].other_bytes).c_str());
    }
    const std::string json = config_json(rules);
    mlshim::Config parsed;
    std::string error;
    if (!mlshim::parse_config(json, "proposed config", parsed, error)) die(mltool::kExitConfig, "internal error: " + error);
    if (!o.config_out.empty()) {
        std::ofstream out(o.config_out);
        out << json;
        if (!out.flush()) die(kExitUnavailable, o.config_out + ": cannot write: " + std::strerror(errno));
        std::printf("wrote %s; check it with: memlock-discover --verify --config %s -- %s ...\n", o.config_out.c_str(),
                    o.config_out.c_str(), o.argv[0].c_str());
    }
    return nothing || counts.untraced ? kExitIncomplete : 0;
}
