#!/bin/bash
# tests/gluster/setup.sh MOUNT1 [MOUNT2 ...]: a GlusterFS volume mounted
# several times on this machine, each mount its own glusterfs client
# process, standing for one host (tests/gluster.rs, `make test-gluster`).
#
# Installs the Debian packages glusterfs-server and glusterfs-client when
# glusterd is missing, starts glusterd bound to loopback when none runs
# (its pid in $GLUSTER_BASE/glusterd.pid, so teardown.sh stops only the
# one it started), creates and starts one volume whose single brick is a
# folder of $GLUSTER_BASE, and FUSE-mounts it at every MOUNT, with
# Gluster's default client caches (as hosts in the field run it).
# Needs root, /dev/fuse and, the first time, apt.  Undo: teardown.sh.
#
# Exit status: 0 ready; 3 this machine cannot run GlusterFS (not root, no
# /dev/fuse, the packages cannot be installed), the reason on stderr;
# 1 anything else.
#
# Environment:
#   GLUSTER_BASE   state folder: glusterd.vol, pid file, brick, logs (required)
#   GLUSTER_VOL    volume name (default hwtest)
#   GLUSTER_HOST   brick host; default `hostname` if it resolves to
#                  127.0.0.1, else 127.0.0.2 (gluster refuses "localhost")
# Adapted from the GlusterFS notes of issue #16.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 MOUNT1 [MOUNT2 ...]" >&2; exit 2; }
: "${GLUSTER_BASE:?GLUSTER_BASE must name a state folder}"
BASE=$GLUSTER_BASE
VOL=${GLUSTER_VOL:-hwtest}
G="gluster --mode=script"
log() { echo "[gluster-setup $(date +%T.%3N)] $*" >&2; }
cannot() { echo "cannot run GlusterFS here: $*" >&2; exit 3; }

[ "$(id -u)" = 0 ] || cannot "not root"
[ -c /dev/fuse ] || cannot "no /dev/fuse"
mkdir -p "$BASE/log" "$BASE/bricks"

# ---- 1. packages
if ! command -v glusterd >/dev/null || ! [ -x /sbin/mount.glusterfs ]; then
  command -v apt-get >/dev/null || cannot "glusterd not installed and no apt-get"
  log "installing glusterfs-server glusterfs-client"
  # Without systemd the postinst says "System has not been booted with
  # systemd": harmless, it starts nothing.
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends glusterfs-server glusterfs-client; } >"$BASE/log/apt.log" 2>&1 \
    || { tail -5 "$BASE/log/apt.log" >&2; cannot "the packages could not be installed"; }
fi

# ---- 2. a loopback address to bind to and name the brick with
if [ -n "${GLUSTER_HOST:-}" ]; then
  HOST=$GLUSTER_HOST
elif [ "$(getent ahostsv4 "$(hostname)" | awk 'NR==1{print $1}')" = 127.0.0.1 ]; then
  HOST=$(hostname)
else
  HOST=127.0.0.2
fi
ADDR=$(getent ahostsv4 "$HOST" | awk 'NR==1{print $1}')
case "$ADDR" in 127.*) ;; *) echo "brick host $HOST resolves to '$ADDR', not loopback" >&2; exit 1;; esac

# ---- 3. glusterd, on loopback only (the brick inherits the bind address)
glusterd_up() { $G pool list >/dev/null 2>&1; }
if ! glusterd_up; then
  cat >"$BASE/glusterd.vol" <<VOLFILE
volume management
    type mgmt/glusterd
    option working-directory /var/lib/glusterd
    option transport-type socket
    option transport.address-family inet
    option transport.socket.bind-address $ADDR
    option transport.socket.listen-port 24007
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
VOLFILE
  log "starting glusterd on $ADDR:24007"
  glusterd -f "$BASE/glusterd.vol" -p "$BASE/glusterd.pid" -l "$BASE/log/glusterd.log"
  for _ in $(seq 100); do glusterd_up && break; sleep 0.1; done
  glusterd_up || { echo "glusterd did not come up; see $BASE/log/glusterd.log" >&2; exit 1; }
fi

# ---- 4. the volume: one brick, Gluster's default options
if ! $G volume info "$VOL" >/dev/null 2>&1; then
  brick="$BASE/bricks/$VOL"
  rm -rf "$brick"          # an old brick keeps the old volume id: create would fail
  mkdir -p "$brick"
  log "creating volume $VOL on $HOST:$brick"
  $G volume create "$VOL" "$HOST:$brick" force >&2   # force: the brick is on the root fs
fi
$G volume info "$VOL" | grep -q '^Status: Started' || $G volume start "$VOL" >&2
for _ in $(seq 100); do
  [ "$($G volume status "$VOL" detail 2>/dev/null | grep -c '^Online.*: Y')" -ge 1 ] && break
  sleep 0.1
done

# ---- 5. one glusterfs client process per mount point
for mp in "$@"; do
  mkdir -p "$mp"
  mp=$(cd "$mp" && pwd -P)
  if mountpoint -q "$mp"; then
    grep -q " $mp fuse.glusterfs " /proc/mounts || { echo "$mp is mounted, but not glusterfs" >&2; exit 1; }
    continue
  fi
  log "mounting $ADDR:/$VOL at $mp"
  mount -t glusterfs -o "log-file=$BASE/log/mount$(echo "$mp" | tr / _).log" "$ADDR:/$VOL" "$mp"
done

# ---- 6. ready when a file written through the first mount shows through every other
probe=".setup-probe.$$"
first=$(cd "$1" && pwd -P)
for _ in $(seq 100); do echo ok >"$first/$probe" 2>/dev/null && break; sleep 0.1; done
for mp in "$@"; do
  for _ in $(seq 100); do [ -e "$mp/$probe" ] && break; sleep 0.05; done
  [ -e "$mp/$probe" ] || { echo "mount $mp does not see the volume" >&2; exit 1; }
done
rm -f "$first/$probe"
log "ready: volume $VOL mounted at $*"
