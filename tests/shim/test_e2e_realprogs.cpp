// End-to-end: real, unmodified programs print the same bytes and exit the same way without the
// shim, with config/match-none.json and with config/match-all.json; under match-all the arena
// serves their memory (the stats files say so). Every process a run starts (children of g++,
// git and sh) is preloaded too and writes its own stats file.
#include <criterion/criterion.h>

#include <cstdint>
#include <string>
#include <vector>

#include "e2e.hpp"
#include "helpers.hpp"
#include "three_ways.hpp"

using namespace memlock_test;

namespace {

// Environment shared by every run: no locale or time zone differences between runs.
const std::vector<std::pair<std::string, std::string>> kBaseEnv = {{"LC_ALL", "C"}, {"TZ", "UTC"}};

// Under match-all the arena served the program: `floor` allocations at least in the process
// that did the most, memory locked, and locking never fell back or denied a request.
void expect_arena_served(const ThreeWays &t, unsigned long long floor) {
    cr_assert(!t.all().stats.files.empty(), "match-all wrote no stats file");
    const std::string top = t.all().stats.most("matched_allocations");
    cr_assert_geq(json_uint(top, "matched_allocations").value_or(0), floor, "%s", t.all().stats.describe().c_str());
    cr_assert_gt(json_uint(top, "frees").value_or(0), 0u, "%s", top.c_str());
    cr_assert_gt(json_uint(top, "locked_bytes").value_or(0), 0u, "%s", top.c_str());
    cr_assert_eq(t.all().stats.total("fallbacks"), 0u, "%s", t.all().stats.describe().c_str());
    cr_assert_eq(t.all().stats.total("denied"), 0u, "%s", t.all().stats.describe().c_str());
    cr_assert(t.none().stats.files.empty(), "match-none has no arena: %s", t.none().stats.describe().c_str());
    cr_log_info("match-all: %zu process(es), %llu matched allocations in all, top process: %s",
                t.all().stats.files.size(), t.all().stats.total("matched_allocations"), top.c_str());
}

// A deterministic pseudo-random sequence (64-bit LCG, high bits).
struct Lcg {
    std::uint64_t s;
    std::uint32_t next() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<std::uint32_t>(s >> 33);
    }
};

// The real interpreter: /usr/bin/python3 (python3 in PATH may be a pyenv shell script).
std::string python3() {
    cr_assert(::access("/usr/bin/python3", X_OK) == 0, "/usr/bin/python3 missing");
    return "/usr/bin/python3";
}

const char *const kPythonWorkload = R"(
import hashlib, json, random, zlib
random.seed(12345)
items = [random.random() for _ in range(200000)]
items.sort()
print(hashlib.sha256(repr(items[:1000]).encode()).hexdigest(), items[0] <= items[-1])
doc = {"k%d" % i: [i, str(i) * (i % 50), {"x": i * 1.5, "tags": ["t%d" % (i % 7)] * (i % 5)}]
       for i in range(20000)}
text = json.dumps(doc, sort_keys=True)
print(json.loads(text) == doc, len(text), hashlib.sha256(text.encode()).hexdigest())
packed = zlib.compress(text.encode(), 9)
print(len(packed), zlib.crc32(packed), zlib.decompress(packed) == text.encode())
h = hashlib.sha256()
for i in range(20000):
    h.update(hashlib.sha512(("%d" % i).encode() * 20).digest())
print(h.hexdigest())
words = sorted(("w%07d" % random.randrange(10**7) for _ in range(200000)), key=lambda s: s[::-1])
print(words[0], words[-1], len(set(words)), hashlib.md5("".join(words).encode()).hexdigest())
)";

