#include "arena.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "backing.hpp"
#include "fatal.hpp"
#include "fork_child.hpp"
#include "memlock.h"
#include "procmaps.hpp"
#include "stack_scrub.hpp"

namespace mlshim {

namespace {

constexpr std::uint8_t kLargeClass = 0xff;
static_assert(kNumClasses < kLargeClass, "a class fits PageMeta::cls");

// Why memfd_secret could not be used, for messages.
const char *lock_why_for(int err) noexcept {
    if (err == ENOSYS)
        return "memfd_secret: ENOSYS: the kernel lacks it (Linux < 5.14, CONFIG_SECRETMEM off, or a seccomp filter)";
    return memlock_strerror(err);
}
constexpr unsigned kCacheCap = 32;  // blocks a thread caches per size class, at most
// Page runs (and growths in place) from this size on are first asked of the kernel's overcommit
// accounting (SecureArena::alloc_large, grow_in_place): two system calls, next to 8192 pages or more.
constexpr std::size_t kAskedCommit = std::size_t{32} << 20;

enum : std::uint8_t { kUnused = 0, kSlab = 1, kRun = 2, kFreeRun = 3 };
// Page flags: kLockedPage: inside a locked range; kInUse: committed and possibly resident
// (a slab, a live run, or a free run not yet given back to the kernel); kSecretPage: in a
// memfd_secret mapping (locked too).
// kRelocked: locked again in a fork child (SecureArena::relock_what_fits only; never left set).
// kReadWrite: committed once (read-write from then on; given back, a page stays committed).
enum : std::uint8_t { kLockedPage = 1, kInUse = 2, kSecretPage = 4, kRelocked = 8, kReadWrite = 16 };
// region_locked_: 0 not mapped locked, 1 mapped locked after start-up, kRelockPart: in a fork
// child, did not lock again whole (relock_what_fits settles it).
constexpr std::uint8_t kRelockPart = 2;
// Block states, one byte per 16-byte granule (at the block's first granule). A live block's
// byte also holds its rule's counters entry (stats_rule_index) in the bits above kStateMask,
// so that free() finds the rule to count without another table.
enum : std::uint8_t { kNeverUsed = 0, kLive = 1, kFreed = 2 };
constexpr std::uint8_t kStateMask = 3;
constexpr unsigned kRuleShift = 2;
static_assert(kStatsRules << kRuleShift <= 256, "a rule entry fits the state byte");
inline std::uint8_t live_state(unsigned rule) noexcept { return static_cast<std::uint8_t>(kLive | rule << kRuleShift); }

struct ClassInfo {
    std::uint32_t size;
    std::uint32_t slab_bytes;
    std::uint32_t cache_max;   // blocks a thread keeps
};

constexpr std::size_t compute_class_size(unsigned c) {
    if (c < 8) return (c + 1) * 16;
    if (c < kFineFirst) {
        unsigned b = 7 + (c - 8) / 4, i = (c - 8) % 4;
        return (std::size_t{1} << b) + (i + 1) * (std::size_t{1} << (b - 2));
    }
    unsigned b = kFineShift + (c - kFineFirst) / 8, i = (c - kFineFirst) % 8;
    return (std::size_t{1} << b) + (i + 1) * (std::size_t{1} << (b - 3));
}

struct ClassTable {
    ClassInfo info[kNumClasses];
    constexpr ClassTable() : info{} {
        for (unsigned c = 0; c < kNumClasses; ++c) {
            std::size_t size = compute_class_size(c);
            std::size_t slab = 8 * size < kMinSlab ? kMinSlab : (8 * size + kMinSlab - 1) / kMinSlab * kMinSlab;
            std::size_t cache = 16384 / size;
            cache = cache > kCacheCap ? kCacheCap : cache < 2 ? 2 : cache;
            info[c] = ClassInfo{static_cast<std::uint32_t>(size), static_cast<std::uint32_t>(slab),
                                static_cast<std::uint32_t>(cache)};
        }
    }
};

constexpr ClassTable kClasses;
static_assert(compute_class_size(kNumClasses - 1) == kMaxSmall, "class table ends at kMaxSmall");
static_assert(compute_class_size(kFineFirst - 1) == std::size_t{1} << kFineShift, "finer classes start at a power of 2");

std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }

// The largest gap between the mappings of the process below its stack: [lo, hi). False when
// /proc/self/maps cannot be read.
bool largest_gap(std::uintptr_t &lo, std::uintptr_t &hi) noexcept {
    std::uintptr_t prev_end = 0;
    lo = hi = 0;
    const bool ok = each_mapping([&](std::uintptr_t start, std::uintptr_t stop, const char *line) {
        if (start > prev_end && start - prev_end > hi - lo) lo = prev_end, hi = start;
        prev_end = std::max(prev_end, stop);
        // The stack ends the search: above it lie the vdso and (x86-64) the vsyscall page.
        return std::strstr(line, "[stack]") == nullptr && start < (std::uintptr_t{1} << 63);
    });
    return ok && hi > lo;
}

// A random word for placing the arena (getrandom; the clock where it is missing).
std::uint64_t random_word() noexcept {
    std::uint64_t r = 0;
#ifdef SYS_getrandom
    int saved = errno;
    long got = ::syscall(SYS_getrandom, &r, sizeof r, 1 /* GRND_NONBLOCK */);
    errno = saved;
    if (got == static_cast<long>(sizeof r)) return r;
#endif
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (std::uint64_t(ts.tv_nsec) * 0x9e3779b97f4a7c15ull) ^ reinterpret_cast<std::uintptr_t>(&r);
}

// Zeroes the vector registers of the calling thread. memcpy and friends move a secret through
// them (glibc's AVX2/EVEX copies use ymm0-15 or ymm16-31), and what they leave there is
// written into a core dump with the thread's registers. All vector registers are call-
// clobbered in the SysV ABI, so a free() may clear them. noinline: no live vector values of
// the caller can be in them at the call.
__attribute__((noinline)) void clear_vector_registers() noexcept {
#if defined(__x86_64__)
    static const bool avx = __builtin_cpu_supports("avx");
    static const bool avx512 = __builtin_cpu_supports("avx512f");
    if (avx512) {
        __asm__ __volatile__(
            "vzeroall\n\t"
            "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
            "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
            "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
            "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
            "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
            "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
            "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
            "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31\n\t"
            "vzeroupper" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
            "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    } else if (avx) {
        __asm__ __volatile__("vzeroall" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                             "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    } else {
        __asm__ __volatile__(
            "pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\tpxor %%xmm3, %%xmm3\n\t"
            "pxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\tpxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\t"
            "pxor %%xmm8, %%xmm8\n\tpxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
            "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\tpxor %%xmm15, %%xmm15"
            ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
            "xmm12", "xmm13", "xmm14", "xmm15");
    }
#endif
}

constexpr std::size_t kInlineWipe = 128;  // blocks up to this size are wiped with inline stores
// The classes of blocks up to kInlineWipe bytes, 16 bytes apart: malloc and free take them on
// their fast paths (SecureArena::alloc_fast, SecureArena::free).
constexpr unsigned kFastClasses = kInlineWipe / 16;
static_assert(compute_class_size(kFastClasses - 1) == kInlineWipe, "the first classes are 16 bytes apart");
constexpr std::size_t fast_class_size(std::size_t cls) noexcept { return (cls + 1) * 16; }  // pre: cls < kFastClasses

// Zeroes a small block (pre: size <= kInlineWipe, a multiple of 16, p aligned to 16) with
// inline 16-byte stores: a call costs more than the stores. Sizes between the powers of two
// are covered by stores that overlap, so a block takes one or two compares and two, four or
// eight stores. The empty asm tells the compiler the memory is read afterwards, so the
// stores stay.
inline void wipe_small(void *p, std::size_t size) noexcept {
    using Zero16 = std::uint64_t __attribute__((vector_size(16), may_alias));
    auto *at = static_cast<unsigned char *>(p);
    auto put = [at](std::size_t o) { *reinterpret_cast<Zero16 *>(at + o) = Zero16{}; };
    if (size <= 32) {
        put(0);
        put(size - 16);
    } else if (size <= 64) {
        put(0);
        put(16);
        put(size - 32);
        put(size - 16);
    } else {
        for (std::size_t o = 0; o < 64; o += 16) put(o);
        for (std::size_t o = 64; o > 0; o -= 16) put(size - o);
    }
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

#if defined(__x86_64__)
// Zeroes [p, p+size) 128 bytes a step (pre: size a multiple of 32): four 32-byte loads, and
// four 32-byte stores where a byte is not zero, so that what a program did not write since
// the last wipe is read but not dirtied again (docs/performance.md, "make bench on this host,
// before and after"). The first touch of each page is a store, as it was when every byte
// was stored: a read would map a page never written to the zero page (on transparent huge
// pages the huge zero page, which the program's next write splits). The empty asm tells the
// compiler the memory is read afterwards, so the stores stay. The caller clears the vector
// registers, which held what was read.
__attribute__((target("avx2"))) void wipe_avx2(void *p, std::size_t size) noexcept {
    auto *at = static_cast<unsigned char *>(p);
    const __m256i zero = _mm256_setzero_si256();
    std::size_t i = 0;
    for (; i + 128 <= size; i += 128) {
        auto *q = reinterpret_cast<__m256i *>(at + i);
        const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(q);
        const bool new_page = i == 0 || ((a - 1) ^ (a + 127)) >> 12;  // x86-64 pages are 4 KiB
        if (!new_page) {
            const __m256i any = _mm256_or_si256(_mm256_or_si256(_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1)),
                                                _mm256_or_si256(_mm256_loadu_si256(q + 2), _mm256_loadu_si256(q + 3)));
            if (_mm256_testz_si256(any, any)) continue;
        }
        _mm256_storeu_si256(q, zero);
        _mm256_storeu_si256(q + 1, zero);
        _mm256_storeu_si256(q + 2, zero);
        _mm256_storeu_si256(q + 3, zero);
    }
    for (; i < size; i += 32) _mm256_storeu_si256(reinterpret_cast<__m256i *>(at + i), zero);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}
#endif

// Zeroes a block larger than kInlineWipe (a slab block, a page or a run of pages).
void wipe_wide(void *p, std::size_t size) noexcept {
#if defined(__x86_64__)
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2 && size % 32 == 0) return wipe_avx2(p, size);
#endif
    memlock_wipe(p, size);
}

// Zeroes a block.
inline void wipe_block(void *p, std::size_t size) noexcept {
    if (size <= kInlineWipe) {
        wipe_small(p, size);
    } else {
        wipe_wide(p, size);
        clear_vector_registers();  // a block this size was copied through them
    }
}

// Arena locks the calling thread holds through Guard; a relock the program's munlockall asked
// for while it held one (from a signal handler) runs when it lets the last one go.
__thread unsigned t_guards __attribute__((tls_model("initial-exec"))) = 0;
std::atomic<SecureArena *> g_relock_pending{nullptr};

// Runs the relock a munlockall left to whoever let the arena's last lock go, if one is pending
// and this thread holds none. The fence orders it with relock_after_munlockall's request then
// try: a request that found a lock held is seen here once it is let go (x86-64's unlock is a
// full barrier already).
inline void relock_pending() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (t_guards == 0 && __builtin_expect(g_relock_pending.load(std::memory_order_relaxed) != nullptr, 0))
        if (SecureArena *a = g_relock_pending.load()) a->relock_after_munlockall(false);
}

class Guard {
public:
    // Counted before the lock is taken and after it is let go, so that a signal handler on this
    // thread never finds a lock held that the count does not show.
    explicit Guard(pthread_mutex_t &m) noexcept : m_(m) {
        ++t_guards;
        std::atomic_signal_fence(std::memory_order_seq_cst);
        pthread_mutex_lock(&m_);
    }
    // Takes m only if it is free (owns() tells): for calls the program may make from a signal
    // handler or a fork handler, while this thread or a forking one holds it.
    Guard(pthread_mutex_t &m, std::try_to_lock_t) noexcept : m_(m) {
        ++t_guards;
        std::atomic_signal_fence(std::memory_order_seq_cst);
        owns_ = pthread_mutex_trylock(&m_) == 0;
    }
    bool owns() const noexcept { return owns_; }
    ~Guard() {
        if (owns_) pthread_mutex_unlock(&m_);
        --t_guards;
        relock_pending();
    }
    Guard(const Guard &) = delete;
    Guard &operator=(const Guard &) = delete;

private:
    pthread_mutex_t &m_;
    bool owns_ = true;
};

}  // namespace

// ---- per-page, per-pool and per-thread state ---------------------------------------------

struct SecureArena::PageMeta {
    std::uint32_t head;       // page index of the slab or run this page belongs to
    std::uint32_t npages;     // at the head: pages in the slab or run
    std::uint32_t next_free;  // at a free run's head: next free run's head + 1 (0: none);
                              // at a slab's head: next partial slab of its class
    std::uint32_t prev_free;  // the same, backwards
    std::uint32_t nfree;      // at a slab's head: its free blocks (in the bitmap); at a free
                              // run's head: its pages in use (committed, not given back)
    std::uint8_t cls;         // size class, or kLargeClass
    std::uint8_t pool;        // in a slab: its pool (region_pool_ of its region, beside cls for free())
    std::uint8_t kind;        // kUnused, kSlab, kRun, kFreeRun
    std::uint8_t flags;       // kLockedPage, kInUse
};
static_assert(sizeof(SecureArena::PageMeta) == 24, "page table entry");

struct SecureArena::Pool {
    pthread_mutex_t lock;
    unsigned actions;
    std::uintptr_t start, end;   // the pool's address range
    std::uintptr_t frontier;     // first byte never carved
    std::uintptr_t committed;    // first byte not committed (prealloc commits ahead)
    std::uintptr_t lock_end;     // [start, lock_end) was locked on fault at start-up (or,
                                 // without lock-on-fault, is locked as it is committed)
    std::uintptr_t locked_to;    // without lock-on-fault: [start, locked_to) is locked
    bool secret;                 // [start, lock_end) is a memfd_secret mapping
    std::size_t lock_budget;     // its share of max_locked: address space it may lock
    std::size_t locked_mapped;   // of which locked so far: at start-up, and regions mapped locked
    std::uint32_t free_runs;     // first free run's head page + 1 (0: none)
    std::size_t dirty_bytes;     // free-run pages not yet given back to the kernel, that can be
    std::size_t kept_bytes;      // free-run pages that cannot be (secretmem): never purged
    std::uint64_t last_purge_ns; // when maybe_purge() last gave memory back
    bool purge_stuck;            // the last purge left more than slack + burst
    bool huge;                   // on transparent huge pages: commits whole ones (commit_end)
    std::uintptr_t huge_from;    // where commit_end counts half a huge page from: the start, or
                                 // in a fork child where the memory it inherited committed ends
    std::uint32_t partial[kNumClasses];  // first slab with free blocks, per class (head page + 1)
};

inline unsigned SecureArena::secret_pools() const noexcept {
    unsigned secret = 0;
    for (unsigned i = 0; i < npools_; ++i)
        if (pools_[i].secret && pools_[i].lock_end != pools_[i].start) secret |= 1u << i;
    return secret;
}

// A thread's cache of free blocks of one pool: per class a count and a stack of blocks. The
// counts of all classes share a few cache lines, and a class's stack is a power of two bytes
// long, so that the fast paths index it with a shift. A bin keeps a copy of its stack's top:
// malloc's block is one load away from what the last free() stored, not two (the count,
// then the stack).
struct SecureArena::PoolCache {
    struct Bin {
        std::uint32_t count;
        std::uint32_t cap;  // kClasses' cache_max for the bin's class, set on the slow paths that
                            // first fill the bin (0 before: free()'s comparison sends it there)
        void *top;          // blocks[cls][count - 1] while count > 0

