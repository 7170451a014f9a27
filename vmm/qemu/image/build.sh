#!/usr/bin/env bash
# Builds the Debian 12 guest image dmig's QEMU tests and comparison runs boot:
# MariaDB (1 GiB buffer pool), sysbench, and dmig's guest agent started at
# boot on a virtio-serial port, and a database `pool` of sysbench tables
# (~750 MB) that the guest's MariaDB loads into its buffer pool at boot
# (comparison runs and hybrid's storage references need a full pool). Runs
# as root; needs debootstrap and sysbench on the host.
#
#   build.sh [--dmig BIN] OUT
#
# A bigger pool, for a guest with more RAM: DMIG_POOL_SIZE sets
# innodb_buffer_pool_size (default 1G), DMIG_POOL_TABLES and DMIG_POOL_ROWS
# the `pool` database (default 10 tables of 300 000 rows, ~750 MB; 25
# tables ~1.8 GB), DMIG_IMAGE_SIZE the disk (default 4G; 6G for 25 tables).
# Each combination is a base image of its own in the cache.
#
# The base image (everything but the dmig binary) is cached as
# $DMIG_IMAGE_CACHE/guest-<hash>.raw, the hash covering this directory's
# files and the kernel the guest boots, so a machine builds it once. OUT is a
# sparse copy of it with BIN written in as /usr/local/bin/dmig (by debugfs:
# no loop mount). Prints OUT's path, and the kernel and initrd to boot it
# with, as shell assignments.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${DMIG_IMAGE_CACHE:-/var/cache/dmig}
mirror=${DMIG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
size=${DMIG_IMAGE_SIZE:-4G}
pool_size=${DMIG_POOL_SIZE:-1G}
[[ $pool_size =~ ^[0-9]+[MG]$ ]] || { echo "build.sh: DMIG_POOL_SIZE=$pool_size: want a size like 1G or 2048M" >&2; exit 2; }
dmig=
while [ $# -gt 1 ]; do
	case $1 in
	--dmig) dmig=$2; shift 2 ;;
	*) echo "build.sh: unknown flag $1" >&2; exit 2 ;;
	esac
