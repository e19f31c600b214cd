//! The `qkd` key exchange as a state machine, independent of charon.
//!
//! strongSwan drives a key exchange object with three calls whose order reveals the role
//! (docs/strongswan-abi.md, "Key exchange objects"): the initiator calls `get_public_key`
//! first, the responder `set_public_key` first (KEM order). The initiator of each exchange
//! is the ETSI master (enc_keys), the responder the slave (dec_keys), so roles are per
//! exchange: whoever starts a rekey fetches the new key.

mod audit;
mod confirm;
mod error;
mod loglimit;
mod master;
mod runtime;
mod slave;

pub use error::KeError;
pub use runtime::{Counters, Runtime};

use crate::config::{method_name, Fallback, PeerConfig};
use crate::ids::{format_ids, KeyId, PeerIndex, SaeId};
use crate::kme::{KmeError, QkdKey};
use crate::wire::Share;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A key exchange carried inside the qkd method (an ECDH, an ML-KEM), provided by
/// strongSwan's crypto factory in charon, by fakes in tests. Called in KEM order: the
/// initiator `public_value` then `set_peer_value`; the responder `set_peer_value` (where an
/// ML-KEM encapsulates) then `public_value` (its ciphertext).
pub trait InnerKe: Send {
    /// strongSwan key exchange method number (e.g. 31 = CURVE_25519, 36 = ML_KEM_768).
    fn method(&self) -> u16;
    fn public_value(&mut self) -> Result<Vec<u8>, String>;
    fn set_peer_value(&mut self, value: &[u8]) -> Result<(), String>;
    fn shared_secret(&mut self) -> Result<Zeroizing<Vec<u8>>, String>;
}

/// What charon tells us about the IKE SA an exchange belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeContext {
    /// Connection (peer_cfg) name; None while a responder has not yet matched a config.
    pub connection: Option<String>,
    pub remote: Option<IpAddr>,
    /// The IKE SA is established, i.e. the peer is authenticated and the exchange is
    /// encrypted (a rekey). Announcements are sent and honoured only then.
    pub established: bool,
    /// charon's unique ID of the IKE SA (`<conn|ID>` in its log), for the audit line.
    pub unique_id: Option<u32>,
}

/// QKD key material obtained for one exchange.
struct QkdMaterial {
    key_ids: Vec<KeyId>,
    key: Zeroizing<Vec<u8>>,
}

impl QkdMaterial {
    fn from_keys(keys: Vec<QkdKey>) -> QkdMaterial {
        // Exact capacity first: growing a Vec would free unwiped copies of key bytes.
        let mut key = Zeroizing::new(Vec::with_capacity(
            keys.iter().map(|k| k.material.len()).sum(),
        ));
        let key_ids = keys
            .into_iter()
            .map(|k| {
                key.extend_from_slice(&k.material);
                k.id
            })
            .collect();
        QkdMaterial { key_ids, key }
    }

    fn ids(&self) -> String {
        format_ids(&self.key_ids)
    }

    /// The line operators (and the interop tests) match key IDs across gateways with.
    fn log_obtained(&self, role: &str, peer_sae: &SaeId, peer: &PeerConfig, from: &str) {
        log::info!(
            "qkd: {role} for SAE '{peer_sae}' (connection '{}'): got {} bits {from} under key IDs {}",
            peer.name,
            self.key.len() * 8,
            self.ids()
        );
    }
}

enum Role {
    Initiator {
        peer: PeerIndex,
        qkd: Option<QkdMaterial>,
        /// The keys came from the outbound queue, from this enc_keys (see Supply::unconfirmed).
        queued: Option<u64>,
        /// Held until the exchange is over.
        outstanding: crate::supply::Outstanding,
    },
    /// The initiator has processed the response (successfully or not).
    InitiatorDone,
    Responder,
}

