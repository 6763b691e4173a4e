/* e2e_memory.c - arena memory that follows the live data.
 *
 *   e2e_memory phases ROUNDS    mixed-size phases (16, 200, 3000, 40 and 100000 bytes, 48 MiB
 *                               each), each freed before the next. At each phase's peak prints
 *                               "phase R.P live BYTES" (blocks and their pointer array), at
 *                               the end of each round "drained R", and waits for a line on
 *                               stdin (the test reads /proc/PID/smaps meanwhile)
 *   e2e_memory huge BYTES       rewrites its argv[0] in place (as a daemon that sets its process
 *                               title does), then malloc(BYTES), then realloc of a small block
 *                               to BYTES and back; checks the contents, prints "huge ok"
 *   e2e_memory hugegrow BYTES   malloc(40 MiB), then realloc of it to BYTES (the new part never
 *                               touched); prints "realloc(BYTES) failed: errno N" (exit 1) or
 *                               "hugegrow served"
 *   e2e_memory grow N BYTES     N blocks of BYTES, each reallocated to 1.5 x BYTES; prints
 *                               "block ADDR SIZE" for the first and the last, "ready", and
 *                               waits for a line on stdin; then forks: the child checks and
 *                               frees every block (exit 0 if all held); the parent waits for
 *                               it, does the same, prints "grow ok"
 *   e2e_memory aslimit BYTES    lowers RLIMIT_AS to BYTES after start-up, then allocates 1000 blocks of 32 bytes and one of
 *                               8 MiB; prints "unmatched malloc(8388608): served" or
 *                               "... failed: errno N", checks and frees the small blocks,
 *                               prints "aslimit ok" (exit 1 if a 32-byte block failed)
 *   e2e_memory vmsize           prints "vmsize N": its VmSize in bytes (/proc/self/status)
 *   e2e_memory asfull           frees 16 MiB of blocks of 64 KiB (its allocator keeps the heap:
 *                               no trimming), lowers RLIMIT_AS to its VmSize + 1 MiB, then
 *                               allocates 2000 blocks of 4000 bytes; prints "asfull ok" when
 *                               every one was served and kept its contents
 *   e2e_memory margin LIMIT     lowers RLIMIT_AS to LIMIT (what it needs without the shim),
 *                               then creates 2 threads that allocate (32 B, 4 KiB, 256 KiB),
 *                               maps and touches 8 MiB, allocates 1000 blocks of 32 bytes and
 *                               one of 8 MiB; prints "threads ok", "mmap ok", "malloc ok" as
 *                               each step works (or what failed, exit 1), then "margin ok"
 *   e2e_memory sandbox          installs a seccomp filter that kills the process on mlock,
 *                               mlock2, munlock, mlockall and munlockall and answers EINVAL to
 *                               madvise advice outside sshd's list (OpenSSH
 *                               sandbox-seccomp-filter.c), then allocates and frees matched
 *                               blocks through slab reuse, page runs and purging; prints
 *                               "survived"
 *   e2e_memory nomprotect       installs a seccomp filter that answers ENOSYS to mprotect
 *                               (glibc's allocator needs only brk and mmap in one thread),
 *                               then allocates and checks 20000 blocks of 1000 bytes; prints
 *                               "nomprotect ok"
 *
 * Prints "pid N" first. Exits 1 if a block lost its contents.
 */
#include <errno.h>
#include <pthread.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int check(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i += 61)
        if (p[i] != v) return 0;
    return p[n - 1] == v;
}

static int phases(int rounds) {
    static const size_t sizes[] = {16, 200, 3000, 40, 100000};
    enum { kBytesPerPhase = 48 << 20 };
    char line[16];
    for (int r = 0; r < rounds; ++r) {
        for (unsigned ph = 0; ph < sizeof sizes / sizeof *sizes; ++ph) {
            size_t n = sizes[ph], count = kBytesPerPhase / n;
            unsigned char **b = malloc(count * sizeof *b);
            if (!b) return 2;
            for (size_t i = 0; i < count; ++i) {
                b[i] = malloc(n);
                if (!b[i]) return 3;
                memset(b[i], (int)(i & 0xff), n);
            }
            printf("phase %d.%u live %zu\n", r, ph, count * (n + sizeof *b));
            fflush(stdout);
            if (!fgets(line, sizeof line, stdin)) return 0;
            int bad = 0;
            for (size_t i = 0; i < count; ++i) {
                bad |= !check(b[i], n, (unsigned char)(i & 0xff));
                free(b[i]);
            }
            free(b);
            if (bad) return 1;
        }
        printf("drained %d\n", r);
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) return 0;
    }
    return 0;
}

static int huge(size_t n) {
    unsigned char *p = malloc(n);
    if (!p) { printf("malloc(%zu) failed: errno %d\n", n, errno); return 1; }
    p[0] = 1, p[n - 1] = 2;
    free(p);
    unsigned char *q = malloc(100);
    if (!q) return 1;
    memset(q, 7, 100);
    q = realloc(q, n);
    if (!q) { printf("realloc(%zu) failed: errno %d\n", n, errno); return 1; }
    if (!check(q, 100, 7)) return 1;
    q[n - 1] = 3;
    q = realloc(q, 200);
    if (!q || !check(q, 100, 7)) return 1;
    free(q);
    printf("huge ok\n");
    return 0;
}

