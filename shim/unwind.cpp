#include "unwind.hpp"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <new>

#include <sys/mman.h>

#include "fork_child.hpp"
#include "seqlock.hpp"

namespace mlshim {

#if defined(__x86_64__)

namespace {

// libgcc's lookup of the frame description entry covering pc (linked into the shim with the
// static libgcc_eh, hidden). bases.func is the start of the function it describes.
struct EhBases {
    void *tbase, *dbase, *func;
};
extern "C" const void *_Unwind_Find_FDE(void *pc, EhBases *bases);

// DWARF register numbers on x86_64.
constexpr unsigned kRegFp = 6;   // rbp
constexpr unsigned kRegSp = 7;   // rsp
constexpr unsigned kRegRa = 16;  // the return address column

// How to find a frame's caller, packed into 64 bits:
//   bits 0-31   CFA offset (signed)
//   bits 32-47  where the caller's frame pointer was saved, relative to the CFA (signed;
//               0: not saved, the register still holds it)
//   bit  48     the CFA is based on the frame pointer (else on the stack pointer)
//   bit  49     the stack ends here (the return address is undefined)
//   bit  50     not walkable here (libgcc must unwind)
// The return address is always at CFA - 8 (checked when the rule is made).
constexpr std::uint64_t kOnFp = 1ull << 48;
constexpr std::uint64_t kEnd = 1ull << 49;
constexpr std::uint64_t kSlow = 1ull << 50;

std::uint64_t pack(std::int32_t cfa_off, std::int16_t fp_off, bool on_fp) {
    return static_cast<std::uint32_t>(cfa_off) | static_cast<std::uint64_t>(static_cast<std::uint16_t>(fp_off)) << 32 |
           (on_fp ? kOnFp : 0);
}

// ---- reading .eh_frame ---------------------------------------------------------------------

struct Reader {
    const unsigned char *p, *end;
    bool ok = true;

