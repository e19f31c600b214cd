# desc: recommended CHILD layout esp_proposals = aes256gcm16-qkd on 6.0.1 and 6.1.0: PFS CHILD rekeys meet a KME that is dry (503), unreachable, out of keys (404); refused in-band, retried by strongSwan, 0 pings lost, fresh key after recovery
# suites: forky
require_plugin
require_kme_sim
. "$QKD_INTEROP_DIR/lib/qkd.sh"
. "$QKD_INTEROP_DIR/lib/dry.sh"
. "$QKD_INTEROP_DIR/lib/dry-scenario.sh"
# qkd is the CREATE_CHILD_SA's own key exchange (with its in-method x25519: PFS stays).
use_recommended_proposals
kme_up_for_faults
survive_dry_kme child
