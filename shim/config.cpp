// config.cpp - the JSON config: syntax, then schema.
//
// Syntax: nlohmann's SAX parser (iterative) feeds a DOM builder that bounds the nesting depth
// and rejects duplicate keys; syntax errors are rewritten as "<source>:<line>:<column>: ...".
// Schema: a walk over the DOM that carries the JSON path of every value and throws
// SchemaError{path, message} at the first violation; parse_config turns that into one line.
// Globs are matched by our own non-allocating matcher (glob_match), not fnmatch(3).
#include "config.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <new>
#include <utility>

#include <nlohmann/json.hpp>

namespace mlshim {
namespace {

using json = nlohmann::json;

static_assert(sizeof(std::size_t) == sizeof(std::uint64_t), "sizes are parsed as 64-bit");

// ---- text helpers ---------------------------------------------------------------------------

// Replaces control bytes so that a message stays on one line whatever a path or key holds.
std::string one_line(std::string s) {
    for (char &c : s)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return s;
}

// `s` as a JSON string literal, cut to `max` bytes ("..." marks the cut).
std::string quote(const std::string &s, std::size_t max = 40) {
    const bool cut = s.size() > max;
    std::string q = json(cut ? s.substr(0, max) : s).dump(-1, ' ', false, json::error_handler_t::replace);
    if (cut) q.insert(q.size() - 1, "...");
    return q;
}

// A value as the "got ..." part of a message.
std::string describe(const json &v) {
    switch (v.type()) {
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return quote(v.get_ref<const std::string &>());
    default: return v.dump();
    }
}

bool is_identifier(const std::string &key) {
    if (key.empty()) return false;
    for (char c : key)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) return false;
    return true;
}

// JSON path of `key` inside the value at `parent`: "rules[2].max_size", `a["b c"]`.
std::string key_path(const std::string &parent, const std::string &key) {
    if (!is_identifier(key)) return parent + "[" + quote(key) + "]";
    return parent.empty() ? key : parent + "." + key;
}

std::string index_path(const std::string &parent, std::size_t i) {
    return parent + "[" + std::to_string(i) + "]";
}

// ---- syntax ---------------------------------------------------------------------------------

// Builds the DOM from SAX events. Stops (returns false) at a duplicate key or when nesting
// exceeds kConfigMaxDepth, so nothing downstream ever sees a deep or ambiguous document.
class DomBuilder final : public nlohmann::json_sax<json> {
public:
    enum class Stop { none, syntax, depth, duplicate };

    json root;
    Stop stop = Stop::none;
    std::size_t error_position = 0;  // syntax: nlohmann's byte count (1-based)
    std::string error_token, error_what;
    std::string duplicate_path, duplicate_key;

    bool null() override { return put(nullptr); }
    bool boolean(bool v) override { return put(v); }
    bool number_integer(number_integer_t v) override { return put(v); }
    bool number_unsigned(number_unsigned_t v) override { return put(v); }
    bool number_float(number_float_t v, const string_t &) override { return put(v); }
    bool string(string_t &v) override { return put(std::move(v)); }
    bool binary(binary_t &v) override { return put(json::binary(std::move(v))); }
    bool start_object(std::size_t) override { return open(json::object()); }
    bool start_array(std::size_t) override { return open(json::array()); }
    bool end_object() override { return close(); }
    bool end_array() override { return close(); }

    bool key(string_t &k) override {
        json &object = *open_.back().value;
        if (object.contains(k)) {
            stop = Stop::duplicate;
            duplicate_path = open_.back().path;
            duplicate_key = k;
            return false;
        }
        slot_ = &object[k];
        key_ = k;
        return true;
    }

    bool parse_error(std::size_t position, const std::string &last_token,
                     const nlohmann::detail::exception &ex) override {
        stop = Stop::syntax;
        error_position = position;
        error_token = last_token;
        error_what = ex.what();
        return false;
    }

private:
    struct Open {
        json *value;
        std::string path;
    };
    std::vector<Open> open_;
    json *slot_ = nullptr;  // the object member the next value goes to
    std::string key_;       // its key

