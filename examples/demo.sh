#!/usr/bin/env bash
# demo.sh: hookwatch end to end on a throwaway spool, in a few seconds.
#
# Starts three workers (marie, anga, fabien) running examples/agent.sh in
# place of the Claude CLI, each with its metrics on a free port, enqueues a
# dozen tasks with the producer protocol (dot-file, then mv), waits until
# every task has its result, shows a few lines of marie's /metrics and
# takes hw-status's table, stops the workers with SIGTERM and prints the
# results, the dead letters, the final heartbeats and that table.  Only
# bash, POSIX tools, setsid(1) and /proc (python3, when present, fetches
# /metrics): fields are read from the compact JSON with grep and sed.
#
#   make demo            build, then run this
#   KEEP=1 make demo     keep the spool afterwards and print its path
#   BIN_DIR=DIR          where hw-worker and hw-status are (default: target/release)

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN_DIR:-$repo/target/release}
hw=$bin/hw-worker
hw_status=$bin/hw-status
agent=$repo/examples/agent.sh
workers=(marie anga fabien)
deadline_s=40

die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

for b in "$hw" "$hw_status"; do
	[[ -x $b ]] || die "$b not found: run 'cargo build --release' (or 'make demo')"
done
# CLAUDE_COMMAND is split on whitespace, so the agent's path must have none.
[[ $agent != *[[:space:]]* ]] || die "the repository path contains white space: $repo"

spool=$(mktemp -d "${TMPDIR:-/tmp}/hookwatch-demo.XXXXXX")
declare -A pid=()  # worker name -> pid, which is also its pgid and sid
sids=()            # every session started, swept at exit

