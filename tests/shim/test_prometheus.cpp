// The Prometheus formatter of memlock-inspect (tools/prometheus.hpp) on counters built here:
// label escaping, a process whose counters could not be read, per-rule counters, an empty
// host; promtool (package prometheus) checks each text.
#include <criterion/criterion.h>

#include <nlohmann/json.hpp>
#include <string>

#include "../../tools/prometheus.hpp"
#include "helpers.hpp"

using namespace memlock_test;
using mltool::format_prometheus;
using mltool::ProcessMetrics;

namespace {

void assert_promtool_accepts(const std::string &text) {
    cr_assert(have_program("promtool"), "promtool (package prometheus) is needed");
    RunOptions o;
    o.argv = {"promtool", "check", "metrics"};
    o.stdin_data = text;
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0) && r.out.empty() && r.err.empty(), "%s\n%s", r.describe().c_str(), text.c_str());
}

bool has_line(const std::string &text, const std::string &line) {
    return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

const nlohmann::ordered_json kCounters = nlohmann::ordered_json::parse(R"js({
  "pid": 42, "active": true, "rules": 2, "matched_allocations": 7, "frees": 3, "live_bytes": 128,
  "peak_bytes": 256, "reserved_bytes": 1048576, "committed_bytes": 65536, "locked_bytes": 65536,
  "unlocked_bytes": 0, "max_locked": 67108864, "lock_failures": 0, "fallbacks": 0, "denied": 0,
  "on_lock_failure": "fallback", "some_future_field": 5,
  "per_rule": [{"name": "keys", "matched_allocations": 5, "live_bytes": 96, "peak_bytes": 128},
               {"name": "bu\"ffers", "matched_allocations": 2, "live_bytes": 32, "peak_bytes": 64},
               {"name": "lib\\crypto\nrule", "caller": "module libcrypto.so* depth 1", "truncated": true,
                "matched_allocations": 0, "live_bytes": 0, "peak_bytes": 0, "consulted": 12000},
               {"name": "other rules", "covers": "rules 64 to 70 (counted together)", "matched_allocations": 1,
                "live_bytes": 16, "peak_bytes": 16}]})js");

}  // namespace

