#!/usr/bin/env bash
# Installs QEMU 10.0.2 from bookworm-backports into a private prefix
# (default /opt/dmig/qemu10), beside Debian 12's own QEMU 7.2, which stays
# the system's qemu-system-x86_64. Idempotent: a prefix that already holds
# these versions is left as it is.
#
# Why not `apt-get install -t bookworm-backports qemu-system-x86`: it would
# replace QEMU 7.2 (dmig tests both), and the package declares
# seabios (>> 1.16.3-1~), which needs seabios from backports too. So the
# packages are downloaded and unpacked (dpkg -x) into the prefix, with
# backports' seabios 1.16.3 beside them, and PREFIX/bin/qemu-system-x86_64
# runs them with their own firmware (-L) and modules (QEMU_MODULE_DIR).
# Libraries come from bookworm (apt-get satisfy of the packages' library
# dependencies): QEMU 10's backport needs none newer.
#
# Usage: install-qemu10.sh [PREFIX]; prints the wrapper's path.
set -euo pipefail

PREFIX=${1:-/opt/dmig/qemu10}
QEMU_VERSION=1:10.0.2+ds-2+deb13u1~bpo12+1
SEABIOS_VERSION=1.16.3-2~bpo12+1
PKGS=(qemu-system-x86 qemu-system-common qemu-system-data qemu-system-modules-spice)
STAMP="qemu $QEMU_VERSION seabios $SEABIOS_VERSION"
WRAPPER=$PREFIX/bin/qemu-system-x86_64

if [ -x "$WRAPPER" ] && [ "$(cat "$PREFIX/.dmig-version" 2>/dev/null)" = "$STAMP" ] &&
    "$WRAPPER" --version >/dev/null 2>&1; then
    echo "$WRAPPER"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# apt-cache show exits 0 for a version it does not know (it prints
# nothing): ask for the version's own record instead.
known() { apt-cache show "qemu-system-x86=$QEMU_VERSION" 2>/dev/null | grep -q '^Version: '; }
if ! known; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat >/etc/apt/sources.list.d/dmig-bookworm-backports.sources <<'EOF'
# Added by dmig's contrib/install-qemu10.sh: QEMU 10 for Debian 12.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt-get update -qq
    known || { echo "install-qemu10: qemu-system-x86 $QEMU_VERSION is not in the apt sources" >&2; exit 1; }
fi

# The libraries the packages link (everything in their Depends but QEMU's
# own packages and the firmware, which go into the prefix).
deps() {
    apt-cache show "$1=$2" | sed -n 's/^Depends: //p' | head -n1 | tr ',' '\n' |
        sed 's/^ *//' | grep -Ev '^(qemu-|seabios|ipxe-qemu)' | paste -sd, -
}
libs="$(deps qemu-system-x86 "$QEMU_VERSION"),$(deps qemu-system-common "$QEMU_VERSION"),$(deps qemu-system-modules-spice "$QEMU_VERSION")"
libs=$(echo "$libs" | tr ',' '\n' | sed '/^ *$/d' | sort -u | paste -sd, -)
apt-get satisfy -y -qq --no-install-recommends "$libs, ipxe-qemu" >/dev/null

work=$(mktemp -d /tmp/install-qemu10.XXXXXX)
trap 'rm -rf "$work"' EXIT
(
    cd "$work"
    # apt-get download runs as _apt where it can: let it write here.
    chmod 0777 .
    for p in "${PKGS[@]}"; do
        apt-get download -qq "$p=$QEMU_VERSION"
    done
    apt-get download -qq "seabios=$SEABIOS_VERSION"
)
rm -rf "$PREFIX.new"
mkdir -p "$PREFIX.new"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$PREFIX.new"
done
mkdir -p "$PREFIX.new/bin"
cat >"$PREFIX.new/bin/qemu-system-x86_64" <<EOF
#!/bin/sh
# QEMU 10 from $PREFIX with its own firmware and modules (install-qemu10.sh).
export QEMU_MODULE_DIR=$PREFIX/usr/lib/x86_64-linux-gnu/qemu
exec $PREFIX/usr/bin/qemu-system-x86_64 -L $PREFIX/usr/share/qemu -L $PREFIX/usr/share/seabios "\$@"
EOF
chmod 0755 "$PREFIX.new/bin/qemu-system-x86_64"
echo "$STAMP" >"$PREFIX.new/.dmig-version"
rm -rf "$PREFIX"
mv "$PREFIX.new" "$PREFIX"
"$WRAPPER" --version >/dev/null
echo "$WRAPPER"
