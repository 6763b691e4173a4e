// rules.hpp - a config's rules compiled into the form the hot path reads.
//
// compile_rules is plain code (no OS calls, no globals): the shim's start-up, the tests and
// the fuzzer call it alike.
#ifndef MEMLOCK_SHIM_RULES_HPP
#define MEMLOCK_SHIM_RULES_HPP

#include <cstddef>
#include <cstdint>
#include <vector>

#include "callers.hpp"
#include "config.hpp"

namespace mlshim {

// One rule as matched per allocation: the first rule that holds picks the pool.
struct SizeRule {
    std::size_t min, max;  // inclusive
    unsigned pool;         // arena pool: one per distinct action set
    int caller;            // index into RuleTable::conditions, or -1: size alone decides
};

struct RuleTable {
    std::vector<SizeRule> rules;             // in config order
    std::vector<unsigned> pool_actions;      // per pool: its kAction* bits
    std::vector<CallerCondition> conditions; // caller conditions, for callers_init
    std::size_t lo = SIZE_MAX, hi = 0;       // every rule's sizes lie in [lo, hi]; empty if lo > hi
};

// pre: rules validated by parse_config (so at most kConfigMaxRules, and at most 7 distinct
// action sets, as there are 7 non-empty subsets of the three actions).
RuleTable compile_rules(const std::vector<Rule> &rules);

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_RULES_HPP
