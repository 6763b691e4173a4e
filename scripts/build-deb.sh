#!/bin/sh
# Builds BUILD/memlock-shim_VERSION_ARCH.deb with dpkg's own tools.
# Usage: scripts/build-deb.sh BUILD VERSION MULTIARCH   (run by `make deb`)
#
# 1. a build of its own (BUILD/deb/build) for the installed paths: PREFIX=/usr, the
#    libraries in /usr/lib/MULTIARCH, /etc, so the tools carry the package's LIBDIR;
# 2. `make install` of it into BUILD/deb/root, with debian/config.json (no rules: it protects
#    nothing until the operator adds some) as the only file in /etc/memlock-shim;
# 3. Debian's layout: compressed man pages and changelogs, copyright, lintian overrides;
# 4. DEBIAN/control from debian/control by dpkg-gencontrol, Depends from dpkg-shlibdeps,
#    conffiles, shlibs (libmemlock.so.0), the ldconfig trigger, md5sums; dpkg-deb --build.
set -eu
B=$1 VERSION=$2 MULTIARCH=$3
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
DEB=$B/memlock-shim_${VERSION}_$ARCH.deb
ROOT=$B/deb/root
DOC=$ROOT/usr/share/doc/memlock-shim

mkdir -p "$B/deb"
echo "build-deb: building for /usr (in $B/deb/build)" >&2
make --no-print-directory B="$B/deb/build" PREFIX=/usr LIBDIR="/usr/lib/$MULTIARCH" SYSCONFDIR=/etc core shim tools man \
    >"$B/deb/build.log" 2>&1 || { tail -30 "$B/deb/build.log" >&2; exit 1; }
rm -rf "$ROOT" && mkdir -p "$ROOT"
make --no-print-directory -s B="$B/deb/build" PREFIX=/usr LIBDIR="/usr/lib/$MULTIARCH" SYSCONFDIR=/etc \
    ETC_CONFIGS=debian/config.json DESTDIR="$(realpath "$ROOT")" install >/dev/null

# Stripped objects (as dh_strip does), shared libraries mode 0644.
strip --remove-section=.comment --remove-section=.note "$ROOT"/usr/bin/memlock-*
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$ROOT/usr/lib/$MULTIARCH"/*.so*
chmod 644 "$ROOT/usr/lib/$MULTIARCH"/*.so*

# Debian's layout of the documentation.
gzip -9n "$ROOT"/usr/share/man/man*/*
mv "$DOC/CHANGELOG.md" "$DOC/changelog"
gzip -9n "$DOC/changelog"
gzip -9nc debian/changelog > "$DOC/changelog.Debian.gz"
install -m 644 debian/copyright "$DOC/copyright"
install -D -m 644 debian/lintian-overrides "$ROOT/usr/share/lintian/overrides/memlock-shim"

# Control files.
mkdir -p "$ROOT/DEBIAN"
rm -f "$B/deb/substvars"
dpkg-shlibdeps -T"$B/deb/substvars" -e"$ROOT/usr/bin/memlock-run" -e"$ROOT/usr/bin/memlock-inspect" \
    -e"$ROOT/usr/lib/$MULTIARCH/libmemlock_shim.so" -e"$ROOT/usr/lib/$MULTIARCH/libmemlock.so.0"
dpkg-gencontrol -Vmisc:Depends= -pmemlock-shim -v"$VERSION" -P"$ROOT" -T"$B/deb/substvars" -f"$B/deb/files"
echo /etc/memlock-shim/config.json > "$ROOT/DEBIAN/conffiles"
echo "libmemlock 0 memlock-shim (>= ${VERSION%-*})" > "$ROOT/DEBIAN/shlibs"
echo "activate-noawait ldconfig" > "$ROOT/DEBIAN/triggers"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$ROOT/DEBIAN/md5sums"
chmod 644 "$ROOT"/DEBIAN/*

rm -f "$B"/memlock-shim_*.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >&2
echo "$DEB"
