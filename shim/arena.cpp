#include "arena.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <new>

#include "fatal.hpp"
#include "memlock.h"

namespace mlshim {

namespace {

constexpr std::uint16_t kLargeClass = 0xffff;
constexpr unsigned kCacheCap = 32;  // blocks a thread caches per size class, at most

enum : std::uint8_t { kUnused = 0, kSlab = 1, kRun = 2, kFreeRun = 3 };
// Block states, one byte per 16-byte granule (at the block's first granule).
enum : std::uint8_t { kNeverUsed = 0, kLive = 1, kFreed = 2 };

struct ClassInfo {
    std::uint32_t size;
    std::uint32_t slab_bytes;
    std::uint32_t cache_max;   // blocks a thread keeps
    std::uint64_t magic;       // ceil(2^40 / size): offset / size == (offset * magic) >> 40
};

constexpr std::size_t compute_class_size(unsigned c) {
    if (c < 8) return (c + 1) * 16;
    unsigned b = 7 + (c - 8) / 4, i = (c - 8) % 4;
    return (std::size_t{1} << b) + (i + 1) * (std::size_t{1} << (b - 2));
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
                                static_cast<std::uint32_t>(cache),
                                ((std::uint64_t{1} << 40) + size - 1) / size};
        }
    }
};

constexpr ClassTable kClasses;
static_assert(compute_class_size(kNumClasses - 1) == kMaxSmall, "class table ends at kMaxSmall");

std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }

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

// Zeroes a block. Small blocks take inline stores (a call costs more than the stores); the
// empty asm tells the compiler the memory is read afterwards, so the stores stay.
inline void wipe_block(void *p, std::size_t size) noexcept {
    if (size <= 128) {
        auto *w = static_cast<std::uint64_t *>(p);
        for (std::size_t i = 0; i < size / 8; ++i) w[i] = 0;
        __asm__ __volatile__("" : : "r"(p) : "memory");
    } else {
        memlock_wipe(p, size);
        clear_vector_registers();  // a block this size was copied through them
    }
}

class Guard {
public:
    explicit Guard(pthread_mutex_t &m) noexcept : m_(m) { pthread_mutex_lock(&m_); }
    ~Guard() { pthread_mutex_unlock(&m_); }
    Guard(const Guard &) = delete;
    Guard &operator=(const Guard &) = delete;

private:
    pthread_mutex_t &m_;
};

}  // namespace

// ---- per-page, per-pool and per-thread state ---------------------------------------------

struct SecureArena::PageMeta {
    std::uint32_t head;       // page index of the slab or run this page belongs to
    std::uint32_t npages;     // at the head: pages in the slab or run
    std::uint32_t next_free;  // at a free run's head: next free run's head + 1 (0: none)
    std::uint32_t prev_free;  // at a free run's head: previous free run's head + 1 (0: none)
    std::uint16_t cls;        // size class, or kLargeClass
    std::uint8_t kind;        // kUnused, kSlab, kRun, kFreeRun
    std::uint8_t locked;      // the page was mlocked
    std::uint8_t pad[3];
};

struct SecureArena::Pool {
    pthread_mutex_t lock;
    unsigned actions;
    std::uintptr_t start, end;   // the pool's address range
    std::uintptr_t frontier;     // first byte never carved
    std::uintptr_t committed;    // first byte not committed (prealloc commits ahead)
    std::uint32_t free_runs;     // first free run's head page + 1 (0: none)
    struct Central {
        void **stack;            // freed blocks (a reserved region, committed as it grows)
        std::size_t count;       // blocks on the stack
        std::size_t capacity;    // committed entries
        std::size_t carved;      // blocks ever carved: the stack never holds more
        std::uintptr_t bump, bump_end;  // the uncarved rest of the newest slab
    } central[kNumClasses];
};

struct SecureArena::PoolCache {
    struct Bin {
        std::uint32_t count;
        std::uint32_t pad;
        void *blocks[kCacheCap];
    };
    PoolCache *next_spare;
    Bin bins[kNumClasses];
};

namespace {

struct ThreadState {
    const SecureArena *arena;                      // owner of the caches (nullptr: none yet)
    SecureArena::PoolCache *caches[kMaxPools];
    ThreadCounters *slot;
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
    }
    if (g_key_arena == arena) pthread_setspecific(g_exit_key, &ts);
    return true;
}

