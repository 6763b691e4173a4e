// End-to-end security: a local attacker (the user `nobody`) against shimmed root processes, one
// test per numbered point of the security issue (secure execution, the counters, the files the
// shim opens, memlock-run's interpreter chain, memlock-inspect), plus memlock-inspect across
// users and PID namespaces and a sandboxed fork child's exit path.
//
// Attacks run as nobody through setpriv; namespaces come from unshare (a private mount
// namespace for /etc and /dev/shm, a private PID namespace for colliding PIDs), so nothing
// here touches the machine's own /etc or /dev/shm.
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "e2e.hpp"
#include "three_ways.hpp"

using namespace memlock_test;

namespace {

#ifndef MEMLOCK_TEST_SYSCONFDIR
#define MEMLOCK_TEST_SYSCONFDIR "/usr/local/etc"
#endif

const std::string kNobody = "setpriv --reuid=65534 --regid=65534 --clear-groups ";

std::string q(const std::string &s) { return shell_quote(s); }
std::string inspect_tool() { return shim_build_dir() + "/memlock-inspect"; }
std::string run_tool() { return shim_build_dir() + "/memlock-run"; }

// A temp dir nobody can enter (what is inside keeps its own owner and mode).
struct SharedDir {
    TempDir dir;
    SharedDir() {
        cr_assert(dir.ok());
        cr_assert_eq(::chmod(dir.path().c_str(), 0755), 0);
    }
    std::string file(const std::string &name) const { return dir.file(name); }
    // A world-writable sticky directory inside, as /tmp is.
    std::string pub() const {
        const std::string p = file("pub");
        ::mkdir(p.c_str(), 0755);
        cr_assert_eq(::chmod(p.c_str(), 01777), 0);
        return p;
    }
};

// "env LD_PRELOAD=<shim> MEMLOCK_SHIM_CONFIG=<config> " for a shell command line.
std::string shimmed(const std::string &config) {
    return "env LD_PRELOAD=" + q(shim_library()) + " MEMLOCK_SHIM_CONFIG=" + q(config) + " ";
}

// Runs a shell script (set -e) without the shim in its own environment.
RunResult sh(const std::string &script, int timeout_ms = 120000) {
    RunOptions o;
    o.argv = {"sh", "-c", "set -e\n" + script};
    o.unset_env = {"LD_PRELOAD", "MEMLOCK_SHIM_CONFIG", "MEMLOCK_SHIM_ON_CONFIG_ERROR"};
    o.timeout_ms = timeout_ms;
    return run_program(o);
}

// A script line that starts `cmd` in the background with stdin from a FIFO the script holds
// open, waits for its "ready" line, and leaves its PID in $P. `end_hold` lets it exit. The
// output file goes first: the job opens the FIFO before it truncates the file.
std::string start_hold(const SharedDir &d, const std::string &cmd) {
    const std::string fifo = q(d.file("hold.in")), out = q(d.file("hold.out"));
    return "rm -f " + fifo + " " + out + "; mkfifo -m 666 " + fifo + "\n" + cmd + " < " + fifo + " > " + out +
           " & P=$!\nexec 3>" + fifo + "\nuntil grep -q ready " + out + " 2>/dev/null; do sleep 0.05; done\n";
}
const char *const kEndHold = "exec 3>&-\nwait $P || true\n";

std::string hold() { return need_built("security_hold"); }

void assert_unchanged(const std::string &path, const std::string &content) {
    const auto now = read_file(path);
    cr_assert(now.has_value(), "%s is gone", path.c_str());
    cr_assert_str_eq(now->c_str(), content.c_str(), "%s was changed", path.c_str());
}

// A root-owned file with `content`, as a victim of the attacks.
std::string victim(const SharedDir &d, const std::string &name, const std::string &content) {
    const std::string path = d.file(name);
    cr_assert(write_file(path, content, 0644));
    return path;
}

const std::string kPasswd = "root:x:0:0:root:/root:/bin/bash\n";

// Script lines that load the shim through /etc/ld.so.preload (over a copy of /etc) with
// `config` as the system config (root's, 0644, in a directory only root writes), then run
// `commands` in a private mount namespace in which both are bound in place.
std::string system_wide(const SharedDir &d, const std::string &config, const std::string &commands) {
    const std::string sysconf = MEMLOCK_TEST_SYSCONFDIR;
    return "cp -a /etc " + q(d.file("etc")) + "\necho " + q(shim_library()) + " > " + q(d.file("etc/ld.so.preload")) +
           "\nif [ " + q(sysconf) + " = /etc ]; then S=" + q(d.file("etc")) + "; else S=" + q(d.file("sysconf")) +
           "; fi\nmkdir -p $S/memlock-shim\ncat > $S/memlock-shim/config.json <<'EOF'\n" + config +
           "\nEOF\nchmod 755 $S/memlock-shim; chmod 644 $S/memlock-shim/config.json\n"
           "unshare -m --propagation private sh -c " +
           q("set -e\nmount --bind " + q(d.file("etc")) + " /etc\n[ " + q(sysconf) + " = /etc ] || mount --bind " +
             q(d.file("sysconf")) + " " + q(sysconf) + "\n" + commands);
}

}  // namespace

