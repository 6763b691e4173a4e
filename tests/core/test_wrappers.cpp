// test_wrappers.cpp - the C and C++ wrappers against the real kernel, proven from outside the
// call: /proc/self/smaps (Locked, VmFlags lo/dd) and /proc/self/status (VmLck).
#include <criterion/criterion.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "helpers.hpp"
#include "memlock.hpp"

using memlock_test::find_mapping;
using memlock_test::range_has_flag;
using memlock_test::vm_locked_kb;

namespace {

constexpr std::size_t kPages = 64;  // 256 KiB with 4 KiB pages: clearly visible in VmLck

// A fresh read-write anonymous mapping of `pages` pages, owned by the test.
struct Region {
    explicit Region(std::size_t pages) : len(pages * memlock_page_size()) {
        void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        cr_assert_neq(p, MAP_FAILED, "mmap: %s", std::strerror(errno));
        data = static_cast<unsigned char *>(p);
    }
    ~Region() { munmap(data, len); }
    unsigned char *data = nullptr;
    std::size_t len;
};

}  // namespace

Test(wrappers, page_size_is_the_kernel_page_size) {
    cr_assert_eq(memlock_page_size(), static_cast<std::size_t>(sysconf(_SC_PAGESIZE)));
    cr_assert_eq(memlock_page_size(), memlock_page_size());  // cached value agrees
}

Test(wrappers, lock_shows_lo_and_vmlck_grows_then_unlock_shrinks_it) {
    Region r(kPages);
    const long before = vm_locked_kb();
    cr_assert_geq(before, 0, "VmLck unreadable");
    cr_assert(range_has_flag(r.data, r.len, "lo", false), "fresh mapping already locked");

    cr_assert_eq(memlock_lock(r.data, r.len), 0);
    const long locked = vm_locked_kb();
    cr_assert_geq(locked - before, static_cast<long>(r.len / 1024), "VmLck %ld -> %ld", before, locked);
    cr_assert(range_has_flag(r.data, r.len, "lo"), "no lo flag after memlock_lock");
    auto m = find_mapping(r.data);
    cr_assert(m.has_value());
    cr_assert_geq(m->locked_kb, r.len / 1024, "smaps Locked: %zu kB", m->locked_kb);

    cr_assert_eq(memlock_unlock(r.data, r.len), 0);
    cr_assert_eq(vm_locked_kb(), before, "VmLck did not shrink back");
    cr_assert(range_has_flag(r.data, r.len, "lo", false), "lo flag left after unlock");
}

Test(wrappers, cxx_lock_and_unlock_act_like_c) {
    Region r(kPages);
    const long before = vm_locked_kb();
    std::error_code ec = memlock::lock(r.data, r.len);
    cr_assert(!ec, "lock: %s", ec.message().c_str());
    cr_assert_geq(vm_locked_kb() - before, static_cast<long>(r.len / 1024));
    cr_assert(range_has_flag(r.data, r.len, "lo"));
    ec = memlock::unlock(r.data, r.len);
    cr_assert(!ec);
    cr_assert_eq(vm_locked_kb(), before);
}

Test(wrappers, dontdump_shows_dd_and_dodump_removes_it) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    Region r(4);
    cr_assert(range_has_flag(r.data, r.len, "dd", false));
    cr_assert_eq(memlock_dontdump(r.data, r.len), 0);
    cr_assert(range_has_flag(r.data, r.len, "dd"), "no dd after memlock_dontdump");
    cr_assert_eq(memlock_dodump(r.data, r.len), 0);
    cr_assert(range_has_flag(r.data, r.len, "dd", false), "dd left after memlock_dodump");

    cr_assert(!memlock::dontdump(r.data, r.len));
    cr_assert(range_has_flag(r.data, r.len, "dd"));
    cr_assert(!memlock::dodump(r.data, r.len));
    cr_assert(range_has_flag(r.data, r.len, "dd", false));
}

Test(wrappers, dontdump_marks_only_the_given_pages) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    Region r(4);
    const std::size_t page = memlock_page_size();
    cr_assert_eq(memlock_dontdump(r.data + page, page), 0);
    cr_assert(range_has_flag(r.data + page, page, "dd"));
    cr_assert(range_has_flag(r.data, page, "dd", false), "page before was marked");
    cr_assert(range_has_flag(r.data + 2 * page, 2 * page, "dd", false), "pages after were marked");
}

