//! PPK lookups against a fake slave KME: which lookups are ours, one-time use, refusals,
//! and the bound on KME requests for a flood of unauthenticated lookups.

use super::*;
use crate::config::{Config, KmeSettings, MapSettings};
use crate::ids::SaeId;
use crate::kme::{KeySource, QkdKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY_A: &str = "6f1c2c7e-8a3b-4c51-9d2e-0b7a5f3e1c01";
const KEY_B: &str = "6f1c2c7e-8a3b-4c51-9d2e-0b7a5f3e1c02";

/// The slave's KME: the keys the master (sae-a) fetched for us, handed out once.
#[derive(Default)]
struct FakeKme {
    keys: Mutex<HashMap<KeyId, Vec<u8>>>,
    down: AtomicBool,
    /// Each dec_keys takes this long (a slow KME).
    delay: Mutex<Duration>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    masters: Mutex<Vec<String>>,
}

impl FakeKme {
    fn with_keys(keys: &[(&str, usize)]) -> Arc<FakeKme> {
        let kme = Arc::new(FakeKme::default());
        for (n, (id, bytes)) in keys.iter().enumerate() {
            kme.keys
                .lock()
                .unwrap()
                .insert(KeyId::parse(id).unwrap(), vec![n as u8 + 1; *bytes]);
        }
        kme
    }
}

impl KeySource for FakeKme {
    fn enc_keys(
        &self,
        _: &SaeId,
        _: u32,
        _: usize,
        _: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        Err(KmeError::Config("not used by PPK lookups".into()))
    }

    fn dec_keys(&self, master: &SaeId, ids: &[KeyId], _: Instant) -> Result<Vec<QkdKey>, KmeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(*self.delay.lock().unwrap());
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.masters.lock().unwrap().push(master.to_string());
        if self.down.load(Ordering::SeqCst) {
            return Err(KmeError::Unreachable {
                url: self.url().into(),
                reason: "connection refused".into(),
                maybe_served: false,
            });
        }
        let mut keys = self.keys.lock().unwrap();
        ids.iter()
            .map(|id| {
                let material = keys.remove(id).ok_or_else(|| KmeError::Rejected {
                    url: self.url().into(),
                    status: 400,
                    message: "one or more keys specified are not found on KME".into(),
                })?;
                Ok(QkdKey {
                    id: *id,
                    material: Zeroizing::new(material),
                })
            })
            .collect()
    }

    fn keys_per_set(&self, _: &SaeId, _: u32, _: Instant) -> Result<usize, KmeError> {
        Ok(1)
    }

    fn url(&self) -> &str {
        "https://kme-b.test:8443"
    }
}

/// gw-b's plugin: connection `tunnel` (peer sae-a, PPK on, bound to 192.0.2.10) and
/// `other` (PPK off).
fn runtime(kme: &Arc<FakeKme>, extra: &[(&str, &str)]) -> Runtime {
    let mut settings = MapSettings::new(&[
        ("sae_id", "sae-b"),
        ("kme.url", "https://kme-b.test:8443"),
        ("kme.ca", "ca"),
        ("kme.cert", "c"),
        ("kme.key", "k"),
        ("buffer", "0"),
        ("peers.tunnel.sae_id", "sae-a"),
        ("peers.tunnel.remote", "192.0.2.10"),
        ("peers.tunnel.ppk", "yes"),
        ("peers.other.sae_id", "sae-c"),
    ]);
    for (k, v) in extra {
        settings.0.insert(k.to_string(), v.to_string());
    }
    let config = Config::load(&settings).unwrap();
    let kme = kme.clone();
    Runtime::new(config, move |_: &KmeSettings| {
        Ok(kme.clone() as Arc<dyn KeySource>)
    })
    .unwrap()
}

fn ctx(connection: &str) -> ExchangeContext {
    ExchangeContext {
        connection: Some(connection.into()),
        remote: Some("192.0.2.10".parse().unwrap()),
        established: false,
        unique_id: Some(3),
    }
}

