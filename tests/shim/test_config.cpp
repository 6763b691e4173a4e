// test_config.cpp - the config parser: every key, every class of error with its exact text,
// sizes, globs, program matching, hostile input, and the shipped config/ files.
#include <criterion/criterion.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "config.hpp"
#include "helpers.hpp"

using namespace mlshim;

namespace {

Config parse_ok(const std::string &text) {
    Config config;
    std::string error;
    const bool ok = parse_config(text, "x.json", config, error);
    cr_assert(ok, "unexpected error: %s", error.c_str());
    cr_assert(error.empty());
    return config;
}

std::string parse_error(const std::string &text, const std::string &source = "x.json") {
    Config config;
    std::string error = "untouched";
    const bool ok = parse_config(text, source, config, error);
    cr_assert_not(ok, "accepted: %s", text.c_str());
    cr_assert(!error.empty() && error.find('\n') == std::string::npos && error.find('\r') == std::string::npos,
              "not one line: %s", error.c_str());
    return error;
}

// Compares as strings; both sides are kept alive for the assertion's message.
#define EXPECT_STR(actual, expected)                         \
    do {                                                     \
        const std::string actual_(actual), expected_(expected); \
        cr_assert_str_eq(actual_.c_str(), expected_.c_str()); \
    } while (0)

#define EXPECT_ERROR(text, expected) EXPECT_STR(parse_error(text), expected)

// A minimal valid document around one rule / one policy / one top-level member.
std::string with_rule(const std::string &rule) { return R"({"version": 1, "rules": [)" + rule + "]}"; }
std::string with_policy(const std::string &policy) {
    return R"({"version": 1, "rules": [], "policy": )" + policy + "}";
}
std::string with_member(const std::string &member) { return R"({"version": 1, "rules": [], )" + member + "}"; }

std::size_t size_of(const std::string &text) {
    std::size_t n = 12345;
    cr_assert(parse_size(text, n), "rejected size \"%s\"", text.c_str());
    return n;
}

bool size_rejected(const std::string &text) {
    std::size_t n = 12345;
    const bool ok = parse_size(text, n);
    cr_assert_eq(n, 12345u, "output written on failure for \"%s\"", text.c_str());
    return !ok;
}

std::string glob_error(const std::string &pattern) {
    std::string why;
    cr_assert_not(glob_valid(pattern, why), "accepted glob \"%s\"", pattern.c_str());
    return why;
}

}  // namespace

// ---- valid documents ----------------------------------------------------------------------

Test(config_valid, full_schema) {
    const Config c = parse_ok(R"({
        "version": 1,
        "programs": ["redis-server", "/usr/sbin/*"],
        "rules": [ {"name": "aes-keys", "size": 32},
                   {"name": "buffers", "min_size": 64, "max_size": 4096, "actions": ["lock", "dontdump", "wipe"]},
                   {"name": "everything", "min_size": 0},
                   {"name": "keys", "symbol": "load_*key*", "depth": 4},
                   {"name": "crypto", "module": "libcrypto.so*", "min_size": 16} ],
        "policy": {"max_locked": 67108864, "on_lock_failure": "deny", "prealloc": 1048576, "max_arena": "1GiB"},
        "log": {"level": "debug", "file": "/var/log/memlock.log"},
        "stats": {"file": "/run/memlock/%p.json"} })");
    cr_assert_eq(c.version, 1);
    cr_assert_eq(c.source, "x.json");
    cr_assert_eq(c.programs.size(), 2u);
    cr_assert_eq(c.programs[1], "/usr/sbin/*");
    cr_assert_eq(c.rules.size(), 5u);
    cr_assert_eq(c.rules[0].name, "aes-keys");
    cr_assert_eq(c.rules[0].min_size, 32u);
    cr_assert_eq(c.rules[0].max_size, 32u);
    cr_assert_eq(c.rules[0].actions, unsigned(kActionAll));
    cr_assert_eq(c.rules[1].min_size, 64u);
    cr_assert_eq(c.rules[1].max_size, 4096u);
    cr_assert_eq(c.rules[1].actions, unsigned(kActionAll));
    cr_assert_eq(c.rules[2].min_size, 0u);
    cr_assert_eq(c.rules[2].max_size, SIZE_MAX);
    cr_assert_eq(c.rules[3].symbol, "load_*key*");
    cr_assert_eq(c.rules[3].depth, 4u);
    cr_assert_eq(c.rules[3].min_size, 0u);
    cr_assert_eq(c.rules[3].max_size, SIZE_MAX);
    cr_assert(c.rules[4].module == std::vector<std::string>{"libcrypto.so*"});
    cr_assert_eq(c.rules[4].depth, 0u);
    cr_assert_eq(c.rules[4].min_size, 16u);
    cr_assert_eq(c.policy.max_locked, 67108864u);
    cr_assert(c.policy.on_lock_failure == LockFailurePolicy::deny);
    cr_assert_eq(c.policy.prealloc, 1048576u);
    cr_assert_eq(c.policy.max_arena, 1u << 30);
    cr_assert(c.log_level == LogLevel::debug);
    cr_assert_eq(c.log_file, "/var/log/memlock.log");
    cr_assert_eq(c.stats_file, "/run/memlock/%p.json");
}

Test(config_valid, defaults) {
    const Config c = parse_ok(R"({"version": 1, "rules": []})");
    cr_assert(c.programs.empty());
    cr_assert(c.rules.empty());
    cr_assert_eq(c.policy.max_locked, 64u << 20);
    cr_assert(c.policy.on_lock_failure == LockFailurePolicy::fallback);
    cr_assert_eq(c.policy.prealloc, 0u);
    cr_assert_eq(c.policy.max_arena, 1u << 30);
    cr_assert(c.log_level == LogLevel::warn);
    cr_assert_eq(c.log_file, "stderr");
    cr_assert(c.stats_file.empty());
}

Test(config_valid, empty_objects_keep_defaults) {
    const Config c = parse_ok(R"({"version": 1, "programs": [], "rules": [], "policy": {}, "log": {}, "stats": {}})");
    cr_assert(c.programs.empty());
    cr_assert_eq(c.policy.max_locked, 64u << 20);
    cr_assert(c.stats_file.empty());
}

