#!/bin/sh
# Usage: debian-root.sh CACHE SUITE [PACKAGE...]
# Makes a minimal Debian root of SUITE (debootstrap --variant=minbase, plus PACKAGEs) under
# CACHE once, and prints its path. The root is keyed by its inputs (suite, packages, mirror,
# FORMAT below), so changing any of them makes a new one; an unchanged one is reused as is.
# The mirror is the one apt is configured with (debian.sources or sources.list).
# ROOT_ARCH=ARCH (another CPU, e.g. arm64): the PACKAGEs and what they depend on are only
# extracted (mmdebstrap --variant=extract, nothing runs): a library tree for qemu-user's -L.
set -eu
# Raise when the way a root is made changes.
FORMAT=1
[ $# -ge 2 ] || { echo "usage: debian-root.sh CACHE SUITE [PACKAGE...]" >&2; exit 64; }
cache=$1 suite=$2
shift 2
packages=$(printf '%s\n' "$@" | sort -u | tr '\n' ',' | sed 's/^,//; s/,$//')

mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null |
    grep -v security | head -n 1 || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

arch=${ROOT_ARCH:-}
key=$(printf '%s\n' "$FORMAT" "$suite" "$packages" "$mirror" "$arch" | sha256sum | cut -c1-12)
root=$cache/$suite${arch:+-$arch}-$key
mkdir -p "$cache"
exec 9> "$cache/.lock"
flock 9
if [ -e "$root.complete" ]; then
    echo "$root"
    exit 0
fi
rm -rf "$root.tmp" "$root"
include=${packages:+--include=$packages}
if [ -n "$arch" ]; then
    echo "debian-root: $suite packages for $arch${packages:+ ($packages)} from $mirror" >&2
    # shellcheck disable=SC2086
    set -- mmdebstrap --arch="$arch" --variant=extract $include "$suite" "$root.tmp" "$mirror"
else
    echo "debian-root: debootstrap $suite${packages:+ with $packages} from $mirror (takes a minute or more)" >&2
    # shellcheck disable=SC2086
    set -- debootstrap --variant=minbase $include "$suite" "$root.tmp" "$mirror"
fi
if ! "$@" > "$root.log" 2>&1; then
    tail -n 20 "$root.log" >&2
    echo "debian-root: $1 $suite failed (whole log: $root.log)" >&2
    exit 1
fi
rm -rf "$root.tmp/var/cache/apt/archives/"*.deb "$root.tmp/var/lib/apt/lists/"* 2>/dev/null || true
mv "$root.tmp" "$root"
touch "$root.complete"
echo "debian-root: $root ready" >&2
echo "$root"