// ---- 1. secure execution ------------------------------------------------------------------------

// /etc/ld.so.preload (in a private mount namespace, over a copy of /etc) loads the shim into a
// setuid-root program that nobody runs with a config of their choice: it must read none of it.
Test(e2e_security, p01_setuid_program_ignores_the_callers_config) {
    SharedDir d;
    const std::string passwd = victim(d, "passwd", kPasswd);
    const std::string secret = d.file("secret");
    cr_assert(write_file(secret, "TOPSECRET-TOKEN and more\n", 0600));
    const std::string evil = d.file("evil.json");
    cr_assert(write_file(evil, R"({"version": 1, "rules": [{"name": "x\nevil::0:0::/:/bin/sh\n",
        "module": "libnothere.so"}], "log": {"file": ")" + passwd + R"(", "level": "debug"},
        "stats": {"file": ")" + d.file("shadow") + R"("}})", 0644));
    const std::string suid = d.file("suid_hello");
    const RunResult r = sh("cp " + q(need_built("e2e_hello")) + " " + q(suid) + "; chmod 4755 " + q(suid) +
                           "\ncp -a /etc " + q(d.file("etc")) + "\necho " + q(shim_library()) + " > " +
                           q(d.file("etc/ld.so.preload")) + "\nunshare -m --propagation private sh -c " +
                           q("mount --bind " + q(d.file("etc")) + " /etc\n" + kNobody + "env MEMLOCK_SHIM_CONFIG=" +
                             q(evil) + " " + q(suid) + "\n" + kNobody + "env MEMLOCK_SHIM_CONFIG=" + q(secret) + " " +
                             q(suid) + "\ngrep -q libmemlock_shim /proc/self/maps && echo preloaded"));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\nhello 3\npreloaded\n", "%s", r.describe().c_str());
    assert_unchanged(passwd, kPasswd);
    cr_assert(!file_exists(d.file("shadow")), "stats.file was written");
    cr_assert(!contains(r.err, "TOPSECRET") && !contains(r.err, "evil"), "%s", r.err.c_str());
}

// System-wide mode: /etc/ld.so.preload + the system config with `programs`. The config applies
// to the programs it names (setuid or not) and to no other; a system config that others may
// write is refused with one line that shows none of it. A module rule for a library the
// program does not load is no warning there (every program on the host would print one).
Test(e2e_security, system_wide_mode_in_a_private_etc) {
    SharedDir d;
    const std::string sysconf = MEMLOCK_TEST_SYSCONFDIR;
    const std::string suid = d.file("e2e_hello");
    const std::string script =
        "cp " + q(need_built("e2e_hello")) + " " + q(suid) + "; chmod 4755 " + q(suid) + "\n" +
        system_wide(d,
                    R"({"version": 1, "programs": ["e2e_hello", "security_hold"],
            "rules": [{"name": "keys", "size": 32}, {"name": "buffers", "min_size": 512, "max_size": 2048},
                      {"name": "tls", "module": "libnothere.so*"}],
            "stats": {"file": ")" + d.file("stats.%p.json") + R"("}})",
                    q(need_built("e2e_hello")) + "\n" + kNobody + q(suid) + "\n" + q(need_built("tools_pid")) +
                        " > /dev/null\nchmod 666 " + q(sysconf) + "/memlock-shim/config.json\n" + kNobody +
                        q(suid) + "\n");
    const RunResult r = sh(script);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\nhello 3\nhello 3\n");
    const std::string refused = "memlock-shim: warning: " + sysconf +
                                "/memlock-shim/config.json: ignored (it and its directory must be owned by root and "
                                "not writable by group or others): running unprotected\n";
    // Said by setpriv (not setuid) and by the setuid e2e_hello, each once.
    const std::string twice = refused + refused;
    assert_log_eq(r.err, twice.c_str());
    cr_assert(contains(r.err, "(program e2e_hello, pid "), "%s", r.err.c_str());
    // One stats file: the plain e2e_hello's. None for the setuid one (secure execution writes
    // none, so that its caller cannot leave files of root's), tools_pid or the last run.
    std::vector<std::string> stats;
    for (const auto &e : std::filesystem::directory_iterator(d.dir.path()))
        if (e.path().filename().string().rfind("stats.", 0) == 0) stats.push_back(e.path());
    cr_assert_eq(stats.size(), 1u);
    for (const auto &s : stats) cr_assert_geq(stat_value(read_stats(s), "matched_allocations"), 2u);
}

