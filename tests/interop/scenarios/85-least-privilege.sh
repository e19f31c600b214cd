# desc: no plugin thread has more capabilities than charon's own: after a tunnel, rekeys from both sides (key supply and KME clients busy), CapEff of every task of both charons is the same
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
    main=$(head -n 1 <<<"$tasks" | awk '{ print $2 }')
    grep -q '^qkd-supply ' <<<"$tasks" || fail "$gw: no qkd-supply thread among charon's tasks: $(words "$tasks")"
    odd=$(awk -v m="$main" '$2 != m' <<<"$tasks")
    [ -z "$odd" ] || fail "$gw: tasks with other capabilities than charon's ($main): $(words "$odd")"
    step "$gw: all $(wc -l <<<"$tasks") tasks of charon have CapEff $main, the plugin's ($(awk '$1 ~ /qkd|reqwest|tokio/ { printf "%s ", $1 }' <<<"$tasks")) included"
done
