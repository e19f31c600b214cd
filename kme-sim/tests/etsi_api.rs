//! The ETSI GS QKD 014 API of both KMEs, exercised over real mutual-TLS connections with
//! reqwest, including every error path and every injected fault.

mod common;

use std::time::{Duration, Instant};

use common::{ca, client, json_of, key_bytes, key_ids, url};
use qkd_kme_sim::{AdminCommand, SimOptions, TestLink};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SAE_A: &str = TestLink::SAE_A;
const SAE_B: &str = TestLink::SAE_B;

fn enc_keys(link: &TestLink, client: &Client, body: Value) -> (StatusCode, Value) {
    json_of(
        client
            .post(url(&link.kme_a_url, SAE_B, "enc_keys"))
            .json(&body)
            .send()
            .unwrap(),
    )
}

fn dec_keys(link: &TestLink, client: &Client, ids: &[&str]) -> (StatusCode, Value) {
    let body = json!({"key_IDs": ids.iter().map(|id| json!({"key_ID": id})).collect::<Vec<_>>()});
    json_of(
        client
            .post(url(&link.kme_b_url, SAE_A, "dec_keys"))
            .json(&body)
            .send()
            .unwrap(),
    )
}

fn assert_error(got: (StatusCode, Value), status: StatusCode, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["message"], message, "{}", got.1);
    assert!(
        got.1["details"].as_array().is_some_and(|d| !d.is_empty()),
        "{}",
        got.1
    );
}