// System-wide mode with log.file and stats.file in a directory only root may write: a program
// another user runs cannot open either, and runs protected and silent all the same (its log
// goes to stderr, kept to warnings); root's programs, setuid ones included, write the log, and
// only those outside secure execution the stats.
Test(e2e_security, system_wide_log_and_stats_files_stop_no_users_program) {
    SharedDir d;
    const std::string plain = d.file("plain/e2e_hello"), suid = d.file("suid/e2e_hello");
    const std::string priv = d.file("private");
    const std::string script =
        "mkdir -p " + q(d.file("plain")) + " " + q(d.file("suid")) + " " + q(priv) + "; chmod 755 " +
        q(d.file("plain")) + " " + q(d.file("suid")) + "; chmod 700 " + q(priv) + "\ncp " +
        q(need_built("e2e_hello")) + " " + q(plain) + "; cp " + q(need_built("e2e_hello")) + " " + q(suid) +
        "; chmod 4755 " + q(suid) + "\n" +
        system_wide(d,
                    R"({"version": 1, "programs": ["e2e_hello"], "rules": [{"name": "keys", "size": 32}],
            "log": {"file": ")" + priv + R"(/shim.log", "level": "info"},
            "stats": {"file": ")" + priv + R"(/stats.%p.json"}})",
                    q(plain) + "\n" + kNobody + q(plain) + "\n" + kNobody + q(suid) + "\n");
    const RunResult r = sh(script);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\nhello 3\nhello 3\n", "%s", r.describe().c_str());
    cr_assert_str_empty(r.err.c_str());
    const std::string logged = read_file(priv + "/shim.log").value_or("");
    cr_assert_eq(count_occurrences(logged, "memlock-shim: info: protecting 1 rule(s)"), 2u, "%s", logged.c_str());
    std::size_t stats = 0;
    for (const auto &e : std::filesystem::directory_iterator(priv))
        stats += e.path().filename().string().rfind("stats.", 0) == 0;
    cr_assert_eq(stats, 1u);
}

// ---- 2-5. the counters -----------------------------------------------------------------------

namespace {

// A script run in private mount and PID namespaces with its own /dev/shm: its first child is
// PID 2, the ones after it follow.
RunResult in_private_pid_ns(const std::string &script) {
    return sh("unshare -m -p -f --propagation private --mount-proc sh -c " +
              q("set -e\nmount -t tmpfs -o mode=1777,size=1m tmpfs /dev/shm\n" + script));
}

}  // namespace

// Files planted under the old counters names for the next PIDs: never opened, never changed.
Test(e2e_security, p02_planted_counters_files_are_never_touched) {
    SharedDir d;
    const std::string config = prepare_e2e(d.dir, "e2e_hello", false);
    const RunResult r = in_private_pid_ns(
        kNobody + "sh -c 'for i in $(seq 2 40); do printf planted > /dev/shm/memlock-shim.$i; done'\n" +
        shimmed(config) + q(need_built("e2e_hello")) +
        "\nfor i in $(seq 2 40); do [ \"$(cat /dev/shm/memlock-shim.$i)\" = planted ] || echo changed $i; done\n"
        "ls /dev/shm | wc -l\n");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "hello 3\n39\n");
}

