# desc: benchmark (not part of the test run): sequential PFS CHILD rekeys with real charons, x25519 alone vs x25519-ke1_qkd, timed from charon's millisecond log timestamps
#   tests/interop/run.sh tests/interop/bench/rekey-rate.sh      (QKD_BENCH_REKEYS=N, default 20; ~6 s per rekey: the harness waits out charon's delete_rekeyed_delay)
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
rekeys=${QKD_BENCH_REKEYS:-20}
EXTRA_CHARON='filelog {
        charon-file {
            time_precision = ms
        }
    }'
IKE_PROPOSALS=aes256gcm16-prfsha384-x25519
kme_up --key-rate 1000000000
for esp in aes256gcm16-x25519 aes256gcm16-x25519-ke1_qkd; do
    ESP_PROPOSALS=$esp
    gateways_up
    initiate gw-a
    for _ in $(seq "$rekeys"); do rekey_child gw-a >/dev/null; done
    result=$(python3 "$QKD_INTEROP_DIR/lib/rekey_times.py" "$(log_file gw-a)") || fail "$result"
    step "esp_proposals = $esp: $result"
    if [[ $esp == *qkd ]]; then
        used=$(log_grep gw-a 'qkd: master for SAE' | wc -l)
        [ "$used" -eq "$rekeys" ] || fail "expected $rekeys QKD keys for $rekeys rekeys, gw-a fetched $used"
        note "each rekey fetched its own QKD key ($used key IDs)"
    fi
done
