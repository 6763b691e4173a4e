/* phases.c - memory through phases of mixed sizes (make bench).
 *
 *   phases
 *
 * Five phases (16, 200, 3000, 40 and 100000-byte blocks, 48 MiB each, with their pointer
 * array), each freed before the next. Prints one line:
 *   PEAK_LIVE RSS_AT_PEAK LOCKED_AT_PEAK RSS_AFTER LOCKED_AFTER RSS_IDLE LOCKED_IDLE   (bytes)
 * where "at peak" is the phase with the most resident memory, "idle" is 200 ms after
 * everything was freed with no allocator call since, and "after" follows one more
 * allocation and free (allocator activity).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Sum of a "kB" field over /proc/self/smaps_rollup. */
static size_t rollup(const char *field) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    size_t kb = 0, len = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, len) && line[len] == ':') kb = strtoull(line + len + 1, NULL, 10);
    if (f) fclose(f);
    return kb * 1024;
}

int main(void) {
    static const size_t sizes[] = {16, 200, 3000, 40, 100000};
    size_t peak_live = 0, peak_rss = 0, peak_locked = 0;
    for (unsigned ph = 0; ph < sizeof sizes / sizeof *sizes; ++ph) {
        size_t n = sizes[ph], count = (48u << 20) / n;
        unsigned char **b = malloc(count * sizeof *b);
        if (!b) return 1;
        for (size_t i = 0; i < count; ++i) {
            if (!(b[i] = malloc(n))) return 1;
            memset(b[i], 1, n);
        }
        size_t live = count * (n + sizeof *b), rss = rollup("Rss");
        if (rss > peak_rss) peak_rss = rss, peak_locked = rollup("Locked"), peak_live = live;
        for (size_t i = 0; i < count; ++i) free(b[i]);
        free(b);
    }
    usleep(200000);
    size_t idle_rss = rollup("Rss"), idle_locked = rollup("Locked");
    free(malloc(100000));
    printf("%zu %zu %zu %zu %zu %zu %zu\n", peak_live, peak_rss, peak_locked, rollup("Rss"), rollup("Locked"), idle_rss,
           idle_locked);
    return 0;
}
