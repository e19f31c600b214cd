# desc: benchmark (not part of the test run): after a restart, N IKE SAs (default 100) initiated at once on freshly started charons; median and last time-to-tunnel-up and tunnels that never came up, x25519 / x25519-ke1_mlkem768 / recommended (x25519-ke1_qkd + esp qkd), KME +0 and +25 ms, alternated in rounds, ratios vs x25519 of the same round
# suites: forky
#   tests/interop/run.sh --no-setup tests/interop/bench/peers-at-once.sh
#   QKD_BENCH_PEERS (default 100), QKD_BENCH_ROUNDS (2), QKD_BENCH_LATENCIES (0,25),
#   QKD_BENCH_CONFIGS (x25519,x25519-ke1_mlkem768,recommended; the names of vici_bench.py),
#   QKD_BENCH_UP_TIMEOUT (60 s: a tunnel not up by then counts as never up),
#   QKD_BENCH_KEYINGTRIES (1, swanctl's default: a failed attempt is not retried);
#   set QKD_SCENARIO_TIMEOUT for long runs (each measurement restarts both gateways).
# Before every measurement both gateway containers are recreated (gateways_up, untimed): a
# real charon start, so the qkd plugin's key buffers start empty, as after a reboot. Then
# bench/peers_at_once.py (strongSwan's `vici` package, one host process, both charons'
# vici sockets bind-mounted to the host) sets the KME latency, loads N connections on both
# gateways (untimed) and sends N asynchronous `initiate`s on gw-a back to back; times come
# from gw-a's child-updown events. Nothing timed goes through swanctl or docker exec.
# With two containers the N "peers" are N connections gw-a -> gw-b that differ in IKE
# identity and CHILD selectors but share ONE QKD peer (sae-a/sae-b, one KME link): N
# exchanges on one peer's key supply and one peer's share of the KME request budget at
# once, not N gateways each with its own buffers. The KME simulator stays up between
# measurements (its key store is not what is measured: --key-rate is unbounded).
# shellcheck shell=bash disable=SC2034 # variables feed conf/*.tmpl via helpers.sh
require_plugin
require_kme_sim
A_GW_SUITE=forky
B_GW_SUITE=forky
peers=${QKD_BENCH_PEERS:-100}
. "$QKD_INTEROP_DIR/bench/vici.sh"
# All N IKE SAs come from one address: charon's per-IP limit of half-open IKE SAs
# (block_threshold, default 5) would drop the rest as a flood, which N gateways at N
# addresses never meet; it is raised to N. cookie_threshold (10 half-open in all) stays.
vici_bench_config "    block_threshold = $((peers > 5 ? peers : 5))
"
# strongSwan's retransmission defaults (4 s, 5 tries: ~165 s) instead of the tests' fail-fast
# 2 s x 3: what a user's gateways do. A tunnel not up within QKD_BENCH_UP_TIMEOUT counts as down.
RETRANSMIT_TIMEOUT=${QKD_BENCH_RETRANSMIT_TIMEOUT:-4.0}
RETRANSMIT_TRIES=${QKD_BENCH_RETRANSMIT_TRIES:-5}

require_vici_python

rounds=${QKD_BENCH_ROUNDS:-2}
up_timeout=${QKD_BENCH_UP_TIMEOUT:-60}
IFS=, read -r -a latencies <<<"${QKD_BENCH_LATENCIES:-0,25}"
IFS=, read -r -a configs <<<"${QKD_BENCH_CONFIGS:-x25519,x25519-ke1_mlkem768,recommended}"
samples="$QKD_INTEROP_SCEN_DIR/samples.jsonl"
: >"$samples"

kme_up --key-rate 1000000000
export_vici_env
step "load before: $(uptime)"
for ((rnd = 1; rnd <= rounds; rnd++)); do
    for lat in "${latencies[@]}"; do
        # Rotate the order of the configurations every round.
        for ((i = 0; i < ${#configs[@]}; i++)); do
            cfg=${configs[(i + rnd - 1) % ${#configs[@]}]}
            gateways_up
            for gw in gw-a gw-b; do
                [ -S "$QKD_INTEROP_SCEN_DIR/$gw/log/charon.vici" ] || fail "$gw: no vici socket at log/charon.vici"
            done
            python3 "$QKD_INTEROP_DIR/bench/peers_at_once.py" run --config "$cfg" --latency "$lat" --round "$rnd" \
                --peers "$peers" --timeout "$up_timeout" --keyingtries "${QKD_BENCH_KEYINGTRIES:-1}" --json "$samples" \
                || fail "peers_at_once.py run failed ($cfg, KME +$lat ms, round $rnd)"
        done
    done
done
kme_admin latency 0 >/dev/null
step "load after: $(uptime)"
python3 "$QKD_INTEROP_DIR/bench/peers_at_once.py" report --json "$samples" --timeout "$up_timeout" \
    || fail "peers_at_once.py report failed"
# What the plugin said while N exchanges hit one peer (all measurements: charon.log and the
# rotated charon.log.N of both gateways).
count() { grep -Ec "$@" || true; } # grep -c says 0 and fails when nothing matches
for gw in gw-a gw-b; do
    logs=("$QKD_INTEROP_SCEN_DIR/$gw/log"/charon.log*)
    note "$gw: $(cat "${logs[@]}" | count 'qkd: master.*got') master keys, $(cat "${logs[@]}" | count 'qkd: slave.*got') slave keys, $(cat "${logs[@]}" | count 'qkd:.*(refus|fail|error|no key|budget)') qkd lines saying refused/failed/error/no key/budget; $(cat "${logs[@]}" | count 'peer not responding|half-open IKE_SA limit') 'peer not responding'/per-IP limit lines, $(cat "${logs[@]}" | count 'could not obtain key IDs this gateway obtained') times the master fell back to one key set at a time"
    cat "${logs[@]}" | grep -E 'qkd:' | grep -Ev 'qkd: (master|slave).*got|confirmed; shared secret|status socket|qkd: SAE' \
        | sed -E 's/^[A-Z][a-z]{2} +[0-9]+ [0-9:.]+ //; s/[0-9]+\[/[/; s/<[^>]*>//g; s/[0-9a-f]{8}-[0-9a-f-]{27}/<id>/g; s/[0-9]+/N/g' \
        | sort | uniq -c | sort -rn | head -n 12 | sed 's/^/        /' || true
done
note "KME: $(kme_admin stats | tr -d '\n' | tr -s ' ')"
