#!/usr/bin/env python3
"""keyproof.py - counts a real daemon's private-key copies in dumps of its serving processes.

For each daemon it makes a fresh RSA-2048 key and certificate, starts the daemon on 127.0.0.1
(under memlock-run with --config FILE, or without the shim with --config none), drives it
with its real client (curl, psql/pgbench, ssh), dumps the serving processes (gdb's gcore;
--kernel-core also makes one process abort and reads the kernel's core file), and counts in
each dump the first 16 bytes of the key's private components (RSA p, q, d, dp, dq, qinv; big
endian as in DER and byte-reversed as OpenSSL's BIGNUM limbs) and the lines of its PEM text.
Every daemon it starts is killed before it returns, also on failure.

usage: keyproof.py --build DIR --config FILE|none [--port N] [--kernel-core] [--json] DAEMON...
       keyproof.py --table --build DIR --port N   (make proof-keys: no shim, size rules, profiles)
DAEMON: nginx haproxy stunnel postgres sshd

Output (--json): one object per line: {"daemon", "config", "ok", "error", "dumps": [{"process",
"pid", "how", "components", "pem"}]}. Exit status 0 when every daemon served correctly.
"""
import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAEMONS = ["nginx", "haproxy", "stunnel", "postgres", "sshd"]


class Failure(Exception):
    pass


def run(cmd, timeout=60, check=True, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise Failure("%s exited %d: %s" % (" ".join(cmd), r.returncode, (r.stderr or r.stdout).decode(errors="replace").strip()[-600:]))
    return r.stdout.decode(errors="replace")


# ---------------------------------------------------------------- the key and its needles

def make_key(work, ssh=False):
    key = os.path.join(work, "key.pem")
    cert = os.path.join(work, "cert.pem")
    run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key])
    run(["openssl", "req", "-new", "-x509", "-key", key, "-subj", "/CN=localhost", "-days", "2", "-out", cert])
    return key, cert


def key_needles(key_pem):
    """(component needles, PEM line needles) of an RSA key file in PEM (PKCS#8 or PKCS#1)."""
    text = run(["openssl", "rsa", "-in", key_pem, "-text", "-noout"])
    comps = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s*$", line)
        if m:
            name = m.group(1)
            comps[name] = ""
        elif name and line.startswith(" "):
            comps[name] += line.strip().replace(":", "")
        else:
            name = None
    needles = []
    for field in ("prime1", "prime2", "privateExponent", "exponent1", "exponent2", "coefficient"):
        raw = bytes.fromhex(comps[field])
        raw = raw.lstrip(b"\0")
        head = raw[:16]
        needles += [head, head[::-1]]
    pem = [ln.encode() for ln in open(key_pem).read().splitlines() if len(ln) == 64]
    return needles, pem


def count_copies(path, needles, pem):
    data = open(path, "rb").read()
    comps = sum(data.count(n) for n in needles)
    pem_copies = max((data.count(line) for line in pem), default=0)
    return comps, pem_copies


# ---------------------------------------------------------------- processes

