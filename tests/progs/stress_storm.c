/* stress_storm.c - threads x fork x exec: four threads allocate and free matched and
 * unmatched blocks while the main thread forks children that allocate, check and free, then
 * exec a program (under the shim too, as LD_PRELOAD is inherited).
 *
 *   stress_storm ROUNDS EXEC_PATH
 *
 * Expects the rules {size 77} and {min_size 1500, max_size 1600} (matched sizes 77 and 1536;
 * 64 and 4000 are not matched). Checks, and reports the first failure of each as one line:
 *   - every block keeps its contents until freed (a block handed out twice would not);
 *   - every matched block reads as zero right after free (it sits in the freeing thread's
 *     cache: nobody can have reused it yet);
 *   - every child (fork, check a block allocated before the fork, allocate/free, exec)
 *     exits 0.
 * Keeps KEPT matched blocks live until exit, then prints "pid N", "live KEPT" (for the
 * counters) and "storm ok ROUNDS" and exits 0; exits 1 after any failure, 2 on a setup error.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stress_common.h"

#define THREADS 4
#define KEPT 10

static volatile int stop = 0;
static int failed = 0;

static void fail(const char *what, long detail) {
    if (__atomic_exchange_n(&failed, 1, __ATOMIC_RELAXED) == 0) {
        printf("FAIL %s (%ld)\n", what, detail);
        fflush(stdout);
    }
}

static int matched(size_t n) { return n == 77 || (n >= 1500 && n <= 1600); }

/* Frees p (n bytes, filled with v) after checking it; a matched block must read zero after. */
static void check_free(unsigned char *p, size_t n, unsigned char v, const char *who) {
    if (!filled(p, n, v)) fail(who, (long)n);
    free(p);
    if (matched(n) && !all_zero(p, n)) fail("freed matched block is not zero", (long)n);
}

struct slot {
    unsigned char *p;
    size_t n;
    unsigned char v;
};

static void *traffic(void *arg) {
    unsigned seed = (unsigned)(size_t)arg * 2654435761u;
    static const size_t sizes[] = {77, 1536, 64, 4000, 77, 1500, 1600, 200};
    struct slot keep[48];
    memset(keep, 0, sizeof keep);
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        seed = seed * 1103515245u + 12345u;
        struct slot *s = &keep[(seed >> 16) % 48];
        if (s->p) check_free(s->p, s->n, s->v, "thread block lost its contents");
        s->n = sizes[(seed >> 8) % 8];
        s->v = (unsigned char)(0x80 | (seed & 0x7f));
        s->p = malloc(s->n);
        if (!s->p) {
            fail("malloc returned NULL in a thread", (long)s->n);
            break;
        }
        memset(s->p, s->v, s->n);
    }
    for (int i = 0; i < 48; ++i)
        if (keep[i].p) check_free(keep[i].p, keep[i].n, keep[i].v, "thread block lost its contents at exit");
    return NULL;
}

/* The forked child: the block from before the fork is intact; the allocator works in the
 * child with its other threads gone; then exec. */
static void child(unsigned char *before, int round, const char *exec_path) {
    if (!filled(before, 1536, (unsigned char)round)) _exit(3);
    free(before);
    if (!all_zero(before, 1536)) _exit(4);
    for (int i = 0; i < 200; ++i) {
        size_t n = i % 3 == 0 ? 77 : i % 3 == 1 ? 1536 : 64;
        unsigned char *p = malloc(n);
        if (!p) _exit(5);
        memset(p, 0x5a, n);
        free(p);
        if (matched(n) && !all_zero(p, n)) _exit(6);
    }
    execl(exec_path, exec_path, (char *)NULL);
    _exit(7);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int rounds = atoi(argv[1]);
    const char *exec_path = argv[2];
    unsigned char *kept[KEPT];
    for (int i = 0; i < KEPT; ++i) {
        kept[i] = malloc(77);
        if (!kept[i]) return 2;
        memset(kept[i], 0x11, 77);
    }
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; ++i)
        if (pthread_create(&t[i], NULL, traffic, (void *)(size_t)(i + 1)) != 0) return 2;
    for (int r = 0; r < rounds && !failed; ++r) {
        unsigned char *before = malloc(1536);
        if (!before) return 2;
        memset(before, (unsigned char)r, 1536);
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) child(before, r, exec_path);
        check_free(before, 1536, (unsigned char)r, "parent's block changed across fork");
        int status = 0;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail("child failed, wait status", status);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < THREADS; ++i) pthread_join(t[i], NULL);
    for (int i = 0; i < KEPT; ++i)
        if (!filled(kept[i], 77, 0x11)) fail("kept block lost its contents", i);
    if (failed) return 1;
    printf("pid %d\nlive %d\nstorm ok %d\n", (int)getpid(), KEPT, rounds);
    return 0;
}
