# desc: the shipped files as an operator uses them: strongswan-conf/.../qkd.conf installed unmodified keeps charon running and says which setting is missing; the README's qkd.conf example (step 2), with this network's addresses and files, brings a QKD tunnel up
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
kme_up
shipped="$QKD_REPO_ROOT/strongswan-conf/strongswan.d/charon/qkd.conf"

# 1. Unmodified: every setting is commented out, so the plugin refuses to load, saying why
# (proposals without qkd, so that swanctl can load them).
QKD_CONF_FILE=$shipped
gateways_up
for gw in gw-a gw-b; do
    expect_charon_alive "$gw"
    log_of "$gw" | grep -q "qkd: not loading: charon.plugins.qkd.sae_id: missing" \
        || fail "$gw: no 'sae_id: missing' line with the shipped qkd.conf"
done
step "shipped qkd.conf as is: charon runs, the plugin says 'charon.plugins.qkd.sae_id: missing'"

# 2. The README's example, with only its example values replaced.
example=$(awk '/^2\. Edit `\/etc\/strongswan.d\/charon\/qkd.conf`/ { on = 1 } on && /^   ```$/ { n++; if (n == 2) exit; next } on && n == 1' "$QKD_REPO_ROOT/README.md" | sed 's/^   //')
grep -q '^qkd {' <<<"$example" || fail "no qkd.conf example found in README.md step 2"
for side in A B; do
    me=$(gw_var "$side" QKD_SAE_ID); peer=$(gw_var "$side" QKD_PEER_SAE_ID)
    sed -e "s|^    sae_id = sae-a|    sae_id = $me|" -e "s|^            sae_id = sae-b|            sae_id = $peer|" \
        -e "s|https://kme-a.example:8443|$(gw_var "$side" QKD_KME_URL)|" \
        -e "s|/etc/swanctl/qkd/ca.pem|/etc/qkd/certs/ca.pem|" \
        -e "s|/etc/swanctl/qkd/sae-a.pem|/etc/qkd/certs/$me.pem|" -e "s|/etc/swanctl/qkd/sae-a.key|/etc/qkd/certs/$me.key|" \
        -e "s|gw-b {|$CONN_NAME {|" -e "s|remote = 192.0.2.20|remote = $(gw_var "$side" QKD_PEER_REMOTE)|" \
        <<<"$example" >"$QKD_INTEROP_SCEN_DIR/readme-qkd-$side.conf"
done
use_recommended_proposals
A_QKD_CONF_FILE="$QKD_INTEROP_SCEN_DIR/readme-qkd-A.conf"
B_QKD_CONF_FILE="$QKD_INTEROP_SCEN_DIR/readme-qkd-B.conf"
gateways_up
initiate gw-a
id=$(expect_qkd_round gw-a)
expect_sa_uses_qkd gw-a
ping_through gw-a
step "README's qkd.conf example (comments after values included): tunnel up under QKD key ID $id"
