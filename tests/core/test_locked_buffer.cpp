// test_locked_buffer.cpp - memlock::LockedBuffer: zero-filled, lo+dd on its own pages, move
// semantics, wipe before unlock, and the two failure policies.
#include <criterion/criterion.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "core_test.hpp"
#include "helpers.hpp"
#include "memlock.hpp"

using core_test::g_fake;
using memlock::LockedBuffer;
using memlock::LockPolicy;
using memlock_test::find_mapping;
using memlock_test::range_has_flag;
using memlock_test::vm_locked_kb;

namespace {

std::size_t pages_for(std::size_t n) {
    const std::size_t page = memlock_page_size();
    return (n + page - 1) / page * page;
}

bool mapped(const void *p) { return find_mapping(p).has_value(); }

// Fake munlock for the wipe test: records whether the whole buffer read as zero at the moment
// of unlocking, then unlocks for real.
const unsigned char *g_watch = nullptr;
std::size_t g_watch_len = 0;
int g_unlock_calls = 0;
bool g_zero_at_unlock = false;

int watching_munlock(const void *addr, std::size_t len) {
    ++g_unlock_calls;
    g_zero_at_unlock = addr == g_watch && len >= g_watch_len;
    for (std::size_t i = 0; g_zero_at_unlock && i < g_watch_len; ++i)
        if (g_watch[i] != 0) g_zero_at_unlock = false;
    return core_test::real_syscalls().munlock(addr, len);
}

}  // namespace

Test(locked_buffer, zero_filled_locked_dontdump_on_its_own_pages) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    const std::size_t n = 10000;
    const long before = vm_locked_kb();
    std::error_code ec = std::make_error_code(std::errc::io_error);  // must be cleared
    LockedBuffer b = LockedBuffer::create(n, ec);
    cr_assert(!ec, "create: %s", ec.message().c_str());
    cr_assert(!b.empty());
    cr_assert_eq(b.size(), n);
    cr_assert_eq(reinterpret_cast<std::uintptr_t>(b.data()) % memlock_page_size(), 0u, "not page-aligned");
    for (std::size_t i = 0; i < pages_for(n); ++i) cr_assert_eq(b.data()[i], 0, "byte %zu not zero", i);
    cr_assert(b.locked());
    cr_assert(b.dontdump());
    cr_assert(!b.lock_error());
    cr_assert(!b.dontdump_error());

    cr_assert(range_has_flag(b.data(), pages_for(n), "lo"), "pages not locked");
    cr_assert(range_has_flag(b.data(), pages_for(n), "dd"), "pages not dontdump");
    cr_assert_geq(vm_locked_kb() - before, static_cast<long>(pages_for(n) / 1024));
    // Its own mapping: nothing else shares its pages.
    auto m = find_mapping(b.data());
    cr_assert(m.has_value());
    cr_assert_eq(m->start, reinterpret_cast<std::uintptr_t>(b.data()));
    cr_assert_eq(m->end - m->start, pages_for(n));

    std::memset(b.data(), 0x5A, n);
    unsigned char *p = b.data();
    b.reset();
    cr_assert(b.empty());
    cr_assert_eq(b.size(), 0u);
    cr_assert(!b.locked());
    cr_assert(!mapped(p), "still mapped after reset");
    cr_assert_eq(vm_locked_kb(), before, "VmLck did not shrink back");
}

Test(locked_buffer, destructor_releases) {
    const long before = vm_locked_kb();
    unsigned char *p = nullptr;
    {
        std::error_code ec;
        LockedBuffer b = LockedBuffer::create(3 * memlock_page_size(), ec);
        cr_assert(!ec);
        p = b.data();
        cr_assert(mapped(p));
    }
    cr_assert(!mapped(p));
    cr_assert_eq(vm_locked_kb(), before);
}

Test(locked_buffer, move_construct_and_move_assign) {
    std::error_code ec;
    LockedBuffer a = LockedBuffer::create(100, ec);
    cr_assert(!ec);
    unsigned char *pa = a.data();
    a.data()[0] = 42;

    LockedBuffer b(std::move(a));
    cr_assert(a.empty());  // NOLINT(bugprone-use-after-move): the moved-from state is the contract
    cr_assert_eq(a.size(), 0u);
    cr_assert(!a.locked());
    cr_assert_eq(b.data(), pa);
    cr_assert_eq(b.size(), 100u);
    cr_assert(b.locked());
    cr_assert(b.dontdump());
    cr_assert_eq(b.data()[0], 42);
    cr_assert(range_has_flag(pa, memlock_page_size(), "lo"), "move unlocked the pages");

    LockedBuffer c = LockedBuffer::create(200, ec);
    cr_assert(!ec);
    unsigned char *pc = c.data();
    c = std::move(b);
    cr_assert(!mapped(pc), "move-assign leaked the target's old pages");
    cr_assert_eq(c.data(), pa);
    cr_assert_eq(c.size(), 100u);
    cr_assert(c.locked());
    cr_assert(b.empty());  // NOLINT(bugprone-use-after-move)
    cr_assert(mapped(pa));

    LockedBuffer d;  // default: empty
    cr_assert(d.empty());
    d = std::move(c);
    cr_assert_eq(d.data(), pa);
    d.reset();
    cr_assert(!mapped(pa));
}

