# desc: in-method ML-KEM on strongSwan 6.1.0 peers: kem = mlkem768 with the recommended x25519-ke1_qkd / aes256gcm16-qkd, i.e. x25519 in IKE_SA_INIT, then x25519 + ML-KEM-768 + QKD in one IKE_INTERMEDIATE (IKE-fragmented): tunnel, ping, the secret begins with the KME's key bytes, CHILD and IKE rekeys each with a fresh key
# suites: forky
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
GW_SUITE=forky
use_recommended_proposals
EXTRA_QKD="kem = mlkem768"
# Below the request (1.3 KB with ML-KEM-768's encapsulation key) and the response (1.2 KB
# with its ciphertext): both directions are fragmented.
EXTRA_CHARON="fragment_size = 1000"
LOG_IKE=4
LOG_CHD=4
kme_up
gateways_up
initiate gw-a
expect_tunnel_up
expect_sa_uses_qkd gw-a
! list_sas gw-a | grep -q 'ML_KEM' || { list_sas gw-a >&2; fail "ML-KEM shows as its own round: it should travel inside qkd"; }
id=$(expect_qkd_round gw-a)
QKD_KEY_IDS=("$id")
for gw in gw-a gw-b; do
    expect_log "$gw" "qkd: key IDs $id confirmed; shared secret = 256-bit QKD key \+ curve25519 \+ mlkem768 secrets" >/dev/null
    expect_log "$gw" "splitting IKE message \([0-9]+ bytes\) into [0-9]+ fragments" >/dev/null
    expect_log "$gw" "reassembled fragmented IKE message" >/dev/null
done
step "IKE_INTERMEDIATE fragmented both ways: $(log_grep gw-a 'splitting IKE message' | head -n 1 | sed -E 's/.*(splitting.*)/\1/')"
expect_secret_prefix "$id" "key exchange secret"
expect_same_secrets "Sk_d secret"
step "initial IKE SA: x25519, then x25519 + ML-KEM-768 + QKD key ID $id in one round"
ping_through gw-a
# The CHILD rekey's only key exchange is qkd; in the IKE rekey qkd is the additional one.
qkd_rekey child gw-a "key exchange secret"
qkd_rekey ike gw-b "additional key exchange secret"
expect_same_secrets "Sk_d secret"
ping_through gw-b
qkd_rekey child gw-b "key exchange secret"
ping_through gw-a
step "key IDs used: ${QKD_KEY_IDS[*]}"
