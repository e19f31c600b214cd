//! State machine tests: two `QkdKeyExchange`s (gw-a, gw-b) against an in-memory KME pair.

use super::master::no_key_reason;
use super::*;
use crate::config::Config;
use crate::config::KmeSettings;
use crate::config::MapSettings;
use crate::kme::KeySource;
use crate::wire::{Keys, NoKeyReason, Request, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Both ends of one QKD link: what KME-A hands the master, KME-B hands the slave.
#[derive(Default)]
struct FakeLink {
    store: Mutex<HashMap<KeyId, (String, Vec<u8>)>>,
    counter: AtomicU32,
    /// Number of upcoming enc_keys calls answered with 503.
    enc_503s: AtomicU32,
    dec_down: Mutex<bool>,
    dec_calls: AtomicU32,
    corrupt_dec: Mutex<bool>,
    /// dec_keys answers again for keys it delivered (keys are not removed).
    repeat_dec: Mutex<bool>,
    /// Bits of every key enc_keys hands out whatever size is asked for (0: the size asked
    /// for), as KMEs that ignore `size` do; a set is then assembled from several keys.
    served_bits: AtomicU32,
    /// Key size (bits) the KMEs' status reports as the only one (0: any size, one key per
    /// set).
    status_bits: AtomicU32,
}

struct FakeKme {
    link: Arc<FakeLink>,
    me: &'static str,
}

impl FakeKme {
    fn enc_one(&self, slave: &SaeId, size_bits: u32) -> Result<Vec<QkdKey>, KmeError> {
        if self.link.enc_503s.load(Ordering::SeqCst) > 0 {
            self.link.enc_503s.fetch_sub(1, Ordering::SeqCst);
            return Err(KmeError::NoKeyAvailable {
                url: self.url().into(),
                message: "no key".into(),
            });
        }
        let key_bits = match self.link.served_bits.load(Ordering::SeqCst) {
            0 => size_bits,
            bits => bits,
        };
        (0..size_bits / key_bits)
            .map(|_| {
                let n = self.link.counter.fetch_add(1, Ordering::SeqCst);
                // Unique per link however many keys a test draws; byte 0 tells keys apart.
                let mut id = [n as u8; 16];
                id[12..].copy_from_slice(&n.to_be_bytes());
                let id = KeyId(id);
                let material: Vec<u8> = (0..key_bits / 8)
                    .map(|i| (i as u8) ^ (n as u8).wrapping_mul(31))
                    .collect();
                self.link
                    .store
                    .lock()
                    .unwrap()
                    .insert(id, (slave.to_string(), material.clone()));
                Ok(QkdKey {
                    id,
                    material: Zeroizing::new(material),
                })
            })
            .collect()
    }
}

impl KeySource for FakeKme {
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        sets: usize,
        _deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        (0..sets).map(|_| self.enc_one(slave, size_bits)).collect()
    }

    fn dec_keys(
        &self,
        _master: &SaeId,
        ids: &[KeyId],
        _deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        self.link.dec_calls.fetch_add(1, Ordering::SeqCst);
        if *self.link.dec_down.lock().unwrap() {
            return Err(KmeError::Unreachable {
                url: self.url().into(),
                reason: "connection refused".into(),
                maybe_served: false,
            });
        }
        // One-shot, as the spec wants: a key handed to the slave is gone from the link.
        let mut store = self.link.store.lock().unwrap();
        ids.iter()
            .map(|id| {
                let delivered = if *self.link.repeat_dec.lock().unwrap() {
                    store.get(id).cloned()
                } else {
                    store.remove(id)
                };
                let (slave, material) = delivered.ok_or_else(|| KmeError::Rejected {
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

    fn keys_per_set(&self, _: &SaeId, size_bits: u32, _: Instant) -> Result<usize, KmeError> {
        Ok(match self.link.status_bits.load(Ordering::SeqCst) {
            0 => 1,
            bits => (size_bits / bits) as usize,
        })
    }

    /// As if the KME's status were cached already: what keys_per_set answers.
    fn known_keys_per_set(&self, peer: &SaeId, size_bits: u32) -> Option<usize> {
        self.keys_per_set(peer, size_bits, Instant::now()).ok()
    }

    fn url(&self) -> &str {
        "https://kme.test"
    }
}

/// A toy "DH" whose secret is a hash of both public values: enough to test the plumbing.
struct FakeDh {
    method: u16,
    public: Vec<u8>,
    peer: Option<Vec<u8>>,
}

impl InnerKe for FakeDh {
    fn method(&self) -> u16 {
        self.method
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
        Ok(Zeroizing::new(hash(a, b)))
    }
}

fn hash(a: &[u8], b: &[u8]) -> Vec<u8> {
    Sha256::new()
        .chain_update(a)
        .chain_update(b)
        .finalize()
        .to_vec()
}

/// A toy KEM that behaves like strongSwan's ML-KEM objects: `public_value` is the
/// encapsulation key until `set_peer_value` encapsulated (responder), then the ciphertext.
/// Called out of KEM order, the two sides' secrets differ.
struct FakeKem {
    method: u16,
    seed: u8,
    /// Initiator: its encapsulation key. Responder: the initiator's.
    ek: Option<Vec<u8>>,
    ciphertext: Option<Vec<u8>>,
    secret: Option<Vec<u8>>,
}

impl InnerKe for FakeKem {
    fn method(&self) -> u16 {
        self.method
    }
    fn public_value(&mut self) -> Result<Vec<u8>, String> {
        if let Some(ct) = &self.ciphertext {
            return Ok(ct.clone());
        }
        Ok(self.ek.get_or_insert_with(|| vec![self.seed; 64]).clone())
    }
    fn set_peer_value(&mut self, value: &[u8]) -> Result<(), String> {
        match &self.ek {
            // Initiator: decapsulate.
            Some(ek) => self.secret = Some(hash(ek, value)),
            // Responder: encapsulate to the initiator's key.
            None => {
                let ct = vec![self.seed ^ 0x5a; 48];
                self.secret = Some(hash(value, &ct));
                self.ek = Some(value.to_vec());
                self.ciphertext = Some(ct);
            }
        }
        Ok(())
    }
    fn shared_secret(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        self.secret
            .clone()
            .map(Zeroizing::new)
            .ok_or("not encapsulated".into())
    }
}

/// The in-method key exchanges a gateway configured with `methods` would get from charon.
fn inner(seed: u8, methods: &[u16]) -> Vec<Box<dyn InnerKe>> {
    methods
        .iter()
        .map(|&method| -> Box<dyn InnerKe> {
            if (config::ML_KEM_512..=config::ML_KEM_1024).contains(&method) {
                Box::new(FakeKem {
                    method,
                    seed,
                    ek: None,
                    ciphertext: None,
                    secret: None,
                })
            } else {
                Box::new(FakeDh {
                    method,
                    public: vec![seed; 32],
                    peer: None,
                })
            }
        })
        .collect()
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
            // Supply tests opt in; elsewhere keys are fetched in the exchange.
            ("buffer", "0"),
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

    fn exchange_with(&self, ctx: ExchangeContext, seed: u8) -> QkdKeyExchange {
        let methods = self.rt.config.inner_methods();
        QkdKeyExchange::new(self.rt.clone(), ctx, inner(seed, &methods))
    }

    /// The initiator's side of an initial exchange (IKE_SA_INIT or IKE_INTERMEDIATE): it
    /// knows its connection, named after the peer's SAE ID here.
    fn initiator(&self, peer: &str, seed: u8) -> QkdKeyExchange {
        self.exchange_with(
            ExchangeContext {
                connection: Some(peer.into()),
                ..Default::default()
            },
            seed,
        )
    }

    /// The responder's side of an initial exchange: charon has no connection for the
    /// unauthenticated peer yet, only its address.
    fn responder(&self, seed: u8) -> QkdKeyExchange {
        self.exchange_with(ExchangeContext::default(), seed)
    }

    /// Either side of a rekey inside an established (authenticated) IKE SA.
    fn rekey(&self, peer: &str, seed: u8) -> QkdKeyExchange {
        self.exchange_with(
            ExchangeContext {
                connection: Some(peer.into()),
                established: true,
                ..Default::default()
            },
            seed,
        )
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

/// Runs an exchange that must succeed, with one secret on both sides.
fn agree(i: &mut QkdKeyExchange, r: &mut QkdKeyExchange) {
    let (si, sr) = run(i, r).expect("the exchange must succeed");
    assert_eq!(si, sr);
}

/// The first error of an exchange that must fail, as the log line would show it.
fn run_err(i: &mut QkdKeyExchange, r: &mut QkdKeyExchange) -> String {
    run(i, r).expect_err("the exchange must fail").to_string()
}

fn pair(extra_a: &[(&str, &str)], extra_b: &[(&str, &str)]) -> (Arc<FakeLink>, Gateway, Gateway) {
    let link = Arc::new(FakeLink::default());
    let a = Gateway::new(&link, "sae-a", "sae-b", extra_a);
    let b = Gateway::new(&link, "sae-b", "sae-a", extra_b);
    (link, a, b)
}

fn only_key(link: &FakeLink) -> Vec<u8> {
    let store = link.store.lock().unwrap();
    assert_eq!(store.len(), 1, "one key handed out and not fetched");
    store.values().next().unwrap().1.clone()
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[test]
fn hybrid_secret_is_qkd_key_then_ecdh() {
    let (link, a, b) = pair(&[], &[]);
    let mut i = a.initiator("sae-b", 1);
    let request = i.get_public_key().unwrap();
    let key = only_key(&link);
    let mut r = b.responder(2);
    r.set_public_key(&request).unwrap();
    i.set_public_key(&r.get_public_key().unwrap()).unwrap();
    let (si, sr) = (i.shared_secret().unwrap(), r.shared_secret().unwrap());
    assert_eq!(si, sr);
    assert_eq!(key.len(), 32);
    assert_eq!(
        &si[..32],
        &key[..],
        "secret starts with the KME's key bytes"
    );
    assert_eq!(si.len(), 32 + 32);
    assert_eq!(counter(&a.rt.counters.qkd_secrets), 1);
    // Idempotent getters, as charon may call them again (COOKIE retry, listeners).
    assert_eq!(i.get_public_key().unwrap(), request);
    assert_eq!(i.shared_secret().unwrap(), si);
    assert_eq!(i.method(), config::DEFAULT_METHOD_ID);
}

use crate::config;

/// kem = mlkem768 next to x25519: both shares travel in one round, the responder
/// encapsulates before it answers, and the secret is QKD key ‖ x25519 ‖ ML-KEM.
#[test]
fn in_method_ml_kem_secret_follows_the_qkd_key_and_the_ecdh_secret() {
    for (dh_group, methods) in [
        ("x25519", &[31, config::ML_KEM_768][..]),
        ("none", &[config::ML_KEM_768][..]),
    ] {
        let settings = [("dh_group", dh_group), ("kem", "mlkem768")];
        let (link, a, b) = pair(&settings, &settings);
        let mut i = a.initiator("sae-b", 1);
        let request = Request::decode(&i.get_public_key().unwrap()).unwrap();
        let sent: Vec<u16> = request.shares.iter().map(|s| s.method).collect();
        assert_eq!(sent, methods, "dh_group {dh_group}");
        let key = only_key(&link);
        let mut r = b.responder(2);
        r.set_public_key(&request.encode().unwrap()).unwrap();
        i.set_public_key(&r.get_public_key().unwrap()).unwrap();
        let (si, sr) = (i.shared_secret().unwrap(), r.shared_secret().unwrap());
        assert_eq!(si, sr, "dh_group {dh_group}");
        assert_eq!(&si[..32], &key[..], "QKD key first");
        let kem_secret = hash(&[1; 64], &[2 ^ 0x5a; 48]);
        assert_eq!(&si[si.len() - 32..], &kem_secret[..], "ML-KEM secret last");
        assert_eq!(si.len(), 32 + 32 * methods.len());
    }
}

#[test]
fn roles_follow_the_exchange_initiator() {
    let (link, a, b) = pair(&[], &[]);
    // gw-b starts a rekey: it is the ETSI master for this key, gw-a the slave.
    let mut i = b.rekey("sae-a", 3);
    let request = i.get_public_key().unwrap();
    assert_eq!(
        link.store.lock().unwrap().values().next().unwrap().0,
        "sae-a"
    );
    let mut r = a.rekey("sae-b", 4);
    r.set_public_key(&request).unwrap();
    i.set_public_key(&r.get_public_key().unwrap()).unwrap();
    assert_eq!(i.shared_secret().unwrap(), r.shared_secret().unwrap());
}

#[test]
fn qkd_only_secret_is_exactly_the_key() {
    let only = [("dh_group", "none"), ("key_size", "512")];
    let (link, a, b) = pair(&only, &only);
    let mut i = a.initiator("sae-b", 1);
    let request = i.get_public_key().unwrap();
    let key = only_key(&link);
    let mut r = b.responder(2);
    r.set_public_key(&request).unwrap();
    i.set_public_key(&r.get_public_key().unwrap()).unwrap();
    assert_eq!(&i.shared_secret().unwrap()[..], &key[..]);
    assert_eq!(i.shared_secret().unwrap(), r.shared_secret().unwrap());
}

#[test]
fn key_mismatch_is_reported_as_such() {
    let (link, a, b) = pair(&[], &[]);
    *link.corrupt_dec.lock().unwrap() = true;
    let err = run(&mut a.initiator("sae-b", 1), &mut b.responder(2)).unwrap_err();
    assert!(matches!(err, KeError::KeyMismatch { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("key confirmation failed for key IDs 00000000-0000-0000-0000-000000000000"));
    // The initiator detects it: counted as a failure and as a mismatch.
    assert_eq!(counter(&a.rt.counters.key_mismatches), 1);
    assert_eq!(counter(&a.rt.counters.failures), 1);
}

#[test]
fn slave_kme_outage_without_fallback_fails_with_reason() {
    let (link, a, b) = pair(&[], &[]);
    *link.dec_down.lock().unwrap() = true;
    let err = run_err(&mut a.initiator("sae-b", 1), &mut b.responder(2));
    assert!(err.contains("KME https://kme.test unreachable"), "{err}");
    assert!(err.contains("fallback = none: QKD is mandatory"), "{err}");
    // Before authentication: counted apart; in a rekey: a failure.
    assert_eq!(counter(&b.rt.counters.unauthenticated_refused), 1);
    assert_eq!(counter(&b.rt.counters.failures), 0);
    run_err(&mut a.rekey("sae-b", 1), &mut b.rekey("sae-a", 2));
    assert_eq!(counter(&b.rt.counters.failures), 1);
}

/// The heart of "fail where strongSwan retries": an initiator without QKD key still sends
/// well-formed KE data, saying why; the responder refuses it in-band; charon's later
/// queries of the failed exchange are quiet; the retry after recovery gets a fresh key.
#[test]
fn no_key_at_the_initiator_is_refused_in_band_and_the_retry_succeeds() {
    let (link, a, b) = pair(&[], &[]);
    link.enc_503s.store(1, Ordering::SeqCst);
    let mut i = a.rekey("sae-b", 1);
    let request = i
        .get_public_key()
        .expect("a dry KME never fails get_public_key");
    let decoded = Request::decode(&request).unwrap();
    assert_eq!(decoded.keys, Keys::Missing(NoKeyReason::KmeEmpty));
    assert_eq!(
        decoded.shares.len(),
        1,
        "well-formed: the ECDH share is there"
    );
    assert_eq!(counter(&a.rt.counters.no_key_sent), 1);

    let mut r = b.rekey("sae-a", 2);
    let err = r.set_public_key(&request).unwrap_err();
    assert!(matches!(err, KeError::PeerHasNoKey(_)), "{err}");
    assert_eq!(
        err.level(),
        log::Level::Warn,
        "a dry link is normal operation"
    );
    let text = err.to_string();
    assert!(
        text.contains(
            "SAE 'sae-a' started the exchange without QKD key (its KME has no key available)"
        ),
        "{text}"
    );
    assert!(text.contains("strongSwan keeps the current SA"), "{text}");
    assert_eq!(counter(&b.rt.counters.no_key_refused), 1);
    assert_eq!(counter(&b.rt.counters.failures), 0, "not a failure of ours");
    // charon may still ask the refused exchange for its data: quiet, not an error.
    for e in [
        r.get_public_key().unwrap_err(),
        r.shared_secret().unwrap_err(),
    ] {
        assert_eq!(e.level(), log::Level::Debug, "{e}");
    }
    // charon asks the refused rekey's initiator for its secret: it says what happened, and
    // quietly, as the no-key request was logged already. Not a call-order bug.
    let refused = i.shared_secret().unwrap_err();
    assert!(
        matches!(refused, KeError::PeerRefused { no_key_sent: true }),
        "{refused}"
    );
    assert_eq!(refused.level(), log::Level::Debug, "{refused}");

    // strongSwan's retry: new objects, the KME has keys again.
    agree(&mut a.rekey("sae-b", 3), &mut b.rekey("sae-a", 4));
    assert_eq!(counter(&a.rt.counters.qkd_secrets), 1);
}

#[test]
fn no_key_reasons_say_what_failed() {
    let (link, a, _b) = pair(&[("max_kme_requests", "1")], &[]);
    link.enc_503s.store(1, Ordering::SeqCst);
    let request = Request::decode(&a.initiator("sae-b", 1).get_public_key().unwrap()).unwrap();
    assert_eq!(request.keys, Keys::Missing(NoKeyReason::KmeEmpty));
    let _busy = a.rt.limiter.try_acquire(PeerIndex(0), true).unwrap();
    let request = Request::decode(&a.initiator("sae-b", 1).get_public_key().unwrap()).unwrap();
    assert_eq!(request.keys, Keys::Missing(NoKeyReason::Local));
    let url = || "https://kme.test".to_string();
    for (error, reason) in [
        (
            KmeError::Unreachable {
                url: url(),
                reason: "timeout".into(),
                maybe_served: true,
            },
            NoKeyReason::KmeUnreachable,
        ),
        (
            KmeError::Rejected {
                url: url(),
                status: 401,
                message: "no".into(),
            },
            NoKeyReason::KmeRefused,
        ),
    ] {
        let peer = SaeId::new("sae-b").unwrap();
        assert_eq!(no_key_reason(&KeError::Kme { peer, error }), reason);
    }
}

#[test]
fn a_full_request_cap_fails_fast_with_a_clear_line() {
    let (_link, a, b) = pair(&[("max_kme_requests", "1")], &[("max_kme_requests", "1")]);
    let held = b.rt.limiter.try_acquire(PeerIndex(0), true).unwrap();
    let err = run_err(&mut a.initiator("sae-b", 1), &mut b.responder(2));
    assert!(
        err.contains("1 KME requests already in flight (charon.plugins.qkd.max_kme_requests = 1)"),
        "{err}"
    );
    drop(held);
    assert!(run(&mut a.initiator("sae-b", 3), &mut b.responder(4)).is_ok());
}

#[test]
fn dh_fallback_needs_both_sides() {
    let dh = &[("fallback", "dh")][..];
    // Responder's KME down, both allow dh: ECDH-only secret, counted.
    let (link, a, b) = pair(dh, dh);
    *link.dec_down.lock().unwrap() = true;
    let (si, sr) = run(&mut a.initiator("sae-b", 1), &mut b.responder(2)).unwrap();
    assert_eq!((si.len(), &si), (32, &sr));
    assert_eq!(counter(&a.rt.counters.dh_fallbacks), 1);
    assert_eq!(counter(&b.rt.counters.dh_fallbacks), 1);

    // Initiator's KME has no key, both allow dh.
    let (link, a, b) = pair(dh, dh);
    link.enc_503s.store(1, Ordering::SeqCst);
    let (si, sr) = run(&mut a.initiator("sae-b", 1), &mut b.responder(2)).unwrap();
    assert_eq!((si.len(), &si), (32, &sr));

    // Only one side allows dh: refused by the responder either way, in-band.
    for (ea, eb, why) in [
        (dh, &[][..], "fallback = none: QKD is mandatory"),
        (&[][..], dh, "the peer does not allow fallback = dh"),
    ] {
        let (link, a, b) = pair(ea, eb);
        link.enc_503s.store(1, Ordering::SeqCst);
        let mut i = a.initiator("sae-b", 1);
        let request = i.get_public_key().unwrap();
        let err = b
            .responder(2)
            .set_public_key(&request)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("started the exchange without QKD key"),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn wait_timeout_outlasts_a_dry_kme() {
    let (link, a, b) = pair(&[("wait_timeout", "5s")], &[]);
    link.enc_503s.store(3, Ordering::SeqCst);
    agree(&mut a.initiator("sae-b", 1), &mut b.responder(2));
    assert_eq!(link.enc_503s.load(Ordering::SeqCst), 0);
}

#[test]
fn responder_refuses_unknown_or_misbound_sae_ids() {
    let link = Arc::new(FakeLink::default());
    let a = Gateway::new(&link, "sae-a", "sae-b", &[]);
    let b = Gateway::new(&link, "sae-b", "sae-x", &[]);
    // Before authentication only the configured SAE IDs count.
    let err = run_err(&mut a.initiator("sae-b", 1), &mut b.responder(2));
    assert!(err.contains("'sae-a', which is not configured"), "{err}");
    assert_eq!(
        link.dec_calls.load(Ordering::SeqCst),
        0,
        "no KME request for it"
    );
    // In a rekey the connection is known and binds the SAE ID.
    let err = run_err(&mut a.rekey("sae-b", 1), &mut b.rekey("sae-x", 2));
    assert!(err.contains("connection 'sae-x' expects 'sae-x'"), "{err}");

    let b = Gateway::new(
        &link,
        "sae-b",
        "sae-a",
        &[("peers.sae-a.remote", "192.0.2.10")],
    );
    let at = |addr: &str| ExchangeContext {
        remote: Some(addr.parse().unwrap()),
        ..Default::default()
    };
    let err = run_err(
        &mut a.initiator("sae-b", 1),
        &mut b.exchange_with(at("192.0.2.99"), 2),
    );
    assert!(err.contains("bound to another address"), "{err}");
    assert!(run(
        &mut a.initiator("sae-b", 1),
        &mut b.exchange_with(at("192.0.2.10"), 2)
    )
    .is_ok());
}

// ---- how many keys make up key_size -----------------------------------------------------

/// A request of gw-a's naming `ids`, as an unauthenticated peer could send it.
fn request_naming(ids: Vec<KeyId>) -> Vec<u8> {
    Request {
        sender: SaeId::new("sae-a").unwrap(),
        allows_dh_fallback: false,
        keys: Keys::Ids(ids),
        announce: vec![],
        shares: vec![crate::wire::Share {
            method: 31,
            value: vec![7; 32],
        }],
    }
    .encode()
    .unwrap()
}

/// A KME that ignores `size` (256-bit keys whatever is asked) while its status allows
/// 512: the master assembles key_size = 512 from two keys, and the slave, whose KME status
/// predicts one, takes the two it is named: the first exchange succeeds, rekeys too.
#[test]
fn a_kme_that_ignores_size_serves_key_size_from_several_keys() {
    let size = [("key_size", "512")];
    let (link, a, b) = pair(&size, &size);
    link.served_bits.store(256, Ordering::SeqCst);
    let mut i = a.initiator("sae-b", 1);
    let request = Request::decode(&i.get_public_key().unwrap()).unwrap();
    assert!(
        matches!(&request.keys, Keys::Ids(ids) if ids.len() == 2),
        "{request:?}"
    );
    let mut r = b.responder(2);
    r.set_public_key(&request.encode().unwrap()).unwrap();
    i.set_public_key(&r.get_public_key().unwrap()).unwrap();
    let secret = i.shared_secret().unwrap();
    assert_eq!(secret, r.shared_secret().unwrap());
    assert_eq!(secret.len(), 64 + 32, "512-bit QKD key + x25519");
    agree(&mut b.rekey("sae-a", 3), &mut a.rekey("sae-b", 4));
}

/// A peer may name at most key_size / 128 key IDs (here 2) unless our KME's status says its
/// keys are smaller: more are refused before any KME request, so an unauthenticated peer
/// cannot make us fetch (and burn) many keys.
#[test]
fn more_key_ids_than_key_size_can_take_are_refused_before_the_kme() {
    let (link, _a, b) = pair(&[], &[]);
    let ids: Vec<KeyId> = (1..=3).map(|n| KeyId([n; 16])).collect();
    let err = b
        .responder(2)
        .set_public_key(&request_naming(ids.clone()))
        .unwrap_err()
        .to_string();
    for part in [
        "SAE 'sae-a' named 3 key IDs",
        &format_ids(&ids),
        "key_size = 256",
        "at most 2 keys of 128 bits or more, or the 1 that KME https://kme.test plans",
        "check key_size on both peers",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert_eq!(link.dec_calls.load(Ordering::SeqCst), 0);
    // Two are plausible for 256 bits (two keys of 128): fetched (unknown here, so the KME
    // refuses them).
    let err = b
        .responder(2)
        .set_public_key(&request_naming(ids[..2].to_vec()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found on KME"), "{err}");
    assert_eq!(link.dec_calls.load(Ordering::SeqCst), 1);
}

/// A KME whose status says it serves only 64-bit keys: key_size = 256 takes four, more than
/// keys of 128 bits would, and the slave accepts what its KME's status plans.
#[test]
fn a_kme_with_small_keys_may_need_more_ids_than_the_fixed_bound() {
    let (link, a, b) = pair(&[], &[]);
    link.served_bits.store(64, Ordering::SeqCst);
    link.status_bits.store(64, Ordering::SeqCst);
    let mut i = a.initiator("sae-b", 1);
    let request = Request::decode(&i.get_public_key().unwrap()).unwrap();
    assert!(
        matches!(&request.keys, Keys::Ids(ids) if ids.len() == 4),
        "{request:?}"
    );
    let mut r = b.responder(2);
    r.set_public_key(&request.encode().unwrap()).unwrap();
    i.set_public_key(&r.get_public_key().unwrap()).unwrap();
    assert_eq!(i.shared_secret().unwrap(), r.shared_secret().unwrap());
}

/// What the named keys deliver must add up to key_size exactly, whether one key or several
/// carry it: otherwise a precise configuration error, after the fetch.
#[test]
fn delivered_bits_must_add_up_to_key_size() {
    for served in [0, 256] {
        let (link, a, b) = pair(&[("key_size", "512")], &[]);
        link.served_bits.store(served, Ordering::SeqCst);
        let err = run_err(&mut a.initiator("sae-b", 1), &mut b.responder(2));
        let keys = if served == 0 { 1 } else { 2 };
        for part in [
            "SAE 'sae-a' named key IDs".to_string(),
            format!("{keys} key(s) of 512 bits in all from KME https://kme.test"),
            "key_size = 256 here".into(),
            "configure the same key_size on both peers".into(),
        ] {
            assert!(err.contains(&part), "{part}: {err}");
        }
        assert_eq!(link.dec_calls.load(Ordering::SeqCst), 1);
    }
}

/// The inbound cache follows the same rule: keys fetched ahead are not handed out for a
/// request naming more key IDs than key_size can take; they stay cached.
#[test]
fn too_many_key_ids_are_refused_even_when_they_are_cached() {
    let buf = [("buffer", "4")];
    let (link, a, b) = pair(&buf, &buf);
    let ids: Vec<KeyId> =
        a.rt.source(PeerIndex(0))
            .enc_keys(&SaeId::new("sae-b").unwrap(), 256, 3, Instant::now())
            .unwrap()
            .into_iter()
            .flatten()
            .map(|k| k.id)
            .collect();
    b.rt.supply.start();
    b.rt.supply.accept_announcement(PeerIndex(0), &ids, 1);
    wait_for("the announced keys cached", || {
        b.rt.supply.levels(PeerIndex(0)).inbound_keys == 3
    });
    let calls = link.dec_calls.load(Ordering::SeqCst);
    let err = b
        .rekey("sae-a", 2)
        .set_public_key(&request_naming(ids))
        .unwrap_err()
        .to_string();
    assert!(err.contains("named 3 key IDs"), "{err}");
    assert_eq!(b.rt.supply.levels(PeerIndex(0)).inbound_keys, 3);
    assert_eq!(link.dec_calls.load(Ordering::SeqCst), calls);
}

/// With buffers, a set of several keys goes through the outbound queue and the announced
/// keys through the peer's inbound cache, under the same rule.
#[test]
fn sets_of_several_keys_come_from_the_buffers_too() {
    let buf = [("buffer", "2"), ("key_size", "512")];
    let (link, a, b) = pair(&buf, &buf);
    link.served_bits.store(256, Ordering::SeqCst);
    // Only gw-a starts rekeys, so gw-b takes keys only from its inbound cache.
    wait_for("a two-key set taken from gw-b's inbound cache", || {
        agree(&mut a.rekey("sae-b", 1), &mut b.rekey("sae-a", 2));
        refilled(&[&a, &b]);
        counter(&b.rt.supply.counters().used) >= 2
    });
}

#[test]
fn a_peer_with_our_own_sae_id_is_a_configuration_error_not_a_key_mismatch() {
    let link = Arc::new(FakeLink::default());
    let a = Gateway::new(&link, "sae-a", "sae-b", &[]);
    // gw-b misconfigured with gw-a's SAE ID (and that as its peer's).
    let b = Gateway::new(&link, "sae-a", "sae-a", &[]);
    let err = run_err(&mut a.initiator("sae-b", 1), &mut b.responder(2));
    assert!(err.contains("peer claims our own SAE ID 'sae-a'"), "{err}");
    assert_eq!(link.dec_calls.load(Ordering::SeqCst), 0);
}

#[test]
fn initiator_finds_peer_by_name_or_remote() {
    let (_link, a, _b) = pair(&[("peers.sae-b.remote", "192.0.2.20")], &[]);
    let mut i = a.initiator("other-conn", 1);
    let err = i.get_public_key().unwrap_err().to_string();
    assert!(
        err.contains("add charon.plugins.qkd.peers.other-conn.sae_id"),
        "{err}"
    );
    let mut i = a.initiator("other-conn", 1);
    i.ctx.remote = Some("192.0.2.20".parse().unwrap());
    assert!(i.get_public_key().is_ok());
}

#[test]
fn mismatched_hybrid_groups_are_refused() {
    let (_link, a, b) = pair(&[], &[("dh_group", "none")]);
    let err = run_err(&mut a.initiator("sae-b", 1), &mut b.responder(2));
    assert!(
        err.contains(
            "peer's qkd method carries curve25519 but no in-method key exchange \
             (dh_group = kem = none) here"
        ),
        "{err}"
    );
    let (link, a, b) = pair(&[], &[("dh_group", "ecp256")]);
    let err = run_err(&mut a.initiator("sae-b", 1), &mut b.responder(2));
    assert!(err.contains("carries curve25519 but ecp256 here"), "{err}");
    // Checked before the responder asks its KME (the initiator's key stays unfetched).
    assert_eq!(link.dec_calls.load(Ordering::SeqCst), 0);
    let (_link, a, b) = pair(&[("kem", "mlkem768")], &[("kem", "mlkem1024")]);
    let err = run_err(&mut a.initiator("sae-b", 1), &mut b.responder(2));
    assert!(
        err.contains("carries curve25519 + mlkem768 but curve25519 + mlkem1024 here; configure the same dh_group and kem on both"),
        "{err}"
    );
}

#[test]
fn call_order_violations_fail_cleanly() {
    let (_link, a, b) = pair(&[], &[]);
    let mut i = a.initiator("sae-b", 1);
    assert!(matches!(i.shared_secret(), Err(KeError::OutOfOrder(_))));
    let mut r = b.responder(2);
    let request = i.get_public_key().unwrap();
    r.set_public_key(&request).unwrap();
    assert!(matches!(
        r.set_public_key(&request),
        Err(KeError::OutOfOrder(_))
    ));
    // A request fed back to its initiator is not a response.
    assert!(matches!(i.set_public_key(&request), Err(KeError::Wire(_))));
    // Garbage from the peer is refused with the codec's reason.
    let err = b.responder(2).set_public_key(&[2, 1, 0xff]).unwrap_err();
    assert!(matches!(err, KeError::Wire(_)), "{err}");
}

#[test]
fn never_an_empty_secret() {
    // An initiator without ECDH that allows dh gets a response claiming neither QKD key nor
    // ECDH share (a broken or hostile peer): refused, not an empty secret.
    let (_link, a, _b) = pair(&[("dh_group", "none"), ("fallback", "dh")], &[]);
    let mut i = a.initiator("sae-b", 1);
    let request = Request::decode(&i.get_public_key().unwrap()).unwrap();
    assert!(
        !request.allows_dh_fallback,
        "no ECDH half: nothing to fall back to"
    );
    let empty = Response {
        confirmation: None,
        announce: vec![],
        shares: vec![],
    }
    .encode()
    .unwrap();
    let err = i.set_public_key(&empty).unwrap_err().to_string();
    assert!(err.contains("refusing an empty shared secret"), "{err}");
    assert!(i.shared_secret().is_err());
}

// ---- key supply through exchanges -------------------------------------------------------

/// Waits until the gateways' outbound queues are at their depth and no announced key is
/// still to fetch.
fn refilled(gateways: &[&Gateway]) {
    wait_for("refills done", || {
        gateways.iter().all(|g| {
            let l = g.rt.supply.levels(PeerIndex(0));
            l.outbound_sets >= l.target_sets && l.pending_keys == 0
        })
    });
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not reached in 5 s");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// With buffers, both directions are served from keys fetched ahead: after rekeys each
/// way (which carry the announcements), both KMEs can be down and rekeys still get fresh,
/// confirmed QKD keys until the buffers run out; then the next one is refused in-band.
#[test]
fn announced_keys_carry_rekeys_while_both_kmes_are_down() {
    let buf = [("buffer", "3")];
    let (link, a, b) = pair(&buf, &buf);
    // Exchanges start the supply; each announces what its side queued, and the next waits
    // until the refills are done, so the queues are full again.
    wait_for("announced keys cached on both sides", || {
        run(&mut a.rekey("sae-b", 1), &mut b.rekey("sae-a", 2)).unwrap();
        refilled(&[&a, &b]);
        run(&mut b.rekey("sae-a", 3), &mut a.rekey("sae-b", 4)).unwrap();
        refilled(&[&a, &b]);
        a.rt.supply.levels(PeerIndex(0)).inbound_keys >= 2
            && b.rt.supply.levels(PeerIndex(0)).inbound_keys >= 2
    });
    link.enc_503s.store(u32::MAX, Ordering::SeqCst);
    *link.dec_down.lock().unwrap() = true;
    let used_before = [&a, &b].map(|gw| counter(&gw.rt.supply.counters().used));
    for seed in 0..2 {
        agree(
            &mut a.rekey("sae-b", seed),
            &mut b.rekey("sae-a", seed + 10),
        );
        agree(
            &mut b.rekey("sae-a", seed),
            &mut a.rekey("sae-b", seed + 10),
        );
    }
    // With both KMEs down, every key came from a buffer: 2 as master, 2 as slave each.
    for (gw, before) in [&a, &b].into_iter().zip(used_before) {
        assert_eq!(counter(&gw.rt.supply.counters().used) - before, 4);
    }
    // Once a's queue is empty, its next rekey starts without key and is refused in-band.
    let refused = (0..4).any(|seed| {
        let mut i = a.rekey("sae-b", seed);
        let request = Request::decode(&i.get_public_key().unwrap()).unwrap();
        request.keys == Keys::Missing(NoKeyReason::KmeEmpty)
            || run(&mut i, &mut b.rekey("sae-a", seed + 10)).is_err()
    });
    assert!(refused, "the buffers ran out at some point");
}

/// Initial exchanges announce too, so the next initial exchange with the peer finds its key
/// in place; the receiver acts on an announcement only once the IKE SA that carried it is
/// authenticated, and on nothing from an IKE SA that never is.
#[test]
fn initial_exchange_announcements_wait_for_authentication() {
    let buf = [("buffer", "3")];
    let (_link, a, b) = pair(&buf, &buf);
    a.rt.supply.start();
    wait_for("a's queue", || {
        a.rt.supply.levels(PeerIndex(0)).outbound_sets == 3
    });
    let setup = |unique_id| ExchangeContext {
        unique_id: Some(unique_id),
        ..Default::default()
    };
    let mut i = a.exchange_with(
        ExchangeContext {
            connection: Some("sae-b".into()),
            ..setup(1)
        },
        1,
    );
    let request = Request::decode(&i.get_public_key().unwrap()).unwrap();
    // The two sets a keeps queued, and the refill's third when it was quick enough.
    let announced = request.announce.len();
    assert!((2..=3).contains(&announced), "{announced} announced");
    // Held until IKE SA 21 is authenticated, then fetched ahead.
    let mut r = b.exchange_with(setup(21), 3);
    r.set_public_key(&request.encode().unwrap()).unwrap();
    i.set_public_key(&r.get_public_key().unwrap()).unwrap();
    b.rt.supply.start();
    assert_eq!(
        b.rt.supply.levels(PeerIndex(0)).pending_keys
            + b.rt.supply.levels(PeerIndex(0)).inbound_keys,
        0
    );
    b.rt.supply.authenticated(21);
    wait_for("fetched ahead", || {
        b.rt.supply.levels(PeerIndex(0)).inbound_keys == announced
    });
    // The next initial exchange takes a's next set, which b already holds.
    let dec_calls = _link.dec_calls.load(Ordering::SeqCst);
    agree(
        &mut a.exchange_with(
            ExchangeContext {
                connection: Some("sae-b".into()),
                ..setup(2)
            },
            4,
        ),
        &mut b.exchange_with(setup(22), 5),
    );
    assert_eq!(
        _link.dec_calls.load(Ordering::SeqCst),
        dec_calls,
        "no dec_keys in the second initial exchange"
    );
}

/// An announcement is a hint: a stale one (keys the master never uses, e.g. after its
/// restart) costs nothing but the cached keys, which expire; exchanges stay correct.
#[test]
fn stale_announcements_never_break_an_exchange() {
    let buf = [("buffer", "2")];
    let (_link, a, b) = pair(&buf, &buf);
    wait_for("announcement cached", || {
        run(&mut a.rekey("sae-b", 1), &mut b.rekey("sae-a", 2)).unwrap();
        b.rt.supply.levels(PeerIndex(0)).inbound_keys > 0
    });
    // gw-a restarts: its queue (announced to b) is gone, new keys are used instead.
    let link2 = _link.clone();
    let a2 = Gateway::new(&link2, "sae-a", "sae-b", &buf);
    agree(&mut a2.rekey("sae-b", 5), &mut b.rekey("sae-a", 6));
}

/// A KME whose dec_keys answers twice for one key ID must not key two SAs with that key:
/// a replayed request (same key IDs) is refused the second time.
#[test]
fn the_slave_never_uses_a_key_id_twice() {
    let (link, a, b) = pair(&[], &[]);
    *link.repeat_dec.lock().unwrap() = true;
    let request = a.initiator("sae-b", 1).get_public_key().unwrap();
    b.responder(2).set_public_key(&request).unwrap();
    let err = b
        .responder(3)
        .set_public_key(&request)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already keyed an earlier exchange"), "{err}");
}

// ---- what peers can make us do before authentication ----------------------------------

/// Every log line of the calling thread while `f` runs (level, text).
fn logged<R>(f: impl FnOnce() -> R) -> (R, Vec<(log::Level, String)>) {
    use std::cell::RefCell;
    thread_local! {
        static LINES: RefCell<Option<Vec<(log::Level, String)>>> = const { RefCell::new(None) };
    }
    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            LINES.with(|lines| {
                if let Some(lines) = lines.borrow_mut().as_mut() {
                    lines.push((record.level(), record.args().to_string()));
                }
            });
        }
        fn flush(&self) {}
    }
    static CAPTURE: Capture = Capture;
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Trace);
    LINES.with(|lines| *lines.borrow_mut() = Some(Vec::new()));
    let result = f();
    let lines = LINES.with(|lines| lines.borrow_mut().take().unwrap());
    (result, lines)
}

/// A flood of bad exchanges before authentication: a few lines and then silence, counted
/// apart from the failures of authenticated peers; their failures are still all logged.
#[test]
fn a_flood_before_authentication_cannot_fill_the_log() {
    let (link, a, b) = pair(&[], &[]);
    // Not a configured SAE ID at gw-b: refused, before any KME request.
    let mallory = Gateway::new(&link, "sae-m", "sae-b", &[]);
    let flood: Vec<Vec<u8>> = (0..200)
        .map(|seed| mallory.initiator("sae-b", seed).get_public_key().unwrap())
        .collect();
    let started = Instant::now();
    let (_, lines) = logged(|| {
        for (seed, request) in flood.iter().enumerate() {
            let mut r = b.responder(seed as u8);
            // What charon's call does with the error: the exchange logs it.
            let error = r.set_public_key(request).unwrap_err();
            r.log_error(&error);
        }
    });
    let intervals = (started.elapsed().as_secs() / loglimit::INTERVAL.as_secs()) as usize + 1;
    let bound = loglimit::BURST as usize + 2 * intervals;
    assert!(
        lines.len() <= bound,
        "{} lines for 200 exchanges (bound {bound})",
        lines.len()
    );
    assert_eq!(counter(&b.rt.counters.unauthenticated_refused), 200);
    assert_eq!(counter(&b.rt.counters.failures), 0);

    // An authenticated peer's failures are not limited.
    *link.dec_down.lock().unwrap() = true;
    let rekeys: Vec<Vec<u8>> = (0..20)
        .map(|seed| a.rekey("sae-b", seed).get_public_key().unwrap())
        .collect();
    let (_, lines) = logged(|| {
        for (seed, request) in rekeys.iter().enumerate() {
            let mut r = b.rekey("sae-a", seed as u8);
            let error = r.set_public_key(request).unwrap_err();
            r.log_error(&error);
        }
    });
    let unreachable = lines
        .iter()
        .filter(|(_, l)| l.contains("unreachable"))
        .count();
    assert_eq!(unreachable, 20, "{lines:?}");
    assert_eq!(counter(&b.rt.counters.failures), 20);
}

/// Exchanges before authentication that a peer can complete without any key (it asks for
/// the DH fallback, which we allow) cannot fill the log either; each is still counted as a
/// DH fallback (better a false alarm than a hidden downgrade).
#[test]
fn a_flood_of_fallback_requests_before_authentication_cannot_fill_the_log() {
    let dh = [("fallback", "dh")];
    let (link, mallory, b) = pair(&dh, &dh);
    link.enc_503s.store(u32::MAX, Ordering::SeqCst);
    let flood: Vec<Vec<u8>> = (0..200)
        .map(|seed| mallory.initiator("sae-b", seed).get_public_key().unwrap())
        .collect();
    let started = Instant::now();
    let (_, lines) = logged(|| {
        for (seed, request) in flood.iter().enumerate() {
            b.responder(seed as u8).set_public_key(request).unwrap();
        }
    });
    let intervals = (started.elapsed().as_secs() / loglimit::INTERVAL.as_secs()) as usize + 1;
    let bound = loglimit::BURST as usize + 2 * intervals;
    assert!(
        lines.len() <= bound,
        "{} lines for 200 exchanges (bound {bound})",
        lines.len()
    );
    assert_eq!(counter(&b.rt.counters.dh_fallbacks), 200);
}

/// Takes every request slot `limiter` gives to work for `peer` of that kind.
fn exhaust(
    limiter: &crate::supply::RequestLimiter,
    authenticated: bool,
) -> Vec<crate::supply::Permit> {
    std::iter::from_fn(|| limiter.try_acquire(PeerIndex(0), authenticated).ok()).collect()
}

/// Unauthenticated exchanges holding every slot they may (a flood against a slow KME)
/// neither starve authenticated rekeys nor turn exchanges into DH fallbacks.
#[test]
fn a_flood_before_authentication_neither_starves_rekeys_nor_downgrades() {
    let dh = [("fallback", "dh")];
    let (_link, a, b) = pair(&dh, &dh);
    let flood = exhaust(&b.rt.limiter, false);
    assert!(!flood.is_empty());
    // A new IKE SA meanwhile: no slot for its unauthenticated responder, and no fallback.
    let mut r = b.responder(2);
    let err = run(&mut a.initiator("sae-b", 1), &mut r).unwrap_err();
    assert!(matches!(err, KeError::Busy(_)), "{err}");
    assert_eq!(err.level(), log::Level::Warn, "a refusal, retried: {err}");
    assert!(err.to_string().contains("not falling back to DH"), "{err}");
    // Rekeys of the authenticated IKE SA still reach the KME and get QKD keys.
    for seed in 0..3 {
        agree(
            &mut a.rekey("sae-b", seed),
            &mut b.rekey("sae-a", seed + 10),
        );
    }
    assert_eq!(counter(&b.rt.counters.qkd_secrets), 3);
    for gw in [&a, &b] {
        assert_eq!(counter(&gw.rt.counters.dh_fallbacks), 0);
    }
    drop(flood);
}

/// An initiator whose own request budget is full says "no key" and does not offer the DH
/// fallback: the responder refuses in-band and strongSwan retries.
#[test]
fn a_full_request_budget_never_offers_the_dh_fallback() {
    let dh = [("fallback", "dh")];
    let (_link, a, b) = pair(&dh, &dh);
    let _held = exhaust(&a.rt.limiter, true);
    let mut i = a.rekey("sae-b", 1);
    let request = Request::decode(&i.get_public_key().unwrap()).unwrap();
    assert_eq!(request.keys, Keys::Missing(NoKeyReason::Local));
    assert!(!request.allows_dh_fallback);
    let err = b
        .rekey("sae-a", 2)
        .set_public_key(&request.encode().unwrap())
        .unwrap_err();
    assert!(matches!(err, KeError::PeerHasNoKey(_)), "{err}");
    assert_eq!(counter(&b.rt.counters.dh_fallbacks), 0);
}

/// A request naming more key IDs than a set takes is refused on what is known, before it
/// costs a request slot (with every slot taken it is still refused for what it is).
#[test]
fn too_many_key_ids_are_refused_before_taking_a_request_slot() {
    let (link, _a, b) = pair(&[], &[]);
    let _held = exhaust(&b.rt.limiter, true);
    let request = Request {
        sender: SaeId::new("sae-a").unwrap(),
        allows_dh_fallback: false,
        // More than 256 bits in keys of 128 bits or more can need.
        keys: Keys::Ids(vec![KeyId([1; 16]), KeyId([2; 16]), KeyId([3; 16])]),
        announce: vec![],
        shares: vec![crate::wire::Share {
            method: 31,
            value: vec![7; 32],
        }],
    };
    let err = b
        .responder(2)
        .set_public_key(&request.encode().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("named 3 key IDs"), "{err}");
    assert_eq!(link.dec_calls.load(Ordering::SeqCst), 0);
}

/// An initiator whose rekey the peer refused (its KME could not deliver, fallback = none)
/// is asked for its secret by charon: it says the peer refused, at INFO, not "unexpected
/// call order".
#[test]
fn a_refused_rekey_is_reported_as_a_refusal_not_a_call_order_bug() {
    let (link, a, b) = pair(&[], &[]);
    *link.dec_down.lock().unwrap() = true;
    let mut i = a.rekey("sae-b", 1);
    let request = i.get_public_key().unwrap();
    assert!(b.rekey("sae-a", 2).set_public_key(&request).is_err());
    let (_, lines) = logged(|| i.log_error(&i.shared_secret().unwrap_err()));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let (level, line) = &lines[0];
    assert_eq!(*level, log::Level::Info, "{line}");
    assert!(line.contains("the peer refused the exchange"), "{line}");
    assert!(!line.contains("unexpected call order"), "{line}");
}

/// Key IDs an authenticated peer named that our KME does not know (a KME pair replacing
/// unfetched keys): our own queue towards that peer turns to one set at a time before one of
/// our exchanges fails too. An unauthenticated peer's IDs change nothing.
#[test]
fn missing_keys_named_by_an_authenticated_peer_mean_a_replacing_kme() {
    let buf = [("buffer", "2")];
    let (_link, _a, b) = pair(&buf, &buf);
    let request = |seed: u8| Request {
        sender: SaeId::new("sae-a").unwrap(),
        allows_dh_fallback: false,
        keys: Keys::Ids(vec![KeyId([seed; 16])]),
        announce: vec![],
        shares: vec![crate::wire::Share {
            method: 31,
            value: vec![7; 32],
        }],
    };
    b.responder(2)
        .set_public_key(&request(0xa1).encode().unwrap())
        .unwrap_err();
    assert!(
        !b.rt.supply.levels(PeerIndex(0)).replacing_kme,
        "not from an unauthenticated peer"
    );
    b.rekey("sae-a", 3)
        .set_public_key(&request(0xa2).encode().unwrap())
        .unwrap_err();
    assert!(b.rt.supply.levels(PeerIndex(0)).replacing_kme);
}
