// memlock_cxx.cpp - the C++ API of memlock.hpp, built on the C ABI in memlock.cpp.
//
// No heap here either: LockedBuffer maps its own pages, error codes are plain values.
#include "memlock.hpp"

#include <cerrno>
#include <cstdint>
#include <string>

namespace memlock {
namespace {

class Category final : public std::error_category {
public:
    constexpr Category() noexcept = default;
    const char *name() const noexcept override { return "memlock"; }
    std::string message(int ev) const override {
        return ev == static_cast<int>(errc::unsupported) ? "operation not supported on this platform"
                                                         : "unknown memlock error";
    }
    std::error_condition default_error_condition(int ev) const noexcept override {
        if (ev == static_cast<int>(errc::unsupported)) return std::errc::not_supported;
        return std::error_condition(ev, *this);
    }
};

// Constant-initialised: no guard, no allocation, usable from any constructor.
const Category g_category;

}  // namespace

const std::error_category &category() noexcept { return g_category; }

std::error_code make_error_code(errc e) noexcept {
    return std::error_code(static_cast<int>(e), g_category);
}

std::error_code to_error_code(int rc) noexcept {
    if (rc == 0) return std::error_code();
    if (rc == MEMLOCK_EUNSUPPORTED) return make_error_code(errc::unsupported);
    return std::error_code(rc, std::system_category());
}

std::error_code lock(void *addr, std::size_t len) noexcept { return to_error_code(memlock_lock(addr, len)); }
std::error_code unlock(void *addr, std::size_t len) noexcept {
    return to_error_code(memlock_unlock(addr, len));
}
std::error_code dontdump(void *addr, std::size_t len) noexcept {
    return to_error_code(memlock_dontdump(addr, len));
}
std::error_code dodump(void *addr, std::size_t len) noexcept {
    return to_error_code(memlock_dodump(addr, len));
}
std::error_code lock_pages(void *addr, std::size_t len) noexcept {
    return to_error_code(memlock_lock_pages(addr, len));
}
std::error_code unlock_pages(void *addr, std::size_t len) noexcept {
    return to_error_code(memlock_unlock_pages(addr, len));
}
std::error_code dontdump_pages(void *addr, std::size_t len) noexcept {
    return to_error_code(memlock_dontdump_pages(addr, len));
}
std::error_code dodump_pages(void *addr, std::size_t len) noexcept {
    return to_error_code(memlock_dodump_pages(addr, len));
}

// ---- LockedBuffer -------------------------------------------------------------------------

LockedBuffer LockedBuffer::create(std::size_t size, std::error_code &ec, LockPolicy policy) noexcept {
    LockedBuffer buf;
    ec.clear();
    if (size == 0) {
        ec = std::make_error_code(std::errc::invalid_argument);
        return buf;
    }
    const std::size_t page = memlock_page_size();
    if (size > SIZE_MAX - (page - 1)) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return buf;
    }
    const std::size_t mapped = (size + page - 1) & ~(page - 1);

    void *p = nullptr;
    if (int rc = memlock_reserve(mapped, &p); rc != 0) {
        ec = to_error_code(rc);
        return buf;
    }
    if (int rc = memlock_commit(p, mapped); rc != 0) {
        memlock_release(p, mapped);
        ec = to_error_code(rc);
        return buf;
    }
    // Fresh anonymous pages are zero: nothing to clear.
    buf.data_ = static_cast<unsigned char *>(p);
    buf.size_ = size;
    buf.mapped_ = mapped;

    // DONTDUMP first, then mlock (libsodium's order): the mark is on before any secret exists.
    buf.dontdump_error_ = to_error_code(memlock_dontdump(p, mapped));
    buf.dontdump_ = !buf.dontdump_error_;
    if (buf.dontdump_error_ && policy == LockPolicy::require) {
        ec = buf.dontdump_error_;
        buf.reset();
        return LockedBuffer();
    }
    buf.lock_error_ = to_error_code(memlock_lock(p, mapped));
    buf.locked_ = !buf.lock_error_;
    if (buf.lock_error_ && policy == LockPolicy::require) {
        ec = buf.lock_error_;
        buf.reset();
        return LockedBuffer();
    }
    return buf;
}

LockedBuffer::LockedBuffer(LockedBuffer &&other) noexcept
    : data_(other.data_),
      size_(other.size_),
      mapped_(other.mapped_),
      locked_(other.locked_),
      dontdump_(other.dontdump_),
      lock_error_(other.lock_error_),
      dontdump_error_(other.dontdump_error_) {
    other.data_ = nullptr;
    other.size_ = other.mapped_ = 0;
    other.locked_ = other.dontdump_ = false;
    other.lock_error_.clear();
    other.dontdump_error_.clear();
}

LockedBuffer &LockedBuffer::operator=(LockedBuffer &&other) noexcept {
    if (this != &other) {
        reset();
        data_ = other.data_;
        size_ = other.size_;
        mapped_ = other.mapped_;
        locked_ = other.locked_;
        dontdump_ = other.dontdump_;
        lock_error_ = other.lock_error_;
        dontdump_error_ = other.dontdump_error_;
        other.data_ = nullptr;
        other.size_ = other.mapped_ = 0;
        other.locked_ = other.dontdump_ = false;
        other.lock_error_.clear();
        other.dontdump_error_.clear();
    }
    return *this;
}

LockedBuffer::~LockedBuffer() { reset(); }

void LockedBuffer::reset() noexcept {
    if (data_ != nullptr) {
        memlock_wipe(data_, mapped_);  // always before unlock: never let a secret reach swap
        if (locked_) memlock_unlock(data_, mapped_);
        memlock_release(data_, mapped_);  // drops MADV_DONTDUMP with the pages
    }
    data_ = nullptr;
    size_ = mapped_ = 0;
    locked_ = dontdump_ = false;
    lock_error_.clear();
    dontdump_error_.clear();
}

// ---- CoreDumpGuard ------------------------------------------------------------------------

CoreDumpGuard::CoreDumpGuard() noexcept {
    error_ = to_error_code(memlock_disable_core_dumps(&saved_));
    active_ = !error_;
}

CoreDumpGuard::~CoreDumpGuard() {
    if (active_) memlock_restore_core_dumps(&saved_);
}

}  // namespace memlock