    bool has(std::size_t n) {
        if (static_cast<std::size_t>(end - p) < n) ok = false;
        return ok;
    }
    std::uint8_t u8() { return has(1) ? *p++ : 0; }
    template <typename T> T fixed() {
        T v{};
        if (has(sizeof v)) {
            std::memcpy(&v, p, sizeof v);
            p += sizeof v;
        }
        return v;
    }
    std::uint64_t uleb() {
        std::uint64_t v = 0;
        for (unsigned shift = 0; has(1); shift += 7) {
            std::uint8_t b = *p++;
            if (shift < 64) v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
            if (!(b & 0x80)) return v;
        }
        return 0;
    }
    std::int64_t sleb() {
        std::int64_t v = 0;
        unsigned shift = 0;
        while (has(1)) {
            std::uint8_t b = *p++;
            if (shift < 64) v |= static_cast<std::int64_t>(static_cast<std::uint64_t>(b & 0x7f) << shift);
            shift += 7;
            if (!(b & 0x80)) {
                if (shift < 64 && (b & 0x40)) v |= static_cast<std::int64_t>(~std::uint64_t{0} << shift);  // sign
                return v;
            }
        }
        return 0;
    }
    void skip(std::size_t n) {
        if (has(n)) p += n;
    }
    // Skips a pointer in encoding `enc` (DW_EH_PE_*). Only the value's size matters here.
    void skip_encoded(std::uint8_t enc) {
        if (enc == 0xff) return;  // DW_EH_PE_omit
        if ((enc & 0x70) == 0x50) {  // DW_EH_PE_aligned: not emitted for .eh_frame
            ok = false;
            return;
        }
        switch (enc & 0x0f) {
        case 0x00: skip(8); break;           // absptr
        case 0x01: uleb(); break;            // uleb128
        case 0x09: sleb(); break;            // sleb128
        case 0x02: case 0x0a: skip(2); break;
        case 0x03: case 0x0b: skip(4); break;
        case 0x04: case 0x0c: skip(8); break;
        default: ok = false;
        }
    }
};

// One register's rule while the CFA program runs.
struct RegRule {
    enum Kind : std::uint8_t { same, offset, undefined, other } kind = same;
    std::int64_t off = 0;
};

struct Row {
    unsigned cfa_reg = kRegSp;
    std::int64_t cfa_off = 8;
    bool cfa_ok = true;  // false: a CFA expression
    RegRule fp, ra;
};

struct Cie {
    std::uint64_t code_align = 1;
    std::int64_t data_align = -8;
    std::uint64_t ra_reg = kRegRa;
    std::uint8_t fde_enc = 0;  // DW_EH_PE_absptr
    bool has_aug_data = false;
    bool signal = false;
    const unsigned char *insns = nullptr, *end = nullptr;
};

bool read_cie(const unsigned char *at, Cie &cie) {
    std::uint32_t len32;
    std::memcpy(&len32, at, 4);
    if (len32 == 0 || len32 == 0xffffffffu) return false;  // no 64-bit DWARF in .eh_frame
    Reader r{at + 4, at + 4 + len32};
    if (r.fixed<std::uint32_t>() != 0) return false;  // not a CIE
    std::uint8_t version = r.u8();
    if (version != 1 && version != 3) return false;
    const char *aug = reinterpret_cast<const char *>(r.p);
    std::size_t aug_len = strnlen(aug, static_cast<std::size_t>(r.end - r.p));
    r.skip(aug_len + 1);
    if (aug[0] != '\0' && aug[0] != 'z') return false;  // "eh" and other ancient forms
    cie.code_align = r.uleb();
    cie.data_align = r.sleb();
    cie.ra_reg = version == 1 ? r.u8() : r.uleb();
    if (aug[0] == 'z') {
        cie.has_aug_data = true;
        std::uint64_t n = r.uleb();
        if (!r.has(n)) return false;
        Reader a{r.p, r.p + n};
        for (const char *c = aug + 1; *c && a.ok; ++c) {
            if (*c == 'R') cie.fde_enc = a.u8();
            else if (*c == 'P') a.skip_encoded(a.u8());
            else if (*c == 'L') a.u8();
            else if (*c == 'S') cie.signal = true;
            else if (*c == 'B' || *c == 'G') continue;
            else return false;
        }
        if (!a.ok) return false;
        r.p += n;
    }
    cie.insns = r.p;
    cie.end = r.end;
    return r.ok;
}

// Runs a CFA program up to (and including) the rows at addresses <= target, from `loc`.
// Returns false when the program holds something this walker does not follow.
bool run_program(const unsigned char *p, const unsigned char *end, const Cie &cie, std::uintptr_t loc,
                 std::uintptr_t target, Row &row, const Row &initial) {
    constexpr unsigned kStates = 8;
    Row stack[kStates];
    unsigned depth = 0;
    Reader r{p, end};
    auto reg_rule = [&](std::uint64_t reg) -> RegRule * {
        if (reg == kRegFp) return &row.fp;
        if (reg == cie.ra_reg) return &row.ra;
        return nullptr;
    };
    auto set_offset = [&](std::uint64_t reg, std::int64_t off) {
        if (RegRule *rr = reg_rule(reg)) *rr = RegRule{RegRule::offset, off};
    };
    auto set_kind = [&](std::uint64_t reg, RegRule::Kind k) {
        if (RegRule *rr = reg_rule(reg)) *rr = RegRule{k, 0};
    };
    auto restore = [&](std::uint64_t reg) {
        if (reg == kRegFp) row.fp = initial.fp;
        else if (reg == cie.ra_reg) row.ra = initial.ra;
    };
    while (r.p < r.end && r.ok) {
        std::uint8_t op = r.u8();
        std::uint64_t advance = 0;
        switch (op & 0xc0) {
        case 0x40: advance = (op & 0x3f) * cie.code_align; break;
        case 0x80: set_offset(op & 0x3f, static_cast<std::int64_t>(r.uleb()) * cie.data_align); continue;
        case 0xc0: restore(op & 0x3f); continue;
        default: break;
        }
        if (!advance) switch (op) {
            case 0x00: continue;  // nop
            case 0x02: advance = r.u8() * cie.code_align; break;
            case 0x03: advance = r.fixed<std::uint16_t>() * cie.code_align; break;
            case 0x04: advance = r.fixed<std::uint32_t>() * cie.code_align; break;
            case 0x05: {  // offset_extended
                std::uint64_t reg = r.uleb();
                set_offset(reg, static_cast<std::int64_t>(r.uleb()) * cie.data_align);
                continue;
            }
            case 0x06: restore(r.uleb()); continue;
            case 0x07: set_kind(r.uleb(), RegRule::undefined); continue;
            case 0x08: set_kind(r.uleb(), RegRule::same); continue;
            case 0x09: set_kind(r.uleb(), RegRule::other); r.uleb(); continue;  // register
            case 0x0a:  // remember_state
                if (depth == kStates) return false;
                stack[depth++] = row;
                continue;
            case 0x0b:  // restore_state: the CFA too, as GCC's epilogues expect
                if (depth == 0) return false;
                row = stack[--depth];
                continue;
            case 0x0c: row.cfa_reg = static_cast<unsigned>(r.uleb()); row.cfa_off = static_cast<std::int64_t>(r.uleb()); row.cfa_ok = true; continue;
            case 0x0d: row.cfa_reg = static_cast<unsigned>(r.uleb()); row.cfa_ok = true; continue;
            case 0x0e: row.cfa_off = static_cast<std::int64_t>(r.uleb()); continue;
            case 0x0f: row.cfa_ok = false; r.skip(r.uleb()); continue;  // def_cfa_expression
            case 0x10: case 0x16: {  // expression, val_expression
                set_kind(r.uleb(), RegRule::other);
                r.skip(r.uleb());
                continue;
            }
            case 0x11: {  // offset_extended_sf
                std::uint64_t reg = r.uleb();
                set_offset(reg, r.sleb() * cie.data_align);
                continue;
            }
            case 0x12: row.cfa_reg = static_cast<unsigned>(r.uleb()); row.cfa_off = r.sleb() * cie.data_align; row.cfa_ok = true; continue;
            case 0x13: row.cfa_off = r.sleb() * cie.data_align; continue;
            case 0x14: set_kind(r.uleb(), RegRule::other); r.uleb(); continue;  // val_offset
            case 0x15: set_kind(r.uleb(), RegRule::other); r.sleb(); continue;  // val_offset_sf
            case 0x2e: r.uleb(); continue;                                        // GNU_args_size
            case 0x2f: {  // GNU_negative_offset_extended
                std::uint64_t reg = r.uleb();
                set_offset(reg, -static_cast<std::int64_t>(r.uleb()) * cie.data_align);
                continue;
            }
            default: return false;  // set_loc, vendor extensions
            }
        loc += advance;
        if (loc > target) return true;
    }
    return r.ok;
}

// The rule for the frame whose code is at pc (a return address: its call is at pc - 1).
std::uint64_t make_rule(std::uintptr_t pc) {
    EhBases bases{};
    const unsigned char *fde = static_cast<const unsigned char *>(_Unwind_Find_FDE(reinterpret_cast<void *>(pc - 1), &bases));
    if (!fde) return kSlow;
    std::uint32_t len32, cie_off;
    std::memcpy(&len32, fde, 4);
    std::memcpy(&cie_off, fde + 4, 4);
    if (len32 == 0xffffffffu || cie_off == 0) return kSlow;
    Cie cie;
    if (!read_cie(fde + 4 - cie_off, cie) || cie.signal) return kSlow;
    Reader r{fde + 8, fde + 4 + len32};
    r.skip_encoded(cie.fde_enc);          // pc_begin: libgcc gave it as bases.func
    r.skip_encoded(cie.fde_enc & 0x0f);   // pc_range
    if (cie.has_aug_data) r.skip(r.uleb());
    if (!r.ok) return kSlow;
    const std::uintptr_t func = reinterpret_cast<std::uintptr_t>(bases.func);
    Row initial;
    initial.ra = RegRule{RegRule::undefined, 0};
    Row row = initial;
    if (!run_program(cie.insns, cie.end, cie, func, ~std::uintptr_t{0}, row, initial)) return kSlow;
    initial = row;
    if (!run_program(r.p, r.end, cie, func, pc - 1, row, initial)) return kSlow;

    if (row.ra.kind == RegRule::undefined) return kEnd;
    if (!row.cfa_ok || (row.cfa_reg != kRegSp && row.cfa_reg != kRegFp)) return kSlow;
    if (row.ra.kind != RegRule::offset || row.ra.off != -8) return kSlow;
    if (row.cfa_off < 8 || row.cfa_off > INT32_MAX) return kSlow;
    std::int64_t fp_off = 0;
    if (row.fp.kind == RegRule::offset) {
        fp_off = row.fp.off;
        if (fp_off == 0 || fp_off < INT16_MIN || fp_off > INT16_MAX) return kSlow;
    } else if (row.fp.kind != RegRule::same) {
        return kSlow;
    }
    return pack(static_cast<std::int32_t>(row.cfa_off), static_cast<std::int16_t>(fp_off), row.cfa_reg == kRegFp);
}

// ---- the cache -------------------------------------------------------------------------------

// Each return address has two slots, by two hashes: it is stored in the first unless that
// holds another rule of this generation, and looked up in both. (With one slot, two return
// addresses of the same hot call chain that hash alike would evict each other on every
// walk.) A slot is valid for the generation it was filled in.
struct Slot {
    std::atomic<std::uint32_t> seq{0};  // odd while a writer fills it
    std::atomic<std::uint32_t> gen{0};
    std::atomic<std::uint64_t> pc{0};
    std::atomic<std::uint64_t> rule{0};
};
constexpr unsigned kSlotBits = 12;
Slot g_slots[1u << kSlotBits];
std::atomic<std::uint32_t> g_gen{1};
std::atomic<unsigned long long> g_rules_made{0};
std::atomic<unsigned long long> g_fallbacks{0};
std::atomic<unsigned long long> g_walks{0};  // walks not replayed: counted without a locked add

inline Slot &first_slot(std::uintptr_t pc) { return g_slots[(pc * 0x9E3779B97F4A7C15ull) >> (64 - kSlotBits)]; }
inline Slot &second_slot(std::uintptr_t pc) { return g_slots[(pc * 0xC2B2AE3D27D4EB4Full) >> (64 - kSlotBits)]; }

inline bool read_slot(Slot &s, std::uintptr_t pc, std::uint32_t gen, std::uint64_t &rule) {
    std::uint32_t s1 = s.seq.load(std::memory_order_acquire);
    if (s1 & 1) return false;
    std::uint32_t g = s.gen.load(std::memory_order_relaxed);
    std::uint64_t k = s.pc.load(std::memory_order_relaxed);
    rule = s.rule.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    return s.seq.load(std::memory_order_relaxed) == s1 && k == pc && g == gen;
}

inline bool cached(std::uintptr_t pc, std::uint32_t gen, std::uint64_t &rule) {
    return read_slot(first_slot(pc), pc, gen, rule) || read_slot(second_slot(pc), pc, gen, rule);
}

void store(std::uintptr_t pc, std::uint32_t gen, std::uint64_t rule) {
    Slot *s = &first_slot(pc);
    if (s->gen.load(std::memory_order_relaxed) == gen && s->pc.load(std::memory_order_relaxed) != pc) s = &second_slot(pc);
    std::uint32_t s1;
    if (!seq_begin_write(s->seq, s1)) return;
    s->gen.store(gen, std::memory_order_relaxed);
    s->pc.store(pc, std::memory_order_relaxed);
    s->rule.store(rule, std::memory_order_relaxed);
    seq_end_write(s->seq, s1);
}

// ---- return addresses fork children had to learn ------------------------------------------
//
// A fork child starts with its parent's cache, but what it learns dies with it: every backend
// of a process-per-connection server (postgres) learns the same return addresses of its
// start-up and its TLS handshake again, reading .eh_frame and copying the cache's pages. So a
// child posts each return address it made a rule for into a small ring shared with the process
// that made the ring (the one that read the config), and that process makes those rules itself
// on its next walks: its later children inherit them. Only addresses cross
// processes, never rules: the owner makes every rule from its own code and drops an address it
// has no call frame information for, so a child (a sandboxed one too) can cost its parent at
// most kHintLearn rule lookups per walk, and cannot make it walk by a wrong rule. A child made
// without the fork handlers (glibc's _Fork) stays an owner of its copy: it learns from the
// ring for itself, from its own code, and its parent learns fewer of the addresses.
constexpr unsigned kHintBits = 9;
constexpr unsigned kHintMask = (1u << kHintBits) - 1;
// The owner looks at the whole ring in a walk that finds addresses pending, and makes at most
// kHintLearn rules in it: a postgres postmaster walks a few times per connection, and with 64
// slots and 8 rules per walk its backends still made about 100 rules each after 8 connections;
// with these, none from the third connection on (callgrind, docs/performance.md).
constexpr unsigned kHintScan = 1u << kHintBits;
constexpr unsigned kHintLearn = 64;
struct Hints {
    std::atomic<std::uint64_t> posted{0};  // addresses ever posted
    std::atomic<std::uint64_t> pc[1u << kHintBits];
};
Hints *g_hints = nullptr;
// What a fork child's handler writes in the unwinder, side by side: each page of the shim's
// data that a child stores to first costs it a copy-on-write fault, a trap that a child
// which execs or exits at once pays for nothing.
// alignas(64): every walk reads it, and a line shared with g_walks, which each walk that is not
// replayed writes, would move between the cores of a multi-threaded program.
struct alignas(64) ForkChildState {
    bool hints_owner = false;  // this process made g_hints: it learns from the ring
    // Walks left that a fork child does not keep (keep(), below): any thread's count off it.
    std::atomic<unsigned> walks_unkept{0};
};
ForkChildState g_child;
std::atomic<std::uint64_t> g_taken{0};   // owner: addresses it took from the ring
std::atomic<unsigned> g_hint_cursor{0};
std::atomic<unsigned long long> g_hints_learned{0};

inline unsigned hint_slot(std::uintptr_t pc) { return static_cast<unsigned>((pc * 0x9E3779B97F4A7C15ull) >> (64 - kHintBits)); }

// A child's: post pc in the first free slot of the kHintProbe from its own, unless one of them
// holds pc already (another child posted it). Probing keeps two addresses that hash alike both
// learned: with one slot each, a child that made 7 rules lost one in about 4% of runs.
constexpr unsigned kHintProbe = 8;
void post_hint(std::uintptr_t pc) {
    const unsigned h = hint_slot(pc);
    for (unsigned k = 0; k < kHintProbe; ++k) {
        std::uint64_t seen = 0;
        if (g_hints->pc[(h + k) & kHintMask].compare_exchange_strong(seen, pc, std::memory_order_relaxed)) {
            g_hints->posted.fetch_add(1, std::memory_order_release);
            return;
        }
        if (seen == pc) return;
    }
}

// Are there posted addresses the owner has not taken? One load and a compare per walk.
inline bool hints_pending() {
    return g_child.hints_owner && g_hints->posted.load(std::memory_order_acquire) > g_taken.load(std::memory_order_relaxed);
}

// The owner's: learns up to kHintLearn posted addresses from the next kHintScan slots.
__attribute__((noinline)) void learn_hints(std::uint32_t gen) {
    const unsigned from = g_hint_cursor.fetch_add(kHintScan, std::memory_order_relaxed);
    unsigned made = 0;
    for (unsigned i = 0; i < kHintScan && made < kHintLearn; ++i) {
        std::atomic<std::uint64_t> &slot = g_hints->pc[(from + i) & kHintMask];
        if (slot.load(std::memory_order_relaxed) == 0) continue;
        const std::uintptr_t pc = slot.exchange(0, std::memory_order_relaxed);
        if (!pc) continue;
        g_taken.fetch_add(1, std::memory_order_relaxed);
        std::uint64_t rule;
        if (cached(pc, gen, rule)) continue;
        rule = make_rule(pc);
        ++made;
        if (rule & kSlow) continue;  // no call frame information here: not the owner's code
        store(pc, gen, rule);
        g_hints_learned.fetch_add(1, std::memory_order_relaxed);
    }
}

__attribute__((noinline)) std::uint64_t rule_slow(std::uintptr_t pc, std::uint32_t gen) {
    std::uint64_t rule = make_rule(pc);
    g_rules_made.fetch_add(1, std::memory_order_relaxed);
    store(pc, gen, rule);
    if (g_hints && !g_child.hints_owner && !(rule & kSlow)) post_hint(pc);
    return rule;
}

// A word of the stack: the walk reads saved return addresses and frame pointers, which the
// sanitizers know nothing about.
__attribute__((no_sanitize_address)) inline std::uintptr_t stack_word(std::uintptr_t at) {
    return *reinterpret_cast<const std::uintptr_t *>(at);
}

// ---- walks seen before -----------------------------------------------------------------------
//
// A walk is a function of where it starts (the stack pointer, and the frame pointer when a rule
// uses the one it starts with), the cached rules (one generation) and the stack words it reads.
// So a walk is kept with the addresses and values of the words it read, and a walk that starts
// at the same place, in the same generation, finds the same words there, gives the same return
// addresses without looking a rule up: a few loads and compares per frame. Most allocations of
// a server come from a few call chains at the same stack depths. Kept in a table shared by all
// threads (their stacks differ, so do their keys), each entry under a sequence count like the
// rule cache's slots; a walk that reads more words than an entry holds is not kept.
constexpr unsigned kMemoBits = kFastBacktraceWalkBits;
constexpr unsigned kMemoWords = 48;  // 16 frames with a saved frame pointer each, and the shim's own
constexpr unsigned kMemoPcs = 16;

struct Memo {
    std::atomic<std::uint64_t> seq{0};  // odd while a writer fills it; never wraps: it names walks
    std::atomic<std::uint32_t> gen{0};  // 0: empty
    std::atomic<std::uintptr_t> sp{0}, fp{0}, from{0};
    std::atomic<std::uint32_t> shape{0};  // words | pcs << 8 | max << 16 | kMemoFp
    std::atomic<std::uint32_t> span{0};   // the largest of off: the walk read no word above sp + span
    struct Word {
        std::atomic<std::uint32_t> off{0};  // its address, above sp
        std::atomic<std::uintptr_t> was{0};
    };
    Word word[kMemoWords];  // side by side: a replay reads both
    std::atomic<std::uint8_t> pc_at[kMemoPcs] = {};  // the return addresses after `from`, among the words
};
constexpr std::uint32_t kMemoFp = 1u << 24;  // the walk used the frame pointer it started with
Memo g_memo[1u << kMemoBits];

// The two entries (ways) a walk may be kept in. `site`: fast_backtrace's return address, so
// that walks from two calls of it at the same stack pointer are kept side by side. Two walks
// with one place (a call chain that differs only further out, or a hash collision) are both
// kept, one in each way.
constexpr unsigned kMemoWays = 2;
inline Memo *memo_set(std::uintptr_t sp, std::uintptr_t from, std::uintptr_t site) {
    return g_memo + kMemoWays * (((sp ^ from ^ site * 0xff51afd7ed558ccdull) * 0x9E3779B97F4A7C15ull) >> (64 - kMemoBits + 1));
}
// Per set, the way the next walk that finds both taken is kept in: each in turn.
std::atomic<std::uint8_t> g_memo_turn[(1u << kMemoBits) / kMemoWays];

// Names the walk entry m holds while its sequence count is seq (see fast_backtrace's `walk`):
// the entry in the low kMemoBits, the count above. The count is even, and at least 2 once an
// entry holds a walk, so no name is 0; at one rewrite a nanosecond it would take centuries to
// come back to a name given before.
inline std::uint64_t walk_id(const Memo &m, std::uint64_t seq) {
    return seq << kMemoBits | static_cast<std::uint64_t>(&m - g_memo);
}

// What one walk read, while it runs. Without kRecord (a walk that will not be kept) it
// records nothing: the walk reads the same words and gives the same return addresses.
template <bool kRecord>
struct Trail {
    std::uintptr_t sp0;
    unsigned words = 0, pcs = 0;
    bool fits = true, fp_used = false;
    std::uint32_t off[kMemoWords];
    std::uintptr_t was[kMemoWords];
    std::uint8_t pc_at[kMemoPcs];

