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

/// Key material no other test uses: a freed heap block that still holds it is a copy the
/// client left behind unwiped.
const KEY_PATTERN: [u8; 32] = *b"\xa5 QKD key hygiene pattern \x5a\x01\x02\x03\x04\x05";

/// Blocks freed while still holding [`KEY_PATTERN`].
static UNWIPED_FREES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The system allocator, scanning every block it frees for [`KEY_PATTERN`]. `realloc` is
/// GlobalAlloc's default (alloc, copy, dealloc), so the old block of a growing buffer is
/// scanned too.
struct ScanningAllocator;

// SAFETY: every call is passed on unchanged to the system allocator; `dealloc` only reads
// the block it is handed, which is live and `layout.size()` bytes long until it is freed.
unsafe impl std::alloc::GlobalAlloc for ScanningAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `block` is live for `layout.size()` bytes (GlobalAlloc contract).
        let bytes = unsafe { std::slice::from_raw_parts(block, layout.size()) };
        if bytes.windows(16).any(|w| w == &KEY_PATTERN[..16]) {
            UNWIPED_FREES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(block, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: ScanningAllocator = ScanningAllocator;

fn sae(id: &str) -> SaeId {
    SaeId::new(id).unwrap()
}

fn settings(link: &TestLink, url: &str, sae: &str, timeout: Duration) -> KmeSettings {
    KmeSettings {
        url: url.to_owned(),
        standby_urls: Vec::new(),
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
    client_at(link, url, sae)
}

/// The client of `sae` for the KME (node) at `url`.
fn client_at(link: &TestLink, url: &str, sae: &str) -> Etsi014Client {
    Etsi014Client::new(&settings(link, url, sae, Duration::from_secs(5))).unwrap()
}

/// A deadline that does not bind: the tests that are about deadlines set their own.
fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn first_set(mut sets: Vec<Vec<QkdKey>>) -> Vec<QkdKey> {
    assert_eq!(sets.len(), 1, "asked for one set");
    sets.remove(0)
}

fn ids(keys: &[QkdKey]) -> Vec<KeyId> {
    keys.iter().map(|k| k.id).collect()
}

fn materials(keys: &[QkdKey]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.material.to_vec()).collect()
}

/// A KME pair that serves only 128-bit keys, at most `per_request` per request, with a
/// master (SAE A) and a slave (SAE B) client.
fn small_key_link(per_request: usize) -> (TestLink, Etsi014Client, Etsi014Client) {
    let link = TestLink::start(SimOptions {
        key_size: 128,
        min_key_size: 128,
        max_key_size: 128,
        max_key_per_request: per_request,
        ..SimOptions::default()
    });
    let master = client(&link, TestLink::SAE_A);
    let slave = client(&link, TestLink::SAE_B);
    (link, master, slave)
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

    let sent = master
        .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
        .map(first_set)
        .unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].material.len(), 32);
    let got = slave
        .dec_keys(&sae(TestLink::SAE_A), &ids(&sent), soon())
        .unwrap();
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
    let keys = master
        .enc_keys(&sae(TestLink::SAE_B), 512, 1, soon())
        .map(first_set)
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].material.len(), 64);
}