// Directories planted under those names do not make a shimmed process "not protected".
Test(e2e_security, p03_planted_directories_do_not_hide_protection) {
    SharedDir d;
    const std::string config = prepare_e2e(d.dir, "security_hold", false);
    const RunResult r = in_private_pid_ns(
        kNobody + "sh -c 'cd /dev/shm && mkdir $(seq -f memlock-shim.%g 2 200)'\n" +
        start_hold(d, shimmed(config) + q(hold())) + q(inspect_tool()) + " $P\n" + kEndHold);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "): protected\n"), "%s", r.out.c_str());
}

// Fork children leave nothing behind, and a full /dev/shm costs nothing (no SIGBUS).
Test(e2e_security, p04_fork_children_and_a_full_dev_shm) {
    SharedDir d;
    const std::string config = prepare_e2e(d.dir, "e2e_fork", false);
    const RunResult r = in_private_pid_ns(
        "dd if=/dev/zero of=/dev/shm/fill bs=64k count=64 2>/dev/null || true\n" + shimmed(config) +
        q(need_built("e2e_fork")) + " > /dev/null\necho exit $?\n" + shimmed(config) +
        "sh -c 'for i in 1 2 3 4 5 6 7 8; do " + q(need_built("e2e_hello")) + " & done; wait' > /dev/null\nls /dev/shm\n");
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "exit 0\nfill\n");
}

