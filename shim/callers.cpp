#include "callers.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unwind.h>

#include <algorithm>
#include <initializer_list>
#include <atomic>
#include <cstring>

#include "config.hpp"
#include "elf.hpp"
#include "fatal.hpp"
#include "runtime.hpp"
#include "seqlock.hpp"
#include "unwind.hpp"

namespace mlshim {

namespace {

struct Range {
    std::uintptr_t lo, hi;  // [lo, hi)
    bool operator<(const Range &o) const { return lo < o.lo; }
};

// Immutable once published, but for `seen`, a cache of lookups. Replaced (and the old one
// kept: readers may still hold it) when the set of loaded objects changes.
struct Index {
    std::vector<std::vector<Range>> symbol_ranges;  // per condition
    std::vector<std::vector<Range>> module_ranges;  // per condition
    std::vector<Range> objects;                     // every loaded object's segments
    unsigned long long adds = 0, subs = 0;          // dl_iterate_phdr's load/unload counters
    // Return addresses found in `objects` before, direct-mapped: most allocations come
    // from a few call chains, and one load is cheaper than a binary search per frame.
    static constexpr unsigned kSeenBits = 10;
    mutable std::atomic<std::uintptr_t> seen[1u << kSeenBits] = {};

    bool indexed(std::uintptr_t pc) const noexcept;
};

// Made by callers_init. The shim's constructor runs before C++ dynamic initialisers, so
// every global here must be constant-initialised: no std::vector or std::string at
// namespace scope.
struct ObjectIndex;
struct State {
    std::vector<CallerCondition> conditions;
    std::vector<char> reported;  // per condition: "matches nothing yet" said
    std::vector<ObjectIndex> objects;  // what each loaded object adds, under g_build_lock
    unsigned long long objects_read = 0;  // objects whose files were read, ever
};
State *g_state = nullptr;
std::atomic<const Index *> g_index{nullptr};
std::atomic<bool> g_changed{false};
pthread_mutex_t g_build_lock = PTHREAD_MUTEX_INITIALIZER;
void (*g_warn)(const char *) = nullptr;
// Frames of the shim itself between the unwinder and the allocation's caller: match_callers,
// the interposed function and, for calloc, posix_memalign and realloc(NULL, n), its out of
// line path (hooks.cpp). When there are more (a helper that was not inlined, settle), the
// unwind is repeated with room for kShimFramesMore.
constexpr unsigned kShimFrames = 3;
constexpr unsigned kShimFramesMore = 8;
unsigned g_unwind_depth = 1;
// Per condition, how deep its symbol and module conditions look (0: no such condition): what
// match_callers reads of a condition, in one place.
struct Depths {
    unsigned symbol, module;
};
const Depths *g_depths = nullptr;

void sort_merge(std::vector<Range> &v) {
    std::sort(v.begin(), v.end());
    std::size_t out = 0;
    for (const Range &r : v) {
        if (out && r.lo <= v[out - 1].hi) v[out - 1].hi = std::max(v[out - 1].hi, r.hi);
        else v[out++] = r;
    }
    v.resize(out);
}

// Binary search without branches on the data (sorted, non-overlapping ranges): it runs for
// every frame of every checked allocation, where mispredicted branches would cost most.
__attribute__((always_inline)) inline bool contains(const std::vector<Range> &v, std::uintptr_t pc) noexcept {
    std::size_t n = v.size();
    if (n == 0) return false;
    const Range *base = v.data();
    while (n > 1) {
        const std::size_t half = n / 2;
        base = base[half].lo <= pc ? base + half : base;
        n -= half;
    }
    return base->lo <= pc && pc < base->hi;
}

bool Index::indexed(std::uintptr_t pc) const noexcept {
    std::atomic<std::uintptr_t> &slot = seen[(pc * 0x9E3779B97F4A7C15ull) >> (64 - kSeenBits)];
    if (slot.load(std::memory_order_relaxed) == pc) return true;
    if (!contains(objects, pc)) return false;
    slot.store(pc, std::memory_order_relaxed);
    return true;
}

// ---- loaded objects ----------------------------------------------------------------------

struct Object {
    std::string path;
    std::uintptr_t bias;
    std::vector<Range> segments;  // PT_LOAD
    std::vector<Range> code;      // PT_LOAD with PF_X
};

struct Collected {
    std::vector<Object> objects;
    unsigned long long adds = 0, subs = 0;
};

bool has_counters(std::size_t size) {
    return size >= offsetof(dl_phdr_info, dlpi_subs) + sizeof(dl_phdr_info::dlpi_subs);
}

int collect_object(dl_phdr_info *info, std::size_t size, void *arg) {
    auto *c = static_cast<Collected *>(arg);
    if (has_counters(size)) {
        c->adds = info->dlpi_adds;
        c->subs = info->dlpi_subs;
    }
    Object o;
    o.path = info->dlpi_name ? info->dlpi_name : "";
    o.bias = info->dlpi_addr;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr) &ph = info->dlpi_phdr[i];
        if (ph.p_type != PT_LOAD) continue;
        Range r{o.bias + ph.p_vaddr, o.bias + ph.p_vaddr + ph.p_memsz};
        o.segments.push_back(r);
        if (ph.p_flags & PF_X) o.code.push_back(r);
    }
    if (!o.segments.empty()) c->objects.push_back(std::move(o));
    return 0;
}

