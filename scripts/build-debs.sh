#!/usr/bin/env bash
# Builds target/debian/strongswan-qkd_<version>_<arch>.deb and qkd-kme-sim_<version>_<arch>.deb
# from this source tree with plain dpkg-deb (no debian/ source package needed):
#   scripts/build-debs.sh            (or: make deb)
# Needs cargo, libclang-dev (bindgen), dpkg-dev, binutils. Runs lintian on the results if
# it is installed; packaging/LINTIAN.md explains the tags it leaves.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
REPO=$(pwd)

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
ARCH=$(dpkg --print-architecture)
OUT=$REPO/target/debian
MAINTAINER="strongswan-qkd developers <strongswan-qkd@example.org>"
DATE=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")

cargo build --release -p strongswan-qkd -p qkdctl -p qkd-kme-sim
BIN=$REPO/target/release

rm -rf "$OUT"
mkdir -p "$OUT"

# Debian's dh_strip: no debug info, symbols only where the dynamic linker needs them.
strip_into() { # FILE DEST MODE
	install -D -m "$3" "$1" "$2"
	strip --strip-unneeded --remove-section=.comment --remove-section=.note "$2"
}

# Native-package changelog (lintian wants one per package).
changelog() { # PACKAGE DOCDIR
	printf '%s (%s) unstable; urgency=medium\n\n  * Built from the strongswan-qkd source tree (git %s).\n\n -- %s  %s\n' \
		"$1" "$VERSION" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
		"$MAINTAINER" "$DATE" | gzip -9n > "$2/changelog.gz"
}

