# shellcheck shell=bash
# mallory: an attacker at 192.0.2.40 with its own charon, the plugin and its own KME
# simulator (so its plugin makes up real-looking key IDs), claiming gw-a's SAE ID towards
# gw-b. Sourced by scenarios after helpers.sh; gw-b must accept IKE from 192.0.2.40
# (B_REMOTE_ADDR) for mallory to get past IKE_SA_INIT.

MALLORY_CONNS=${MALLORY_CONNS:-200}

# mallory_up: render mallory's configs (one swanctl connection and qkd peer per exchange it
# will fire), make its PKI, start its container and its simulator.
mallory_up() {
    local d="$QKD_INTEROP_SCEN_DIR/mallory" n
    mkdir -p "$d/log" "$d/certs"
    sed 's/^# Generated .*/# mallory (rendered from gw-a'"'"'s)/' "$QKD_INTEROP_SCEN_DIR/gw-a/strongswan.conf" >"$d/strongswan.conf"
    docker run --rm --network none --entrypoint qkd-kme-sim -v "$d/certs:/out" "$QKD_INTEROP_IMAGE" \
        gen-certs --out /out --kme kme-a:127.0.0.1 --kme kme-b:127.0.0.1 --sae sae-a --sae sae-b \
        >"$d/gen-certs.log" 2>&1 || { cat "$d/gen-certs.log" >&2; fail "mallory: gen-certs failed"; }
    {
        echo "qkd {"
        echo "    load = yes"
        echo "    sae_id = sae-a"
        echo "    buffer = 0"
        echo "    max_kme_requests = 64"
        echo "    kme {"
        echo "        url = https://127.0.0.1:9443"
        echo "        ca = /etc/mallory/certs/ca.pem"
        echo "        cert = /etc/mallory/certs/sae-a.pem"
        echo "        key = /etc/mallory/certs/sae-a.key"
        echo "    }"
        echo "    peers {"
        # strongswan.conf values run to the end of the line: one setting per line.
        for n in $(seq 0 $((MALLORY_CONNS - 1))); do printf '        mal%s {\n            sae_id = sae-b\n        }\n' "$n"; done
        echo "    }"
        echo "}"
    } >"$d/qkd.conf"
    {
        echo "connections {"
        for n in $(seq 0 $((MALLORY_CONNS - 1))); do
            cat <<CONN
    mal$n {
        local_addrs = 192.0.2.40
        remote_addrs = 192.0.2.20
        proposals = $IKE_PROPOSALS
        # A distinct identity per connection: equal peer configs would share one IKE SA.
        local {
            auth = psk
            id = mal$n
        }
        remote {
            auth = psk
            id = gw-b
        }
        children {
            net {
                local_ts = 198.51.100.66/32
                remote_ts = 203.0.113.1/32
                esp_proposals = $ESP_PROPOSALS
                # Loading the connections (mallory_fire) starts them all at once.
                start_action = start
            }
        }
    }
CONN
        done
        echo "}"
        # Mallory does not know the PSK.
        printf 'secrets {\n    ike-guess {\n        id-b = gw-b\n        secret = 0x%s\n    }\n}\n' \
            "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    } >"$d/swanctl.conf"
    compose up -d --no-deps --force-recreate mallory >>"$QKD_INTEROP_SCEN_DIR/compose.log" 2>&1 \
        || { tail -n 20 "$QKD_INTEROP_SCEN_DIR/compose.log" >&2; fail "could not start mallory"; }
    record_ids
    in_node mallory sh -c 'qkd-kme-sim serve --ca /etc/mallory/certs/ca.pem \
        --kme-a-listen 127.0.0.1:9443 --kme-a-cert /etc/mallory/certs/kme-a.pem --kme-a-key /etc/mallory/certs/kme-a.key --kme-a-saes sae-a \
        --kme-b-listen 127.0.0.1:9444 --kme-b-cert /etc/mallory/certs/kme-b.pem --kme-b-key /etc/mallory/certs/kme-b.key --kme-b-saes sae-b \
        >/var/log/strongswan/kme.log 2>&1 &' || fail "mallory: could not start its simulator"
    wait_until 30 charon_ready mallory || fail "mallory's charon did not come up"
    step "mallory up: its own KME, $MALLORY_CONNS connections claiming SAE 'sae-a' towards gw-b"
}

# mallory_fire: load mallory's connections; start_action = start makes its charon initiate
# every one of them at once.
mallory_fire() {
    swanctl_in mallory --load-all >"$QKD_INTEROP_SCEN_DIR/mallory/load-all.out" 2>&1 \
        || { tail -n 5 "$QKD_INTEROP_SCEN_DIR/mallory/load-all.out" >&2; fail "mallory: --load-all failed"; }
}
# mallory_started: how many IKE SAs mallory's charon has initiated so far.
mallory_started() { grep -c "initiating IKE_SA" "$QKD_INTEROP_SCEN_DIR/mallory/log/charon.log" || true; }

# worker_idle GW: idle worker threads of GW's charon, from swanctl --stats.
worker_idle() { swanctl_in "$1" --stats | sed -nE 's/.*worker threads: [0-9]+ total, ([0-9]+) idle.*/\1/p'; }
