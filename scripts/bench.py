#!/usr/bin/env python3
"""make bench: costs of the shim, side by side with baselines measured in the same run.

Prints ratios; asserts nothing (these machines are noisy: each figure is the best of
several runs). usage: scripts/bench.py BUILD_DIR
"""
import json
import os
import subprocess
import sys
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(BUILD, "libmemlock_shim.so")
PAIRS = os.path.join(BUILD, "bench", "alloc_pairs")
CALLER_PAIRS = os.path.join(BUILD, "bench", "caller_pairs")
LIVE = os.path.join(BUILD, "bench", "live_secrets")
PHASES = os.path.join(BUILD, "bench", "phases")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
ITER = int(os.environ.get("BENCH_ITERATIONS", "10000000"))

work = tempfile.mkdtemp(prefix="memlock-bench.")


def config(name, rules, **extra):
    path = os.path.join(work, name + ".json")
    body = {"version": 1, "rules": rules}
    body.update(extra)
    with open(path, "w") as f:
        json.dump(body, f)
    return path


NONE = config("none", [{"name": "never-in-this-benchmark", "size": 1000003}])
SMALL = config("small", [{"name": "keys", "size": 32}, {"name": "pages", "size": 4096}])
ALL = config("all", [{"name": "everything", "min_size": 0}])
TYPICAL = config("typical", [{"name": "keys", "size": 32}, {"name": "keys64", "size": 64}])


def env_for(cfg):
    env = dict(os.environ)
    if cfg:
        env["LD_PRELOAD"] = SHIM
        env["MEMLOCK_SHIM_CONFIG"] = cfg
    return env


def best(argv, cfg, runs=RUNS):
    """Best (lowest) figure a benchmark program prints over `runs` runs."""
    out = []
    for _ in range(runs):
        r = subprocess.run(argv, env=env_for(cfg), capture_output=True, text=True, check=True)
        out.append(float(r.stdout.split()[0]))
    return min(out)


def pairs(size, threads, cfg, extra=(), iterations=ITER):
    return best([PAIRS, str(size), str(iterations), str(threads), *extra], cfg)


def row(label, value, base, unit="ns/pair"):
    print(f"  {label:<46} {value:10.2f} {unit:<8} {value / base:7.2f}x  (+{value - base:.2f})")


