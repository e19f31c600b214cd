#!/usr/bin/env bash
# Build (or reuse) a Debian rootfs tarball used as a base image of the interop tests.
#   build-rootfs.sh [SUITE]   SUITE defaults to $QKD_ROOTFS_SUITE (trixie); e.g. forky
# Prints the tarball path on stdout. Needs root (debootstrap).
#   QKD_ROOTFS_TARBALL  use this tarball for the default suite instead of the cached one
#                       (built if missing)
#   QKD_DEBIAN_MIRROR   override the mirror taken from the machine's apt sources
set -euo pipefail
. "$(dirname "$0")/lib.sh"

suite=${1:-$QKD_ROOTFS_SUITE}
key=$(cache_key "$suite" "$QKD_ROOTFS_PACKAGES" minbase v1)
override=""
[ "$suite" = "$QKD_ROOTFS_SUITE" ] && override=${QKD_ROOTFS_TARBALL:-}
tarball="${override:-$QKD_CACHE_DIR/rootfs/$suite-strongswan-$key.tar}"

if [ -s "$tarball" ]; then
    log "rootfs: reusing $tarball"
    echo "$tarball"; exit 0
fi

need_root "debootstrap"
command -v debootstrap >/dev/null || die "debootstrap missing (scripts/setup-host.sh installs it)"
mirror=$(debian_mirror) || die "no Debian mirror found in the apt sources; set QKD_DEBIAN_MIRROR"
export_apt_proxy
mkdir -p "$(dirname "$tarball")"
work=$(mktemp -d "$(dirname "$tarball")/build.XXXXXX")
# A failed or interrupted build leaves no half tarball behind.
trap 'rm -rf "$work" "$tarball.tmp"' EXIT

script=$(debootstrap_script "$suite")
log "rootfs: debootstrap $suite from $mirror${script:+ (script $(basename "$script"))} (takes a minute or two)"
# shellcheck disable=SC2086 # $script is empty or one path
debootstrap --variant=minbase --include="$QKD_ROOTFS_PACKAGES" \
    "$suite" "$work/root" "$mirror" $script >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$work/root/debootstrap/debootstrap.log" ] && tail -n 30 "$work/root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
}
# Package caches and lists only make the image bigger.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* "$work/root/debootstrap"
tar --numeric-owner --xattrs -C "$work/root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
# Tarballs of an older package set are dead weight (~200 MB each).
if [ -z "$override" ]; then
    find "$(dirname "$tarball")" -maxdepth 1 -name "$suite-strongswan-*.tar" \
        ! -name "$(basename "$tarball")" -delete
fi
log "rootfs: built $tarball ($(du -h "$tarball" | cut -f1))"
echo "$tarball"
