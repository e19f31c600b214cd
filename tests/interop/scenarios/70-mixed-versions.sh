# desc: one plugin build, strongSwan 6.0.1 (gw-a, trixie) <-> 6.1.0 (gw-b, forky): x25519-ke1_qkd tunnel, PFS CHILD rekey from gw-b (ETSI master), IKE rekey from gw-a
# suites: forky
# The same libstrongswan-qkd.so is in both images: 6.1.0 loads it only because the plugin
# reports the running version in qkd_plugin_version (found in libstrongswan at dlopen).
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_hybrid_proposals
LOG_IKE=4
LOG_CHD=4
B_GW_SUITE=forky
# forky is Debian testing: a newer strongSwan there fails this check on purpose (a new
# release needs its ABI reviewed: docs/strongswan-abi.md, "Supporting a new strongSwan
# release").
A_VERSION=6.0.1
B_VERSION=6.1.0

# Startup lines come before the mark gateways_up sets: look at the whole log.
expect_startup_log() { # GW ERE WHAT
    log_of "$1" | grep -Eq -- "$2" || {
        head -n 25 "$(log_file "$1")" | sed 's/^/        /' >&2
        fail "$1: $3 (no log line matching /$2/)"
    }
}
expect_version_and_plugin() { # GW VERSION
    local gw=$1 version=$2 sae out
    sae=$(gw_var "$(side_of "$gw")" QKD_SAE_ID)
    expect_startup_log "$gw" "Starting IKE charon daemon \(strongSwan ${version//./\\.}," "charon is not strongSwan $version"
    expect_startup_log "$gw" "loaded plugins: (.* )?qkd( |$)" "the qkd plugin is not in the loaded plugins"
    expect_startup_log "$gw" "qkd: SAE '$sae', method [0-9]+ \(QKD\)" "the qkd plugin did not read its configuration"
    expect_no_log_at_all "$gw" "plugin 'qkd'.*(failed|doesn't match|version)"
    # The daemon says the same over vici.
    out=$(swanctl_in "$gw" --version --daemon) || fail "swanctl --version --daemon on $gw failed"
    grep -q "^strongSwan $version charon" <<<"$out" || fail "$gw: vici reports '$out', not strongSwan $version"
    out=$(swanctl_in "$gw" --stats) || fail "swanctl --stats on $gw failed"
    grep -Eq "loaded plugins: (.* )?qkd( |$)" <<<"$out" || { printf '%s\n' "$out" >&2; fail "$gw: vici does not list the qkd plugin"; }
    step "$gw: strongSwan $version, plugin 'qkd' loaded"
}
expect_no_log_at_all() { # GW ERE
    local hit
    if hit=$(log_of "$1" | grep -E -- "$2"); then fail "$1 logged /$2/: $(head -n 3 <<<"$hit")"; fi
}

kme_up
gateways_up
expect_version_and_plugin gw-a "$A_VERSION"
expect_version_and_plugin gw-b "$B_VERSION"

# Initial IKE SA: gw-a (6.0.1) initiates and is the ETSI master of the QKD key.
initiate gw-a
expect_tunnel_up
expect_sa_uses_qkd gw-a
expect_sa_uses_qkd gw-b
id=$(expect_qkd_round gw-a)
expect_journal_master "$id" sae-a
step "initial IKE SA: key ID $id (gw-a $A_VERSION master, gw-b $B_VERSION slave)"
expect_secret_prefix "$id" "key exchange secret"
expect_same_secrets "Sk_d secret"
ping_through gw-a
ping_through gw-b

QKD_KEY_IDS=("$id")
# PFS CHILD rekey started by gw-b: 6.1.0 is the ETSI master.
qkd_rekey child gw-b "additional key exchange secret"
ping_through gw-b
# IKE rekey started by gw-a: 6.0.1 is the ETSI master again.
qkd_rekey ike gw-a "additional key exchange secret"
expect_same_secrets "Sk_d secret"
ping_through gw-a
ping_through gw-b

step "key IDs used: ${QKD_KEY_IDS[*]}"
expect_no_log_at_all gw-a 'qkd: .*(failed|WARNING)'
expect_no_log_at_all gw-b 'qkd: .*(failed|WARNING)'
expect_charon_alive gw-a
expect_charon_alive gw-b
