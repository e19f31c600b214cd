#!/usr/bin/env bash
# Docker interop tests of the strongSwan QKD plugin: one runner for setup, build, scenarios
# and teardown.
#
#   tests/interop/run.sh [options] [SCENARIO...]   run scenarios (default: all): names, globs
#                                                  or paths of scenario files
#   tests/interop/run.sh [options] demo            bring the tunnel up, show it, ping through it
#   tests/interop/run.sh --list                    list scenarios
#   tests/interop/run.sh --down                    remove what a --keep run left behind
#
# Options:
#   --keep        leave containers (and a private dockerd) running afterwards, for debugging
#   --no-build    skip the cargo release build (use what is in target/release)
#   --no-setup    skip the host package check
#   --strict      count skipped scenarios as failures (CI)
#   --base-image IMAGE   build the node image FROM IMAGE (e.g. debian:trixie, needs a registry)
#                        instead of the debootstrapped rootfs; an image for another suite
#                        (see "# suites:" in scenarios) is then built FROM IMAGE's
#                        repository tagged with the suite (debian:forky)
# Environment: QKD_CACHE_DIR (default <repo>/.cache: rootfs tarball, docker data, run logs),
# QKD_ROOTFS_TARBALL, QKD_DEBIAN_MIRROR, QKD_PRIVATE_DOCKERD=1, CARGO_TARGET_DIR,
# QKD_SCENARIO_TIMEOUT (seconds per scenario, default 600).
set -Eeuo pipefail

INTEROP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$INTEROP_DIR/../.." && pwd)
SCRIPTS="$REPO_ROOT/scripts"
export QKD_REPO_ROOT="$REPO_ROOT"
# shellcheck disable=SC1091
. "$SCRIPTS/lib.sh"

KEEP=0 BUILD=1 SETUP=1 STRICT=0 MODE=run BASE_IMAGE_ARG=""
SELECTED=()
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --no-build) BUILD=0 ;;
        --no-setup) SETUP=0 ;;
        --strict) STRICT=1 ;;
        --base-image) BASE_IMAGE_ARG=${2:?--base-image needs an image}; shift ;;
        --list) MODE=list ;;
        --down) MODE=down ;;
        -h|--help) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        demo) MODE=demo ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) SELECTED+=("$1") ;;
    esac
    shift
done

export QKD_INTEROP_DIR="$INTEROP_DIR"
export QKD_INTEROP_PROJECT=qkd-interop
export QKD_INTEROP_PREFIX="${QKD_INTEROP_PREFIX:-}"
export QKD_INTEROP_IMAGE=qkd-interop/node:latest
# Per-gateway images (gateways_up sets them from GW_SUITE); compose needs them set even for
# a teardown.
export QKD_INTEROP_GW_A_IMAGE=$QKD_INTEROP_IMAGE QKD_INTEROP_GW_B_IMAGE=$QKD_INTEROP_IMAGE
export QKD_INTEROP_STRICT=$STRICT
export QKD_KME_EXTRA_ARGS=""
INTEROP_CACHE="$QKD_CACHE_DIR/interop"

