// End-to-end on real daemons: nginx, haproxy, stunnel4, postgres and sshd serve their real
// clients (curl, psql and pgbench, ssh) through memlock-run with the shipped key profiles, and
// dumps of their serving processes (gcore; a kernel core dump of an nginx worker) hold no copy
// of the private key's components (RSA p, q, d, dp, dq, qinv, both byte orders) or of its PEM
// text. The same runs without the shim find copies, so the search can see them.
//
// scripts/keyproof.py does the work (also for `make proof-keys`): it makes a fresh key, starts
// the daemon on 127.0.0.1 in this engineer's port range, dumps, counts and kills every process
// it started, also on failure. Each test here checks one JSON line it prints.
#include <criterion/criterion.h>

#include <string>
#include <vector>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

std::string source_dir() { return shim_build_dir() + "/.."; }

struct Dump {
    std::string process, how;
    unsigned long long components = 0, pem = 0;
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

// Runs keyproof.py for one daemon with `config` ("none": without the shim) and returns its dumps.
std::vector<Dump> prove(const std::string &daemon, const std::string &config, int port, bool kernel_core) {
    need_built("");
    cr_assert(have_program("gcore") && have_program("python3"), "gcore and python3 are needed");
    RunOptions o = plain_env({"python3", source_dir() + "/scripts/keyproof.py", "--json", "--build", shim_build_dir(),
                              "--config", config == "none" ? config : source_dir() + "/config/" + config, "--port",
                              std::to_string(port), daemon});
    if (kernel_core) o.argv.insert(o.argv.begin() + 2, "--kernel-core");
    o.timeout_ms = 240000;
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0), "%s under %s did not serve: %s", daemon.c_str(), config.c_str(), r.describe().c_str());
    std::vector<Dump> dumps;
    const auto list = r.out.find("\"dumps\": [");
    cr_assert(list != std::string::npos, "no dumps in: %s", r.out.c_str());
    for (auto at = r.out.find('{', list); at != std::string::npos; at = r.out.find('{', at + 1)) {
        const std::string obj = r.out.substr(at, r.out.find('}', at) - at + 1);
        dumps.push_back({json_field(obj, "process"), json_field(obj, "how"), std::stoull(json_field(obj, "components")),
                         std::stoull(json_field(obj, "pem"))});
    }
    cr_assert(!dumps.empty(), "no dumps in: %s", r.out.c_str());
    return dumps;
}

// With the profile: every dump holds no copy, and every expected process was dumped.
void expect_protected(const std::string &daemon, const std::string &config, int port,
                      const std::vector<std::string> &processes, bool kernel_core = false) {
    const auto dumps = prove(daemon, config, port, kernel_core);
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
}

// Without the shim: some dump holds copies (so the search would have seen a leak).
void expect_copies_without_shim(const std::string &daemon, int port) {
    unsigned long long total = 0;
    for (const auto &d : prove(daemon, "none", port, false)) total += d.components + d.pem;
    cr_assert_gt(total, 0u, "%s without the shim: no copy of the key found, so the search proves nothing",
                 daemon.c_str());
}

}  // namespace

// Ports: 21100.. in steps of 10 (each run uses its port and the next one).
Test(e2e_daemons, nginx_master_and_worker_hold_no_key_copy, .timeout = 300) {
    expect_protected("nginx", "openssl.json", 21100, {"master", "worker"}, true);
}
Test(e2e_daemons, nginx_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("nginx", 21110);
}
Test(e2e_daemons, haproxy_holds_no_key_copy, .timeout = 300) {
    expect_protected("haproxy", "openssl.json", 21120, {"haproxy"});
}
Test(e2e_daemons, haproxy_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("haproxy", 21130);
}
Test(e2e_daemons, stunnel_holds_no_key_copy, .timeout = 300) {
    expect_protected("stunnel", "openssl.json", 21140, {"stunnel"});
}
Test(e2e_daemons, stunnel_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("stunnel", 21150);
}
Test(e2e_daemons, postgres_postmaster_and_backend_hold_no_key_copy, .timeout = 300) {
    expect_protected("postgres", "openssl.json", 21160, {"postmaster", "backend"});
}
Test(e2e_daemons, postgres_without_shim_holds_key_copies, .timeout = 300) {
    expect_copies_without_shim("postgres", 21170);
}

// What the demo and the docs lead with is the OpenSSL key profile.
Test(e2e_daemons, default_config_is_the_openssl_profile) {
    const auto def = read_file(source_dir() + "/config/default.json");
    const auto openssl = read_file(source_dir() + "/config/openssl.json");
    cr_assert(def.has_value() && openssl.has_value(), "config/default.json or config/openssl.json missing");
    cr_assert(*def == *openssl, "config/default.json differs from config/openssl.json");
}
