// arena.hpp - SecureArena: the memory that matching allocations live in.
//
// What it promises
//   - One range of address space, split into up to kMaxPools pools, one per distinct action
//     set of the rules (lock / dontdump / wipe). Only what is used is mapped: at start-up one
//     region per pool (kMinRegion or more, or prealloc's size) at the bottom of a span chosen
//     for the growth cap far from where the kernel places other mappings; then whole regions
//     appended at fixed addresses (MAP_FIXED_NOREPLACE) as a pool needs them, with the side
//     tables growing alike (the free bits down and the states up from either side of the
//     pools' mapping, so that the three are one mapping for fork to copy). Each region is marked MADV_DONTDUMP when it is mapped, before any
//     block is handed out there (for pools with that action).
//   - A pool with the lock action locks its first region on fault at start-up and maps the
//     regions it grows by locked, up to its share of max_locked, counted against
//     RLIMIT_MEMLOCK then: by growing the last mapping in place (mremap) where it is locked
//     on fault, else with mmap MAP_LOCKED (populated as committed). After start-up the arena
//     never calls mlock, mlock2 or munlock (seccomp sandboxes may forbid them), except
//     without lock-on-fault (Linux < 4.4, qemu-user): then the first region's pages are
//     mlocked as they are committed.
//     Memory is committed in slabs of at least 64 KiB, never per allocation.
//   - Where the kernel offers transparent huge pages (THP "always" or "madvise", a huge page
//     dividing the region size), a pool that locks anonymous memory on fault asks for them
//     (MADV_HUGEPAGE on its regions, which are region-aligned, so huge-page-aligned), and
//     once it has committed more than half a huge page it commits whole huge pages, so that
//     each one faults in as one page: a fork child's relock then walks a page table entry per
//     huge page instead of one per 4 KiB page. The huge page it was filling with small pages
//     is collapsed into one then (MADV_COLLAPSE). Below half a huge page a pool commits as
//     without them (a small process stays small); past it, a pool's committed memory is at
//     most a huge page beyond what it would be otherwise.
//     Huge pages that free pages were given back from are marked MADV_NOHUGEPAGE and are
//     small pages from then on, so that no free page becomes resident again unseen.
//   - Arena pages hold nothing but arena blocks, and are never unlocked while the process
//     runs, so no lock is lost under a live secret. Free pages (runs, and slabs whose blocks
//     are all free, which any class can then use) beyond a slack go back to the kernel after
//     a delay (MADV_DONTNEED, or MADV_DONTNEED_LOCKED: they stay reserved, dontdump, locked).
//   - A block the arena cannot hold (past the growth cap, the space above it taken, or no
//     address space left under RLIMIT_AS) fails; under policy fallback the caller serves it
//     elsewhere (serves_overflow()).
//   - policy.backing "secretmem": each locking pool's share of max_locked is mapped at
//     start-up as a memfd_secret file (backing.hpp) instead of mlocked anonymous memory; a
//     fork child copies it into a file of its own before the program runs in it. Its free
//     pages cannot be given back (nor do they count toward the purge's slack).
//   - Blocks are wiped on free (pools with the wipe action), and the arena keeps all of its
//     bookkeeping (free lists, block states) outside the blocks: a freed block reads as zero,
//     and blocks of wiping pools come out zero-filled.
//   - owns(p) is one subtraction and one comparison; free and usable_size find a block's
//     size class through a per-page table in O(1), and its state (live, freed, never
//     handed out; a live block also its rule entry, for the per-rule counters) through a
//     byte per 16-byte granule.
//   - A double free, or a pointer into the arena that is not a live block, is fatal.
//   - Thread caches keep the common path free of locks and atomic read-modify-writes.
//
// It never calls malloc: it runs inside the interposed allocation functions.
#ifndef MEMLOCK_SHIM_ARENA_HPP
#define MEMLOCK_SHIM_ARENA_HPP

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config.hpp"
#include "stats.hpp"

