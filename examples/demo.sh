#!/usr/bin/env bash
# demo.sh: hookwatch end to end on a throwaway spool, all five tools, in a
# few seconds.
#
# hw-status --init creates the layout for marie, anga and fabien; hw-listen
# starts following the spool; three hw-workers run examples/claude, a
# stand-in for the Claude CLI that answers in its JSON shapes, each with its
# metrics on a free port; hw-enqueue queues a dozen tasks (priorities, a
# dependency, a batch of four with mixed outcomes, one task waited for with
# --wait).  fabien's account is over its usage limit for its first few
# seconds: its worker pauses until the reset time the CLI gives, charging
# nothing, then runs the tasks.  Once every task has
# its result and hw-listen has reported the batch, it prints the results,
# the dead letters, the heartbeats, what one task cost (the result's
# agent fields), a few lines of marie's /metrics, hw-status's table (with
# each worker's spend today) and hw-listen's events (the pause among them).  Then hw-dlq lists the dead
# letters, the cause of one failure is fixed (AGENT_FIX_FILE), that task
# is replayed and completes, hw-status runs again, and SIGTERM stops the
# workers, then the listener.  Only bash, POSIX tools, setsid(1) and
# /proc (python3, when present, fetches /metrics): fields are read from the
# compact JSON with grep and sed.
#
#   make demo            build, then run this
#   KEEP=1 make demo     keep the spool (and every log) afterwards and print its path
#   BIN_DIR=DIR          where the hw-* binaries are (default: target/release)

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN_DIR:-$repo/target/release}
hw_worker=$bin/hw-worker
hw_listen=$bin/hw-listen
hw_enqueue=$bin/hw-enqueue
hw_dlq=$bin/hw-dlq
hw_status=$bin/hw-status
agent=$repo/examples/claude
workers=(marie anga fabien)
deadline_s=40

die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

for b in "$hw_worker" "$hw_listen" "$hw_enqueue" "$hw_dlq" "$hw_status"; do
	[[ -x $b ]] || die "$b not found: run 'cargo build --release' (or 'make demo')"
done

spool=$(mktemp -d "${TMPDIR:-/tmp}/hookwatch-demo.XXXXXX")
declare -A pid=()  # daemon name (a worker, or "listen") -> pid = pgid = sid
sids=()            # every session started, swept at exit

# pids_in_session SID: every process of a session.  Each process started
# here is a session leader (setsid) and the workers' tasks run in their own
# process groups inside that session, so this finds tasks too, even after
# their worker is gone.
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

