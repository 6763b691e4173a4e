// fork_corners: libc contract corners around fork and the allocator, one per mode. Each mode
// prints the same lines with or without the shim; a hang is caught by the test's watchdog.
//
//   signal   fork from a signal handler that interrupts fork (a single-threaded process, as
//            glibc supports it): "nested forks during fork: yes"
//   stdio    a fork loop against two getline readers of a 1 MiB line and an fflush(NULL)
//            loop (glibc bug 19431's lock order): "forks: N"
//   errno    posix_memalign that cannot be served: its return value and errno
//   debug    malloc_usable_size of a 7-byte block from each allocation function: the size
//            asked for under glibc's debugging allocator (MALLOC_CHECK_=3), whose free
//            aborts on a block another allocator made
//   aligned  aligned_alloc with alignments that are and are not powers of two, of sizes
//            the end-to-end rules match (32), do not match within their window (64) and
//            leave outside it (4096): "ok" or the errno, one line per call
//   pvalloc  malloc_usable_size of pvalloc(N) for N around 0 and a page: the next
//            allocator's own rounding where no rule takes the call
//   bare     _Fork (glibc 2.34 and later: no atfork handler, async-signal-safe) from a signal
//            handler that interrupts the program's allocations while two other threads
//            allocate, until 200 children have exited: "_Fork children: all exited 0"
//   unlockall  a fork loop against a thread that allocates blocks of 2 to 60 KiB, which glibc
//            serves under its arena's lock when no rule matches them, and whose timer's signal
//            handler calls munlockall (async-signal-safe: a system call): "forks: 1000"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hold_common.h"

static void reap(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
}

// ---- signal ------------------------------------------------------------------------------

static volatile sig_atomic_t g_in_fork;      // forks between this program's prepare and parent handlers
static volatile sig_atomic_t g_in_handler;
static volatile sig_atomic_t g_nested;       // forks made by the handler while g_in_fork
static volatile sig_atomic_t g_round;
static volatile sig_atomic_t g_armed;       // this program's prepare handler has returned

// This program's handlers were registered after the shim's: its prepare runs first and its
// parent handler last. The timer armed here expires tens of microseconds later, mostly inside
// the fork system call, and the signal is delivered when that returns: between the shim's
// prepare and parent handlers.
static void fork_prepare(void) {
    g_in_fork++;
    if (g_in_handler) return;
    struct itimerval it = {{0, 0}, {0, 20 + (g_round * 37) % 400}};
    setitimer(ITIMER_REAL, &it, NULL);
    g_armed = 1;
}
static void fork_parent(void) {
    g_armed = 0;
    g_in_fork--;
}

static void on_alarm(int sig) {
    (void)sig;
    int saved = errno;
    g_in_handler = 1;
    int during = g_in_fork > 0 && g_armed;
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    if (pid > 0) {
        reap(pid);
        if (during) g_nested++;
    }
    g_in_handler = 0;
    errno = saved;
}

static int mode_signal(void) {
    pthread_atfork(fork_prepare, fork_parent, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    for (g_round = 0; g_round < 2000 && g_nested < 5; ++g_round) {
        free(malloc(32));
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid > 0) reap(pid);
    }
    printf("nested forks during fork: %s\n", g_nested > 0 ? "yes" : "no");
    return 0;
}

// ---- stdio -------------------------------------------------------------------------------

static volatile int g_stop;
static char g_path[64];

static void *reader(void *arg) {
    (void)arg;
    FILE *f = fopen(g_path, "r");
    if (!f) return NULL;
    while (!g_stop) {
        char *line = NULL;
        size_t cap = 0;
        rewind(f);
        if (getline(&line, &cap, f) < 0) break;
        free(line);
    }
    fclose(f);
    return NULL;
}

static void *flusher(void *arg) {
    (void)arg;
    while (!g_stop) fflush(NULL);
    return NULL;
}

static int mode_stdio(void) {
    snprintf(g_path, sizeof g_path, "/tmp/fork_corners.%d", (int)getpid());
    FILE *w = fopen(g_path, "w");
    if (!w) return 2;
    for (int i = 0; i < (1 << 20); ++i) fputc('a' + i % 26, w);
    fputc('\n', w);
    fclose(w);
    pthread_t t[3];
    pthread_create(&t[0], NULL, reader, NULL);
    pthread_create(&t[1], NULL, reader, NULL);
    pthread_create(&t[2], NULL, flusher, NULL);
    const int forks = 100;
    for (int i = 0; i < forks; ++i) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid > 0) reap(pid);
    }
    g_stop = 1;
    for (int i = 0; i < 3; ++i) pthread_join(t[i], NULL);
    unlink(g_path);
    printf("forks: %d\n", forks);
    return 0;
}

// ---- errno and the debugging allocator -----------------------------------------------------

static int mode_errno(void) {
    void *p = &p;
    errno = 0;
    int rc = posix_memalign(&p, 64, (size_t)1 << 50);  // more than any address space here
    printf("posix_memalign: %s, errno %s, memptr %s\n", rc == ENOMEM ? "ENOMEM" : "other",
           errno == ENOMEM ? "ENOMEM" : "other", p == &p ? "untouched" : "changed");
    return 0;
}