int read_counters(dl_phdr_info *info, std::size_t size, void *arg) {
    auto *c = static_cast<Collected *>(arg);
    if (has_counters(size)) {
        c->adds = info->dlpi_adds;
        c->subs = info->dlpi_subs;
    }
    return 1;  // the counters are global: the first object is enough
}

}  // namespace

bool module_matches(const std::vector<std::string> &globs, const std::string &path, const std::string &soname) {
    std::size_t slash = path.rfind('/');
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    for (const std::string &glob : globs)
        if (glob_match(glob.c_str(), path.c_str()) || glob_match(glob.c_str(), base.c_str()) ||
            (!soname.empty() && glob_match(glob.c_str(), soname.c_str())))
            return true;
    return false;
}

std::string quoted_globs(const std::vector<std::string> &globs) {
    std::string out;
    for (std::size_t i = 0; i < globs.size(); ++i) out += (i ? " or \"" : "\"") + globs[i] + "\"";
    return out;
}

namespace {

// What one loaded object adds to the index: read from its file once, while it stays loaded.
struct ObjectIndex {
    std::string path;
    std::uintptr_t bias;
    std::vector<Range> segments;
    std::vector<std::vector<Range>> symbol_ranges;  // per condition
    std::vector<std::vector<Range>> module_ranges;  // per condition
};

ObjectIndex read_object(Object &o, const std::vector<CallerCondition> &conditions, bool want_symbols) {
    ObjectIndex oi{o.path, o.bias, std::move(o.segments), {}, {}};
    const std::size_t n = conditions.size();
    oi.symbol_ranges.resize(n);
    oi.module_ranges.resize(n);
    // The main executable has an empty name; the vDSO has no file.
    std::string path = o.path.empty() ? self_exe() : o.path;
    ElfView elf(path);
    std::string soname = elf.ok() ? elf.soname() : std::string();
    for (std::size_t i = 0; i < n; ++i) {
        const CallerCondition &cond = conditions[i];
        if (!cond.module.empty() && module_matches(cond.module, path, soname))
            oi.module_ranges[i] = o.code;
    }
    if (want_symbols && elf.ok())
        elf.each_function([&](const char *name, std::uintptr_t value, std::size_t size) {
            for (std::size_t i = 0; i < n; ++i) {
                const std::string &glob = conditions[i].symbol;
                if (!glob.empty() && glob_match(glob.c_str(), name))
                    oi.symbol_ranges[i].push_back(Range{o.bias + value, o.bias + value + size});
            }
        });
    return oi;
}

// An index of the objects loaded now. Objects indexed before (same name, same load address)
// are reused as they are; only objects loaded since are read. pre: g_build_lock held.
Index *build_index() {
    Collected c;
    dl_iterate_phdr(collect_object, &c);
    const std::vector<CallerCondition> &conditions = g_state->conditions;
    const std::size_t n = conditions.size();
    bool want_symbols = false;
    for (const auto &cond : conditions) want_symbols |= !cond.symbol.empty();

    std::vector<ObjectIndex> &known = g_state->objects;
    std::vector<char> kept(known.size(), 0);
    std::vector<ObjectIndex> now;
    now.reserve(c.objects.size());
    unsigned read = 0;
    for (Object &o : c.objects) {
        std::size_t k = 0;
        while (k < known.size() && (kept[k] || known[k].bias != o.bias || known[k].path != o.path)) ++k;
        if (k < known.size()) {
            kept[k] = 1;
            now.push_back(std::move(known[k]));
        } else {
            now.push_back(read_object(o, conditions, want_symbols));
            ++read;
        }
    }
    known.swap(now);
    g_state->objects_read += read;

    auto *idx = new Index();
    idx->adds = c.adds;
    idx->subs = c.subs;
    idx->symbol_ranges.resize(n);
    idx->module_ranges.resize(n);
    for (const ObjectIndex &oi : known) {
        idx->objects.insert(idx->objects.end(), oi.segments.begin(), oi.segments.end());
        for (std::size_t i = 0; i < n; ++i) {
            idx->symbol_ranges[i].insert(idx->symbol_ranges[i].end(), oi.symbol_ranges[i].begin(),
                                         oi.symbol_ranges[i].end());
            idx->module_ranges[i].insert(idx->module_ranges[i].end(), oi.module_ranges[i].begin(),
                                         oi.module_ranges[i].end());
        }
    }
    log_msg(LogLevel::debug, "caller index: %zu loaded object(s), %u read", known.size(), read);
    sort_merge(idx->objects);
    for (std::size_t i = 0; i < n; ++i) {
        sort_merge(idx->symbol_ranges[i]);
        sort_merge(idx->module_ranges[i]);
        const CallerCondition &cond = conditions[i];
        bool empty = (!cond.symbol.empty() && idx->symbol_ranges[i].empty()) ||
                     (!cond.module.empty() && idx->module_ranges[i].empty());
        if (empty && !g_state->reported[i] && g_warn) {
            g_state->reported[i] = 1;
            std::string what = !cond.symbol.empty() && idx->symbol_ranges[i].empty()
                                   ? "no loaded function matches \"" + cond.symbol + "\""
                                   : "no loaded object matches " + quoted_globs(cond.module);
            g_warn(("rule \"" + cond.name + "\": " + what + " yet (it may be loaded later)").c_str());
        }
    }
    return idx;
}

// Re-indexes when the loaded objects changed since `seen` (the loader's load and unload
// counters moved). Returns the index in force. It runs inside the program's malloc and reads
// the new objects' files (open, read: cancellation points), with cancellation off (CancelOff).
const Index *refresh(const Index *seen) noexcept {
    CancelOff no_cancel;
    pthread_mutex_lock(&g_build_lock);
    const Index *now = g_index.load(std::memory_order_acquire);
    if (now == seen) {
        g_changed.store(false, std::memory_order_relaxed);
        Collected c;
        dl_iterate_phdr(read_counters, &c);
        if (c.adds != now->adds || c.subs != now->subs) {
            try {
                now = build_index();
            } catch (...) {
                fatal("out of memory while indexing the loaded objects for caller rules");
            }
            g_index.store(now, std::memory_order_release);
        }
    }
    pthread_mutex_unlock(&g_build_lock);
    return now;
}

struct Trace {
    void **buf;
    int n, max;
};

_Unwind_Reason_Code trace_frame(_Unwind_Context *ctx, void *arg) {
    auto *t = static_cast<Trace *>(arg);
    if (t->n >= t->max) return _URC_END_OF_STACK;
    t->buf[t->n++] = reinterpret_cast<void *>(_Unwind_GetIP(ctx));
    return _URC_NO_REASON;
}

// The return addresses of the innermost `max` frames, from the function this is inlined
// into outwards. libgcc's unwinder, linked into the shim (static libgcc_eh, hidden): it needs
// no other library, reads each object's .eh_frame_hdr and never allocates.
__attribute__((always_inline)) inline int backtrace_into(void **buf, int max) {
    Trace t{buf, 0, max};
    _Unwind_Backtrace(trace_frame, &t);
    return t.n;
}

// Unwinds the stack into `frames` with libgcc, from the allocation's depth-1 caller (return
// address `ra`) on.
__attribute__((always_inline)) inline void unwind_slow(const void *ra, CallerFrames &frames) {
    frames.n = 0;
    void *buf[kMaxCallerDepth + kShimFrames + kShimFramesMore];
    for (unsigned extra : {kShimFrames, kShimFrames + kShimFramesMore}) {
        const int want = static_cast<int>(g_unwind_depth + extra);
        const int got = backtrace_into(buf, want);
        // Skip the shim's own frames: the stack proper starts at the depth-1 return address.
        int start = 0;
        while (start < got && buf[start] != ra) ++start;
        // Found with every frame the rules look at, or the stack ends before them: done.
        // Otherwise there were more shim frames than expected: unwind again, deeper.
        if (start < got && (got - start >= static_cast<int>(g_unwind_depth) || got < want)) {
            for (int k = start; k < got && frames.n < kMaxCallerDepth; ++k)
                frames.pc[frames.n++] = reinterpret_cast<std::uintptr_t>(buf[k]);
            return;
        }
    }
}

// Unwinds the stack into `frames`, from the allocation's depth-1 caller (return address
// `ra`) on; a replayed walk only names itself (frames.pending). Always inlined: every frame
// between here and the interposed function costs.
__attribute__((always_inline)) inline void unwind(const void *ra, CallerFrames &frames) {
    frames.unwound = true;
    bool copied;
    const int fast = fast_backtrace(reinterpret_cast<std::uintptr_t>(ra), frames.pc, static_cast<int>(g_unwind_depth), &frames.walk, &copied);
    if (fast >= 0) {
        frames.n = static_cast<unsigned>(fast);
        frames.pending = !copied;
        return;
    }
    unwind_slow(ra, frames);
}

// The replayed walk's return addresses; its entry rewritten since (another thread kept
// another walk there): libgcc's, under no name.
__attribute__((noinline)) void settle(const void *ra, CallerFrames &frames) {
    frames.pending = false;
    if (fast_backtrace_copy(frames.walk, frames.pc, static_cast<int>(frames.n))) return;
    frames.walk = 0;
    unwind_slow(ra, frames);
}

// pre: depth 1, or frames unwound.
__attribute__((always_inline)) inline std::uintptr_t frame_at(unsigned depth, const void *ra, CallerFrames &frames) {
    if (depth == 1) return reinterpret_cast<std::uintptr_t>(ra);
    if (frames.pending) settle(ra, frames);
    return depth <= frames.n ? frames.pc[depth - 1] : 0;
}

// ---- answers for walks seen before ---------------------------------------------------------
//
// A kept walk (fast_backtrace's `walk`) that is replayed has the same frames, so with the same
// index it gets the same answer from in_frames: the answer is kept per walk table entry, for
// the first kDecidedConditions conditions, each kind (symbol, module) a bit. Most checked
// allocations of a server come from a few call chains: a replayed walk is then decided without
// a range search per frame. Under a sequence count per entry, like the walks themselves.
constexpr unsigned kDecidedConditions = 16;
struct Decided {
    std::atomic<std::uint32_t> seq{0};  // odd while a writer fills it
    std::atomic<std::uint64_t> walk{0};
    std::atomic<const Index *> idx{nullptr};
    std::atomic<std::uint64_t> bits{0};  // bit k: answer k is known; bit 32 + k: the answer
};
Decided g_decided[1u << kFastBacktraceWalkBits];  // one per entry of the kept walks' table
// Per thread: a shared count would move its cache line between cores on every decision.
__thread unsigned long long t_decided_reused __attribute__((tls_model("initial-exec")));

enum Kind : unsigned { kSymbol = 0, kModule = 1 };
inline Decided &decided_for(std::uint64_t walk) { return g_decided[walk & ((1u << kFastBacktraceWalkBits) - 1)]; }
inline unsigned answer_bit(Kind kind, unsigned id) { return 2 * id + kind; }

// The answer kept for (walk, idx, kind, id): 0 or 1, or -1 when none is.
inline int decided(std::uint64_t walk, const Index *idx, Kind kind, unsigned id) {
    if (!walk || id >= kDecidedConditions) return -1;
    const Decided &e = decided_for(walk);
    const std::uint32_t s1 = e.seq.load(std::memory_order_acquire);
    if (s1 & 1) return -1;
    const std::uint64_t w = e.walk.load(std::memory_order_relaxed), bits = e.bits.load(std::memory_order_relaxed);
    const Index *i = e.idx.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    const unsigned k = answer_bit(kind, id);
    if (e.seq.load(std::memory_order_relaxed) != s1 || w != walk || i != idx || !(bits >> k & 1)) return -1;
    ++t_decided_reused;
    return static_cast<int>(bits >> (32 + k) & 1);
}

// Keeps an answer; another writer at work on the entry: not kept.
void decide(std::uint64_t walk, const Index *idx, Kind kind, unsigned id, bool answer) {
    if (!walk || id >= kDecidedConditions) return;
    Decided &e = decided_for(walk);
    std::uint32_t s1;
    if (!seq_begin_write(e.seq, s1)) return;
    std::uint64_t bits = 0;
    if (e.walk.load(std::memory_order_relaxed) == walk && e.idx.load(std::memory_order_relaxed) == idx)
        bits = e.bits.load(std::memory_order_relaxed);
    const unsigned k = answer_bit(kind, id);
    bits = (bits & ~(std::uint64_t{1} << (32 + k))) | std::uint64_t{1} << k | static_cast<std::uint64_t>(answer) << (32 + k);
    e.walk.store(walk, std::memory_order_relaxed);
    e.idx.store(idx, std::memory_order_relaxed);
    e.bits.store(bits, std::memory_order_relaxed);
    seq_end_write(e.seq, s1);
}

// Does frame pc (a return address less one) lie in an object the index covers? Bit `bit` of
// frames.indexed remembers a yes for this allocation. A no means code was loaded since the
// index was built: `idx` is then refreshed, and `known` cleared (an answer worked out from
// this frame is not kept). Returns whether the refreshed index puts pc inside condition
// `id`'s ranges of `which`.
using RangesOf = const std::vector<std::vector<Range>> Index::*;
__attribute__((always_inline)) inline bool found_once_indexed(const Index *&idx, RangesOf which, unsigned id, std::uintptr_t pc,
                                                              std::uint64_t bit, CallerFrames &frames, bool &known) {
    if (frames.indexed & bit) return false;
    if (idx->indexed(pc)) {
        frames.indexed |= bit;
        return false;
    }
    known = false;
    const Index *before = idx;
    idx = refresh(idx);
    return idx != before && contains((idx->*which)[id], pc);
}

// Is one of the `depth` innermost callers inside condition `id`'s ranges of `kind`?
__attribute__((always_inline)) inline bool in_frames(const Index *&idx, Kind kind, unsigned id, unsigned depth, const void *ra,
                                                     CallerFrames &frames) {
    const RangesOf which = kind == kModule ? &Index::module_ranges : &Index::symbol_ranges;
    bool known = true;  // every frame looked at lies in an indexed object: the answer may be kept
    // A walk another condition made names the whole chain, its first frame included: an answer
    // kept for it decides this condition before any frame is searched.
    if (depth >= 2 && frames.unwound) {
        const int kept = decided(frames.walk, idx, kind, id);
        if (kept >= 0) return kept;
    }
    // The depth-1 caller needs no walk.
    const std::uintptr_t pc1 = reinterpret_cast<std::uintptr_t>(ra) - 1;  // a return address may be one past its function's end
    if (contains((idx->*which)[id], pc1)) return true;
    if (depth >= 2 && !frames.unwound) {
        unwind(ra, frames);
        // A kept answer was worked out with every frame of the walk indexed, the first too.
        const int kept = decided(frames.walk, idx, kind, id);
        if (kept >= 0) return kept;
    }
    if (found_once_indexed(idx, which, id, pc1, 1, frames, known)) return true;
    bool answer = false;
    for (unsigned d = 2; d <= depth; ++d) {
        std::uintptr_t pc = frame_at(d, ra, frames);
        if (!pc) break;
        --pc;
        if (contains((idx->*which)[id], pc)) {
            answer = true;
            break;
        }
        if (found_once_indexed(idx, which, id, pc, std::uint64_t{1} << (d - 1), frames, known)) return true;
    }
    if (depth >= 2 && known) decide(frames.walk, idx, kind, id, answer);
    return answer;
}

}  // namespace