namespace {

// The PID `unshare -p -f` started (its only child).
pid_t only_child(pid_t parent) {
    for (int i = 0; i < 200; ++i) {
        const auto kids = read_file("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
        if (kids && !kids->empty()) return static_cast<pid_t>(std::stol(*kids));
        ::usleep(10000);
    }
    cr_assert_fail("no child of %d", static_cast<int>(parent));
    return -1;
}

nlohmann::json inspect_json(pid_t pid, const std::string &prefix = "") {
    const RunResult r = sh(prefix + q(inspect_tool()) + " --json " + std::to_string(pid) + " || true");
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    cr_assert(!j.is_discarded(), "%s", r.describe().c_str());
    return j;
}

}  // namespace

// Two shimmed processes that are both PID 1 of their own PID namespace, sharing /dev/shm: each
// has its own counters, and memlock-inspect on the host finds both.
Test(e2e_security, p05_same_pid_in_two_pid_namespaces) {
    SharedDir d;
    const std::string config = prepare_e2e(d.dir, "security_hold", false);
    LiveProgram a, b;
    for (LiveProgram *c : {&a, &b}) {
        RunOptions o = plain_env({"unshare", "-p", "-f", "env", "LD_PRELOAD=" + shim_library(),
                                  "MEMLOCK_SHIM_CONFIG=" + config, hold()});
        start_until_ready(*c, o);
    }
    for (LiveProgram *c : {&a, &b}) {
        const pid_t pid = only_child(c->pid());
        const auto j = inspect_json(pid);
        const std::string status = j["status"].get<std::string>();
        cr_assert_str_eq(status.c_str(), "protected", "%s", j.dump(2).c_str());
        cr_assert_eq(j["nspid"].back().get<int>(), 1, "%s", j.dump(2).c_str());
        cr_assert_eq(j["counters"]["pid"].get<int>(), 1);
        cr_assert_eq(j["counters"]["matched_allocations"].get<int>(), 64);
    }
    a.finish();
    b.finish();
}

// A user's process that maps what memlock-inspect reads and keeps changing it (shrinking,
// unmapping, garbage) never crashes root's memlock-inspect.
Test(e2e_security, p06_inspect_survives_a_hostile_target) {
    SharedDir d;
    const RunResult r = sh(
        "unshare -m --propagation private sh -c " +
        q("mount -t tmpfs -o mode=1777,size=1m tmpfs /dev/shm\n" + start_hold(d, kNobody + q(need_built("security_forger"))) +
          "crashed=0\nfor i in $(seq 1 300); do " + q(inspect_tool()) +
          " $P > /dev/null 2>&1 && rc=0 || rc=$?; [ $rc -lt 64 ] || crashed=$((crashed+1)); done\n"
          "for i in $(seq 1 10); do " + q(inspect_tool()) +
          " --all > /dev/null 2>&1 && rc=0 || rc=$?; [ $rc -lt 64 ] || crashed=$((crashed+1)); done\n"
          "kill $P; echo crashed $crashed\n" + q(inspect_tool()) + " $P || true\n"));
    cr_assert(contains(r.out, "crashed 0\n"), "%s", r.describe().c_str());
}

// ---- 7. files the shim opens ---------------------------------------------------------------------

// Neither file is opened through a symlink, blocks on a FIFO, or appends to a file with other
// hard links.
Test(e2e_security, p07_log_and_stats_files_refuse_symlinks_and_fifos) {
    SharedDir d;
    const std::string pub = d.pub();
    const std::string passwd = victim(d, "passwd", kPasswd), shadow = victim(d, "shadow", "root:*:1::::::\n");
    const RunResult plant = sh(kNobody + "sh -c " +
                               q("ln -s " + q(passwd) + " " + q(pub + "/log") + "; ln -s " + q(shadow) + " " +
                                 q(pub + "/stats.json") + "; mkfifo " + q(pub + "/fifo")));
    cr_assert(plant.exited_with(0), "%s", plant.describe().c_str());
    auto config = [&](const std::string &name, const std::string &extra) {
        const std::string path = d.file(name);
        cr_assert(write_file(path, R"({"version": 1, "rules": [{"name": "keys", "size": 32}], )" + extra + "}"));
        return path;
    };
    const std::string hello = need_built("e2e_hello");
    auto run_hello = [&](const std::string &cfg) {
        RunOptions o = plain_env({"env", "LD_PRELOAD=" + shim_library(), "MEMLOCK_SHIM_CONFIG=" + cfg, hello});
        o.timeout_ms = 20000;
        return run_program(o);
    };
    const std::string to_link = config("link.json", R"("log": {"file": ")" + pub + R"(/log"})");
    RunResult r = run_hello(to_link);
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    // (Where fs.protected_symlinks is 1, the kernel refuses first, with EACCES.)
    cr_assert(contains(r.err, "log.file: cannot open " + pub + "/log: it is a symbolic link\n") ||
                  contains(r.err, "log.file: cannot open " + pub + "/log: EACCES"),
              "%s", r.err.c_str());
    assert_unchanged(passwd, kPasswd);

    r = run_hello(config("fifo.json", R"("log": {"file": ")" + pub + R"(/fifo"})"));
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "log.file: cannot open " + pub + "/fifo: not a regular file\n"), "%s", r.err.c_str());

    // Another name of a file elsewhere (here root's own): root does not append to it.
    cr_assert_eq(::link(passwd.c_str(), (pub + "/hard").c_str()), 0);
    r = run_hello(config("hard.json", R"("log": {"file": ")" + pub + R"(/hard"})"));
    cr_assert(r.exited_with(78), "%s", r.describe().c_str());
    cr_assert(contains(r.err, "log.file: cannot open " + pub + "/hard: it has other hard links\n"), "%s",
              r.err.c_str());
    assert_unchanged(passwd, kPasswd);

    r = run_hello(config("stats.json", R"("stats": {"file": ")" + pub + R"(/stats.json"})"));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_unchanged(shadow, "root:*:1::::::\n");
    struct stat st;
    cr_assert_eq(::lstat((pub + "/stats.json").c_str(), &st), 0);
    cr_assert(S_ISREG(st.st_mode), "stats.file is not a regular file");
    cr_assert_eq(st.st_mode & 07777, 0600u, "stats.file mode %o", st.st_mode & 07777);
    cr_assert_eq(stat_value(read_stats(pub + "/stats.json"), "matched_allocations"), 1u);

    r = run_hello(config("fifo-stats.json", R"("stats": {"file": ")" + pub + R"(/fifo"})"));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
}

// ---- 8. programs fails closed ------------------------------------------------------------------

Test(e2e_security, p08_programs_applies_without_proc) {
    SharedDir d;
    need_built("security_hold");
    const std::string config = d.file("rules.json"), stats = d.file("stats.json");
    cr_assert(write_file(config, R"({"version": 1, "programs": ["security_hold"],
        "rules": [{"name": "keys", "size": 32}], "stats": {"file": ")" + stats + R"("}})"));
    const RunResult r = sh("unshare -m --propagation private sh -c " +
                           q("umount -l /proc\n" + shimmed(config) + q(hold()) + " < /dev/null"));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_eq(stat_value(read_stats(stats), "matched_allocations"), 32u);
}