Test(wrappers, unaligned_madvise_is_kernel_einval_but_pages_helper_succeeds) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    Region r(4);
    const std::size_t page = memlock_page_size();
    unsigned char *inside = r.data + page + 100;  // unaligned, inside page 1

    cr_assert_eq(memlock_dontdump(inside, 10), EINVAL);
    cr_assert_eq(memlock_dodump(inside, 10), EINVAL);
    std::error_code ec = memlock::dontdump(inside, 10);
    cr_assert_eq(ec, std::error_code(EINVAL, std::system_category()));
    cr_assert(range_has_flag(r.data, r.len, "dd", false));

    cr_assert_eq(memlock_dontdump_pages(inside, 10), 0);
    cr_assert(range_has_flag(r.data + page, page, "dd"), "page 1 not marked");
    cr_assert(range_has_flag(r.data, page, "dd", false), "page 0 marked");
    cr_assert(range_has_flag(r.data + 2 * page, 2 * page, "dd", false), "pages 2-3 marked");
    cr_assert(!memlock::dodump_pages(inside, 10));
    cr_assert(range_has_flag(r.data, r.len, "dd", false));
}

Test(wrappers, pages_helpers_round_out_across_a_page_boundary) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    Region r(4);
    const std::size_t page = memlock_page_size();
    unsigned char *p = r.data + page - 1;  // last byte of page 0 and first byte of page 1
    const long before = vm_locked_kb();

    cr_assert_eq(memlock_lock_pages(p, 2), 0);
    cr_assert(range_has_flag(r.data, 2 * page, "lo"), "pages 0-1 not locked");
    cr_assert(range_has_flag(r.data + 2 * page, 2 * page, "lo", false), "pages 2-3 locked");
    cr_assert_eq(vm_locked_kb() - before, static_cast<long>(2 * page / 1024));
    cr_assert_eq(memlock_dontdump_pages(p, 2), 0);
    cr_assert(range_has_flag(r.data, 2 * page, "dd"));
    cr_assert(range_has_flag(r.data + 2 * page, 2 * page, "dd", false));

    cr_assert_eq(memlock_dodump_pages(p, 2), 0);
    cr_assert_eq(memlock_unlock_pages(p, 2), 0);
    cr_assert(range_has_flag(r.data, r.len, "dd", false));
    cr_assert(range_has_flag(r.data, r.len, "lo", false));
    cr_assert_eq(vm_locked_kb(), before);

    cr_assert(!memlock::lock_pages(p, 2));
    cr_assert(range_has_flag(r.data, 2 * page, "lo"));
    cr_assert(!memlock::dontdump_pages(p, 2));
    cr_assert(range_has_flag(r.data, 2 * page, "dd"));
    cr_assert(!memlock::unlock_pages(p, 2));
    cr_assert(range_has_flag(r.data, r.len, "lo", false));
}

Test(wrappers, pages_helper_rejects_a_wrapping_range) {
    void *top = reinterpret_cast<void *>(UINTPTR_MAX - 10);
    cr_assert_eq(memlock_lock_pages(top, 100), EINVAL);
    cr_assert_eq(memlock_dontdump_pages(top, 100), EINVAL);
}

Test(wrappers, kernel_error_for_unmapped_range_comes_back_unchanged_and_errno_kept) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    void *p = nullptr;
    const std::size_t page = memlock_page_size();
    cr_assert_eq(memlock_reserve(page, &p), 0);
    cr_assert_eq(memlock_release(p, page), 0);
    errno = 4242;
    cr_assert_eq(memlock_lock(p, page), ENOMEM);  // mlock(2): range not mapped
    cr_assert_eq(memlock_dontdump(p, page), ENOMEM);
    cr_assert_eq(errno, 4242, "errno changed to %d", errno);
    cr_assert_eq(memlock::lock(p, page), std::error_code(ENOMEM, std::system_category()));
}