// Adds n to one counter of the calling thread's stats slot: a plain store in its own slot,
// an atomic add in the shared one.
inline void add_to_slot(std::atomic<std::uint64_t> ThreadCounters::*field, std::uint64_t n) noexcept {
    ThreadState &ts = t_state;
    if (!ts.slot) return;
    if (ts.slot_shared) (ts.slot->*field).fetch_add(n, std::memory_order_relaxed);
    else ThreadCounters::bump(ts.slot->*field, n);
}

inline void count(std::atomic<std::uint64_t> ThreadCounters::*ops,
                  std::atomic<std::uint64_t> ThreadCounters::*bytes, std::uint64_t n) noexcept {
    add_to_slot(ops, 1);
    add_to_slot(bytes, n);
}

}  // namespace

std::size_t SecureArena::class_size(unsigned cls) noexcept { return kClasses.info[cls].size; }

unsigned SecureArena::class_of(std::size_t n) noexcept {
    if (n <= 128) return n == 0 ? 0 : static_cast<unsigned>((n + 15) / 16 - 1);
    unsigned b = 63u - static_cast<unsigned>(__builtin_clzll(n - 1));  // 2^b < n <= 2^(b+1)
    std::size_t above = n - (std::size_t{1} << b);
    unsigned idx = static_cast<unsigned>((above + (std::size_t{1} << (b - 2)) - 1) >> (b - 2)) - 1;
    return 8 + (b - 7) * 4 + idx;
}

// ---- set-up --------------------------------------------------------------------------------

int SecureArena::init(const ArenaOptions &opts, const unsigned *pool_actions, unsigned npools,
                      StatsPage *stats, ArenaReporter reporter) noexcept {
    if (npools == 0 || npools > kMaxPools) return EINVAL;
    opts_ = opts;
    stats_ = stats;
    reporter_ = reporter;
    page_ = memlock_page_size();
    std::size_t pool_bytes = std::size_t{1} << 20;
    while (pool_bytes < opts.pool_bytes) pool_bytes <<= 1;
    pool_shift_ = static_cast<unsigned>(__builtin_ctzll(pool_bytes));
    std::size_t total = pool_bytes * npools;

    // Side regions: page table and granule states (committed now, touched as used), the
    // pool records, and per pool and class a stack of freed blocks (committed as it grows).
    std::size_t meta_bytes = round_up(total / page_ * sizeof(PageMeta), page_);
    std::size_t state_bytes = round_up(total / 16, page_);
    std::size_t pools_bytes = round_up(sizeof(Pool) * npools, page_);
    std::size_t stack_bytes = 0;
    for (const ClassInfo &ci : kClasses.info) stack_bytes += round_up(pool_bytes / ci.size * sizeof(void *), page_);
    void *mem = nullptr, *meta = nullptr, *state = nullptr, *pools = nullptr, *stacks = nullptr;
    int rc = memlock_reserve(total, &mem);
    if (!rc) rc = memlock_reserve(meta_bytes, &meta);
    if (!rc) rc = memlock_commit(meta, meta_bytes);
    if (!rc) rc = memlock_reserve(state_bytes, &state);
    if (!rc) rc = memlock_commit(state, state_bytes);
    if (!rc) rc = memlock_reserve(pools_bytes, &pools);
    if (!rc) rc = memlock_commit(pools, pools_bytes);
    if (!rc) rc = memlock_reserve(stack_bytes * npools, &stacks);
    if (rc) {
        if (mem) memlock_release(mem, total);
        if (meta) memlock_release(meta, meta_bytes);
        if (state) memlock_release(state, state_bytes);
        if (pools) memlock_release(pools, pools_bytes);
        return rc;
    }
    // The side regions hold no secrets, but nothing of use in a core dump either: keep
    // them (and their untouched reservations) out, so dumps stay small.
    memlock_dontdump(meta, meta_bytes);
    memlock_dontdump(state, state_bytes);
    memlock_dontdump(pools, pools_bytes);
    memlock_dontdump(stacks, stack_bytes * npools);
    base_ = reinterpret_cast<std::uintptr_t>(mem);
    meta_ = static_cast<PageMeta *>(meta);
    state_ = static_cast<std::uint8_t *>(state);
    pools_ = static_cast<Pool *>(pools);
    npools_ = npools;
    auto *stack_at = static_cast<unsigned char *>(stacks);
    for (unsigned i = 0; i < npools; ++i) {
        Pool *p = new (&pools_[i]) Pool();
        pthread_mutex_init(&p->lock, nullptr);
        p->actions = pool_actions[i];
        p->start = p->frontier = p->committed = base_ + i * pool_bytes;
        p->end = p->start + pool_bytes;
        for (unsigned c = 0; c < kNumClasses; ++c) {
            p->central[c].stack = reinterpret_cast<void **>(stack_at);
            stack_at += round_up(pool_bytes / kClasses.info[c].size * sizeof(void *), page_);
        }
        // Dontdump is a property of the whole pool, set before any block exists.
        if ((p->actions & kActionDontdump) &&
            (rc = memlock_dontdump(reinterpret_cast<void *>(p->start), pool_bytes))) {
            memlock_release(mem, total);
            memlock_release(meta, meta_bytes);
            memlock_release(state, state_bytes);
            memlock_release(pools, pools_bytes);
            memlock_release(stacks, stack_bytes * npools);
            base_ = 0;
            meta_ = nullptr;
            state_ = nullptr;
            pools_ = nullptr;
            npools_ = 0;
            return rc;
        }
    }
    if (stats_) {
        stats_->reserved_bytes.store(total);
        stats_->arena_start = base_;
        stats_->max_locked = opts.max_locked;
        stats_->on_lock_failure = static_cast<std::uint32_t>(opts.on_lock_failure);
    }
    if (!g_key_arena && pthread_key_create(&g_exit_key, on_thread_exit) == 0) g_key_arena = this;
    span_ = total;  // publish: owns() answers from here on

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
        bool locked = false;
        if (commit_and_lock(p0, p0.start, bytes, locked)) {
            // Denied by the lock policy: later allocations try again, one slab at a time.
            if (reporter_) reporter_(LogLevel::warn, "policy.prealloc: cannot lock the preallocated memory up front", "denied by policy");
            return 0;
        }
        for (std::size_t i = 0; i < bytes / page_; ++i) meta_[(p0.start - base_) / page_ + i].locked = locked;
        p0.committed = p0.start + bytes;
        if (stats_) stats_->committed_bytes.fetch_add(bytes);
    }
    return 0;
}