    void note(std::uintptr_t at, std::uintptr_t v) {
        if (!kRecord) return;
        if (words < kMemoWords && at - sp0 <= UINT32_MAX) {
            off[words] = static_cast<std::uint32_t>(at - sp0);
            was[words++] = v;
        } else {
            fits = false;
        }
    }
    // The first return address is `from`, which a replay has without a word.
    void pc_is_from() {
        pc_at[0] = 0;  // unused
        pcs = 1;
    }
    void pc_is_last_word() {
        if (!kRecord) return;
        if (pcs < kMemoPcs && words) pc_at[pcs++] = static_cast<std::uint8_t>(words - 1);
        else fits = false;
    }
};

// The first n return addresses entry m holds, read under its sequence count (checked after).
inline void copy_pcs(const Memo &m, std::uintptr_t *pcs, unsigned n) {
    if (n) pcs[0] = m.from.load(std::memory_order_relaxed);
    for (unsigned k = 1; k < n; ++k) pcs[k] = m.word[m.pc_at[k].load(std::memory_order_relaxed)].was.load(std::memory_order_relaxed);
}

// The kept walk from (sp, fp, from), if the stack still holds the words it read: its return
// addresses into pcs, and how many. -1: none kept, or the stack differs.
// Without `copy`, pcs is left for fast_backtrace_copy.
__attribute__((no_sanitize_address, always_inline)) inline int replay_entry(Memo &m, std::uintptr_t sp, std::uintptr_t fp, std::uintptr_t from,
                                                                        std::uint32_t gen, int max, std::uintptr_t *pcs, std::uint64_t *walk, bool copy) {
    const std::uint64_t s1 = m.seq.load(std::memory_order_acquire);
    if ((s1 & 1) || m.gen.load(std::memory_order_relaxed) != gen || m.sp.load(std::memory_order_relaxed) != sp ||
        m.from.load(std::memory_order_relaxed) != from)
        return -1;
    const std::uint32_t shape = m.shape.load(std::memory_order_relaxed);
    if (((shape >> 16) & 0xff) != static_cast<std::uint32_t>(max)) return -1;
    if ((shape & kMemoFp) && m.fp.load(std::memory_order_relaxed) != fp) return -1;
    const unsigned words = shape & 0xff, n = (shape >> 8) & 0xff;
    const std::uint32_t span = m.span.load(std::memory_order_relaxed);
    // The header is this walk's own (another writer may start now): every word this thread
    // reads lies at most span above sp, in the stack its walk read, whatever offsets a
    // writer leaves in the entry meanwhile.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (m.seq.load(std::memory_order_relaxed) != s1) return -1;
    // Every word compared, the differences gathered: no branch per word. An offset past span
    // (a writer's, torn) is read at span instead; the sequence count below rejects the walk.
    std::uintptr_t differ = 0;
#pragma GCC unroll 2
    for (const Memo::Word *w = m.word, *end = m.word + words; w != end; ++w) {
        const std::uint32_t at = std::min(w->off.load(std::memory_order_relaxed), span);
        differ |= stack_word(sp + at) ^ w->was.load(std::memory_order_relaxed);
    }
    if (differ) return -1;
    if (copy) copy_pcs(m, pcs, n);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (m.seq.load(std::memory_order_relaxed) != s1) return -1;
    *walk = walk_id(m, s1);
    return static_cast<int>(n);
}

// replay_entry() in each way of the walk's place.
__attribute__((no_sanitize_address)) int replay(std::uintptr_t sp, std::uintptr_t fp, std::uintptr_t from, std::uint32_t gen,
                                                int max, std::uintptr_t *pcs, std::uint64_t *walk, bool copy, std::uintptr_t site) {
    Memo *set = memo_set(sp, from, site);
    const int n = replay_entry(set[0], sp, fp, from, gen, max, pcs, walk, copy);
    return n >= 0 ? n : replay_entry(set[1], sp, fp, from, gen, max, pcs, walk, copy);
}

// The way of `set` a new walk is kept in: one that holds no walk of this generation, else
// each in turn (read without the entries' sequence counts: a stale answer only picks the
// other way).
Memo &way_for_new_walk(Memo *set, std::uint32_t gen) {
    for (unsigned w = 0; w < kMemoWays; ++w)
        if (set[w].gen.load(std::memory_order_relaxed) != gen) return set[w];
    std::atomic<std::uint8_t> &turn = g_memo_turn[(set - g_memo) / kMemoWays];
    const unsigned w = turn.load(std::memory_order_relaxed) % kMemoWays;
    turn.store(static_cast<std::uint8_t>(w + 1), std::memory_order_relaxed);
    return set[w];
}

// A fork child keeps none of its first kFastBacktraceChildUnkept walks. Keeping
// writes an entry of the table, which the child shares with its parent copy-on-write: each
// page of it the child writes first costs a page copy, and a child that serves one
// connection (a postgres backend) walks most of its call chains once (its start-up, a TLS
// handshake). A child that lives on keeps its walks from then on.
//
// Returns the walk's name (fast_backtrace's `walk`), or 0: not kept. A walk that recorded
// nothing (one of a fork child's first walks) is counted off g_child.walks_unkept (relaxed:
// threads that count at once may lose a count, so that walks are kept a little later).
std::uint64_t keep(const Trail<false> &, std::uintptr_t, std::uintptr_t, std::uint32_t, int) {
    if (const unsigned left = g_child.walks_unkept.load(std::memory_order_relaxed))
        g_child.walks_unkept.store(left - 1, std::memory_order_relaxed);
    return 0;
}

std::uint64_t keep(const Trail<true> &t, std::uintptr_t fp, std::uintptr_t from, std::uint32_t gen, int max) {
    if (!t.fits || max > 0xff) return 0;
    // The first word read: fast_backtrace's return address.
    Memo &m = way_for_new_walk(memo_set(t.sp0, from, t.was[0]), gen);
    std::uint64_t s1;
    if (!seq_begin_write(m.seq, s1)) return 0;
    m.gen.store(gen, std::memory_order_relaxed);
    m.sp.store(t.sp0, std::memory_order_relaxed);
    m.fp.store(fp, std::memory_order_relaxed);
    m.from.store(from, std::memory_order_relaxed);
    m.shape.store(t.words | t.pcs << 8 | static_cast<std::uint32_t>(max) << 16 | (t.fp_used ? kMemoFp : 0), std::memory_order_relaxed);
    std::uint32_t span = 0;
    for (unsigned i = 0; i < t.words; ++i) {
        span = std::max(span, t.off[i]);
        m.word[i].off.store(t.off[i], std::memory_order_relaxed);
        m.word[i].was.store(t.was[i], std::memory_order_relaxed);
    }
    m.span.store(span, std::memory_order_relaxed);
    for (unsigned k = 0; k < t.pcs; ++k) m.pc_at[k].store(t.pc_at[k], std::memory_order_relaxed);
    seq_end_write(m.seq, s1);
    return walk_id(m, s1 + 2);
}

// The shim's own frames between here and the allocation's caller, at most.
constexpr int kMaxOwnFrames = 12;

// The walk from fast_backtrace's frame (pc, sp, fp as it found them: that frame stays where it
// is while this runs) out to `from` and on. Out of line, so that a replay needs no room for
// its trail. kRecord: the walk may be kept (not one of a fork child's first walks).
template <bool kRecord>
__attribute__((noinline)) int walk_from(std::uintptr_t pc, std::uintptr_t sp, std::uintptr_t fp, std::uintptr_t from,
                                        std::uintptr_t *pcs, int max, std::uint32_t gen, std::uint64_t *walk) {
    g_walks.store(g_walks.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    Trail<kRecord> trail;
    trail.sp0 = sp;
    const std::uintptr_t fp0 = fp;
    // Where fp was last read from, until a rule uses it (0: it holds what it started with, or
    // has been noted since). A saved register that no later frame uses is not a condition of
    // the walk: code built without frame pointers keeps data in it.
    std::uintptr_t fp_at = 0;
    int n = 0, own = 0;
    while (n < max) {
        std::uint64_t rule;
        if (!cached(pc, gen, rule)) rule = rule_slow(pc, gen);
        if (rule & kSlow) break;
        if (rule & kEnd) {
            if (n) {
                *walk = keep(trail, fp0, from, gen, max);
                return n;
            }
            break;  // `from` is not on this stack
        }
        if (rule & kOnFp) {
            // Only now does the walk depend on where fp came from: the start, or a saved word.
            if (fp_at) trail.note(fp_at, fp);
            else trail.fp_used = true;
            fp_at = 0;
        }
        const std::uintptr_t base = (rule & kOnFp) ? fp : sp;
        const std::uintptr_t cfa = base + static_cast<std::uintptr_t>(static_cast<std::int64_t>(static_cast<std::int32_t>(rule)));
        // A caller's frame lies above its callee's: anything else is not a stack to walk.
        if (cfa <= sp || (cfa & 7)) break;
        const auto fp_off = static_cast<std::int16_t>(rule >> 32);
        if (fp_off) {
            fp_at = cfa + static_cast<std::uintptr_t>(static_cast<std::int64_t>(fp_off));
            fp = stack_word(fp_at);
        }
        pc = stack_word(cfa - 8);
        sp = cfa;
        if (!n && pc == from) {
            // The depth-1 return address is not noted: the shim's own frames' words, noted
            // before it, fix where it lies, and a replay checks what it holds (`from`).
            pcs[n++] = pc;
            trail.pc_is_from();
            continue;
        }
        trail.note(cfa - 8, pc);
        if (!pc) {
            if (n) {
                *walk = keep(trail, fp0, from, gen, max);
                return n;
            }
            break;
        }
        if (n) {
            pcs[n++] = pc;
            trail.pc_is_last_word();
        } else if (++own > kMaxOwnFrames) {
            break;
        }
    }
    if (n == max) {
        *walk = keep(trail, fp0, from, gen, max);
        return n;
    }
    g_fallbacks.fetch_add(1, std::memory_order_relaxed);
    return -1;
}

}  // namespace

__attribute__((noinline)) int fast_backtrace(std::uintptr_t from, std::uintptr_t *pcs, int max, std::uint64_t *walk,
                                             bool *copied) noexcept {
    *walk = 0;
    if (copied) *copied = true;
    const std::uint32_t gen = g_gen.load(std::memory_order_acquire);
    if (hints_pending()) learn_hints(gen);
    std::uintptr_t pc, sp, fp;
    // Where this frame is: the rule for the address after the lea is the rule for here.
    asm volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2" : "=r"(pc), "=r"(sp), "=r"(fp));
    // A fork child's first walks look for no kept walk to replay: the table holds its
    // parent's, whose call chains from the same stack addresses a child seldom repeats (a
    // postgres backend replayed none of them), and each probe reads a page of the table,
    // which a child touches first at the cost of a trap (docs/performance.md).
    int n;
    if (__builtin_expect(g_child.walks_unkept.load(std::memory_order_relaxed) != 0, 0)) {
        n = walk_from<false>(pc, sp, fp, from, pcs, max, gen, walk);
    } else {
        const int again = replay(sp, fp, from, gen, max, pcs, walk, !copied, reinterpret_cast<std::uintptr_t>(__builtin_return_address(0)));
        if (again >= 0) {
            if (copied) *copied = false;
            return again;
        }
        n = walk_from<true>(pc, sp, fp, from, pcs, max, gen, walk);
    }
    // Not a tail call: the walk reads this frame, which a jump would hand to walk_from.
    asm volatile("" : "+r"(n));
    return n;
}

bool fast_backtrace_copy(std::uint64_t walk, std::uintptr_t *pcs, int n) noexcept {
    const Memo &m = g_memo[walk & ((1u << kMemoBits) - 1)];
    const std::uint64_t s1 = m.seq.load(std::memory_order_acquire);
    if (!walk || s1 != walk >> kMemoBits || n < 0 || static_cast<unsigned>(n) > ((m.shape.load(std::memory_order_relaxed) >> 8) & 0xff))
        return false;
    copy_pcs(m, pcs, static_cast<unsigned>(n));
    std::atomic_thread_fence(std::memory_order_acquire);
    return m.seq.load(std::memory_order_relaxed) == s1;
}

void fast_backtrace_forget() noexcept { g_gen.fetch_add(1, std::memory_order_acq_rel); }

bool fast_backtrace_share() noexcept {
    if (g_hints) return true;
    void *m = ::mmap(nullptr, sizeof(Hints), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return false;
    g_hints = new (m) Hints();
    g_child.hints_owner = true;
    return true;
}

bool fast_backtrace_child_work() noexcept {
    return g_child.hints_owner || g_walks.load(std::memory_order_relaxed) != 0;
}

// Writes g_child only where walks are possible: a store, even of the value already there,
// costs the child a copy-on-write fault on its page. A process that shares the ring (a caller
// rule deeper than depth 1) or has walked writes it; under size rules nothing is written.
MLSHIM_FORK_CHILD_COMMON_TEXT void fast_backtrace_after_fork_child() noexcept {
    if (!fast_backtrace_child_work()) return;
    g_child.walks_unkept.store(kFastBacktraceChildUnkept, std::memory_order_relaxed);
    g_child.hints_owner = false;
}

#else  // no fast walk on this platform: libgcc unwinds

int fast_backtrace(std::uintptr_t, std::uintptr_t *, int, std::uint64_t *walk, bool *copied) noexcept {
    *walk = 0;
    if (copied) *copied = true;
    return -1;
}
bool fast_backtrace_copy(std::uint64_t, std::uintptr_t *, int) noexcept { return false; }
void fast_backtrace_forget() noexcept {}
bool fast_backtrace_share() noexcept { return false; }
void fast_backtrace_after_fork_child() noexcept {}
bool fast_backtrace_child_work() noexcept { return false; }
namespace {
std::atomic<unsigned long long> g_rules_made{0};
std::atomic<unsigned long long> g_fallbacks{0};
std::atomic<unsigned long long> g_hints_learned{0};
std::atomic<unsigned long long> g_walks{0};
}  // namespace

#endif

FastBacktraceCounts fast_backtrace_counts() noexcept {
    return {g_rules_made.load(std::memory_order_relaxed), g_fallbacks.load(std::memory_order_relaxed),
            g_hints_learned.load(std::memory_order_relaxed), g_walks.load(std::memory_order_relaxed)};
}

}  // namespace mlshim