Test(config_valid, enums) {
    const char *policies[] = {"fallback", "deny", "abort"};
    const LockFailurePolicy expected_policies[] = {LockFailurePolicy::fallback, LockFailurePolicy::deny,
                                                   LockFailurePolicy::abort};
    for (int i = 0; i < 3; ++i)
        cr_assert(parse_ok(with_policy(std::string(R"({"on_lock_failure": ")") + policies[i] + "\"}"))
                      .policy.on_lock_failure == expected_policies[i]);
    const char *levels[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; ++i)
        cr_assert_eq(int(parse_ok(with_member(std::string(R"("log": {"level": ")") + levels[i] + "\"}"))
                             .log_level),
                     i);
}

Test(config_valid, actions_subsets) {
    cr_assert_eq(parse_ok(with_rule(R"({"name": "a", "size": 1, "actions": ["wipe"]})")).rules[0].actions,
                 unsigned(kActionWipe));
    cr_assert_eq(parse_ok(with_rule(R"({"name": "a", "size": 1, "actions": ["dontdump", "lock"]})")).rules[0].actions,
                 unsigned(kActionLock | kActionDontdump));
}

Test(config_valid, size_forms_in_rules) {
    const Config c = parse_ok(with_rule(R"({"name": "a", "min_size": "1 KiB", "max_size": "64KiB"},
                                           {"name": "b", "size": "4096"}, {"name": "c", "max_size": 8})"));
    cr_assert_eq(c.rules[0].min_size, 1024u);
    cr_assert_eq(c.rules[0].max_size, 65536u);
    cr_assert_eq(c.rules[1].min_size, 4096u);
    cr_assert_eq(c.rules[1].max_size, 4096u);
    cr_assert_eq(c.rules[2].min_size, 0u);
    cr_assert_eq(c.rules[2].max_size, 8u);
}

Test(config_valid, size_zero_and_min_equals_max) {
    cr_assert_eq(parse_ok(with_rule(R"({"name": "a", "size": 0})")).rules[0].max_size, 0u);
    cr_assert_eq(parse_ok(with_rule(R"({"name": "a", "min_size": 7, "max_size": 7})")).rules[0].min_size, 7u);
}

Test(config_valid, caller_rules) {
    const Config c = parse_ok(with_rule(R"({"name": "a", "symbol": "load_key", "depth": 1},
                                           {"name": "b", "module": "/usr/lib/*/libssl.so.[0-9]*", "depth": 64},
                                           {"name": "c", "symbol": "x*", "module": "liby.so", "size": 32})"));
    cr_assert_eq(c.rules[0].depth, 1u);
    cr_assert_eq(c.rules[1].depth, 64u);
    cr_assert_eq(c.rules[2].symbol, "x*");
    cr_assert(c.rules[2].module == std::vector<std::string>{"liby.so"});
    cr_assert_eq(c.rules[2].min_size, 32u);
}

Test(config_valid, module_list) {
    const Config c = parse_ok(with_rule(R"({"name": "openssl", "module": ["libcrypto.so*", "libssl.so*"], "depth": 8},
                                           {"name": "one", "module": ["liby.so"]})"));
    cr_assert(c.rules[0].module == std::vector<std::string>({"libcrypto.so*", "libssl.so*"}));
    cr_assert_eq(c.rules[0].depth, 8u);
    cr_assert(c.rules[1].module == std::vector<std::string>{"liby.so"});
}

Test(config_valid, policy_limits) {
    Config c = parse_ok(with_policy(R"({"max_locked": 1, "max_arena": "1MiB", "prealloc": 1})"));
    cr_assert_eq(c.policy.max_arena, 1u << 20);
    c = parse_ok(with_policy(R"({"max_locked": "64GiB", "max_arena": "64GiB", "prealloc": "64GiB"})"));
    cr_assert_eq(c.policy.max_locked, std::size_t{64} << 30);
    // An unset max_arena grows with max_locked.
    c = parse_ok(with_policy(R"({"max_locked": "2GiB"})"));
    cr_assert_eq(c.policy.max_arena, std::size_t{2} << 30);
    c = parse_ok(with_policy(R"({"prealloc": 0})"));
    cr_assert_eq(c.policy.prealloc, 0u);
}

Test(config_valid, whitespace_bom_and_unicode) {
    parse_ok("\xEF\xBB\xBF\r\n\t{\"version\":1,\"rules\":[{\"name\":\"cl\xC3\xA9s\",\"size\":1}]}\n\n");
    cr_assert_eq(parse_ok(with_rule(R"({"name": "\u00e9\ud83d\ude00", "size": 1})")).rules[0].name,
                 "\xC3\xA9\xF0\x9F\x98\x80");
}

Test(config_valid, output_untouched_on_error) {
    Config c;
    c.log_file = "sentinel";
    std::string error;
    cr_assert_not(parse_config(R"({"version": 1, "rules": [], "log": {"file": 1}})", "x.json", c, error));
    cr_assert_eq(c.log_file, "sentinel");
}

// ---- document-level errors ----------------------------------------------------------------

Test(config_document, empty) {
    EXPECT_ERROR("", "x.json: empty file (expected a JSON object)");
    EXPECT_ERROR(" \n\t\r\n", "x.json: empty file (expected a JSON object)");
}

Test(config_document, top_level_not_object) {
    EXPECT_ERROR("[]", "x.json: expected a JSON object at the top level, got an array");
    EXPECT_ERROR("42", "x.json: expected a JSON object at the top level, got 42");
    EXPECT_ERROR("\"hi\"", "x.json: expected a JSON object at the top level, got \"hi\"");
    EXPECT_ERROR("null", "x.json: expected a JSON object at the top level, got null");
}

Test(config_document, version) {
    EXPECT_ERROR("{}", "x.json: missing required key \"version\"");
    EXPECT_ERROR(R"({"rules": []})", "x.json: missing required key \"version\"");
    EXPECT_ERROR(R"({"version": 2, "rules": []})", "x.json: version: expected 1, got 2");
    EXPECT_ERROR(R"({"version": "1", "rules": []})", "x.json: version: expected 1, got \"1\"");
    EXPECT_ERROR(R"({"version": 1.0, "rules": []})", "x.json: version: expected 1, got 1.0");
    EXPECT_ERROR(R"({"version": -1, "rules": []})", "x.json: version: expected 1, got -1");
    EXPECT_ERROR(R"({"version": true, "rules": []})", "x.json: version: expected 1, got true");
}

Test(config_document, rules_required_and_array) {
    EXPECT_ERROR(R"({"version": 1})", "x.json: missing required key \"rules\"");
    EXPECT_ERROR(R"({"version": 1, "rules": {}})", "x.json: rules: expected an array of rules, got an object");
    EXPECT_ERROR(R"({"version": 1, "rules": null})", "x.json: rules: expected an array of rules, got null");
}

Test(config_document, unknown_keys_everywhere) {
    EXPECT_ERROR(R"({"version": 1, "rules": [], "rule": []})", "x.json: unknown key \"rule\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "sise": 32})"), "x.json: rules[0]: unknown key \"sise\"");
    EXPECT_ERROR(with_policy(R"({"max_lock": 1})"), "x.json: policy: unknown key \"max_lock\"");
    EXPECT_ERROR(with_member(R"("log": {"path": "x"})"), "x.json: log: unknown key \"path\"");
    EXPECT_ERROR(with_member(R"("stats": {"file": "x", "every": 5})"), "x.json: stats: unknown key \"every\"");
    EXPECT_ERROR(with_member(R"("_comment": "hello")"), "x.json: unknown key \"_comment\"");
    // Keys are shown escaped, so the message stays on one line.
    EXPECT_ERROR(with_member(R"("a\nb": 1)"), "x.json: unknown key \"a\\nb\"");
}

Test(config_document, unknown_key_in_later_rule) {
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1}, {"name": "b", "size": 2}, {"name": "c", "max": 3})"),
                 "x.json: rules[2]: unknown key \"max\"");
}

