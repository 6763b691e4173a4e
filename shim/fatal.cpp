#include "fatal.hpp"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mlshim {

namespace {

LogLevel g_level = LogLevel::warn;
int g_fd = STDERR_FILENO;
dev_t g_log_dev = 0;  // log.file's identity (g_fd != STDERR_FILENO)
ino_t g_log_ino = 0;
char g_program[64];  // log_set_program; empty: program_invocation_short_name

const char *level_name(LogLevel level) noexcept {
    switch (level) {
    case LogLevel::error: return "error";
    case LogLevel::warn: return "warning";
    case LogLevel::info: return "info";
    case LogLevel::debug: return "debug";
    }
    return "?";
}

// Appends s to buf at *used, never past cap.
void append(char *buf, std::size_t cap, std::size_t *used, const char *s) noexcept {
    while (*s && *used < cap) buf[(*used)++] = *s++;
}

void append_hex(char *buf, std::size_t cap, std::size_t *used, std::uintptr_t v) noexcept {
    char tmp[2 + 2 * sizeof v + 1];
    char *end = tmp + sizeof tmp - 1;
    char *q = end;
    *q = '\0';
    do {
        *--q = "0123456789abcdef"[v & 0xf];
        v >>= 4;
    } while (v);
    *--q = 'x';
    *--q = '0';
    append(buf, cap, used, q);
}

void write_all(int fd, const char *buf, std::size_t len) noexcept {
    while (len > 0) {
        ssize_t n = ::write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        buf += n;
        len -= static_cast<std::size_t>(n);
    }
}

// Can a line of `len` bytes go to log.file? A seccomp sandbox that refuses fstat (sshd's
// preauth child: EACCES) sends the line to stderr too; the limit is read only for a
// descriptor known to be the file.
bool log_file_takes(std::size_t len) noexcept {
    struct stat st;
    return ::fstat(g_fd, &st) == 0 && st.st_dev == g_log_dev && st.st_ino == g_log_ino &&
           file_size_allows(static_cast<std::uint64_t>(st.st_size) + len);
}

}  // namespace

void fatal(const char *what, const char *detail, const void *pointer) noexcept {
    char buf[512];
    std::size_t used = 0;
    append(buf, sizeof buf - 1, &used, "memlock-shim: fatal: ");
    append(buf, sizeof buf - 1, &used, what);
    if (detail) {
        append(buf, sizeof buf - 1, &used, ": ");
        append(buf, sizeof buf - 1, &used, detail);
    }
    if (pointer) {
        append(buf, sizeof buf - 1, &used, " ");
        append_hex(buf, sizeof buf - 1, &used, reinterpret_cast<std::uintptr_t>(pointer));
    }
    buf[used++] = '\n';
    write_all(STDERR_FILENO, buf, used);
    std::abort();
}

bool file_size_allows(std::uint64_t size) noexcept {
    struct rlimit rl;
    return ::getrlimit(RLIMIT_FSIZE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || size <= rl.rlim_cur;
}

void log_configure(LogLevel level, int fd) noexcept {
    g_level = level;
    g_fd = fd;
    struct stat st;
    if (fd != STDERR_FILENO && ::fstat(fd, &st) == 0) {
        g_log_dev = st.st_dev;
        g_log_ino = st.st_ino;
    }
}

bool log_enabled(LogLevel level) noexcept { return level <= g_level; }

void log_set_program(const char *name) noexcept {
    std::size_t n = name ? std::strlen(name) : 0;
    n = std::min(n, sizeof g_program - 1);
    std::memcpy(g_program, name ? name : "", n);
    g_program[n] = '\0';
}

std::size_t escape_into(char *out, std::size_t cap, const char *in, std::size_t len) noexcept {
    std::size_t used = 0;
    for (std::size_t i = 0; i < len; ++i) {
        const unsigned char c = static_cast<unsigned char>(in[i]);
        if (c >= 0x20 && c != 0x7f && c != '\\') {
            if (used + 1 > cap) break;
            out[used++] = static_cast<char>(c);
        } else {
            if (used + 4 > cap) break;
            out[used++] = '\\';
            out[used++] = 'x';
            out[used++] = "0123456789abcdef"[c >> 4];
            out[used++] = "0123456789abcdef"[c & 0xf];
        }
    }
    return used;
}

void log_msg(LogLevel level, const char *fmt, ...) noexcept {
    if (!log_enabled(level)) return;
    int saved = errno;
    char body[768];
    va_list ap;
    va_start(ap, fmt);
    int n = std::vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    std::size_t body_len = n < 0 ? 0 : std::min(static_cast<std::size_t>(n), sizeof body - 1);
    char buf[1024];
    std::size_t len = static_cast<std::size_t>(
        std::snprintf(buf, sizeof buf, "memlock-shim: %s: ", level_name(level)));
    len += escape_into(buf + len, sizeof buf - len - 96, body, body_len);
    len += static_cast<std::size_t>(std::snprintf(buf + len, 32, " (program "));
    const char *prog = g_program[0] ? g_program : program_invocation_short_name ? program_invocation_short_name : "?";
    len += escape_into(buf + len, 48, prog, std::strlen(prog));
    len += static_cast<std::size_t>(std::snprintf(buf + len, 24, ", pid %d)", static_cast<int>(::getpid())));
    buf[len++] = '\n';
    write_all(g_fd != STDERR_FILENO && log_file_takes(len) ? g_fd : STDERR_FILENO, buf, len);
    errno = saved;
}

}  // namespace mlshim
