# desc: benchmark (not part of the test run): keys the KME delivered vs keys the exchanges used, recommended layout, buffer 4, one PFS CHILD rekey per second (alternating sides) for QKD_BENCH_SECONDS (default 180)
#   tests/interop/run.sh --no-setup tests/interop/bench/key-waste.sh
# Rekeys are fired with `swanctl --rekey` (asynchronous; nothing is timed here). Counted at
# the end: KME deliveries (admin stats: enc_keys to the masters + dec_keys to the slaves),
# the keys both gateways used ('qkd: key IDs ... confirmed', one line per side and exchange),
# the keys the plugin wiped unused ('wiped N unused', DBG2) and what is still buffered.
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
sleep 3
expect_tunnel_up
stats=$(kme_admin stats)
master=$(json_get keys_delivered_to_master <<<"$stats")
slave=$(json_get keys_delivered_to_slave <<<"$stats")
used=0 wiped=0 failed=0
for gw in gw-a gw-b; do
    f=$(log_file "$gw")
    # grep finds nothing = 0 (and status 1, which pipefail/errexit must not see).
    u=$(grep -c 'qkd: key IDs .* confirmed' "$f" || true)
    w=$({ grep -o 'wiped [0-9]* unused' "$f" || true; } | awk '{ s += $2 } END { print s + 0 }')
    x=$(grep -cE 'rekeying failed|starting the exchange without QKD key' "$f" || true)
    used=$((used + u)) wiped=$((wiped + w)) failed=$((failed + x))
done
delivered=$((master + slave))
step "$n rekeys in $((SECONDS - t0 - 3)) s; failed/keyless: $failed"
step "KME delivered $delivered keys ($master enc_keys + $slave dec_keys); used $used (confirmed, both sides, incl. the initial exchange); wiped unused $wiped; still buffered $((delivered - used - wiped))"
step "waste: $wiped of $delivered = $(awk -v w="$wiped" -v d="$delivered" 'BEGIN { printf "%.2f", d ? 100 * w / d : 0 }') %; delivered but not (yet) used: $(awk -v u="$used" -v d="$delivered" 'BEGIN { printf "%.2f", d ? 100 * (d - u) / d : 0 }') %"