Test(config_document, duplicate_keys) {
    EXPECT_ERROR(R"({"version": 1, "version": 1, "rules": []})", "x.json: duplicate key \"version\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1, "size": 2})"), "x.json: rules[0]: duplicate key \"size\"");
    EXPECT_ERROR(with_policy(R"({"prealloc": 1, "prealloc": 1})"), "x.json: policy: duplicate key \"prealloc\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1}, {"name": "b", "size": 1, "name": "c"})"),
                 "x.json: rules[1]: duplicate key \"name\"");
}

Test(config_document, source_named_in_every_message) {
    std::string e = parse_error("{}", "/etc/memlock-shim/rules.json");
    EXPECT_STR(e, "/etc/memlock-shim/rules.json: missing required key \"version\"");
    e = parse_error("{", "/etc/a.json");
    EXPECT_STR(e, "/etc/a.json:1:2: unexpected end of input (expected a key in double quotes)");
    // A source with a newline still yields one line.
    e = parse_error("{}", "evil\nname.json");
    EXPECT_STR(e, "evil?name.json: missing required key \"version\"");
}

// ---- syntax errors ------------------------------------------------------------------------

Test(config_syntax, missing_value) {
    EXPECT_ERROR(R"({"version": })", "x.json:1:13: unexpected '}' (expected a value)");
}

Test(config_syntax, line_and_column) {
    EXPECT_ERROR("{\n  \"version\": 1,\n  \"rules\": [\n    {\"name\": \"a\" \"size\": 1}\n  ]\n}",
                 "x.json:4:18: unexpected string \"size\" (expected ',' or '}')");
}

Test(config_syntax, trailing_commas) {
    EXPECT_ERROR(R"({"version": 1,})", "x.json:1:15: unexpected '}' (expected a key in double quotes)");
    EXPECT_ERROR(R"({"version": 1, "rules": [1,]})", "x.json:1:28: unexpected ']' (expected a value)");
}

Test(config_syntax, missing_colon_and_comma) {
    EXPECT_ERROR(R"({"version" 1})", "x.json:1:12: unexpected number 1 (expected ':' after the key)");
    EXPECT_ERROR(R"({"rules": [1 2]})", "x.json:1:14: unexpected number 2 (expected ',' or ']')");
    EXPECT_ERROR(R"({"rules": [1, 2})", "x.json:1:16: unexpected '}' (expected ',' or ']')");
    EXPECT_ERROR(R"({"version" true})", "x.json:1:12: unexpected true (expected ':' after the key)");
}

Test(config_syntax, unquoted_key) {
    EXPECT_ERROR(R"({version: 1})", "x.json:1:2: unexpected 'version' (expected a key in double quotes)");
    EXPECT_ERROR(R"({1: 1})", "x.json:1:2: unexpected number 1 (expected a key in double quotes)");
}

Test(config_syntax, bad_literals) {
    EXPECT_ERROR(R"({"version": tru})", "x.json:1:13: unexpected 'tru' (expected a value)");
    EXPECT_ERROR(R"({"version": nul)", "x.json:1:13: unexpected 'nul' (expected a value)");
    EXPECT_ERROR(R"({"version": 'a'})", "x.json:1:13: unexpected ''' (expected a value)");
    EXPECT_ERROR(R"({"version": 1 /* one */})", "x.json:1:15: unexpected '/' (JSON has no comments) (expected ',' or '}')");
}

Test(config_syntax, trailing_garbage) {
    EXPECT_ERROR(R"({"version": 1, "rules": []} x)", "x.json:1:29: unexpected 'x' (expected end of input)");
    EXPECT_ERROR(R"({"version": 1, "rules": []}})", "x.json:1:28: unexpected '}' (expected end of input)");
    EXPECT_ERROR(R"({} {})", "x.json:1:4: unexpected '{' (expected end of input)");
}

Test(config_syntax, truncated) {
    EXPECT_ERROR("{", "x.json:1:2: unexpected end of input (expected a key in double quotes)");
    EXPECT_ERROR("{\"version\": 1,\n", "x.json:2:1: unexpected end of input (expected a key in double quotes)");
    EXPECT_ERROR("{\"version\": 1", "x.json:1:14: unexpected end of input (expected ',' or '}')");
    EXPECT_ERROR("{\"version\": [", "x.json:1:14: unexpected end of input (expected a value)");
    EXPECT_ERROR("{\"version\": 1, \"rules\": \"abc", "x.json:1:25: unterminated string (missing closing quote)");
}

Test(config_syntax, bad_strings) {
    EXPECT_ERROR("{\"a\": \"x\ny\"}",
                 "x.json:1:9: invalid string: control character U+000A (LF) must be escaped to \\u000A or \\n");
    EXPECT_ERROR(R"({"a": "\q"})", "x.json:1:9: invalid string: forbidden character after backslash");
    EXPECT_ERROR("{\"a\": \"\xff\"}", "x.json:1:8: invalid string: ill-formed UTF-8 byte");
    EXPECT_ERROR(R"({"a": "\ud800"})",
                 "x.json:1:14: invalid string: surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF");
}