const char *const kPerlWorkload = R"(
use strict; use warnings; use Digest::SHA qw(sha256_hex);
my (%h, $x); $x = 12345;
for my $i (1 .. 200000) {
    $x = ($x * 1103515245 + 12345) % 2147483648;
    $h{sprintf("k%06x", $x % 0x100000)} .= "v$i,";
}
my @keys = sort { length($h{$b}) <=> length($h{$a}) or $a cmp $b } keys %h;
my $sha = Digest::SHA->new(256);
$sha->add($_, "=", $h{$_}, "\n") for @keys;
print scalar(@keys), " $keys[0] ", $sha->hexdigest, "\n";
my $text = join(" ", map { "word$_ " . ($_ * 7 % 1000) } 1 .. 100000);
my %count; $count{$1}++ while $text =~ /\b(\d+)\b/g;
my @top = (sort { $count{$b} <=> $count{$a} || $a <=> $b } keys %count)[0 .. 9];
print "@top\n";
(my $t2 = $text) =~ s/word(\d+)/W<$1>/g;
my @split = split /\s+/, $t2;
print scalar(@split), " ", sha256_hex($t2), "\n";
)";

// ~20 MB of "key,number,text" lines for sort.
std::string sort_input() {
    Lcg r{42};
    std::string out;
    out.reserve(21u << 20);
    char line[128];
    while (out.size() < (20u << 20)) {
        const std::uint32_t a = r.next(), b = r.next(), c = r.next();
        const int n = std::snprintf(line, sizeof line, "%08x%04x,%u,%.*s\n", a, b & 0xffff, c % 100000,
                                    static_cast<int>(8 + a % 40), "the quick brown fox jumps over the lazy dog, twice");
        out.append(line, static_cast<std::size_t>(n));
    }
    return out;
}

// A git fast-import stream: `commits` commits on main, each changing three of 60 files, with
// fixed authors and dates (so every hash is the same on every run).
std::string fast_import_stream(int commits) {
    Lcg r{7};
    std::vector<std::string> files(60);
    std::string s;
    auto data = [&s](const std::string &d) { s += "data " + std::to_string(d.size()) + "\n" + d + "\n"; };
    for (int i = 1; i <= commits; ++i) {
        const std::string when = std::to_string(1700000000 + i * 3600) + " +0000";
        s += "commit refs/heads/main\nmark :" + std::to_string(i) + "\n";
        s += "author A U Thor <author@example.com> " + when + "\n";
        s += "committer C O Mitter <committer@example.com> " + when + "\n";
        data("change " + std::to_string(i) + ": touch three files\n\nBody of commit " + std::to_string(i) + ".\n");
        if (i > 1) s += "from :" + std::to_string(i - 1) + "\n";
        for (int k = 0; k < 3; ++k) {
            const unsigned f = r.next() % files.size();
            std::string &text = files[f];
            const unsigned line_count = 5 + r.next() % 20;
            for (unsigned l = 0; l < line_count; ++l)
                text += "line " + std::to_string(r.next() % 1000) + " of commit " + std::to_string(i) + "\n";
            if (text.size() > 6000) text.erase(0, text.size() / 3);  // edits, not only appends
            s += "M 100644 inline dir" + std::to_string(f % 6) + "/file" + std::to_string(f) + ".txt\n";
            data(text);
        }
    }
    return s;
}

const char *const kCxxSource = R"(
#include <algorithm>
#include <cstdio>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

template <typename T> struct Matrix {
    std::size_t n;
    std::vector<T> v;
    explicit Matrix(std::size_t size) : n(size), v(size * size) {}
    T &at(std::size_t i, std::size_t j) { return v[i * n + j]; }
    Matrix operator*(Matrix &o) {
        Matrix r(n);
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t k = 0; k < n; ++k)
                for (std::size_t j = 0; j < n; ++j) r.at(i, j) += at(i, k) * o.at(k, j);
        return r;
    }
};

int main() {
    std::map<std::string, int> freq;
    std::ostringstream text;
    for (int i = 0; i < 5000; ++i) text << "w" << (i * 7919 % 613) << ' ';
    std::istringstream in(text.str());
    for (std::string w; in >> w;) ++freq[w];
    std::vector<std::pair<int, std::string>> top;
    for (auto &kv : freq) top.emplace_back(-kv.second, kv.first);
    std::sort(top.begin(), top.end());
    Matrix<long> m(24);
    for (std::size_t i = 0; i < 24; ++i)
        for (std::size_t j = 0; j < 24; ++j) m.at(i, j) = static_cast<long>((i * 31 + j * 17) % 11);
    Matrix<long> p = m * m;
    long trace = 0;
    for (std::size_t i = 0; i < 24; ++i) trace += p.at(i, i);
    std::printf("%zu words, top %s x%d, trace %ld\n", freq.size(), top[0].second.c_str(), -top[0].first, trace);
}
)";

}  // namespace

