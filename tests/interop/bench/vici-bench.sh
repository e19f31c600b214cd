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
VICI_SOCK=/var/log/strongswan/charon.vici
EXTRA_CHARON="${QKD_BENCH_FRAGMENT_SIZE:+    fragment_size = $QKD_BENCH_FRAGMENT_SIZE
}    plugins {
        vici {
            socket = unix://$VICI_SOCK
        }
    }"
# swanctl (gateways_up, --load-all) must find the moved socket too.
EXTRA_STRONGSWAN="swanctl {
    socket = unix://$VICI_SOCK
}"
EXTRA_QKD=${QKD_BENCH_KEM:+kem = $QKD_BENCH_KEM}
QKD_DH_GROUP=${QKD_BENCH_DH_GROUP:-curve25519}
# strongSwan's default log levels (1): the bench measures exchanges, not logging.
LOG_IKE=1
LOG_CHD=1
LOG_CFG=1

python3 -c 'import vici' 2>/dev/null || pip install --quiet vici >/dev/null 2>&1 \
    || python3 -m pip install --quiet vici >/dev/null 2>&1 || skip "python3 vici package missing and pip install vici failed"
python3 -c 'import vici' 2>/dev/null || skip "python3 vici package not importable"

kme_up --key-rate 1000000000
gateways_up
for gw in gw-a gw-b; do
    [ -S "$QKD_INTEROP_SCEN_DIR/$gw/log/charon.vici" ] || fail "$gw: no vici socket at log/charon.vici"
done
step "load before: $(uptime)"
export A_VICI="$QKD_INTEROP_SCEN_DIR/gw-a/log/charon.vici" B_VICI="$QKD_INTEROP_SCEN_DIR/gw-b/log/charon.vici"
export KME_CONTAINER
KME_CONTAINER=$(container_of kme)
for side in A B; do
    for v in LOCAL_ADDR REMOTE_ADDR LOCAL_ID REMOTE_ID; do
        export "${side}_$v=$(gw_var "$side" "$v")"
    done
    export "${side}_LOCAL_TS=$(gw_var "$side" LOCAL_INSIDE)" "${side}_REMOTE_TS=$(gw_var "$side" REMOTE_INSIDE)"
done
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
