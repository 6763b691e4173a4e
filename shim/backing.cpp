#include "backing.hpp"

#include <cerrno>

#include "memlock.h"

namespace mlshim {

int backing_lock(bool secret, void *start, std::size_t len) noexcept {
    return secret ? memlock_secret_map(start, len) : memlock_lock_onfault(start, len);
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