# pids_in_session SID: every process of a session.  Each worker is a session
# leader (setsid) and its tasks run in their own process groups inside that
# session, so this finds tasks too, even after their worker is gone.
pids_in_session() {
	local f s p
	for f in /proc/[0-9]*/stat; do
		{ s=$(<"$f"); } 2>/dev/null || continue
		s=${s##*) }            # drop "pid (comm) ", comm may hold spaces
		read -r _ _ _ p _ <<<"$s"
		[[ $p == "$1" ]] && { p=${f#/proc/}; echo "${p%/stat}"; }
	done
	return 0
}

# stop_workers SIGNAL SECS: signal each worker's process group, then wait at
# most SECS for the workers to exit; prints the ones still running.
stop_workers() {
	local w t
	for w in "${!pid[@]}"; do kill -s "$1" -- "-${pid[$w]}" 2>/dev/null || true; done
	for ((t = 0; t < $2 * 10; t++)); do
		for w in "${!pid[@]}"; do kill -0 "${pid[$w]}" 2>/dev/null || unset "pid[$w]"; done
		((${#pid[@]} == 0)) && return 0
		sleep 0.1
	done
	echo "${!pid[@]}"
}

# The EXIT trap runs on success, error and Ctrl-C alike: nothing started
# here outlives the script.
cleanup() {
	local rc=$? s p
	trap - EXIT INT TERM HUP
	{
		((${#pid[@]} == 0)) || stop_workers TERM 5 >/dev/null
		for s in "${sids[@]}"; do
			for p in $(pids_in_session "$s"); do kill -KILL "$p" 2>/dev/null || true; done
		done
		wait
	} 2>/dev/null
	if [[ ${KEEP:-0} == 1 ]]; then
		echo "spool kept: $spool"
	else
		rm -rf -- "$spool"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

export HW_ROOT=$spool
export CLAUDE_COMMAND=$agent HEARTBEAT_INTERVAL=1 INITIAL_RETRY_DELAY=0.2 \
	MAX_RETRIES=2 LOG_FORMAT=text
# Three workers cannot share the default port 9090: each asks for a free
# one, which its heartbeat reports.
export ENABLE_METRICS=true METRICS_ADDR=127.0.0.1 METRICS_PORT=0
unset TASK_DIR TRIGGER_DIR RESULT_DIR HEARTBEAT_DIR DLQ_DIR RUST_LOG

# start WORKER [FLAG...]: one worker in its own session and process group
# (so that pid = process group id), its log in the spool.
start() {
	local w=$1
	shift
	setsid "$hw" "$@" "$w" 2>"$spool/$w.log" &
	pid[$w]=$!
	sids+=("$!")
}

# enqueue WORKER ID PRIORITY DESCRIPTION [DEPENDENCY]: the producer protocol,
# write a dot-file (ignored by the worker) then rename it into place.
# IDs and descriptions here need no JSON escaping.
enqueue() {
	local dir=$spool/tasks/$1 deps=
	[[ -n ${5:-} ]] && deps=",\"dependencies\":[\"$5\"]"
	mkdir -p "$dir"
	printf '{"task_id":"%s","worker":"%s","description":"%s","priority":"%s"%s,"metadata":{"batch_id":"demo"}}\n' \
		"$2" "$1" "$4" "$3" "$deps" >"$dir/.$2.tmp"
	mv "$dir/.$2.tmp" "$dir/$2.json"
	expected+=("$1/$2")
}
expected=()

# jget FILE KEY: the first top-level-looking "KEY":value of a compact JSON
# file, string quotes removed.  Enough for ids, statuses and numbers.
jget() {
	{ grep -o -E "\"$2\":(\"[^\"]*\"|[^,}]*)" "$1" || true; } | head -n 1 |
		sed -E "s/^\"$2\"://; s/^\"(.*)\"\$/\\1/"
}

echo "spool: $spool"

# anga's tasks wait on disk before anga starts; it runs one at a time, so
# its start-up scan shows the priority order: high, then normal, then low.
enqueue anga a-low      low    "tidy the changelog"
enqueue anga a-normal-1 normal "write the release notes"
enqueue anga a-normal-2 normal "review the open pull requests"
enqueue anga a-urgent   high   "fix the failing build"

start marie
start anga --max-concurrent 1
start fabien

# The others arrive while their workers run (inotify wakes them): wait
# until each worker has written its first heartbeat.
start_s=$SECONDS
for w in "${workers[@]}"; do
	until [[ -e $spool/heartbeats/$w.json ]]; do
		kill -0 "${pid[$w]}" 2>/dev/null || { cat "$spool/$w.log" >&2; die "worker $w did not start"; }
		((SECONDS - start_s < 10)) || die "no heartbeat from $w after 10s"
		sleep 0.1
	done
	printf '  %-7s pid %-7s metrics on http://%s/metrics\n' "$w" "${pid[$w]}" \
		"$(jget "$spool/heartbeats/$w.json" metrics_addr)"
done
enqueue marie  m-report   normal "draft the weekly report"
enqueue marie  m-index    normal "rebuild the search index"
enqueue marie  m-flaky    normal "FLAKY call to a rate-limited API"
enqueue marie  m-broken   normal "FAIL on a task that cannot succeed"
enqueue fabien f-tests    normal "run the integration tests"
enqueue fabien f-flaky    normal "FLAKY fetch of the nightly data"
enqueue fabien f-summary  normal "summarise the weekly report" m-report
enqueue fabien f-doomed   low    "FAIL again, to fill the dead-letter queue"

echo "enqueued ${#expected[@]} tasks for ${workers[*]}; waiting for their results"

start_s=$SECONDS
while :; do
	missing=()
	for t in "${expected[@]}"; do
		[[ -e $spool/results/$t.json ]] || missing+=("$t")
	done
	((${#missing[@]} == 0)) && break
	for w in "${!pid[@]}"; do
		kill -0 "${pid[$w]}" 2>/dev/null || { tail -n 20 "$spool/$w.log" >&2; die "worker $w exited early"; }
	done
	if ((SECONDS - start_s >= deadline_s)); then
		for w in "${workers[@]}"; do echo "--- $w.log (last lines)"; tail -n 10 "$spool/$w.log"; done >&2
		die "no result after ${deadline_s}s for: ${missing[*]}"
	fi
	sleep 0.1
done
echo "all results in after $((SECONDS - start_s))s"

# While the workers still run: a few lines of marie's /metrics (the
# non-zero task series), then hw-status's table, shown at the end.
addr=$(jget "$spool/heartbeats/marie.json" metrics_addr)
if [[ -n $addr ]] && command -v python3 >/dev/null 2>&1; then
	echo
	echo "== marie's metrics (http://$addr/metrics, non-zero task series)"
	python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
		"http://$addr/metrics" 2>/dev/null |
		awk '/^watcher_/ && !/_bucket\{/ && $NF != 0' | sed 's/^/  /' || true
fi
status_rc=0
status_table=$("$hw_status") || status_rc=$?

echo
echo "stopping the workers (SIGTERM)"

declare -A wpid=()
for w in "${!pid[@]}"; do wpid[$w]=${pid[$w]}; done
left=$(stop_workers TERM 10)
[[ -z $left ]] || die "workers still running 10s after SIGTERM: $left"
for w in "${workers[@]}"; do
	rc=0
	wait "${wpid[$w]}" || rc=$?
	((rc == 0)) || echo "demo: warning: worker $w exited with status $rc" >&2
done

echo
echo "== results (per worker, in the order they finished)"
printf '  %-7s %-11s %-10s %-7s %s\n' worker task status retries note
for w in "${workers[@]}"; do
	for f in "$spool/results/$w"/*.json; do
		[[ -e $f ]] || continue
		note=$(jget "$f" dlq_file)
		[[ -n $note ]] && note="dead letter: $note"
		printf '%s\t%-7s %-11s %-10s %-7s %s\n' "$(jget "$f" timestamp)" "$w" \
			"$(jget "$f" task_id)" "$(jget "$f" status)" \
			"$(jget "$f" retry_count)" "$note"
	done | sort | cut -f 2- | sed 's/^/  /'
done

echo
echo "== dead letters (dlq/WORKER/ID_UNIXTIME.json)"
found=0
for f in "$spool"/dlq/*/*.json; do
	[[ -e $f ]] || continue
	found=1
	printf '  %-36s %-22s last_error: %s\n' "${f#"$spool/dlq/"}" \
		"$(jget "$f" dlq_reason)" "$(jget "$f" last_error)"
done
((found)) || echo "  (none)"

echo
echo "== final heartbeats (heartbeats/WORKER.json)"
for w in "${workers[@]}"; do
	f=$spool/heartbeats/$w.json
	[[ -e $f ]] || { printf '  %-7s (no heartbeat)\n' "$w"; continue; }
	stats=$({ grep -o -E '"stats":\{[^}]*\}' "$f" || true; } | head -n 1 |
		sed -E 's/^"stats":\{//; s/\}$//; s/"tasks_//g; s/"//g; s/:/=/g; s/,/ /g')
	printf '  %-7s %-8s breaker=%-7s %s\n' "$w" "$(jget "$f" status)" \
		"$(jget "$f" circuit_breaker_state)" "$stats"
done

echo
echo "== hw-status, taken while the workers still ran (exit status $status_rc:" \
	"0 ok, 1 warning, 2 critical)"
printf '%s\n' "$status_table" | sed 's/^/  /'

echo
if [[ ${KEEP:-0} == 1 ]]; then
	echo "logs: $spool/{marie,anga,fabien}.log"
else
	echo "(KEEP=1 keeps the spool and the workers' logs)"
fi
