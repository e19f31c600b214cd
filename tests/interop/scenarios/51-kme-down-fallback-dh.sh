# desc: KME stopped, fallback = dh on both sides: tunnel up on ECDH alone, with the warning; on one side only: refused
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_hybrid_proposals
QKD_FALLBACK=dh
QKD_KME_TIMEOUT=2s
# No key in place when the KME goes: buffers are filled at start (key-buffer covers them).
QKD_BUFFER=0
kme_up
gateways_up
kme_stop
initiate gw-a 30
expect_tunnel_up
expect_log gw-a "qkd: .*KME https://192.0.2.30:8443.* unreachable.*the peer may accept a secret of the in-method key exchanges alone \(fallback = dh\)"
expect_log gw-a "WARNING: shared secret is curve25519 only, without QKD key \(DH fallback #1\)"
expect_log gw-b "WARNING: shared secret is curve25519 only, without QKD key \(DH fallback #1\)"
ping_through gw-a
step "both sides allow dh: ECDH-only SA, warned and counted"

# gw-b insists on QKD: no silent downgrade.
restart_gateways_with A_QKD_FALLBACK=dh B_QKD_FALLBACK=none
if try_initiate gw-a 20; then fail "gw-b accepted an ECDH-only secret with fallback = none"; fi
expect_log gw-b "started the exchange without QKD key .*fallback = none: QKD is mandatory: refusing it in-band"
expect_charon_alive gw-a
expect_charon_alive gw-b
step "only gw-a allows dh: refused by gw-b"
kme_start