// ---- growing a pool --------------------------------------------------------------------------

// Commits [from, from+bytes) and locks it as the pool's actions and the lock policy say.
// pre: pool.lock held; page-aligned. Returns 0, or ENOMEM when the memory cannot be
// committed or the policy denies it. `locked` tells whether the memory is mlocked.
int SecureArena::commit_and_lock(Pool &pool, std::uintptr_t from, std::size_t bytes, bool &locked) noexcept {
    locked = false;
    void *start = reinterpret_cast<void *>(from);
    if (memlock_commit(start, bytes)) return ENOMEM;
    if (!(pool.actions & kActionLock)) return 0;
    pthread_mutex_lock(&misc_lock_);
    bool over_budget = locked_total_ + bytes > opts_.max_locked;
    // Locked as touched: a large block that is mostly unused costs only what is used.
    int err = over_budget ? ENOMEM : memlock_lock_onfault(start, bytes);
    if (!err) {
        locked_total_ += bytes;
        if (stats_) stats_->locked_bytes.fetch_add(bytes);
    }
    pthread_mutex_unlock(&misc_lock_);
    locked = err == 0;
    if (!err) return 0;
    if (stats_) stats_->lock_failures.fetch_add(1);
    const char *why = over_budget ? "policy.max_locked reached" : memlock_strerror(err);
    switch (opts_.on_lock_failure) {
    case LockFailurePolicy::abort:
        fatal("cannot lock arena memory (policy on_lock_failure=abort)", why);
    case LockFailurePolicy::deny:
        if (!warned_lock_failure_.exchange(true) && reporter_)
            reporter_(LogLevel::warn, "cannot lock arena memory (policy deny: matching allocations fail with ENOMEM)", why);
        return ENOMEM;
    case LockFailurePolicy::fallback:
        if (!warned_lock_failure_.exchange(true) && reporter_)
            reporter_(LogLevel::warn,
                      "cannot lock arena memory (policy fallback: matching allocations are served "
                      "unlocked, still out of core dumps and wiped)", why);
        if (stats_) {
            stats_->fallbacks.fetch_add(1);
            stats_->unlocked_bytes.fetch_add(bytes);
        }
        break;
    }
    return 0;
}

