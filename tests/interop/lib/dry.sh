# shellcheck shell=bash
# A dry or failing KME during rekeys, with traffic flowing all along (sourced by scenarios
# after helpers.sh and qkd.sh). strongSwan retries a refused rekey 5-15 s later, so every
# fault is held long enough for at least one retry to meet it, and the ping runs across
# all of it.

# Faults the simulator plays: its KMEs answer 503 (dry), drop connections without an answer
# (unreachable), or answer 404 "Element not found" once out of keys (some real KMEs).
# QKD_DRY_FAULTS narrows the list for a quick run.
read -ra DRY_FAULTS <<<"${QKD_DRY_FAULTS:-503 unreachable 404}"
# Seconds each fault is held.
DRY_SECONDS=${DRY_SECONDS:-22}

# kme_up_for_faults: the simulator for kme_fault: a small pool (8 keys) that says 404 when
# it is empty, as some real KMEs do.
kme_up_for_faults() { kme_up --no-key-answer 404 --max-key-count 8; }

kme_fault() { # FAULT on|off
    case "$1/$2" in
        503/*) kme_admin fail-503 "$2" >/dev/null ;;
        unreachable/*) kme_admin drop "$2" >/dev/null ;;
        404/on) kme_admin pause >/dev/null && kme_drain ;;
        404/off) kme_admin resume >/dev/null ;;
        *) fail "unknown KME fault $1" ;;
    esac || fail "kme admin: could not turn $1 $2"
}
# kme_drain: take the paused pool's keys (as gw-a, for sae-b) until the KME answers 404.
kme_drain() {
    local n
    for n in $(seq 1 12); do
        etsi_in gw-a "$(gw_var A QKD_PEER_SAE_ID)/enc_keys?number=1" >/dev/null 2>&1 || return 0
    done
    fail "the KME still hands out keys after $n requests with key generation paused"
}

# ping_start FROM: a ping (5 per second) through the tunnel in the background, until
# ping_lost stops it.
PING_PID="" PING_OUT="" PING_FROM=""
ping_start() {
    local from=$1 to src dst
    to=$(peer_of "$from")
    src=$(gw_var "$(side_of "$from")" LOCAL_INSIDE); src=${src%/*}
    dst=$(gw_var "$(side_of "$to")" LOCAL_INSIDE); dst=${dst%/*}
    PING_OUT="$QKD_INTEROP_SCEN_DIR/$from/ping-long.out" PING_FROM=$from
    in_node "$from" rm -f /tmp/stop-ping
    # Stopped by a file, with SIGINT from the shell's own kill, so ping prints its summary.
    # shellcheck disable=SC2016 # expanded by the container's shell
    QKD_EXEC_TIMEOUT=900 in_node "$from" sh -c 'ping -n -i 0.2 -W 1 -w 800 -I "$1" "$2" & p=$!
        while [ ! -e /tmp/stop-ping ] && kill -0 $p 2>/dev/null; do sleep 0.2; done
        kill -INT $p 2>/dev/null; wait $p' ping "$src" "$dst" >"$PING_OUT" 2>&1 &
    PING_PID=$!
    step "ping $src -> $dst running (5 per second)"
}
# ping_stop: stop the ping (SIGINT: it prints its summary); sets PING_SENT and PING_LOST.
# Not for $(...): the ping is a child of this shell.
PING_SENT=0 PING_LOST=0
ping_stop() {
    local sent got
    in_node "$PING_FROM" touch /tmp/stop-ping
    wait "$PING_PID" || true
    local last trailing
    sent=$(sed -nE 's/^([0-9]+) packets transmitted.*/\1/p' "$PING_OUT")
    got=$(sed -nE 's/.* ([0-9]+) (packets )?received.*/\1/p' "$PING_OUT")
    [ -n "$sent" ] && [ -n "$got" ] || { cat "$PING_OUT" >&2; fail "no ping summary"; }
    # SIGINT may come between a request and its reply: one unanswered request at the very
    # end is in flight, not lost. Gaps before the last reply count, as do more at the end.
    last=$({ grep -oE 'icmp_seq=[0-9]+' "$PING_OUT" || true; } | cut -d= -f2 | sort -n | tail -n 1)
    trailing=$((sent - ${last:-0}))
    [ "$trailing" -gt 0 ] && trailing=$((trailing - 1))
    PING_SENT=$sent PING_LOST=$((${last:-0} - got + trailing))
}

