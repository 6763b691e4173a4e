// prometheus.hpp - memlock-inspect's reports in the Prometheus text exposition format
// (version 0.0.4), for node_exporter's textfile collector.
//
// Promises: one HELP and one TYPE line per metric family, each family's samples together,
// families in a fixed order, every family present even with no process (so an empty host
// still says "0 processes"); label values valid UTF-8 (each ill-formed sequence of a program's
// path or a rule's name replaced by U+FFFD: promtool rejects a text with any other) and escaped
// (\\, \", \n). Counters end in _total.
// Labels: pid and program on every per-process sample, rule on per-rule samples.
// Input is what memlock-inspect already builds: the counters object (as the shim formats
// it) and the arena sums from smaps; fields this formatter does not know are skipped, so a
// newer shim's counters never break the output. Per-rule counters are read from a
// "per_rule" array of objects (each with "name" and numeric fields) when the shim provides
// one.
#ifndef MEMLOCK_TOOLS_PROMETHEUS_HPP
#define MEMLOCK_TOOLS_PROMETHEUS_HPP

#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tool.hpp"

namespace mltool {

struct ProcessMetrics {
    int pid = 0;
    std::string program;                          // the executable's path ("" if unknown)
    int status = 2;                               // memlock-inspect's exit status for it: 0 to 4
    const nlohmann::ordered_json *counters = nullptr;  // nullptr: the counters could not be read
    std::uint64_t arena_resident_bytes = 0, arena_locked_bytes = 0, arena_unlocked_bytes = 0;
    std::size_t warnings = 0;
};

namespace prom_detail {

// "a\"b" for a"b: the escaping the exposition format defines for label values, of v made valid
// UTF-8 (mltool::valid_utf8).
inline std::string label_value(const std::string &v) {
    std::string out;
    for (char c : valid_utf8(v)) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

inline std::string labels(const ProcessMetrics &p, const std::string &rule = {}) {
    std::string s = "{pid=\"" + std::to_string(p.pid) + "\",program=\"" + label_value(p.program) + "\"";
    if (!rule.empty()) s += ",rule=\"" + label_value(rule) + "\"";
    return s + "}";
}

// An unsigned value of a counters object, if it has `key` as a number or a boolean.
inline bool number(const nlohmann::ordered_json &j, const std::string &key, std::uint64_t &out) {
    const auto it = j.find(key);
    if (it == j.end()) return false;
    if (it->is_boolean()) out = it->get<bool>() ? 1 : 0;
    else if (it->is_number_unsigned() || (it->is_number_integer() && it->get<std::int64_t>() >= 0))
        out = it->get<std::uint64_t>();
    else return false;
    return true;
}

}  // namespace prom_detail

// The exposition text for `procs` (the processes memlock-inspect reports).
inline std::string format_prometheus(const std::vector<ProcessMetrics> &procs) {
    using prom_detail::labels;
    using prom_detail::number;
    std::string out;
    auto family = [&](const std::string &name, const char *type, const std::string &help) {
        out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    };
    auto sample = [&](const std::string &name, const std::string &lbl, std::uint64_t v) {
        out += name + lbl + " " + std::to_string(v) + "\n";
    };

    family("memlock_shim_processes", "gauge",
           "Processes memlock-inspect reports: those that map the memlock shim's counters, that it may not look at, or that were meant to run the shim and do not.");
    sample("memlock_shim_processes", "", procs.size());

    family("memlock_shim_status", "gauge",
           "memlock-inspect's verdict: 0 protected as configured, 1 degraded, 2 not protected, 3 unknown (memlock-inspect may not look), 4 nothing matched yet (active, no rule has matched).");
    for (const auto &p : procs) sample("memlock_shim_status", labels(p), static_cast<std::uint64_t>(p.status));
    family("memlock_shim_warnings", "gauge", "Warnings memlock-inspect reports for the process (each degrades it).");
    for (const auto &p : procs) sample("memlock_shim_warnings", labels(p), p.warnings);

    // The shim's own counters: key in its counters object, type, help.
    struct Field {
        const char *key, *type, *help;
    };
    static const Field fields[] = {
        {"active", "gauge", "1 while the shim's arena serves matching allocations."},
        {"rules", "gauge", "Rules in force."},
        {"matched_allocations", "counter", "Allocations served by the secure arena."},
        {"frees", "counter", "Arena blocks freed (and wiped)."},
        {"lock_failures", "counter", "mlock calls that failed or hit policy.max_locked."},
        {"fallbacks", "counter", "Arena chunks served unlocked under on_lock_failure fallback."},
        {"denied", "counter", "Matching allocations refused with ENOMEM."},
        {"live_bytes", "gauge", "Bytes in live arena blocks."},
        {"peak_bytes", "gauge", "High-water mark of bytes handed out by the arena."},
        {"reserved_bytes", "gauge", "Address space reserved for the arena."},
        {"committed_bytes", "gauge", "Arena memory committed."},
        {"locked_bytes", "gauge", "Arena memory the shim locked (mlock)."},
        {"unlocked_bytes", "gauge", "Arena memory served unlocked (fallback)."},
        {"max_locked", "gauge", "policy.max_locked of the config, in bytes."},
    };
    for (const auto &f : fields) {
        const bool counter = std::string(f.type) == "counter";
        const std::string name = std::string("memlock_shim_") + f.key + (counter ? "_total" : "") +
                                 (std::string(f.key) == "max_locked" ? "_bytes" : "");
        family(name, f.type, f.help);
        for (const auto &p : procs) {
            std::uint64_t v;
            if (p.counters && number(*p.counters, f.key, v)) sample(name, labels(p), v);
        }
    }

    // What the kernel reports for the arena (smaps).
    const std::pair<const char *, std::uint64_t ProcessMetrics::*> arena[] = {
        {"resident", &ProcessMetrics::arena_resident_bytes},
        {"locked", &ProcessMetrics::arena_locked_bytes},
        {"unlocked", &ProcessMetrics::arena_unlocked_bytes},
    };
    for (const auto &[what, member] : arena) {
        const std::string name = std::string("memlock_shim_arena_") + what + "_bytes";
        family(name, "gauge", std::string("Arena memory the kernel reports as ") + what +
                                  (std::string(what) == "unlocked" ? " (resident, not locked)" : "") +
                                  " (/proc/PID/smaps).");
        for (const auto &p : procs) sample(name, labels(p), p.*member);
    }

    // Per-rule counters, when the shim publishes them: every numeric field of the entries of
    // "per_rule" is one family (byte values as gauges, the others as counters).
    std::vector<std::string> rule_keys;
    for (const auto &p : procs) {
        if (!p.counters || !p.counters->contains("per_rule") || !(*p.counters)["per_rule"].is_array()) continue;
        for (const auto &r : (*p.counters)["per_rule"])
            if (r.is_object())
                for (const auto &[k, v] : r.items())
                    if (v.is_number_integer() && std::find(rule_keys.begin(), rule_keys.end(), k) == rule_keys.end())
                        rule_keys.push_back(k);
    }
    static const std::pair<const char *, const char *> rule_help[] = {
        {"matched_allocations", "Allocations the rule placed in the secure arena."},
        {"live_bytes", "Bytes in live arena blocks the rule placed."},
        {"peak_bytes", "High-water mark of the rule's live bytes."},
        {"consulted", "Allocations whose callers the caller rule checked (its size condition held)."},
    };
    for (const auto &k : rule_keys) {
        const bool bytes = k.size() > 6 && k.compare(k.size() - 6, 6, "_bytes") == 0;
        const std::string name = "memlock_shim_rule_" + k + (bytes ? "" : "_total");
        std::string help = "Per-rule " + k + " of the shim's counters.";
        for (const auto &[key, text] : rule_help)
            if (k == key) help = text;
        family(name, bytes ? "gauge" : "counter", help);
        for (const auto &p : procs) {
            if (!p.counters || !p.counters->contains("per_rule") || !(*p.counters)["per_rule"].is_array()) continue;
            for (const auto &r : (*p.counters)["per_rule"]) {
                std::uint64_t v;
                if (r.is_object() && r.contains("name") && r["name"].is_string() && number(r, k, v))
                    sample(name, labels(p, r["name"].get<std::string>()), v);
            }
        }
    }
    return out;
}

}  // namespace mltool

#endif  // MEMLOCK_TOOLS_PROMETHEUS_HPP