    // Path of the value about to be placed.
    std::string next_path() const {
        if (open_.empty()) return "";
        const Open &parent = open_.back();
        if (parent.value->is_array()) return index_path(parent.path, parent.value->size());
        return key_path(parent.path, key_);
    }

    json *place(json &&v) {
        if (open_.empty()) {
            root = std::move(v);
            return &root;
        }
        json &parent = *open_.back().value;
        if (parent.is_array()) {
            parent.push_back(std::move(v));
            return &parent.back();
        }
        *slot_ = std::move(v);
        return slot_;
    }

    bool put(json &&v) {
        place(std::move(v));
        return true;
    }

    bool open(json &&v) {
        if (open_.size() >= kConfigMaxDepth) {
            stop = Stop::depth;
            return false;
        }
        std::string path = next_path();
        json *p = place(std::move(v));
        open_.push_back({p, std::move(path)});
        return true;
    }

    bool close() {
        open_.pop_back();
        return true;
    }
};

struct LineColumn {
    std::size_t line, column;  // both 1-based; columns count bytes
};

LineColumn line_column(const std::string &text, std::size_t offset) {
    LineColumn lc{1, 1};
    for (std::size_t i = 0; i < offset && i < text.size(); ++i) {
        if (text[i] == '\n') {
            ++lc.line;
            lc.column = 1;
        } else {
            ++lc.column;
        }
    }
    return lc;
}

// Walks the text as JSON tokens up to `limit`, outside and inside strings. Returns the offset
// of the first bracket nested deeper than kConfigMaxDepth (or npos), and sets `string_start`
// to the opening quote of the string open at `limit` (npos when none is).
std::size_t scan(const std::string &text, std::size_t limit, std::size_t &string_start) {
    unsigned depth = 0;
    bool in_string = false, escaped = false;
    string_start = std::string::npos;
    for (std::size_t i = 0; i < text.size() && i < limit; ++i) {
        const char c = text[i];
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
            string_start = i;
        } else if (c == '[' || c == '{') {
            if (++depth > kConfigMaxDepth) return i;
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    if (!in_string) string_start = std::string::npos;
    return std::string::npos;
}

// Text between `from` and `to` in `s` (to npos: the rest); empty when `from` is absent.
std::string between(const std::string &s, const std::string &from, const std::string &to) {
    std::size_t b = s.find(from);
    if (b == std::string::npos) return "";
    b += from.size();
    const std::size_t e = to.empty() ? std::string::npos : s.find(to, b);
    return s.substr(b, e == std::string::npos ? std::string::npos : e - b);
}

// nlohmann's "expected <token>" in plain words.
std::string expected_words(const std::string &expected) {
    if (expected == "'[', '{', or a literal") return "a value";
    if (expected == "string literal") return "a key in double quotes";
    if (expected == "':'") return "':' after the key";
    if (expected == "'}'") return "',' or '}'";
    if (expected == "']'") return "',' or ']'";
    return expected;
}

// The word (or byte) that starts at `at`, for "unexpected ..." messages.
std::string word_at(const std::string &text, std::size_t at) {
    if (at >= text.size()) return "end of input";
    std::size_t end = at;
    while (end < text.size() && end - at < 20 &&
           (std::isalnum(static_cast<unsigned char>(text[end])) || text[end] == '_' || text[end] == '.' ||
            text[end] == '+' || text[end] == '-'))
        ++end;
    if (end > at) return "'" + text.substr(at, end - at) + "'";
    const unsigned char c = static_cast<unsigned char>(text[at]);
    if (c >= 0x20 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
    char hex[16];
    std::snprintf(hex, sizeof hex, "byte 0x%02x", c);
    return hex;
}

// One line for a syntax error nlohmann reported at byte count `position`.
std::string syntax_message(const std::string &text, const std::string &source, std::size_t position,
                           const std::string &token, const std::string &what) {
    std::size_t offset = position > 0 ? position - 1 : 0;  // the byte the parser stopped at
    if (offset > text.size()) offset = text.size();
    const std::size_t token_start = offset + 1 >= token.size() ? offset + 1 - token.size() : 0;
    std::string message, expected;

    if (what.find("number overflow") != std::string::npos) {
        offset = token_start;
        message = "number " + token.substr(0, 40) + " is out of range";
    } else {
        const std::string context = between(what, "while parsing ", " - ");
        std::string detail = between(what, " - ", "");
        const std::string lexer = between(detail, "", "; last read: ");
        const bool lexer_error = detail.find("; last read: ") != std::string::npos;
        expected = between(lexer_error ? between(detail, "; last read: ", "") : detail, "; expected ", "");

        if (!lexer_error) {
            const std::string unexpected = between(detail, "unexpected ", "; expected ");
            if (unexpected == "string literal" || unexpected == "number literal") {
                offset = token_start;
                message = "unexpected " + unexpected.substr(0, unexpected.find(' ')) + " " + token.substr(0, 40);
            } else if (unexpected == "true literal" || unexpected == "false literal" ||
                       unexpected == "null literal") {
                const std::string word = unexpected.substr(0, unexpected.find(' '));
                offset = offset + 1 >= word.size() ? offset + 1 - word.size() : 0;
                message = "unexpected " + word;
            } else {
                message = "unexpected " + unexpected;
            }
        } else if (lexer == "invalid literal") {
            while (offset > 0 && std::isalpha(static_cast<unsigned char>(text[offset - 1]))) --offset;
            message = "unexpected " + word_at(text, offset);
            if (offset < text.size() && text[offset] == '/') message += " (JSON has no comments)";
            if (expected.empty() && context == "value") expected = "'[', '{', or a literal";
        } else if (lexer == "invalid string: missing closing quote") {
            std::size_t string_start;
            scan(text, offset, string_start);
            if (string_start != std::string::npos) offset = string_start;
            message = "unterminated string (missing closing quote)";
        } else {
            const std::size_t semicolon = lexer.find("; expected ");
            message = semicolon == std::string::npos
                          ? lexer
                          : lexer.substr(0, semicolon) + " (expected " + lexer.substr(semicolon + 11) + ")";
        }
    }
    const LineColumn lc = line_column(text, offset);
    std::string out = source + ":" + std::to_string(lc.line) + ":" + std::to_string(lc.column) + ": " + message;
    if (!expected.empty()) out += " (expected " + expected_words(expected) + ")";
    return out;
}

// Parses `text` into `root`; on failure sets `error` (one line) and returns false.
bool parse_json(const std::string &text, const std::string &source, json &root, std::string &error) {
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
        error = source + ": empty file (expected a JSON object)";
        return false;
    }
    // nlohmann's lexer takes a NUL byte for the end of the input: it would accept "{...}\0junk".
    const std::size_t nul = text.find('\0');
    if (nul != std::string::npos) {
        const LineColumn lc = line_column(text, nul);
        error = source + ":" + std::to_string(lc.line) + ":" + std::to_string(lc.column) +
                ": unexpected byte 0x00 (a JSON file is text)";
        return false;
    }
    DomBuilder builder;
    if (json::sax_parse(text, &builder)) {
        root = std::move(builder.root);
        return true;
    }
    switch (builder.stop) {
    case DomBuilder::Stop::duplicate:
        error = source + ": " + (builder.duplicate_path.empty() ? "" : builder.duplicate_path + ": ") +
                "duplicate key " + quote(builder.duplicate_key);
        break;
    case DomBuilder::Stop::depth: {
        std::size_t unused;
        const LineColumn lc = line_column(text, scan(text, text.size(), unused));
        error = source + ":" + std::to_string(lc.line) + ":" + std::to_string(lc.column) +
                ": nested deeper than " + std::to_string(kConfigMaxDepth) + " levels";
        break;
    }
    default:
        error = syntax_message(text, source, builder.error_position, builder.error_token, builder.error_what);
        break;
    }
    return false;
}

// ---- schema ---------------------------------------------------------------------------------

struct SchemaError {
    std::string path, message;
};

[[noreturn]] void fail(const std::string &path, std::string message) {
    throw SchemaError{path, std::move(message)};
}

[[noreturn]] void fail_expected(const std::string &path, const std::string &expected, const json &got) {
    fail(path, "expected " + expected + ", got " + describe(got));
}

const char *const kSizeExpected = "a size (bytes as an integer or a string like \"64KiB\")";

const json *member(const json &object, const char *key) {
    const auto it = object.find(key);
    return it == object.end() ? nullptr : &*it;
}

void require_object(const json &v, const std::string &path) {
    if (!v.is_object()) fail_expected(path, "an object", v);
}

void reject_unknown_keys(const json &object, const std::string &path, std::initializer_list<const char *> known) {
    for (auto it = object.begin(); it != object.end(); ++it) {
        bool ok = false;
        for (const char *k : known) ok = ok || it.key() == k;
        if (!ok) fail(path, "unknown key " + quote(it.key()));
    }
}

std::string get_string(const json &v, const std::string &path) {
    if (!v.is_string() || v.get_ref<const std::string &>().empty()) fail_expected(path, "a non-empty string", v);
    const std::string &s = v.get_ref<const std::string &>();
    if (s.find('\0') != std::string::npos) fail_expected(path, "a string without NUL characters", v);
    return s;
}

// log.file or stats.file: an absolute path (or, where `stderr_ok`, "stderr"). A relative
// path would name a file in each program's working directory: a setuid program run from a
// directory its caller chose would create or append to the file there, as root.
std::string get_output_path(const json &v, const std::string &path, bool stderr_ok) {
    std::string s = get_string(v, path);
    if (s[0] != '/' && !(stderr_ok && s == "stderr"))
        fail_expected(path, stderr_ok ? "\"stderr\" or an absolute path" : "an absolute path", v);
    return s;
}

std::string get_glob(const json &v, const std::string &path) {
    std::string s = get_string(v, path), why;
    if (!glob_valid(s, why)) fail(path, "invalid glob " + quote(s) + ": " + why);
    return s;
}

// "module": one glob, or a non-empty array of distinct globs.
std::vector<std::string> get_globs(const json &v, const std::string &path) {
    if (!v.is_array()) {
        if (!v.is_string()) fail_expected(path, "a glob or a non-empty array of globs", v);
        return {get_glob(v, path)};
    }
    if (v.empty()) fail(path, "expected a glob or a non-empty array of globs, got an empty array");
    std::vector<std::string> globs;
    for (std::size_t i = 0; i < v.size(); ++i) {
        std::string g = get_glob(v[i], index_path(path, i));
        for (std::size_t j = 0; j < globs.size(); ++j)
            if (globs[j] == g) fail(index_path(path, i), "duplicate glob " + quote(g) + " (also " + index_path(path, j) + ")");
        globs.push_back(std::move(g));
    }
    return globs;
}

std::size_t get_size(const json &v, const std::string &path) {
    std::size_t n = 0;
    if (v.is_number_unsigned()) return v.get<std::size_t>();
    if (v.is_string() && parse_size(v.get_ref<const std::string &>(), n)) return n;
    fail_expected(path, kSizeExpected, v);
}

unsigned get_integer(const json &v, const std::string &path, unsigned lo, unsigned hi) {
    if (!v.is_number_unsigned() || v.get<std::uint64_t>() < lo || v.get<std::uint64_t>() > hi)
        fail_expected(path, "an integer from " + std::to_string(lo) + " to " + std::to_string(hi), v);
    return static_cast<unsigned>(v.get<std::uint64_t>());
}

template <typename T>
using Choices = std::initializer_list<std::pair<const char *, T>>;

template <typename T>
T get_choice(const json &v, const std::string &path, Choices<T> choices) {
    if (v.is_string())
        for (const auto &c : choices)
            if (v.get_ref<const std::string &>() == c.first) return c.second;
    std::string expected = "one of";
    const char *separator = " \"";
    for (const auto &c : choices) {
        expected += separator + std::string(c.first) + "\"";
        separator = ", \"";
    }
    fail_expected(path, expected, v);
}

const Choices<unsigned> kActions = {
    {"lock", kActionLock}, {"dontdump", kActionDontdump}, {"wipe", kActionWipe}};

unsigned get_actions(const json &v, const std::string &path) {
    if (!v.is_array() || v.empty()) fail_expected(path, "a non-empty array of \"lock\", \"dontdump\", \"wipe\"", v);
    unsigned actions = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
        const unsigned a = get_choice(v[i], index_path(path, i), kActions);
        if (actions & a) fail(index_path(path, i), "duplicate action " + describe(v[i]));
        actions |= a;
    }
    return actions;
}

Rule get_rule(const json &v, const std::string &path) {
    require_object(v, path);
    reject_unknown_keys(v, path, {"name", "size", "min_size", "max_size", "actions", "symbol", "module", "depth"});
    Rule rule;
    const json *name = member(v, "name");
    if (!name) fail(path, "missing required key \"name\"");
    rule.name = get_string(*name, key_path(path, "name"));

    const json *size = member(v, "size"), *min = member(v, "min_size"), *max = member(v, "max_size");
    if (size) rule.min_size = rule.max_size = get_size(*size, key_path(path, "size"));
    if (min) rule.min_size = get_size(*min, key_path(path, "min_size"));
    if (max) rule.max_size = get_size(*max, key_path(path, "max_size"));
    if (const json *a = member(v, "actions")) rule.actions = get_actions(*a, key_path(path, "actions"));
    if (const json *s = member(v, "symbol")) rule.symbol = get_glob(*s, key_path(path, "symbol"));
    if (const json *m = member(v, "module")) rule.module = get_globs(*m, key_path(path, "module"));
    const json *depth = member(v, "depth");
    if (depth) rule.depth = get_integer(*depth, key_path(path, "depth"), 1, kRuleMaxDepth);

    if (size && (min || max)) fail(path, "\"size\" cannot be combined with \"min_size\" or \"max_size\"");
    if (rule.min_size > rule.max_size)
        fail(path, "\"min_size\" (" + std::to_string(rule.min_size) + ") is greater than \"max_size\" (" +
                       std::to_string(rule.max_size) + ")");
    if (depth && rule.symbol.empty() && rule.module.empty()) fail(path, "\"depth\" needs \"symbol\" or \"module\"");
    if (!size && !min && !max && rule.symbol.empty() && rule.module.empty())
        fail(path, "a rule needs at least one condition: \"size\", \"min_size\", \"max_size\", \"symbol\" or \"module\"");
    return rule;
}

std::vector<Rule> get_rules(const json &v, const std::string &path) {
    if (!v.is_array()) fail_expected(path, "an array of rules", v);
    if (v.size() > kConfigMaxRules)
        fail(path, "at most " + std::to_string(kConfigMaxRules) + " rules, got " + std::to_string(v.size()));
    std::vector<Rule> rules;
    for (std::size_t i = 0; i < v.size(); ++i) {
        Rule rule = get_rule(v[i], index_path(path, i));
        for (std::size_t j = 0; j < rules.size(); ++j)
            if (rules[j].name == rule.name)
                fail(key_path(index_path(path, i), "name"),
                     "duplicate rule name " + quote(rule.name) + " (also " + index_path(path, j) + ")");
        rules.push_back(std::move(rule));
    }
    return rules;
}

std::vector<std::string> get_programs(const json &v, const std::string &path) {
    if (!v.is_array()) fail_expected(path, "an array of program names or globs", v);
    std::vector<std::string> programs;
    for (std::size_t i = 0; i < v.size(); ++i) programs.push_back(get_glob(v[i], index_path(path, i)));
    return programs;
}

Policy get_policy(const json &v, const std::string &path) {
    require_object(v, path);
    reject_unknown_keys(v, path, {"max_locked", "on_lock_failure", "prealloc", "max_arena", "backing", "scrub_stack"});
    Policy policy;
    if (const json *m = member(v, "max_locked")) {
        const std::string p = key_path(path, "max_locked");
        policy.max_locked = get_size(*m, p);
        if (policy.max_locked == 0 || policy.max_locked > kConfigMaxArena)
            fail_expected(p, "a size from 1 byte to 64 GiB", *m);
    }
    if (const json *f = member(v, "on_lock_failure"))
        policy.on_lock_failure = get_choice(*f, key_path(path, "on_lock_failure"),
                                            Choices<LockFailurePolicy>{{"fallback", LockFailurePolicy::fallback},
                                                                       {"deny", LockFailurePolicy::deny},
                                                                       {"abort", LockFailurePolicy::abort}});
    if (const json *p = member(v, "prealloc")) policy.prealloc = get_size(*p, key_path(path, "prealloc"));
    if (const json *b = member(v, "backing"))
        policy.backing = get_choice(*b, key_path(path, "backing"),
                                    Choices<Backing>{{"anonymous", Backing::anonymous},
                                                     {"secretmem", Backing::secretmem},
                                                     {"auto", Backing::automatic}});
    if (const json *a = member(v, "max_arena")) {
        const std::string p = key_path(path, "max_arena");
        policy.max_arena = get_size(*a, p);
        if (policy.max_arena < kConfigMinArena || policy.max_arena > kConfigMaxArena)
            fail_expected(p, "a size from 1 MiB to 64 GiB", *a);
    } else if (policy.max_arena < policy.max_locked) {
        policy.max_arena = policy.max_locked;  // the default grows to what may be locked
    }
    if (const json *w = member(v, "scrub_stack")) {
        const std::string p = key_path(path, "scrub_stack");
        policy.scrub_stack = get_size(*w, p);
        if (policy.scrub_stack > kConfigMaxScrubStack) fail_expected(p, "a size from 0 to 1 GiB", *w);
    }
    if (policy.prealloc > policy.max_locked)
        fail(path, "\"prealloc\" (" + std::to_string(policy.prealloc) + ") exceeds \"max_locked\" (" +
                       std::to_string(policy.max_locked) + ")");
    if (policy.max_arena < policy.max_locked)
        fail(path, "\"max_arena\" (" + std::to_string(policy.max_arena) + ") is less than \"max_locked\" (" +
                       std::to_string(policy.max_locked) + ")");
    return policy;
}

Config get_config(const json &root) {
    if (!root.is_object()) fail_expected("", "a JSON object at the top level", root);
    const json *version = member(root, "version");
    if (!version) fail("", "missing required key \"version\"");
    if (!version->is_number_unsigned() || version->get<std::uint64_t>() != 1) fail_expected("version", "1", *version);
    reject_unknown_keys(root, "", {"version", "programs", "rules", "policy", "log", "stats"});

    Config config;
    if (const json *p = member(root, "programs")) config.programs = get_programs(*p, "programs");
    const json *rules = member(root, "rules");
    if (!rules) fail("", "missing required key \"rules\"");
    config.rules = get_rules(*rules, "rules");
    if (const json *p = member(root, "policy")) config.policy = get_policy(*p, "policy");
    const auto no_rule_has = [&config](unsigned action) {
        return !config.rules.empty() &&
               std::none_of(config.rules.begin(), config.rules.end(), [action](const Rule &r) { return r.actions & action; });
    };
    // secretmem memory is always locked: it backs only the blocks of rules that lock.
    if (config.policy.backing == Backing::secretmem && no_rule_has(kActionLock))
        fail("policy.backing", "\"secretmem\" backs the blocks of rules with the \"lock\" action, and no rule has it");
    if (config.policy.scrub_stack && no_rule_has(kActionWipe))
        fail("policy.scrub_stack", "the stack is scrubbed when a block of a rule with the \"wipe\" action is freed, and no rule has it");
    if (const json *log = member(root, "log")) {
        require_object(*log, "log");
        reject_unknown_keys(*log, "log", {"level", "file"});
        if (const json *l = member(*log, "level"))
            config.log_level = get_choice(*l, "log.level",
                                          Choices<LogLevel>{{"error", LogLevel::error},
                                                            {"warn", LogLevel::warn},
                                                            {"info", LogLevel::info},
                                                            {"debug", LogLevel::debug}});
        if (const json *f = member(*log, "file")) config.log_file = get_output_path(*f, "log.file", true);
    }
    if (const json *stats = member(root, "stats")) {
        require_object(*stats, "stats");
        reject_unknown_keys(*stats, "stats", {"file"});
        if (const json *f = member(*stats, "file")) config.stats_file = get_output_path(*f, "stats.file", false);
    }
    return config;
}

// ---- globs ----------------------------------------------------------------------------------

// Reads one (possibly escaped) character of a bracket expression. nullptr at the end.
const char *bracket_char(const char *p, unsigned char &c) noexcept {
    if (*p == '\\') ++p;
    if (*p == '\0') return nullptr;
    c = static_cast<unsigned char>(*p);
    return p + 1;
}

// Matches `c` against the bracket expression whose body starts at `p` (just past '[').
// Returns the pattern past the closing ']', or nullptr when there is none; `reversed` is set
// when a range runs backwards (e.g. "z-a").
const char *match_bracket(const char *p, unsigned char c, bool &matched, bool *reversed = nullptr) noexcept {
    const bool negate = *p == '!' || *p == '^';
    if (negate) ++p;
    bool found = false;
    for (bool first = true; first || *p != ']'; first = false) {
        unsigned char lo, hi;
        if (!(p = bracket_char(p, lo))) return nullptr;
        hi = lo;
        if (p[0] == '-' && p[1] != ']' && p[1] != '\0') {
            if (!(p = bracket_char(p + 1, hi))) return nullptr;
            if (hi < lo && reversed) *reversed = true;
        }
        found = found || (lo <= c && c <= hi);
    }
    matched = found != negate;
    return p + 1;
}

}  // namespace