Test(config_syntax, bad_numbers) {
    EXPECT_ERROR(R"({"version": -})", "x.json:1:14: invalid number (expected digit after '-')");
    EXPECT_ERROR(R"({"version": 1.})", "x.json:1:15: invalid number (expected digit after '.')");
    EXPECT_ERROR(R"({"version": 01})", "x.json:1:14: unexpected number 1 (expected ',' or '}')");
    EXPECT_ERROR(R"({"version": 1e999})", "x.json:1:13: number 1e999 is out of range");
}

Test(config_syntax, binary_junk) {
    EXPECT_ERROR(std::string("\x01\x02\x03junk", 7), "x.json:1:1: unexpected byte 0x01 (expected a value)");
    // nlohmann stops at a NUL byte as if the input ended there; the parser does not.
    EXPECT_ERROR(std::string("\0{}", 3), "x.json:1:1: unexpected byte 0x00 (a JSON file is text)");
    EXPECT_ERROR(std::string("{\"version\": 1, \"rules\": []}\n\0", 30),
                 "x.json:2:1: unexpected byte 0x00 (a JSON file is text)");
    // Random bytes: never a crash, always one line.
    unsigned seed = 12345;
    for (int round = 0; round < 200; ++round) {
        std::string junk;
        for (int i = 0; i < 64; ++i) {
            seed = seed * 1103515245u + 12345u;
            junk.push_back(static_cast<char>(seed >> 16));
        }
        parse_error(junk);
        parse_error("{\"version\": 1, \"rules\": [" + junk);
    }
}

// ---- hostile input ------------------------------------------------------------------------

Test(config_hostile, nesting_within_limit_reaches_schema) {
    std::string deep = std::string(kConfigMaxDepth - 1, '[') + std::string(kConfigMaxDepth - 1, ']');
    EXPECT_ERROR(with_member("\"x\": " + deep), "x.json: unknown key \"x\"");
}

Test(config_hostile, nesting_too_deep) {
    std::string deep = std::string(kConfigMaxDepth, '[') + std::string(kConfigMaxDepth, ']');
    EXPECT_ERROR(R"({"x": )" + deep + "}", "x.json:1:70: nested deeper than 64 levels");
    // Brackets inside strings (escaped quotes included) do not count.
    const std::string prefix = R"({"s": "[[[{{{\"[[[[", "x": )";
    EXPECT_ERROR(prefix + deep + "}", "x.json:1:" + std::to_string(prefix.size() + kConfigMaxDepth) +
                                          ": nested deeper than 64 levels");
}

Test(config_hostile, nesting_huge) {
    const std::string deep(1000000, '[');
    EXPECT_ERROR(deep, "x.json:1:65: nested deeper than 64 levels");
    std::string objects;
    for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
    EXPECT_ERROR(objects, "x.json:1:321: nested deeper than 64 levels");
}

Test(config_hostile, huge_numbers) {
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 18446744073709551616})"),
                 "x.json: rules[0].size: expected a size (bytes as an integer or a string like \"64KiB\"), got 1.8446744073709552e+19");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1e300})"),
                 "x.json: rules[0].size: expected a size (bytes as an integer or a string like \"64KiB\"), got 1e+300");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": "18446744073709551616"})"),
                 "x.json: rules[0].size: expected a size (bytes as an integer or a string like \"64KiB\"), got \"18446744073709551616\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": "17179869184GiB"})"),
                 "x.json: rules[0].size: expected a size (bytes as an integer or a string like \"64KiB\"), got \"17179869184GiB\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "depth": 99999999999999999999, "symbol": "f"})"),
                 "x.json: rules[0].depth: expected an integer from 1 to 64, got 1e+20");
    const Config c = parse_ok(with_rule(R"({"name": "a", "min_size": 18446744073709551615})"));
    cr_assert_eq(c.rules[0].min_size, SIZE_MAX);
}

Test(config_hostile, long_strings_are_cut_in_messages) {
    const std::string longname(100000, 'k');
    EXPECT_ERROR(with_member("\"" + longname + "\": 1"),
                 "x.json: unknown key \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...\"");
    EXPECT_ERROR(with_policy("{\"on_lock_failure\": \"" + longname + "\"}"),
                 "x.json: policy.on_lock_failure: expected one of \"fallback\", \"deny\", \"abort\", got "
                 "\"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...\"");
}

Test(config_hostile, many_rules) {
    std::string rules;
    for (int i = 0; i < 5000; ++i) rules += (i ? "," : "") + std::string("{\"name\": \"r") + std::to_string(i) + "\", \"size\": " + std::to_string(i) + "}";
    EXPECT_ERROR(with_rule(rules), "x.json: rules: at most 256 rules, got 5000");
}

Test(config_hostile, nul_in_strings) {
    EXPECT_ERROR(with_member(R"("log": {"file": "/tmp/a\u0000b"})"),
                 "x.json: log.file: expected a string without NUL characters, got \"/tmp/a\\u0000b\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "symbol": "f\u0000*"})"),
                 "x.json: rules[0].symbol: expected a string without NUL characters, got \"f\\u0000*\"");
}

// ---- rules --------------------------------------------------------------------------------

Test(config_rules, not_an_object) {
    EXPECT_ERROR(with_rule("32"), "x.json: rules[0]: expected an object, got 32");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1}, [])"), "x.json: rules[1]: expected an object, got an array");
}

Test(config_rules, name) {
    EXPECT_ERROR(with_rule(R"({"size": 32})"), "x.json: rules[0]: missing required key \"name\"");
    EXPECT_ERROR(with_rule(R"({"name": "", "size": 32})"), "x.json: rules[0].name: expected a non-empty string, got \"\"");
    EXPECT_ERROR(with_rule(R"({"name": 5, "size": 32})"), "x.json: rules[0].name: expected a non-empty string, got 5");
    EXPECT_ERROR(with_rule(R"({"name": "k", "size": 32}, {"name": "b", "size": 1}, {"name": "k", "size": 64})"),
                 "x.json: rules[2].name: duplicate rule name \"k\" (also rules[0])");
}