// Carves `bytes` (a multiple of the page size) off the pool's frontier. Memory committed
// ahead (prealloc) is used as it is; the rest is committed and locked now. pre: pool.lock
// held. nullptr with errno ENOMEM: pool full, or the lock policy denied.
unsigned char *SecureArena::carve(Pool &pool, std::size_t bytes) noexcept {
    if (pool.end - pool.frontier < bytes) {
        if (!warned_full_.exchange(true) && reporter_)
            reporter_(LogLevel::error, "arena address space exhausted (matching allocations fail with ENOMEM)", "raise policy.max_arena");
        if (stats_) stats_->denied.fetch_add(1);
        errno = ENOMEM;
        return nullptr;
    }
    std::uintptr_t from = pool.frontier, to = from + bytes;
    if (to > pool.committed) {
        std::uintptr_t fresh = from > pool.committed ? from : pool.committed;
        bool locked = false;
        if (commit_and_lock(pool, fresh, to - fresh, locked)) {
            if (stats_) stats_->denied.fetch_add(1);
            errno = ENOMEM;
            return nullptr;
        }
        for (std::uintptr_t a = fresh; a < to; a += page_) meta_[(a - base_) / page_].locked = locked;
        pool.committed = to;
        if (stats_) stats_->committed_bytes.fetch_add(to - fresh);
    }
    // Memory handed back to the frontier earlier may carry old block states.
    if (from < pool.committed) std::memset(state_ + ((from - base_) >> 4), 0, (std::min(to, pool.committed) - from) >> 4);
    pool.frontier = to;
    return reinterpret_cast<unsigned char *>(from);
}

void SecureArena::note_peak() noexcept {
    std::uint64_t out = stats_->out_bytes.load(std::memory_order_relaxed);
    std::uint64_t peak = stats_->peak_bytes.load(std::memory_order_relaxed);
    while (out > peak && !stats_->peak_bytes.compare_exchange_weak(peak, out)) {}
}

// ---- small blocks --------------------------------------------------------------------------

// Takes up to `want` free blocks of class `cls` into out[]: freed ones first, then new ones
// from the newest slab, then a new slab. pre: pool.lock held. Returns how many.
unsigned SecureArena::refill(Pool &pool, unsigned cls, void **out, unsigned want) noexcept {
    const ClassInfo &ci = kClasses.info[cls];
    Pool::Central &c = pool.central[cls];
    unsigned got = 0;
    while (got < want && c.count) out[got++] = c.stack[--c.count];
    while (got < want) {
        if (c.bump == c.bump_end) {
            std::size_t blocks = ci.slab_bytes / ci.size;
            std::size_t need = round_up((c.carved + blocks) * sizeof(void *), page_);
            if (need > c.capacity * sizeof(void *)) {
                if (memlock_commit(c.stack, need)) {
                    errno = ENOMEM;
                    break;
                }
                c.capacity = need / sizeof(void *);
            }
            unsigned char *slab = carve(pool, ci.slab_bytes);
            if (!slab) break;
            std::size_t head = (reinterpret_cast<std::uintptr_t>(slab) - base_) / page_;
            for (std::size_t i = 0; i < ci.slab_bytes / page_; ++i) {
                PageMeta &m = meta_[head + i];
                m.head = static_cast<std::uint32_t>(head);
                m.kind = kSlab;
                m.cls = static_cast<std::uint16_t>(cls);
            }
            meta_[head].npages = static_cast<std::uint32_t>(ci.slab_bytes / page_);
            c.carved += blocks;
            c.bump = reinterpret_cast<std::uintptr_t>(slab);
            c.bump_end = c.bump + blocks * ci.size;
        }
        out[got++] = reinterpret_cast<void *>(c.bump);
        c.bump += ci.size;
    }
    if (stats_ && got) {
        stats_->out_bytes.fetch_add(std::uint64_t{got} * ci.size, std::memory_order_relaxed);
        note_peak();
    }
    return got;
}

// Returns n blocks of class `cls` to the pool. pre: pool.lock held.
void SecureArena::flush(Pool &pool, unsigned cls, void *const *blocks, unsigned n) noexcept {
    Pool::Central &c = pool.central[cls];
    for (unsigned i = 0; i < n; ++i) c.stack[c.count++] = blocks[i];
    if (stats_) stats_->out_bytes.fetch_sub(std::uint64_t{n} * kClasses.info[cls].size, std::memory_order_relaxed);
}

