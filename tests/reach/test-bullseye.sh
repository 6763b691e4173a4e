#!/bin/sh
# The relocatable tarball on a real older system: a Debian 11 root (glibc 2.31, OpenSSL 1.1.1;
# debootstrap, cached under BUILD/roots) gets the unpacked tarball at /opt/memlock-shim; then,
# chrooted with its own /proc, /dev and /dev/shm (a private mount namespace; the root itself
# stays untouched under an overlay):
#   - the tools run, and that system's programs run under memlock-run with a size rule and
#     with module rules, a depth-2 one matching far more than the same rule at depth 1;
#   - memlock-inspect, run inside, reports a live program protected;
#   - that system's openssl works under the shim: an s_server under the OpenSSL key profile
#     (config/openssl.json when it exists, else a module rule on libcrypto) completes a TLS
#     handshake, is reported protected, and a gcore taken from outside the chroot holds no
#     copy of its RSA key's prime p, while the same server without the shim holds some.
# Usage: test-bullseye.sh BUILD_DIR TARBALL
TEST_NAME=test-bullseye
BUILD=$(cd "$1" && pwd)
TARBALL=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
TOP=$(cd "$(dirname "$0")/../.." && pwd)

# Everything below runs in a private mount namespace: the mounts vanish with it.
if [ -z "${MEMLOCK_TEST_IN_NAMESPACE:-}" ]; then
    MEMLOCK_TEST_IN_NAMESPACE=1 exec unshare -m --propagation private sh "$0" "$@"
fi
. "$TOP/tests/containers/lib.sh"

[ -f "$TARBALL" ] || fail "$TARBALL: no tarball (run make dist)"
step "Debian 11 root (debootstrap, cached under $BUILD/roots)"
ROOT=$(sh "$TOP/scripts/debian-root.sh" "$BUILD/roots" bullseye openssl) || fail "no Debian 11 root"

WORK=$BUILD/reach/bullseye
M=$WORK/merged
rm -rf --one-file-system "$WORK" && mkdir -p "$WORK/upper" "$WORK/work" "$M" || fail "cannot make $WORK"
# Registered first, so run last: unmount (the /dev bind above all) before anything is removed.
on_exit "umount -R '$M' 2> /dev/null; rm -rf --one-file-system '$WORK'"
mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$WORK/upper,workdir=$WORK/work" "$M" || fail "overlay mount failed"
mount -t proc proc "$M/proc" && mount --bind /dev "$M/dev" && mount -t tmpfs tmpfs "$M/dev/shm" ||
    fail "cannot mount /proc, /dev, /dev/shm in the root"
mkdir -p "$M/opt/memlock-shim" && tar -C "$M/opt/memlock-shim" --strip-components=1 -xzf "$TARBALL" ||
    fail "cannot unpack $TARBALL"

inside() { chroot "$M" "$@"; }
RUN=/opt/memlock-shim/bin/memlock-run
INSPECT=/opt/memlock-shim/bin/memlock-inspect
# A counter of a stats file the shim wrote in the root (the process's, not a rule's in per_rule).
counter() { sed -e 's/, "per_rule": .*//' -n -e "s/.*\"$2\": \([0-9]*\).*/\1/p" "$M$1"; }
# Starts COMMAND... in the background inside the root, output in $M/tmp/NAME.log; sets pid
# (chroot and memlock-run exec: the program's) and kills it when the test ends.
start() {
    name=$1
    shift
    rm -f "$M/tmp/$name.log"  # a wait for its output must not read an earlier run's
    chroot "$M" "$@" < /dev/null > "$M/tmp/$name.log" 2>&1 &
    pid=$!
    on_exit "kill $pid 2> /dev/null"
}

glibc=$(inside ldd --version | sed -n '1s/.* //p')
openssl_version=$(inside openssl version | cut -d' ' -f2)
step "inside: glibc $glibc, OpenSSL $openssl_version"
case "$glibc" in 2.31) ;; *) fail "expected glibc 2.31 in the Debian 11 root, found '$glibc'" ;; esac
case "$openssl_version" in 1.1.1*) ;; *) fail "expected OpenSSL 1.1.1, found '$openssl_version'" ;; esac

VERSION=$(cat "$TOP/VERSION")
[ "$(inside $RUN --version)" = "memlock-run $VERSION" ] || fail "memlock-run does not run on glibc $glibc"
[ "$(inside $INSPECT --version)" = "memlock-inspect $VERSION" ] || fail "memlock-inspect does not run on glibc $glibc"

step "a size rule: sort and perl under memlock-run"
cat > "$M/tmp/size.json" << 'EOF'
{"version": 1, "rules": [{"name": "small-blocks", "min_size": 16, "max_size": 4096}],
 "stats": {"file": "/tmp/size.%p.json"}}
EOF
inside sort /etc/passwd /var/lib/dpkg/status > "$M/tmp/plain.out" || fail "sort failed without the shim"
inside $RUN --config /tmp/size.json -- sort /etc/passwd /var/lib/dpkg/status > "$M/tmp/shim.out" ||
    fail "sort failed under the shim"
cmp -s "$M/tmp/plain.out" "$M/tmp/shim.out" || fail "sort printed other bytes under the shim"
stats=$(ls "$M"/tmp/size.*.json | sed "s|^$M||")
[ "$(counter "$stats" matched_allocations)" -gt 0 ] || fail "sort: no allocation matched: $(cat "$M$stats")"
[ "$(counter "$stats" lock_failures)" -eq 0 ] || fail "sort: lock failures: $(cat "$M$stats")"

start perl $RUN --config /tmp/size.json -- perl -e '$| = 1; my @k = map { "k" x 40 } 1 .. 2000;
    print "ready\n"; sleep 1 while 1;'
