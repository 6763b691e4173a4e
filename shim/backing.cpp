#include "backing.hpp"

#include <sys/mman.h>

#include <cerrno>

#include "memlock.h"

namespace mlshim {

int backing_lock(bool secret, void *start, std::size_t len) noexcept {
    return secret ? memlock_secret_map(start, len) : memlock_lock_onfault(start, len);
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

int backing_grow_locked(void *end, std::size_t len, std::size_t page) noexcept {
    int saved = errno;
    void *last = static_cast<unsigned char *>(end) - page;
    void *p = ::mremap(last, page, page + len, 0);
    int rc = p == MAP_FAILED ? errno : 0;
    errno = saved;
    return rc;
}

bool backing_secret_missing(int err) noexcept {
    return err == ENOSYS || err == MEMLOCK_ESECRET_DISABLED || err == MEMLOCK_EUNSUPPORTED;
}

int backing_unshare(void *start, std::size_t len, std::size_t rw_len, bool anonymous) noexcept {
    int rc = memlock_secret_unshare(start, len, rw_len, anonymous ? 1 : 0);
    if (!rc && anonymous) memlock_dontdump(start, len);
    return rc;
}

}  // namespace mlshim