// ---- 9. memlock-run follows the interpreter chain -------------------------------------------------

Test(e2e_security, p09_memlock_run_follows_env_to_a_static_program) {
    SharedDir d;
    need_built("tools_static");
    const std::string prog = d.file("static-prog");
    cr_assert(sh("cp " + q(shim_program("tools_static")) + " " + q(prog)).exited_with(0));
    for (const char *line : {"#!/usr/bin/env ./static-prog\n", "#!/usr/bin/env -S A=1 static-prog -x\n"}) {
        const std::string script = d.file("script");
        cr_assert(write_file(script, line, 0755));
        RunOptions o = plain_env({run_tool(), "--check", "--config", source_dir() + "/config/size-only.json", "--",
                                  "./script"});
        o.cwd = d.dir.path();
        o.env = {{"PATH", d.dir.path() + ":/usr/bin:/bin"}};
        const RunResult r = run_program(o);
        cr_assert(r.exited_with(126), "%s: %s", line, r.describe().c_str());
        cr_assert(contains(r.err, "static-prog: statically linked"), "%s: %s", line, r.err.c_str());
    }
}

// ---- 10. memlock-inspect opens nothing the target chose ---------------------------------------------

// The target's config path (from its environment) becomes a FIFO with a writer waiting (as
// nobody) for a reader: memlock-inspect, as root, must not open it (a device node would be
// opened the same way).
Test(e2e_security, p10_inspect_never_opens_the_targets_config) {
    SharedDir d;
    const std::string pub = d.pub();
    const std::string config = pub + "/rules.json", opened = pub + "/opened";
    const RunResult r = sh(kNobody + "sh -c " + q("cat > " + q(config) + " <<'EOF'\n" + e2e_rules_config("") + "\nEOF\n") +
                           "\n" + start_hold(d, kNobody + shimmed(config) + q(hold())) + kNobody + "sh -c " +
                           q("rm " + q(config) + "; mkfifo " + q(config)) + "\n" + kNobody + "sh -c " +
                           q("echo x > " + q(config) + " && touch " + q(opened)) + " & W=$!\ntimeout 20 " +
                           q(inspect_tool()) + " $P && echo rc=0 || echo rc=$?\nsleep 0.5\n[ -e " + q(opened) +
                           " ] && echo opened || echo not opened\nkill $W 2>/dev/null || true\n" + kEndHold);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(contains(r.out, "): protected\n") && contains(r.out, "rc=0\n") && contains(r.out, "not opened\n"), "%s",
              r.describe().c_str());
}

// ---- 11. MEMLOCK_SHIM_ON_CONFIG_ERROR is checked at every start ---------------------------------------

Test(e2e_security, p11_bad_on_config_error_is_reported_with_a_good_config) {
    SharedDir d;
    const std::string config = prepare_e2e(d.dir, "e2e_hello", false);
    RunOptions o = shim_options(config, {need_built("e2e_hello")});
    o.env.push_back({"MEMLOCK_SHIM_ON_CONFIG_ERROR", "run_unprotected"});
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    assert_log_eq(r.err, "memlock-shim: warning: MEMLOCK_SHIM_ON_CONFIG_ERROR=\"run_unprotected\" is not "
                     "\"run-unprotected\" or \"fail\": a config error will stop this program (fail)\n");
}

// ---- 12. an impossible size is not "denied" ------------------------------------------------------

Test(e2e_security, p12_malloc_size_max_under_match_all_is_not_denied) {
    SharedDir d;
    const RunResult r = sh(start_hold(d, shimmed(source_dir() + "/config/match-all.json") + q(hold()) + " huge") +
                           q(inspect_tool()) + " --json $P && echo rc=0 || echo rc=$?\n" + kEndHold);
    cr_assert(contains(r.out, "rc=0\n"), "%s", r.describe().c_str());
    const auto j = nlohmann::json::parse(r.out.substr(0, r.out.rfind("rc=")), nullptr, false);
    cr_assert(!j.is_discarded(), "%s", r.out.c_str());
    cr_assert_eq(j["counters"]["denied"].get<int>(), 0);
    const std::string status = j["status"].get<std::string>();
    cr_assert_str_eq(status.c_str(), "protected");
}

