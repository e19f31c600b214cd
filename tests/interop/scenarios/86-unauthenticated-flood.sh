# desc: mallory (own charon, plugin and KME) fires 200 concurrent exchanges at gw-b claiming gw-a's SAE ID, with key IDs gw-b's KME (answering after 5 s) does not know: without remote binding a bounded few of gw-b's workers wait for the KME, the rest are refused at once, workers stay free; the real tunnel rekeys from its buffers and answers DPD meanwhile; with remote binding no KME request is made for mallory; with fallback = dh on both sides and no buffers, the real tunnel's CHILD and IKE rekeys reach the KME during the flood and are all QKD-keyed (0 DH fallbacks)
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/mallory.sh"
use_recommended_proposals
# gw-b answers IKE from gw-a and from mallory's address, like a responder open to several peers.
B_REMOTE_ADDR=192.0.2.10,192.0.2.40
B_QKD_KME_TIMEOUT=8s
# gw-a checks gw-b's liveness every second while it has no traffic.
A_EXTRA_CONN='        dpd_delay = 1s'
# Without strongSwan's own COOKIE / half-open limits, so every one of mallory's exchanges
# reaches the plugin: the worst case for what it may do before authentication.
B_EXTRA_CHARON='    dos_protection = no'
kme_up
for binding in "" 192.0.2.10; do
    B_QKD_PEER_REMOTE=$binding
    gateways_up
    initiate gw-a
    # The rekeys carry each side's announcements: the next rekeys need no KME.
    rekey_child gw-a >/dev/null
    rekey_child gw-b >/dev/null
    [ -n "$(child_ids gw-a)" ] || fail "no CHILD SA after the warm-up rekeys"
    mallory_up
    kme_admin latency 5000 >/dev/null
    step "gw-b's KME answers after 5 s; peers.tunnel.remote on gw-b: ${binding:-none}"
    log_mark
    # Requests that reached gw-b's KME for mallory: its made-up key IDs are answered 400
    # (counted by the simulator: gw-b's log lines before authentication are rate-limited).
    refused0=$(kme_admin stats | json_get responses 400)
    mallory_fire
    idle_min=16
    for _ in 1 2 3; do
        sleep 0.5
        idle=$(worker_idle gw-b); [ -n "$idle" ] || fail "no worker line in gw-b's --stats"
        [ "$idle" -lt "$idle_min" ] && idle_min=$idle
    done
    # The real peer's rekey while the flood is on: its keys are in gw-b's inbound cache, so
    # it needs no KME (which answers after 5 s) and no more than one free worker.
    rekey_child gw-a >/dev/null
    expect_log gw-b "slave for SAE 'sae-a' \(connection 'tunnel'\): got 256 bits from the inbound cache"
    idle=$(worker_idle gw-b); [ "$idle" -lt "$idle_min" ] && idle_min=$idle
    started=$(mallory_started)
    [ "$started" -ge $((MALLORY_CONNS / 2)) ] || fail "mallory started only $started of its $MALLORY_CONNS exchanges"
    sleep 6
    kme_admin latency 0 >/dev/null
    sleep 3
    expect_no_log gw-a "retransmit .* of request"
    [ -n "$(ike_ids gw-a)" ] && [ -n "$(child_ids gw-a)" ] || fail "the real tunnel did not survive the flood"
    ping_through gw-a
    busy=$({ log_grep gw-b "KME requests already in flight" || true; } | wc -l)
    to_kme=$(( $(kme_admin stats | json_get responses 400) - refused0 ))
    if [ -z "$binding" ]; then
        [ "$busy" -gt 0 ] || fail "gw-b never hit max_kme_requests under the flood"
        [ "$to_kme" -gt 0 ] || fail "none of mallory's exchanges reached gw-b's KME: the scenario tests nothing"
        step "no binding: mallory started $started exchanges; $to_kme requests for them reached gw-b's KME (bounded: one per peer from the refill threads, a quarter of max_kme_requests = 4 from exchanges); $busy log lines of exchanges refused at once (rate-limited); fewest idle workers seen on gw-b: $idle_min of 16"
    else
        bound=$({ log_grep gw-b "SAE ID 'sae-a' is bound to another address" || true; } | wc -l)
        [ "$bound" -gt 0 ] || fail "gw-b did not refuse mallory's claims by address"
        [ "$busy" = 0 ] && [ "$to_kme" = 0 ] || fail "gw-b still sent mallory's exchanges towards its KME ($to_kme asked, $busy refused for the cap)"
        step "remote binding: mallory started $started exchanges; $bound claims refused by address before any KME request; fewest idle workers on gw-b: $idle_min of 16"
    fi
    [ "$idle_min" -gt 0 ] || fail "all of gw-b's workers were busy"
    step "during the flood: gw-a's CHILD rekey from the buffers, DPD answered (no retransmits), ping through the tunnel"
    compose rm -s -f mallory >/dev/null 2>&1 || true
done

# The downgrade a flood must not cause: fallback = dh on both sides and no buffers, so the
# real tunnel's rekeys need gw-b's KME while mallory keeps its request budget busy. A full
# budget must never mean DH: every rekey gets its QKD key (authenticated exchanges keep
# their share of max_kme_requests) or is refused in-band and retried.
A_QKD_FALLBACK=dh B_QKD_FALLBACK=dh A_QKD_BUFFER=0 B_QKD_BUFFER=0 B_QKD_PEER_REMOTE=
gateways_up
initiate gw-a
mallory_up
# Slow enough that mallory's exchanges fill gw-b's budget for unauthenticated work, fast
# enough that a rekey waiting for two KME answers stays within the first retransmits.
kme_admin latency 1000 >/dev/null
log_mark
mallory_fire
sleep 1
rekey_child gw-a >/dev/null
rekey_child gw-b >/dev/null
rekey_ike gw-a >/dev/null
started=$(mallory_started)
busy=$({ log_grep gw-b "KME requests already in flight" || true; } | wc -l)
kme_admin latency 0 >/dev/null
for gw in gw-a gw-b; do
    fallbacks=$({ log_grep "$gw" "DH fallback" || true; } | wc -l)
    [ "$fallbacks" = 0 ] || fail "$gw fell back to DH during the flood: $(log_grep "$gw" "DH fallback" | head -3)"
done
qkd_keyed=$({ log_grep gw-a "<$CONN_NAME\|[0-9]+> qkd: key IDs .* confirmed; shared secret = 256-bit QKD key" || true; } | wc -l)
[ "$qkd_keyed" -ge 3 ] || fail "only $qkd_keyed of the real tunnel's 3 rekeys were QKD-keyed on gw-a"
[ -n "$(ike_ids gw-a)" ] && [ -n "$(child_ids gw-a)" ] || fail "the real tunnel did not survive the flood"
ping_through gw-a
step "fallback = dh, buffer = 0: mallory started $started exchanges ($busy refused at once for the budget); the real tunnel's CHILD rekeys from both sides and its IKE rekey took their keys from the KME, $qkd_keyed QKD-keyed exchanges on gw-a, 0 DH fallbacks on either side, ping through"
compose rm -s -f mallory >/dev/null 2>&1 || true
