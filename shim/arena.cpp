#include "arena.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "fatal.hpp"
#include "memlock.h"

namespace mlshim {

namespace {

constexpr std::uint16_t kLargeClass = 0xffff;

enum : std::uint8_t { kUnused = 0, kSlab = 1, kRun = 2, kFreeRun = 3 };

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
            cache = cache > 64 ? 64 : cache < 2 ? 2 : cache;
            info[c] = ClassInfo{static_cast<std::uint32_t>(size), static_cast<std::uint32_t>(slab),
                                static_cast<std::uint32_t>(cache),
                                ((std::uint64_t{1} << 40) + size - 1) / size};
        }
    }
};

constexpr ClassTable kClasses;
static_assert(compute_class_size(kNumClasses - 1) == kMaxSmall, "class table ends at kMaxSmall");

// ---- thread caches -----------------------------------------------------------------------

struct Bin {
    void *head;
    std::uint32_t count;
    std::uint32_t pad;
};

struct ThreadCache {
    const SecureArena *arena;  // the arena these bins belong to (nullptr: not registered)
    ThreadCounters *slot;
    bool slot_shared;          // slot is the shared overflow slot: use atomic updates
    bool dead;                 // thread is exiting: bypass the cache
    Bin bins[kMaxPools][kNumClasses];
};

thread_local ThreadCache t_cache __attribute__((tls_model("initial-exec")));

pthread_key_t g_exit_key;
SecureArena *g_key_arena = nullptr;  // the arena whose caches the exit key flushes

void on_thread_exit(void *) { if (g_key_arena) g_key_arena->thread_exit(); }

int current_tid() noexcept { return static_cast<int>(::syscall(SYS_gettid)); }

inline void count(ThreadCache &tc, std::atomic<std::uint64_t> ThreadCounters::*ops,
                  std::atomic<std::uint64_t> ThreadCounters::*bytes, std::uint64_t n) noexcept {
    if (!tc.slot) return;
    if (tc.slot_shared) {
        (tc.slot->*ops).fetch_add(1, std::memory_order_relaxed);
        (tc.slot->*bytes).fetch_add(n, std::memory_order_relaxed);
    } else {
        ThreadCounters::bump(tc.slot->*ops, 1);
        ThreadCounters::bump(tc.slot->*bytes, n);
    }
}

inline void *&link_of(void *block) noexcept { return *static_cast<void **>(block); }
inline std::uint64_t &mark_of(void *block) noexcept {
    return *reinterpret_cast<std::uint64_t *>(static_cast<char *>(block) + sizeof(void *));
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

std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }

}  // namespace

// ---- per-page and per-pool state ---------------------------------------------------------

struct SecureArena::PageMeta {
    std::uint32_t head;    // page index of the slab or run this page belongs to
    std::uint32_t npages;  // at the head: pages in the slab or run
    std::uint16_t cls;     // size class, or kLargeClass
    std::uint8_t kind;     // kUnused, kSlab, kRun, kFreeRun
    std::uint8_t locked;   // the page was mlocked
};

struct SecureArena::Pool {
    pthread_mutex_t lock;
    unsigned actions;
    std::uintptr_t start, end;   // the pool's address range
    std::uintptr_t frontier;     // first byte never carved
    std::uintptr_t committed;    // first byte not committed (prealloc commits ahead)
    void *free_runs;             // freed page runs, linked through their first word
    struct Central {
        void *head;              // freed blocks, linked through their first word
        std::uintptr_t bump, bump_end;  // the uncarved rest of the newest slab
    } central[kNumClasses];
};

SecureArena::Pool *SecureArena::pool_at(unsigned i) const noexcept { return &pools_[i]; }

std::size_t SecureArena::class_size(unsigned cls) noexcept { return kClasses.info[cls].size; }

