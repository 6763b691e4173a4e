// Unit tests of the caller index (shim/callers.cpp), in process, with match_callers called
// directly:
//   - a caller rule's answer for a stack walk that is replayed is the answer for its own
//     frames: two call chains that reach the allocation from the same stack depth and the same
//     depth-1 caller, one through a function the rule names and one not, each keep their own
//     answer, for every rule, however they alternate;
//   - a replay that no kept answer decides for its rule copies its return addresses from the
//     kept walk, and the rule holds through them; allocations of two sizes whose rules walk
//     through different conditions replay each other's walks;
//   - the index re-reads only what was loaded since it was built: a dlopen + dlclose +
//     matching malloc cycle reads one object (the library loaded), and a dlclose that unloads
//     nothing reads none. Work is counted (objects read from disk), not timed.
#include <criterion/criterion.h>

#include <cstring>
#include <dlfcn.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <string>
#include <vector>

#include "callers.hpp"
#include "helpers.hpp"
#include "runtime.hpp"
#include "unwind.hpp"

using namespace mlshim;
using namespace memlock_test;

extern "C" {

// What a rule for 32 bytes decides for an allocation made by callers_test_middle (rule index
// or -1): its depth-1 caller is the same whichever entry called callers_test_middle.
__attribute__((noinline)) int callers_test_leaf() {
    const int rule = match_callers(32, __builtin_return_address(0), 0);
    __asm__ volatile("" ::: "memory");
    return rule;
}

__attribute__((noinline)) int callers_test_middle() {
    const int rule = callers_test_leaf();
    __asm__ volatile("" ::: "memory");
    return rule;
}

volatile int callers_test_sink;

// Two entries with the same frame: the walk from callers_test_middle starts at the same stack
// pointer through either, and only the return address into the entry (frame 2) tells them
// apart. They store different values, so that no linker folds them into one.
__attribute__((noinline)) int callers_test_secret_entry() {
    const int rule = callers_test_middle();
    callers_test_sink = 1;
    return rule;
}

__attribute__((noinline)) int callers_test_plain_entry() {
    const int rule = callers_test_middle();
    callers_test_sink = 2;
    return rule;
}

}  // extern "C"

namespace {

// Caller rules for `conds`: rule i, for 32-byte allocations, holds when condition i does.
void use_rules(const std::vector<CallerCondition> &conds) {
#if defined(__SANITIZE_ADDRESS__)
    // Replaced indexes are kept for the life of the process (readers may still hold them):
    // by design, not a leak.
    __lsan_disable();
#endif
    for (std::size_t i = 0; i < conds.size(); ++i) g_rules[i] = SizeRule{32, 32, 0, static_cast<int>(i)};
    g_nrules = static_cast<unsigned>(conds.size());
    const std::string why = callers_init(conds, nullptr);
    cr_assert_str_empty(why.c_str());
}

// A symbol rule's condition: a function matching `glob` within `depth` frames.
CallerCondition symbol_rule(const char *name, const char *glob, unsigned depth) {
    CallerCondition c;
    c.name = name;
    c.symbol = glob;
    c.symbol_depth = depth;
    return c;
}

// Rule 0 holds for allocations under callers_test_secret_*, rule 1 under callers_test_plain_*,
// both within 3 frames, so that both need the stack walked.
void use_two_rules() {
    use_rules({symbol_rule("secret", "callers_test_secret_*", 3), symbol_rule("plain", "callers_test_plain_*", 3)});
}

__attribute__((noinline)) void here() { __asm__ volatile("" ::: "memory"); }

// A 32-byte allocation whose depth-1 caller is `ra`: matched by rule 0 (pool 0) or not (-1).
int match_from(const void *ra) { return match_callers(32, ra, 0); }

void *open_secretlib(const void **loader) {
    const std::string lib = shim_build_dir() + "/libs/libsecretlib.so";
    void *h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
    cr_assert(h, "dlopen %s: %s (run `make progs`)", lib.c_str(), dlerror());
    *loader = dlsym(h, "alloc_helper");
    cr_assert(*loader);
    return h;
}

}  // namespace

