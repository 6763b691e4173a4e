// End-to-end tests of policy.backing "secretmem": programs under the shim hold secrets in
// matching blocks; root cannot read them through /proc/PID/mem nor process_vm_readv while the
// program reads and writes them; fork children and their parents never see each other's
// writes; gcore and the kernel's core dump hold no marker; a kernel without memfd_secret
// (a seccomp filter answering ENOSYS) follows the lock-failure policy.
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/uio.h>

#include <string>

#include "e2e.hpp"

using namespace memlock_test;

namespace {

// The end-to-end rules with policy.backing = backing (and on_lock_failure = policy).
std::string secretmem_config(const TempDir &dir, const std::string &prog, const std::string &backing = "secretmem",
                             const std::string &policy = "fallback") {
    cr_assert(dir.ok(), "no temp dir");
    need_built(prog);
    const std::string config = dir.file("secretmem.json");
    cr_assert(write_file(config, R"({"version": 1,
  "rules": [{"name": "keys", "size": 32}, {"name": "buffers", "min_size": 512, "max_size": 2048}],
  "policy": {"backing": ")" + backing + R"(", "on_lock_failure": ")" + policy + R"("}})"));
    return config;
}

// Reads 16 bytes of process pid at addr through /proc/PID/mem and through process_vm_readv.
struct OutsideRead {
    bool proc_mem;
    bool vm_readv;
};
OutsideRead read_from_outside(pid_t pid, const void *addr) {
    unsigned char buf[16];
    const std::string path = "/proc/" + std::to_string(pid) + "/mem";
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "open %s: %s", path.c_str(), std::strerror(errno));
    OutsideRead r{};
    r.proc_mem = ::pread(fd, buf, sizeof buf, static_cast<off_t>(reinterpret_cast<std::uintptr_t>(addr))) == 16;
    ::close(fd);
    iovec local{buf, sizeof buf}, remote{const_cast<void *>(addr), sizeof buf};
    r.vm_readv = ::process_vm_readv(pid, &local, 1, &remote, 1, 0) == 16;
    return r;
}

std::string maps_of(pid_t pid) {
    const auto m = read_file("/proc/" + std::to_string(pid) + "/maps");
    return m ? *m : std::string();
}

}  // namespace

