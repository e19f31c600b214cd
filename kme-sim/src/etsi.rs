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

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Buf;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::config::KmeConfig;
use crate::deviations::{
    is_integer_sae_id, DecKeysPolicy, Deviations, ErrorBodyStyle, NoKeyAnswer, SizeHandling,
};
use crate::keystore::{random_secret, DeliveredKey, KeyStoreError};
use crate::link::{Endpoint, Link};

/// Largest request body accepted: room for far more key IDs than any max_key_per_request.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Pace of the drip fault: slow enough that a client's per-read timeout never fires while its
/// whole request takes minutes.
pub const DRIP_INTERVAL: Duration = Duration::from_millis(500);

/// A request that the KME answers with an ETSI error.
#[derive(Debug, thiserror::Error)]
pub enum EtsiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        details: Vec<Value>,
    },
    #[error("unauthorized: {reason}")]
    Unauthorized { reason: String },
    /// A request that does not parse (FastAPI answers these 422).
    #[error("{message}")]
    Invalid {
        message: String,
        details: Vec<Value>,
        /// Where the fault is, as FastAPI's `loc`: `body` or `query`.
        location: &'static str,
    },
    #[error("{message}")]
    Unavailable {
        message: String,
        details: Vec<Value>,
    },
    #[error("not enough keys available on KME: {needed} stored keys needed, {stored} stored")]
    NoKeyAvailable { needed: usize, stored: usize },
    #[error("one or more keys specified are not found on KME")]
    KeysNotFound { missing: Vec<String> },
    /// The integer-SAE-ID deviation refuses a name in the path.
    #[error("SAE ID {sae:?} in the path is not an integer")]
    SaeIdNotInteger { sae: String },
    /// The integer-SAE-ID deviation fails on a number it does not know.
    #[error("unknown SAE ID {sae:?} (internal server error)")]
    UnknownSae { sae: String },
    #[error("no such endpoint")]
    NoSuchEndpoint,
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
}

fn bad_request(message: impl Into<String>, detail: Value) -> EtsiError {
    EtsiError::BadRequest {
        message: message.into(),
        details: vec![detail],
    }
}

impl From<KeyStoreError> for EtsiError {
    fn from(err: KeyStoreError) -> Self {
        match err {
            KeyStoreError::NotFound { missing } => EtsiError::KeysNotFound { missing },
            KeyStoreError::WrongSlave { .. } => EtsiError::Unauthorized {
                reason: "the keys were requested for another slave SAE".into(),
            },
            KeyStoreError::Exhausted { needed, stored } => {
                EtsiError::NoKeyAvailable { needed, stored }
            }
            KeyStoreError::Random(err) => EtsiError::Unavailable {
                message: "key generation failed".into(),
                details: vec![json!({"reason": err.to_string()})],
            },
        }
    }
}

/// An error as the KME answers it: status, message and details, before they are shaped into a
/// body.
struct ErrorAnswer {
    status: StatusCode,
    message: String,
    details: Vec<Value>,
}

impl ErrorAnswer {
    fn new(status: StatusCode, message: impl Into<String>, details: Vec<Value>) -> ErrorAnswer {
        ErrorAnswer {
            status,
            message: message.into(),
            details,
        }
    }
}

