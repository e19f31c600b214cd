//! The deviations of the real-KME profile (docs/real-kmes.md), each over real mutual-TLS
//! connections, plus the hang and drip faults that client deadlines are tested against.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{client, json_of, key_bytes, key_ids, url};
use qkd_kme_sim::deviations::{
    DecKeysPolicy, Deviations, ErrorBodyStyle, NoKeyAnswer, Profile, SizeHandling,
};
use qkd_kme_sim::{AdminCommand, SimOptions, TestLink};
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SAE_A: &str = TestLink::SAE_A;
const SAE_B: &str = TestLink::SAE_B;
const INT_A: &str = TestLink::INTEGER_SAE_A;
const INT_B: &str = TestLink::INTEGER_SAE_B;

/// A link with `deviations` and a pool of `max_key_count` keys that only `refill` adds to.
fn link_with(deviations: Deviations, max_key_count: usize) -> TestLink {
    TestLink::start(SimOptions {
        max_key_count,
        key_rate: 0,
        deviations,
        ..SimOptions::default()
    })
}

/// The master SAE `master` (on KME-A) asks for keys for `slave`.
fn enc_keys(link: &TestLink, master: &str, slave: &str, body: Value) -> Response {
    client(link, Some(master))
        .post(url(&link.kme_a_url, slave, "enc_keys"))
        .json(&body)
        .send()
        .unwrap()
}

/// The slave SAE `slave` (on KME-B) fetches the keys `ids` that `master` asked for.
fn dec_keys(link: &TestLink, slave: &str, master: &str, ids: &[String]) -> Response {
    let body = json!({"key_IDs": ids.iter().map(|id| json!({"key_ID": id})).collect::<Vec<_>>()});
    client(link, Some(slave))
        .post(url(&link.kme_b_url, master, "dec_keys"))
        .json(&body)
        .send()
        .unwrap()
}

fn status_of(link: &TestLink, master: &str, slave: &str) -> Response {
    client(link, Some(master))
        .get(url(&link.kme_a_url, slave, "status"))
        .send()
        .unwrap()
}

/// Status code, content type and body text of an answer that need not be JSON.
fn raw(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().unwrap())
}

#[test]
fn integer_sae_ids_refuse_names_with_a_bare_400_and_unknown_numbers_with_500() {
    let link = link_with(
        Deviations {
            integer_sae_ids: true,
            ..Deviations::default()
        },
        10,
    );
    let (status, content_type, body) = raw(status_of(&link, INT_A, SAE_B));
    assert_eq!(
        (status, content_type.as_str(), body.as_str()),
        (StatusCode::BAD_REQUEST, "text/plain", "Bad request")
    );
    let (status, body) = json_of(status_of(&link, INT_A, "9999"));
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        raw(dec_keys(&link, INT_B, "9999", &[])).0,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    let (status, body) = json_of(status_of(&link, INT_A, INT_B));
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, sent) = json_of(enc_keys(&link, INT_A, INT_B, json!({})));
    assert_eq!(status, StatusCode::OK, "{sent}");
    let (status, got) = json_of(dec_keys(&link, INT_B, INT_A, &key_ids(&sent)));
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(key_bytes(&got["keys"][0]), key_bytes(&sent["keys"][0]));
}

#[test]
fn ignored_size_always_delivers_the_default_key_size() {
    let link = link_with(
        Deviations {
            size_handling: SizeHandling::Ignored,
            ..Deviations::default()
        },
        10,
    );
    for size in [512, 100, 64] {
        let (status, sent) = json_of(enc_keys(&link, SAE_A, SAE_B, json!({"size": size})));
        assert_eq!(status, StatusCode::OK, "size {size}: {sent}");
        assert_eq!(key_bytes(&sent["keys"][0]).len(), 32, "size {size}");
    }
}

