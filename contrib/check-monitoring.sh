#!/usr/bin/env bash
# check-monitoring.sh: test the monitoring kit, contrib/prometheus and
# contrib/grafana.
#
#   - check-monitoring.py: the dashboard's structure, a firing and a
#     silent test case per alert, and every metric name the dashboard and
#     the rules use against a live hw-worker's /metrics (python3);
#   - `promtool check rules` and `promtool test rules` on
#     hookwatch.rules.yml and hookwatch.rules.test.yml;
#   - hw-status-textfile: on a canned report, the file it writes against
#     testdata/hw-status.prom (but the timestamp) and through `promtool
#     check metrics`; on the real hw-status of a throwaway spool
#     (`hw-status --init marie`: marie missing, overall critical), the
#     same check and the values; with an hw-status that fails, a file
#     that says unknown, and exit status 1;
#   - `systemd-analyze verify` on hw-status-textfile.service and .timer
#     (ExecStart= pointed at contrib/prometheus), as check-systemd.sh
#     does: any output is a failure.
#
# Exit status: 0 clean, or skipped with a message when python3 (all),
# promtool or systemd-analyze (their parts) is missing; 1 with the
# complaints printed.
#
#   make check-monitoring      build, then run this (`make lint` runs it)
#   BIN_DIR=DIR                where the hw-* binaries are (target/release)

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prom=$repo/contrib/prometheus
bin=${BIN_DIR:-$repo/target/release}
textfile=$prom/hw-status-textfile

if ! command -v python3 >/dev/null 2>&1; then
	echo "check-monitoring: python3 not installed, monitoring kit not checked"
	exit 0
fi
have_promtool=0
command -v promtool >/dev/null 2>&1 && have_promtool=1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hookwatch-monitoring.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail=0
complain() {
	printf 'check-monitoring: %s\n' "$*" >&2
	fail=1
}

BIN_DIR=$bin python3 "$repo/contrib/check-monitoring.py" || fail=1

if ((have_promtool)); then
	echo "promtool check rules contrib/prometheus/hookwatch.rules.yml"
	promtool check rules "$prom/hookwatch.rules.yml" >"$tmp/out" 2>&1 || {
		cat "$tmp/out" >&2
		fail=1
	}
	echo "promtool test rules contrib/prometheus/hookwatch.rules.test.yml"
	# In its folder: the test file names the rules file relative to it.
	(cd "$prom" && promtool test rules hookwatch.rules.test.yml) >"$tmp/out" 2>&1 || {
		cat "$tmp/out" >&2
		fail=1
	}
else
	echo "check-monitoring: promtool not installed, rules not checked or tested"
fi

# promtool_metrics FILE: `promtool check metrics` on FILE, when installed.
promtool_metrics() {
	((have_promtool)) || return 0
	promtool check metrics <"$1" >"$tmp/out" 2>&1 || {
		cat "$tmp/out" >&2
		complain "promtool check metrics rejects what hw-status-textfile wrote ($2)"
	}
}

echo "hw-status-textfile --from contrib/prometheus/testdata/hw-status.json"
mkdir "$tmp/canned"
if "$textfile" --from "$prom/testdata/hw-status.json" "$tmp/canned"; then
	out=$tmp/canned/hookwatch.prom
	grep -v '^hookwatch_status_timestamp_seconds ' "$out" >"$tmp/canned.prom" || true
	diff -u "$prom/testdata/hw-status.prom" "$tmp/canned.prom" >&2 ||
		complain "hw-status-textfile: output differs from testdata/hw-status.prom"
	stamp=$(sed -n 's/^hookwatch_status_timestamp_seconds //p' "$out")
	python3 -c 'import sys, time; sys.exit(abs(time.time() - float(sys.argv[1])) > 60)' "${stamp:-0}" ||
		complain "hw-status-textfile: timestamp '$stamp' is not now"
	[[ -z $(find "$tmp/canned" -name '.*' -type f) ]] ||
		complain "hw-status-textfile: left a temporary file behind"
	promtool_metrics "$out" "canned report"
else
	complain "hw-status-textfile failed on the canned report"
fi

if [[ -x $bin/hw-status ]]; then
	echo "hw-status-textfile on hw-status --init marie (a throwaway spool)"
	mkdir "$tmp/spool" "$tmp/real"
	"$bin/hw-status" -r "$tmp/spool" --init marie
	rc=0
	HW_STATUS=$bin/hw-status "$textfile" "$tmp/real" -r "$tmp/spool" || rc=$?
	out=$tmp/real/hookwatch.prom
	if ((rc != 0)) || [[ ! -f $out ]]; then
		complain "hw-status-textfile on a real spool: exit $rc"
	else
		for want in 'hookwatch_status_overall 2' \
			'hookwatch_status_worker_up{worker="marie"} 0' \
			'hookwatch_status_worker_state{worker="marie",status="missing"} 1' \
			'hookwatch_status_tasks{worker="marie",state="pending"} 0' \
			'hookwatch_status_dead_letters{worker="marie"} 0'; do
			grep -qxF "$want" "$out" || complain "hw-status-textfile on a real spool: no line '$want'"
		done
		promtool_metrics "$out" "real hw-status"
	fi

	echo "hw-status-textfile with a spool that cannot be read"
	rc=0
	HW_STATUS=$bin/hw-status "$textfile" "$tmp/real" -r "$tmp/no-such-spool" 2>"$tmp/err" || rc=$?
	if ((rc != 1)) || ! grep -qxF 'hookwatch_status_overall 3' "$out" ||
		grep -q '^hookwatch_status_worker_up' "$out" || [[ ! -s $tmp/err ]]; then
		complain "hw-status-textfile with an unreadable spool: exit $rc (want 1, overall 3, no workers, a reason on stderr)"
	fi
else
	complain "$bin/hw-status not found: run 'cargo build --release'"
fi

if command -v systemd-analyze >/dev/null 2>&1; then
	echo "systemd-analyze verify hw-status-textfile.service hw-status-textfile.timer"
	mkdir "$tmp/units"
	sed "s|/usr/local/bin/|$prom/|g" "$prom/hw-status-textfile.service" >"$tmp/units/hw-status-textfile.service"
	cp "$prom/hw-status-textfile.timer" "$tmp/units/"
	if ! out=$(cd "$tmp/units" && systemd-analyze verify --man=no --generators=no \
		./hw-status-textfile.service ./hw-status-textfile.timer 2>&1) || [[ -n $out ]]; then
		printf '%s\n' "$out" | sed "s|$tmp/units/|contrib/prometheus/|g" >&2
		fail=1
	fi
else
	echo "check-monitoring: systemd-analyze not installed, hw-status-textfile's units not checked"
fi

((fail)) || echo "check-monitoring: hw-status-textfile ok"
exit "$fail"
