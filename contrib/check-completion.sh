#!/usr/bin/env bash
# check-completion.sh: test contrib/bash-completion/hookwatch.
#
# `bash -n` on it; then, in a clean `bash --norc`, sources it and checks
#   - that `complete -p` names a function for each of the five tools;
#   - that every flag each tool's --help lists is offered (so the file
#     follows the tools: a new flag without its completion fails here);
#   - a few completions, on a throwaway spool: subcommands, worker names
#     (from --root, --root=, HW_ROOT), lists after a comma, flag values,
#     dead-letter ids, queued task ids (hw-dlq cancel).
#
# Exit status: 0 clean; 1 with each failed expectation printed.
#
#   make check-completion      build, then run this (`make lint` runs it)
#   BIN_DIR=DIR                where the hw-* binaries are (target/release)

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
file=$repo/contrib/bash-completion/hookwatch
bin=${BIN_DIR:-$repo/target/release}

echo "bash -n contrib/bash-completion/hookwatch"
bash -n "$file"

for t in hw-worker hw-listen hw-enqueue hw-dlq hw-status; do
	[[ -x $bin/$t ]] || {
		echo "check-completion: $bin/$t not found: run 'cargo build --release'" >&2
		exit 1
	}
done

spool=$(mktemp -d "${TMPDIR:-/tmp}/hookwatch-completion.XXXXXX")
trap 'rm -rf "$spool"' EXIT
mkdir -p "$spool"/tasks/{marie,anga,.hidden} "$spool"/dlq/{marie,fabien}
: >"$spool/dlq/marie/t-1_1795861800.json"
: >"$spool/dlq/marie/t-2_1795861801-2.json"
mkdir -p "$spool/tasks/marie/.deferred"
: >"$spool/tasks/marie/q-1.json"
: >"$spool/tasks/marie/.deferred/q-2.json"

echo "complete -p hw-worker hw-listen hw-enqueue hw-dlq hw-status, and what they offer"
# The tests run in a bash that read no start-up file, with the spool and
# the binaries handed over in the environment.
SPOOL=$spool BIN=$bin FILE=$file bash --norc --noprofile <<'EOF'
set -u
unset HW_ROOT TASK_DIR DLQ_DIR
source "$FILE"
fails=0
fail() { printf 'check-completion: %s\n' "$*" >&2; fails=$((fails + 1)); }

for t in hw-worker hw-listen hw-enqueue hw-dlq hw-status; do
	spec=$(complete -p "$t" 2>/dev/null) || { fail "complete -p $t: no completion"; continue; }
	[[ $spec == *" -F _hw_"* ]] || fail "complete -p $t: $spec"
done

# offers LINE: what completing the last word of LINE (words split on
# blanks, and at `=` as readline does) gives, one per line, sorted.
offers() {
	local line=$1 fn
	read -ra COMP_WORDS <<<"${line//=/ = }"
	[[ $line == *' ' ]] && COMP_WORDS+=('')
	COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
	COMPREPLY=()
	fn=$(complete -p "${COMP_WORDS[0]}" | sed 's/.* -F \([^ ]*\) .*/\1/')
	"$fn" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
	((${#COMPREPLY[@]})) && printf '%s\n' "${COMPREPLY[@]}" | sort
	return 0
}

# expect LINE WORDS...: completing LINE offers exactly WORDS.
expect() {
	local line=$1 got want
	shift
	got=$(offers "$line" | tr '\n' ' ')
	want=
	(($#)) && want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
	[[ $got == "$want" ]] || fail "'$line': offered '$got', expected '$want'"
}

# Every flag of --help is offered somewhere (for hw-dlq, before or after
# a subcommand).
for t in hw-worker hw-listen hw-enqueue hw-dlq hw-status; do
	offered=$(
		offers "$t -"
		if [[ $t == hw-dlq ]]; then
			offers "$t list -"
			offers "$t replay -"
			offers "$t cancel -"
		fi
	)
	for f in $("$BIN/$t" --help | grep -oE '^ +(-[A-Za-z], )?--[a-z][a-z-]*' | grep -oE -- '-[A-Za-z-]+'); do
		grep -qxe "$f" <<<"$offered" || fail "$t: $f is in --help but not completed"
	done
done

S=$SPOOL
expect "hw-dlq " list show replay purge cancel
expect "hw-dlq re" replay
expect "hw-dlq -r $S list " anga fabien marie
expect "hw-dlq -r $S show marie " t-1 t-2
expect "hw-dlq -r $S show marie t-1 "
expect "hw-dlq -r $S purge marie t-1 t" t-1 t-2
expect "hw-dlq --reason dep" dependency_failed
expect "hw-dlq --reason can" cancelled
expect "hw-dlq -r $S cancel " anga fabien marie
expect "hw-dlq -r $S cancel marie " q-1 q-2
expect "hw-status -r $S --tasks " anga fabien marie
expect "hw-status --tasks --j" --json
expect "hw-enqueue --mod" --model
expect "hw-enqueue -q" -q
expect "hw-worker -r $S " anga fabien marie
expect "hw-worker --root=$S m" marie
expect "hw-worker -r $S -c 2 --log-format text a" anga
expect "hw-worker -r $S marie "
expect "hw-worker --no-i" --no-inotify
expect "hw-worker --log-level W" WARNING
expect "hw-listen -r $S --workers marie,a" marie,anga
expect "hw-status -r $S -w " anga fabien marie
expect "hw-enqueue -p " high low normal
expect "hw-enqueue -r $S -p high " anga fabien marie
expect "hw-enqueue -r $S marie "
HW_ROOT=$S expect "hw-enqueue f" fabien
TASK_DIR=$S/tasks DLQ_DIR=/nonexistent expect "hw-worker a" anga

exit $((fails > 0))
EOF
