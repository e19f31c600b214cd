# desc: proposals = aes256-sha384-qkd (qkd the only IKE key exchange) on 6.0.1 and 6.1.0: IKE rekeys meet a dry/unreachable/404 KME, refused in-band, retried, 0 pings lost; a failed IKE_SA_INIT leaves no half-open IKE SA
# suites: forky
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
. "$QKD_INTEROP_DIR/lib/dry-scenario.sh"
IKE_PROPOSALS=aes256-sha384-qkd
ESP_PROPOSALS=aes256gcm16-qkd
kme_up_for_faults
QKD_BUFFER=0
gateways_up
no_half_open_after_failed_initiate 503
survive_dry_kme ike
