/* live_secrets COUNT SIZE
 * Allocates COUNT live blocks of SIZE bytes (after one warm-up block) and prints
 * "<bytes asked> <VmLck growth in bytes>": how much locked memory the secrets cost. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long vm_locked_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmLck: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: live_secrets COUNT SIZE\n");
        return 2;
    }
    long count = atol(argv[1]);
    size_t size = strtoul(argv[2], NULL, 10);
    char **blocks = calloc((size_t)count, sizeof *blocks); /* not a matching size */
    volatile char *warm = malloc(size);
    warm[0] = 1;
    long before = vm_locked_kb();
    for (long i = 0; i < count; ++i) {
        blocks[i] = malloc(size);
        memset(blocks[i], (int)i, size);
    }
    long after = vm_locked_kb();
    printf("%ld %ld\n", count * (long)size, (after - before) * 1024);
    return 0;
}