Test(config_rules, needs_a_condition) {
    EXPECT_ERROR(with_rule(R"({"name": "a"})"),
                 "x.json: rules[0]: a rule needs at least one condition: \"size\", \"min_size\", \"max_size\", "
                 "\"symbol\" or \"module\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "actions": ["lock"]})"),
                 "x.json: rules[0]: a rule needs at least one condition: \"size\", \"min_size\", \"max_size\", "
                 "\"symbol\" or \"module\"");
}

Test(config_rules, size_exclusive_with_range) {
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 32, "min_size": 16})"),
                 "x.json: rules[0]: \"size\" cannot be combined with \"min_size\" or \"max_size\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 32, "max_size": 64})"),
                 "x.json: rules[0]: \"size\" cannot be combined with \"min_size\" or \"max_size\"");
}

Test(config_rules, min_above_max) {
    EXPECT_ERROR(with_rule(R"({"name": "a", "min_size": "4KiB", "max_size": 64})"),
                 "x.json: rules[0]: \"min_size\" (4096) is greater than \"max_size\" (64)");
}

Test(config_rules, bad_sizes) {
    EXPECT_ERROR(R"({"version": 1, "rules": [{"name": "a", "size": 1}, {"name": "b", "size": 2},
                   {"name": "c", "min_size": 1, "max_size": "12 parsecs"}]})",
                 "x.json: rules[2].max_size: expected a size (bytes as an integer or a string like \"64KiB\"), "
                 "got \"12 parsecs\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": -1})"),
                 "x.json: rules[0].size: expected a size (bytes as an integer or a string like \"64KiB\"), got -1");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 32.5})"),
                 "x.json: rules[0].size: expected a size (bytes as an integer or a string like \"64KiB\"), got 32.5");
    EXPECT_ERROR(with_rule(R"({"name": "a", "min_size": null})"),
                 "x.json: rules[0].min_size: expected a size (bytes as an integer or a string like \"64KiB\"), got null");
    EXPECT_ERROR(with_rule(R"({"name": "a", "min_size": [1]})"),
                 "x.json: rules[0].min_size: expected a size (bytes as an integer or a string like \"64KiB\"), got an array");
    EXPECT_ERROR(with_rule(R"({"name": "a", "min_size": "64KB"})"),
                 "x.json: rules[0].min_size: expected a size (bytes as an integer or a string like \"64KiB\"), got \"64KB\"");
}

Test(config_rules, actions) {
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1, "actions": []})"),
                 "x.json: rules[0].actions: expected a non-empty array of \"lock\", \"dontdump\", \"wipe\", got an array");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1, "actions": "lock"})"),
                 "x.json: rules[0].actions: expected a non-empty array of \"lock\", \"dontdump\", \"wipe\", got \"lock\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1, "actions": ["lock", "lok"]})"),
                 "x.json: rules[0].actions[1]: expected one of \"lock\", \"dontdump\", \"wipe\", got \"lok\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1, "actions": ["wipe", "lock", "wipe"]})"),
                 "x.json: rules[0].actions[2]: duplicate action \"wipe\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1, "actions": [1]})"),
                 "x.json: rules[0].actions[0]: expected one of \"lock\", \"dontdump\", \"wipe\", got 1");
}

Test(config_rules, depth) {
    EXPECT_ERROR(with_rule(R"({"name": "a", "size": 1, "depth": 2})"),
                 "x.json: rules[0]: \"depth\" needs \"symbol\" or \"module\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "symbol": "f", "depth": 0})"),
                 "x.json: rules[0].depth: expected an integer from 1 to 64, got 0");
    EXPECT_ERROR(with_rule(R"({"name": "a", "symbol": "f", "depth": 65})"),
                 "x.json: rules[0].depth: expected an integer from 1 to 64, got 65");
    EXPECT_ERROR(with_rule(R"({"name": "a", "symbol": "f", "depth": "4"})"),
                 "x.json: rules[0].depth: expected an integer from 1 to 64, got \"4\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": "m", "depth": -3})"),
                 "x.json: rules[0].depth: expected an integer from 1 to 64, got -3");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": "m", "depth": 2.0})"),
                 "x.json: rules[0].depth: expected an integer from 1 to 64, got 2.0");
}

Test(config_rules, symbol_and_module) {
    EXPECT_ERROR(with_rule(R"({"name": "a", "symbol": ""})"), "x.json: rules[0].symbol: expected a non-empty string, got \"\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": 3})"),
                 "x.json: rules[0].module: expected a glob or a non-empty array of globs, got 3");
    EXPECT_ERROR(with_rule(R"({"name": "a", "symbol": "load_[key"})"),
                 "x.json: rules[0].symbol: invalid glob \"load_[key\": '[' without a matching ']'");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": "lib[z-a].so"})"),
                 "x.json: rules[0].module: invalid glob \"lib[z-a].so\": a range in [...] runs backwards");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": "lib\\"})"),
                 "x.json: rules[0].module: invalid glob \"lib\\\\\": ends with a lone '\\'");
}

Test(config_rules, module_list) {
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": []})"),
                 "x.json: rules[0].module: expected a glob or a non-empty array of globs, got an empty array");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": {"glob": "m"}})"),
                 "x.json: rules[0].module: expected a glob or a non-empty array of globs, got an object");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": ["libcrypto.so*", 3]})"),
                 "x.json: rules[0].module[1]: expected a non-empty string, got 3");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": ["", "m"]})"),
                 "x.json: rules[0].module[0]: expected a non-empty string, got \"\"");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": ["m", ["n"]]})"),
                 "x.json: rules[0].module[1]: expected a non-empty string, got an array");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": ["libssl.so*", "lib[z-a].so"]})"),
                 "x.json: rules[0].module[1]: invalid glob \"lib[z-a].so\": a range in [...] runs backwards");
    EXPECT_ERROR(with_rule(R"({"name": "a", "module": ["libssl.so*", "libx.so", "libssl.so*"]})"),
                 "x.json: rules[0].module[2]: duplicate glob \"libssl.so*\" (also rules[0].module[0])");
}

// ---- policy, log, stats, programs ----------------------------------------------------------