// The calling thread's cache for `pool`, made on first use. nullptr: the thread cannot
// cache (exiting, or registered with another arena) or no memory for a cache.
SecureArena::PoolCache *SecureArena::cache_for(unsigned pool) noexcept {
    if (!thread_ready(this, stats_)) return nullptr;
    ThreadState &ts = t_state;
    if (ts.caches[pool]) return ts.caches[pool];
    PoolCache *pc = nullptr;
    {
        Guard g(misc_lock_);
        if ((pc = spare_caches_)) spare_caches_ = pc->next_spare;
    }
    if (!pc) {
        void *mem = nullptr;
        std::size_t bytes = round_up(sizeof(PoolCache), page_);
        if (memlock_reserve(bytes, &mem) || memlock_commit(mem, bytes)) return nullptr;
        memlock_dontdump(mem, bytes);
        pc = static_cast<PoolCache *>(mem);
    }
    pc->next_spare = nullptr;
    return ts.caches[pool] = pc;
}

void *SecureArena::alloc_small_slow(unsigned pool_index, unsigned cls) noexcept {
    Pool &pool = pools_[pool_index];
    void *b = nullptr;
    if (PoolCache *pc = cache_for(pool_index)) {
        PoolCache::Bin &bin = pc->bins[cls];
        unsigned want = kClasses.info[cls].cache_max / 2 ? kClasses.info[cls].cache_max / 2 : 1;
        Guard g(pool.lock);
        bin.count = refill(pool, cls, bin.blocks, want);
        if (!bin.count) return nullptr;
        b = bin.blocks[--bin.count];
    } else {
        Guard g(pool.lock);
        if (!refill(pool, cls, &b, 1)) return nullptr;
    }
    return b;
}

void *SecureArena::alloc_small(unsigned pool_index, unsigned cls) noexcept {
    ThreadState &ts = t_state;
    PoolCache *pc;
    void *b;
    if (__builtin_expect(ts.arena == this && !ts.dead && (pc = ts.caches[pool_index]) &&
                             pc->bins[cls].count,
                         1)) {
        PoolCache::Bin &bin = pc->bins[cls];
        b = bin.blocks[--bin.count];
    } else if (!(b = alloc_small_slow(pool_index, cls))) {
        return nullptr;
    }
    state_of(b) = kLive;
    count(&ThreadCounters::allocs, &ThreadCounters::alloc_bytes, kClasses.info[cls].size);
    return b;
}

// ---- large blocks (page runs) --------------------------------------------------------------

// Free runs form a doubly linked list through the page table (never through the memory,
// which stays zero). Only a free run's first and last pages are marked: the first for the
// list, the last so that a run freed just after it can find it and merge.
void SecureArena::free_run_insert(Pool &pool, std::size_t head, std::size_t npages) noexcept {
    PageMeta &h = meta_[head], &tail = meta_[head + npages - 1];
    tail.head = h.head = static_cast<std::uint32_t>(head);
    tail.kind = h.kind = kFreeRun;
    tail.cls = h.cls = kLargeClass;
    h.npages = static_cast<std::uint32_t>(npages);
    h.prev_free = 0;
    h.next_free = pool.free_runs;
    if (pool.free_runs) meta_[pool.free_runs - 1].prev_free = static_cast<std::uint32_t>(head + 1);
    pool.free_runs = static_cast<std::uint32_t>(head + 1);
}

void SecureArena::free_run_remove(Pool &pool, std::size_t head) noexcept {
    PageMeta &h = meta_[head];
    if (h.prev_free) meta_[h.prev_free - 1].next_free = h.next_free;
    else pool.free_runs = h.next_free;
    if (h.next_free) meta_[h.next_free - 1].prev_free = h.prev_free;
    h.next_free = h.prev_free = 0;
}

// Marks pages [head, head+npages) as one live run. pre: pool.lock held.
void SecureArena::mark_run(std::size_t head, std::size_t first, std::size_t npages) noexcept {
    for (std::size_t i = first; i < first + npages; ++i) {
        PageMeta &m = meta_[i];
        m.head = static_cast<std::uint32_t>(head);
        m.kind = kRun;
        m.cls = kLargeClass;
    }
}

