# desc: QKD link slower than the rekeys (one 256-bit key per 4 s): 503 refuses a rekey in-band without wait_timeout (the CHILD SA keeps carrying traffic); with wait_timeout rekeys wait for keys
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_recommended_proposals
# 64 bit/s and room for one key: each 256-bit key takes 4 s to appear.
kme_up --key-rate 64 --max-key-count 1
# Every exchange asks the KME itself (the key buffer has its own scenario).
QKD_BUFFER=0
# kme_has_key: the simulator holds a key for the next exchange.
kme_has_key() { local n; n=$(kme_admin stats | json_get stored_key_count) && [ "$n" -ge 1 ]; }
gateways_up
wait_until 15 kme_has_key || fail "the KME holds no key 15 s after start (one per 4 s)"
initiate gw-a
id=$(expect_qkd_round gw-a)
log_mark
swanctl_in gw-a --rekey --child "$CHILD_NAME" >/dev/null
expect_log gw-a "qkd: no QKD key for SAE 'sae-b': KME .* has no key available \(503" 15
expect_charon_alive gw-a
ping_through gw-a
step "out of keys, wait_timeout = 0: the rekey fails, the existing CHILD SA keeps carrying traffic"

restart_gateways_with QKD_WAIT_TIMEOUT=20s
wait_until 15 kme_has_key || fail "the KME holds no key 15 s after the restart (one per 4 s)"
initiate gw-a
log_mark
started=$(date +%s)
for n in 1 2 3; do
    rekey_child gw-a
    rid=$(last_key_id gw-a master)
    [ -n "$rid" ] && [ "$rid" != "${prev:-}" ] || fail "rekey $n: no fresh key ID on gw-a"
    prev=$rid
    expect_log gw-b "qkd: key IDs $rid confirmed"
    step "rekey $n got key ID $rid"
done
retries=$(log_grep gw-a "has no key available .*retrying" | wc -l)
[ "$retries" -gt 0 ] || fail "the rekeys never had to wait for the QKD link"
step "3 rekeys in $(( $(date +%s) - started ))s at one key per 4s: $retries KME retries (503) bridged by wait_timeout"
ping_through gw-a
