// memlock.hpp - the C++ API of memlock-shim's core library.
//
// What it promises
//   - memlock::lock / unlock / dontdump / dodump (and their *_pages forms) behave exactly as
//     the C functions in memlock.h, reporting through std::error_code: an OS failure is
//     {errno, std::system_category()}, a missing platform call is memlock::errc::unsupported
//     in memlock::category(). Nothing throws, nothing prints.
//   - memlock::LockedBuffer owns page-aligned memory of its own (never shared with other
//     data), marked MADV_DONTDUMP and mlocked on creation. It is wiped, in a way the compiler
//     cannot remove, before it is unlocked and released. Move-only.
//   - memlock::CoreDumpGuard sets RLIMIT_CORE to 0 for its lifetime and restores the
//     previous limit afterwards.
//
// LockedBuffer failure policy (LockPolicy)
//   - require (default): creation fails, returning the error of the failed call
//     (mlock: ENOMEM at RLIMIT_MEMLOCK, EPERM, EAGAIN; madvise; or unsupported). Nothing is
//     left mapped.
//   - best_effort: a failed or unsupported lock or dontdump still yields a usable buffer;
//     locked() / dontdump() say what took and lock_error() / dontdump_error() say why not.
//   Mapping failures (ENOMEM from mmap) fail creation under either policy, and so does
//   size == 0 (EINVAL). Order on creation: map, MADV_DONTDUMP, mlock (as libsodium).
//   memlock::category() has name "memlock"; errc::unsupported is equivalent to
//   std::errc::not_supported.
#ifndef MEMLOCK_HPP
#define MEMLOCK_HPP

#include <cstddef>
#include <system_error>

#include "memlock.h"

namespace memlock {

enum class errc { unsupported = 1 };

MEMLOCK_API const std::error_category &category() noexcept;
MEMLOCK_API std::error_code make_error_code(errc e) noexcept;

// Converts a value returned by the C API (0, errno, MEMLOCK_EUNSUPPORTED) to an error_code.
MEMLOCK_API std::error_code to_error_code(int rc) noexcept;

MEMLOCK_API std::error_code lock(void *addr, std::size_t len) noexcept;
MEMLOCK_API std::error_code unlock(void *addr, std::size_t len) noexcept;
MEMLOCK_API std::error_code dontdump(void *addr, std::size_t len) noexcept;
MEMLOCK_API std::error_code dodump(void *addr, std::size_t len) noexcept;

MEMLOCK_API std::error_code lock_pages(void *addr, std::size_t len) noexcept;
MEMLOCK_API std::error_code unlock_pages(void *addr, std::size_t len) noexcept;
MEMLOCK_API std::error_code dontdump_pages(void *addr, std::size_t len) noexcept;
MEMLOCK_API std::error_code dodump_pages(void *addr, std::size_t len) noexcept;

enum class LockPolicy { require, best_effort };

class MEMLOCK_API LockedBuffer {
public:
    // Creates a buffer of `size` bytes (size > 0), zero-filled. On failure returns an empty
    // buffer (data() == nullptr) and sets ec; on success clears ec.
    static LockedBuffer create(std::size_t size, std::error_code &ec,
                               LockPolicy policy = LockPolicy::require) noexcept;

    LockedBuffer() noexcept = default;
    LockedBuffer(LockedBuffer &&other) noexcept;
    LockedBuffer &operator=(LockedBuffer &&other) noexcept;
    LockedBuffer(const LockedBuffer &) = delete;
    LockedBuffer &operator=(const LockedBuffer &) = delete;
    ~LockedBuffer();

    unsigned char *data() noexcept { return data_; }
    const unsigned char *data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return data_ == nullptr; }

    bool locked() const noexcept { return locked_; }
    bool dontdump() const noexcept { return dontdump_; }
    std::error_code lock_error() const noexcept { return lock_error_; }
    std::error_code dontdump_error() const noexcept { return dontdump_error_; }

    // Wipes all mapped bytes, then unlocks, then unmaps (the MADV_DONTDUMP mark goes with
    // the mapping); the buffer becomes empty. The destructor does the same.
    void reset() noexcept;

private:
    unsigned char *data_ = nullptr;
    std::size_t size_ = 0;      // bytes requested
    std::size_t mapped_ = 0;    // bytes mapped (whole pages)
    bool locked_ = false;
    bool dontdump_ = false;
    std::error_code lock_error_;
    std::error_code dontdump_error_;
};

class MEMLOCK_API CoreDumpGuard {
public:
    // Lowers the soft RLIMIT_CORE to 0 (memlock_disable_core_dumps). active() tells whether
    // it did; error() why not. The destructor restores the previous limit if active().
    CoreDumpGuard() noexcept;
    ~CoreDumpGuard();
    CoreDumpGuard(const CoreDumpGuard &) = delete;
    CoreDumpGuard &operator=(const CoreDumpGuard &) = delete;

    bool active() const noexcept { return active_; }
    std::error_code error() const noexcept { return error_; }

private:
    memlock_core_limit saved_{};
    bool active_ = false;
    std::error_code error_;
};

}  // namespace memlock

namespace std {
template <> struct is_error_code_enum<memlock::errc> : true_type {};
}  // namespace std

#endif  // MEMLOCK_HPP