        // The top block off the bin's stack, whose count the caller has read as n. pre: n > 0.
        // (The callers' loads of count are their own: a byte store between two loads of it,
        // such as a block's state, would make the compiler load it again.)
        void *take(void *const *stack, unsigned n) noexcept {
            void *b = top;
            count = n - 1;
            top = stack[n > 1 ? n - 2 : 0];  // stale, never read, at count 0
            return b;
        }
        // p onto the bin's stack, whose count the caller has read as n. pre: n < cap.
        void put(void **stack, void *p, unsigned n) noexcept {
            stack[n] = p;
            top = p;
            count = n + 1;
        }
    };
    PoolCache *next_spare;
    Bin bins[kNumClasses];
    void *blocks[kNumClasses][kCacheCap];
};
static_assert((kCacheCap & (kCacheCap - 1)) == 0, "a class's stack is a power of two bytes long");

// A thread's caches, one per pool, kCacheStride bytes apart: free() finds the one for a block's
// pool with a shift, not a load that would wait for the block's page entry.
constexpr unsigned kCacheShift = 14;
constexpr std::size_t kCacheStride = std::size_t{1} << kCacheShift;
static_assert(sizeof(SecureArena::PoolCache) <= kCacheStride, "a pool's cache fits its stride");
// The bytes of a set of caches for npools pools.
inline std::size_t cache_set_bytes(unsigned npools, std::size_t page) noexcept {
    return round_up(std::size_t{npools} << kCacheShift, page);
}
inline SecureArena::PoolCache *cache_in(SecureArena::PoolCache *set, unsigned pool) noexcept {
    return reinterpret_cast<SecureArena::PoolCache *>(reinterpret_cast<unsigned char *>(set) +
                                                      (std::size_t{pool} << kCacheShift));
}

namespace {

struct ThreadState {
    const SecureArena *arena;                      // owner of the caches (nullptr: none yet)
    SecureArena::PoolCache *caches;                // pool i's cache at cache_in(caches, i) (nullptr: none yet)
    ThreadCounters *slot;
    StatsRuleRow *rules;                           // slot's rule row (nullptr: the shared slot)
    bool slot_shared;                              // slot is shared: atomic updates
    bool dead;                                     // thread is exiting: no caching
};

thread_local ThreadState t_state __attribute__((tls_model("initial-exec")));

pthread_key_t g_exit_key;
SecureArena *g_key_arena = nullptr;  // the arena whose caches the exit key flushes

void on_thread_exit(void *) { if (g_key_arena) g_key_arena->thread_exit(); }

int current_tid() noexcept { return static_cast<int>(::syscall(SYS_gettid)); }

// Registers the calling thread with `arena`: a stats slot and the exit hook. False when the
// thread belongs to another arena (only in tests that build several) or is exiting.
bool thread_ready(const SecureArena *arena, StatsPage *stats) noexcept {
    ThreadState &ts = t_state;
    if (ts.arena == arena) return !ts.dead;
    if (ts.arena) return false;
    ts.arena = arena;
    if (stats) {
        ts.slot = stats_claim_slot(stats, current_tid());
        ts.slot_shared = ts.slot == &stats->shared;
        ts.rules = stats_rule_row(stats, ts.slot);
    }
    if (g_key_arena == arena) pthread_setspecific(g_exit_key, &ts);
    return true;
}

// What a count is for: a block handed out, one taken back, a page run grown in place.
enum class Count { alloc, free, grow };

// count() for a thread without a rule row: one in the shared slot (atomic adds on the rule's
// totals), or none (no stats page, or the thread is not registered: nothing is counted).
__attribute__((noinline)) void count_shared(StatsPage *stats, unsigned rule, std::int64_t bytes, Count what) noexcept {
    if (!stats || !t_state.slot) return;
    StatsRuleTotal &t = stats->rule_totals[rule];
    if (what == Count::alloc) t.matches.fetch_add(1, std::memory_order_relaxed);
    if (what == Count::free) t.frees.fetch_add(1, std::memory_order_relaxed);
    const std::int64_t now = t.live.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    if (bytes > 0) stats_raise_peak(t, now);
}

// Counts for the calling thread `bytes` (> 0 allocated, < 0 freed) of rule entry `rule`, and
// the block (a match or a free) unless `what` is Count::grow, in its own rule row `row`. This
// is the only count the matched path makes (the process totals are sums over the rules): no
// locked instruction, the thread being its row's only writer (ThreadCounters::bump, and a
// plain load and store for an allocation's bytes). An allocation raises the rule's peak when
// the published live bytes plus the thread's own unpublished ones exceed it (a compare, no
// write, otherwise).
inline void count_row(StatsPage *stats, StatsRuleRow *row, unsigned rule, std::int64_t bytes, Count what) noexcept {
    StatsRuleCount &c = row->rule[rule];
    if (what == Count::alloc) ThreadCounters::bump(c.matches, 1);
    if (what == Count::free) {
        ThreadCounters::bump(c.frees, 1);
        ThreadCounters::bump(c.live, bytes);
        return;
    }
    const std::int64_t mine = c.live.load(std::memory_order_relaxed) + bytes;
    c.live.store(mine, std::memory_order_relaxed);
    StatsRuleTotal &t = stats->rule_totals[rule];
    const std::int64_t now = t.live.load(std::memory_order_relaxed) + mine;
    if (now > t.peak.load(std::memory_order_relaxed)) stats_raise_peak(t, now);
}

// count_row() in the calling thread's row, or count_shared() for a thread without one.
inline void count(StatsPage *stats, unsigned rule, std::int64_t bytes, Count what) noexcept {
    StatsRuleRow *row = t_state.rules;
    if (__builtin_expect(row == nullptr, 0)) return count_shared(stats, rule, bytes, what);
    count_row(stats, row, rule, bytes, what);
}

// Publishes the calling thread's rule row (slow paths only).
inline void publish_rules(StatsPage *stats) noexcept {
    ThreadState &ts = t_state;
    if (ts.rules) stats_publish_row(stats, ts.rules, stats_rule_entries(*stats));
}

}  // namespace

std::size_t SecureArena::class_size(unsigned cls) noexcept { return kClasses.info[cls].size; }


// ---- set-up --------------------------------------------------------------------------------

std::size_t SecureArena::meta_len(std::size_t span) const noexcept { return round_up(span / page_ * sizeof(PageMeta), page_); }
std::size_t SecureArena::state_len(std::size_t span) const noexcept { return round_up(span / 16, page_); }
std::size_t SecureArena::bits_len(std::size_t span) const noexcept { return round_up(span / 128, page_); }

int SecureArena::init(const ArenaOptions &opts, const unsigned *pool_actions, unsigned npools,
                      StatsPage *stats, ArenaReporter reporter) noexcept {
    if (npools == 0 || npools > kMaxPools) return EINVAL;
    opts_ = opts;
    stats_ = stats;
    reporter_ = reporter;
    secret_ = opts.backing != Backing::anonymous;
    page_ = memlock_page_size();
    page_shift_ = static_cast<unsigned>(__builtin_ctzll(page_));
    std::size_t pool_bytes = std::size_t{1} << 20;
    while (pool_bytes < opts.pool_bytes) pool_bytes <<= 1;
    std::size_t total = pool_bytes * npools;

    // The arena's address space is one range, so that owns() stays one comparison and the
    // side tables stay arrays indexed by offset, but only what is in use is mapped: a span
    // large enough for the growth cap is chosen at start-up (place()), and the arena maps
    // regions at its bottom as pools need them, each for one pool, at fixed addresses.
    // [bits | pools | state | meta | blocks]: the free bits at the top of their room, growing
    // down; the states and the page table at the bottom of theirs, growing up.
    std::size_t cap = std::max(opts.max_reserve ? opts.max_reserve : total * kGrowthFactor, total);
    std::size_t region = kMinRegion;
    while (region < page_ || region * kMaxRegions < cap) region <<= 1;
    cap = std::min(cap, std::size_t{kMaxRegions} * region) / region * region;
    region_shift_ = static_cast<unsigned>(__builtin_ctzll(region));
    region_pages_ = region / page_;
    // Transparent huge pages where one divides a region (so that regions, which are aligned
    // to their size, are aligned to huge pages): not with 64 KiB pages on aarch64, whose huge
    // pages are 512 MiB.
    huge_ = backing_huge_page_size();
    ask_commit_ = backing_overcommit_guessed();
    if (huge_ <= page_ || region % huge_ || (huge_ & (huge_ - 1))) huge_ = 0;

    // What is mapped at start-up: each pool's first extent, one region, or for a pool that
    // locks its share of the lock budget (locked on fault now: no mlock after start-up), and
    // for the first of them what prealloc commits.
    unsigned locking = 0;
    for (unsigned i = 0; i < npools; ++i) locking += (pool_actions[i] & kActionLock) != 0;
    std::size_t first_extent[kMaxPools] = {}, first_span = 0;
    bool prealloc_placed = false;
    for (unsigned i = 0; i < npools; ++i) {
        std::size_t want = region;
        if (pool_actions[i] & kActionLock) {
            // A memfd_secret file is mapped over the whole budget at start-up; anonymous
            // memory locks later regions as they are mapped (mmap MAP_LOCKED).
            if (secret_) want = std::max(want, std::min(opts.max_locked / locking, pool_bytes));
            if (!prealloc_placed) {
                if (round_up(opts.prealloc, page_) > pool_bytes) return EINVAL;
                want = std::max(want, round_up(opts.prealloc, page_));
            }
            prealloc_placed = true;
        }
        first_extent[i] = round_up(want, region);
        first_span += first_extent[i];
    }
    cap = std::max(cap, first_span);
    // The pools and the first thread's caches, mapped between the free bits and the states
    // (place()).
    const std::size_t pools_bytes = round_up(sizeof(Pool) * npools, page_);
    pools_len_ = pools_bytes + cache_set_bytes(npools, page_);
    int rc = 0;
    for (;; cap = std::max(first_span, cap / 2 / region * region)) {
        cap_span_ = cap;
        rc = place(bits_len(cap) + pools_len_ + state_len(cap) + meta_len(cap) + cap, first_span);
        if (!rc || cap == first_span) break;
    }
    // Dontdump is a property of the whole pool, set before any block exists.
    for (unsigned i = 0, at = 0; i < npools && !rc; at += static_cast<unsigned>(first_extent[i] / region), ++i)
        if (pool_actions[i] & kActionDontdump)
            rc = memlock_dontdump(reinterpret_cast<void *>(base_ + std::size_t{at} * region), first_extent[i]);
    if (rc) {
        if (meta_) {
            release_side(first_span);
            memlock_release(reinterpret_cast<void *>(base_), first_span);
        }
        forget_place();
        cap_span_ = 0;
        return rc;
    }
    pools_ = reinterpret_cast<Pool *>(bits_top_);
    unused_caches_ = reinterpret_cast<PoolCache *>(reinterpret_cast<unsigned char *>(bits_top_) + pools_bytes);
    if (void *marks = backing_map_wiped_on_fork(sizeof(ProcessMarks))) marks_ = static_cast<ProcessMarks *>(marks);
    marks_->made_here = 1;
    npools_ = npools;
    wipe_pools_ = 0;
    std::uintptr_t next = base_;
    for (unsigned i = 0; i < npools; ++i) {
        Pool *p = new (&pools_[i]) Pool();
        pthread_mutex_init(&p->lock, nullptr);
        p->actions = pool_actions[i];
        if (p->actions & kActionWipe) wipe_pools_ |= 1u << i;
        p->start = p->frontier = p->committed = p->lock_end = p->locked_to = p->huge_from = next;
        marks_->huge_own[i] = 1;
        p->end = next += first_extent[i];
        for (std::size_t r = (p->start - base_) >> region_shift_; r < (p->end - base_) >> region_shift_; ++r)
            region_pool_[r] = static_cast<std::uint8_t>(i);
        if (p->actions & kActionLock) {
            p->lock_budget = std::min(opts.max_locked / locking, cap);
            lock_at_start(*p, p->lock_budget);
            p->locked_mapped = p->lock_end - p->start;
            // Anonymous memory locked on fault: on huge pages where the kernel offers them.
            p->huge = huge_ && !p->secret && !lock_on_commit_ && p->lock_end > p->start &&
                      backing_advise_huge(reinterpret_cast<void *>(p->start), p->end - p->start) == 0;
            // Refused at start-up (the limit, a sandbox): what could be locked is the budget.
            if (lock_error_ || secret_missing_) p->lock_budget = p->locked_mapped;
        }
    }
    scrub_pools_ = opts.scrub_stack ? wipe_pools_ : 0;
    if (stats_) {
        stats_->reserved_bytes.store(first_span);  // where blocks live: what memlock-inspect checks
        stats_->arena_start = base_;
        stats_->max_locked = opts.max_locked;
        stats_->on_lock_failure = static_cast<std::uint32_t>(opts.on_lock_failure);
        stats_->backing = secret_ ? kStatsBackingSecretmem : kStatsBackingAnonymous;
    }
    const Pool &last = pools_[npools - 1];
    tail_onfault_ = (last.actions & kActionLock) && !last.secret && !lock_on_commit_ && last.lock_end == last.end;
    if (!g_key_arena && pthread_key_create(&g_exit_key, on_thread_exit) == 0) g_key_arena = this;
    __atomic_store_n(&span_, first_span, __ATOMIC_RELEASE);  // publish: owns() answers from here on
    if (opts.prealloc > 0) {
        // Commit and lock ahead (a daemon may drop the privilege to lock later).
        // Into the first pool that locks (a pool without the lock action has nothing to lock).
        unsigned first_locking = 0;
        while (first_locking < npools && !(pools_[first_locking].actions & kActionLock)) ++first_locking;
        if (first_locking == npools) {
            if (reporter_) reporter_(LogLevel::warn, "policy.prealloc: ignored", "no rule has the lock action");
            return 0;
        }
        Pool &p0 = pools_[first_locking];
        Guard g(p0.lock);
        std::size_t bytes = round_up(opts.prealloc, page_);
        if (bytes > p0.end - p0.start) return EINVAL;
        bytes = commit_end(p0, p0.start + bytes) - p0.start;
        if (int err = commit_and_lock(p0, p0.start, bytes)) {
            // Later allocations try again, one slab at a time.
            if (reporter_)
                reporter_(LogLevel::warn, "policy.prealloc: cannot lock the preallocated memory up front",
                          err == kDeniedByPolicy ? "denied by policy" : space_why());
            return 0;
        }
        p0.committed = p0.start + bytes;
    }
    return 0;
}

// Chooses where the arena's span (`room` bytes: the side tables' rooms, then the blocks')
// lies, and maps the first `first_span` bytes of blocks and their side tables there. The
// span lies in the middle of the largest gap of the address space (randomly placed in its
// middle half), where neither the kernel's top-down (or legacy bottom-up) placement of new
// mappings nor the heap's growth reach it before they have used a quarter of the gap: on
// x86-64 (47 bits) and aarch64 (48 bits) tens of TiB, with a 39-bit aarch64 tens of GiB.
// Without /proc (or without such a gap), where the kernel would put a mapping of that size.
// 0 or an errno value (nothing mapped then).
int SecureArena::place(std::size_t room, std::size_t first_span) noexcept {
    const std::size_t region = region_pages_ * page_;
    const std::size_t sides = bits_len(cap_span_) + pools_len_ + state_len(cap_span_) + meta_len(cap_span_);
    auto map_at = [&](std::uintptr_t at) {
        base_ = round_up(at + sides, region);
        bits_top_ = reinterpret_cast<std::uint64_t *>(base_ - sides + bits_len(cap_span_));
        state_ = reinterpret_cast<std::uint8_t *>(bits_top_) + pools_len_;
        meta_ = reinterpret_cast<PageMeta *>(state_ + state_len(cap_span_));
        side_span_ = 0;
        side_bytes_ = 0;
        int rc = map_side(0, first_span);
        if (!rc && (rc = memlock_reserve_at(reinterpret_cast<void *>(base_), first_span))) release_side(first_span);
        return rc;
    };
    int rc = ENOMEM;
    std::uintptr_t lo = 0, hi = 0;
    if (largest_gap(lo, hi) && hi - lo >= 4 * (room + region)) {
        const std::size_t quarter = (hi - lo) / 4;
        const std::size_t slack = (hi - lo) / 2 - room - region;
        rc = map_at(lo + quarter + random_word() % slack / region * region);
    }
    if (rc) {
        void *probe = nullptr;
        rc = memlock_reserve(room + region, &probe);
        if (rc) return rc;
        memlock_release(probe, room + region);
        rc = map_at(reinterpret_cast<std::uintptr_t>(probe));
    }
    if (rc) forget_place();
    return rc;
}

