// End-to-end on real daemons: nginx, haproxy, stunnel4, postgres and sshd (and lighttpd,
// Apache httpd, Mosquitto, Unbound, Redis, vsftpd, OpenVPN and Dovecot, which the profile was
// not written for, and a server with OpenSSL linked in, under its own profile) serve their real clients (curl, psql and pgbench, ssh, mosquitto_pub and
// mosquitto_sub, a DNS-over-TLS query, redis-cli, FTPS, openvpn, IMAPS) through memlock-run
// with the shipped key profiles, and dumps of their serving processes (gcore; a kernel core
// dump of an nginx worker and of the sshd listener) hold no copy of the private key's
// components (RSA p, q, d, dp, dq, qinv, both byte orders) or of its key file's text. The same
// runs without the shim find copies, so the search can see them. sshd keeps its host key
// shielded (encrypted under a 16 KiB random prekey), so there the prekey is what is counted:
// found in the live process, locked and dontdump with the profile, absent from its dumps; in
// the dumps without the shim.
//
// scripts/keyproof.py does the work (also for `make proof-keys`): it makes a fresh key, starts
// the daemon on 127.0.0.1 on ports the kernel picks free, dumps, counts and kills every process
// it started, also on failure. Each test here checks one JSON line it prints.
#include <criterion/criterion.h>

#include <regex>
#include <string>
#include <vector>

#include "e2e.hpp"

using namespace memlock_test;

namespace {


struct Dump {
    std::string process, how;
    unsigned long long components = 0, pem = 0;
    std::string inspect;  // memlock-inspect's verdict (gcore dumps under the shim)
    // sshd: prekeys found in the live process, of them in locked dontdump memory, copies in the dump
    unsigned long long prekey_live = 0, prekey_protected = 0, prekey = 0;
};

// The value of "key": in one flat JSON object (numbers and simple strings only).
std::string json_field(const std::string &obj, const std::string &key) {
    const std::string tag = "\"" + key + "\": ";
    const auto at = obj.find(tag);
    if (at == std::string::npos) return "";
    auto from = at + tag.size();
    if (obj[from] == '"') return obj.substr(from + 1, obj.find('"', from + 1) - from - 1);
    return obj.substr(from, obj.find_first_of(",}", from) - from);
}

// Runs keyproof.py for one daemon with `config` (a file in config/, an absolute path, or "none":
// without the shim) and returns its dumps.
// no_ipc_lock > 0: the daemon runs without CAP_IPC_LOCK under RLIMIT_MEMLOCK of that many bytes.
std::vector<Dump> prove(const std::string &daemon, const std::string &config, bool kernel_core,
                        unsigned long no_ipc_lock = 0) {
    need_built("");
    cr_assert(have_program("gcore") && have_program("python3"), "gcore and python3 are needed");
    RunOptions o = plain_env({"python3", source_dir() + "/scripts/keyproof.py", "--json", "--build", shim_build_dir(),
                              "--config", config == "none" || config[0] == '/' ? config : source_dir() + "/config/" + config,
                              daemon});
    if (kernel_core) o.argv.insert(o.argv.begin() + 2, "--kernel-core");
    if (no_ipc_lock) o.argv.insert(o.argv.begin() + 2, {"--no-ipc-lock", std::to_string(no_ipc_lock)});
    o.timeout_ms = 240000;
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0), "%s under %s did not serve: %s", daemon.c_str(), config.c_str(), r.describe().c_str());
    std::vector<Dump> dumps;
    const auto list = r.out.find("\"dumps\": [");
    cr_assert(list != std::string::npos, "no dumps in: %s", r.out.c_str());
    for (auto at = r.out.find('{', list); at != std::string::npos; at = r.out.find('{', at + 1)) {
        const std::string obj = r.out.substr(at, r.out.find('}', at) - at + 1);
        const auto number = [&obj](const char *key) {
            const std::string v = json_field(obj, key);
            return v.empty() ? 0ull : std::stoull(v);
        };
        dumps.push_back({json_field(obj, "process"), json_field(obj, "how"), number("components"), number("pem"),
                         json_field(obj, "inspect"), number("prekey_live"), number("prekey_protected"),
                         number("prekey")});
    }
    cr_assert(!dumps.empty(), "no dumps in: %s", r.out.c_str());
    return dumps;
}

