// procmaps.hpp - the lines of /proc/self/maps (or another process's), read without malloc.
#ifndef MEMLOCK_SHIM_PROCMAPS_HPP
#define MEMLOCK_SHIM_PROCMAPS_HPP

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace mlshim {

// Calls f(start, end, line) for each mapping of the process (`maps`: its /proc/PID/maps), in
// address order, until f returns false; `line` is the whole line ("start-end perms offset dev
// inode path"), NUL-terminated. False when the file cannot be read, or holds a line longer
// than 8 KiB.
template <class F> bool each_mapping(F &&f, const char *maps = "/proc/self/maps") noexcept {
    int fd = ::open(maps, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char buf[8192];
    std::size_t have = 0;
    bool done = false, ok = true;
    while (!done) {
        ssize_t n = ::read(fd, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) ok = false;
        if (n <= 0) break;
        have += static_cast<std::size_t>(n);
        std::size_t pos = 0;
        while (!done) {
            auto *nl = static_cast<char *>(std::memchr(buf + pos, '\n', have - pos));
            if (!nl) break;
            *nl = '\0';
            char *end = nullptr;
            std::uintptr_t start = std::strtoull(buf + pos, &end, 16);
            std::uintptr_t stop = *end == '-' ? std::strtoull(end + 1, nullptr, 16) : start;
            done = !f(start, stop, static_cast<const char *>(buf + pos));
            pos = static_cast<std::size_t>(nl - buf) + 1;
        }
        if (pos == 0 && have == sizeof buf) {  // a line longer than the buffer: not /proc's
            ok = false;
            break;
        }
        std::memmove(buf, buf + pos, have - pos);
        have -= pos;
    }
    ::close(fd);
    return ok;
}

}  // namespace mlshim

#endif