// After a placement that failed, or one undone: no side table is mapped.
void SecureArena::forget_place() noexcept {
    meta_ = nullptr, state_ = nullptr, bits_top_ = nullptr, base_ = 0, side_bytes_ = 0, side_span_ = 0;
}

// Maps and commits the side tables' part for blocks [from_span, to_span), and with the first
// part (from_span 0) the pools' mapping above the free bits: 0, or an errno value (nothing
// mapped) when their rooms are taken. They hold no secrets, but nothing of use in a core dump
// either: they stay out too.
int SecureArena::map_side(std::size_t from_span, std::size_t to_span) noexcept {
    unsigned char *const top = reinterpret_cast<unsigned char *>(bits_top_);
    const std::size_t len[3] = {bits_len(to_span) - bits_len(from_span) + (from_span ? 0 : pools_len_),
                                state_len(to_span) - state_len(from_span), meta_len(to_span) - meta_len(from_span)};
    unsigned char *const at[3] = {top - bits_len(to_span), state_ + state_len(from_span),
                                  reinterpret_cast<unsigned char *>(meta_) + meta_len(from_span)};
    for (unsigned t = 0; t < 3; ++t) {
        if (!len[t]) continue;
        int rc = memlock_reserve_at(at[t], len[t]);
        if (!rc && (rc = memlock_commit(at[t], len[t]))) memlock_release(at[t], len[t]);
        if (rc) {
            for (unsigned u = 0; u < t; ++u)
                if (len[u]) memlock_release(at[u], len[u]);
            return rc;
        }
        memlock_dontdump(at[t], len[t]);
    }
    for (unsigned t = 0; t < 3; ++t) side_bytes_ += len[t];
    side_span_ = to_span;
    return 0;
}

// Unmaps the side tables for [base_, base_ + span) and the pools' mapping.
void SecureArena::release_side(std::size_t span) noexcept {
    memlock_release(reinterpret_cast<unsigned char *>(bits_top_) - bits_len(span), bits_len(span) + pools_len_);
    memlock_release(state_, state_len(span));
    memlock_release(meta_, meta_len(span));
}

// ---- growing a pool --------------------------------------------------------------------------

// Locks [pool.start, +budget) on fault, once, at start-up (or maps it from a memfd_secret
// file: backing.hpp). Pages committed inside that range later are locked as they are first
// touched, without an mlock call: after start-up the arena makes no system call that glibc's
// malloc would not make itself (a seccomp sandbox installed later may forbid mlock). Where
// the limit refuses the whole budget, the largest halving of it that the kernel accepts.
// Without lock-on-fault the range is locked piece by piece as it is committed (mlock calls
// after start-up: see docs/shim.md, "Old kernels").
void SecureArena::lock_at_start(Pool &pool, std::size_t budget) noexcept {
    pool.secret = false;
    if (secret_missing_) return;  // deny or abort: nothing is locked, commit_and_lock decides
    bool secret = secret_;
    std::size_t len = std::min(budget, pool.end - pool.start) / page_ * page_;
    while (len >= kMinSlab) {
        int err = backing_lock(secret, reinterpret_cast<void *>(pool.start), len);
        if (!secret && (err == ENOSYS || err == EINVAL)) {
            // No lock-on-fault (Linux < 4.4, qemu-user): commit_and_lock mlocks the pages of
            // the range as they are committed.
            lock_on_commit_ = true;
            err = 0;
        }
        if (!err) {
            pool.lock_end = pool.start + len;
            pool.secret = secret;
            return;
        }
        if (secret && backing_secret_missing(err)) {
            if (!secret_unavailable(err)) return;
            secret = false;  // the same length, from anonymous memory
            continue;
        }
        if (!lock_error_) lock_error_ = err;
        len = len / 2 / page_ * page_;
    }
}

// The program's own mlock was refused (err: ENOMEM or EAGAIN, RLIMIT_MEMLOCK) while pools hold
// pages locked on fault at start-up that they have not committed, which count against the same
// limit: the program's lock comes first, as without the shim. Unlocks each such pool's range
// from where its committed pages end and returns the bytes given back. Pages committed there
// later follow policy.on_lock_failure, with err as the reason. Never waits for a lock (the
// call may come from a signal handler, or from a fork handler while the shim's holds them
// all): a pool whose locks are taken gives nothing back.
std::size_t SecureArena::give_back_unused_lock(int err) noexcept {
    if (t_guards != 0 || lock_on_commit_) return 0;
    std::size_t given = 0;
    for (unsigned i = 0; i < npools_; ++i) {
        Pool &pool = pools_[i];
        if (!(pool.actions & kActionLock) || pool.secret) continue;
        Guard pg(pool.lock, std::try_to_lock);
        if (!pg.owns()) continue;
        Guard g(misc_lock_, std::try_to_lock);
        if (!g.owns()) continue;
        // A pool that carves from a later extent already committed its start-up range.
        if (pool.committed < pool.start || pool.committed >= pool.lock_end) continue;
        const std::uintptr_t keep = pool.committed;
        if (memlock_unlock(reinterpret_cast<void *>(keep), pool.lock_end - keep)) continue;
        given += pool.lock_end - keep;
        pool.locked_mapped -= pool.lock_end - keep;
        pool.lock_budget = pool.locked_mapped;
        pool.lock_end = keep;
        tail_onfault_ = false;
        if (!lock_error_) lock_error_ = err;
        void_fork_plan();
    }
    return given;
}

// memfd_secret is missing (err). Under "auto" the arena uses locked anonymous memory and says
// so at info level. Under "secretmem" the lock-failure policy decides, as for an mlock error:
// fallback uses anonymous memory after one warning; deny and abort lock nothing, so that
// commit_and_lock refuses the first matching allocation, or stops the program at it, naming
// the reason. Returns true to fall back to anonymous memory.
bool SecureArena::secret_unavailable(int err) noexcept {
    secret_ = false;
    if (stats_) stats_->backing = kStatsBackingAnonymous;
    if (opts_.backing == Backing::automatic) {
        if (reporter_) reporter_(LogLevel::info, "policy.backing auto: arena memory is locked anonymous memory", lock_why_for(err));
        return true;
    }
    if (stats_) stats_->lock_failures.fetch_add(1);
    if (opts_.on_lock_failure == LockFailurePolicy::fallback) {
        if (stats_) stats_->fallbacks.fetch_add(1);
        if (reporter_)
            reporter_(LogLevel::warn,
                      "policy.backing secretmem: memfd_secret is unavailable (policy fallback: arena memory is "
                      "locked anonymous memory, which root can read through /proc/PID/mem)",
                      lock_why_for(err));
        return true;
    }
    secret_missing_ = true;
    lock_error_ = err;
    return false;
}

// Why locking at start-up fell short, for messages.
const char *SecureArena::lock_why() const noexcept {
    return lock_error_ ? (secret_missing_ ? lock_why_for(lock_error_) : memlock_strerror(lock_error_))
                       : "policy.max_locked reached";
}

// Adds (sign 1) or removes (sign -1) pages [first, first+n) in the committed, locked and
// unlocked counters.
void SecureArena::account(const Pool &pool, std::size_t first, std::size_t n, int sign) noexcept {
    if (!stats_ || !n) return;
    std::size_t locked = 0, secret = 0;
    for (std::size_t i = first; i < first + n; ++i) {
        locked += meta_[i].flags & kLockedPage;
        secret += (meta_[i].flags & kSecretPage) != 0;
    }
    std::uint64_t all = n * page_, lo = locked * page_, sec = secret * page_;
    std::uint64_t unlo = (pool.actions & kActionLock) ? all - lo : 0;
    if (sign > 0) {
        stats_->committed_bytes.fetch_add(all);
        stats_->locked_bytes.fetch_add(lo);
        stats_->unlocked_bytes.fetch_add(unlo);
        stats_->secret_bytes.fetch_add(sec);
    } else {
        stats_->committed_bytes.fetch_sub(all);
        stats_->locked_bytes.fetch_sub(lo);
        stats_->unlocked_bytes.fetch_sub(unlo);
        stats_->secret_bytes.fetch_sub(sec);
    }
}

// Commits [from, from+bytes). Pages inside the range locked at start-up are locked; the rest
// follow the lock policy. pre: pool.lock held; page-aligned. Returns 0, kDeniedByPolicy, or the
// kernel's error committing it (kept in space_error_ too).
int SecureArena::commit_and_lock(Pool &pool, std::uintptr_t from, std::size_t bytes) noexcept {
    std::uintptr_t to = from + bytes;
    std::uintptr_t lock_to = (pool.actions & kActionLock) ? std::max(from, std::min(to, pool.lock_end)) : from;
    bool committed = false;
    if (lock_on_commit_ && !pool.secret && lock_to > from) {
        // No lock-on-fault: mlock what is committed inside the budget (mlock populates it).
        // Refused (the limit, or a sandbox that answers EPERM), the rest of the budget is
        // given up and the pages follow the lock policy below.
        if (int err = memlock_commit(reinterpret_cast<void *>(from), bytes)) return space_error_ = err;
        committed = true;
        if (int err = memlock_lock(reinterpret_cast<void *>(from), lock_to - from)) {
            lock_error_ = err;
            pool.lock_end = lock_to = from;
        } else {
            pool.locked_to = std::max(pool.locked_to, lock_to);
        }
    }
    // Past the range locked at start-up, pages lock where their region was mapped locked.
    bool short_of_lock = false;
    if (pool.actions & kActionLock)
        for (std::uintptr_t at = lock_to; at < to && !short_of_lock; at += page_)
            short_of_lock = !region_locked_[(at - base_) >> region_shift_];
    if (short_of_lock) {
        if (stats_) stats_->lock_failures.fetch_add(1);
        const char *why = lock_why();
        switch (opts_.on_lock_failure) {
        case LockFailurePolicy::abort:
            fatal("cannot lock arena memory (policy on_lock_failure=abort)", why);
        case LockFailurePolicy::deny:
            if (!warned_lock_failure_.exchange(true) && reporter_)
                reporter_(LogLevel::warn, "cannot lock arena memory (policy deny: matching allocations fail with ENOMEM)", why);
            return kDeniedByPolicy;
        case LockFailurePolicy::fallback:
            if (!warned_lock_failure_.exchange(true) && reporter_)
                reporter_(LogLevel::warn,
                          "cannot lock arena memory (policy fallback: matching allocations are served "
                          "unlocked, still out of core dumps and wiped)", why);
            if (stats_) stats_->fallbacks.fetch_add(1);
            break;
        }
    }
    if (!committed) {
        if (int err = memlock_commit(reinterpret_cast<void *>(from), bytes)) return space_error_ = err;
    }
    std::size_t first = (from - base_) / page_, n = bytes / page_;
    const std::uint8_t in_lock = pool.secret ? kLockedPage | kSecretPage : kLockedPage;
    const bool locks = pool.actions & kActionLock;
    for (std::size_t i = 0; i < n; ++i) {
        const std::uintptr_t at = from + i * page_;
        const std::uint8_t lock = at < lock_to ? in_lock
                                  : locks && region_locked_[(at - base_) >> region_shift_] ? kLockedPage : 0;
        meta_[first + i].flags = static_cast<std::uint8_t>(kInUse | kReadWrite | lock);
    }
    account(pool, first, n, 1);
    return 0;
}

// Where committing [.., to) for `pool` ends: at `to`, or, for a pool on huge pages that
// commits past half a huge page from huge_from (its start), at the end of the huge page `to`
// lies in, so that its range is read-write before any of it is touched and it faults in as one
// huge page. Never past the pool's extent, nor from the range locked at start-up (whose end
// need not be a huge page boundary) into what lies after it. Below half a huge page the pool
// commits slab by slab as without huge pages: a process with a few small secrets keeps a few
// pages resident, not 2 MiB; from there on rounding up adds at most one huge page. A fork
// child counts from where the memory it inherited ends (see own_commits), so that one whose
// parent filled its pages commits a huge page (zeroed, locked, resident) only once it has
// committed half of one itself: a postgres backend that needs a few slabs beyond the
// postmaster's pages takes those, not 2 MiB.
std::uintptr_t SecureArena::commit_end(const Pool &pool, std::uintptr_t to) const noexcept {
    if (!pool.huge || to - pool.huge_from <= huge_ / 2) return to;
    std::uintptr_t end = std::min<std::uintptr_t>(round_up(to, huge_), pool.end);
    return to <= pool.lock_end ? std::min(end, pool.lock_end) : end;
}

// Before a commit: in a process other than the one huge_from was set for (a fork child, told
// by marks_), commit_end counts from what is committed now, the memory inherited.
// pre: pool.lock held.
void SecureArena::own_commits(Pool &pool) noexcept {
    std::uint8_t &own = marks_->huge_own[&pool - pools_];
    if (own) return;
    own = 1;
    pool.huge_from = pool.committed;
}

// After commit_end rounded a commit that began at `from`, inside a huge page that the pool
// filled with small pages so far (its first), up to that page's end: makes it one huge page
// now (MADV_COLLAPSE; it stays locked), so that a fork child does not walk its small pages.
// Where the kernel lacks MADV_COLLAPSE, khugepaged may do it later. Not when some of its
// pages were given back to the kernel (collapsing would make them resident again, unseen by
// the counters). Not in a fork child (marks_): the collapse copies the small pages into a new
// huge page and zeroes the rest of it, about 0.2 ms per postgres backend here
// (docs/performance.md), to make the forks of a process that seldom forks itself cheaper; its
// later huge pages still fault in whole.
// pre: pool.lock held.
void SecureArena::collapse_after_commit(const Pool &pool, std::uintptr_t from) noexcept {
    if (!marks_->made_here) return;
    if (!pool.huge || !(from & (huge_ - 1)) || pool.committed < round_up(from, huge_)) return;
    const std::uintptr_t lo = from & ~(huge_ - 1);
    const std::size_t first = (lo - base_) / page_, n = (from - lo) / page_;
    if (lo < pool.start || in_use_pages(first, n) != n) return;
    backing_collapse(reinterpret_cast<void *>(lo), huge_);
}

// Pages [from, to) of a pool on huge pages were given back. The huge pages they lie in are
// marked MADV_NOHUGEPAGE and are small pages from then on: a huge page given back in part
// stays mapped by small pages, which khugepaged would collapse into a huge page again,
// filling the pages given back; one given back whole would fault in as a whole huge page at
// the next touch of any page of it that is used again. Either way pages that are free would
// be resident and locked again, unseen by the counters (which count the pages in use) and
// never given back. Where the advice is refused (a seccomp filter), nothing else is done.
void SecureArena::keep_small(std::uintptr_t from, std::uintptr_t to) noexcept {
    const std::uintptr_t lo = from & ~(huge_ - 1), hi = round_up(to, huge_);
    backing_advise_small(reinterpret_cast<void *>(lo), hi - lo);
}

// Why the arena could not hold a block the last time it could not (space_error_), for messages.
const char *SecureArena::space_why() const noexcept {
    switch (space_error_.load(std::memory_order_relaxed)) {
    case 0: return "raise policy.max_arena";
    case EEXIST: return "another mapping took the address space above it";
    case ENOMEM:
        return "the kernel refused to map more of it (ENOMEM: the address-space limit, RLIMIT_AS, "
               "vm.max_map_count or the commit limit)";
    // What a seccomp filter answers for a call it does not allow: mprotect above all, with
    // which the arena commits memory, where the program's own allocator needs only brk.
    case ENOSYS:
        return "the kernel refused a call the arena commits or maps memory with (mprotect, mmap or mremap: "
               "ENOSYS, as from a seccomp filter); policy.prealloc commits memory for the first rule that "
               "locks before the program enters a sandbox";
    case EPERM:
        return "the kernel refused a call the arena commits or maps memory with (mprotect, mmap or mremap: "
               "EPERM, as from a seccomp filter); policy.prealloc commits memory for the first rule that "
               "locks before the program enters a sandbox";
    default: return memlock_strerror(space_error_.load(std::memory_order_relaxed));
    }
}