// ---- memlock-inspect across users --------------------------------------------------------------------

// Root without CAP_SYS_PTRACE (a container's root) sees another user's process by becoming
// that user; where the kernel refuses (a non-dumpable process, which that user may not read
// either), the status is unknown, exit 3, with the remedy, and --all lists it.
Test(e2e_security, inspect_across_users_and_unknown) {
    SharedDir d;
    const std::string config = prepare_e2e(d.dir, "security_hold", false);
    // capsh runs the command with sh -c: $P is expanded before.
    auto no_ptrace = [](const std::string &args) {
        return "capsh --drop=cap_sys_ptrace -- -c \"" + inspect_tool() + " " + args + "\"";
    };
    const RunResult r = sh(start_hold(d, kNobody + shimmed(config) + q(hold())) + no_ptrace("--json $P") + " && echo rc=0 || echo rc=$?\n" + kEndHold);
    cr_assert(contains(r.out, "\"status\": \"protected\"") && contains(r.out, "\"read_as_uid\": 65534") &&
                  contains(r.out, "rc=0\n"),
              "%s", r.describe().c_str());

    const RunResult u =
        sh(start_hold(d, kNobody + shimmed(config) + q(hold()) + " nodump") + no_ptrace("$P") +
           " && echo rc=0 || echo rc=$?\n" + no_ptrace("--all --json") + " > " +
           q(d.file("all.json")) + " || true\necho pid $P\n" + kEndHold);
    cr_assert(contains(u.out, "): unknown: the kernel refuses to show its memory (Permission denied): the process is "
                              "not dumpable") &&
                  contains(u.out, "run it with CAP_SYS_PTRACE") && contains(u.out, "rc=3\n"),
              "%s", u.describe().c_str());
    const auto all = nlohmann::json::parse(read_stats(d.file("all.json")), nullptr, false);
    const auto pid = line_value(u.out, "pid");
    cr_assert(pid && all.is_array(), "%s", u.describe().c_str());
    bool listed = false;
    for (const auto &p : all)
        if (p["pid"].get<int>() == std::stoi(*pid)) {
            listed = p["status"] == "unknown";
            // Not dumpable: its own user may not read it either, so memlock-inspect does not try.
            cr_assert(!p.contains("read_as_uid"), "%s", p.dump().c_str());
        }
    cr_assert(listed, "--all does not list %s as unknown", pid->c_str());
}

// ---- a sandboxed fork child exits cleanly ----------------------------------------------------------

// sshd's preauth child installs a seccomp filter after fork; the shim's exit path in it makes no
// open, unlink or rename (stats.file is written only by the process that read the config), and
// a fork inside the sandbox creates nothing (the child's counters page is its copy-on-write
// copy of the parent's, no new memfd).
Test(e2e_security, sandboxed_fork_child_exits_without_forbidden_calls) {
    SharedDir d;
    const std::string config = prepare_e2e(d.dir, "security_sandbox", true);
    const RunResult r = run_program(shim_options(config, {need_built("security_sandbox")}));
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert_str_eq(r.out.c_str(), "child exited 0\n");
    cr_assert_str_empty(r.err.c_str());
}

// ---- no memfd_create (kernels before 3.17) --------------------------------------------------------

// Under a seccomp filter that answers ENOSYS to memfd_create, the counters live in a shared
// anonymous page: the program is protected and memlock-inspect still finds them.
Test(e2e_security, counters_without_memfd_create) {
    SharedDir d;
    const std::string config = prepare_e2e(d.dir, "security_enosys", false);
    const RunResult r = sh(start_hold(d, q(need_built("security_enosys")) + " " + shimmed(config) + q(hold())) +
                           "grep -c memfd: /proc/$P/maps || true\n" + q(inspect_tool()) +
                           " $P && echo rc=0 || echo rc=$?\n" + kEndHold);
    cr_assert(r.exited_with(0), "%s", r.describe().c_str());
    cr_assert(r.out.rfind("0\n", 0) == 0, "the program maps a memfd: %s", r.out.c_str());
    cr_assert(contains(r.out, "): protected\n") && contains(r.out, "matched allocations 64,") &&
                  contains(r.out, "rc=0\n"),
              "%s", r.describe().c_str());
}