// With the profile: every dump holds no copy, and every expected process was dumped.
// Returns the dumps.
std::vector<Dump> expect_protected(const std::string &daemon, const std::string &config,
                                   const std::vector<std::string> &processes, bool kernel_core = false,
                                   unsigned long no_ipc_lock = 0) {
    const auto dumps = prove(daemon, config, kernel_core, no_ipc_lock);
    for (const auto &p : processes) {
        bool seen = false;
        for (const auto &d : dumps) seen = seen || d.process == p;
        cr_assert(seen, "%s: the %s process was not dumped", daemon.c_str(), p.c_str());
    }
    bool kernel_seen = false;
    for (const auto &d : dumps) {
        kernel_seen = kernel_seen || d.how == "kernel";
        cr_expect_eq(d.components, 0u, "%s %s (%s) holds %llu copies of the key's private components",
                     daemon.c_str(), d.process.c_str(), d.how.c_str(), d.components);
        cr_expect_eq(d.pem, 0u, "%s %s (%s) holds %llu copies of the key's PEM text", daemon.c_str(),
                     d.process.c_str(), d.how.c_str(), d.pem);
    }
    // keyproof.py reads a kernel core only where the kernel writes it as a file in the process's
    // directory; with a pipe or another directory in core_pattern, the gcore dumps stand alone.
    const auto pattern = read_file("/proc/sys/kernel/core_pattern").value_or("|");
    if (kernel_core && pattern[0] != '|' && pattern.find('/') == std::string::npos)
        cr_assert(kernel_seen, "%s: no kernel core dump was read", daemon.c_str());
    return dumps;
}

// sshd's dumps under the profile: memlock-inspect says protected (gcore dumps), the listener
// and the monitor hold the shielding prekey (found, or the 0 copies prove nothing) only in
// locked, dontdump memory, and no dump holds it.
void expect_sshd_protected(const std::vector<Dump> &dumps) {
    for (const auto &d : dumps) {
        if (d.how == "gcore")
            cr_expect_eq(d.inspect, std::string("protected"), "memlock-inspect on sshd's %s: %s", d.process.c_str(),
                         d.inspect.c_str());
        if (d.process == "listener" || d.process == "monitor") {
            cr_expect_geq(d.prekey_live, 1u, "sshd %s: no shielding prekey found in the live process",
                          d.process.c_str());
            cr_expect_eq(d.prekey_protected, d.prekey_live,
                         "sshd %s: %llu of %llu prekeys outside locked dontdump memory", d.process.c_str(),
                         d.prekey_live - d.prekey_protected, d.prekey_live);
        }
        cr_expect_eq(d.prekey, 0u, "sshd %s (%s) holds %llu copies of the host key's prekey", d.process.c_str(),
                     d.how.c_str(), d.prekey);
    }
}

// Copies of the key (components and key file text) in all of the daemon's dumps under `config`.
unsigned long long copies_under(const std::string &daemon, const std::string &config) {
    unsigned long long total = 0;
    for (const auto &d : prove(daemon, config, false)) total += d.components + d.pem;
    return total;
}

// Without the shim: some dump holds copies (so the search would have seen a leak).
void expect_copies_without_shim(const std::string &daemon) {
    cr_assert_gt(copies_under(daemon, "none"), 0u,
                 "%s without the shim: no copy of the key found, so the search proves nothing", daemon.c_str());
}

// expect_protected, and memlock-inspect says protected of each process it dumped with gcore.
void expect_protected_and_reported(const std::string &daemon, const std::string &config,
                                   const std::vector<std::string> &processes) {
    for (const auto &d : expect_protected(daemon, config, processes))
        cr_expect_eq(d.inspect, std::string("protected"), "memlock-inspect on %s's %s: %s", daemon.c_str(),
                     d.process.c_str(), d.inspect.c_str());
}

// Under a profile that does not cover the daemon's TLS library: its dumps hold the key, and
// memlock-inspect does not call it protected.
void expect_exposed_and_reported(const std::string &daemon, const std::string &config) {
    for (const auto &d : prove(daemon, config, false)) {
        cr_expect_gt(d.components, 0u, "%s %s under %s: no copy of the key's components", daemon.c_str(),
                     d.process.c_str(), config.c_str());
        cr_expect_neq(d.inspect, std::string("protected"), "memlock-inspect on %s %s under %s says protected",
                      daemon.c_str(), d.process.c_str(), config.c_str());
    }
}

}  // namespace

