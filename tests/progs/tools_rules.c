// tools_rules: known allocation patterns for memlock-inspect's per-rule counters
// (tests/shim/test_tools_rules.cpp runs it under tests/shim's rule configs):
//   100 x malloc(40), 50 of them freed         (usable 48 B each: live 2400, peak 4800)
//   10 x malloc(3000), all freed                (usable 3072 B each: live 0, peak 30720)
//   10 x malloc(64) in rulestats_make_secret    (live 640, peak 640)
//   20000 x malloc(200) + free, from main       (never from rulestats_never_called)
// then prints "ready" and waits for its stdin to close.
#include "hold_common.h"

static void *volatile g_keep[128];

__attribute__((noinline)) void *rulestats_make_secret(void) {
    unsigned char *p = malloc(64);
    if (p) memset(p, 0x5a, 64);
    return p;
}

// Named by the test's "ghost" rule; never called.
__attribute__((noinline)) void *rulestats_never_called(void) {
    unsigned char *p = malloc(200);
    if (p) memset(p, 0x11, 200);
    return p;
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc > 5) g_keep[0] = rulestats_never_called();  // keeps it linked, never taken
    void *keys[100], *pages[10];
    for (int i = 0; i < 100; ++i)
        if (!(keys[i] = malloc(40))) return 1;
    for (int i = 0; i < 100; i += 2) free(keys[i]);
    for (int i = 0; i < 100; ++i)
        if (i % 2) g_keep[i / 2] = keys[i];
    for (int i = 0; i < 10; ++i)
        if (!(pages[i] = malloc(3000))) return 1;
    for (int i = 0; i < 10; ++i) free(pages[i]);
    for (int i = 0; i < 10; ++i)
        if (!(g_keep[50 + i] = rulestats_make_secret())) return 1;
    for (int i = 0; i < 20000; ++i) {
        char *volatile p = malloc(200);
        if (!p) return 1;
        p[0] = 1;
        free(p);
    }
    return ready_until_eof();
}
