// End-to-end: rules by caller ("symbol" and "module", docs/config.md), proved from outside
// shimmed children.
//
// libsecretlib (tests/libs/secretlib.c) has load_secret_key and load_plain_data, which
// allocate the same sizes through one helper (alloc_helper -> malloc). callers_linked links
// against it; callers_dlopen loads it after start-up (tests/progs/callers_common.h says what
// both allocate and print). Each test reads /proc/PID/smaps at the addresses the child prints
// (an arena block is `lo` and `dd`, any other block neither), the stats file's counters, and
// a gcore dump of the live child holding markers generated at run time. The openssl CLI with
// libcrypto is the real, unmodified program: its output must not change under the shim.
#include <criterion/criterion.h>

#include <filesystem>
#include <string>
#include <vector>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

constexpr std::size_t kBlockSize = 1000;  // callers_common.h: kSize
constexpr std::size_t kBlocksPerRound = 4;

std::string secretlib() { return shim_build_dir() + "/libs/libsecretlib.so"; }

void need_build(const std::vector<std::string> &programs) {
    need_built("");
    cr_assert(file_exists(secretlib()), "%s missing: run `make progs`", secretlib().c_str());
    for (const auto &p : programs) need_built(p);
}

struct Setup {
    std::string config;
    std::string stats;
};

// A config with `rules` (the JSON array's members) and a stats file in dir. The arena is
// kept small: gcore writes the shim's reserved (never touched) address space out as zeros,
// close to 2 GiB with the default 1 GiB arena.
Setup write_config(const TempDir &dir, const std::string &rules) {
    cr_assert(dir.ok(), "no temp dir");
    Setup s{dir.file("rules.json"), dir.file("stats.json")};
    cr_assert(write_file(s.config, R"({"version": 1, "rules": [)" + rules +
                                       R"(], "policy": {"max_locked": "16MiB", "max_arena": "16MiB"},
                                       "stats": {"file": ")" + s.stats + R"("}})"));
    return s;
}

unsigned long long matched(const Setup &s) { return stat_value(read_stats(s.stats), "matched_allocations"); }

std::string warning(const std::string &rule, const std::string &what) {
    return "memlock-shim: warning: rule \"" + rule + "\": " + what + " yet (it may be loaded later)\n";
}

// ---- libsecretlib programs -----------------------------------------------------------------

struct Blocks {
    std::vector<const void *> secret, plain, own;
};

std::vector<const void *> pointers(const std::string &out, const char *key) {
    std::vector<const void *> v;
    for (const auto &s : line_values(out, key)) {
        const void *p = parse_pointer(s);
        cr_assert_not_null(p, "bad %s address \"%s\"", key, s.c_str());
        v.push_back(p);
    }
    return v;
}

Blocks blocks_of(const std::string &out, std::size_t rounds) {
    Blocks b{pointers(out, "secret"), pointers(out, "plain"), pointers(out, "own")};
    const std::size_t n = rounds * kBlocksPerRound;
    cr_assert(b.secret.size() == n && b.plain.size() == n && b.own.size() == n,
              "expected %zu blocks of each kind in: %s", n, out.c_str());
    return b;
}

// Every block is `lo` and `dd` (in the arena), or neither.
void expect_placement(pid_t pid, const std::vector<const void *> &blocks, bool in_arena, const char *what) {
    for (const void *p : blocks) {
        const bool lo = range_has_flag(p, kBlockSize, "lo", in_arena, pid);
        const bool dd = range_has_flag(p, kBlockSize, "dd", in_arena, pid);
        cr_assert(lo && dd, "%s block %p: expected %s (lo %s, dd %s)", what, p,
                  in_arena ? "lo and dd (the arena)" : "neither lo nor dd", lo ? "as expected" : "wrong",
                  dd ? "as expected" : "wrong");
    }
}

constexpr bool kInArena = true, kOutside = false;

