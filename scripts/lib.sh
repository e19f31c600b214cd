# shellcheck shell=bash
# Common helpers for the host-side scripts (sourced, not executed).
# Every path the scripts write lives under $QKD_CACHE_DIR so a CI cache can keep it.

QKD_REPO_ROOT="${QKD_REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
QKD_CACHE_DIR="${QKD_CACHE_DIR:-$QKD_REPO_ROOT/.cache}"

# Suites and package set of the test rootfs; the cache key of a rootfs tarball is derived
# from its suite and the package list, so changing them rebuilds it. The main suite (trixie,
# strongSwan 6.0.1) runs every node; scenarios may put a gateway on another suite (forky,
# strongSwan 6.1.0), whose rootfs is built the same way with the same packages.
# charon-systemd is left out on purpose: in trixie and forky it conflicts with
# strongswan-charon, which ships the foreground /usr/lib/ipsec/charon the tests run;
# libstrongswan-standard-plugins (gcm, agent, ...) is only a Recommends, which debootstrap
# does not follow, yet swanctl's built-in plugin list expects it. curl lets tests and humans
# talk ETSI 014 to the KMEs from a gateway container.
QKD_ROOTFS_SUITE="${QKD_ROOTFS_SUITE:-trixie}"
QKD_ROOTFS_PACKAGES="${QKD_ROOTFS_PACKAGES:-strongswan-swanctl,strongswan-charon,libcharon-extra-plugins,libstrongswan-standard-plugins,libstrongswan-extra-plugins,iproute2,iputils-ping,curl}"

log()  { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root"; }

# Mirror for debootstrap: an override, else the main Debian archive the machine's own apt
# uses (deb822 .sources files first, then sources.list). The repo never names a mirror
# host, so the scripts work wherever apt works.
debian_mirror() {
    if [ -n "${QKD_DEBIAN_MIRROR:-}" ]; then echo "$QKD_DEBIAN_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # URIs of stanzas that are binary ("deb") and not the security archive.
        uri=$(awk '
            BEGIN { RS=""; FS="\n" }
            {
                types=""; uris=""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/)  { types=$i }
                    if ($i ~ /^URIs:/)   { uris=$i }
                }
                if (types ~ /(^|[ \t:])deb([ \t]|$)/ && uris != "") {
                    sub(/^URIs:[ \t]*/, "", uris); n = split(uris, u, /[ \t]+/)
                    for (j = 1; j <= n; j++) if (u[j] ~ /^(https?|file):/ && u[j] !~ /security/) { print u[j]; exit }
                }
            }' "$f")
        if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri=$(awk '$1 == "deb" {
                   for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /=/ && $i !~ /\]$/) {
                       if ($i ~ /^(https?|file):/ && $i !~ /security/) { print $i; exit } else break } }' "$f")
        if [ -n "$uri" ]; then echo "${uri%/}"; return; fi
    done
    return 1
}

# debootstrap fetches with wget, which does not read apt's configuration: hand it apt's
# HTTP proxy, if any, through the environment.
export_apt_proxy() {
    local p
    p=$(apt-config dump 2>/dev/null | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p' | head -n1)
    if [ -n "$p" ] && [ "$p" != "DIRECT" ] && [ -z "${http_proxy:-}" ]; then export http_proxy="$p"; fi
}

# debootstrap script for SUITE: empty when debootstrap knows the suite, else the sid script
# (an older host's debootstrap has no script for newer Debian suites such as forky, which
# are bootstrapped exactly like sid).
debootstrap_script() {
    local dir="${DEBOOTSTRAP_DIR:-/usr/share/debootstrap}/scripts"
    if [ -e "$dir/$1" ]; then return 0; fi
    [ -e "$dir/sid" ] || die "debootstrap has no script for $1 (nor sid)"
    echo "$dir/sid"
}

# Short stable hash of its arguments (cache keys).
cache_key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }
