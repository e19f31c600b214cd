# desc: evidence for the README: with esp_proposals = aes256gcm16-x25519-ke1_qkd (qkd in IKE_FOLLOWUP_KE) strongSwan 6.0.1 and 6.1.0 drop the CHILD_SA when the peer refuses the follow-up in-band; the IKE_SA survives and the charons stay up
# suites: forky
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
use_hybrid_proposals
QKD_BUFFER=0
kme_up_for_faults
# no_child GW: GW lists no CHILD SA of ours, in any state.
no_child() { [ -z "$(child_sas "$1")" ]; }
for suite in "" forky; do
    GW_SUITE=$suite
    gateways_up
    version=$(in_node gw-a swanctl --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1)
    initiate gw-a
    ike_a=$(ike_ids gw-a) ike_b=$(ike_ids gw-b)
    [ -n "$ike_a" ] && [ -n "$ike_b" ] && [ "$(wc -l <<<"$ike_a")" = 1 ] && [ "$(wc -l <<<"$ike_b")" = 1 ] \
        || fail "want one IKE SA on each gateway before the rekey: gw-a '$(words "$ike_a")', gw-b '$(words "$ike_b")'"
    ping_start gw-a
    watch_start
    log_mark
    kme_fault 503 on
    swanctl_in gw-a --rekey --child "$CHILD_NAME" >/dev/null || fail "swanctl --rekey --child on gw-a failed"
    expect_log gw-b "$REFUSED_RE" 15
    # The documented outcome: strongSwan deletes the CHILD SA on both sides...
    for gw in gw-a gw-b; do
        wait_until 30 no_child "$gw" \
            || { list_sas "$gw" >&2; fail "$gw still lists a CHILD SA 30 s after the refused IKE_FOLLOWUP_KE"; }
    done
    # ... and keeps the IKE SA: the same one, still established, on both.
    [ "$(ike_ids gw-a)" = "$ike_a" ] && [ "$(ike_ids gw-b)" = "$ike_b" ] \
        || fail "the IKE SA did not survive: gw-a $(words "$ike_a") -> '$(words "$(ike_ids gw-a)")', gw-b $(words "$ike_b") -> '$(words "$(ike_ids gw-b)")'"
    kme_fault 503 off
    ping_stop
    watch_check
    expect_charon_alive gw-a
    expect_charon_alive gw-b
    # Traffic stops until a new CHILD SA is initiated: nothing replaced it meanwhile.
    for gw in gw-a gw-b; do
        no_child "$gw" || { list_sas "$gw" >&2; fail "$gw has a CHILD SA again without one being initiated"; }
    done
    [ "$PING_LOST" -gt 0 ] || fail "no ping lost although no CHILD SA carried the tunnel"
    step "strongSwan $version: IKE_FOLLOWUP_KE refused in-band -> 0 CHILD SAs on both gateways, IKE SA kept (gw-a #$ike_a, gw-b #$ike_b); $PING_LOST of $PING_SENT pings lost"
done
