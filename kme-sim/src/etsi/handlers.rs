//! The three endpoints: status, enc_keys and dec_keys, once the request is routed.

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::body::{json_response, EtsiBody};
use super::error::{bad_request, EtsiError};
use super::json::{key_container, KeyRequest, Status};
use super::Kme;
use crate::deviations::{DecKeysPolicy, Deviations, SizeHandling};
use crate::keystore::random_secret;

impl Kme {
    fn check_slave(&self, slave: &str) -> Result<(), EtsiError> {
        if self.peer_saes.contains(slave) {
            Ok(())
        } else {
            Err(bad_request(
                "unknown slave SAE ID",
                json!({"slave_SAE_ID": slave, "reason": format!("not attached to KME {}", self.peer_id)}),
            ))
        }
    }

    pub(super) fn status(
        &self,
        master: &str,
        slave: &str,
        deviations: &Deviations,
    ) -> Result<Response<EtsiBody>, EtsiError> {
        self.check_slave(slave)?;
        let options = self.link.store.options();
        let stored_key_count = self.link.store.stored_key_count()?;
        let status = Status {
            source_kme_id: &self.id,
            target_kme_id: if deviations.same_kme_ids {
                &self.id
            } else {
                &self.peer_id
            },
            master_sae_id: master,
            slave_sae_id: slave,
            key_size: options.key_size,
            stored_key_count: deviations
                .stored_key_count_cap
                .map_or(stored_key_count, |cap| stored_key_count.min(cap)),
            max_key_count: options.max_key_count,
            max_key_per_request: options.max_key_per_request,
            max_key_size: options.max_key_size,
            min_key_size: options.min_key_size,
            max_sae_id_count: 0,
        };
        if !deviations.status_extensions {
            return Ok(json_response(StatusCode::OK, &status));
        }
        let mut status = serde_json::to_value(&status).expect("status serializes");
        status["status_extension"] = Value::Null;
        status["vendor_link_state"] = json!("up");
        Ok(json_response(StatusCode::OK, &status))
    }

    pub(super) fn enc_keys(
        &self,
        master: &str,
        slave: &str,
        request: KeyRequest,
        deviations: &Deviations,
    ) -> Result<Response<EtsiBody>, EtsiError> {
        self.check_slave(slave)?;
        let options = self.link.store.options();
        if !request.additional_slave_sae_ids.is_empty() {
            return Err(bad_request(
                "additional_slave_SAE_IDs are not supported",
                json!({"max_SAE_ID_count": 0}),
            ));
        }
        if !request.extension_mandatory.is_empty() {
            return Err(bad_request(
                "not all extension_mandatory parameters are supported",
                json!({"extension_mandatory_unsupported": request.extension_mandatory}),
            ));
        }
        let number = request.number.unwrap_or(1);
        if number == 0 || number > options.max_key_per_request as u64 {
            return Err(bad_request(
                "number is out of range",
                json!({"number": number, "max_key_per_request": options.max_key_per_request}),
            ));
        }
        let asked = request.size.unwrap_or(u64::from(options.key_size));
        let size = match deviations.size_handling {
            SizeHandling::Spec if !asked.is_multiple_of(8) => {
                return Err(bad_request(
                    "size shall be a multiple of 8",
                    json!({"size": asked}),
                ));
            }
            SizeHandling::Spec => asked,
            SizeHandling::Ignored => u64::from(options.key_size),
            SizeHandling::FloorToBytes => asked / 8 * 8,
        };
        if size < u64::from(options.min_key_size) || size > u64::from(options.max_key_size) {
            return Err(bad_request(
                "size is out of range",
                json!({"size": size, "min_key_size": options.min_key_size, "max_key_size": options.max_key_size}),
            ));
        }
        // Both bounds were checked above, so the conversions cannot truncate.
        let keys = self
            .link
            .store
            .reserve(master, slave, number as usize, size as u32)?;
        if deviations.replace_unfetched {
            let fresh: Vec<_> = keys.iter().map(|key| key.id).collect();
            let discarded = self.link.store.discard_unfetched(master, slave, &fresh)?;
            if discarded > 0 {
                tracing::info!(kme = %self.id, master, slave, discarded, "keys the slave had not fetched replaced (replace-unfetched deviation)");
            }
        }
        Ok(json_response(StatusCode::OK, &key_container(keys)))
    }

    pub(super) fn dec_keys(
        &self,
        slave: &str,
        master: &str,
        key_ids: Vec<String>,
        deviations: &Deviations,
    ) -> Result<Response<EtsiBody>, EtsiError> {
        let max = self.link.store.options().max_key_per_request;
        if key_ids.is_empty() || key_ids.len() > max {
            return Err(bad_request(
                "number of key_IDs is out of range",
                json!({"key_IDs": key_ids.len(), "max_key_per_request": max}),
            ));
        }
        let store = &self.link.store;
        let mut keys = match deviations.dec_keys {
            DecKeysPolicy::Repeatable => store.retrieve_repeatable(master, slave, &key_ids)?,
            DecKeysPolicy::Once | DecKeysPolicy::OnceThen401 => {
                store.retrieve(master, slave, &key_ids)?
            }
        };
        if self.link.faults.take_mismatch() {
            for key in &mut keys {
                key.key = random_secret(key.key.len())?;
            }
            self.link.counters.mismatched_delivery();
            tracing::warn!(kme = %self.id, sae = slave, "slave handed wrong keys (mismatch-next fault)");
        }
        Ok(json_response(StatusCode::OK, &key_container(keys)))
    }
}