unsigned SecureArena::class_of(std::size_t n) noexcept {
    if (n <= 128) return n == 0 ? 0 : static_cast<unsigned>((n + 15) / 16 - 1);
    unsigned b = 63u - static_cast<unsigned>(__builtin_clzll(n - 1));  // 2^b < n <= 2^(b+1)
    std::size_t above = n - (std::size_t{1} << b);
    unsigned idx = static_cast<unsigned>((above + (std::size_t{1} << (b - 2)) - 1) >> (b - 2)) - 1;
    return 8 + (b - 7) * 4 + idx;
}

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

    void *mem = nullptr;
    int rc = memlock_reserve(total, &mem);
    if (rc) return rc;
    std::size_t meta_bytes = round_up(total / page_ * sizeof(PageMeta), page_);
    void *meta = nullptr;
    std::size_t pools_bytes = round_up(sizeof(Pool) * npools, page_);
    void *pools = nullptr;
    if ((rc = memlock_reserve(meta_bytes, &meta)) || (rc = memlock_commit(meta, meta_bytes)) ||
        (rc = memlock_reserve(pools_bytes, &pools)) || (rc = memlock_commit(pools, pools_bytes))) {
        memlock_release(mem, total);
        if (meta) memlock_release(meta, meta_bytes);
        return rc;
    }
    base_ = reinterpret_cast<std::uintptr_t>(mem);
    meta_ = static_cast<PageMeta *>(meta);
    pools_ = static_cast<Pool *>(pools);
    npools_ = npools;
    for (unsigned i = 0; i < npools; ++i) {
        Pool *p = new (&pools_[i]) Pool();
        pthread_mutex_init(&p->lock, nullptr);
        p->actions = pool_actions[i];
        p->start = p->frontier = p->committed = base_ + i * pool_bytes;
        p->end = p->start + pool_bytes;
        // Dontdump is a property of the whole pool, set before any block exists.
        if ((p->actions & kActionDontdump) && (rc = memlock_dontdump(reinterpret_cast<void *>(p->start), pool_bytes))) {
            memlock_release(mem, total);
            return rc;
        }
    }
    std::uint64_t seed = reinterpret_cast<std::uintptr_t>(this) ^ base_;
    seed ^= static_cast<std::uint64_t>(::getpid()) << 32;
    seed ^= static_cast<std::uint64_t>(__builtin_ia32_rdtsc());
    canary_ = seed * 0x9e3779b97f4a7c15ull | 1;
    if (stats_) {
        stats_->reserved_bytes.store(total);
        stats_->max_locked = opts.max_locked;
        stats_->on_lock_failure = static_cast<std::uint32_t>(opts.on_lock_failure);
    }
    if (!g_key_arena && pthread_key_create(&g_exit_key, on_thread_exit) == 0) g_key_arena = this;
    span_ = total;  // publish: owns() answers from here on

    if (opts.prealloc > 0) {
        // Commit and lock ahead (a daemon may drop the privilege to lock later).
        Pool &p0 = pools_[0];
        Guard g(p0.lock);
        std::size_t bytes = round_up(opts.prealloc, page_);
        if (bytes > p0.end - p0.start) return EINVAL;
        bool locked = false;
        if (commit_and_lock(p0, p0.start, bytes, locked)) {
            // Denied by the lock policy: later allocations try again, one slab at a time.
            if (reporter_) reporter_(LogLevel::warn, "policy.prealloc: cannot lock the preallocated arena", ENOMEM);
            return 0;
        }
        for (std::size_t i = 0; i < bytes / page_; ++i) meta_[(p0.start - base_) / page_ + i].locked = locked;
        p0.committed = p0.start + bytes;
    }
    return 0;
}