Test(e2e_realprogs, python3_json_sort_hashlib_zlib) {
    ThreeWayOptions o;
    o.env = kBaseEnv;
    o.env.insert(o.env.end(), {{"PYTHONHASHSEED", "0"}, {"PYTHONDONTWRITEBYTECODE", "1"}});
    const ThreeWays t = run_three_ways({python3(), "-c", kPythonWorkload}, o);
    t.expect_same(0);
    t.expect_same_stderr();
    cr_assert_eq(split_lines(t.without().result.out).size(), 5u, "%s", t.without().result.describe().c_str());
    expect_arena_served(t, 10000);
}

Test(e2e_realprogs, perl_hash_sort_regex) {
    ThreeWayOptions o;
    o.env = kBaseEnv;
    const ThreeWays t = run_three_ways({"perl", "-e", kPerlWorkload}, o);
    t.expect_same(0);
    t.expect_same_stderr();
    cr_assert_eq(split_lines(t.without().result.out).size(), 3u, "%s", t.without().result.describe().c_str());
    expect_arena_served(t, 100000);
}

Test(e2e_realprogs, coreutils_sort_of_a_20_mib_file) {
    TempDir dir;
    cr_assert(dir.ok());
    const std::string input = sort_input();
    cr_assert(write_file(dir.file("input.csv"), input));
    ThreeWayOptions o;
    o.env = kBaseEnv;
    o.env.push_back({"TMPDIR", dir.path()});
    // -S bounds the buffer: unbounded, sort sizes it from the machine's memory (1.3 GB on 24 GB),
    // beyond match-all's max_locked. 16 MiB sorts in runs through temporary files, then merges.
    const ThreeWays t =
        run_three_ways({"sort", "-S", "16M", "--parallel=2", "-t,", "-k2,2n", "-k1,1", dir.file("input.csv")}, o);
    t.expect_same(0);
    t.expect_same_stderr();
    const std::string &out = t.without().result.out;
    cr_assert_eq(out.size(), input.size());
    cr_assert_neq(out.compare(0, 4096, input, 0, 4096), 0, "sort left its input as it was");
    expect_arena_served(t, 20);
    // sort's buffer, megabytes of it, was an arena block.
    const std::string top = t.all().stats.most("matched_allocations");
    cr_assert_gt(json_uint(top, "peak_bytes").value_or(0), 8u << 20, "%s", top.c_str());
}

// Under valgrind's memcheck, which takes the malloc, free and realloc of every object, the
// shim's too, the shim passes every allocation through and says so once: memcheck reports no
// error and sort prints the same. (Before, blocks the shim's other allocation functions gave
// out of the arena reached memcheck's free: "Invalid free()", exit status 9.)
Test(e2e_realprogs, sort_under_valgrind_memcheck) {
    cr_assert(file_exists("/usr/bin/valgrind"), "valgrind missing: run scripts/install-deps.sh");
    TempDir dir;
    cr_assert(dir.ok());
    std::string input;
    Lcg rng{7};
    for (int i = 0; i < 3000; ++i) input += "line " + std::to_string(rng.next() % 1000000) + std::string(rng.next() % 80, 'x') + "\n";
    cr_assert(write_file(dir.file("input"), input));
    ThreeWayOptions o;
    o.env = kBaseEnv;
    o.timeout_ms = 300000;
    const ThreeWays t = run_three_ways({"/usr/bin/valgrind", "-q", "--error-exitcode=9", "sort", dir.file("input")}, o);
    t.expect_same(0);
    cr_assert_eq(t.without().result.out.size(), input.size());
    cr_assert_str_empty(t.without().result.err.c_str());
    const std::string err = without_origin(t.all().result.err);
    cr_assert_eq(split_lines(err).size(), 1u, "%s", err.c_str());
    cr_assert(err.rfind("memlock-shim: warning: running under valgrind (", 0) == 0 &&
                  err.find("vgpreload_memcheck") != std::string::npos &&
                  err.find("whose allocator takes the program's: nothing is protected, every allocation passes "
                           "through\n") != std::string::npos,
              "%s", err.c_str());
    cr_assert(t.all().stats.files.empty(), "the shim kept an arena under valgrind: %s", t.all().stats.describe().c_str());
}

