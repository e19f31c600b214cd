#!/usr/bin/env bash
# ike-watch.sh OUT: append "TIME GW ID:STATE..." for gw-a and gw-b every second until
# killed (lib/dry.sh), listing the IKE SAs that carry the tunnel: ESTABLISHED, or REKEYING /
# REKEYED while a rekey runs (a responder keeps REKEYING after a refused IKE_FOLLOWUP_KE
# until strongSwan's retry succeeds). No errexit: a failed sample shows as a line without SAs.
. "$QKD_INTEROP_DIR/lib/helpers.sh"
# shellcheck disable=SC1091
. "$QKD_INTEROP_DIR/conf/defaults.env"
out=$1
: >"$out"
while :; do
    for gw in gw-a gw-b; do
        printf '%s %s %s\n' "$(date +%T)" "$gw" "$(ike_sas "$gw" 2>/dev/null | awk '$2 ~ /^(ESTABLISHED|REKEYING|REKEYED)$/ { printf "%s:%s ", $1, $2 }')" >>"$out"
    done
    sleep 1
done