void *SecureArena::alloc_large(unsigned pool_index, std::size_t n, std::size_t align) noexcept {
    Pool &pool = pools_[pool_index];
    if (n > pool.end - pool.start || align > pool.end - pool.start) {
        if (!warned_full_.exchange(true) && reporter_)
            reporter_(LogLevel::warn, "a matching allocation is larger than the arena (it fails with ENOMEM)",
                      "raise policy.max_arena");
        if (stats_) stats_->denied.fetch_add(1);
        errno = ENOMEM;
        return nullptr;
    }
    std::size_t bytes = round_up(n ? n : 1, page_);
    std::size_t want = bytes + (align > page_ ? align - page_ : 0);
    std::uintptr_t run = 0, run_end = 0, at = 0;
    {
        Guard g(pool.lock);
        // First fit among freed runs.
        for (std::uint32_t r = pool.free_runs; r; r = meta_[r - 1].next_free) {
            PageMeta &m = meta_[r - 1];
            if (std::size_t{m.npages} * page_ >= want) {
                run = base_ + std::size_t{r - 1} * page_;
                run_end = run + std::size_t{m.npages} * page_;
                free_run_remove(pool, r - 1);
                break;
            }
        }
        if (!run) {
            unsigned char *fresh = carve(pool, want);
            if (!fresh) return nullptr;
            run = reinterpret_cast<std::uintptr_t>(fresh);
            run_end = run + want;
        }
        // Keep the aligned part asked for; the pages around it go back as free runs.
        at = align > page_ ? (run + align - 1) & ~(align - 1) : run;
        if (at > run) free_run_insert(pool, (run - base_) / page_, (at - run) / page_);
        if (run_end > at + bytes) free_run_insert(pool, (at + bytes - base_) / page_, (run_end - at - bytes) / page_);
        std::size_t head = (at - base_) / page_, np = bytes / page_;
        mark_run(head, head, np);
        meta_[head].npages = static_cast<std::uint32_t>(np);
        if (stats_) {
            stats_->out_bytes.fetch_add(bytes, std::memory_order_relaxed);
            note_peak();
        }
    }
    void *p = reinterpret_cast<void *>(at);
    state_of(p) = kLive;
    thread_ready(this, stats_);  // registers the thread (an exiting one counts in the shared slot)
    if (t_state.arena == this) count(&ThreadCounters::allocs, &ThreadCounters::alloc_bytes, bytes);
    return p;
}

// Wipes a page run. A locked page that is not resident was never touched (locked pages are
// never swapped out), so it holds nothing: only resident pages are written, and a large,
// mostly unused block is not paged in just to be zeroed. Unlocked pages are always wiped.
void SecureArena::wipe_run(void *p, std::size_t bytes) const noexcept {
    auto *at = static_cast<unsigned char *>(p);
    std::size_t first = (reinterpret_cast<std::uintptr_t>(p) - base_) / page_;
    constexpr std::size_t kChunkPages = 1024;
    unsigned char resident[kChunkPages];
    for (std::size_t done = 0; done < bytes; done += kChunkPages * page_) {
        std::size_t chunk = std::min(bytes - done, kChunkPages * page_);
        if (memlock_resident(at + done, chunk, resident)) {
            memlock_wipe(at + done, chunk);
            continue;
        }
        for (std::size_t i = 0; i < chunk / page_; ++i)
            if ((resident[i] & 1) || !meta_[first + done / page_ + i].locked)
                memlock_wipe(at + done + i * page_, page_);
    }
    clear_vector_registers();
}

void SecureArena::free_large(Pool &pool, PageMeta &head, void *p) noexcept {
    std::size_t bytes = std::size_t{head.npages} * page_;
    if (pool.actions & kActionWipe) wipe_run(p, bytes);
    state_of(p) = kFreed;
    {
        Guard g(pool.lock);
        std::size_t first = static_cast<std::size_t>(&head - meta_), np = head.npages;
        std::size_t pool_first = (pool.start - base_) / page_, frontier = (pool.frontier - base_) / page_;
        // Merge with the free runs on either side, so that freed memory is one run again.
        std::size_t after = first + np;
        if (after < frontier && meta_[after].kind == kFreeRun && meta_[after].head == after) {
            np += meta_[after].npages;
            free_run_remove(pool, after);
        }
        if (first > pool_first && meta_[first - 1].kind == kFreeRun) {
            std::size_t before = meta_[first - 1].head;
            np += meta_[before].npages;
            free_run_remove(pool, before);
            first = before;
        }
        if (first + np == frontier) {
            // The run ends at the frontier: give the pages back to it (they stay committed
            // and locked, and are carved again without a system call).
            meta_[first].kind = kUnused;
            pool.frontier = base_ + first * page_;
        } else {
            free_run_insert(pool, first, np);
        }
        if (stats_) stats_->out_bytes.fetch_sub(bytes, std::memory_order_relaxed);
    }
    thread_ready(this, stats_);
    if (t_state.arena == this) count(&ThreadCounters::frees, &ThreadCounters::free_bytes, bytes);
}

