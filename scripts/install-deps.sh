#!/bin/sh
# Installs the Debian packages that building and testing memlock-shim need.
# Does nothing (and needs no privileges) when they are all present already.
set -eu

PACKAGES="build-essential pkg-config libcriterion-dev nlohmann-json3-dev libunwind-dev \
gdb libcap2-bin util-linux python3 perl git binutils file openssl libjemalloc2 \
clang-14 libclang-rt-14-dev"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-deps: not root and no sudo: install these packages first:$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