// Where the child's blocks of `rounds` rounds are: load_secret_key's, load_plain_data's and
// the program's own (own_what names them), each in the arena or outside it.
void expect_blocks(const LiveProgram &child, std::size_t rounds, bool secret, bool plain, bool own,
                   const char *own_what = "the program's own") {
    const Blocks b = blocks_of(child.out(), rounds);
    expect_placement(child.pid(), b.secret, secret, "load_secret_key");
    expect_placement(child.pid(), b.plain, plain, "load_plain_data");
    expect_placement(child.pid(), b.own, own, own_what);
}

// gcore of the live child; the copies of each marker in the dump.
struct DumpCounts {
    std::size_t secret, plain, own;
};
DumpCounts gcore_counts(const TempDir &dir, const LiveProgram &child) {
    const std::string dump = gcore_dump(dir, child.pid());
    const std::string s = marker_bytes(child.out(), "secret_marker"), p = marker_bytes(child.out(), "plain_marker"),
                      o = marker_bytes(child.out(), "own_marker");
    cr_assert(s != p && p != o && s != o);
    return {count_occurrences(dump, s), count_occurrences(dump, p), count_occurrences(dump, o)};
}

// Starts a libsecretlib program under `s` and waits until its blocks are filled.
void start(LiveProgram &child, const Setup &s, std::vector<std::string> argv) {
    RunOptions opts = shim_options(s.config, std::move(argv));
    opts.unset_env = {"MEMLOCK_SHIM_ON_CONFIG_ERROR"};
    start_until_ready(child, opts);
}

// Lets the child free its blocks and exit; it must end cleanly with `err` on stderr.
void finish(LiveProgram &child, const std::string &err) {
    const RunResult r = child.finish();
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.find("\ndone\n") != std::string::npos, "%s", r.describe().c_str());
    assert_log_eq(r.err, err.c_str());
}

// ---- openssl ------------------------------------------------------------------------------

const char *const kHmacKey = "caller-rules-test-key";
const char *const kAesKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const char *const kAesIv = "f0e0d0c0b0a090807060504030201000";

std::string openssl_input(const TempDir &dir) {
    cr_assert(dir.ok(), "no temp dir");
    cr_assert(have_program("openssl"), "the openssl CLI is not installed");
    cr_assert(file_exists(shim_library()), "%s missing: run `make shim`", shim_library().c_str());
    std::string data;
    for (unsigned i = 0; i < 65536 + 123; ++i) data += static_cast<char>((i * 2654435761u) >> 13);
    const std::string path = dir.file("input.bin");
    cr_assert(write_file(path, data));
    return path;
}

std::vector<std::string> dgst_argv(const std::string &input) {
    return {"openssl", "dgst", "-sha256", "-hmac", kHmacKey, input};
}
std::vector<std::string> enc_argv(const std::string &input) {
    return {"openssl", "enc", "-aes-256-cbc", "-K", kAesKey, "-iv", kAesIv, "-in", input};
}

// `argv` without the shim (config "") or under it.
RunResult run_openssl(const std::vector<std::string> &argv, const std::string &config) {
    RunOptions opts = plain_env(argv);
    if (!config.empty()) opts.env = shim_env(config);
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    return r;
}

// Runs `argv` under `rules`: output byte-identical to `plain`, stderr exactly `err`. Returns
// the matched allocations.
unsigned long long shimmed_openssl(const TempDir &dir, const std::vector<std::string> &argv, const RunResult &plain,
                                   const std::string &rules, const std::string &err = "") {
    const Setup s = write_config(dir, rules);
    const RunResult r = run_openssl(argv, s.config);
    cr_assert(r.out == plain.out, "output changed under rules %s: %zu bytes, %zu without the shim", rules.c_str(),
              r.out.size(), plain.out.size());
    assert_log_eq(r.err, err.c_str(), "rules %s", rules.c_str());
    const unsigned long long n = matched(s);
    cr_log_info("rules %s: %llu matched allocations", rules.c_str(), n);
    return n;
}

}  // namespace

// ---- 1. symbol rule, library linked at start-up ----------------------------------------------

