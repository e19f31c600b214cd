#!/usr/bin/env bash
# Idempotent host setup for the interop tests (Debian/Ubuntu host, root):
#   setup-host.sh [packages] [build]     (default: both)
#   packages  install what is missing (one apt-get update, only if something is missing)
#   build     cargo build --release --workspace (plugin .so + qkd-kme-sim)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# docker-init (tini) backs `init: true`; cgroupfs-mount mounts cgroups on hosts without an
# init system that does; libclang-dev is for bindgen in the plugin's build script; dpkg-dev,
# gcc and make for the ABI check (apt-get source + configure of strongSwan 6.1.0).
PACKAGES=(docker.io debootstrap tini cgroupfs-mount libclang-dev ca-certificates dpkg-dev gcc make)

packages() {
    local missing=() p
    # Compose: the v2 plugin is fine; otherwise Debian's docker-compose (v1).
    if ! docker compose version >/dev/null 2>&1; then PACKAGES+=(docker-compose); fi
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then log "host: packages present"; return; fi
    need_root "installing ${missing[*]}"
    log "host: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup)"
    log "host: cargo build --release --workspace"
    (cd "$QKD_REPO_ROOT" && cargo build --release --workspace)
}

[ $# -gt 0 ] || set -- packages build
for step in "$@"; do
    case "$step" in
        packages) packages ;;
        build) build ;;
        *) die "unknown step $step (packages|build)" ;;
    esac
done
