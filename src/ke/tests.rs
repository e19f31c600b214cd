//! State machine tests: two `QkdKeyExchange`s (gw-a, gw-b) against an in-memory KME pair.

use super::*;
use crate::config::tests::MapSettings;
use crate::config::Config;
use crate::config::KmeSettings;
use crate::kme::KeySource;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Both ends of one QKD link: what KME-A hands the master, KME-B hands the slave.
#[derive(Default)]
struct FakeLink {
    store: Mutex<HashMap<KeyId, (String, Vec<u8>)>>,
    counter: AtomicU32,
    /// Number of upcoming enc_keys calls answered with 503.
    enc_503s: AtomicU32,
    dec_down: Mutex<bool>,
    corrupt_dec: Mutex<bool>,
}

struct FakeKme {
    link: Arc<FakeLink>,
    me: &'static str,
}

impl KeySource for FakeKme {
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        _sets: usize,
        _deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        if self.link.enc_503s.load(Ordering::SeqCst) > 0 {
            self.link.enc_503s.fetch_sub(1, Ordering::SeqCst);
            return Err(KmeError::NoKeyAvailable {
                url: self.url().into(),
                message: "no key".into(),
            });
        }
        let n = self.link.counter.fetch_add(1, Ordering::SeqCst);
        let id = KeyId([n as u8; 16]);
        let material: Vec<u8> = (0..size_bits / 8)
            .map(|i| (i as u8) ^ (n as u8).wrapping_mul(31))
            .collect();
        self.link
            .store
            .lock()
            .unwrap()
            .insert(id, (slave.to_string(), material.clone()));
        Ok(vec![vec![QkdKey {
            id,
            material: Zeroizing::new(material),
        }]])
    }

    fn dec_keys(
        &self,
        _master: &SaeId,
        ids: &[KeyId],
        _deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        if *self.link.dec_down.lock().unwrap() {
            return Err(KmeError::Unreachable {
                url: self.url().into(),
                reason: "connection refused".into(),
            });
        }
        let store = self.link.store.lock().unwrap();
        ids.iter()
            .map(|id| {
                let (slave, material) = store.get(id).ok_or_else(|| KmeError::Rejected {
                    url: self.url().into(),
                    status: 400,
                    message: "one or more keys specified are not found on KME".into(),
                })?;
                if slave != self.me {
                    return Err(KmeError::Rejected {
                        url: self.url().into(),
                        status: 401,
                        message: "not yours".into(),
                    });
                }
                let mut material = material.clone();
                if *self.link.corrupt_dec.lock().unwrap() {
                    material[0] ^= 1;
                }
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
        "https://kme.test"
    }
}

/// A toy "DH" whose secret is a hash of both public values: enough to test the plumbing.
struct FakeEcdh {
    group: u16,
    public: Vec<u8>,
    peer: Option<Vec<u8>>,
}

impl Ecdh for FakeEcdh {
    fn group(&self) -> u16 {
        self.group
    }
    fn public_value(&mut self) -> Result<Vec<u8>, String> {
        Ok(self.public.clone())
    }
    fn set_peer_value(&mut self, value: &[u8]) -> Result<(), String> {
        self.peer = Some(value.to_vec());
        Ok(())
    }
    fn shared_secret(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        let peer = self.peer.as_ref().ok_or("no peer value")?;
        let (a, b) = if &self.public < peer {
            (&self.public, peer)
        } else {
            (peer, &self.public)
        };
        Ok(Zeroizing::new(
            Sha256::new()
                .chain_update(a)
                .chain_update(b)
                .finalize()
                .to_vec(),
        ))
    }
}

fn ecdh(seed: u8, group: u16) -> Option<Box<dyn Ecdh>> {
    Some(Box::new(FakeEcdh {
        group,
        public: vec![seed; 32],
        peer: None,
    }))
}

struct Gateway {
    rt: Arc<Runtime>,
}

impl Gateway {
    fn new(
        link: &Arc<FakeLink>,
        me: &'static str,
        peer: &'static str,
        extra: &[(&str, &str)],
    ) -> Gateway {
        let peer_key = format!("peers.{peer}.sae_id");
        let mut settings = MapSettings::new(&[
            ("sae_id", me),
            ("kme.url", "https://kme.test"),
            ("kme.ca", "ca"),
            ("kme.cert", "cert"),
            ("kme.key", "key"),
            (&peer_key, peer),
        ]);
        for (k, v) in extra {
            settings.0.insert(k.to_string(), v.to_string());
        }
        let config = Config::load(&settings).unwrap();
        let link = link.clone();
        let rt = Runtime::new(config, |_: &KmeSettings| {
            Ok(Arc::new(FakeKme {
                link: link.clone(),
                me,
            }) as Arc<dyn KeySource>)
        })
        .unwrap();
        Gateway { rt: Arc::new(rt) }
    }

    /// An exchange for the connection named after the peer's SAE ID.
    fn exchange(&self, peer: &str, seed: u8) -> QkdKeyExchange {
        let group = if self.rt.config.dh_group.is_some() {
            31
        } else {
            0
        };
        let ecdh = if group == 0 { None } else { ecdh(seed, group) };
        let ctx = ExchangeContext {
            connection: Some(peer.into()),
            remote: None,
        };
        QkdKeyExchange::new(self.rt.clone(), ctx, ecdh)
    }
}

/// Runs the exchange in strongSwan's call order; returns both secrets or the first error.
fn run(i: &mut QkdKeyExchange, r: &mut QkdKeyExchange) -> Result<(Vec<u8>, Vec<u8>), KeError> {
    let request = i.get_public_key()?;
    r.set_public_key(&request)?;
    let response = r.get_public_key()?;
    i.set_public_key(&response)?;
    Ok((i.shared_secret()?.to_vec(), r.shared_secret()?.to_vec()))
}

fn pair(extra_a: &[(&str, &str)], extra_b: &[(&str, &str)]) -> (Arc<FakeLink>, Gateway, Gateway) {
    let link = Arc::new(FakeLink::default());
    let a = Gateway::new(&link, "sae-a", "sae-b", extra_a);
    let b = Gateway::new(&link, "sae-b", "sae-a", extra_b);
    (link, a, b)
}

#[test]
fn hybrid_secret_is_qkd_key_then_ecdh() {
    let (link, a, b) = pair(&[], &[]);
    let (mut i, mut r) = (a.exchange("sae-b", 1), b.exchange("sae-a", 2));
    let (si, sr) = run(&mut i, &mut r).unwrap();
    assert_eq!(si, sr);
    let key = link
        .store
        .lock()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .1
        .clone();
    assert_eq!(key.len(), 32);
    assert_eq!(
        &si[..32],
        &key[..],
        "secret starts with the KME's key bytes"
    );
    assert_eq!(si.len(), 32 + 32);
    assert_eq!(a.rt.counters.qkd_secrets.load(Ordering::Relaxed), 1);
    // Idempotent getters, as charon may call them again (COOKIE retry, listeners).
    assert_eq!(i.get_public_key().unwrap(), i.get_public_key().unwrap());
    assert_eq!(i.shared_secret().unwrap().to_vec(), si);
    assert_eq!(i.method(), config::DEFAULT_METHOD_ID);
}

use crate::config;

#[test]
fn roles_follow_the_exchange_initiator() {
    let (link, a, b) = pair(&[], &[]);
    // gw-b starts a rekey: it is the ETSI master for this key.
    let (mut i, mut r) = (b.exchange("sae-a", 3), a.exchange("sae-b", 4));
    let (si, sr) = run(&mut i, &mut r).unwrap();
    assert_eq!(si, sr);
    assert_eq!(
        link.store.lock().unwrap().values().next().unwrap().0,
        "sae-a",
        "slave is gw-a"
    );
}

#[test]
fn qkd_only_secret_is_exactly_the_key() {
    let (link, a, b) = pair(
        &[("dh_group", "none"), ("key_size", "512")],
        &[("dh_group", "none"), ("key_size", "512")],
    );
    let (si, sr) = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-a", 2)).unwrap();
    assert_eq!(si, sr);
    assert_eq!(si, link.store.lock().unwrap().values().next().unwrap().1);
}

#[test]
fn key_mismatch_is_reported_as_such() {
    let (link, a, b) = pair(&[], &[]);
    *link.corrupt_dec.lock().unwrap() = true;
    let err = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-a", 2)).unwrap_err();
    assert!(matches!(err, KeError::KeyMismatch { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("key confirmation failed for key IDs 00000000-0000-0000-0000-000000000000"));
}

#[test]
fn kme_outage_without_fallback_fails_with_reason() {
    let (link, a, b) = pair(&[], &[]);
    *link.dec_down.lock().unwrap() = true;
    let err = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-a", 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("KME https://kme.test unreachable"), "{err}");
    assert!(err.contains("fallback = none: QKD is mandatory"), "{err}");
    assert_eq!(b.rt.counters.failures.load(Ordering::Relaxed), 1);
}

#[test]
fn dh_fallback_needs_both_sides() {
    let dh = &[("fallback", "dh")][..];
    // Responder's KME down, both allow dh: ECDH-only secret, counted.
    let (link, a, b) = pair(dh, dh);
    *link.dec_down.lock().unwrap() = true;
    let (si, sr) = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-a", 2)).unwrap();
    assert_eq!((si.len(), &si), (32, &sr));
    assert_eq!(a.rt.counters.dh_fallbacks.load(Ordering::Relaxed), 1);
    assert_eq!(b.rt.counters.dh_fallbacks.load(Ordering::Relaxed), 1);

    // Initiator's KME has no key, both allow dh.
    let (link, a, b) = pair(dh, dh);
    link.enc_503s.store(1, Ordering::SeqCst);
    let (si, sr) = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-a", 2)).unwrap();
    assert_eq!((si.len(), &si), (32, &sr));

    // Only one side allows dh: failure on the side that does not.
    for (ea, eb, failing_responder) in [(dh, &[][..], true), (&[][..], dh, false)] {
        let (link, a, b) = pair(ea, eb);
        link.enc_503s.store(1, Ordering::SeqCst);
        let err = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-a", 2))
            .unwrap_err()
            .to_string();
        if failing_responder {
            assert!(err.contains("offered no QKD key"), "{err}");
        } else {
            assert!(err.contains("has no key available"), "{err}");
        }
        assert!(err.contains("fallback = none"), "{err}");
    }
}

#[test]
fn wait_timeout_outlasts_a_dry_kme() {
    let (link, a, b) = pair(&[("wait_timeout", "5s")], &[]);
    link.enc_503s.store(3, Ordering::SeqCst);
    let (si, sr) = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-a", 2)).unwrap();
    assert_eq!(si, sr);
    assert_eq!(link.enc_503s.load(Ordering::SeqCst), 0);
}

#[test]
fn responder_refuses_unknown_or_misbound_sae_ids() {
    let link = Arc::new(FakeLink::default());
    let a = Gateway::new(&link, "sae-a", "sae-b", &[]);
    let b = Gateway::new(&link, "sae-b", "sae-x", &[]);
    let err = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-x", 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("connection 'sae-x' expects 'sae-x'"), "{err}");
    let mut r = b.exchange("sae-x", 2);
    r.ctx.connection = None;
    let err = run(&mut a.exchange("sae-b", 1), &mut r)
        .unwrap_err()
        .to_string();
    assert!(err.contains("'sae-a', which is not configured"), "{err}");

    let b = Gateway::new(
        &link,
        "sae-b",
        "sae-a",
        &[("peers.sae-a.remote", "192.0.2.10")],
    );
    let mut r = b.exchange("sae-a", 2);
    r.ctx = ExchangeContext {
        connection: None,
        remote: Some("192.0.2.99".parse().unwrap()),
    };
    let err = run(&mut a.exchange("sae-b", 1), &mut r)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bound to another address"), "{err}");
    let mut r = b.exchange("sae-a", 2);
    r.ctx = ExchangeContext {
        connection: None,
        remote: Some("192.0.2.10".parse().unwrap()),
    };
    assert!(run(&mut a.exchange("sae-b", 1), &mut r).is_ok());
}

#[test]
fn initiator_finds_peer_by_name_or_remote() {
    let (_link, a, _b) = pair(&[("peers.sae-b.remote", "192.0.2.20")], &[]);
    let mut i = a.exchange("other-conn", 1);
    let err = i.get_public_key().unwrap_err().to_string();
    assert!(
        err.contains("add charon.plugins.qkd.peers.other-conn.sae_id"),
        "{err}"
    );
    let mut i = a.exchange("other-conn", 1);
    i.ctx.remote = Some("192.0.2.20".parse().unwrap());
    assert!(i.get_public_key().is_ok());
}

#[test]
fn mismatched_hybrid_groups_are_refused() {
    let (_link, a, b) = pair(&[], &[("dh_group", "none")]);
    let err = run(&mut a.exchange("sae-b", 1), &mut b.exchange("sae-a", 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dh_group = none here"), "{err}");
    let (_link, a, b) = pair(&[], &[]);
    let mut r = b.exchange("sae-a", 2);
    r.ecdh = ecdh(2, 19);
    let err = run(&mut a.exchange("sae-b", 1), &mut r)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("uses method 31 but dh_group here is method 19"),
        "{err}"
    );
}

#[test]
fn call_order_violations_fail_cleanly() {
    let (_link, a, b) = pair(&[], &[]);
    let mut i = a.exchange("sae-b", 1);
    assert!(matches!(i.shared_secret(), Err(KeError::State(_))));
    let mut r = b.exchange("sae-a", 2);
    let request = i.get_public_key().unwrap();
    r.set_public_key(&request).unwrap();
    assert!(matches!(r.set_public_key(&request), Err(KeError::State(_))));
    // A request fed back to its initiator is not a response.
    assert!(matches!(i.set_public_key(&request), Err(KeError::Wire(_))));
    // Garbage from the peer never panics.
    let mut r = b.exchange("sae-a", 2);
    assert!(r.set_public_key(&[1, 1, 0xff]).is_err());
}

#[test]
fn prefetched_keys_serve_the_initiator_while_the_kme_is_dry() {
    let (link, a, b) = pair(&[("prefetch", "2")], &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while link.store.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "buffer did not fill");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    link.enc_503s.store(1_000_000, Ordering::SeqCst);
    for seed in 0..2 {
        let (si, sr) = run(
            &mut a.exchange("sae-b", seed),
            &mut b.exchange("sae-a", seed + 10),
        )
        .unwrap();
        assert_eq!(si, sr);
    }
    let err = run(&mut a.exchange("sae-b", 5), &mut b.exchange("sae-a", 6))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no key available"), "{err}");
}

#[test]
fn never_an_empty_secret() {
    // An initiator without ECDH that allows dh gets a response claiming neither QKD key nor
    // ECDH share (a broken or hostile peer): refused, not an empty secret.
    let (_link, a, _b) = pair(&[("dh_group", "none"), ("fallback", "dh")], &[]);
    let mut i = a.exchange("sae-b", 1);
    let request = crate::wire::Request::decode(&i.get_public_key().unwrap()).unwrap();
    assert!(
        !request.allows_dh_fallback,
        "no ECDH half: nothing to fall back to"
    );
    let empty = crate::wire::Response {
        confirmation: None,
        ecdh: None,
    }
    .encode()
    .unwrap();
    let err = i.set_public_key(&empty).unwrap_err().to_string();
    assert!(err.contains("refusing an empty shared secret"), "{err}");
    assert!(i.shared_secret().is_err());
}