Test(e2e_callers, symbol_depth_2_puts_only_the_secret_loaders_blocks_in_the_arena) {
    need_build({"callers_linked"});
    TempDir dir;
    const Setup s = write_config(dir, R"({"name": "keys", "symbol": "load_secret*", "depth": 2})");
    LiveProgram child;
    start(child, s, {shim_program("callers_linked")});
    expect_blocks(child, 1, kInArena, kOutside, kOutside);
    const DumpCounts c = gcore_counts(dir, child);
    cr_expect_eq(c.secret, 0u, "the dump holds %zu copies of the secret marker", c.secret);
    cr_expect_geq(c.plain, 1u, "the dump holds no copy of the plain marker (the search would miss)");
    cr_expect_geq(c.own, 1u, "the dump holds no copy of the program's own marker");
    finish(child, "");
    cr_assert_eq(matched(s), kBlocksPerRound, "only load_secret_key's blocks match");
}

Test(e2e_callers, symbol_depth_1_sees_only_the_shared_helper) {
    need_build({"callers_linked"});
    TempDir dir;
    // Depth 1 is alloc_helper, for both loaders: nothing matches, and the secret is dumped.
    const Setup s = write_config(dir, R"({"name": "keys", "symbol": "load_secret*", "depth": 1})");
    LiveProgram child;
    start(child, s, {shim_program("callers_linked")});
    const Blocks b = blocks_of(child.out(), 1);
    expect_placement(child.pid(), b.secret, false, "load_secret_key");
    expect_placement(child.pid(), b.plain, false, "load_plain_data");
    const DumpCounts c = gcore_counts(dir, child);
    cr_expect_geq(c.secret, 1u, "the dump holds no copy of the secret marker, though nothing protects it");
    cr_expect_geq(c.plain, 1u);
    finish(child, "");
    cr_assert_eq(matched(s), 0u);
}

Test(e2e_callers, symbol_rule_on_the_shared_helper_matches_both_loaders) {
    need_build({"callers_linked"});
    TempDir dir;
    const Setup s = write_config(dir, R"({"name": "all", "symbol": "alloc_helper", "depth": 1})");
    LiveProgram child;
    start(child, s, {shim_program("callers_linked")});
    expect_blocks(child, 1, kInArena, kInArena, kOutside);
    finish(child, "");
    cr_assert_eq(matched(s), 2 * kBlocksPerRound);
}

// ---- 2. symbol rule, library loaded with dlopen after start-up --------------------------------

Test(e2e_callers, symbol_rule_covers_a_library_dlopened_later) {
    need_build({"callers_dlopen"});
    TempDir dir;
    const Setup s = write_config(dir, R"({"name": "keys", "symbol": "load_secret*", "depth": 2})");
    LiveProgram child;
    start(child, s, {shim_program("callers_dlopen"), secretlib()});
    // Said once, at start-up (before the program's first line).
    const std::string warned = warning("keys", "no loaded function matches \"load_secret*\"");
    assert_log_eq(child.err(), warned.c_str());
    expect_blocks(child, 1, kInArena, kOutside, kOutside);
    const DumpCounts c = gcore_counts(dir, child);
    cr_expect_eq(c.secret, 0u, "the dump holds %zu copies of the secret marker", c.secret);
    cr_expect_geq(c.plain, 1u);
    finish(child, warned);
    cr_assert_eq(matched(s), kBlocksPerRound);
}

