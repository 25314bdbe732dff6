#!/usr/bin/env bash
# promtool-check.sh: lint a live /metrics endpoint with `promtool check metrics`.
#
# Starts hw-worker on a throwaway spool with a free metrics port, drops one
# task (dot-file, then mv) so that counters and histograms move, waits for
# its result and for the heartbeat's metrics_addr, fetches /metrics with
# python3's urllib (curl may be missing), and pipes it into promtool.
# Then stops the worker (SIGTERM to its process group) and removes the
# spool.  Every wait is bounded.
#
# Exit status: promtool's (0 clean, non-zero with its complaints printed);
# 0 with a message when promtool is not installed; 1 when the worker or the
# fetch fails.
#
#   make check-metrics       build, then run this (`make lint` runs it too)
#   BIN_DIR=DIR              where hw-worker is (default: target/release)

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hw=${BIN_DIR:-$repo/target/release}/hw-worker
worker=lintcheck
wait_s=10

die() { printf 'promtool-check: %s\n' "$*" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1; then
	echo "promtool-check: promtool not installed, /metrics not checked"
	exit 0
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed to fetch /metrics"
[[ -x $hw ]] || die "$hw not found: run 'cargo build --release' (or 'make check-metrics')"

spool=$(mktemp -d "${TMPDIR:-/tmp}/hookwatch-promtool.XXXXXX")
pid=

# SIGTERM to the worker's process group, SIGKILL if it is still there after
# 5 s; then the spool goes.  Runs on success, failure and signals alike.
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
	local rc=$? t
	trap - EXIT INT TERM HUP
	if [[ -n $pid ]]; then
		kill -TERM -- "-$pid" 2>/dev/null || true
		for ((t = 0; t < 50; t++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf -- "$spool"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

unset TASK_DIR TRIGGER_DIR RESULT_DIR HEARTBEAT_DIR DLQ_DIR RUST_LOG
# Its own session and process group (pid = pgid), so that cleanup reaches
# the worker and anything it started.
HW_ROOT=$spool METRICS_PORT=0 METRICS_ADDR=127.0.0.1 ENABLE_METRICS=true \
	CLAUDE_COMMAND=/bin/true HEARTBEAT_INTERVAL=0.2 LOG_FORMAT=text \
	setsid "$hw" "$worker" 2>"$spool/worker.log" &
pid=$!

dir=$spool/tasks/$worker
mkdir -p "$dir"
printf '{"task_id":"t-1","description":"count me"}\n' >"$dir/.t-1.tmp"
mv "$dir/.t-1.tmp" "$dir/t-1.json"

# Wait for the task's result (the counters moved) and for a heartbeat that
# names the metrics address.
beat=$spool/heartbeats/$worker.json
addr=
start_s=$SECONDS
until [[ -n $addr && -e $spool/results/$worker/t-1.json ]]; do
	if ! kill -0 "$pid" 2>/dev/null; then
		cat "$spool/worker.log" >&2
		die "hw-worker exited early"
	fi
	if ((SECONDS - start_s >= wait_s)); then
		cat "$spool/worker.log" >&2
		die "no result and metrics address after ${wait_s}s"
	fi
	sleep 0.1
	[[ -e $beat ]] && addr=$({ grep -o -E '"metrics_addr":"[^"]+"' "$beat" || true; } |
		sed -E 's/^"metrics_addr":"//; s/"$//')
done

# One scrape, with a timeout; the content type must be text format 0.0.4.
metrics=$spool/metrics.txt
python3 - "http://$addr/metrics" >"$metrics" <<'EOF' || die "cannot fetch http://$addr/metrics"
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    kind = r.headers.get("Content-Type", "")
    if not kind.startswith("text/plain; version=0.0.4"):
        sys.exit(f"promtool-check: unexpected Content-Type {kind!r}")
    sys.stdout.write(r.read().decode("utf-8"))
EOF

echo "promtool check metrics < http://$addr/metrics ($(wc -l <"$metrics") lines)"
rc=0
promtool check metrics <"$metrics" || rc=$?
if ((rc == 0)); then
	echo "promtool-check: ok"
else
	echo "promtool-check: promtool check metrics failed (status $rc)" >&2
fi
exit "$rc"
