# shellcheck shell=bash
# Common helpers for the host-side scripts (sourced, not executed).
# Every path the scripts write lives under $QKD_CACHE_DIR so a CI cache can keep it.

QKD_REPO_ROOT="${QKD_REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
QKD_CACHE_DIR="${QKD_CACHE_DIR:-$QKD_REPO_ROOT/.cache}"
# Resolved: a worktree whose .cache is a symlink to another checkout's must name the private
# dockerd's pidfile and socket exactly as that checkout does, or dockerd.sh would not
# recognise the running engine and would remove its socket while starting a second one.
if [ -d "$QKD_CACHE_DIR" ]; then QKD_CACHE_DIR=$(cd "$QKD_CACHE_DIR" && pwd -P); fi

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

# A script that stops on an error says which command failed and where, never exits silently.
# Installed by scripts that run with errexit; `-E` passes it into functions and command
# substitutions, so a failing $(...) is named too. QKD_STEP_LOG, when set, names the log of
# the step running now.
on_error() {
    local rc=$?
    log "ERROR: '$BASH_COMMAND' failed (exit $rc) at ${BASH_SOURCE[1]:-?}:${BASH_LINENO[0]}${QKD_STEP_LOG:+; its log: $QKD_STEP_LOG}"
}
if [[ $- == *e* ]]; then
    set -E
    trap on_error ERR
fi

need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root"; }

# The Debian archive the machine's own apt uses, for debootstrap and apt-get source: an
# override (QKD_DEBIAN_MIRROR), else the first main-archive URI of its sources (deb822
# .sources files first, then sources.list). The repo never names a mirror host, so the
# scripts work wherever apt works.
# A "main Debian archive" entry: a deb/deb-src source whose suites are Debian codenames or
# suite names (optionally -updates/-backports/-proposed-updates, never -security) and whose
# components include main.
debian_suite_re='^(buzz|rex|bo|hamm|slink|potato|woody|sarge|etch|lenny|squeeze|wheezy|jessie|stretch|buster|bullseye|bookworm|trixie|forky|duke|sid|oldoldstable|oldstable|stable|testing|unstable|experimental)(-updates|-backports|-backports-sloppy|-proposed-updates)?$'

debian_archive_uris() {
    local f
    shopt -s nullglob
    # deb822 *.sources
    for f in /etc/apt/sources.list.d/*.sources; do
        awk -v re="$debian_suite_re" '
            function flush() {
                if (types ~ /(^| )deb(-src)?( |$)/ && enabled != "no" && comps ~ /(^| )main( |$)/) {
                    n = split(suites, s, " "); ok = 0
                    for (i = 1; i <= n; i++) if (s[i] ~ re) ok = 1
                    if (ok) { m = split(uris, u, " "); for (i = 1; i <= m; i++) print u[i] }
                }
                types = uris = suites = comps = enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                line = $0; key = tolower(line); sub(/:.*/, "", key); sub(/^[^:]*:[ \t]*/, "", line)
                gsub(/[ \t]+/, " ", line)
                if (key == "types") types = line
                else if (key == "uris") uris = line
                else if (key == "suites") suites = line
                else if (key == "components") comps = line
                else if (key == "enabled") enabled = tolower(line)
            }
            END { flush() }' "$f"
    done
    # one-line format
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk -v re="$debian_suite_re" '
            /^[ \t]*(deb|deb-src)[ \t]/ {
                sub(/[ \t]*#.*/, "")
                line = $0; gsub(/\[[^]]*\]/, "", line)   # drop [options]
                n = split(line, w, /[ \t]+/)
                if (n < 4) next
                okc = 0; for (i = 4; i <= n; i++) if (w[i] == "main") okc = 1
                if (w[3] ~ re && okc) print w[2]
            }' "$f"
    done
}

debian_mirror() {
    if [ -n "${QKD_DEBIAN_MIRROR:-}" ]; then echo "${QKD_DEBIAN_MIRROR%/}"; return; fi
    local uri
    uri=$(debian_archive_uris | grep -E '^(https?|file|mirror\+[a-z]+):' | head -n1 || true)
    [ -n "$uri" ] || return 1
    echo "${uri%/}"
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
