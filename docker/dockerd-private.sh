#!/usr/bin/env bash
# A Docker engine of its own for offline builds and the deployment test, beside anything else on the machine:
# its own socket, data root, exec root and pid file under one state directory, and no bridge or iptables rules, so
# it touches no host network (containers use host networking, bound to 127.0.0.1). dockerd picks its storage
# driver (overlay2 where the kernel mounts overlayfs, else vfs, which copies every layer in full and is slow);
# OPENGROK_DOCKER_STORAGE_DRIVER=vfs forces one.
#
#   docker/dockerd-private.sh start [STATE_DIR]   # prints DOCKER_HOST=unix://STATE_DIR/docker.sock
#   docker/dockerd-private.sh stop  [STATE_DIR]   # stops that engine by its pid, nothing else
#
# STATE_DIR defaults to $OPENGROK_DOCKER_STATE, else /var/tmp/opengrok-docker. Needs root (dockerd does).
set -euo pipefail

action=${1:?usage: $0 start|stop [STATE_DIR]}
state=${2:-${OPENGROK_DOCKER_STATE:-/var/tmp/opengrok-docker}}
socket="$state/docker.sock"
pidfile="$state/dockerd.pid"

case "$action" in
  start)
    command -v dockerd >/dev/null || { echo "dockerd not found: install Debian's docker.io (make docker-packages)" >&2; exit 1; }
    mkdir -p "$state/data" "$state/exec"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "DOCKER_HOST=unix://$socket"
      exit 0
    fi
    nohup dockerd -H "unix://$socket" --data-root "$state/data" --exec-root "$state/exec" --pidfile "$pidfile" \
      ${OPENGROK_DOCKER_STORAGE_DRIVER:+--storage-driver "$OPENGROK_DOCKER_STORAGE_DRIVER"} --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
      >"$state/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
      if DOCKER_HOST="unix://$socket" docker version >/dev/null 2>&1; then
        echo "DOCKER_HOST=unix://$socket"
        exit 0
      fi
      sleep 1
    done
    echo "dockerd did not answer on $socket within 60 s; see $state/dockerd.log" >&2
    exit 1
    ;;
  stop)
    [ -f "$pidfile" ] || exit 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || exit 0
    for _ in $(seq 1 30); do
      if ! kill -0 "$pid" 2>/dev/null; then
        # dockerd leaves its network namespace (and after a crash, layer) mounts behind: only those under $state.
        awk -v state="$state/" 'index($2, state) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount
        exit 0
      fi
      sleep 1
    done
    echo "dockerd $pid still running after 30 s; see $state/dockerd.log" >&2
    exit 1
    ;;
  *)
    echo "usage: $0 start|stop [STATE_DIR]" >&2
    exit 2
    ;;
esac
