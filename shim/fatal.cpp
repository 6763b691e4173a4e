#include "fatal.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mlshim {

namespace {

LogLevel g_level = LogLevel::warn;
int g_fd = STDERR_FILENO;

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

void log_configure(LogLevel level, int fd) noexcept {
    g_level = level;
    g_fd = fd;
}

bool log_enabled(LogLevel level) noexcept { return level <= g_level; }

void log_msg(LogLevel level, const char *fmt, ...) noexcept {
    if (!log_enabled(level)) return;
    int saved = errno;
    char buf[1024];
    int head = std::snprintf(buf, sizeof buf, "memlock-shim: %s: ", level_name(level));
    va_list ap;
    va_start(ap, fmt);
    int body = std::vsnprintf(buf + head, sizeof buf - static_cast<std::size_t>(head) - 1, fmt, ap);
    va_end(ap);
    std::size_t len = static_cast<std::size_t>(head);
    if (body > 0) len += std::min(static_cast<std::size_t>(body), sizeof buf - len - 2);
    buf[len++] = '\n';
    write_all(g_fd, buf, len);
    errno = saved;
}

}  // namespace mlshim
