# desc: RFC 8784 PPK from the KME: a stock strongSwan (gw-a, plugin not loaded, plain x25519) holding a QKD key as its static PPK initiates; gw-b's plugin fetches that key by its ID (the PPK_ID) with dec_keys; PPK in use on both, ping; the same key ID again: refused, no SA; a key ID the KME never issued: refused, no SA. On 6.0.1 (trixie), then 6.1.0 (forky) on both gateways
# suites: forky
# gw-a plays a gateway without our plugin: the harness fetches a key for gw-a's SAE ID from
# KME-A (enc_keys, slave sae-b), as a vendor's QKD client or an operator would, and loads it
# into gw-a as `secrets { ppk-qkd { id = <key ID> } }` with `ppk_id = <key ID>`. gw-b has no
# PPK secret at all: `peers.tunnel.ppk = yes` makes its plugin answer the PPK lookup.
require_plugin
require_kme_sim
A_QKD_LOAD=no
B_QKD_BUFFER=0
B_EXTRA_CONN='        ppk_required = yes'
B_EXTRA_QKD='    peers {
        tunnel {
            ppk = yes
        }
    }'

# use_ppk_on_gw_a NAME KEY_ID HEX: KEY_ID as gw-a's ppk_id (ppk_required) and HEX as its PPK
# secret NAME, appended to its rendered swanctl.conf (strongSwan merges repeated sections,
# the last ppk_id wins), then loaded with swanctl.
use_ppk_on_gw_a() {
    local name=$1 key_id=$2 hex=$3 out="$QKD_INTEROP_SCEN_DIR/gw-a/load-$1.out"
    cat >>"$QKD_INTEROP_SCEN_DIR/gw-a/swanctl.conf" <<EOF
connections {
    $CONN_NAME {
        ppk_id = $key_id
        ppk_required = yes
    }
}
secrets {
    $name {
        secret = 0x$hex
        id = $key_id
    }
}
EOF
    swanctl_in gw-a --load-all >"$out" 2>&1 \
        || { cat "$out" >&2; fail "swanctl --load-all with the PPK $name failed on gw-a"; }
    grep -q "loaded ppk secret '$name'" "$out" || { cat "$out" >&2; fail "gw-a did not load the PPK $name"; }
}
# A key for gw-a's SAE ID from KME-A (enc_keys), as gw-a's PPK. Prints the key ID.
load_ppk_into_gw_a() {
    local enc key_id hex
    enc=$(etsi_in gw-a sae-b/enc_keys '{"number": 1, "size": 256}') || fail "gw-a: enc_keys failed: $enc"
    key_id=$(json_get keys 0 key_ID <<<"$enc")
    hex=$(json_get keys 0 key <<<"$enc" | python3 -c 'import base64, sys; print(base64.b64decode(sys.stdin.read()).hex())')
    [ ${#hex} -eq 64 ] || fail "KME-A's key $key_id is not 256 bits"
    use_ppk_on_gw_a ppk-qkd "$key_id" "$hex"
    printf '%s\n' "$key_id"
}
# A PPK_ID that looks like a key ID but that no KME issued (a random UUID, a random secret),
# as gw-a's PPK. Prints the key ID.
load_unknown_ppk_into_gw_a() {
    local key_id
    key_id=$(python3 -c 'import uuid; print(uuid.uuid4())')
    use_ppk_on_gw_a ppk-unknown "$key_id" "$(python3 -c 'import os; print(os.urandom(32).hex())')"
    printf '%s\n' "$key_id"
}
no_ike_sa() { [ -z "$(ike_ids gw-a)$(ike_ids gw-b)" ]; }

# ppk_round VERSION: on gateways running strongSwan VERSION, a tunnel with a fresh KME key
# as the PPK, then the same key ID again.
ppk_round() {
    local version=$1 key_id audit gw
    gateways_up
    for gw in gw-a gw-b; do
        grep -q "strongSwan $version" "$(log_file "$gw")" || fail "$gw does not run strongSwan $version"
    done
    log_of gw-a | grep -E 'loaded plugins:.* qkd( |$)' && fail "gw-a loaded the qkd plugin; it must run stock strongSwan here"
    grep -q 'aes256gcm16-prfsha384-x25519$' "$QKD_INTEROP_SCEN_DIR/gw-a/swanctl.conf" \
        || fail "gw-a's proposals are not plain x25519"
    step "strongSwan $version on both; gw-a stock (plugin not loaded), proposals $IKE_PROPOSALS"
    key_id=$(load_ppk_into_gw_a)
    step "gw-a: enc_keys at KME-A for sae-b gave key $key_id; loaded as its PPK (ppk_id = $key_id, ppk_required = yes)"

    log_mark
    initiate gw-a
    expect_tunnel_up
    expect_log gw-a "using PPK for PPK_ID '$key_id'"
    expect_log gw-b "qkd: PPK for PPK_ID '$key_id' \(connection 'tunnel', SAE 'sae-a'\): 256 bits from KME https://192.0.2.30:8444"
    expect_log gw-b "using PPK for PPK_ID '$key_id'"
    audit=$(log_grep gw-b "qkd-audit: .*exchange=ppk") || fail "gw-b logged no qkd-audit line for the PPK"
    grep -Eq "ike_sa=tunnel\[[0-9]+\] exchange=ppk role=responder peer_sae=sae-a key_ids=$key_id kme=https://192.0.2.30:8444 result=ppk$" <<<"$audit" \
        || fail "unexpected audit line: $audit"
    note "gw-b: ${audit#*qkd-audit: }"
    step "PPK in use on both sides for key $key_id (gw-b fetched it with dec_keys, master sae-a)"
    ping_through gw-a
    ping_through gw-b

    # A second IKE SA with the same (used) key ID: a key keys one IKE SA, never another.
    swanctl_in gw-a --terminate --ike "$CONN_NAME" --timeout 10 >/dev/null 2>&1 || true
    wait_until 15 no_ike_sa || fail "the first IKE SA did not go away"
    log_mark
    try_initiate gw-a 20 && fail "a second IKE SA came up with the used key ID $key_id"
    no_ike_sa || fail "an IKE SA is up after the refusal"
    expect_log gw-b "qkd: no PPK for PPK_ID '$key_id' \(connection 'tunnel', SAE 'sae-a'\): key ID $key_id already keyed an earlier exchange here"
    expect_log gw-b "qkd-audit: ike_sa=tunnel\[[0-9]+\] exchange=ppk role=responder peer_sae=sae-a key_ids=$key_id .* result=failed:key-used"
    expect_log gw-b "PPK required but no PPK found for '$key_id'"
    step "second IKE SA with key $key_id: refused by gw-b (key used), no IKE SA on either side"

    # A key ID no KME issued: gw-b's KME refuses it, gw-b refuses the IKE SA.
    key_id=$(load_unknown_ppk_into_gw_a)
    log_mark
    try_initiate gw-a 20 && fail "an IKE SA came up with the unknown key ID $key_id"
    no_ike_sa || fail "an IKE SA is up after the refusal of an unknown key ID"
    expect_log gw-b "qkd: no PPK for PPK_ID '$key_id' \(connection 'tunnel', SAE 'sae-a'\): .*KME https://192.0.2.30:8444"
    expect_log gw-b "qkd-audit: ike_sa=tunnel\[[0-9]+\] exchange=ppk role=responder peer_sae=sae-a key_ids=$key_id .* result=failed:kme-(refused|no-key)"
    expect_log gw-b "PPK required but no PPK found for '$key_id'"
    note "gw-b: $(log_grep gw-b "qkd: no PPK for PPK_ID '$key_id'" | sed 's/.*qkd: //')"
    step "IKE SA with key ID $key_id, which no KME issued: refused by gw-b (its KME does not know it), no IKE SA"
    expect_charon_alive gw-a
    expect_charon_alive gw-b
}

kme_up
ppk_round 6.0.1
A_GW_SUITE=forky
B_GW_SUITE=forky
ppk_round 6.1.0
