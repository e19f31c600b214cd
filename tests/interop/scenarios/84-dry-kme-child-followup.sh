# desc: evidence for the README: with esp_proposals = aes256gcm16-x25519-ke1_qkd (qkd in IKE_FOLLOWUP_KE) strongSwan 6.0.1 and 6.1.0 drop the CHILD_SA when the peer refuses the follow-up in-band; the IKE_SA survives and the charons stay up
# suites: forky
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
use_hybrid_proposals
QKD_BUFFER=0
kme_up_for_faults
for suite in "" forky; do
    GW_SUITE=$suite
    gateways_up
    initiate gw-a
    ping_start gw-a
    watch_start
    log_mark
    kme_fault 503 on
    swanctl_in gw-a --rekey --child "$CHILD_NAME" >/dev/null
    expect_log gw-b "$REFUSED_RE" 15
    sleep "$DRY_SECONDS"
    kme_fault 503 off
    sleep 2
    ping_stop
    watch_check
    expect_charon_alive gw-a
    expect_charon_alive gw-b
    children="gw-a: $(child_ids gw-a | wc -l), gw-b: $(child_ids gw-b | wc -l)"
    step "strongSwan $(in_node gw-a swanctl --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1): IKE_FOLLOWUP_KE refused in-band -> installed CHILD_SAs $children; $PING_LOST of $PING_SENT pings lost"
done
