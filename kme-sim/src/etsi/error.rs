//! The ETSI errors the KME answers, and how the link's deviations shape them into responses.

use hyper::header::{HeaderValue, ALLOW};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::body::{json_response, text_response, EtsiBody};
use super::json::ErrorBody;
use crate::deviations::{DecKeysPolicy, Deviations, ErrorBodyStyle, NoKeyAnswer};
use crate::keystore::KeyStoreError;

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

pub(super) fn bad_request(message: impl Into<String>, detail: Value) -> EtsiError {
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

    pub(super) fn into_response(self, deviations: &Deviations) -> Response<EtsiBody> {
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
