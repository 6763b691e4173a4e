// test_seam.cpp - the system-call seam: zero length makes no call, every injected error comes
// back unchanged (an int in C, system_category in C++), arguments pass through or are rounded,
// and the table can be read back and restored.
#include <criterion/criterion.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "core_test.hpp"
#include "helpers.hpp"
#include "memlock.hpp"

using core_test::g_fake;
using core_test::install_fakes;
using core_test::restore_syscalls;

namespace {

using CFn = int (*)(void *, std::size_t);
using CxxFn = std::error_code (*)(void *, std::size_t) noexcept;

enum class Sys { mlock, munlock, madvise };

struct Op {
    const char *name;
    CFn c;
    CxxFn cxx;
    Sys sys;
    int advice;   // for madvise
    bool pages;   // rounds to pages
};

const Op kOps[] = {
    {"lock", memlock_lock, memlock::lock, Sys::mlock, -1, false},
    {"unlock", memlock_unlock, memlock::unlock, Sys::munlock, -1, false},
    {"dontdump", memlock_dontdump, memlock::dontdump, Sys::madvise, MADV_DONTDUMP, false},
    {"dodump", memlock_dodump, memlock::dodump, Sys::madvise, MADV_DODUMP, false},
    {"lock_pages", memlock_lock_pages, memlock::lock_pages, Sys::mlock, -1, true},
    {"unlock_pages", memlock_unlock_pages, memlock::unlock_pages, Sys::munlock, -1, true},
    {"dontdump_pages", memlock_dontdump_pages, memlock::dontdump_pages, Sys::madvise, MADV_DONTDUMP, true},
    {"dodump_pages", memlock_dodump_pages, memlock::dodump_pages, Sys::madvise, MADV_DODUMP, true},
};

int calls_of(Sys s) {
    switch (s) {
    case Sys::mlock: return g_fake.mlock_calls;
    case Sys::munlock: return g_fake.munlock_calls;
    case Sys::madvise: return g_fake.madvise_calls;
    }
    return -1;
}

int total_calls() {
    return g_fake.mlock_calls + g_fake.munlock_calls + g_fake.madvise_calls + g_fake.mlock2_calls;
}

void fakes_ok() { install_fakes(0); }

}  // namespace

TestSuite(seam, .init = fakes_ok, .fini = restore_syscalls);

Test(seam, zero_length_makes_no_call_in_c_and_cxx) {
    int dummy = 0;
    for (const Op &op : kOps) {
        cr_assert_eq(op.c(nullptr, 0), 0, "%s(NULL, 0)", op.name);
        cr_assert_eq(op.c(&dummy, 0), 0, "%s(p, 0)", op.name);
        cr_assert(!op.cxx(&dummy, 0), "C++ %s(p, 0)", op.name);
    }
    cr_assert_eq(total_calls(), 0, "zero length made %d calls", total_calls());

    // The fakes are wired: a non-zero length reaches them, once per function.
    for (const Op &op : kOps) {
        const int before = calls_of(op.sys);
        cr_assert_eq(op.c(&dummy, 1), 0, "%s", op.name);
        cr_assert_eq(calls_of(op.sys), before + 1, "%s did not call its system call", op.name);
    }
    cr_assert_eq(total_calls(), 8);
}

Test(seam, zero_length_makes_no_call_even_when_calls_fail) {
    g_fake.result = EPERM;
    int dummy = 0;
    for (const Op &op : kOps) cr_assert_eq(op.c(&dummy, 0), 0, "%s", op.name);
    cr_assert_eq(total_calls(), 0);
}

Test(seam, thin_wrappers_pass_address_and_length_through) {
    auto *odd = reinterpret_cast<void *>(0x10001);  // never dereferenced by the fakes
    for (const Op &op : kOps) {
        if (op.pages) continue;
        g_fake.last_advice = -1;
        cr_assert_eq(op.c(odd, 3), 0);
        cr_assert_eq(g_fake.last_addr, odd, "%s changed the address", op.name);
        cr_assert_eq(g_fake.last_len, 3u, "%s changed the length", op.name);
        cr_assert_eq(g_fake.last_advice, op.advice, "%s advice %d", op.name, g_fake.last_advice);
    }
}

Test(seam, pages_helpers_round_out_to_whole_pages) {
    const std::uintptr_t page = memlock_page_size();
    // [page*5 + 10, page*7 + 1) -> [page*5, page*8)
    auto *p = reinterpret_cast<void *>(page * 5 + 10);
    const std::size_t len = 2 * page - 9;
    for (const Op &op : kOps) {
        if (!op.pages) continue;
        cr_assert_eq(op.c(p, len), 0);
        cr_assert_eq(reinterpret_cast<std::uintptr_t>(g_fake.last_addr), page * 5, "%s start", op.name);
        cr_assert_eq(g_fake.last_len, 3 * page, "%s length %zu", op.name, g_fake.last_len);
        if (op.sys == Sys::madvise) cr_assert_eq(g_fake.last_advice, op.advice);
    }
    // Already aligned: unchanged.
    auto *a = reinterpret_cast<void *>(page * 9);
    cr_assert_eq(memlock_lock_pages(a, page), 0);
    cr_assert_eq(g_fake.last_addr, a);
    cr_assert_eq(g_fake.last_len, page);
}