impl EtsiError {
    fn answer(self, deviations: &Deviations) -> ErrorAnswer {
        match self {
            EtsiError::BadRequest { message, details }
            | EtsiError::Invalid {
                message, details, ..
            } => ErrorAnswer::new(StatusCode::BAD_REQUEST, message, details),
            EtsiError::Unauthorized { reason } => ErrorAnswer::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                vec![json!({"reason": reason})],
            ),
            EtsiError::Unavailable { message, details } => {
                ErrorAnswer::new(StatusCode::SERVICE_UNAVAILABLE, message, details)
            }
            EtsiError::NoKeyAvailable { needed, stored } => {
                let (status, message) = match deviations.no_key_answer {
                    NoKeyAnswer::Unavailable503 => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not enough keys available on KME",
                    ),
                    NoKeyAnswer::NotFound404 => (StatusCode::NOT_FOUND, "Element not found"),
                    NoKeyAnswer::TryAgain400 => (
                        StatusCode::BAD_REQUEST,
                        "Not enough keys available. Try again later.",
                    ),
                };
                let details = vec![json!({"keys_needed": needed, "stored_key_count": stored})];
                ErrorAnswer::new(status, message, details)
            }
            EtsiError::KeysNotFound { missing } => {
                let details = vec![json!({"key_IDs_not_found": missing})];
                match deviations.dec_keys {
                    DecKeysPolicy::OnceThen401 => {
                        ErrorAnswer::new(StatusCode::UNAUTHORIZED, "unauthorized", details)
                    }
                    DecKeysPolicy::Once | DecKeysPolicy::Repeatable => ErrorAnswer::new(
                        StatusCode::BAD_REQUEST,
                        "one or more keys specified are not found on KME",
                        details,
                    ),
                }
            }
            // Answered as bare text, so there is nothing to detail.
            EtsiError::SaeIdNotInteger { .. } => {
                ErrorAnswer::new(StatusCode::BAD_REQUEST, "Bad request", Vec::new())
            }
            EtsiError::UnknownSae { sae } => ErrorAnswer::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                vec![json!({"SAE_ID": sae})],
            ),
            EtsiError::NoSuchEndpoint => ErrorAnswer::new(
                StatusCode::NOT_FOUND,
                "no such endpoint",
                vec![json!({"endpoints": "/api/v1/keys/{SAE_ID}/status|enc_keys|dec_keys"})],
            ),
            EtsiError::MethodNotAllowed { allow } => ErrorAnswer::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                vec![json!({"allowed_methods": allow})],
            ),
        }
    }

    fn into_response(self, deviations: &Deviations) -> Response<EtsiBody> {
        let allow = match &self {
            EtsiError::MethodNotAllowed { allow } => Some(*allow),
            _ => None,
        };
        let bare = matches!(self, EtsiError::SaeIdNotInteger { .. });
        let location = match &self {
            EtsiError::Invalid { location, .. } => Some(*location),
            _ => None,
        };
        let answer = self.answer(deviations);
        let html_page = deviations.html_errors
            && matches!(
                answer.status,
                StatusCode::UNAUTHORIZED | StatusCode::INTERNAL_SERVER_ERROR
            );
        let mut response = if bare {
            text_response(answer.status, "text/plain", answer.message)
        } else if html_page {
            text_response(
                answer.status,
                "text/html; charset=utf-8",
                html_error_page(answer.status),
            )
        } else {
            match (deviations.error_body, location) {
                (ErrorBodyStyle::Spec, _) => json_response(
                    answer.status,
                    &ErrorBody {
                        message: answer.message,
                        details: answer.details,
                    },
                ),
                (ErrorBodyStyle::Detail, Some(location)) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"detail": [{"loc": [location], "msg": answer.message, "type": "value_error"}]}),
                ),
                (ErrorBodyStyle::Detail, None) => {
                    json_response(answer.status, &json!({"detail": answer.message}))
                }
            }
        };
        if let Some(allow) = allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// The generic error page of a web server, as some KMEs answer 401 and 500.
fn html_error_page(status: StatusCode) -> String {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Error");
    format!(
        "<!doctype html>\n<html lang=en>\n<title>{code} {reason}</title>\n<h1>{reason}</h1>\n\
         <p>The server could not complete your request.</p>\n"
    )
}

/// A response body buffer that is wiped once hyper has sent it. (Copies that hyper or
/// rustls make on the way to the socket are beyond our reach.)
pub struct SecretChunk {
    bytes: Zeroizing<Vec<u8>>,
    sent: usize,
}

impl Buf for SecretChunk {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.sent
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[self.sent..]
    }

    fn advance(&mut self, count: usize) {
        assert!(
            count <= self.remaining(),
            "advance past the end of a response body"
        );
        self.sent += count;
    }
}

impl SecretChunk {
    /// Splits off the first byte (the chunk must not be empty).
    fn take_first_byte(&mut self) -> SecretChunk {
        let first = SecretChunk {
            bytes: Zeroizing::new(vec![self.chunk()[0]]),
            sent: 0,
        };
        self.advance(1);
        first
    }
}

/// The body of every ETSI response: sent at once, or one byte per [`DRIP_INTERVAL`] under
/// the drip fault.
pub struct EtsiBody {
    rest: Option<SecretChunk>,
    drip: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl EtsiBody {
    fn new(chunk: SecretChunk) -> EtsiBody {
        EtsiBody {
            rest: (chunk.remaining() > 0).then_some(chunk),
            drip: None,
        }
    }

    fn dripping(self) -> EtsiBody {
        EtsiBody {
            drip: Some(Box::pin(tokio::time::sleep(DRIP_INTERVAL))),
            ..self
        }
    }
}

impl Body for EtsiBody {
    type Data = SecretChunk;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<SecretChunk>, Infallible>>> {
        let this = &mut *self;
        let Some(drip) = this.drip.as_mut() else {
            return Poll::Ready(this.rest.take().map(|chunk| Ok(Frame::data(chunk))));
        };
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        std::task::ready!(drip.as_mut().poll(cx));
        drip.as_mut()
            .reset(tokio::time::Instant::now() + DRIP_INTERVAL);
        let byte = rest.take_first_byte();
        if rest.remaining() == 0 {
            this.rest = None;
        }
        Poll::Ready(Some(Ok(Frame::data(byte))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(
            self.rest
                .as_ref()
                .map_or(0, |chunk| chunk.remaining() as u64),
        )
    }
}

/// Counts the bytes of a serialization, to size a buffer that never reallocates: a
/// reallocation would leave an unwiped copy of key material behind.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<EtsiBody> {
    // Our response types are plain structs of strings and numbers: serializing cannot fail.
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, body).expect("response serializes");
    let mut bytes = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *bytes, body).expect("response serializes");
    response(status, "application/json", bytes)
}