# An IKE SA watch (lib/ike-watch.sh in the background): every second, the established IKE
# SAs of each gateway.
WATCH_PID=""
watch_start() {
    bash "$QKD_INTEROP_DIR/lib/ike-watch.sh" "$QKD_INTEROP_SCEN_DIR/ike-watch.log" &
    WATCH_PID=$!
    # shellcheck disable=SC2064 # this watcher's pid
    trap "kill $WATCH_PID 2>/dev/null || true" EXIT
}
# watch_check: fail if a gateway was ever seen without an IKE SA carrying the tunnel.
watch_check() {
    local out="$QKD_INTEROP_SCEN_DIR/ike-watch.log" gaps
    kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null || true
    gaps=$(awk 'NF < 3' "$out")
    [ -z "$gaps" ] || fail "a gateway had no established IKE SA at: $(head -n 3 <<<"$gaps" | tr '\n' ';')"
    note "IKE SA present on both gateways in all $(wc -l <"$out") samples ($out)"
}

# dry_rekey KIND GW FAULT: hold FAULT on the KME while GW starts a KIND (child|ike) rekey
# and strongSwan retries it; then lift it and wait for a rekey with a fresh QKD key.
# REFUSED_RE is what the peer logs when it refuses the exchange in-band.
REFUSED_RE="qkd: SAE '[^']+' started the exchange without QKD key"
dry_rekey() {
    local kind=$1 gw=$2 fault=$3 peer t0 id
    peer=$(peer_of "$gw")
    log_mark
    kme_fault "$fault" on
    t0=$SECONDS
    swanctl_in "$gw" --rekey "--$kind" "$( [ "$kind" = child ] && echo "$CHILD_NAME" || echo "$CONN_NAME")" >/dev/null \
        || fail "swanctl --rekey --$kind on $gw failed"
    expect_log "$gw" "starting the exchange without QKD key" 15
    expect_log "$peer" "$REFUSED_RE" 15
    sleep $((DRY_SECONDS - (SECONDS - t0) > 0 ? DRY_SECONDS - (SECONDS - t0) : 0))
    local refusals used
    refusals=$(log_grep "$peer" "$REFUSED_RE" | wc -l)
    # No key reaches a gateway while the fault holds: every key ID used so far in this
    # scenario is known now, and the retry must use none of them.
    used=$(used_key_ids)
    kme_fault "$fault" off
    step "KME $fault for ${DRY_SECONDS}s during a $kind rekey from $gw: $refusals exchange(s) refused in-band by $peer"
    # strongSwan's own retry (5-15 s after the last refusal) now gets a key.
    wait_until 30 _fresh_master_round "$gw" "$used" || {
        log_since_mark "$gw" | tail -n 15 | sed 's/^/        /' >&2
        fail "$gw: no $kind rekey as master with a key ID not used before within 30 s of the KME's recovery"
    }
    id=$FRESH_KEY_IDS
    expect_log "$peer" "qkd: key IDs $id confirmed" 15
    step "after recovery, $gw's retried $kind rekey used fresh key ID $id (none of the $(wc -w <<<"$used") used before)"
}

# used_key_ids: every key ID either gateway logged in this scenario (all its charon logs),
# one per line.
used_key_ids() {
    local f
    for f in "$QKD_INTEROP_SCEN_DIR"/gw-[ab]/log/charon.log*; do
        [ -e "$f" ] || continue
        sed -nE 's/.* under key IDs ([0-9a-f,-]+).*/\1/p' "$f"
    done | tr ',' '\n' | sort -u
}
# _fresh_master_round GW USED: GW logged a master round since the mark whose key IDs are
# all absent from USED; sets FRESH_KEY_IDS to them (comma-separated, as logged).
FRESH_KEY_IDS=""
_fresh_master_round() {
    local ids id
    while read -r ids; do
        for id in ${ids//,/ }; do
            if grep -qxF -- "$id" <<<"$2"; then continue 2; fi
        done
        FRESH_KEY_IDS=$ids
        return 0
    done < <({ log_grep "$1" "qkd: master for SAE .* under key IDs " || true; } \
        | sed -nE 's/.* under key IDs ([0-9a-f,-]+).*/\1/p')
    return 1
}

# no_half_open_after_failed_initiate: with the KME dry, an initial exchange fails cleanly
# and the responder keeps no half-open IKE SA 2 s later.
no_half_open_after_failed_initiate() {
    local fault=$1 left
    kme_fault "$fault" on
    if try_initiate gw-a 20; then fail "the tunnel came up although the KME was $fault"; fi
    sleep 2
    left=$(list_sas gw-b | grep -c "^$CONN_NAME:" || true)
    kme_fault "$fault" off
    [ "$left" = 0 ] || { list_sas gw-b >&2; fail "gw-b keeps $left IKE SA(s) 2 s after the failed initial exchange"; }
    step "KME $fault: initial exchange refused in-band, no half-open IKE SA on gw-b 2 s later"
}