# dpkg-shlibdeps wants to run next to a debian/control.
shlib_depends() { # FILE...
	tmp=$(mktemp -d)
	mkdir "$tmp/debian"
	printf 'Source: strongswan-qkd\n\nPackage: strongswan-qkd\nArchitecture: any\n' > "$tmp/debian/control"
	(cd "$tmp" && dpkg-shlibdeps -O "$@" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
	rm -rf "$tmp"
}

control() { # ROOT PACKAGE DEPENDS SECTION DESCRIPTION...(stdin: long description)
	root=$1; pkg=$2; depends=$3; section=$4; shift 4
	size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
	mkdir -p "$root/DEBIAN"
	{
		echo "Package: $pkg"
		echo "Version: $VERSION"
		echo "Architecture: $ARCH"
		echo "Maintainer: $MAINTAINER"
		echo "Installed-Size: $size"
		echo "Depends: $depends"
		[ -n "${RECOMMENDS:-}" ] && echo "Recommends: $RECOMMENDS"
		echo "Section: $section"
		echo "Priority: optional"
		echo "Homepage: https://github.com/strongswan-qkd/strongswan-qkd"
		echo "Description: $*"
		cat
	} > "$root/DEBIAN/control"
}

# ---- strongswan-qkd -------------------------------------------------------------------
P=$OUT/strongswan-qkd
DOC=$P/usr/share/doc/strongswan-qkd
strip_into "$BIN/libstrongswan_qkd.so" "$P/usr/lib/ipsec/plugins/libstrongswan-qkd.so" 0644
strip_into "$BIN/qkdctl" "$P/usr/sbin/qkdctl" 0755
install -D -m 0644 strongswan-conf/strongswan.d/charon/qkd.conf "$P/etc/strongswan.d/charon/qkd.conf"
# Where Debian's strongSwan keeps the .opt sources of its own strongswan.conf(5) sections.
install -D -m 0644 strongswan-conf/qkd.opt "$P/usr/share/strongswan/templates/config/plugins/qkd.opt"
install -D -m 0644 README.md "$DOC/README.md"
install -D -m 0644 strongswan-conf/swanctl.conf.example "$DOC/examples/swanctl.conf.example"
install -D -m 0644 packaging/copyright "$DOC/copyright"
changelog strongswan-qkd "$DOC"
install -D -m 0644 packaging/qkdctl.8 "$P/usr/share/man/man8/qkdctl.8"
gzip -9n "$P/usr/share/man/man8/qkdctl.8"
install -D -m 0644 packaging/strongswan-qkd.lintian-overrides \
	"$P/usr/share/lintian/overrides/strongswan-qkd"
# The plugin checks the strongSwan release itself and refuses unverified ones (6.0.x, 6.1.x
# are verified): the upper bound says the same to apt.
SHLIBS=$(shlib_depends "$P/usr/lib/ipsec/plugins/libstrongswan-qkd.so" "$P/usr/sbin/qkdctl")
RECOMMENDS="charon-systemd | strongswan-charon, strongswan-swanctl" control "$P" strongswan-qkd \
	"$SHLIBS, libstrongswan (>= 6.0.0), libstrongswan (<< 6.2~), strongswan-libcharon (>= 6.0.0)" \
	net "strongSwan plugin: QKD keys (ETSI GS QKD 014) as an IKEv2 key exchange" <<'DESC'
 Adds the "qkd" key exchange method to charon: the shared secret of each IKE
 SA, IKE rekey and PFS CHILD_SA rekey is a key from a Quantum Key Distribution
 network, fetched from the gateway's Key Management Entity over the ETSI GS
 QKD 014 REST API (mutual TLS), hybridised with an ephemeral ECDH secret. Keys
 are buffered ahead on both peers, so a dry QKD link does not cost tunnels.
 .
 Includes qkdctl, which shows the plugin's key buffers, KME latency and
 counters, also as Prometheus metrics.
DESC
echo /etc/strongswan.d/charon/qkd.conf > "$P/DEBIAN/conffiles"

# ---- qkd-kme-sim -----------------------------------------------------------------------
S=$OUT/qkd-kme-sim
SDOC=$S/usr/share/doc/qkd-kme-sim
strip_into "$BIN/qkd-kme-sim" "$S/usr/bin/qkd-kme-sim" 0755
install -D -m 0644 kme-sim/sim.example.toml "$S/etc/qkd-kme-sim/sim.toml"
install -D -m 0644 kme-sim/sim.example.toml "$SDOC/examples/sim.example.toml"
install -D -m 0644 packaging/qkd-kme-sim.service "$S/usr/lib/systemd/system/qkd-kme-sim.service"
install -D -m 0644 kme-sim/README.md "$SDOC/README.md"
install -D -m 0644 packaging/copyright "$SDOC/copyright"
changelog qkd-kme-sim "$SDOC"
install -D -m 0644 packaging/qkd-kme-sim.1 "$S/usr/share/man/man1/qkd-kme-sim.1"
gzip -9n "$S/usr/share/man/man1/qkd-kme-sim.1"
install -D -m 0644 packaging/qkd-kme-sim.lintian-overrides "$S/usr/share/lintian/overrides/qkd-kme-sim"
control "$S" qkd-kme-sim "$(shlib_depends "$S/usr/bin/qkd-kme-sim")" net \
	"ETSI GS QKD 014 KME pair simulator (for tests)" <<'DESC'
 Simulates one QKD link: two Key Management Entities sharing one key stream,
 each serving the ETSI GS QKD 014 REST API over mutually authenticated HTTPS,
 with fault injection (no key, KME down, slow, mismatching keys) over a local
 admin port. For testing and demonstrating strongswan-qkd: its keys are not
 secret.
DESC
echo /etc/qkd-kme-sim/sim.toml > "$S/DEBIAN/conffiles"

for root in "$P" "$S"; do
	find "$root" -type d -exec chmod 0755 {} +
	(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
		xargs -0 md5sum > DEBIAN/md5sums)
	chmod 0644 "$root/DEBIAN/md5sums"
	dpkg-deb --root-owner-group -Zxz --build "$root" "$OUT" >/dev/null
done
ls -l "$OUT"/*.deb
if [ "${QKD_DEB_LINTIAN:-1}" = 1 ] && command -v lintian >/dev/null; then
	lintian --info --display-info "$OUT"/*.deb || true
fi
