#!/usr/bin/env python3
"""keyproof.py - counts a real daemon's private-key copies in dumps of its serving processes.

For each daemon it makes a fresh RSA-2048 key and certificate, starts the daemon on 127.0.0.1
(under memlock-run with --config FILE, or without the shim with --config none), drives it
with its real client (curl, psql/pgbench, ssh, mosquitto_pub/sub, a DNS-over-TLS query, redis-cli,
FTPS, an openvpn client, IMAPS, SMTP with STARTTLS), dumps the serving processes (gdb's gcore;
--kernel-core also makes one process abort and reads the kernel's core file), and counts in
each dump the first 16 bytes of the key's private components (RSA p, q, d, dp, dq, qinv; big
endian as in DER and byte-reversed as OpenSSL's BIGNUM limbs) and the lines of the key file's
text (PEM, or OpenSSH's format for sshd). Under the shim it also asks memlock-inspect about each
dumped process. For sshd, which keeps its host keys shielded (encrypted under a 16 KiB random
prekey), it finds the prekey in the live process (random_blocks) and counts it in the dumps.
Every daemon it starts is killed before it returns, also on failure.

usage: keyproof.py --build DIR --config FILE|none [--port N] [--kernel-core] [--json]
                   [--no-ipc-lock BYTES] DAEMON...
       --no-ipc-lock BYTES: the daemon (and memlock-run) run without CAP_IPC_LOCK under
       RLIMIT_MEMLOCK BYTES (soft and hard), as a service without the capability would
       --port N: the i-th daemon uses ports N + 10 i and the next one; default (0): two free
       consecutive ports the kernel picks for each daemon, so that runs side by side (two
       `make test`, `make proof-keys`) never collide
       keyproof.py --table --build DIR [--port N]   (make proof-keys: no shim, size rules, profiles)
DAEMON: nginx haproxy stunnel postgres sshd lighttpd apache mosquitto unbound redis vsftpd openvpn dovecot
       linked gnutls-serv slapd krb5kdc
       (lighttpd onwards: daemons the profile was not written for, in the table and a test;
       dovecot's profile column is config/dovecot.json, as sshd's is config/openssh.json;
       linked is tests/progs/tls_linked, an HTTPS server with OpenSSL linked in, whose
       profile column is config/openssl-linked.json; gnutls-serv's and slapd's, linked with
       GnuTLS, config/gnutls.json; krb5kdc's secret is its realm's master key, not a PEM key:
       kinit and kvno drive it, and its profile is config/krb5kdc.json)
       and, only when named, postfix (smtpd with STARTTLS: installing postfix replaces the
       machine's mail transport agent), mariadb (a 45 MB server whose data directory takes
       seconds to make) and node (an https server; Node.js's own builds link OpenSSL in,
       Debian's load libcrypto.so): install-deps.sh and the tests leave them out

Output (--json): one object per line: {"daemon", "config", "ok", "error", "dumps": [{"process",
"pid", "how", "components", "pem", "inspect", and for sshd "prekey_live", "prekey_protected",
"prekey"}]}. Exit status 0 when every daemon served correctly.
"""
import argparse
import ftplib
import imaplib
import json
import math
import os
import pwd
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAEMONS = ["nginx", "haproxy", "stunnel", "postgres", "sshd", "lighttpd", "apache", "mosquitto", "unbound", "redis",
           "vsftpd", "openvpn", "dovecot", "linked", "gnutls-serv", "slapd", "krb5kdc"]


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


def key_needles(key_pem, key_text=None):
    """(component needles, text line needles) of an RSA key file in PEM (PKCS#8 or PKCS#1); the
    text lines are those of key_text (the same key in another format) when given."""
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
    lines = open(key_text or key_pem).read().splitlines()
    pem = [ln.encode() for ln in lines if len(ln) >= 60 and not ln.startswith("-----")]
    return needles, pem


def count_copies(path, needles, pem):
    data = open(path, "rb").read()
    comps = sum(data.count(n) for n in needles)
    pem_copies = max((data.count(line) for line in pem), default=0)
    return comps, pem_copies


# ---------------------------------------------------------------- sshd's shielding prekey

PAGE = 4096


def random_page(page):
    """A page of uniformly random bytes (Shannon entropy of its byte values > 7.9 bits; 4096
    random bytes give 7.95, text, code, pointers and tables far less)."""
    counts = {}
    for b in page:
        counts[b] = counts.get(b, 0) + 1
    if len(counts) < 200:
        return False
    n = float(len(page))
    return -sum(c / n * math.log2(c / n) for c in counts.values()) > 7.9


def random_blocks(pid):
    """Runs of at least 3 consecutive random pages in the process's private writable memory
    (heap, anonymous mappings, the shim's arena), as [{"pages": [bytes], "protected": bool}].

    OpenSSH (8.2 and later) shields each private key in memory under a key derived from a
    16 KiB random prekey (SSHKEY_SHIELD_PREKEY_LEN, one malloc block per loaded key): 16 KiB
    cover at least 3 whole pages wherever the block starts, and nothing else sshd keeps is
    that much random data (checked on Debian 12's sshd: each run found is a 16384-byte glibc
    heap block, or a 16 KiB arena block under the shim, one per host key). protected: every
    page of the run lies in a mapping that is locked and MADV_DONTDUMP (smaps `lo` and `dd`)."""
    maps = []
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
            if m:
                maps.append([int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4).strip(), []])
            elif line.startswith("VmFlags:") and maps:
                maps[-1][4] = line.split()[1:]
    blocks = []
    with open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for lo, hi, perms, name, flags in maps:
            if not perms.startswith("rw") or (name.startswith("/") and not name.startswith("/memfd:")) or \
                    name.startswith("[v") or name.startswith("[stack"):
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            run = []
            for off in range(0, len(data) - PAGE + 1, PAGE):
                page = data[off:off + PAGE]
                if random_page(page):
                    run.append(page)
                    continue
                if len(run) >= 3:
                    blocks.append({"pages": run, "protected": "lo" in flags and "dd" in flags})
                run = []
            if len(run) >= 3:
                blocks.append({"pages": run, "protected": "lo" in flags and "dd" in flags})
    return blocks


