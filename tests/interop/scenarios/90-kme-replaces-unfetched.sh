# desc: a KME whose every enc_keys replaces the keys the slave has not fetched yet (replace_unfetched), default buffer on both gateways: the tunnel comes up, then CHILD rekeys from both sides every 3 s for a minute with ping: at most one exchange fails (the first that meets the behaviour), 0 pings lost
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
. "$QKD_INTEROP_DIR/lib/rekeys.sh"
use_recommended_proposals
kme_up --replace-unfetched
deviations=$(kme_admin stats | json_get deviations)
[ "$(json_get replace_unfetched <<<"$deviations")" = true ] || fail "the KME does not replace unfetched keys: $deviations"
[ "$QKD_BUFFER" = 4 ] || fail "this scenario is about the default buffer (4), not $QKD_BUFFER"
gateways_up

# The plugin cannot know the behaviour before it has met it: the initial exchange may be
# that one failure (initiated again then).
if ! try_initiate gw-a; then
    step "the first initial exchange failed; initiating again"
    initiate gw-a
else
    step "tunnel up (gw-a initiated)"
fi
ping_start gw-a
child_rekeys_for 60 3
# The last rekey completes, the old SAs go.
sleep 6
ping_stop
expect_tunnel_up

count_exchanges
outbound=$(( $(count_log gw-a "from the outbound queue") + $(count_log gw-b "from the outbound queue") ))
inbound=$(( $(count_log gw-a "from the inbound cache") + $(count_log gw-b "from the inbound cache") ))
replaced=$(docker logs "$(container_of kme)" 2>&1 | grep -c "keys the slave had not fetched replaced" || true)
step "$REKEYS CHILD rekeys (both sides, every 3 s) after the initial exchange: $EXCHANGES exchanges (strongSwan retries failed ones), $FAILED failed; masters' keys from the outbound queue $outbound times, slaves' from the inbound cache $inbound times; the KME replaced unfetched keys $replaced times; $PING_LOST of $PING_SENT pings lost"
note_failed_exchanges
[ "$FAILED" -le 1 ] || fail "$FAILED of $EXCHANGES exchanges failed (at most the first may)"
[ "$PING_LOST" = 0 ] || fail "$PING_LOST of $PING_SENT pings lost"
step "at most the first exchange failed ($FAILED), 0 of $PING_SENT pings lost"
