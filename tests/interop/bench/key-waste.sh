# desc: benchmark (not part of the test run): keys the KME delivered vs keys the exchanges used, recommended layout, buffer 4, one PFS CHILD rekey per second (alternating sides) for QKD_BENCH_SECONDS (default 180)
#   tests/interop/run.sh --no-setup tests/interop/bench/key-waste.sh
# Rekeys are fired with `swanctl --rekey` (asynchronous; nothing is timed here). Counted at
# the end: keys fetched = KME deliveries (admin stats: enc_keys to the masters + dec_keys to
# the slaves), keys used = the key IDs in both gateways' 'qkd: key IDs ... confirmed' lines
# (one line per side and exchange, incl. the initial one), keys the plugin wiped unused
# ('qkd: wiped N unused ... key(s)', DBG2: LOG_IKE=2) and, the rest, keys still buffered.
# Waste = keys fetched but never used / keys fetched: the wiped ones (target <= 1 %); with
# the ones still buffered at the end (usable by the next rekeys) as an upper bound.
# shellcheck shell=bash disable=SC2034 # variables feed conf/*.tmpl via helpers.sh
require_plugin
require_kme_sim
secs=${QKD_BENCH_SECONDS:-180}
IKE_PROPOSALS=aes256gcm16-prfsha384-x25519-ke1_qkd
ESP_PROPOSALS=aes256gcm16-qkd
LOG_IKE=2
kme_up --key-rate 1000000000
gateways_up
initiate gw-a
t0=$SECONDS n=0
while [ $((SECONDS - t0)) -lt "$secs" ]; do
    if [ $((n % 2)) = 0 ]; then gw="gw-a"; else gw="gw-b"; fi
    swanctl_in "$gw" --rekey --child "$CHILD_NAME" >/dev/null || fail "swanctl --rekey on $gw failed"
    n=$((n + 1))
    # One rekey per second of wall clock.
    while [ $((SECONDS - t0)) -lt "$n" ]; do sleep 0.1; done
done
elapsed=$((SECONDS - t0))
sleep 3
expect_tunnel_up
ping_through gw-a
stats=$(kme_admin stats)
master=$(json_get keys_delivered_to_master <<<"$stats")
slave=$(json_get keys_delivered_to_slave <<<"$stats")
used=0 wiped=0 failed=0
for gw in gw-a gw-b; do
    f=$(log_file "$gw")
    # grep finds nothing = 0 (and status 1, which pipefail/errexit must not see).
    # Key IDs, comma-separated: a key_size above the KME's joins several keys.
    u=$({ grep -o 'qkd: key IDs [^ ]* confirmed' "$f" || true; } | awk '{ s += split($4, ids, ",") } END { print s + 0 }')
    w=$({ grep -o 'wiped [0-9]* unused' "$f" || true; } | awk '{ s += $2 } END { print s + 0 }')
    x=$(grep -cE 'rekeying failed|starting the exchange without QKD key' "$f" || true)
    used=$((used + u)) wiped=$((wiped + w)) failed=$((failed + x))
done
delivered=$((master + slave))
buffered=$((delivered - used - wiped))
pct() { awk -v n="$1" -v d="$delivered" 'BEGIN { printf "%.2f", d ? 100 * n / d : 0 }'; }
step "$n rekeys in $elapsed s; failed/keyless: $failed"
step "keys fetched $delivered ($master enc_keys + $slave dec_keys); used $used (confirmed, both sides, incl. the initial exchange); wiped unused $wiped; still buffered $buffered"
waste=$(pct "$wiped")
step "waste (fetched, never used: wiped) $wiped of $delivered = $waste % (target <= 1 %: $(awk -v w="$waste" 'BEGIN { print (w <= 1 ? "met" : "MISSED") }')); with the $buffered still buffered: $(pct $((wiped + buffered))) %"
