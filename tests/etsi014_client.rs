//! The ETSI GS QKD 014 client against the simulated KME pair (`qkd_kme_sim::TestLink`):
//! real HTTPS with mutual TLS on 127.0.0.1. The tests run on plain test threads, never
//! inside a tokio runtime (reqwest's blocking client must not be used there).

use qkd_kme_sim::{AdminCommand, SimOptions, TestLink};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strongswan_qkd::config::KmeSettings;
use strongswan_qkd::ids::{KeyId, SaeId};
use strongswan_qkd::kme::{Etsi014Client, KeySource, KmeError, QkdKey};

fn sae(id: &str) -> SaeId {
    SaeId::new(id).unwrap()
}

fn settings(link: &TestLink, url: &str, sae: &str, timeout: Duration) -> KmeSettings {
    KmeSettings {
        url: url.to_owned(),
        ca: link.ca_pem().to_str().unwrap().to_owned(),
        cert: link.sae_cert(sae).to_str().unwrap().to_owned(),
        key: link.sae_key(sae).to_str().unwrap().to_owned(),
        timeout,
    }
}

/// The client of `sae`, talking to the KME that serves it.
fn client(link: &TestLink, sae: &str) -> Etsi014Client {
    let url = if sae == TestLink::SAE_A {
        &link.kme_a_url
    } else {
        &link.kme_b_url
    };
    Etsi014Client::new(&settings(link, url, sae, Duration::from_secs(5))).unwrap()
}

fn ids(keys: &[QkdKey]) -> Vec<KeyId> {
    keys.iter().map(|k| k.id).collect()
}

fn materials(keys: &[QkdKey]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.material.to_vec()).collect()
}

fn stat(link: &TestLink, path: &[&str]) -> u64 {
    let stats = link.admin(AdminCommand::Stats);
    path.iter()
        .fold(&stats, |v, p| &v[*p])
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {stats}"))
}

#[test]
fn enc_and_dec_keys_give_both_sides_the_same_material() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, TestLink::SAE_A);
    let slave = client(&link, TestLink::SAE_B);

    let sent = master.enc_keys(&sae(TestLink::SAE_B), 256).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].material.len(), 32);
    let got = slave.dec_keys(&sae(TestLink::SAE_A), &ids(&sent)).unwrap();
    assert_eq!(ids(&got), ids(&sent));
    assert_eq!(materials(&got), materials(&sent));

    // And it is the key the KME recorded for that ID, not something the client made up.
    let journal = link.admin(AdminCommand::Journal);
    let entry = journal
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key_ID"] == sent[0].id.to_string())
        .expect("key in the journal");
    use base64::Engine;
    let recorded = base64::engine::general_purpose::STANDARD
        .decode(entry["key"].as_str().unwrap())
        .unwrap();
    assert_eq!(recorded, sent[0].material.to_vec());
    assert_eq!(
        (entry["master"].as_str(), entry["slave"].as_str()),
        (Some("sae-a"), Some("sae-b"))
    );
}

#[test]
fn a_size_the_kme_allows_is_fetched_as_one_key() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, TestLink::SAE_A);
    let keys = master.enc_keys(&sae(TestLink::SAE_B), 512).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].material.len(), 64);
}

#[test]
fn keys_are_assembled_when_the_kme_serves_only_small_ones() {
    let link = TestLink::start(SimOptions {
        key_size: 128,
        min_key_size: 128,
        max_key_size: 128,
        max_key_per_request: 3,
        ..SimOptions::default()
    });
    let master = client(&link, TestLink::SAE_A);
    let slave = client(&link, TestLink::SAE_B);

    // 1024 bits = 8 keys of 128 bits = requests of 3 + 3 + 2 keys.
    let sent = master.enc_keys(&sae(TestLink::SAE_B), 1024).unwrap();
    assert_eq!(sent.len(), 8);
    assert!(sent.iter().all(|k| k.material.len() == 16));
    assert_eq!(ids(&sent).into_iter().collect::<HashSet<_>>().len(), 8);
    assert_eq!(stat(&link, &["requests", "enc_keys"]), 3);

    // The slave must respect the same per-request limit and return the keys in order.
    let got = slave.dec_keys(&sae(TestLink::SAE_A), &ids(&sent)).unwrap();
    assert_eq!(materials(&got), materials(&sent));
    assert_eq!(stat(&link, &["requests", "dec_keys"]), 3);
    assert_eq!(stat(&link, &["responses", "400"]), 0);

    // status is read once per peer and then cached.
    master.enc_keys(&sae(TestLink::SAE_B), 256).unwrap();
    assert_eq!(stat(&link, &["requests", "status"]), 2, "one per side");
}

