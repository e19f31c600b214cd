# desc: KME stopped, fallback = none: the exchange fails cleanly with our log line, charon keeps running, recovers when the KME is back
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_hybrid_proposals
QKD_KME_TIMEOUT=2s
kme_up
gateways_up
kme_stop
if try_initiate gw-a 20; then fail "the tunnel came up without a KME although fallback = none"; fi
expect_log gw-a "qkd: no QKD key for SAE 'sae-b': KME https://192.0.2.30:8443.* unreachable.*fallback = none: QKD is mandatory"
expect_log gw-a "creating KE payload failed|key exchange .*failed"
[ -z "$(ike_ids gw-a)" ] || fail "gw-a has an established IKE SA without QKD"
expect_no_log gw-a 'shared secret is ECDH only'
expect_charon_alive gw-a
expect_charon_alive gw-b
step "no SA without QKD; charon on both gateways still running"
kme_start
log_mark
initiate gw-a
id=$(expect_qkd_round gw-a)
step "KME back: tunnel up with key ID $id"
ping_through gw-a
