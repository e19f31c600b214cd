//! Reading a request: method, path, query and JSON body.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::json;

use super::error::{bad_request, EtsiError};
use crate::link::Endpoint;

/// Largest request body accepted: room for far more key IDs than any max_key_per_request.
const MAX_BODY_BYTES: usize = 1 << 20;

pub(super) fn method_allowed(endpoint: Endpoint, method: &Method) -> Result<(), EtsiError> {
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
pub(super) fn parse_path(path: &str) -> Result<(Endpoint, String), EtsiError> {
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

pub(super) fn query_pairs(request: &Request<Incoming>) -> Vec<(String, String)> {
    let query = request.uri().query().unwrap_or("");
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

pub(super) fn parse_query_number(name: &str, value: &str) -> Result<u64, EtsiError> {
    value.parse().map_err(|_| EtsiError::Invalid {
        message: format!("{name} must be a non-negative integer"),
        details: vec![json!({name: value})],
        location: "query",
    })
}

pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
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