#[test]
fn floored_size_cuts_a_non_multiple_of_8_to_whole_bytes() {
    let link = link_with(
        Deviations {
            size_handling: SizeHandling::FloorToBytes,
            ..Deviations::default()
        },
        10,
    );
    for (size, bytes) in [(260, 32), (71, 8), (128, 16)] {
        let (status, sent) = json_of(enc_keys(&link, SAE_A, SAE_B, json!({"size": size})));
        assert_eq!(status, StatusCode::OK, "size {size}: {sent}");
        assert_eq!(key_bytes(&sent["keys"][0]).len(), bytes, "size {size}");
    }
    // Floored below min_key_size (64) is still out of range.
    let (status, body) = json_of(enc_keys(&link, SAE_A, SAE_B, json!({"size": 63})));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[test]
fn no_key_left_answers_404_element_not_found_or_400_try_again() {
    for (answer, status, detail) in [
        (
            NoKeyAnswer::NotFound404,
            StatusCode::NOT_FOUND,
            "Element not found",
        ),
        (
            NoKeyAnswer::TryAgain400,
            StatusCode::BAD_REQUEST,
            "Not enough keys available. Try again later.",
        ),
    ] {
        let link = link_with(
            Deviations {
                no_key_answer: answer,
                error_body: ErrorBodyStyle::Detail,
                ..Deviations::default()
            },
            1,
        );
        assert_eq!(
            raw(enc_keys(&link, SAE_A, SAE_B, json!({}))).0,
            StatusCode::OK
        );
        let got = json_of(enc_keys(&link, SAE_A, SAE_B, json!({})));
        assert_eq!(got, (status, json!({"detail": detail})));
    }
}

#[test]
fn detail_error_bodies_and_422_for_requests_that_do_not_parse() {
    let link = link_with(
        Deviations {
            error_body: ErrorBodyStyle::Detail,
            ..Deviations::default()
        },
        10,
    );
    assert_eq!(
        json_of(enc_keys(&link, SAE_A, "nobody", json!({}))),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "unknown slave SAE ID"})
        )
    );
    let (status, body) = json_of(
        client(&link, Some(SAE_A))
            .post(url(&link.kme_a_url, SAE_B, "enc_keys"))
            .header("content-type", "application/json")
            .body("{\"number\": ")
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body"]), "{body}");
    assert!(body["detail"][0]["msg"].is_string(), "{body}");
    let (status, body) = json_of(
        client(&link, Some(SAE_A))
            .get(url(&link.kme_a_url, SAE_B, "enc_keys?number=two"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["query"]), "{body}");
}

#[test]
fn html_pages_for_401_and_500() {
    let link = link_with(
        Deviations {
            html_errors: true,
            integer_sae_ids: true,
            error_body: ErrorBodyStyle::Detail,
            ..Deviations::default()
        },
        10,
    );
    for (response, status, title) in [
        (
            status_of(&link, TestLink::SAE_UNREGISTERED, INT_B),
            StatusCode::UNAUTHORIZED,
            "<title>401 Unauthorized</title>",
        ),
        (
            status_of(&link, INT_A, "9999"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "<title>500 Internal Server Error</title>",
        ),
    ] {
        let (got, content_type, body) = raw(response);
        assert_eq!(got, status, "{body}");
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(body.contains(title), "{body}");
    }
    // Other errors stay JSON.
    let (status, body) = json_of(enc_keys(&link, INT_A, INT_B, json!({"number": 0})));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[test]
fn repeatable_dec_keys_deliver_the_same_key_again_and_again() {
    let link = link_with(
        Deviations {
            dec_keys: DecKeysPolicy::Repeatable,
            ..Deviations::default()
        },
        10,
    );
    let (_, sent) = json_of(enc_keys(&link, SAE_A, SAE_B, json!({})));
    for _ in 0..3 {
        let (status, got) = json_of(dec_keys(&link, SAE_B, SAE_A, &key_ids(&sent)));
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(key_bytes(&got["keys"][0]), key_bytes(&sent["keys"][0]));
    }
}

#[test]
fn once_then_401_refuses_a_second_fetch_and_unknown_ids_with_401() {
    let link = link_with(
        Deviations {
            dec_keys: DecKeysPolicy::OnceThen401,
            ..Deviations::default()
        },
        10,
    );
    let (_, sent) = json_of(enc_keys(&link, SAE_A, SAE_B, json!({})));
    let ids = key_ids(&sent);
    assert_eq!(raw(dec_keys(&link, SAE_B, SAE_A, &ids)).0, StatusCode::OK);
    assert_eq!(
        raw(dec_keys(&link, SAE_B, SAE_A, &ids)).0,
        StatusCode::UNAUTHORIZED
    );
    let unknown = [uuid::Uuid::new_v4().to_string()];
    assert_eq!(
        raw(dec_keys(&link, SAE_B, SAE_A, &unknown)).0,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn status_caps_stored_key_count_names_itself_as_target_and_carries_extensions() {
    let link = link_with(
        Deviations {
            stored_key_count_cap: Some(5),
            same_kme_ids: true,
            status_extensions: true,
            ..Deviations::default()
        },
        50,
    );
    let (status, body) = json_of(status_of(&link, SAE_A, SAE_B));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored_key_count"], 5, "{body}");
    assert_eq!(body["max_key_count"], 50, "{body}");
    assert_eq!(body["source_KME_ID"], TestLink::KME_A_ID, "{body}");
    assert_eq!(body["target_KME_ID"], TestLink::KME_A_ID, "{body}");
    assert_eq!(body.get("status_extension"), Some(&Value::Null), "{body}");
    assert_eq!(body["vendor_link_state"], "up", "{body}");
    // Below the cap the real count shows.
    assert_eq!(
        raw(enc_keys(&link, SAE_A, SAE_B, json!({"number": 47}))).0,
        StatusCode::OK
    );
    assert_eq!(
        json_of(status_of(&link, SAE_A, SAE_B)).1["stored_key_count"],
        3
    );
}

#[test]
fn replace_unfetched_erases_the_keys_the_slave_has_not_fetched() {
    let link = link_with(
        Deviations {
            replace_unfetched: true,
            ..Deviations::default()
        },
        10,
    );
    let (_, first) = json_of(enc_keys(&link, SAE_A, SAE_B, json!({"number": 2})));
    let (_, second) = json_of(enc_keys(&link, SAE_A, SAE_B, json!({})));
    // Keys for another slave are not touched.
    let (_, other) = json_of(enc_keys(&link, SAE_A, TestLink::SAE_B2, json!({})));
    let (_, third) = json_of(enc_keys(&link, SAE_A, SAE_B, json!({})));
    for gone in [&first, &second] {
        let (status, body) = json_of(dec_keys(&link, SAE_B, SAE_A, &key_ids(gone)));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(
        raw(dec_keys(&link, SAE_B, SAE_A, &key_ids(&third))).0,
        StatusCode::OK
    );
    let other_slave = dec_keys(&link, TestLink::SAE_B2, SAE_A, &key_ids(&other));
    assert_eq!(raw(other_slave).0, StatusCode::OK);
}

#[test]
fn service_time_delays_every_answer() {
    let link = link_with(
        Deviations {
            service_time_ms: 150,
            ..Deviations::default()
        },
        10,
    );
    let master = client(&link, Some(SAE_A));
    // The first request also pays for the TLS handshake: time the second.
    assert_eq!(raw(status_of(&link, SAE_A, SAE_B)).0, StatusCode::OK);
    let started = Instant::now();
    let response = master
        .get(url(&link.kme_a_url, SAE_B, "status"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn real_kme_profile_switches_at_runtime_through_admin() {
    let link = link_with(Deviations::default(), 1);
    assert_eq!(raw(status_of(&link, SAE_A, SAE_B)).0, StatusCode::OK);
    let answer = link.admin(AdminCommand::Profile {
        profile: Profile::RealKme,
    });
    assert_eq!(answer["profile"], "real-kme", "{answer}");
    let stats = link.admin(AdminCommand::Stats);
    assert_eq!(
        stats["deviations"],
        serde_json::to_value(Profile::RealKme.deviations()).unwrap()
    );
    assert_eq!(stats["deviations"]["service_time_ms"], 25, "{stats}");
    // Names are refused now, integer SAE IDs work, an empty pool is 404.
    assert_eq!(
        raw(status_of(&link, SAE_A, SAE_B)).0,
        StatusCode::BAD_REQUEST
    );
    let (status, sent) = json_of(enc_keys(&link, INT_A, INT_B, json!({"size": 512})));
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert_eq!(key_bytes(&sent["keys"][0]).len(), 32);
    assert_eq!(
        json_of(enc_keys(&link, INT_A, INT_B, json!({}))),
        (
            StatusCode::NOT_FOUND,
            json!({"detail": "Element not found"})
        )
    );
    link.admin(AdminCommand::Profile {
        profile: Profile::Spec,
    });
    assert_eq!(
        link.admin(AdminCommand::Stats)["deviations"],
        serde_json::to_value(Deviations::default()).unwrap()
    );
    assert_eq!(raw(status_of(&link, SAE_A, SAE_B)).0, StatusCode::OK);
}

/// A client that gives up after `timeout` in all.
fn impatient_client(link: &TestLink, timeout: Duration) -> Client {
    Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(common::ca(link))
        .identity(reqwest::Identity::from_pem(&link.sae_identity_pem(SAE_A)).unwrap())
        .timeout(timeout)
        .build()
        .unwrap()
}

#[test]
fn hang_fault_reads_requests_and_never_answers() {
    let link = link_with(Deviations::default(), 10);
    link.admin(AdminCommand::Hang { on: true });
    let started = Instant::now();
    let err = impatient_client(&link, Duration::from_millis(800))
        .get(url(&link.kme_a_url, SAE_B, "status"))
        .send()
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(800));
    // The TLS handshake completed: the hang is in HTTP, not in TCP or TLS.
    assert_eq!(link.admin(AdminCommand::Stats)["tls_connections"], 1);
    link.admin(AdminCommand::Hang { on: false });
    assert_eq!(raw(status_of(&link, SAE_A, SAE_B)).0, StatusCode::OK);
}

#[test]
fn drip_fault_sends_the_body_one_byte_per_half_second() {
    let link = link_with(Deviations::default(), 10);
    link.admin(AdminCommand::Drip { on: true });
    let mut response = client(&link, Some(SAE_A))
        .get(url(&link.kme_a_url, SAE_B, "status"))
        .send()
        .unwrap();
    // Headers at once, with the whole body announced.
    assert_eq!(response.status(), StatusCode::OK);
    let length = response.content_length().unwrap();
    assert!(length > 100, "{length}");
    let mut byte = [0u8; 16];
    let started = Instant::now();
    for n in 1..=2u32 {
        assert_eq!(response.read(&mut byte).unwrap(), 1);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(450) * n && elapsed < Duration::from_millis(700) * n,
            "byte {n} after {elapsed:?}"
        );
    }
    assert_eq!(byte[0], b'"');
    drop(response);
    link.admin(AdminCommand::Drip { on: false });
    assert_eq!(raw(status_of(&link, SAE_A, SAE_B)).0, StatusCode::OK);
}
