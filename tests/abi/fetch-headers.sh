#!/usr/bin/env bash
# Obtain the real strongSwan 6.1.0 headers (Debian forky's source package) and configure
# the tree far enough to produce config.h, for the ABI check in tests/abi_layout.rs.
#
# Result: $QKD_ABI_CACHE/strongswan-6.1.0 (default <repo>/.cache, which is gitignored), a
# Debian-patched, configured source tree with config.h at its top and a ready marker
# (.qkd-abi-ready). Later runs find the marker and return at once.
#
# How:
#  * The Debian archive URI is derived from this machine's own apt sources
#    (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list, *.list); no mirror host is
#    written anywhere in the repository. QKD_DEBIAN_MIRROR=<uri> overrides the derivation.
#  * A private apt configuration under the cache dir (its own sources list with one
#    `deb-src <uri> forky main` line, its own lists and pkgcache) is used through
#    `apt-get -o Dir::...`; the machine's apt setup is not touched.
#  * `apt-get source strongswan=6.1.0-N` downloads and unpacks (dpkg-source applies the
#    Debian patches). We take the newest 6.1.0-N that forky offers.
#  * `./configure --disable-defaults --enable-mediation`: no default plugins, so configure
#    needs no library headers, but the layout-relevant defines match Debian's build:
#    ME (from --enable-mediation, as in debian/rules), TESTABLE_KE (--with-testable-ke
#    defaults to yes and Debian leaves it), HAVE_STDBOOL_H. The script verifies them.
#
# Needs: apt-get, dpkg-source (package dpkg-dev, which also brings bzip2, xz-utils, patch,
# make), gcc + libc6-dev (configure compiles test programs), and network access to the
# Debian archive. With --install-deps (root only) the missing ones are apt-get installed
# from the machine's normal sources.
#
# Usage: tests/abi/fetch-headers.sh [--force] [--install-deps]
set -euo pipefail

SS_VERSION=6.1.0
SUITE=forky
CONFIGURE_ARGS=(--disable-defaults --enable-mediation)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${QKD_ABI_CACHE:-$root/.cache}
dest=$cache/strongswan-$SS_VERSION
marker=$dest/.qkd-abi-ready

force=0
install_deps=0
for arg in "$@"; do
	case $arg in
		--force) force=1 ;;
		--install-deps) install_deps=1 ;;
		-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
		*) echo "fetch-headers.sh: unknown argument $arg" >&2; exit 2 ;;
	esac
done

# shellcheck source=../../scripts/lib.sh
. "$root/scripts/lib.sh"
log() { echo "fetch-headers: $*" >&2; }
die() { echo "fetch-headers: ERROR: $*" >&2; exit 1; }

if [[ $force == 0 && -f $marker && -f $dest/config.h ]]; then
	log "cached: $dest ($(head -n1 "$marker"))"
	exit 0
fi

start=$(date +%s.%N)

# --- tools -----------------------------------------------------------------------------
need_pkgs=()
command -v apt-get >/dev/null || die "apt-get not found: this check needs a Debian-based machine"
command -v dpkg-source >/dev/null || need_pkgs+=(dpkg-dev)
command -v make >/dev/null || need_pkgs+=(make)
command -v gcc >/dev/null || need_pkgs+=(gcc)
[[ -e /usr/include/stdio.h ]] || need_pkgs+=(libc6-dev)
command -v bzip2 >/dev/null || need_pkgs+=(bzip2)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
if ((${#need_pkgs[@]})); then
	if [[ $install_deps == 1 && $(id -u) == 0 ]]; then
		log "installing ${need_pkgs[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2 \
			|| { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2; } \
			|| die "could not install ${need_pkgs[*]}"
	else
		die "missing tools; install: apt-get install ${need_pkgs[*]} (or rerun with --install-deps as root)"
	fi
fi

# --- Debian archive URI, derived from the machine's apt sources (scripts/lib.sh) ---------
uri=$(debian_mirror) || die "no Debian archive URI found in /etc/apt/sources.list{,.d/} (set QKD_DEBIAN_MIRROR=<archive uri>)"
log "Debian archive (from the machine's apt sources): $uri"

# --- private apt setup ----------------------------------------------------------------------
aptdir=$cache/apt-$SUITE
mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/sources.list.d" "$aptdir/preferences.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
opts=""
[[ -f $keyring ]] && opts=" [signed-by=$keyring]"
echo "deb-src$opts $uri $SUITE main" >"$aptdir/sources.list"
apt_opts=(
	-o "Dir::Etc::SourceList=$aptdir/sources.list"
	-o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
	-o "Dir::Etc::PreferencesParts=$aptdir/preferences.d"
	-o "Dir::State::Lists=$aptdir/lists"
	-o "Dir::Cache=$aptdir/cache"
	-o "APT::Get::List-Cleanup=0"
	-q
)
# _apt cannot write into our cache dir; running the download as root avoids apt's warning.
[[ $(id -u) == 0 ]] && apt_opts+=(-o "APT::Sandbox::User=root")

log "apt-get update ($SUITE sources only, private lists under $aptdir)"
apt-get "${apt_opts[@]}" --error-on=any update >&2 || die "apt-get update for $SUITE failed (network? archive URI $uri)"

versions=$(apt-cache "${apt_opts[@]}" showsrc strongswan | awk '/^Version:/ {print $2}' | sort -u) \
	|| die "apt-cache showsrc strongswan failed for $SUITE"
pick=$(printf '%s\n' $versions | grep -E "^$SS_VERSION-" | sort -V | tail -n1 || true)
[[ -n $pick ]] || die "$SUITE offers no strongswan $SS_VERSION-* source (found: ${versions:-none})"
log "strongswan source version $pick"

work=$(mktemp -d "$cache/.fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" source "strongswan=$pick" >&2) \
	|| die "apt-get source strongswan=$pick failed"
tree=$work/strongswan-$SS_VERSION
[[ -f $tree/configure && -f $tree/src/libstrongswan/library.h ]] || die "unpacked tree $tree looks wrong"
cp "$work"/strongswan_"$pick".dsc "$tree/.qkd-source.dsc" 2>/dev/null || true

# --- configure ----------------------------------------------------------------------------
log "configure ${CONFIGURE_ARGS[*]}"
(cd "$tree" && ./configure "${CONFIGURE_ARGS[@]}" >"$tree/.qkd-configure.log" 2>&1) \
	|| { tail -n 30 "$tree/.qkd-configure.log" >&2; die "configure failed (log: $tree/.qkd-configure.log)"; }

cfg=$tree/config.h
grep -q '^#define ME ' "$cfg" || die "config.h lacks ME (mediation): layouts would differ from Debian's"
grep -q '^#define TESTABLE_KE 1' "$cfg" || die "config.h lacks TESTABLE_KE: key_exchange_t would have 5 slots, Debian has 6"
grep -q '^#define HAVE_STDBOOL_H 1' "$cfg" || die "config.h lacks HAVE_STDBOOL_H"
grep -q "^#define VERSION \"$SS_VERSION\"" "$cfg" || die "config.h VERSION is not $SS_VERSION"

end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
{
	echo "strongswan $pick from $SUITE, configured with: ${CONFIGURE_ARGS[*]}"
	echo "fetched $(date -u +%Y-%m-%dT%H:%M:%SZ) in ${secs}s"
} >"$tree/.qkd-abi-ready"

rm -rf "$dest"
mv "$tree" "$dest"
log "ready: $dest (${secs}s)"
