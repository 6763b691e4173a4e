// test_secret.cpp - memfd_secret mappings: the kernel's answers (ENOSYS, disabled at boot)
// come back distinct through the seam and leave the reservation as it was; a real mapping is
// locked, out of core dumps and unreadable through /proc/PID/mem while the process uses it;
// after a fork, unsharing gives each process memory of its own.
#include <criterion/criterion.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core_test.hpp"
#include "helpers.hpp"

using core_test::g_fake;
using core_test::install_fakes;
using core_test::restore_syscalls;

namespace {

constexpr std::size_t kLen = 64 * 1024;

// A reservation of kLen bytes, as the arena makes it.
unsigned char *reserve() {
    void *p = nullptr;
    cr_assert_eq(memlock_reserve(kLen, &p), 0);
    return static_cast<unsigned char *>(p);
}

void write_byte(int fd, char c) { cr_assert_eq(::write(fd, &c, 1), 1); }
char read_byte(int fd) {
    char c = 0;
    cr_assert_eq(::read(fd, &c, 1), 1);
    return c;
}

}  // namespace

TestSuite(secret, .fini = restore_syscalls);

Test(secret, enosys_and_disabled_at_boot_come_back_distinct_and_leave_the_range_alone) {
    const int answers[] = {ENOSYS, MEMLOCK_ESECRET_DISABLED, EMFILE};
    unsigned char *p = reserve();
    for (int e : answers) {
        install_fakes(e);
        int fd = 12345;
        errno = 777;
        cr_assert_eq(memlock_secret_create(&fd), e);
        cr_assert_eq(fd, 12345, "fd written on failure");
        cr_assert_eq(memlock_secret_map(p, kLen), e);
        cr_assert_eq(memlock_secret_unshare(p, kLen, 0, 0), e);
        cr_assert_eq(errno, 777, "errno changed");
        cr_assert_eq(g_fake.memfd_secret_calls, 3);
        cr_assert_eq(g_fake.last_flags, static_cast<unsigned>(O_CLOEXEC));
        auto m = memlock_test::find_mapping(p);
        cr_assert(m && m->perms == "---p" && m->path.empty(), "the reservation changed after error %d", e);
    }
    const std::string disabled = memlock_strerror(MEMLOCK_ESECRET_DISABLED);
    cr_assert(disabled.find("disabled at boot") != std::string::npos, "%s", disabled.c_str());
    cr_assert(disabled.find("secretmem.enable") != std::string::npos, "%s", disabled.c_str());
    cr_assert_str_eq(memlock_strerror(ENOSYS), "ENOSYS: system call not implemented");
    cr_assert_neq(MEMLOCK_ESECRET_DISABLED, MEMLOCK_EUNSUPPORTED);
}

Test(secret, bad_arguments_are_einval_without_a_system_call) {
    install_fakes(0);
    unsigned char *p = reserve();
    cr_assert_eq(memlock_secret_create(nullptr), EINVAL);
    cr_assert_eq(memlock_secret_map(p, 0), EINVAL);
    cr_assert_eq(memlock_secret_map(p + 1, memlock_page_size()), EINVAL);
    cr_assert_eq(memlock_secret_map(p, 100), EINVAL);
    cr_assert_eq(memlock_secret_unshare(p, kLen, kLen + memlock_page_size(), 0), EINVAL);
    cr_assert_eq(g_fake.memfd_secret_calls, 0);
}

Test(secret, a_mapping_is_locked_undumpable_and_unreadable_from_outside) {
    SKIP_UNDER_QEMU_USER("qemu-user does not implement memfd_secret (ENOSYS)");
    unsigned char *p = reserve();
    cr_assert_eq(memlock_secret_map(p, kLen), 0);
    cr_assert(memlock_test::in_secretmem(p));
    cr_assert(!memlock_test::find_mapping(p)->perms.compare(0, 3, "---"), "not PROT_NONE before commit");
    cr_assert_eq(memlock_commit(p, kLen), 0);
    std::memset(p, 0x5a, kLen);
    cr_assert_eq(p[kLen - 1], 0x5a);
    cr_assert(memlock_test::range_has_flag(p, kLen, "lo"));
    cr_assert(memlock_test::range_has_flag(p, kLen, "dd"));
    cr_assert(memlock_test::readable_through_proc_mem(p) == false, "secretmem read through /proc/self/mem");
    // The check can fail: an anonymous page beside it is readable.
    unsigned char *plain = reserve();
    cr_assert_eq(memlock_commit(plain, kLen), 0);
    plain[0] = 1;
    cr_assert(memlock_test::readable_through_proc_mem(plain) == true);
}

