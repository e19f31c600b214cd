# desc: KME simulator: admin via docker exec, ETSI 014 over mTLS from both gateways, same key on both sides
# Proves the KME half of the topology without the plugin: each gateway reaches its own KME
# with its SAE certificate, and a key fetched by gw-a (master) is handed to gw-b (slave).
require_kme_sim
kme_up
stats=$(kme_admin stats) || fail "admin stats failed"
json_get generation_paused <<<"$stats" >/dev/null || fail "admin stats is not the expected JSON: $stats"
kme_admin pause >/dev/null || fail "admin pause failed"
kme_admin resume >/dev/null || fail "admin resume failed"
step "admin stats/pause/resume answered via docker exec"

gateways_up
status=$(etsi_in gw-a sae-b/status) || fail "gw-a: status from KME-A failed: $status"
note "KME-A status for sae-a -> sae-b: stored_key_count=$(json_get stored_key_count <<<"$status")"
enc=$(etsi_in gw-a sae-b/enc_keys '{"number": 1, "size": 256}') || fail "gw-a: enc_keys failed: $enc"
key_id=$(json_get keys 0 key_ID <<<"$enc"); key_a=$(json_get keys 0 key <<<"$enc")
dec=$(etsi_in gw-b sae-a/dec_keys "{\"key_IDs\": [{\"key_ID\": \"$key_id\"}]}") || fail "gw-b: dec_keys failed: $dec"
key_b=$(json_get keys 0 key <<<"$dec")
[ -n "$key_a" ] && [ "$key_a" = "$key_b" ] || fail "master and slave got different keys for $key_id"
step "key $key_id: gw-a (enc_keys @ KME-A) and gw-b (dec_keys @ KME-B) got the same 256-bit key"
journal=$(kme_admin journal) || fail "admin journal failed"
grep -q "$key_id" <<<"$journal" || fail "journal does not list $key_id"
# Without a client certificate the KME must refuse (mutual TLS).
if in_node gw-a curl -sS --max-time 5 --cacert /etc/qkd/certs/ca.pem https://192.0.2.30:8443/api/v1/keys/sae-b/status >/dev/null 2>&1; then
    fail "KME-A answered a client without certificate"
fi
step "journal lists the key; a client without certificate is refused"
