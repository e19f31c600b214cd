//! The JSON bodies of the API: what the KME reads and what it answers.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::keystore::DeliveredKey;

#[derive(Serialize)]
pub(super) struct ErrorBody {
    pub(super) message: String,
    pub(super) details: Vec<Value>,
}

#[derive(Serialize)]
pub(super) struct Status<'a> {
    #[serde(rename = "source_KME_ID")]
    pub(super) source_kme_id: &'a str,
    #[serde(rename = "target_KME_ID")]
    pub(super) target_kme_id: &'a str,
    #[serde(rename = "master_SAE_ID")]
    pub(super) master_sae_id: &'a str,
    #[serde(rename = "slave_SAE_ID")]
    pub(super) slave_sae_id: &'a str,
    pub(super) key_size: u32,
    pub(super) stored_key_count: usize,
    pub(super) max_key_count: usize,
    pub(super) max_key_per_request: usize,
    pub(super) max_key_size: u32,
    pub(super) min_key_size: u32,
    /// The simulator serves no multicast keys (additional slave SAEs).
    #[serde(rename = "max_SAE_ID_count")]
    pub(super) max_sae_id_count: u32,
}

/// The body of a POST enc_keys. Fields the simulator does not use are ignored, as the spec
/// allows for `extension_optional`.
#[derive(Deserialize, Default)]
pub(super) struct KeyRequest {
    pub(super) number: Option<u64>,
    pub(super) size: Option<u64>,
    #[serde(rename = "additional_slave_SAE_IDs", default)]
    pub(super) additional_slave_sae_ids: Vec<String>,
    #[serde(default)]
    pub(super) extension_mandatory: Vec<Value>,
}

/// The body of a POST dec_keys.
#[derive(Deserialize)]
pub(super) struct KeyIdsRequest {
    #[serde(rename = "key_IDs")]
    pub(super) key_ids: Vec<KeyIdEntry>,
}

#[derive(Deserialize)]
pub(super) struct KeyIdEntry {
    #[serde(rename = "key_ID")]
    pub(super) key_id: String,
}

#[derive(Serialize)]
pub(super) struct KeyContainer {
    keys: Vec<KeyEntry>,
}

#[derive(Serialize)]
struct KeyEntry {
    #[serde(rename = "key_ID")]
    key_id: String,
    key: Zeroizing<String>,
}

pub(super) fn key_container(keys: Vec<DeliveredKey>) -> KeyContainer {
    let engine = &base64::engine::general_purpose::STANDARD;
    KeyContainer {
        keys: keys
            .into_iter()
            .map(|k| KeyEntry {
                key_id: k.id.to_string(),
                key: Zeroizing::new(engine.encode(&k.key)),
            })
            .collect(),
    }
}
