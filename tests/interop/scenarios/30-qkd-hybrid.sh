# desc: x25519-ke1_qkd: QKD key in IKE_INTERMEDIATE, PFS CHILD and IKE rekeys from both sides; DBG4 secrets begin with the KME's key bytes
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_hybrid_proposals
LOG_IKE=4
LOG_CHD=4
kme_up
gateways_up
initiate gw-a
expect_tunnel_up
expect_sa_uses_qkd gw-a
expect_sa_uses_qkd gw-b
swanctl_in gw-a --list-algs | grep -q 'QKD\[qkd\]' || fail "swanctl --list-algs does not list QKD[qkd]"
step "swanctl --list-algs: $(swanctl_in gw-a --list-algs | grep -o 'QKD\[qkd\]')"
id=$(expect_qkd_round gw-a)
QKD_KEY_IDS=("$id")
step "initial IKE SA: key ID $id (gw-a master, gw-b slave)"
expect_secret_prefix "$id" "key exchange secret"
expect_same_secrets "Sk_d secret"
ping_through gw-a
ping_through gw-b

qkd_rekey child gw-a "additional key exchange secret"
ping_through gw-a
qkd_rekey ike gw-a "additional key exchange secret"
expect_same_secrets "Sk_d secret"
ping_through gw-a
# Roles are per exchange: the gateway that starts a rekey is the ETSI master for its key.
qkd_rekey child gw-b "additional key exchange secret"
qkd_rekey ike gw-b "additional key exchange secret"
ping_through gw-b
step "key IDs used: ${QKD_KEY_IDS[*]}"
expect_no_log gw-a 'qkd: .*(failed|WARNING)'
expect_no_log gw-b 'qkd: .*(failed|WARNING)'
expect_charon_alive gw-a
expect_charon_alive gw-b