// The pool cannot serve a block (its address space is used up, the kernel refused more, or
// the block is larger than the pool). Under fallback the caller serves it from the next
// allocator (it reports that); deny refuses it, abort stops. Returns nullptr with errno =
// ENOMEM.
void *SecureArena::out_of_space(const char *what) noexcept {
    switch (opts_.on_lock_failure) {
    case LockFailurePolicy::abort: {
        char why[160];
        std::snprintf(why, sizeof why, "%s (policy on_lock_failure=abort)", space_why());
        fatal(what, why);
    }
    case LockFailurePolicy::deny:
        if (!warned_full_.exchange(true) && reporter_) {
            char why[200];
            std::snprintf(why, sizeof why, "matching allocations fail with ENOMEM (policy deny): %s", space_why());
            reporter_(LogLevel::error, what, why);
        }
        if (stats_) stats_->denied.fetch_add(1);
        break;
    case LockFailurePolicy::fallback:
        break;
    }
    errno = ENOMEM;
    return nullptr;
}

// Carves `bytes` (a multiple of the page size) off the pool's frontier. Memory committed
// ahead (prealloc) is used as it is; the rest is committed now. pre: pool.lock held.
// nullptr with errno ENOMEM: pool full, or the lock policy denied.
unsigned char *SecureArena::carve(Pool &pool, std::size_t bytes) noexcept {
    if (pool.end - pool.frontier < bytes && !grow(pool, bytes, false))
        return static_cast<unsigned char *>(out_of_space("arena address space exhausted"));
    std::uintptr_t from = pool.frontier, to = from + bytes;
    if (to > pool.committed) {
        own_commits(pool);
        std::uintptr_t fresh = from > pool.committed ? from : pool.committed;
        const std::uintptr_t upto = commit_end(pool, to);
        if (int err = commit_and_lock(pool, fresh, upto - fresh)) {
            if (err != kDeniedByPolicy) return static_cast<unsigned char *>(out_of_space("cannot commit arena memory"));
            if (stats_) stats_->denied.fetch_add(1);
            errno = ENOMEM;
            return nullptr;
        }
        pool.committed = upto;
        collapse_after_commit(pool, fresh);
    }
    pool.frontier = to;
    return reinterpret_cast<unsigned char *>(from);
}

// Maps whole regions after the arena's last one for `pool`, so that it can carve `bytes` more.
// When the pool's extent is the last one it grows in place by what it lacks; otherwise the
// pool carves from the new extent from now on, and what was left of its previous one stays
// unused (contiguous_only: then nothing happens). Fails (false) past the growth cap, or when
// another mapping took the address space above the arena. pre: pool.lock held.
bool SecureArena::grow(Pool &pool, std::size_t bytes, bool contiguous_only) noexcept {
    Guard g(misc_lock_);
    const std::size_t span = span_, region = region_pages_ * page_;
    const bool adjacent = pool.end == base_ + span;
    if (contiguous_only && !adjacent) return false;
    const std::size_t lacks = adjacent ? bytes - std::min(bytes, pool.end - pool.frontier) : bytes;
    const std::size_t size = round_up(lacks, region);
    if (bytes > cap_span_ || size > cap_span_ - span) return space_error_ = 0, false;
    const std::size_t new_span = span + size;
    // The side tables first: a table that grew and an arena that could not stay consistent
    // (the tables only cover more than the blocks).
    if (new_span > side_span_) {
        if (int err = map_side(side_span_, new_span)) return space_error_ = err, false;
    }
    // What the pool may still lock is mapped locked without an mlock call, counted against
    // RLIMIT_MEMLOCK as mlock would: where the range's last mapping is locked on fault (the
    // first region, and what grew from it), it grows in place (mremap) and the new pages
    // lock on fault too; otherwise mmap MAP_LOCKED, whose pages are populated as they are
    // committed. Refused, the rest of the budget is given up and the pages follow the lock
    // policy (commit_and_lock).
    void *at = reinterpret_cast<void *>(base_ + span);
    std::size_t locked = 0;
    bool on_fault = false;
    if ((pool.actions & kActionLock) && !pool.secret && !secret_missing_ && pool.lock_budget > pool.locked_mapped)
        locked = std::min(size, (pool.lock_budget - pool.locked_mapped) / region * region);
    if (locked) {
        int err = tail_onfault_ ? backing_grow_locked(at, locked, page_) : EINVAL;
        on_fault = !err;
        if (err && err != EAGAIN) err = backing_map_locked(at, locked);
        if (err == EEXIST) return space_error_ = err, false;
        if (err) {
            if (!lock_error_) lock_error_ = err;
            pool.lock_budget = pool.locked_mapped;
            locked = 0;
        }
    }
    if (size > locked) {
        if (int err = memlock_reserve_at(static_cast<unsigned char *>(at) + locked, size - locked)) {
            memlock_release(at, locked);
            return space_error_ = err, false;
        }
    }
    if (pool.actions & kActionDontdump) {
        if (int err = memlock_dontdump(at, size)) {
            memlock_release(at, size);
            return space_error_ = err, false;
        }
    }
    // Refused (a seccomp filter may answer EINVAL), the pool commits as without huge pages.
    if (pool.huge && backing_advise_huge(at, size)) pool.huge = false;
    pool.locked_mapped += locked;
    tail_onfault_ = on_fault && locked == size;
    for (std::size_t r = span >> region_shift_; r < new_span >> region_shift_; ++r) {
        region_pool_[r] = static_cast<std::uint8_t>(&pool - pools_);
        region_locked_[r] = (r - (span >> region_shift_)) < (locked >> region_shift_);
    }
    if (!adjacent) pool.frontier = pool.committed = base_ + span;
    pool.end = base_ + new_span;
    __atomic_store_n(&span_, new_span, __ATOMIC_RELEASE);
    if (stats_) stats_->reserved_bytes.store(new_span);
    // A fork plan made before this point no longer holds (a prepare handler that runs after
    // the shim's may grow the arena; a signal handler may fork while it grows). Counted only
    // now that the growth is in place: see plan_fork.
    void_fork_plan();
    return true;
}

// A change to what the arena maps or locks is in place: a fork plan made before it no longer
// holds. pre: misc_lock_ held (one writer).
void SecureArena::void_fork_plan() noexcept {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (fork_plan_)
        __atomic_store_n(&fork_plan_->growths, __atomic_load_n(&fork_plan_->growths, __ATOMIC_RELAXED) + 1,
                         __ATOMIC_RELAXED);
}

void SecureArena::note_peak() noexcept {
    std::uint64_t out = stats_->out_bytes.load(std::memory_order_relaxed);
    std::uint64_t peak = stats_->peak_bytes.load(std::memory_order_relaxed);
    while (out > peak && !stats_->peak_bytes.compare_exchange_weak(peak, out)) {}
}

// ---- free pages: lists, reuse, giving back -------------------------------------------------

// Lists of slabs and free runs are linked through the page table (never through the memory,
// which stays zero): entries hold a head page + 1, 0 ends the list.
void SecureArena::list_push(std::uint32_t &list, std::size_t head) noexcept {
    PageMeta &h = meta_[head];
    h.prev_free = 0;
    h.next_free = list;
    if (list) meta_[list - 1].prev_free = static_cast<std::uint32_t>(head + 1);
    list = static_cast<std::uint32_t>(head + 1);
}

void SecureArena::list_remove(std::uint32_t &list, std::size_t head) noexcept {
    PageMeta &h = meta_[head];
    if (h.prev_free) meta_[h.prev_free - 1].next_free = h.next_free;
    else list = h.next_free;
    if (h.next_free) meta_[h.next_free - 1].prev_free = h.prev_free;
    h.next_free = h.prev_free = 0;
}

// Only a free run's first and last pages are marked: the first for the list, the last so
// that a run freed just after it can find it and merge. The run's committed pages (in_use of
// them, kept at its head: a run's pages are not counted again each time it is split or
// merged) count as dirty (not given back yet), or as kept where they cannot be (secretmem).
void SecureArena::free_run_insert(Pool &pool, std::size_t head, std::size_t npages, std::size_t in_use) noexcept {
    PageMeta &h = meta_[head], &tail = meta_[head + npages - 1];
    tail.head = h.head = static_cast<std::uint32_t>(head);
    tail.kind = h.kind = kFreeRun;
    tail.cls = h.cls = kLargeClass;
    h.npages = static_cast<std::uint32_t>(npages);
    h.nfree = static_cast<std::uint32_t>(in_use);
    list_push(pool.free_runs, head);
    const std::size_t secret = secret_pages(pool, head, npages);
    pool.dirty_bytes += (in_use - secret) * page_;
    pool.kept_bytes += secret * page_;
}

// Takes free run `head` off the list. Returns its pages in use.
std::size_t SecureArena::free_run_remove(Pool &pool, std::size_t head) noexcept {
    list_remove(pool.free_runs, head);
    const std::size_t in_use = meta_[head].nfree, secret = secret_pages(pool, head, meta_[head].npages);
    pool.dirty_bytes -= (in_use - secret) * page_;
    pool.kept_bytes -= secret * page_;
    return in_use;
}

std::size_t SecureArena::in_use_pages(std::size_t first, std::size_t n) const noexcept {
    std::size_t used = 0;
    for (std::size_t i = first; i < first + n; ++i) used += (meta_[i].flags & kInUse) != 0;
    return used;
}

// Committed pages of [first, first+n) that cannot go back to the kernel (secretmem: only a
// pool whose locked range is memfd_secret memory has any).
std::size_t SecureArena::secret_pages(const Pool &pool, std::size_t first, std::size_t n) const noexcept {
    if (!pool.secret) return 0;
    std::size_t kept = 0;
    for (std::size_t i = first; i < first + n; ++i)
        kept += (meta_[i].flags & (kInUse | kSecretPage)) == (kInUse | kSecretPage);
    return kept;
}

// Pages taken from a free run that were given back to the kernel are committed again (they
// stay mapped: the next touch faults in a zero page, locked if the range is). Counted a
// stretch at a time. Returns the pages claimed (those that were not in use).
std::size_t SecureArena::claim_pages(const Pool &pool, std::size_t first, std::size_t n) noexcept {
    std::size_t claimed = 0;
    for (std::size_t i = first, end = first + n; i < end;) {
        if (meta_[i].flags & kInUse) {
            ++i;
            continue;
        }
        std::size_t j = i;
        for (; j < end && !(meta_[j].flags & kInUse); ++j) meta_[j].flags |= kInUse;
        account(pool, i, j - i, 1);
        claimed += j - i;
        i = j;
    }
    return claimed;
}

// `bytes` of pages aligned to `align`, from a free run that holds them at an aligned address
// (first fit; runs inside the range locked at start-up first) or from the frontier, up to the
// first aligned address there and no further: blocks of a large alignment whose size is a
// multiple of it then lie side by side, rather than each spending up to `align` more of the
// arena (and of max_locked, which counts the address space locked). pre: pool.lock held. 0
// with errno ENOMEM.
std::uintptr_t SecureArena::take_pages(Pool &pool, std::size_t bytes, std::size_t align) noexcept {
    const std::uintptr_t mask = align > page_ ? align - 1 : 0;
    auto aligned = [mask](std::uintptr_t at) { return (at + mask) & ~mask; };
    std::uintptr_t run = 0, run_end = 0;
    std::size_t in_use = 0;  // pages of [run, run_end) in use
    for (int pass = pool.lock_end > pool.start ? 0 : 1; pass < 2 && !run; ++pass) {
        for (std::uint32_t r = pool.free_runs; r; r = meta_[r - 1].next_free) {
            PageMeta &m = meta_[r - 1];
            const std::uintptr_t lo = base_ + std::size_t{r - 1} * page_, hi = lo + std::size_t{m.npages} * page_;
            if (aligned(lo) + bytes <= hi && (pass || (m.flags & kLockedPage))) {
                run = lo;
                run_end = hi;
                in_use = free_run_remove(pool, r - 1);
                break;
            }
        }
    }
    if (!run && extend_tail_run(pool, bytes, mask, run, run_end, in_use) && !run) return 0;
    if (!run) {
        // The frontier stays where it is when the pool's extent holds the block or grows in
        // place; a new extent elsewhere starts at an address not known here, so room for any
        // start is carved then.
        std::size_t want = aligned(pool.frontier) + bytes - pool.frontier;
        if (want > pool.end - pool.frontier && !grow(pool, want, true)) want = bytes + (mask ? align - page_ : 0);
        unsigned char *fresh = carve(pool, want);
        if (!fresh) return 0;
        run = reinterpret_cast<std::uintptr_t>(fresh);
        run_end = run + want;
        in_use = in_use_pages((run - base_) / page_, want / page_);
    }
    // Keep the aligned part asked for; the pages around it go back as free runs.
    const std::uintptr_t at = aligned(run);
    const std::size_t first = (run - base_) / page_, lead = (at - run) / page_, taken = bytes / page_;
    const std::size_t lead_in_use = in_use_pages(first, lead);
    const std::size_t taken_in_use = taken - claim_pages(pool, first + lead, taken);
    if (lead) free_run_insert(pool, first, lead, lead_in_use);
    if (run_end > at + bytes)
        free_run_insert(pool, first + lead + taken, (run_end - at - bytes) / page_, in_use - lead_in_use - taken_in_use);
    return at;
}

// A free run too small for the block that ends at the pool's frontier grows into it, by what
// the block lacks, instead of the block being carved after it: a program that frees a large
// block and asks for a larger one (a buffer that grows) then reuses the address space, and the
// locked range, it had. False when there is no such run or the extent cannot grow in place;
// else true, with the run taken off the free list ([run, run_end), in_use of its pages in use),
// or run 0 when the pages it lacks could not be committed (carve said why).
// pre: pool.lock held, no free run holds the block.
bool SecureArena::extend_tail_run(Pool &pool, std::size_t bytes, std::uintptr_t mask, std::uintptr_t &run,
                                  std::uintptr_t &run_end, std::size_t &in_use) noexcept {
    const std::size_t tail = (pool.frontier - base_) / page_;
    std::size_t head;
    if (!free_run_ends_before(pool, tail, head)) return false;
    const std::uintptr_t lo = base_ + head * page_, from = pool.frontier;
    const std::size_t more = ((lo + mask) & ~mask) + bytes - from;
    if (more > pool.end - from && !grow(pool, more, true)) return false;
    if (!carve(pool, more)) return true;
    in_use = free_run_remove(pool, head) + in_use_pages(tail, more / page_);
    run = lo;
    run_end = from + more;
    return true;
}

// Is page - 1 the last page of one of pool's free runs? Then head is that run's first page.
bool SecureArena::free_run_ends_before(const Pool &pool, std::size_t page, std::size_t &head) const noexcept {
    if (page == 0 || region_pool_[(page - 1) / region_pages_] != static_cast<std::uint8_t>(&pool - pools_) ||
        meta_[page - 1].kind != kFreeRun)
        return false;
    head = meta_[page - 1].head;
    return true;
}

// Pages [first, first+n) are free: one run with the free runs on either side. pre: pool.lock held.
void SecureArena::release_pages(Pool &pool, std::size_t first, std::size_t n) noexcept {
    // Never into another pool's region (regions of one pool that touch are one extent of
    // it), nor past the blocks mapped. Pages never carved are kUnused.
    const std::size_t mapped = __atomic_load_n(&span_, __ATOMIC_RELAXED) >> page_shift_;
    const std::uint8_t mine = static_cast<std::uint8_t>(&pool - pools_);
    auto same_pool = [&](std::size_t page) { return page < mapped && region_pool_[page / region_pages_] == mine; };
    std::size_t after = first + n, in_use = in_use_pages(first, n);
    if (same_pool(after) && meta_[after].kind == kFreeRun && meta_[after].head == after) {
        n += meta_[after].npages;
        in_use += free_run_remove(pool, after);
    }
    if (std::size_t before; free_run_ends_before(pool, first, before)) {
        n += meta_[before].npages;
        in_use += free_run_remove(pool, before);
        first = before;
    }
    free_run_insert(pool, first, n, in_use);
}

