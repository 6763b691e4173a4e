/* e2e_cancel.c - threads whose cancellation is pending while the shim works on them.
 *
 *   e2e_cancel start COUNT   COUNT times, one after another: a thread without a guard page
 *                            (pthread_attr_setguardsize 0, so that policy.scrub_stack's look-up
 *                            of its stack reads /proc/self/maps) is cancelled as soon as
 *                            pthread_create returns, then joined. Prints "ran R, cancelled C of
 *                            COUNT" (R: start routines that ran; C: threads that ended cancelled)
 *   e2e_cancel signal COUNT  as start, with a SIGUSR1 handler that writes a byte to /dev/null
 *                            (write is a cancellation point); run with tests/libs/signal_in_free.c
 *                            after the shim, whose free raises SIGUSR1 in each new thread's first
 *                            free (the shim's, before the start routine). Prints as start
 *   e2e_cancel alloc COUNT   a thread cancels itself (deferred: acted on at its next
 *                            cancellation point), allocates COUNT blocks of 1000 bytes, writing
 *                            to each, then reaches pthread_testcancel. Prints "allocated N" (the
 *                            blocks it got) and "cancelled" or "not cancelled"
 *   e2e_cancel dlopen LIB    a thread opens LIB (tests/libs/memlock_testlib.c), cancels itself,
 *                            allocates 32 bytes through LIB's memlock_testlib_malloc (under a
 *                            symbol rule the shim reads LIB's file to index it then), then
 *                            reaches pthread_testcancel. Prints "allocated N" (0 or 1) and
 *                            "cancelled" or "not cancelled"
 *   e2e_cancel exit CODE     a thread allocates 1000 bytes, cancels itself and calls exit(CODE)
 *                            while the main thread waits to join it
 *   e2e_cancel fork COUNT    a thread allocates COUNT blocks of 1000 bytes, cancels itself and
 *                            forks (the child inherits the pending cancellation; it exits 0 at
 *                            once), waits for the child, then reaches pthread_testcancel.
 *                            Prints "child STATUS" (the child's wait status in hex) and
 *                            "cancelled" or "not cancelled"
 *
 * Exits 0 (exit: CODE); 2 on a usage or pthread error. Without the shim both modes end every thread
 * cancelled, after its routine (or allocations) ran.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int ran, count, got, devnull = -1;

static void write_on_signal(int sig) {
    (void)sig;
    if (write(devnull, "s", 1) < 0) devnull = -1;
}

static void *wait_for_cancel(void *arg) {
    __atomic_fetch_add(&ran, 1, __ATOMIC_RELAXED);
    for (;;) pause(); /* a cancellation point */
    return arg;
}

static void *allocate_cancelled(void *arg) {
    pthread_cancel(pthread_self());
    for (int i = 0; i < count; ++i) {
        char *p = malloc(1000);
        if (!p) break;
        p[0] = 1;
        ++got;
    }
    pthread_testcancel();
    return arg;
}

static void *allocate_in_library_cancelled(void *lib) {
    void *h = dlopen(lib, RTLD_NOW);
    void *(*lib_malloc)(size_t) = h ? (void *(*)(size_t))dlsym(h, "memlock_testlib_malloc") : NULL;
    if (!lib_malloc) exit(2);
    pthread_cancel(pthread_self());
    char *p = lib_malloc(32);
    if (p) {
        p[0] = 1;
        ++got;
    }
    pthread_testcancel();
    return NULL;
}

static void *exit_cancelled(void *arg) {
    char *p = malloc(1000);
    if (p) p[0] = 1;
    pthread_cancel(pthread_self());
    exit(count);
    return arg;
}

static int child_status = -1;

static void *fork_cancelled(void *arg) {
    for (int i = 0; i < count; ++i) {
        char *p = malloc(1000);
        if (p) p[0] = 1;
    }
    pthread_cancel(pthread_self());
    const pid_t pid = fork();
    if (pid == 0) _exit(0);
    int was;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &was); /* waitpid is a cancellation point */
    if (pid > 0) waitpid(pid, &child_status, 0);
    pthread_setcancelstate(was, NULL);
    pthread_testcancel();
    return arg;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    count = atoi(argv[2]);
    pthread_t t;
    void *res;
    const int signalled = strcmp(argv[1], "signal") == 0;
    if (signalled || strcmp(argv[1], "start") == 0) {
        if (signalled) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = write_on_signal;
            if ((devnull = open("/dev/null", O_WRONLY | O_CLOEXEC)) < 0 || sigaction(SIGUSR1, &sa, NULL)) return 2;
        }
        pthread_attr_t attr;
        int cancelled = 0;
        if (pthread_attr_init(&attr) || pthread_attr_setguardsize(&attr, 0)) return 2;
        for (int i = 0; i < count; ++i) {
            if (pthread_create(&t, &attr, wait_for_cancel, NULL)) return 2;
            pthread_cancel(t);
            if (pthread_join(t, &res)) return 2;
            cancelled += res == PTHREAD_CANCELED;
        }
        printf("ran %d, cancelled %d of %d\n", ran, cancelled, count);
        return 0;
    }
    if (strcmp(argv[1], "fork") == 0) {
        if (pthread_create(&t, NULL, fork_cancelled, NULL) || pthread_join(t, &res)) return 2;
        printf("child %#x\n%s\n", (unsigned)child_status, res == PTHREAD_CANCELED ? "cancelled" : "not cancelled");
        return 0;
    }
    if (strcmp(argv[1], "exit") == 0) {
        if (pthread_create(&t, NULL, exit_cancelled, NULL)) return 2;
        pthread_join(t, &res);
        return 2;
    }
    if (strcmp(argv[1], "alloc") == 0 || strcmp(argv[1], "dlopen") == 0) {
        const int lib = strcmp(argv[1], "dlopen") == 0;
        if (pthread_create(&t, NULL, lib ? allocate_in_library_cancelled : allocate_cancelled, lib ? argv[2] : NULL) ||
            pthread_join(t, &res))
            return 2;
        printf("allocated %d\n%s\n", got, res == PTHREAD_CANCELED ? "cancelled" : "not cancelled");
        return 0;
    }
    return 2;
}
