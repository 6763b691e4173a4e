// config_fuzzer.cpp - libFuzzer target over everything a config file reaches before the arena:
// parse_config, compile_rules, glob_valid / glob_match and program_matches.
//
// Built with clang++ -fsanitize=fuzzer,address,undefined (Makefile: `make fuzz`, and a bounded
// run in `make test`). Any crash, leak, hang or broken invariant below is a finding; the
// invariants are checked with check(), which aborts with a message naming the invariant.
//
// Invariants:
//   - parse failure: `error` is one non-empty line that starts with "<source>:" and `out` is
//     untouched; success: `error` unchanged, out.source == source.
//   - a valid config: at most kConfigMaxRules rules, unique non-empty names, min <= max,
//     actions a non-empty subset of kActionAll, depth only with symbol/module and 1..64,
//     every glob (symbol, module, programs) passes glob_valid.
//   - compile_rules: one SizeRule per rule, in order, with the rule's bounds; every pool
//     index < pool_actions.size() <= 7, pool_actions distinct and equal to the rule's
//     actions; lo <= every min, hi >= every max (and lo/hi are attained); caller index set
//     exactly for rules with symbol/module, < conditions.size(), in order, with their globs.
//   - glob_match: never reads past either string; "*" matches anything; a pattern without
//     metacharacters matches itself only; for patterns without '[' it agrees with fnmatch(3)
//     (flags 0), the contract docs/config.md states.
//   - parse_config is deterministic (a second parse gives the same verdict and message).
#include <fnmatch.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "arena.hpp"
#include "config.hpp"
#include "rules.hpp"

using namespace mlshim;

