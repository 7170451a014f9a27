#!/usr/bin/env bash
# make demo: what dmig is for, in under a minute. Two network namespaces
# joined by a veth shaped to 1 Gbit/s stand for two hosts; a file in
# /dev/shm both read stands for their shared storage. A database-like test
# guest (a buffer pool of 16 KiB frames over most of its RAM, loaded from a
# data file on the shared storage, a layout endpoint naming its clean
# frames) is migrated from one to the other twice, from the same start:
# once in precopy mode, once in hybrid mode with storage references. The
# commands are the same but for --mode. The figures of both reports
# (dmig migrate --report) are printed side by side, with the destination
# guest's own verdict: it verifies every page of its RAM when it resumes.
#
# Needs root (ptrace, userfaultfd, network namespaces), iproute2 (ip, tc),
# bin/dmig and bin/demotable (make demo builds both). Exits non-zero if a
# migration fails or a destination guest does not verify.
#
# Environment: BIN, TABLE (the two binaries), DEMO_SIZE (guest RAM, default
# 512MiB), DEMO_RATE (link rate, default 1gbit).
set -euo pipefail
BIN=$(realpath "${BIN:-bin/dmig}")
TABLE=$(realpath "${TABLE:-bin/demotable}")
size=${DEMO_SIZE:-512MiB}
rate=${DEMO_RATE:-1gbit}
start=$SECONDS

id=$$
ns_s=demo-s$id ns_d=demo-d$id
ip_s=10.231.9.1 ip_d=10.231.9.2
work=$(mktemp -d /dev/shm/demo-XXXXXX)
pids=()