// The entry points of the matched malloc+free pair (malloc, free, arena_malloc,
// SecureArena::free) each start a cache line, so that their speed does not move with the
// size of the code the linker places before them.
#define MLSHIM_HOT_ENTRY __attribute__((aligned(64)))

namespace mlshim {

constexpr unsigned kMaxPools = 8;

// What a fork child's handler locks again, planned in the parent before fork
// (SecureArena::plan_fork): the stretches [lo, hi) to lock on fault, in order. It holds when
// it was made valid and the arena has not grown since (growths: counted by the arena, after
// each growth is in place, so that a plan made while one was under way, by a signal handler
// that forks, does not hold).
constexpr unsigned kForkPlanStretches = 16;
struct ForkPlan {
    bool valid = false;
    unsigned n = 0;
    std::uint32_t growths = 0;   // the arena's growths so far
    std::uint32_t planned = 0;   // growths when the plan was made
    // The core's mlock2 provider when the plan was made: called through from here, the child
    // reads no page of the core's data.
    int (*mlock2)(const void *, std::size_t, unsigned) = nullptr;
    struct Stretch {
        std::uintptr_t lo, hi;
    } at[kForkPlanStretches] = {};
    bool holds() const noexcept {
        return __atomic_load_n(&valid, __ATOMIC_RELAXED) &&
               __atomic_load_n(&planned, __ATOMIC_RELAXED) == __atomic_load_n(&growths, __ATOMIC_RELAXED);
    }
};

// Size classes: 16..128 by 16, then 4 per doubling to 16 KiB, then 8 per doubling to 64 KiB
// (a block is wiped whole on free: the finer steps there keep the bytes wiped of a TLS record
// buffer, 16 KiB and a few hundred bytes, within 11% of those asked for).
constexpr unsigned kFineShift = 14;               // 8 classes per doubling from 2^kFineShift bytes
constexpr unsigned kFineFirst = 8 + 4 * (kFineShift - 7);  // the first class above 2^kFineShift
constexpr unsigned kNumClasses = kFineFirst + 8 * 2;
constexpr std::size_t kMaxSmall = 64 * 1024;      // larger blocks are page runs
constexpr std::size_t kMinSlab = 64 * 1024;
constexpr unsigned kMaxRegions = 16384;           // the reservation grows by up to this many regions
constexpr std::size_t kMinRegion = 2u << 20;      // regions are at least this large (a power of 2)
constexpr unsigned kGrowthFactor = 16;            // default growth cap: 16 x max_arena per pool

struct ArenaOptions {
    std::size_t pool_bytes = 1u << 30;  // max_arena: the growth cap is kGrowthFactor x this per pool
    std::size_t max_locked = 64u << 20;
    LockFailurePolicy on_lock_failure = LockFailurePolicy::fallback;
    std::size_t prealloc = 0;           // bytes committed (and locked) up front, in pool 0
    Backing backing = Backing::anonymous;  // what the locked range of each locking pool is
    std::size_t scrub_stack = 0;  // bytes of dead stack a free from a wiping pool scrubs (0: none)
    // Giving memory back: free pages beyond purge_slack go back to the kernel at the pool's
    // next operation off the thread cache once purge_delay_ns has passed since the last
    // purge, and at once beyond purge_slack + purge_burst (what an idle process keeps).
    std::size_t purge_slack = 2u << 20;
    std::size_t purge_burst = 2u << 20;
    std::uint64_t purge_delay_ns = 100'000'000;
    // Address space the arena may grow to, in all (0: kGrowthFactor x pool_bytes x pools).
    std::size_t max_reserve = 0;
};

// Something the arena wants an operator to know: "<what>: <why>". It may be called with a
// pool lock held, so it must not allocate from the arena.
using ArenaReporter = void (*)(LogLevel level, const char *what, const char *why);

class SecureArena {
public:
    // Chooses the arena's span, maps each pool's first region and prepares one pool per entry
    // of `pool_actions`.
    // Returns 0 or an errno value (the arena is unusable then).
    int init(const ArenaOptions &opts, const unsigned *pool_actions, unsigned npools,
             StatsPage *stats, ArenaReporter reporter) noexcept;

