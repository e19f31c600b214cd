# desc: kem = mlkem768 on strongSwan 6.0.1 (Debian trixie, no ML-KEM provider): charon starts, the plugin says why it does not load the qkd method, and no tunnel comes up with qkd
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
use_recommended_proposals
EXTRA_QKD="kem = mlkem768"
kme_up
gateways_up
# Logged while charon loads its plugins, before any mark.
for gw in gw-a gw-b; do
    expect_charon_alive "$gw"
    log_of "$gw" | grep -qE "qkd: not loading the qkd method: charon.plugins.qkd.kem = mlkem768, but strongSwan offers no key exchange method mlkem768 \(36\)" \
        || fail "$gw: no line saying why the qkd method is not loaded"
    ! log_of "$gw" | grep -E "loaded plugins: .* qkd( |$)" >/dev/null || fail "$gw: the qkd plugin stayed loaded without its method"
done
step "both gateways: $(log_of gw-a | grep -m 1 'not loading the qkd method' | sed -E 's/.*(qkd: not loading)/\1/')"
if try_initiate gw-a 10; then fail "a qkd tunnel came up without the qkd method"; fi
expect_no_log gw-a "qkd: master for SAE"
step "no qkd tunnel, no KME request"
