// compile_rules: the compiled table the hot path reads.
#include <criterion/criterion.h>

#include "config.hpp"
#include "rules.hpp"

using namespace mlshim;

namespace {

Rule size_rule(const char *name, std::size_t lo, std::size_t hi, unsigned actions = kActionAll) {
    Rule r;
    r.name = name;
    r.min_size = lo;
    r.max_size = hi;
    r.actions = actions;
    return r;
}

}  // namespace

Test(rules, no_rules_make_an_empty_window) {
    RuleTable t = compile_rules({});
    cr_assert(t.rules.empty());
    cr_assert_gt(t.lo, t.hi);
}

Test(rules, the_window_spans_every_rule_and_order_is_kept) {
    RuleTable t = compile_rules({size_rule("a", 32, 32), size_rule("b", 1000, 2000), size_rule("c", 64, 64)});
    cr_assert_eq(t.rules.size(), 3u);
    cr_assert_eq(t.lo, 32u);
    cr_assert_eq(t.hi, 2000u);
    cr_assert_eq(t.rules[1].min, 1000u);
    cr_assert_eq(t.rules[1].max, 2000u);
    for (const SizeRule &r : t.rules) cr_assert_eq(r.caller, -1);
}

Test(rules, one_pool_per_distinct_action_set) {
    RuleTable t = compile_rules({size_rule("a", 1, 1), size_rule("b", 2, 2, kActionWipe),
                                 size_rule("c", 3, 3), size_rule("d", 4, 4, kActionWipe)});
    cr_assert_eq(t.pool_actions.size(), 2u);
    cr_assert_eq(t.pool_actions[0], static_cast<unsigned>(kActionAll));
    cr_assert_eq(t.pool_actions[1], static_cast<unsigned>(kActionWipe));
    cr_assert_eq(t.rules[2].pool, 0u);
    cr_assert_eq(t.rules[3].pool, 1u);
}

Test(rules, caller_conditions_get_their_default_depths) {
    Rule sym = size_rule("keys", 0, SIZE_MAX);
    sym.symbol = "load_*key*";
    Rule mod = size_rule("crypto", 16, 64);
    mod.module = {"libcrypto.so*", "libssl.so*"};
    Rule deep = size_rule("deep", 0, SIZE_MAX);
    deep.symbol = "f";
    deep.module = {"libx.so"};
    deep.depth = 9;
    RuleTable t = compile_rules({sym, size_rule("plain", 8, 8), mod, deep});
    cr_assert_eq(t.conditions.size(), 3u);
    cr_assert_eq(t.rules[0].caller, 0);
    cr_assert_eq(t.rules[1].caller, -1);
    cr_assert_eq(t.rules[2].caller, 1);
    cr_assert_eq(t.conditions[0].symbol_depth, kDefaultSymbolDepth);
    cr_assert_eq(t.conditions[1].module_depth, kDefaultModuleDepth);
    cr_assert_eq(t.conditions[2].symbol_depth, 9u);
    cr_assert_eq(t.conditions[2].module_depth, 9u);
    cr_assert_str_eq(t.conditions[1].name.c_str(), "crypto");
    cr_assert(t.conditions[1].module == std::vector<std::string>({"libcrypto.so*", "libssl.so*"}));
}
