#!/bin/sh
# The core library's tests and the config and rule unit tests, cross-built for aarch64 and run
# under qemu-user. Criterion re-executes its own binary for every test, so the aarch64 binaries
# must run as programs: through binfmt_misc (the entry Debian's qemu-user-static registers, or
# one this script registers for its run and removes after). Criterion's arm64 library comes
# from a cached Debian root of arm64 packages (scripts/debian-root.sh, ROOT_ARCH=arm64), which
# is also qemu's library prefix. Tests whose proof is the kernel's view of madvise or
# MLOCK_ONFAULT (qemu-user does not pass them through) skip with that reason; see
# docs/operators.md, "Where it runs".
# Usage: test-aarch64-units.sh   (from the top of the tree; make test-aarch64 runs it)
TEST_NAME=test-aarch64-units
TOP=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$TOP/build
. "$TOP/tests/containers/lib.sh"

qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64) || fail "qemu-aarch64 missing (package qemu-user-static)"
command -v mmdebstrap > /dev/null || fail "mmdebstrap missing (scripts/install-deps.sh installs it)"

step "arm64 libraries for the test binaries (Criterion; cached Debian root)"
ROOT=$(ROOT_ARCH=arm64 sh "$TOP/scripts/debian-root.sh" "$BUILD/roots" bookworm libcriterion3 libstdc++6) ||
    fail "no arm64 root with libcriterion3 and libstdc++6"
LIBDIR=$ROOT/usr/lib/aarch64-linux-gnu
[ -f "$LIBDIR/libcriterion.so.3" ] || fail "$LIBDIR/libcriterion.so.3 missing"

step "cross-building test_core and test_units for aarch64"
make -C "$TOP" --no-print-directory ARCH=aarch64 \
    CRITERION_LIB="$LIBDIR/libcriterion.so.3 -Wl,-rpath-link=$LIBDIR:$ROOT/lib/aarch64-linux-gnu" \
    build/aarch64/tests/test_core build/aarch64/tests/test_units > "$BUILD/aarch64-units.log" 2>&1 ||
    fail "the cross build failed (log: $BUILD/aarch64-units.log)"

step "binfmt_misc entry for aarch64 programs"
BINFMT=/proc/sys/fs/binfmt_misc
[ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT" ||
    fail "binfmt_misc is not available: Criterion's aarch64 tests cannot re-execute themselves"
handled=
for entry in "$BINFMT"/*; do
    case $entry in */register | */status) continue ;; esac
    if grep -q '^enabled' "$entry" && grep -q 'aarch64' "$entry"; then handled=$entry; fi
done
if [ -z "$handled" ]; then
    name=memlock-test-aarch64
    magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    printf ':%s:M::%s:%s:%s:F\n' "$name" "$magic" "$mask" "$qemu" > "$BINFMT/register" ||
        fail "cannot register $qemu with binfmt_misc"
    on_exit "echo -1 > $BINFMT/$name"
    handled=$BINFMT/$name
fi
step "aarch64 programs run through $(sed -n 's/^interpreter //p' "$handled")"

# Runs one test binary; fails unless every test passed or skipped for its stated reason.
run_units() {
    out=$BUILD/aarch64/tests/$1.out
    MEMLOCK_TEST_QEMU_USER=1 QEMU_LD_PREFIX=$ROOT "$BUILD/aarch64/tests/$1" --jobs=2 > "$out" 2>&1 ||
        fail "$1 under qemu-user: $(grep -E 'FAIL|Assertion|Synthesis' "$out" | head -n 20)"
    summary=$(grep 'Synthesis' "$out")
    [ -n "$summary" ] || fail "$1 under qemu-user printed no summary: $(tail -n 5 "$out")"
    step "$1 (aarch64, qemu-user): $summary"
}
run_units test_core
run_units test_units
step "passed"