# stop SIGNAL SECS NAME...: signal each daemon's process group, then wait
# at most SECS for them to exit; prints the ones still running.
stop() {
	local sig=$1 secs=$2 n t running
	shift 2
	for n in "$@"; do kill -s "$sig" -- "-${pid[$n]}" 2>/dev/null || true; done
	for ((t = 0; t < secs * 10; t++)); do
		running=()
		for n in "$@"; do kill -0 "${pid[$n]}" 2>/dev/null && running+=("$n"); done
		((${#running[@]} == 0)) && return 0
		sleep 0.1
	done
	echo "${running[*]}"
}

# The EXIT trap runs on success, error and Ctrl-C alike: nothing started
# here outlives the script.
# shellcheck disable=SC2317  # reached through the trap
cleanup() {
	local rc=$? s p
	trap - EXIT INT TERM HUP
	{
		((${#pid[@]} == 0)) || stop TERM 5 "${!pid[@]}" >/dev/null
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
# The command is split like a shell splits words: escaped, the path may
# hold spaces.
printf -v CLAUDE_COMMAND '%q --permission-mode acceptEdits' "$agent"
export CLAUDE_COMMAND HEARTBEAT_INTERVAL=1 INITIAL_RETRY_DELAY=0.2 \
	MAX_RETRIES=2 LOG_FORMAT=text
# The agent fails FAIL tasks until this file exists: the fix, made later.
export AGENT_FIX_FILE=$spool/fixed
# Three workers cannot share the default port 9090: each asks for a free
# one, which its heartbeat reports.
export ENABLE_METRICS=true METRICS_ADDR=127.0.0.1 METRICS_PORT=0
unset TASK_DIR TRIGGER_DIR RESULT_DIR HEARTBEAT_DIR DLQ_DIR STATE_FILE \
	WORKERS RUST_LOG COMPLETION_TIMEOUT

# daemon NAME OUT COMMAND...: a long-running process in its own session and
# process group (so that pid = process group id), its stdout in OUT, its
# stderr in NAME.log in the spool.
daemon() {
	local n=$1 out=$2
	shift 2
	setsid "$@" >"$out" 2>"$spool/$n.log" &
	pid[$n]=$!
	sids+=("$!")
}

# alive NAME...: dies with the end of its log when one of them has exited.
alive() {
	local n
	for n in "$@"; do
		kill -0 "${pid[$n]}" 2>/dev/null && continue
		tail -n 20 "$spool/$n.log" >&2
		die "$n exited early"
	done
}

# jfield KEY: the first top-level-looking "KEY":value of the compact JSON on
# stdin, string quotes removed.  Enough for ids, statuses and numbers.
jfield() {
	{ grep -o -E "\"$1\":(\"[^\"]*\"|[^,}]*)" || true; } | head -n 1 |
		sed -E "s/^\"$1\"://; s/^\"(.*)\"\$/\\1/"
}
jget() { jfield "$2" <"$1"; }   # jget FILE KEY

# enqueue WORKER DESCRIPTION [OPTION...]: runs `hw-enqueue OPTION... WORKER
# DESCRIPTION` (DESCRIPTION "-": none, the tasks come on stdin) and shows
# it with the ids it printed, one per task written; each is a result to
# wait for.  (Descriptions here hold no single quote.)  -q: the tasks are
# queued before the workers start, so no worker has a heartbeat yet, which
# hw-enqueue would otherwise warn about.
expected=()
enqueue() {
	local w=$1 d=$2 input='' ids id a shown=''
	shift 2
	if [[ $d == - ]]; then
		input=$(cat)
		ids=$("$hw_enqueue" -q "$@" "$w" <<<"$input") || die "hw-enqueue $* $w failed"
	else
		ids=$("$hw_enqueue" -q "$@" "$w" "$d") || die "hw-enqueue $* $w $d failed"
	fi
	for id in $ids; do expected+=("$w/$id"); done
	for a in "$@" "$w"; do shown+=" $a"; done
	if [[ $d == - ]]; then
		shown+=" < ($(grep -c . <<<"$input") task lines)"
	else
		shown+=" '$d'"
	fi
	printf '  hw-enqueue%s -> %s\n' "$shown" "$(tr '\n' ' ' <<<"$ids" | sed 's/ $//')"
}

# until_true SECS WHAT COMMAND...: polls COMMAND every 0.1 s, for at most SECS.
until_true() {
	local secs=$1 what=$2 t
	shift 2
	for ((t = 0; t < secs * 10; t++)); do
		"$@" && return 0
		sleep 0.1
	done
	die "$what: not after ${secs}s"
}

# events TYPE: how many events of TYPE hw-listen has printed.
events() { grep -c "^{\"event_type\":\"$1\"" "$spool/listen.out" || true; }

# show_events FROM: hw-listen's events from line FROM on, one line each:
# the time, the type and the key data.
show_events() {
	local line type ts f age
	tail -n "+$1" "$spool/listen.out" | while IFS= read -r line; do
		type=$(jfield event_type <<<"$line")
		ts=$(jfield timestamp <<<"$line")
		case $type in
		task_completed)
			f="$(jfield worker <<<"$line")/$(jfield task_id <<<"$line") $(jfield status <<<"$line")" ;;
		task_dead_lettered)
			f="$(jfield worker <<<"$line")/$(jfield task_id <<<"$line") $(jfield dlq_reason <<<"$line")" ;;
		task_timeout)
			f="$(jfield worker <<<"$line")/$(jfield task_id <<<"$line") enqueued $(jfield enqueued_at <<<"$line")" ;;
		worker_paused)
			f="$(jfield worker <<<"$line") $(jfield paused_reason <<<"$line") until $(jfield paused_until <<<"$line")" ;;
		worker_resumed)
			f="$(jfield worker <<<"$line") (was $(jfield paused_reason <<<"$line"))" ;;
		worker_*)
			f="$(jfield worker <<<"$line") $(jfield reason <<<"$line")"
			f=${f% }
			age=$(jfield heartbeat_age_seconds <<<"$line")
			[[ $age == null ]] || f+=" (heartbeat ${age}s old)" ;;
		batch_completed)
			f="$(jfield batch_id <<<"$line"): total $(jfield total <<<"$line"),"
			f+=" completed $(jfield completed <<<"$line"), failed $(jfield failed <<<"$line"),"
			f+=" dead_lettered $(jfield dead_lettered <<<"$line")" ;;
		*) f= ;;
		esac
		printf '  %s  %-19s %s\n' "${ts:11:12}" "$type" "$f"
	done
}

echo "spool: $spool"

"$hw_status" --init "$(IFS=,; echo "${workers[*]}")"
echo "hw-status --init: tasks/, triggers/, results/, heartbeats/ and dlq/ for ${workers[*]}"