// ---- public ---------------------------------------------------------------------------------

bool parse_size(const std::string &text, std::size_t &out) {
    std::size_t i = 0, value = 0;
    if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return false;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
        const std::size_t digit = static_cast<std::size_t>(text[i] - '0');
        if (value > (SIZE_MAX - digit) / 10) return false;
        value = value * 10 + digit;
    }
    const std::size_t digits_end = i;
    while (i < text.size() && text[i] == ' ') ++i;
    const std::string unit = text.substr(i);
    if (unit.empty() && i != digits_end) return false;  // trailing spaces
    static const struct {
        const char *name;
        unsigned shift;
    } kUnits[] = {{"", 0},   {"B", 0},    {"K", 10}, {"KiB", 10}, {"M", 20},
                  {"MiB", 20}, {"G", 30}, {"GiB", 30}, {"T", 40}, {"TiB", 40}};
    for (const auto &u : kUnits) {
        if (unit != u.name) continue;
        if (value > (SIZE_MAX >> u.shift)) return false;
        out = value << u.shift;
        return true;
    }
    return false;
}

bool glob_match(const char *pattern, const char *text) noexcept {
    if (!pattern || !text) return false;
    const char *p = pattern, *t = text;
    const char *star_p = nullptr, *star_t = nullptr;  // where the last '*' resumes
    while (*t) {
        const char *next = nullptr;  // the pattern after a token that matched *t
        const unsigned char c = static_cast<unsigned char>(*t);
        if (*p == '*') {
            star_p = ++p;
            star_t = t;
            continue;
        }
        if (*p == '?') {
            next = p + 1;
        } else if (*p == '[') {
            bool matched = false;
            const char *after = match_bracket(p + 1, c, matched);
            if (!after) next = c == '[' ? p + 1 : nullptr;  // unterminated: a literal '['
            else if (matched) next = after;
        } else if (*p == '\\' && p[1]) {
            if (static_cast<unsigned char>(p[1]) == c) next = p + 2;
        } else if (*p && static_cast<unsigned char>(*p) == c) {
            next = p + 1;
        }
        if (next) {
            p = next;
            ++t;
        } else if (star_p) {
            p = star_p;
            t = ++star_t;
        } else {
            return false;
        }
    }
    while (*p == '*') ++p;
    return *p == '\0';
}