# ---------------------------------------------------------------- scenarios -------------
# scenarios/NN-name.sh -> "name"; run in file order. The "# desc: " line is the description;
# a "# suites: forky" line asks for node images of further Debian suites (built only when
# such a scenario is selected).
scenario_files() { ls "$INTEROP_DIR"/scenarios/*.sh 2>/dev/null | sort; }
scenario_name() { local b; b=$(basename "$1" .sh); echo "${b#[0-9]*-}"; }
scenario_desc() { sed -n 's/^# desc: //p' "$1" | head -n 1; }
scenario_suites() { sed -n 's/^# suites: //p' "$@" | { grep -oE '[[:alnum:]._-]+' || true; } | sort -u; }

if [ "$MODE" = list ]; then
    for f in $(scenario_files); do
        printf '%-28s %s%s\n' "$(scenario_name "$f")" "$(scenario_desc "$f")" \
            "$(scenario_suites "$f" | tr '\n' ' ' | sed 's/ $//; s/^./ [&/; s/.$/&]/')"
    done
    exit 0
fi

# The scenario files to run (demo: demo.sh), chosen before any setup so that images only
# some scenarios need are built only when they run.
FILES=()
if [ "$MODE" = demo ]; then
    FILES=("$INTEROP_DIR/demo.sh")
elif [ "$MODE" = run ]; then
    # A path to a scenario file runs that file (ad-hoc scenarios outside scenarios/).
    for s in "${SELECTED[@]}"; do [ -f "$s" ] && FILES+=("$(cd "$(dirname "$s")" && pwd)/$(basename "$s")"); done
    for f in $(scenario_files); do
        n=$(scenario_name "$f")
        if [ ${#SELECTED[@]} -eq 0 ]; then FILES+=("$f"); continue; fi
        for s in "${SELECTED[@]}"; do
            # shellcheck disable=SC2053 # globs are wanted
            if [[ $n == $s ]]; then FILES+=("$f"); break; fi
        done
    done
    [ ${#FILES[@]} -gt 0 ] || die "no scenario matches: ${SELECTED[*]} (see --list)"
fi

# ---------------------------------------------------------------- compose ---------------
pick_compose() {
    if docker compose version >/dev/null 2>&1; then echo "docker compose"
    elif command -v docker-compose >/dev/null; then echo "docker-compose"
    else die "neither 'docker compose' nor docker-compose found"; fi
}
compose() {
    # shellcheck disable=SC2086
    $QKD_COMPOSE -p "$QKD_INTEROP_PROJECT" -f "$INTEROP_DIR/docker-compose.yml" "$@"
}

# ---------------------------------------------------------------- teardown --------------
DOCKERD_STARTED=0
RUN_DIR=""
teardown_containers() {
    [ -n "${QKD_COMPOSE:-}" ] || return 0
    # Compose needs the path variables set even to tear down; any existing dir will do.
    export QKD_INTEROP_RUN_DIR="${QKD_INTEROP_RUN_DIR:-/nonexistent}" QKD_INTEROP_SCEN_DIR="${QKD_INTEROP_SCEN_DIR:-/nonexistent}"
    compose down --remove-orphans -t 3 >/dev/null 2>&1 || true
    local id
    # Anything compose did not catch, by the ids recorded when it was created.
    if [ -n "$RUN_DIR" ]; then
        for id in $(sort -u "$RUN_DIR/container-ids" 2>/dev/null); do docker rm -f "$id" >/dev/null 2>&1 || true; done
        for id in $(sort -u "$RUN_DIR/network-ids" 2>/dev/null); do docker network rm "$id" >/dev/null 2>&1 || true; done
    fi
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$KEEP" = 1 ] && [ "$MODE" != down ]; then
        print_keep_help
    else
        teardown_containers
        if [ "$DOCKERD_STARTED" = 1 ]; then "$SCRIPTS/dockerd.sh" stop || true; fi
    fi
    exit "$rc"
}
print_keep_help() {
    cat >&2 <<EOF

Left running (--keep). To look around:
  export DOCKER_HOST=$DOCKER_HOST
  docker exec ${QKD_INTEROP_PREFIX}gw-a swanctl --list-sas
  docker exec ${QKD_INTEROP_PREFIX}gw-a ping -c 3 -I 198.51.100.1 203.0.113.1
  docker exec ${QKD_INTEROP_PREFIX}kme qkd-kme-sim admin --url http://127.0.0.1:8000 stats
  logs: ${QKD_INTEROP_SCEN_DIR:-$RUN_DIR}/gw-*/log/charon.log
Remove it all with: $INTEROP_DIR/run.sh --down
EOF
}
SCEN_PID=""
on_signal() {
    echo "    interrupted: tearing down" >&2
    if [ -n "$SCEN_PID" ]; then kill -TERM -- "-$SCEN_PID" 2>/dev/null || kill -TERM "$SCEN_PID" 2>/dev/null || true; fi
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# ---------------------------------------------------------------- setup -----------------
T0=$SECONDS
if [ "$MODE" != down ]; then
    [ "$SETUP" = 1 ] && "$SCRIPTS/setup-host.sh" packages
    if [ "$BUILD" = 1 ]; then
    "$SCRIPTS/setup-host.sh" build
    # The gateways install the plugin and the simulator from these packages.
    mkdir -p "$QKD_CACHE_DIR"
    if ! QKD_DEB_LINTIAN=0 "$SCRIPTS/build-debs.sh" >"$QKD_CACHE_DIR/build-debs.log" 2>&1; then
        tail -n 20 "$QKD_CACHE_DIR/build-debs.log" >&2
        log "build: scripts/build-debs.sh failed (log: $QKD_CACHE_DIR/build-debs.log): staging the binaries instead"
    fi
fi
fi
if [ "$MODE" = down ]; then
    # --down stops the private dockerd although this invocation did not start it.
    if engine=$("$SCRIPTS/dockerd.sh" find); then
        eval "$engine"; export DOCKER_HOST
        QKD_COMPOSE=$(pick_compose); export QKD_COMPOSE
        teardown_containers
    fi
    "$SCRIPTS/dockerd.sh" stop
    exit 0
fi
eval "$("$SCRIPTS/dockerd.sh" start)"
export DOCKER_HOST DOCKERD_STARTED
QKD_COMPOSE=$(pick_compose); export QKD_COMPOSE
# Containers of an earlier --keep run would clash with ours.
teardown_containers

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
PLUGIN_SO="$TARGET_DIR/libstrongswan_qkd.so"
SIM_BIN="$TARGET_DIR/qkd-kme-sim"

# Base image of a suite: the debootstrapped rootfs, imported once per rootfs (keyed by its
# file name) as qkd-interop/SUITE-base; or, with --base-image, a registry image.
base_image() { # SUITE -> prints the image
    local suite=$1 tarball repo="qkd-interop/$1-base" img
    if [ -n "$BASE_IMAGE_ARG" ]; then
        if [ "$suite" = "$QKD_ROOTFS_SUITE" ]; then echo "$BASE_IMAGE_ARG"
        elif [[ ${BASE_IMAGE_ARG##*/} == *:* ]]; then echo "${BASE_IMAGE_ARG%:*}:$suite"
        else echo "$BASE_IMAGE_ARG:$suite"; fi
        return
    fi
    # Called as $(base_image ...), where errexit is off: every failure returns.
    tarball=$("$SCRIPTS/build-rootfs.sh" "$suite") || return 1
    img="$repo:$(basename "$tarball" .tar)"
    if ! docker image inspect "$img" >/dev/null 2>&1; then
        log "images: importing $tarball"
        docker import "$tarball" "$img" >/dev/null || return 1
    fi
    docker tag "$img" "$repo:latest" || return 1
    echo "$img"
}
# Node image of a suite: the main suite's is $QKD_INTEROP_IMAGE, others qkd-interop/node-SUITE.
node_image_of() { if [ "$1" = "$QKD_ROOTFS_SUITE" ]; then echo "$QKD_INTEROP_IMAGE"; else echo "qkd-interop/node-$1:latest"; fi; }

# Node images: staged context = Dockerfile + rootfs overlay with our binaries, built FROM
# each suite's base: the main suite (every node) plus the suites the selected scenarios ask
# for. Scenarios find them in QKD_INTEROP_IMAGES ("suite=image ...").
ctx="$INTEROP_CACHE/context"
rm -rf "$ctx"; mkdir -p "$ctx/rootfs/usr/local/sbin" "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/usr/lib/ipsec/plugins"
cp "$INTEROP_DIR/image/Dockerfile" "$ctx/Dockerfile"
cp "$INTEROP_DIR/image/gw-entry.sh" "$ctx/rootfs/usr/local/sbin/gw-entry"
export QKD_INTEROP_HAVE_PLUGIN=0 QKD_INTEROP_HAVE_SIM=0 QKD_INTEROP_FROM_DEB=0
mkdir -p "$ctx/debs"
DEB_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debian"
# Newest package NAME in $DEB_DIR; empty (not a failure) when there is none.
deb_of() { local debs=("$DEB_DIR/$1"_*.deb); [ -e "${debs[0]}" ] && ls -1t "${debs[@]}" | head -n 1 || true; }
PLUGIN_DEB=$(deb_of strongswan-qkd) SIM_DEB=$(deb_of qkd-kme-sim)
# The packages, when they hold the current build: the image then runs what users install
# (dpkg -i in the Dockerfile); otherwise the bare binaries are staged as an overlay.
if [ -n "$PLUGIN_DEB" ] && [ -n "$SIM_DEB" ] && [ -f "$PLUGIN_SO" ] \
        && [ ! "$PLUGIN_SO" -nt "$PLUGIN_DEB" ] && [ ! "$SIM_BIN" -nt "$SIM_DEB" ]; then
    cp "$PLUGIN_DEB" "$SIM_DEB" "$ctx/debs/"
    QKD_INTEROP_HAVE_PLUGIN=1 QKD_INTEROP_FROM_DEB=1
    log "images: plugin and simulator from $(basename "$PLUGIN_DEB") and $(basename "$SIM_DEB")"
elif [ -f "$PLUGIN_SO" ]; then
    cp "$PLUGIN_SO" "$ctx/rootfs/usr/lib/ipsec/plugins/libstrongswan-qkd.so"
    [ -x "$TARGET_DIR/qkdctl" ] && cp "$TARGET_DIR/qkdctl" "$ctx/rootfs/usr/local/sbin/qkdctl"
    QKD_INTEROP_HAVE_PLUGIN=1
    log "images: no up-to-date .deb in $DEB_DIR (scripts/build-debs.sh): staging $PLUGIN_SO"
else
    log "images: $PLUGIN_SO not built: gateways run without the QKD plugin"
fi
[ "$QKD_INTEROP_FROM_DEB" = 0 ] && [ -x "$SIM_BIN" ] && cp "$SIM_BIN" "$ctx/rootfs/usr/local/bin/qkd-kme-sim"
# --network host: RUN steps (only used with a registry base) need a network even when the
# engine has no default bridge. The legacy builder is used where buildx is missing.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
SUITES=("$QKD_ROOTFS_SUITE")
if [ ${#FILES[@]} -gt 0 ]; then
    for suite in $(scenario_suites "${FILES[@]}"); do
        [ "$suite" = "$QKD_ROOTFS_SUITE" ] || SUITES+=("$suite")
    done
fi
QKD_INTEROP_IMAGES=""
BASES=()
for suite in "${SUITES[@]}"; do
    t_img=$SECONDS
    base=$(base_image "$suite") || die "no base image for $suite"
    BASES+=("$base")
    node=$(node_image_of "$suite")
    log "images: building $node FROM $base"
    docker build -q --network host --build-arg "BASE_IMAGE=$base" -t "$node" "$ctx" >"$INTEROP_CACHE/build-$suite.log" 2>&1 \
        || { cat "$INTEROP_CACHE/build-$suite.log" >&2; die "docker build of the $suite image failed"; }
    [ "$suite" = "$QKD_ROOTFS_SUITE" ] || log "images: $suite ready in $((SECONDS - t_img)) s"
    QKD_INTEROP_IMAGES+="${QKD_INTEROP_IMAGES:+ }$suite=$node"
done
export QKD_INTEROP_IMAGES
# vfs stores every layer as a full copy: drop what the rebuild superseded, including base
# images of an older rootfs.
docker image prune -f >/dev/null 2>&1 || true
if [ -z "$BASE_IMAGE_ARG" ]; then
    for suite in "${SUITES[@]}"; do
        docker images --format '{{.Repository}}:{{.Tag}}' "qkd-interop/$suite-base" \
            | grep -vxF -f <(printf '%s\n' "${BASES[@]}" "qkd-interop/$suite-base:latest") \
            | xargs -r docker rmi >/dev/null 2>&1 || true
    done
fi

# Per-run directory: certificates, rendered configs and logs of every scenario.
RUN_DIR="$INTEROP_CACHE/runs/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN_DIR/certs"
ln -sfn "$RUN_DIR" "$INTEROP_CACHE/runs/latest"
# Keep the last 10 runs.
ls -1d "$INTEROP_CACHE"/runs/2* 2>/dev/null | head -n -10 | xargs -r rm -rf
export QKD_INTEROP_RUN_DIR="$RUN_DIR"
PSK="0x$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"; export PSK

# Test PKI for the KMEs' mutual TLS, made by the simulator itself.
if [ -x "$SIM_BIN" ]; then
    if "$SIM_BIN" gen-certs --out "$RUN_DIR/certs" \
            --kme kme-a:192.0.2.30,kme --kme kme-b:192.0.2.30,kme --sae sae-a --sae sae-b \
            >"$RUN_DIR/gen-certs.log" 2>&1 && [ -s "$RUN_DIR/certs/ca.pem" ]; then
        QKD_INTEROP_HAVE_SIM=1
    else
        log "kme: qkd-kme-sim gen-certs failed (see $RUN_DIR/gen-certs.log): KME scenarios are skipped"
    fi
else
    log "kme: $SIM_BIN not built: KME scenarios are skipped"
fi
log "setup done in $((SECONDS - T0)) s (plugin: $QKD_INTEROP_HAVE_PLUGIN, simulator: $QKD_INTEROP_HAVE_SIM)"

# ---------------------------------------------------------------- running ---------------
RESULTS=()
FAILED=0
ERROR_RE='fail|error|unacceptable|NO_PROP|NO_PROPOSAL|TS_UNACCEPTABLE|INVALID_KE|qkd: |giving up|not found|killed|signal|abort'
print_excerpt() { # SCEN_DIR
    local d=$1 gw f
    for gw in gw-a gw-b; do
        f="$d/$gw/log/charon.log"
        [ -s "$f" ] || continue
        # Lines that usually say what went wrong, wherever they are in the log.
        if grep -Ei "$ERROR_RE" "$f" | grep -vq 'loaded plugins:'; then
            printf '    --- %s: error lines in %s\n' "$gw" "${f#"$REPO_ROOT/"}"
            grep -Ei "$ERROR_RE" "$f" | grep -v 'loaded plugins:' | tail -n 20 | sed 's/^/    | /'
        fi
        printf '    --- %s: last %s lines of %s\n' "$gw" "${QKD_EXCERPT_LINES:-40}" "${f#"$REPO_ROOT/"}"
        tail -n "${QKD_EXCERPT_LINES:-40}" "$f" | sed 's/^/    | /'
    done
    for f in "$d"/docker-*.log; do
        [ -s "$f" ] || continue
        case "$f" in *gw-*) grep -q . "$d/$(basename "$f" .log | sed 's/docker-//')/log/charon.log" 2>/dev/null && continue ;; esac
        printf '    --- last 15 lines of %s\n' "${f#"$REPO_ROOT/"}"
        tail -n 15 "$f" | sed 's/^/    | /'
    done
}
run_scenario() { # NAME FILE
    local name=$1 file=$2 t0=$SECONDS rc node
    export QKD_INTEROP_SCEN_DIR="$RUN_DIR/$name"
    mkdir -p "$QKD_INTEROP_SCEN_DIR"
    printf '\n=== %s: %s\n' "$name" "$(scenario_desc "$file")"
    # In the background + wait, so that Ctrl-C/SIGTERM reach our trap at once (bash defers
    # traps until a foreground child ends); timeout runs it in its own process group, which
    # on_signal ends by the id of that group.
    timeout -k 10 "${QKD_SCENARIO_TIMEOUT:-600}" bash "$INTEROP_DIR/lib/scenario-exec.sh" "$file" \
        > >(tee "$QKD_INTEROP_SCEN_DIR/output.log") 2>&1 &
    SCEN_PID=$!
    set +e
    wait "$SCEN_PID"
    rc=$?
    set -e
    SCEN_PID=""
    [ "$rc" = 124 ] && echo "    FAIL: scenario timed out after ${QKD_SCENARIO_TIMEOUT:-600} s"
    # Keep each container's stdout/stderr (charon's stderr logger, the simulator's log).
    for node in kme gw-a gw-b; do
        docker logs "$(container_of "$node")" >"$QKD_INTEROP_SCEN_DIR/docker-$node.log" 2>&1 || rm -f "$QKD_INTEROP_SCEN_DIR/docker-$node.log"
    done
    local verdict=PASS
    if [ "$rc" = 77 ]; then verdict=SKIP; [ "$STRICT" = 1 ] && FAILED=1
    elif [ "$rc" != 0 ]; then verdict=FAIL; FAILED=1; print_excerpt "$QKD_INTEROP_SCEN_DIR"; fi
    RESULTS+=("$(printf '%-4s %-28s %4ss' "$verdict" "$name" "$((SECONDS - t0))")")
    printf '=== %s %s (%ss)\n' "$verdict" "$name" "$((SECONDS - t0))"
    # Next scenario starts from nothing (unless the user wants to look at this one).
    if [ "$KEEP" != 1 ]; then compose rm -s -f >/dev/null 2>&1 || true; fi
}
container_of() { printf '%s%s' "$QKD_INTEROP_PREFIX" "$1"; }

if [ "$MODE" = demo ]; then
    run_scenario demo "$INTEROP_DIR/demo.sh"
else
    for f in "${FILES[@]}"; do
        run_scenario "$(scenario_name "$f")" "$f"
        # With --keep only the last scenario's containers stay.
    done
fi

printf '\n===== interop summary (%s, logs in %s)\n' "$(date +%T)" "${RUN_DIR#"$REPO_ROOT/"}"
printf '  %s\n' "${RESULTS[@]}"
printf '  total %s s\n' "$((SECONDS - T0))"
exit "$FAILED"
