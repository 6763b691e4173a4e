#include "backing.hpp"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "memlock.h"

namespace mlshim {

int backing_lock(bool secret, void *start, std::size_t len) noexcept {
    return secret ? memlock_secret_map(start, len) : backing_relock(start, len, true);
}

namespace {
// The program's mlockall and munlockall calls: how many began, and how many began and have not
// returned (a fork child inherits a count from a call in another thread that never returns
// there: its refusals are asked again, to no effect, 8 times).
std::atomic<unsigned> g_lockall_begun{0}, g_lockall_open{0};
}  // namespace

void backing_lockall_begin() noexcept {
    g_lockall_open.fetch_add(1);
    g_lockall_begun.fetch_add(1);
}

void backing_lockall_end() noexcept { g_lockall_open.fetch_sub(1); }

int backing_relock(void *start, std::size_t len, bool on_fault) noexcept {
    for (int tries = 1;; ++tries) {
        // Read before the call: one whose flags could land inside it either is open now or
        // begins after this.
        const unsigned begun = g_lockall_begun.load(), open = g_lockall_open.load();
        const int err = on_fault ? memlock_lock_onfault(start, len) : memlock_lock(start, len);
        if (err != ENOMEM || tries == 8 || (!open && !g_lockall_open.load() && g_lockall_begun.load() == begun)) return err;
    }
}

int backing_map_locked(void *start, std::size_t len) noexcept {
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
    int saved = errno;
    // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and take start as a hint.
    void *p = ::mmap(start, len, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE | MAP_LOCKED, -1, 0);
    int rc = p == MAP_FAILED ? errno : 0;
    if (!rc && p != start) {
        ::munmap(p, len);
        rc = EEXIST;
    }
    errno = saved;
    return rc;
}

int backing_map_locked_anywhere(std::size_t len, void **out) noexcept {
    int saved = errno;
    void *p = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_LOCKED, -1, 0);
    int rc = p == MAP_FAILED ? errno : 0;
    if (!rc) *out = p;
    errno = saved;
    return rc;
}

int backing_grow_locked(void *end, std::size_t len, std::size_t page) noexcept {
    int saved = errno;
    void *last = static_cast<unsigned char *>(end) - page;
    void *p = ::mremap(last, page, page + len, 0);
    int rc = p == MAP_FAILED ? errno : 0;
    // The new range has the last page's protection too: read-write when that page is
    // committed. Made inaccessible, it is committed as the arena commits (a read-write range
    // advised huge pages would fault in 2 MiB at its first touch, locked, uncounted).
    if (!rc) ::mprotect(end, len, PROT_NONE);
    errno = saved;
    return rc;
}

void *backing_map_wiped_on_fork(std::size_t len) noexcept {
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
    const int saved = errno;
    void *p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    // An madvise that accepts an advice no kernel has (qemu-user answers 0 to every advice)
    // cannot be trusted to have wiped anything.
    if (p != MAP_FAILED && (::madvise(p, len, -1) == 0 || ::madvise(p, len, MADV_WIPEONFORK) != 0)) {
        ::munmap(p, len);
        p = MAP_FAILED;
    }
    errno = saved;
    return p == MAP_FAILED ? nullptr : p;
}

std::size_t backing_lock_limit() noexcept {
    rlimit rl;
    if (::getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return SIZE_MAX;
    __user_cap_header_struct head{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct caps[2]{};
    if (::syscall(SYS_capget, &head, caps) != 0 || (caps[CAP_IPC_LOCK / 32].effective >> (CAP_IPC_LOCK % 32) & 1))
        return SIZE_MAX;
    return rl.rlim_cur;
}

bool backing_secret_missing(int err) noexcept {
    return err == ENOSYS || err == MEMLOCK_ESECRET_DISABLED || err == MEMLOCK_EUNSUPPORTED;
}

namespace {

// The first line of a small file, NUL-terminated, into buf (no malloc). False when it cannot be read.
bool read_line(const char *path, char *buf, std::size_t size) noexcept {
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n;
    do n = ::read(fd, buf, size - 1);
    while (n < 0 && errno == EINTR);
    ::close(fd);
    if (n <= 0) return false;
    buf[n] = '\0';
    if (char *nl = std::strchr(buf, '\n')) *nl = '\0';
    return true;
}

int advise(void *start, std::size_t len, int advice) noexcept {
    int saved = errno;
    int rc = ::madvise(start, len, advice) == 0 ? 0 : errno;
    errno = saved;
    return rc;
}

}  // namespace

std::size_t backing_huge_page_size() noexcept {
    int saved = errno;
    char mode[128], size[32];
    std::size_t huge = 0;
    // "always [madvise] never": the brackets mark the mode in force.
    if (read_line("/sys/kernel/mm/transparent_hugepage/enabled", mode, sizeof mode) &&
        (std::strstr(mode, "[always]") || std::strstr(mode, "[madvise]")) &&
        read_line("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", size, sizeof size))
        huge = std::strtoull(size, nullptr, 10);
    errno = saved;
    return huge;
}

bool backing_overcommit_guessed() noexcept {
    int saved = errno;
    char mode[16];
    const bool guessed = !read_line("/proc/sys/vm/overcommit_memory", mode, sizeof mode) || std::strcmp(mode, "0") == 0;
    errno = saved;
    return guessed;
}

int backing_advise_huge(void *start, std::size_t len) noexcept { return advise(start, len, MADV_HUGEPAGE); }

int backing_advise_small(void *start, std::size_t len) noexcept { return advise(start, len, MADV_NOHUGEPAGE); }

int backing_collapse(void *start, std::size_t len) noexcept {
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
    return advise(start, len, MADV_COLLAPSE);
}

int backing_unshare(void *start, std::size_t len, std::size_t rw_len, bool anonymous) noexcept {
    int rc = memlock_secret_unshare(start, len, rw_len, anonymous ? 1 : 0);
    if (!rc && anonymous) memlock_dontdump(start, len);
    return rc;
}

}  // namespace mlshim
