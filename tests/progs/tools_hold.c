// tools_hold: allocates blocks the test configs match (32 bytes and 1 KiB), writes to them,
// prints "ready" and waits for its stdin to close. memlock-inspect tests inspect it meanwhile.
// With the argument "dodump", the page of its first 32-byte block is made dumpable again
// (MADV_DODUMP, through a raw system call: the shim interposes madvise), so the arena has a
// mapping that is locked and not excluded from core dumps; it prints "dodump ADDR" first.
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "hold_common.h"

static void *volatile g_blocks[512];

// madvise(2) without libc's wrapper. Returns 0 or -errno.
static long raw_madvise(void *addr, size_t len, int advice) {
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"((long)SYS_madvise), "D"(addr), "S"(len), "d"((long)advice)
                     : "rcx", "r11", "memory");
    return ret;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = SYS_madvise;
    register long x0 __asm__("x0") = (long)addr;
    register long x1 __asm__("x1") = (long)len;
    register long x2 __asm__("x2") = advice;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
#else
#error "raw_madvise: x86_64 and aarch64 only"
#endif
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "dodump") == 0) {
        if (fill_blocks(g_blocks, 512)) return 1;
        const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        void *at = (void *)((uintptr_t)g_blocks[1] & ~(page - 1));
        if (raw_madvise(at, page, MADV_DODUMP) != 0) return 2;
        printf("dodump %lx\n", (unsigned long)(uintptr_t)at);
        return ready_until_eof();
    }
    return hold_blocks_until_eof(g_blocks, 512);
}