pub struct QkdKeyExchange {
    rt: Arc<Runtime>,
    ctx: ExchangeContext,
    /// dh_group then kem (Config::inner_methods), each a strongSwan key exchange object.
    inner: Vec<Box<dyn InnerKe>>,
    role: Option<Role>,
    /// Our KE data (request or response), returned on every `get_public_key`.
    own_data: Option<Vec<u8>>,
    secret: Option<Zeroizing<Vec<u8>>>,
    failed: bool,
    audit: audit::Audit,
}

impl QkdKeyExchange {
    pub fn new(
        rt: Arc<Runtime>,
        ctx: ExchangeContext,
        inner: Vec<Box<dyn InnerKe>>,
    ) -> QkdKeyExchange {
        rt.supply.start();
        QkdKeyExchange {
            rt,
            ctx,
            inner,
            role: None,
            own_data: None,
            secret: None,
            failed: false,
            audit: audit::Audit::default(),
        }
    }

    /// Initiator: take or fetch keys and build the request — one that says "no key" when
    /// there is none, so the responder refuses in-band. Responder: the prepared response.
    pub fn get_public_key(&mut self) -> Result<Vec<u8>, KeError> {
        if let Some(data) = &self.own_data {
            return Ok(data.clone());
        }
        if self.failed {
            return Err(KeError::AlreadyFailed);
        }
        if self.role.is_some() {
            return Err(KeError::OutOfOrder(
                "get_public_key before set_public_key on the responder",
            ));
        }
        let result = self.initiate();
        self.note_failure(result)
    }

    /// Initiator: verify the response and derive the secret. Responder: process the request.
    pub fn set_public_key(&mut self, data: &[u8]) -> Result<(), KeError> {
        if self.failed {
            return Err(KeError::AlreadyFailed);
        }
        let result = match self.role.take() {
            None => self.respond(data),
            Some(Role::Initiator {
                peer,
                qkd,
                queued,
                outstanding,
            }) => {
                self.role = Some(Role::InitiatorDone);
                let answered = qkd.is_some();
                let result = self.complete(data, peer, qkd, queued);
                if answered && result.is_ok() {
                    outstanding.answered();
                }
                result
            }
            Some(done) => {
                self.role = Some(done);
                Err(KeError::OutOfOrder("set_public_key called twice"))
            }
        };
        self.note_failure(result)
    }

    pub fn shared_secret(&self) -> Result<Zeroizing<Vec<u8>>, KeError> {
        if self.failed {
            return Err(KeError::AlreadyFailed);
        }
        match (&self.secret, &self.role) {
            (Some(secret), _) => Ok(secret.clone()),
            // Our request went out but charon never passed us a response: an IKE rekey the
            // responder refused in-band. Not a call-order bug.
            (None, Some(Role::Initiator { .. })) => Err(KeError::PeerRefused {
                no_key_sent: self.audit.sent_no_key,
            }),
            (None, _) => Err(KeError::OutOfOrder(
                "get_shared_secret before the exchange completed",
            )),
        }
    }

    /// Logs an error this exchange returned to charon: at its level, and for a responder
    /// whose peer is not authenticated yet, within [`Runtime::unauthenticated_log`].
    pub fn log_error(&self, error: &KeError) {
        self.log(error.level(), format_args!("qkd: {error}"));
    }

    fn log(&self, level: log::Level, message: fmt::Arguments<'_>) {
        if self.unauthenticated() {
            self.rt.unauthenticated_log.log(level, message);
        } else {
            log::log!(level, "{message}");
        }
    }

    /// A responder before the peer authenticated (IKE_SA_INIT, IKE_INTERMEDIATE): anyone
    /// can make one, so what it logs and counts is kept apart and limited.
    fn unauthenticated(&self) -> bool {
        matches!(self.role, Some(Role::Responder)) && !self.ctx.established
    }

    pub fn method(&self) -> u16 {
        self.rt.config.method_id
    }

