/* discover_secrets - known secrets in known places, for memlock-discover
 * (tests/shim/test_discover.cpp).
 *
 *   discover_secrets LIBHEAP PROGHEAP STACK STATIC THREAD [exit|wait|daemon|clean-child]   (each a hex byte string)
 *
 *   LIBHEAP   a 48-byte heap block: main -> load_secret_key -> alloc_helper -> malloc
 *             (libsecretlib.so), among 200 other 48-byte blocks the same helper allocates
 *             for load_plain_data
 *   PROGHEAP  a 64-byte heap block: main -> keep_in_program -> program_alloc -> malloc, and a
 *             copy at offset 32 of a 128-byte block from program_alloc that is freed unwiped
 *   STACK     main's stack          STATIC  a zero-initialised global (.bss)
 *   THREAD    a second thread's stack
 * Each is decoded straight into its place (no other copy). Then it sends SIGUSR1 to its parent
 * (memlock-discover takes its snapshot) and waits to be terminated; with "exit" it exits
 * instead (the heap blocks are still live: memlock-discover scans the process as it exits);
 * with "wait" it prints "waiting" and waits (memlock-discover --pid scans it running).
 * With "daemon" it first detaches as daemons do (fork, the parent exits 0, the child calls
 * setsid), prints "daemon PID", and after "ready" lets go of its output and holds the secrets
 * until it is terminated, signalling no one. With "clean-child" it holds nothing itself: it
 * starts itself again in the default mode with an empty environment (as daemons start their
 * helpers: no LD_PRELOAD, no MEMLOCK_SHIM_TRACE), passes that child's SIGUSR1 on to its own
 * parent and waits to be terminated; the child dies with it.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

void *load_secret_key(size_t n);
void *load_plain_data(size_t n);

static unsigned char g_static_secret[64];
static pthread_barrier_t g_ready;

static int nibble(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* Decodes hex into dst; returns the bytes written. */
__attribute__((noinline)) static size_t decode(const char *hex, volatile unsigned char *dst) {
    size_t n = 0;
    for (; hex[0] && hex[1]; hex += 2) dst[n++] = (unsigned char)(nibble(hex[0]) << 4 | nibble(hex[1]));
    return n;
}

__attribute__((noinline)) void *program_alloc(size_t n) {
    void *p = malloc(n);
    KEEP_FRAME();
    return p;
}

__attribute__((noinline)) void *keep_in_program(const char *hex) {
    unsigned char *scratch = program_alloc(128);
    memset(scratch, 0, 128);
    decode(hex, scratch + 32);
    free(scratch); /* freed without a wipe: the copy stays in freed heap memory */
    unsigned char *p = program_alloc(64);
    decode(hex, p);
    KEEP_FRAME();
    return p;
}

static void *thread_main(void *hex) {
    volatile unsigned char secret[64];
    decode(hex, secret);
    pthread_barrier_wait(&g_ready);
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    const int exit_mode = argc == 7 && strcmp(argv[6], "exit") == 0;
    const int wait_mode = argc == 7 && strcmp(argv[6], "wait") == 0;
    const int daemon_mode = argc == 7 && strcmp(argv[6], "daemon") == 0;
    const int clean_mode = argc == 7 && strcmp(argv[6], "clean-child") == 0;
    if (argc != 6 && !exit_mode && !wait_mode && !daemon_mode && !clean_mode) {
        fprintf(stderr, "usage: discover_secrets LIBHEAP PROGHEAP STACK STATIC THREAD [exit|wait|daemon|clean-child]\n");
        return 2;
    }
    if (clean_mode) {
        sigset_t usr1;
        sigemptyset(&usr1);
        sigaddset(&usr1, SIGUSR1);
        sigprocmask(SIG_BLOCK, &usr1, NULL);
        const pid_t child = fork();
        if (child < 0) return 3;
        if (child == 0) {
            char *const no_env[] = {NULL};
            argv[6] = NULL; /* the default mode */
            sigprocmask(SIG_UNBLOCK, &usr1, NULL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            execve("/proc/self/exe", argv, no_env);
            _exit(127);
        }
        int sig;
        sigwait(&usr1, &sig);
        kill(getppid(), SIGUSR1);
        for (;;) pause();
    }
    if (daemon_mode) {
        const pid_t child = fork();
        if (child < 0) return 3;
        if (child > 0) _exit(0);
        setsid();
        printf("daemon %d\n", (int)getpid());
    }
    for (int i = 0; i < 200; ++i) memset(load_plain_data(48), 0x5a, 48);
    unsigned char *lib_block = load_secret_key(48);
    decode(argv[1], lib_block);
    void *prog_block = keep_in_program(argv[2]);
    volatile unsigned char stack_secret[64];
    decode(argv[3], stack_secret);
    decode(argv[4], g_static_secret);
    pthread_t t;
    pthread_barrier_init(&g_ready, NULL, 2);
    if (pthread_create(&t, NULL, thread_main, argv[5]) != 0) return 3;
    pthread_barrier_wait(&g_ready);
    printf("ready %p %p\n", (void *)lib_block, prog_block);
    fflush(stdout);
    if (exit_mode) exit(0);
    if (wait_mode) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* under a test's shell: gone with it */
        if (getppid() == 1) return 4;
        printf("waiting\n");
        fflush(stdout);
    } else if (daemon_mode) {
        /* lets go of the caller's output, as daemons do */
        const int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
    } else {
        kill(getppid(), SIGUSR1);
    }
    for (;;) pause();
}
