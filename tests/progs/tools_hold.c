// tools_hold: allocates blocks the test configs match (32 bytes and 1 KiB), writes to them,
// prints "ready" and waits for its stdin to close. memlock-inspect tests inspect it meanwhile.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *volatile g_blocks[512];

int main(void) {
    for (int i = 0; i < 512; ++i) {
        const size_t n = i % 2 ? 32 : 1024;
        g_blocks[i] = malloc(n);
        if (!g_blocks[i]) return 1;
        memset(g_blocks[i], 0x5a, n);
    }
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