Test(callers, a_replayed_walk_keeps_the_answer_of_its_own_frames) {
    use_two_rules();
    const char *order = "ssppspsspp";
    const unsigned long long reused_before = callers_decisions_reused();
    for (const char *c = order; *c; ++c) {
        const bool secret = *c == 's';
        const unsigned long long walks = fast_backtrace_counts().walks;
        const int rule = secret ? callers_test_secret_entry() : callers_test_plain_entry();
        const long i = static_cast<long>(c - order);
        cr_assert_eq(rule, secret ? 0 : 1, "call %ld (through the %s entry): rule %d", i, secret ? "secret" : "plain", rule);
        // Both chains have one kept walk's place (they differ only further out): each walks
        // the stack once, and is kept in a way of its own; every later call replays.
        const bool first = std::strchr(order, *c) == c;
        cr_expect_eq(fast_backtrace_counts().walks - walks, first ? 1u : 0u, "call %ld: walks %llu", i,
                     fast_backtrace_counts().walks - walks);
    }
    // The repeated calls (ss, pp) were decided from the answers kept for their walks.
    cr_expect_geq(callers_decisions_reused() - reused_before, 4u, "answers reused: %llu",
                  callers_decisions_reused() - reused_before);
}

Test(callers, answers_are_not_kept_across_a_dlclose) {
    use_two_rules();
    cr_assert_eq(callers_test_secret_entry(), 0);
    cr_assert_eq(callers_test_secret_entry(), 0);
    // What dlclose does: every walk is forgotten, the index is checked again.
    callers_objects_changed();
    const unsigned long long reused_before = callers_decisions_reused();
    cr_assert_eq(callers_test_secret_entry(), 0);
    cr_expect_eq(callers_decisions_reused(), reused_before, "an answer of the forgotten walks was used");
    cr_assert_eq(callers_test_plain_entry(), 1);
}

Test(callers_reindex, a_dlopen_dlclose_cycle_reads_only_the_library_loaded) {
    use_rules({symbol_rule("helper", "alloc_helper", 1)});
    const unsigned long long at_start = callers_objects_read();
    cr_assert_gt(at_start, 1u, "every object loaded at start-up is read once");
    for (int cycle = 1; cycle <= 5; ++cycle) {
        const void *loader = nullptr;
        void *h = open_secretlib(&loader);
        // The library's function is not indexed yet: the lookup indexes the new object alone.
        cr_assert_eq(match_from(static_cast<const char *>(loader) + 1), 0, "cycle %d: the rule matches", cycle);
        cr_assert_eq(callers_objects_read(), at_start + cycle, "cycle %d: one object read on dlopen", cycle);
        cr_assert_eq(dlclose(h), 0);
        callers_objects_changed();  // what the shim's dlclose does
        cr_assert_eq(match_from(reinterpret_cast<const void *>(&here)), -1);
        cr_assert_eq(callers_objects_read(), at_start + cycle, "cycle %d: dlclose reads nothing", cycle);
    }
}

Test(callers_reindex, a_dlclose_that_unloads_nothing_changes_nothing) {
    use_rules({symbol_rule("helper", "alloc_helper", 1)});
    const void *loader = nullptr;
    void *first = open_secretlib(&loader);
    cr_assert_eq(match_from(static_cast<const char *>(loader) + 1), 0);
    const unsigned long long read = callers_objects_read();
    void *second = open_secretlib(&loader);  // the same object, one more reference
    cr_assert_eq(dlclose(second), 0);
    callers_objects_changed();
    cr_assert_eq(match_from(static_cast<const char *>(loader) + 1), 0, "still loaded: still matched");
    cr_assert_eq(callers_objects_read(), read, "nothing was loaded or unloaded: nothing is read");
    dlclose(first);
}