namespace {

void check(bool ok, const char *what, const std::string &detail = std::string()) {
    if (ok) return;
    std::fprintf(stderr, "config_fuzzer: invariant broken: %s%s%s\n", what, detail.empty() ? "" : ": ",
                 detail.c_str());
    std::abort();
}

const char *const kNames[] = {
    "",         "a",           "sshd",        "/usr/sbin/sshd", "/usr/bin/python3.11", "libcrypto.so.3",
    "load_key", "load_rsa_key", "[",          "]",              "\\",                  "*",
    "?",        "a/b/c",       "/",           "\xff\xfe",       "keys-32",             "x.y.z",
};

bool has_glob_meta(const std::string &p) { return p.find_first_of("*?[\\") != std::string::npos; }

// glob_match on a valid (or arbitrary) pattern against the fixed names and itself.
void exercise_glob(const std::string &pattern) {
    std::string why;
    const bool valid = glob_valid(pattern, why);
    check(valid || !why.empty(), "glob_valid rejected a pattern without saying why", pattern);
    if (pattern.find('\0') != std::string::npos) {
        check(!valid, "glob_valid accepted a pattern with NUL");
        return;
    }
    const char *p = pattern.c_str();
    for (const char *name : kNames) {
        const bool m = glob_match(p, name);
        check(glob_match("*", name), "\"*\" does not match a name", name);
        if (valid && pattern.find('[') == std::string::npos) {
            const bool f = fnmatch(p, name, 0) == 0;
            check(m == f, "glob_match disagrees with fnmatch", pattern + " vs " + name);
        }
    }
    if (valid && !has_glob_meta(pattern)) {
        check(glob_match(p, p), "a literal pattern does not match itself", pattern);
        const std::string longer = pattern + "x";
        check(!glob_match(p, longer.c_str()), "a literal pattern matches a longer text", pattern);
    }
    if (valid) {
        const std::string starred = "*" + pattern + "*";
        // "*P*" matches whatever P matches.
        for (const char *name : kNames)
            if (glob_match(p, name)) check(glob_match(starred.c_str(), name), "*P* lost a match of P", pattern);
    }
}

void check_config(const Config &c, const std::string &source) {
    check(c.source == source, "out.source is not the source");
    check(c.version == 1, "version other than 1 accepted");
    check(c.rules.size() <= kConfigMaxRules, "more rules than kConfigMaxRules");
    std::set<std::string> names;
    std::string why;
    for (const Rule &r : c.rules) {
        check(!r.name.empty(), "a rule without a name");
        check(names.insert(r.name).second, "duplicate rule name accepted", r.name);
        check(r.min_size <= r.max_size, "min_size > max_size accepted", r.name);
        check(r.actions != 0 && (r.actions & ~unsigned{kActionAll}) == 0, "actions out of range", r.name);
        check(r.depth <= kRuleMaxDepth, "depth above the limit", r.name);
        check(r.depth == 0 || !r.symbol.empty() || !r.module.empty(), "depth without symbol/module", r.name);
        if (!r.symbol.empty()) check(glob_valid(r.symbol, why), "invalid symbol glob accepted", r.symbol);
        for (std::size_t g = 0; g < r.module.size(); ++g) {
            check(glob_valid(r.module[g], why), "invalid module glob accepted", r.module[g]);
            for (std::size_t h = 0; h < g; ++h) check(r.module[h] != r.module[g], "duplicate module glob accepted", r.module[g]);
        }
    }
    for (const std::string &p : c.programs) check(glob_valid(p, why), "invalid program glob accepted", p);
    check(c.policy.max_arena >= kConfigMinArena && c.policy.max_arena <= kConfigMaxArena, "max_arena out of range");
    check(c.policy.max_locked <= kConfigMaxArena, "max_locked out of range");
    check(c.policy.prealloc <= c.policy.max_locked, "prealloc above max_locked");
    check(c.policy.scrub_stack <= kConfigMaxScrubStack, "scrub_stack out of range");
    check(!c.log_file.empty(), "empty log file");
}

void check_compiled(const Config &c) {
    const RuleTable t = compile_rules(c.rules);
    check(t.rules.size() == c.rules.size(), "compile_rules changed the number of rules");
    check(t.pool_actions.size() <= 7, "more than 7 pools");
    check(t.pool_actions.size() <= kMaxPools, "more pools than the arena has");
    for (std::size_t i = 0; i < t.pool_actions.size(); ++i)
        for (std::size_t j = i + 1; j < t.pool_actions.size(); ++j)
            check(t.pool_actions[i] != t.pool_actions[j], "two pools with one action set");
    std::size_t conditions = 0;
    std::size_t lo = SIZE_MAX, hi = 0;
    for (std::size_t i = 0; i < c.rules.size(); ++i) {
        const Rule &r = c.rules[i];
        const SizeRule &s = t.rules[i];
        check(s.min == r.min_size && s.max == r.max_size, "compiled bounds differ", r.name);
        check(s.pool < t.pool_actions.size(), "pool index out of range", r.name);
        check(t.pool_actions[s.pool] == r.actions, "rule's pool has other actions", r.name);
        check(t.lo <= s.min, "lo above a rule's min", r.name);
        check(t.hi >= s.max, "hi below a rule's max", r.name);
        lo = s.min < lo ? s.min : lo;
        hi = s.max > hi ? s.max : hi;
        const bool caller = !r.symbol.empty() || !r.module.empty();
        check((s.caller >= 0) == caller, "caller index set iff symbol/module", r.name);
        if (caller) {
            check(static_cast<std::size_t>(s.caller) == conditions, "caller conditions out of order", r.name);
            check(static_cast<std::size_t>(s.caller) < t.conditions.size(), "caller index out of range", r.name);
            const CallerCondition &cc = t.conditions[static_cast<std::size_t>(s.caller)];
            check(cc.symbol == r.symbol && cc.module == r.module && cc.name == r.name, "condition differs", r.name);
            check(cc.symbol_depth >= 1 && cc.symbol_depth <= kMaxCallerDepth, "symbol depth out of range", r.name);
            check(cc.module_depth >= 1 && cc.module_depth <= kMaxCallerDepth, "module depth out of range", r.name);
            ++conditions;
        }
    }
    check(conditions == t.conditions.size(), "extra caller conditions");
    check(t.lo == lo && t.hi == hi, "lo/hi are not the rules' extremes");
    if (c.rules.empty()) check(t.lo > t.hi, "an empty rule set has a non-empty window");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    if (size > kConfigMaxFileSize) return -1;  // load_config_file rejects these before parsing
    const std::string text(reinterpret_cast<const char *>(data), size);
    const std::string source = "/etc/memlock/fuzz.json";

    Config config;
    config.source = "untouched";
    std::string error = "unset";
    const bool ok = parse_config(text, source, config, error);
    if (!ok) {
        check(config.source == "untouched", "a failed parse changed the output");
        check(error.size() > source.size() + 2 && error.compare(0, source.size() + 1, source + ":") == 0,
              "error does not name the source", error);
        for (char ch : error)
            check(static_cast<unsigned char>(ch) >= 0x20 && ch != 0x7f, "error is not one printable line", error);
    } else {
        check(error == "unset", "a successful parse set the error");
        check_config(config, source);
        check_compiled(config);
        for (const Rule &r : config.rules) {
            if (!r.symbol.empty()) exercise_glob(r.symbol);
            for (const std::string &g : r.module) exercise_glob(g);
        }
        for (const std::string &p : config.programs) exercise_glob(p);
        for (const char *exe : kNames) {
            const bool m = program_matches(config, exe);
            if (config.programs.empty()) check(m, "no programs list but a program does not match", exe);
        }
        check(program_matches(config, nullptr) == config.programs.empty(), "program_matches(nullptr)");
    }

    // Deterministic: the same text gives the same verdict and message.
    Config again;
    std::string error2 = "unset";
    const bool ok2 = parse_config(text, source, again, error2);
    check(ok == ok2 && error == error2, "parse_config is not deterministic", error + " / " + error2);

    // The raw input as glob and text: "PATTERN\nTEXT" (glob code on arbitrary bytes).
    const std::size_t nl = text.find('\n');
    const std::string pattern = text.substr(0, nl);
    exercise_glob(pattern);
    if (nl != std::string::npos && pattern.find('\0') == std::string::npos) {
        const std::string subject = text.substr(nl + 1);
        if (subject.find('\0') == std::string::npos) {
            std::string why;
            const bool m = glob_match(pattern.c_str(), subject.c_str());
            if (glob_valid(pattern, why) && pattern.find('[') == std::string::npos)
                check(m == (fnmatch(pattern.c_str(), subject.c_str(), 0) == 0), "glob_match disagrees with fnmatch",
                      pattern + " vs " + subject);
        }
    }
    return 0;
}