bool glob_valid(const std::string &pattern, std::string &why) {
    if (pattern.empty()) {
        why = "empty pattern";
        return false;
    }
    if (pattern.find('\0') != std::string::npos) {
        why = "contains a NUL character";
        return false;
    }
    for (const char *p = pattern.c_str(); *p;) {
        if (*p == '\\') {
            if (!p[1]) {
                why = "ends with a lone '\\'";
                return false;
            }
            p += 2;
        } else if (*p == '[') {
            bool matched, reversed = false;
            const char *after = match_bracket(p + 1, 0, matched, &reversed);
            if (!after) {
                why = "'[' without a matching ']'";
                return false;
            }
            if (reversed) {
                why = "a range in [...] runs backwards";
                return false;
            }
            p = after;
        } else {
            ++p;
        }
    }
    return true;
}

bool program_matches(const Config &config, const char *exe_path) noexcept {
    if (config.programs.empty()) return true;
    if (!exe_path) return false;
    const char *slash = std::strrchr(exe_path, '/');
    const char *base = slash ? slash + 1 : exe_path;
    for (const std::string &pattern : config.programs) {
        const char *p = pattern.c_str();
        if (glob_match(p, std::strchr(p, '/') ? exe_path : base)) return true;
    }
    return false;
}

bool parse_config(const std::string &text, const std::string &source, Config &out, std::string &error) {
    try {
        json root;
        if (!parse_json(text, source, root, error)) {
            error = one_line(error);
            return false;
        }
        Config config = get_config(root);
        config.source = source;
        out = std::move(config);
        return true;
    } catch (const SchemaError &e) {
        error = one_line(source + ": " + (e.path.empty() ? "" : e.path + ": ") + e.message);
    } catch (const std::bad_alloc &) {
        error = one_line(source + ": out of memory while reading the config");
    } catch (const std::exception &e) {
        error = one_line(source + ": " + e.what());
    }
    return false;
}