fn lookup(rt: &Runtime, ppk_id: &str, ctx: &ExchangeContext) -> Result<Option<Ppk>, Refusal> {
    answer(
        rt,
        &Lookup {
            ppk_id: ppk_id.as_bytes(),
            ctx,
        },
    )
}

#[test]
fn a_ppk_id_is_a_key_id_as_text() {
    let id = parse_ppk_id(KEY_A.as_bytes()).unwrap();
    assert_eq!(id.to_string(), KEY_A);
    assert_eq!(
        parse_ppk_id(KEY_A.to_uppercase().as_bytes()),
        Some(id),
        "KMEs differ in case"
    );
    for not_a_key_id in [
        &b"ppk-1"[..],
        b"",
        &id.0[..],
        b"6f1c2c7e8a3b4c519d2e0b7a5f3e1c01",
        b"{6f1c2c7e-8a3b-4c51-9d2e-0b7a5f3e1c01}",
        b"6f1c2c7e-8a3b-4c51-9d2e-0b7a5f3e1c01 ",
        b"\xff\xfe",
    ] {
        assert_eq!(parse_ppk_id(not_a_key_id), None, "{not_a_key_id:?}");
    }
}

#[test]
fn the_key_named_by_the_ppk_id_comes_from_the_kme_with_the_peer_as_master() {
    let kme = FakeKme::with_keys(&[(KEY_A, 32)]);
    let rt = runtime(&kme, &[]);
    let ppk = lookup(&rt, KEY_A, &ctx("tunnel")).unwrap().unwrap();
    assert_eq!(ppk.key_id.to_string(), KEY_A);
    assert_eq!(*ppk.key, vec![1u8; 32]);
    assert_eq!(*kme.masters.lock().unwrap(), ["sae-a"]);
}