Test(wrappers, reserve_commit_release) {
    const std::size_t page = memlock_page_size();
    void *p = nullptr;
    cr_assert_eq(memlock_reserve(3 * page + 1, &p), 0);  // rounded up to 4 pages
    cr_assert_eq(reinterpret_cast<std::uintptr_t>(p) % page, 0u);
    auto m = find_mapping(p);
    cr_assert(m.has_value());
    cr_assert_str_eq(m->perms.c_str(), "---p", "reserved mapping perms %s", m->perms.c_str());
    cr_assert(m->has_flag("nr"), "MAP_NORESERVE missing");
    cr_assert_geq(m->end - m->start, 4 * page);

    cr_assert_eq(memlock_commit(p, 4 * page), 0);
    m = find_mapping(p);
    cr_assert_str_eq(m->perms.c_str(), "rw-p");
    auto *bytes = static_cast<unsigned char *>(p);
    for (std::size_t i = 0; i < 4 * page; ++i) cr_assert_eq(bytes[i], 0, "byte %zu not zero", i);
    bytes[4 * page - 1] = 7;

    cr_assert_eq(memlock_release(p, 4 * page), 0);
    cr_assert(!find_mapping(p).has_value(), "still mapped after release");
}

Test(wrappers, reserve_commit_release_argument_errors) {
    void *p = nullptr;
    cr_assert_eq(memlock_reserve(0, &p), EINVAL);
    cr_assert_eq(memlock_reserve(4096, nullptr), EINVAL);
    cr_assert_eq(memlock_reserve(SIZE_MAX, &p), ENOMEM);
    cr_assert_eq(memlock_commit(nullptr, 0), 0);
    cr_assert_eq(memlock_release(nullptr, 0), 0);
    int x = 0;
    cr_assert_eq(memlock_commit(reinterpret_cast<char *>(&x) + 1, 8), EINVAL);  // unaligned
}

// A mapping made elsewhere, written and advised, replaces a reservation whole: its contents and
// advice arrive, and where it was nothing is mapped. Refused by the kernel (here the ranges
// overlap), the mapping moved is unmapped; argument errors unmap nothing.
Test(wrappers, move_over_replaces_a_reservation_with_a_mapping_made_elsewhere) {
    SKIP_UNDER_QEMU_USER("madvise does not reach the kernel");
    const std::size_t page = memlock_page_size(), len = 2 * page;
    void *to = nullptr;
    cr_assert_eq(memlock_reserve(len, &to), 0);
    Region fresh(2);
    std::memset(fresh.data, 7, len);
    cr_assert_eq(memlock_dontdump(fresh.data, len), 0);
    cr_assert_eq(memlock_move_over(fresh.data, to, len), 0);
    cr_assert(!find_mapping(fresh.data).has_value(), "still mapped where it was made");
    fresh.data = nullptr;
    const auto *bytes = static_cast<const unsigned char *>(to);
    cr_assert(bytes[0] == 7 && bytes[len - 1] == 7);
    cr_assert(range_has_flag(to, len, "dd"));
    auto m = find_mapping(to);
    cr_assert(m.has_value());
    cr_assert_str_eq(m->perms.c_str(), "rw-p");

    Region other(2);
    cr_assert_eq(memlock_move_over(other.data, to, 0), EINVAL);
    cr_assert_eq(memlock_move_over(other.data + 1, to, page), EINVAL);
    cr_assert(find_mapping(other.data).has_value(), "an argument error unmapped the mapping");
    errno = 4242;
    cr_assert_eq(memlock_move_over(other.data, other.data + page, len), EINVAL);  // mremap(2): overlap
    cr_assert_eq(errno, 4242);
    cr_assert(!find_mapping(other.data).has_value(), "the refused mapping is still mapped");
    other.data = nullptr;
    cr_assert_eq(memlock_release(to, len), 0);
}

// A reservation (MAP_NORESERVE) of more than memory and swap together is granted; committing
// that much is what the overcommit accounting refuses under the kernel's default heuristic.
Test(wrappers, can_commit_asks_the_overcommit_accounting) {
    cr_assert_eq(memlock_can_commit(0), 0);
    cr_assert_eq(memlock_can_commit(1), 0);
    cr_assert_eq(memlock_can_commit(SIZE_MAX), ENOMEM);
    struct sysinfo si {};
    cr_assert_eq(::sysinfo(&si), 0);
    const std::size_t total = (std::size_t{si.totalram} + si.totalswap) * si.mem_unit;
    void *p = nullptr;
    cr_assert_eq(memlock_reserve(2 * total, &p), 0, "a reservation is not accounted");
    memlock_release(p, 2 * total);
    const auto mode = memlock_test::read_file("/proc/sys/vm/overcommit_memory");
    if (mode && mode->rfind("1", 0) == 0) cr_skip_test("vm.overcommit_memory is 1: every commit is granted");
    cr_assert_eq(memlock_can_commit(2 * total), ENOMEM);
}

