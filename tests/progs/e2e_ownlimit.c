/* e2e_ownlimit.c - a program that locks memory of its own under a low RLIMIT_MEMLOCK, as
 * gpg-agent locks its secure memory and libsodium its guarded buffers.
 *
 * usage: e2e_ownlimit BYTES mlock|mlock2|syscall|unmapped|fork
 * Maps BYTES (whole pages) and locks them with mlock(2), mlock2(2) (no flags) or
 * syscall(SYS_mlock); unmapped: unmaps the last page first and locks with mlock(2), which
 * answers ENOMEM whatever the limit; fork: locks nothing, and forks once while a second
 * thread lives (so that the shim's fork handler takes the arena's locks), the child exiting
 * 0 at once (run with tests/libs/atfork_grow.c's ATFORK_OWNLOCK=1, whose fork handler
 * locks). Then allocates a 32-byte block and a 16 KiB one. Prints "own ADDR", "result 0" or
 * "result ERRNO-NAME" (the lock's; fork: 0 when the child exited 0), "block ADDR",
 * "run ADDR", "ready", then waits for its stdin to close and exits 0.
 * Exit 2 on bad usage or a failed mapping or allocation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void *idle(void *arg) {
    (void)arg;
    pause();
    return NULL;
}

/* One fork while a second thread lives; the child's exit status, or -1. */
static int fork_once(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, idle, NULL) != 0) return -1;
    const pid_t pid = fork();
    if (pid == 0) _exit(0);
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    size_t len = strtoull(argv[1], NULL, 10);
    void *own = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (own == MAP_FAILED) return 2;
    int rc;
    if (!strcmp(argv[2], "mlock")) rc = mlock(own, len);
    else if (!strcmp(argv[2], "mlock2")) rc = mlock2(own, len, 0);
    else if (!strcmp(argv[2], "syscall")) rc = (int)syscall(SYS_mlock, own, len);
    else if (!strcmp(argv[2], "unmapped") && len > 4096 && !munmap((char *)own + len - 4096, 4096)) {
        rc = mlock(own, len);
        len -= 4096;
    } else if (!strcmp(argv[2], "fork")) {
        rc = fork_once();
    } else return 2;
    const int err = errno;
    memset(own, 1, len);
    char *block = malloc(32);
    if (!block) return 2;
    memset(block, 2, 32);
    char *run = malloc(16 << 10);
    if (!run) return 2;
    memset(run, 3, 16 << 10);
    printf("own %p\nresult %s\nblock %p\nrun %p\nready\n", own, rc == 0 ? "0" : strerrorname_np(err), (void *)block,
           (void *)run);
    fflush(stdout);
    while (getchar() != EOF) {}
    free(run);
    free(block);
    return 0;
}
