# desc: KME failover: gw-a's KME has two listeners (nodes of one KME, one key store) and gw-a lists both in kme.url; buffer = 0, CHILD and IKE rekeys from both sides every 3 s, ping 5/s; the primary listener is closed for 30 s: every rekey gets a QKD key through the secondary, 0 failed, 0 pings lost; back to the primary once it listens again
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
use_recommended_proposals
# Every rekey meets the KME: no buffered key can hide a missing node.
QKD_BUFFER=0
PRIMARY=https://192.0.2.30:8443
SECONDARY=https://192.0.2.30:8445
A_QKD_KME_URL="$PRIMARY, $SECONDARY"
# KME-A's second listener: the same KME, the same key store (the listen flag accumulates).
kme_up --kme-a-listen 0.0.0.0:8445
gateways_up
initiate gw-a
log_mark
ping_start gw-a

# One rekey every 3 s, in turn: CHILD from gw-a, CHILD from gw-b, IKE from gw-a, IKE from gw-b,
# each of the newest SA, not waiting for the old one's delete (as 65-key-buffer does).
REKEYS=0
rekeys_for() { # SECONDS
    local until=$((SECONDS + $1)) t gw kind id
    while [ "$SECONDS" -lt "$until" ]; do
        t=$SECONDS
        case $((REKEYS % 4)) in
            0) gw=gw-a kind=child ;;
            1) gw=gw-b kind=child ;;
            2) gw=gw-a kind=ike ;;
            3) gw=gw-b kind=ike ;;
        esac
        id=$("${kind}_ids" "$gw" | tail -n 1)
        [ -n "$id" ] || fail "$gw has no $kind SA to rekey after $REKEYS rekeys"
        swanctl_in "$gw" --rekey "--$kind-id" "$id" >/dev/null || fail "swanctl --rekey --$kind-id $id on $gw failed"
        REKEYS=$((REKEYS + 1))
        sleep $((3 - (SECONDS - t) > 0 ? 3 - (SECONDS - t) : 0))
    done
}
# rekeys_until SECONDS WHAT CMD...: rekey (as above) until CMD holds, checked before each
# rekey; fails after SECONDS. A state that only a KME request can change needs the rekeys
# going while it is waited for.
rekeys_until() {
    local limit=$1 what=$2 until=$((SECONDS + $1)); shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$until" ] || fail "not $what within ${limit}s of rekeys"
        rekeys_for 1
    done
}
# Requests KME-A's listener on ADDR has served (the simulator's own count).
# expect_kme_nodes WHEN EXPECTED: gw-a's qkdctl shows EXPECTED (active node, node states).
expect_kme_nodes() {
    local seen
    seen=$(qkdctl_kme)
    [ "$seen" = "$2" ] || fail "$1, qkdctl says: $seen"
    step "qkdctl $1: $seen"
}
listener_requests() {
    kme_admin stats | python3 -c '
import json, sys
print(next(l["requests"] for l in json.load(sys.stdin)["listeners"] if l["addr"] == sys.argv[1]))' "$1"
}
# kme_nodes_are EXPECTED: qkdctl_kme shows EXPECTED now.
kme_nodes_are() { [ "$(qkdctl_kme)" = "$1" ]; }
# qkdctl_kme: "<active URL of the peer> <state of node 1> <state of node 2>" on gw-a.
qkdctl_kme() {
    local s
    s=$(in_node gw-a qkdctl status --json) || fail "qkdctl status on gw-a failed"
    printf '%s %s %s\n' "$(json_get peers 0 kme <<<"$s")" "$(json_get kmes 0 state <<<"$s")" \
        "$(json_get kmes 1 state <<<"$s")"
}

rekeys_for 9
expect_kme_nodes "before the outage" "$PRIMARY active standby"

kme_admin listener 0.0.0.0:8443 off >/dev/null || fail "could not stop the primary listener"
t_stop=$SECONDS
step "$(date +%T) KME-A's primary listener (:8443) closed: connections refused"
rekeys_until 15 "on the secondary" kme_nodes_are "$SECONDARY down active"
expect_kme_nodes "during the outage" "$SECONDARY down active"
in_node gw-a qkdctl status | grep '^KME ' | while read -r line; do note "  $line"; done
rekeys_for $((30 - (SECONDS - t_stop)))

