# desc: qkdctl (from the strongswan-qkd package) on both gateways after a tunnel and rekeys both ways: socket mode 0600, counters equal the qkd-audit lines, keys delivered equal the simulator's own stats, buffers full, metrics match the JSON
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_recommended_proposals
kme_up
gateways_up
[ "${QKD_INTEROP_FROM_DEB:-0}" = 1 ] && step "plugin, qkdctl and simulator installed from the .deb packages" \
    || note "plugin staged without its package (no up-to-date .deb): checking qkdctl all the same"
initiate gw-a
rekey_child gw-a
rekey_child gw-b
rekey_ike gw-a

status_json() { in_node "$1" qkdctl status --json; }
out_sets() { status_json "$1" | json_get peers 0 outbound_sets; }
sim_stats() { kme_admin stats; }
# Settled: both outbound queues full, and the simulator's counters unchanged for a second.
settled() {
    [ "$(out_sets gw-a)" = "$QKD_BUFFER" ] && [ "$(out_sets gw-b)" = "$QKD_BUFFER" ] || return 1
    local before; before=$(sim_stats | json_get requests); sleep 1
    [ "$(sim_stats | json_get requests)" = "$before" ]
}
wait_until 60 settled || fail "the key buffers never settled at buffer = $QKD_BUFFER"

for gw in gw-a gw-b; do
    mode=$(in_node "$gw" stat -c %a /var/run/charon.qkd) || fail "$gw: no status socket"
    [ "$mode" = 600 ] || fail "$gw: status socket has mode $mode, not 600"
done
step "status sockets are mode 600"
note "qkdctl status on gw-a:"
in_node gw-a qkdctl status | sed 's/^/        /'

sim=$(sim_stats)
a=$(status_json gw-a) b=$(status_json gw-b)
both() { echo $(( $(json_get "$@" <<<"$a") + $(json_get "$@" <<<"$b") )); }
# Exchange counters = the audit lines of each gateway.
for gw in gw-a gw-b; do
    s=$(status_json "$gw")
    audit_qkd=$(grep -c "qkd-audit: .* result=qkd$" "$(log_file "$gw")" || true)
    [ "$(json_get exchanges qkd_secrets <<<"$s")" = "$audit_qkd" ] \
        || fail "$gw: qkdctl counts $(json_get exchanges qkd_secrets <<<"$s") QKD secrets, the log $audit_qkd qkd-audit lines"
    for c in dh_fallbacks no_key_sent no_key_refused failures; do
        [ "$(json_get exchanges "$c" <<<"$s")" = 0 ] || fail "$gw: $c = $(json_get exchanges "$c" <<<"$s")"
    done
    [ "$(json_get kmes 0 errors <<<"$s")" = 0 ] || fail "$gw: KME errors: $(json_get kmes 0 <<<"$s")"
done
step "QKD secrets: gw-a $(json_get exchanges qkd_secrets <<<"$a"), gw-b $(json_get exchanges qkd_secrets <<<"$b") = their qkd-audit lines; no fallback, refusal or failure"
# Keys: every key the simulator delivered was counted by the gateway that asked for it, and
# went into a buffer or straight into an exchange ("from KME" lines, one 256-bit key each).
sim_keys=$(( $(json_get keys_delivered_to_master <<<"$sim") + $(json_get keys_delivered_to_slave <<<"$sim") ))
[ "$(both kmes 0 keys)" = "$sim_keys" ] \
    || fail "qkdctl counts $(both kmes 0 keys) keys from the KMEs, the simulator delivered $sim_keys: $sim"
on_demand=$(( $(grep -c "got 256 bits from KME" "$(log_file gw-a)" || true) + $(grep -c "got 256 bits from KME" "$(log_file gw-b)" || true) ))
[ $(( $(both buffered_keys buffered) + on_demand )) = "$sim_keys" ] \
    || fail "buffered $(both buffered_keys buffered) + on demand $on_demand keys, but the simulator delivered $sim_keys"
# Requests: the plugin's, each one or more HTTP requests at the simulator.
sim_requests=$(( $(json_get requests enc_keys <<<"$sim") + $(json_get requests dec_keys <<<"$sim") ))
[ "$(both kmes 0 requests)" -ge 1 ] && [ "$(both kmes 0 requests)" -le "$sim_requests" ] \
    || fail "qkdctl counts $(both kmes 0 requests) KME requests, the simulator $sim_requests HTTP requests"
step "KME: $sim_keys keys delivered = qkdctl's $(both kmes 0 keys) = $(both buffered_keys buffered) buffered + $on_demand on demand; $(both kmes 0 requests) key requests ($sim_requests HTTP requests at the simulator)"
for gw in gw-a gw-b; do
    s=$(status_json "$gw")
    json_get kmes 0 latency <<<"$s" | grep -q p99_us || fail "$gw: no KME latency"
    [ "$(json_get kmes 0 last_success_unix <<<"$s")" != null ] || fail "$gw: KME never answered?"
done
# The metrics say the same as the JSON.
m=$(in_node gw-a qkdctl metrics)
grep -q '^# TYPE strongswan_qkd_qkd_secrets_total counter$' <<<"$m" || fail "metrics without TYPE lines: $m"
[ "$(awk '$1 == "strongswan_qkd_qkd_secrets_total" { print $2 }' <<<"$m")" = "$(json_get exchanges qkd_secrets <<<"$a")" ] \
    || fail "metrics and JSON differ on qkd_secrets"
grep -q "^strongswan_qkd_outbound_key_sets{peer=\"$CONN_NAME\",peer_sae_id=\"sae-b\"} $QKD_BUFFER$" <<<"$m" \
    || fail "metrics: outbound_key_sets towards sae-b is not $QKD_BUFFER"
step "qkdctl metrics: $(grep -vc '^#' <<<"$m") samples, consistent with the JSON"
in_node gw-a qkdctl status --socket unix:///nonexistent >/dev/null 2>&1 && fail "qkdctl succeeded without a socket"
step "qkdctl fails cleanly without a socket"
