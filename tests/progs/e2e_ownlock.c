/* e2e_ownlock.c - a program that locks, advises and unlocks its own heap blocks, as
 * libsodium's sodium_mlock and sodium_munlock do, then keeps a secret in the same pages.
 *
 * usage: e2e_ownlock munlock|sodium|syscall|munlockall|signal|fork|race
 *   munlock     mlock and munlock a 32-byte block; the secret is in another 32-byte block
 *   sodium      a 4 KiB block: mlock, MADV_DONTDUMP, then wipe, MADV_DODUMP, munlock; the
 *               secret is then written into that block
 *   syscall     the same through syscall(2)
 *   munlockall  mlockall(MCL_CURRENT), then munlockall(); the secret is in a 32-byte block
 *   signal      a timer's signal handler calls munlockall() while the program allocates and
 *               frees (the handler may interrupt the arena holding a lock); then as munlockall
 *   fork        forks from a second thread's presence (so that the shim's fork handler takes
 *               the arena's locks); run with a fork handler that calls munlockall
 *               (tests/libs/atfork_grow.c, ATFORK_MUNLOCKALL=1); then as munlockall
 *   race        two threads each allocate, call munlockall and free 200,000 times, the
 *               second also calling mlockall (MCL_CURRENT, with and without MCL_ONFAULT)
 *               before every 128th munlockall: each call can land inside the relock that
 *               the other thread's munlockall started; then as munlockall
 *
 * Every mode does the same calls on a page it mapped itself ("plain"), which must end up
 * neither locked nor excluded from core dumps: the calls still reach the program's own
 * memory. Prints "secret ADDR", "key HEX" (the secret's 16 bytes), "plain ADDR", "ready",
 * then waits for its stdin to close and exits 0. Exit 2 on a failed call.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hold_common.h"

static void check(int rc, const char *what) {
    if (rc != 0) {
        perror(what);
        exit(2);
    }
}

static void lock_and_exclude(int via_syscall, void *p, size_t n) {
    if (via_syscall) {
        check((int)syscall(SYS_mlock, p, n), "mlock");
        check((int)syscall(SYS_madvise, p, n, MADV_DONTDUMP), "madvise(MADV_DONTDUMP)");
    } else {
        check(mlock(p, n), "mlock");
        check(madvise(p, n, MADV_DONTDUMP), "madvise(MADV_DONTDUMP)");
    }
}

/* sodium_munlock: wipe, advise back into core dumps, unlock. */
static void release(int via_syscall, void *p, size_t n) {
    memset(p, 0, n);
    if (via_syscall) {
        check((int)syscall(SYS_madvise, p, n, MADV_DODUMP), "madvise(MADV_DODUMP)");
        check((int)syscall(SYS_munlock, p, n), "munlock");
    } else {
        check(madvise(p, n, MADV_DODUMP), "madvise(MADV_DODUMP)");
        check(munlock(p, n), "munlock");
    }
}

static volatile sig_atomic_t unlocks;

static void on_alarm(int sig) {
    (void)sig;
    if (munlockall() == 0) ++unlocks;
}

/* Allocates and frees blocks of many sizes (thread-cache refills and flushes, slabs and page
   runs, each under an arena lock) while a timer's handler calls munlockall. */
static void churn_under_munlockall(void) {
    alarm_every(on_alarm, 2000);
    static void *held[512];
    for (int round = 0; round < 200 || unlocks < 50; ++round) {
        for (int i = 0; i < 512; ++i) {
            held[i] = malloc((size_t)(16 + (i * 977 + round * 131) % 20000));
            if (!held[i]) exit(2);
            ((volatile char *)held[i])[0] = 1;
        }
        for (int i = 0; i < 512; ++i) free(held[i]);
    }
    alarm_every(NULL, 0);
}

static void *idle(void *arg) { return arg; }

/* Allocates, calls munlockall (the second thread now and then mlockall first) and frees,
   200,000 times. */
static void *unlock_in_turn(void *arg) {
    const int second = arg != NULL;
    for (int i = 0; i < 200000; ++i) {
        void *p = malloc((size_t)(100 + i % 30000));
        if (!p) exit(2);
        ((volatile char *)p)[0] = 1;
        if (second && i % 128 == 0) check(mlockall(i & 128 ? MCL_CURRENT : MCL_CURRENT | MCL_ONFAULT), "mlockall");
        check(munlockall(), "munlockall");
        free(p);
    }
    return NULL;
}

static void unlock_in_two_threads(void) {
    pthread_t t;
    static int second;
    if (pthread_create(&t, NULL, unlock_in_turn, &second) != 0) exit(2);
    unlock_in_turn(NULL);
    pthread_join(t, NULL);
}

/* Forks while a second thread exists, so that the shim's fork handler takes the arena's locks. */
static void fork_with_threads(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, idle, NULL) != 0) exit(2);
    pid_t child = fork();
    if (child == 0) _exit(0);
    int status;
    if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) exit(2);
    pthread_join(t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *mode = argv[1];
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const int via_syscall = strcmp(mode, "syscall") == 0;
    unsigned char *plain = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (plain == MAP_FAILED) return 2;
    unsigned char *secret;

    if (strcmp(mode, "munlock") == 0) {
        secret = malloc(32);
        unsigned char *other = malloc(32);
        if (!secret || !other) return 2;
        check(mlock(other, 32), "mlock");
        check(munlock(other, 32), "munlock");
        check(mlock(plain, page), "mlock");
        check(munlock(plain, page), "munlock");
    } else if (strcmp(mode, "sodium") == 0 || via_syscall) {
        if (posix_memalign((void **)&secret, page, page) != 0) return 2;
        lock_and_exclude(via_syscall, secret, page);
        release(via_syscall, secret, page);
        lock_and_exclude(via_syscall, plain, page);
        release(via_syscall, plain, page);
    } else if (strcmp(mode, "munlockall") == 0 || strcmp(mode, "signal") == 0 || strcmp(mode, "fork") == 0 ||
               strcmp(mode, "race") == 0) {
        if (strcmp(mode, "signal") == 0) churn_under_munlockall();
        if (strcmp(mode, "fork") == 0) fork_with_threads();
        if (strcmp(mode, "race") == 0) unlock_in_two_threads();
        secret = malloc(32);
        if (!secret) return 2;
        plain[0] = 1;
        check(mlockall(MCL_CURRENT), "mlockall");
        check(munlockall(), "munlockall");
    } else {
        return 2;
    }

    /* The secret's bytes exist only in the block: they are made there, and printed in hex. */
    uint64_t seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15u | 1, word[2];
    word[0] = next_random(&seed), word[1] = next_random(&seed);
    memcpy(secret, word, sizeof word);
    memset(word, 0, sizeof word);
    printf("secret %p\nkey ", (void *)secret);
    for (size_t i = 0; i < sizeof word; ++i) printf("%02x", secret[i]);
    printf("\nplain %p\n", (void *)plain);
    return ready_until_eof();
}