    fn note_failure<T>(&mut self, result: Result<T, KeError>) -> Result<T, KeError> {
        if let Err(e) = &result {
            if !matches!(e, KeError::OutOfOrder(_)) {
                self.failed = true;
                let counters = &self.rt.counters;
                if self.unauthenticated() {
                    // Refusals of no-key requests were counted where they were refused.
                    if !matches!(e, KeError::PeerHasNoKey(_)) {
                        Counters::bump(&counters.unauthenticated_refused);
                    }
                } else if !matches!(e, KeError::PeerHasNoKey(_)) {
                    Counters::bump(&counters.failures);
                }
                if matches!(e, KeError::KeyMismatch { .. }) {
                    Counters::bump(&counters.key_mismatches);
                }
                self.emit_audit(&audit::failure_result(e));
            }
        }
        result
    }

    /// The exchange's audit line; a responder's before authentication within
    /// [`Runtime::unauthenticated_log`].
    fn emit_audit(&mut self, result: &str) {
        let initiator = self.is_initiator();
        if self.unauthenticated() {
            let limiter = &self.rt.unauthenticated_log;
            self.audit.emit_with(&self.ctx, initiator, result, |line| {
                limiter.log(log::Level::Info, format_args!("{line}"))
            });
        } else {
            self.audit.emit(&self.ctx, initiator, result);
        }
    }

    /// Only a responder starts with set_public_key (and marks itself at once).
    fn is_initiator(&self) -> bool {
        !matches!(self.role, Some(Role::Responder))
    }

    /// The hard deadline of this exchange's on-demand KME calls in charon's thread:
    /// retries for `wait_timeout`, then one last request of at most `kme.timeout`.
    fn deadline(&self, peer: PeerIndex) -> Instant {
        let kme_timeout = self.rt.config.kme_for(&self.rt.config.peers[peer]).timeout;
        Instant::now() + self.rt.config.wait_timeout + kme_timeout
    }

    /// Secret = QKD key ‖ the in-method secrets in Config::inner_methods order.
    fn finish(
        &mut self,
        qkd: Option<QkdMaterial>,
        inner: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<(), KeError> {
        if qkd.is_none() && inner.is_none() {
            return Err(KeError::NoFallback(
                "neither a QKD key nor an in-method secret: refusing an empty shared secret".into(),
            ));
        }
        let counters = &self.rt.counters;
        let len = qkd.as_ref().map_or(0, |q| q.key.len()) + inner.as_ref().map_or(0, |e| e.len());
        // Exact capacity: growing would free unwiped copies of the secret.
        let mut secret = Zeroizing::new(Vec::with_capacity(len));
        let methods = self.inner_names();
        match &qkd {
            Some(q) => {
                secret.extend_from_slice(&q.key);
                let n = Counters::bump(&counters.qkd_secrets);
                log::info!(
                    "qkd: key IDs {} confirmed; shared secret = {}-bit QKD key{} (QKD secret #{n})",
                    q.ids(),
                    q.key.len() * 8,
                    match self.inner.len() {
                        0 => String::new(),
                        1 => format!(" + {methods} secret"),
                        _ => format!(" + {methods} secrets"),
                    }
                );
            }
            None => {
                let n = Counters::bump(&counters.dh_fallbacks);
                self.log(
                    log::Level::Warn,
                    format_args!(
                        "qkd: WARNING: shared secret is {methods} only, without QKD key (DH fallback #{n})"
                    ),
                );
            }
        }
        if let Some(e) = &inner {
            secret.extend_from_slice(e);
        }
        self.secret = Some(secret);
        if qkd.is_some() {
            // Never limited: only a peer with keys from our KME gets here.
            let initiator = self.is_initiator();
            self.audit.emit(&self.ctx, initiator, "qkd");
        } else {
            // Any peer allowing the fallback gets here before authentication.
            self.emit_audit("dh-fallback");
        }
        Ok(())
    }

    /// "curve25519 + mlkem768": the in-method key exchanges, as the settings name them.
    fn inner_names(&self) -> String {
        describe_methods(self.inner.iter().map(|ke| ke.method()))
    }

    fn fallback_rule(&self) -> &'static str {
        match (self.rt.config.fallback, self.inner.is_empty()) {
            (Fallback::None, _) => "fallback = none: QKD is mandatory",
            (Fallback::Dh, true) => {
                "fallback = dh needs an in-method key exchange but dh_group = kem = none"
            }
            (Fallback::Dh, false) => "the peer does not allow fallback = dh",
        }
    }