primary_before=$(listener_requests 0.0.0.0:8443)
kme_admin listener 0.0.0.0:8443 on >/dev/null || fail "could not restart the primary listener"
t_back=$SECONDS
step "$(date +%T) primary listener (:8443) listening again after $((t_back - t_stop))s"
rekeys_until 20 "back on the primary" kme_nodes_are "$PRIMARY active standby"
expect_kme_nodes "after the recovery" "$PRIMARY active standby"
rekeys_for $((20 - (SECONDS - t_back)))
primary_after=$(listener_requests 0.0.0.0:8443)
[ "$primary_after" -gt "$primary_before" ] \
    || fail "the primary served no request after its return ($primary_before -> $primary_after)"
step "the primary listener served $((primary_after - primary_before)) requests after its return; the secondary $(listener_requests 0.0.0.0:8445) in all"
# Each rekey ends with a qkd-audit line on both gateways: wait for the last ones (the
# exact counts are checked below).
audits_at_least() { [ "$(log_grep "$1" "qkd-audit: " | wc -l)" -ge "$2" ]; }
for gw in gw-a gw-b; do
    wait_until 30 audits_at_least "$gw" "$REKEYS" || note "$gw: fewer than $REKEYS qkd-audit lines after 30 s"
done
ping_stop
expect_tunnel_up

for gw in gw-a gw-b; do
    expect_no_log "$gw" "rekeying failed|starting the exchange without QKD key|$REFUSED_RE"
    audits=$(log_grep "$gw" "qkd-audit: " | wc -l)
    qkd=$(log_grep "$gw" "qkd-audit: .* result=qkd$" | wc -l)
    [ "$audits" = "$REKEYS" ] && [ "$qkd" = "$REKEYS" ] \
        || fail "$gw: $REKEYS rekeys, $audits audit lines, $qkd with result=qkd"
done
step "$REKEYS rekeys (CHILD and IKE, both sides): each one result=qkd on both gateways, none failed or refused"

# The transitions, each logged once.
expect_log gw-a "qkd: KME $PRIMARY unreachable .*: using $SECONDARY \(node 2 of 2\) for SAE 'sae-b'"
expect_log gw-a "qkd: KME $PRIMARY \(node 1 of 2\) answers again: using it instead of $SECONDARY for SAE 'sae-b'"
left=$(log_grep gw-a "qkd: KME $PRIMARY unreachable .*: using $SECONDARY \(node 2 of 2\) for SAE 'sae-b'" | wc -l)
back=$(log_grep gw-a "qkd: KME $PRIMARY \(node 1 of 2\) answers again: using it instead of $SECONDARY for SAE 'sae-b'" | wc -l)
[ "$left" = 1 ] && [ "$back" = 1 ] || fail "gw-a logged $left switch(es) to the secondary and $back back (want 1 each)"
log_grep gw-a "qkd: KME $PRIMARY" | while read -r line; do note "  $line"; done
# Which node served each of gw-a's exchanges (its audit lines name the active node).
via_secondary=$(log_grep gw-a "qkd-audit: .* kme=$SECONDARY result=qkd$" | wc -l)
via_primary=$(log_grep gw-a "qkd-audit: .* kme=$PRIMARY result=qkd$" | wc -l)
[ "$via_secondary" -gt 0 ] && [ "$via_primary" -gt 0 ] \
    || fail "gw-a's exchanges: $via_primary through the primary, $via_secondary through the secondary"
step "gw-a's exchanges: $via_primary through the primary, $via_secondary through the secondary"
note "key IDs (gw-a, in order, with the KME node):"
log_grep gw-a "qkd-audit: " | sed -nE 's/.* role=([a-z]+) .* key_ids=([^ ]+) kme=https:\/\/[^:]+:([0-9]+) .*/  \2 :\3 \1/p' \
    | while read -r line; do note "$line"; done
[ "$PING_LOST" = 0 ] || fail "$PING_LOST of $PING_SENT pings lost"
step "0 of $PING_SENT pings lost"