bool load_config_file(const std::string &path, Config &out, std::string &error) {
    const auto failed = [&](const std::string &why) {
        error = one_line((path.empty() ? std::string("\"\"") : path) + ": " + why);
        return false;
    };
    if (path.empty() || path.find('\0') != std::string::npos) return failed(std::strerror(ENOENT));
    // O_NONBLOCK: a FIFO must not hang start-up; it is then rejected as not a regular file.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return failed(std::strerror(errno));
    struct stat st;
    std::string why, text;
    if (::fstat(fd, &st) != 0) why = std::strerror(errno);
    else if (S_ISDIR(st.st_mode)) why = std::strerror(EISDIR);
    else if (!S_ISREG(st.st_mode)) why = "not a regular file";
    const std::string too_large = "file too large (the limit is " + std::to_string(kConfigMaxFileSize) + " bytes)";
    if (why.empty() && static_cast<std::uint64_t>(st.st_size) > kConfigMaxFileSize) why = too_large;
    while (why.empty()) {
        char buf[16384];
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) why = std::strerror(errno);
        if (n <= 0) break;
        if (text.size() + static_cast<std::size_t>(n) > kConfigMaxFileSize) why = too_large;
        else text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    if (!why.empty()) return failed(why);
    return parse_config(text, path, out, error);
}

}  // namespace mlshim
