#!/bin/sh
# Packaging tests (make test-packaging, part of make test). Usage: tests/packaging/run.sh BUILD DEB_VERSION
#
#  1. every man page renders with groff, warnings as errors (-ww), and none is missing;
#  2. bash completion of memlock-run and memlock-inspect completes options and values;
#  3. the Prometheus service of deploy/prometheus writes a file promtool accepts, atomically;
#  4. the package: dpkg-deb -c (every path the issue names), dpkg-deb -I (Depends, conffiles,
#     shlibs, trigger), lintian without errors or warnings (overrides say why);
#  5. apt-get install ./the.deb in a throwaway Debian 12 root (debootstrap minbase, cached in
#     BUILD/roots, used through an overlay so the cache never changes): the installed tools
#     find the installed shim, protect a program, the man pages are found; apt-get purge
#     leaves the root's files as they were.
# Needs root (debootstrap, mount namespaces). Prints one line per check; exits 1 on the first
# failure.
set -eu
B=$(realpath "$1") VERSION=$2
SRC=$(cd "$(dirname "$0")/../.." && pwd)
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
DEB=$B/memlock-shim_${VERSION}_$ARCH.deb
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "packaging: FAIL: $*" >&2; exit 1; }
ok() { echo "packaging: ok: $*"; }

