#!/usr/bin/env python3
"""make bench (daemons): throughput of real daemons with the key profile vs without the shim.

Two instances of each daemon run side by side (one under memlock-run with config/default.json,
one plain, each on its own port); their measurements are interleaved (plain, profile, profile,
plain, plain, ...: each round runs both, every other round the profile first) and each figure is
the median of BENCH_DAEMON_ROUNDS (default 4), with the lowest and highest run beside it (the
spread). Prints requests (or transactions) per second, the ratio
profile/plain (the median of each round's ratio: a round's two runs are seconds apart, so a
change in the machine's speed between rounds cancels out), and the daemon's CPU time per request
(its processes' own, their reaped children's and their live descendants', over the same runs)
with the ratio plain/profile. With two CPUs or more, the daemons run on the last CPU and the
client on the others, so the server's CPU is the limit and the figures measure what a request
costs the server, not how the scheduler shares CPUs between client and server. Asserts nothing.

usage: bench_daemons.py BUILD_DIR [PORT [CONFIG]]   (PORT .. PORT + 31 are used; default, or 0:
  32 consecutive ports the kernel finds free, so that runs side by side never collide)
  CONFIG: the shim's config for the second instance (default: config/default.json, the key
  profile; `make bench` also runs config/match-all.json). BENCH_DAEMON_ROUNDS: figures per median.
  nginx HTTPS keep-alive (wrk), nginx HTTPS full handshakes (ab, a new connection per request),
  pgbench over TLS (sslmode=require, select-only).
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keyproof  # noqa: E402

SECONDS = os.environ.get("BENCH_DAEMON_SECONDS", "5")
ROUNDS = int(os.environ.get("BENCH_DAEMON_ROUNDS", "4"))


def cpu_ticks(pid):
    """Clock ticks of CPU used by pid, its reaped children and its live descendants."""
    total = 0
    for p in [pid] + keyproof.descendants(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited since the list was read: its parent counts it once reaped
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total


CPUS = sorted(os.sched_getaffinity(0))


def pin(root):
    """Moves the daemon whose first process is root, and the processes it starts later, to the last CPU."""
    if len(CPUS) < 2:
        return
    for p in [root] + keyproof.descendants(root):
        try:
            os.sched_setaffinity(p, {CPUS[-1]})
        except OSError:
            pass  # exited since the list was read


def client(argv):
    """argv, run on every CPU but the daemons' one."""
    return argv if len(CPUS) < 2 else ["taskset", "-c", ",".join(map(str, CPUS[:-1]))] + argv


def measure(argv, pattern, done, root):
    """(rate, CPU µs per request) of one client run against the daemon whose first process is root."""
    before = cpu_ticks(root)
    out = keyproof.run(client(argv), timeout=300)
    ticks = cpu_ticks(root) - before
    m, n = re.search(pattern, out), re.search(done, out)
    if not m or not n:
        raise keyproof.Failure("no figure in the output of %s:\n%s" % (" ".join(argv), out[-800:]))
    return float(m.group(1)), ticks * 1e6 / os.sysconf("SC_CLK_TCK") / max(int(n.group(1)), 1)


def compare(title, runs):
    """runs: {"plain": [(rate, cpu), ...], "profile": [...]} filled in interleaved order."""
    def spread(xs, fmt):
        return (fmt + " (" + fmt + "-" + fmt + ")") % (statistics.median(xs), min(xs), max(xs))

    rate = {k: [x[0] for x in v] for k, v in runs.items()}
    cpu = {k: [x[1] for x in v] for k, v in runs.items()}
    ratio = statistics.median(b / a if a else 0.0 for a, b in zip(rate["plain"], rate["profile"]))
    cpu_ratio = statistics.median(a / b if b else 0.0 for a, b in zip(cpu["plain"], cpu["profile"]))
    print("| %s | %s | %s | %.3fx | %s | %s | %.3fx |" % (
        title, spread(rate["plain"], "%.0f"), spread(rate["profile"], "%.0f"), ratio,
        spread(cpu["plain"], "%.1f"), spread(cpu["profile"], "%.1f"), cpu_ratio), flush=True)