bool SecureArena::grow_in_place(void *p, std::size_t n) noexcept {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    std::size_t head = off / page_;
    PageMeta &m = meta_[head];
    if (m.kind != kRun || m.head != head || state_of(p) != kLive || n > span_) return false;
    std::size_t need = round_up(n, page_) / page_, have = m.npages;
    if (need <= have) return true;
    std::size_t extra = need - have, next = head + have;
    Pool &pool = pools_[off >> pool_shift_];
    {
        Guard g(pool.lock);
        std::size_t frontier = (pool.frontier - base_) / page_;
        if (next == frontier) {
            if (!carve(pool, extra * page_)) return false;
        } else if (next < frontier && meta_[next].kind == kFreeRun && meta_[next].head == next &&
                   meta_[next].npages >= extra) {
            std::size_t rest = meta_[next].npages - extra;
            free_run_remove(pool, next);
            if (rest) free_run_insert(pool, next + extra, rest);
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
    if (t_state.arena == this) add_to_slot(&ThreadCounters::alloc_bytes, extra * page_);
    return true;
}

// ---- the public operations ---------------------------------------------------------------

void *SecureArena::alloc(unsigned pool, std::size_t n, std::size_t align) noexcept {
    if (align < 16) align = 16;
    if (n <= kMaxSmall && align <= page_) {
        unsigned cls = class_of(n < align ? align : n);
        // Every block of a class whose size is a multiple of `align` is aligned (slabs are
        // page-aligned); power-of-two classes always qualify.
        while (kClasses.info[cls].size % align) ++cls;
        return alloc_small(pool, cls);
    }
    return alloc_large(pool, n, align);
}

void SecureArena::bad_pointer(const void *p, const char *what) const noexcept {
    fatal(what, "not a live block of the secure arena", p);
}

void SecureArena::free(void *p) noexcept {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    PageMeta &m = meta_[off / page_];
    unsigned pool_index = static_cast<unsigned>(off >> pool_shift_);
    Pool &pool = pools_[pool_index];
    std::uint8_t &state = state_[off >> 4];
    if (__builtin_expect(m.kind == kSlab && state == kLive, 1)) {
        const ClassInfo &ci = kClasses.info[m.cls];
        std::uintptr_t in_slab = off - std::uintptr_t{m.head} * page_;
        if (((in_slab * ci.magic) >> 40) * ci.size != in_slab) bad_pointer(p, "free(): invalid pointer");
        if (pool.actions & kActionWipe) wipe_block(p, ci.size);
        state = kFreed;
        ThreadState &ts = t_state;
        PoolCache *pc = ts.arena == this && !ts.dead ? ts.caches[pool_index] : nullptr;
        if (__builtin_expect(!pc, 0)) pc = cache_for(pool_index);  // registers the thread
        if (__builtin_expect(pc != nullptr, 1)) {
            PoolCache::Bin &bin = pc->bins[m.cls];
            if (__builtin_expect(bin.count == ci.cache_max, 0)) {
                unsigned keep = ci.cache_max / 2;
                int saved = errno;
                Guard g(pool.lock);
                flush(pool, m.cls, bin.blocks + keep, bin.count - keep);
                bin.count = keep;
                errno = saved;
            }
            bin.blocks[bin.count++] = p;
        } else {
            int saved = errno;
            Guard g(pool.lock);
            flush(pool, m.cls, &p, 1);
            errno = saved;
        }
        if (ts.arena == this) count(&ThreadCounters::frees, &ThreadCounters::free_bytes, ci.size);
        return;
    }
    if (state == kFreed)
        fatal("free(): double free", "block of the secure arena freed twice", p);
    if (m.kind == kRun && state == kLive && m.head == off / page_ && off % page_ == 0) {
        int saved = errno;
        free_large(pool, m, p);
        errno = saved;
        return;
    }
    bad_pointer(p, "free(): invalid pointer");
}

std::size_t SecureArena::usable_size(const void *p) const noexcept {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    const PageMeta &m = meta_[off / page_];
    if (state_[off >> 4] == kLive) {
        if (m.kind == kSlab) return kClasses.info[m.cls].size;
        if (m.kind == kRun && m.head == off / page_) return std::size_t{m.npages} * page_;
    }
    bad_pointer(p, "malloc_usable_size(): invalid pointer");
}

bool SecureArena::wipes(const void *p) const noexcept {
    return pools_[pool_of(p)].actions & kActionWipe;
}

// ---- fork and thread exit ------------------------------------------------------------------

// Lock order: a pool's lock, then misc_lock_ (carve -> commit_and_lock holds the one and takes
// the other). fork takes them in that order too.
void SecureArena::prefork() noexcept {
    for (unsigned i = 0; i < npools_; ++i) pthread_mutex_lock(&pools_[i].lock);
    pthread_mutex_lock(&misc_lock_);
}

void SecureArena::postfork_parent() noexcept {
    pthread_mutex_unlock(&misc_lock_);
    for (unsigned i = npools_; i-- > 0;) pthread_mutex_unlock(&pools_[i].lock);
}

void SecureArena::postfork_child_locks() noexcept {
    pthread_mutex_init(&misc_lock_, nullptr);
    for (unsigned i = 0; i < npools_; ++i) pthread_mutex_init(&pools_[i].lock, nullptr);
}

void SecureArena::postfork_child() noexcept {
    // mlock is not inherited: lock again every run of pages that was locked in the parent.
    int failed = 0;
    for (unsigned i = 0; i < npools_; ++i) {
        Pool &pool = pools_[i];
        std::size_t first = (pool.start - base_) / page_, last = (pool.committed - base_) / page_;
        std::size_t run = first;
        for (std::size_t pg = first; pg <= last; ++pg) {
            if (pg < last && meta_[pg].locked) continue;
            if (pg > run) {
                int rc = memlock_lock_onfault(reinterpret_cast<void *>(base_ + run * page_), (pg - run) * page_);
                if (rc) {
                    failed = rc;
                    // Not locked in this process: such pages may be swapped, so they are
                    // always wiped in full (wipe_run skips only locked, non-resident pages).
                    for (std::size_t q = run; q < pg; ++q) meta_[q].locked = 0;
                }
            }
            run = pg + 1;
        }
    }
    if (failed) {
        if (stats_) stats_->lock_failures.fetch_add(1);
        if (opts_.on_lock_failure == LockFailurePolicy::abort)
            fatal("cannot lock arena memory after fork (policy on_lock_failure=abort)", memlock_strerror(failed));
        if (reporter_)
            reporter_(LogLevel::warn, "cannot lock arena memory again after fork; it stays wiped and out of core dumps",
                      memlock_strerror(failed));
    }
    // The forking thread is the only one left, with a new tid and a new stats page.
    ThreadState &ts = t_state;
    if (ts.arena == this && stats_ && !ts.dead) {
        ts.slot = stats_claim_slot(stats_, current_tid());
        ts.slot_shared = ts.slot == &stats_->shared;
    }
}

void SecureArena::thread_exit() noexcept {
    ThreadState &ts = t_state;
    if (ts.arena != this) return;
    for (unsigned p = 0; p < npools_; ++p) {
        PoolCache *pc = ts.caches[p];
        if (!pc) continue;
        {
            Guard g(pools_[p].lock);
            for (unsigned c = 0; c < kNumClasses; ++c) {
                flush(pools_[p], c, pc->bins[c].blocks, pc->bins[c].count);
                pc->bins[c].count = 0;
            }
        }
        Guard g(misc_lock_);
        pc->next_spare = spare_caches_;
        spare_caches_ = pc;
        ts.caches[p] = nullptr;
    }
    if (stats_ && ts.slot) stats_release_slot(stats_, ts.slot);
    // What the thread still frees or allocates on its way out goes straight to the pools and
    // is counted in the shared slot.
    ts.slot = stats_ ? &stats_->shared : nullptr;
    ts.slot_shared = true;
    ts.dead = true;
}

}  // namespace mlshim
