// tool.hpp - what the operators' tools (memlock-run, memlock-inspect) share: one way to
// report an error and exit, warnings, and byte counts written for people.
//
// Messages go to stderr, every line prefixed with "<tool>: ", and say what to do next.
#ifndef MEMLOCK_TOOLS_TOOL_HPP
#define MEMLOCK_TOOLS_TOOL_HPP

#include <cstdint>
#include <cstdio>
#include <cstdlib>
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

}  // namespace mltool

#endif  // MEMLOCK_TOOLS_TOOL_HPP
