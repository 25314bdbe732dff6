#!/usr/bin/env bash
# check-systemd.sh: lint the files of contrib/systemd with systemd's own
# tools, offline (no running systemd needed, nothing installed).
#
#   - the units, with `systemd-analyze verify`: copies of them whose
#     ExecStart= names the binaries built in target/release (verify
#     insists that the command exists), the template as an instance
#     (hw-worker@marie.service).  verify exits 0 even after "Unknown key"
#     or "Failed to parse" warnings, so any output at all is a failure;
#   - hookwatch.sysusers, by creating its user in a throwaway root;
#   - hookwatch.tmpfiles, by creating its folder in that root (as root
#     only: it changes the owner);
#   - that each unit's TimeoutStopSec= leaves the worker the time its
#     ExecStart= flags ask for (--shutdown-timeout + --kill-grace).
#
# Exit status: 0 clean, or skipped with a message when systemd-analyze is
# missing; 1 with the complaints printed.
#
#   make check-systemd         build, then run this (`make lint` runs it)
#   BIN_DIR=DIR                where the hw-* binaries are (target/release)

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
units=$repo/contrib/systemd
bin=${BIN_DIR:-$repo/target/release}

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "check-systemd: systemd-analyze not installed, units not checked"
	exit 0
fi
for b in hw-worker hw-listen; do
	[[ -x $bin/$b ]] || {
		echo "check-systemd: $bin/$b not found: run 'cargo build --release'" >&2
		exit 1
	}
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hookwatch-units.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail=0

for u in "$units"/*.service; do
	sed "s|/usr/local/bin/|$bin/|g" "$u" >"$tmp/${u##*/}"
done
echo "systemd-analyze verify hw-worker@marie.service hw-listen.service"
# In the copies' folder, so that the instance finds its template there.
if ! out=$(cd "$tmp" && systemd-analyze verify --man=no --generators=no \
	./hw-worker@marie.service ./hw-listen.service 2>&1) || [[ -n $out ]]; then
	printf '%s\n' "$out" | sed "s|$tmp/|contrib/systemd/|g" >&2
	fail=1
fi

# The stop timeout must cover what ExecStart= asks of the worker, with
# room to return the tasks and write the last heartbeat.
w=$units/hw-worker@.service
shutdown=$(sed -n 's/^ExecStart=.*--shutdown-timeout \([0-9]*\) .*/\1/p' "$w")
grace=$(sed -n 's/^ExecStart=.*--kill-grace \([0-9]*\) .*/\1/p' "$w")
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$w")
if [[ -z $shutdown || -z $grace || -z $stop ]]; then
	echo "check-systemd: $w: ExecStart= needs --shutdown-timeout N --kill-grace N, and TimeoutStopSec=N" >&2
	fail=1
elif ((stop < shutdown + grace + 5)); then
	echo "check-systemd: $w: TimeoutStopSec=$stop leaves no margin over --shutdown-timeout $shutdown + --kill-grace $grace" >&2
	fail=1
fi

echo "systemd-sysusers hookwatch.sysusers; systemd-tmpfiles --create hookwatch.tmpfiles"
mkdir "$tmp/root" "$tmp/root/etc"
if ! out=$(systemd-sysusers --root="$tmp/root" - <"$units/hookwatch.sysusers" 2>&1) ||
	! grep -q '^hookwatch:' "$tmp/root/etc/passwd"; then
	printf 'check-systemd: hookwatch.sysusers:\n%s\n' "$out" >&2
	fail=1
elif ((EUID != 0)); then
	echo "check-systemd: not root, hookwatch.tmpfiles not checked"
elif ! out=$(systemd-tmpfiles --root="$tmp/root" --create - <"$units/hookwatch.tmpfiles" 2>&1) ||
	[[ -n $out ]]; then
	printf 'check-systemd: hookwatch.tmpfiles:\n%s\n' "$out" >&2
	fail=1
elif [[ $(stat -c %u "$tmp/root/shared") != "$(awk -F: '$1 == "hookwatch" { print $3 }' "$tmp/root/etc/passwd")" ]]; then
	echo "check-systemd: hookwatch.tmpfiles: /shared is not owned by the user hookwatch" >&2
	fail=1
fi

exit "$fail"
