#!/usr/bin/env bash
# make demo-plain: start a 1 GiB test guest writing 20 k pages/s, migrate it on
# this host in hybrid mode, and show the figures and the destination guest's
# own verdict on its memory. Needs root (ptrace, userfaultfd) and bin/dmig.
set -euo pipefail
BIN=$(realpath "${BIN:-bin/dmig}")
work=$(mktemp -d /dev/shm/demo-plain.XXXXXX)
port=$((20000 + RANDOM % 20000))
guest="" serve=""
cleanup() {
	[ -n "$guest" ] && kill -KILL "$guest" 2>/dev/null || true
	[ -n "$serve" ] && kill "$serve" 2>/dev/null || true
	if [ -f "$work/dst.stats" ]; then
		dpid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$work/dst.stats")
		[ -n "$dpid" ] && kill -KILL "$dpid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a 1 GiB test guest (half its pages filled, 20 k writes/s)"
mkdir -p "$work/src"
"$BIN" testguest run --ram "$work/src/ram0" --size 1GiB --fill 0.5 --write-rate 20000 \
	--stats "$work/src.stats" --log-format json 2>"$work/src.log" &
guest=$!
disown "$guest" # dmig ends it after the migration: no "Killed" notice
for _ in $(seq 100); do [ -s "$work/src.stats" ] && break; sleep 0.1; done

echo "== destination: dmig serve on 127.0.0.1:$port (no TLS: demo on one host)"
"$BIN" serve --listen "127.0.0.1:$port" --dir "$work/dst" --once --insecure --log-format json 2>"$work/serve.log" &
serve=$!
sleep 0.5

echo "== source: dmig migrate --mode hybrid"
"$BIN" migrate --to "127.0.0.1:$port" --mode hybrid --pid "$guest" --ram "$work/src/ram0" \
	--dest-cmd="$BIN" --dest-cmd=testguest --dest-cmd=run --dest-cmd=--stats --dest-cmd="$work/dst.stats" \
	--report "$work/report.json" --log-format text || { echo "migration failed"; exit 1; }
wait "$serve" || { echo "destination failed:"; cat "$work/serve.log"; exit 1; }
serve=""
guest=""

echo "== the JSON report (--report) is $work/report.json; its iterations:"
grep -A4 '"pages": [0-9]*,$' "$work/report.json" | grep -v '^--' | paste -sd' ' | sed 's/  */ /g'
echo "== destination guest"
for _ in $(seq 100); do grep -q '"state": *"running"' "$work/dst.stats" 2>/dev/null && break; sleep 0.1; done
if grep -q '"resumed": *true' "$work/dst.stats" && grep -q '"state": *"running"' "$work/dst.stats"; then
	pages=$(sed -n 's/.*"verified_pages": *\([0-9]*\).*/\1/p' "$work/dst.stats")
	echo "verified all $pages pages of its RAM at resume and runs its workload on"
else
	echo "destination guest is not healthy:"; cat "$work/dst.stats"; exit 1
fi
