//! Helpers shared by the HTTP-level test files: mTLS clients for the SAEs of a [`TestLink`]
//! and readers for ETSI answers.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use base64::Engine;
use qkd_kme_sim::TestLink;
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::Value;

pub fn ca(link: &TestLink) -> reqwest::Certificate {
    reqwest::Certificate::from_pem(&std::fs::read(link.ca_pem()).unwrap()).unwrap()
}

/// A client presenting `sae`'s certificate (or none), trusting only the link's CA.
pub fn client(link: &TestLink, sae: Option<&str>) -> Client {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca(link))
        .timeout(Duration::from_secs(10));
    if let Some(sae) = sae {
        builder =
            builder.identity(reqwest::Identity::from_pem(&link.sae_identity_pem(sae)).unwrap());
    }
    builder.build().unwrap()
}

pub fn url(base: &str, sae: &str, endpoint: &str) -> String {
    format!("{base}/api/v1/keys/{sae}/{endpoint}")
}

pub fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    (status, response.json().unwrap())
}

pub fn key_ids(container: &Value) -> Vec<String> {
    container["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_ID"].as_str().unwrap().to_owned())
        .collect()
}

pub fn key_bytes(entry: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(entry["key"].as_str().unwrap())
        .unwrap()
}