// A thread whose cancellation is pending forks (e2e_cancel fork): the child, which inherits
// the pending cancellation, gets a secretmem file of its own in the shim's fork handler
// (whose close is a cancellation point) without acting on it, and exits 0, as without the
// shim (SIGABRT in std::terminate before).
Test(e2e_secretmem, a_fork_child_of_a_thread_with_a_pending_cancellation_gets_its_copy_and_runs) {
    TempDir dir;
    const std::string config = secretmem_config(dir, "e2e_cancel");
    const RunResult r = run_program(shim_options(config, {shim_program("e2e_cancel"), "fork", "64"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "child 0\ncancelled\n", "%s", r.describe().c_str());
}

Test(e2e_secretmem, root_cannot_read_live_secrets_while_the_program_uses_them) {
    TempDir dir;
    const std::string config = secretmem_config(dir, "e2e_secretmem");
    LiveProgram child;
    start_until_ready(child, shim_options(config, {shim_program("e2e_secretmem"), "wait"}));
    const auto secrets = line_values(child.out(), "secret");
    cr_assert_eq(secrets.size(), 4u, "%s", child.out().c_str());
    cr_assert(maps_of(child.pid()).find("/secretmem (deleted)") != std::string::npos);
    for (const auto &s : secrets) {
        const OutsideRead r = read_from_outside(child.pid(), parse_pointer(s));
        cr_assert(!r.proc_mem, "/proc/PID/mem read the secret at %s", s.c_str());
        cr_assert(!r.vm_readv, "process_vm_readv read the secret at %s", s.c_str());
    }
    // The same reads work on a block no rule matches: the check can fail.
    const auto plain = line_value(child.out(), "plain");
    cr_assert(plain.has_value());
    const OutsideRead r = read_from_outside(child.pid(), parse_pointer(*plain));
    cr_assert(r.proc_mem && r.vm_readv, "cannot read the plain block either");
    const RunResult done = child.finish();
    cr_assert(done.exited_with(0), "%s", done.describe().c_str());
    cr_assert(done.out.find("\nintact\n") != std::string::npos, "%s", done.describe().c_str());
    cr_assert_str_empty(done.err.c_str());
}

// Under anonymous backing root reads the same blocks: what secretmem adds (the check can fail).
Test(e2e_secretmem, under_anonymous_backing_root_reads_them) {
    TempDir dir;
    const std::string config = secretmem_config(dir, "e2e_secretmem", "anonymous");
    LiveProgram child;
    start_until_ready(child, shim_options(config, {shim_program("e2e_secretmem"), "wait"}));
    const auto secrets = line_values(child.out(), "secret");
    cr_assert_eq(secrets.size(), 4u);
    const OutsideRead r = read_from_outside(child.pid(), parse_pointer(secrets[0]));
    cr_assert(r.proc_mem && r.vm_readv);
    cr_assert(maps_of(child.pid()).find("/secretmem (deleted)") == std::string::npos);
    cr_assert(child.finish().exited_with(0));
}

Test(e2e_secretmem, fork_children_and_parents_keep_their_own_copies) {
    TempDir dir;
    const std::string config = secretmem_config(dir, "e2e_secretmem");
    const RunResult r = run_program(shim_options(config, {shim_program("e2e_secretmem"), "fork"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "fork ok\n");
    cr_assert_str_empty(r.err.c_str());
}

// fork gives the child the secretmem pages themselves, which its handler copies: the parent,
// which rewrites its blocks right after fork, waits until the child has its copy, so that
// each child sees the blocks as they were at the fork (without the wait, 20 of 20 children
// saw the parent's writes).
Test(e2e_secretmem, a_fork_child_sees_the_blocks_as_they_were_at_the_fork) {
    TempDir dir;
    const std::string config = secretmem_config(dir, "e2e_secretmem");
    const RunResult r = run_program(shim_options(config, {shim_program("e2e_secretmem"), "snapshot"}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "snapshot 0 of 20\n", "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
}

// gcore of the live process and the kernel's core dump hold no copy of the secret marker
// (e2e_secrets: 1024+ copies in matching blocks; the public marker is counted as a control).
Test(e2e_secretmem, gcore_and_kernel_core_dump_hold_no_marker) {
    cr_assert(have_program("gcore"), "gcore is not installed");
    TempDir dir;
    const std::string config = secretmem_config(dir, "e2e_secrets");
    auto check = [](const std::string &dump, const std::string &out, const char *what) {
        const std::string secret = marker_bytes(out, "secret"), pub = marker_bytes(out, "public");
        cr_assert_gt(dump.size(), 0u, "%s is empty", what);
        cr_assert_eq(count_occurrences(dump, secret), 0u, "%s holds the secret marker", what);
        cr_assert_geq(count_occurrences(dump, pub), 1024u, "%s lacks the public marker", what);
    };
    LiveProgram child;
    start_until_ready(child, shim_options(config, {shim_program("e2e_secrets"), "wait"}));
    cr_assert(maps_of(child.pid()).find("/secretmem (deleted)") != std::string::npos);
    RunOptions g;
    g.argv = {"gcore", "-o", dir.file("gcore"), std::to_string(child.pid())};
    cr_assert(run_program(g).exited_with(0));
    const auto dump = read_file(dir.file("gcore." + std::to_string(child.pid())));
    cr_assert(dump.has_value());
    check(*dump, child.out(), "the gcore dump");
    cr_assert(child.finish().exited_with(0));

    const auto pattern = read_file("/proc/sys/kernel/core_pattern");
    if (pattern && !pattern->empty() && (*pattern)[0] == '|') {
        cr_log_info("core_pattern is a pipe: the kernel's dump is not checked");
        return;
    }
    RunOptions opts = shim_options(config, {shim_program("e2e_secrets"), "abort"});
    opts.cwd = dir.path();
    opts.setup = raise_core_limit;
    const RunResult r = run_program(opts);
    cr_assert(r.killed_by(SIGABRT) && r.core_dumped, "%s", r.describe().c_str());
    auto core = read_file(dir.file("core." + *line_value(r.out, "pid")));
    if (!core) core = read_file(dir.file("core"));
    cr_assert(core.has_value(), "no core file in %s", dir.path().c_str());
    check(*core, r.out, "the kernel's core dump");
}

// A kernel without memfd_secret (seccomp answers ENOSYS for 447, build/progs/enosys_exec):
// fallback warns once, naming program and pid, and runs on locked anonymous memory; deny
// refuses matching allocations (the program's malloc fails); auto says nothing at warn level.
Test(e2e_secretmem, without_memfd_secret_the_lock_failure_policy_decides) {
    const std::string launcher = need_built("enosys_exec");
    TempDir dir;
    const std::string prog = shim_program("e2e_secretmem");
    {
        const std::string config = secretmem_config(dir, "e2e_secretmem");
        const RunResult r = run_program(shim_options(config, {launcher, "447", prog, "fork"}));
        cr_assert(r.exited_with(0), "%s", r.describe().c_str());
        cr_assert_str_eq(r.out.c_str(), "fork ok\n");
        const std::string expected = "memlock-shim: warning: policy.backing secretmem: memfd_secret is unavailable "
                                     "(policy fallback: arena memory is locked anonymous memory, which root can read "
                                     "through /proc/PID/mem): memfd_secret: ENOSYS: the kernel lacks it (Linux < "
                                     "5.14, CONFIG_SECRETMEM off, or a seccomp filter)";
        const std::string err = without_origin(r.err), want = expected + "\n";
        cr_assert_str_eq(err.c_str(), want.c_str());
        cr_assert(r.err.find(" (program e2e_secretmem, pid ") != std::string::npos, "%s", r.err.c_str());
    }
    {
        const std::string config = secretmem_config(dir, "e2e_secretmem", "secretmem", "deny");
        const RunResult r = run_program(shim_options(config, {launcher, "447", prog, "fork"}));
        cr_assert(r.exited_with(3), "malloc must fail under deny: %s", r.describe().c_str());
        cr_assert(r.err.find("cannot lock arena memory (policy deny: matching allocations fail with ENOMEM): "
                             "memfd_secret: ENOSYS") != std::string::npos,
                  "%s", r.err.c_str());
    }
    {
        const std::string config = secretmem_config(dir, "e2e_secretmem", "auto");
        const RunResult r = run_program(shim_options(config, {launcher, "447", prog, "fork"}));
        cr_assert(r.exited_with(0), "%s", r.describe().c_str());
        cr_assert_str_empty(r.err.c_str());
    }
}
