# QKD checks for scenarios (sourced by scenarios after helpers.sh).

QKD_SECRETS="$QKD_INTEROP_DIR/lib/secrets.py"

# x25519 in IKE_SA_INIT, qkd in IKE_INTERMEDIATE, and a fresh QKD key on every CHILD rekey
# (PFS) and IKE rekey, each in an additional key exchange (RFC 9370).
use_hybrid_proposals() {
    IKE_PROPOSALS=aes256gcm16-prfsha384-x25519-ke1_qkd
    ESP_PROPOSALS=aes256gcm16-x25519-ke1_qkd
}
# The README's recommended layout: as above for the IKE SA, but qkd (with its in-method
# x25519) as the CREATE_CHILD_SA's own key exchange, where strongSwan keeps the CHILD SA
# when a rekey is refused for lack of a key.
use_recommended_proposals() {
    IKE_PROPOSALS=aes256gcm16-prfsha384-x25519-ke1_qkd
    ESP_PROPOSALS=aes256gcm16-qkd
}

# last_key_id GW ROLE: key ID of GW's last QKD round (since the mark) as master/slave.
last_key_id() {
    log_grep "$1" "qkd: $2 for SAE .* under key IDs " | tail -n 1 | sed -E 's/.* under key IDs ([0-9a-f,-]+).*/\1/'
}

# expect_qkd_round MASTER_GW: the exchange's initiator got a key from its KME (ETSI master),
# the peer got the same key ID (slave), and both confirmed it. Prints the key ID.
expect_qkd_round() {
    local master=$1 slave id sid
    slave=$(peer_of "$master")
    expect_log "$master" "qkd: master for SAE .* under key IDs " >&2
    expect_log "$slave" "qkd: slave for SAE .* under key IDs " >&2
    id=$(last_key_id "$master" master); sid=$(last_key_id "$slave" slave)
    [ -n "$id" ] && [ "$id" = "$sid" ] || fail "key IDs differ: $master (master) '$id', $slave (slave) '$sid'"
    expect_log "$master" "qkd: key IDs $id confirmed" >&2
    expect_log "$slave" "qkd: key IDs $id confirmed" >&2
    printf '%s\n' "$id"
}

# expect_secret_prefix KEY_ID LABEL: on both gateways, a secret charon logged (DBG4) under
# LABEL begins with the key bytes the KME delivered for KEY_ID (from the KME's journal).
expect_secret_prefix() {
    local id=$1 label=$2 journal="$QKD_INTEROP_SCEN_DIR/journal.json" out
    kme_admin journal >"$journal" || fail "could not read the KME journal"
    out=$(python3 "$QKD_SECRETS" key-prefix "$journal" "$id" "$label" "$(log_file gw-a)" "$(log_file gw-b)") \
        || fail "$out"
    while read -r line; do note "${line#"$QKD_INTEROP_SCEN_DIR/"}"; done <<<"$out"
}

# expect_same_secrets LABEL: both gateways logged identical LABEL secrets (e.g. "Sk_d secret").
expect_same_secrets() {
    local out
    out=$(python3 "$QKD_SECRETS" same "$1" "$(log_file gw-a)" "$(log_file gw-b)") || fail "$out"
    note "$out"
}

# expect_journal_master KEY_ID SAE: the KME handed KEY_ID out to SAE as the ETSI master.
expect_journal_master() {
    local journal="$QKD_INTEROP_SCEN_DIR/journal.json" master
    kme_admin journal >"$journal" || fail "could not read the KME journal"
    master=$(python3 -c 'import json,sys; print(next((e["master"] for e in json.load(open(sys.argv[1])) if e["key_ID"] == sys.argv[2]), ""))' "$journal" "$1")
    [ "$master" = "$2" ] || fail "KME journal: master of $1 is '$master', expected '$2'"
    note "KME journal: $1 was requested by master $2"
}

# expect_sa_uses_qkd GW: swanctl --list-sas shows the QKD method.
expect_sa_uses_qkd() {
    list_sas "$1" | grep -q 'QKD' || { list_sas "$1" >&2; fail "$1: --list-sas does not show QKD"; }
}

# qkd_rekey child|ike GW LABEL: rekey from GW and check its QKD round. GW is the ETSI master
# of a key ID not used before in this scenario (the KME journal agrees on the master), and
# the key's bytes begin the secret both gateways logged under LABEL (needs LOG_IKE/CHD=4).
# Sets QKD_KEY_ID; every key ID of the scenario accumulates in QKD_KEY_IDS.
QKD_KEY_IDS=()
qkd_rekey() {
    local kind=$1 gw=$2 label=$3 seen
    log_mark
    "rekey_$kind" "$gw"
    QKD_KEY_ID=$(expect_qkd_round "$gw")
    for seen in "${QKD_KEY_IDS[@]}"; do
        [ "$seen" != "$QKD_KEY_ID" ] || fail "the $kind rekey from $gw reused key ID $seen"
    done
    QKD_KEY_IDS+=("$QKD_KEY_ID")
    step "$kind rekey from $gw (ETSI master): fresh key ID $QKD_KEY_ID"
    expect_journal_master "$QKD_KEY_ID" "$(gw_var "$(side_of "$gw")" QKD_SAE_ID)"
    expect_secret_prefix "$QKD_KEY_ID" "$label"
}