Test(e2e_realprogs, git_log_blame_fsck_gc_on_a_300_commit_repository) {
    TempDir dir;
    cr_assert(dir.ok());
    const std::string repo = dir.file("repo"), home = dir.file("home");
    cr_assert(std::filesystem::create_directory(home));
    const std::string stream = fast_import_stream(300);
    ThreeWayOptions o;
    o.env = kBaseEnv;
    o.env.insert(o.env.end(), {{"HOME", home}, {"GIT_CONFIG_NOSYSTEM", "1"}, {"GIT_PAGER", "cat"},
                               {"GIT_AUTHOR_DATE", "1700000000 +0000"}, {"GIT_COMMITTER_DATE", "1700000000 +0000"}});
    o.cwd = repo;
    // Each run starts from the same fresh repository (gc rewrites it), imported without the shim.
    o.before = [&](Mode) {
        std::error_code ec;
        std::filesystem::remove_all(repo, ec);
        RunOptions init;
        init.argv = {"git", "init", "--quiet", "--initial-branch=main", repo};
        init.env = o.env;
        init.unset_env = {"LD_PRELOAD", "MEMLOCK_SHIM_CONFIG"};
        const RunResult ri = run_program(init);
        cr_assert(ri.exited_with(0), "%s", ri.describe().c_str());
        RunOptions imp = init;
        imp.argv = {"git", "fast-import", "--quiet"};
        imp.cwd = repo;
        imp.stdin_data = stream;
        const RunResult rf = run_program(imp);
        cr_assert(rf.exited_with(0), "%s", rf.describe().c_str());
    };
    const char *const script = R"sh(set -e
git fsck --full --strict --no-progress
git log --stat --format='%H %an %ad %s' --date=iso-strict
git log -p -n 40 --format=%H
git blame -s HEAD -- "$(git ls-tree -r --name-only HEAD | head -n 1)"
git -c pack.threads=1 gc --quiet
git count-objects -v | grep -E '^(count|in-pack|packs|prune-packable|garbage):'
git fsck --full --strict --no-progress
git rev-parse HEAD 'HEAD^{tree}'
)sh";
    const ThreeWays t = run_three_ways({"sh", "-c", script}, o);
    t.expect_same(0);
    t.expect_same_stderr();
    const auto count = line_value(t.without().result.out, "in-pack:");
    cr_assert(count.has_value() && std::stoul(*count) > 900, "%s", t.without().result.out.c_str());
    // sh, and every git process it and git gc started, each ran with the shim.
    cr_assert_geq(t.all().stats.files.size(), 8u, "%s", t.all().stats.describe().c_str());
    expect_arena_served(t, 10000);
}

// g++ (and cc1plus, as, collect2, ld) compile under the shim; the object's disassembly and
// what the program prints, run without the shim, are the same in all three runs.
Test(e2e_realprogs, gxx_compiles_a_file) {
    TempDir dir;
    cr_assert(dir.ok());
    cr_assert(write_file(dir.file("prog.cpp"), kCxxSource));
    ThreeWayOptions o;
    o.env = kBaseEnv;
    o.cwd = dir.path();
    o.before = [&](Mode) {
        std::error_code ec;
        std::filesystem::remove(dir.file("prog.o"), ec);
        std::filesystem::remove(dir.file("prog"), ec);
    };
    const char *const script = R"(set -e
g++ -std=c++17 -O2 -c prog.cpp -o prog.o
g++ prog.o -o prog
objdump -d --no-show-raw-insn prog.o
env -u LD_PRELOAD -u MEMLOCK_SHIM_CONFIG ./prog
)";
    const ThreeWays t = run_three_ways({"sh", "-c", script}, o);
    t.expect_same(0);
    t.expect_same_stderr();
    const std::string &out = t.without().result.out;
    cr_assert(out.find("<main>:") != std::string::npos && out.find(" words, top ") != std::string::npos, "%s",
              out.c_str());
    expect_arena_served(t, 10000);
}