done
[ $# -eq 1 ] || { echo "usage: build.sh [--dmig BIN] OUT" >&2; exit 2; }
out=$1

# The guest boots the host's Debian kernel (linux-image-amd64): its initrd
# has the virtio drivers, and its modules are copied into the image.
kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$kernel" ] || { echo "build.sh: no /boot/vmlinuz-*: apt-get install linux-image-amd64" >&2; exit 1; }
kver=${kernel#/boot/vmlinuz-}
initrd=/boot/initrd.img-$kver
[ -r "$initrd" ] || { echo "build.sh: no $initrd" >&2; exit 1; }
[ -d "/lib/modules/$kver" ] || { echo "build.sh: no /lib/modules/$kver" >&2; exit 1; }

hash=$( (cd "$here" && cat $(ls -1 | sort); echo "$kver $size $mirror ${DMIG_POOL_TABLES:-10} ${DMIG_POOL_ROWS:-300000} $pool_size") | sha256sum | cut -c1-16)
base=$cache/guest-$hash.raw

# preload fills the databases `pool` (the bulk of the buffer pool) and
# `sbtest` (2 x 20 000 rows: the tables tests load and checksum) with
# sysbench's tables at native speed
# (a server in the chroot; under TCG the guest would take many minutes),
# and leaves a buffer-pool dump of every page (innodb_buffer_pool_dump_pct
# is 100 in 99-dmig.cnf) for the guest's server to load at boot.
preload() {
	local root=$1 work=$2
	mount -t proc proc "$root/proc"
	install -d "$root/run/mysqld" "$root/var/log/mysql"
	chroot "$root" chown mysql:mysql /run/mysqld /var/log/mysql
	chroot "$root" /usr/sbin/mariadbd --user=mysql --skip-networking >"$work/mariadbd.log" 2>&1 &
	local pid=$! sock=$root/run/mysqld/mysqld.sock
	for _ in $(seq 120); do [ -S "$sock" ] && break; sleep 0.5; done
	local sb="sysbench oltp_read_only --db-driver=mysql --mysql-socket=$sock --mysql-user=dmig --mysql-password=dmig"
	if ! { $sb --mysql-db=pool --tables="${DMIG_POOL_TABLES:-10}" --table-size="${DMIG_POOL_ROWS:-300000}" prepare &&
		$sb --mysql-db=sbtest --tables=2 --table-size=20000 prepare; } >"$work/prepare.log" 2>&1; then
		tail -n 20 "$work/mariadbd.log" "$root/var/log/mysql/error.log" "$work/prepare.log" >&2 || true
		kill "$pid" 2>/dev/null || true
		exit 1
	fi
	chroot "$root" mariadb-admin shutdown
	wait "$pid" || true
	umount "$root/proc"
	[ -s "$root/var/lib/mysql/ib_buffer_pool" ] || { echo "build.sh: no buffer pool dump" >&2; exit 1; }
	# LOAD_FILE reads only world-readable files; the server appends to
	# this one and keeps its mode.
	chmod 0644 "$root/var/log/mysql/error.log"
}

build_base() {
	mkdir -p "$cache"
	work=$(mktemp -d "$cache/build.XXXXXX")
	# The preload mounts proc in the tree: never let rm cross into it.
	trap 'umount -l "$work/rootfs/proc" 2>/dev/null || true; rm -rf --one-file-system "$work"' EXIT
	local root=$work/rootfs
	echo "build.sh: debootstrap into $root (about 2 minutes)" >&2
	debootstrap --variant=minbase \
		--include=systemd-sysv,udev,kmod,iproute2,mariadb-server,mariadb-client,sysbench,socat,python3,procps,netbase \
		bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
		{ tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
	mkdir -p "$root/lib/modules"
	cp -a "/lib/modules/$kver" "$root/lib/modules/"
	install -D -m 0644 "$here/fstab" "$root/etc/fstab"
	echo dmig-guest >"$root/etc/hostname"
	printf '127.0.0.1 localhost\n127.0.1.1 dmig-guest\n' >"$root/etc/hosts"
	install -D -m 0644 "$here/99-dhcp.network" "$root/etc/systemd/network/99-dhcp.network"
	install -D -m 0644 "$here/99-dmig.cnf" "$root/etc/mysql/mariadb.conf.d/99-dmig.cnf"
	sed -i "s/^innodb_buffer_pool_size = .*/innodb_buffer_pool_size = $pool_size/" "$root/etc/mysql/mariadb.conf.d/99-dmig.cnf"
	install -D -m 0644 "$here/dmig-init.sql" "$root/etc/mysql/dmig-init.sql"
	install -D -m 0644 "$here/dmig-agent.service" "$root/etc/systemd/system/dmig-agent.service"
	# Serial console login as root without a password: a test guest.
	chroot "$root" passwd -d root >/dev/null
	chroot "$root" systemctl enable systemd-networkd systemd-network-generator dmig-agent.service >/dev/null 2>&1
	preload "$root" "$work"
	chroot "$root" apt-get clean
	rm -rf "$root/var/lib/apt/lists/"* "$root/var/log/"*.log
	truncate -s "$size" "$work/guest.raw"
	mkfs.ext4 -q -F -L dmig-root -d "$root" "$work/guest.raw"
	mv "$work/guest.raw" "$base"
	echo "build.sh: built $base" >&2
}

if [ ! -f "$base" ]; then
	# One builder per machine: CI and a developer may start at once.
	mkdir -p "$cache"
	exec 9>"$cache/.lock"
	flock 9
	[ -f "$base" ] || (build_base)
	flock -u 9
fi

mkdir -p "$(dirname "$out")"
cp --sparse=always "$base" "$out.tmp"
if [ -n "$dmig" ]; then
	debugfs -w -f - "$out.tmp" >/dev/null 2>&1 <<DBG
write $dmig /usr/local/bin/dmig
set_inode_field /usr/local/bin/dmig mode 0100755
set_inode_field /usr/local/bin/dmig uid 0
set_inode_field /usr/local/bin/dmig gid 0
DBG
	debugfs -R 'stat /usr/local/bin/dmig' "$out.tmp" 2>/dev/null | grep -q 'Mode:  *0755' ||
		{ echo "build.sh: writing $dmig into the image failed" >&2; rm -f "$out.tmp"; exit 1; }
fi
mv "$out.tmp" "$out"
echo "image=$out"
echo "kernel=$kernel"
echo "initrd=$initrd"