Test(wrappers, wipe_zeroes_exactly_the_range) {
    unsigned char buf[64];
    std::memset(buf, 0xAA, sizeof buf);
    memlock_wipe(buf + 8, 48);
    for (std::size_t i = 0; i < sizeof buf; ++i) {
        const unsigned char want = (i >= 8 && i < 56) ? 0 : 0xAA;
        cr_assert_eq(buf[i], want, "byte %zu = %#x", i, buf[i]);
    }
    memlock_wipe(nullptr, 0);  // no-op
}

Test(wrappers, strerror_of_each_value) {
    struct {
        int err;
        const char *needle;
    } cases[] = {
        {0, "success"},        {MEMLOCK_EUNSUPPORTED, "not supported"}, {ENOMEM, "ENOMEM"},
        {EPERM, "EPERM"},      {EAGAIN, "EAGAIN"},                     {EINVAL, "EINVAL"},
        {ENOSYS, "ENOSYS"},    {EFAULT, "EFAULT"},                     {EACCES, "EACCES"},
        {EBADF, "EBADF"},      {ENODEV, "ENODEV"},                     {EOVERFLOW, "EOVERFLOW"},
        {EEXIST, "EEXIST"},    {EBUSY, "EBUSY"},                       {EINTR, "EINTR"},
        {EFBIG, "EFBIG"},      {ENOENT, "ENOENT"},                     {ENOTDIR, "ENOTDIR"},
        {EISDIR, "EISDIR"},    {ELOOP, "ELOOP"},                       {ENAMETOOLONG, "ENAMETOOLONG"},
        {EROFS, "EROFS"},      {ENOSPC, "ENOSPC"},                     {EDQUOT, "EDQUOT"},
        {EMFILE, "EMFILE"},    {ENFILE, "ENFILE"},                     {EIO, "EIO"},
        {99999, "unknown"},    {-42, "unknown"},
    };
    for (const auto &c : cases) {
        const char *s = memlock_strerror(c.err);
        cr_assert_not_null(s);
        cr_assert(std::strstr(s, c.needle) != nullptr, "memlock_strerror(%d) = \"%s\"", c.err, s);
    }
    cr_assert(memlock_strerror(ENOMEM) == memlock_strerror(ENOMEM), "not a static string");
}

Test(wrappers, version_matches_the_version_file) {
    const char *v = memlock_version();
    cr_assert_not_null(v);
    cr_assert_str_eq(v, MEMLOCK_VERSION);
    auto file = memlock_test::read_file("VERSION");  // tests run from the source tree
    if (file) {
        std::string want = *file;
        while (!want.empty() && (want.back() == '\n' || want.back() == ' ')) want.pop_back();
        cr_assert_str_eq(v, want.c_str());
    }
    int maj = -1, min = -1, pat = -1;
    cr_assert_eq(std::sscanf(v, "%d.%d.%d", &maj, &min, &pat), 3, "not x.y.z: %s", v);
}

Test(wrappers, kernel_einval_for_a_wrapping_range_comes_back_from_mlock_and_munlock) {
    Region r(1);
    // start + len wraps past the top of the address space: mlock(2)/munlock(2) say EINVAL.
    const std::size_t wrap = SIZE_MAX - reinterpret_cast<std::uintptr_t>(r.data) + 1 + memlock_page_size();
    cr_assert_eq(memlock_lock(r.data, wrap), EINVAL);
    cr_assert_eq(memlock_unlock(r.data, wrap), EINVAL);
    cr_assert_eq(memlock::unlock(r.data, wrap), std::error_code(EINVAL, std::system_category()));
    cr_assert(memlock_test::range_has_flag(r.data, r.len, "lo", false));
}
