#include "rules.hpp"

namespace mlshim {

RuleTable compile_rules(const std::vector<Rule> &rules) {
    RuleTable t;
    for (const Rule &r : rules) {
        unsigned pool = 0;
        while (pool < t.pool_actions.size() && t.pool_actions[pool] != r.actions) ++pool;
        if (pool == t.pool_actions.size()) t.pool_actions.push_back(r.actions);
        int caller = -1;
        if (!r.symbol.empty() || !r.module.empty()) {
            CallerCondition c;
            c.name = r.name;
            c.symbol = r.symbol;
            c.module = r.module;
            c.symbol_depth = r.depth ? r.depth : kDefaultSymbolDepth;
            c.module_depth = r.depth ? r.depth : kDefaultModuleDepth;
            caller = static_cast<int>(t.conditions.size());
            t.conditions.push_back(c);
        }
        t.rules.push_back(SizeRule{r.min_size, r.max_size, pool, caller});
        if (r.min_size < t.lo) t.lo = r.min_size;
        if (r.max_size > t.hi) t.hi = r.max_size;
    }
    return t;
}

}  // namespace mlshim
