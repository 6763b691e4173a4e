// memlock_lock_onfault and memlock_resident: lock as touched, and ask what is resident.
#include <criterion/criterion.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core_test.hpp"
#include "helpers.hpp"
#include "memlock.h"

using core_test::g_fake;

namespace {

struct Region {
    void *p = nullptr;
    std::size_t len = 0;
    explicit Region(std::size_t pages) : len(pages * memlock_page_size()) {
        cr_assert_eq(memlock_reserve(len, &p), 0);
        cr_assert_eq(memlock_commit(p, len), 0);
    }
    ~Region() { memlock_release(p, len); }
    unsigned char *bytes() const { return static_cast<unsigned char *>(p); }
};

std::vector<unsigned char> residency(const Region &r) {
    std::vector<unsigned char> vec(r.len / memlock_page_size());
    cr_assert_eq(memlock_resident(r.p, r.len, vec.data()), 0);
    return vec;
}

}  // namespace

Test(onfault, locks_the_range_but_populates_only_what_is_touched) {
    SKIP_UNDER_QEMU_USER("MLOCK_ONFAULT is not passed through");
    Region r(16);
    cr_assert_eq(memlock_lock_onfault(r.p, r.len), 0);
    cr_assert(memlock_test::range_has_flag(r.p, r.len, "lo"), "the whole range is locked");
    for (unsigned char v : residency(r)) cr_assert_eq(v & 1, 0, "nothing populated yet");
    r.bytes()[3 * memlock_page_size()] = 1;
    std::vector<unsigned char> after = residency(r);
    cr_assert_eq(after[3] & 1, 1, "the touched page is resident");
    cr_assert_eq(after[4] & 1, 0);
    auto m = memlock_test::find_mapping(r.p);
    cr_assert(m.has_value());
    cr_assert_eq(m->locked_kb, memlock_page_size() / 1024, "only the touched page counts as Locked");
    cr_assert_eq(memlock_unlock(r.p, r.len), 0);
}

Test(onfault, zero_length_makes_no_call, .fini = core_test::restore_syscalls) {
    core_test::install_fakes(EPERM);
    cr_assert_eq(memlock_lock_onfault(nullptr, 0), 0);
    cr_assert_eq(memlock_resident(nullptr, 0, nullptr), 0);
    cr_assert_eq(g_fake.mlock2_calls + g_fake.mlock_calls, 0);
}

Test(onfault, errors_come_back_unchanged, .fini = core_test::restore_syscalls) {
    int dummy = 0;
    for (int e : {ENOMEM, EPERM, EAGAIN}) {
        core_test::install_fakes(e);
        cr_assert_eq(memlock_lock_onfault(&dummy, 1), e);
        cr_assert_eq(g_fake.mlock2_calls, 1);
        cr_assert_eq(g_fake.mlock_calls, 0, "no fallback for a real failure");
        cr_assert_eq(g_fake.last_flags, 1u, "MLOCK_ONFAULT");
    }
}

Test(onfault, a_kernel_without_mlock2_is_reported_not_papered_over, .fini = core_test::restore_syscalls) {
    int dummy = 0;
    for (int e : {ENOSYS, EINVAL}) {
        core_test::install_fakes(e);
        // No silent mlock instead: it would populate the whole range (or fail on pages not
        // committed yet); the caller decides what to lock.
        cr_assert_eq(memlock_lock_onfault(&dummy, 1), e);
        cr_assert_eq(g_fake.mlock2_calls, 1);
        cr_assert_eq(g_fake.mlock_calls, 0, "no mlock after %d", e);
    }
}

Test(onfault, resident_rejects_an_unaligned_start) {
    Region r(2);
    unsigned char vec[2];
    cr_assert_eq(memlock_resident(r.bytes() + 1, 16, vec), EINVAL);
}
