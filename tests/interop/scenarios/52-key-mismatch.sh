# desc: KMEs disagree on a key (mismatch-next): key confirmation fails with a precise log line, no SA, next attempt succeeds
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_hybrid_proposals
kme_up
gateways_up
kme_admin mismatch-next >/dev/null || fail "admin mismatch-next failed"
if try_initiate gw-a 20; then fail "the tunnel came up with mismatched QKD keys"; fi
expect_log gw-a "qkd: key confirmation failed for key IDs [0-9a-f-]+: the peer's KME delivered different key material"
expect_charon_alive gw-a
expect_charon_alive gw-b
log_mark
initiate gw-a
id=$(expect_qkd_round gw-a)
step "next attempt: key ID $id confirmed"
ping_through gw-a
