/* e2e_secrets.c - fills matching blocks with a secret marker and non-matching blocks with a
 * public one, both generated at run time, then dumps core (abort) or waits for gcore.
 *
 *   e2e_secrets abort   raise RLIMIT_CORE, abort(): the kernel writes the core
 *   e2e_secrets wait    print "ready", wait for EOF on stdin, exit 0
 *
 * Under rules {size 32} and {min 512..2048}: 16 blocks of 1024 bytes and 8 blocks of 32 bytes
 * hold the secret (1024 + 16 copies of its 16 bytes); one 16 KiB block (no rule) holds 1024
 * copies of the public marker and 64-byte blocks (no rule) one copy each. Prints "pid N",
 * "secret HEX", "public HEX" (hex text: the raw bytes exist only in the blocks).
 *
 * The program itself must not leave copies elsewhere: memcpy moves the marker through vector
 * registers, and both the core's register notes and the stack (the dynamic linker saves every
 * register there when it binds a function on first call) would show them. So every libc
 * function is called once before the secret exists, and the vector registers are cleared
 * right after the last copy of the secret.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "hold_common.h"

enum { kMarker = 16, kSecretBlocks = 16, kSecretSize = 1024, kKeyBlocks = 8, kKeySize = 32,
       kPublicSize = 16 * 1024, kSmallPublic = 8, kSmallSize = 64 };

/* Writes a fresh 16-byte marker straight into dst (never through a local buffer). */
static void make_marker(unsigned char *dst, uint64_t *state) {
    for (int i = 0; i < kMarker; ++i) dst[i] = (unsigned char)(next_random(state) >> 24);
}

/* Copies the marker at the start of dst over the rest of it. */
static void repeat_marker(unsigned char *dst, size_t size) {
    for (size_t off = kMarker; off + kMarker <= size; off += kMarker) memcpy(dst + off, dst, kMarker);
}

/* Overwrites the vector registers memcpy may have left the marker in. */
static void clear_vector_registers(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx")) __asm__ volatile("vzeroall" ::: "memory");
    else __asm__ volatile("pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\t"
                          "pxor %%xmm3, %%xmm3\n\tpxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\t"
                          "pxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\tpxor %%xmm8, %%xmm8\n\t"
                          "pxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
                          "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\t"
                          "pxor %%xmm15, %%xmm15" ::: "memory");
    if (__builtin_cpu_supports("avx512f"))
        __asm__ volatile(
            "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
            "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
            "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
            "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
            "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
            "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
            "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
            "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31" ::: "memory");
#endif
}

static void print_hex(const char *label, const unsigned char *p) {
    printf("%s ", label);
    for (int i = 0; i < kMarker; ++i) printf("%02x", p[i]);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "abort") != 0 && strcmp(argv[1], "wait") != 0)) {
        fprintf(stderr, "usage: e2e_secrets abort|wait\n");
        return 2;
    }
    /* Bind every libc function used below before the secret exists (see the top). */
    struct rlimit bind_rl;
    getrlimit(RLIMIT_CORE, &bind_rl);
    setrlimit(RLIMIT_CORE, &bind_rl);
    unsigned char *bind = malloc(64);
    if (!bind) return 3;
    memset(bind, 0, 64);
    memcpy(bind + 32, bind, 16);
    free(calloc(1, 16));
    free(bind);
    fflush(stdout);
    read(0, NULL, 0);
    printf("starting\n");

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t state = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
                     0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 16; ++i) next_random(&state);

    unsigned char *secret[kSecretBlocks], *keys[kKeyBlocks], *small[kSmallPublic];
    for (int i = 0; i < kSecretBlocks; ++i) secret[i] = malloc(kSecretSize);
    for (int i = 0; i < kKeyBlocks; ++i) keys[i] = malloc(kKeySize);
    unsigned char *pub = malloc(kPublicSize);
    for (int i = 0; i < kSmallPublic; ++i) small[i] = malloc(kSmallSize);
    for (int i = 0; i < kSecretBlocks; ++i)
        if (!secret[i]) return 3;
    for (int i = 0; i < kKeyBlocks; ++i)
        if (!keys[i]) return 3;
    for (int i = 0; i < kSmallPublic; ++i)
        if (!small[i]) return 3;
    if (!pub) return 3;

    make_marker(secret[0], &state);
    repeat_marker(secret[0], kSecretSize);
    for (int i = 1; i < kSecretBlocks; ++i) memcpy(secret[i], secret[0], kSecretSize);
    for (int i = 0; i < kKeyBlocks; ++i) memcpy(keys[i], secret[0], kKeySize);
    clear_vector_registers();

    make_marker(pub, &state);
    repeat_marker(pub, kPublicSize);
    for (int i = 0; i < kSmallPublic; ++i) {
        memset(small[i], 0, kSmallSize);
        memcpy(small[i] + 16, pub, kMarker);
    }

    printf("pid %d\n", (int)getpid());
    print_hex("secret", secret[0]);
    print_hex("public", pub);
    printf("ready\n");
    fflush(stdout);

    if (strcmp(argv[1], "abort") == 0) {
        struct rlimit rl = {RLIM_INFINITY, RLIM_INFINITY};
        if (setrlimit(RLIMIT_CORE, &rl) != 0) {
            rl.rlim_cur = rl.rlim_max = 0;
            getrlimit(RLIMIT_CORE, &rl);
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_CORE, &rl);
        }
        abort();
    }
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    for (int i = 0; i < kSecretBlocks; ++i) free(secret[i]);
    for (int i = 0; i < kKeyBlocks; ++i) free(keys[i]);
    for (int i = 0; i < kSmallPublic; ++i) free(small[i]);
    free(pub);
    printf("done\n");
    return 0;
}
