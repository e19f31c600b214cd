//! The ETSI GS QKD 014 v1.1.1 key delivery API of one KME.
//!
//! * `GET /api/v1/keys/{slave_SAE_ID}/status`
//! * `GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys` (`number`, `size` in bits)
//! * `GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys` (`key_ID` query or `key_IDs` body)
//!
//! The caller is the SAE named by its client certificate's CN and must be attached to this
//! KME; the slave of enc_keys must be attached to the peer KME of the link. Errors are
//! `{"message": ..., "details": [...]}` with 400, 401 or 503, as the spec lays down (404 and
//! 405 for requests outside the API), unless the link's [`Deviations`] say otherwise.
//!
//! This file: [`Kme`], which applies the faults, authorizes the caller and routes a request.
//! `request.rs` reads the request, `handlers.rs` answers the three endpoints with the bodies
//! of `json.rs` in the wiped buffers of `body.rs`, and `error.rs` shapes the errors.

mod body;
mod error;
mod handlers;
mod json;
mod request;

pub use body::{EtsiBody, SecretChunk, DRIP_INTERVAL};
pub use error::EtsiError;

use std::collections::HashSet;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde_json::json;

use crate::config::KmeConfig;
use crate::deviations::{is_integer_sae_id, Deviations};
use crate::link::{Endpoint, Link};
use json::{KeyIdsRequest, KeyRequest};
use request::{method_allowed, parse_path, parse_query_number, query_pairs, read_json};

/// One KME of the link.
pub struct Kme {
    id: String,
    peer_id: String,
    saes: HashSet<String>,
    peer_saes: HashSet<String>,
    link: Arc<Link>,
}

impl Kme {
    /// The KME configured as `own`, whose link peer is `peer`.
    pub fn new(own: &KmeConfig, peer: &KmeConfig, link: Arc<Link>) -> Kme {
        Kme {
            id: own.id.clone(),
            peer_id: peer.id.clone(),
            saes: own.saes.iter().cloned().collect(),
            peer_saes: peer.saes.iter().cloned().collect(),
            link,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Answers one request from the SAE `caller` (the CN of its certificate, if it has one).
    /// `None` means: close the connection without an answer (the `drop` fault).
    pub async fn serve(
        &self,
        caller: Option<&str>,
        request: Request<Incoming>,
    ) -> Option<Response<EtsiBody>> {
        let faults = &self.link.faults;
        if faults.drop_connections() {
            self.link.counters.dropped_request();
            tracing::info!(kme = %self.id, sae = caller.unwrap_or("-"), "request dropped (drop fault)");
            return None;
        }
        if faults.hang() {
            tracing::info!(kme = %self.id, sae = caller.unwrap_or("-"), "request left unanswered (hang fault)");
            return std::future::pending().await;
        }
        // Read once, so that one request sees one consistent set even if `admin profile`
        // changes it meanwhile.
        let deviations = self.link.deviations();
        let delay = faults.latency() + deviations.service_time();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut response = match self.route(caller, request, &deviations).await {
            Ok(response) => {
                tracing::debug!(kme = %self.id, sae = caller.unwrap_or("-"), %method, %path, status = 200);
                response
            }
            Err(err) => {
                let error = err.to_string();
                let response = err.into_response(&deviations);
                tracing::info!(kme = %self.id, sae = caller.unwrap_or("-"), %method, %path, status = response.status().as_u16(), %error);
                response
            }
        };
        self.link.counters.response(response.status().as_u16());
        if faults.drip() {
            response = response.map(EtsiBody::dripping);
        }
        Some(response)
    }

    async fn route(
        &self,
        caller: Option<&str>,
        request: Request<Incoming>,
        deviations: &Deviations,
    ) -> Result<Response<EtsiBody>, EtsiError> {
        let (endpoint, path_sae) = parse_path(request.uri().path())?;
        self.link.counters.request(endpoint);
        method_allowed(endpoint, request.method())?;
        if self.link.faults.fail_503() {
            return Err(EtsiError::Unavailable {
                message: "KME is not available".into(),
                details: vec![json!({"reason": "fail-503 fault injected"})],
            });
        }
        let caller = self.authorize(caller)?;
        if deviations.integer_sae_ids {
            // The path names an SAE of the peer KME in all three endpoints (the slave of
            // status and enc_keys, the master of dec_keys).
            if !is_integer_sae_id(&path_sae) {
                return Err(EtsiError::SaeIdNotInteger { sae: path_sae });
            }
            if !self.peer_saes.contains(&path_sae) {
                return Err(EtsiError::UnknownSae { sae: path_sae });
            }
        }
        match endpoint {
            Endpoint::Status => self.status(caller, &path_sae, deviations),
            Endpoint::EncKeys => {
                let key_request = if request.method() == Method::POST {
                    read_json(request).await?
                } else {
                    let mut key_request = KeyRequest::default();
                    for (name, value) in query_pairs(&request) {
                        match name.as_str() {
                            "number" => {
                                key_request.number = Some(parse_query_number("number", &value)?)
                            }
                            "size" => key_request.size = Some(parse_query_number("size", &value)?),
                            _ => {}
                        }
                    }
                    key_request
                };
                self.enc_keys(caller, &path_sae, key_request, deviations)
            }
            Endpoint::DecKeys => {
                let key_ids = if request.method() == Method::POST {
                    let body: KeyIdsRequest = read_json(request).await?;
                    body.key_ids.into_iter().map(|entry| entry.key_id).collect()
                } else {
                    query_pairs(&request)
                        .into_iter()
                        .filter(|(name, _)| name == "key_ID")
                        .map(|(_, value)| value)
                        .collect()
                };
                self.dec_keys(caller, &path_sae, key_ids, deviations)
            }
        }
    }

    fn authorize<'a>(&self, caller: Option<&'a str>) -> Result<&'a str, EtsiError> {
        match caller {
            Some(sae) if self.saes.contains(sae) => Ok(sae),
            Some(sae) => Err(EtsiError::Unauthorized {
                reason: format!("SAE {sae:?} is not attached to KME {}", self.id),
            }),
            None => Err(EtsiError::Unauthorized {
                reason: "the client certificate has no subject CN (SAE ID)".into(),
            }),
        }
    }
}