// Without unsharing, a fork child shares the mapping (the test can fail); with it, neither
// process sees the other's writes, and what was there before the fork is in both.
Test(secret, unsharing_after_fork_gives_each_process_its_own_copy) {
    SKIP_UNDER_QEMU_USER("qemu-user does not implement memfd_secret (ENOSYS)");
    for (int anonymous = -1; anonymous <= 1; ++anonymous) {
        unsigned char *p = reserve();
        cr_assert_eq(memlock_secret_map(p, kLen), 0);
        const std::size_t rw = kLen / 2;
        cr_assert_eq(memlock_commit(p, rw), 0);
        p[0] = 'A';
        p[rw - 1] = 'Z';
        int to_child[2], to_parent[2];
        cr_assert_eq(::pipe(to_child), 0);
        cr_assert_eq(::pipe(to_parent), 0);
        pid_t pid = ::fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            int bad = 0;
            if (anonymous >= 0 && memlock_secret_unshare(p, kLen, rw, anonymous) != 0) bad |= 1;
            if (p[0] != 'A' || p[rw - 1] != 'Z') bad |= 2;
            p[0] = 'C';                 // the parent must not see this
            write_byte(to_parent[1], 'w');
            read_byte(to_child[0]);     // the parent has written 'P'
            if (anonymous >= 0 && p[0] != 'C') bad |= 4;
            ::_exit(bad);
        }
        cr_assert_eq(read_byte(to_parent[0]), 'w');
        const char seen = static_cast<char>(p[0]);
        p[0] = 'P';
        write_byte(to_child[1], 'g');
        int status = 0;
        cr_assert_eq(::waitpid(pid, &status, 0), pid);
        cr_assert(WIFEXITED(status));
        if (anonymous < 0) {
            cr_assert_eq(seen, 'C', "the check cannot fail: a plain fork shares the mapping");
            continue;
        }
        cr_assert_eq(WEXITSTATUS(status), 0, "child (anonymous=%d) failed: %d", anonymous, WEXITSTATUS(status));
        cr_assert_eq(seen, 'A', "the parent saw the child's write (anonymous=%d)", anonymous);
        for (int fd : {to_child[0], to_child[1], to_parent[0], to_parent[1]}) ::close(fd);
    }
}

// The unshared copy keeps the protection split: the committed part is readable and
// writable, the rest stays inaccessible, and the copy is secretmem again.
Test(secret, unsharing_keeps_the_committed_part_and_the_secretmem_kind) {
    SKIP_UNDER_QEMU_USER("qemu-user does not implement memfd_secret (ENOSYS)");
    unsigned char *p = reserve();
    cr_assert_eq(memlock_secret_map(p, kLen), 0);
    const std::size_t page = memlock_page_size();
    cr_assert_eq(memlock_commit(p, 2 * page), 0);
    p[page] = 7;
    cr_assert_eq(memlock_secret_unshare(p, kLen, 2 * page, 0), 0);
    cr_assert_eq(p[page], 7);
    cr_assert(memlock_test::in_secretmem(p));
    cr_assert(memlock_test::in_secretmem(p + 2 * page));
    auto head = memlock_test::find_mapping(p), tail = memlock_test::find_mapping(p + 2 * page);
    cr_assert(head->perms.compare(0, 3, "rw-") == 0, "%s", head->perms.c_str());
    cr_assert(tail->perms.compare(0, 3, "---") == 0, "%s", tail->perms.c_str());
    cr_assert(memlock_test::range_has_flag(p, kLen, "lo"));
}