#[test]
fn status_reports_the_link_from_either_side() {
    let link = TestLink::start(SimOptions {
        max_key_count: 50,
        key_rate: 0,
        ..SimOptions::default()
    });
    let (status, body) = json_of(
        client(&link, Some(SAE_A))
            .get(url(&link.kme_a_url, SAE_B, "status"))
            .send()
            .unwrap(),
    );
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
    let (status, body) = json_of(
        client(&link, Some(SAE_B))
            .get(url(&link.kme_b_url, SAE_A, "status"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            body["source_KME_ID"].as_str(),
            body["target_KME_ID"].as_str()
        ),
        (Some("KME-B"), Some("KME-A"))
    );
    assert_eq!(
        (
            body["master_SAE_ID"].as_str(),
            body["slave_SAE_ID"].as_str()
        ),
        (Some(SAE_B), Some(SAE_A))
    );
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
    for (m, s) in sent["keys"]
        .as_array()
        .unwrap()
        .iter()
        .zip(received["keys"].as_array().unwrap())
    {
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

#[test]
fn get_variants_and_defaults() {
    let link = TestLink::start(SimOptions {
        key_size: 128,
        min_key_size: 64,
        ..SimOptions::default()
    });
    let master = client(&link, Some(SAE_A));
    let slave = client(&link, Some(SAE_B));
    // No parameters: one key of key_size bits.
    let (status, sent) = json_of(
        master
            .get(url(&link.kme_a_url, SAE_B, "enc_keys"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert_eq!(sent["keys"].as_array().unwrap().len(), 1);
    assert_eq!(key_bytes(&sent["keys"][0]).len(), 16);
    let (status, two) = json_of(
        master
            .get(url(&link.kme_a_url, SAE_B, "enc_keys?number=2&size=512"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{two}");
    assert_eq!(key_bytes(&two["keys"][1]).len(), 64);
    // An empty POST body object means the defaults too.
    let (status, default_post) = enc_keys(&link, &master, json!({}));
    assert_eq!(status, StatusCode::OK, "{default_post}");
    assert_eq!(key_bytes(&default_post["keys"][0]).len(), 16);

    let id = key_ids(&sent).remove(0);
    let (status, got) = json_of(
        slave
            .get(url(
                &link.kme_b_url,
                SAE_A,
                &format!("dec_keys?key_ID={id}"),
            ))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(key_bytes(&got["keys"][0]), key_bytes(&sent["keys"][0]));
    // Several key_ID parameters, and key IDs in upper case, are accepted.
    let ids = key_ids(&two);
    let query = format!(
        "dec_keys?key_ID={}&key_ID={}",
        ids[0].to_uppercase(),
        ids[1]
    );
    let (status, got) = json_of(
        slave
            .get(url(&link.kme_b_url, SAE_A, &query))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(key_bytes(&got["keys"][1]), key_bytes(&two["keys"][1]));
}

#[test]
fn enc_keys_parameter_errors() {
    let link = TestLink::start(SimOptions {
        max_key_per_request: 4,
        ..SimOptions::default()
    });
    let master = client(&link, Some(SAE_A));
    let bad = StatusCode::BAD_REQUEST;
    assert_error(
        enc_keys(&link, &master, json!({"number": 1, "size": 100})),
        bad,
        "size shall be a multiple of 8",
    );
    assert_error(
        json_of(
            master
                .get(url(&link.kme_a_url, SAE_B, "enc_keys?size=129"))
                .send()
                .unwrap(),
        ),
        bad,
        "size shall be a multiple of 8",
    );
    assert_error(
        enc_keys(&link, &master, json!({"size": 56})),
        bad,
        "size is out of range",
    );
    assert_error(
        enc_keys(&link, &master, json!({"size": 1032})),
        bad,
        "size is out of range",
    );
    assert_error(
        enc_keys(&link, &master, json!({"number": 0})),
        bad,
        "number is out of range",
    );
    assert_error(
        enc_keys(&link, &master, json!({"number": 5})),
        bad,
        "number is out of range",
    );
    assert_error(
        enc_keys(&link, &master, json!({"number": -1})),
        bad,
        "request body is not valid JSON for this request",
    );
    assert_error(
        enc_keys(
            &link,
            &master,
            json!({"extension_mandatory": [{"abc_route_type": "direct"}]}),
        ),
        bad,
        "not all extension_mandatory parameters are supported",
    );
    assert_error(
        enc_keys(
            &link,
            &master,
            json!({"additional_slave_SAE_IDs": [TestLink::SAE_B2]}),
        ),
        bad,
        "additional_slave_SAE_IDs are not supported",
    );
    assert_error(
        json_of(
            master
                .get(url(&link.kme_a_url, SAE_B, "enc_keys?number=two"))
                .send()
                .unwrap(),
        ),
        bad,
        "number must be a non-negative integer",
    );
    let not_json = master
        .post(url(&link.kme_a_url, SAE_B, "enc_keys"))
        .body("{number")
        .send()
        .unwrap();
    assert_error(
        json_of(not_json),
        bad,
        "request body is not valid JSON for this request",
    );
    // Optional extensions may be ignored, and are.
    let (status, body) = enc_keys(
        &link,
        &master,
        json!({"number": 4, "extension_optional": [{"x": 1}]}),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    // None of the refused requests took a key.
    let stats = link.admin(AdminCommand::Stats);
    assert_eq!(stats["keys_delivered_to_master"], 4, "{stats}");
}

#[test]
fn slave_must_be_an_sae_of_the_other_kme() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    let bad = StatusCode::BAD_REQUEST;
    for slave in ["nobody", SAE_A, ""] {
        let (status, body) = json_of(
            master
                .get(url(&link.kme_a_url, slave, "status"))
                .send()
                .unwrap(),
        );
        assert_error((status, body), bad, "unknown slave SAE ID");
        let (status, body) = json_of(
            master
                .post(url(&link.kme_a_url, slave, "enc_keys"))
                .json(&json!({}))
                .send()
                .unwrap(),
        );
        assert_error((status, body), bad, "unknown slave SAE ID");
    }
}

#[test]
fn sae_ids_in_the_path_are_percent_decoded() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    let (status, body) = json_of(
        master
            .get(url(&link.kme_a_url, "sae%2Db", "status"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["slave_SAE_ID"], SAE_B);
}

#[test]
fn dec_keys_errors() {
    let link = TestLink::start(SimOptions {
        max_key_per_request: 2,
        ..SimOptions::default()
    });
    let master = client(&link, Some(SAE_A));
    let slave = client(&link, Some(SAE_B));
    let other_slave = client(&link, Some(TestLink::SAE_B2));
    let (_, sent) = enc_keys(&link, &master, json!({"number": 2}));
    let ids = key_ids(&sent);
    let bad = StatusCode::BAD_REQUEST;
    let not_found = "one or more keys specified are not found on KME";

    let unknown = uuid::Uuid::new_v4().to_string();
    assert_error(dec_keys(&link, &slave, &[&unknown]), bad, not_found);
    assert_error(dec_keys(&link, &slave, &["not-a-key-id"]), bad, not_found);
    // One unknown ID fails the whole request and consumes nothing.
    assert_error(
        dec_keys(&link, &slave, &[&ids[0], &unknown]),
        bad,
        not_found,
    );
    // Right IDs, wrong master SAE in the path.
    let wrong_master = slave
        .post(url(&link.kme_b_url, "someone-else", "dec_keys"))
        .json(&json!({"key_IDs": [{"key_ID": ids[0]}]}))
        .send()
        .unwrap();
    assert_error(json_of(wrong_master), bad, not_found);
    assert_error(
        dec_keys(&link, &slave, &[]),
        bad,
        "number of key_IDs is out of range",
    );
    assert_error(
        dec_keys(&link, &slave, &[&ids[0], &ids[1], &unknown]),
        bad,
        "number of key_IDs is out of range",
    );
    let no_ids = slave
        .get(url(&link.kme_b_url, SAE_A, "dec_keys"))
        .send()
        .unwrap();
    assert_error(json_of(no_ids), bad, "number of key_IDs is out of range");
    let malformed = slave
        .post(url(&link.kme_b_url, SAE_A, "dec_keys"))
        .json(&json!({"key_IDs": "x"}))
        .send()
        .unwrap();
    assert_error(
        json_of(malformed),
        bad,
        "request body is not valid JSON for this request",
    );

    // Another SAE of the slave's KME may not take keys meant for SAE_B.
    assert_error(
        dec_keys(&link, &other_slave, &[&ids[0]]),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // After all those refusals, the slave still gets both keys.
    let (status, got) = dec_keys(&link, &slave, &[&ids[0], &ids[1]]);
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(key_bytes(&got["keys"][0]), key_bytes(&sent["keys"][0]));
}

#[test]
fn saes_must_be_attached_to_the_kme_they_call() {
    let link = TestLink::start(SimOptions::default());
    let stranger = client(&link, Some(TestLink::SAE_UNREGISTERED));
    let sae_a = client(&link, Some(SAE_A));
    let unauthorized = StatusCode::UNAUTHORIZED;
    for (client, base, path_sae) in [
        (&stranger, &link.kme_a_url, SAE_B),
        (&stranger, &link.kme_b_url, SAE_A),
        (&sae_a, &link.kme_b_url, SAE_B),
    ] {
        for endpoint in ["status", "enc_keys"] {
            assert_error(
                json_of(client.get(url(base, path_sae, endpoint)).send().unwrap()),
                unauthorized,
                "unauthorized",
            );
        }
        let dec = client
            .post(url(base, path_sae, "dec_keys"))
            .json(&json!({"key_IDs": [{"key_ID": uuid::Uuid::new_v4()}]}))
            .send()
            .unwrap();
        assert_error(json_of(dec), unauthorized, "unauthorized");
    }
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let link = TestLink::start(SimOptions::default());
    let no_cert = client(&link, None);
    assert!(no_cert
        .get(url(&link.kme_a_url, SAE_B, "status"))
        .send()
        .is_err());

    // A certificate with a registered SAE ID, but signed by a foreign CA.
    let foreign = TestLink::start(SimOptions::default());
    let impostor = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca(&link))
        .identity(reqwest::Identity::from_pem(&foreign.sae_identity_pem(SAE_A)).unwrap())
        .build()
        .unwrap();
    assert!(impostor
        .get(url(&link.kme_a_url, SAE_B, "status"))
        .send()
        .is_err());
    assert!(impostor
        .post(url(&link.kme_a_url, SAE_B, "enc_keys"))
        .json(&json!({}))
        .send()
        .is_err());

    let stats = link.admin(AdminCommand::Stats);
    assert!(
        stats["tls_handshake_failures"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    assert_eq!(stats["keys_delivered_to_master"], 0, "{stats}");
    assert_eq!(stats["requests"]["status"], 0, "{stats}");
}

#[test]
fn plain_http_is_not_served() {
    let link = TestLink::start(SimOptions::default());
    let plain = link.kme_a_url.replace("https://", "http://");
    assert!(Client::new()
        .get(url(&plain, SAE_B, "status"))
        .send()
        .is_err());
}

#[test]
fn unknown_paths_and_methods() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    let (status, body) = json_of(
        master
            .get(format!("{}/api/v1/keys/{SAE_B}/other", link.kme_a_url))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = json_of(master.get(format!("{}/", link.kme_a_url)).send().unwrap());
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let response = master
        .post(url(&link.kme_a_url, SAE_B, "status"))
        .send()
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET");
    assert_eq!(json_of(response).0, StatusCode::METHOD_NOT_ALLOWED);
    let response = master
        .delete(url(&link.kme_a_url, SAE_B, "enc_keys"))
        .send()
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, POST");
    assert_eq!(json_of(response).0, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn a_fast_loop_drains_the_pool_and_gets_503() {
    // 256-bit keys at 2,560 bits/s: 10 keys per second, far slower than the loop.
    let link = TestLink::start(SimOptions {
        max_key_count: 20,
        key_rate: 2_560,
        ..SimOptions::default()
    });
    let master = client(&link, Some(SAE_A));
    let started = Instant::now();
    let mut delivered = 0;
    let refused = loop {
        let (status, body) = enc_keys(&link, &master, json!({"number": 1}));
        if status != StatusCode::OK {
            break (status, body);
        }
        delivered += 1;
        assert!(delivered < 100, "the pool never ran dry");
    };
    assert_error(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "not enough keys available on KME",
    );
    let elapsed = started.elapsed().as_secs_f64();
    // The pool held 20 keys; the link added at most 10 per second meanwhile.
    assert!(
        delivered >= 20 && f64::from(delivered) <= 21.0 + 10.0 * elapsed,
        "{delivered} keys in {elapsed}s"
    );
    let (_, status) = json_of(
        master
            .get(url(&link.kme_a_url, SAE_B, "status"))
            .send()
            .unwrap(),
    );
    assert!(status["stored_key_count"].as_u64().unwrap() < 2, "{status}");

    // Left alone, the link refills at its key rate.
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = enc_keys(&link, &master, json!({"number": 2}));
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[test]
fn pause_resume_and_refill() {
    let link = TestLink::start(SimOptions {
        max_key_count: 5,
        key_rate: 256_000,
        ..SimOptions::default()
    });
    let master = client(&link, Some(SAE_A));
    link.admin(AdminCommand::Pause);
    assert_eq!(
        enc_keys(&link, &master, json!({"number": 5})).0,
        StatusCode::OK
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        enc_keys(&link, &master, json!({"number": 1})).0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        link.admin(AdminCommand::Refill { count: 2 }),
        json!({"added": 2, "stored_key_count": 2})
    );
    assert_eq!(
        enc_keys(&link, &master, json!({"number": 2})).0,
        StatusCode::OK
    );
    link.admin(AdminCommand::Resume);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        enc_keys(&link, &master, json!({"number": 5})).0,
        StatusCode::OK
    );
}

#[test]
fn fail_503_fault() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    let slave = client(&link, Some(SAE_B));
    let (_, sent) = enc_keys(&link, &master, json!({}));
    link.admin(AdminCommand::Fail503 { on: true });
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    assert_error(
        json_of(
            master
                .get(url(&link.kme_a_url, SAE_B, "status"))
                .send()
                .unwrap(),
        ),
        unavailable,
        "KME is not available",
    );
    assert_error(
        enc_keys(&link, &master, json!({})),
        unavailable,
        "KME is not available",
    );
    let id = key_ids(&sent).remove(0);
    assert_error(
        dec_keys(&link, &slave, &[&id]),
        unavailable,
        "KME is not available",
    );
    link.admin(AdminCommand::Fail503 { on: false });
    assert_eq!(dec_keys(&link, &slave, &[&id]).0, StatusCode::OK);
}

#[test]
fn latency_fault() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    link.admin(AdminCommand::Latency { ms: 300 });
    let started = Instant::now();
    assert_eq!(enc_keys(&link, &master, json!({})).0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    link.admin(AdminCommand::Latency { ms: 0 });
    let started = Instant::now();
    assert_eq!(enc_keys(&link, &master, json!({})).0, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[test]
fn mismatch_next_fault_hits_one_dec_keys_only() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    let slave = client(&link, Some(SAE_B));
    let (_, first) = enc_keys(&link, &master, json!({"number": 2}));
    let (_, second) = enc_keys(&link, &master, json!({}));
    link.admin(AdminCommand::MismatchNext);
    let ids = key_ids(&first);
    let (status, wrong) = dec_keys(&link, &slave, &[&ids[0], &ids[1]]);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key_ids(&wrong), ids);
    for i in 0..2 {
        let (m, s) = (key_bytes(&first["keys"][i]), key_bytes(&wrong["keys"][i]));
        assert_eq!(m.len(), s.len());
        assert_ne!(m, s);
    }
    let (status, right) = dec_keys(&link, &slave, &[&key_ids(&second)[0]]);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(key_bytes(&right["keys"][0]), key_bytes(&second["keys"][0]));
    // The journal has what the master got.
    let journal = link.admin(AdminCommand::Journal);
    assert_eq!(journal[0]["key"], first["keys"][0]["key"]);
    assert_eq!(link.admin(AdminCommand::Stats)["mismatched_deliveries"], 1);
}

#[test]
fn drop_fault_closes_connections_unanswered() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    // Open a kept-alive connection first: the fault must hit it too.
    assert_eq!(enc_keys(&link, &master, json!({})).0, StatusCode::OK);
    link.admin(AdminCommand::Drop { on: true });
    assert!(master
        .post(url(&link.kme_a_url, SAE_B, "enc_keys"))
        .json(&json!({}))
        .send()
        .is_err());
    assert!(client(&link, Some(SAE_A))
        .get(url(&link.kme_a_url, SAE_B, "status"))
        .send()
        .is_err());
    link.admin(AdminCommand::Drop { on: false });
    assert_eq!(enc_keys(&link, &master, json!({})).0, StatusCode::OK);
    let stats = link.admin(AdminCommand::Stats);
    assert_eq!(stats["dropped_requests"], 2, "{stats}");
    assert_eq!(stats["keys_delivered_to_master"], 2, "{stats}");
}

#[test]
fn stats_and_journal() {
    let link = TestLink::start(SimOptions {
        max_key_count: 10,
        key_rate: 0,
        ..SimOptions::default()
    });
    let master = client(&link, Some(SAE_A));
    let slave = client(&link, Some(SAE_B));
    let (_, sent) = enc_keys(&link, &master, json!({"number": 2, "size": 128}));
    let ids = key_ids(&sent);
    dec_keys(&link, &slave, &[&ids[0]]);
    enc_keys(&link, &master, json!({"size": 12}));
    master
        .get(url(&link.kme_a_url, SAE_B, "status"))
        .send()
        .unwrap();

    let stats = link.admin(AdminCommand::Stats);
    assert_eq!(stats["stored_key_count"], 8, "{stats}");
    assert_eq!(stats["pending_key_count"], 1, "{stats}");
    assert_eq!(stats["keys_generated"], 10, "{stats}");
    assert_eq!(stats["keys_delivered_to_master"], 2, "{stats}");
    assert_eq!(stats["keys_delivered_to_slave"], 1, "{stats}");
    assert_eq!(
        stats["requests"],
        json!({"status": 1, "enc_keys": 2, "dec_keys": 1}),
        "{stats}"
    );
    assert_eq!(
        stats["responses"],
        json!({"200": 3, "400": 1, "401": 0, "503": 0, "other": 0}),
        "{stats}"
    );
    // Each client kept its one connection alive.
    assert_eq!(stats["tls_connections"], 2, "{stats}");
    assert_eq!(
        stats["faults"],
        json!({"fail_503": false, "drop": false, "latency_ms": 0, "mismatch_next": false, "hang": false, "drip": false}),
        "{stats}"
    );

    let journal = link.admin(AdminCommand::Journal);
    assert_eq!(journal.as_array().unwrap().len(), 2);
    assert_eq!(
        journal[1],
        json!({"key_ID": ids[1], "key": sent["keys"][1]["key"], "master": SAE_A, "slave": SAE_B, "size": 128})
    );
}

#[test]
fn dropping_the_link_stops_it() {
    let link = TestLink::start(SimOptions::default());
    let url_a = url(&link.kme_a_url, SAE_B, "status");
    let identity = link.sae_identity_pem(SAE_A);
    let ca = ca(&link);
    drop(link);
    let client = Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    assert!(client.get(url_a).send().is_err());
}

#[test]
fn a_stopped_listener_refuses_connections_and_the_other_serves_the_same_store() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, Some(SAE_A));
    let addr = |url: &str| url.trim_start_matches("https://").to_owned();
    let primary = addr(&link.kme_a_url);
    let post_enc = |base: &str| {
        master
            .post(url(base, SAE_B, "enc_keys"))
            .json(&json!({}))
            .send()
    };
    // A kept-alive connection to the primary: stopping the listener must cut it as well.
    let (status, keys) = json_of(post_enc(&link.kme_a_url).unwrap());
    assert_eq!(status, StatusCode::OK);
    let stop = |on: bool| {
        link.admin(AdminCommand::Listener {
            addr: primary.parse().unwrap(),
            on,
        })
    };
    assert_eq!(stop(false), json!({"listener": primary, "up": false}));
    // The listener and its connections close in their own tasks: allow them a moment. The
    // kept-alive connection is cut (reset or EOF), then new connections are refused.
    let eventually = |what: &str, done: &dyn Fn() -> bool| {
        let until = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < until, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    eventually("the kept-alive connection is cut", &|| {
        post_enc(&link.kme_a_url).is_err()
    });
    eventually("new connections are refused", &|| {
        client(&link, Some(SAE_A))
            .post(url(&link.kme_a_url, SAE_B, "enc_keys"))
            .json(&json!({}))
            .send()
            .is_err_and(|e| e.is_connect())
    });
    // The standby serves the same key store: the slave fetches keys issued by the primary.
    let (status, _) = json_of(post_enc(&link.kme_a_standby_url).unwrap());
    assert_eq!(status, StatusCode::OK);
    let ids = key_ids(&keys);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        dec_keys(&link, &client(&link, Some(SAE_B)), &ids).0,
        StatusCode::OK
    );

    stop(true);
    eventually("the restarted listener answers", &|| {
        post_enc(&link.kme_a_url).is_ok_and(|a| a.status() == StatusCode::OK)
    });
    let stats = link.admin(AdminCommand::Stats);
    let listeners = stats["listeners"].as_array().unwrap();
    let of = |a: &str| listeners.iter().find(|l| l["addr"] == a).unwrap().clone();
    assert_eq!(of(&primary)["up"], true, "{stats}");
    // The first request, and the one after the restart (requests on the connection being
    // cut may or may not have been read).
    assert!(of(&primary)["requests"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(of(&addr(&link.kme_a_standby_url))["requests"], 1, "{stats}");
    assert_eq!(
        of(&addr(&link.kme_b_url))["kme"],
        TestLink::KME_B_ID,
        "{stats}"
    );
}
