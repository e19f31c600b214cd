# desc: recommended IKE layout x25519-ke1_qkd on 6.0.1 and 6.1.0: IKE rekeys meet a dry/unreachable/404 KME (qkd in IKE_FOLLOWUP_KE, refused in-band, retried), 0 pings lost; a failed initial exchange leaves no half-open IKE SA
# suites: forky
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
. "$QKD_INTEROP_DIR/lib/dry-scenario.sh"
use_recommended_proposals
kme_up_for_faults
QKD_BUFFER=0
gateways_up
for fault in "${DRY_FAULTS[@]}"; do no_half_open_after_failed_initiate "$fault"; done
survive_dry_kme ike