std::uint64_t SecureArena::now_ns() noexcept {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  // the vDSO: no system call
    return std::uint64_t(ts.tv_sec) * 1000000000u + std::uint64_t(ts.tv_nsec);
}

// Gives free pages back to the kernel once the pool holds more than the slack of them:
// after the purge delay (a busy program reuses its pages instead), at once beyond slack +
// burst (an idle program keeps at most that). Runs freed last are kept, older ones go.
// Called at the end of every operation under the pool's lock (a thread cache's refill or
// flush, a page run's allocation or free, a thread's exit); it reads the clock only when
// there is something to give back. Free secretmem pages, which cannot go back, count
// neither toward the slack nor as left over (kept_bytes). pre: pool.lock held.
void SecureArena::maybe_purge(Pool &pool) noexcept {
    if (pool.dirty_bytes <= opts_.purge_slack) {
        // Free secretmem pages cannot go back (backing.hpp): no scan for them, one line saying so.
        if (pool.kept_bytes && pool.dirty_bytes + pool.kept_bytes > opts_.purge_slack) report_secret_kept();
        return;
    }
    std::uint64_t now = now_ns();
    bool urgent = pool.dirty_bytes > opts_.purge_slack + opts_.purge_burst && !pool.purge_stuck;
    if (!urgent && now - pool.last_purge_ns < opts_.purge_delay_ns) return;
    pool.last_purge_ns = now;
    std::size_t kept = 0;
    for (std::uint32_t r = pool.free_runs; r && pool.dirty_bytes > opts_.purge_slack;) {
        std::size_t head = r - 1, n = meta_[head].npages;
        r = meta_[head].next_free;
        std::size_t dirty = (meta_[head].nfree - secret_pages(pool, head, n)) * page_;
        if (kept + dirty <= opts_.purge_slack) {
            kept += dirty;
            continue;
        }
        discard_pages(pool, head, n);
    }
    pool.purge_stuck = pool.dirty_bytes > opts_.purge_slack + opts_.purge_burst;
}

void SecureArena::report_secret_kept() noexcept {
    if (!warned_secret_kept_.load(std::memory_order_relaxed) && !warned_secret_kept_.exchange(true) && reporter_)
        reporter_(LogLevel::info, "freed secretmem arena memory stays committed (wiped, locked)",
                  "the kernel cannot give back part of a memfd_secret file");
}

// Gives the committed pages of free run [first, first+n) (first: its head) back to the
// kernel. They were wiped when their blocks were freed (pools with the wipe action). Locked
// pages stay locked (MADV_DONTNEED_LOCKED: no munlock, and they lock again on fault without
// an mlock call); where the kernel refuses that, they stay committed and locked.
// pre: pool.lock held.
void SecureArena::discard_pages(Pool &pool, std::size_t first, std::size_t n) noexcept {
    bool gave_back = false;
    // Up to the last page in use: the rest of a large run was given back before.
    for (std::size_t i = first, left = meta_[first].nfree; i < first + n && left;) {
        std::uint8_t f = meta_[i].flags;
        std::size_t j = i + 1;
        if (!(f & kInUse)) {
            i = j;
            continue;
        }
        while (j < first + n && meta_[j].flags == f) ++j;
        left -= j - i;
        if (!backing_can_discard(f & kSecretPage)) {
            report_secret_kept();
            i = j;
            continue;
        }
        void *at = reinterpret_cast<void *>(base_ + i * page_);
        bool locked = f & kLockedPage;
        int rc = !locked ? memlock_discard(at, (j - i) * page_)
                 : discard_locked_ok_.load(std::memory_order_relaxed) ? memlock_discard_locked(at, (j - i) * page_)
                                                                      : EINVAL;
        if (rc == 0) {
            account(pool, i, j - i, -1);
            for (std::size_t k = i; k < j; ++k) meta_[k].flags &= static_cast<std::uint8_t>(~kInUse);
            meta_[first].nfree -= static_cast<std::uint32_t>(j - i);
            pool.dirty_bytes -= (j - i) * page_;
            if (stats_) stats_->purged_bytes.fetch_add((j - i) * page_);
            gave_back = true;
            if (pool.huge) keep_small(base_ + i * page_, base_ + j * page_);
        } else if (locked && discard_locked_ok_.exchange(false) && reporter_) {
            reporter_(LogLevel::info, "locked arena memory that is freed stays committed and locked",
                      "the kernel refuses MADV_DONTNEED_LOCKED (Linux < 5.18, or a seccomp filter)");
        }
        i = j;
    }
    if (gave_back) discard_side(first, n);
}

// The side tables' pages that describe only pages of free run [first, first+n) go back to
// the kernel too (they are never locked): a free page's free-block bits are zero already,
// and its state bytes read kNeverUsed again instead of kFreed (a later free() of an address
// there is still fatal, reported as an invalid pointer rather than a double free). The
// page table (meta_) stays: it marks the run. pre: pool.lock held.
void SecureArena::discard_side(std::size_t first, std::size_t n) noexcept {
    // The whole pages [lo, hi) of a table with bytes_per_page bytes per page of the run.
    auto inside = [&](std::size_t bytes_per_page, std::size_t &lo, std::size_t &hi) {
        lo = round_up(first * bytes_per_page, page_), hi = (first + n) * bytes_per_page / page_ * page_;
        return hi > lo;
    };
    std::size_t lo, hi;
    if (inside(page_ / 16, lo, hi)) memlock_discard(state_ + lo, hi - lo);
    // The free bits run down from bits_top_.
    if (inside(page_ / 128, lo, hi)) memlock_discard(reinterpret_cast<unsigned char *>(bits_top_) - hi, hi - lo);
}

// ---- small blocks --------------------------------------------------------------------------
// A slab serves one size class. Its free blocks are bits in bits_word() (a bit per 16-byte granule,
// set at a free block's first granule); partly free slabs of a class form a list. A slab
// whose blocks are all free goes back to the free runs (any class or page run can use its
// pages), unless it is the class's last partly free slab.

bool SecureArena::new_slab(Pool &pool, unsigned cls) noexcept {
    const ClassInfo &ci = kClasses.info[cls];
    std::uintptr_t at = take_pages(pool, ci.slab_bytes, page_);
    if (!at) return false;
    std::size_t head = (at - base_) / page_, np = ci.slab_bytes / page_, blocks = ci.slab_bytes / ci.size;
    for (std::size_t i = head; i < head + np; ++i) {
        meta_[i].head = static_cast<std::uint32_t>(head);
        meta_[i].kind = kSlab;
        meta_[i].cls = static_cast<std::uint8_t>(cls);
        meta_[i].pool = static_cast<std::uint8_t>(&pool - pools_);
    }
    meta_[head].npages = static_cast<std::uint32_t>(np);
    meta_[head].nfree = static_cast<std::uint32_t>(blocks);
    std::uintptr_t off = at - base_;
    std::memset(state_ + (off >> 4), 0, ci.slab_bytes >> 4);
    for (std::size_t b = 0; b < blocks; ++b) {
        std::uintptr_t o = off + b * ci.size;
        bits_word(o >> 10) |= std::uint64_t{1} << ((o >> 4) & 63);
    }
    list_push(pool.partial[cls], head);
    return true;
}

// Takes up to `want` free blocks of class `cls` into out[]. pre: pool.lock held. Returns how many.
unsigned SecureArena::refill(Pool &pool, unsigned cls, void **out, unsigned want) noexcept {
    const ClassInfo &ci = kClasses.info[cls];
    unsigned got = 0;
    while (got < want && (pool.partial[cls] || new_slab(pool, cls))) {
        std::size_t head = pool.partial[cls] - 1;
        PageMeta &h = meta_[head];
        std::uintptr_t word0 = (head * page_) >> 10;  // 64 granules, 1 KiB, per word
        for (std::size_t i = 0; i < (ci.slab_bytes >> 10) && got < want; ++i) {
            std::uint64_t w = bits_word(word0 + i);
            while (w && got < want) {
                unsigned b = static_cast<unsigned>(__builtin_ctzll(w));
                w &= w - 1;
                out[got++] = reinterpret_cast<void *>(base_ + ((word0 + i) << 10) + (std::uintptr_t{b} << 4));
                --h.nfree;
            }
            bits_word(word0 + i) = w;
        }
        if (!h.nfree) list_remove(pool.partial[cls], head);
    }
    if (stats_ && got) {
        stats_->out_bytes.fetch_add(std::uint64_t{got} * ci.size, std::memory_order_relaxed);
        note_peak();
    }
    maybe_purge(pool);
    return got;
}

// Returns n blocks of class `cls` to their slabs. pre: pool.lock held.
void SecureArena::flush(Pool &pool, unsigned cls, void *const *blocks, unsigned n) noexcept {
    const ClassInfo &ci = kClasses.info[cls];
    const std::size_t per_slab = ci.slab_bytes / ci.size;
    for (unsigned i = 0; i < n; ++i) {
        std::uintptr_t off = reinterpret_cast<std::uintptr_t>(blocks[i]) - base_;
        bits_word(off >> 10) |= std::uint64_t{1} << ((off >> 4) & 63);
        std::size_t head = meta_[off >> page_shift_].head;
        PageMeta &h = meta_[head];
        if (h.nfree++ == 0) list_push(pool.partial[cls], head);
        if (h.nfree == per_slab && (h.next_free || h.prev_free)) {
            list_remove(pool.partial[cls], head);
            std::memset(bits_words((head * page_) >> 10, ci.slab_bytes >> 10), 0, ci.slab_bytes >> 7);
            release_pages(pool, head, h.npages);
        }
    }
    if (stats_) stats_->out_bytes.fetch_sub(std::uint64_t{n} * ci.size, std::memory_order_relaxed);
    maybe_purge(pool);
}

void SecureArena::flush_locked(Pool &pool, unsigned cls, void *const *blocks, unsigned n) noexcept {
    int saved = errno;
    Guard g(pool.lock);
    flush(pool, cls, blocks, n);
    errno = saved;
}

SecureArena::PoolCache *SecureArena::cache_for(unsigned pool) noexcept {
    if (!thread_ready(this, stats_)) return nullptr;
    ThreadState &ts = t_state;
    if (ts.caches) return cache_in(ts.caches, pool);
    // A set's pages are written only for the pools the thread uses (the caps are set as
    // bins are first used).
    PoolCache *set = nullptr;
    {
        Guard g(misc_lock_);
        if ((set = spare_caches_)) {
            spare_caches_ = set->next_spare;
            set->next_spare = nullptr;
        } else if ((set = unused_caches_)) {
            unused_caches_ = nullptr;
        }
    }
    if (!set) {
        const std::size_t bytes = cache_set_bytes(npools_, page_);
        void *mem = nullptr;
        if (memlock_reserve(bytes, &mem)) return nullptr;
        if (memlock_commit(mem, bytes)) {
            memlock_release(mem, bytes);
            return nullptr;
        }
        memlock_dontdump(mem, bytes);
        set = static_cast<PoolCache *>(mem);
    }
    ts.caches = set;
    return cache_in(set, pool);
}

void *SecureArena::alloc_small_slow(unsigned pool_index, unsigned cls, unsigned rule) noexcept {
    Pool &pool = pools_[pool_index];
    void *b = nullptr;
    if (stats_ && t_state.arena == this) publish_rules(stats_);
    if (PoolCache *pc = cache_for(pool_index)) {
        PoolCache::Bin &bin = pc->bins[cls];
        bin.cap = kClasses.info[cls].cache_max;
        if (!bin.count) {
            unsigned want = kClasses.info[cls].cache_max / 2 ? kClasses.info[cls].cache_max / 2 : 1;
            Guard g(pool.lock);
            bin.count = refill(pool, cls, pc->blocks[cls], want);
            if (!bin.count) return nullptr;
            bin.top = pc->blocks[cls][bin.count - 1];  // refill() fills the stack, not the copy of its top
        }
        b = bin.take(pc->blocks[cls], bin.count);
    } else {
        Guard g(pool.lock);
        if (!refill(pool, cls, &b, 1)) return nullptr;
    }
    state_of(b) = live_state(rule);
    if (t_state.arena == this) count(stats_, rule, kClasses.info[cls].size, Count::alloc);
    return b;
}

// A block of class `cls` from the calling thread's cache for `pool`, or nullptr (no cache, or
// an empty one). No lock, no call.
inline void *SecureArena::pop_cached(unsigned pool_index, unsigned cls, unsigned rule) noexcept {
    ThreadState &ts = t_state;
    PoolCache *set = ts.arena == this ? ts.caches : nullptr;  // none once the thread exits
    if (__builtin_expect(!set, 0)) return nullptr;
    PoolCache *pc = cache_in(set, pool_index);
    PoolCache::Bin &bin = pc->bins[cls];
    const unsigned n = bin.count;
    if (__builtin_expect(!n, 0)) return nullptr;
    void *b = bin.take(pc->blocks[cls], n);
    state_of(b) = live_state(rule);
    count(stats_, rule, kClasses.info[cls].size, Count::alloc);
    return b;
}

void *SecureArena::alloc_small(unsigned pool_index, unsigned cls, unsigned rule) noexcept {
    if (void *b = pop_cached(pool_index, cls, rule)) return b;
    return alloc_small_slow(pool_index, cls, rule);
}

void *SecureArena::alloc_cached(unsigned pool_index, std::size_t n, unsigned rule) noexcept {
    return n <= kMaxSmall ? pop_cached(pool_index, class_of(n), rule) : nullptr;
}

// pop_cached() for the classes of kFastClasses, in a thread with a rule row of its own: what
// it reads and computes is what the common case needs, and its only way out is a return.
void *SecureArena::alloc_fast(unsigned pool_index, std::size_t n, unsigned rule) noexcept {
    if (__builtin_expect(n - 1 >= kInlineWipe, 0)) return nullptr;  // n == 0 too
    const std::size_t cls = (n - 1) >> 4;  // class_of(n) for 1 <= n <= kInlineWipe
    ThreadState &ts = t_state;
    PoolCache *set = ts.arena == this ? ts.caches : nullptr;  // none once the thread exits
    StatsRuleRow *row = ts.rules;
    if (__builtin_expect(!set || !row, 0)) return nullptr;
    PoolCache *pc = cache_in(set, pool_index);
    PoolCache::Bin &bin = pc->bins[cls];
    const unsigned have = bin.count;
    if (__builtin_expect(!have, 0)) return nullptr;
    void *b = bin.take(pc->blocks[cls], have);
    if (!b) __builtin_unreachable();  // a cache holds blocks: the caller need not test for nullptr
    state_of(b) = live_state(rule);
    count_row(stats_, row, rule, static_cast<std::int64_t>(fast_class_size(cls)), Count::alloc);
    return b;
}

// ---- large blocks (page runs) --------------------------------------------------------------

// Marks pages [first, first+npages) as part of the live run at `head`. pre: pool.lock held.
void SecureArena::mark_run(std::size_t head, std::size_t first, std::size_t npages) noexcept {
    for (std::size_t i = first; i < first + npages; ++i) {
        PageMeta &m = meta_[i];
        m.head = static_cast<std::uint32_t>(head);
        m.kind = kRun;
        m.cls = kLargeClass;
    }
}

void *SecureArena::alloc_large(unsigned pool_index, std::size_t n, std::size_t align, unsigned rule) noexcept {
    Pool &pool = pools_[pool_index];
    if (n > cap_span_ || align > cap_span_)
        return space_error_ = 0, out_of_space("a matching allocation is larger than the arena's growth cap");
    std::size_t bytes = round_up(n ? n : 1, page_);
    // What the kernel would refuse the program's allocator (by its default overcommit
    // heuristic, a block larger than memory and swap together), the arena refuses too, with
    // ENOMEM under every policy, as glibc's malloc fails: the reservation's commits escape that
    // accounting (MAP_NORESERVE), so the kernel is asked for a block this large. In strict
    // mode the commits are accounted as they are made (ask_commit_ is false).
    if (ask_commit_ && bytes >= kAskedCommit && memlock_can_commit(bytes)) return errno = ENOMEM, nullptr;
    std::uintptr_t at = 0;
    {
        Guard g(pool.lock);
        if (!(at = take_pages(pool, bytes, align))) return nullptr;
        std::size_t head = (at - base_) / page_, np = bytes / page_;
        mark_run(head, head, np);
        meta_[head].npages = static_cast<std::uint32_t>(np);
        if (stats_) {
            stats_->out_bytes.fetch_add(bytes, std::memory_order_relaxed);
            note_peak();
        }
        maybe_purge(pool);
    }
    void *p = reinterpret_cast<void *>(at);
    state_of(p) = live_state(rule);
    thread_ready(this, stats_);  // registers the thread (an exiting one counts in the shared slot)
    if (t_state.arena == this) {
        count(stats_, rule, static_cast<std::int64_t>(bytes), Count::alloc);
        if (stats_) publish_rules(stats_);
    }
    return p;
}

