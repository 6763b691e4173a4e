# Shared by the container, systemd and Kubernetes tests (sourced; POSIX sh).
# Needs: BUILD (the build folder, absolute), TOP (the source tree). Sets up:
#   pm ARGS...        podman with the project's own storage under $BUILD/podman (images
#                     cached there between runs) and the runtime and limits this machine needs
#   step MESSAGE      progress on stderr
#   fail MESSAGE      message, then exit 1 (the EXIT trap cleans up)
#   base_image SUITE [PACKAGE...]   prints the name of a podman image made of a cached
#                     debootstrap root (scripts/debian-root.sh), imported once per root
#   on_exit COMMAND   runs COMMAND when the test exits (in reverse order), also on failure
set -eu

PODMAN_ROOT=$BUILD/podman
# The Debian 12 root the systemd and Kubernetes tests run.
SYSTEMD_ROOT="bookworm systemd systemd-sysv nginx procps openssh-server"
# runc: crun refuses this machine's hybrid cgroups. The ulimits: without them the runtime
# cannot set its defaults above the sandbox's hard limits. The tests' containers also run with
# --network none: nothing needs a network, and podman then needs no network plugin.
PODMAN_RUN_OPTS="--runtime /usr/sbin/runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096"

# Images persist under the build folder; the run state goes to a tmpfs (/run), one per build
# folder, so that after a reboot podman finds it gone and starts afresh.
PODMAN_RUN=/run/memlock-shim-podman-$(printf '%s' "$BUILD" | sha256sum | cut -c1-12)
pm() {
    podman --root "$PODMAN_ROOT/storage" --runroot "$PODMAN_RUN/run" --tmpdir "$PODMAN_RUN/tmp" \
        --storage-driver overlay --cgroup-manager cgroupfs --events-backend file --runtime /usr/sbin/runc "$@"
}

step() { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }
fail() {
    printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2
    exit 1
}

EXIT_ACTIONS=""
on_exit() { EXIT_ACTIONS="$*; $EXIT_ACTIONS"; }
run_exit_actions() {
    rc=$?
    set +e
    eval "$EXIT_ACTIONS"
    [ "$rc" -eq 0 ] || printf '%s: failed (exit %s)\n' "$TEST_NAME" "$rc" >&2
    exit "$rc"
}
trap run_exit_actions EXIT
trap 'exit 130' INT TERM

base_image() {
    root=$(sh "$TOP/scripts/debian-root.sh" "$BUILD/roots" "$@") || fail "no Debian root for $*"
    name=localhost/memlock-test-base:$(basename "$root")
    if ! pm image exists "$name"; then
        step "importing $root as $name" >&2
        tar -C "$root" -c . | pm import -q - "$name" > /dev/null || fail "podman import of $root failed"
    fi
    echo "$name"
}

# The highest GLIBC_x.y that the ELF files under DIR need (e.g. 2.36).
glibc_needed() {
    find "$1" -type f \( -name '*.so*' -o -perm -u+x \) -exec readelf -V {} + 2>/dev/null |
        sed -n 's/.*Name: GLIBC_\([0-9.]*\).*/\1/p' | sort -t. -k1,1n -k2,2n -u | tail -n 1
}

# Waits until COMMAND succeeds (checked every 0.2 s, at most TRIES times).
wait_for() {
    tries=$1
    shift
    while ! "$@" > /dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.2
    done
}