/* Checks and frees n blocks of `size` bytes, block i filled with i * 7 + 1. */
static int check_and_free(unsigned char **b, int n, size_t size) {
    int bad = 0;
    for (int i = 0; i < n; ++i) {
        bad |= !check(b[i], size, (unsigned char)(i * 7 + 1));
        free(b[i]);
    }
    return bad;
}

static int grow(int n, size_t size) {
    unsigned char **b = calloc((size_t)n, sizeof *b);
    if (!b) return 1;
    for (int i = 0; i < n; ++i) {
        if (!(b[i] = malloc(size))) { printf("malloc(%zu) failed: errno %d\n", size, errno); return 1; }
        memset(b[i], i * 7 + 1, size);
    }
    size_t bigger = size + size / 2;
    for (int i = 0; i < n; ++i) {
        unsigned char *q = realloc(b[i], bigger);
        if (!q) { printf("realloc(%zu) failed: errno %d\n", bigger, errno); return 1; }
        if (!check(q, size, (unsigned char)(i * 7 + 1))) return 1;
        memset(q + size, i * 7 + 1, bigger - size);
        b[i] = q;
    }
    printf("block %p %zu\nblock %p %zu\nready\n", (void *)b[0], bigger, (void *)b[n - 1], bigger);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) _exit(check_and_free(b, n, bigger));
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status)) {
        printf("the child lost blocks: status %d\n", status);
        return 1;
    }
    if (check_and_free(b, n, bigger)) return 1;
    free(b);
    printf("grow ok\n");
    return 0;
}

static int aslimit(size_t limit) {
    struct rlimit rl = {limit, limit};
    if (setrlimit(RLIMIT_AS, &rl)) { printf("setrlimit: errno %d\n", errno); return 2; }
    enum { kKeys = 1000 };
    static unsigned char *keys[kKeys];
    for (int i = 0; i < kKeys; ++i) {
        if (!(keys[i] = malloc(32))) { printf("malloc(32) failed: errno %d\n", errno); return 1; }
        memset(keys[i], i & 0xff, 32);
    }
    errno = 0;
    unsigned char *big = malloc(8u << 20);
    if (big) printf("unmatched malloc(%u): served\n", 8u << 20);
    else printf("unmatched malloc(%u): failed: errno %d\n", 8u << 20, errno);
    free(big);
    int bad = 0;
    for (int i = 0; i < kKeys; ++i) {
        bad |= !check(keys[i], 32, (unsigned char)(i & 0xff));
        free(keys[i]);
    }
    if (bad) return 1;
    printf("aslimit ok\n");
    return 0;
}

static size_t vmsize(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmSize:", 7)) kb = strtoull(line + 7, NULL, 10);
    if (f) fclose(f);
    return kb * 1024;
}

static void *margin_thread(void *arg) {
    static const size_t sizes[] = {32, 4096, 256 << 10};
    (void)arg;
    for (int round = 0; round < 50; ++round)
        for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; ++i) {
            unsigned char *p = malloc(sizes[i]);
            if (!p) return (void *)1;
            memset(p, 0x5a, sizes[i]);
            int bad = !check(p, sizes[i], 0x5a);
            free(p);
            if (bad) return (void *)1;
        }
    return NULL;
}

static int asfull(void) {
    enum { kHeap = 256, kBlocks = 2000 };
    static void *heap[kHeap];
    static unsigned char *blocks[kBlocks];
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    for (int i = 0; i < kHeap; ++i) heap[i] = malloc(64 << 10);
    for (int i = 0; i < kHeap; ++i) free(heap[i]);
    struct rlimit rl = {vmsize() + (1u << 20), vmsize() + (1u << 20)};
    if (setrlimit(RLIMIT_AS, &rl)) { printf("setrlimit: errno %d\n", errno); return 2; }
    for (int i = 0; i < kBlocks; ++i) {
        if (!(blocks[i] = malloc(4000))) { printf("malloc(4000) #%d failed: errno %d\n", i, errno); return 1; }
        memset(blocks[i], i * 7 + 1, 4000);
    }
    if (check_and_free(blocks, kBlocks, 4000)) return 1;
    printf("asfull ok\n");
    return 0;
}

