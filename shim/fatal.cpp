#include "fatal.hpp"

#include <signal.h>
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
// The files log.file's descriptor and stderr named at start-up (g_fd != STDERR_FILENO).
struct FileId {
    bool known = false;
    dev_t dev = 0;
    ino_t ino = 0;
};
FileId g_log_file, g_stderr_file;

FileId file_id(int fd) noexcept {
    struct stat st;
    FileId id;
    if (::fstat(fd, &st) == 0) id = {true, st.st_dev, st.st_ino};
    return id;
}

// Does fd still name the file `id` names? A seccomp sandbox that refuses fstat (sshd's preauth
// child answers EACCES) makes it "no".
bool still_names(int fd, const FileId &id) noexcept {
    const FileId now = file_id(fd);
    return id.known && now.known && now.dev == id.dev && now.ino == id.ino;
}
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

bool write_all(int fd, const char *buf, std::size_t len) noexcept {
    while (len > 0) {
        ssize_t n = ::write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        buf += n;
        len -= static_cast<std::size_t>(n);
    }
    return true;
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
    CancelOff no_cancel;
    write_all(STDERR_FILENO, buf, used);
    std::abort();
}

bool write_unkilled(int fd, const char *buf, std::size_t len) noexcept {
    CancelOff no_cancel;
    sigset_t xfsz, old, pending;
    sigemptyset(&xfsz);
    sigaddset(&xfsz, SIGXFSZ);
    if (::sigprocmask(SIG_BLOCK, &xfsz, &old) != 0) return write_all(fd, buf, len);
    // One the program left pending (it blocks the signal) is the program's: not taken.
    const bool programs = sigismember(&old, SIGXFSZ) && ::sigpending(&pending) == 0 && sigismember(&pending, SIGXFSZ);
    const bool written = write_all(fd, buf, len);
    if (!written && errno == EFBIG && !programs) {
        const struct timespec now = {0, 0};
        ::sigtimedwait(&xfsz, nullptr, &now);
    }
    ::sigprocmask(SIG_SETMASK, &old, nullptr);
    return written;
}

bool file_size_allows(std::uint64_t size) noexcept {
    struct rlimit rl;
    return ::getrlimit(RLIMIT_FSIZE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || size <= rl.rlim_cur;
}

void log_configure(LogLevel level, int fd) noexcept {
    g_level = level;
    g_fd = fd;
    if (fd == STDERR_FILENO) return;
    g_log_file = file_id(fd);
    g_stderr_file = file_id(STDERR_FILENO);
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
    if (g_fd == STDERR_FILENO) write_unkilled(STDERR_FILENO, buf, len);
    else if (!(still_names(g_fd, g_log_file) && write_unkilled(g_fd, buf, len)) &&
             still_names(STDERR_FILENO, g_stderr_file))
        write_unkilled(STDERR_FILENO, buf, len);
    errno = saved;
}

}  // namespace mlshim