// Commits [from, from+bytes) and locks it as the pool's actions and the lock policy say.
// pre: pool.lock held; page-aligned. Returns 0, or ENOMEM when the memory cannot be
// committed or the policy denies it. `locked` tells whether the memory is mlocked.
int SecureArena::commit_and_lock(Pool &pool, std::uintptr_t from, std::size_t bytes, bool &locked) noexcept {
    locked = false;
    void *start = reinterpret_cast<void *>(from);
    if (memlock_commit(start, bytes)) return ENOMEM;
    if (!(pool.actions & kActionLock)) return 0;
    pthread_mutex_lock(&budget_lock_);
    int err = locked_total_ + bytes > opts_.max_locked ? ENOMEM : memlock_lock(start, bytes);
    if (!err) {
        locked_total_ += bytes;
        if (stats_) stats_->locked_bytes.fetch_add(bytes);
    }
    pthread_mutex_unlock(&budget_lock_);
    locked = err == 0;
    if (!err) return 0;
    if (stats_) stats_->lock_failures.fetch_add(1);
    switch (opts_.on_lock_failure) {
    case LockFailurePolicy::abort:
        fatal("cannot lock arena memory (policy on_lock_failure=abort)", memlock_strerror(err));
    case LockFailurePolicy::deny:
        if (!warned_lock_failure_.exchange(true) && reporter_)
            reporter_(LogLevel::warn, "cannot lock arena memory; refusing matching allocations (policy deny)", err);
        return ENOMEM;
    case LockFailurePolicy::fallback:
        if (!warned_lock_failure_.exchange(true) && reporter_)
            reporter_(LogLevel::warn,
                      "cannot lock arena memory; serving matching allocations unlocked but "
                      "still excluded from core dumps and wiped (policy fallback)", err);
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
unsigned char *SecureArena::carve(Pool &pool, std::size_t bytes, bool &locked) noexcept {
    locked = false;
    if (pool.end - pool.frontier < bytes) {
        if (!warned_full_.exchange(true) && reporter_)
            reporter_(LogLevel::error, "the arena's address space is exhausted (raise policy.max_arena)", ENOMEM);
        if (stats_) stats_->denied.fetch_add(1);
        errno = ENOMEM;
        return nullptr;
    }
    std::uintptr_t from = pool.frontier, to = from + bytes;
    std::size_t first_page = (from - base_) / page_;
    bool ahead_locked = from < pool.committed ? meta_[first_page].locked : true;
    bool fresh_locked = true;
    if (to > pool.committed) {
        std::uintptr_t fresh = from > pool.committed ? from : pool.committed;
        if (commit_and_lock(pool, fresh, to - fresh, fresh_locked)) {
            if (stats_) stats_->denied.fetch_add(1);
            errno = ENOMEM;
            return nullptr;
        }
        for (std::uintptr_t a = fresh; a < to; a += page_) meta_[(a - base_) / page_].locked = fresh_locked;
        pool.committed = to;
    }
    locked = (pool.actions & kActionLock) && ahead_locked && fresh_locked;
    for (std::size_t pg = first_page; pg < (to - base_) / page_; ++pg)
        meta_[pg].head = static_cast<std::uint32_t>(first_page);
    pool.frontier = to;
    if (stats_) {
        stats_->committed_bytes.fetch_add(bytes);
        stats_->out_bytes.fetch_add(bytes);
    }
    return reinterpret_cast<unsigned char *>(from);
}

// ---- small blocks --------------------------------------------------------------------------

bool SecureArena::refill(unsigned pool_index, unsigned cls) noexcept {
    Pool &pool = pools_[pool_index];
    const ClassInfo &ci = kClasses.info[cls];
    Bin &bin = t_cache.bins[pool_index][cls];
    unsigned want = ci.cache_max / 2 ? ci.cache_max / 2 : 1;
    Guard g(pool.lock);
    Pool::Central &c = pool.central[cls];
    unsigned got = 0;
    while (got < want && c.head) {
        void *b = c.head;
        c.head = link_of(b);
        link_of(b) = bin.head;
        bin.head = b;
        ++got;
    }
    while (got < want) {
        if (c.bump == c.bump_end) {
            bool locked;
            unsigned char *slab = carve(pool, ci.slab_bytes, locked);
            if (!slab) break;
            std::size_t head = (reinterpret_cast<std::uintptr_t>(slab) - base_) / page_;
            for (std::size_t i = 0; i < ci.slab_bytes / page_; ++i) {
                PageMeta &m = meta_[head + i];
                m.kind = kSlab;
                m.cls = static_cast<std::uint16_t>(cls);
            }
            meta_[head].npages = static_cast<std::uint32_t>(ci.slab_bytes / page_);
            if (stats_) stats_->out_bytes.fetch_sub(ci.slab_bytes);  // counted per block below
            c.bump = reinterpret_cast<std::uintptr_t>(slab);
            c.bump_end = c.bump + ci.slab_bytes / ci.size * ci.size;
        }
        // Fresh blocks are zero; give them the free-block marker like every cached block.
        void *b = reinterpret_cast<void *>(c.bump);
        c.bump += ci.size;
        mark_of(b) = canary_ ^ reinterpret_cast<std::uintptr_t>(b);
        link_of(b) = bin.head;
        bin.head = b;
        ++got;
    }
    bin.count += got;
    if (stats_ && got) {
        std::uint64_t out = stats_->out_bytes.fetch_add(std::uint64_t{got} * ci.size) + std::uint64_t{got} * ci.size;
        std::uint64_t peak = stats_->peak_bytes.load(std::memory_order_relaxed);
        while (out > peak && !stats_->peak_bytes.compare_exchange_weak(peak, out)) {}
    }
    return got > 0;
}

void SecureArena::flush(unsigned pool_index, unsigned cls, unsigned keep) noexcept {
    Pool &pool = pools_[pool_index];
    Bin &bin = t_cache.bins[pool_index][cls];
    if (bin.count <= keep) return;
    unsigned moved = 0;
    Guard g(pool.lock);
    Pool::Central &c = pool.central[cls];
    while (bin.count > keep) {
        void *b = bin.head;
        bin.head = link_of(b);
        link_of(b) = c.head;
        c.head = b;
        --bin.count;
        ++moved;
    }
    if (stats_) stats_->out_bytes.fetch_sub(std::uint64_t{moved} * kClasses.info[cls].size);
}

namespace {

// Registers the calling thread's cache with `arena`. False when the cache belongs to
// another arena (only in tests that build several) or the thread is exiting.
bool cache_ready(const SecureArena *arena, StatsPage *stats) noexcept {
    ThreadCache &tc = t_cache;
    if (tc.arena == arena) return !tc.dead;
    if (tc.arena) return false;
    tc.arena = arena;
    if (stats) {
        tc.slot = stats_claim_slot(stats, current_tid());
        tc.slot_shared = tc.slot == &stats->shared;
    }
    if (g_key_arena == arena) pthread_setspecific(g_exit_key, &tc);
    return true;
}

}  // namespace

void *SecureArena::alloc_small(unsigned pool_index, unsigned cls) noexcept {
    ThreadCache &tc = t_cache;
    void *b;
    if (__builtin_expect(cache_ready(this, stats_), 1)) {
        Bin &bin = tc.bins[pool_index][cls];
        if (__builtin_expect(!bin.head, 0) && !refill(pool_index, cls)) return nullptr;
        b = bin.head;
        bin.head = link_of(b);
        --bin.count;
    } else {
        // No cache: go through the central list (one block at a time).
        Pool &pool = pools_[pool_index];
        Bin saved = tc.bins[pool_index][cls];
        tc.bins[pool_index][cls] = Bin{nullptr, 0, 0};
        bool ok = refill(pool_index, cls);
        Bin got = tc.bins[pool_index][cls];
        tc.bins[pool_index][cls] = saved;
        if (!ok) return nullptr;
        b = got.head;
        if (void *rest = link_of(b)) {
            Guard g(pool.lock);
            void *last = rest;
            while (link_of(last)) last = link_of(last);
            link_of(last) = pool.central[cls].head;
            pool.central[cls].head = rest;
            if (stats_) stats_->out_bytes.fetch_sub((got.count - 1) * std::uint64_t{kClasses.info[cls].size});
        }
    }
    link_of(b) = nullptr;
    mark_of(b) = 0;
    count(tc, &ThreadCounters::allocs, &ThreadCounters::alloc_bytes, kClasses.info[cls].size);
    return b;
}

// ---- large blocks (page runs) --------------------------------------------------------------

void *SecureArena::alloc_large(unsigned pool_index, std::size_t n, std::size_t align) noexcept {
    Pool &pool = pools_[pool_index];
    if (n > pool.end - pool.start) {
        errno = ENOMEM;
        return nullptr;
    }
    std::size_t bytes = round_up(n ? n : 1, page_);
    std::size_t extra = align > page_ ? align - page_ : 0;
    std::size_t want = bytes + extra;
    unsigned char *run = nullptr;
    std::size_t run_bytes = 0;
    {
        Guard g(pool.lock);
        // First fit among freed runs.
        void **prev = &pool.free_runs;
        for (void *r = pool.free_runs; r; prev = &link_of(r), r = link_of(r)) {
            PageMeta &m = meta_[(reinterpret_cast<std::uintptr_t>(r) - base_) / page_];
            if (m.npages * page_ >= want) {
                *prev = link_of(r);
                link_of(r) = nullptr;
                mark_of(r) = 0;
                run = static_cast<unsigned char *>(r);
                run_bytes = m.npages * page_;
                if (stats_) stats_->out_bytes.fetch_add(run_bytes);
                break;
            }
        }
        if (!run) {
            bool locked;
            run = carve(pool, want, locked);
            if (!run) return nullptr;
            run_bytes = want;
        }
        // Trim to the aligned start and the size asked for; the rest goes back as free runs.
        std::uintptr_t at = (reinterpret_cast<std::uintptr_t>(run) + align - 1) & ~(align - 1);
        if (align <= page_) at = reinterpret_cast<std::uintptr_t>(run);
        std::uintptr_t run_end = reinterpret_cast<std::uintptr_t>(run) + run_bytes;
        auto give_back = [&](std::uintptr_t from, std::uintptr_t to) {
            if (from >= to) return;
            std::size_t head = (from - base_) / page_, np = (to - from) / page_;
            for (std::size_t i = 0; i < np; ++i) {
                PageMeta &m = meta_[head + i];
                m.head = static_cast<std::uint32_t>(head);
                m.kind = kFreeRun;
                m.cls = kLargeClass;
            }
            meta_[head].npages = static_cast<std::uint32_t>(np);
            void *r = reinterpret_cast<void *>(from);
            link_of(r) = pool.free_runs;
            mark_of(r) = canary_ ^ from;
            pool.free_runs = r;
            if (stats_) stats_->out_bytes.fetch_sub(to - from);
        };
        give_back(reinterpret_cast<std::uintptr_t>(run), at);
        give_back(at + bytes, run_end);
        std::size_t head = (at - base_) / page_, np = bytes / page_;
        for (std::size_t i = 0; i < np; ++i) {
            PageMeta &m = meta_[head + i];
            m.head = static_cast<std::uint32_t>(head);
            m.kind = kRun;
            m.cls = kLargeClass;
        }
        meta_[head].npages = static_cast<std::uint32_t>(np);
        run = reinterpret_cast<unsigned char *>(at);
        if (stats_) {
            std::uint64_t out = stats_->out_bytes.load();
            std::uint64_t peak = stats_->peak_bytes.load();
            while (out > peak && !stats_->peak_bytes.compare_exchange_weak(peak, out)) {}
        }
    }
    // A wiping pool's free runs are zero but for their link and marker words.
    link_of(run) = nullptr;
    mark_of(run) = 0;
    ThreadCache &tc = t_cache;
    if (cache_ready(this, stats_) || tc.arena == this)
        count(tc, &ThreadCounters::allocs, &ThreadCounters::alloc_bytes, bytes);
    return run;
}

void SecureArena::free_large(Pool &pool, PageMeta &head, void *p) noexcept {
    std::size_t bytes = std::size_t{head.npages} * page_;
    if (pool.actions & kActionWipe) memlock_wipe(p, bytes);
    {
        Guard g(pool.lock);
        std::size_t first = static_cast<std::size_t>(&head - meta_);
        for (std::size_t i = 0; i < head.npages; ++i) meta_[first + i].kind = kFreeRun;
        link_of(p) = pool.free_runs;
        mark_of(p) = canary_ ^ reinterpret_cast<std::uintptr_t>(p);
        pool.free_runs = p;
        if (stats_) stats_->out_bytes.fetch_sub(bytes);
    }
    ThreadCache &tc = t_cache;
    if (cache_ready(this, stats_) || tc.arena == this)
        count(tc, &ThreadCounters::frees, &ThreadCounters::free_bytes, bytes);
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
    int saved_errno = errno;
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    PageMeta &m = meta_[off / page_];
    Pool &pool = pools_[off >> pool_shift_];
    if (__builtin_expect(m.kind == kSlab, 1)) {
        const ClassInfo &ci = kClasses.info[m.cls];
        std::uintptr_t in_slab = off - std::uintptr_t{m.head} * page_;
        std::uint64_t idx = (in_slab * ci.magic) >> 40;
        if (idx * ci.size != in_slab) bad_pointer(p, "free(): invalid pointer");
        if (mark_of(p) == (canary_ ^ reinterpret_cast<std::uintptr_t>(p)))
            fatal("free(): double free", "block of the secure arena freed twice", p);
        if (pool.actions & kActionWipe) memlock_wipe(p, ci.size);
        mark_of(p) = canary_ ^ reinterpret_cast<std::uintptr_t>(p);
        ThreadCache &tc = t_cache;
        unsigned pool_index = static_cast<unsigned>(off >> pool_shift_);
        if (__builtin_expect(cache_ready(this, stats_), 1)) {
            Bin &bin = tc.bins[pool_index][m.cls];
            link_of(p) = bin.head;
            bin.head = p;
            if (++bin.count > ci.cache_max) flush(pool_index, m.cls, ci.cache_max / 2);
        } else {
            Guard g(pool.lock);
            link_of(p) = pool.central[m.cls].head;
            pool.central[m.cls].head = p;
            if (stats_) stats_->out_bytes.fetch_sub(ci.size);
        }
        if (tc.arena == this) count(tc, &ThreadCounters::frees, &ThreadCounters::free_bytes, ci.size);
    } else if (m.kind == kRun && m.head == off / page_ && (off % page_) == 0) {
        free_large(pool, m, p);
    } else if (m.kind == kFreeRun && m.head == off / page_ && (off % page_) == 0) {
        fatal("free(): double free", "block of the secure arena freed twice", p);
    } else {
        bad_pointer(p, "free(): invalid pointer");
    }
    errno = saved_errno;
}

std::size_t SecureArena::usable_size(const void *p) const noexcept {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(p) - base_;
    const PageMeta &m = meta_[off / page_];
    if (m.kind == kSlab) return kClasses.info[m.cls].size;
    if (m.kind == kRun && m.head == off / page_) return std::size_t{meta_[m.head].npages} * page_;
    bad_pointer(p, "malloc_usable_size(): invalid pointer");
}

bool SecureArena::wipes(const void *p) const noexcept {
    return pools_[pool_of(p)].actions & kActionWipe;
}

// ---- fork and thread exit ------------------------------------------------------------------

void SecureArena::prefork() noexcept {
    pthread_mutex_lock(&budget_lock_);
    for (unsigned i = 0; i < npools_; ++i) pthread_mutex_lock(&pools_[i].lock);
}

void SecureArena::postfork_parent() noexcept {
    for (unsigned i = npools_; i-- > 0;) pthread_mutex_unlock(&pools_[i].lock);
    pthread_mutex_unlock(&budget_lock_);
}

void SecureArena::postfork_child() noexcept {
    pthread_mutex_init(&budget_lock_, nullptr);
    for (unsigned i = 0; i < npools_; ++i) pthread_mutex_init(&pools_[i].lock, nullptr);
    // mlock is not inherited: lock again every page that was locked in the parent.
    int failed = 0;
    for (unsigned i = 0; i < npools_; ++i) {
        Pool &pool = pools_[i];
        std::size_t first = (pool.start - base_) / page_, last = (pool.committed - base_) / page_;
        std::size_t run = first;
        for (std::size_t pg = first; pg <= last; ++pg) {
            bool in = pg < last && meta_[pg].locked;
            if (in) continue;
            if (pg > run) {
                int rc = memlock_lock(reinterpret_cast<void *>(base_ + run * page_), (pg - run) * page_);
                if (rc) failed = rc;
            }
            run = pg + 1;
        }
    }
    if (failed) {
        if (stats_) stats_->lock_failures.fetch_add(1);
        if (opts_.on_lock_failure == LockFailurePolicy::abort)
            fatal("cannot lock arena memory after fork (policy on_lock_failure=abort)", memlock_strerror(failed));
        if (reporter_) reporter_(LogLevel::warn, "cannot lock arena memory after fork; it stays wiped and out of core dumps", failed);
    }
    // The forking thread is the only one left. Its slot (if any) now belongs to a new tid.
    ThreadCache &tc = t_cache;
    if (tc.arena == this && stats_) {
        tc.slot = stats_claim_slot(stats_, current_tid());
        tc.slot_shared = tc.slot == &stats_->shared;
    }
}

void SecureArena::thread_exit() noexcept {
    ThreadCache &tc = t_cache;
    if (tc.arena != this) return;
    for (unsigned p = 0; p < npools_; ++p)
        for (unsigned c = 0; c < kNumClasses; ++c) flush(p, c, 0);
    if (stats_ && tc.slot) stats_release_slot(stats_, tc.slot);
    // Whatever the thread still frees or allocates on its way out is counted in the
    // shared slot, and goes straight to the central lists.
    tc.slot = stats_ ? &stats_->shared : nullptr;
    tc.slot_shared = true;
    tc.dead = true;
}

}  // namespace mlshim