static int margin(size_t limit) {
    struct rlimit rl = {limit, limit};
    if (setrlimit(RLIMIT_AS, &rl)) { printf("setrlimit: errno %d\n", errno); return 2; }
    pthread_t t[2];
    for (int i = 0; i < 2; ++i) {
        int rc = pthread_create(&t[i], NULL, margin_thread, NULL);
        if (rc) { printf("pthread_create: error %d\n", rc); return 1; }
    }
    for (int i = 0; i < 2; ++i) {
        void *res = NULL;
        pthread_join(t[i], &res);
        if (res) { printf("thread %d: an allocation failed\n", i); return 1; }
    }
    printf("threads ok\n");
    unsigned char *m = mmap(NULL, 8u << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { printf("mmap: errno %d\n", errno); return 1; }
    memset(m, 0x33, 8u << 20);
    printf("mmap ok\n");
    enum { kKeys = 1000 };
    static unsigned char *keys[kKeys];
    for (int i = 0; i < kKeys; ++i) {
        if (!(keys[i] = malloc(32))) { printf("malloc(32): errno %d\n", errno); return 1; }
        memset(keys[i], i & 0xff, 32);
    }
    unsigned char *big = malloc(8u << 20);
    if (!big) { printf("malloc(%u): errno %d\n", 8u << 20, errno); return 1; }
    memset(big, 0x44, 8u << 20);
    printf("malloc ok\n");
    int bad = !check(big, 8u << 20, 0x44) || !check(m, 8u << 20, 0x33);
    for (int i = 0; i < kKeys; ++i) {
        bad |= !check(keys[i], 32, (unsigned char)(i & 0xff));
        free(keys[i]);
    }
    free(big);
    munmap(m, 8u << 20);
    if (bad) return 1;
    printf("margin ok\n");
    return 0;
}

#define KILL_ON(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)

static int install_filter(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        KILL_ON(__NR_mlock), KILL_ON(__NR_mlock2), KILL_ON(__NR_munlock), KILL_ON(__NR_mlockall),
        KILL_ON(__NR_munlockall),
        /* madvise: sshd allows NORMAL, DONTNEED, FREE, DONTFORK, DONTDUMP, WIPEONFORK; EINVAL otherwise */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 7),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_NORMAL, 5, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_DONTNEED, 4, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_FREE, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_DONTDUMP, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_DONTFORK, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof *f), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

static int sandbox(void) {
    if (install_filter()) { printf("seccomp: errno %d\n", errno); return 2; }
    printf("filter installed\n");
    fflush(stdout);
    enum { kCount = 20000 };
    static unsigned char *b[kCount];
    for (int round = 0; round < 3; ++round) {
        /* small blocks of several classes, then page runs: new slabs, slabs that empty and go
           back to the free runs, runs merged and given back to the kernel */
        for (int i = 0; i < kCount; ++i) {
            size_t n = i % 3 == 0 ? 32 : i % 3 == 1 ? 1000 : 1500;
            if (!(b[i] = malloc(n))) return 3;
            memset(b[i], i & 0xff, n);
        }
        for (int i = 0; i < kCount; ++i) {
            size_t n = i % 3 == 0 ? 32 : i % 3 == 1 ? 1000 : 1500;
            if (!check(b[i], n, (unsigned char)(i & 0xff))) return 1;
            free(b[i]);
        }
        for (int i = 0; i < 64; ++i) {
            if (!(b[i] = malloc(1u << 20))) return 3;
            memset(b[i], i, 1u << 20);
        }
        for (int i = 0; i < 64; ++i) free(b[i]);
    }
    printf("survived\n");
    return 0;
}

static int nomprotect(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mprotect, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof *f), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        printf("seccomp: errno %d\n", errno);
        return 2;
    }
    enum { kCount = 20000 };
    static unsigned char *b[kCount];
    for (int i = 0; i < kCount; ++i) {
        if (!(b[i] = malloc(1000))) return 3;
        memset(b[i], i & 0xff, 1000);
    }
    for (int i = 0; i < kCount; ++i) {
        if (!check(b[i], 1000, (unsigned char)(i & 0xff))) return 1;
        free(b[i]);
    }
    printf("nomprotect ok\n");
    return 0;
}

static int hugegrow(size_t n) {
    unsigned char *p = malloc(40u << 20);
    if (!p) { printf("malloc(%u) failed: errno %d\n", 40u << 20, errno); return 2; }
    p[0] = 1;
    unsigned char *q = realloc(p, n);
    if (!q) { printf("realloc(%zu) failed: errno %d\n", n, errno); free(p); return 1; }
    printf("hugegrow served\n");
    free(q);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    if (!strcmp(argv[1], "phases") && argc > 2) return phases(atoi(argv[2]));
    if (!strcmp(argv[1], "huge") && argc > 2) {
        memset(argv[0], 'T', strlen(argv[0]));
        return huge(strtoull(argv[2], NULL, 0));
    }
    if (!strcmp(argv[1], "hugegrow") && argc > 2) return hugegrow(strtoull(argv[2], NULL, 0));
    if (!strcmp(argv[1], "grow") && argc > 3) return grow(atoi(argv[2]), strtoull(argv[3], NULL, 0));
    if (!strcmp(argv[1], "sandbox")) return sandbox();
    if (!strcmp(argv[1], "nomprotect")) return nomprotect();
    if (!strcmp(argv[1], "asfull")) return asfull();
    if (!strcmp(argv[1], "vmsize")) return printf("vmsize %zu\n", vmsize()) < 0;
    if (!strcmp(argv[1], "margin") && argc > 2) return margin(strtoull(argv[2], NULL, 0));
    if (!strcmp(argv[1], "aslimit") && argc > 2) return aslimit(strtoull(argv[2], NULL, 0));
    return 2;
}
