// security_forger: a hostile process for memlock-inspect. It maps what the inspector looks for
// (a memfd named "memlock-shim", and the file /dev/shm/memlock-shim.<pid> older releases
// used) and keeps changing it: garbage, a copied magic with impossible values, shrunk to
// nothing and grown back, unmapped and mapped again. Prints "ready", runs until killed.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BYTES (256 * 4096)  // larger than the counters page of any layout

int main(void) {
    char path[64];
    snprintf(path, sizeof path, "/dev/shm/memlock-shim.%d", (int)getpid());
    int fds[2] = {(int)syscall(SYS_memfd_create, "memlock-shim", 0), open(path, O_RDWR | O_CREAT, 0644)};
    void *maps[2] = {MAP_FAILED, MAP_FAILED};
    unsigned seed = 1;
    for (int i = 0; i < 2; ++i) {
        if (fds[i] < 0 || ftruncate(fds[i], BYTES) != 0) continue;
        maps[i] = mmap(NULL, BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
    }
    for (unsigned long round = 0;; ++round) {
        for (int i = 0; i < 2; ++i) {
            if (maps[i] == MAP_FAILED) continue;
            // Full size with the magic and garbage (layout, pid, sizes), then shorter than the
            // mapping for a moment; every few rounds unmapped and mapped again elsewhere.
            if (ftruncate(fds[i], BYTES) != 0) return 1;
            unsigned char *p = maps[i];
            memcpy(p, "MLSHIMS1", 8);
            for (int k = 8; k < 64; ++k) p[k] = (unsigned char)(rand_r(&seed) >> 3);
            if (ftruncate(fds[i], round % 2 ? 0 : 100) != 0) return 1;
            if (round % 64 == 0) {
                munmap(maps[i], BYTES);
                maps[i] = mmap(NULL, BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
            }
        }
        if (round == 0) {
            printf("ready\n");
            fflush(stdout);
        }
    }
}