#[test]
fn keys_are_assembled_when_the_kme_serves_only_small_ones() {
    let (link, master, slave) = small_key_link(3);

    // 1024 bits = 8 keys of 128 bits = requests of 3 + 3 + 2 keys.
    let sent = master
        .enc_keys(&sae(TestLink::SAE_B), 1024, 1, soon())
        .map(first_set)
        .unwrap();
    assert_eq!(sent.len(), 8);
    assert!(sent.iter().all(|k| k.material.len() == 16));
    assert_eq!(ids(&sent).into_iter().collect::<HashSet<_>>().len(), 8);
    assert_eq!(stat(&link, &["requests", "enc_keys"]), 3);

    // The slave must respect the same per-request limit and return the keys in order.
    let got = slave
        .dec_keys(&sae(TestLink::SAE_A), &ids(&sent), soon())
        .unwrap();
    assert_eq!(materials(&got), materials(&sent));
    assert_eq!(stat(&link, &["requests", "dec_keys"]), 3);
    assert_eq!(stat(&link, &["responses", "400"]), 0);

    // status is read once per peer and then cached.
    master
        .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
        .map(first_set)
        .unwrap();
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
    match master
        .enc_keys(&sae(TestLink::SAE_B), 384, 1, soon())
        .map(first_set)
    {
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
        .status(&sae(TestLink::SAE_B), soon())
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
    master
        .enc_keys(&slave_sae, 256, 1, soon())
        .map(first_set)
        .unwrap();
    master
        .enc_keys(&slave_sae, 256, 1, soon())
        .map(first_set)
        .unwrap();
    match master.enc_keys(&slave_sae, 256, 1, soon()).map(first_set) {
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
    assert_eq!(
        master
            .enc_keys(&slave_sae, 256, 1, soon())
            .map(first_set)
            .unwrap()
            .len(),
        1
    );
}

/// The KME runs dry between the requests of one enc_keys: the keys of the set it delivered
/// only partly are kept and complete the next set, not thrown away (a one-shot KME would
/// not hand them out again), and the slave can still fetch every one of them.
#[test]
fn a_partly_delivered_set_is_completed_by_the_next_request() {
    let link = TestLink::start(SimOptions {
        key_size: 128,
        min_key_size: 128,
        max_key_size: 128,
        max_key_per_request: 1,
        max_key_count: 3,
        key_rate: 0,
        ..SimOptions::default()
    });
    let master = client(&link, TestLink::SAE_A);
    let slave = client(&link, TestLink::SAE_B);
    let slave_sae = sae(TestLink::SAE_B);
    // 256-bit sets of two 128-bit keys: two sets need four keys, the KME has three.
    let sets = master.enc_keys(&slave_sae, 256, 2, soon()).unwrap();
    assert_eq!(sets.len(), 1, "one complete set");
    assert!(matches!(
        master.enc_keys(&slave_sae, 256, 1, soon()),
        Err(KmeError::NoKeyAvailable { .. })
    ));
    link.admin(AdminCommand::Refill { count: 1 });
    let next = first_set(master.enc_keys(&slave_sae, 256, 1, soon()).unwrap());
    assert_eq!(next.len(), 2);
    assert_eq!(
        stat(&link, &["keys_delivered_to_master"]),
        4,
        "the third key completed the second set"
    );
    for set in [&sets[0], &next] {
        let got = slave
            .dec_keys(&sae(TestLink::SAE_A), &ids(set), soon())
            .unwrap();
        assert_eq!(materials(&got), materials(set));
    }
}

#[test]
fn an_unknown_key_id_is_rejected_with_the_kme_message() {
    let link = TestLink::start(SimOptions::default());
    let slave = client(&link, TestLink::SAE_B);
    let unknown = KeyId::parse("00000000-1111-2222-3333-444444444444").unwrap();
    match slave.dec_keys(&sae(TestLink::SAE_A), &[unknown], soon()) {
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
        .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
        .map(first_set)
        .unwrap();

    // sae-b2 sits on the right KME but the key was meant for sae-b.
    match client(&link, TestLink::SAE_B2).dec_keys(&sae(TestLink::SAE_A), &ids(&sent), soon()) {
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
        stranger
            .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
            .map(first_set),
        Err(KmeError::Rejected { status: 401, .. })
    ));
    // The intended slave still gets its key.
    let got = client(&link, TestLink::SAE_B)
        .dec_keys(&sae(TestLink::SAE_A), &ids(&sent), soon())
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

/// enc_keys fails with a (not transient) TLS error that points at `setting`.
fn expect_tls_error_naming(s: &KmeSettings, setting: &str) {
    match Etsi014Client::new(s)
        .unwrap()
        .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
        .map(first_set)
    {
        Err(e @ KmeError::Tls { .. }) => {
            assert!(!e.is_transient());
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
    let result = master
        .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
        .map(first_set);
    let elapsed = started.elapsed();
    match result {
        // Connected, then too slow: the KME may have served the request.
        Err(
            e @ KmeError::Unreachable {
                maybe_served: true, ..
            },
        ) => {
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
    match master
        .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
        .map(first_set)
    {
        Err(KmeError::Unreachable { reason, .. }) => {
            assert!(reason.contains("closed the connection"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    link.admin(AdminCommand::Drop { on: false });
    assert_eq!(
        master
            .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
            .map(first_set)
            .unwrap()
            .len(),
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
    match nowhere
        .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
        .map(first_set)
    {
        Err(KmeError::Unreachable {
            reason,
            maybe_served,
            ..
        }) => {
            assert!(reason.contains("Connection refused"), "{reason}");
            assert!(!maybe_served, "a refused connection carried no request");
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
        .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
        .map(first_set)
        .unwrap();
    link.admin(AdminCommand::MismatchNext);
    let got = client(&link, TestLink::SAE_B)
        .dec_keys(&sae(TestLink::SAE_A), &ids(&sent), soon())
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
                    .flat_map(|_| {
                        ids(&master
                            .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
                            .map(first_set)
                            .unwrap())
                    })
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
        master
            .enc_keys(&sae(TestLink::SAE_B), 256, 1, soon())
            .map(first_set)
            .unwrap();
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
        .status(&sae(TestLink::SAE_B), soon())
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

#[test]
fn several_key_sets_come_in_as_few_requests_as_the_kme_allows() {
    let (link, master, slave) = small_key_link(10);
    // 4 sets of 256 bits = 8 keys of 128 bits: one request.
    let sets = master
        .enc_keys(&sae(TestLink::SAE_B), 256, 4, soon())
        .unwrap();
    assert_eq!(sets.len(), 4);
    assert!(sets.iter().all(|set| set.len() == 2));
    assert_eq!(stat(&link, &["requests", "enc_keys"]), 1);
    assert_eq!(
        master
            .keys_per_set(&sae(TestLink::SAE_B), 256, soon())
            .unwrap(),
        2
    );
    assert_eq!(stat(&link, &["requests", "status"]), 1, "status is cached");
    for set in &sets {
        let got = slave
            .dec_keys(&sae(TestLink::SAE_A), &ids(set), soon())
            .unwrap();
        assert_eq!(materials(&got), materials(set));
    }
}

/// `/proc/self/task` entries: the threads of this process.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn constructing_a_client_starts_no_thread() {
    // Measured in a child process running only this test: other tests start threads.
    if std::env::var_os("QKD_THREAD_PROBE").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "constructing_a_client_starts_no_thread",
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("QKD_THREAD_PROBE", "1")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains("1 passed"), "{log}");
        return;
    }
    let kme = ScriptedKme::start(ServerCert::Valid, |_, _| Reply::status_256());
    let settings = kme.settings(Duration::from_secs(5));
    let before = thread_count();
    let client = Etsi014Client::new(&settings).unwrap();
    assert_eq!(
        thread_count(),
        before,
        "Etsi014Client::new started a thread"
    );
    // The first request builds the HTTP client (and its runtime thread).
    client.status(&sae("sae-b"), soon()).unwrap();
    assert!(thread_count() > before);
}

#[test]
fn a_kme_that_drips_its_body_is_cut_off_at_kme_timeout() {
    let kme = ScriptedKme::start(ServerCert::Valid, |path, _| {
        if path.ends_with("/status") {
            Reply::status_256()
        } else {
            Reply::Drip(Duration::from_millis(200))
        }
    });
    let timeout = Duration::from_secs(1);
    let client = Etsi014Client::new(&kme.settings(timeout)).unwrap();
    client.status(&sae("sae-b"), soon()).unwrap();
    let started = Instant::now();
    let result = client.enc_keys(&sae("sae-b"), 256, 1, soon());
    let elapsed = started.elapsed();
    match result {
        Err(e @ KmeError::Unreachable { .. }) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("kme.timeout"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        elapsed < timeout * 2,
        "took {elapsed:?} with kme.timeout {timeout:?}"
    );
}

#[test]
fn the_callers_deadline_bounds_a_kme_that_never_answers() {
    let kme = ScriptedKme::start(ServerCert::Valid, |path, _| {
        if path.ends_with("/status") {
            Reply::status_256()
        } else {
            Reply::Silent
        }
    });
    let client = Etsi014Client::new(&kme.settings(Duration::from_secs(10))).unwrap();
    let budget = Duration::from_millis(800);
    for slave_side in [false, true] {
        let started = Instant::now();
        let result = if slave_side {
            client.dec_keys(&sae("sae-a"), &[KeyId([7; 16])], started + budget)
        } else {
            client
                .enc_keys(&sae("sae-b"), 256, 1, started + budget)
                .map(first_set)
        };
        let elapsed = started.elapsed();
        match result {
            Err(e @ KmeError::Unreachable { .. }) => {
                assert!(e.to_string().contains("deadline"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            elapsed < budget * 2,
            "took {elapsed:?} with a deadline of {budget:?}"
        );
    }
}

#[test]
fn the_no_key_answers_of_real_kmes_are_no_key_available() {
    for (code, body) in [
        (404, r#"{"detail":"Element not found"}"#),
        (
            400,
            r#"{"message":"Not enough key material. Try again later."}"#,
        ),
    ] {
        let kme = ScriptedKme::start(ServerCert::Valid, move |path, _| {
            if path.ends_with("/status") {
                Reply::status_256()
            } else {
                Reply::Answer(code, body.into())
            }
        });
        let client = Etsi014Client::new(&kme.settings(Duration::from_secs(5))).unwrap();
        match client.enc_keys(&sae("sae-b"), 256, 1, soon()) {
            Err(e @ KmeError::NoKeyAvailable { .. }) => {
                assert!(e.is_transient());
                let m = e.to_string();
                assert!(m.contains("this KME may mean: no key available"), "{m}");
                assert!(m.contains(&code.to_string()), "{m}");
            }
            other => panic!("{code}: {other:?}"),
        }
    }
}

#[test]
fn refusals_of_real_kmes_say_what_to_check() {
    // (operation answered, status, body, texts the message must contain)
    let cases: [(&str, u16, &str, &[&str]); 5] = [
        (
            "status",
            400,
            "Bad request",
            &["Bad request", "peers.<conn>.sae_id", "kme.url", "integers"],
        ),
        (
            "enc_keys",
            500,
            "<html><head><title>500 Internal Server Error</title></head></html>",
            &[
                "HTML page \"500 Internal Server Error\"",
                "peers.<conn>.sae_id",
            ],
        ),
        (
            "status",
            422,
            r#"{"detail":[{"loc":["path","slave_SAE_ID"],"msg":"value is not a valid integer"}]}"#,
            &["slave_SAE_ID: value is not a valid integer"],
        ),
        (
            "enc_keys",
            401,
            "<html><title>401 Unauthorized</title></html>",
            &["kme.cert", "sae_id"],
        ),
        (
            "enc_keys",
            400,
            "<html><head><title>400 No required SSL certificate was sent</title></head></html>",
            &["refused our client certificate", "kme.cert / kme.key"],
        ),
    ];
    for (operation, code, body, wanted) in cases {
        let kme = ScriptedKme::start(ServerCert::Valid, move |path, _| {
            if path.ends_with(operation) {
                Reply::Answer(code, body.into())
            } else {
                Reply::status_256()
            }
        });
        let client = Etsi014Client::new(&kme.settings(Duration::from_secs(5))).unwrap();
        match client.enc_keys(&sae("sae-b"), 256, 1, soon()) {
            Err(e @ KmeError::Rejected { .. }) => {
                assert!(!e.is_transient());
                let m = e.to_string();
                assert!(m.contains(&kme.url), "{m}");
                for w in wanted {
                    assert!(m.contains(w), "{operation} {code}: no '{w}' in: {m}");
                }
            }
            other => panic!("{operation} {code}: {other:?}"),
        }
    }
}

#[test]
fn kme_certificates_rustls_refuses_are_blamed_on_the_kme_certificate() {
    for (cert, wanted) in [
        (ServerCert::OnlyLocalhost, "names only"),
        (ServerCert::NoSan, "no subjectAltName"),
        (ServerCert::NoServerAuth, "serverAuth"),
    ] {
        let kme = ScriptedKme::start(cert, |_, _| Reply::status_256());
        let client = Etsi014Client::new(&kme.settings(Duration::from_secs(5))).unwrap();
        match client.enc_keys(&sae("sae-b"), 256, 1, soon()) {
            Err(e @ KmeError::Tls { .. }) => {
                assert!(!e.is_transient(), "a certificate does not heal by retrying");
                let m = e.to_string();
                assert!(m.contains(wanted) && m.contains("re-issued"), "{m}");
            }
            other => panic!("{wanted}: {other:?}"),
        }
        assert_eq!(kme.requests(""), 0);
    }
}

#[test]
fn a_kme_that_ignores_size_gets_its_default_size_keys_assembled() {
    // status allows 64..1024 bits, but the KME hands out 256-bit keys whatever is asked.
    let kme = ScriptedKme::start(ServerCert::Valid, |path, body| {
        if path.ends_with("/status") {
            return Reply::Answer(
                200,
                r#"{"key_size":256,"min_key_size":64,"max_key_size":1024,
                    "max_key_per_request":10,"stored_key_count":0}"#
                    .into(),
            );
        }
        let request: Value = serde_json::from_str(body).unwrap();
        Reply::keys(request["number"].as_u64().unwrap() as usize, 32)
    });
    let client = Etsi014Client::new(&kme.settings(Duration::from_secs(5))).unwrap();
    let keys = client
        .enc_keys(&sae("sae-b"), 512, 1, soon())
        .map(first_set)
        .unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.material.len() == 32));
    // The 256-bit key of the first answer was kept: one more request, not two.
    assert_eq!(kme.requests("enc_keys"), 2);
    assert_eq!(client.keys_per_set(&sae("sae-b"), 512, soon()).unwrap(), 2);
    // From now on it asks for what the KME serves: one request for both keys.
    let keys = client
        .enc_keys(&sae("sae-b"), 512, 1, soon())
        .map(first_set)
        .unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(kme.requests("enc_keys"), 3);
    assert_eq!(kme.last_body("enc_keys"), r#"{"number":2,"size":256}"#);
}

#[test]
fn a_key_size_beyond_the_wire_limit_is_refused_before_any_key_is_consumed() {
    // A KME reporting a 32-bit key_size (seen in the field): 1024 bits would be 32 key IDs.
    let kme = ScriptedKme::start(ServerCert::Valid, |path, _| {
        if path.ends_with("/status") {
            Reply::Answer(200, r#"{"key_size":32,"max_key_per_request":100}"#.into())
        } else {
            Reply::keys(1, 4)
        }
    });
    let client = Etsi014Client::new(&kme.settings(Duration::from_secs(5))).unwrap();
    assert_eq!(client.keys_per_set(&sae("sae-b"), 512, soon()).unwrap(), 16);
    for result in [
        client.keys_per_set(&sae("sae-b"), 1024, soon()).map(|_| ()),
        client.enc_keys(&sae("sae-b"), 1024, 1, soon()).map(|_| ()),
    ] {
        match result {
            Err(KmeError::Config(m)) => {
                assert!(m.contains("16 key IDs") && m.contains("key_size"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(kme.requests("enc_keys"), 0);
}

#[test]
fn no_copy_of_a_key_is_freed_unwiped() {
    use base64::Engine;
    // The KME side sends base64 text only; raw key bytes exist only in the client.
    let b64 = base64::engine::general_purpose::STANDARD.encode(KEY_PATTERN);
    let kme = ScriptedKme::start(ServerCert::Valid, move |path, body| {
        if path.ends_with("/status") {
            return Reply::status_256();
        }
        let request: Value = serde_json::from_str(body).unwrap();
        let ids: Vec<String> = if path.ends_with("/enc_keys") {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            (0..request["number"].as_u64().unwrap())
                .map(|_| {
                    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    format!("11111111-0000-4000-8000-{n:012x}")
                })
                .collect()
        } else {
            request["key_IDs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["key_ID"].as_str().unwrap().to_owned())
                .collect()
        };
        let keys: Vec<Value> = ids
            .iter()
            .map(|id| serde_json::json!({"key_ID": id, "key": b64}))
            .collect();
        Reply::Answer(200, serde_json::json!({ "keys": keys }).to_string())
    });
    let client = Etsi014Client::new(&kme.settings(Duration::from_secs(5))).unwrap();
    for _ in 0..3 {
        let sets = client.enc_keys(&sae("sae-b"), 512, 2, soon()).unwrap();
        assert_eq!(sets.len(), 2);
        let set_ids = ids(&sets[0]);
        assert!(sets.iter().flatten().all(|k| k.material[..] == KEY_PATTERN));
        let got = client.dec_keys(&sae("sae-a"), &set_ids, soon()).unwrap();
        assert!(got.iter().all(|k| k.material[..] == KEY_PATTERN));
    }
    assert_eq!(
        UNWIPED_FREES.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "heap blocks freed with key material still in them"
    );
}

/// The server certificate a [`ScriptedKme`] presents.
#[derive(Clone, Copy)]
enum ServerCert {
    /// For 127.0.0.1, with the serverAuth EKU.
    Valid,
    /// For `localhost` only (the client connects to 127.0.0.1).
    OnlyLocalhost,
    /// Without any subjectAltName.
    NoSan,
    /// For 127.0.0.1 but with the clientAuth EKU only.
    NoServerAuth,
}

/// What a [`ScriptedKme`] answers to one request.
enum Reply {
    /// An HTTP status and body (HTML if it starts with '<', else JSON).
    Answer(u16, String),
    /// The headers at once, then the body one byte every so often.
    Drip(Duration),
    /// Nothing at all, connection kept open.
    Silent,
}

impl Reply {
    fn status_256() -> Reply {
        Reply::Answer(200, r#"{"key_size":256,"max_key_per_request":10}"#.into())
    }

    /// A key container of `number` fresh keys of `bytes` bytes.
    fn keys(number: usize, bytes: usize) -> Reply {
        use base64::Engine;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let keys: Vec<Value> = (0..number)
            .map(|_| {
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                serde_json::json!({
                    "key_ID": format!("00000000-0000-4000-8000-{n:012x}"),
                    "key": base64::engine::general_purpose::STANDARD.encode(vec![n as u8; bytes]),
                })
            })
            .collect();
        Reply::Answer(200, serde_json::json!({ "keys": keys }).to_string())
    }
}

type Script = dyn Fn(&str, &str) -> Reply + Send + Sync;

/// A KME that misbehaves on purpose: a blocking rustls server on 127.0.0.1 that answers
/// each request as its script says (no client authentication: the tests are about what the
/// client does with the answers).
struct ScriptedKme {
    url: String,
    dir: std::path::PathBuf,
    /// (path, body) of every request received.
    seen: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl ScriptedKme {
    fn start(
        cert: ServerCert,
        script: impl Fn(&str, &str) -> Reply + Send + Sync + 'static,
    ) -> ScriptedKme {
        use qkd_kme_sim::certs::CertAuthority;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "scripted-kme-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = CertAuthority::generate("scripted test CA").unwrap();
        let ip = vec!["127.0.0.1".to_owned()];
        let server = match cert {
            ServerCert::Valid => ca.issue_server("kme", &ip),
            ServerCert::OnlyLocalhost => ca.issue_server("kme", &["localhost".to_owned()]),
            ServerCert::NoSan => ca.issue_server("kme", &[]),
            ServerCert::NoServerAuth => ca.issue_client("kme"),
        }
        .unwrap();
        let client = ca.issue_client("sae-a").unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("sae.pem"), &client.cert_pem).unwrap();
        std::fs::write(dir.join("sae.key"), client.key_pem.as_bytes()).unwrap();

        let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let recorded = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, script, seen) = (
                    Arc::clone(&config),
                    Arc::clone(&script),
                    Arc::clone(&recorded),
                );
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    serve(rustls::StreamOwned::new(conn, stream), &*script, &seen);
                });
            }
        });
        ScriptedKme { url, dir, seen }
    }

    fn settings(&self, timeout: Duration) -> KmeSettings {
        let path = |name: &str| self.dir.join(name).to_str().unwrap().to_owned();
        KmeSettings {
            url: self.url.clone(),
            standby_urls: Vec::new(),
            ca: path("ca.pem"),
            cert: path("sae.pem"),
            key: path("sae.key"),
            timeout,
        }
    }

    /// Requests received whose path ends with `operation`.
    fn requests(&self, operation: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(p, _)| p.ends_with(operation)).count()
    }

    fn last_body(&self, operation: &str) -> String {
        let seen = self.seen.lock().unwrap();
        let last = seen.iter().rev().find(|(p, _)| p.ends_with(operation));
        last.map(|(_, b)| b.clone()).unwrap_or_default()
    }
}

/// Serves HTTP/1.1 requests on one connection until the client closes it.
fn serve(
    mut stream: impl std::io::Read + std::io::Write,
    script: &Script,
    seen: &std::sync::Mutex<Vec<(String, String)>>,
) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let reply = script(&path, &body);
        seen.lock().unwrap().push((path, body));
        match reply {
            Reply::Answer(code, body) => {
                let kind = if body.starts_with('<') {
                    "text/html"
                } else {
                    "application/json"
                };
                let answer = format!(
                    "HTTP/1.1 {code} Scripted\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream
                    .write_all(answer.as_bytes())
                    .and_then(|_| stream.flush())
                    .is_err()
                {
                    return;
                }
            }
            Reply::Drip(every) => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
                let _ = stream
                    .write_all(head.as_bytes())
                    .and_then(|_| stream.flush());
                // Gives up after 50 bytes, so a client without a total deadline fails the
                // test's time bound instead of hanging it.
                for _ in 0..50 {
                    if stream.write_all(b" ").and_then(|_| stream.flush()).is_err() {
                        break;
                    }
                    std::thread::sleep(every);
                }
                return;
            }
            Reply::Silent => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
        }
    }
}

/// KME failover against real listeners: KME-A's two listeners are two nodes of one KME.
#[test]
fn failover_uses_the_standby_node_while_the_first_is_down_and_returns_to_it() {
    use strongswan_qkd::kme::{FailoverSource, NodeRole};
    let link = TestLink::start(SimOptions::default());
    let node =
        |url: &str| -> Arc<dyn KeySource> { Arc::new(client_at(&link, url, TestLink::SAE_A)) };
    // Probe interval 0: every request tries the first node again while it is down.
    let master = FailoverSource::new(
        vec![node(&link.kme_a_url), node(&link.kme_a_standby_url)],
        Duration::ZERO,
    );
    let slave = client(&link, TestLink::SAE_B);
    let sae_b = sae(TestLink::SAE_B);
    let sae_a = sae(TestLink::SAE_A);
    let listener = |on: bool| AdminCommand::Listener {
        addr: link
            .kme_a_url
            .trim_start_matches("https://")
            .parse()
            .unwrap(),
        on,
    };
    let requests_at = |url: &str| {
        let stats = link.admin(AdminCommand::Stats);
        let addr = url.trim_start_matches("https://");
        stats["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["addr"] == addr)
            .unwrap()["requests"]
            .as_u64()
            .unwrap()
    };

    let keys = first_set(master.enc_keys(&sae_b, 256, 1, soon()).unwrap());
    assert_eq!(master.url(), link.kme_a_url);
    // Every request is answered, by either node; the listener and its kept-alive
    // connection close in the simulator's tasks, so allow that a moment.
    let until_url = |url: &str| {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let set = first_set(master.enc_keys(&sae_b, 256, 1, soon()).unwrap());
            if master.url() == url {
                return set;
            }
            assert!(Instant::now() < until, "never switched to {url}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    link.admin(listener(false));
    let during = until_url(&link.kme_a_standby_url);
    let roles: Vec<_> = master.nodes().iter().map(|n| n.role).collect();
    assert!(
        matches!(roles[..], [NodeRole::Down { .. }, NodeRole::Active]),
        "{roles:?}"
    );
    // The slave fetches keys issued through either node: one key store.
    for set in [&keys, &during] {
        let got = slave.dec_keys(&sae_a, &ids(set), soon()).unwrap();
        assert_eq!(materials(&got), materials(set));
    }

    link.admin(listener(true));
    until_url(&link.kme_a_url);
    // Back on the first node, a request goes there alone: one more request on it, none on
    // the standby.
    let primary_before = requests_at(&link.kme_a_url);
    let standby_before = requests_at(&link.kme_a_standby_url);
    master.enc_keys(&sae_b, 256, 1, soon()).unwrap();
    assert_eq!(requests_at(&link.kme_a_url), primary_before + 1);
    assert_eq!(requests_at(&link.kme_a_standby_url), standby_before);
    let roles: Vec<_> = master.nodes().iter().map(|n| n.role).collect();
    assert_eq!(roles, [NodeRole::Active, NodeRole::Standby]);
}