static void usable_then_free(const char *function, void *p) {
    printf("%s usable %zu\n", function, malloc_usable_size(p));
    fflush(stdout);  // the line is out before a free that aborts
    free(p);
}

static int mode_debug(void) {
    usable_then_free("malloc", malloc(7));
    usable_then_free("calloc", calloc(1, 7));
    usable_then_free("realloc", realloc(NULL, 7));
    usable_then_free("aligned_alloc", aligned_alloc(64, 7));
    usable_then_free("memalign", memalign(64, 7));
    void *p = NULL;
    if (posix_memalign(&p, 64, 7) == 0) usable_then_free("posix_memalign", p);
    usable_then_free("valloc", valloc(7));
    usable_then_free("pvalloc", pvalloc(7));
    return 0;
}

static int mode_aligned(void) {
    static const size_t calls[][2] = {{64, 32}, {65, 32}, {0, 32}, {3, 32}, {65, 64}, {0, 64}, {65, 4096}};
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; ++i) {
        errno = 0;
        void *p = aligned_alloc(calls[i][0], calls[i][1]);
        printf("aligned_alloc(%zu, %zu): %s\n", calls[i][0], calls[i][1],
               p ? "ok" : errno == EINVAL ? "EINVAL" : "other error");
        free(p);
    }
    return 0;
}

static int mode_pvalloc(void) {
    static const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
        void *p = pvalloc(sizes[i]);
        printf("pvalloc(%zu) usable %zu\n", sizes[i], p ? malloc_usable_size(p) : 0);
        free(p);
    }
    return 0;
}

// ---- bare ----------------------------------------------------------------------------------

static pid_t (*g_bare_fork)(void);
static volatile sig_atomic_t g_bare_ok, g_bare_failed;

// The child runs async-signal-safe code only, as a child of a multi-threaded process must.
static void on_bare_alarm(int sig) {
    (void)sig;
    int saved = errno;
    pid_t pid = g_bare_fork();
    if (pid == 0) _exit(0);
    int status = 0;
    if (pid > 0) {
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            g_bare_ok++;
        else
            g_bare_failed++;
    } else {
        g_bare_failed++;
    }
    errno = saved;
}

// Bursts of blocks of 8 sizes: more than a thread cache holds, so that refills and flushes
// take the arena's locks (under match-all) as often as the cached path does not.
static void burst(void) {
    void *p[256];
    for (int i = 0; i < 256; ++i) p[i] = malloc(32 + (size_t)(i % 8) * 16);
    for (int i = 0; i < 256; ++i) free(p[i]);
}

static void *churner(void *arg) {
    (void)arg;
    while (!g_stop) burst();
    return NULL;
}

static int mode_bare(void) {
    g_bare_fork = (pid_t(*)(void))dlsym(RTLD_DEFAULT, "_Fork");
    if (!g_bare_fork) {
        printf("no _Fork\n");
        return 0;
    }
    pthread_t t[2];
    for (int i = 0; i < 2; ++i) pthread_create(&t[i], NULL, churner, NULL);
    alarm_every(on_bare_alarm, 300);
    while (g_bare_ok + g_bare_failed < 200) burst();
    alarm_every(NULL, 0);
    g_stop = 1;
    for (int i = 0; i < 2; ++i) pthread_join(t[i], NULL);
    if (g_bare_failed)
        printf("_Fork children: %d failed\n", (int)g_bare_failed);
    else
        printf("_Fork children: all exited 0\n");
    return 0;
}

// ---- unlockall -----------------------------------------------------------------------------

static void on_unlockall_alarm(int sig) {
    (void)sig;
    int saved = errno;
    munlockall();
    errno = saved;
}

// The only thread that takes SIGALRM: its handler may interrupt glibc's allocator holding the
// lock of its arena, which a fork in another thread waits for once its prepare handlers ran.
static void *unlockall_churner(void *arg) {
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    void *keep[64] = {0};
    for (unsigned i = 0; !g_stop; ++i) {
        free(keep[i % 64]);
        keep[i % 64] = malloc(2048 + (i * 7919) % 60000);  // past glibc's thread cache
    }
    for (int i = 0; i < 64; ++i) free(keep[i]);
    return NULL;
}

static int mode_unlockall(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);  // the churner unblocks it
    free(malloc(32));
    pthread_t t;
    pthread_create(&t, NULL, unlockall_churner, NULL);
    alarm_every(on_unlockall_alarm, 100);
    const int forks = 1000;
    for (int i = 0; i < forks; ++i) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid > 0) reap(pid);
    }
    alarm_every(NULL, 0);
    g_stop = 1;
    pthread_join(t, NULL);
    printf("forks: %d\n", forks);
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "signal")) return mode_signal();
    if (!strcmp(mode, "stdio")) return mode_stdio();
    if (!strcmp(mode, "errno")) return mode_errno();
    if (!strcmp(mode, "debug")) return mode_debug();
    if (!strcmp(mode, "aligned")) return mode_aligned();
    if (!strcmp(mode, "pvalloc")) return mode_pvalloc();
    if (!strcmp(mode, "bare")) return mode_bare();
    if (!strcmp(mode, "unlockall")) return mode_unlockall();
    fprintf(stderr, "usage: fork_corners signal|stdio|errno|debug|aligned|pvalloc|bare|unlockall\n");
    return 2;
}
