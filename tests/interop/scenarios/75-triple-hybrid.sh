# desc: the sequential triple hybrid x25519-ke1_mlkem768-ke2_qkd on strongSwan 6.1.0 peers (ML-KEM from forky's openssl plugin): tunnel, ping, the QKD round's secret holds the KME's key bytes, PFS CHILD and IKE rekeys from both sides
# suites: forky
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
GW_SUITE=forky
IKE_PROPOSALS=aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_qkd
ESP_PROPOSALS=aes256gcm16-x25519-ke1_mlkem768-ke2_qkd
LOG_IKE=4
LOG_CHD=4
kme_up
gateways_up
initiate gw-a
expect_tunnel_up
list_sas gw-a | grep -q 'ML_KEM_768' || { list_sas gw-a >&2; fail "the IKE SA has no ML-KEM-768 round"; }
expect_sa_uses_qkd gw-a
id=$(expect_qkd_round gw-a)
QKD_KEY_IDS=("$id")
# Each IKE_INTERMEDIATE logs its own round's secret: the second one is qkd's.
expect_secret_prefix "$id" "key exchange secret"
expect_same_secrets "Sk_d secret"
step "initial IKE SA: x25519, then ML-KEM-768, then QKD key ID $id"
ping_through gw-a
# In a rekey the additional secrets are concatenated: ML-KEM-768's 32 bytes, then qkd's.
export SECRET_OFFSET=32
qkd_rekey child gw-a "additional key exchange secret"
qkd_rekey ike gw-b "additional key exchange secret"
expect_same_secrets "Sk_d secret"
ping_through gw-b
step "key IDs used: ${QKD_KEY_IDS[*]}"
