# desc: a KME that ignores `size` (always 256-bit keys) and key_size = 512 on both gateways, default buffer: the first initial exchange gets its 512 bits as two keys, then CHILD rekeys from both sides every 3 s for a minute with ping: 0 failed exchanges, every QKD key two key IDs, 0 pings lost
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
. "$QKD_INTEROP_DIR/lib/rekeys.sh"
use_recommended_proposals
# The simulator's status allows 64..1024-bit keys, so each side plans one 512-bit key; the
# KME hands out 256-bit keys whatever is asked.
QKD_KEY_SIZE=512
kme_up --size-handling ignored
deviations=$(kme_admin stats | json_get deviations)
[ "$(json_get size_handling <<<"$deviations")" = ignored ] || fail "the KME does not ignore size: $deviations"
gateways_up

initiate gw-a
count_exchanges
[ "$EXCHANGES" = 1 ] && [ "$FAILED" = 0 ] \
    || { note_failed_exchanges; fail "the initial exchange: $EXCHANGES exchange(s), $FAILED failed (want 1, 0)"; }
id=$(expect_qkd_round gw-a)
[[ $id == *,* ]] && [[ $id != *,*,* ]] || fail "the initial exchange used key IDs $id, not two keys"
step "the first initial exchange succeeded with two 256-bit keys: $id"

ping_start gw-a
child_rekeys_for 60 3
# The last rekey completes, the old SAs go.
sleep 6
ping_stop
expect_tunnel_up

count_exchanges
for gw in gw-a gw-b; do
    expect_no_log "$gw" "rekeying failed|starting the exchange without QKD key|$REFUSED_RE|not fetching them"
done
[ "$EXCHANGES" = $((REKEYS + 1)) ] && [ "$FAILED" = 0 ] \
    || { note_failed_exchanges; fail "$REKEYS rekeys + the initial exchange, but $EXCHANGES exchanges, $FAILED failed"; }
for gw in gw-a gw-b; do
    confirmed=$(count_log "$gw" "qkd: key IDs [^ ]+ confirmed")
    two=$(count_log "$gw" "qkd: key IDs [0-9a-f-]+,[0-9a-f-]+ confirmed; shared secret = 512-bit QKD key")
    [ "$confirmed" = "$EXCHANGES" ] && [ "$two" = "$EXCHANGES" ] \
        || fail "$gw: $EXCHANGES exchanges, $confirmed confirmed QKD keys, $two of them 512 bits from two key IDs"
    # Each side learns the served size as ETSI master (it starts rekeys too).
    adapted=$(grep -m 1 -E "qkd: KME .* ignores the key size asked for" "$(log_file "$gw")") \
        || fail "$gw never noticed that its KME ignores the size asked for"
    note "$gw: ${adapted#*qkd: }"
done
outbound=$(( $(count_log gw-a "from the outbound queue") + $(count_log gw-b "from the outbound queue") ))
inbound=$(( $(count_log gw-a "from the inbound cache") + $(count_log gw-b "from the inbound cache") ))
step "$REKEYS CHILD rekeys (both sides, every 3 s): every exchange a 512-bit QKD key of two key IDs, 0 failed; masters' keys from the outbound queue $outbound times, slaves' from the inbound cache $inbound times"
[ "$PING_LOST" = 0 ] || fail "$PING_LOST of $PING_SENT pings lost"
step "0 of $PING_SENT pings lost"