# Tasks that wait on disk before their worker starts.  anga runs one at a
# time, so its start-up scan shows the priority order: high, then normal,
# then low.  marie gets a batch of four in one hw-enqueue (a task object per
# line): two complete, one on its second attempt, one fails every attempt.
enqueue anga "tidy the changelog"            --id a-low -p low
enqueue anga "write the release notes"       --id a-normal-1
enqueue anga "review the open pull requests" --id a-normal-2
enqueue anga "fix the failing build"         --id a-urgent -p high
enqueue marie - --json -b demo-batch <<'EOF'
{"task_id":"m-report","description":"draft the weekly report"}
{"task_id":"m-index","description":"rebuild the search index"}
{"task_id":"m-flaky","description":"FLAKY call to a rate-limited API"}
{"task_id":"m-broken","description":"FAIL until the bug is fixed"}
EOF

# The listener, as an orchestrator would run it, before the workers: once
# it says "Listening" it has read the pending tasks (when each was
# enqueued, and which batch each belongs to) and it sees the workers come
# up.
daemon listen "$spool/listen.out" "$hw_listen"
until_true 10 "hw-listen ready" grep -qs 'Listening' "$spool/listen.log"
echo "  hw-listen pid ${pid[listen]}, events to listen.out and triggers/orchestrator/"

# fabien's account is over its usage limit until this time: the stand-in
# answers "Claude AI usage limit reached|<reset>" until then.
limit_until=$(($(date +%s) + 4))
for w in "${workers[@]}"; do
	args=("$hw_worker")
	[[ $w == anga ]] && args+=(--max-concurrent 1)
	[[ $w == fabien ]] && args=(env "STANDIN_LIMIT_UNTIL=$limit_until" "${args[@]}")
	daemon "$w" /dev/null "${args[@]}" "$w"
done
start_s=$SECONDS
for w in "${workers[@]}"; do
	until [[ -e $spool/heartbeats/$w.json ]]; do
		alive "$w"
		((SECONDS - start_s < 10)) || die "no heartbeat from $w after 10s"
		sleep 0.1
	done
	printf '  %-7s pid %-7s metrics on http://%s/metrics\n' "$w" "${pid[$w]}" \
		"$(jget "$spool/heartbeats/$w.json" metrics_addr)"
done

# The others arrive while their workers run (inotify wakes them).
enqueue fabien "FLAKY fetch of the nightly data"  --id f-flaky
enqueue fabien "summarise the weekly report"      --id f-summary -d m-report
enqueue fabien "FAIL again, to fill the dead-letter queue" --id f-doomed -p low

# One more, waited for: hw-enqueue --wait prints the task's result line
# instead of its id.  It runs in its own session too, bounded by
# --wait-timeout.
setsid "$hw_enqueue" --id f-tests --wait --wait-timeout 20 fabien \
	"run the integration tests" >"$spool/wait.out" 2>"$spool/wait.log" &
sids+=("$!")
wait_rc=0
wait "$!" || wait_rc=$?
expected+=(fabien/f-tests)
echo "  hw-enqueue --id f-tests --wait --wait-timeout 20 fabien 'run the integration tests'"
echo "  printed (exit status $wait_rc):"
sed 's/^/    /' "$spool/wait.out" "$spool/wait.log"
((wait_rc == 0)) || die "hw-enqueue --wait failed"

echo
echo "enqueued ${#expected[@]} tasks for ${workers[*]}; waiting for their results"

