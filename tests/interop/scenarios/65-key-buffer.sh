# desc: buffer = 16 on both gateways: after one rekey each way (the announcements), both KMEs fail (503) for 30 s while the CHILD SA is rekeyed every 2 s from alternating sides: 0 failed rekeys, 0 lost pings, every key from the buffers
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
use_recommended_proposals
QKD_BUFFER=16
kme_up
gateways_up
initiate gw-a
# Each side announces its outbound queue in the rekeys it takes part in; the peer fetches
# the announced keys into its inbound cache in the background.
rekey_child gw-a
rekey_child gw-b
# One rekey every EVERY seconds for HOLD seconds, alternating sides: each side starts at
# most PER_SIDE of them, each taking a set from its outbound queue that the peer must
# have fetched into its inbound cache before the KMEs fail.
HOLD=30 EVERY=2
PER_SIDE=$((HOLD / EVERY / 2 + 1))
# buffers_ready: on both gateways the outbound queue is full, every announced key fetched,
# and the inbound cache holds PER_SIDE keys or more.
buffers_ready() {
    local gw s
    for gw in gw-a gw-b; do
        s=$(in_node "$gw" qkdctl status --json) || return 1
        [ "$(json_get peers 0 outbound_sets <<<"$s")" -ge "$QKD_BUFFER" ] \
            && [ "$(json_get peers 0 pending_keys <<<"$s")" = 0 ] \
            && [ "$(json_get peers 0 inbound_keys <<<"$s")" -ge "$PER_SIDE" ] || return 1
    done
}
wait_until 30 buffers_ready || {
    for gw in gw-a gw-b; do in_node "$gw" qkdctl status >&2 || true; done
    fail "the buffers were not ready within 30 s (outbound $QKD_BUFFER sets, inbound $PER_SIDE keys, none pending)"
}
step "buffers ready: outbound queues full, inbound caches hold $PER_SIDE keys or more, none pending"
ping_start gw-a
log_mark
kme_admin fail-503 on >/dev/null
step "both KMEs answer 503 from now on"
t0=$SECONDS n=0
while [ $((SECONDS - t0)) -lt "$HOLD" ]; do
    if [ $((n % 2)) = 0 ]; then gw=gw-a; else gw=gw-b; fi
    t=$SECONDS
    # Rekey the installed CHILD SA (not one still REKEYED from the last round), and do not
    # wait for the old one's delete: one rekey every 2 s.
    id=$(child_ids "$gw" | tail -n 1)
    [ -n "$id" ] || fail "$gw has no installed CHILD SA after $n rekeys"
    swanctl_in "$gw" --rekey --child-id "$id" >/dev/null || fail "swanctl --rekey on $gw failed"
    n=$((n + 1))
    sleep $((EVERY - (SECONDS - t) > 0 ? EVERY - (SECONDS - t) : 0))
done
# The last rekeys complete while the KMEs still fail: wait until each of the n exchanges
# took its keys from the buffers and both sides confirmed it (or fail below on the counts).
count() { log_grep "$1" "$2" | wc -l; }
rekeys_done() {
    [ "$(count gw-a "qkd: key IDs .* confirmed")" -ge "$n" ] \
        && [ "$(count gw-b "qkd: key IDs .* confirmed")" -ge "$n" ] \
        && [ $(($(count gw-a "from the outbound queue") + $(count gw-b "from the outbound queue"))) -ge "$n" ] \
        && [ $(($(count gw-a "from the inbound cache") + $(count gw-b "from the inbound cache"))) -ge "$n" ]
}
wait_until 20 rekeys_done || note "not all $n rekeys completed within 20 s"
kme_admin fail-503 off >/dev/null
ping_stop
for gw in gw-a gw-b; do
    expect_no_log "$gw" "rekeying failed|starting the exchange without QKD key|$REFUSED_RE"
done
confirmed=$(log_grep gw-a "qkd: key IDs .* confirmed" | wc -l)
[ "$confirmed" = "$n" ] || fail "$n rekeys started, gw-a confirmed $confirmed QKD keys"
outbound=$(( $(log_grep gw-a "from the outbound queue" | wc -l) + $(log_grep gw-b "from the outbound queue" | wc -l) ))
inbound=$(( $(log_grep gw-a "from the inbound cache" | wc -l) + $(log_grep gw-b "from the inbound cache" | wc -l) ))
[ "$outbound" = "$n" ] && [ "$inbound" = "$n" ] \
    || fail "$n rekeys, but $outbound took the master's key from its queue and $inbound the slave's from its cache"
[ "$PING_LOST" = 0 ] || fail "$PING_LOST of $PING_SENT pings lost"
step "$n CHILD rekeys in $((SECONDS - t0))s with both KMEs down: 0 failed; keys from the outbound queues ($outbound) and inbound caches ($inbound); 0 of $PING_SENT pings lost"
