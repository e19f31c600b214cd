# shellcheck shell=bash disable=SC2034 # variables feed conf/*.tmpl via helpers.sh
# Sourced by the benches that drive both charons over vici from one host process: each
# charon's vici socket is moved into its log directory, which is bind-mounted to the host,
# and strongSwan's `vici` Python package talks to it. Nothing timed goes through swanctl or
# docker exec.

VICI_SOCK=/var/log/strongswan/charon.vici

# vici_bench_config [CHARON_LINES]: charon settings (the lines given first, then the vici
# socket), swanctl finding the moved socket too, strongSwan's default log levels (1: the
# benches measure exchanges, not logging; QKD_BENCH_LOG_IKE=2 adds the plugin's debug lines).
vici_bench_config() {
    EXTRA_CHARON="${1:-}    plugins {
        vici {
            socket = unix://$VICI_SOCK
        }
    }"
    EXTRA_STRONGSWAN="swanctl {
    socket = unix://$VICI_SOCK
}"
    LOG_IKE=${QKD_BENCH_LOG_IKE:-1}
    LOG_CHD=1
    LOG_CFG=1
}

# require_vici_python: strongSwan's vici package for python3, installed if missing.
require_vici_python() {
    python3 -c 'import vici' 2>/dev/null || pip install --quiet vici >/dev/null 2>&1 \
        || python3 -m pip install --quiet vici >/dev/null 2>&1 || skip "python3 vici package missing and pip install vici failed"
    python3 -c 'import vici' 2>/dev/null || skip "python3 vici package not importable"
}

# export_vici_env: what the Python drivers read: both vici sockets on the host, the KME's
# container, each side's addresses, identities and inside networks.
export_vici_env() {
    local side v
    export A_VICI="$QKD_INTEROP_SCEN_DIR/gw-a/log/charon.vici" B_VICI="$QKD_INTEROP_SCEN_DIR/gw-b/log/charon.vici"
    export KME_CONTAINER
    KME_CONTAINER=$(container_of kme)
    for side in A B; do
        for v in LOCAL_ADDR REMOTE_ADDR LOCAL_ID REMOTE_ID; do
            export "${side}_$v=$(gw_var "$side" "$v")"
        done
        export "${side}_LOCAL_TS=$(gw_var "$side" LOCAL_INSIDE)" "${side}_REMOTE_TS=$(gw_var "$side" REMOTE_INSIDE)"
    done
}

# expect_vici_sockets: both charons' vici sockets are where the drivers look (after gateways_up).
expect_vici_sockets() {
    local gw
    for gw in gw-a gw-b; do
        [ -S "$QKD_INTEROP_SCEN_DIR/$gw/log/charon.vici" ] || fail "$gw: no vici socket at log/charon.vici"
    done
}