#[test]
fn a_size_that_cannot_be_assembled_exactly_names_the_size_to_configure() {
    let link = TestLink::start(SimOptions {
        key_size: 256,
        min_key_size: 256,
        max_key_size: 256,
        ..SimOptions::default()
    });
    let master = client(&link, TestLink::SAE_A);
    match master.enc_keys(&sae(TestLink::SAE_B), 384) {
        Err(KmeError::Config(m)) => assert!(m.contains("multiple of 256"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stat(&link, &["requests", "enc_keys"]),
        0,
        "no key was wasted"
    );
}

#[test]
fn status_reports_the_kme_parameters() {
    let link = TestLink::start(SimOptions {
        key_size: 512,
        max_key_per_request: 7,
        ..SimOptions::default()
    });
    let status = client(&link, TestLink::SAE_A)
        .status(&sae(TestLink::SAE_B))
        .unwrap();
    assert_eq!(status.source_kme_id.as_deref(), Some(TestLink::KME_A_ID));
    assert_eq!(status.target_kme_id.as_deref(), Some(TestLink::KME_B_ID));
    assert_eq!(status.master_sae_id.as_deref(), Some(TestLink::SAE_A));
    assert_eq!(status.slave_sae_id.as_deref(), Some(TestLink::SAE_B));
    assert_eq!(status.key_size, 512);
    assert_eq!(status.max_key_per_request, Some(7));
    assert_eq!(
        (status.min_key_size, status.max_key_size),
        (Some(64), Some(1024))
    );
    assert!(status.stored_key_count.unwrap() > 0);
}

#[test]
fn an_empty_pool_is_no_key_available_until_refilled() {
    let link = TestLink::start(SimOptions {
        max_key_count: 2,
        key_rate: 0,
        ..SimOptions::default()
    });
    let master = client(&link, TestLink::SAE_A);
    let slave_sae = sae(TestLink::SAE_B);
    master.enc_keys(&slave_sae, 256).unwrap();
    master.enc_keys(&slave_sae, 256).unwrap();
    match master.enc_keys(&slave_sae, 256) {
        Err(e @ KmeError::NoKeyAvailable { .. }) => {
            assert!(e.is_transient());
            let KmeError::NoKeyAvailable { url, message } = &e else {
                unreachable!()
            };
            assert!(url.ends_with("/api/v1/keys/sae-b/enc_keys"), "{url}");
            assert!(message.contains("not enough keys"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    link.admin(AdminCommand::Refill { count: 1 });
    assert_eq!(master.enc_keys(&slave_sae, 256).unwrap().len(), 1);
}

#[test]
fn an_unknown_key_id_is_rejected_with_the_kme_message() {
    let link = TestLink::start(SimOptions::default());
    let slave = client(&link, TestLink::SAE_B);
    let unknown = KeyId::parse("00000000-1111-2222-3333-444444444444").unwrap();
    match slave.dec_keys(&sae(TestLink::SAE_A), &[unknown]) {
        Err(KmeError::Rejected {
            status: 400,
            message,
            url,
        }) => {
            assert!(message.contains("not found"), "{message}");
            assert!(
                message.contains("00000000-1111-2222-3333-444444444444"),
                "details: {message}"
            );
            assert!(url.ends_with("/api/v1/keys/sae-a/dec_keys"), "{url}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn keys_for_another_slave_or_an_unknown_sae_are_unauthorized() {
    let link = TestLink::start(SimOptions::default());
    let sent = client(&link, TestLink::SAE_A)
        .enc_keys(&sae(TestLink::SAE_B), 256)
        .unwrap();

    // sae-b2 sits on the right KME but the key was meant for sae-b.
    match client(&link, TestLink::SAE_B2).dec_keys(&sae(TestLink::SAE_A), &ids(&sent)) {
        Err(e @ KmeError::Rejected { status: 401, .. }) => assert!(!e.is_transient()),
        other => panic!("{other:?}"),
    }
    // A certificate from the right CA, but an SAE no KME serves.
    let stranger = Etsi014Client::new(&settings(
        &link,
        &link.kme_a_url,
        TestLink::SAE_UNREGISTERED,
        Duration::from_secs(5),
    ))
    .unwrap();
    assert!(matches!(
        stranger.enc_keys(&sae(TestLink::SAE_B), 256),
        Err(KmeError::Rejected { status: 401, .. })
    ));
    // The intended slave still gets its key.
    let got = client(&link, TestLink::SAE_B)
        .dec_keys(&sae(TestLink::SAE_A), &ids(&sent))
        .unwrap();
    assert_eq!(materials(&got), materials(&sent));
}

#[test]
fn a_kme_certificate_from_another_ca_is_a_tls_error_pointing_at_kme_ca() {
    let link = TestLink::start(SimOptions::default());
    let other = TestLink::start(SimOptions::default());
    let mut s = settings(
        &link,
        &link.kme_a_url,
        TestLink::SAE_A,
        Duration::from_secs(5),
    );
    s.ca = other.ca_pem().to_str().unwrap().to_owned();
    expect_tls_error_naming(&s, "kme.ca");
}

/// enc_keys fails as Unreachable with a TLS reason that points at `setting`.
fn expect_tls_error_naming(s: &KmeSettings, setting: &str) {
    match Etsi014Client::new(s)
        .unwrap()
        .enc_keys(&sae(TestLink::SAE_B), 256)
    {
        Err(e @ KmeError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains("TLS") && text.contains(setting), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_client_certificate_the_kme_does_not_trust_is_a_tls_error_pointing_at_kme_cert() {
    let link = TestLink::start(SimOptions::default());
    let other = TestLink::start(SimOptions::default());
    let mut s = settings(
        &link,
        &link.kme_a_url,
        TestLink::SAE_A,
        Duration::from_secs(5),
    );
    s.cert = other.sae_cert(TestLink::SAE_A).to_str().unwrap().to_owned();
    s.key = other.sae_key(TestLink::SAE_A).to_str().unwrap().to_owned();
    expect_tls_error_naming(&s, "kme.cert");
}

#[test]
fn a_slow_kme_is_unreachable_within_the_configured_timeout() {
    let link = TestLink::start(SimOptions::default());
    let timeout = Duration::from_millis(500);
    let master =
        Etsi014Client::new(&settings(&link, &link.kme_a_url, TestLink::SAE_A, timeout)).unwrap();
    link.admin(AdminCommand::Latency { ms: 5000 });
    let started = Instant::now();
    let result = master.enc_keys(&sae(TestLink::SAE_B), 256);
    let elapsed = started.elapsed();
    match result {
        Err(e @ KmeError::Unreachable { .. }) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("kme.timeout"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        elapsed >= timeout && elapsed < timeout * 3,
        "took {elapsed:?}"
    );
}

#[test]
fn dropped_connections_and_closed_ports_are_unreachable() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, TestLink::SAE_A);
    link.admin(AdminCommand::Drop { on: true });
    match master.enc_keys(&sae(TestLink::SAE_B), 256) {
        Err(KmeError::Unreachable { reason, .. }) => {
            assert!(reason.contains("closed the connection"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    link.admin(AdminCommand::Drop { on: false });
    assert_eq!(
        master.enc_keys(&sae(TestLink::SAE_B), 256).unwrap().len(),
        1
    );

    // A port nobody listens on: bind one, learn its number, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = Etsi014Client::new(&settings(
        &link,
        &format!("https://127.0.0.1:{port}"),
        TestLink::SAE_A,
        Duration::from_secs(5),
    ))
    .unwrap();
    match nowhere.enc_keys(&sae(TestLink::SAE_B), 256) {
        Err(KmeError::Unreachable { reason, .. }) => {
            assert!(reason.contains("Connection refused"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_mismatched_delivery_still_returns_keys() {
    // Detecting that both sides hold different keys is the key exchange's job (key
    // confirmation), not the client's: it must hand over what the KME delivered.
    let link = TestLink::start(SimOptions::default());
    let sent = client(&link, TestLink::SAE_A)
        .enc_keys(&sae(TestLink::SAE_B), 256)
        .unwrap();
    link.admin(AdminCommand::MismatchNext);
    let got = client(&link, TestLink::SAE_B)
        .dec_keys(&sae(TestLink::SAE_A), &ids(&sent))
        .unwrap();
    assert_eq!(ids(&got), ids(&sent));
    assert_eq!(got[0].material.len(), sent[0].material.len());
    assert_ne!(materials(&got), materials(&sent));
    assert_eq!(stat(&link, &["mismatched_deliveries"]), 1);
}

#[test]
fn one_client_serves_many_threads_at_once() {
    let link = TestLink::start(SimOptions::default());
    let master: Arc<dyn KeySource> = Arc::new(client(&link, TestLink::SAE_A));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let master = Arc::clone(&master);
            std::thread::spawn(move || {
                (0..4)
                    .flat_map(|_| ids(&master.enc_keys(&sae(TestLink::SAE_B), 256).unwrap()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<KeyId> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(all.len(), 32);
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        32,
        "every key ID is distinct"
    );
}

#[test]
fn one_connection_is_kept_alive_across_requests() {
    let link = TestLink::start(SimOptions::default());
    let master = client(&link, TestLink::SAE_A);
    for _ in 0..5 {
        master.enc_keys(&sae(TestLink::SAE_B), 256).unwrap();
    }
    assert_eq!(stat(&link, &["requests", "enc_keys"]), 5);
    assert_eq!(stat(&link, &["tls_connections"]), 1);
}

#[test]
fn setup_errors_name_the_setting() {
    let link = TestLink::start(SimOptions::default());
    let base = settings(
        &link,
        &link.kme_a_url,
        TestLink::SAE_A,
        Duration::from_secs(5),
    );
    let config_error = |s: KmeSettings| match Etsi014Client::new(&s) {
        Err(KmeError::Config(m)) => m,
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("accepted {s:?}"),
    };

    let m = config_error(KmeSettings {
        cert: "/nonexistent/sae-a.pem".into(),
        ..base.clone()
    });
    assert!(
        m.starts_with("kme.cert:") && m.contains("/nonexistent/sae-a.pem"),
        "{m}"
    );
    let m = config_error(KmeSettings {
        key: base.cert.clone(),
        ..base.clone()
    });
    assert!(
        m.starts_with("kme.key:") && m.contains("no private key"),
        "{m}"
    );
    // A key that does not belong to the certificate.
    let m = config_error(KmeSettings {
        key: link.sae_key(TestLink::SAE_B).to_str().unwrap().to_owned(),
        ..base.clone()
    });
    assert!(m.contains("kme.cert / kme.key"), "{m}");
    let m = config_error(KmeSettings {
        url: link.kme_a_url.replace("https", "http"),
        ..base.clone()
    });
    assert!(m.starts_with("kme.url:"), "{m}");
    let m = config_error(KmeSettings {
        timeout: Duration::ZERO,
        ..base
    });
    assert!(m.contains("kme.timeout"), "{m}");
}

#[test]
fn every_status_field_the_simulator_sends_is_understood() {
    // The simulator sends every spec field: a misspelt serde name would leave one at None.
    let link = TestLink::start(SimOptions::default());
    let status = client(&link, TestLink::SAE_A)
        .status(&sae(TestLink::SAE_B))
        .unwrap();
    let raw: Value = serde_json::json!({
        "source_KME_ID": status.source_kme_id,
        "target_KME_ID": status.target_kme_id,
        "master_SAE_ID": status.master_sae_id,
        "slave_SAE_ID": status.slave_sae_id,
        "key_size": status.key_size,
        "max_key_count": status.max_key_count,
        "max_key_per_request": status.max_key_per_request,
        "max_key_size": status.max_key_size,
        "min_key_size": status.min_key_size,
        "max_SAE_ID_count": status.max_sae_id_count,
    });
    assert!(
        raw.as_object().unwrap().values().all(|v| !v.is_null()),
        "{raw}"
    );
}
