#!/bin/sh
# deploy/kubernetes/: every manifest parses and wires the shim as the example means to
# (kube_manifest.py); the config in the ConfigMap passes `memlock-run --check`; then the pod is
# played with podman as the manifest says: the layer image's copier with the initContainer's
# args fills a volume (the emptyDir), and a server (nginx from the Debian 12 root) runs with
# that volume, the ConfigMap's file, the manifest's env and capabilities; its liveness probe
# (memlock-inspect 1) must pass.
# Usage: test-kubernetes.sh BUILD_DIR   (after `make container-layer`)
TEST_NAME=test-kubernetes
BUILD=$(cd "$1" && pwd)
TOP=$(cd "$(dirname "$0")/../.." && pwd)
. "$TOP/tests/containers/lib.sh"

OUT=$BUILD/container/kubernetes
rm -rf "$OUT" && mkdir -p "$OUT/emptydir"
step "parsing deploy/kubernetes/*.yaml"
python3 "$TOP/tests/containers/kube_manifest.py" "$TOP/deploy/kubernetes" "$OUT" >&2 || fail "the manifests are wrong"
# The check must catch a container without IPC_LOCK.
mkdir -p "$OUT/broken"
cp "$TOP"/deploy/kubernetes/*.yaml "$OUT/broken/"
sed -i 's/\["IPC_LOCK"\]/[]/' "$OUT/broken/memlock-shim-example.yaml"
if python3 "$TOP/tests/containers/kube_manifest.py" "$OUT/broken" "$OUT/broken" 2> "$OUT/broken.err"; then
    fail "kube_manifest.py accepted a container without IPC_LOCK"
fi
grep -q 'lacks IPC_LOCK' "$OUT/broken.err" || fail "kube_manifest.py: $(cat "$OUT/broken.err")"
. "$OUT/pod.sh"
"$BUILD/memlock-run" --check --config "$OUT/config/$(basename "$(printf '%s' "$ENV" | sed 's/.*MEMLOCK_SHIM_CONFIG=\([^ ]*\).*/\1/')")" > /dev/null ||
    fail "the ConfigMap's config does not pass memlock-run --check"

LAYER=localhost/memlock-shim-layer:test
CTR=memlock-test-kubernetes-$$
step "building the layer image"
pm build -q -f "$TOP/deploy/container/Dockerfile.layer" -t "$LAYER" "$BUILD/container/layer" > /dev/null ||
    fail "podman build of Dockerfile.layer failed"
# shellcheck disable=SC2086
BASE=$(base_image $SYSTEMD_ROOT)

step "initContainer: the layer image with args [$INIT_ARGS], the emptyDir at $INIT_MOUNT"
# shellcheck disable=SC2086
pm run --rm $PODMAN_RUN_OPTS --network none -v "$OUT/emptydir:$INIT_MOUNT" "$LAYER" $INIT_ARGS > /dev/null ||
    fail "the initContainer failed"

step "server: the emptyDir at $SHIM_MOUNT, the ConfigMap at $CONFIG_MOUNT, caps $CAPS"
set --
for e in $ENV; do set -- "$@" -e "$e"; done
for c in $CAPS; do set -- "$@" --cap-add "$c"; done
on_exit "pm rm -f -t 0 $CTR > /dev/null 2>&1"
# shellcheck disable=SC2086
pm run -d --name "$CTR" $PODMAN_RUN_OPTS --network none "$@" -v "$OUT/emptydir:$SHIM_MOUNT:ro" \
    -v "$OUT/config:$CONFIG_MOUNT:ro" "$BASE" /usr/sbin/nginx -g 'daemon off;' > /dev/null || fail "podman run failed"
wait_for 100 pm exec "$CTR" sh -c 'test "$(cat /proc/1/comm)" = nginx && grep -q "/memlock-shim" /proc/1/maps' ||
    { pm logs "$CTR" >&2; fail "the server did not start under the shim"; }
step "liveness probe: $PROBE"
# shellcheck disable=SC2086
out=$(pm exec "$CTR" $PROBE) || fail "the liveness probe fails (exit $?): $out"
printf '%s\n' "$out" | grep -qx 'pid 1 (/usr/sbin/nginx): protected' || fail "the probe said: $out"
step "ok"