wait_for 100 grep -q ready "$M/tmp/perl.log" || fail "perl did not start: $(cat "$M/tmp/perl.log")"
out=$(inside $INSPECT "$pid") || fail "memlock-inspect inside: perl not protected (exit $?): $out"
case "$out" in "pid $pid (/usr/bin/perl): protected"*) ;; *) fail "memlock-inspect inside said: $out" ;; esac
inside $INSPECT --json "$pid" | grep -q '"matched_allocations": [1-9]' || fail "perl: nothing matched"
kill "$pid"

step "module rules, depth 1 and depth 2: openssl genrsa"
for depth in 1 2; do
    cat > "$M/tmp/module$depth.json" << EOF
{"version": 1, "rules": [{"name": "openssl-callers", "module": "openssl", "depth": $depth}],
 "stats": {"file": "/tmp/module$depth.%p.json"}}
EOF
    inside $RUN --config "/tmp/module$depth.json" -- openssl genrsa -out "/tmp/genrsa$depth.pem" 1024 2> /dev/null ||
        fail "openssl genrsa failed under the depth-$depth module rule"
    inside openssl rsa -check -noout -in "/tmp/genrsa$depth.pem" > /dev/null || fail "the key made under the shim is bad"
done
d1=$(counter "$(ls "$M"/tmp/module1.*.json | sed "s|^$M||")" matched_allocations)
d2=$(counter "$(ls "$M"/tmp/module2.*.json | sed "s|^$M||")" matched_allocations)
step "allocations whose callers within depth N are in openssl's own code: depth 1: $d1, depth 2: $d2"
[ "$d2" -gt $((d1 + 50)) ] || fail "the depth-2 rule matched $d2 allocations, depth 1 $d1: no deeper frames seen"

if [ -f "$TOP/config/openssl.json" ]; then
    cp "$TOP/config/openssl.json" "$M/tmp/key-profile.json"
    profile="config/openssl.json"
else
    echo '{"version": 1, "rules": [{"name": "libcrypto", "module": "libcrypto.so*", "depth": 2}]}' > "$M/tmp/key-profile.json"
    profile="a module rule on libcrypto.so*, depth 2"
fi
step "openssl s_server under the key profile ($profile); a TLS handshake; gcore from outside"
inside openssl req -x509 -newkey rsa:2048 -nodes -keyout /tmp/key.pem -out /tmp/cert.pem -subj /CN=localhost \
    -days 2 > /dev/null 2>&1 || fail "cannot make a key"
# prime p as `openssl rsa -text` prints it (hex, big-endian, without a leading 00 byte).
P=$(inside openssl rsa -in /tmp/key.pem -noout -text | sed -n '/^prime1:/,/^prime2:/p' | grep '^ ' | tr -d ' :\n' |
    sed 's/^00//')
[ ${#P} -ge 32 ] || fail "cannot read the key's prime p"

# Copies of p's first 16 bytes, big-endian and byte-reversed (BIGNUM limbs), in a gcore of PID.
p_copies() {
    gdb -batch -nx -ex "set sysroot /proc/$1/root" -ex "gcore $WORK/core.$1" -p "$1" > "$WORK/gcore.log" 2>&1 ||
        fail "gcore of $1 failed: $(tail -n 5 "$WORK/gcore.log")"
    python3 -c 'import sys
core = open(sys.argv[1], "rb").read()
p = bytes.fromhex(sys.argv[2])[:16]
print(core.count(p) + core.count(p[::-1]))' "$WORK/core.$1" "$P"
    rm -f "$WORK/core.$1"
}

# A TCP port free on 127.0.0.1 now, outside the kernel's ephemeral range (the chroot shares the
# host's network, and other tests' clients and daemons may run beside this one).
free_port() {
    python3 -c 'import sys
sys.path.insert(0, sys.argv[1])
import keyproof
print(keyproof.free_ports(1))' "$TOP/scripts"
}

for mode in plain shim; do
    [ $mode = shim ] && pre="$RUN --config /tmp/key-profile.json --" || pre=""
    PORT=$(free_port) || fail "no free port on 127.0.0.1"
    # shellcheck disable=SC2086
    start s_server.$mode $pre openssl s_server -accept 127.0.0.1:$PORT -cert /tmp/cert.pem -key /tmp/key.pem -www
    wait_for 100 grep -q ACCEPT "$M/tmp/s_server.$mode.log" ||
        fail "s_server ($mode) did not start: $(cat "$M/tmp/s_server.$mode.log")"
    hs=$(printf 'GET / HTTP/1.0\r\n\r\n' | inside openssl s_client -connect 127.0.0.1:$PORT -ign_eof 2>&1)
    case "$hs" in *"Cipher is "*"HTTP/1.0 200 ok"*) ;; *) fail "TLS handshake with s_server ($mode) failed: $hs" ;; esac
    if [ $mode = shim ]; then
        out=$(inside $INSPECT "$pid") || fail "memlock-inspect inside: s_server not protected (exit $?): $out"
        case "$out" in "pid $pid (/usr/bin/openssl): protected"*) ;; *) fail "memlock-inspect inside said: $out" ;; esac
    fi
    copies=$(p_copies "$pid")
    step "s_server $mode: $copies copies of the prime p in its dump"
    eval "copies_$mode=$copies"
    kill "$pid"
    wait_for 100 sh -c "! kill -0 $pid" || fail "s_server ($mode) did not exit on SIGTERM"
done
[ "$copies_plain" -gt 0 ] || fail "without the shim the dump holds no copy of p: the search proves nothing"
[ "$copies_shim" -eq 0 ] || fail "under the shim the dump still holds $copies_shim copies of p"
step "passed (glibc $glibc, OpenSSL $openssl_version)"
