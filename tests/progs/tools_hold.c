// tools_hold: allocates blocks the test configs match (32 bytes and 1 KiB), writes to them,
// prints "ready <pid>" and waits to be killed. memlock-inspect tests inspect it while it waits.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *volatile g_blocks[512];

int main(void) {
    for (int i = 0; i < 512; ++i) {
        g_blocks[i] = malloc(i % 2 ? 32 : 1024);
        if (!g_blocks[i]) return 1;
        memset(g_blocks[i], 0x5a, i % 2 ? 32 : 1024);
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    for (;;) pause();
}
