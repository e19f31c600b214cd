#!/usr/bin/env bash
# Private Docker engine for the interop tests.
#   dockerd.sh start   print "DOCKER_HOST=..." and "DOCKERD_STARTED=0|1" (for eval); starts a
#                      private dockerd only when no usable engine is found
#   dockerd.sh find    like start, but exit 1 instead of starting an engine
#   dockerd.sh stop    stop the private dockerd (by the pid in its pidfile), if running
#   dockerd.sh env     print the DOCKER_HOST of the private engine
# An engine that is already reachable (DOCKER_HOST, or the system socket) is used as is,
# unless QKD_PRIVATE_DOCKERD=1. The private engine keeps its data under $QKD_CACHE_DIR/docker
# so imported and built images survive between runs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DDIR="${QKD_DOCKER_DIR:-$QKD_CACHE_DIR/docker}"
# Unix socket paths are limited to 107 bytes; containerd's sockets live under exec-root too,
# so both stay short by using /run unless the cache path is short itself.
if [ ${#DDIR} -le 60 ]; then EXEC_ROOT="$DDIR/exec"; else EXEC_ROOT="/run/qkd-interop-docker-$(cache_key "$DDIR")"; fi
SOCK="$EXEC_ROOT/docker.sock"
PIDFILE="$DDIR/dockerd.pid"
PRIVATE_HOST="unix://$SOCK"

engine_ok() { DOCKER_HOST="$1" timeout 20 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

private_pid() {
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    # Only a dockerd started with our pidfile counts (guards against a reused pid).
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--pidfile=$PIDFILE" || return 1
    echo "$pid"
}

start() {
    if [ "${1:-}" = --no-start ]; then NO_START=1; else NO_START=0; fi
    if [ "${QKD_PRIVATE_DOCKERD:-0}" != 1 ]; then
        if [ -n "${DOCKER_HOST:-}" ] && engine_ok "$DOCKER_HOST"; then
            echo "DOCKER_HOST=$DOCKER_HOST"; echo "DOCKERD_STARTED=0"; return
        fi
        if [ -S /var/run/docker.sock ] && engine_ok unix:///var/run/docker.sock; then
            echo "DOCKER_HOST=unix:///var/run/docker.sock"; echo "DOCKERD_STARTED=0"; return
        fi
    fi
    if private_pid >/dev/null && engine_ok "$PRIVATE_HOST"; then
        log "dockerd: reusing the private engine (pid $(private_pid)), left running afterwards"
        echo "DOCKER_HOST=$PRIVATE_HOST"; echo "DOCKERD_STARTED=0"; return
    fi
    [ "$NO_START" = 0 ] || return 1
    need_root "dockerd"
    command -v dockerd >/dev/null || die "dockerd missing (scripts/setup-host.sh installs docker.io)"
    # Hosts without an init system that mounts cgroups (containers, minimal VMs): mount
    # the v1 hierarchies the way Debian's cgroupfs-mount does.
    if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ ! -d /sys/fs/cgroup/memory ] \
        && command -v cgroupfs-mount >/dev/null; then
        log "dockerd: no cgroups mounted, running cgroupfs-mount"
        cgroupfs-mount
    fi
    mkdir -p "$DDIR/data" "$EXEC_ROOT"
    rm -f "$SOCK" "$PIDFILE"
    # An empty config file keeps a host /etc/docker/daemon.json out of the picture.
    echo '{}' >"$DDIR/daemon.json"
    log "dockerd: starting a private engine (data in $DDIR, log $DDIR/dockerd.log)"
    # No default bridge and no iptables: the tests only use user-defined bridge networks
    # and never publish ports, and this keeps the host's firewall untouched. vfs works on
    # any filesystem (no overlayfs needed), at the price of full copies per layer.
    setsid dockerd --config-file="$DDIR/daemon.json" \
        --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
        --host="$PRIVATE_HOST" --data-root="$DDIR/data" --exec-root="$EXEC_ROOT" \
        --pidfile="$PIDFILE" >"$DDIR/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        if engine_ok "$PRIVATE_HOST"; then
            log "dockerd: up (pid $(cat "$PIDFILE"))"
            echo "DOCKER_HOST=$PRIVATE_HOST"; echo "DOCKERD_STARTED=1"; return
        fi
        kill -0 $! 2>/dev/null || { tail -n 20 "$DDIR/dockerd.log" >&2; die "dockerd exited"; }
        sleep 0.5
    done
    tail -n 20 "$DDIR/dockerd.log" >&2
    die "dockerd did not answer within 60 s"
}

stop() {
    local pid
    pid=$(private_pid) || { log "dockerd: private engine not running"; unmount_leftovers; return 0; }
    log "dockerd: stopping pid $pid"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "dockerd: pid $pid ignored SIGTERM for 30 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$PIDFILE"
    unmount_leftovers
}

# dockerd leaves its default network namespace bind-mounted under exec-root; that mount
# would make `rm -rf .cache` fail with "Device or resource busy".
unmount_leftovers() {
    local m
    for m in $(awk -v r="$EXEC_ROOT/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}

case "${1:-}" in
    start) start ;;
    # Like start, but status 1 instead of starting an engine.
    find) start --no-start ;;
    stop) stop ;;
    env) echo "DOCKER_HOST=$PRIVATE_HOST" ;;
    *) echo "usage: $0 start|find|stop|env" >&2; exit 2 ;;
esac
