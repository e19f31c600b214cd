# desc: aes256-sha384-qkd: QKD as the only key exchange (dh_group = none): the secret is exactly the KME's key
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
IKE_PROPOSALS=aes256-sha384-qkd
ESP_PROPOSALS=aes256gcm16-qkd
QKD_DH_GROUP=none
LOG_IKE=4
LOG_CHD=4
kme_up
gateways_up
initiate gw-a
expect_tunnel_up
list_sas gw-a | grep -q 'AES_CBC-256/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/QKD' \
    || { list_sas gw-a >&2; fail "IKE SA does not use QKD as its key exchange"; }
id=$(expect_qkd_round gw-a)
expect_log gw-a "qkd: key IDs $id confirmed; shared secret = 256-bit QKD key \(QKD"
expect_secret_prefix "$id" "key exchange secret"
expect_same_secrets "Sk_d secret"
ping_through gw-a
QKD_KEY_IDS=("$id")
qkd_rekey child gw-b "key exchange secret"
ping_through gw-b
