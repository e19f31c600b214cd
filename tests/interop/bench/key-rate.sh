# desc: benchmark (not part of the test run): PFS CHILD rekeys (recommended layout) with the KME's key rate at half the measured demand: SAs/s achieved vs key rate / keys per SA, refused rekeys, longest rekey vs kme.timeout, SAs lost, traffic at the end; over vici from one host process
#   tests/interop/run.sh --no-setup tests/interop/bench/key-rate.sh
#   QKD_BENCH_SECONDS (default 60): the rate-limited run; QKD_BENCH_DEMAND_SECONDS (10): the
#   demand measurement (KME unlimited); QKD_BENCH_WARMUP (15): seconds of the run left out of
#   the steady rate (the KME's pool starts full and the plugin's buffers fill first);
#   QKD_BENCH_POOL (64): the KME's max-key-count in the run (the plugin's default buffer_max,
#   so a full refill request fits); QKD_BENCH_FRACTION (0.5): key rate / demand;
#   QKD_BENCH_WAIT_TIMEOUT (the test conf's wait_timeout, 0s): how long an exchange may wait
#   for its KME to have a key before it goes ahead without one (and is refused).
# One IKE SA and its CHILD SA up, then bench/key_rate.py (vici_bench.py's Gateway plus
# charon's log events) rekeys the CHILD SA from alternating sides: first back to back with an
# unlimited KME for the demand D (rekeys/s), then, with the KME restarted at
# FRACTION x D x 256 bit/s (one 256-bit key per rekey here; the driver reports the key IDs
# confirmed per rekey) and the gateways restarted (their buffers named keys of the old KME),
# for QKD_BENCH_SECONDS at most D attempts per second. "Refused" = a driver attempt that ended
# with charon's "CHILD_SA rekeying failed" instead of a new SA; strongSwan's own retries of
# those (~10 s later) are counted apart, not as demand or as achieved rekeys. The longest
# attempt (request to child-rekey event or failure) stands for the longest worker wait. At
# the end: SAs before/after (vici), expect_tunnel_up and a ping through the tunnel, and the
# plugin's 'qkd:' lines of the run other than the per-exchange ones, by shape.
# shellcheck shell=bash disable=SC2034 # variables feed conf/*.tmpl via helpers.sh
require_plugin
require_kme_sim
secs=${QKD_BENCH_SECONDS:-60}
dsecs=${QKD_BENCH_DEMAND_SECONDS:-10}
warmup=${QKD_BENCH_WARMUP:-15}
pool=${QKD_BENCH_POOL:-64}
fraction=${QKD_BENCH_FRACTION:-0.5}
IKE_PROPOSALS=aes256gcm16-prfsha384-x25519-ke1_qkd
ESP_PROPOSALS=aes256gcm16-qkd
QKD_WAIT_TIMEOUT=${QKD_BENCH_WAIT_TIMEOUT:-$QKD_WAIT_TIMEOUT}
. "$QKD_INTEROP_DIR/bench/vici.sh"
vici_bench_config
require_vici_python

driver() { python3 "$QKD_INTEROP_DIR/bench/key_rate.py" "$@"; }
tunnel_up() {
    gateways_up
    expect_vici_sockets
    export_vici_env
    initiate gw-a
}

# 1. The demand: back to back, the KME never short of keys.
kme_up --key-rate 1000000000
tunnel_up
step "load before: $(uptime)"
driver demand --seconds "$dsecs" --json "$QKD_INTEROP_SCEN_DIR/demand.json" || fail "key_rate.py demand failed"
demand=$(json_get rate <"$QKD_INTEROP_SCEN_DIR/demand.json")
kps=$(json_get keys_per_sa_measured <"$QKD_INTEROP_SCEN_DIR/demand.json")
key_bits=$(gw_var A QKD_KEY_SIZE)
# Keys per SA: what the exchanges confirmed (1 in this layout), rounded to whole keys.
kps=$(awk -v k="$kps" 'BEGIN { k = int(k + 0.5); print (k < 1 ? 1 : k) }')
rate=$(awk -v d="$demand" -v f="$fraction" -v b="$key_bits" -v k="$kps" 'BEGIN { printf "%d", d * f * b * k + 0.5 }')
step "demand D = $(printf '%.2f' "$demand") rekeys/s, $kps key(s) of $key_bits bit per rekey: key rate $fraction x D = $rate bit/s"

# 2. The run at that key rate: fresh KME (pool of $pool keys) and gateways.
kme_up --key-rate "$rate" --max-key-count "$pool"
tunnel_up
timeout_s=$(gw_var A QKD_KME_TIMEOUT); timeout_s=${timeout_s%s}
step "plugin: kme.timeout = ${timeout_s}s, wait_timeout = $QKD_WAIT_TIMEOUT, buffer = $(gw_var A QKD_BUFFER)"
driver run --seconds "$secs" --demand "$demand" --key-rate "$rate" --key-bits "$key_bits" \
    --keys-per-sa "$kps" --warmup "$warmup" --kme-timeout "$timeout_s" \
    --json "$QKD_INTEROP_SCEN_DIR/run.json" || fail "key_rate.py run failed"
step "load after: $(uptime)"
expect_tunnel_up
step "IKE SA and CHILD SA established on both gateways (swanctl --list-sas)"
ping_through gw-a
note "KME: $(kme_admin stats | tr -d '\n' | tr -s ' ')"
# The plugin's lines of the run other than the per-exchange ones (got / confirmed / queued),
# numbers and key IDs blanked, by count.
for gw in gw-a gw-b; do
    f=$(log_file "$gw")
    step "$gw: $(grep -c 'CHILD_SA rekeying failed' "$f" || true) 'CHILD_SA rekeying failed' lines (driver and strongSwan retries), $(grep -c 'qkd: .*starting the exchange without QKD key' "$f" || true) 'qkd: ... without QKD key' lines"
    log_since_mark "$gw" | grep -o 'qkd: .*' | grep -vE '^qkd: (master|slave) for SAE .* got |^qkd: key IDs .* confirmed' \
        | sed -E 's/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}/<ID>/g; s/[0-9]+(\.[0-9]+)?(ms|s|µs)?/N/g' \
        | sort | uniq -c | sort -rn | head -n 15 | while read -r line; do note "$line"; done
done
