# shellcheck shell=bash
# CHILD rekeys from both sides at a steady pace, and what the audit lines say of each
# exchange (sourced by scenarios after helpers.sh).

# child_rekeys_for SECONDS INTERVAL: every INTERVAL seconds, gw-a and gw-b in turn rekey their
# newest installed CHILD SA, without waiting for the old one's delete. Counts them in REKEYS.
REKEYS=0
child_rekeys_for() {
    local until=$((SECONDS + $1)) every=$2 t gw id
    while [ "$SECONDS" -lt "$until" ]; do
        t=$SECONDS
        if [ $((REKEYS % 2)) = 0 ]; then gw=gw-a; else gw=gw-b; fi
        id=$(child_ids "$gw" | tail -n 1)
        [ -n "$id" ] || fail "$gw has no installed CHILD SA after $REKEYS rekeys"
        swanctl_in "$gw" --rekey --child-id "$id" >/dev/null || fail "swanctl --rekey --child-id $id on $gw failed"
        REKEYS=$((REKEYS + 1))
        sleep $((every - (SECONDS - t) > 0 ? every - (SECONDS - t) : 0))
    done
}

# count_exchanges: the qkd key exchanges since the mark, from both gateways' audit lines.
# Every exchange leaves one line with role=initiator on the side that started it, and that
# line says result=qkd only if the exchange ended with a confirmed QKD key on both sides (a
# responder that refused leaves the initiator "incomplete"). Sets EXCHANGES (started),
# FAILED (of those, not ended with a QKD key) and FAILED_LINES (every audit line on either
# side without result=qkd).
count_exchanges() {
    local gw started
    EXCHANGES=0 FAILED=0 FAILED_LINES=""
    for gw in gw-a gw-b; do
        started=$(log_grep "$gw" "qkd-audit: .* role=initiator " || true)
        if [ -n "$started" ]; then
            EXCHANGES=$((EXCHANGES + $(grep -c . <<<"$started")))
            FAILED=$((FAILED + $(grep -vc " result=qkd$" <<<"$started" || true)))
        fi
        FAILED_LINES+=$(log_grep "$gw" "qkd-audit: " | grep -v " result=qkd$" | sed "s/^/$gw: /" || true)
        FAILED_LINES+=$'\n'
    done
    FAILED_LINES=$(grep . <<<"$FAILED_LINES" || true)
}

# note_failed_exchanges: show the audit lines of failed exchanges (from count_exchanges).
note_failed_exchanges() {
    local line
    [ -n "$FAILED_LINES" ] || return 0
    while read -r line; do note "  $line"; done <<<"$FAILED_LINES"
}

# count_log GW ERE: how many lines since the mark match (0 if none).
count_log() { { log_grep "$1" "$2" || true; } | wc -l; }
