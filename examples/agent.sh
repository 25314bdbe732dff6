#!/bin/sh
# agent.sh: a stand-in for the Claude CLI, for the demo and for trying
# hw-worker without an API key.  It takes the arguments hw-worker gives
# the real CLI (`[--system-prompt-file F] -p DESCRIPTION`, or the bare
# description when CLAUDE_COMMAND uses the `{}` placeholder), sleeps
# AGENT_SLEEP seconds (default 0.2), and then:
#   - description contains FAIL:  an error on stderr, exit 1 (every attempt,
#     so the task is retried and ends in the dead-letter queue), unless
#     AGENT_FIX_FILE names a file that exists (the fix is in: it succeeds);
#   - description contains FLAKY: fails on attempt 1 (HW_ATTEMPT), then succeeds;
#   - otherwise: one line of Claude-style JSON on stdout, exit 0.

desc=
while [ $# -gt 0 ]; do
	case $1 in
	-p) [ $# -ge 2 ] || { echo "agent.sh: -p needs an argument" >&2; exit 64; }
	    desc=$2; shift 2 ;;
	--system-prompt-file) [ $# -ge 2 ] && shift; shift ;;
	*)  desc=$1; shift ;;
	esac
done
[ -n "$desc" ] || { echo "usage: agent.sh [--system-prompt-file F] -p DESCRIPTION" >&2; exit 64; }

sleep "${AGENT_SLEEP:-0.2}"

case $desc in
*FAIL*)
	if [ -z "${AGENT_FIX_FILE:-}" ] || [ ! -e "$AGENT_FIX_FILE" ]; then
		echo "agent.sh: simulated failure (attempt ${HW_ATTEMPT:-?})" >&2
		exit 1
	fi ;;
*FLAKY*)
	if [ "${HW_ATTEMPT:-1}" = 1 ]; then
		echo "agent.sh: simulated transient failure on attempt 1" >&2
		exit 1
	fi ;;
esac

# JSON string escaping, minimal but valid: backslash and double quote get a
# backslash, newlines and tabs become spaces, other control bytes go.
esc=$(printf '%s' "$desc" | tr '\n\t' '  ' | tr -d '\000-\037' |
	sed 's/\\/\\\\/g; s/"/\\"/g')
printf '{"type":"result","is_error":false,"result":"done: %s"}\n' "$esc"
