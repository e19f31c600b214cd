# desc: 50 charon stops while the plugin is busy: the KME answers after 1 s (refills of a buffer of 16 in flight at every stop) and qkdctl reads the status socket as charon stops; every stop exits 0 within the bound (kme.timeout + 1 s for the refill threads), no crash line in the log
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_recommended_proposals
stops=${QKD_STOPS:-50}
# Refills that take a second are in flight from charon's start on; a stop must join them
# within kme.timeout + 1 s.
A_QKD_BUFFER=16
A_QKD_KME_TIMEOUT=2s
kme_up
kme_admin latency 1000 >/dev/null
gateways_up
gw=gw-a
container=$(container_of "$gw")
longest=0
for n in $(seq 1 "$stops"); do
    if [ "$n" -gt 1 ]; then
        compose start "$gw" >>"$QKD_INTEROP_SCEN_DIR/compose.log" 2>&1 || fail "stop $n: could not start $gw again"
        wait_until 30 charon_ready "$gw" || fail "stop $n: charon did not come up again"
    fi
    # The refill threads start in a worker right after charon runs; their first requests
    # are then out (the simulator holds each for a second).
    sleep 0.5
    # A status reader that is still connected when charon stops.
    docker exec -d "$container" sh -c 'qkdctl status >/dev/null 2>&1; qkdctl status --json >/dev/null 2>&1' || true
    t0=$(date +%s%N)
    compose stop -t 20 "$gw" >>"$QKD_INTEROP_SCEN_DIR/compose.log" 2>&1 || fail "stop $n: docker could not stop $gw"
    took=$(( ($(date +%s%N) - t0) / 1000000 ))
    [ "$took" -gt "$longest" ] && longest=$took
    code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
    [ "$code" = 0 ] || { docker logs --tail 30 "$container" >&2; fail "stop $n: charon exited with $code"; }
    [ "$took" -lt 6000 ] || fail "stop $n took $took ms (bound: kme.timeout 2 s + 1 s for the refill threads, plus charon's own)"
done
# charon's file log starts afresh with every start; its stderr (docker logs) keeps them all.
runs=$(docker logs "$container" 2>&1 | grep -c "Starting IKE charon daemon" || true)
[ "$runs" -ge "$stops" ] || fail "docker logs show $runs charon starts, expected $stops"
if docker logs "$container" 2>&1 | grep -nE "received signal|thread [0-9]+ received [0-9]+|killing ourself|panicked|BUG:"; then
    fail "a crash or panic line in $gw's log"
fi
step "$stops stops of charon with refills in flight (KME 1 s away) and qkdctl reading: all exited 0, the longest took $longest ms, no crash or panic line"
