//! The ETSI GS QKD 014 API of both KMEs, exercised over real mutual-TLS connections with
//! reqwest, including every error path and every injected fault.

use std::time::{Duration, Instant};

use base64::Engine;
use qkd_kme_sim::{AdminCommand, SimOptions, TestLink};
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SAE_A: &str = TestLink::SAE_A;
const SAE_B: &str = TestLink::SAE_B;

fn ca(link: &TestLink) -> reqwest::Certificate {
    reqwest::Certificate::from_pem(&std::fs::read(link.ca_pem()).unwrap()).unwrap()
}

/// A client presenting `sae`'s certificate (or none), trusting only the link's CA.
fn client(link: &TestLink, sae: Option<&str>) -> Client {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca(link))
        .timeout(Duration::from_secs(10));
    if let Some(sae) = sae {
        builder = builder.identity(reqwest::Identity::from_pem(&link.sae_identity_pem(sae)).unwrap());
    }
    builder.build().unwrap()
}

fn url(base: &str, sae: &str, endpoint: &str) -> String {
    format!("{base}/api/v1/keys/{sae}/{endpoint}")
}

fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    assert_eq!(
        response.headers().get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    (status, response.json().unwrap())
}

fn enc_keys(link: &TestLink, client: &Client, body: Value) -> (StatusCode, Value) {
    json_of(client.post(url(&link.kme_a_url, SAE_B, "enc_keys")).json(&body).send().unwrap())
}

fn dec_keys(link: &TestLink, client: &Client, ids: &[&str]) -> (StatusCode, Value) {
    let body = json!({"key_IDs": ids.iter().map(|id| json!({"key_ID": id})).collect::<Vec<_>>()});
    json_of(client.post(url(&link.kme_b_url, SAE_A, "dec_keys")).json(&body).send().unwrap())
}

fn key_ids(container: &Value) -> Vec<String> {
    container["keys"].as_array().unwrap().iter().map(|k| k["key_ID"].as_str().unwrap().to_owned()).collect()
}

fn key_bytes(entry: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(entry["key"].as_str().unwrap()).unwrap()
}

fn assert_error(got: (StatusCode, Value), status: StatusCode, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["message"], message, "{}", got.1);
    assert!(got.1["details"].as_array().is_some_and(|d| !d.is_empty()), "{}", got.1);
}

#[test]
fn status_reports_the_link_from_either_side() {
    let link = TestLink::start(SimOptions { max_key_count: 50, key_rate: 0, ..SimOptions::default() });
    let (status, body) = json_of(client(&link, Some(SAE_A)).get(url(&link.kme_a_url, SAE_B, "status")).send().unwrap());
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "source_KME_ID": "KME-A", "target_KME_ID": "KME-B",
            "master_SAE_ID": SAE_A, "slave_SAE_ID": SAE_B,
            "key_size": 256, "stored_key_count": 50, "max_key_count": 50,
            "max_key_per_request": 128, "max_key_size": 1024, "min_key_size": 64,
            "max_SAE_ID_count": 0
        })
    );
    let (status, body) = json_of(client(&link, Some(SAE_B)).get(url(&link.kme_b_url, SAE_A, "status")).send().unwrap());
    assert_eq!(status, StatusCode::OK);
    assert_eq!((body["source_KME_ID"].as_str(), body["target_KME_ID"].as_str()), (Some("KME-B"), Some("KME-A")));
    assert_eq!((body["master_SAE_ID"].as_str(), body["slave_SAE_ID"].as_str()), (Some(SAE_B), Some(SAE_A)));
}

#[test]
fn master_and_slave_get_the_same_keys_once() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    let slave = client(&link, Some(SAE_B));
    let (status, sent) = enc_keys(&link, &master, json!({"number": 3, "size": 256}));
    assert_eq!(status, StatusCode::OK, "{sent}");
    let ids = key_ids(&sent);
    assert_eq!(ids.len(), 3);
    for id in &ids {
        uuid::Uuid::parse_str(id).unwrap();
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (status, received) = dec_keys(&link, &slave, &id_refs);
    assert_eq!(status, StatusCode::OK, "{received}");
    assert_eq!(key_ids(&received), ids);
    for (m, s) in sent["keys"].as_array().unwrap().iter().zip(received["keys"].as_array().unwrap()) {
        assert_eq!(key_bytes(m).len(), 32);
        assert_eq!(key_bytes(m), key_bytes(s));
    }
    // Delivered once to the slave, then erased.
    assert_error(
        dec_keys(&link, &slave, &id_refs[..1]),
        StatusCode::BAD_REQUEST,
        "one or more keys specified are not found on KME",
    );
}
