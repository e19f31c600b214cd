# desc: benchmark (not part of the test run): what users do, over vici from one host process: IKE+CHILD setups back to back, CHILD SAs one after another in one IKE SA, PFS CHILD rekeys back to back; x25519 / x25519-ke1_mlkem768 / recommended (x25519-ke1_qkd + esp qkd); KME +0 and +25 ms, alternated in rounds, ratios measured side by side
# suites: forky
#   tests/interop/run.sh --no-setup tests/interop/bench/vici-bench.sh
#   QKD_BENCH_ROUNDS (default 3), QKD_BENCH_SETUPS (30), QKD_BENCH_CHILDREN (300), QKD_BENCH_REKEYS (20),
#   QKD_BENCH_LATENCIES (0,25), QKD_BENCH_CONFIGS (x25519,x25519-ke1_mlkem768,recommended; also
#   x25519-ke1_qkd, "qkd alone"); set QKD_SCENARIO_TIMEOUT for long runs.
#   QKD_BENCH_FRAGMENT_SIZE (charon.fragment_size; strongSwan's default 1280 splits ML-KEM rounds in two),
#   QKD_BENCH_KEM=mlkem768: both charons run with charon.plugins.qkd.kem = mlkem768, so every qkd
#   configuration carries ML-KEM-768 in the qkd method (issue 10's x25519-ke1_qkd target);
#   QKD_BENCH_DH_GROUP=none: without qkd's in-method x25519 (ML-KEM + QKD in the round).
# Both gateways run strongSwan 6.1.0 (forky): ML-KEM is in its openssl plugin only. Each
# charon's vici socket is in its log directory, which is bind-mounted to the host, so
# lib/../bench/vici_bench.py (strongSwan's `vici` package from PyPI) drives both charons from
# one process; nothing timed goes through swanctl or docker exec.
# shellcheck shell=bash disable=SC2034 # variables feed conf/*.tmpl via helpers.sh
require_plugin
require_kme_sim
A_GW_SUITE=forky
B_GW_SUITE=forky
. "$QKD_INTEROP_DIR/bench/vici.sh"
vici_bench_config "${QKD_BENCH_FRAGMENT_SIZE:+    fragment_size = $QKD_BENCH_FRAGMENT_SIZE
}"
EXTRA_QKD=${QKD_BENCH_KEM:+kem = $QKD_BENCH_KEM}
QKD_DH_GROUP=${QKD_BENCH_DH_GROUP:-curve25519}
require_vici_python

kme_up --key-rate 1000000000
gateways_up
expect_vici_sockets
step "load before: $(uptime)"
export_vici_env
python3 "$QKD_INTEROP_DIR/bench/vici_bench.py" \
    --rounds "${QKD_BENCH_ROUNDS:-3}" --setups "${QKD_BENCH_SETUPS:-30}" --children "${QKD_BENCH_CHILDREN:-300}" \
    --rekeys "${QKD_BENCH_REKEYS:-20}" --latencies "${QKD_BENCH_LATENCIES:-0,25}" \
    ${QKD_BENCH_CONFIGS:+--configs "$QKD_BENCH_CONFIGS"} --kem "${QKD_BENCH_KEM:-}" --dh-group "$QKD_DH_GROUP" --json "$QKD_INTEROP_SCEN_DIR/samples.json" \
    || fail "vici_bench.py failed"
step "load after: $(uptime)"
# Where the QKD keys of the measured exchanges came from (both gateways, whole run).
for gw in gw-a gw-b; do
    f=$(log_file "$gw")
    note "$gw: $(grep -c 'from the outbound queue' "$f") master keys from the outbound queue, $(grep -c 'qkd: master.*got' "$f") master keys in all; $(grep -c 'from the inbound cache' "$f") slave keys from the inbound cache, $(grep -c 'qkd: slave.*got' "$f") in all; $(grep -c 'confirmed; shared secret' "$f") QKD secrets"
done
note "KME: $(kme_admin stats | tr -d '\n' | tr -s ' ')"