Test(locked_buffer, wipe_happens_before_unlock, .fini = core_test::restore_syscalls) {
    memlock_syscalls t{};
    memlock_get_syscalls(&t);
    t.munlock = watching_munlock;
    memlock_set_syscalls(&t);

    std::error_code ec;
    LockedBuffer b = LockedBuffer::create(2 * memlock_page_size() + 5, ec);
    cr_assert(!ec);
    cr_assert(b.locked());
    std::memset(b.data(), 0xAA, b.size());
    g_watch = b.data();
    g_watch_len = pages_for(b.size());
    b.reset();
    cr_assert_eq(g_unlock_calls, 1, "munlock called %d times", g_unlock_calls);
    cr_assert(g_zero_at_unlock, "memory was not wiped before munlock");
}

Test(locked_buffer, require_fails_with_the_injected_lock_error_and_leaves_nothing_mapped,
     .fini = core_test::restore_syscalls) {
    const int errs[] = {ENOMEM, EPERM, EAGAIN};
    for (int e : errs) {
        core_test::install_fakes(e);
        // madvise must succeed for real so that mlock is reached.
        memlock_syscalls t{};
        memlock_get_syscalls(&t);
        t.madvise = nullptr;
        memlock_set_syscalls(&t);

        std::error_code ec;
        LockedBuffer b = LockedBuffer::create(5000, ec, LockPolicy::require);
        cr_assert_eq(ec, std::error_code(e, std::system_category()), "injected %d, got %d", e, ec.value());
        cr_assert(b.empty());
        cr_assert_null(b.data());
        cr_assert_eq(g_fake.mlock_calls, 1);
        cr_assert_not_null(g_fake.last_addr);
        cr_assert(!mapped(g_fake.last_addr), "failed create left its pages mapped");
    }
}

Test(locked_buffer, require_fails_when_dontdump_fails, .fini = core_test::restore_syscalls) {
    core_test::install_fakes(EINVAL);
    std::error_code ec;
    LockedBuffer b = LockedBuffer::create(10, ec);  // default policy: require
    cr_assert_eq(ec, std::error_code(EINVAL, std::system_category()));
    cr_assert(b.empty());
    cr_assert_eq(g_fake.madvise_calls, 1);
    cr_assert_eq(g_fake.mlock_calls, 0, "mlock attempted after dontdump failed");
    cr_assert(!mapped(g_fake.last_addr));
}

Test(locked_buffer, best_effort_gives_a_usable_unlocked_buffer, .fini = core_test::restore_syscalls) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    core_test::install_fakes(ENOMEM);
    memlock_syscalls t{};
    memlock_get_syscalls(&t);
    t.madvise = nullptr;  // real dontdump
    memlock_set_syscalls(&t);

    std::error_code ec;
    LockedBuffer b = LockedBuffer::create(5000, ec, LockPolicy::best_effort);
    cr_assert(!ec, "best_effort failed: %s", ec.message().c_str());
    cr_assert(!b.empty());
    cr_assert(!b.locked());
    cr_assert_eq(b.lock_error(), std::error_code(ENOMEM, std::system_category()));
    cr_assert(b.dontdump());
    cr_assert(!b.dontdump_error());
    std::memset(b.data(), 0x11, b.size());
    cr_assert_eq(b.data()[4999], 0x11);
    cr_assert(range_has_flag(b.data(), pages_for(5000), "dd"));
    cr_assert(range_has_flag(b.data(), pages_for(5000), "lo", false));

    unsigned char *p = b.data();
    b.reset();
    cr_assert_eq(g_fake.munlock_calls, 0, "unlocked a buffer that was never locked");
    cr_assert(!mapped(p));
}

Test(locked_buffer, best_effort_survives_a_failed_dontdump, .fini = core_test::restore_syscalls) {
    core_test::install_fakes(ENOSYS);
    memlock_syscalls t{};
    memlock_get_syscalls(&t);
    t.mlock = nullptr;  // real mlock
    t.munlock = nullptr;
    memlock_set_syscalls(&t);

    std::error_code ec;
    LockedBuffer b = LockedBuffer::create(100, ec, LockPolicy::best_effort);
    cr_assert(!ec);
    cr_assert(!b.dontdump());
    cr_assert_eq(b.dontdump_error(), std::error_code(ENOSYS, std::system_category()));
    cr_assert(b.locked());
    cr_assert(range_has_flag(b.data(), memlock_page_size(), "lo"));
    cr_assert(range_has_flag(b.data(), memlock_page_size(), "dd", false));
}

Test(locked_buffer, invalid_sizes_fail_under_both_policies) {
    for (LockPolicy pol : {LockPolicy::require, LockPolicy::best_effort}) {
        std::error_code ec;
        LockedBuffer z = LockedBuffer::create(0, ec, pol);
        cr_assert(ec == std::errc::invalid_argument);
        cr_assert(z.empty());
        LockedBuffer huge = LockedBuffer::create(SIZE_MAX - 10, ec, pol);
        cr_assert(ec == std::errc::not_enough_memory, "got %d", ec.value());
        cr_assert(huge.empty());
    }
}