// Wipes a page run. A locked page that is not resident was never touched or was given back
// (locked pages are never swapped out), so it holds nothing: only resident pages are written,
// and a large, mostly unused block is not paged in just to be zeroed. An unlocked page that is
// not resident was never touched or is in swap: it is dropped (MADV_DONTNEED frees its swap
// slot too) instead of being paged in to be written, so freeing a large block served unlocked
// (past max_locked) costs what its resident pages cost. Where a page cannot be dropped
// (secretmem, or the kernel refuses), it is written.
void SecureArena::wipe_run(void *p, std::size_t bytes) const noexcept {
    auto *at = static_cast<unsigned char *>(p);
    std::size_t first = (reinterpret_cast<std::uintptr_t>(p) - base_) / page_;
    constexpr std::size_t kChunkPages = 1024;
    unsigned char resident[kChunkPages];
    for (std::size_t done = 0; done < bytes; done += kChunkPages * page_) {
        std::size_t chunk = std::min(bytes - done, kChunkPages * page_);
        if (memlock_resident(at + done, chunk, resident)) {
            wipe_wide(at + done, chunk);
            continue;
        }
        const PageMeta *meta = meta_ + first + done / page_;
        const std::size_t pages = chunk / page_;
        for (std::size_t i = 0, j; i < pages; i = j) {
            const std::uint8_t f = meta[i].flags;
            const bool in_core = resident[i] & 1;
            for (j = i + 1; j < pages && static_cast<bool>(resident[j] & 1) == in_core && meta[j].flags == f;) ++j;
            unsigned char *from = at + done + i * page_;
            const std::size_t len = (j - i) * page_;
            if (in_core || (!(f & kLockedPage) && (!backing_can_discard(f & kSecretPage) || memlock_discard(from, len))))
                wipe_wide(from, len);
        }
    }
    clear_vector_registers();
}

void SecureArena::free_large(Pool &pool, PageMeta &head, void *p) noexcept {
    std::size_t bytes = std::size_t{head.npages} * page_;
    const unsigned rule = state_of(p) >> kRuleShift;
    if (pool.actions & kActionWipe) wipe_run(p, bytes);
    state_of(p) = kFreed;
    {
        Guard g(pool.lock);
        release_pages(pool, static_cast<std::size_t>(&head - meta_), head.npages);
        if (stats_) stats_->out_bytes.fetch_sub(bytes, std::memory_order_relaxed);
        maybe_purge(pool);
    }
    thread_ready(this, stats_);
    if (t_state.arena == this) {
        count(stats_, rule, -static_cast<std::int64_t>(bytes), Count::free);
        if (stats_) publish_rules(stats_);
    }
}

bool SecureArena::grow_in_place(void *p, std::size_t n) noexcept {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    std::size_t head = off / page_;
    PageMeta &m = meta_[head];
    if (m.kind != kRun || m.head != head || (state_of(p) & kStateMask) != kLive || n > cap_span_) return false;
    std::size_t need = round_up(n, page_) / page_, have = m.npages;
    if (need <= have) return true;
    std::size_t extra = need - have, next = head + have;
    // As alloc_large: pages the kernel's overcommit accounting would refuse are not
    // committed (the caller then asks alloc_large for the whole block, which refuses it too).
    if (ask_commit_ && extra * page_ >= kAskedCommit && memlock_can_commit(extra * page_)) return false;
    Pool &pool = pools_[region_pool_[off >> region_shift_]];
    {
        Guard g(pool.lock);
        std::size_t frontier = (pool.frontier - base_) / page_;
        if (next == frontier) {
            if (pool.end - pool.frontier < extra * page_ && !grow(pool, extra * page_, true)) return false;
            if (!carve(pool, extra * page_)) return false;
        } else if (next < frontier && meta_[next].kind == kFreeRun && meta_[next].head == next &&
                   meta_[next].npages >= extra) {
            const std::size_t rest = meta_[next].npages - extra, in_use = free_run_remove(pool, next);
            const std::size_t extra_in_use = extra - claim_pages(pool, next, extra);
            if (rest) free_run_insert(pool, next + extra, rest, in_use - extra_in_use);
        } else {
            return false;
        }
        mark_run(head, next, extra);
        m.npages = static_cast<std::uint32_t>(need);
        if (stats_) {
            stats_->out_bytes.fetch_add(extra * page_, std::memory_order_relaxed);
            note_peak();
        }
    }
    if (t_state.arena == this) count(stats_, state_of(p) >> kRuleShift, static_cast<std::int64_t>(extra * page_), Count::grow);
    return true;
}

// ---- the public operations ---------------------------------------------------------------

void *SecureArena::alloc(unsigned pool, std::size_t n, std::size_t align, unsigned rule) noexcept {
    if (align < 16) align = 16;
    if (n <= kMaxSmall && align <= page_) {
        unsigned cls = class_of(n < align ? align : n);
        // Every block of a class whose size is a multiple of `align` is aligned (slabs are
        // page-aligned); power-of-two classes always qualify.
        while (kClasses.info[cls].size & (align - 1)) ++cls;
        return alloc_small(pool, cls, rule);
    }
    return alloc_large(pool, n, align, rule);
}

void SecureArena::bad_pointer(const void *p, const char *what) const noexcept {
    fatal(what, "not a live block of the secure arena", p);
}

// The common case makes no call and saves no register: a live block of the kFastClasses
// goes into the calling thread's cache, which has room, and is counted in the thread's rule
// row. Everything else is a tail call.
MLSHIM_HOT_ENTRY void SecureArena::free(void *p) noexcept {
    const std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    const PageMeta &m = meta_[off >> page_shift_];
    std::uint8_t &state = state_[off >> 4];
    const std::uint8_t was = state;
    // Inside a slab only the first granule of a block of its class has a state (new_slab
    // clears them all), so a 16-aligned pointer with a live state is a live block's start.
    if (__builtin_expect(m.kind != kSlab || (was & kStateMask) != kLive || (off & 15), 0)) return free_not_slab(p);
    const unsigned cls = m.cls, pool_index = m.pool;
    if (__builtin_expect(cls >= kFastClasses || (scrub_pools_ >> pool_index & 1), 0)) return free_small_slow(p);
    // Wiped first, so that the pool index is not needed past the cache's look-up; where the
    // slow path takes the block after all (rarely), it wipes it again.
    const std::size_t size = fast_class_size(cls);
    if (wipe_pools_ >> pool_index & 1) wipe_small(p, size);
    ThreadState &ts = t_state;
    PoolCache *set = ts.arena == this ? ts.caches : nullptr;  // none once the thread exits
    StatsRuleRow *row = ts.rules;
    if (__builtin_expect(!set || !row, 0)) return free_small_slow(p);
    PoolCache *pc = cache_in(set, pool_index);
    PoolCache::Bin &bin = pc->bins[cls];
    const unsigned n = bin.count;
    if (__builtin_expect(n == bin.cap, 0)) return free_small_slow(p);
    state = kFreed;
    bin.put(pc->blocks[cls], p, n);
    count_row(stats_, row, was >> kRuleShift, -static_cast<std::int64_t>(size), Count::free);
}

// A live slab block that the common path of free() does not take.
void SecureArena::free_small_slow(void *p) noexcept {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    PageMeta &m = meta_[off >> page_shift_];
    unsigned pool_index = region_pool_[off >> region_shift_];
    Pool &pool = pools_[pool_index];
    const ClassInfo &ci = kClasses.info[m.cls];
    const unsigned rule = state_of(p) >> kRuleShift;
    if (pool.actions & kActionWipe) wipe_block(p, ci.size);
    state_of(p) = kFreed;
    ThreadState &ts = t_state;
    PoolCache *pc = ts.arena == this && !ts.dead && ts.caches ? cache_in(ts.caches, pool_index) : nullptr;
    if (!pc) pc = cache_for(pool_index);  // registers the thread
    if (pc) {
        PoolCache::Bin &bin = pc->bins[m.cls];
        bin.cap = ci.cache_max;
        if (bin.count == ci.cache_max) {
            unsigned keep = ci.cache_max / 2;
            if (stats_ && ts.arena == this) publish_rules(stats_);
            flush_locked(pool, m.cls, pc->blocks[m.cls] + keep, bin.count - keep);
            bin.count = keep;
        }
        bin.put(pc->blocks[m.cls], p, bin.count);
    } else {
        flush_locked(pool, m.cls, &p, 1);
    }
    if (ts.arena == this) count(stats_, rule, -static_cast<std::int64_t>(ci.size), Count::free);
    if (scrub_pools_ >> pool_index & 1) scrub_dead_stack(opts_.scrub_stack);
}

inline bool SecureArena::live_run_at(std::uintptr_t off) const noexcept {
    const PageMeta &m = meta_[off >> page_shift_];
    return m.kind == kRun && m.head == off >> page_shift_ && off % page_ == 0 && (state_[off >> 4] & kStateMask) == kLive;
}

// Not a live slab block: a page run, a double free, or not a block at all.
void SecureArena::free_not_slab(void *p) noexcept {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    PageMeta &m = meta_[off >> page_shift_];
    const unsigned pool_index = region_pool_[off >> region_shift_];
    Pool &pool = pools_[pool_index];
    std::uint8_t state = state_[off >> 4];
    if (state == kFreed)
        fatal("free(): double free", "block of the secure arena freed twice", p);
    if (live_run_at(off)) {
        int saved = errno;
        free_large(pool, m, p);
        errno = saved;
        if (scrub_pools_ >> pool_index & 1) scrub_dead_stack(opts_.scrub_stack);
        return;
    }
    bad_pointer(p, "free(): invalid pointer");
}

std::size_t SecureArena::usable_size(const void *p, const char *what) const noexcept {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    const PageMeta &m = meta_[off >> page_shift_];
    // A block's start, as free() accepts it: an address in a block's first 16 bytes shares its
    // state, but is no block, and the block's size counted from it would reach past the block.
    if (m.kind == kSlab && (state_[off >> 4] & kStateMask) == kLive && off % 16 == 0) return kClasses.info[m.cls].size;
    if (live_run_at(off)) return std::size_t{m.npages} * page_;
    bad_pointer(p, what);
}

bool SecureArena::wipes(const void *p) const noexcept {
    return pools_[pool_of(p)].actions & kActionWipe;
}

bool SecureArena::locked(const void *p) const noexcept {
    return meta_[(reinterpret_cast<std::uintptr_t>(p) - base_) >> page_shift_].flags & kLockedPage;
}

// ---- fork and thread exit ------------------------------------------------------------------