start_s=$SECONDS
while :; do
	missing=()
	for t in "${expected[@]}"; do
		[[ -e $spool/results/$t.json ]] || missing+=("$t")
	done
	((${#missing[@]} == 0)) && break
	alive "${!pid[@]}"
	if ((SECONDS - start_s >= deadline_s)); then
		for w in "${workers[@]}"; do echo "--- $w.log (last lines)"; tail -n 10 "$spool/$w.log"; done >&2
		die "no result after ${deadline_s}s for: ${missing[*]}"
	fi
	sleep 0.1
done
echo "all results in after $((SECONDS - start_s))s"

# hw-listen reports each result as it appears, and the batch once its
# last task has ended.
listener_caught_up() {
	(($(events task_completed) >= ${#expected[@]} && $(events batch_completed) >= 1))
}
until_true 10 "hw-listen's events for every result and the batch" listener_caught_up
seen=$(wc -l <"$spool/listen.out")

# While the workers still run: a few lines of marie's /metrics (the
# non-zero task series) and hw-status's table.
metrics=
addr=$(jget "$spool/heartbeats/marie.json" metrics_addr)
if [[ -n $addr ]] && command -v python3 >/dev/null 2>&1; then
	metrics=$(python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
		"http://$addr/metrics" 2>/dev/null |
		awk '/^watcher_/ && !/_bucket\{/ && $NF != 0') || true
fi
status_rc=0
status_table=$("$hw_status") || status_rc=$?

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
echo "== heartbeats (heartbeats/WORKER.json)"
for w in "${workers[@]}"; do
	f=$spool/heartbeats/$w.json
	[[ -e $f ]] || { printf '  %-7s (no heartbeat)\n' "$w"; continue; }
	stats=$({ grep -o -E '"stats":\{[^}]*\}' "$f" || true; } | head -n 1 |
		sed -E 's/^"stats":\{//; s/\}$//; s/"tasks_//g; s/"//g; s/:/=/g; s/,/ /g')
	printf '  %-7s %-8s breaker=%-7s %s\n' "$w" "$(jget "$f" status)" \
		"$(jget "$f" circuit_breaker_state)" "$stats"
done

echo
echo "== what a task cost: the agent fields of results/marie/m-report.json"
f=$spool/results/marie/m-report.json
printf '  stdout (the answer): %s\n' "$(jget "$f" stdout)"
printf '  agent: subtype %s, session_id %s, num_turns %s, total_cost_usd %s\n' \
	"$(jget "$f" subtype)" "$(jget "$f" session_id)" "$(jget "$f" num_turns)" \
	"$(jget "$f" total_cost_usd)"
printf '  usage: %s\n' "$({ grep -o -E '"usage":\{[^}]*\}' "$f" || true; } | head -n 1)"
echo "  fabien's log: $(grep -c 'usage limit' "$spool/fabien.log" || true) attempts met the usage limit, then:"
grep -E 'Worker (paused|resumed)' "$spool/fabien.log" | sed -E 's/^[^ ]+ [A-Z]+ //; s/^/    /'

if [[ -n $metrics ]]; then
	echo
	echo "== marie's metrics (http://$addr/metrics, non-zero task series)"
	printf '%s\n' "$metrics" | sed 's/^/  /'
fi

echo
echo "== hw-status (exit status $status_rc: 0 ok, 1 warning, 2 critical; COST is today's spend)"
printf '%s\n' "$status_table" | sed 's/^/  /'

echo
echo "== events from hw-listen (listen.out; the workers started after it, so"
echo "   each was disconnected until its first heartbeat)"
show_events 1

echo
echo "== hw-dlq list"
"$hw_dlq" list | sed 's/^/  /'

# marie's m-broken failed on a bug: fix it, then send the task back.
touch "$AGENT_FIX_FILE"
echo
echo "== the bug is fixed (AGENT_FIX_FILE exists); hw-dlq replay marie m-broken"
"$hw_dlq" replay marie m-broken | sed 's/^/  /'
replay_completed() {
	[[ $(jget "$spool/results/marie/m-broken.json" status 2>/dev/null) == completed ]]
}
until_true 10 "m-broken's new result" replay_completed
f=$spool/results/marie/m-broken.json
printf '  results/marie/m-broken.json: status %s, exit_code %s, retry_count %s, stdout: %s\n' \
	"$(jget "$f" status)" "$(jget "$f" exit_code)" "$(jget "$f" retry_count)" \
	"$(jget "$f" stdout)"

echo
status_rc=0
status_table=$("$hw_status") || status_rc=$?
echo "== hw-status (exit status $status_rc; fabien's dead letter is still there)"
printf '%s\n' "$status_table" | sed 's/^/  /'

echo
echo "stopping the workers, then hw-listen (SIGTERM)"
declare -A wpid=()
for n in "${!pid[@]}"; do wpid[$n]=${pid[$n]}; done
# Each worker's last heartbeat says "stopped": hw-listen reports it.
disconnects=$(events worker_disconnected)
left=$(stop TERM 10 "${workers[@]}")
[[ -z $left ]] || die "workers still running 10s after SIGTERM: $left"
all_disconnected() { (($(events worker_disconnected) >= disconnects + ${#workers[@]})); }
until_true 5 "hw-listen's worker_disconnected events" all_disconnected
left=$(stop TERM 10 listen)
[[ -z $left ]] || die "hw-listen still running 10s after SIGTERM"
for n in "${workers[@]}" listen; do
	rc=0
	wait "${wpid[$n]}" || rc=$?
	unset "pid[$n]"
	((rc == 0)) || echo "demo: warning: $n exited with status $rc" >&2
done

echo
echo "== events from hw-listen since then (the replayed task, the workers stopping)"
show_events $((seen + 1))
printf '  (%s events in all; %s trigger files in triggers/orchestrator/; state in %s)\n' \
	"$(wc -l <"$spool/listen.out")" \
	"$(find "$spool/triggers/orchestrator" -name '*.json' | wc -l)" \
	"$(cd "$spool" && echo orchestrator_state.json*)"

echo
if [[ ${KEEP:-0} == 1 ]]; then
	echo "logs: $spool/{listen,marie,anga,fabien}.log, events: $spool/listen.out"
else
	echo "(KEEP=1 keeps the spool, the logs and hw-listen's output)"
fi
