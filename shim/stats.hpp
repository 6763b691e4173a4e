// stats.hpp - the shim's counters, laid out in one page that other processes can read.
//
// The page lives in a memfd_create mapping named kStatsMemfdName, which /proc/PID/maps shows
// as "/memfd:memlock-shim (deleted)". Nothing is in any directory: nothing to plant, nothing
// left behind however the process ends, no name shared across PID namespaces. The memfd's
// size is sealed (nobody can shrink it under the mapping), and its descriptor is closed once
// mapped. memlock-inspect reads the page through /proc/PID/mem, so only those who may read
// the process's memory (the kernel's ptrace access check) see it. Where memfd_create is
// missing (ENOSYS before Linux 3.17, or a seccomp filter) the page is a shared anonymous
// mapping, "/dev/zero (deleted)" in /proc/PID/maps: memlock-inspect finds it among those of
// its size by its magic, layout and pid.
// The layout below is the interface between the shim and the tools: bump kStatsLayout when
// it changes; readers validate magic, layout and size and bound every value they use.
//
// Hot-path counters are per thread: each thread owns one ThreadCounters slot and is its
// only writer (plain load + store, no locked instructions). Readers sum every slot plus
// `retired` (slots of threads that exited) and `shared` (threads beyond kStatsSlots, which
// update it with atomic read-modify-write). The sums are exact once the process is quiet
// and never off by more than the operations in flight.
#ifndef MEMLOCK_SHIM_STATS_HPP
#define MEMLOCK_SHIM_STATS_HPP

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace mlshim {

constexpr std::uint32_t kStatsLayout = 3;
constexpr unsigned kStatsSlots = 128;
constexpr char kStatsMagic[8] = {'M', 'L', 'S', 'H', 'I', 'M', 'S', '1'};
constexpr char kStatsMemfdName[] = "memlock-shim";  // /proc/PID/maps: "/memfd:memlock-shim (deleted)"

// StatsPage::backing: what the locked arena memory is (policy.backing, as it turned out)
constexpr std::uint32_t kStatsBackingAnonymous = 0;
constexpr std::uint32_t kStatsBackingSecretmem = 1;

// StatsPage::flags
constexpr std::uint32_t kStatsAllRulesLock = 1;  // every rule in force has the lock action

struct alignas(64) ThreadCounters {
    std::atomic<std::uint64_t> allocs{0};       // blocks handed out by the arena
    std::atomic<std::uint64_t> frees{0};        // blocks returned
    std::atomic<std::uint64_t> alloc_bytes{0};  // usable bytes handed out
    std::atomic<std::uint64_t> free_bytes{0};   // usable bytes returned
    std::atomic<std::int32_t> owner{0};         // tid of the owning thread, 0 = free

    // Single-writer increment: the owner is the only thread that writes this slot.
    static void bump(std::atomic<std::uint64_t> &c, std::uint64_t by) noexcept {
        c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
    }
};

struct StatsTotals {
    std::uint64_t allocs, frees, alloc_bytes, free_bytes;
    std::uint64_t live_bytes() const noexcept { return alloc_bytes - free_bytes; }
};

struct StatsPage {
    char magic[8];
    std::uint32_t layout;
    std::int32_t pid;                  // as the process sees itself (its own PID namespace)
    std::uint64_t max_locked;          // from the config
    std::uint32_t on_lock_failure;     // 0 fallback, 1 deny, 2 abort
    std::uint32_t rules;               // number of rules in force
    std::atomic<std::uint32_t> active; // 1 while the arena serves matching allocations
    std::uint32_t flags;               // kStats* flags above
    std::uint64_t arena_start;         // the arena's reservation: [arena_start, +reserved_bytes)
    std::atomic<std::uint64_t> reserved_bytes;   // address space reserved for the arena
    std::atomic<std::uint64_t> committed_bytes;  // arena memory committed (it never shrinks)
    std::atomic<std::uint64_t> locked_bytes;     // of which mlocked
    std::atomic<std::uint64_t> unlocked_bytes;   // of which served unlocked (fallback)
    std::atomic<std::uint64_t> lock_failures;    // mlock calls that failed or hit max_locked
    std::atomic<std::uint64_t> fallbacks;        // chunks served unlocked under "fallback"
    std::atomic<std::uint64_t> denied;           // matching allocations refused (ENOMEM)
    std::atomic<std::uint64_t> out_bytes;        // bytes handed from the arena's central lists
    std::atomic<std::uint64_t> peak_bytes;       // high-water mark of out_bytes
    std::atomic<std::uint64_t> overflows;        // matching allocations served by the next allocator
                                                 // (arena full, policy fallback)
    std::atomic<std::uint64_t> purged_bytes;     // arena memory given back to the kernel (wiped first)
    ThreadCounters retired;
    ThreadCounters shared;
    ThreadCounters slots[kStatsSlots];
    std::uint32_t backing;                       // kStatsBacking* above
    std::uint32_t reserved2;
    std::atomic<std::uint64_t> secret_bytes;     // of committed_bytes, in memfd_secret memory

    StatsTotals totals() const noexcept;
};

// Bytes the page occupies (whole pages).
constexpr std::size_t kStatsPageBytes = (sizeof(StatsPage) + 4095) & ~std::size_t{4095};

// Creates the page for this process: when `visible`, a memfd mapping if memfd_create works,
// else a shared anonymous one; otherwise (unit tests) a private anonymous one. Never allocates. pre: called once, single-threaded. Returns nullptr only
// when no mapping could be made.
StatsPage *stats_create(bool visible) noexcept;
// In a forked child: gives the child a page of its own (the same kind as the parent's),
// starting from the parent's values. Unmaps the parent's page.
StatsPage *stats_recreate_after_fork(StatsPage *old) noexcept;

// Claims a slot for the calling thread (tid), or returns &page->shared when all are taken.
ThreadCounters *stats_claim_slot(StatsPage *page, int tid) noexcept;
// Folds a slot into `retired` and frees it (thread exit).
void stats_release_slot(StatsPage *page, ThreadCounters *slot) noexcept;

// Writes the counters as one JSON object into buf (no allocation). Returns bytes written.
std::size_t stats_format_json(const StatsPage &page, char *buf, std::size_t len) noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_STATS_HPP