cleanup() {
	local p
	for f in "$work"/*/dst.stats; do
		[ -f "$f" ] && [ ! -e "${f%/*}/ended" ] || continue
		p=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$f")
		[ -n "$p" ] && pids+=("$p")
	done
	for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done
	# A destination guest serve started but that wrote no stats yet: every
	# process of this run names $work on its command line.
	for p in $(pgrep -f -- "$work/" || true); do pids+=("$p"); kill -TERM "$p" 2>/dev/null || true; done
	sleep 0.3
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	ip netns del "$ns_s" 2>/dev/null || true
	ip netns del "$ns_d" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

die() {
	echo "demo: $*" >&2
	exit 1
}

# show prints a log file of this run, indented, when something failed.
show() {
	[ -s "$1" ] && { echo "--- $1"; sed 's/^/    /' "$1" | tail -n 40; } >&2
	return 0
}

[ "$(id -u)" = 0 ] || die "needs root (ptrace, userfaultfd, network namespaces)"
command -v ip >/dev/null && command -v tc >/dev/null || die "needs iproute2 (ip, tc)"

echo "== two hosts: network namespaces $ns_s ($ip_s) and $ns_d ($ip_d), veth shaped to $rate (tc tbf)"
ip netns add "$ns_s"
ip netns add "$ns_d"
ip link add "dvs$id" type veth peer name "dvd$id"
ip link set "dvs$id" netns "$ns_s"
ip link set "dvd$id" netns "$ns_d"
ip -n "$ns_s" addr add "$ip_s/24" dev "dvs$id"
ip -n "$ns_d" addr add "$ip_d/24" dev "dvd$id"
for ns in "$ns_s" "$ns_d"; do ip -n "$ns" link set lo up; done
ip -n "$ns_s" link set "dvs$id" up
ip -n "$ns_d" link set "dvd$id" up
tc -n "$ns_s" qdisc add dev "dvs$id" root tbf rate "$rate" burst 256kb latency 50ms
tc -n "$ns_d" qdisc add dev "dvd$id" root tbf rate "$rate" burst 256kb latency 50ms

# Guest geometry: 3/4 of the RAM in buffer-pool frames (16 KiB, 4 pages
# each), all loaded clean at start; a data file 4/3 the pool's size.
bytes=$(numfmt --from=iec-i --suffix=B "$size" 2>/dev/null) || die "DEMO_SIZE=$size: give it as 512MiB, 1GiB"
bytes=${bytes%B}
frames=$((bytes / 16384 * 3 / 4))
dbpages=$((frames * 4 / 3))
echo "== guest: $size of RAM, buffer pool $((frames * 16 / 1024)) MiB ($frames frames, warm), data file $((dbpages * 16 / 1024)) MiB on the shared storage"

# migrate_once MODE: start a fresh guest on the source, a dmig serve on the
# destination, migrate, and wait for the destination guest's verdict. Its
# files are in $work/MODE.
migrate_once() {
	local mode=$1 dir=$work/$1 guest laddr serve t0
	mkdir -p "$dir/src" "$dir/dst"
	ip netns exec "$ns_s" "$BIN" testguest run --ram "$dir/src/ram0" --size "$size" --fill 0.5 \
		--write-rate 2000 --db-file "$dir/data.db" --db-pages "$dbpages" --pool-frames "$frames" --pool-fill 1 \
		--db-read-rate 3000 --db-modify-rate 1000 --db-flush-rate 800 \
		--layout-listen 127.0.0.1:0 --stats "$dir/src.stats" --stats-every 0 --log-format text 2>"$dir/src.log" &
	guest=$!
	pids+=("$guest")
	disown "$guest" # dmig ends it after the migration: no "Killed" notice
	laddr=""
	for _ in $(seq 600); do
		laddr=$(sed -n 's/.*"layout_addr": *"\([^"]*\)".*/\1/p' "$dir/src.stats" 2>/dev/null || true)
		[ -n "$laddr" ] && grep -q '"writes": *[1-9]' "$dir/src.stats" && break
		kill -0 "$guest" 2>/dev/null || { show "$dir/src.log"; die "$mode: source guest exited at start"; }
		sleep 0.1
	done
	[ -n "$laddr" ] || { show "$dir/src.log"; die "$mode: source guest serves no layout after 60 s"; }

	ip netns exec "$ns_d" "$BIN" serve --listen "$ip_d:7070" --dir "$dir/dst" --once --insecure \
		--disk "data=$dir/data.db" --log-format text 2>"$dir/serve.log" &
	serve=$!
	pids+=("$serve")
	for _ in $(seq 100); do grep -q listening "$dir/serve.log" 2>/dev/null && break; sleep 0.05; done

	echo "== $mode: dmig migrate --mode $mode --layout $laddr --to $ip_d:7070 (dmig serve --disk data=.../data.db)"
	t0=$SECONDS
	ip netns exec "$ns_s" "$BIN" migrate --to "$ip_d:7070" --mode "$mode" --pid "$guest" --ram "$dir/src/ram0" \
		--layout "$laddr" --report "$dir/report.json" --no-progress --log-format text \
		--dest-cmd=/bin/sh --dest-cmd=-c \
		--dest-cmd='exec "$0" testguest run --stats "$1" --stats-every 0 --log-format text >>"$2" 2>&1' \
		--dest-cmd="$BIN" --dest-cmd="$dir/dst.stats" --dest-cmd="$dir/dst-guest.log" 2>"$dir/migrate.log" ||
		{ rc=$?; show "$dir/migrate.log"; show "$dir/serve.log"; die "$mode: dmig migrate failed (exit $rc)"; }
	wait "$serve" || { show "$dir/serve.log"; die "$mode: dmig serve failed"; }

	# The destination guest verifies every page at resume, then runs on
	# (state "running"), or exits 3 naming the wrong pages (state "failed").
	for _ in $(seq 600); do
		grep -qE '"state": *"(running|failed|done)"' "$dir/dst.stats" 2>/dev/null && break
		sleep 0.1
	done
	grep -q '"state": *"running"' "$dir/dst.stats" 2>/dev/null || show "$dir/dst-guest.log"
	echo "   $(sed -n 's/.*"outcome": *"\([^"]*\)".*/\1/p' "$dir/report.json"); $((SECONDS - t0)) s with the destination guest's verify"

	# Stop the destination guest so that it does not compete with the next
	# migration for the cores, and free the RAM of this one.
	local p
	p=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$dir/dst.stats" 2>/dev/null || true)
	if [ -n "$p" ]; then
		kill -KILL "$p" 2>/dev/null || true
		while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
	fi
	touch "$dir/ended"
	rm -rf "$dir/src" "$dir/dst" "$dir/data.db"
}

migrate_once precopy
migrate_once hybrid

echo
echo "== the two migrations (figures from dmig migrate --report; last two rows: the destination guest's stats file)"
"$TABLE" "precopy=$work/precopy" "hybrid=$work/hybrid" || { echo; die "a migration did not complete, or a destination guest did not verify"; }
echo
echo "demo done in $((SECONDS - start)) s"
