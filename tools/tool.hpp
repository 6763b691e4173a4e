// tool.hpp - what the operators' tools (memlock-run, memlock-inspect, memlock-discover) share:
// one way to report an error and exit, warnings, byte counts written for people, strings a
// process chose made valid UTF-8 or printable, what a process's environment and auxiliary
// vector say, and which loader an executable names (musl programs cannot be shimmed).
//
// Messages go to stderr, every line prefixed with "<tool>: ", and say what to do next.
#ifndef MEMLOCK_TOOLS_TOOL_HPP
#define MEMLOCK_TOOLS_TOOL_HPP

#include <elf.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace mltool {

// Set by main() before anything is reported.
inline const char *g_tool = "memlock";
inline bool g_quiet = false;  // suppresses warn(), never errors

// Exit statuses shared by the tools (sysexits.h names).
constexpr int kExitUsage = 64;   // EX_USAGE
constexpr int kExitConfig = 78;  // EX_CONFIG

// Writes every line of `text` as "<tool>: <line>".
inline void say(const std::string &text) {
    std::size_t from = 0;
    do {
        const std::size_t to = text.find('\n', from);
        const std::string line = text.substr(from, to == std::string::npos ? std::string::npos : to - from);
        std::fprintf(stderr, "%s: %s\n", g_tool, line.c_str());
        from = to == std::string::npos ? to : to + 1;
    } while (from != std::string::npos);
}

inline void warn(const std::string &text) {
    if (!g_quiet) say(text);
}

// The one error exit: prints the message (each line prefixed) and exits with `status`.
[[noreturn]] inline void die(int status, const std::string &text) {
    say(text);
    std::fflush(stdout);
    std::exit(status);
}

// A usage error: the message, a pointer to --help, exit 64.
[[noreturn]] inline void usage_error(const std::string &text) {
    die(kExitUsage, text + " (see " + g_tool + " --help)");
}

// 65536 -> "64 KiB", 1536 -> "1.5 KiB", 100 -> "100 B".
inline std::string human_bytes(std::uint64_t n) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    unsigned u = 0;
    std::uint64_t scale = 1;
    while (u < 4 && n >= scale * 1024) {
        scale *= 1024;
        ++u;
    }
    char buf[48];
    if (n % scale == 0)
        std::snprintf(buf, sizeof buf, "%llu %s", static_cast<unsigned long long>(n / scale), units[u]);
    else
        std::snprintf(buf, sizeof buf, "%.1f %s", static_cast<double>(n) / static_cast<double>(scale), units[u]);
    return buf;
}

// The UTF-8 sequence at s[at] (pre: at < s.size()), as RFC 3629 defines UTF-8. For a
// well-formed character: its length, and valid is true. Otherwise valid is false and the
// length is that of the longest start of a well-formed sequence there (Unicode's "maximal
// subpart", at least 1): a byte that starts none, an overlong form, a surrogate, a code point
// past U+10FFFF, a sequence cut short.
inline std::size_t utf8_sequence(const std::string &s, std::size_t at, bool &valid) {
    const unsigned char c = static_cast<unsigned char>(s[at]);
    std::size_t n = 0;                   // 0: c starts no sequence
    unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte
    if (c < 0x80) n = 1;
    else if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c == 0xe0) n = 3, lo = 0xa0;
    else if (c == 0xed) n = 3, hi = 0x9f;
    else if (c >= 0xe1 && c <= 0xef) n = 3;
    else if (c == 0xf0) n = 4, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3) n = 4;
    else if (c == 0xf4) n = 4, hi = 0x8f;
    std::size_t len = 1;
    for (; len < n && at + len < s.size(); ++len) {
        const unsigned char b = static_cast<unsigned char>(s[at + len]);
        if (b < (len == 1 ? lo : 0x80) || b > (len == 1 ? hi : 0xbf)) break;
    }
    valid = n > 0 && len == n;
    return len;
}

// s with each ill-formed UTF-8 sequence (utf8_sequence) replaced by U+FFFD.
inline std::string valid_utf8(const std::string &s) {
    std::string out;
    bool valid;
    for (std::size_t at = 0, n; at < s.size(); at += n) {
        n = utf8_sequence(s, at, valid);
        if (valid) out.append(s, at, n);
        else out += "\xef\xbf\xbd";
    }
    return out;
}

