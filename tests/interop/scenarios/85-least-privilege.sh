# desc: no plugin thread has more capabilities than charon's own: after a tunnel and rekeys from both sides (key supply and KME clients busy), every thread of both charons has the CapEff of charon's worker threads
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_recommended_proposals
kme_up
gateways_up
initiate gw-a
rekey_child gw-a
rekey_child gw-b
for gw in gw-a gw-b; do
    # One line per task: "name CapEff".
    # shellcheck disable=SC2016 # expanded by the container's shell
    tasks=$(in_node "$gw" sh -c 'p=$(pidof charon); for t in /proc/$p/task/*; do
        printf "%s %s\n" "$(tr " " _ <"$t/comm")" "$(sed -n "s/^CapEff:\t//p" "$t/status")"; done') \
        || fail "$gw: cannot read charon's tasks"
    printf '%s\n' "$tasks" >"$QKD_INTEROP_SCEN_DIR/$gw/capeff.txt"
    # The first task is charon's main thread (it keeps the container's capabilities to
    # handle signals); every other thread was started after charon dropped its own.
    main=$(head -n 1 <<<"$tasks" | awk '{ print $2 }')
    threads=$(tail -n +2 <<<"$tasks")
    worker=$(awk '$1 == "charon" { print $2 }' <<<"$threads" | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }')
    grep -q '^qkd-supply-[0-9] ' <<<"$threads" || fail "$gw: no qkd-supply-N thread among charon's tasks: $(words "$tasks")"
    odd=$(awk -v w="$worker" '$2 != w' <<<"$threads")
    [ -z "$odd" ] || fail "$gw: threads with other capabilities than charon's workers ($worker): $(words "$odd")"
    step "$gw: all $(wc -l <<<"$threads") threads have the workers' CapEff $worker (main thread: $main), the plugin's ($(awk '$1 != "charon" { printf "%s ", $1 }' <<<"$threads")) included"
done
