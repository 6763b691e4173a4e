#!/bin/sh
# The container recipes for real, with podman: builds the layer image (Dockerfile.layer) and,
# with Dockerfile.example unchanged, an image FROM a base made of a Debian 11 root; runs a
# program that handles SIGTERM itself with --cap-add IPC_LOCK; checks that PID 1 is protected
# (memlock-inspect inside the container and from the host; the arena's lo/dd flags from the
# host), and that `podman stop` ends the
# program through its own handler. Also runs the layer image's copier as an initContainer does.
# Usage: test-image.sh BUILD_DIR   (after `make container-layer`)
TEST_NAME=test-image
BUILD=$(cd "$1" && pwd)
TOP=$(cd "$(dirname "$0")/../.." && pwd)
. "$TOP/tests/containers/lib.sh"

TREE=$BUILD/container/layer/opt/memlock-shim
[ -x "$TREE/bin/memlock-run" ] || fail "$TREE: no tree (run make container-layer)"
LAYER=localhost/memlock-shim-layer:test
IMAGE=localhost/memlock-test-program:test
CTR=memlock-test-image-$$

step "building the layer image (deploy/container/Dockerfile.layer)"
pm build -q -f "$TOP/deploy/container/Dockerfile.layer" -t "$LAYER" "$BUILD/container/layer" > /dev/null ||
    fail "podman build of Dockerfile.layer failed"

# The base: a Debian 11 root (glibc 2.31, OpenSSL 1.1.1), as an image that has never seen
# this project: the tree must run there as it is.
need=$(glibc_needed "$TREE")
case "$need" in
2.[0-9] | 2.[12][0-9] | 2.3[01]) ;;
*) fail "the tree needs GLIBC_${need:-?}: it cannot run in a Debian 11 image (glibc 2.31); see scripts/check-abi" ;;
esac
step "base image: a Debian 11 root (debootstrap, cached; the same root as tests/reach/test-bullseye.sh)"
BASE=$(base_image bullseye openssl)

step "building the program image (deploy/container/Dockerfile.example, BASE=$BASE)"
ctx=$BUILD/container/empty-context
mkdir -p "$ctx"
pm build -q -f "$TOP/deploy/container/Dockerfile.example" --build-arg "BASE=$BASE" --build-arg "LAYER=$LAYER" \
    -t "$IMAGE" "$ctx" > /dev/null || fail "podman build of Dockerfile.example failed"

# The program: perl from the base (so, the base's glibc and libraries), keeping many small
# strings (32 and 64-byte blocks, which size-rules.json matches: default.json, the OpenSSL key profile, matches nothing in perl) and exiting 3 on SIGTERM.
PROGRAM='$| = 1;
$SIG{TERM} = sub { print "program: SIGTERM handled, exiting 3\n"; exit 3 };
my @keys = map { sprintf("%030d", $_) } 1 .. 4000;
print "program: ready\n";
sleep 1 while 1;'

on_exit "pm rm -f -t 0 $CTR > /dev/null 2>&1"
step "running it with --cap-add IPC_LOCK"
# shellcheck disable=SC2086
pm run -d --name "$CTR" $PODMAN_RUN_OPTS --network none --cap-add IPC_LOCK \
    -e MEMLOCK_SHIM_CONFIG=/opt/memlock-shim/etc/memlock-shim/size-rules.json "$IMAGE" perl -e "$PROGRAM" > /dev/null ||
    fail "podman run failed"
printed() { pm logs "$CTR" 2>&1 | grep -q "$1"; }
wait_for 100 printed 'program: ready' ||
    { pm logs "$CTR" >&2; fail "the program did not start"; }

step "memlock-inspect 1 inside the container"
out=$(pm exec "$CTR" /opt/memlock-shim/bin/memlock-inspect 1) || {
    printf '%s\n' "$out" >&2
    fail "memlock-inspect 1 in the container: exit $? (PID 1 not protected)"
}
printf '%s\n' "$out" | grep -qx 'pid 1 (/usr/bin/perl): protected' || fail "memlock-inspect 1 said: $out"
locked=$(pm exec "$CTR" /opt/memlock-shim/bin/memlock-inspect --json 1 |
    sed -n 's/.*"locked_bytes": *\([0-9]*\).*/\1/p')
[ "${locked:-0}" -gt 0 ] || fail "PID 1 has no locked bytes: the rules matched nothing"

hostpid=$(pm inspect --format '{{.State.Pid}}' "$CTR")
step "from the host: PID $hostpid (the container's PID 1)"
# What the kernel shows, whatever the tools: mappings that are locked and not dumped.
grep -q 'VmFlags:.* lo .*dd\|VmFlags:.* dd .*lo' "/proc/$hostpid/smaps" ||
    fail "no mapping of PID $hostpid is both locked (lo) and excluded from dumps (dd)"
# The counters are in a memfd read through /proc/PID/mem: memlock-inspect sees across PID namespaces.
out=$("$TREE/bin/memlock-inspect" "$hostpid") || fail "memlock-inspect $hostpid from the host: exit $?: $out"
printf '%s\n' "$out" | grep -qx "pid $hostpid (/usr/bin/perl): protected" || fail "memlock-inspect $hostpid said: $out"
"$TREE/bin/memlock-inspect" --all | grep -qx "pid $hostpid (/usr/bin/perl): protected" ||
    fail "memlock-inspect --all from the host leaves out PID $hostpid"

step "podman stop: the program ends through its own SIGTERM handler"
pm stop -t 20 "$CTR" > /dev/null || fail "podman stop failed"
code=$(pm inspect --format '{{.State.ExitCode}}' "$CTR")
printed 'program: SIGTERM handled' || fail "the program's handler did not run (exit $code)"
[ "$code" = 3 ] || fail "exit status $code, expected 3 (137 = killed after the stop timeout)"

step "the layer image's copier (what the Kubernetes initContainer runs)"
out_dir=$BUILD/container/copied
rm -rf "$out_dir" && mkdir -p "$out_dir"
# shellcheck disable=SC2086
pm run --rm $PODMAN_RUN_OPTS --network none -v "$out_dir:/out" "$LAYER" > /dev/null || fail "the layer image's copier failed"
diff -r "$TREE" "$out_dir" > /dev/null || fail "the copied tree differs from the layer's"
[ -x "$out_dir/bin/memlock-run" ] || fail "the copied memlock-run is not executable"

step "ok"