// s as the tools print what a process chose (its path, its rule names): control characters,
// DEL and backslashes written as \xNN, as the shim's log lines have them (shim/fatal.hpp,
// escape_into), and so every byte of an ill-formed UTF-8 sequence and of a C1 control character
// (U+0080 to U+009F, which terminals may obey). The result is one line a terminal only shows.
inline std::string printable(const std::string &s) {
    std::string out;
    bool valid;
    for (std::size_t at = 0, n; at < s.size(); at += n) {
        n = utf8_sequence(s, at, valid);
        const unsigned char c = static_cast<unsigned char>(s[at]);
        const bool shown = valid && (n == 1 ? c >= 0x20 && c != 0x7f && c != '\\'
                                            : c != 0xc2 || static_cast<unsigned char>(s[at + 1]) >= 0xa0);
        if (shown) {
            out.append(s, at, n);
            continue;
        }
        for (std::size_t i = 0; i < n; ++i) {
            char hex[5];
            std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(s[at + i]));
            out += hex;
        }
    }
    return out;
}

// The dynamic loader an ELF64 little-endian executable names (its first PT_INTERP, as the
// kernel reads it: 2 to 4096 bytes ending in a NUL), or "" (none, malformed, not such a file,
// unreadable).
inline std::string elf_interpreter(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    Elf64_Ehdr h{};
    if (!in.read(reinterpret_cast<char *>(&h), sizeof h) || std::memcmp(h.e_ident, ELFMAG, SELFMAG) != 0 ||
        h.e_ident[EI_CLASS] != ELFCLASS64 || h.e_ident[EI_DATA] != ELFDATA2LSB || h.e_phentsize != sizeof(Elf64_Phdr))
        return "";
    for (unsigned i = 0; i < h.e_phnum; ++i) {
        Elf64_Phdr ph{};
        in.seekg(static_cast<std::streamoff>(h.e_phoff + i * sizeof ph));
        if (!in.read(reinterpret_cast<char *>(&ph), sizeof ph)) return "";
        if (ph.p_type != PT_INTERP) continue;
        if (ph.p_filesz < 2 || ph.p_filesz > 4096) return "";
        std::string interp(ph.p_filesz, '\0');
        in.seekg(static_cast<std::streamoff>(ph.p_offset));
        if (!in.read(&interp[0], static_cast<std::streamsize>(interp.size())) || interp.back() != '\0') return "";
        return std::string(interp.c_str());
    }
    return "";
}

// Does an environment as /proc/PID/environ holds it (NUL-separated) have LD_PRELOAD naming the
// shim?
inline bool environ_preloads_shim(const std::string &environ) {
    for (std::size_t at = 0; at < environ.size();) {
        std::size_t end = environ.find('\0', at);
        if (end == std::string::npos) end = environ.size();
        if (environ.compare(at, 11, "LD_PRELOAD=") == 0 &&
            environ.substr(at, end - at).find("libmemlock_shim.so") != std::string::npos)
            return true;
        at = end + 1;
    }
    return false;
}

// Entry `type` (AT_SECURE, AT_RANDOM, ...) of an auxiliary vector as /proc/PID/auxv holds it;
// false when it has none.
inline bool auxv_entry(const std::string &auxv, std::uint64_t type, std::uint64_t &value) {
    std::uint64_t pair[2];
    for (std::size_t at = 0; at + sizeof pair <= auxv.size(); at += sizeof pair) {
        std::memcpy(pair, auxv.data() + at, sizeof pair);
        if (pair[0] == AT_NULL) break;
        if (pair[0] == type) return value = pair[1], true;
    }
    return false;
}

// musl's dynamic loader (/lib/ld-musl-ARCH.so.1) cannot load the glibc-built shim: the
// program would fail to start with relocation errors.
inline bool is_musl_loader(const std::string &interp) {
    const auto slash = interp.rfind('/');
    return interp.compare(slash == std::string::npos ? 0 : slash + 1, 7, "ld-musl") == 0;
}

}  // namespace mltool

#endif  // MEMLOCK_TOOLS_TOOL_HPP
