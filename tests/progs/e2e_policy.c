/* e2e_policy.c - allocates more matching memory than may be locked.
 *
 *   e2e_policy COUNT [hold|shrink|big]
 *
 * Allocates COUNT blocks of 1000 bytes (matched by a rule {min 512..2048}), writing to each.
 * Stops at the first NULL and prints "null errno=ENOMEM at I" (or the errno number if it is
 * not ENOMEM); else prints "allocated COUNT". A malloc that succeeds but changes errno (0
 * before each) prints "errno=N after a malloc that succeeded at I", once. With "hold", then
 * prints "pid N", "first ADDR", "last ADDR" and "ready" and waits for EOF on stdin. With
 * "shrink", a block of 2000 bytes allocated first is shrunk to 600 once the others are
 * allocated, and it prints "shrunk dontdump|dumped locked|unlocked" (the flags of the mapping
 * that holds the result) and "content kept" or "content lost"; "big" does the same without
 * shrinking the block (and prints "big" for "shrunk"). Frees everything, prints "done" and
 * exits 0; exits 1 if a block lost its contents.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Does the smaps VmFlags line of the mapping that holds p have `flag` (" dd", " lo")? */
static int has_flag(const void *p, const char *flag) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int inside = 0, found = 0;
    unsigned long at = (unsigned long)p;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) inside = at >= lo && at < hi;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0) found = strstr(line, flag) != NULL;
    }
    fclose(f);
    return found;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long count = atol(argv[1]);
    int hold = argc > 2 && strcmp(argv[2], "hold") == 0;
    int shrink = argc > 2 && strcmp(argv[2], "shrink") == 0;
    unsigned char **blocks = calloc((size_t)count, sizeof *blocks); /* unmatched size */
    if (!blocks) return 2;
    unsigned char *big = shrink || (argc > 2 && strcmp(argv[2], "big") == 0) ? malloc(2000) : NULL;
    if (big) memset(big, 0x5a, 2000);
    long got = 0;
    int errno_told = 0;
    for (; got < count; ++got) {
        errno = 0;
        blocks[got] = malloc(1000);
        if (!blocks[got]) {
            if (errno == ENOMEM) printf("null errno=ENOMEM at %ld\n", got);
            else printf("null errno=%d at %ld\n", errno, got);
            break;
        }
        if (errno != 0 && !errno_told) {
            printf("errno=%d after a malloc that succeeded at %ld\n", errno, got);
            errno_told = 1;
        }
        memset(blocks[got], (int)(got & 0xff), 1000);
    }
    if (got == count) printf("allocated %ld\n", got);
    if (hold && got > 0) {
        printf("pid %d\nfirst %p\nlast %p\nready\n", (int)getpid(), (void *)blocks[0], (void *)blocks[got - 1]);
        fflush(stdout);
        char buf[64];
        while (read(0, buf, sizeof buf) > 0) {
        }
    }
    if (big) {
        unsigned char *q = shrink ? realloc(big, 600) : big;
        if (!q) return 3;
        big = q;
        int kept = 1;
        for (int j = 0; j < 600; ++j) kept &= big[j] == 0x5a;
        printf("%s %s %s\ncontent %s\n", shrink ? "shrunk" : "big", has_flag(big, " dd") == 1 ? "dontdump" : "dumped",
               has_flag(big, " lo") == 1 ? "locked" : "unlocked", kept ? "kept" : "lost");
    }
    free(big);
    int bad = 0;
    for (long i = 0; i < got; ++i) {
        for (int j = 0; j < 1000; ++j)
            if (blocks[i][j] != (unsigned char)(i & 0xff)) bad = 1;
        free(blocks[i]);
    }
    free(blocks);
    printf("done\n");
    return bad;
}