/// A response that carries no key material.
fn text_response(
    status: StatusCode,
    content_type: &'static str,
    text: String,
) -> Response<EtsiBody> {
    response(status, content_type, Zeroizing::new(text.into_bytes()))
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    bytes: Zeroizing<Vec<u8>>,
) -> Response<EtsiBody> {
    let mut response = Response::new(EtsiBody::new(SecretChunk { bytes, sent: 0 }));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Key containers must not linger in any cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Serialize)]
struct ErrorBody {
    message: String,
    details: Vec<Value>,
}

#[derive(Serialize)]
struct Status<'a> {
    #[serde(rename = "source_KME_ID")]
    source_kme_id: &'a str,
    #[serde(rename = "target_KME_ID")]
    target_kme_id: &'a str,
    #[serde(rename = "master_SAE_ID")]
    master_sae_id: &'a str,
    #[serde(rename = "slave_SAE_ID")]
    slave_sae_id: &'a str,
    key_size: u32,
    stored_key_count: usize,
    max_key_count: usize,
    max_key_per_request: usize,
    max_key_size: u32,
    min_key_size: u32,
    /// The simulator serves no multicast keys (additional slave SAEs).
    #[serde(rename = "max_SAE_ID_count")]
    max_sae_id_count: u32,
}

/// The body of a POST enc_keys. Fields the simulator does not use are ignored, as the spec
/// allows for `extension_optional`.
#[derive(Deserialize, Default)]
struct KeyRequest {
    number: Option<u64>,
    size: Option<u64>,
    #[serde(rename = "additional_slave_SAE_IDs", default)]
    additional_slave_sae_ids: Vec<String>,
    #[serde(default)]
    extension_mandatory: Vec<Value>,
}

/// The body of a POST dec_keys.
#[derive(Deserialize)]
struct KeyIdsRequest {
    #[serde(rename = "key_IDs")]
    key_ids: Vec<KeyIdEntry>,
}

#[derive(Deserialize)]
struct KeyIdEntry {
    #[serde(rename = "key_ID")]
    key_id: String,
}

#[derive(Serialize)]
struct KeyContainer {
    keys: Vec<KeyEntry>,
}

#[derive(Serialize)]
struct KeyEntry {
    #[serde(rename = "key_ID")]
    key_id: String,
    key: Zeroizing<String>,
}

/// One KME of the link.
pub struct Kme {
    id: String,
    peer_id: String,
    saes: HashSet<String>,
    peer_saes: HashSet<String>,
    link: Arc<Link>,
}

fn method_allowed(endpoint: Endpoint, method: &Method) -> Result<(), EtsiError> {
    let allow = match endpoint {
        Endpoint::Status => "GET",
        Endpoint::EncKeys | Endpoint::DecKeys => "GET, POST",
    };
    let allowed = *method == Method::GET || (*method == Method::POST && allow != "GET");
    if allowed {
        Ok(())
    } else {
        Err(EtsiError::MethodNotAllowed { allow })
    }
}

/// Splits `/api/v1/keys/{SAE_ID}/{endpoint}` and percent-decodes the SAE ID.
fn parse_path(path: &str) -> Result<(Endpoint, String), EtsiError> {
    let rest = path
        .strip_prefix("/api/v1/keys/")
        .ok_or(EtsiError::NoSuchEndpoint)?;
    let (sae, name) = rest.split_once('/').ok_or(EtsiError::NoSuchEndpoint)?;
    let endpoint = match name {
        "status" => Endpoint::Status,
        "enc_keys" => Endpoint::EncKeys,
        "dec_keys" => Endpoint::DecKeys,
        _ => return Err(EtsiError::NoSuchEndpoint),
    };
    let sae = percent_encoding::percent_decode_str(sae)
        .decode_utf8()
        .map_err(|_| bad_request("SAE ID in the path is not UTF-8", json!({"path": path})))?;
    Ok((endpoint, sae.into_owned()))
}

fn query_pairs(request: &Request<Incoming>) -> Vec<(String, String)> {
    let query = request.uri().query().unwrap_or("");
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn parse_query_number(name: &str, value: &str) -> Result<u64, EtsiError> {
    value.parse().map_err(|_| EtsiError::Invalid {
        message: format!("{name} must be a non-negative integer"),
        details: vec![json!({name: value})],
        location: "query",
    })
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, EtsiError> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|err| {
            bad_request(
                "cannot read request body",
                json!({"reason": err.to_string()}),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|err| EtsiError::Invalid {
        message: "request body is not valid JSON for this request".into(),
        details: vec![json!({"reason": err.to_string()})],
        location: "body",
    })
}

fn key_container(keys: Vec<DeliveredKey>) -> KeyContainer {
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

    fn status(
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

    fn enc_keys(
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

    fn dec_keys(
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