// Ports: keyproof.py asks the kernel for two free consecutive ports per run, so tests side by
// side (and another `make test` beside this one) never collide.
Test(e2e_daemons, nginx_master_and_worker_hold_no_key_copy, .timeout = 300) {
    expect_protected("nginx", "openssl.json", {"master", "worker"}, true);
}
Test(e2e_daemons, nginx_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("nginx");
}
Test(e2e_daemons, haproxy_holds_no_key_copy, .timeout = 300) {
    expect_protected("haproxy", "openssl.json", {"haproxy"});
}
Test(e2e_daemons, haproxy_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("haproxy");
}
Test(e2e_daemons, stunnel_holds_no_key_copy, .timeout = 300) {
    expect_protected("stunnel", "openssl.json", {"stunnel"});
}
Test(e2e_daemons, stunnel_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("stunnel");
}
Test(e2e_daemons, postgres_postmaster_and_backend_hold_no_key_copy, .timeout = 300) {
    expect_protected("postgres", "openssl.json", {"postmaster", "backend"});
}
Test(e2e_daemons, postgres_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("postgres");
}

// Daemons the profile was not written for, under the shipped default config (the OpenSSL
// profile): lighttpd with mod_openssl, and Apache httpd with mod_ssl (event MPM: the parent
// reads the key, a child serves).
Test(e2e_daemons, lighttpd_under_the_default_config_holds_no_key_copy, .timeout = 300) {
    expect_protected("lighttpd", "default.json", {"lighttpd"});
}
Test(e2e_daemons, lighttpd_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("lighttpd");
}
Test(e2e_daemons, apache_parent_and_child_under_the_default_config_hold_no_key_copy, .timeout = 300) {
    expect_protected("apache", "default.json", {"parent", "child"});
}
Test(e2e_daemons, apache_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("apache");
}

// More OpenSSL daemons the profile was not written for, under the shipped default config:
// Mosquitto (MQTT over TLS; drops to user mosquitto), Unbound (DNS over TLS; drops to user
// unbound), Redis (TLS port only; jemalloc is its allocator, and its TLS code hands OpenSSL
// its own allocation functions) and vsftpd (explicit FTPS: each connection's processes are
// made with the clone system call, which runs no atfork handler; the shim's own fork
// handlers run around it, so they lock their arena again: memlock-inspect says protected).
Test(e2e_daemons, mosquitto_under_the_default_config_holds_no_key_copy, .timeout = 300) {
    expect_protected("mosquitto", "default.json", {"mosquitto"});
}
Test(e2e_daemons, mosquitto_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("mosquitto");
}
Test(e2e_daemons, unbound_under_the_default_config_holds_no_key_copy, .timeout = 300) {
    expect_protected("unbound", "default.json", {"unbound"});
}
Test(e2e_daemons, unbound_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("unbound");
}
Test(e2e_daemons, redis_under_the_default_config_holds_no_key_copy, .timeout = 300) {
    expect_protected("redis", "default.json", {"redis"});
}
Test(e2e_daemons, redis_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("redis");
}
Test(e2e_daemons, vsftpd_listener_and_connection_processes_under_the_default_config_hold_no_key_copy,
     .timeout = 300) {
    expect_protected_and_reported("vsftpd", "default.json",
                                  {"listener", "connection", "connection/nobody", "connection/ftp"});
}
Test(e2e_daemons, vsftpd_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("vsftpd");
}
// OpenVPN in TLS mode over TCP with no tunnel device (--dev null): an openvpn client with a
// key of its own completes the handshake and stays connected.
Test(e2e_daemons, openvpn_under_the_default_config_holds_no_key_copy, .timeout = 300) {
    expect_protected("openvpn", "default.json", {"openvpn"});
}
Test(e2e_daemons, openvpn_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("openvpn");
}

// A server with OpenSSL linked in (tests/progs/tls_linked: libssl.a and libcrypto.a, as in
// Node.js's own builds and vendors' daemons) loads no libcrypto.so, so the library profile has
// no module to match: it protects nothing, and memlock-inspect must not say it does.
// config/openssl-linked.json selects OpenSSL's allocation functions by name (CRYPTO_*).
Test(e2e_daemons, openssl_linked_in_under_the_linked_profile_holds_no_key_copy, .timeout = 300) {
    expect_protected_and_reported("linked", "openssl-linked.json", {"tls_linked"});
}
Test(e2e_daemons, openssl_linked_in_under_the_library_profile_is_not_reported_protected, .timeout = 300) {
    expect_exposed_and_reported("linked", "default.json");
}
Test(e2e_daemons, openssl_linked_in_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("linked");
}