Test(prometheus, labels_escaped_per_rule_series_and_unreadable_counters) {
    ProcessMetrics good;
    good.pid = 42;
    good.program = "/opt/we\"ird\\dir/da\nemon";
    good.status = 0;
    good.counters = &kCounters;
    good.arena_locked_bytes = 8192;
    ProcessMetrics unreadable;
    unreadable.pid = 43;
    unreadable.program = "/usr/sbin/sshd";
    unreadable.status = 1;
    unreadable.warnings = 1;
    const std::string text = format_prometheus({good, unreadable});
    cr_assert(text.find("4 nothing matched yet") != std::string::npos, "%s", text.c_str());
    assert_promtool_accepts(text);

    const std::string g = R"({pid="42",program="/opt/we\"ird\\dir/da\nemon")";
    cr_assert(has_line(text, "memlock_shim_processes 2"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_status" + g + "} 0"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_matched_allocations_total" + g + "} 7"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_max_locked_bytes" + g + "} 67108864"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_arena_locked_bytes" + g + "} 8192"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_rule_matched_allocations_total" + g + ",rule=\"keys\"} 5"), "%s",
              text.c_str());
    cr_assert(has_line(text, "memlock_shim_rule_live_bytes" + g + ",rule=\"bu\\\"ffers\"} 32"), "%s", text.c_str());
    cr_assert(has_line(text, "# TYPE memlock_shim_rule_live_bytes gauge"), "%s", text.c_str());
    // Every per-rule family has its HELP and TYPE once; strings and flags add no series;
    // backslashes and newlines in rule names are escaped.
    cr_assert(has_line(text, "# HELP memlock_shim_rule_peak_bytes High-water mark of the rule's live bytes."), "%s",
              text.c_str());
    cr_assert(has_line(text, "# TYPE memlock_shim_rule_consulted_total counter"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_rule_peak_bytes" + g + ",rule=\"keys\"} 128"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_rule_consulted_total" + g + ",rule=\"lib\\\\crypto\\nrule\"} 12000"),
              "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_rule_live_bytes" + g + ",rule=\"other rules\"} 16"), "%s", text.c_str());
    cr_assert_eq(count_occurrences(text, "# HELP memlock_shim_rule_live_bytes "), 1u, "%s", text.c_str());
    for (const char *absent : {"covers", "counted together", "module libcrypto", "truncated"})
        cr_assert(text.find(absent) == std::string::npos, "%s in:\n%s", absent, text.c_str());
    cr_assert(text.find("some_future_field") == std::string::npos, "%s", text.c_str());

    // The process without counters has its verdict and arena series, no counter series.
    const std::string u = R"({pid="43",program="/usr/sbin/sshd"})";
    cr_assert(has_line(text, "memlock_shim_status" + u + " 1"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_warnings" + u + " 1"), "%s", text.c_str());
    cr_assert(has_line(text, "memlock_shim_arena_resident_bytes" + u + " 0"), "%s", text.c_str());
    cr_assert(text.find("memlock_shim_frees_total" + u) == std::string::npos, "%s", text.c_str());
}

Test(prometheus, an_empty_host_still_reports_zero_processes) {
    const std::string text = format_prometheus({});
    assert_promtool_accepts(text);
    cr_assert(has_line(text, "memlock_shim_processes 0"), "%s", text.c_str());
    cr_assert(has_line(text, "# TYPE memlock_shim_status gauge"), "%s", text.c_str());
    cr_assert(text.find("memlock_shim_rule_") == std::string::npos, "%s", text.c_str());
}

// Label values are UTF-8, or promtool rejects the whole text: each ill-formed sequence (a byte
// that starts none, an overlong form, a surrogate, a code point past U+10FFFF, a sequence cut
// short) becomes one U+FFFD per maximal subpart; well-formed characters stay as they are.
Test(prometheus, label_values_replace_what_is_not_utf8) {
    using mltool::prom_detail::label_value;
    const std::string r = "\xef\xbf\xbd";
    const std::pair<std::string, std::string> cases[] = {
        {"/tmp/m/evil\xff\xfe", "/tmp/m/evil" + r + r},
        {"a\x80z", "a" + r + "z"},
        {"\xc0\xaf\xc1\xbf", r + r + r + r},                 // overlong 2-byte forms
        {"\xe0\x80\xaf", r + r + r},                         // overlong 3-byte form
        {"\xf0\x80\x80\xaf", r + r + r + r},                 // overlong 4-byte form
        {"\xed\xa0\x80\xed\xbf\xbf", r + r + r + r + r + r}, // surrogates D800, DFFF
        {"\xf4\x90\x80\x80\xf5\x80", r + r + r + r + r + r}, // past U+10FFFF
        {"a\xe2\x82", "a" + r},                              // cut short at the end
        {"\xe2\x82z\xf0\x9f\x98", r + "z" + r},              // cut short before another byte
        {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xed\x9f\xbf",
         "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xed\x9f\xbf"},  // kept
        {"q\"b\\n\n\xff", "q\\\"b\\\\n\\n" + r},
    };
    for (const auto &[in, want] : cases) {
        const std::string got = label_value(in);
        cr_assert(got == want, "label_value(%s): %s, not %s", in.c_str(), got.c_str(), want.c_str());
    }

    ProcessMetrics p;
    p.pid = 7;
    p.program = "/tmp/m/evil\xff\xfe";
    p.status = 0;
    const auto counters = nlohmann::ordered_json::parse(
        R"({"active": true, "per_rule": [{"name": "keys", "matched_allocations": 1}]})");
    auto bad_rule = counters;
    bad_rule["per_rule"][0]["name"] = std::string("k\xed\xa0\x80y");
    p.counters = &bad_rule;
    const std::string text = format_prometheus({p});
    assert_promtool_accepts(text);
    cr_assert(has_line(text, "memlock_shim_rule_matched_allocations_total{pid=\"7\",program=\"/tmp/m/evil" + r + r +
                                 "\",rule=\"k" + r + r + r + "y\"} 1"),
              "%s", text.c_str());
}