    bool owns(const void *p) const noexcept {
        return reinterpret_cast<std::uintptr_t>(p) - base_ < __atomic_load_n(&span_, __ATOMIC_RELAXED);
    }

    // A block of at least n bytes aligned to `align` (a power of two, >= 16) from pool
    // `pool`, counted for rule entry `rule` (< kStatsRules: stats_rule_index). nullptr with
    // errno = ENOMEM when the pool is full or the lock policy denies.
    void *alloc(unsigned pool, std::size_t n, std::size_t align = 16, unsigned rule = 0) noexcept;
    // malloc's fast path: alloc(pool, n, 16, rule) when the calling thread's cache holds a
    // block of n's class; nullptr otherwise (nothing changed: call alloc()). No lock, no call.
    void *alloc_cached(unsigned pool, std::size_t n, unsigned rule) noexcept;
    // malloc's common case: alloc_cached() for 1 <= n <= 128 in a thread that counts in a rule
    // row of its own; nullptr otherwise (nothing changed: call alloc() or alloc_cached()). No
    // lock, no call, no register saved.
    void *alloc_fast(unsigned pool, std::size_t n, unsigned rule) noexcept;
    // Under policy fallback a block the arena cannot hold (address space used up, larger than
    // the arena) goes to the next allocator: alloc returning nullptr means exactly that.
    bool serves_overflow() const noexcept { return opts_.on_lock_failure == LockFailurePolicy::fallback; }
    // Why it last could not hold a block, as advice: "raise policy.max_arena" at the growth
    // cap, or what the kernel refused (RLIMIT_AS, a mapping above it).
    const char *space_why() const noexcept;
    // pre: owns(p). Fatal on a double or invalid free. Preserves errno.
    void free(void *p) noexcept;
    // pre: owns(p). Grows a page run in place to at least n bytes when the pages after it
    // are free; false (nothing changed) otherwise, and for small blocks.
    bool grow_in_place(void *p, std::size_t n) noexcept;
    // pre: owns(p). The bytes usable at p. Fatal when p is not a live block, the message
    // naming the function the program called (`what`: "realloc(): invalid pointer").
    std::size_t usable_size(const void *p, const char *what = "malloc_usable_size(): invalid pointer") const noexcept;
    // pre: owns(p). Which pool p belongs to.
    unsigned pool_of(const void *p) const noexcept {
        return region_pool_[(reinterpret_cast<std::uintptr_t>(p) - base_) >> region_shift_];
    }
    // The program's own munlock(2) or madvise(MADV_DODUMP) of [lo, hi) (page-aligned, lo < hi):
    // calls each(lo, hi) for the stretches it may reach, those outside the blocks' range (and,
    // called from inside the arena, as by a signal handler, the address space it may grow
    // into) and in pools without `action` (kActionLock, kActionDontdump), so that a block's
    // page keeps its pool's protection whatever the program asks of its own block. Returns the
    // first nonzero value each() returned, after calling it for every stretch.
    int for_each_unprotected(std::uintptr_t lo, std::uintptr_t hi, unsigned action,
                             int (*each)(std::uintptr_t, std::uintptr_t)) noexcept;
    // The program's own mlock(2) was refused (err: ENOMEM or EAGAIN) by RLIMIT_MEMLOCK: gives
    // back the pages locked at start-up that no block has used yet. Returns the bytes.
    std::size_t give_back_unused_lock(int err) noexcept;
    // After the program's munlockall(2): locks again what the arena had locked, as a fork child
    // does (mlock is undone by munlockall as it is by fork), with every lock held: `held` when
    // the calling thread holds them all already (an atfork handler after the shim's), else it
    // takes them if none is held, and never waits for one (munlockall may come from a signal
    // handler): when one is held, by this thread (a signal handler inside the arena) or another
    // (a fork between its prepare and parent handlers), the relock is left to whoever lets the
    // last one go (relock_if_pending).
    void relock_after_munlockall(bool held) noexcept;
    // The relock a munlockall left to the holder of the arena's locks, if one is pending: run
    // after letting them go, with none held by this thread.
    static void relock_if_pending() noexcept;
    // Does p's pool wipe on free?
    bool wipes(const void *p) const noexcept;
    // pre: owns(p), p live. Is p's page in a locked range?
    bool locked(const void *p) const noexcept;
    // pre: owns(p), p live. The rule entry p was allocated for.
    unsigned rule_of(const void *p) const noexcept;
    // Counts one allocation whose callers caller rule entry `rule` checked (for the calling
    // thread; no-op without a stats page).
    void count_consulted(unsigned rule) noexcept;

