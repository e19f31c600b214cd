#!/bin/sh
# Gateway container entrypoint: give the gateway its "inside" address(es), which the tunnel
# protects, then run charon in the foreground (it logs to stderr and to the file configured
# in /etc/strongswan.conf).
set -eu
for addr in ${INSIDE_ADDRS:-}; do
    ip addr replace "$addr" dev lo || { echo "gw-entry: cannot add $addr to lo" >&2; exit 1; }
done
mkdir -p /var/log/strongswan
# A restarted container keeps /run: a stale pid file would make charon refuse to start.
rm -f /run/charon.pid /run/charon.vici
exec /usr/lib/ipsec/charon "$@"