// The plan's valid, planned and growths are read and written with relaxed atomics: a
// process with threads drops the plan without a lock while another thread may grow the
// arena, and the signal fences below order them against a signal handler that forks. The
// order is what makes a plan made during a growth not hold: growths read first here, and
// counted in grow only after the growth is in place.
void SecureArena::plan_fork(bool wanted) noexcept {
    if (!fork_plan_) return;
    ForkPlan &out = *fork_plan_;
    if (!wanted) {
        if (__atomic_load_n(&out.valid, __ATOMIC_RELAXED)) __atomic_store_n(&out.valid, false, __ATOMIC_RELAXED);
        return;
    }
    // Growths are counted first: one under way while the plan is made leaves it not holding.
    const std::uint32_t growths = __atomic_load_n(&out.growths, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    // Each of these needs postfork_child's reading of the arena in the child: no pages the
    // kernel zeroes for it, populating or remapping instead of locking on fault, pages
    // locked one stretch at a time, a secretmem file to copy.
    bool valid = !lock_on_commit_ && marks_ != &own_marks_ && !loose_locked_ && !secret_pools();
    ForkPlan::Stretch at[kForkPlanStretches];
    unsigned n = 0;
    if (valid)
        for_each_relock_stretch(0, [&](std::uintptr_t lo, std::uintptr_t hi, Relock) {
            if (n == kForkPlanStretches) return valid = false;
            at[n++] = {lo, hi};
            return true;
        });
    if (!valid) n = 0;
    memlock_syscalls calls;
    memlock_get_syscalls(&calls);
    // Only what changed is written (a valid plan first made invalid, so that a torn one never holds).
    bool same = valid == __atomic_load_n(&out.valid, __ATOMIC_RELAXED) && n == out.n &&
                (!valid || (growths == __atomic_load_n(&out.planned, __ATOMIC_RELAXED) && calls.mlock2 == out.mlock2));
    for (unsigned i = 0; i < n && same; ++i) same = at[i].lo == out.at[i].lo && at[i].hi == out.at[i].hi;
    if (same) return;
    __atomic_store_n(&out.valid, false, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    for (unsigned i = 0; i < n; ++i) out.at[i] = at[i];
    out.n = n;
    out.mlock2 = calls.mlock2;
    __atomic_store_n(&out.planned, growths, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&out.valid, valid, __ATOMIC_RELAXED);
}

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif
MLSHIM_FORK_CHILD_COMMON_TEXT void SecureArena::postfork_child_planned(const ForkPlan &plan) noexcept {
    for (unsigned i = 0; i < plan.n; ++i)
        if (plan.mlock2(reinterpret_cast<void *>(plan.at[i].lo), plan.at[i].hi - plan.at[i].lo, MLOCK_ONFAULT)) {
            relock_each(0, plan.at[i].lo);
            return;
        }
}

// Lock order: a pool's lock, then misc_lock_ (thread_exit holds the one and takes the other).
// fork takes them in that order too.
int SecureArena::for_each_unprotected(std::uintptr_t lo, std::uintptr_t hi, unsigned action,
                                      int (*each)(std::uintptr_t, std::uintptr_t)) noexcept {
    // The arena grows at base_ + span_ under misc_lock_: held, the span is the arena. When it
    // is not free (this thread holds an arena lock: a signal handler that interrupted the arena;
    // or a fork holds them all: a fork handler after the shim's, or a signal handler while
    // another thread forks), the call takes none and waits for none, and leaves out all the room
    // the arena may grow into, [span, cap_span_), since a region mapped there meanwhile would
    // not be in span_ yet.
    if (t_guards == 0) {
        Guard g(misc_lock_, std::try_to_lock);
        if (g.owns()) {
            const std::uintptr_t span_end = base_ + __atomic_load_n(&span_, __ATOMIC_ACQUIRE);
            return each_piece_outside(lo, hi, span_end, span_end, action, each);
        }
    }
    const std::uintptr_t span_end = base_ + __atomic_load_n(&span_, __ATOMIC_ACQUIRE);
    return each_piece_outside(lo, hi, span_end, std::max(base_ + cap_span_, span_end), action, each);
}

// for_each_unprotected's stretches, with the blocks' range ending at ahi and nothing reached
// in [ahi, cap).
int SecureArena::each_piece_outside(std::uintptr_t lo, std::uintptr_t hi, std::uintptr_t ahi, std::uintptr_t cap,
                                    unsigned action, int (*each)(std::uintptr_t, std::uintptr_t)) const noexcept {
    const std::uintptr_t alo = base_;
    if (!npools_ || hi <= alo || lo >= cap) return each(lo, hi);
    int first = 0;
    auto piece = [&](std::uintptr_t plo, std::uintptr_t phi) {
        if (plo >= phi) return;
        const int rc = each(plo, phi);
        if (!first) first = rc;
    };
    piece(lo, alo);
    const std::uintptr_t end = std::min(hi, ahi);
    std::uintptr_t open = 0;  // where the stretch of regions without `action` being gathered began
    for (std::uintptr_t at = std::max(lo, alo), next; at < end; at = next) {
        const std::size_t r = (at - base_) >> region_shift_;
        next = std::min(end, base_ + ((r + 1) << region_shift_));
        const bool kept = pools_[region_pool_[r]].actions & action;
        if (kept && open) piece(open, at), open = 0;
        if (!kept && !open) open = at;
    }
    if (open) piece(open, end);
    piece(cap, hi);
    return first;
}

void SecureArena::relock_after_munlockall(bool held) noexcept {
    // No signal handler may run on this thread while it holds the locks (one that allocates, or
    // calls munlockall, would wait for them).
    SignalsBlocked blocked;
    auto relock = [&] {
        relock_cause_ = "the program's munlockall";
        relock_all(secret_pools());  // munlockall leaves secretmem mappings locked
        relock_cause_ = "fork";
    };
    if (held) {
        g_relock_pending.store(nullptr);
        relock();
    } else {
        // Asked first, then tried: whoever holds a lock now sees the request when it lets the
        // last one go (Guard, atfork_parent), and nobody waits. Waiting could be forever: a
        // fork holds every lock from its prepare handler on while glibc's fork waits for its
        // allocator's locks, one of which the thread this signal handler interrupted may hold.
        g_relock_pending.store(this);
        while (t_guards == 0 && g_relock_pending.load() && try_prefork()) {
            g_relock_pending.store(nullptr);
            relock();
            postfork_parent();
        }
    }
}

void SecureArena::relock_if_pending() noexcept { relock_pending(); }

void SecureArena::prefork() noexcept {
    for (unsigned i = 0; i < npools_; ++i) pthread_mutex_lock(&pools_[i].lock);
    pthread_mutex_lock(&misc_lock_);
}

bool SecureArena::try_prefork() noexcept {
    unsigned taken = 0;
    while (taken < npools_ && pthread_mutex_trylock(&pools_[taken].lock) == 0) ++taken;
    if (taken == npools_ && pthread_mutex_trylock(&misc_lock_) == 0) return true;
    while (taken-- > 0) pthread_mutex_unlock(&pools_[taken].lock);
    return false;
}

void SecureArena::postfork_parent() noexcept {
    pthread_mutex_unlock(&misc_lock_);
    for (unsigned i = npools_; i-- > 0;) pthread_mutex_unlock(&pools_[i].lock);
}

void SecureArena::postfork_child_locks() noexcept {
    pthread_mutex_init(&misc_lock_, nullptr);
    for (unsigned i = 0; i < npools_; ++i) pthread_mutex_init(&pools_[i].lock, nullptr);
}

MLSHIM_FORK_CHILD_TEXT void SecureArena::postfork_child() noexcept {
    if (marks_ == &own_marks_) own_marks_ = ProcessMarks{};  // no page the kernel zeroes for the child
    // mlock is not inherited: lock again the range each pool locked at start-up and the
    // regions mapped locked after it (the pages in use fault in locked, the others lock as
    // they are touched). A secretmem pool gets a file of its own, or else a private anonymous
    // copy that is locked on fault like any other pool.
    unsigned own_file = secret_pools();  // bit i: pool i has a secretmem file of its own (locked by the kernel)
    for (unsigned i = 0; i < npools_; ++i)
        if (((own_file >> i) & 1) && !unshare_after_fork(pools_[i])) own_file &= ~(1u << i);
    relock_all(own_file);
    g_relock_pending.store(nullptr, std::memory_order_relaxed);  // a parent's munlockall: relocked above
    // The forking thread is the only one left. It keeps its stats slot when the child's page
    // is the parent's copy (stats_after_fork), and claims one in a new page.
    ThreadState &ts = t_state;
    if (ts.arena == this && stats_ && !ts.dead && !stats_has_slot(*stats_, ts.slot)) {
        ts.slot = stats_claim_slot(stats_, current_tid());
        ts.slot_shared = ts.slot == &stats_->shared;
        ts.rules = stats_rule_row(stats_, ts.slot);
    }
}

// Locks again what the arena held locked, but the pools in `skip`: in one call per stretch
// where it can, else piece by piece as far as the limit lets it. Pages an ancestor locked one
// stretch at a time (loose_locked_, inherited) are locked after the rest; when the rest fell
// short here, the one warning has been given.
MLSHIM_FORK_CHILD_TEXT void SecureArena::relock_all(unsigned skip) noexcept {
    const bool loose = loose_locked_;
    const std::uintptr_t refused = relock_merged(skip);
    const bool short_here = refused != UINTPTR_MAX && relock_each(skip, refused);
    if (loose) relock_loose_pages(!short_here);
}

// What postfork_child locks, one call per stretch of the arena's address space that locks the
// same way, in address order: each pool's start-up range but those in `skip` (relock_end), and
// the runs of regions mapped locked after start-up (for_each_run_piece). Pieces that touch or
// overlap and lock the same way are one stretch: two calls on one mapping would split it and
// join it again, each a walk of its pages, and a fork child pays for every call.
// `each(lo, hi, how)` returns false to stop.
template <typename F> MLSHIM_FORK_CHILD_TEXT void SecureArena::for_each_relock_stretch(unsigned skip, F each) const noexcept {
    const std::size_t regions = __atomic_load_n(&span_, __ATOMIC_RELAXED) >> region_shift_;
    std::uintptr_t lo = 0, hi = 0;
    Relock how = Relock::on_fault;
    bool go = true;
    auto add = [&](std::uintptr_t plo, std::uintptr_t phi, Relock phow) {
        if (hi && plo <= hi && phow == how) {
            hi = std::max(hi, phi);
        } else {
            if (hi) go = each(lo, hi, how);
            lo = plo, hi = phi, how = phow;
        }
        return go;
    };
    unsigned i = 0;  // next pool
    std::size_t r = 0, e = locked_run(r, regions);  // next run of regions
    while (go) {
        while (i < npools_ && ((skip >> i & 1) || relock_end(pools_[i]) == pools_[i].start)) ++i;
        // The next piece: the pool's range or the run of regions that starts first.
        const std::uintptr_t region_lo = r < regions ? base_ + (r << region_shift_) : UINTPTR_MAX;
        if (i < npools_ && pools_[i].start <= region_lo) {
            add(pools_[i].start, relock_end(pools_[i]), relock_how(pools_[i]));
            ++i;
        } else if (r < regions) {
            for_each_run_piece(r, e, add);
            r = e, e = locked_run(r, regions);
        } else {
            if (hi) each(lo, hi, how);
            return;
        }
    }
}

// The next run of regions mapped locked after start-up, of the first `regions`: moves r to its
// first region (to `regions` when there is none) and returns where it ends.
MLSHIM_FORK_CHILD_TEXT std::size_t SecureArena::locked_run(std::size_t &r, std::size_t regions) const noexcept {
    while (r < regions && !region_locked_[r]) ++r;
    std::size_t e = r;
    while (e < regions && region_locked_[e]) ++e;
    return e;
}

// The pieces of the run of regions [r, e) mapped locked after start-up, each with how a fork
// child locks it again: on fault; or without lock-on-fault, where the regions were mapped
// MAP_LOCKED and their pages lock as they are committed, the pages committed (populated) and
// those never committed mapped locked again (remap_locked), so that the pages the child
// commits there lock too. `each(lo, hi, how)` returns false to stop.
template <typename F> MLSHIM_FORK_CHILD_TEXT void SecureArena::for_each_run_piece(std::size_t r, std::size_t e, F each) const noexcept {
    if (!lock_on_commit_) {
        each(base_ + (r << region_shift_), base_ + (e << region_shift_), Relock::on_fault);
        return;
    }
    for (std::size_t pg = r * region_pages_, last = e * region_pages_, end; pg < last; pg = end) {
        const std::uint8_t rw = meta_[pg].flags & kReadWrite;
        for (end = pg + 1; end < last && (meta_[end].flags & kReadWrite) == rw;) ++end;
        if (!each(base_ + pg * page_, base_ + end * page_, rw ? Relock::populate : Relock::remap)) return;
    }
}

// Locks [lo, hi) again after fork as `how` says. 0 or the error.
MLSHIM_FORK_CHILD_TEXT int SecureArena::relock_piece(std::uintptr_t lo, std::uintptr_t hi, Relock how) noexcept {
    return how == Relock::remap ? remap_locked(lo, hi)
                                : backing_relock(reinterpret_cast<void *>(lo), hi - lo, how == Relock::on_fault);
}

// Without lock-on-fault, in a fork child: maps [lo, hi), pages of regions mapped locked that
// were never committed (inaccessible, holding nothing), locked again, with their pools' advice
// (dontdump): made elsewhere, advised, and moved over them. 0 or the error (EAGAIN past
// RLIMIT_MEMLOCK); on error [lo, hi) is reserved as it was. Fatal when it cannot be.
int SecureArena::remap_locked(std::uintptr_t lo, std::uintptr_t hi) noexcept {
    // Advises the pages of [lo, hi) as their pools ask, where they are mapped at `to`.
    auto advise = [&](unsigned char *to) {
        for (std::uintptr_t at = lo, next; at < hi; at = next) {
            const std::size_t r = (at - base_) >> region_shift_;
            next = std::min(hi, base_ + ((r + 1) << region_shift_));
            if (!(pools_[region_pool_[r]].actions & kActionDontdump)) continue;
            if (int err = memlock_dontdump(to + (at - lo), next - at)) return err;
        }
        return 0;
    };
    void *fresh = nullptr;
    if (int err = backing_map_locked_anywhere(hi - lo, &fresh)) return err;
    if (int err = advise(static_cast<unsigned char *>(fresh))) {
        memlock_release(fresh, hi - lo);
        return err;
    }
    const int err = memlock_move_over(fresh, reinterpret_cast<void *>(lo), hi - lo);
    if (!err) return 0;
    // mremap may have unmapped the range before it failed: reserved again, with its advice.
    int again = memlock_reserve_at(reinterpret_cast<void *>(lo), hi - lo);
    if (!again) again = advise(reinterpret_cast<unsigned char *>(lo));
    if (again && again != EEXIST) fatal("cannot keep the arena's address space after fork", memlock_strerror(again));
    return err;
}

// Locks what postfork_child locks in one call per stretch (for_each_relock_stretch). Returns
// where the refused call began, UINTPTR_MAX when none was. relock_each takes over from there:
// a call refused for the limit or the right to lock has locked nothing, and what the calls
// before it locked is not asked again (on kernels before 4.9, and for mappings, the kernel
// would count it against RLIMIT_MEMLOCK twice). No munlock: a fork child's handler makes no
// system call beyond those that lock.
MLSHIM_FORK_CHILD_TEXT std::uintptr_t SecureArena::relock_merged(unsigned skip) noexcept {
    std::uintptr_t refused = UINTPTR_MAX;
    for_each_relock_stretch(skip, [&](std::uintptr_t lo, std::uintptr_t hi, Relock how) {
        if (relock_piece(lo, hi, how)) refused = lo;
        return refused == UINTPTR_MAX;
    });
    return refused;
}

// Locks what postfork_child locks piece by piece, when relock_merged could not lock it all
// (it locked what ends at or below `refused`): each pool's range, then the runs of regions
// mapped locked after start-up, and what does not lock as far as the limit lets
// (relock_what_fits), with the policy's outcome and warning. True when part did not lock
// whole.
bool SecureArena::relock_each(unsigned skip, std::uintptr_t refused) noexcept {
    if (limit_binds(skip)) {
        relock_fell_short(ENOMEM);
        relock_what_fits(unlock_whole(skip), ENOMEM);
        return true;
    }
    unsigned short_pools = 0;  // bit i: pool i's range did not lock whole
    int failed = 0;
    for (unsigned i = 0; i < npools_; ++i) {
        Pool &pool = pools_[i];
        const std::uintptr_t end = relock_end(pool);
        if (end == pool.start || (skip >> i & 1) || end <= refused) continue;
        if (int rc = relock(pool, pool.start, end - pool.start)) {
            failed = rc;
            short_pools |= 1u << i;
        }
    }
    // When a start-up range could not lock whole, the limit is spent: the regions are not
    // tried whole, and like a run that does not lock, are left to relock_what_fits
    // (kRelockPart), which locks the pages in use first.
    const std::size_t regions = __atomic_load_n(&span_, __ATOMIC_RELAXED) >> region_shift_;
    for (std::size_t r = 0, e = locked_run(r, regions); r < regions; r = e, e = locked_run(r, regions)) {
        int rc = short_pools ? failed : 0;
        std::size_t from = r;  // the regions from here on did not lock whole
        if (!rc)
            for_each_run_piece(r, e, [&](std::uintptr_t lo, std::uintptr_t hi, Relock how) {
                if (hi <= refused || !(rc = relock_piece(lo, hi, how))) return true;
                from = (lo - base_) >> region_shift_;
                return false;
            });
        if (rc) {
            failed = rc;
            for (std::size_t k = from; k < e; ++k) region_locked_[k] = kRelockPart;
        }
    }
    if (failed) {
        relock_fell_short(failed);
        relock_what_fits(short_pools, failed);
    }
    return failed != 0;
}

// Does RLIMIT_MEMLOCK refuse this process all that relock_merged locks (`skip` as there)? Not
// with CAP_IPC_LOCK, nor with no limit. Then a refusal is the limit's, not one range's.
bool SecureArena::limit_binds(unsigned skip) const noexcept {
    const std::size_t limit = backing_lock_limit();
    if (limit == SIZE_MAX) return false;
    std::size_t total = 0;
    for_each_relock_stretch(skip, [&](std::uintptr_t lo, std::uintptr_t hi, Relock) {
        total += hi - lo;
        return true;
    });
    return total > limit;
}

// What relock_merged locked whole (pool ranges but those in `skip`, regions mapped locked)
// holds free pages as well as blocks, and the limit refuses part of it (limit_binds): unlocks
// it and marks those regions kRelockPart, so that relock_what_fits locks the pages that hold
// blocks first, wherever they are. Returns the pools it unlocked (bit i). A memfd_secret pool
// stays as it is: its pages are locked by the kernel, not by mlock.
unsigned SecureArena::unlock_whole(unsigned skip) noexcept {
    unsigned unlocked = 0;
    for (unsigned i = 0; i < npools_; ++i) {
        const Pool &pool = pools_[i];
        const std::uintptr_t end = relock_end(pool);
        if (end == pool.start || (skip >> i & 1) || pool.secret) continue;
        memlock_unlock(reinterpret_cast<void *>(pool.start), end - pool.start);
        unlocked |= 1u << i;
    }
    const std::size_t regions = __atomic_load_n(&span_, __ATOMIC_RELAXED) >> region_shift_;
    for (std::size_t r = 0; r < regions;) {
        if (region_locked_[r] != 1) {
            ++r;
            continue;
        }
        std::size_t e = r;
        while (e < regions && region_locked_[e] == 1) region_locked_[e++] = kRelockPart;
        memlock_unlock(reinterpret_cast<void *>(base_ + (r << region_shift_)), (e - r) << region_shift_);
        r = e;
    }
    return unlocked;
}

// A fork child could not lock again all its parent held locked (err): the arena's last range
// no longer locks on fault, the failure counts, and under policy abort the child stops here.
void SecureArena::relock_fell_short(int err) noexcept {
    tail_onfault_ = false;
    if (stats_) stats_->lock_failures.fetch_add(1);
    if (opts_.on_lock_failure == LockFailurePolicy::abort) {
        char what[96];
        std::snprintf(what, sizeof what, "cannot lock arena memory after %s (policy on_lock_failure=abort)", relock_cause_);
        fatal(what, memlock_strerror(err));
    }
}

// After relock_fell_short, as the caller gives the process's one warning about locking: later
// messages (a slab committed beyond what is locked) give the same reason.
void SecureArena::relock_warned(int err) noexcept {
    lock_error_ = err;
    warned_lock_failure_.store(true);
    if (opts_.on_lock_failure == LockFailurePolicy::fallback && stats_) stats_->fallbacks.fetch_add(1);
}

// Is page pg inside a pool's start-up range, which postfork_child locks whole (as it does the
// regions mapped locked)?
bool SecureArena::relock_covers(std::size_t pg) const noexcept {
    const std::uintptr_t at = base_ + pg * page_;
    for (unsigned i = 0; i < npools_; ++i)
        if (at >= pools_[i].start && at < relock_end(pools_[i])) return true;
    return false;
}

// After a fork in which relock_what_fits locked the pages in use of a range that did not lock
// whole (a lower RLIMIT_MEMLOCK), those pages are locked outside the ranges locked whole: each
// later fork child locks them again, one call per stretch, or else counts them unlocked, and
// when `report` (nothing else fell short in this fork), with the policy's outcome and one
// warning, as relock_what_fits does.
void SecureArena::relock_loose_pages(bool report) noexcept {
    const std::size_t pages = __atomic_load_n(&span_, __ATOMIC_RELAXED) / page_;
    auto loose = [&](std::size_t pg) { return (meta_[pg].flags & kLockedPage) && !relock_covers(pg); };
    std::size_t unlocked = 0;
    int err = 0;
    for (std::size_t pg = 0; pg < pages;) {
        // A stretch stays within one region, and so within one pool.
        const std::size_t region_end = (pg / region_pages_ + 1) * region_pages_;
        if (region_locked_[pg / region_pages_]) {
            pg = region_end;  // locked whole
            continue;
        }
        if (!loose(pg)) {
            ++pg;
            continue;
        }
        std::size_t end = pg + 1;
        while (end < std::min(pages, region_end) && loose(end)) ++end;
        Pool &pool = pools_[region_pool_[pg / region_pages_]];
        if (int rc = relock(pool, base_ + pg * page_, (end - pg) * page_)) {
            err = rc;
            unlocked += end - pg;
            for (std::size_t k = pg; k < end; ++k)
                set_page_flags(pool, k, static_cast<std::uint8_t>(meta_[k].flags & ~kLockedPage));
        }
        pg = end;
    }
    if (!err || !report) return;
    relock_fell_short(err);
    relock_warned(err);
    if (!reporter_) return;
    char what[200];
    std::snprintf(what, sizeof what,
                  "cannot lock again after %s %zu KiB of arena pages that %s held locked (policy %s)",
                  relock_cause_, unlocked * page_ >> 10, std::strcmp(relock_cause_, "fork") ? "it" : "its parent",
                  opts_.on_lock_failure == LockFailurePolicy::deny ? "deny" : "fallback: they stay unlocked, still "
                                                                              "wiped and out of core dumps");
    reporter_(LogLevel::warn, what, memlock_strerror(err));
}

// Where a pool's locked range ends for locking it again after fork: without lock-on-fault
// only its committed part is locked (mlock populates). Its start when nothing is to be locked.
MLSHIM_FORK_CHILD_TEXT std::uintptr_t SecureArena::relock_end(const Pool &pool) const noexcept {
    return lock_on_commit_ && !pool.secret ? pool.locked_to : pool.lock_end;
}

// How the pages of `pool` lock again after fork: without lock-on-fault mlock populates (its
// committed pages), otherwise on fault.
MLSHIM_FORK_CHILD_TEXT SecureArena::Relock SecureArena::relock_how(const Pool &pool) const noexcept {
    return lock_on_commit_ && !pool.secret ? Relock::populate : Relock::on_fault;
}

// Locks [at, at+bytes) of `pool` as it was locked before fork. 0 or the error.
MLSHIM_FORK_CHILD_TEXT int SecureArena::relock(const Pool &pool, std::uintptr_t at, std::size_t bytes) noexcept {
    return relock_piece(at, at + bytes, relock_how(pool));
}

// Locks the largest part [at, at+n) of [at, at+bytes) that the limit lets this process lock
// (a binary search over whole pages; a call the limit refuses changes nothing). Returns n;
// err: why the rest did not lock. pre: page-aligned.
std::size_t SecureArena::relock_largest(const Pool &pool, std::uintptr_t at, std::size_t bytes, int &err) noexcept {
    int rc = relock(pool, at, bytes);
    if (!rc) return bytes;
    err = rc;
    if (rc != ENOMEM && rc != EAGAIN) return 0;  // not the limit: no part will lock either
    std::size_t fits = 0, fails = bytes / page_;
    while (fails - fits > 1) {
        std::size_t mid = fits + (fails - fits) / 2;
        if (relock(pool, at, mid * page_)) fails = mid;
        else fits = mid;
    }
    return fits * page_;
}

// A fork child whose RLIMIT_MEMLOCK is below what its parent locked (a daemon that lowered it,
// or dropped to a user with a low one, then forks its workers), or that may not lock at all:
// for each pool in `pools` (bit i: pool i), whose range did not lock whole (err), lock the
// pages that hold blocks (slabs and live page runs) first, then the largest part from the
// start of the range that still fits. What does not fit counts as unlocked from then on, and
// pages committed later beyond the locked part follow the lock policy. One warning says what
// is left unlocked and why. Runs in the fork handler, before the program runs in the child.
void SecureArena::relock_what_fits(unsigned pools, int err) noexcept {
    std::size_t before = 0, used = 0, used_locked = 0;
    bool room = true;  // false once the limit refused part of a range: nothing more fits
    // Locks what fits of the pages holding blocks in [first, last): the slabs, runs and free
    // runs are walked head to head from the start of the pool's extent that `first` lies in
    // (no slab or run crosses it; a run may cross into `first`'s region, and the pages inside a
    // free run keep what they held before, so only a walk from a head tells them), and each
    // stretch of block holding pages is locked in one call. The short pools' start-up ranges
    // first, then the regions mapped locked later that did not lock whole (kRelockPart).
    auto lock_in_use = [&](std::size_t first, std::size_t last) {
        const std::uint8_t mine = region_pool_[first / region_pages_];
        Pool &pool = pools_[mine];
        before += (last - first) * page_;
        auto holds_blocks = [&](std::size_t h) {
            return meta_[h].head == h && meta_[h].npages && (meta_[h].kind == kSlab || meta_[h].kind == kRun);
        };
        std::size_t r = first / region_pages_;
        while (r > 0 && region_pool_[r - 1] == mine) --r;
        for (std::size_t pg = r * region_pages_; pg < last;) {
            if (!holds_blocks(pg)) {
                pg += meta_[pg].head == pg && meta_[pg].npages ? meta_[pg].npages : 1;
                continue;
            }
            std::size_t end = pg;
            while (end < last && holds_blocks(end)) end += meta_[end].npages;
            const std::size_t from = std::max(pg, first);
            pg = end;
            end = std::min(end, last);
            if (from >= end) continue;
            used += (end - from) * page_;
            if (room) {
                const std::size_t got = relock_largest(pool, base_ + from * page_, (end - from) * page_, err);
                for (std::size_t k = from; k < from + got / page_; ++k) meta_[k].flags |= kRelocked;
                loose_locked_ |= got > 0;
                used_locked += got;
                room = got == (end - from) * page_;
            }
        }
    };
    const std::size_t regions = __atomic_load_n(&span_, __ATOMIC_RELAXED) >> region_shift_;
    for (unsigned i = 0; i < npools_; ++i)
        if (pools >> i & 1) lock_in_use((pools_[i].start - base_) / page_, (relock_end(pools_[i]) - base_) / page_);
    for (std::size_t r = 0; r < regions; ++r)
        if (region_locked_[r] == kRelockPart) lock_in_use((r << region_shift_) / page_, ((r + 1) << region_shift_) / page_);

    // Each page of [first, last) is locked now if it lies below `locked_to` or the pass above
    // locked it.
    std::size_t after = 0;
    auto settle = [&](Pool &pool, std::size_t first, std::size_t last, std::size_t locked_to) {
        for (std::size_t pg = first; pg < last; ++pg) {
            const std::uint8_t f = meta_[pg].flags;
            const bool locked = pg < locked_to || (f & kRelocked);
            after += locked ? page_ : 0;
            set_page_flags(pool, pg, static_cast<std::uint8_t>((f & ~(kRelocked | kLockedPage)) | (locked ? kLockedPage : 0)));
        }
    };
    for (unsigned i = 0; i < npools_; ++i) {
        if (!(pools >> i & 1)) continue;
        Pool &pool = pools_[i];
        const std::size_t first = (pool.start - base_) / page_, last = (relock_end(pool) - base_) / page_;
        std::size_t prefix = 0;
        if (room) {
            prefix = relock_largest(pool, pool.start, (last - first) * page_, err);
            room = prefix == (last - first) * page_;
        }
        settle(pool, first, last, first + prefix / page_);
        pool.lock_end = pool.start + prefix;
        if (lock_on_commit_ && !pool.secret) pool.locked_to = pool.lock_end;
    }
    // Regions that did not lock whole keep what the first pass locked, page by page, and are
    // no longer locked regions: a later fork locks only whole locked regions again.
    for (std::size_t r = 0; r < regions; ++r) {
        if (region_locked_[r] != kRelockPart) continue;
        region_locked_[r] = 0;
        const std::size_t first = (r << region_shift_) / page_;
        settle(pools_[region_pool_[r]], first, ((r + 1) << region_shift_) / page_, first);
    }
    // The figures count what locked whole as well: the other pools' ranges, the regions that
    // locked.
    std::size_t whole = 0;
    for (unsigned i = 0; i < npools_; ++i)
        if (!(pools >> i & 1)) whole += relock_end(pools_[i]) - pools_[i].start;
    for (std::size_t r = 0; r < regions; ++r) whole += region_locked_[r] ? std::size_t{1} << region_shift_ : 0;
    before += whole, after += whole;
    relock_warned(err);
    if (!reporter_) return;
    char in_use[96] = "every page in use among them";
    if (used_locked < used)
        std::snprintf(in_use, sizeof in_use, "only %zu of the %zu KiB in use among them", used_locked >> 10, used >> 10);
    char limit[48] = "";
    rlimit rl;
    if (::getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        std::snprintf(limit, sizeof limit, " (RLIMIT_MEMLOCK %llu KiB)", static_cast<unsigned long long>(rl.rlim_cur >> 10));
    char what[400];
    std::snprintf(what, sizeof what,
                  "cannot lock all arena memory again after %s (policy %s): locked %zu of the %zu KiB locked "
                  "before %s, %s; %zu KiB stays unlocked%s",
                  relock_cause_,
                  opts_.on_lock_failure == LockFailurePolicy::deny
                      ? "deny: matching allocations that need memory beyond it fail with ENOMEM"
                      : "fallback: the rest is served unlocked, still wiped and out of core dumps",
                  after >> 10, before >> 10, relock_cause_, in_use, (before - after) >> 10, limit);
    reporter_(LogLevel::warn, what, memlock_strerror(err));
}

bool SecureArena::fork_child_copies_secretmem() const noexcept { return secret_pools() != 0; }

// A secretmem mapping is shared with the fork child: the child copies it into a file of its
// own before the program runs in it. True when it did; otherwise (policy permitting) the child
// copies it into private anonymous memory, which the caller locks as after any fork, and
// false. Fatal when neither works: the child must not share the parent's arena.
bool SecureArena::unshare_after_fork(Pool &pool) noexcept {
    CancelOff no_cancel;  // a close of the new file: the forking thread's pending cancellation stays pending
    void *at = reinterpret_cast<void *>(pool.start);
    std::size_t len = pool.lock_end - pool.start, rw = std::min(pool.committed, pool.lock_end) - pool.start;
    int rc = backing_unshare(at, len, rw, false);
    clear_vector_registers();  // the copy moved secrets through them
    if (!rc) return true;
    if (opts_.on_lock_failure == LockFailurePolicy::abort)
        fatal("cannot give a fork child secretmem arena memory of its own (policy on_lock_failure=abort)",
              memlock_strerror(rc));
    int rc2 = backing_unshare(at, len, rw, true);
    clear_vector_registers();
    if (rc2) fatal("cannot give a fork child arena memory of its own", memlock_strerror(rc2));
    set_secret(pool, false);
    if (lock_on_commit_) pool.locked_to = pool.start + rw;  // mlock what is committed (relock_end)
    if (reporter_)
        reporter_(LogLevel::warn,
                  "cannot give this fork child secretmem arena memory of its own: it has a private anonymous copy",
                  memlock_strerror(rc));
    return false;
}

// Sets page pg's flags (its kInUse unchanged), keeping the pool's counters, which count the
// pages in use by their flags, true.
void SecureArena::set_page_flags(Pool &pool, std::size_t pg, std::uint8_t flags) noexcept {
    if (meta_[pg].flags & kInUse) account(pool, pg, 1, -1);
    meta_[pg].flags = flags;
    if (flags & kInUse) account(pool, pg, 1, 1);
}

// Marks the pool's locked range as memfd_secret memory or not, keeping the counters true.
void SecureArena::set_secret(Pool &pool, bool secret) noexcept {
    std::size_t first = (pool.start - base_) / page_, last = (pool.lock_end - base_) / page_;
    for (std::size_t pg = first; pg < last; ++pg)
        set_page_flags(pool, pg, static_cast<std::uint8_t>(secret ? meta_[pg].flags | kSecretPage
                                                                  : meta_[pg].flags & ~kSecretPage));
    pool.secret = secret;
    // The free runs' pages counted again by kind: secretmem ones are kept, others dirty.
    pool.dirty_bytes = pool.kept_bytes = 0;
    for (std::uint32_t r = pool.free_runs; r; r = meta_[r - 1].next_free) {
        const std::size_t head = r - 1, n = meta_[head].npages, kept = secret_pages(pool, head, n);
        pool.dirty_bytes += (meta_[head].nfree - kept) * page_;
        pool.kept_bytes += kept * page_;
    }
    bool any = false;
    for (unsigned i = 0; i < npools_; ++i) any |= pools_[i].secret;
    if (stats_) stats_->backing = any ? kStatsBackingSecretmem : kStatsBackingAnonymous;
}

ThreadCounters *SecureArena::thread_slot() const noexcept {
    return t_state.arena == this ? t_state.slot : nullptr;
}

void SecureArena::thread_exit() noexcept {
    ThreadState &ts = t_state;
    if (ts.arena != this) return;
    if (PoolCache *set = ts.caches) {
        for (unsigned p = 0; p < npools_; ++p) {
            PoolCache *pc = cache_in(set, p);
            bool any = false;
            for (unsigned c = 0; c < kNumClasses; ++c) any |= pc->bins[c].count != 0;
            if (!any) continue;
            Guard g(pools_[p].lock);
            for (unsigned c = 0; c < kNumClasses; ++c) {
                flush(pools_[p], c, pc->blocks[c], pc->bins[c].count);
                pc->bins[c].count = 0;
            }
        }
        Guard g(misc_lock_);
        set->next_spare = spare_caches_;
        spare_caches_ = set;
        ts.caches = nullptr;
    }
    if (stats_ && ts.slot) stats_release_slot(stats_, ts.slot);
    // What the thread still frees or allocates on its way out goes straight to the pools and
    // is counted in the shared slot.
    ts.slot = stats_ ? &stats_->shared : nullptr;
    ts.rules = nullptr;
    ts.slot_shared = true;
    ts.dead = true;
}

// ---- per-rule counters ---------------------------------------------------------------------

// A thread with a rule row is registered with the arena that gave it, and alive (thread_exit
// takes the row away): the common case checks nothing else.
void SecureArena::count_consulted(unsigned rule) noexcept {
    ThreadState &ts = t_state;
    if (__builtin_expect(ts.rules != nullptr && ts.arena == this, 1)) return ThreadCounters::bump(ts.rules->rule[rule].consulted, 1);
    count_consulted_slow(rule);
}

void SecureArena::count_consulted_slow(unsigned rule) noexcept {
    if (!stats_ || !thread_ready(this, stats_)) return;
    ThreadState &ts = t_state;
    if (ts.rules) ThreadCounters::bump(ts.rules->rule[rule].consulted, 1);
    else if (ts.slot) stats_->rule_totals[rule].consulted.fetch_add(1, std::memory_order_relaxed);
}

unsigned SecureArena::rule_of(const void *p) const noexcept { return state_of(p) >> kRuleShift; }

}  // namespace mlshim
