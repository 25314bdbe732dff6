#!/usr/bin/env bash
# inotify_loop.sh NAME -- the classic shell spool worker (sequential, concurrency 1).
# (From the team's shared bench harness, shared/bench/peers/, unchanged otherwise.)
#
#   inotifywait -m -e close_write,moved_to --format %f "$TASK_DIR/NAME" | while read ...
#
# For each <id>.json: parse with jq, run "$CLAUDE_COMMAND -p DESCRIPTION", write
# $RESULT_DIR/NAME/<id>.json atomically (printf to a temp file, mv), remove the task.
# Files already present at start are handled once the watch is established.
# Needs: bash >= 5 (EPOCHREALTIME), inotifywait (inotify-tools), jq (else sed).
# INOTIFY_LOOP_PARSER=sed parses with sed instead of jq (JSON escapes left as is).
set -u
export LC_ALL=C
name=${1:?usage: inotify_loop.sh NAME}
tdir="${TASK_DIR:?TASK_DIR not set}/$name"
rdir="${RESULT_DIR:?RESULT_DIR not set}/$name"
cmd=${CLAUDE_COMMAND:-claude}
parser=${INOTIFY_LOOP_PARSER:-jq}
command -v jq >/dev/null || parser=sed
mkdir -p "$tdir" "$rdir"
work=$(mktemp -d) || exit 1
trap 'rm -rf "$work"' EXIT
errf="$work/stderr"

json_escape() { # REPLY := JSON string body for $1, without forking
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}; s=${s//$'\t'/\\t}
  s=${s//[$'\x01'-$'\x1f']/?}
  REPLY=$s
}

process() {
  local f=$1 path="$tdir/$1" id tid desc out err rc t0 t1 us status
  [[ $f == *.json && $f != .* ]] || return 0
  [[ -f $path ]] || return 0 # already handled (startup scan raced with an event)
  id=${f%.json}
  local -a F=()
  if [[ $parser == jq ]]; then
    mapfile -d '' -t F < <(jq -j '(.task_id // "" | tostring), "\u0000", (.description // "" | tostring), "\u0000"' "$path" 2>/dev/null)
  else
    desc=$(sed -n 's/.*"description"[[:space:]]*:[[:space:]]*"\(\([^"\\]\|\\.\)*\)".*/\1/p' "$path")
    F=("$id" "$desc")
  fi
  tid=${F[0]:-$id}
  desc=${F[1]:-}
  t0=${EPOCHREALTIME/./}
  if ((${#F[@]} == 2)); then
    out=$("$cmd" -p "$desc" 2>"$errf")
    rc=$?
    err=$(<"$errf")
  else
    out="" err="invalid task file" rc=65
  fi
  t1=${EPOCHREALTIME/./}
  us=$((t1 - t0))
  if ((rc == 0)); then status=completed; else status=failed; fi
  json_escape "$tid"; tid=$REPLY
  json_escape "$out"; out=$REPLY
  json_escape "$err"; err=$REPLY
  printf '{"task_id":"%s","worker":"%s","status":"%s","exit_code":%d,"stdout":"%s","stderr":"%s","duration_seconds":%d.%06d}\n' \
    "$tid" "$name" "$status" "$rc" "$out" "$err" $((us / 1000000)) $((us % 1000000)) >"$rdir/.$id.tmp" &&
    mv -f "$rdir/.$id.tmp" "$rdir/$id.json"
  rm -f "$path"
}

inotifywait -m -e close_write,moved_to --format '%f' "$tdir" 2>&1 | {
  # wait until the watch is in place, then handle what is already there
  while IFS= read -r line; do [[ $line == "Watches established." ]] && break; done
  for p in "$tdir"/*.json; do [[ -e $p ]] && process "${p##*/}"; done
  while IFS= read -r f; do process "$f"; done
}
