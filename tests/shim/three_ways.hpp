// three_ways.hpp - runs one command without the shim, under config/match-none.json and under
// config/match-all.json, and collects what each run printed and counted.
//
//   run_three_ways(argv, ...)     the three runs; each shimmed run gets its own stats directory
//   ThreeWays::expect_same()      byte-identical stdout and the same exit status in all three
//   StatsFiles::total / ::most    counters summed over, or the largest among, every process of a run
//
// The shimmed configs are the repository's files with only "stats" added, so the tests check the
// configs that ship. Helpers end the test (cr_assert) on a failure of their own.
#ifndef MEMLOCK_TESTS_THREE_WAYS_HPP
#define MEMLOCK_TESTS_THREE_WAYS_HPP

#include <criterion/criterion.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "helpers.hpp"

namespace memlock_test {

enum class Mode { without_shim, match_none, match_all };
inline const char *mode_name(Mode m) {
    return m == Mode::without_shim ? "without the shim" : m == Mode::match_none ? "match-none" : "match-all";
}

// The stats files every process of one shimmed run wrote (one per pid: children write their own).
struct StatsFiles {
    std::vector<std::string> files;  // JSON texts

    // Sum of a counter over all processes.
    unsigned long long total(const char *key) const {
        unsigned long long sum = 0;
        for (const auto &f : files) sum += json_uint(f, key).value_or(0);
        return sum;
    }
    // The file with the largest value of a counter (the process that did the work).
    std::string most(const char *key) const {
        std::string best;
        unsigned long long top = 0;
        for (const auto &f : files) {
            const auto v = json_uint(f, key).value_or(0);
            if (best.empty() || v > top) best = f, top = v;
        }
        return best;
    }
    std::string describe() const {
        std::string s;
        for (const auto &f : files) s += f;
        return s.empty() ? std::string("(no stats files)\n") : s;
    }
};

struct ModeRun {
    Mode mode = Mode::without_shim;
    RunResult result;
    StatsFiles stats;  // empty without the shim, and under match-none (no rules: no arena, no stats)
};

struct ThreeWays {
    ModeRun runs[3];
    const ModeRun &without() const { return runs[0]; }
    const ModeRun &none() const { return runs[1]; }
    const ModeRun &all() const { return runs[2]; }

    // Each run exited with `status`, and printed exactly what the run without the shim printed.
    void expect_same(int status = 0) const {
        for (const auto &r : runs)
            cr_assert(r.result.exited_with(status), "%s: expected exit %d\n%s", mode_name(r.mode), status,
                      r.result.describe().c_str());
        for (const auto &r : runs)
            cr_assert(r.result.out == without().result.out,
                      "%s: stdout differs from the run without the shim\n--- without ---\n%s--- %s ---\n%s",
                      mode_name(r.mode), without().result.out.c_str(), mode_name(r.mode), r.result.out.c_str());
    }
    // Each shimmed run wrote to stderr exactly what the run without the shim wrote.
    void expect_same_stderr() const {
        for (const auto &r : runs)
            cr_assert(r.result.err == without().result.err, "%s: stderr differs\n--- without ---\n%s--- %s ---\n%s",
                      mode_name(r.mode), without().result.err.c_str(), mode_name(r.mode), r.result.err.c_str());
    }
};

struct ThreeWayOptions {
    std::vector<std::pair<std::string, std::string>> env;  // for all three runs
    std::string cwd;
    // Runs before each of the three runs (e.g. to reset a working copy the command changes).
    std::function<void(Mode)> before;
    int timeout_ms = 60000;
    // Preloaded in all three runs, after the shim where there is one (e.g. libc_malloc_debug.so.0).
    std::string preload_after;
    // Preloaded in all three runs, before the shim where there is one (e.g. libjemalloc.so.2).
    std::string preload_before;
};

namespace detail {
// The repository's config `name` with "stats": {"file": stats_dir/stats.%p.json} added.
inline std::string derived_config(const TempDir &dir, const std::string &name, const std::string &stats_dir) {
    const std::string src = source_dir() + "/config/" + name;
    auto text = read_file(src);
    cr_assert(text.has_value(), "cannot read %s", src.c_str());
    const auto close = text->rfind('}');
    cr_assert(close != std::string::npos && text->find("\"stats\"") == std::string::npos, "%s: unexpected shape",
              src.c_str());
    std::string derived = text->substr(0, close);
    while (!derived.empty() && (derived.back() == '\n' || derived.back() == ' ')) derived.pop_back();
    derived += ",\n  \"stats\": {\"file\": \"" + stats_dir + "/stats.%p.json\"}\n}\n";
    const std::string path = dir.file("shim-" + name);
    cr_assert(write_file(path, derived), "cannot write %s", path.c_str());
    return path;
}

inline StatsFiles read_stats_dir(const std::string &stats_dir) {
    StatsFiles s;
    std::error_code ec;
    std::vector<std::string> names;
    for (const auto &e : std::filesystem::directory_iterator(stats_dir, ec)) names.push_back(e.path().string());
    std::sort(names.begin(), names.end());
    for (const auto &n : names)
        if (auto t = read_file(n)) s.files.push_back(*t);
    return s;
}
}  // namespace detail

// Runs argv without the shim, with match-none and with match-all (in that order).
inline ThreeWays run_three_ways(const std::vector<std::string> &argv, const ThreeWayOptions &o = {}) {
    cr_assert(file_exists(shim_library()), "%s missing: run `make shim`", shim_library().c_str());
    TempDir dir;
    cr_assert(dir.ok());
    ThreeWays t;
    const Mode modes[3] = {Mode::without_shim, Mode::match_none, Mode::match_all};
    for (int i = 0; i < 3; ++i) {
        const Mode m = modes[i];
        const std::string stats_dir = dir.file(std::string("stats-") + (i == 1 ? "none" : "all"));
        RunOptions opts;
        opts.argv = argv;
        opts.env = o.env;
        opts.cwd = o.cwd;
        opts.timeout_ms = o.timeout_ms;
        opts.unset_env = {"LD_PRELOAD", "MEMLOCK_SHIM_CONFIG", "MEMLOCK_SHIM_ON_CONFIG_ERROR"};
        if (m != Mode::without_shim) {
            cr_assert(std::filesystem::create_directory(stats_dir));
            const std::string config =
                detail::derived_config(dir, m == Mode::match_all ? "match-all.json" : "match-none.json", stats_dir);
            for (auto &kv : shim_env(config)) opts.env.push_back(kv);
        }
        if (!o.preload_before.empty() || !o.preload_after.empty()) {
            auto it = std::find_if(opts.env.begin(), opts.env.end(), [](const auto &kv) { return kv.first == "LD_PRELOAD"; });
            const std::string shim = it == opts.env.end() ? std::string() : it->second;
            std::string libs;
            for (const std::string &lib : {o.preload_before, shim, o.preload_after})
                if (!lib.empty()) libs += (libs.empty() ? "" : " ") + lib;
            if (it == opts.env.end()) opts.env.emplace_back("LD_PRELOAD", libs);
            else it->second = libs;
        }
        if (o.before) o.before(m);
        t.runs[i].mode = m;
        t.runs[i].result = run_program(opts);
        cr_assert(!t.runs[i].result.timed_out, "%s: timed out\n%s", mode_name(m), t.runs[i].result.describe().c_str());
        if (m != Mode::without_shim) t.runs[i].stats = detail::read_stats_dir(stats_dir);
    }
    return t;
}

}  // namespace memlock_test

#endif  // MEMLOCK_TESTS_THREE_WAYS_HPP