print(f"== allocate + write + free, per pair (best of {RUNS} runs, {ITER} pairs each)")
g32 = pairs(32, 1, None)
row("glibc malloc+free, 32 B (baseline)", g32, g32)
row("shim, no matching rule, 32 B", pairs(32, 1, NONE), g32)
row("shim, matching rule, 32 B", pairs(32, 1, SMALL), g32)
g4k = pairs(4096, 1, None)
row("glibc malloc+free, 4 KiB (baseline)", g4k, g4k)
row("shim, matching rule, 4 KiB", pairs(4096, 1, SMALL), g4k)
naive = pairs(32, 1, None, ["naive"], iterations=max(ITER // 200, 1000))
row("naive per-allocation mlock/madvise, 32 B", naive, g32)
print("== the same on 2 threads (wall time per pair and thread)")
g2 = pairs(32, 2, None)
row("glibc, 32 B, 2 threads (baseline)", g2, g2)
row("shim, no matching rule, 32 B, 2 threads", pairs(32, 2, NONE), g2)
row("shim, matching rule, 32 B, 2 threads", pairs(32, 2, SMALL), g2)

print("== locked memory for 10,000 more live 32-byte secrets")
asked, locked = (int(x) for x in subprocess.run(
    [LIVE, "10000", "32"], env=env_for(SMALL), capture_output=True, text=True, check=True).stdout.split())
print(f"  {asked} bytes asked, VmLck grew by {locked} bytes: {locked / asked:.2f}x "
      f"(a page per secret would be {10000 * 4096 / asked:.0f}x)")


print("== memory through mixed phases (16, 200, 3000, 40, 100000 B; 48 MiB each), match-all vs glibc")
MiB = 1 << 20
for label, cfg in (("glibc", None), ("shim, match-all", os.path.join(TOP, "config", "match-all.json"))):
    live, rss, locked, rss_after, locked_after, rss_idle, locked_idle = (int(x) for x in subprocess.run(
        [PHASES], env=env_for(cfg), capture_output=True, text=True, check=True).stdout.split())
    print(f"  {label:<18} peak live {live / MiB:7.1f} MiB, resident at peak {rss / MiB:7.1f} MiB "
          f"({rss / live:.2f}x), locked {locked / MiB:7.1f} MiB; after the data goes, idle: resident "
          f"{rss_idle / MiB:6.1f} MiB, locked {locked_idle / MiB:6.1f} MiB; after one more allocation: "
          f"resident {rss_after / MiB:6.1f} MiB, locked {locked_after / MiB:6.1f} MiB")

print("== caller rules: malloc(48) + free made 20 frames deep, per pair")
CALLER_ITER = max(ITER // 5, 1000)
size_only = config("size48", [{"name": "size-only", "size": 48}])
gc = best([CALLER_PAIRS, "48", str(CALLER_ITER)], None)
row("glibc (baseline)", gc, gc)
sc = best([CALLER_PAIRS, "48", str(CALLER_ITER)], size_only)
row("shim, size-only rule", sc, gc)
for depth in (1, 8, 16):
    # A function at exactly `depth` (worst case for a miss: every frame is looked at).
    hit = config(f"hit{depth}", [{"name": "chain", "symbol": f"chain_{20 - depth}", "depth": depth, "size": 48}])
    miss = config(f"miss{depth}", [{"name": "absent", "symbol": "no_such_function", "depth": depth, "size": 48}])
    h = best([CALLER_PAIRS, "48", str(CALLER_ITER)], hit)
    m = best([CALLER_PAIRS, "48", str(CALLER_ITER)], miss)
    print(f"  symbol rule, depth {depth:>2}: matched {h:8.2f} ns/pair (+{h - sc:.2f} over size-only), "
          f"not matched {m:8.2f} ns/pair (+{m - gc:.2f} over glibc)")
ruled_out = best([CALLER_PAIRS, "64", str(CALLER_ITER)], config("miss16", [
    {"name": "absent", "symbol": "no_such_function", "depth": 16, "size": 48}]))
g64 = best([CALLER_PAIRS, "64", str(CALLER_ITER)], None)
print(f"  ruled out by size (64 B under a depth-16 rule for 48 B): {ruled_out:.2f} ns/pair "
      f"vs glibc {g64:.2f} (+{ruled_out - g64:.2f})")


print("== fork with about 4 MiB of matched 1 KiB blocks live: CPU per fork + child _exit + wait")
FORK_COST = os.path.join(BUILD, "bench", "fork_cost")
FORKS = int(os.environ.get("BENCH_FORKS", "300"))
k1k = config("k1k", [{"name": "buffers", "size": 1024}])
THP_SYSFS = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_off(argv):
    """argv run where the shim reads THP "never" (a copy of the sysfs file mounted over it in a
    private mount namespace; the kernel's setting is unchanged), or None where that cannot be
    done (not root, no unshare, no THP)."""
    never = os.path.join(work, "thp-never")
    with open(never, "w") as f:
        f.write("always madvise [never]\n")
    probe = ["unshare", "-m", "--propagation", "private", "mount", "--bind", never, THP_SYSFS]
    if not os.path.exists(THP_SYSFS) or subprocess.run(probe, capture_output=True).returncode != 0:
        return None
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", never, THP_SYSFS, *argv]


def interleaved(variants, runs=RUNS):
    """Runs each (argv, cfg) of `variants` once per round, `runs` rounds, so that the load of
    the machine weighs on all alike, each on the last CPU (parent and child on one CPU, none
    of them moved between CPUs). Returns per variant the median and the best of the first
    figure printed, the median over the rounds of its difference from the first variant's in
    the same round, and the medians of the figures after it."""
    cpu = {max(os.sched_getaffinity(0))}
    got = [[] for _ in variants]
    for _ in range(runs):
        for i, (argv, cfg) in enumerate(variants):
            r = subprocess.run(argv, env=env_for(cfg), capture_output=True, text=True, check=True,
                               preexec_fn=lambda: os.sched_setaffinity(0, cpu))
            got[i].append([float(x) for x in r.stdout.split()])
    median = lambda xs: sorted(xs)[len(xs) // 2]
    return [(median([x[0] for x in g]), min(x[0] for x in g), median([x[0] - b[0] for x, b in zip(g, got[0])]),
             [median([x[k] for x in g]) for k in range(1, len(g[0]))]) for g in got]


def fork_rows(variants):
    figures = interleaved([(argv, cfg) for _, argv, cfg in variants])
    for (label, _, _), (median, low, delta, (faults_parent, faults_child, cpu_parent, cpu_child)) in zip(variants, figures):
        print(f"  {label:<46} {median:10.2f} us/fork ({low:.2f}) {median / figures[0][0]:7.2f}x  "
              f"({delta:+.2f} in the same round); parent {cpu_parent:.1f} + child {cpu_child:.1f} us; "
              f"page faults per fork: parent {faults_parent:.1f}, child {faults_child:.1f}")


fork_argv = [FORK_COST, "4", str(FORKS)]
fork_variants = [("glibc (baseline)", fork_argv, None), ("shim, match-none", fork_argv, NONE),
                 ("shim, size rule matching the blocks", fork_argv, k1k)]
if thp_off(fork_argv):
    # The shim reads the sysfs file at start-up; unshare and mount run under it too, harmlessly.
    fork_variants.append(("shim, the same rule, huge pages off", thp_off(fork_argv), k1k))
with open(THP_SYSFS) if os.path.exists(THP_SYSFS) else open(os.devnull) as f:
    print(f"  (transparent huge pages: {f.read().strip() or 'missing'}; {RUNS} interleaved runs of {FORKS} forks, "
          f"median, best in brackets; load average {os.getloadavg()[0]:.1f})")
fork_rows(fork_variants)
# The same program linked with -z now, as Debian links its daemons (nginx, sshd, postgres,
# haproxy, stunnel4): its child binds no function lazily, so the dynamic loader reads no
# object's symbol table in it, the shim's included.
now_argv = [os.path.join(BUILD, "bench", "fork_cost_now"), "4", str(FORKS)]
print("  the same, the program linked with -z now (no lazy binding in the child):")
fork_rows([("glibc (baseline)", now_argv, None), ("shim, size rule matching the blocks", now_argv, k1k)])

print("== policy.backing: secretmem (memfd_secret) vs anonymous, matched blocks")
rules_sa = [{"name": "keys", "size": 32}, {"name": "pages", "size": 4096}, {"name": "buffers", "size": 1024}]
anon = config("backing-anonymous", rules_sa)
secret = config("backing-secretmem", rules_sa, policy={"backing": "secretmem"})
for size in (32, 4096):
    a = pairs(size, 1, anon)
    row(f"anonymous, malloc+free {size} B (baseline)", a, a)
    row(f"secretmem, malloc+free {size} B", pairs(size, 1, secret), a)
for kib in (64, 1024, 16384):
    # A secretmem child copies the committed memory into a file of its own before it runs:
    # each new secretmem page leaves the kernel's direct map (a TLB flush), so fewer rounds.
    mib, forks = str(kib / 1024), str(max(FORKS * 64 // kib, 3))
    a = best([FORK_COST, mib, forks], anon)
    row(f"anonymous, fork with {kib} KiB matched (baseline)", a, a, "us/fork")
    row(f"secretmem, fork with {kib} KiB matched", best([FORK_COST, mib, forks], secret), a, "us/fork")

print("== dlopen + matching malloc + free + dlclose of a small library, libLLVM-14 loaded")
DL_CYCLE = os.path.join(BUILD, "bench", "dl_cycle")
SMALL_LIB = os.path.join(BUILD, "libs", "libsecretlib.so")
LLVM = "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1"
if os.path.exists(LLVM):
    # One rule that matches the library's allocation and 15 that match nothing.
    rules16 = [{"name": "helper", "symbol": "alloc_helper", "depth": 1, "size": 32}] + [
        {"name": f"absent{i}", "symbol": f"no_such_function_{i}*", "depth": 1, "size": 32} for i in range(1, 16)]
    sixteen = config("symbols16", rules16)
    cyc = [DL_CYCLE, SMALL_LIB, "200", LLVM]
    gd = best(cyc, None)
    row("glibc (baseline)", gd, gd, "us/cycle")
    row("shim, 16 symbol rules", best(cyc, sixteen), gd, "us/cycle")
else:
    print(f"  skipped: {LLVM} missing (package libllvm14)")


def wall(argv, cfg, runs=RUNS, stdin=None):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, env=env_for(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=stdin, check=True)
        times.append(time.perf_counter() - t)
    return min(times)


print(f"== real programs, wall time (best of {RUNS} runs) with the shim over without")
sort_input = os.path.join(work, "lines.txt")
with open(sort_input, "w") as f:
    for i in range(400000):
        f.write(f"{(i * 7919) % 1000003:07d} line {i}\n")
big_file = os.path.join(work, "big.bin")
with open(big_file, "wb") as f:
    f.write(bytes(range(256)) * (20 * 4096))
rsa_key = os.path.join(work, "key.pem")
subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa_key],
               check=True, capture_output=True)
py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
programs = [
    ("python3 (json, sort, dict)", [py, "-c",
        "import json; d=[{'k': str(i), 'v': list(range(i % 20))} for i in range(150000)];"
        "s=json.dumps(d); json.loads(s); sorted(str(i * 7919 % 100003) for i in range(300000))"]),
    ("sort (400k lines)", ["sort", sort_input]),
    ("openssl (sign 20 MB, RSA-2048)", ["openssl", "dgst", "-sha256", "-sign", rsa_key, big_file]),
    ("perl (hash of 300k keys)", ["perl", "-e", "my %h; $h{$_ * 7919 % 1000003} = $_ for 1..300000; print scalar(keys %h)"]),
]
for label, argv in programs:
    base = wall(argv, None)
    print(f"  {label}: without {base:.3f}s; "
          f"match-none {wall(argv, NONE) / base:.3f}x; typical size rule {wall(argv, TYPICAL) / base:.3f}x; "
          f"match-all {wall(argv, ALL) / base:.3f}x")