    // fork(2) support: take every lock before fork, release after (postfork_parent), or make
    // them new in the child (postfork_child_locks). postfork_child re-locks the pages that
    // were locked (mlock is not inherited; under a lower RLIMIT_MEMLOCK as much as fits, the
    // pages holding blocks first, with one warning) and gives the forking thread a stats slot.
    void prefork() noexcept;
    // prefork if no lock is held (true), else takes none (false). Never waits.
    bool try_prefork() noexcept;
    void postfork_parent() noexcept;
    void postfork_child_locks() noexcept;
    void postfork_child() noexcept;
    // A pool's locked range is a memfd_secret mapping, which fork shares with the child until
    // the child's postfork_child copies it into a file of its own (unshare_after_fork).
    bool fork_child_copies_secretmem() const noexcept;
    // A fork child's handler can read a plan instead of the arena (plan_fork), each page of
    // the arena's it reads costing it a trap. `plan` is where plan_fork writes it (nullptr:
    // nowhere), and where the arena counts its growths.
    void set_fork_plan(ForkPlan *plan) noexcept { fork_plan_ = plan; }
    // Before fork, in the parent: makes the plan valid (when `wanted`) if what postfork_child
    // would lock comes down to at most kForkPlanStretches stretches locked on fault (not for
    // secretmem pools, without lock-on-fault or MADV_WIPEONFORK, nor with pages locked one
    // stretch at a time after a fork that fell short), else invalid. Writes only what
    // changes: after a fork, each page the parent writes is copied. Wanted, it reads the arena
    // without its locks: pre: no other thread changes it (the process has one thread);
    // unwanted, it only makes the plan invalid, which any thread may do at any time.
    void plan_fork(bool wanted) noexcept;
    // In the child of a fork whose plan holds: locks its stretches and, where one is refused,
    // the rest as postfork_child does. Reads nothing of the arena but the plan unless a
    // stretch is refused.
    void postfork_child_planned(const ForkPlan &plan) noexcept;
    // The calling thread's stats slot (nullptr: none).
    ThreadCounters *thread_slot() const noexcept;
    // Thread exit: returns the calling thread's cached blocks to the pools.
    void thread_exit() noexcept;

    StatsPage *stats() const noexcept { return stats_; }
    // Address space mapped beside the blocks' range (page table, states, free bits, pools).
    std::size_t side_bytes() const noexcept { return side_bytes_; }
    void set_stats(StatsPage *s) noexcept { stats_ = s; }

    static std::size_t class_size(unsigned cls) noexcept;
    static unsigned class_of(std::size_t n) noexcept {  // pre: n <= kMaxSmall
        if (n <= 128) return n == 0 ? 0 : static_cast<unsigned>((n + 15) / 16 - 1);
        unsigned b = 63u - static_cast<unsigned>(__builtin_clzll(n - 1));  // 2^b < n <= 2^(b+1)
        std::size_t above = n - (std::size_t{1} << b);
        if (b < kFineShift) {
            unsigned idx = static_cast<unsigned>((above + (std::size_t{1} << (b - 2)) - 1) >> (b - 2)) - 1;
            return 8 + (b - 7) * 4 + idx;
        }
        unsigned idx = static_cast<unsigned>((above + (std::size_t{1} << (b - 3)) - 1) >> (b - 3)) - 1;
        return kFineFirst + (b - kFineShift) * 8 + idx;
    }