// Dovecot (imaps): the master starts each service's process with a clean environment, so
// keyproof.py passes LD_PRELOAD and MEMLOCK_SHIM_CONFIG on with import_environment. Dovecot
// reads the key file itself: the config process parses it into its settings pools and
// sends it to imap-login over a socket, where it lands in the login's settings pools and
// data stack before OpenSSL decodes it. The OpenSSL profile protects what OpenSSL decodes
// (no component anywhere) but not that text; config/dovecot.json adds rules for the login
// library and the config process and leaves no copy.
Test(e2e_daemons, dovecot_processes_under_the_dovecot_profile_hold_no_key_copy, .timeout = 300) {
    expect_protected("dovecot", "dovecot.json", {"master", "config", "auth", "imap-login", "imap"});
}
Test(e2e_daemons, dovecot_under_the_openssl_profile_keeps_only_its_own_copies_of_the_key_file_text,
     .timeout = 300) {
    unsigned long long pem = 0;
    for (const auto &d : prove("dovecot", "default.json", false)) {
        cr_expect_eq(d.components, 0u, "dovecot %s holds %llu copies of the key's private components",
                     d.process.c_str(), d.components);
        pem += d.pem;
    }
    cr_expect_gt(pem, 0u, "dovecot under the OpenSSL profile: no copy of the key file's text; config/dovecot.json "
                          "and docs/operators.md say there are");
}
Test(e2e_daemons, dovecot_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("dovecot");
}

// GnuTLS servers: gnutls-serv (curl over HTTPS) and OpenLDAP's slapd, which Debian links with
// GnuTLS (ldaps and StartTLS; drops to user openldap). config/gnutls.json names GnuTLS and the
// libraries it decodes keys with (nettle, hogweed, GMP) and leaves no copy, and so does the
// default profile, which names them too. The OpenSSL profile protects nothing there, and
// memlock-inspect must not say protected.
Test(e2e_daemons, gnutls_serv_under_the_gnutls_profile_holds_no_key_copy, .timeout = 300) {
    expect_protected_and_reported("gnutls-serv", "gnutls.json", {"gnutls-serv"});
}
Test(e2e_daemons, gnutls_serv_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("gnutls-serv");
}
Test(e2e_daemons, slapd_under_the_gnutls_profile_holds_no_key_copy, .timeout = 300) {
    expect_protected_and_reported("slapd", "gnutls.json", {"slapd"});
}
Test(e2e_daemons, slapd_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("slapd");
}
Test(e2e_daemons, slapd_under_the_default_profile_holds_no_key_copy, .timeout = 300) {
    expect_protected_and_reported("slapd", "default.json", {"slapd"});
}
Test(e2e_daemons, gnutls_serv_under_the_openssl_profile_keeps_its_key_and_is_not_reported_protected, .timeout = 300) {
    expect_exposed_and_reported("gnutls-serv", "openssl.json");
}

// sshd under config/openssh.json: keyproof.py logs in three times with a key (as a user that
// is not root, so a session has a privileged monitor and an unprivileged child), logs in once
// more with the monitor dumped while it signs the key exchange (its plaintext host key exists
// then), holds one session and one connection before authentication open (its child runs in
// sshd's seccomp sandbox: keyproof.py checks it and that sshd logged no child killed by a
// signal), dumps the listener, the session's monitor and child and the sandboxed child, then
// aborts the listener for a kernel core dump.
Test(e2e_daemons, sshd_logins_work_and_no_process_holds_the_host_key, .timeout = 300) {
    expect_sshd_protected(
        expect_protected("sshd", "openssh.json", {"listener", "monitor", "session", "preauth", "signing"}, true));
}