def start(kind, build, port, config):
    class A:
        pass
    args = A()
    args.build, args.config, args.keep, args.no_ipc_lock = build, config, False, None
    work = tempfile.mkdtemp(prefix="bench-%s-" % kind)
    r = keyproof.Run(args, work, port)
    try:
        keyproof.SERVE[kind](r)
    except BaseException:
        stop(r)
        raise
    for d in r.started:
        pin(d.proc.pid)
    return r


def stop(r):
    for d in reversed(r.started):
        d.stop()
    shutil.rmtree(r.work, ignore_errors=True)


def interleave(runs, plain, profile, plain_argv, profile_argv, pattern, done):
    """ROUNDS rounds of one run each; every other round runs the profile first, so that what the
    second run of a round gains or loses from the first (caches, the CPU's clock) falls on both."""
    order = [("plain", plain, plain_argv), ("profile", profile, profile_argv)]
    for i in range(ROUNDS):
        for name, instance, argv in (order if i % 2 == 0 else order[::-1]):
            runs[name].append(measure(argv, pattern, done, instance.started[0].proc.pid))


def main():
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    port = port or keyproof.free_ports(32)
    profile = os.path.abspath(sys.argv[3]) if len(sys.argv) > 3 else os.path.join(keyproof.TOP, "config", "default.json")
    print("config of the shimmed instances: %s" % os.path.relpath(profile, keyproof.TOP))
    print("| workload (median of %d, %ss each, interleaved) | plain /s (min-max) | profile /s (min-max) "
          "| profile/plain (median of the rounds) | plain CPU µs/request | profile CPU µs/request | plain/profile CPU |" % (ROUNDS, SECONDS))
    print("| --- | --- | --- | --- | --- | --- | --- |")
    instances = []
    try:
        plain = start("nginx", build, port, "none")
        instances.append(plain)
        prof = start("nginx", build, port + 10, profile)
        instances.append(prof)
        url = "https://127.0.0.1:%d/"
        runs = {"plain": [], "profile": []}
        interleave(runs, plain, prof, ["wrk", "-t1", "-c8", "-d" + SECONDS + "s", url % plain.port],
                   ["wrk", "-t1", "-c8", "-d" + SECONDS + "s", url % prof.port], r"Requests/sec:\s*([\d.]+)",
                   r"(\d+) requests in")
        compare("nginx HTTPS keep-alive (wrk -t1 -c8)", runs)
        runs = {"plain": [], "profile": []}
        ab = ["ab", "-q", "-t", SECONDS, "-n", "1000000", "-c", "4"]
        interleave(runs, plain, prof, ab + [url % plain.port], ab + [url % prof.port],
                   r"Requests per second:\s*([\d.]+)", r"Complete requests:\s*(\d+)")
        compare("nginx HTTPS full handshakes (ab -c4)", runs)
        for r in instances:
            stop(r)
        instances = []
        plain = start("postgres", build, port + 20, "none")
        instances.append(plain)
        prof = start("postgres", build, port + 30, profile)
        instances.append(prof)
        conn = "host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require"
        pg = ["pgbench", "-S", "-c", "2", "-j", "2", "-T", SECONDS]
        runs = {"plain": [], "profile": []}
        done = r"number of transactions actually processed: (\d+)"
        interleave(runs, plain, prof, pg + [conn % plain.port], pg + [conn % prof.port], r"tps = ([\d.]+)", done)
        compare("pgbench -S over TLS (-c2)", runs)
        runs = {"plain": [], "profile": []}
        interleave(runs, plain, prof, pg + ["-C", conn % plain.port], pg + ["-C", conn % prof.port], r"tps = ([\d.]+)",
                   done)
        compare("pgbench -S -C over TLS: a TLS connection per transaction", runs)
    finally:
        for r in instances:
            stop(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