    struct PageMeta;
    struct Pool;
    struct PoolCache;

private:
    // The thread-cache paths (alloc_small, free) are inline; what they call rarely is kept out
    // of line, so that the common path saves no registers and sets up no frame.
    void *alloc_small(unsigned pool, unsigned cls, unsigned rule) noexcept;
    void *pop_cached(unsigned pool, unsigned cls, unsigned rule) noexcept;
    __attribute__((noinline)) void *alloc_small_slow(unsigned pool, unsigned cls, unsigned rule) noexcept;
    __attribute__((noinline, cold)) void count_consulted_slow(unsigned rule) noexcept;
    __attribute__((noinline)) void *alloc_large(unsigned pool, std::size_t n, std::size_t align, unsigned rule) noexcept;
    __attribute__((noinline)) void free_large(Pool &pool, PageMeta &head, void *p) noexcept;
    __attribute__((noinline)) void free_small_slow(void *p) noexcept;
    __attribute__((noinline)) void free_not_slab(void *p) noexcept;
    // Is off (from base_) the first byte of a live page run, as free() and usable_size() ask?
    bool live_run_at(std::uintptr_t off) const noexcept;
    // flush() under the pool's lock; preserves errno.
    __attribute__((noinline)) void flush_locked(Pool &pool, unsigned cls, void *const *blocks, unsigned n) noexcept;
    void wipe_run(void *p, std::size_t bytes) const noexcept;
    bool new_slab(Pool &pool, unsigned cls) noexcept;
    unsigned refill(Pool &pool, unsigned cls, void **out, unsigned want) noexcept;
    void flush(Pool &pool, unsigned cls, void *const *blocks, unsigned n) noexcept;
    __attribute__((noinline)) PoolCache *cache_for(unsigned pool) noexcept;
    void lock_at_start(Pool &pool, std::size_t budget) noexcept;
    void void_fork_plan() noexcept;
    bool secret_unavailable(int err) noexcept;
    bool unshare_after_fork(Pool &pool) noexcept;
    // How a fork child locks a stretch of the arena again (for_each_relock_stretch): mlock2
    // on fault; mlock (populated); or mapped locked again (remap_locked).
    enum class Relock : std::uint8_t { on_fault, populate, remap };
    template <typename F> void for_each_relock_stretch(unsigned skip, F each) const noexcept;
    std::size_t locked_run(std::size_t &r, std::size_t regions) const noexcept;
    template <typename F> void for_each_run_piece(std::size_t r, std::size_t e, F each) const noexcept;
    int relock_piece(std::uintptr_t lo, std::uintptr_t hi, Relock how) noexcept;
    int remap_locked(std::uintptr_t lo, std::uintptr_t hi) noexcept;
    std::uintptr_t relock_merged(unsigned skip) noexcept;
    __attribute__((noinline)) bool relock_each(unsigned skip, std::uintptr_t refused) noexcept;
    bool limit_binds(unsigned skip) const noexcept;
    unsigned unlock_whole(unsigned skip) noexcept;
    bool relock_covers(std::size_t pg) const noexcept;
    void relock_loose_pages(bool report) noexcept;
    void relock_all(unsigned skip) noexcept;
    std::uintptr_t relock_end(const Pool &pool) const noexcept;
    int each_piece_outside(std::uintptr_t lo, std::uintptr_t hi, std::uintptr_t ahi, std::uintptr_t cap, unsigned action,
                           int (*each)(std::uintptr_t, std::uintptr_t)) const noexcept;
    Relock relock_how(const Pool &pool) const noexcept;
    int relock(const Pool &pool, std::uintptr_t at, std::size_t bytes) noexcept;
    std::size_t relock_largest(const Pool &pool, std::uintptr_t at, std::size_t bytes, int &err) noexcept;
    void relock_what_fits(unsigned pools, int err) noexcept;
    void relock_fell_short(int err) noexcept;
    void relock_warned(int err) noexcept;
    void set_secret(Pool &pool, bool secret) noexcept;
    const char *lock_why() const noexcept;
    void account(const Pool &pool, std::size_t first, std::size_t n, int sign) noexcept;
    void set_page_flags(Pool &pool, std::size_t pg, std::uint8_t flags) noexcept;
    unsigned char *carve(Pool &pool, std::size_t bytes) noexcept;
    bool grow(Pool &pool, std::size_t bytes, bool contiguous_only) noexcept;
    int map_side(std::size_t from_span, std::size_t to_span) noexcept;
    static constexpr int kDeniedByPolicy = -1;  // commit_and_lock: the lock policy refused
    int place(std::size_t room, std::size_t first_span) noexcept;
    void forget_place() noexcept;
    // Side table bytes for `span` bytes of arena.
    std::size_t meta_len(std::size_t span) const noexcept;
    std::size_t state_len(std::size_t span) const noexcept;
    std::size_t bits_len(std::size_t span) const noexcept;
    int commit_and_lock(Pool &pool, std::uintptr_t from, std::size_t bytes) noexcept;
    std::uintptr_t commit_end(const Pool &pool, std::uintptr_t to) const noexcept;
    void own_commits(Pool &pool) noexcept;
    void collapse_after_commit(const Pool &pool, std::uintptr_t from) noexcept;
    void keep_small(std::uintptr_t from, std::uintptr_t to) noexcept;
    void *out_of_space(const char *what) noexcept;
    void list_push(std::uint32_t &list, std::size_t head) noexcept;
    void list_remove(std::uint32_t &list, std::size_t head) noexcept;
    void free_run_insert(Pool &pool, std::size_t head, std::size_t npages, std::size_t in_use) noexcept;
    std::size_t free_run_remove(Pool &pool, std::size_t head) noexcept;
    std::size_t in_use_pages(std::size_t first, std::size_t n) const noexcept;
    std::size_t secret_pages(const Pool &pool, std::size_t first, std::size_t n) const noexcept;
    std::size_t claim_pages(const Pool &pool, std::size_t first, std::size_t n) noexcept;
    bool free_run_ends_before(const Pool &pool, std::size_t page, std::size_t &head) const noexcept;
    bool extend_tail_run(Pool &pool, std::size_t bytes, std::uintptr_t mask, std::uintptr_t &run, std::uintptr_t &run_end,
                         std::size_t &in_use) noexcept;
    std::uintptr_t take_pages(Pool &pool, std::size_t bytes, std::size_t align) noexcept;
    // Bit i: pool i's locked range is a memfd_secret mapping (shared with a fork child until
    // it copies it; left locked by munlockall).
    unsigned secret_pools() const noexcept;
    void release_pages(Pool &pool, std::size_t first, std::size_t n) noexcept;
    void maybe_purge(Pool &pool) noexcept;
    void discard_pages(Pool &pool, std::size_t first, std::size_t n) noexcept;
    void report_secret_kept() noexcept;
    void discard_side(std::size_t first, std::size_t n) noexcept;
    static std::uint64_t now_ns() noexcept;
    void mark_run(std::size_t head, std::size_t first, std::size_t npages) noexcept;
    void note_peak() noexcept;
    std::uint64_t &bits_word(std::size_t w) const noexcept { return bits_top_[-1 - static_cast<std::ptrdiff_t>(w)]; }
    // Words [w, w + n) of the free bits, lowest address first.
    std::uint64_t *bits_words(std::size_t w, std::size_t n) const noexcept {
        return bits_top_ - static_cast<std::ptrdiff_t>(w + n);
    }
    void release_side(std::size_t span) noexcept;
    std::uint8_t &state_of(const void *p) const noexcept {
        return state_[(reinterpret_cast<std::uintptr_t>(p) - base_) >> 4];
    }
    [[noreturn]] void bad_pointer(const void *p, const char *what) const noexcept;

