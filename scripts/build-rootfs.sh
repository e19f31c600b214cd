#!/usr/bin/env bash
# Build (or reuse) the Debian rootfs tarball used as the base image of the interop tests.
# Prints the tarball path on stdout. Needs root (debootstrap).
#   QKD_ROOTFS_TARBALL  use this tarball instead of the cached one (built if missing)
#   QKD_DEBIAN_MIRROR   override the mirror taken from the machine's apt sources
set -euo pipefail
. "$(dirname "$0")/lib.sh"

key=$(cache_key "$QKD_ROOTFS_SUITE" "$QKD_ROOTFS_PACKAGES" minbase v1)
tarball="${QKD_ROOTFS_TARBALL:-$QKD_CACHE_DIR/rootfs/$QKD_ROOTFS_SUITE-strongswan-$key.tar}"

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

log "rootfs: debootstrap $QKD_ROOTFS_SUITE from $mirror (takes a minute or two)"
debootstrap --variant=minbase --include="$QKD_ROOTFS_PACKAGES" \
    "$QKD_ROOTFS_SUITE" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$work/root/debootstrap/debootstrap.log" ] && tail -n 30 "$work/root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
}
# Package caches and lists only make the image bigger.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* "$work/root/debootstrap"
tar --numeric-owner --xattrs -C "$work/root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
# Tarballs of an older package set are dead weight (~200 MB each).
if [ -z "${QKD_ROOTFS_TARBALL:-}" ]; then
    find "$(dirname "$tarball")" -maxdepth 1 -name "$QKD_ROOTFS_SUITE-strongswan-*.tar" \
        ! -name "$(basename "$tarball")" -delete
fi
log "rootfs: built $tarball ($(du -h "$tarball" | cut -f1))"
echo "$tarball"
