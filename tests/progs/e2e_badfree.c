/* e2e_badfree.c - frees or reallocates an arena block wrongly; the shim must abort.
 *
 *   e2e_badfree double            malloc(32), free, free again
 *   e2e_badfree interior          malloc(1000), free(p + 16)
 *   e2e_badfree realloc-freed     malloc(32), free, realloc(p, 64)
 *   e2e_badfree realloc-freed-0   malloc(32), free, realloc(p, 0)
 *   e2e_badfree realloc-interior  malloc(1000), realloc(p + 16, 2000)
 *   e2e_badfree realloc-unaligned malloc(32), realloc(p + 8, 16)
 *   e2e_badfree usable-unaligned  malloc(32), malloc_usable_size(p + 1)
 *   e2e_badfree usable-aligned    posix_memalign(4096, 1000), malloc_usable_size(p + 8)
 *
 * Expects rules {size 32} and {min 512..2048}. Prints "block ADDR" (the pointer passed to the
 * bad free or realloc) before it. Exits 0 only if the bad call returned (a shim bug).
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2) return 2;
    if (strcmp(argv[1], "double") == 0) {
        char *p = malloc(32);
        if (!p) return 2;
        memset(p, 7, 32);
        free(p);
        printf("block %p\n", (void *)p);
        free(p);
    } else if (strcmp(argv[1], "interior") == 0) {
        char *p = malloc(1000);
        if (!p) return 2;
        memset(p, 7, 1000);
        printf("block %p\n", (void *)(p + 16));
        free(p + 16);
    } else if (strncmp(argv[1], "realloc-freed", 13) == 0) {
        char *p = malloc(32);
        if (!p) return 2;
        memset(p, 7, 32);
        free(p);
        printf("block %p\n", (void *)p);
        if (realloc(p, strcmp(argv[1], "realloc-freed-0") == 0 ? 0 : 64)) printf("a block\n");
    } else if (strcmp(argv[1], "realloc-interior") == 0 || strcmp(argv[1], "realloc-unaligned") == 0) {
        const int interior = strcmp(argv[1], "realloc-interior") == 0;
        const size_t size = interior ? 1000 : 32, at = interior ? 16 : 8;
        char *p = malloc(size);
        if (!p) return 2;
        memset(p, 7, size);
        printf("block %p\n", (void *)(p + at));
        if (realloc(p + at, interior ? 2000 : 16)) printf("a block\n");
    } else if (strncmp(argv[1], "usable-", 7) == 0) {
        const int unaligned = strcmp(argv[1], "usable-unaligned") == 0;
        void *v = NULL;
        if (unaligned)
            v = malloc(32);
        else if (posix_memalign(&v, 4096, 1000) != 0)
            v = NULL;
        if (!v) return 2;
        char *q = (char *)v + (unaligned ? 1 : 8);
        printf("block %p\n", (void *)q);
        printf("usable %zu\n", malloc_usable_size(q));
    } else {
        return 2;
    }
    printf("returned\n");
    return 0;
}