// ---- walks from match_callers for rules of different sizes -------------------------------------

extern "C" __attribute__((noinline)) int callers_test_sized(std::size_t n) {
    const int rule = match_callers(n, __builtin_return_address(0), 0);
    __asm__ volatile("" ::: "memory");
    return rule;
}

extern "C" __attribute__((noinline)) int callers_test_sized_middle(std::size_t n) {
    const int rule = callers_test_sized(n);
    callers_test_sink = 4;
    return rule;
}

extern "C" __attribute__((noinline)) int callers_test_sized_outer(std::size_t n) {
    const int rule = callers_test_sized_middle(n);
    callers_test_sink = 3;
    return rule;
}

// The one call of callers_test_sized_outer: frame 3 of the allocation is the same whatever
// the test's own call sites (a compiler may copy a call into each branch).
extern "C" __attribute__((noinline)) int callers_test_sized_entry(std::size_t n) {
    const int rule = callers_test_sized_outer(n);
    callers_test_sink = 5;
    return rule;
}

// Overwrites the stack below the caller's frame, where match_callers' frames were: what a
// call finds there is not what the previous call left.
__attribute__((noinline)) void scrub_stack() {
    volatile unsigned char below[16384];
    for (unsigned char &b : const_cast<unsigned char(&)[16384]>(below)) b = 0xa5;
    __asm__ volatile("" ::: "memory");
}

// Rule 0 (32 bytes) names no function; rule 1 (64 bytes) names callers_test_sized_outer,
// frame 2 of the allocation.
// A 64-byte allocation replays the walk a 32-byte one kept, with no answer kept for rule 1:
// its return addresses are copied from the kept walk (settle), and rule 1 holds through them.
Test(callers, a_replay_with_no_answer_for_its_rule_copies_its_frames) {
    use_rules({symbol_rule("none", "callers_test_nothing_*", 3), symbol_rule("outer", "callers_test_sized_outer", 3)});
    g_rules[1] = SizeRule{64, 64, 0, 1};
    for (int i = 0; i < 6; ++i) {
        const bool big = i % 2;
        scrub_stack();
        const unsigned long long before = fast_backtrace_counts().walks;
        const int rule = callers_test_sized_entry(big ? 64 : 32);
        const unsigned long long walked = fast_backtrace_counts().walks - before;
        cr_assert_eq(rule, big ? 1 : -1, "allocation %d (%d bytes): rule %d", i, big ? 64 : 32, rule);
        if (big) cr_expect_eq(walked, 0u, "allocation %d: the 64-byte allocation walked again", i);
    }
}

// A symbol rule for 32 bytes and a module rule for 64, neither matching: an allocation of
// either size from one call chain walks the stack from match_callers, through its symbol or
// its module condition (which the compiler may inline as two calls of fast_backtrace, with
// two return addresses). Once each size has walked, alternating sizes replay.
Test(callers, symbol_and_module_rules_replay_each_others_walk) {
    CallerCondition mod;
    mod.name = "mod";
    mod.module = {"libnothing_by_this_name.so"};
    mod.module_depth = 3;
    use_rules({symbol_rule("sym", "callers_test_nothing_*", 3), mod});
    g_rules[1] = SizeRule{64, 64, 0, 1};
    unsigned long long walked[8];
    for (int i = 0; i < 8; ++i) {
        const unsigned long long before = fast_backtrace_counts().walks;
        const int rule = callers_test_sized_entry(i % 2 ? 64 : 32);
        walked[i] = fast_backtrace_counts().walks - before;
        cr_assert_eq(rule, -1);
    }
    for (int i = 2; i < 8; ++i)
        cr_expect_eq(walked[i], 0u, "allocation %d (%s rule) walked the stack again", i, i % 2 ? "module" : "symbol");
}