def wait_port(port, proc, what, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise Failure("%s exited %s before listening on %d" % (what, proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise Failure("%s did not listen on port %d within %ds" % (what, port, seconds))


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def descendants(pid):
    out = []
    for c in children(pid):
        out.append(c)
        out.extend(descendants(c))
    return out


def comm(pid):
    try:
        return open("/proc/%d/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def gcore(pid, out):
    run(["gcore", "-o", out, str(pid)], timeout=120)
    path = "%s.%d" % (out, pid)
    if not os.path.exists(path):
        raise Failure("gcore wrote no %s" % path)
    return path


def kernel_core(pid, cwd):
    """Aborts pid and returns the core file the kernel wrote in cwd (core_pattern "core"), or None
    when the core pattern sends it elsewhere (a pipe or a directory)."""
    pattern = open("/proc/sys/kernel/core_pattern").read().strip()
    if pattern.startswith("|") or "/" in pattern:
        return None
    # pre: the process's RLIMIT_CORE allows the dump (nginx: worker_rlimit_core)
    os.kill(pid, signal.SIGABRT)
    deadline = time.time() + 60
    while time.time() < deadline:  # the core is complete once the process is gone (or a zombie)
        try:
            gone = open("/proc/%d/stat" % pid).read().split(")")[-1].split()[0] == "Z"
        except OSError:
            gone = True
        cores = [n for n in os.listdir(cwd) if n == "core" or n.startswith("core.")]
        if gone:
            if not cores:
                raise Failure("no kernel core file in %s after SIGABRT to %d" % (cwd, pid))
            return os.path.join(cwd, cores[0])
        time.sleep(0.1)
    raise Failure("process %d did not end after SIGABRT" % pid)


class Daemon:
    """One started process group; stop() kills the whole group."""

    def __init__(self, argv, work, name, env=None, user=None):
        self.name = name
        self.log = open(os.path.join(work, name + ".log"), "wb")
        pre = None
        if user:
            pw = pwd.getpwnam(user)

            def pre():  # noqa: E306
                os.setgid(pw.pw_gid)
                os.initgroups(user, pw.pw_gid)
                os.setuid(pw.pw_uid)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=work, env=env,
                                     start_new_session=True, preexec_fn=pre)

    def log_text(self):
        self.log.flush()
        try:
            return open(self.log.name, errors="replace").read()[-1500:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


def http_backend(work, port):
    """A plain HTTP backend (python's http.server) for the TLS front-ends."""
    os.makedirs(os.path.join(work, "www"), exist_ok=True)
    with open(os.path.join(work, "www", "index.html"), "w") as f:
        f.write("backend ok\n")
    d = Daemon([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                os.path.join(work, "www"), str(port)], work, "backend")
    wait_port(port, d.proc, "backend")
    return d


def curl(url, expect):
    out = run(["curl", "-sS", "-k", "--max-time", "10", url])
    if expect not in out:
        raise Failure("%s answered %r, expected %r" % (url, out[:200], expect))


# ---------------------------------------------------------------- the daemons

class Run:
    """Context for one daemon run: the work dir, the launch prefix and what gets dumped."""

    def __init__(self, args, work, port):
        self.args, self.work, self.port = args, work, port
        self.started = []
        self.dumps = []  # (label, pid)
        self.kernel = None  # (label, pid) aborted for the kernel core

    def prefix(self):
        if self.args.config == "none":
            return []
        return [os.path.join(self.args.build, "memlock-run"), "--quiet", "--shim",
                os.path.join(self.args.build, "libmemlock_shim.so"), "--config", self.args.config, "--"]

    def env(self):
        e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MEMLOCK_SHIM_CONFIG")}
        return e

    def start(self, argv, name, user=None):
        d = Daemon(self.prefix() + argv, self.work, name, env=self.env(), user=user)
        self.started.append(d)
        return d


def serve_nginx(r):
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    conf = os.path.join(r.work, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""daemon off; master_process on; worker_processes 1; user www-data; worker_rlimit_core 1g;
pid %(w)s/nginx.pid; error_log %(w)s/error.log; working_directory %(w)s/cores;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %(w)s/tmp; proxy_temp_path %(w)s/tmp; fastcgi_temp_path %(w)s/tmp;
  uwsgi_temp_path %(w)s/tmp; scgi_temp_path %(w)s/tmp;
  server { listen 127.0.0.1:%(p)d ssl; ssl_certificate %(c)s; ssl_certificate_key %(k)s;
           location / { return 200 "nginx https ok\\n"; } }
  server { listen 127.0.0.1:%(p1)d; location / { return 200 "nginx http ok\\n"; } }
}
""" % {"w": r.work, "p": r.port, "p1": r.port + 1, "c": cert, "k": key})
    for d in ("tmp", "cores"):
        os.makedirs(os.path.join(r.work, d), exist_ok=True)
        os.chmod(os.path.join(r.work, d), 0o777)
    d = r.start(["nginx", "-p", r.work, "-c", conf, "-e", os.path.join(r.work, "error.log")], "nginx")
    wait_port(r.port, d.proc, "nginx")
    wait_port(r.port + 1, d.proc, "nginx")
    for _ in range(3):
        curl("https://127.0.0.1:%d/" % r.port, "nginx https ok")
        curl("http://127.0.0.1:%d/" % (r.port + 1), "nginx http ok")
    workers = children(d.proc.pid)
    if not workers:
        raise Failure("nginx has no worker")
    r.dumps = [("master", d.proc.pid), ("worker", workers[0])]
    r.kernel = ("worker", workers[0], os.path.join(r.work, "cores"))
    return key


def serve_haproxy(r):
    key, cert = make_key(r.work)
    combined = os.path.join(r.work, "combined.pem")
    with open(combined, "w") as f:
        f.write(open(cert).read() + open(key).read())
    r.started.append(http_backend(r.work, r.port + 1))
    conf = os.path.join(r.work, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write("""global
  maxconn 100
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend tls
  bind 127.0.0.1:%d ssl crt %s
  default_backend app
backend app
  server app1 127.0.0.1:%d
""" % (r.port, combined, r.port + 1))
    d = r.start(["haproxy", "-db", "-f", conf], "haproxy")
    wait_port(r.port, d.proc, "haproxy")
    for _ in range(3):
        curl("https://127.0.0.1:%d/" % r.port, "backend ok")
    r.dumps = [("haproxy", d.proc.pid)]
    return key


def serve_stunnel(r):
    key, cert = make_key(r.work)
    r.started.append(http_backend(r.work, r.port + 1))
    conf = os.path.join(r.work, "stunnel.conf")
    with open(conf, "w") as f:
        f.write("""foreground = yes
pid =
[https]
accept = 127.0.0.1:%d
connect = 127.0.0.1:%d
cert = %s
key = %s
""" % (r.port, r.port + 1, cert, key))
    d = r.start(["stunnel4", conf], "stunnel")
    wait_port(r.port, d.proc, "stunnel")
    for _ in range(3):
        curl("https://127.0.0.1:%d/" % r.port, "backend ok")
    r.dumps = [("stunnel", d.proc.pid)]
    return key


PG_BIN = "/usr/lib/postgresql/15/bin"


def serve_postgres(r):
    key, cert = make_key(r.work)
    pw = pwd.getpwnam("postgres")
    os.chmod(r.work, 0o755)
    data = os.path.join(r.work, "pgdata")
    cache = os.path.join(r.args.build, "keyproof-pgdata")
    if not os.path.isdir(cache):  # initdb once per build dir, then copy
        tmp = cache + ".tmp%d" % os.getpid()
        os.makedirs(tmp)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", PG_BIN + "/initdb", "-D", tmp,
             "-A", "trust", "-U", "postgres"], timeout=120)
        os.rename(tmp, cache)
    run(["cp", "-a", cache, data])
    for f in (key, cert):
        os.chown(f, pw.pw_uid, pw.pw_gid)
    os.chmod(key, 0o600)
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write("\nport = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s/sockets'\nssl = on\n"
                "ssl_cert_file = '%s'\nssl_key_file = '%s'\nshared_buffers = 16MB\nmax_connections = 20\n"
                % (r.port, r.work, cert, key))
    sockets = os.path.join(r.work, "sockets")
    os.makedirs(sockets)
    os.chown(sockets, pw.pw_uid, pw.pw_gid)
    d = r.start([PG_BIN + "/postgres", "-D", data], "postgres", user="postgres")
    wait_port(r.port, d.proc, "postgres")
    conn = "host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require" % r.port
    for _ in range(30):
        if run(["psql", conn, "-Atc", "select 1"], check=False).strip() == "1":
            break
        time.sleep(0.2)
    out = run(["psql", conn, "-Atc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"]).strip()
    if out != "t":
        raise Failure("psql session is not TLS: %r" % out)
    run(["pgbench", "-i", "-q", "-s", "1", conn], timeout=120)
    run(["pgbench", "-t", "50", "-c", "2", conn], timeout=120)
    # One backend kept busy while it is dumped.
    hold = subprocess.Popen(["psql", conn, "-Atc", "select pg_sleep(600)"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    r.started.append(_Popen(hold))
    backend = None
    for _ in range(100):
        q = run(["psql", conn, "-Atc", "select a.pid from pg_stat_activity a join pg_stat_ssl s using (pid) "
                 "where a.query like 'select pg_sleep%' and s.ssl"], check=False).strip()
        if q:
            backend = int(q.split()[0])
            break
        time.sleep(0.1)
    if not backend:
        raise Failure("no TLS backend running pg_sleep")
    r.dumps = [("postmaster", d.proc.pid), ("backend", backend)]
    return key


def serve_sshd(r):
    key = os.path.join(r.work, "ssh_host_rsa_key")
    run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", key])
    user_key = os.path.join(r.work, "id_ed25519")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", user_key])
    auth = os.path.join(r.work, "authorized_keys")
    shutil.copy(user_key + ".pub", auth)
    os.chmod(r.work, 0o755)
    os.chmod(auth, 0o644)
    os.makedirs("/run/sshd", exist_ok=True)
    conf = os.path.join(r.work, "sshd_config")
    with open(conf, "w") as f:
        f.write("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nPidFile %s/sshd.pid\nAuthorizedKeysFile %s\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin yes\n"
                "StrictModes no\n" % (r.port, key, r.work, auth))
    d = r.start(["/usr/sbin/sshd", "-D", "-e", "-f", conf], "sshd")
    wait_port(r.port, d.proc, "sshd")
    ssh = ["ssh", "-i", user_key, "-p", str(r.port), "-o", "StrictHostKeyChecking=no", "-o",
           "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1"]
    for _ in range(2):
        out = run(ssh + ["echo", "ssh login ok"], timeout=30, check=False)
        if "ssh login ok" not in out:
            raise Failure("ssh login failed: %r; sshd log: %s" % (out, d.log_text()))
    # A session kept open while it is dumped: its privileged monitor holds the host key too.
    hold = subprocess.Popen(ssh + ["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    r.started.append(_Popen(hold))
    session = None
    for _ in range(100):
        kids = children(d.proc.pid)
        if kids:
            session = kids[0]
            break
        time.sleep(0.1)
    r.dumps = [("listener", d.proc.pid)] + ([("session", session)] if session else [])
    return key


class _Popen:
    def __init__(self, p):
        self.proc = p

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


SERVE = {"nginx": serve_nginx, "haproxy": serve_haproxy, "stunnel": serve_stunnel,
         "postgres": serve_postgres, "sshd": serve_sshd}


def prove(args, daemon, port, kernel):
    work = tempfile.mkdtemp(prefix="keyproof-%s-" % daemon)
    r = Run(args, work, port)
    result = {"daemon": daemon, "config": args.config, "ok": False, "error": "", "dumps": []}
    try:
        key = SERVE[daemon](r)
        needles, pem = key_needles(key)
        for label, pid in r.dumps:
            path = gcore(pid, os.path.join(work, "gcore"))
            c, p = count_copies(path, needles, pem)
            os.unlink(path)
            result["dumps"].append({"process": label, "pid": pid, "how": "gcore", "components": c, "pem": p})
        if kernel and r.kernel:
            label, pid, cwd = r.kernel
            path = kernel_core(pid, cwd)
            if path:
                c, p = count_copies(path, needles, pem)
                result["dumps"].append({"process": label, "pid": pid, "how": "kernel", "components": c, "pem": p})
        result["ok"] = True
    except (Failure, subprocess.TimeoutExpired, OSError) as e:
        logs = "; ".join("%s: %s" % (d.name, d.log_text()) for d in r.started if isinstance(d, Daemon))
        result["error"] = "%s (%s)" % (e, logs[-1500:])
    finally:
        for d in reversed(r.started):
            d.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(TOP, "build"))
    ap.add_argument("--config", default=os.path.join(TOP, "config", "default.json"))
    ap.add_argument("--port", type=int, default=21000)
    ap.add_argument("--kernel-core", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("daemons", nargs="*")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    if args.config != "none":
        args.config = os.path.abspath(args.config)
    daemons = args.daemons or DAEMONS
    for d in daemons:
        if d not in SERVE:
            ap.error("unknown daemon %r (known: %s)" % (d, " ".join(DAEMONS)))
    if args.table:
        return table(args, daemons)
    ok = True
    for i, d in enumerate(daemons):
        res = prove(args, d, args.port + 10 * i, args.kernel_core)
        ok = ok and res["ok"]
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(describe(res), flush=True)
    return 0 if ok else 1


def describe(res):
    if not res["ok"]:
        return "%s: FAILED: %s" % (res["daemon"], res["error"])
    return "%s: %s" % (res["daemon"], ", ".join("%s (%s) %d components, %d PEM" % (
        d["process"], d["how"], d["components"], d["pem"]) for d in res["dumps"]))


def table(args, daemons):
    configs = [("no shim", "none"), ("size rules (config/size-rules.json)", os.path.join(TOP, "config", "size-rules.json")),
               ("profile", None)]
    profile = {"sshd": os.path.join(TOP, "config", "openssh.json")}
    print("| daemon | process | " + " | ".join(c[0] for c in configs) + " |")
    print("| --- | --- |" + " --- |" * len(configs))
    for i, d in enumerate(daemons):
        cells = {}
        for label, cfg in configs:
            args.config = cfg or profile.get(d, os.path.join(TOP, "config", "openssl.json"))
            res = prove(args, d, args.port + 10 * i, False)
            if not res["ok"]:
                cells[label] = {"*": "fails: " + res["error"].split(";")[0].split("\n")[0][:60]}
                continue
            for dump in res["dumps"]:
                cells.setdefault(label, {})[dump["process"]] = "%d + %d PEM" % (dump["components"], dump["pem"])
        processes = []
        for c in cells.values():
            processes += [p for p in c if p not in processes and p != "*"]
        for p in processes or ["*"]:
            row = [cells.get(label, {}).get(p, cells.get(label, {}).get("*", "-")) for label, _ in configs]
            print("| %s | %s | %s |" % (d, p, " | ".join(row)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
