# desc: KME stopped, fallback = none: the initiator says "no key" in-band, the responder refuses it and keeps no half-open IKE SA, charon keeps running, recovers when the KME is back
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_hybrid_proposals
QKD_KME_TIMEOUT=2s
# No key in place when the KME goes: buffers are filled at start (key-buffer covers them).
QKD_BUFFER=0
kme_up
gateways_up
kme_stop
if try_initiate gw-a 20; then fail "the tunnel came up without a KME although fallback = none"; fi
expect_log gw-a "qkd: no QKD key for SAE 'sae-b': KME https://192.0.2.30:8443.* unreachable.*starting the exchange without QKD key"
expect_log gw-b "qkd: SAE 'sae-a' started the exchange without QKD key \(its KME is unreachable\); fallback = none: QKD is mandatory"
sleep 2
[ -z "$(ike_sas gw-b)" ] || { list_sas gw-b >&2; fail "gw-b keeps a half-open IKE SA"; }
[ -z "$(ike_ids gw-a)" ] || fail "gw-a has an established IKE SA without QKD"
expect_no_log gw-a 'shared secret is .* only, without QKD key'
expect_charon_alive gw-a
expect_charon_alive gw-b
step "no SA without QKD, none half-open on gw-b; charon on both gateways still running"
kme_start
log_mark
initiate gw-a
id=$(expect_qkd_round gw-a)
step "KME back: tunnel up with key ID $id"
ping_through gw-a
