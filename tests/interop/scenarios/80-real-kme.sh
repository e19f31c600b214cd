# desc: the plugin against the simulator's real-KME profile (25 ms per request, size ignored, {"detail"} errors, repeatable dec_keys, capped stored_key_count, 404 when empty): tunnel, CHILD rekey, the KME runs dry (404), the tunnel survives and recovers after a refill
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_recommended_proposals
# Two keys on the link, none generated later: one for the IKE SA, one for the CHILD rekey.
# The harness names its SAEs sae-a/sae-b (certificates, kme command line, qkd.conf), so the
# profile's integer SAE IDs stay off here.
kme_up --profile real-kme --integer-sae-ids off --key-rate 0 --max-key-count 2
# Every exchange asks the KME itself, so the two keys go where the steps say.
QKD_BUFFER=0
deviations=$(kme_admin stats | json_get deviations)
[ "$(json_get no_key_answer <<<"$deviations")" = 404 ] && [ "$(json_get service_time_ms <<<"$deviations")" = 25 ] \
    || fail "the KME does not play the real-KME profile: $deviations"
gateways_up
initiate gw-a
id=$(expect_qkd_round gw-a)
step "IKE SA up under key ID $id"
ping_through gw-a
log_mark
rekey_child gw-a
id=$(expect_qkd_round gw-a)
step "PFS CHILD rekey under key ID $id"
ping_through gw-a
stored=$(kme_admin stats | json_get stored_key_count)
[ "$stored" = 0 ] || fail "the KME still stores $stored keys; expected it dry"

log_mark
swanctl_in gw-a --rekey --child "$CHILD_NAME" >/dev/null
expect_log gw-a "qkd: no QKD key for SAE 'sae-b': KME .*\(404" 15
expect_charon_alive gw-a
ping_through gw-a
step "KME dry (404 Element not found): the rekey fails, the existing CHILD SA keeps carrying traffic"

kme_admin refill 1 >/dev/null
log_mark
rekey_child gw-a
id=$(expect_qkd_round gw-a)
ping_through gw-a
step "after a refill the next CHILD rekey gets key ID $id"