def count_blocks(path, blocks):
    """Copies of the random blocks in a dump: for each block, how often its most frequent page is there."""
    data = open(path, "rb").read()
    return sum(max(data.count(p) for p in b["pages"]) for b in blocks)


# ---------------------------------------------------------------- processes

def ephemeral_ports():
    """The kernel's range of ports for outgoing connections (ip_local_port_range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n):
    """The first of n consecutive TCP ports free on 127.0.0.1 now, chosen at random outside the
    kernel's ephemeral range: a port from that range, free when probed, can be taken by a client
    connection of a run beside this one (make test runs two tests at once) before the daemon
    binds it. Nothing stays bound; a random start keeps runs side by side apart."""
    lo, hi = ephemeral_ports()
    spans = [(a, b) for a, b in ((10000, lo - n), (hi + 1, 65536 - n)) if b > a]
    rng = random.SystemRandom()
    for _ in range(256):
        first = rng.randrange(*rng.choice(spans)) if spans else 0  # no room outside: the kernel's pick
        socks = []
        try:
            for k in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", first + k))
                first = first or s.getsockname()[1]
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise Failure("no %d consecutive free ports on 127.0.0.1" % n)


def port_for(args, i):
    """The first of the two ports the i-th daemon of this run listens on."""
    return args.port + 10 * i if args.port else free_ports(2)


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


def pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


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
    # pre: the process's RLIMIT_CORE allows the dump (nginx: worker_rlimit_core; Run.start)
    if os.path.realpath("/proc/%d/cwd" % pid) != os.path.realpath(cwd):
        # A daemon that changed to / (sshd) would dump into the machine's root directory: move
        # it into cwd first (gdb calls chdir in it, then detaches; nothing else changes).
        run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "call (int) chdir(\"%s\")" % cwd], timeout=120)
        if os.path.realpath("/proc/%d/cwd" % pid) != os.path.realpath(cwd):
            raise Failure("process %d did not change to %s" % (pid, cwd))
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

    def __init__(self, argv, work, name, env=None, user=None, core=False):
        self.name = name
        self.log = open(os.path.join(work, name + ".log"), "wb")
        pw = pwd.getpwnam(user) if user else None

        def pre():
            if core:  # the kernel may write a core file (kernel_core)
                resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            if pw:
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
        # Children that leave the process group (sshd's per-connection processes call setsid)
        # are killed after the group.
        strays = [p for p in descendants(self.proc.pid) if pgid(p) not in (None, self.proc.pid)] \
            if self.proc.poll() is None else []
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
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
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


def client_tls():
    """A TLS client context that accepts the daemon's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def combined_pem(work, cert, key):
    """The certificate and the key in one file (haproxy's crt, lighttpd's ssl.pemfile)."""
    path = os.path.join(work, "cert-and-key.pem")
    with open(path, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return path


def serve_https(r, argv, name, url, expect):
    """Starts argv (under r's prefix), waits for r.port and fetches url three times."""
    d = r.start(argv, name)
    wait_port(r.port, d.proc, name)
    for _ in range(3):
        curl(url, expect)
    return d


# ---------------------------------------------------------------- the daemons

class Run:
    """Context for one daemon run: the work dir, the launch prefix and what gets dumped."""

    def __init__(self, args, work, port):
        self.args, self.work, self.port = args, work, port
        self.started = []
        self.dumps = []  # (label, pid)
        self.kernel = None  # (label, pid, cwd) aborted for the kernel core
        self.key_text = None  # the key file the daemon reads, when not the PEM file returned
        self.shielded = False  # the daemon shields its keys (sshd): look for the prekey
        self.made = []  # (label, how, pid, path): dumps the daemon's serve function made itself
        self.needles = None  # the secret's needles, for a daemon whose secret is not a PEM key

    def prefix(self):
        if self.args.config == "none":
            return []
        return [os.path.join(self.args.build, "memlock-run"), "--quiet", "--shim",
                os.path.join(self.args.build, "libmemlock_shim.so"), "--config", self.args.config, "--"]

    def env(self):
        e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MEMLOCK_SHIM_CONFIG")}
        return e

    def no_ipc_lock(self):
        """The command that drops CAP_IPC_LOCK (from the bounding set, so no later exec gets it
        back) and sets RLIMIT_MEMLOCK, then execs its arguments; empty unless --no-ipc-lock."""
        if self.args.no_ipc_lock is None:
            return []
        limit = "--memlock=%d:%d" % (self.args.no_ipc_lock, self.args.no_ipc_lock)
        return ["prlimit", limit, "capsh", "--drop=cap_ipc_lock", "--", "-c", 'exec "$0" "$@"']

    def start(self, argv, name, user=None, wrap=(), core=False):
        """Starts prefix() + argv, behind wrap (a command that execs its arguments)."""
        d = Daemon(list(wrap) + self.no_ipc_lock() + self.prefix() + argv, self.work, name, env=self.env(), user=user,
                   core=core)
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
    combined = combined_pem(r.work, cert, key)
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
    d = serve_https(r, ["haproxy", "-db", "-f", conf], "haproxy", "https://127.0.0.1:%d/" % r.port, "backend ok")
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
    d = serve_https(r, ["stunnel4", conf], "stunnel", "https://127.0.0.1:%d/" % r.port, "backend ok")
    r.dumps = [("stunnel", d.proc.pid)]
    return key


def serve_lighttpd(r):
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    pem = combined_pem(r.work, cert, key)
    with open(os.path.join(r.work, "index.html"), "w") as f:
        f.write("lighttpd https ok\n")
    conf = os.path.join(r.work, "lighttpd.conf")
    with open(conf, "w") as f:
        f.write("""server.document-root = "%(w)s"
server.bind = "127.0.0.1"
server.port = %(p)d
server.errorlog = "%(w)s/error.log"
server.modules += ("mod_openssl")
ssl.engine = "enable"
ssl.pemfile = "%(pem)s"
""" % {"w": r.work, "p": r.port, "pem": pem})
    d = serve_https(r, ["lighttpd", "-D", "-f", conf], "lighttpd", "https://127.0.0.1:%d/index.html" % r.port,
                    "lighttpd https ok")
    r.dumps = [("lighttpd", d.proc.pid)]
    return key


def serve_single(r, name, argv_for, expect):
    """A one-process HTTPS server on r.port: argv_for(key, cert) starts it; it answers `expect`."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    d = serve_https(r, argv_for(key, cert), name, "https://127.0.0.1:%d/" % r.port, expect)
    r.dumps = [(name, d.proc.pid)]
    return key


def serve_linked(r):
    """tests/progs/tls_linked: an HTTPS server with OpenSSL linked in (no libcrypto.so)."""
    server = os.path.join(r.args.build, "progs", "tls_linked")
    return serve_single(r, "tls_linked", lambda key, cert: [server, str(r.port), cert, key], "linked https ok")


def serve_node(r):
    """Node.js's https module. Node.js's own builds (NodeSource's packages, the official images)
    link OpenSSL in; Debian's nodejs loads libcrypto.so.3."""
    def argv(key, cert):
        script = os.path.join(r.work, "server.js")
        with open(script, "w") as f:
            f.write("""const fs = require("fs"), https = require("https");
const options = {key: fs.readFileSync(%(key)r), cert: fs.readFileSync(%(cert)r)};
https.createServer(options, (req, res) => { res.end("node https ok\\n"); }).listen(%(p)d, "127.0.0.1");
""" % {"key": key, "cert": cert, "p": r.port})
        return ["node", script]
    return serve_single(r, "node", argv, "node https ok")


def serve_apache(r):
    """Apache httpd with mod_ssl and the event MPM: the parent reads the key, a child serves."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    with open(os.path.join(r.work, "index.html"), "w") as f:
        f.write("apache https ok\n")
    mods = "/usr/lib/apache2/modules"
    conf = os.path.join(r.work, "apache2.conf")
    with open(conf, "w") as f:
        f.write("""ServerRoot "/etc/apache2"
LoadModule mpm_event_module %(m)s/mod_mpm_event.so
LoadModule authz_core_module %(m)s/mod_authz_core.so
LoadModule socache_shmcb_module %(m)s/mod_socache_shmcb.so
LoadModule ssl_module %(m)s/mod_ssl.so
ServerName localhost
PidFile %(w)s/httpd.pid
ErrorLog %(w)s/error.log
User www-data
Group www-data
StartServers 1
Listen 127.0.0.1:%(p)d
DocumentRoot "%(w)s"
<Directory "%(w)s">
  Require all granted
</Directory>
<VirtualHost 127.0.0.1:%(p)d>
  SSLEngine on
  SSLCertificateFile %(c)s
  SSLCertificateKeyFile %(k)s
</VirtualHost>
""" % {"m": mods, "w": r.work, "p": r.port, "c": cert, "k": key})
    d = serve_https(r, ["apache2", "-f", conf, "-DFOREGROUND"], "apache", "https://127.0.0.1:%d/index.html" % r.port,
                    "apache https ok")
    workers = children(d.proc.pid)
    if not workers:
        raise Failure("apache has no child")
    r.dumps = [("parent", d.proc.pid), ("child", workers[0])]
    return key


def serve_mosquitto(r):
    """Mosquitto (MQTT over TLS): started as root, it runs as user mosquitto; one process."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    for f in (key, cert):
        shutil.chown(f, "mosquitto")
    conf = os.path.join(r.work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write("user mosquitto\npersistence false\nlog_dest stderr\nallow_anonymous true\n"
                "listener %d 127.0.0.1\ncertfile %s\nkeyfile %s\n" % (r.port, cert, key))
    d = r.start(["mosquitto", "-c", conf], "mosquitto")
    wait_port(r.port, d.proc, "mosquitto")
    tls = ["-h", "127.0.0.1", "-p", str(r.port), "--cafile", cert, "--insecure", "-t", "keyproof"]
    for i in range(3):
        run(["mosquitto_pub"] + tls + ["-r", "-m", "mqtt tls ok %d" % i], timeout=20)
        out = run(["mosquitto_sub"] + tls + ["-C", "1", "-W", "10"], timeout=20)
        if "mqtt tls ok %d" % i not in out:
            raise Failure("mosquitto_sub read %r" % out)
    r.dumps = [("mosquitto", d.proc.pid)]
    return key


def dot_query(port, name):
    """The A records (dotted quads) of name from a DNS-over-TLS server on 127.0.0.1:port."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".")) + b"\0"
    query = struct.pack(">HHHHHH", 0x4b50, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, client_tls().wrap_socket(raw) as s:
        s.sendall(struct.pack(">H", len(query)) + query)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    msg = data[2:]
    answers = struct.unpack(">H", msg[6:8])[0] if len(msg) >= 12 else 0
    at = 12 + len(qname) + 4
    out = []
    for _ in range(answers):
        at += 2 if msg[at] & 0xc0 == 0xc0 else len(qname)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[at:at + 10])
        if rtype == 1 and rdlen == 4:
            out.append(".".join(str(b) for b in msg[at + 10:at + 14]))
        at += 10 + rdlen
    return out


def serve_unbound(r):
    """Unbound answering DNS over TLS from a local zone; drops to user unbound, one process."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    conf = os.path.join(r.work, "unbound.conf")
    with open(conf, "w") as f:
        f.write("""server:
  interface: 127.0.0.1@%(p)d
  tls-port: %(p)d
  tls-service-key: "%(k)s"
  tls-service-pem: "%(c)s"
  do-daemonize: no
  chroot: ""
  username: "unbound"
  directory: "%(w)s"
  pidfile: ""
  use-syslog: no
  logfile: ""
  num-threads: 1
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  local-zone: "keyproof.test." static
  local-data: "ok.keyproof.test. A 127.0.0.7"
remote-control:
  control-enable: no
""" % {"p": r.port, "k": key, "c": cert, "w": r.work})
    d = r.start(["unbound", "-d", "-c", conf], "unbound")
    wait_port(r.port, d.proc, "unbound")
    for _ in range(3):
        got = dot_query(r.port, "ok.keyproof.test")
        if got != ["127.0.0.7"]:
            raise Failure("unbound answered %r over TLS" % got)
    r.dumps = [("unbound", d.proc.pid)]
    return key


def serve_redis(r):
    """Redis with TLS only (port 0, tls-port); one process, jemalloc its allocator."""
    key, cert = make_key(r.work)
    d = r.start(["redis-server", "--port", "0", "--tls-port", str(r.port), "--bind", "127.0.0.1",
                 "--tls-cert-file", cert, "--tls-key-file", key, "--tls-auth-clients", "no", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", r.work], "redis")
    wait_port(r.port, d.proc, "redis")
    cli = ["redis-cli", "--tls", "--insecure", "-h", "127.0.0.1", "-p", str(r.port)]
    for i in range(3):
        run(cli + ["set", "keyproof", "redis tls ok %d" % i], timeout=20)
        out = run(cli + ["get", "keyproof"], timeout=20)
        if "redis tls ok %d" % i not in out:
            raise Failure("redis-cli read %r" % out)
    r.dumps = [("redis", d.proc.pid)]
    return key


def serve_vsftpd(r):
    """vsftpd with explicit FTPS for anonymous users: the listener forks a process per
    connection, which serves under vsftpd's seccomp sandbox; one session is held open."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    root = os.path.join(r.work, "ftp")
    os.makedirs(root)
    with open(os.path.join(root, "hello.txt"), "w") as f:
        f.write("vsftpd ftps ok\n")
    os.makedirs("/var/run/vsftpd/empty", exist_ok=True)
    conf = os.path.join(r.work, "vsftpd.conf")
    with open(conf, "w") as f:
        f.write("""listen=YES
listen_address=127.0.0.1
listen_port=%(p)d
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root=%(root)s
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port=%(p1)d
pasv_max_port=%(p1)d
ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
require_ssl_reuse=NO
rsa_cert_file=%(c)s
rsa_private_key_file=%(k)s
secure_chroot_dir=/var/run/vsftpd/empty
xferlog_enable=NO
vsftpd_log_file=%(w)s/vsftpd.log
""" % {"p": r.port, "p1": r.port + 1, "root": root, "c": cert, "k": key, "w": r.work})
    d = r.start(["vsftpd", conf], "vsftpd")
    wait_port(r.port, d.proc, "vsftpd")
    for _ in range(3):
        out = run(["curl", "-sS", "-k", "--ssl-reqd", "--max-time", "10", "ftp://127.0.0.1:%d/hello.txt" % r.port])
        if "vsftpd ftps ok" not in out:
            raise Failure("curl over FTPS read %r" % out)
    before = set(children(d.proc.pid))
    ftp = ftplib.FTP_TLS(context=client_tls(), timeout=10)
    ftp.connect("127.0.0.1", r.port)
    ftp.login()
    ftp.prot_p()
    ftp.nlst()
    r.started.append(_Ftp(ftp))
    session = [p for p in children(d.proc.pid) if p not in before]
    if not session:
        raise Failure("vsftpd has no session process")
    # The connection's process and the two it makes (vsftpd 3.0 with SSL: one as nobody, the
    # logged-in session as ftp), each by the user it runs as.
    r.dumps = [("listener", d.proc.pid), ("connection", session[0])] + [
        ("connection/" + pwd.getpwuid(os.stat("/proc/%d" % c).st_uid).pw_name, c) for c in children(session[0])]
    return key


class _Ftp:
    def __init__(self, ftp):
        self.ftp = ftp

    def stop(self):
        self.ftp.close()


def serve_dovecot(r):
    """Dovecot's IMAP over TLS (imaps): the master starts a process per service (config, auth,
    imap-login, imap, ...) with a clean environment, so the shim reaches them only through
    import_environment; one logged-in IMAP session is held open."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    home = os.path.join(r.work, "home")
    os.makedirs(os.path.join(r.work, "run"))
    os.makedirs(home)
    os.chmod(home, 0o777)
    env = "" if r.args.config == "none" else ("import_environment = TZ CORE_OUTOFMEM CORE_ERROR LISTEN_PID LISTEN_FDS "
                                              "NOTIFY_SOCKET LD_PRELOAD MEMLOCK_SHIM_CONFIG\n")
    conf = os.path.join(r.work, "dovecot.conf")
    with open(conf, "w") as f:
        f.write("""base_dir = %(w)s/run
log_path = /dev/stderr
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <%(c)s
ssl_key = <%(k)s
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = dovenull
%(env)spassdb {
  driver = static
  args = password=keyproof
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=%(w)s/home/%%u
}
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = %(p)d
    ssl = yes
  }
}
""" % {"w": r.work, "c": cert, "k": key, "p": r.port, "env": env})
    d = r.start(["dovecot", "-F", "-c", conf], "dovecot")
    wait_port(r.port, d.proc, "dovecot")
    for _ in range(3):
        out = run(["curl", "-sS", "-k", "--max-time", "10", "-u", "keyproof:keyproof",
                   "imaps://127.0.0.1:%d/" % r.port])
        if "INBOX" not in out:
            raise Failure("curl over imaps listed %r" % out)
    imap = imaplib.IMAP4_SSL("127.0.0.1", r.port, ssl_context=client_tls(), timeout=10)
    imap.login("keyproof", "keyproof")
    imap.select("INBOX")
    r.started.append(_Imap(imap))
    r.dumps = [("master", d.proc.pid)]
    deadline = time.time() + 10
    names = {}
    while time.time() < deadline and not ("imap-login" in names and "imap" in names):
        names = {}
        for p in descendants(d.proc.pid):
            title = comm(p).split()[0] if comm(p) else ""
            names.setdefault(title.replace("dovecot/", ""), p)
        time.sleep(0.1)
    for name in ("config", "auth", "imap-login", "imap"):
        if name not in names:
            raise Failure("no dovecot %s process (%s)" % (name, ", ".join(names)))
        r.dumps.append((name, names[name]))
    return key


class _Imap:
    def __init__(self, imap):
        self.imap = imap

    def stop(self):
        try:
            self.imap.shutdown()
        except OSError:
            pass


def serve_openvpn(r):
    """OpenVPN in TLS mode, point to point over TCP with no tunnel device (--dev null): the
    openvpn client, with a key and certificate of its own, completes the TLS handshake and
    keeps the connection up; one process."""
    key, cert = make_key(r.work)
    client = os.path.join(r.work, "client")
    os.makedirs(client)
    client_key, client_cert = make_key(client)
    common = ["--dev", "null", "--verb", "3", "--ping", "1", "--connect-retry", "1"]
    d = r.start(["openvpn", "--proto", "tcp-server", "--local", "127.0.0.1", "--lport", str(r.port), "--tls-server",
                 "--dh", "none", "--ca", client_cert, "--cert", cert, "--key", key] + common, "openvpn")
    wait_port(r.port, d.proc, "openvpn")
    c = Daemon(["openvpn", "--proto", "tcp-client", "--remote", "127.0.0.1", str(r.port), "--tls-client",
                "--ca", cert, "--cert", client_cert, "--key", client_key] + common, r.work, "openvpn-client")
    r.started.append(c)
    deadline = time.time() + 30
    while "Initialization Sequence Completed" not in c.log_text():
        if time.time() > deadline or c.proc.poll() is not None:
            raise Failure("the openvpn client did not connect: %s" % c.log_text()[-600:])
        time.sleep(0.1)
    r.dumps = [("openvpn", d.proc.pid)]
    return key


def serve_gnutls_serv(r):
    """gnutls-serv --http: GnuTLS's own server (GnuTLS, nettle and GMP instead of OpenSSL)."""
    return serve_single(r, "gnutls-serv", lambda key, cert: ["gnutls-serv", "--http", "-p", str(r.port),
                        "--x509keyfile", key, "--x509certfile", cert], "GnuTLS")


def serve_slapd(r):
    """OpenLDAP's slapd (Debian builds it with GnuTLS) on ldaps and on ldap with StartTLS: started
    as root, it runs as user openldap; one process, a thread per operation. One entry is added,
    then read three times over each."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    db = os.path.join(r.work, "db")
    os.makedirs(db)
    for f in (key, cert, db, r.work):  # the pid file too is written as openldap
        shutil.chown(f, "openldap", "openldap")
    conf = os.path.join(r.work, "slapd.conf")
    with open(conf, "w") as f:
        f.write("include /etc/ldap/schema/core.schema\npidfile %(w)s/slapd.pid\nmodulepath /usr/lib/ldap\n"
                "moduleload back_mdb\nTLSCertificateFile %(c)s\nTLSCertificateKeyFile %(k)s\ndatabase mdb\n"
                "maxsize 10485760\nsuffix dc=example,dc=com\nrootdn cn=admin,dc=example,dc=com\nrootpw keyproof\n"
                "directory %(d)s\n" % {"w": r.work, "c": cert, "k": key, "d": db})
    ldaps, ldap = "ldaps://127.0.0.1:%d" % r.port, "ldap://127.0.0.1:%d" % (r.port + 1)
    d = r.start(["slapd", "-d", "0", "-u", "openldap", "-g", "openldap", "-f", conf, "-h", ldaps + "/ " + ldap + "/"],
                "slapd")
    wait_port(r.port, d.proc, "slapd")
    wait_port(r.port + 1, d.proc, "slapd")
    env = dict(os.environ, LDAPTLS_REQCERT="never")
    entry = "dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\no: keyproof\ndc: example\n"
    run(["ldapadd", "-x", "-H", ldaps, "-D", "cn=admin,dc=example,dc=com", "-w", "keyproof"], input=entry.encode(),
        env=env)
    for _ in range(3):
        for url, starttls in ((ldaps, []), (ldap, ["-ZZ"])):
            out = run(["ldapsearch", "-x"] + starttls + ["-H", url, "-b", "dc=example,dc=com"], env=env)
            if "numEntries: 1" not in out:
                raise Failure("ldapsearch on %s answered %r" % (url, out[-300:]))
    r.dumps = [("slapd", d.proc.pid)]
    return key


def serve_mariadb(r):
    """MariaDB with TLS (one process, a thread per connection): three TLS sessions with the
    mariadb client, then one held open in select sleep()."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    for f in (key, cert):
        shutil.chown(f, "mysql")
    data = os.path.join(r.work, "mariadb")
    run(["mariadb-install-db", "--no-defaults", "--user=mysql", "--datadir=" + data, "--skip-test-db",
         "--auth-root-authentication-method=normal"], timeout=120)
    sock = os.path.join(data, "mariadb.sock")  # where user mysql may make it
    d = r.start(["mariadbd", "--no-defaults", "--user=mysql", "--datadir=" + data, "--socket=" + sock,
                 "--port=%d" % r.port, "--bind-address=127.0.0.1", "--ssl-cert=" + cert, "--ssl-key=" + key,
                 "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--innodb-buffer-pool-size-max=16M"], "mariadb")
    wait_port(r.port, d.proc, "mariadb")
    client = ["mariadb", "--no-defaults", "--protocol=tcp", "-h", "127.0.0.1", "-P", str(r.port), "-u", "root", "--ssl",
              "--skip-ssl-verify-server-cert", "-N", "-e"]
    for _ in range(3):
        out = run(client + ["show status like 'Ssl_version'"], timeout=30)
        if "TLS" not in out:
            raise Failure("mariadb session is not TLS: %r" % out)
    hold = subprocess.Popen(client + ["select sleep(600)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    r.started.append(_Popen(hold))
    r.dumps = [("mariadbd", d.proc.pid)]
    return key


def serve_postfix(r):
    """Postfix's smtpd with STARTTLS: master starts smtpd (one per connection) and tlsmgr with a
    clean environment, so the shim reaches them only through import_environment; one SMTP
    session over TLS is held open."""
    key, cert = make_key(r.work)
    os.chmod(r.work, 0o755)
    env = "" if r.args.config == "none" else " LD_PRELOAD MEMLOCK_SHIM_CONFIG"
    with open(os.path.join(r.work, "main.cf"), "w") as f:
        f.write("""compatibility_level = 3.6
queue_directory = %(w)s/queue
data_directory = %(w)s/data
myhostname = localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
smtpd_tls_cert_file = %(c)s
smtpd_tls_key_file = %(k)s
smtpd_tls_security_level = may
maillog_file = /dev/stdout
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ XAUTHORITY DISPLAY LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME%(env)s
""" % {"w": r.work, "c": cert, "k": key, "env": env})
    with open(os.path.join(r.work, "master.cf"), "w") as f:
        f.write("""127.0.0.1:%d inet n - n - - smtpd
tlsmgr unix - - n 1000? 1 tlsmgr
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
proxymap unix - - n - - proxymap
postlog unix-dgram n - n - 1 postlogd
""" % r.port)
    os.makedirs(os.path.join(r.work, "queue"))
    os.makedirs(os.path.join(r.work, "data"))
    shutil.chown(os.path.join(r.work, "data"), "postfix")
    run(["postfix", "-c", r.work, "check"], timeout=60)
    d = r.start(["/usr/lib/postfix/sbin/master", "-c", r.work, "-d"], "postfix")
    wait_port(r.port, d.proc, "postfix")
    client = ["openssl", "s_client", "-quiet", "-starttls", "smtp", "-connect", "127.0.0.1:%d" % r.port]
    for _ in range(3):
        out = subprocess.run(client, input=b"EHLO keyproof\r\nQUIT\r\n", stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=20).stdout.decode(errors="replace")
        if "250" not in out or "221" not in out:
            raise Failure("SMTP over STARTTLS answered %r" % out[-300:])
    hold = subprocess.Popen(["sh", "-c", 'printf "EHLO keyproof\\r\\n"; sleep 600'], stdout=subprocess.PIPE,
                            start_new_session=True)
    held = subprocess.Popen(client, stdin=hold.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    r.started += [_Popen(hold), _Popen(held)]
    # smtpd processes stay for the next connection (max_idle): the held session is served by
    # one of those present once the TLS session is up, or by a new one.
    found = []
    deadline = time.time() + 10
    while time.time() < deadline and not ({"smtpd", "tlsmgr"} <= {t for t, _ in found} and held.poll() is None):
        time.sleep(0.1)
        found = [(comm(p).split()[0], p) for p in children(d.proc.pid)
                 if comm(p).split()[:1] in (["smtpd"], ["tlsmgr"])]
    if not any(t == "smtpd" for t, _ in found):
        raise Failure("postfix has no smtpd process")
    r.dumps = [("master", d.proc.pid)]
    seen = {}
    for title, pid in found:  # smtpd, smtpd 2, ...
        seen[title] = seen.get(title, 0) + 1
        r.dumps.append((title if seen[title] == 1 else "%s %d" % (title, seen[title]), pid))
    return key


def serve_krb5kdc(r):
    """MIT Kerberos's KDC with a realm of its own (kdb5_util create -s): 20 kinit and kvno. The
    secret is the realm's master key, which the KDC reads from the stash file at start-up; its
    bytes come from the stash (klist -K), and the needle is its first 16 bytes."""
    realm, db = "KEYPROOF.TEST", os.path.join(r.work, "db")
    os.mkdir(db)
    krb5_conf, kdc_conf = os.path.join(r.work, "krb5.conf"), os.path.join(r.work, "kdc.conf")
    with open(kdc_conf, "w") as f:
        f.write("[kdcdefaults]\n kdc_ports = %d\n kdc_tcp_ports = %d\n[realms]\n %s = {\n"
                "  database_name = %s/principal\n  key_stash_file = %s/stash\n  acl_file = %s/kadm5.acl\n"
                "  master_key_type = aes256-cts-hmac-sha1-96\n  supported_enctypes = aes256-cts-hmac-sha1-96:normal\n"
                " }\n[logging]\n kdc = STDERR\n" % (r.port, r.port, realm, db, db, db))
    with open(krb5_conf, "w") as f:
        f.write("[libdefaults]\n default_realm = %s\n dns_lookup_kdc = false\n dns_canonicalize_hostname = false\n"
                "[realms]\n %s = {\n  kdc = 127.0.0.1:%d\n }\n" % (realm, realm, r.port))
    env = dict(r.env(), KRB5_CONFIG=krb5_conf, KRB5_KDC_PROFILE=kdc_conf)
    password = "keyproof-%d" % random.getrandbits(48)
    run(["kdb5_util", "create", "-s", "-r", realm, "-P", password], env=env)
    for princ in ("-pw %s alice" % password, "-randkey host/keyproof.test"):
        run(["kadmin.local", "-r", realm, "-q", "addprinc " + princ], env=env)
    listing = run(["klist", "-k", "-K", "FILE:" + os.path.join(db, "stash")], env=env)
    m = re.search(r"K/M@%s.*\(0x([0-9a-f]+)\)" % re.escape(realm), listing)
    if not m:
        raise Failure("no master key in the stash listing: %r" % listing)
    r.needles = [bytes.fromhex(m.group(1))[:16]]
    wrap = ["env", "KRB5_CONFIG=" + krb5_conf, "KRB5_KDC_PROFILE=" + kdc_conf]
    d = r.start(["krb5kdc", "-n", "-r", realm], "krb5kdc", wrap=wrap)
    wait_port(r.port, d.proc, "krb5kdc")
    cache = "FILE:" + os.path.join(r.work, "ccache")
    for _ in range(20):
        run(["kinit", "-c", cache, "alice@" + realm], env=env, input=(password + "\n").encode())
        run(["kvno", "-c", cache, "host/keyproof.test@" + realm], env=env)
    r.dumps = [("krb5kdc", d.proc.pid)]
    return None


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
        try:
            os.rename(tmp, cache)
        except OSError:  # a run beside this one (make test runs tests in parallel) made it first
            if not os.path.isdir(cache):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
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


SSH_USER = "memlock-keyproof"  # exists only in the /etc/passwd of sshd's mount namespace


def serve_sshd(r):
    """sshd with an RSA host key in OpenSSH's own format, in a private mount namespace whose
    /etc/passwd adds SSH_USER: a login that is not root gets a privileged monitor and an
    unprivileged session child (root's session stays in one process)."""
    twin = os.path.join(r.work, "host_key.pem")  # the same key in PEM, for openssl's -text
    run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", twin])
    key = os.path.join(r.work, "ssh_host_rsa_key")
    shutil.copy(twin, key)
    run(["ssh-keygen", "-q", "-p", "-N", "", "-P", "", "-f", key])  # rewritten in OpenSSH's format
    r.key_text = key
    r.shielded = True
    user_key = os.path.join(r.work, "id_ed25519")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", user_key])
    auth = os.path.join(r.work, "authorized_keys")
    shutil.copy(user_key + ".pub", auth)
    os.chmod(r.work, 0o755)
    os.chmod(auth, 0o644)
    uid = 64100
    while any(line.split(":")[2] == str(uid) for line in open("/etc/passwd") if line.count(":") >= 6):
        uid += 1
    home = os.path.join(r.work, "home")
    os.makedirs(home)
    os.chown(home, uid, 65534)
    passwd = os.path.join(r.work, "passwd")
    with open(passwd, "w") as f:
        f.write(open("/etc/passwd").read() + "%s:x:%d:65534::%s:/bin/sh\n" % (SSH_USER, uid, home))
    os.makedirs("/run/sshd", exist_ok=True)  # the privilege-separation chroot
    conf = os.path.join(r.work, "sshd_config")
    with open(conf, "w") as f:
        f.write("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nPidFile %s/sshd.pid\nAuthorizedKeysFile %s\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                "LogLevel VERBOSE\n" % (r.port, key, r.work, auth))
    namespace = ["unshare", "-m", "--propagation", "private", "--", "sh", "-c",
                 'mount --bind "$0" /etc/passwd && exec "$@"', passwd]
    d = r.start(["/usr/sbin/sshd", "-D", "-e", "-f", conf], "sshd", wrap=namespace, core=True)
    wait_port(r.port, d.proc, "sshd")
    ssh = ["ssh", "-i", user_key, "-p", str(r.port), "-o", "StrictHostKeyChecking=no", "-o",
           "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", SSH_USER + "@127.0.0.1"]
    logins = 3
    for i in range(logins):
        out = run(ssh + ["echo", "ssh login %d ok as" % i, "$(id -un)"], timeout=30, check=False)
        if "ssh login %d ok as %s" % (i, SSH_USER) not in out:
            raise Failure("ssh login %d failed: %r; sshd log: %s" % (i, out, d.log_text()))
    r.made.append(("signing", "gcore at the signature") + dump_while_signing(r, d.proc.pid, ssh))
    # One connection held before authentication: its child runs in the seccomp sandbox.
    held = socket.create_connection(("127.0.0.1", r.port), timeout=10)
    held.recv(256)
    held.sendall(b"SSH-2.0-keyproof\r\n")
    r.started.append(_Socket(held))
    # One session held open: its privileged monitor holds the host key.
    hold = subprocess.Popen(ssh + ["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    r.started.append(_Popen(hold))
    # Each by its title and its parent's (a session's shell is forked with its parent's title).
    titles = {"monitor": (d.proc.pid, "sshd: %s [priv]" % SSH_USER),
              "session": ("monitor", "sshd: %s@notty" % SSH_USER),
              "accepted": (d.proc.pid, "sshd: [accepted]"), "preauth": ("accepted", "sshd: [net]")}
    # The earlier logins' processes may still be exiting: a process found is kept while it
    # lives with its title, and the set is taken once it held for three looks in a row.
    found, stable, seccomp = {}, 0, None
    deadline = time.time() + 30
    while seccomp is None and time.time() < deadline:
        before = dict(found)
        found = {label: pid for label, pid in found.items() if comm(pid) == titles[label][1]}
        for label, (parent, title) in titles.items():
            parent = found.get(parent) if isinstance(parent, str) else parent
            for pid in children(parent) if parent else []:
                if label not in found and comm(pid) == title:
                    found[label] = pid
        stable = stable + 1 if len(found) == len(titles) and found == before else 0
        if stable >= 3:
            try:
                with open("/proc/%d/status" % found["preauth"]) as f:
                    seccomp = f.read().split("Seccomp:")[1].split()[0]
            except OSError:
                stable = 0  # it exited after all: look again
        time.sleep(0.1)
    if seccomp is None:
        raise Failure("sshd processes missing: %s; sshd log: %s" % (
            ", ".join(t for label, (_, t) in titles.items() if label not in found), d.log_text()))
    if seccomp != "2":
        raise Failure("sshd's pre-authentication child is not in its seccomp sandbox (Seccomp: %s)" % seccomp)
    log = open(d.log.name, errors="replace").read()
    if log.count("Accepted publickey for %s" % SSH_USER) < logins or "by signal" in log:
        raise Failure("sshd log: %s" % log[-1500:])
    r.dumps = [("listener", d.proc.pid)] + [(label, found[label]) for label in ("monitor", "session", "preauth")]
    r.kernel = ("listener", d.proc.pid, r.work)
    return twin


def dump_while_signing(r, listener, ssh):
    """(pid, dump path) of a connection's monitor dumped while it signs the key exchange with
    the host key, the moment its plaintext private key exists (sshd unshields it for that). The
    client's key exchange is held back (relay) until gdb waits in the monitor at the signing
    functions of libcrypto (RSA_sign up to OpenSSH 9.3, EVP_DigestSign from 9.4)."""
    before = set(children(listener))
    go = os.path.join(r.work, "signing.go")
    relay_cmd = "%s %s --relay %d %s" % (sys.executable, os.path.abspath(__file__), r.port, go)
    login = subprocess.Popen(ssh[:-1] + ["-o", "ProxyCommand=" + relay_cmd, ssh[-1], "echo", "signed login ok"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    r.started.append(_Popen(login))
    monitor = None
    deadline = time.time() + 30
    while monitor is None and time.time() < deadline:
        new = [p for p in children(listener) if p not in before and comm(p) == "sshd: [accepted]"]
        monitor = new[0] if new else None
        time.sleep(0.05)
    if monitor is None:
        raise Failure("no monitor for the signing login")
    path = os.path.join(r.work, "signing.core")
    run(["gdb", "-p", str(monitor), "-batch", "-nx", "-ex", "break RSA_sign", "-ex", "break EVP_DigestSign",
         "-ex", "shell touch " + go, "-ex", "continue", "-ex", "gcore " + path], timeout=180)
    out = login.communicate(timeout=60)[0].decode(errors="replace")
    if "signed login ok" not in out or not os.path.exists(path):
        raise Failure("the login dumped while signing failed: %r" % out[-300:])
    return monitor, path


def relay(port, go):
    """ssh's ProxyCommand for dump_while_signing: stdin/stdout to 127.0.0.1:port; the client's
    data after its version line waits until the file go exists (at most 120 s)."""
    s = socket.create_connection(("127.0.0.1", port))

    def down():
        while True:
            data = s.recv(65536)
            if not data:
                os._exit(0)
            os.write(1, data)
    threading.Thread(target=down, daemon=True).start()
    held = True
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        if held and b"\n" in data:
            line = data.index(b"\n") + 1
            s.sendall(data[:line])
            data = data[line:]
            deadline = time.time() + 120
            while not os.path.exists(go) and time.time() < deadline:
                time.sleep(0.05)
            held = False
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    time.sleep(60)  # until the server closes (down exits)
    return 0


class _Socket:
    def __init__(self, s):
        self.s = s

    def stop(self):
        self.s.close()


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
         "postgres": serve_postgres, "sshd": serve_sshd, "lighttpd": serve_lighttpd, "apache": serve_apache,
         "mosquitto": serve_mosquitto, "unbound": serve_unbound, "redis": serve_redis, "vsftpd": serve_vsftpd,
         "dovecot": serve_dovecot, "openvpn": serve_openvpn, "gnutls-serv": serve_gnutls_serv, "slapd": serve_slapd,
         "mariadb": serve_mariadb, "postfix": serve_postfix, "linked": serve_linked, "node": serve_node,
         "krb5kdc": serve_krb5kdc}


def inspect(args, pid):
    """memlock-inspect's verdict on pid ("protected", "not protected: ...", ...)."""
    out = run([os.path.join(args.build, "memlock-inspect"), str(pid)], check=False)
    first = out.splitlines()[0] if out else ""
    return first.split("): ", 1)[1] if "): " in first else first


def counted(dump, path, needles, pem, blocks):
    """dump with the copies found in the dump file at path."""
    dump["components"], dump["pem"] = count_copies(path, needles, pem)
    if blocks is not None:
        dump["prekey_live"] = len(blocks)
        dump["prekey_protected"] = sum(b["protected"] for b in blocks)
        dump["prekey"] = count_blocks(path, blocks)
    return dump


def prove(args, daemon, port, kernel):
    work = tempfile.mkdtemp(prefix="keyproof-%s-" % daemon)
    r = Run(args, work, port)
    result = {"daemon": daemon, "config": args.config, "ok": False, "error": "", "dumps": []}
    try:
        key = SERVE[daemon](r)
        needles, pem = (r.needles, []) if r.needles else key_needles(key, r.key_text)
        blocks = {}
        for label, pid in r.dumps:
            dump = {"process": label, "pid": pid, "how": "gcore"}
            if args.config != "none":
                dump["inspect"] = inspect(args, pid)
            if r.shielded:
                blocks[pid] = random_blocks(pid)
            path = gcore(pid, os.path.join(work, "gcore"))
            result["dumps"].append(counted(dump, path, needles, pem, blocks.get(pid)))
            os.unlink(path)
        for label, how, pid, path in r.made:
            result["dumps"].append(counted({"process": label, "pid": pid, "how": how}, path, needles, pem, None))
        if kernel and r.kernel:
            label, pid, cwd = r.kernel
            path = kernel_core(pid, cwd)
            if path:
                dump = {"process": label, "pid": pid, "how": "kernel"}
                result["dumps"].append(counted(dump, path, needles, pem, blocks.get(pid)))
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
    if sys.argv[1:2] == ["--relay"]:
        return relay(int(sys.argv[2]), sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(TOP, "build"))
    ap.add_argument("--config", default=os.path.join(TOP, "config", "default.json"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--kernel-core", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("--no-ipc-lock", type=int, metavar="BYTES",
                    help="run the daemon without CAP_IPC_LOCK under RLIMIT_MEMLOCK BYTES")
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
        res = prove(args, d, port_for(args, i), args.kernel_core)
        ok = ok and res["ok"]
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(describe(res), flush=True)
    return 0 if ok else 1


def describe(res):
    if not res["ok"]:
        return "%s: FAILED: %s" % (res["daemon"], res["error"])
    return "%s: %s" % (res["daemon"], ", ".join("%s (%s) %s%s" % (
        d["process"], d["how"], cell(d), " [%s]" % d["inspect"] if "inspect" in d else "") for d in res["dumps"]))


def cell(dump):
    """components + PEM text copies in one dump, and for sshd the prekey's copies (of those
    found live, how many lay in locked, dontdump memory)."""
    text = "%d + %d PEM" % (dump["components"], dump["pem"])
    if "prekey" in dump:
        text += " + %d prekey (%d/%d live in lo+dd)" % (dump["prekey"], dump["prekey_protected"], dump["prekey_live"])
    return text


def table(args, daemons):
    configs = [("no shim", "none"), ("size rules (config/size-rules.json)", os.path.join(TOP, "config", "size-rules.json")),
               ("profile", None)]
    profile = {"sshd": os.path.join(TOP, "config", "openssh.json"), "dovecot": os.path.join(TOP, "config", "dovecot.json"),
               "linked": os.path.join(TOP, "config", "openssl-linked.json"),
               "node": os.path.join(TOP, "config", "openssl-linked.json"),
               "gnutls-serv": os.path.join(TOP, "config", "gnutls.json"), "slapd": os.path.join(TOP, "config", "gnutls.json"),
               "krb5kdc": os.path.join(TOP, "config", "krb5kdc.json")}
    print("| daemon | process | " + " | ".join(c[0] for c in configs) + " |")
    print("| --- | --- |" + " --- |" * len(configs))
    for i, d in enumerate(daemons):
        cells = {}
        for label, cfg in configs:
            args.config = cfg or profile.get(d, os.path.join(TOP, "config", "openssl.json"))
            res = prove(args, d, port_for(args, i), False)
            if not res["ok"]:
                cells[label] = {"*": "fails: " + res["error"].split(";")[0].split("\n")[0][:60]}
                continue
            for dump in res["dumps"]:
                cells.setdefault(label, {})[dump["process"]] = cell(dump)
        processes = []
        for c in cells.values():
            processes += [p for p in c if p not in processes and p != "*"]
        for p in processes or ["*"]:
            row = [cells.get(label, {}).get(p, cells.get(label, {}).get("*", "-")) for label, _ in configs]
            print("| %s | %s | %s |" % (d, p, " | ".join(row)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