Test(config_policy, types) {
    EXPECT_ERROR(with_policy("[]"), "x.json: policy: expected an object, got an array");
    EXPECT_ERROR(with_policy(R"({"on_lock_failure": "explode"})"),
                 "x.json: policy.on_lock_failure: expected one of \"fallback\", \"deny\", \"abort\", got \"explode\"");
    EXPECT_ERROR(with_policy(R"({"on_lock_failure": 1})"),
                 "x.json: policy.on_lock_failure: expected one of \"fallback\", \"deny\", \"abort\", got 1");
    EXPECT_ERROR(with_policy(R"({"prealloc": "lots"})"),
                 "x.json: policy.prealloc: expected a size (bytes as an integer or a string like \"64KiB\"), got \"lots\"");
}

Test(config_policy, backing) {
    cr_assert(parse_ok(with_policy("{}")).policy.backing == Backing::anonymous, "the default is anonymous");
    const char *names[] = {"anonymous", "secretmem", "auto"};
    const Backing expected[] = {Backing::anonymous, Backing::secretmem, Backing::automatic};
    for (int i = 0; i < 3; ++i)
        cr_assert(parse_ok(with_policy(std::string(R"({"backing": ")") + names[i] + "\"}")).policy.backing ==
                  expected[i]);
    EXPECT_ERROR(with_policy(R"({"backing": "secret"})"),
                 "x.json: policy.backing: expected one of \"anonymous\", \"secretmem\", \"auto\", got \"secret\"");
    EXPECT_ERROR(with_policy(R"({"backing": true})"),
                 "x.json: policy.backing: expected one of \"anonymous\", \"secretmem\", \"auto\", got true");
    // secretmem is locked memory: with no rule that locks it would back nothing.
    EXPECT_ERROR(R"({"version": 1, "rules": [{"name": "k", "size": 32, "actions": ["wipe"]}],
                    "policy": {"backing": "secretmem"}})",
                 "x.json: policy.backing: \"secretmem\" backs the blocks of rules with the \"lock\" action, and no "
                 "rule has it");
    cr_assert(parse_ok(R"({"version": 1, "rules": [{"name": "k", "size": 32, "actions": ["wipe"]}],
                          "policy": {"backing": "auto"}})").policy.backing == Backing::automatic);
}

Test(config_policy, max_locked) {
    EXPECT_ERROR(with_policy(R"({"max_locked": 0})"),
                 "x.json: policy.max_locked: expected a size from 1 byte to 64 GiB, got 0");
    EXPECT_ERROR(with_policy(R"({"max_locked": "65GiB"})"),
                 "x.json: policy.max_locked: expected a size from 1 byte to 64 GiB, got \"65GiB\"");
    EXPECT_ERROR(with_policy(R"({"max_locked": "big"})"),
                 "x.json: policy.max_locked: expected a size (bytes as an integer or a string like \"64KiB\"), got \"big\"");
}

Test(config_policy, max_arena) {
    EXPECT_ERROR(with_policy(R"({"max_arena": 4096})"),
                 "x.json: policy.max_arena: expected a size from 1 MiB to 64 GiB, got 4096");
    EXPECT_ERROR(with_policy(R"({"max_arena": "1TiB"})"),
                 "x.json: policy.max_arena: expected a size from 1 MiB to 64 GiB, got \"1TiB\"");
    EXPECT_ERROR(with_policy(R"({"max_locked": "2GiB", "max_arena": "1GiB"})"),
                 "x.json: policy: \"max_arena\" (1073741824) is less than \"max_locked\" (2147483648)");
}

Test(config_policy, scrub_stack) {
    cr_assert_eq(parse_ok(with_policy("{}")).policy.scrub_stack, 0u, "off by default");
    cr_assert_eq(parse_ok(with_policy(R"({"scrub_stack": "64KiB"})")).policy.scrub_stack, 65536u);
    cr_assert_eq(parse_ok(with_policy(R"({"scrub_stack": 0})")).policy.scrub_stack, 0u);
    EXPECT_ERROR(with_policy(R"({"scrub_stack": "2GiB"})"),
                 "x.json: policy.scrub_stack: expected a size from 0 to 1 GiB, got \"2GiB\"");
    EXPECT_ERROR(with_policy(R"({"scrub_stack": true})"),
                 "x.json: policy.scrub_stack: expected a size (bytes as an integer or a string like \"64KiB\"), got true");
    // The stack is scrubbed when a wiped block is freed: with no rule that wipes, never.
    EXPECT_ERROR(R"({"version": 1, "rules": [{"name": "k", "size": 32, "actions": ["lock"]}],
                    "policy": {"scrub_stack": 4096}})",
                 "x.json: policy.scrub_stack: the stack is scrubbed when a block of a rule with the \"wipe\" action "
                 "is freed, and no rule has it");
}

Test(config_policy, prealloc_within_max_locked) {
    EXPECT_ERROR(with_policy(R"({"max_locked": "1MiB", "prealloc": "2MiB"})"),
                 "x.json: policy: \"prealloc\" (2097152) exceeds \"max_locked\" (1048576)");
    EXPECT_ERROR(with_policy(R"({"prealloc": "65MiB"})"),
                 "x.json: policy: \"prealloc\" (68157440) exceeds \"max_locked\" (67108864)");
}

Test(config_log_stats, errors) {
    EXPECT_ERROR(with_member(R"("log": "stderr")"), "x.json: log: expected an object, got \"stderr\"");
    EXPECT_ERROR(with_member(R"("log": {"level": "verbose"})"),
                 "x.json: log.level: expected one of \"error\", \"warn\", \"info\", \"debug\", got \"verbose\"");
    EXPECT_ERROR(with_member(R"("log": {"file": ""})"), "x.json: log.file: expected a non-empty string, got \"\"");
    EXPECT_ERROR(with_member(R"("log": {"file": "logs/memlock.log"})"),
                 "x.json: log.file: expected \"stderr\" or an absolute path, got \"logs/memlock.log\"");
    EXPECT_ERROR(with_member(R"("stats": {"file": "stats.json"})"),
                 "x.json: stats.file: expected an absolute path, got \"stats.json\"");
    EXPECT_ERROR(with_member(R"("stats": {"file": "stderr"})"), "x.json: stats.file: expected an absolute path, got \"stderr\"");
    EXPECT_ERROR(with_member(R"("stats": {"file": false})"), "x.json: stats.file: expected a non-empty string, got false");
    EXPECT_ERROR(with_member(R"("stats": 1)"), "x.json: stats: expected an object, got 1");
}

