# desc: prefetch = 2 on gw-a: keys kept ready let rekeys proceed while the KME has none left; the buffer's end is a clean 503 failure
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_hybrid_proposals
# Exactly three keys on the link, none generated later.
kme_up --key-rate 0 --max-key-count 3
A_EXTRA_QKD='    prefetch = 2'
gateways_up
# The buffer fills right at plugin load, before gateways_up sets its log mark.
wait_until 15 grep -Eq "qkd: prefetched key IDs [0-9a-f-]+ for SAE 'sae-b' \(2/2 ready\)" "$(log_file gw-a)" \
    || fail "gw-a did not buffer 2 key sets"
step "gw-a buffered 2 key sets before any exchange"
initiate gw-a
first=$(expect_qkd_round gw-a)
expect_log gw-a "qkd: prefetched key IDs .*\(2/2 ready\)"
stored=$(kme_admin stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_key_count"])')
[ "$stored" = 0 ] || fail "the KME still stores $stored keys; expected the buffer to hold the rest"
step "initial IKE SA used buffered key $first; the KME has no key left, gw-a still buffers 2"
for n in 1 2; do
    log_mark
    rekey_child gw-a
    id=$(expect_qkd_round gw-a)
    step "PFS CHILD rekey $n with the KME empty: buffered key $id"
done
ping_through gw-a
log_mark
swanctl_in gw-a --rekey --child "$CHILD_NAME" >/dev/null
expect_log gw-a "qkd: no QKD key for SAE 'sae-b': KME .* has no key available \(503" 15
expect_charon_alive gw-a
ping_through gw-a
step "buffer used up: the next rekey fails with 503 (fallback = none), the tunnel keeps its SA"
