// A caller rule's answer for a stack walk that is replayed is the answer for its own frames:
// two call chains that reach the allocation from the same stack depth and the same depth-1
// caller, one through a function the rule names and one not, each keep their own answer,
// for every rule, however they alternate.
#include <criterion/criterion.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <string>
#include <vector>

#include "callers.hpp"
#include "runtime.hpp"
#include "unwind.hpp"

using namespace mlshim;

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

// Rule 0 holds for allocations under callers_test_secret_*, rule 1 under callers_test_plain_*,
// both within 3 frames, so that both need the stack walked.
void use_two_rules() {
#if defined(__SANITIZE_ADDRESS__)
    __lsan_disable();  // the index is kept for the life of the process, by design
#endif
    std::vector<CallerCondition> conds(2);
    conds[0].name = "secret";
    conds[0].symbol = "callers_test_secret_*";
    conds[0].symbol_depth = 3;
    conds[1].name = "plain";
    conds[1].symbol = "callers_test_plain_*";
    conds[1].symbol_depth = 3;
    g_rules[0] = SizeRule{32, 32, 0, 0};
    g_rules[1] = SizeRule{32, 32, 0, 1};
    g_nrules = 2;
    const std::string why = callers_init(conds, nullptr);
    cr_assert_str_empty(why.c_str());
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
        // Both chains share one kept walk's place: after the other chain the stack is walked
        // again (and the place renamed), after the same chain the kept walk is replayed.
        if (i > 0)
            cr_expect_eq(fast_backtrace_counts().walks - walks, c[-1] == *c ? 0u : 1u, "call %ld: walks %llu", i,
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
