#!/bin/bash
# tests/gluster/teardown.sh MOUNT...: undoes setup.sh. Unmounts each
# MOUNT (lazily when its client process is dead or it is busy), stops and
# deletes the volume, removes its brick, and stops glusterd when setup.sh
# started it (by the pid in $GLUSTER_BASE/glusterd.pid) and it serves no
# other volume.  The packages stay.  Safe to run twice, or after a
# setup.sh that failed half-way.
# Environment: GLUSTER_BASE (required), GLUSTER_VOL (hwtest).
set -uo pipefail
: "${GLUSTER_BASE:?GLUSTER_BASE must name a state folder}"
BASE=$GLUSTER_BASE
VOL=${GLUSTER_VOL:-hwtest}
G="gluster --mode=script"
log() { echo "[gluster-teardown $(date +%T.%3N)] $*" >&2; }

for m in "$@"; do
  mp=$(readlink -m "$m")
  grep -q " $mp fuse.glusterfs " /proc/mounts || continue
  log "unmounting $mp"
  umount "$mp" 2>/dev/null || { log "busy or dead: lazy unmount of $mp"; umount -l "$mp"; }
done

remaining=0
if command -v gluster >/dev/null && $G pool list >/dev/null 2>&1; then
  if $G volume info "$VOL" >/dev/null 2>&1; then
    log "stopping and deleting volume $VOL"
    $G volume stop "$VOL" force >/dev/null 2>&1 || true
    $G volume delete "$VOL" >/dev/null 2>&1 || true
  fi
  remaining=$($G volume list 2>/dev/null | grep -vc '^No volumes present' || true)
fi
rm -rf "$BASE/bricks/$VOL"

if [ "$remaining" = 0 ] && [ -s "$BASE/glusterd.pid" ]; then
  pid=$(cat "$BASE/glusterd.pid")
  if kill -0 "$pid" 2>/dev/null && grep -q glusterd "/proc/$pid/comm"; then
    log "stopping glusterd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$BASE/glusterd.pid"
  # The brick process (glusterfsd) of a deleted volume exits with it;
  # one left behind by a crash is named by its pid file.
  for pf in /var/run/gluster/vols/"$VOL"/*.pid; do
    [ -s "$pf" ] || continue
    p=$(cat "$pf"); kill -0 "$p" 2>/dev/null && grep -q glusterfs "/proc/$p/comm" && kill -KILL "$p"
  done
fi
log "done"