    fn no_fallback(&self, error: KeError) -> KeError {
        KeError::NoFallback(format!(
            "{error}; {}, failing the key exchange",
            self.fallback_rule()
        ))
    }

    fn own_shares(&mut self) -> Result<Vec<Share>, KeError> {
        self.inner
            .iter_mut()
            .map(|ke| {
                Ok(Share {
                    method: ke.method(),
                    value: ke.public_value().map_err(KeError::InnerKe)?,
                })
            })
            .collect()
    }

    /// The peer's shares must name our in-method key exchanges in our order.
    fn check_share_methods(&self, shares: &[Share]) -> Result<(), KeError> {
        if !shares
            .iter()
            .map(|s| s.method)
            .eq(self.inner.iter().map(|ke| ke.method()))
        {
            return Err(KeError::BadPeerData(format!(
                "peer's qkd method carries {} but {} here; configure the same dh_group and kem on both",
                describe_methods(shares.iter().map(|s| s.method)),
                self.inner_names()
            )));
        }
        Ok(())
    }

    /// The secrets of the peer's shares ([`Self::check_share_methods`]), concatenated in
    /// our order (None without in-method key exchanges).
    fn peer_shares(&mut self, shares: Vec<Share>) -> Result<Option<Zeroizing<Vec<u8>>>, KeError> {
        self.check_share_methods(&shares)?;
        if self.inner.is_empty() {
            return Ok(None);
        }
        let mut secrets = Vec::with_capacity(self.inner.len());
        for (ke, share) in self.inner.iter_mut().zip(&shares) {
            ke.set_peer_value(&share.value).map_err(KeError::InnerKe)?;
            secrets.push(ke.shared_secret().map_err(KeError::InnerKe)?);
        }
        // Exact capacity: growing would free unwiped copies of the secrets.
        let mut secret = Zeroizing::new(Vec::with_capacity(secrets.iter().map(|s| s.len()).sum()));
        for s in &secrets {
            secret.extend_from_slice(s);
        }
        Ok(Some(secret))
    }
}

impl Drop for QkdKeyExchange {
    /// An exchange charon drops before it completed still gets its audit line.
    fn drop(&mut self) {
        // Refused by the peer (strongSwan then never hands us its response): did it not
        // obtain a queued key?
        if let Some(Role::Initiator {
            peer,
            qkd: Some(_),
            queued: Some(enc_number),
            ..
        }) = &self.role
        {
            self.rt.supply.unconfirmed(*peer, *enc_number);
        }
        if self.role.is_some() {
            let initiator = self.is_initiator();
            self.audit.emit_unfinished(&self.ctx, initiator);
        }
    }
}

/// "curve25519 + mlkem768", or "no in-method key exchange (dh_group = kem = none)".
pub fn describe_methods(methods: impl Iterator<Item = u16>) -> String {
    let names: Vec<String> = methods.map(method_name).collect();
    if names.is_empty() {
        "no in-method key exchange (dh_group = kem = none)".into()
    } else {
        names.join(" + ")
    }
}

/// AQUA's WAIT_QKD: retry transient KME failures (no key yet, KME briefly down) for
/// `wait_timeout` (one attempt when it is 0).
fn wait_for_keys<T>(
    wait_timeout: Duration,
    fetch: impl Fn() -> Result<T, KmeError>,
) -> Result<T, KmeError> {
    let retry_until = Instant::now() + wait_timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        match fetch() {
            Err(e) if e.is_transient() && Instant::now() + pause < retry_until => {
                log::debug!("qkd: {e}; retrying in {pause:?} (wait_timeout)");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
