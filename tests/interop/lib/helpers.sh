# shellcheck shell=bash
# Helpers for interop scenarios. A scenario is a bash file under scenarios/, run by
# lib/scenario-exec.sh in its own process with `set -Eeuo pipefail`, these helpers and the
# variables of conf/defaults.env. Every helper either succeeds or ends the scenario with
# `fail` (exit 1) / `skip` (exit 77), printing why.
#
# Gateways are named gw-a and gw-b, the simulator kme. Environment from run.sh:
#   QKD_INTEROP_DIR, QKD_INTEROP_RUN_DIR, QKD_INTEROP_SCEN_DIR, QKD_INTEROP_IMAGE,
#   QKD_INTEROP_IMAGES ("suite=image ..." of the node images built for this run),
#   QKD_INTEROP_PROJECT, QKD_INTEROP_PREFIX, QKD_COMPOSE, QKD_INTEROP_HAVE_PLUGIN,
#   QKD_INTEROP_HAVE_SIM, QKD_INTEROP_STRICT, PSK, DOCKER_HOST.

# ---------------------------------------------------------------- reporting -------------
step() { printf '    - %s\n' "$*"; }
note() { printf '      %s\n' "$*"; }
fail() { printf '    FAIL: %s\n' "$*" >&2; exit 1; }
# Skipped scenarios count as failures with --strict (CI must not silently skip).
skip() { printf '    SKIP: %s\n' "$*" >&2; exit 77; }

# ---------------------------------------------------------------- docker plumbing -------
compose() {
    # shellcheck disable=SC2086 # QKD_COMPOSE is "docker compose" or "docker-compose"
    $QKD_COMPOSE -p "$QKD_INTEROP_PROJECT" -f "$QKD_INTEROP_DIR/docker-compose.yml" "$@"
}
container_of() { printf '%s%s' "$QKD_INTEROP_PREFIX" "$1"; }
# Run a command in a node (gw-a, gw-b, kme); bounded so a hang cannot stall the run.
in_node() {
    local node=$1; shift
    timeout "${QKD_EXEC_TIMEOUT:-120}" docker exec "$(container_of "$node")" "$@"
}
swanctl_in() { local gw=$1; shift; in_node "$gw" swanctl "$@"; }
node_running() { [ "$(docker inspect -f '{{.State.Running}}' "$(container_of "$1")" 2>/dev/null)" = true ]; }

# wait_until SECONDS CMD...: poll CMD every 0.5 s until it succeeds; status 1 on timeout.
wait_until() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

side_of() { case "$1" in gw-a) echo A ;; gw-b) echo B ;; *) fail "no gateway named '$1'" ;; esac; }
peer_of() { case "$1" in gw-a) echo gw-b ;; gw-b) echo gw-a ;; *) fail "no gateway named '$1'" ;; esac; }

# Value of a template variable for a gateway side (A/B): ${SIDE}_VAR wins over VAR.
gw_var() {
    local side=$1 name=$2 ov="${1}_${2}"
    if [ -n "${!ov+x}" ]; then printf '%s' "${!ov}"
    elif [ -n "${!name+x}" ]; then printf '%s' "${!name}"
    else fail "template variable $name is not set (conf/defaults.env)"; fi
}
# gw_set GW VAR VALUE: override a template variable for one gateway only.
gw_set() { printf -v "$(side_of "$1")_$2" '%s' "$3"; }