// A thread whose cancellation is pending (it cancelled itself, deferred) allocates through a
// library it has just opened, under a symbol rule for that library's function (e2e_cancel
// dlopen): the shim reads the library's file to index it (open and read, cancellation
// points) without acting on the cancellation inside malloc. The block is the arena's, and
// the thread's pthread_testcancel ends it cancelled, as without the shim.
Test(e2e_callers, a_library_indexed_on_a_thread_with_a_pending_cancellation_does_not_act_on_it) {
    need_build({"e2e_cancel"});
    TempDir dir;
    const Setup s = write_config(dir, R"({"name": "lib", "symbol": "memlock_testlib_malloc"})");
    const std::string lib = shim_build_dir() + "/libs/libmemlock_testlib.so";
    const RunResult r = run_program(shim_options(s.config, {shim_program("e2e_cancel"), "dlopen", lib}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "allocated 1\ncancelled\n", "%s", r.describe().c_str());
    cr_assert_eq(matched(s), 1u);
}

Test(e2e_callers, symbol_rule_survives_dlclose_and_a_new_dlopen) {
    need_build({"callers_dlopen"});
    TempDir dir;
    // The second load is a copy at another path: a different object, wherever it lands.
    const std::string copy = dir.file("libsecretlib.so.2");
    std::error_code ec;
    std::filesystem::copy_file(secretlib(), copy, ec);
    cr_assert(!ec, "copy %s: %s", secretlib().c_str(), ec.message().c_str());
    const Setup s = write_config(dir, R"({"name": "keys", "symbol": "load_secret*", "depth": 2})");
    LiveProgram child;
    start(child, s, {shim_program("callers_dlopen"), secretlib(), copy});
    expect_blocks(child, 2, kInArena, kOutside, kOutside);  // round 1 from the closed library, round 2 from the copy
    finish(child, warning("keys", "no loaded function matches \"load_secret*\""));
    cr_assert_eq(matched(s), 2 * kBlocksPerRound);
}

Test(e2e_callers, module_rule_survives_dlclose_and_a_new_dlopen) {
    need_build({"callers_dlopen"});
    TempDir dir;
    const std::string copy = dir.file("libsecretlib.so.2");
    std::error_code ec;
    std::filesystem::copy_file(secretlib(), copy, ec);
    cr_assert(!ec, "copy %s: %s", secretlib().c_str(), ec.message().c_str());
    const Setup s = write_config(dir, R"({"name": "lib", "module": "libsecretlib.so*"})");
    LiveProgram child;
    start(child, s, {shim_program("callers_dlopen"), secretlib(), copy});
    const std::string warned = warning("lib", "no loaded object matches \"libsecretlib.so*\"");
    assert_log_eq(child.err(), warned.c_str());
    expect_blocks(child, 2, kInArena, kInArena, kOutside);
    finish(child, warned);
    cr_assert_eq(matched(s), 4 * kBlocksPerRound);
}

// ---- 3. module rule ----------------------------------------------------------------------------

Test(e2e_callers, module_rule_takes_everything_the_library_allocates_and_nothing_else) {
    need_build({"callers_linked"});
    TempDir dir;
    const Setup s = write_config(dir, R"({"name": "lib", "module": "libsecretlib.so*"})");
    LiveProgram child;
    start(child, s, {shim_program("callers_linked")});
    expect_blocks(child, 1, kInArena, kInArena, kOutside, "the program's own (same size)");
    const DumpCounts c = gcore_counts(dir, child);
    cr_expect_eq(c.secret, 0u, "the dump holds %zu copies of the secret marker", c.secret);
    cr_expect_eq(c.plain, 0u, "the dump holds %zu copies of the plain marker", c.plain);
    cr_expect_geq(c.own, 1u, "the dump holds no copy of the program's own marker");
    finish(child, "");
    cr_assert_eq(matched(s), 2 * kBlocksPerRound, "exactly the library's blocks match");
}

Test(e2e_callers, module_rule_combines_with_a_size_range) {
    need_build({"callers_linked"});
    TempDir dir;
    // The library's blocks are 1000 bytes: a range that excludes them leaves the rule empty.
    const Setup s = write_config(dir, R"({"name": "lib", "module": "libsecretlib.so*", "min_size": 2000},
        {"name": "own", "module": "callers_linked", "min_size": 900, "max_size": 1100})");
    LiveProgram child;
    start(child, s, {shim_program("callers_linked")});
    expect_blocks(child, 1, kOutside, kOutside, kInArena, "the program's own (module = the main executable)");
    finish(child, "");
    // The program's blocks, and the one it allocates (and frees) at start-up to bind malloc.
    cr_assert_eq(matched(s), kBlocksPerRound + 1);
    // Each rule is described with its size bounds after its callers.
    const std::string stats = read_stats(s.stats);
    cr_assert(stats.find(R"("caller": "module libsecretlib.so* depth 1, from 2000 bytes")") != std::string::npos,
              "%s", stats.c_str());
    cr_assert(stats.find(R"("caller": "module callers_linked depth 1, 900 to 1100 bytes")") != std::string::npos,
              "%s", stats.c_str());
}

Test(e2e_callers, module_list_takes_what_any_of_its_objects_allocates) {
    need_build({"callers_linked"});
    TempDir dir;
    // One rule for the library and the program: a frame in either matches. Counted once, under
    // the one rule, and described with its globs in braces.
    const Setup s = write_config(dir, R"({"name": "both", "module": ["libsecretlib.so*", "callers_linked"]})");
    LiveProgram child;
    start(child, s, {shim_program("callers_linked")});
    expect_blocks(child, 1, kInArena, kInArena, kInArena);
    finish(child, "");
    cr_assert_eq(matched(s), 3 * kBlocksPerRound + 1);  // and the start-up allocation that binds malloc
    const std::string stats = read_stats(s.stats);
    cr_assert(stats.find(R"("caller": "module {libsecretlib.so*, callers_linked} depth 1")") != std::string::npos,
              "%s", stats.c_str());
}

Test(e2e_callers, module_list_warns_once_naming_every_glob_when_none_is_loaded) {
    need_build({"callers_linked"});
    TempDir dir;
    // A glob of the list that matches nothing is not reported while another one matches.
    const Setup s = write_config(dir, R"({"name": "lib", "module": ["libsecretlib.so*", "libnothere.so"]},
        {"name": "absent", "module": ["libnothere.so", "libnothere2.so*"], "min_size": 2000})");
    LiveProgram child;
    start(child, s, {shim_program("callers_linked")});
    const std::string warned = warning("absent", "no loaded object matches \"libnothere.so\" or \"libnothere2.so*\"");
    assert_log_eq(child.err(), warned.c_str());
    expect_blocks(child, 1, kInArena, kInArena, kOutside);
    finish(child, warned);
    cr_assert_eq(matched(s), 2 * kBlocksPerRound);
}

// ---- 4, 5. openssl with libcrypto -----------------------------------------------------------

Test(e2e_callers, openssl_module_rule_counts_libcrypto_and_keeps_output) {
    TempDir dir;
    const auto argv = dgst_argv(openssl_input(dir));
    const RunResult plain = run_openssl(argv, "");
    cr_assert(plain.out.find("HMAC-SHA2-256(") == 0, "unexpected output: %s", plain.out.c_str());
    const auto module = shimmed_openssl(dir, argv, plain, R"({"name": "crypto", "module": "libcrypto.so*"})");
    const auto ranged = shimmed_openssl(
        dir, argv, plain, R"({"name": "crypto", "module": "libcrypto.so*", "min_size": 16, "max_size": "4KiB"})");
    const auto every = shimmed_openssl(dir, argv, plain, R"({"name": "all", "min_size": 0})");
    cr_assert_gt(module, 0u);
    cr_assert_gt(ranged, 0u);
    cr_assert_leq(ranged, module, "a size range can only narrow the rule");
    // The allocations libc, the dynamic loader and the openssl program make are not counted.
    cr_assert_lt(module, every, "libcrypto's rule matched %llu of %llu allocations", module, every);
}

Test(e2e_callers, openssl_enc_output_is_byte_identical_under_a_module_rule) {
    TempDir dir;
    const auto argv = enc_argv(openssl_input(dir));
    const RunResult plain = run_openssl(argv, "");
    cr_assert_geq(plain.out.size(), 65536u + 123u, "ciphertext of %zu bytes", plain.out.size());
    cr_assert_gt(shimmed_openssl(dir, argv, plain, R"({"name": "crypto", "module": "libcrypto.so*"})"), 0u);
    cr_assert_gt(shimmed_openssl(dir, argv, plain, R"({"name": "evp", "symbol": "EVP_*", "depth": 4})"), 0u);
}

Test(e2e_callers, openssl_rule_for_an_unloaded_module_matches_nothing_and_warns_once) {
    TempDir dir;
    const auto argv = dgst_argv(openssl_input(dir));
    const RunResult plain = run_openssl(argv, "");
    const auto n = shimmed_openssl(dir, argv, plain, R"({"name": "absent", "module": "libnotthere.so"})",
                                   warning("absent", "no loaded object matches \"libnotthere.so\""));
    cr_assert_eq(n, 0u);
}

Test(e2e_callers, openssl_symbol_rule_on_a_libcrypto_function) {
    TempDir dir;
    const auto argv = dgst_argv(openssl_input(dir));
    const RunResult plain = run_openssl(argv, "");
    // CRYPTO_zalloc calls CRYPTO_malloc, which tail-calls malloc: CRYPTO_zalloc is depth 1.
    const auto zalloc =
        shimmed_openssl(dir, argv, plain, R"({"name": "zalloc", "symbol": "CRYPTO_zalloc", "depth": 2})");
    const auto every = shimmed_openssl(dir, argv, plain, R"({"name": "all", "min_size": 0})");
    cr_assert_gt(zalloc, 0u);
    cr_assert_lt(zalloc, every, "CRYPTO_zalloc's rule matched %llu of %llu allocations", zalloc, every);
}

// ---- 6. malformed globs ---------------------------------------------------------------------

Test(e2e_callers, malformed_glob_is_a_config_error) {
    need_build({"callers_linked"});
    TempDir dir;
    cr_assert(dir.ok());
    const std::string exe = std::filesystem::canonical(shim_program("callers_linked")).string();
    const struct {
        const char *rule;
        const char *error;
    } cases[] = {
        {R"({"name": "bad", "symbol": "[abc"})", R"(rules[0].symbol: invalid glob "[abc": '[' without a matching ']')"},
        {R"({"name": "bad", "module": "lib[z-a].so"})",
         R"(rules[0].module: invalid glob "lib[z-a].so": a range in [...] runs backwards)"},
    };
    for (const auto &c : cases) {
        const std::string config = dir.file("rules.json");
        cr_assert(write_file(config, std::string(R"({"version": 1, "rules": [)") + c.rule + "]}"));
        RunOptions opts = shim_options(config, {shim_program("callers_linked")});
        opts.unset_env = {"MEMLOCK_SHIM_ON_CONFIG_ERROR"};
        const RunResult r = run_program(opts);
        cr_assert(r.exited_with(78), "%s", r.describe().c_str());
        cr_assert_str_empty(r.out.c_str(), "the program ran: %s", r.out.c_str());
        const std::string expected = "memlock-shim: " + config + ": " + c.error + "\nmemlock-shim: refusing to run " +
                                     exe +
                                     " unprotected (exit 78); fix this or set "
                                     "MEMLOCK_SHIM_ON_CONFIG_ERROR=run-unprotected\n";
    assert_log_eq(r.err, expected.c_str());
    }
}

// fork while another thread rebuilds the caller index (dlclose makes it rebuild): the index's
// build lock is held across fork, so no child inherits it locked.
Test(e2e_callers, fork_while_the_index_is_rebuilt_does_not_hang_the_child) {
    need_build({"callers_forkdl"});
    TempDir dir;
    const Setup s = write_config(dir, R"({"name": "s", "symbol": "secret_maker", "depth": 1, "size": 40})");
    RunOptions opts;
    opts.argv = {shim_program("callers_forkdl")};
    opts.env = shim_env(s.config);
    const RunResult r = run_program(opts);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hung 0\n");
    cr_assert_geq(matched(s), 1u);
}
