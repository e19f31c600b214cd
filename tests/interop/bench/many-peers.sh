# desc: benchmark (not part of the test run): charon threads and RSS with 1 vs 1001 configured qkd peers, after startup, one IKE+CHILD setup and one PFS CHILD rekey each way
#   tests/interop/run.sh --no-setup tests/interop/bench/many-peers.sh     (QKD_BENCH_PEERS, default 1000)
# The extra peers have SAE IDs the KME does not serve (their refills fail and back off),
# like gateways configured for peers that are not up.
# shellcheck shell=bash disable=SC2034,SC2016 # variables feed conf/*.tmpl via helpers.sh; single quotes: the container shell expands
require_plugin
require_kme_sim
peers=${QKD_BENCH_PEERS:-1000}
IKE_PROPOSALS=aes256gcm16-prfsha384-x25519-ke1_qkd
ESP_PROPOSALS=aes256gcm16-qkd
charon_status() { # GW -> "VmRSS N kB Threads N"
    in_node "$1" sh -c 'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = charon ] && grep -E "^(Threads|VmRSS):" $p/status; done' \
        | tr -s ' \t\n' ' ' | sed 's/://g; s/ $//'
}
measure() { # LABEL
    gateways_up
    initiate gw-a
    rekey_child gw-a >/dev/null
    rekey_child gw-b >/dev/null
    sleep 5
    A_STATUS=$(charon_status gw-a)
    step "$1: gw-a charon: $A_STATUS"
    note "threads by name: $(in_node gw-a sh -c 'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = charon ] && cat $p/task/*/comm; done' | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')"
}
kme_up --key-rate 1000000000
measure "1 peer"
base=$A_STATUS
extra="    peers {"
for i in $(seq -f '%04g' 1 "$peers"); do
    extra+="
        peer$i {
            sae_id = sae-p$i
            remote = 10.$((10#$i / 250)).$((10#$i % 250)).1
        }"
done
extra+="
    }"
A_EXTRA_QKD=$extra
measure "$((peers + 1)) peers"
grep 'qkd: SAE' "$(log_file gw-a)" | head -n 2 | sed 's/^/      /' || true
field() { awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }' <<<"$2"; }
t0=$(field Threads "$base") r0=$(field VmRSS "$base")
t1=$(field Threads "$A_STATUS") r1=$(field VmRSS "$A_STATUS")
step "threads $t0 -> $t1; RSS $r0 kB -> $r1 kB (+$(( (r1 - r0) / 1024 )) MB)"
