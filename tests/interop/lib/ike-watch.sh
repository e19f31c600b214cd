#!/usr/bin/env bash
# ike-watch.sh OUT: append "TIME GW IKE_SA_IDS..." for gw-a and gw-b every second until
# killed (lib/dry.sh). No errexit: a failed sample shows as a line without IDs.
. "$QKD_INTEROP_DIR/lib/helpers.sh"
# shellcheck disable=SC1091
. "$QKD_INTEROP_DIR/conf/defaults.env"
out=$1
: >"$out"
while :; do
    for gw in gw-a gw-b; do
        printf '%s %s %s\n' "$(date +%T)" "$gw" "$(ike_ids "$gw" 2>/dev/null | tr '\n' ' ')" >>"$out"
    done
    sleep 1
done
