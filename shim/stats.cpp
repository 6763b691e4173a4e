#include "stats.hpp"

#include "fatal.hpp"
#include "fork_child.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <new>

namespace mlshim {

namespace {

constexpr std::size_t kPageBytes = kStatsPageBytes;

#ifndef F_ADD_SEALS  // headers older than glibc 2.27
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#define MFD_ALLOW_SEALING 0x0002U
#endif

// What kind of page this process counts in. A private mapping of a memfd is findable (its name
// in /proc/PID/maps) and becomes a fork child's own page by copy-on-write; a shared anonymous
// one (no memfd_create) is shared with fork children, which need a new one.
enum class PageKind { private_anonymous, memfd, shared_anonymous };
PageKind g_kind = PageKind::private_anonymous;

// A private mapping of a fresh memfd whose size is sealed, or MAP_FAILED. The descriptor is
// closed before returning: the mapping keeps the memory, and nothing else refers to it.
// Private: a fork child gets its own copy of the page without a system call.
// (syscall, not glibc's memfd_create wrapper: that needs glibc 2.27.)
void *map_memfd() noexcept {
    const int fd = static_cast<int>(::syscall(SYS_memfd_create, kStatsMemfdName, MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (fd < 0) return MAP_FAILED;
    void *mem = MAP_FAILED;
    // Under a lower RLIMIT_FSIZE, ftruncate would raise SIGXFSZ: the shared mapping serves.
    if (file_size_allows(kPageBytes) && ::ftruncate(fd, static_cast<off_t>(kPageBytes)) == 0 &&
        ::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
        mem = ::mmap(nullptr, kPageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    ::close(fd);
    return mem;
}

// Maps a fresh page: when visible, a memfd if possible, else a shared anonymous mapping
// (which /proc/PID/maps shows as "/dev/zero (deleted)"); otherwise a private one.
StatsPage *map_page(int pid, bool visible) noexcept {
    void *mem = visible ? map_memfd() : MAP_FAILED;
    g_kind = PageKind::memfd;
    if (mem == MAP_FAILED && visible) {
        mem = ::mmap(nullptr, kPageBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        g_kind = PageKind::shared_anonymous;
    }
    if (mem == MAP_FAILED) {
        mem = ::mmap(nullptr, kPageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        g_kind = PageKind::private_anonymous;
    }
    if (mem == MAP_FAILED) return nullptr;
    auto *page = new (mem) StatsPage();
    std::memcpy(page->magic, kStatsMagic, sizeof page->magic);
    page->layout = kStatsLayout;
    page->pid = pid;
    return page;
}

}  // namespace

StatsTotals stats_totals(const StatsPage &page, const StatsRuleRow *rows) noexcept {
    StatsTotals t{0, 0, 0};
    const unsigned rules = stats_rule_entries(page);
    for (unsigned i = 0; i < rules; ++i) {
        const StatsRuleTotal &r = page.rule_totals[i];
        t.allocs += r.matches.load(std::memory_order_relaxed);
        t.frees += r.frees.load(std::memory_order_relaxed);
        t.live += r.live.load(std::memory_order_relaxed);
    }
    for (unsigned s = 0; rows && s < kStatsSlots; ++s) {
        if (page.slots[s].owner.load(std::memory_order_relaxed) == 0) continue;  // its row is zero
        for (unsigned i = 0; i < rules; ++i) {
            const StatsRuleCount &c = rows[s].rule[i];
            t.allocs += c.matches.load(std::memory_order_relaxed);
            t.frees += c.frees.load(std::memory_order_relaxed);
            t.live += c.live.load(std::memory_order_relaxed);
        }
    }
    return t;
}

StatsPage *stats_create(bool visible) noexcept {
    return map_page(static_cast<int>(::getpid()), visible);
}

bool stats_moves_after_fork(const StatsPage *page) noexcept { return page && g_kind == PageKind::shared_anonymous; }

MLSHIM_FORK_CHILD_TEXT StatsPage *stats_after_fork(StatsPage *page, ThreadCounters *keep, bool other_threads) noexcept {
    if (!page) return nullptr;
    if (stats_moves_after_fork(page)) {
        StatsPage *own = map_page(static_cast<int>(::getpid()), true);
        if (!own) return nullptr;
        std::memcpy(static_cast<void *>(own), page, kPageBytes);  // the page and its rule rows
        own->pid = static_cast<int>(::getpid());
        ::munmap(page, kPageBytes);
        page = own;
        keep = nullptr;  // the slot was in the parent's page
        other_threads = true;
    }
    // Otherwise the child's copy-on-write copy is its own page, and its pid stays the one of
    // the process that made the page: a fork child that counts nothing writes nothing there.
    // The child's history starts from the parent's totals. Only the forking thread lives on
    // and keeps its slot (its owner stays set: only whether a slot has an owner is read); the
    // other threads' rule rows are published into the rule totals, their slots freed.
    if (other_threads)
        for (auto &s : page->slots)
            if (&s != keep && s.owner.load(std::memory_order_relaxed) != 0) stats_release_slot(page, &s);
    return page;
}

ThreadCounters *stats_claim_slot(StatsPage *page, int tid) noexcept {
    for (auto &s : page->slots) {
        std::int32_t expected = 0;
        if (s.owner.load(std::memory_order_relaxed) == 0 &&
            s.owner.compare_exchange_strong(expected, tid, std::memory_order_acq_rel))
            return &s;
    }
    return &page->shared;
}

void stats_release_slot(StatsPage *page, ThreadCounters *slot) noexcept {
    if (!page || !slot || slot == &page->shared) return;
    if (StatsRuleRow *row = stats_rule_row(page, slot)) stats_publish_row(page, row, stats_rule_entries(*page));
    slot->owner.store(0, std::memory_order_release);
}

void stats_publish_row(StatsPage *page, StatsRuleRow *row, unsigned rules) noexcept {
    for (unsigned i = 0; i < rules; ++i) {
        StatsRuleCount &c = row->rule[i];
        const std::uint64_t m = c.matches.load(std::memory_order_relaxed);
        const std::uint64_t f = c.frees.load(std::memory_order_relaxed);
        const std::uint64_t k = c.consulted.load(std::memory_order_relaxed);
        const std::int64_t l = c.live.load(std::memory_order_relaxed);
        if (!m && !f && !k && !l) continue;
        StatsRuleTotal &t = page->rule_totals[i];
        if (m) t.matches.fetch_add(m, std::memory_order_relaxed);
        if (f) t.frees.fetch_add(f, std::memory_order_relaxed);
        if (k) t.consulted.fetch_add(k, std::memory_order_relaxed);
        if (l) t.live.fetch_add(l, std::memory_order_relaxed);
        c.matches.store(0, std::memory_order_relaxed);
        c.frees.store(0, std::memory_order_relaxed);
        c.consulted.store(0, std::memory_order_relaxed);
        c.live.store(0, std::memory_order_relaxed);
    }
}

StatsRuleFigures stats_rule_figures(const StatsPage &page, unsigned index, const StatsRuleRow *const *rows,
                                    unsigned nrows) noexcept {
    const StatsRuleTotal &t = page.rule_totals[index];
    std::uint64_t matches = t.matches.load(std::memory_order_relaxed);
    std::uint64_t consulted = t.consulted.load(std::memory_order_relaxed);
    std::int64_t live = t.live.load(std::memory_order_relaxed);
    for (unsigned i = 0; i < nrows; ++i) {
        if (!rows[i]) continue;
        const StatsRuleCount &c = rows[i]->rule[index];
        matches += c.matches.load(std::memory_order_relaxed);
        consulted += c.consulted.load(std::memory_order_relaxed);
        live += c.live.load(std::memory_order_relaxed);
    }
    // Mid-publish a row may be counted twice or not at all: never report below zero, and the
    // peak is at least what is live now.
    if (live < 0) live = 0;
    std::int64_t peak = t.peak.load(std::memory_order_relaxed);
    if (peak < live) peak = live;
    return StatsRuleFigures{matches, consulted, static_cast<std::uint64_t>(live), static_cast<std::uint64_t>(peak)};
}

namespace {

// Appends to a fixed buffer, cutting at its end (and always NUL-terminated).
struct JsonOut {
    char *buf;
    std::size_t len, used;

    void raw(const char *s, std::size_t n) noexcept {
        if (len == 0) return;
        if (n > len - 1 - used) n = len - 1 - used;
        std::memcpy(buf + used, s, n);
        used += n;
        buf[used] = '\0';
    }
    void text(const char *s) noexcept { raw(s, std::strlen(s)); }
    void num(const char *key, unsigned long long v) noexcept {
        char tmp[64];
        const int n = std::snprintf(tmp, sizeof tmp, ", \"%s\": %llu", key, v);
        if (n > 0) raw(tmp, static_cast<std::size_t>(n));
    }
    // `s` (at most `max` bytes, valid UTF-8: describe_rules cuts on a character boundary) as
    // a JSON string: quote, backslash and control characters escaped.
    void str(const char *s, std::size_t max) noexcept {
        raw("\"", 1);
        for (std::size_t i = 0; i < max && s[i]; ++i) {
            const unsigned char c = static_cast<unsigned char>(s[i]);
            char esc[8];
            if (c == '"' || c == '\\') {
                esc[0] = '\\';
                esc[1] = static_cast<char>(c);
                raw(esc, 2);
            } else if (c < 0x20) {
                std::snprintf(esc, sizeof esc, "\\u%04x", c);
                raw(esc, 6);
            } else {
                raw(s + i, 1);
            }
        }
        raw("\"", 1);
    }
};

}  // namespace

std::size_t stats_format_json(const StatsPage &page, const StatsRuleRow *rows, char *buf, std::size_t len) noexcept {
    static const char *const policies[] = {"fallback", "deny", "abort"};
    const StatsTotals t = stats_totals(page, rows);
    auto u = [](const std::atomic<std::uint64_t> &a) {
        return static_cast<unsigned long long>(a.load(std::memory_order_relaxed));
    };
    int n = std::snprintf(
        buf, len,
        "{\"pid\": %d, \"active\": %s, \"rules\": %u, \"arena_start\": %llu, \"matched_allocations\": %llu, "
        "\"frees\": %llu, \"live_bytes\": %llu, \"peak_bytes\": %llu, \"reserved_bytes\": %llu, "
        "\"committed_bytes\": %llu, \"locked_bytes\": %llu, \"unlocked_bytes\": %llu, "
        "\"max_locked\": %llu, \"lock_failures\": %llu, \"fallbacks\": %llu, \"denied\": %llu, "
        "\"overflows\": %llu, \"purged_bytes\": %llu, \"on_lock_failure\": \"%s\", \"all_rules_lock\": %s, "
        "\"backing\": \"%s\", \"secret_bytes\": %llu, \"per_rule\": [",
        page.pid, page.active.load() ? "true" : "false", page.rules, static_cast<unsigned long long>(page.arena_start),
        static_cast<unsigned long long>(t.allocs), static_cast<unsigned long long>(t.frees),
        static_cast<unsigned long long>(t.live_bytes()), u(page.peak_bytes), u(page.reserved_bytes),
        u(page.committed_bytes), u(page.locked_bytes), u(page.unlocked_bytes),
        static_cast<unsigned long long>(page.max_locked), u(page.lock_failures), u(page.fallbacks),
        u(page.denied), u(page.overflows), u(page.purged_bytes), policies[page.on_lock_failure < 3 ? page.on_lock_failure : 0],
        (page.flags & kStatsAllRulesLock) ? "true" : "false",
        page.backing == kStatsBackingSecretmem ? "secretmem" : "anonymous", u(page.secret_bytes));
    if (n < 0 || len == 0) return 0;
    JsonOut out{buf, len, static_cast<std::size_t>(n) < len ? static_cast<std::size_t>(n) : len - 1};
    // The rows of the slots with an owner (the others are zero).
    const StatsRuleRow *owned[kStatsSlots] = {};
    for (unsigned s = 0; rows && s < kStatsSlots; ++s)
        if (page.slots[s].owner.load(std::memory_order_relaxed) != 0) owned[s] = rows + s;
    const unsigned entries = stats_rule_entries(page);
    for (unsigned i = 0; i < entries; ++i) {
        const StatsRuleInfo &info = page.rule_info[i];
        const bool other = i == kStatsOtherRules && page.rules > kStatsRules;
        const bool caller = !other && (info.flags & kStatsRuleCaller);
        const StatsRuleFigures f = stats_rule_figures(page, i, owned, kStatsSlots);
        out.text(i ? ", {\"name\": " : "{\"name\": ");
        if (other) {
            char covers[96];
            std::snprintf(covers, sizeof covers, "rules %u to %u (counted together)", kStatsRules, page.rules);
            out.text("\"other rules\", \"covers\": ");
            out.str(covers, sizeof covers);
        } else {
            out.str(info.name, sizeof info.name);
            if (info.flags & kStatsRuleTruncated) out.text(", \"truncated\": true");
            if (caller) {
                out.text(", \"caller\": ");
                out.str(info.caller, sizeof info.caller);
            }
        }
        out.num("matched_allocations", f.matches);
        out.num("live_bytes", f.live_bytes);
        out.num("peak_bytes", f.peak_bytes);
        if (caller) out.num("consulted", f.consulted);
        out.text("}");
    }
    out.text("], \"allocator_before_shim\": ");
    if (page.allocator_before[0]) out.str(page.allocator_before, sizeof page.allocator_before);
    else out.text("null");
    out.text("}\n");
    return out.used;
}

}  // namespace mlshim
