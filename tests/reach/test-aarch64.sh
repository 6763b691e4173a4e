#!/bin/sh
# The aarch64 tarball under qemu-user: an aarch64 program (tests/progs/e2e_layout.c, cross-
# compiled) runs under qemu-aarch64 with the unpacked tarball's shim preloaded; while it holds
# its blocks, the qemu process has memory locked (VmLck; none without the shim), and at exit
# the shim's own counters report its matched blocks served locked, with no lock failure
# (qemu-user has no MLOCK_ONFAULT: the arena mlocks its slabs as it commits them). The same
# again with the 16 and 64 KiB pages of some arm64 kernels (qemu-aarch64 -p: the guest's
# sysconf(_SC_PAGESIZE), and its mappings aligned to that), and under those page sizes the
# allocator conformance program (tests/progs/conformance.c: alignment incl. valloc/pvalloc,
# overflow, realloc, usable size, threads, fork) with every allocation matched and with size
# rules, each expected to report 0 failed and exit 0. What qemu-user cannot show (the guest's
# MADV_DONTDUMP in a core dump; a kernel's own handling of large pages: qemu maps them from the
# host's 4 KiB pages) stays with the x86-64 tests and docs/operators.md.
# Usage: test-aarch64.sh AARCH64_BUILD_DIR TARBALL
TEST_NAME=test-aarch64
BUILD=$(cd "$1" && pwd)
TARBALL=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
TOP=$(cd "$(dirname "$0")/../.." && pwd)
. "$TOP/tests/containers/lib.sh"

SYSROOT=/usr/aarch64-linux-gnu
command -v qemu-aarch64 > /dev/null || fail "qemu-aarch64 missing (package qemu-user)"
[ -f "$TARBALL" ] || fail "$TARBALL: no tarball (run make dist ARCH=aarch64)"
WORK=$BUILD/reach-qemu
rm -rf --one-file-system "$WORK" && mkdir -p "$WORK/tree" || fail "cannot make $WORK"
on_exit "rm -rf --one-file-system '$WORK'"
tar -C "$WORK/tree" --strip-components=1 -xzf "$TARBALL" || fail "cannot unpack $TARBALL"
sh "$TOP/scripts/check-abi" "$WORK/tree/lib/libmemlock_shim.so" "$WORK/tree/bin/"* > /dev/null ||
    fail "the aarch64 tree fails the ABI check"
aarch64-linux-gnu-gcc -std=gnu11 -O1 -fno-builtin "$TOP/tests/progs/e2e_layout.c" -o "$WORK/e2e_layout" ||
    fail "cannot cross-compile the test program"
aarch64-linux-gnu-gcc -std=gnu11 -O1 -fno-builtin -pthread "$TOP/tests/progs/conformance.c" -o "$WORK/conformance" ||
    fail "cannot cross-compile the conformance program"
cat > "$WORK/rules.json" << EOF
{"version": 1, "rules": [{"name": "keys", "size": 32}, {"name": "buffers", "min_size": 512, "max_size": 2048}],
 "stats": {"file": "$WORK/stats.json"}}
EOF
# Size rules for the conformance program: small blocks (slabs) and large ones (page runs).
cat > "$WORK/sizes.json" << EOF
{"version": 1, "rules": [{"name": "keys", "size": 32}, {"name": "buffers", "min_size": 512, "max_size": 2048},
 {"name": "large", "min_size": 100000}]}
EOF

# Runs the program under qemu (extra -E settings: $@) until it holds its blocks; prints VmLck
# (kB) of the qemu process, then lets it finish.
vmlck_while_holding() {
    # The output file is removed first: the job opens the fifo before it truncates the file,
    # and the wait below must not read "ready" from the previous run.
    fifo=$WORK/stdin
    rm -f "$fifo" "$WORK/out" && mkfifo "$fifo"
    qemu-aarch64 -L "$SYSROOT" "$@" "$WORK/e2e_layout" < "$fifo" > "$WORK/out" 2>&1 &
    qpid=$!
    exec 7> "$fifo"
    on_exit "kill $qpid 2> /dev/null"
    wait_for 300 grep -q '^ready$' "$WORK/out" || fail "the program did not start: $(cat "$WORK/out")"
    sed -n 's/^VmLck:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$qpid/status"
    exec 7>&-
    wait "$qpid" || fail "the program failed: $(cat "$WORK/out")"
    grep -q '^done$' "$WORK/out" || fail "the program did not finish: $(cat "$WORK/out")"
}

step "an aarch64 program under qemu-aarch64, without the shim"
plain=$(vmlck_while_holding)
[ "$plain" -eq 0 ] || fail "qemu has memory locked without the shim ($plain kB): the comparison proves nothing"

# The program under the shim with pages of $1 bytes (qemu -p): VmLck above 0 while it holds
# its blocks, and at exit the shim's counters show its 5 matched blocks served locked, with
# no lock failure.
held_locked() {
    rm -f "$WORK/stats.json"
    shim=$(vmlck_while_holding -p "$1" -E "LD_PRELOAD=$WORK/tree/lib/libmemlock_shim.so" \
        -E "MEMLOCK_SHIM_CONFIG=$WORK/rules.json")
    step "$1-byte pages: VmLck of qemu while the program holds its blocks: $plain kB without the shim, $shim kB with it"
    [ "$shim" -gt 0 ] || fail "$1-byte pages: nothing locked with the shim: $(cat "$WORK/out" "$WORK/stats.json" 2> /dev/null)"
    stats=$(cat "$WORK/stats.json") || fail "$1-byte pages: the shim wrote no counters"
    stats=$(printf '%s' "$stats" | sed 's/, "per_rule": .*//')  # the process's counters, not a rule's
    matched=$(printf '%s' "$stats" | sed -n 's/.*"matched_allocations": \([0-9]*\).*/\1/p')
    locked=$(printf '%s' "$stats" | sed -n 's/.*"locked_bytes": \([0-9]*\).*/\1/p')
    failures=$(printf '%s' "$stats" | sed -n 's/.*"lock_failures": \([0-9]*\).*/\1/p')
    [ "${matched:-0}" -ge 5 ] || fail "$1-byte pages: the shim's counters do not show the 5 matched blocks: $stats"
    [ "${locked:-0}" -gt 0 ] && [ "${failures:-1}" -eq 0 ] ||
        fail "$1-byte pages: the shim's counters do not show the 5 blocks served locked: $stats"
    step "$1-byte pages: $matched matched allocations, $locked bytes locked, no lock failure"
}

# The conformance program under the shim with pages of $1 bytes and config $2: it exits 0
# and reports "conformance: N checks, 0 failed".
conforms() {
    out=$WORK/conformance.out
    what="$1-byte pages, $(basename "$2")"
    rc=0
    qemu-aarch64 -L "$SYSROOT" -p "$1" -E "LD_PRELOAD=$WORK/tree/lib/libmemlock_shim.so" -E "MEMLOCK_SHIM_CONFIG=$2" \
        "$WORK/conformance" > "$out" 2>&1 || rc=$?
    summary=$(grep '^conformance: [0-9]* checks, 0 failed$' "$out") && [ "$rc" -eq 0 ] ||
        fail "$what: the conformance program failed (exit $rc): $(grep -v '^memlock-shim: warning' "$out" | tail -n 20)"
    step "$what: $summary"
}

held_locked 4096
for page in 16384 65536; do
    held_locked "$page"
    conforms "$page" "$TOP/config/match-all.json"
    conforms "$page" "$WORK/sizes.json"
done
step "passed"