std::string callers_init(const std::vector<CallerCondition> &conditions, void (*warn)(const char *)) {
    g_state = new State{conditions, std::vector<char>(conditions.size(), 0), {}, 0};
    g_warn = warn;
    g_unwind_depth = 1;
    auto *depths = new Depths[conditions.size()];
    for (std::size_t i = 0; i < conditions.size(); ++i) {
        const CallerCondition &c = conditions[i];
        depths[i] = {c.symbol.empty() ? 0 : c.symbol_depth, c.module.empty() ? 0 : c.module_depth};
        g_unwind_depth = std::max({g_unwind_depth, depths[i].symbol, depths[i].module});
    }
    g_depths = depths;
    if (g_unwind_depth > 1) {
        void *warm[kMaxCallerDepth + kShimFrames];
        backtrace_into(warm, static_cast<int>(g_unwind_depth + kShimFrames));  // resolves what it uses once
    }
    g_index.store(build_index(), std::memory_order_release);
    if (g_unwind_depth > 1) fast_backtrace_share();  // without it, each fork child learns alone
    return std::string();
}

int match_callers(std::size_t n, const void *ra, unsigned from) noexcept {
    BusyScope busy;  // the unwinder and the indexer allocate: those pass through
    const Index *idx = g_index.load(std::memory_order_acquire);
    if (!idx) return -1;
    if (g_changed.load(std::memory_order_relaxed)) idx = refresh(idx);
    CallerFrames frames;
    for (unsigned i = from; i < g_nrules; ++i) {
        const SizeRule &r = g_rules[i];
        if (n < r.min || n > r.max) continue;
        if (r.caller < 0) return static_cast<int>(i);
        g_arena.count_consulted(stats_rule_index(i));
        const auto id = static_cast<unsigned>(r.caller);
        const Depths &c = g_depths[id];
        if (c.symbol && !in_frames(idx, kSymbol, id, c.symbol, ra, frames)) continue;
        if (c.module && !in_frames(idx, kModule, id, c.module, ra, frames)) continue;
        return static_cast<int>(i);
    }
    return -1;
}

void callers_prefork() noexcept { pthread_mutex_lock(&g_build_lock); }
void callers_postfork() noexcept { pthread_mutex_unlock(&g_build_lock); }
void callers_postfork_child() noexcept { pthread_mutex_init(&g_build_lock, nullptr); }

void callers_objects_changed() noexcept {
    fast_backtrace_forget();
    g_changed.store(true, std::memory_order_relaxed);
}

unsigned long long callers_decisions_reused() noexcept { return t_decided_reused; }

unsigned long long callers_objects_read() noexcept {
    if (!g_state) return 0;
    pthread_mutex_lock(&g_build_lock);
    unsigned long long n = g_state->objects_read;
    pthread_mutex_unlock(&g_build_lock);
    return n;
}

}  // namespace mlshim
