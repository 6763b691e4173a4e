// stats.hpp - the shim's counters, laid out in one page that other processes can read.
//
// The page lives in a private memfd_create mapping named kStatsMemfdName, which /proc/PID/maps
// shows as "/memfd:memlock-shim (deleted)"; a fork child's copy-on-write copy is its own page.
// Nothing is in any directory: nothing to plant, nothing left behind however the process
// ends, no name shared across PID namespaces. The memfd's size is sealed (nobody can shrink
// it under the mapping), and its descriptor is closed once mapped. memlock-inspect reads the page through /proc/PID/mem, so only those who may read
// the process's memory (the kernel's ptrace access check) see it. Where memfd_create is
// missing (ENOSYS before Linux 3.17, or a seccomp filter) the page is a shared anonymous
// mapping, "/dev/zero (deleted)" in /proc/PID/maps: memlock-inspect finds it among those of
// its size by its magic, layout and pid.
// The layout below is the interface between the shim and the tools: bump kStatsLayout when
// it changes; readers validate magic, layout and size and bound every value they use.
//
// Hot-path counters are per thread and per rule: the first kStatsRules - 1 rules in force
// have counters of their own, all later rules share the last entry ("other rules"). Each
// thread claims a slot (ThreadCounters: its owner's tid); slot i owns rule row i (after the
// StatsPage, in the same mapping: stats_rule_rows), where the thread counts, per rule, its
// matches, its frees, the bytes it allocated minus those it freed, and the caller-rule checks
// it made: single writer, plain load + store, no locked instructions. This is the only count
// the matched path makes: the process totals (matched allocations, frees, live bytes) are
// the sums over the rules (stats_totals). On its slow paths (a thread cache refilled or
// flushed, a page run, thread exit, a fork that leaves it behind) a thread publishes its row:
// adds it into the page's RuleTotals and zeroes it. Threads beyond kStatsSlots share the slot
// `shared`, which has no row: they add to the RuleTotals directly (atomic read-modify-write).
// A rule's figures are its total plus every row; the sums are exact once the process is
// quiet, and otherwise off by the operations in flight and, while a row is being published,
// by that row (counted twice or not at all). A rule's peak is raised by the
// allocating thread from the total plus its own row (exact with one thread; with several,
// off by at most what the other threads have not yet published, a thread cache's worth each).
#ifndef MEMLOCK_SHIM_STATS_HPP
#define MEMLOCK_SHIM_STATS_HPP

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mlshim {

constexpr std::uint32_t kStatsLayout = 7;
constexpr unsigned kStatsSlots = 128;
constexpr char kStatsMagic[8] = {'M', 'L', 'S', 'H', 'I', 'M', 'S', '1'};
constexpr char kStatsMemfdName[] = "memlock-shim";  // /proc/PID/maps: "/memfd:memlock-shim (deleted)"

// StatsPage::backing: what the locked arena memory is (policy.backing, as it turned out)
constexpr std::uint32_t kStatsBackingAnonymous = 0;
constexpr std::uint32_t kStatsBackingSecretmem = 1;

// What an allocator before the shim means, after the words naming the object that defines
// malloc (the shim's start-up warning, memlock-inspect, memlock-run --check).
constexpr char kBeforeShim[] = "which comes before the shim in the lookup order: the program's allocations never "
                               "reach the shim, and no rule sees them";

// Is `base` (a file name without its directory) the library that a valgrind tool replacing
// the allocator preloads (memcheck, helgrind, drd, massif, dhat: vgpreload_TOOL-ARCH-linux.so)?
// Tools that leave the allocator alone (callgrind, cachegrind) preload only vgpreload_core.
// Under one the shim passes everything through (its start-up line, memlock-inspect).
inline bool is_valgrind_allocator_preload(const char *base) {
    return std::strncmp(base, "vgpreload_", 10) == 0 && std::strncmp(base + 10, "core-", 5) != 0;
}

// StatsPage::flags
constexpr std::uint32_t kStatsAllRulesLock = 1;  // every rule in force has the lock action

// Per-rule counters: rules 0 .. kStatsRules - 2 have their own, the rest share the last.
constexpr unsigned kStatsRules = 64;
constexpr unsigned kStatsOtherRules = kStatsRules - 1;
inline unsigned stats_rule_index(unsigned rule) noexcept { return rule < kStatsOtherRules ? rule : kStatsOtherRules; }

// StatsRuleInfo::flags
constexpr std::uint32_t kStatsRuleCaller = 1;     // the rule has a caller condition (module, symbol)
constexpr std::uint32_t kStatsRuleTruncated = 2;  // name or caller text cut to fit

struct StatsRuleInfo {
    char name[48];    // NUL-terminated, cut to fit (kStatsRuleTruncated)
    char caller[72];  // "module GLOB depth N, symbol GLOB depth N[, up to N bytes]", or empty
    std::uint32_t flags;
    std::uint32_t reserved;
};

// A rule's published counters (atomic read-modify-writes, only on slow paths).
struct StatsRuleTotal {
    std::atomic<std::uint64_t> matches{0};    // blocks it placed in the arena
    std::atomic<std::uint64_t> frees{0};      // of which freed
    std::atomic<std::uint64_t> consulted{0};  // caller rules: allocations whose callers it checked
    std::atomic<std::int64_t> live{0};        // bytes allocated minus bytes freed (published part)
    std::atomic<std::int64_t> peak{0};        // high-water mark of live bytes
};

// A thread's unpublished per-rule counts (single writer: the thread).
struct StatsRuleCount {
    std::atomic<std::uint64_t> matches{0};
    std::atomic<std::uint64_t> frees{0};
    std::atomic<std::uint64_t> consulted{0};
    std::atomic<std::int64_t> live{0};
};
struct StatsRuleRow {
    StatsRuleCount rule[kStatsRules];
};

// A thread's claim on a rule row (the counts are in the row).
struct ThreadCounters {
    std::atomic<std::int32_t> owner{0};         // tid of the owning thread, 0 = free

    // Single-writer increment: the owner is the only thread that writes its row, so the add
    // needs no lock; a reader sees the value before or after it. On x86-64 it is one add to
    // memory (an aligned 8-byte store is atomic there), elsewhere a relaxed load and store.
    template <class T>
    static void bump(std::atomic<T> &c, typename std::atomic<T>::value_type by) noexcept {
        static_assert(sizeof(T) == 8 && sizeof(std::atomic<T>) == 8, "a counter is one 8-byte word");
#if defined(__x86_64__)
        __asm__ __volatile__("addq %1, %0" : "+m"(*reinterpret_cast<T *>(&c)) : "er"(by));
#else
        c.store(c.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
#endif
    }
};

// The process's figures, summed over the rules.
struct StatsTotals {
    std::uint64_t allocs, frees;
    std::int64_t live;  // bytes allocated minus bytes freed (in flight: may read below zero)
    std::uint64_t live_bytes() const noexcept { return live > 0 ? static_cast<std::uint64_t>(live) : 0; }
};

struct StatsPage {
    char magic[8];
    std::uint32_t layout;
    std::int32_t pid;                  // of the process that made the page, as it saw itself (its own PID
                                       // namespace): in the memfd, a fork child's copy keeps its parent's
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
    ThreadCounters shared;                 // the threads beyond kStatsSlots (no row)
    ThreadCounters slots[kStatsSlots];
    std::uint32_t backing;                       // kStatsBacking* above
    std::uint32_t reserved2;
    std::atomic<std::uint64_t> secret_bytes;     // of committed_bytes, in memfd_secret memory
    StatsRuleInfo rule_info[kStatsRules];  // min(rules, kStatsRules) entries used
    StatsRuleTotal rule_totals[kStatsRules];
    // The object whose malloc takes the program's calls before they reach the shim (an
    // allocator loaded before it), NUL-terminated and cut to fit; empty when calls reach it.
    char allocator_before[128];
};

// The per-thread rule rows follow the page: row i belongs to slots[i]. A reader reads the
// rows of the slots that have an owner (the rest are zero), so that it does not make the
// target's kernel allocate the untouched part of the mapping.
constexpr std::size_t kStatsRowsOffset = (sizeof(StatsPage) + 63) & ~std::size_t{63};
// Bytes the mapping is made with (whole 4 KiB pages; on a kernel with larger pages, 16 or 64
// KiB on some aarch64 ones, it occupies this rounded up to its page size).
constexpr std::size_t kStatsPageBytes =
    (kStatsRowsOffset + sizeof(StatsRuleRow) * kStatsSlots + 4095) & ~std::size_t{4095};

inline StatsRuleRow *stats_rule_rows(StatsPage *page) noexcept {
    return reinterpret_cast<StatsRuleRow *>(reinterpret_cast<unsigned char *>(page) + kStatsRowsOffset);
}
// The row of a thread's slot, or nullptr for the shared slot (threads beyond kStatsSlots
// update the totals directly).
inline StatsRuleRow *stats_rule_row(StatsPage *page, ThreadCounters *slot) noexcept {
    const std::size_t i = static_cast<std::size_t>(slot - page->slots);
    return i < kStatsSlots ? stats_rule_rows(page) + i : nullptr;
}

// The process's totals: every rule's published totals plus `rows` (kStatsSlots rows, row i
// of slots[i], as stats_rule_rows lays them out; only the rows of slots with an owner are
// read). rows == nullptr: the published totals only.
StatsTotals stats_totals(const StatsPage &page, const StatsRuleRow *rows) noexcept;

// One rule's figures: its totals plus the rows given (nullptr entries are skipped).
struct StatsRuleFigures {
    std::uint64_t matches, consulted, live_bytes, peak_bytes;
};
StatsRuleFigures stats_rule_figures(const StatsPage &page, unsigned index, const StatsRuleRow *const *rows,
                                    unsigned nrows) noexcept;

// Adds a row into the totals and zeroes it (its owner, or anyone once the owner is gone).
// `rules`: entries in use, at most kStatsRules.
void stats_publish_row(StatsPage *page, StatsRuleRow *row, unsigned rules) noexcept;
// Raises a rule's peak to `live` if it is higher.
inline void stats_raise_peak(StatsRuleTotal &t, std::int64_t live) noexcept {
    std::int64_t peak = t.peak.load(std::memory_order_relaxed);
    while (live > peak && !t.peak.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {}
}
// Entries of rule_info / rule_totals in use.
inline unsigned stats_rule_entries(const StatsPage &page) noexcept {
    return page.rules < kStatsRules ? page.rules : kStatsRules;
}

// Creates the page for this process: when `visible`, a memfd mapping if memfd_create works,
// else a shared anonymous one; otherwise (unit tests) a private anonymous one. Never allocates. pre: called once, single-threaded. Returns nullptr only
// when no mapping could be made.
StatsPage *stats_create(bool visible) noexcept;
// In a forked child: the child's page, starting from the parent's values, with the slots of
// the threads that did not survive the fork released, their rows published into the rule
// totals (when `other_threads`: the parent had threads besides the forking one); `keep` (the forking thread's slot) stays its
// own. A memfd page is private: the child's copy-on-write copy is its own page already (no
// system call; a single-threaded parent's child writes nothing there until it counts, and
// its pid never: the page's pid is the process that made it). A shared anonymous page (no
// memfd_create) is copied into a new one with the child's pid, all its slots released.
StatsPage *stats_after_fork(StatsPage *page, ThreadCounters *keep, bool other_threads) noexcept;
// Does a fork child of a single-threaded process get a new page (stats_after_fork)?
bool stats_moves_after_fork(const StatsPage *page) noexcept;

// Claims a slot for the calling thread (tid), or returns &page->shared when all are taken.
ThreadCounters *stats_claim_slot(StatsPage *page, int tid) noexcept;
// Is `slot` one of page's (a thread's own or the shared one)?
inline bool stats_has_slot(const StatsPage &page, const ThreadCounters *slot) noexcept {
    const auto at = reinterpret_cast<std::uintptr_t>(slot), first = reinterpret_cast<std::uintptr_t>(page.slots);
    return slot == &page.shared || (at >= first && at < first + sizeof page.slots);
}
// Publishes a slot's rule row into the rule totals and frees the slot (thread exit).
void stats_release_slot(StatsPage *page, ThreadCounters *slot) noexcept;

// Writes the counters as one JSON object into buf (no allocation), ending with "per_rule":
// one entry per rule (name, "truncated" when cut, "caller" for caller rules, or for the
// shared last entry "other rules" and "covers"; matched_allocations, live_bytes,
// peak_bytes, and consulted for caller rules). `rows`: as for stats_totals. Returns bytes
// written; with len >= kStatsJsonBytes it is never cut.
constexpr std::size_t kStatsJsonBytes = 2048 + kStatsRules * 1024;
std::size_t stats_format_json(const StatsPage &page, const StatsRuleRow *rows, char *buf, std::size_t len) noexcept;

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_STATS_HPP
