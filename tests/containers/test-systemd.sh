#!/bin/sh
# systemd for real: boots systemd in podman (a Debian 12 root with systemd and nginx, the
# runtime's default capabilities: no CAP_IPC_LOCK), with the project installed by
# `make install DESTDIR=...` and deploy/systemd/memlock-shim.conf added unchanged as nginx's
# drop-in. Checks that nginx runs and serves, and that every process of nginx.service is
# protected: memlock-inspect inside the container (also --all), memlock-inspect from the host
# (host PIDs, also --all) and the kernel's lo/dd flags from the host. Also
# records the RLIMIT_MEMLOCK nginx got for LimitMEMLOCK=64M: the container's 8 MiB hard limit
# (docs/operators.md says what follows). sshd (ssh.service) runs under the same drop-in with the
# OpenSSH profile (docs/operators.md's recipe), without CAP_IPC_LOCK under that 8 MiB limit: a
# key login works, and the listener, a held connection's monitor and its sandboxed
# pre-authentication child are protected (memlock-inspect from the host: they are not dumpable).
# Usage: test-systemd.sh BUILD_DIR   (after make installed into BUILD_DIR/container/systemd-root)
TEST_NAME=test-systemd
BUILD=$(cd "$1" && pwd)
TOP=$(cd "$(dirname "$0")/../.." && pwd)
. "$TOP/tests/containers/lib.sh"

OVERLAY=$BUILD/container/systemd-root
DROPIN=$OVERLAY/etc/systemd/system/nginx.service.d/memlock-shim.conf
[ -x "$OVERLAY/usr/local/bin/memlock-inspect" ] || fail "$OVERLAY: nothing installed there"
IMAGE=localhost/memlock-test-systemd:test
CTR=memlock-test-systemd-$$

mkdir -p "$(dirname "$DROPIN")"
cp "$TOP/deploy/systemd/memlock-shim.conf" "$DROPIN"
# sshd: the drop-in with the OpenSSH profile, as docs/operators.md tells.
mkdir -p "$OVERLAY/etc/systemd/system/ssh.service.d"
sed 's,default.json,openssh.json,' "$TOP/deploy/systemd/memlock-shim.conf" \
    > "$OVERLAY/etc/systemd/system/ssh.service.d/memlock-shim.conf"
# A second service with the same drop-in, whose program (as nobody) keeps 12 MiB of matched
# 32-byte blocks: more than the 8 MiB systemd can give it. Started by the test, not at boot.
LIMIT_UNIT=$OVERLAY/etc/systemd/system/memlock-limit.service
mkdir -p "$LIMIT_UNIT.d"
cp "$TOP/deploy/systemd/memlock-shim.conf" "$LIMIT_UNIT.d/"
# perl's strings are not keys: the size rules match them (default.json is the OpenSSL profile).
printf '[Service]\nEnvironment=MEMLOCK_SHIM_CONFIG=/usr/local/etc/memlock-shim/size-rules.json\n' \
    > "$LIMIT_UNIT.d/zz-size-rules.conf"
cat > "$LIMIT_UNIT" << 'UNIT'
[Service]
User=nobody
ExecStart=/usr/bin/perl -e '$$| = 1; @k = map { sprintf("%%030d", $$_) } 1 .. 400000; print "ready\n"; sleep 1 while 1'
UNIT

step "base image: a Debian 12 root with systemd, nginx and openssh-server (debootstrap, cached)"
# shellcheck disable=SC2086
BASE=$(base_image $SYSTEMD_ROOT)
step "building the image: the base + make install DESTDIR + the drop-in"
printf 'FROM %s\nCOPY . /\n' "$BASE" > "$BUILD/container/Containerfile.systemd"
pm build -q -f "$BUILD/container/Containerfile.systemd" -t "$IMAGE" "$OVERLAY" > /dev/null ||
    fail "podman build of the systemd image failed"

on_exit "pm rm -f -t 0 $CTR > /dev/null 2>&1"
step "booting systemd in podman (default capabilities, no network)"
# shellcheck disable=SC2086
pm run -d --name "$CTR" $PODMAN_RUN_OPTS --network none --systemd=always "$IMAGE" /sbin/init > /dev/null ||
    fail "podman run /sbin/init failed"
in_ctr() { pm exec "$CTR" "$@"; }
wait_for 150 pm exec "$CTR" systemctl is-active -q nginx.service || {
    in_ctr systemctl status --no-pager nginx.service >&2 || true
    fail "nginx.service is not active"
}
in_ctr systemctl show -p Environment --value nginx.service | grep -q 'LD_PRELOAD=/usr/local/lib/libmemlock_shim.so' ||
    fail "the drop-in's LD_PRELOAD is not in nginx.service's environment"
