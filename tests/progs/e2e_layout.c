/* e2e_layout.c - holds matching and non-matching blocks alive for inspection from outside.
 *
 * Under rules {size 32} and {min 512..2048}: blocks of 32 and 1000 bytes match, blocks of
 * 64 bytes and 100 KiB do not. Prints "pid N", one "match ADDR SIZE" or "plain ADDR SIZE"
 * line per block, then "ready"; waits until stdin reaches EOF; checks and frees every block;
 * prints "done" and exits 0 (1 if a block lost its contents).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef PREINIT_RUNTIME
/* e2e_layout_preinit: linked with tests/libs/libpreinit_runtime.so, whose set-up runs from
 * this executable's preinit_array, as a sanitizer runtime's does. */
void preinit_runtime_init(void);
static void call_preinit_runtime(int argc, char **argv, char **envp) {
    (void)argc, (void)argv, (void)envp;
    preinit_runtime_init();
}
__attribute__((section(".preinit_array"), used)) static void (*const preinit_entry)(int, char **, char **) =
    call_preinit_runtime;
#endif

struct block {
    const char *kind;
    size_t size;
    unsigned char *p;
};

int main(void) {
    struct block blocks[] = {
        {"match", 32, NULL},   {"match", 1000, NULL}, {"plain", 64, NULL},     {"plain", 100 * 1024, NULL},
        {"match", 32, NULL},   {"match", 2048, NULL}, {"plain", 64, NULL},     {"match", 512, NULL},
    };
    const size_t n = sizeof blocks / sizeof blocks[0];
    for (size_t i = 0; i < n; ++i) {
        blocks[i].p = malloc(blocks[i].size);
        if (!blocks[i].p) {
            printf("malloc(%zu) failed\n", blocks[i].size);
            return 2;
        }
        memset(blocks[i].p, (int)(0x40 + i), blocks[i].size);
    }
    printf("pid %d\n", (int)getpid());
    for (size_t i = 0; i < n; ++i) printf("%s %p %zu\n", blocks[i].kind, (void *)blocks[i].p, blocks[i].size);
    printf("ready\n");
    fflush(stdout);

    char buf[256];
    while (read(0, buf, sizeof buf) > 0) {
    }

    int bad = 0;
    for (size_t i = 0; i < n; ++i) {
        for (size_t j = 0; j < blocks[i].size; ++j)
            if (blocks[i].p[j] != (unsigned char)(0x40 + i)) {
                printf("block %zu changed at byte %zu\n", i, j);
                bad = 1;
                break;
            }
        free(blocks[i].p);
    }
    printf("done\n");
    return bad;
}