#[test]
fn lookups_that_are_not_ours_cost_no_kme_request() {
    let kme = FakeKme::with_keys(&[(KEY_A, 32)]);
    let rt = runtime(&kme, &[]);
    // Not a key ID: a static PPK of strongSwan's own.
    assert!(lookup(&rt, "ppk-1", &ctx("tunnel")).unwrap().is_none());
    // A connection without ppk = yes, an unknown one, none at all.
    assert!(lookup(&rt, KEY_A, &ctx("other")).unwrap().is_none());
    assert!(lookup(&rt, KEY_A, &ctx("unknown")).unwrap().is_none());
    let unnamed = ExchangeContext {
        connection: None,
        ..ctx("tunnel")
    };
    assert!(lookup(&rt, KEY_A, &unnamed).unwrap().is_none());
    assert_eq!(kme.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_key_id_keys_one_ike_sa_only() {
    let kme = FakeKme::with_keys(&[(KEY_A, 32), (KEY_B, 32)]);
    let rt = runtime(&kme, &[]);
    lookup(&rt, KEY_A, &ctx("tunnel")).unwrap().unwrap();
    let again = lookup(&rt, KEY_A, &ctx("tunnel")).unwrap_err();
    assert!(matches!(again, Refusal::UsedBefore), "{again:?}");
    assert_eq!(again.cause(), "key-used");
    assert_eq!(
        kme.calls.load(Ordering::SeqCst),
        1,
        "a used key ID is not asked of the KME again"
    );
    assert!(lookup(&rt, KEY_B, &ctx("tunnel")).unwrap().is_some());
}

#[test]
fn a_key_the_kme_delivers_twice_is_refused_the_second_time() {
    let kme = FakeKme::with_keys(&[(KEY_A, 32)]);
    let rt = runtime(&kme, &[]);
    // Another exchange keyed with this ID first (the qkd method as slave).
    rt.supply
        .record_used(&[KeyId::parse(KEY_A).unwrap()])
        .unwrap();
    let refusal = lookup(&rt, KEY_A, &ctx("tunnel")).unwrap_err();
    assert!(matches!(refusal, Refusal::UsedBefore), "{refusal:?}");
}

#[test]
fn an_unknown_key_id_is_the_kmes_refusal() {
    let kme = FakeKme::with_keys(&[]);
    let rt = runtime(&kme, &[]);
    let refusal = lookup(&rt, KEY_A, &ctx("tunnel")).unwrap_err();
    assert_eq!(refusal.cause(), "kme-refused");
    let peer = rt.config.peer_named("tunnel").unwrap();
    let why = explain(&refusal, peer, KeyId::parse(KEY_A).unwrap(), kme.url());
    for part in [
        "https://kme-b.test:8443",
        KEY_A,
        "charon.plugins.qkd.peers.tunnel.sae_id",
        "master SAE 'sae-a'",
    ] {
        assert!(why.contains(part), "{part} missing in: {why}");
    }
}

#[test]
fn a_kme_that_is_down_does_not_use_up_the_key_id() {
    let kme = FakeKme::with_keys(&[(KEY_A, 32)]);
    let rt = runtime(&kme, &[]);
    kme.down.store(true, Ordering::SeqCst);
    let refusal = lookup(&rt, KEY_A, &ctx("tunnel")).unwrap_err();
    assert_eq!(refusal.cause(), "kme-unreachable");
    kme.down.store(false, Ordering::SeqCst);
    assert!(
        lookup(&rt, KEY_A, &ctx("tunnel")).unwrap().is_some(),
        "the peer's retry gets the key"
    );
}

#[test]
fn the_remote_binding_applies_before_any_kme_request() {
    let kme = FakeKme::with_keys(&[(KEY_A, 32)]);
    let rt = runtime(&kme, &[]);
    let elsewhere = ExchangeContext {
        remote: Some("198.51.100.66".parse().unwrap()),
        ..ctx("tunnel")
    };
    let refusal = lookup(&rt, KEY_A, &elsewhere).unwrap_err();
    assert_eq!(refusal.cause(), "peer-address");
    let peer = rt.config.peer_named("tunnel").unwrap();
    let why = explain(&refusal, peer, KeyId::parse(KEY_A).unwrap(), kme.url());
    assert!(
        why.contains("198.51.100.66") && why.contains("peers.tunnel.remote = 192.0.2.10"),
        "{why}"
    );
    assert_eq!(kme.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_short_key_is_not_a_ppk() {
    let kme = FakeKme::with_keys(&[(KEY_A, 16)]);
    let rt = runtime(&kme, &[]);
    let refusal = lookup(&rt, KEY_A, &ctx("tunnel")).unwrap_err();
    assert_eq!(refusal.cause(), "kme-key");
    assert!(format!("{refusal:?}").contains("128 bits"), "{refusal:?}");
}

/// Lookups arrive before the peer's AUTH is verified: a flood of them gets the
/// unauthenticated share of max_kme_requests (1 of 4), the rest is refused at once.
#[test]
fn a_flood_of_lookups_is_bounded_by_the_unauthenticated_share() {
    let ids: Vec<String> = (0..8)
        .map(|n| format!("6f1c2c7e-8a3b-4c51-9d2e-0b7a5f3e1d{n:02}"))
        .collect();
    let kme = FakeKme::with_keys(&ids.iter().map(|id| (id.as_str(), 32)).collect::<Vec<_>>());
    *kme.delay.lock().unwrap() = Duration::from_millis(300);
    let rt = Arc::new(runtime(&kme, &[("max_kme_requests", "4")]));
    let results: Vec<Result<Option<Ppk>, Refusal>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let rt = rt.clone();
                s.spawn(move || lookup(&rt, id, &ctx("tunnel")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(kme.most_in_flight.load(Ordering::SeqCst), 1);
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(Refusal::Busy(_))))
        .count();
    let served = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
    assert_eq!(busy + served, ids.len(), "{results:?}");
    assert!(busy >= 4, "{busy} of {} refused at once", ids.len());
    assert_eq!(served, kme.calls.load(Ordering::SeqCst));
}
