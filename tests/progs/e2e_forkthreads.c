/* e2e_forkthreads.c - forks repeatedly while other threads allocate and free matching blocks.
 *
 * Expects rules {size 32} and {min 512..2048}. Two threads run matched and unmatched
 * malloc/free traffic while the main thread forks ROUNDS times (argv[1], default 50). Each
 * child allocates, checks and frees matching blocks (including blocks the parent allocated
 * before the fork), then _exits 0: a lock held by another thread at fork time would hang it.
 * Prints "forks N ok" and exits 0 when every child exited 0.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int stop = 0;

static void *traffic(void *arg) {
    unsigned seed = (unsigned)(size_t)arg;
    void *keep[32] = {0};
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        seed = seed * 1103515245u + 12345u;
        unsigned slot = (seed >> 16) % 32;
        free(keep[slot]);
        size_t sizes[] = {32, 1000, 64, 4096, 2048, 512};
        keep[slot] = malloc(sizes[(seed >> 8) % 6]);
        if (keep[slot]) memset(keep[slot], 0x33, 32);
    }
    for (int i = 0; i < 32; ++i) free(keep[i]);
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 50;
    pthread_t t[2];
    for (int i = 0; i < 2; ++i)
        if (pthread_create(&t[i], NULL, traffic, (void *)(size_t)(i + 1)) != 0) return 2;
    int failures = 0;
    for (int r = 0; r < rounds; ++r) {
        unsigned char *before = malloc(1000);
        if (!before) return 2;
        memset(before, r & 0xff, 1000);
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) {
            for (int i = 0; i < 1000; ++i)
                if (before[i] != (unsigned char)(r & 0xff)) _exit(3);
            free(before);
            for (int i = 0; i < 2000; ++i) {
                unsigned char *a = malloc(i % 2 ? 32 : 1000), *b = malloc(64);
                if (!a || !b) _exit(4);
                memset(a, 1, 32);
                free(a);
                free(b);
            }
            _exit(0);
        }
        int status = 0;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            printf("child %d failed: status 0x%x\n", r, status);
            failures++;
        }
        free(before);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 2; ++i) pthread_join(t[i], NULL);
    printf("forks %d %s\n", rounds, failures ? "failed" : "ok");
    return failures ? 1 : 0;
}