Test(seam, every_injected_error_comes_back_unchanged_in_c_and_cxx) {
    const int errs[] = {ENOMEM, EPERM, EAGAIN, EINVAL, ENOSYS};
    int dummy = 0;
    for (int e : errs) {
        for (const Op &op : kOps) {
            install_fakes(e);
            errno = 777;
            const int rc = op.c(&dummy, 1);
            cr_assert_eq(rc, e, "%s: injected %d, got %d", op.name, e, rc);
            cr_assert_eq(calls_of(op.sys), 1, "%s: wrong system call", op.name);
            cr_assert_eq(errno, 777, "%s changed errno", op.name);

            const std::error_code ec = op.cxx(&dummy, 1);
            cr_assert_eq(ec.value(), e, "C++ %s: injected %d, got %d", op.name, e, ec.value());
            cr_assert(ec.category() == std::system_category(), "C++ %s: category %s", op.name,
                      ec.category().name());
            cr_assert(ec == std::error_condition(static_cast<std::errc>(e)), "C++ %s: condition", op.name);
        }
    }
}

Test(seam, get_returns_the_table_in_force_and_null_restores_the_real_calls) {
    memlock_syscalls now{};
    memlock_get_syscalls(&now);
    cr_assert_neq(now.mlock, core_test::real_syscalls().mlock, "fakes not in force");
    cr_assert_neq(now.madvise, core_test::real_syscalls().madvise);

    memlock_set_syscalls(nullptr);
    memlock_get_syscalls(&now);
    cr_assert_eq(now.mlock, core_test::real_syscalls().mlock);
    cr_assert_eq(now.munlock, core_test::real_syscalls().munlock);
    cr_assert_eq(now.madvise, core_test::real_syscalls().madvise);
    cr_assert_not_null(now.mlock);

    // Restored means real: a real page gets locked.
    const std::size_t page = memlock_page_size();
    void *p = nullptr;
    cr_assert_eq(memlock_reserve(page, &p), 0);
    cr_assert_eq(memlock_commit(p, page), 0);
    cr_assert_eq(memlock_lock(p, page), 0);
    cr_assert(memlock_test::range_has_flag(p, page, "lo"));
    cr_assert_eq(total_calls(), 0, "a fake was called after restore");
    memlock_unlock(p, page);
    memlock_release(p, page);
}

Test(seam, null_members_select_the_real_call) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    memlock_syscalls partial{};
    memlock_get_syscalls(&partial);  // fakes
    partial.munlock = nullptr;
    partial.madvise = nullptr;
    memlock_set_syscalls(&partial);
    g_fake.result = EPERM;

    const std::size_t page = memlock_page_size();
    void *p = nullptr;
    cr_assert_eq(memlock_reserve(page, &p), 0);
    cr_assert_eq(memlock_commit(p, page), 0);
    cr_assert_eq(memlock_lock(p, page), EPERM, "mlock fake not kept");
    cr_assert_eq(memlock_dontdump(p, page), 0, "madvise not real");
    cr_assert(memlock_test::range_has_flag(p, page, "dd"));
    cr_assert_eq(memlock_unlock(p, page), 0);
    cr_assert_eq(g_fake.mlock_calls, 1);
    cr_assert_eq(g_fake.munlock_calls + g_fake.madvise_calls, 0);
    memlock_release(p, page);
}

Test(seam, forwarding_fake_reaches_the_real_kernel) {
    g_fake.forward = true;
    const std::size_t page = memlock_page_size();
    void *p = nullptr;
    cr_assert_eq(memlock_reserve(page, &p), 0);
    cr_assert_eq(memlock_commit(p, page), 0);
    cr_assert_eq(memlock_lock(p, page), 0);
    cr_assert_eq(g_fake.mlock_calls, 1);
    cr_assert(memlock_test::range_has_flag(p, page, "lo"));
    memlock_release(p, page);
}

// ---- error_code mapping (unsupported cannot be injected: it is decided at compile time) ----

Test(errors, unsupported_maps_to_the_memlock_category) {
    const std::error_code ec = memlock::make_error_code(memlock::errc::unsupported);
    cr_assert_str_eq(ec.category().name(), "memlock");
    cr_assert(ec.category() == memlock::category());
    cr_assert_eq(ec.value(), 1);
    cr_assert(ec == std::errc::not_supported, "not equivalent to errc::not_supported");
    cr_assert(ec != std::errc::not_enough_memory);
    cr_assert(!ec.message().empty());

    cr_assert(memlock::to_error_code(MEMLOCK_EUNSUPPORTED) == memlock::errc::unsupported);
    const std::error_code implicit = memlock::errc::unsupported;  // is_error_code_enum
    cr_assert(implicit == ec);
    cr_assert(std::error_code(ENOTSUP, std::system_category()) != ec);
}

Test(errors, to_error_code_maps_zero_and_errno) {
    cr_assert(!memlock::to_error_code(0));
    const std::error_code e = memlock::to_error_code(ENOMEM);
    cr_assert_eq(e.value(), ENOMEM);
    cr_assert(e.category() == std::system_category());
    cr_assert(e == std::errc::not_enough_memory);
    cr_assert(memlock::to_error_code(EPERM) == std::errc::operation_not_permitted);
}