reply=$(in_ctr bash -c 'exec 3<>/dev/tcp/127.0.0.1/80 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3')
case "$reply" in *" 200 "*) ;; *) fail "nginx under the shim does not serve: '$reply'" ;; esac

# Every process of the service, by its cgroup (numbers inside the container's PID namespace).
pids=$(in_ctr sh -c 'grep -l "/nginx.service\$" /proc/[0-9]*/cgroup' | sed 's|/proc/\([0-9]*\)/cgroup|\1|')
main=$(in_ctr systemctl show -p MainPID --value nginx.service)
set -- $pids
[ $# -ge 2 ] || fail "nginx.service has $# process(es), expected a master and workers: $pids"
step "nginx.service: MainPID $main, processes $(echo $pids)"

limit=$(in_ctr sh -c "sed -n 's/^Max locked memory *\\([0-9a-z]*\\) .*/\\1/p' /proc/$main/limits")
hard=$(in_ctr sh -c "sed -n 's/^Max locked memory *[0-9a-z]* *\\([0-9a-z]*\\) .*/\\1/p' /proc/1/limits")
step "LimitMEMLOCK=64M in the drop-in; nginx got RLIMIT_MEMLOCK $limit (the container's hard limit: $hard)"
# systemd cannot raise a hard limit above its own without CAP_SYS_RESOURCE: it keeps its own,
# and says nothing. docs/operators.md describes this and what the shim does at the limit.
want=67108864
[ "$hard" = unlimited ] || [ "$hard" -ge "$want" ] || want=$hard
[ "$limit" = "$want" ] || fail "nginx's RLIMIT_MEMLOCK is $limit, expected $want"

# The same processes as the host numbers them: those in the container's nginx.service cgroup.
cid=$(pm inspect --format '{{.Id}}' "$CTR")
hostpids=$(grep -l "libpod-$cid/system.slice/nginx.service\$" /proc/[0-9]*/cgroup 2> /dev/null | sed 's|/proc/\([0-9]*\)/cgroup|\1|')
[ "$(echo $hostpids | wc -w)" = $# ] || fail "the host sees nginx processes $(echo $hostpids), the container $(echo $pids)"
for pid in $pids; do
    # Inside, as root with the runtime's default capabilities (no CAP_SYS_PTRACE: memlock-inspect
    # reads a worker as its user, www-data).
    out=$(in_ctr /usr/local/bin/memlock-inspect "$pid") || fail "memlock-inspect $pid inside the container: $out"
    printf '%s\n' "$out" | grep -qx "pid $pid (/usr/sbin/nginx): protected" || fail "memlock-inspect $pid said: $out"
done
out=$(in_ctr /usr/local/bin/memlock-inspect --all) || fail "memlock-inspect --all inside: $out"
for pid in $pids; do
    printf '%s\n' "$out" | grep -qx "pid $pid (/usr/sbin/nginx): protected" || fail "memlock-inspect --all inside left out $pid: $out"
done
# From the host, with the host's PIDs; and the kernel's own flags.
# (other shimmed processes of the host may be degraded: only these lines count)
out=$("$BUILD/memlock-inspect" --all) || true
for hp in $hostpids; do
    grep -q 'VmFlags:.* lo .*dd\|VmFlags:.* dd .*lo' "/proc/$hp/smaps" ||
        fail "host PID $hp: no mapping is both locked (lo) and excluded from dumps (dd)"
    one=$("$BUILD/memlock-inspect" "$hp") || fail "memlock-inspect $hp from the host: $one"
    printf '%s\n' "$one" | grep -q "^pid $hp (/usr/sbin/nginx): protected" || fail "memlock-inspect $hp said: $one"
    printf '%s\n' "$out" | grep -q "^pid $hp (/usr/sbin/nginx): protected" || fail "memlock-inspect --all left out $hp: $out"
done

step "ssh.service under the drop-in with config/openssh.json: a key login, then memlock-inspect"
wait_for 150 pm exec "$CTR" systemctl is-active -q ssh.service || {
    in_ctr systemctl status --no-pager ssh.service >&2 || true
    fail "ssh.service is not active"
}
in_ctr systemctl show -p Environment --value ssh.service | grep -q 'MEMLOCK_SHIM_CONFIG=/usr/local/etc/memlock-shim/openssh.json' ||
    fail "the drop-in's MEMLOCK_SHIM_CONFIG is not in ssh.service's environment"
in_ctr sh -c 'mkdir -p -m 700 /root/.ssh && ssh-keygen -q -t ed25519 -N "" -f /root/.ssh/id_ed25519 &&
    cp /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys' || fail "cannot make a login key"
SSH="ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1"
reply=$(in_ctr $SSH echo ssh login ok) || true
[ "$reply" = "ssh login ok" ] || fail "ssh login under the shim failed: '$reply'; $(in_ctr journalctl -u ssh.service | tail -n 20)"
# A connection held before authentication: its monitor, and the child in sshd's seccomp sandbox.
in_ctr bash -c 'exec 3<>/dev/tcp/127.0.0.1/22 && printf "SSH-2.0-memlock-test\r\n" >&3 && exec sleep 600' > /dev/null 2>&1 &
holder=$!
on_exit "kill $holder 2> /dev/null"
smain=$(in_ctr systemctl show -p MainPID --value ssh.service)
wait_for 100 pm exec "$CTR" sh -c "pgrep -f '^sshd: \\[net\\]' > /dev/null" ||
    fail "no pre-authentication child for the held connection: $(in_ctr ps -eo pid,ppid,user,args)"
net=$(in_ctr pgrep -f '^sshd: \[net\]' | head -n 1)
[ "$(in_ctr sh -c "sed -n 's/^Seccomp:[[:space:]]*//p' /proc/$net/status")" = 2 ] ||
    fail "sshd's pre-authentication child $net is not in its seccomp sandbox"
# From the host: sshd's per-connection processes are not dumpable, and root in the container
# has no CAP_SYS_PTRACE, so only the host may read them (docs/operators.md, memlock-inspect).
shostpids=$(grep -l "libpod-$cid/system.slice/ssh.service\$" /proc/[0-9]*/cgroup 2> /dev/null | sed 's|/proc/\([0-9]*\)/cgroup|\1|')
[ "$(echo $shostpids | wc -w)" -ge 3 ] || fail "ssh.service has processes $(echo $shostpids), expected the listener, a monitor and its child"
for hp in $shostpids; do
    one=$("$BUILD/memlock-inspect" "$hp") || fail "memlock-inspect sshd $hp from the host: $one"
    printf '%s\n' "$one" | grep -q "^pid $hp (/usr/sbin/sshd): protected" || fail "memlock-inspect sshd $hp said: $one"
done
slimit=$(in_ctr sh -c "sed -n 's/^Max locked memory *\\([0-9a-z]*\\) .*/\\1/p' /proc/$smain/limits")
capeff=$(in_ctr sh -c "sed -n 's/^CapEff:[[:space:]]*//p' /proc/$smain/status")
[ $(( 0x$capeff >> 14 & 1 )) = 0 ] || fail "sshd has CAP_IPC_LOCK here (CapEff $capeff): the case is not tested"
vmlck=$(in_ctr sh -c "sed -n 's/^VmLck:[[:space:]]*//p' /proc/$smain/status")
if in_ctr journalctl -u ssh.service | grep -q 'by signal\|memlock-shim: warning'; then
    fail "ssh.service's journal: $(in_ctr journalctl -u ssh.service | tail -n 20)"
fi
step "sshd: login ok; host PIDs $(echo $shostpids) (listener, monitor, sandboxed child) protected; no CAP_IPC_LOCK, RLIMIT_MEMLOCK $slimit, listener VmLck $vmlck"
kill $holder 2> /dev/null

step "memlock-limit.service: the drop-in's LimitMEMLOCK=64M, 12 MiB of matched blocks, as nobody"
in_ctr systemctl start memlock-limit.service
wait_for 40 pm exec "$CTR" sh -c 'journalctl -u memlock-limit.service | grep -q ready' ||
    fail "memlock-limit.service did not start: $(in_ctr systemctl status --no-pager memlock-limit.service)"
lpid=$(in_ctr systemctl show -p MainPID --value memlock-limit.service)
llimit=$(in_ctr sh -c "sed -n 's/^Max locked memory *\\([0-9a-z]*\\) .*/\\1/p' /proc/$lpid/limits")
[ "$llimit" = "$want" ] || fail "memlock-limit.service's RLIMIT_MEMLOCK is $llimit, expected $want"
# The shim locks up to the limit, then serves matched blocks unlocked (policy fallback: still
# out of core dumps, still wiped), warns once, and memlock-inspect says degraded (exit 1).
status=0
out=$(in_ctr /usr/local/bin/memlock-inspect "$lpid") || status=$?
[ "$status" = 1 ] || fail "memlock-inspect $lpid: exit $status, expected 1 (degraded): $out"
printf '%s\n' "$out" | grep -qx "pid $lpid (/usr/bin/perl): degraded" || fail "memlock-inspect $lpid said: $out"
printf '%s\n' "$out" | grep -q 'fallback(s): arena memory served unlocked' || fail "no fallbacks reported: $out"
in_ctr journalctl -u memlock-limit.service | grep -q 'memlock-shim: warning: cannot lock arena memory (policy fallback' ||
    fail "the shim's warning is not in the service's journal"
step "at the limit: $(printf '%s\n' "$out" | grep -m1 'fallback(s)' | sed 's/^ *//')"

step "stopping the container (systemd shuts down)"
pm stop -t 30 "$CTR" > /dev/null || fail "podman stop failed"
step "ok"