# render SIDE TEMPLATE: substitute ${VAR} from gw_var; unknown variables are an error.
render() {
    local side=$1 tmpl=$2 text name val
    text=$(<"$tmpl")
    while [[ $text =~ \$\{([A-Za-z_][A-Za-z0-9_]*)\} ]]; do
        name=${BASH_REMATCH[1]}
        val=$(gw_var "$side" "$name") || exit 1
        if [ "$name" = QKD_LOAD ] && [ "$val" = auto ]; then
            if [ "${QKD_INTEROP_HAVE_PLUGIN:-0}" = 1 ]; then val=yes; else val=no; fi
        fi
        text=${text//"\${$name}"/$val}
    done
    printf '%s\n' "$text"
}

# ---------------------------------------------------------------- gateways --------------
log_file() { printf '%s/%s/log/charon.log' "$QKD_INTEROP_SCEN_DIR" "$1"; }

# gw_image GW: the node image of GW's GW_SUITE (empty: the main image).
gw_image() {
    local suite entry
    suite=$(gw_var "$(side_of "$1")" GW_SUITE) || exit 1
    if [ -z "$suite" ]; then printf '%s' "$QKD_INTEROP_IMAGE"; return; fi
    for entry in ${QKD_INTEROP_IMAGES:-}; do
        if [ "${entry%%=*}" = "$suite" ]; then printf '%s' "${entry#*=}"; return; fi
    done
    fail "$1: no node image for suite '$suite' in this run (the scenario needs a '# suites: $suite' line)"
}

# gateways_up: (re)create gw-a and gw-b from the current variables: render strongswan.conf,
# qkd.conf and swanctl.conf, start charon, wait for vici, `swanctl --load-all`. Earlier logs
# of the scenario are kept as charon.log.1, .2, ...
gateways_up() {
    local gw side d n qkd_conf
    for gw in gw-a gw-b; do
        side=$(side_of "$gw"); d="$QKD_INTEROP_SCEN_DIR/$gw"
        mkdir -p "$d/log"
        if [ -s "$d/log/charon.log" ]; then
            n=1; while [ -e "$d/log/charon.log.$n" ]; do n=$((n + 1)); done
            mv "$d/log/charon.log" "$d/log/charon.log.$n"
        fi
        : >"$d/log/charon.log"
        render "$side" "$QKD_INTEROP_DIR/conf/strongswan.conf.tmpl" >"$d/strongswan.conf"
        qkd_conf=$(gw_var "$side" QKD_CONF_FILE) || exit 1
        if [ -n "$qkd_conf" ]; then cp "$qkd_conf" "$d/qkd.conf"
        else render "$side" "$QKD_INTEROP_DIR/conf/qkd.conf.tmpl" >"$d/qkd.conf"; fi
        render "$side" "$QKD_INTEROP_DIR/conf/swanctl.conf.tmpl" >"$d/swanctl.conf"
    done
    QKD_INTEROP_GW_A_IMAGE=$(gw_image gw-a) || exit 1
    QKD_INTEROP_GW_B_IMAGE=$(gw_image gw-b) || exit 1
    export QKD_INTEROP_GW_A_IMAGE QKD_INTEROP_GW_B_IMAGE
    compose up -d --no-deps --force-recreate gw-a gw-b >>"$QKD_INTEROP_SCEN_DIR/compose.log" 2>&1 \
        || { tail -n 20 "$QKD_INTEROP_SCEN_DIR/compose.log" >&2; fail "could not start the gateways"; }
    record_ids
    for gw in gw-a gw-b; do
        wait_until 30 charon_ready "$gw" \
            || { docker logs --tail 30 "$(container_of "$gw")" >&2 || true; fail "charon on $gw did not come up"; }
        swanctl_in "$gw" --load-all >"$QKD_INTEROP_SCEN_DIR/$gw/load-all.out" 2>&1 \
            || { cat "$QKD_INTEROP_SCEN_DIR/$gw/load-all.out" >&2; fail "swanctl --load-all failed on $gw"; }
        grep -q 'successfully loaded 1 connections' "$QKD_INTEROP_SCEN_DIR/$gw/load-all.out" \
            || { cat "$QKD_INTEROP_SCEN_DIR/$gw/load-all.out" >&2; fail "$gw did not load the connection"; }
    done
    log_mark
}
charon_ready() { node_running "$1" && swanctl_in "$1" --stats >/dev/null 2>&1; }

# restart_gateways_with VAR=VALUE ...: set variables (A_/B_ prefixes for one side), then
# gateways_up. Example: restart_gateways_with QKD_FALLBACK=dh IKE_PROPOSALS=aes256-sha384-qkd
restart_gateways_with() {
    local kv
    for kv in "$@"; do
        [[ $kv == *=* ]] || fail "restart_gateways_with: '$kv' is not VAR=VALUE"
        printf -v "${kv%%=*}" '%s' "${kv#*=}"
    done
    gateways_up
}

# Charon is alive when its container runs and vici answers.
expect_charon_alive() { charon_ready "$1" || fail "charon on $1 is not running/answering"; }

# ---------------------------------------------------------------- IKE / CHILD SAs -------
# try_initiate [GW] [TIMEOUT]: initiate the tunnel, output in $QKD_INTEROP_SCEN_DIR/GW/initiate.out;
# status 0 only if the IKE and CHILD SA came up. For scenarios that expect a failure.
try_initiate() {
    local gw=${1:-gw-a} t=${2:-30} out
    out="$QKD_INTEROP_SCEN_DIR/$gw/initiate.out"
    swanctl_in "$gw" --initiate --ike "$CONN_NAME" --child "$CHILD_NAME" --timeout "$t" >"$out" 2>&1 \
        && grep -q "initiate completed successfully" "$out"
}
# initiate [GW] [TIMEOUT]: like try_initiate, but failing the scenario if it does not come up.
initiate() {
    local gw=${1:-gw-a}
    try_initiate "$@" || { tail -n 25 "$QKD_INTEROP_SCEN_DIR/$gw/initiate.out" >&2; fail "initiate from $gw failed"; }
    step "tunnel up ($gw initiated)"
}
list_sas() { swanctl_in "$1" --list-sas "${@:2}"; }

# ike_sas GW / child_sas GW: one "ID STATE" line per SA of our connection / child.
ike_sas() {
    list_sas "$1" | awk -v c="$CONN_NAME:" '/^[^ ]/ && $1 == c { id=$2; st=$3; gsub(/[#,]/, "", id); gsub(/,/, "", st); print id, st }'
}
child_sas() {
    list_sas "$1" | awk -v c="$CHILD_NAME:" '/^  [^ ]/ && $1 == c { id=$2; st=$5; gsub(/[#,]/, "", id); gsub(/,/, "", st); print id, st }'
}
ike_ids()   { ike_sas "$1"   | awk '$2 == "ESTABLISHED" { print $1 }'; }
child_ids() { child_sas "$1" | awk '$2 == "INSTALLED" { print $1 }'; }
# Sum of inbound packets over the installed CHILD SAs of GW.
child_in_packets() {
    list_sas "$1" | awk '/^ +in +[0-9a-f]+/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^packets/) n += $i } END { print n + 0 }'
}

# expect_tunnel_up [GW...]: an established IKE SA and an installed CHILD SA on each gateway.
expect_tunnel_up() {
    local gw gws=("$@")
    [ $# -gt 0 ] || gws=(gw-a gw-b)
    for gw in "${gws[@]}"; do
        [ -n "$(ike_ids "$gw")" ] || fail "$gw has no established IKE SA"
        [ -n "$(child_ids "$gw")" ] || fail "$gw has no installed CHILD SA"
    done
}

# ping_through [FROM] [COUNT]: ping the peer's inside address from our inside address. The
# inside addresses are only routed through the tunnel (kernel-libipsec's ipsec0 in table
# 220), so a reply proves the tunnel; the CHILD SA's inbound packet counter must grow too.
ping_through() {
    local from=${1:-gw-a} count=${2:-3} to src dst before after out
    to=$(peer_of "$from")
    src=$(gw_var "$(side_of "$from")" LOCAL_INSIDE); src=${src%/*}
    dst=$(gw_var "$(side_of "$to")" LOCAL_INSIDE); dst=${dst%/*}
    before=$(child_in_packets "$from")
    out="$QKD_INTEROP_SCEN_DIR/$from/ping.out"
    in_node "$from" ping -n -c "$count" -i 0.2 -W 2 -I "$src" "$dst" >"$out" 2>&1 \
        || { cat "$out" >&2; fail "no reply through the tunnel: $from $src -> $dst"; }
    after=$(child_in_packets "$from")
    [ "$after" -gt "$before" ] \
        || fail "ping $src -> $dst answered but the CHILD SA on $from counted no packets ($before -> $after)"
    step "ping $src -> $dst through the tunnel: $(grep -o '[0-9]* received' "$out")"
}

# Rekeys are asynchronous in swanctl: queue them, then poll --list-sas until, on both
# gateways, the SAs that existed before are gone and a new one is up.
_replaced() { # GW KIND OLD_IDS...
    local gw=$1 kind=$2 now id; shift 2
    now=$("${kind}_ids" "$gw") || return 1
    [ -n "$now" ] || return 1
    for id in "$@"; do grep -qx "$id" <<<"$now" && return 1; done
    # A rekey in progress shows the old SA in another state (REKEYING/REKEYED/DELETING).
    now=$("${kind}_sas" "$gw" | awk '{ print $1 }')
    for id in "$@"; do grep -qx "$id" <<<"$now" && return 1; done
    return 0
}
words() { tr '\n' ' ' <<<"$1" | sed 's/ *$//'; }  # id list on one line
_rekey() { # KIND GW SWANCTL_ARGS...
    local kind=$1 gw=$2 peer old_a old_b; shift 2
    peer=$(peer_of "$gw")
    old_a=$("${kind}_ids" "$gw"); old_b=$("${kind}_ids" "$peer")
    [ -n "$old_a" ] && [ -n "$old_b" ] || fail "no $kind SA to rekey on $gw/$peer"
    swanctl_in "$gw" --rekey "$@" >/dev/null || fail "swanctl --rekey $* on $gw failed"
    # shellcheck disable=SC2086 # id lists are words
    wait_until "${QKD_REKEY_TIMEOUT:-30}" _replaced "$gw" "$kind" $old_a \
        || fail "$kind rekey from $gw: $gw still shows the old SA(s) $(words "$old_a") or no new one"
    # shellcheck disable=SC2086
    wait_until 10 _replaced "$peer" "$kind" $old_b \
        || fail "$kind rekey from $gw: $peer still shows the old SA(s) $(words "$old_b") or no new one"
    step "$kind rekey from $gw: $(words "$old_a") -> $(words "$("${kind}_ids" "$gw")") (peer $(words "$old_b") -> $(words "$("${kind}_ids" "$peer")"))"
}
rekey_child() { _rekey child "${1:-gw-a}" --child "$CHILD_NAME"; }
rekey_ike()   { _rekey ike "${1:-gw-a}" --ike "$CONN_NAME"; }

# ---------------------------------------------------------------- logs ------------------
# Log checks look at lines after the gateway's mark (set by gateways_up and log_mark).
declare -A _MARK=()
log_of() { cat "$(log_file "$1")"; }
log_mark() { local gw; for gw in ${*:-gw-a gw-b}; do _MARK[$gw]=$(wc -l <"$(log_file "$gw")"); done; }
log_since_mark() { tail -n "+$(( ${_MARK[$1]:-0} + 1 ))" "$(log_file "$1")"; }
# log_grep GW ERE: matching lines since the mark (status 1 if none).
log_grep() { log_since_mark "$1" | grep -E -- "$2"; }
# expect_log GW ERE [TIMEOUT=10]: wait for a matching line since the mark.
expect_log() {
    local gw=$1 re=$2 t=${3:-10}
    wait_until "$t" _log_has "$gw" "$re" || {
        printf '      last lines of %s:\n' "$gw" >&2; log_since_mark "$gw" | tail -n 15 | sed 's/^/        /' >&2
        fail "$gw: no log line matching /$re/ within ${t}s"
    }
}
_log_has() { log_since_mark "$1" | grep -Eq -- "$2"; }
expect_no_log() {
    local gw=$1 re=$2 hit
    if hit=$(log_grep "$gw" "$re"); then fail "$gw logged what it must not (/$re/): $(head -n 3 <<<"$hit")"; fi
}

# ---------------------------------------------------------------- KME simulator ---------
have_plugin() { [ "${QKD_INTEROP_HAVE_PLUGIN:-0}" = 1 ]; }
have_kme_sim() { [ "${QKD_INTEROP_HAVE_SIM:-0}" = 1 ]; }
require_plugin() { have_plugin || skip "the QKD plugin (libstrongswan_qkd.so) was not built"; }
require_kme_sim() { have_kme_sim || skip "the KME simulator (qkd-kme-sim) was not built"; }

kme_admin() { in_node kme qkd-kme-sim admin --url http://127.0.0.1:8000 "$@"; }
kme_ready() { node_running kme && kme_admin stats >/dev/null 2>&1; }
# kme_up [EXTRA SERVE FLAGS...]: (re)create the simulator, e.g. kme_up --max-key-count 4
kme_up() {
    require_kme_sim
    export QKD_KME_EXTRA_ARGS="$*"
    compose up -d --no-deps --force-recreate kme >>"$QKD_INTEROP_SCEN_DIR/compose.log" 2>&1 \
        || { tail -n 20 "$QKD_INTEROP_SCEN_DIR/compose.log" >&2; fail "could not start the kme container"; }
    record_ids
    wait_until 30 kme_ready || { docker logs --tail 30 "$(container_of kme)" >&2 || true; fail "the KME simulator did not come up"; }
    step "kme up${*:+ ($*)}"
}
kme_stop()  { compose stop -t 2 kme >>"$QKD_INTEROP_SCEN_DIR/compose.log" 2>&1 || fail "could not stop kme"; step "kme stopped"; }
kme_start() {
    local gw
    compose start kme >>"$QKD_INTEROP_SCEN_DIR/compose.log" 2>&1 || fail "could not start kme"
    wait_until 30 kme_ready || fail "the KME simulator did not come back"
    # A gateway that tried its KME while it was down may still be resolving its address (ARP
    # gives up ~3 s after the first try, failing what is queued with "No route to host"):
    # wait until each running gateway reaches its KME again.
    for gw in gw-a gw-b; do
        node_running "$gw" || continue
        wait_until 15 kme_reachable_from "$gw" || fail "$gw does not reach its KME after the restart"
    done
    step "kme started"
}
kme_reachable_from() { etsi_in "$1" "$(gw_var "$(side_of "$1")" QKD_PEER_SAE_ID)/status" >/dev/null 2>&1; }

# etsi_in GW PATH [JSON_BODY]: ETSI GS QKD 014 request from a gateway to its own KME with the
# gateway's SAE certificate (mutual TLS), as the plugin would make it; prints the answer and
# fails (status 22) on HTTP >= 400. PATH is relative to /api/v1/keys/, e.g. sae-b/status.
etsi_in() {
    local gw=$1 path=$2 body=${3:-} side url sae
    side=$(side_of "$gw"); url=$(gw_var "$side" QKD_KME_URL); sae=$(gw_var "$side" QKD_SAE_ID)
    in_node "$gw" curl -sS --fail-with-body --max-time 10 --cacert /etc/qkd/certs/ca.pem \
        --cert "/etc/qkd/certs/$sae.pem" --key "/etc/qkd/certs/$sae.key" \
        ${body:+-H 'Content-Type: application/json' --data "$body"} "$url/api/v1/keys/$path"
}
# json_get KEY|INDEX ...: walk the JSON document on stdin (host python3), print the value
# (JSON for objects/lists, plain text for scalars).
json_get() {
    python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if isinstance(v, str) else json.dumps(v))' "$@"
}

# Remember every container/network id we created, so teardown can remove them by id.
record_ids() {
    { compose ps -q 2>/dev/null || true; } >>"$QKD_INTEROP_RUN_DIR/container-ids"
    docker network ls -q --filter "label=com.docker.compose.project=$QKD_INTEROP_PROJECT" \
        >>"$QKD_INTEROP_RUN_DIR/network-ids" 2>/dev/null || true
}
