#!/bin/sh
# Installs the Debian packages that building and testing memlock-shim need.
# Does nothing (and needs no privileges) when they are all present already.
# One group per line, so that each part of the project lists its own.
set -eu

PACKAGES="
build-essential pkg-config binutils file git python3 perl
libcriterion-dev nlohmann-json3-dev
clang-14 libclang-rt-14-dev
gdb libcap2-bin util-linux openssl libjemalloc2 valgrind
musl-tools debootstrap qemu-user g++-aarch64-linux-gnu
mmdebstrap qemu-user-static
podman runc debootstrap python3-yaml
libunwind8
scdoc groff-base man-db lintian dpkg-dev debootstrap prometheus bash-completion
nginx haproxy stunnel4 postgresql postgresql-client openssh-server openssh-client curl wrk apache2-utils
lighttpd lighttpd-mod-openssl apache2
mosquitto mosquitto-clients unbound vsftpd openvpn dovecot-imapd
redis-server redis-tools
libssl-dev gnutls-bin slapd ldap-utils
krb5-kdc krb5-admin-server krb5-user
"

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
# Daemons installed for the tests must not start as system services: the tests start their
# own instances on loopback. policy-rc.d tells the packages' scripts not to start them.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# memlock-shim tests: installed packages do not start services\nexit 101\n' |
        $SUDO tee /usr/sbin/policy-rc.d > /dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
fi
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 $missing