// sshd started as root without CAP_IPC_LOCK under the common 8 MiB RLIMIT_MEMLOCK (a container
// without --cap-add IPC_LOCK, systemd in podman, a unit whose CapabilityBoundingSet leaves it
// out): the start-up lock takes the largest halving of max_locked (64 MiB) the limit accepts,
// 8 MiB, and every process sshd forks or re-executes locks it again within the same limit. So
// the same as with the capability: logins work, no copy in any dump, the prekey locked and
// dontdump, memlock-inspect says protected.
Test(e2e_daemons, sshd_without_cap_ipc_lock_under_8_mib_stays_protected, .timeout = 300) {
    expect_sshd_protected(expect_protected("sshd", "openssh.json",
                                           {"listener", "monitor", "session", "preauth", "signing"}, false, 8u << 20));
}
// MIT Kerberos's KDC (a realm of its own; kinit and kvno): the secret is the realm's master key.
// Without the shim its dump holds copies in heap blocks and on the main thread's stack, left
// there by the functions that fetched and decrypted the key. config/krb5kdc.json moves the
// blocks into the arena and scrubs the dead stack (policy.scrub_stack); the same rule without
// the scrub leaves the stack's copies.
Test(e2e_daemons, krb5kdc_under_its_profile_holds_no_master_key_copy, .timeout = 300) {
    expect_protected_and_reported("krb5kdc", "krb5kdc.json", {"krb5kdc"});
}
Test(e2e_daemons, krb5kdc_without_shim_holds_master_key_copies, .timeout = 300) {
    expect_copies_without_shim("krb5kdc");
}
Test(e2e_daemons, krb5kdc_without_the_stack_scrub_keeps_copies_on_the_stack, .timeout = 300) {
    const auto profile = read_file(source_dir() + "/config/krb5kdc.json");
    cr_assert(profile.has_value(), "config/krb5kdc.json missing");
    const std::regex scrub(R"(,\s*"scrub_stack":\s*"[^"]*")");
    cr_assert(std::regex_search(*profile, scrub), "config/krb5kdc.json sets no scrub_stack");
    TempDir dir;
    const std::string config = dir.file("krb5kdc-no-scrub.json");
    cr_assert(write_file(config, std::regex_replace(*profile, scrub, "")));
    cr_assert_gt(copies_under("krb5kdc", config), 0u,
                 "krb5kdc without the scrub: no copy of the master key left, so the scrub proves nothing");
}

// Without the shim, Debian 12's sshd (OpenSSH 9.2) leaves no plaintext copy of its shielded
// host key after use, but the prekey that unshields it is in the dumps of the listener and the
// monitor, and the plaintext components are in the monitor's dump while it signs.
Test(e2e_daemons, sshd_without_shim_holds_the_host_key, .timeout = 300) {
    unsigned seen = 0;
    for (const auto &d : prove("sshd", "none", false)) {
        if (d.process == "signing") {
            ++seen;
            cr_expect_gt(d.components, 0u, "sshd without the shim: no key component in the monitor while it signs");
        }
        if (d.process != "listener" && d.process != "monitor") continue;
        ++seen;
        cr_expect_geq(d.prekey_live, 1u, "sshd %s without the shim: no prekey found", d.process.c_str());
        cr_expect_eq(d.prekey_protected, 0u, "sshd %s without the shim: a prekey in locked dontdump memory",
                     d.process.c_str());
        cr_expect_geq(d.prekey, d.prekey_live,
                      "sshd %s without the shim: the dump holds %llu of %llu prekeys, so the search proves nothing",
                      d.process.c_str(), d.prekey, d.prekey_live);
    }
    cr_assert_eq(seen, 3u, "sshd without the shim: the listener, the monitor or the signing monitor was not dumped");
}

// What the demo and the docs lead with is the key profile of both TLS libraries: the OpenSSL
// profile with GnuTLS's libraries (config/gnutls.json's) added to its rule.
Test(e2e_daemons, default_config_is_the_openssl_and_gnutls_profiles_in_one) {
    const auto def = read_file(source_dir() + "/config/default.json");
    const auto openssl = read_file(source_dir() + "/config/openssl.json");
    const auto gnutls = read_file(source_dir() + "/config/gnutls.json");
    cr_assert(def && openssl && gnutls, "config/default.json, openssl.json or gnutls.json missing");
    const std::string openssl_rule = R"({"name": "openssl-and-its-callees", "module": ["libcrypto.so*", "libssl.so*"])";
    const std::string gnutls_modules = R"("libgnutls.so*", "libnettle.so*", "libhogweed.so*")";
    cr_assert(contains(*gnutls, "[" + gnutls_modules + "]"), "config/gnutls.json names other modules");
    std::string expected = *openssl;
    const auto at = expected.find(openssl_rule);
    cr_assert(at != std::string::npos, "config/openssl.json has another rule");
    expected.replace(at, openssl_rule.size(),
                     R"({"name": "tls-libraries-and-their-callees", "module": ["libcrypto.so*", "libssl.so*", )" +
                         gnutls_modules + "]");
    cr_assert_str_eq(def->c_str(), expected.c_str());
}