Test(config_programs, errors) {
    EXPECT_ERROR(with_member(R"("programs": "redis-server")"),
                 "x.json: programs: expected an array of program names or globs, got \"redis-server\"");
    EXPECT_ERROR(with_member(R"("programs": ["a", ""])"), "x.json: programs[1]: expected a non-empty string, got \"\"");
    EXPECT_ERROR(with_member(R"("programs": [{}])"), "x.json: programs[0]: expected a non-empty string, got an object");
    EXPECT_ERROR(with_member(R"("programs": ["ok", "/usr/sbin/[abc"])"),
                 "x.json: programs[1]: invalid glob \"/usr/sbin/[abc\": '[' without a matching ']'");
}

// ---- sizes --------------------------------------------------------------------------------

Test(config_size, valid) {
    cr_assert_eq(size_of("0"), 0u);
    cr_assert_eq(size_of("4096"), 4096u);
    cr_assert_eq(size_of("4096B"), 4096u);
    cr_assert_eq(size_of("4K"), 4096u);
    cr_assert_eq(size_of("64KiB"), 65536u);
    cr_assert_eq(size_of("1 MiB"), 1048576u);
    cr_assert_eq(size_of("3M"), 3u << 20);
    cr_assert_eq(size_of("2GiB"), std::size_t{2} << 30);
    cr_assert_eq(size_of("5 G"), std::size_t{5} << 30);
    cr_assert_eq(size_of("1TiB"), std::size_t{1} << 40);
    cr_assert_eq(size_of("007"), 7u);
    cr_assert_eq(size_of("18446744073709551615"), SIZE_MAX);
    cr_assert_eq(size_of("16777215TiB"), std::size_t{16777215} << 40);
}

Test(config_size, invalid) {
    const char *bad[] = {"", " ", "K", "-1", "+1", "1.5K", "1e3", "64KB", "64kib", "64 kB", " 64", "64 ", "64KiB ",
                         "64 KiB B", "12 parsecs", "0x10", "1,024", "18446744073709551616", "16777216TiB",
                         "17179869184GiB", "99999999999999999999999"};
    for (const char *s : bad) cr_assert(size_rejected(s), "accepted size \"%s\"", s);
}

// ---- globs --------------------------------------------------------------------------------

Test(config_glob, literal_star_question) {
    cr_assert(glob_match("redis-server", "redis-server"));
    cr_assert_not(glob_match("redis-server", "redis-server2"));
    cr_assert_not(glob_match("redis-server", "redis-serve"));
    cr_assert(glob_match("*", ""));
    cr_assert(glob_match("*", "anything"));
    cr_assert(glob_match("load_*key*", "load_private_key_file"));
    cr_assert(glob_match("load_*key*", "load_key"));
    cr_assert_not(glob_match("load_*key*", "load_kex"));
    cr_assert(glob_match("libcrypto.so*", "libcrypto.so.3"));
    cr_assert(glob_match("libcrypto.so*", "libcrypto.so"));
    cr_assert_not(glob_match("libcrypto.so*", "libcrypto.s"));
    cr_assert(glob_match("a?c", "abc"));
    cr_assert_not(glob_match("a?c", "ac"));
    cr_assert(glob_match("*a*b*c*", "xxaxxbxxcxx"));
    cr_assert_not(glob_match("*a*b*c*", "xxcxxbxxaxx"));
    cr_assert(glob_match("**", "x"));
    cr_assert(glob_match("/usr/sbin/*", "/usr/sbin/sshd"));
    cr_assert(glob_match("/usr/sbin/*", "/usr/sbin/a/b"));  // '*' crosses '/'
    cr_assert_not(glob_match("", "x"));
    cr_assert(glob_match("", ""));
    cr_assert_not(glob_match(nullptr, "x"));
    cr_assert_not(glob_match("x", nullptr));
}

Test(config_glob, brackets) {
    cr_assert(glob_match("[abc]", "b"));
    cr_assert_not(glob_match("[abc]", "d"));
    cr_assert(glob_match("lib[a-z].so", "libq.so"));
    cr_assert_not(glob_match("lib[a-z].so", "lib1.so"));
    cr_assert(glob_match("[!x]", "y"));
    cr_assert_not(glob_match("[!x]", "x"));
    cr_assert(glob_match("[^x]", "y"));
    cr_assert(glob_match("[]]", "]"));
    cr_assert(glob_match("[!]]", "a"));
    cr_assert_not(glob_match("[!]]", "]"));
    cr_assert(glob_match("[a-]", "-"));
    cr_assert(glob_match("[0-9][0-9]*", "42abc"));
    cr_assert(glob_match("libssl.so.[0-9]*", "libssl.so.3"));
    cr_assert(glob_match("[\\]]", "]"));
    cr_assert(glob_match("*[xyz]", "aaaz"));
    cr_assert(glob_match("[\xc3]*", "\xc3\xa9"));  // bytes compare unsigned
}

Test(config_glob, escapes) {
    cr_assert(glob_match("a\\*b", "a*b"));
    cr_assert_not(glob_match("a\\*b", "axb"));
    cr_assert(glob_match("\\[x]", "[x]"));
    cr_assert(glob_match("a\\?", "a?"));
}

Test(config_glob, pathological_is_fast) {
    const std::string text(10000, 'a');
    cr_assert_not(glob_match("*a*a*a*a*a*a*a*a*a*a*b", text.c_str()));
}

Test(config_glob, validity) {
    std::string why;
    const char *good[] = {"a", "*", "?", "[abc]", "[a-z]", "[!x]", "[]]", "[!]a]", "a\\*", "[a-]", "]", "lib*.so.[0-9]*"};
    for (const char *g : good) cr_assert(glob_valid(g, why), "rejected glob \"%s\": %s", g, why.c_str());
    EXPECT_STR(glob_error(""), "empty pattern");
    EXPECT_STR(glob_error("[abc"), "'[' without a matching ']'");
    EXPECT_STR(glob_error("[]"), "'[' without a matching ']'");
    EXPECT_STR(glob_error("[!]"), "'[' without a matching ']'");
    EXPECT_STR(glob_error("[a\\"), "'[' without a matching ']'");
    EXPECT_STR(glob_error("x\\"), "ends with a lone '\\'");
    EXPECT_STR(glob_error("[z-a]"), "a range in [...] runs backwards");
    EXPECT_STR(glob_error(std::string("a\0b", 3)), "contains a NUL character");
}

// ---- program matching ---------------------------------------------------------------------

Test(config_programs, matching) {
    Config c;
    cr_assert(program_matches(c, "/usr/bin/anything"));
    cr_assert(program_matches(c, nullptr));
    c = parse_ok(with_member(R"("programs": ["redis-server", "/usr/sbin/*", "py*3*"])"));
    cr_assert(program_matches(c, "/usr/bin/redis-server"));
    cr_assert(program_matches(c, "redis-server"));
    cr_assert_not(program_matches(c, "/usr/bin/redis-server-check"));
    cr_assert(program_matches(c, "/usr/sbin/sshd"));
    cr_assert_not(program_matches(c, "/usr/local/sbin/sshd"));
    cr_assert_not(program_matches(c, "sshd"));
    cr_assert(program_matches(c, "/usr/bin/python3.11"));
    cr_assert_not(program_matches(c, "/usr/bin/perl"));
    cr_assert_not(program_matches(c, nullptr));
    cr_assert_not(program_matches(c, "/usr/bin/"));
    // A basename pattern never sees the directory part.
    c = parse_ok(with_member(R"("programs": ["*bin*"])"));
    cr_assert_not(program_matches(c, "/usr/bin/ls"));
    cr_assert(program_matches(c, "/opt/x/mybinary"));
}

// ---- files --------------------------------------------------------------------------------

Test(config_file, load_and_errors) {
    memlock_test::TempDir dir("memlock-config");
    cr_assert(dir.ok());
    Config c;
    std::string error;

    const std::string good = dir.file("good.json");
    cr_assert(memlock_test::write_file(good, R"({"version": 1, "rules": [{"name": "k", "size": "32"}]})"));
    cr_assert(load_config_file(good, c, error), "%s", error.c_str());
    cr_assert_eq(c.source, good);
    cr_assert_eq(c.rules[0].max_size, 32u);

    const std::string bad = dir.file("bad.json");
    cr_assert(memlock_test::write_file(bad, "{\n  \"version\": 1,\n  \"rules\": [],\n  \"policy\": {\"max_locked\": 0}\n}\n"));
    cr_assert_not(load_config_file(bad, c, error));
    EXPECT_STR(error, bad + ": policy.max_locked: expected a size from 1 byte to 64 GiB, got 0");

    const std::string syntax = dir.file("syntax.json");
    cr_assert(memlock_test::write_file(syntax, "{\n  \"version\": 1,\n  \"rules\": [\n}\n"));
    cr_assert_not(load_config_file(syntax, c, error));
    EXPECT_STR(error, syntax + ":4:1: unexpected '}' (expected a value)");

    const std::string empty = dir.file("empty.json");
    cr_assert(memlock_test::write_file(empty, ""));
    cr_assert_not(load_config_file(empty, c, error));
    EXPECT_STR(error, empty + ": empty file (expected a JSON object)");

    cr_assert_not(load_config_file(dir.file("missing.json"), c, error));
    EXPECT_STR(error, dir.file("missing.json") + ": No such file or directory");

    cr_assert_not(load_config_file(dir.path(), c, error));
    EXPECT_STR(error, dir.path() + ": Is a directory");

    cr_assert_not(load_config_file("", c, error));
    EXPECT_STR(error, "\"\": No such file or directory");

    cr_assert_not(load_config_file("/dev/null", c, error));
    EXPECT_STR(error, "/dev/null: not a regular file");

    const std::string fifo = dir.file("fifo");
    cr_assert_eq(::mkfifo(fifo.c_str(), 0600), 0);
    cr_assert_not(load_config_file(fifo, c, error));  // must not block
    EXPECT_STR(error, fifo + ": not a regular file");
}

Test(config_file, unreadable) {
    if (::geteuid() == 0) cr_skip_test("root reads any file");
    memlock_test::TempDir dir("memlock-config");
    const std::string path = dir.file("secret.json");
    cr_assert(memlock_test::write_file(path, "{}", 0000));
    Config c;
    std::string error;
    cr_assert_not(load_config_file(path, c, error));
    EXPECT_STR(error, path + ": Permission denied");
}

Test(config_file, size_limit) {
    memlock_test::TempDir dir("memlock-config");
    // Exactly the limit: read, then judged as JSON.
    std::string text = R"({"version": 1, "rules": []})";
    text += std::string(kConfigMaxFileSize - text.size(), ' ');
    const std::string at_limit = dir.file("at-limit.json");
    cr_assert(memlock_test::write_file(at_limit, text));
    Config c;
    std::string error;
    cr_assert(load_config_file(at_limit, c, error), "%s", error.c_str());

    const std::string over = dir.file("over.json");
    cr_assert(memlock_test::write_file(over, text + " "));
    cr_assert_not(load_config_file(over, c, error));
    EXPECT_STR(error, over + ": file too large (the limit is 1048576 bytes)");
}

// Every shipped example parses.
Test(config_file, shipped_examples_parse) {
    const char *srcdir = std::getenv("MEMLOCK_TEST_SRCDIR");
    const std::string dir = std::string(srcdir && *srcdir ? srcdir : ".") + "/config";
    DIR *d = ::opendir(dir.c_str());
    cr_assert(d, "cannot open %s (run from the repository root or set MEMLOCK_TEST_SRCDIR)", dir.c_str());
    std::vector<std::string> names;
    while (const dirent *e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0) names.push_back(name);
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    const char *required[] = {"default.json",  "size-only.json", "library-wide.json",
                              "function-rule.json", "match-all.json", "match-none.json"};
    for (const char *r : required)
        cr_assert(std::find(names.begin(), names.end(), r) != names.end(), "config/%s is missing", r);
    for (const std::string &name : names) {
        Config c;
        std::string error;
        cr_assert(load_config_file(dir + "/" + name, c, error), "%s", error.c_str());
    }
}

Test(config_document, at_most_256_rules) {
    auto rules_text = [](int n) {
        std::string t = R"({"version": 1, "rules": [)";
        for (int i = 0; i < n; ++i) t += (i ? "," : "") + std::string(R"({"name": "r)") + std::to_string(i) + R"(", "size": 32})";
        return t + "]}";
    };
    cr_assert_eq(parse_ok(rules_text(256)).rules.size(), 256u);
    EXPECT_ERROR(rules_text(257), "x.json: rules: at most 256 rules, got 257");
}
