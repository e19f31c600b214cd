# shellcheck shell=bash
# survive_dry_kme KIND: the body of the dry-KME scenarios (sourced after dry.sh). With the
# proposals the scenario set, on strongSwan 6.0.1 (trixie) and 6.1.0 (forky) pairs: bring the
# tunnel up, keep a ping running, and for each KME fault let a KIND rekey (child|ike) meet
# it, alternating which gateway starts the rekey. Buffers are off, so every rekey asks the
# KME: this is the path a dry link takes once buffers are used up. Passes if no IKE SA is
# ever missing, not one ping is lost, and each retried rekey after recovery has a fresh key.
survive_dry_kme() {
    local kind=$1 suite n=0 gw
    QKD_BUFFER=0
    for suite in "" forky; do
        GW_SUITE=$suite
        gateways_up
        step "strongSwan $(in_node gw-a swanctl --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1) on both gateways"
        initiate gw-a
        ping_start gw-a
        watch_start
        for fault in "${DRY_FAULTS[@]}"; do
            if [ $((n % 2)) = 0 ]; then gw=gw-a; else gw=gw-b; fi
            n=$((n + 1))
            dry_rekey "$kind" "$gw" "$fault"
        done
        sleep 2
        ping_stop
        watch_check
        [ "$PING_LOST" = 0 ] || fail "$PING_LOST of $PING_SENT pings lost"
        step "0 of $PING_SENT pings lost across ${#DRY_FAULTS[@]} KME faults"
    done
}