    std::uintptr_t base_ = 0;
    std::size_t side_bytes_ = 0;
    std::uintptr_t span_ = 0;          // mapped for blocks: [base_, base_ + span_); grows
    std::size_t cap_span_ = 0;         // span_ grows up to this (the span chosen at start-up)
    std::size_t side_span_ = 0;        // the side tables cover [base_, base_ + side_span_)
    std::size_t region_pages_ = 0;     // pages per region
    unsigned region_shift_ = 0;        // log2(bytes per region)
    std::size_t page_ = 4096;
    unsigned page_shift_ = 12;       // log2(page_)
    unsigned npools_ = 0;
    unsigned wipe_pools_ = 0;        // bit i: pool i has the wipe action
    unsigned scrub_pools_ = 0;       // bit i: a free from pool i scrubs the caller's dead stack
    ArenaOptions opts_{};
    StatsPage *stats_ = nullptr;
    ArenaReporter reporter_ = nullptr;
    PageMeta *meta_ = nullptr;       // one entry per page of the reservation
    std::uint8_t *state_ = nullptr;  // one byte per 16-byte granule of the reservation
    // One bit per granule: free blocks of the slabs. The words run down from bits_top_ (word w
    // at bits_top_[-1 - w]) so that this table, the pools' mapping above it and state_ above
    // that are one mapping: one fewer for fork to copy and for a child to unmap.
    std::uint64_t *bits_top_ = nullptr;
    std::size_t pools_len_ = 0;      // the pools and the first thread caches, at bits_top_
    Pool *pools_ = nullptr;          // npools_ entries, in the mapping of the first caches
    PoolCache *spare_caches_ = nullptr;   // cache sets of exited threads, under misc_lock_
    PoolCache *unused_caches_ = nullptr;  // the set after the pools, until a thread takes it (misc_lock_)
    pthread_mutex_t misc_lock_ = PTHREAD_MUTEX_INITIALIZER;  // spare caches; growth of the span
    int lock_error_ = 0;                 // why locking at start-up fell short (0: max_locked)
    bool secret_ = false;                // lock pools' budgets are memfd_secret memory
    bool secret_missing_ = false;        // memfd_secret is missing and the policy refused anonymous
    std::atomic<bool> warned_secret_kept_{false};
    bool lock_on_commit_ = false;        // no lock-on-fault: pages are mlocked as committed
    bool tail_onfault_ = false;          // the range's last mapping is locked on fault: grow() extends it
    const char *relock_cause_ = "fork";  // what undid the locks relock_* lock again, for their messages
    bool loose_locked_ = false;          // pages locked one stretch at a time after a fork (relock_what_fits)
    std::size_t huge_ = 0;               // transparent huge page size for pools that lock (0: none)
    bool ask_commit_ = true;             // large runs are asked of the overcommit accounting (kAskedCommit)
    // What tells the process that made the arena from its fork children, with nothing written
    // in the child's fork handler (each page a child writes costs it a copy-on-write fault):
    // a page the kernel gives every fork child zeroed (MADV_WIPEONFORK), or where it cannot,
    // own_marks_ (in .data with the arena), which the child's handler clears.
    struct ProcessMarks {
        std::uint8_t made_here;            // the arena was made in this process
        std::uint8_t huge_own[kMaxPools];  // pool i's huge_from is this process's (under its lock)
    };
    ProcessMarks own_marks_{};
    ProcessMarks *marks_ = &own_marks_;
    ForkPlan *fork_plan_ = nullptr;  // set_fork_plan
    std::atomic<bool> discard_locked_ok_{true};  // MADV_DONTNEED_LOCKED works
    std::atomic<bool> warned_lock_failure_{false};
    std::atomic<bool> warned_full_{false};
    std::atomic<int> space_error_{0};  // why the arena last could not grow or commit (0: max_arena)
    // Last, so that the fields the free path reads share cache lines as before.
    std::uint8_t region_pool_[kMaxRegions] = {};    // the pool each region of the range serves
    std::uint8_t region_locked_[kMaxRegions] = {};  // 1: mapped locked after start-up (mremap, MAP_LOCKED)
};

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_ARENA_HPP
