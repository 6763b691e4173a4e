/* alloc_difftest.c - a random sequence of allocator calls, checked against glibc 2.36's contract,
 * printed as a transcript that does not depend on addresses (scripts/alloc-difftest.sh compares the
 * transcripts of one seed without the shim and under configs).
 *
 * usage: alloc_difftest SEED OPS
 *
 * Each line is one call: its arguments, NULL or not, errno ("e=k": kept; after a success a change
 * is "e~N", which C allows and glibc itself makes, so comparisons ignore it), and for the block:
 * alignment (al), malloc_usable_size >= the size asked and the usable bytes writable (us), calloc's
 * zeroes (z), content up to the smaller size across realloc (ct), a failed realloc's block intact.
 * Calls: malloc, calloc (and nmemb * size overflow), realloc (grow, shrink, 0, NULL, to the usable
 * size, to impossible sizes), reallocarray, memalign, posix_memalign, aligned_alloc (any alignment,
 * 0 and near SIZE_MAX included), valloc, pvalloc, free, free(NULL), malloc_usable_size, mallinfo2,
 * malloc_info, malloc_stats, malloc_trim, mallopt; blocks of 0 bytes to 64 GiB (sparsely written);
 * worker threads that take over, realloc and free the main thread's blocks; fork (also from a
 * worker, and with a thread allocating meanwhile) with the child checking and freeing the parent's
 * blocks; posix_spawn and system. DT_SAFE_FORK=1 leaves out forks with other threads running (glibc
 * 2.36's MALLOC_CHECK_ allocator deadlocks in such a child without the shim).
 */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>
#include <spawn.h>
extern char **environ;

#pragma GCC diagnostic ignored "-Walloc-size-larger-than="
#pragma GCC diagnostic ignored "-Wuse-after-free"

#define NSLOTS 256
#define SENT 4242
#define DENSE 65536u
#define STRIDE 65521u

struct blk {
    unsigned char *p;
    size_t n;
    uint64_t id;
};

struct ctx {
    struct blk *slots;
    int lo, hi; /* slot range owned */
    uint64_t rng;
    FILE *out;
    const char *tag;
    unsigned long op;
    uint64_t next_id;
    int can_spawn; /* threads, fork, global settings */
};

