// tools_oldlayout: what a shim of an older release (counters layout 3) publishes: a memfd
// named "memlock-shim" with the magic, layout 3 and this pid. Prints "ready" and waits for
// its stdin to close. memlock-inspect must refuse the page with a clear message.
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "hold_common.h"

#define BYTES (1024 * 1024)  // larger than any layout's page

int main(void) {
    int fd = (int)syscall(SYS_memfd_create, "memlock-shim", 0);
    if (fd < 0 || ftruncate(fd, BYTES) != 0) return 1;
    unsigned char *p = mmap(NULL, BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return 1;
    const uint32_t layout = 3;
    const int32_t pid = (int32_t)getpid();
    memcpy(p, "MLSHIMS1", 8);
    memcpy(p + 8, &layout, 4);
    memcpy(p + 12, &pid, 4);
    return ready_until_eof();
}