# ---- 1. man pages ------------------------------------------------------------------------
for src in "$SRC"/docs/man/*.scd; do
    page=$B/man/$(basename "$src" .scd)
    [ -s "$page" ] || fail "$page was not built from $src"
    LC_ALL=C.UTF-8 MANWIDTH=80 groff -ww -z -man -Tutf8 "$page" 2> "$TMP/groff" || fail "groff failed on $page"
    [ ! -s "$TMP/groff" ] || fail "groff warns on $page: $(cat "$TMP/groff")"
    man -l "$page" 2>&1 | grep -q "^NAME" || fail "man -l $page shows no NAME section"
done
ok "man pages render without warnings: $(ls "$B"/man | tr '\n' ' ')"

# ---- 2. bash completion -------------------------------------------------------------------
cat > "$TMP/complete.bash" <<EOF
source /usr/share/bash-completion/bash_completion
source "$SRC/tools/bash-completion/memlock-run"
source "$SRC/tools/bash-completion/memlock-inspect"
cd "$SRC"
t() { COMP_WORDS=("\$@"); COMP_CWORD=\$((\${#COMP_WORDS[@]} - 1)); COMP_LINE="\${COMP_WORDS[*]}"
      COMP_POINT=\${#COMP_LINE}; COMPREPLY=(); \$fn "\$1" "\${COMP_WORDS[COMP_CWORD]}" "\${COMP_WORDS[COMP_CWORD-1]}"
      printf '%s\n' "\${COMPREPLY[@]}" | sort -u | tr '\n' ' '; echo; }
fn=_memlock_run
t memlock-run --c
t memlock-run --config config/match-n
t memlock-run --config config/default.json -- ech
fn=_memlock_inspect
t memlock-inspect --p
EOF
bash "$TMP/complete.bash" > "$TMP/complete.out" 2>/dev/null
printf '%s\n' "--check --config " "config/match-none.json " "echo " "--prometheus " > "$TMP/complete.want"
diff -u "$TMP/complete.want" "$TMP/complete.out" || fail "bash completion"
ok "bash completion: options, config files, the program after --, memlock-inspect options"

# ---- 3. the Prometheus textfile service ---------------------------------------------------
# Its ExecStart, with systemd's \$\$ turned into \$, run against a temporary directory while a
# shimmed program runs.
service=$SRC/deploy/prometheus/memlock-shim-metrics.service
cmd=$(sed -n "s/^ExecStart=\/bin\/sh -c '\(.*\)'$/\1/p" "$service" | sed 's/\$\$/$/g')
[ -n "$cmd" ] || fail "no ExecStart in $service"
mkfifo "$TMP/hold"
"$B/memlock-run" -q --config "$SRC/config/size-only.json" -- "$B/progs/tools_hold" < "$TMP/hold" > "$TMP/hold.out" &
exec 3> "$TMP/hold"
while ! grep -q ready "$TMP/hold.out"; do sleep 0.1; done
TEXTFILE_DIR=$TMP/textfile PATH=$B:$PATH sh -c "$cmd" || [ $? -le 4 ] || fail "the service's command failed"
exec 3>&-
wait
[ "$(ls -A "$TMP/textfile")" = memlock_shim.prom ] || fail "textfile dir holds: $(ls -A "$TMP/textfile")"
promtool check metrics < "$TMP/textfile/memlock_shim.prom" || fail "promtool rejects the service's file"
grep -q '^memlock_shim_status{pid="[0-9]*",program="[^"]*tools_hold"} 0$' "$TMP/textfile/memlock_shim.prom" ||
    fail "the service's file lacks the shimmed program: $(cat "$TMP/textfile/memlock_shim.prom")"
ok "deploy/prometheus service writes memlock_shim.prom (promtool accepts it, no temporary file left)"

# ---- 4. the package -----------------------------------------------------------------------
[ -f "$DEB" ] || fail "$DEB was not built (make deb)"
dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's|^\./|/|' > "$TMP/contents"
for f in /usr/lib/$MULTIARCH/libmemlock_shim.so /usr/lib/$MULTIARCH/libmemlock.so.0 \
    /usr/lib/$MULTIARCH/libmemlock.so /usr/lib/$MULTIARCH/libmemlock.a /usr/lib/$MULTIARCH/pkgconfig/memlock.pc \
    /usr/include/memlock.h /usr/include/memlock.hpp /usr/bin/memlock-run /usr/bin/memlock-inspect /usr/bin/memlock-discover \
    /etc/memlock-shim/config.json /usr/share/memlock-shim/default.json /usr/share/memlock-shim/match-none.json \
    /usr/share/man/man1/memlock-run.1.gz /usr/share/man/man1/memlock-inspect.1.gz /usr/share/man/man1/memlock-discover.1.gz \
    /usr/share/man/man5/memlock-shim.json.5.gz /usr/share/man/man8/memlock-shim.8.gz \
    /usr/share/bash-completion/completions/memlock-run /usr/share/bash-completion/completions/memlock-inspect \
    /usr/share/doc/memlock-shim/copyright /usr/share/doc/memlock-shim/changelog.Debian.gz \
    /usr/share/doc/memlock-shim/changelog.gz /usr/share/doc/memlock-shim/LICENSE-APACHE \
    /usr/share/doc/memlock-shim/LICENSE-MIT /usr/share/doc/memlock-shim/config.md \
    /usr/share/doc/memlock-shim/deploy/prometheus/memlock-shim-metrics.timer; do
    grep -qx "$f" "$TMP/contents" || fail "$DEB lacks $f"
done
[ "$(grep -c '^/etc/.*[^/]$' "$TMP/contents")" = 1 ] || fail "files in /etc other than the config: $(grep '^/etc' "$TMP/contents")"
grep -q '^/usr/local' "$TMP/contents" && fail "$DEB installs into /usr/local"
dpkg-deb -I "$DEB" > "$TMP/info"
grep -q '^ Depends: .*libc6 (>= ' "$TMP/info" || fail "no Depends on libc6 from dpkg-shlibdeps: $(cat "$TMP/info")"
grep -q '^ Version: '"$VERSION"'$' "$TMP/info" || fail "version is not $VERSION"
[ "$(dpkg-deb -f "$DEB" Version)" = "$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)" ] ||
    fail "debian/changelog's version is not $VERSION"
dpkg-deb -e "$DEB" "$TMP/control"
[ "$(cat "$TMP/control/conffiles")" = /etc/memlock-shim/config.json ] || fail "conffiles"
grep -qx 'libmemlock 0 memlock-shim (>= .*)' "$TMP/control/shlibs" || fail "shlibs"
grep -qx 'activate-noawait ldconfig' "$TMP/control/triggers" || fail "ldconfig trigger"
dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./etc/memlock-shim/config.json > "$TMP/config.json"
"$B/memlock-run" --check --config "$TMP/config.json" > "$TMP/check.out" || fail "the shipped config is invalid"
grep -q "valid (0 rules" "$TMP/check.out" || fail "the shipped config has rules: $(cat "$TMP/config.json")"
ok "dpkg-deb -c and -I: paths, Depends ($(dpkg-deb -f "$DEB" Depends)), conffile, shlibs, trigger"
lintian --fail-on error,warning "$DEB" > "$TMP/lintian" 2>&1 || fail "lintian: $(cat "$TMP/lintian")"
ok "lintian: no errors or warnings ($(grep -c '^[EW]:' "$TMP/lintian" || true) reported)"

# ---- 5. install and purge in a throwaway Debian 12 root -----------------------------------
ROOTS=$B/roots
BASE=$ROOTS/bookworm-minbase
if [ ! -e "$BASE.complete" ]; then
    echo "packaging: debootstrap bookworm minbase into $BASE (once; about a minute)"
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    rm -rf "$BASE" && mkdir -p "$ROOTS"
    debootstrap --variant=minbase bookworm "$BASE" "${mirror:-http://deb.debian.org/debian}" > "$BASE.log" 2>&1 ||
        fail "debootstrap: $(tail -5 "$BASE.log")"
    touch "$BASE.complete"
fi
cp "$DEB" "$TMP/"
cat > "$TMP/in-root.sh" <<'EOF'
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
snapshot() { find / -xdev \( -path /proc -o -path /dev -o -path /tmp -o -path /var/log -o -path /var/cache \
    -o -path /var/lib/dpkg -o -path /var/lib/apt \) -prune -o -printf '%p %y %m %s\n' |
    awk '$2 == "d" { $4 = "-" } 1' | sort; md5sum /etc/ld.so.cache; }
snapshot > /tmp/before
apt-get install -y -q /tmp/memlock-shim_*.deb > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }
memlock-run --check --config /usr/share/memlock-shim/default.json -- /bin/true
echo "run: $(memlock-run --config /usr/share/memlock-shim/size-only.json -- sh -c 'echo $LD_PRELOAD')"
memlock-run --config /etc/memlock-shim/config.json -- /bin/true
echo "pc: $(pkg-config --modversion memlock 2>/dev/null || grep ^Version: /usr/lib/*/pkgconfig/memlock.pc)"
ldconfig -p | grep -q 'libmemlock.so.0 ' && echo "ldconfig: libmemlock.so.0"
apt-get purge -y -q memlock-shim >> /tmp/apt.log 2>&1 || { cat /tmp/apt.log; exit 1; }
snapshot > /tmp/after
diff /tmp/before /tmp/after && echo "purge: nothing left"
EOF
unshare -m --propagation private sh -eu -c '
    R=$1 T=$2 BASE=$3
    mkdir -p "$T/upper" "$T/work" "$T/root"
    mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$T/upper,workdir=$T/work" "$T/root"
    mount -t proc proc "$T/root/proc"
    mount --bind /dev "$T/root/dev"
    mount -t tmpfs tmpfs "$T/root/tmp"
    mount -t tmpfs tmpfs "$T/root/dev/shm"
    cp "$T"/memlock-shim_*.deb "$T/in-root.sh" "$T/root/tmp/"
    chroot "$T/root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh /tmp/in-root.sh
' sh "$B" "$TMP" "$BASE" > "$TMP/root.out" 2>&1 || fail "install in the throwaway root: $(cat "$TMP/root.out")"
cat "$TMP/root.out" | sed 's/^/packaging:   /'
grep -q "^shim:    /usr/lib/$MULTIARCH/libmemlock_shim.so$" "$TMP/root.out" || fail "memlock-run --check did not find the shim"
grep -q "^run: /usr/lib/$MULTIARCH/libmemlock_shim.so$" "$TMP/root.out" || fail "memlock-run did not preload the shim"
grep -q "^ldconfig: libmemlock.so.0$" "$TMP/root.out" || fail "libmemlock.so.0 not in the ld.so cache"
grep -q "^purge: nothing left$" "$TMP/root.out" || fail "apt-get purge left changes"
ok "apt-get install ./$(basename "$DEB") in a Debian 12 root: memlock-run finds the shim; apt-get purge leaves the root as it was"