static uint64_t rnd(struct ctx *c) {
    uint64_t z = (c->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static size_t below(struct ctx *c, size_t n) { return n ? rnd(c) % n : 0; }

static unsigned char pat(uint64_t id, size_t i) { return (unsigned char)((id * 2654435761u) ^ (i * 7 + (i >> 8) + 1)); }
/* The positions a block's pattern is written at: every byte below DENSE, every STRIDE-th
 * below MID, every MID-th above (so that blocks of gigabytes touch few pages). */
#define MID ((size_t)1 << 26)
static size_t first_pos(size_t i) {
    if (i < DENSE) return i;
    if (i < MID) { size_t j = (i + STRIDE - 1) / STRIDE * STRIDE; return j < MID ? j : MID; }
    return (i + MID - 1) / MID * MID;
}
static size_t next_pos(size_t i) { return first_pos(i + 1); }

static void fill(unsigned char *p, size_t from, size_t n, uint64_t id) {
    for (size_t i = first_pos(from); i < n; i = next_pos(i)) p[i] = pat(id, i);
}
static int check2(const unsigned char *p, size_t n, uint64_t id) {
    for (size_t i = 0; i < n; i = next_pos(i)) if (p[i] != pat(id, i)) return 0;
    return 1;
}
static int zeroed(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i = next_pos(i)) if (p[i]) return 0;
    return 1;
}
#define CHECK(p, n, id) check2(p, n, id)

static const size_t edges[] = {0, 1, 8, 15, 16, 17, 24, 31, 32, 33, 40, 48, 63, 64, 65, 100, 127, 128, 129, 255, 256,
                               257, 511, 512, 513, 1000, 1024, 2048, 4095, 4096, 4097, 8191, 8192, 8193, 16383,
                               16384, 16385, 18432, 65535, 65536, 65537, 131071, 131072, 131073, 262144, 1048576};

static size_t rsize(struct ctx *c) {
    unsigned r = below(c, 1000);
    if (r < 350) return below(c, 65);
    if (r < 600) return 65 + below(c, 540);
    if (r < 750) return 600 + below(c, 20000);
    if (r < 880) return edges[below(c, sizeof edges / sizeof *edges)];
    if (r < 985) return 20000 + below(c, 400000);
    if (r < 998) return 400000 + below(c, 6000000);
    if (r < 999) return ((size_t)16 << 20) + below(c, 1 << 20);
    if (below(c, 4)) return ((size_t)32 << 20) - 4096 + below(c, (size_t)300 << 20);
    static const size_t bigs[] = {(size_t)1 << 30, (size_t)3 << 30, (size_t)20 << 30, (size_t)30 << 30, (size_t)1 << 36};
    return bigs[below(c, sizeof bigs / sizeof *bigs)] + below(c, 8192);
}

static const size_t huges[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 4095, SIZE_MAX - 4096, SIZE_MAX - 65536,
                               (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX, (size_t)PTRDIFF_MAX - 4096,
                               (size_t)PTRDIFF_MAX - 32, (size_t)1 << 62, (size_t)1 << 47, (size_t)1 << 46,
                               (size_t)1 << 44, (size_t)100 << 30};

static size_t hsize(struct ctx *c) { return huges[below(c, sizeof huges / sizeof *huges)]; }

static const size_t aligns[] = {0, 1, 2, 3, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 4096,
                                4097, 8192, 12288, 16384, 32768, 65535, 65536, 65537, 1 << 17, 1 << 18, 1 << 19,
                                1 << 20, 1 << 21, 1 << 22, 3 << 20};
static const size_t haligns[] = {(size_t)1 << 24, (size_t)1 << 28, (size_t)1 << 30, (size_t)1 << 40,
                                 (size_t)1 << 46, (size_t)1 << 47, (size_t)1 << 62, (size_t)1 << 63,
                                 ((size_t)1 << 63) + 1, ((size_t)1 << 63) + 16, SIZE_MAX, SIZE_MAX - 15,
                                 ((size_t)3) << 62, ((size_t)1 << 62) + 4096};

static size_t ralign(struct ctx *c) {
    if (below(c, 40) == 0) return haligns[below(c, sizeof haligns / sizeof *haligns)];
    return aligns[below(c, sizeof aligns / sizeof *aligns)];
}

/* the alignment glibc's memalign promises for a */
static size_t eff_align(size_t a) {
    if (a <= 16) return 16;
    size_t e = 32;
    while (e < a && e) e <<= 1;
    return e ? e : a;
}

static void out_res(struct ctx *c, void *p, int e) {
    /* errno after a success is not part of malloc's contract: "e~N" marks a change (soft) */
    fprintf(c->out, " -> %s ", p ? "ok" : "NULL");
    if (e == SENT) fprintf(c->out, "e=k");
    else fprintf(c->out, p ? "e~%d" : "e=%d", e);
}

/* usable size >= n, and writable up to it without touching [0,n) content */
static int usable_ok(unsigned char *p, size_t n) {
    size_t u = malloc_usable_size(p);
    if (u < n) return 0;
    if (u - n <= (1u << 20)) memset(p + n, 0xa7, u - n);
    else { p[n] = 0xa7; p[u - 1] = 0xa7; }
    return 1;
}

static void kill_slot(struct ctx *c, int s, const char *why) {
    struct blk *b = &c->slots[s];
    if (!b->p) return;
    int ok = CHECK(b->p, b->n, b->id);
    errno = SENT;
    free(b->p);
    int e = errno;
    fprintf(c->out, "%s%lu free(%s %zu) ct=%d e=%s\n", c->tag, c->op, why, b->n, ok, e == SENT ? "k" : "X");
    b->p = NULL;
}

/* a new block must not overlap a live one (in any thread's slots: all share one array) */
static struct blk *g_all;
static int overlaps(struct ctx *c, const void *p, size_t n, const void *self) {
    uintptr_t a = (uintptr_t)p, e = a + (n ? n : 1);
    for (int i = c->lo; i < c->hi; ++i) {
        const struct blk *o = &g_all[i];
        if (!o->p || o->p == self) continue;
        uintptr_t b = (uintptr_t)o->p, f = b + (o->n ? o->n : 1);
        if (a < f && b < e) return 1;
    }
    return 0;
}

static void adopt(struct ctx *c, int s, void *p, size_t n, size_t align, int zero) {
    struct blk *b = &c->slots[s];
    if (overlaps(c, p, n, NULL)) fprintf(c->out, " OVERLAP");
    int al = p && ((uintptr_t)p % align == 0);
    int z = zero ? zeroed(p, n) : 1;
    int us = usable_ok(p, n);
    b->p = p;
    b->n = n;
    b->id = c->next_id++;
    fill(p, 0, n, b->id);
    fprintf(c->out, " al=%d us=%d z=%d\n", al, us, z);
}

static int pick(struct ctx *c) { return c->lo + (int)below(c, (size_t)(c->hi - c->lo)); }
static int pick_live(struct ctx *c) {
    for (int t = 0; t < 8; ++t) {
        int s = pick(c);
        if (c->slots[s].p) return s;
    }
    return -1;
}

static void do_alloc(struct ctx *c, int kind, size_t n, size_t a) {
    int s = pick(c);
    kill_slot(c, s, "old");
    void *p = NULL;
    int ret = -1;
    size_t align = 16;
    const char *name = "?";
    errno = SENT;
    switch (kind) {
    case 0: name = "malloc"; p = malloc(n); break;
    case 1: name = "memalign"; p = memalign(a, n); align = eff_align(a); break;
    case 2: name = "aligned_alloc"; p = aligned_alloc(a, n); align = eff_align(a); break;
    case 3: {
        name = "posix_memalign";
        void *q = (void *)0x1234;
        ret = posix_memalign(&q, a, n);
        p = ret == 0 ? q : NULL;
        if (ret && q != (void *)0x1234) fprintf(c->out, "%s%lu posix_memalign TOUCHED memptr on failure\n", c->tag, c->op);
        align = a < 16 ? 16 : a;
        break;
    }
    case 4: name = "valloc"; p = valloc(n); align = 4096; break;
    case 5: name = "pvalloc"; p = pvalloc(n); align = 4096; break;
    }
    int e = errno;
    fprintf(c->out, "%s%lu %s(%zu, %zu)", c->tag, c->op, name, a, n);
    if (kind == 3) fprintf(c->out, " ret=%d", ret);
    out_res(c, p, e);
    if (!p) { fprintf(c->out, "\n"); return; }
    if (kind == 5 && n) {
        size_t r = (n + 4095) & ~(size_t)4095;
        if (malloc_usable_size(p) < r) fprintf(c->out, " pv_short");
    }
    adopt(c, s, p, n, align, 0);
}

static void do_calloc(struct ctx *c) {
    size_t m, sz;
    unsigned r = below(c, 20);
    if (r == 0) {
        static const size_t pairs[][2] = {{SIZE_MAX / 2 + 1, 2}, {(size_t)1 << 32, (size_t)1 << 32}, {SIZE_MAX, SIZE_MAX},
                                          {3, SIZE_MAX / 3 + 1}, {(size_t)PTRDIFF_MAX / 2 + 1, 2}, {2, (size_t)PTRDIFF_MAX / 2 + 8},
                                          {SIZE_MAX, 1}, {1, SIZE_MAX}, {(size_t)1 << 40, 1024}, {16, (size_t)PTRDIFF_MAX / 16}};
        int k = below(c, sizeof pairs / sizeof *pairs);
        m = pairs[k][0], sz = pairs[k][1];
    } else {
        size_t n = rsize(c);
        m = 1 + below(c, 8);
        if (below(c, 4) == 0) m = 0;
        sz = m ? n / m : n;
        if (below(c, 2)) { size_t t = m; m = sz; sz = t; }
    }
    int s = pick(c);
    kill_slot(c, s, "old");
    errno = SENT;
    void *p = calloc(m, sz);
    int e = errno;
    fprintf(c->out, "%s%lu calloc(%zu, %zu)", c->tag, c->op, m, sz);
    out_res(c, p, e);
    if (!p) { fprintf(c->out, "\n"); return; }
    adopt(c, s, p, m * sz, 16, 1);
}

static void do_realloc(struct ctx *c, int array) {
    int s = pick(c);
    struct blk *b = &c->slots[s];
    size_t n;
    unsigned r = below(c, 30);
    if (r == 0) n = 0;
    else if (r == 1) n = hsize(c);
    else if (r < 8 && b->p) n = b->n / (1 + below(c, 4)) + below(c, 3);
    else if (r < 14 && b->p) n = b->n + 1 + below(c, b->n + 64);
    else n = rsize(c);
    int before = b->p ? CHECK(b->p, b->n, b->id) : 1;
    size_t m = 1, sz = n;
    if (array) {
        if (below(c, 6) == 0) { m = (size_t)1 << 33; sz = ((size_t)1 << 31) + below(c, 100); }
        else if (n) { m = 1 + below(c, 4); sz = n / m; }
        n = m * sz;
    }
    errno = SENT;
    void *p = array ? reallocarray(b->p, m, sz) : realloc(b->p, n);
    int e = errno;
    fprintf(c->out, "%s%lu %s(%s%zu, %zu x %zu) pre=%d", c->tag, c->op, array ? "reallocarray" : "realloc",
            b->p ? "blk " : "NULL ", b->p ? b->n : 0, m, sz, before);
    out_res(c, p, e);
    if (!p) {
        if (n == 0 && b->p && !array) { /* freed */
            fprintf(c->out, " freed\n");
            b->p = NULL;
            return;
        }
        if (n == 0 && b->p && array) { fprintf(c->out, " freed\n"); b->p = NULL; return; }
        fprintf(c->out, " intact=%d\n", b->p ? CHECK(b->p, b->n, b->id) : 1);
        return;
    }
    if (!b->p) { adopt(c, s, p, n, 16, 0); return; }
    size_t keep = n < b->n ? n : b->n;
    if (overlaps(c, p, n, b->p)) fprintf(c->out, " OVERLAP");
    int ct = CHECK(p, keep, b->id);
    int al = (uintptr_t)p % 16 == 0;
    int us = usable_ok(p, n);
    /* the bytes past keep were never written: extend the pattern */
    b->p = p;
    b->n = n;
    fill(p, keep, n, b->id);
    /* usable_ok scribbled past n; [keep,n) now refilled; [0,keep) untouched */
    fprintf(c->out, " ct=%d al=%d us=%d\n", ct, al, us);
}

static void do_free(struct ctx *c) {
    int s = pick_live(c);
    if (s < 0) {
        errno = SENT;
        free(NULL);
        fprintf(c->out, "%s%lu free(NULL) e=%s\n", c->tag, c->op, errno == SENT ? "k" : "X");
        return;
    }
    kill_slot(c, s, "blk");
}

static void do_usable(struct ctx *c) {
    int s = pick_live(c);
    if (s < 0) {
        fprintf(c->out, "%s%lu usable(NULL)=%zu\n", c->tag, c->op, malloc_usable_size(NULL));
        return;
    }
    struct blk *b = &c->slots[s];
    int us = usable_ok(b->p, b->n);
    int ct = CHECK(b->p, b->n, b->id);
    fprintf(c->out, "%s%lu usable(%zu) us=%d ct=%d\n", c->tag, c->op, b->n, us, ct);
}

static void do_huge(struct ctx *c) {
    size_t n = hsize(c);
    size_t a = ralign(c);
    int k = below(c, 6);
    do_alloc(c, k, n, a);
}

static size_t live_bytes(struct ctx *c) {
    size_t t = 0;
    for (int i = c->lo; i < c->hi; ++i) if (c->slots[i].p) t += c->slots[i].n;
    return t;
}

static void do_misc(struct ctx *c) {
    unsigned r = below(c, 6);
    switch (r) {
    case 0: {
        struct mallinfo2 mi = mallinfo2();
        size_t live = live_bytes(c);
        fprintf(c->out, "%s%lu mallinfo2 ok=%d\n", c->tag, c->op, mi.uordblks + mi.hblkhd >= live);
        break;
    }
    case 1: {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        int rc = f ? malloc_info(0, f) : -2;
        if (f) fclose(f);
        fprintf(c->out, "%s%lu malloc_info rc=%d xml=%d\n", c->tag, c->op, rc, buf && strncmp(buf, "<malloc", 7) == 0);
        free(buf);
        break;
    }
    case 2: {
        if (!c->can_spawn) break;
        fflush(stderr);
        int saved = dup(2), fd = open("/dev/null", O_WRONLY);
        dup2(fd, 2);
        malloc_stats();
        fflush(stderr);
        dup2(saved, 2);
        close(fd);
        close(saved);
        fprintf(c->out, "%s%lu malloc_stats\n", c->tag, c->op);
        break;
    }
    case 3: {
        errno = SENT;
        malloc_trim(below(c, 2) ? 0 : 1 << 20);
        fprintf(c->out, "%s%lu malloc_trim\n", c->tag, c->op);
        break;
    }
    case 4: {
        if (!c->can_spawn) break;
        static const int params[][2] = {{M_MMAP_THRESHOLD, 65536}, {M_MMAP_THRESHOLD, 1 << 20}, {M_MMAP_THRESHOLD, 128 << 20},
                                        {M_TRIM_THRESHOLD, 1 << 16}, {M_TRIM_THRESHOLD, 1 << 22}, {M_TOP_PAD, 0},
                                        {M_TOP_PAD, 1 << 20}, {M_MXFAST, 0}, {M_MXFAST, 64}, {M_MXFAST, 500},
                                        {M_PERTURB, 0}, {M_PERTURB, 0x5a}, {M_MMAP_MAX, 65536}, {M_ARENA_TEST, 8}};
        int k = below(c, sizeof params / sizeof *params);
        int rc = mallopt(params[k][0], params[k][1]);
        fprintf(c->out, "%s%lu mallopt(%d, %d) rc=%d\n", c->tag, c->op, params[k][0], params[k][1], rc);
        break;
    }
    case 5: {
        int s = pick_live(c);
        if (s < 0) break;
        struct blk *b = &c->slots[s];
        /* realloc to a huge size: must fail and leave the block */
        size_t n = hsize(c);
        errno = SENT;
        void *p = realloc(b->p, n);
        int e = errno;
        fprintf(c->out, "%s%lu realloc_huge(%zu, %zu)", c->tag, c->op, b->n, n);
        out_res(c, p, e);
        if (p) { b->p = p; b->n = b->n < n ? b->n : n; fprintf(c->out, "\n"); break; }
        fprintf(c->out, " intact=%d\n", CHECK(b->p, b->n, b->id));
        break;
    }
    }
}

static void one_op(struct ctx *c);

struct worker {
    struct ctx c;
    unsigned nops;
    char *buf;
    size_t len;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    w->c.out = open_memstream(&w->buf, &w->len);
    if (!w->c.out) w->c.out = fopen("/dev/null", "w");
    for (unsigned i = 0; i < w->nops; ++i) one_op(&w->c);
    /* hand some blocks back realloc'd to new sizes */
    fclose(w->c.out);
    return NULL;
}

static void do_threads(struct ctx *c) {
    int nw = 1 + below(c, 3);
    struct worker w[3];
    pthread_t t[3];
    int started[3];
    int span = (c->hi - c->lo) / nw;
    static const char *tags[] = {"T0:", "T1:", "T2:"};
    fprintf(c->out, "%s%lu threads %d\n", c->tag, c->op, nw);
    for (int i = 0; i < nw; ++i) {
        w[i].c = *c;
        w[i].c.lo = c->lo + i * span;
        w[i].c.hi = c->lo + (i + 1) * span;
        w[i].c.rng = rnd(c);
        w[i].c.tag = tags[i];
        w[i].c.op = 0;
        w[i].c.next_id = c->next_id + (uint64_t)(i + 1) * 1000000000ull;
        w[i].c.can_spawn = 0;
        w[i].nops = 200 + below(c, 2000);
        w[i].buf = NULL;
        started[i] = pthread_create(&t[i], NULL, worker_main, &w[i]) == 0;
    }
    for (int i = 0; i < nw; ++i) {
        if (!started[i]) { fprintf(c->out, "pthread_create failed\n"); continue; }
        pthread_join(t[i], NULL);
        if (w[i].buf) fwrite(w[i].buf, 1, w[i].len, c->out);
        free(w[i].buf);
    }
    c->next_id += 4000000000ull;
}

static volatile int stop_churn;
static void *churn(void *arg) {
    uint64_t x = (uintptr_t)arg;
    void *keep[64] = {0};
    while (!stop_churn) {
        x = x * 6364136223846793005ull + 1;
        int k = (x >> 33) % 64;
        free(keep[k]);
        keep[k] = malloc((x >> 40) % 3000);
    }
    for (int k = 0; k < 64; ++k) free(keep[k]);
    return NULL;
}

static void do_fork(struct ctx *c) {
    int threaded = below(c, 2) && !getenv("DT_SAFE_FORK");
    pthread_t t;
    stop_churn = 0;
    if (threaded && pthread_create(&t, NULL, churn, (void *)(uintptr_t)rnd(c))) threaded = 0;
    fflush(c->out);
    fflush(stderr);
    uint64_t child_seed = rnd(c);
    pid_t pid = fork();
    if (pid == 0) {
        struct ctx k = *c;
        k.tag = "C:";
        k.can_spawn = 0;
        k.rng = child_seed;
        k.op = 0;
        /* verify all, free the odd ones */
        int bad = 0;
        for (int i = k.lo; i < k.hi; ++i)
            if (k.slots[i].p && !CHECK(k.slots[i].p, k.slots[i].n, k.slots[i].id)) ++bad;
        fprintf(k.out, "C: verify bad=%d\n", bad);
        for (int i = k.lo; i < k.hi; i += 2) kill_slot(&k, i, "parent");
        for (int i = 0; i < 500; ++i) one_op(&k);
        for (int i = k.lo; i < k.hi; ++i) kill_slot(&k, i, "end");
        fflush(k.out);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (threaded) { stop_churn = 1; pthread_join(t, NULL); }
    fprintf(c->out, "%s%lu fork %s status=%d\n", c->tag, c->op, threaded ? "threaded" : "single", st);
    int bad = 0;
    for (int i = c->lo; i < c->hi; ++i)
        if (c->slots[i].p && !CHECK(c->slots[i].p, c->slots[i].n, c->slots[i].id)) ++bad;
    fprintf(c->out, "%s%lu after fork bad=%d\n", c->tag, c->op, bad);
}

/* fork from a worker thread while the other workers run: the child checks and frees the
 * worker's blocks, allocates some more, and reports content errors in its exit status */
static void do_thread_fork(struct ctx *c) {
    pid_t pid = fork();
    if (pid == 0) {
        struct ctx k = *c;
        int bad = 0;
        k.out = fopen("/dev/null", "w");
        k.can_spawn = 0;
        for (int i = k.lo; i < k.hi; ++i)
            if (k.slots[i].p && !check2(k.slots[i].p, k.slots[i].n, k.slots[i].id)) ++bad;
        for (int i = 0; i < 300; ++i) one_op(&k);
        for (int i = k.lo; i < k.hi; ++i) {
            if (k.slots[i].p && !check2(k.slots[i].p, k.slots[i].n, k.slots[i].id)) ++bad;
            free(k.slots[i].p);
        }
        _exit(bad > 100 ? 100 : bad);
    }
    int st = -1;
    waitpid(pid, &st, 0);
    fprintf(c->out, "%s%lu thread fork status=%d\n", c->tag, c->op, st);
}

/* posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK)) and system() while other threads allocate */
static void do_spawn(struct ctx *c) {
    int st = -1, rc;
    if (below(c, 2)) {
        pid_t pid;
        char *argv[] = {"/bin/true", NULL};
        rc = posix_spawn(&pid, "/bin/true", NULL, NULL, argv, environ);
        if (rc == 0) waitpid(pid, &st, 0);
    } else {
        rc = 0;
        st = system("exit 3");
    }
    fprintf(c->out, "%s%lu spawn rc=%d status=%d\n", c->tag, c->op, rc, st);
}

/* realloc to exactly the usable size, and to one byte more */
static void do_realloc_usable(struct ctx *c) {
    int s = pick_live(c);
    if (s < 0) return;
    struct blk *b = &c->slots[s];
    if (b->n > (64u << 20)) return;
    int plus = below(c, 2);
    size_t u = malloc_usable_size(b->p) + plus;
    errno = SENT;
    void *p = realloc(b->p, u);
    int e = errno;
    fprintf(c->out, "%s%lu realloc_usable(%zu, +%d)", c->tag, c->op, b->n, plus);
    out_res(c, p, e);
    if (!p) { fprintf(c->out, "\n"); return; }
    int ct = check2(p, b->n, b->id);
    int us = usable_ok(p, u);
    b->p = p;  /* the logical size stays b->n: u depends on the allocator */
    fprintf(c->out, " ct=%d us=%d\n", ct, us);
}

static void one_op(struct ctx *c) {
    ++c->op;
    if (below(c, 400) == 0) { do_realloc_usable(c); return; }
    if (below(c, 3000) == 0 && !getenv("DT_SAFE_FORK")) { do_spawn(c); return; }
    if (!c->can_spawn && c->tag[0] == 'T' && below(c, 1500) == 0 && !getenv("DT_SAFE_FORK")) { do_thread_fork(c); return; }
    unsigned r = below(c, 1000);
    if (r < 180) do_alloc(c, 0, rsize(c), 0);
    else if (r < 260) do_calloc(c);
    else if (r < 440) do_realloc(c, 0);
    else if (r < 480) do_realloc(c, 1);
    else if (r < 660) do_free(c);
    else if (r < 690) do_alloc(c, 1, rsize(c), ralign(c));
    else if (r < 720) do_alloc(c, 2, rsize(c), ralign(c));
    else if (r < 750) do_alloc(c, 3, rsize(c), ralign(c));
    else if (r < 770) do_alloc(c, 4, rsize(c), 4096);
    else if (r < 790) do_alloc(c, 5, rsize(c), 4096);
    else if (r < 840) do_usable(c);
    else if (r < 870) do_huge(c);
    else if (r < 885) do_free(c);
    else if (r < 905) do_misc(c);
    else if (r < 907 && c->can_spawn) do_threads(c);
    else if (r < 908 && c->can_spawn) do_fork(c);
    else do_free(c);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    static struct blk slots[NSLOTS];
    g_all = slots;
    struct ctx c = {slots, 0, NSLOTS, strtoull(argv[1], 0, 0), stdout, "", 0, 1, 1};
    unsigned long nops = strtoul(argv[2], 0, 0);
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    for (unsigned long i = 0; i < nops; ++i) one_op(&c);
    for (int i = 0; i < NSLOTS; ++i) kill_slot(&c, i, "end");
    printf("done %lu\n", c.op);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "difftest: stdout write error\n");
        return 3;
    }
    return 0;
}
