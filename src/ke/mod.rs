//! The `qkd` key exchange as a state machine, independent of charon.
//!
//! strongSwan drives a key exchange object with three calls whose order reveals the role
//! (STRONGSWAN-ABI.md §1): the initiator calls `get_public_key` first, the responder
//! `set_public_key` first (KEM order). The initiator of each exchange is the ETSI master
//! (enc_keys), the responder the slave (dec_keys), so roles are per exchange: whoever starts
//! a rekey fetches the new key.

mod confirm;
mod runtime;

pub use runtime::{Counters, Runtime};

use crate::config::{Config, Fallback, PeerConfig};
use crate::ids::{KeyId, SaeId};
use crate::kme::{KmeError, QkdKey};
use crate::wire::{EcdhShare, Request, Response, WireError};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The classical half of the hybrid: an ephemeral ECDH (or MODP) exchange provided by
/// strongSwan's crypto factory in charon, by a fake in tests.
pub trait Ecdh: Send {
    /// strongSwan key exchange method number (e.g. 31 = CURVE_25519).
    fn group(&self) -> u16;
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
}

#[derive(Debug)]
pub enum KeError {
    /// We cannot tell which peer (and so which SAE ID) this exchange is for.
    UnknownPeer(String),
    /// The KME did not deliver (after waiting, if `wait_timeout` is set).
    Kme {
        peer: SaeId,
        error: KmeError,
    },
    /// The peer's KE data is malformed or does not fit what we sent.
    Peer(String),
    Wire(WireError),
    /// Both KMEs delivered keys for the same IDs, but not the same keys.
    KeyMismatch {
        key_ids: String,
    },
    /// QKD failed on one side and fallback = dh is not allowed on both sides.
    NoFallback(String),
    Ecdh(String),
    /// strongSwan called us out of order.
    State(&'static str),
}

impl fmt::Display for KeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeError::UnknownPeer(m) | KeError::Peer(m) | KeError::NoFallback(m) => f.write_str(m),
            KeError::Kme { peer, error } => write!(f, "no QKD key for SAE '{peer}': {error}"),
            KeError::Wire(e) => write!(f, "peer sent {e}"),
            KeError::KeyMismatch { key_ids } => write!(
                f,
                "key confirmation failed for key IDs {key_ids}: the peer's KME delivered different key \
                 material than ours (QKD link or KME fault); refusing the key"
            ),
            KeError::Ecdh(m) => write!(f, "ECDH part of the hybrid key exchange failed: {m}"),
            KeError::State(m) => write!(f, "unexpected call order: {m}"),
        }
    }
}

impl std::error::Error for KeError {}

impl From<WireError> for KeError {
    fn from(e: WireError) -> Self {
        KeError::Wire(e)
    }
}

/// QKD key material obtained for one exchange.
struct QkdMaterial {
    key_ids: Vec<KeyId>,
    key: Zeroizing<Vec<u8>>,
}

impl QkdMaterial {
    fn from_keys(keys: Vec<QkdKey>) -> QkdMaterial {
        let mut key = Zeroizing::new(Vec::new());
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
    fn log_obtained(&self, role: &str, peer_sae: &SaeId, peer: &PeerConfig, kme_url: &str) {
        log::info!(
            "qkd: {role} for SAE '{peer_sae}' (connection '{}'): got {} bits from KME {kme_url} under key IDs {}",
            peer.name,
            self.key.len() * 8,
            self.ids()
        );
    }
}

fn format_ids(ids: &[KeyId]) -> String {
    ids.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

enum Role {
    Initiator {
        peer_sae: SaeId,
        qkd: Option<QkdMaterial>,
    },
    /// The initiator has processed the response (successfully or not).
    InitiatorDone,
    Responder,
}

pub struct QkdKeyExchange {
    rt: Arc<Runtime>,
    ctx: ExchangeContext,
    ecdh: Option<Box<dyn Ecdh>>,
    role: Option<Role>,
    /// Our KE data (request or response), returned on every `get_public_key`.
    own_data: Option<Vec<u8>>,
    secret: Option<Zeroizing<Vec<u8>>>,
}

impl QkdKeyExchange {
    pub fn new(
        rt: Arc<Runtime>,
        ctx: ExchangeContext,
        ecdh: Option<Box<dyn Ecdh>>,
    ) -> QkdKeyExchange {
        QkdKeyExchange {
            rt,
            ctx,
            ecdh,
            role: None,
            own_data: None,
            secret: None,
        }
    }

    /// Initiator: fetch keys and build the request. Responder: the prepared response.
    pub fn get_public_key(&mut self) -> Result<Vec<u8>, KeError> {
        if let Some(data) = &self.own_data {
            return Ok(data.clone());
        }
        if self.role.is_some() {
            return Err(KeError::State("get_public_key after a failed exchange"));
        }
        let result = self.initiate();
        self.count_failure(result)
    }

    /// Initiator: verify the response and derive the secret. Responder: process the request.
    pub fn set_public_key(&mut self, data: &[u8]) -> Result<(), KeError> {
        let result = match self.role.take() {
            None => self.respond(data),
            Some(Role::Initiator { peer_sae, qkd }) => {
                self.role = Some(Role::InitiatorDone);
                self.complete(data, peer_sae, qkd)
            }
            Some(done) => {
                self.role = Some(done);
                Err(KeError::State("set_public_key called twice"))
            }
        };
        self.count_failure(result)
    }

    pub fn shared_secret(&self) -> Result<Zeroizing<Vec<u8>>, KeError> {
        self.secret.clone().ok_or(KeError::State(
            "get_shared_secret before the exchange completed",
        ))
    }

    pub fn method(&self) -> u16 {
        self.rt.config.method_id
    }

    fn count_failure<T>(&self, result: Result<T, KeError>) -> Result<T, KeError> {
        if result.is_err() {
            Counters::bump(&self.rt.counters.failures);
        }
        result
    }

    fn initiate(&mut self) -> Result<Vec<u8>, KeError> {
        let rt = self.rt.clone();
        let cfg = &rt.config;
        let peer = initiator_peer(cfg, &self.ctx)?;
        let source = rt.source_for(peer);
        let kme_timeout = cfg.kme_for(peer).timeout;
        let qkd = match wait_for_keys(cfg.wait_timeout, kme_timeout, |deadline| {
            source
                .enc_keys(&peer.sae_id, cfg.key_size, 1, deadline)
                .map(|sets| sets.into_iter().next().unwrap_or_default())
        }) {
            Ok(keys) => {
                let qkd = QkdMaterial::from_keys(keys);
                qkd.log_obtained("master", &peer.sae_id, peer, source.url());
                Some(qkd)
            }
            Err(error) => {
                let error = KeError::Kme {
                    peer: peer.sae_id.clone(),
                    error,
                };
                if cfg.fallback != Fallback::Dh || self.ecdh.is_none() {
                    return Err(self.no_fallback(error));
                }
                log::warn!("qkd: {error}; offering an ECDH-only secret (fallback = dh)");
                None
            }
        };
        let ecdh = self.own_share()?;
        let request = Request {
            sender: cfg.sae_id.clone(),
            // Falling back means an ECDH-only secret: only offer it if we have an ECDH half.
            allows_dh_fallback: cfg.fallback == Fallback::Dh && self.ecdh.is_some(),
            key_ids: qkd.as_ref().map(|q| q.key_ids.clone()).unwrap_or_default(),
            ecdh,
        };
        let data = request.encode()?;
        self.role = Some(Role::Initiator {
            peer_sae: peer.sae_id.clone(),
            qkd,
        });
        self.own_data = Some(data.clone());
        Ok(data)
    }

    fn complete(
        &mut self,
        data: &[u8],
        peer_sae: SaeId,
        qkd: Option<QkdMaterial>,
    ) -> Result<(), KeError> {
        let response = Response::decode(data)?;
        let qkd = match (qkd, response.confirmation) {
            (Some(qkd), Some(tag)) => {
                if !confirm::verify(
                    &tag,
                    &qkd.key,
                    &self.rt.config.sae_id,
                    &peer_sae,
                    &qkd.key_ids,
                ) {
                    return Err(KeError::KeyMismatch { key_ids: qkd.ids() });
                }
                Some(qkd)
            }
            (Some(qkd), None) => {
                let why = format!(
                    "SAE '{peer_sae}' could not obtain QKD key IDs {} from its KME",
                    qkd.ids()
                );
                if self.rt.config.fallback != Fallback::Dh {
                    return Err(self.no_fallback(KeError::NoFallback(why)));
                }
                log::warn!("qkd: {why}; both peers allow fallback = dh");
                None
            }
            (None, Some(_)) => {
                return Err(KeError::Peer(
                    "peer confirmed QKD keys although we sent no key IDs".into(),
                ))
            }
            (None, None) => None,
        };
        let ecdh = self.peer_share(response.ecdh)?;
        self.finish(qkd, ecdh)
    }

    fn respond(&mut self, data: &[u8]) -> Result<(), KeError> {
        self.role = Some(Role::Responder);
        let rt = self.rt.clone();
        let cfg = &rt.config;
        let request = Request::decode(data)?;
        let peer = authorize(cfg, &self.ctx, &request.sender)?;
        let both_allow_dh =
            cfg.fallback == Fallback::Dh && request.allows_dh_fallback && self.ecdh.is_some();
        let qkd = if request.key_ids.is_empty() {
            let why = format!(
                "SAE '{}' offered no QKD key (its KME failed)",
                request.sender
            );
            if !both_allow_dh {
                return Err(self.no_fallback(KeError::NoFallback(why)));
            }
            log::warn!("qkd: {why}; both peers allow fallback = dh");
            None
        } else {
            let source = rt.source_for(peer);
            let kme_timeout = cfg.kme_for(peer).timeout;
            match wait_for_keys(cfg.wait_timeout, kme_timeout, |deadline| {
                source.dec_keys(&request.sender, &request.key_ids, deadline)
            }) {
                Ok(keys) => {
                    let qkd = QkdMaterial::from_keys(keys);
                    if qkd.key.len() * 8 < cfg.key_size as usize {
                        return Err(KeError::Peer(format!(
                            "SAE '{}' used {} bits of QKD key, less than key_size = {} here",
                            request.sender,
                            qkd.key.len() * 8,
                            cfg.key_size
                        )));
                    }
                    qkd.log_obtained("slave", &request.sender, peer, source.url());
                    Some(qkd)
                }
                Err(error) => {
                    let error = KeError::Kme {
                        peer: request.sender.clone(),
                        error,
                    };
                    if !both_allow_dh {
                        return Err(self.no_fallback(error));
                    }
                    log::warn!("qkd: {error}; both peers allow fallback = dh");
                    None
                }
            }
        };
        let ecdh_secret = self.peer_share(request.ecdh)?;
        let response = Response {
            confirmation: qkd
                .as_ref()
                .map(|q| confirm::tag(&q.key, &request.sender, &cfg.sae_id, &q.key_ids)),
            ecdh: self.own_share()?,
        };
        self.own_data = Some(response.encode()?);
        self.finish(qkd, ecdh_secret)
    }

    fn finish(
        &mut self,
        qkd: Option<QkdMaterial>,
        ecdh: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<(), KeError> {
        if qkd.is_none() && ecdh.is_none() {
            return Err(KeError::NoFallback(
                "neither a QKD key nor an ECDH secret: refusing an empty shared secret".into(),
            ));
        }
        let counters = &self.rt.counters;
        let mut secret = Zeroizing::new(Vec::new());
        match &qkd {
            Some(q) => {
                secret.extend_from_slice(&q.key);
                let n = Counters::bump(&counters.qkd_secrets);
                log::info!(
                    "qkd: key IDs {} confirmed; shared secret = {}-bit QKD key{} (QKD secret #{n})",
                    q.ids(),
                    q.key.len() * 8,
                    if ecdh.is_some() { " + ECDH secret" } else { "" }
                );
            }
            None => {
                let n = Counters::bump(&counters.dh_fallbacks);
                log::warn!(
                    "qkd: WARNING: shared secret is ECDH only, without QKD key (DH fallback #{n})"
                );
            }
        }
        if let Some(e) = &ecdh {
            secret.extend_from_slice(e);
        }
        self.secret = Some(secret);
        Ok(())
    }

    fn no_fallback(&self, error: KeError) -> KeError {
        let how = match (self.rt.config.fallback, self.ecdh.is_some()) {
            (Fallback::None, _) => "fallback = none: QKD is mandatory",
            (Fallback::Dh, false) => "fallback = dh needs an ECDH share but dh_group = none",
            (Fallback::Dh, true) => "the peer does not allow fallback = dh",
        };
        KeError::NoFallback(format!("{error}; {how}, failing the key exchange"))
    }

    fn own_share(&mut self) -> Result<Option<EcdhShare>, KeError> {
        self.ecdh
            .as_mut()
            .map(|e| {
                Ok(EcdhShare {
                    group: e.group(),
                    value: e.public_value().map_err(KeError::Ecdh)?,
                })
            })
            .transpose()
    }

    fn peer_share(
        &mut self,
        share: Option<EcdhShare>,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeError> {
        match (self.ecdh.as_mut(), share) {
            (None, None) => Ok(None),
            (Some(ecdh), Some(share)) if share.group == ecdh.group() => {
                ecdh.set_peer_value(&share.value).map_err(KeError::Ecdh)?;
                Ok(Some(ecdh.shared_secret().map_err(KeError::Ecdh)?))
            }
            (Some(ecdh), Some(share)) => Err(KeError::Peer(format!(
                "peer's hybrid ECDH uses method {} but dh_group here is method {}; configure the same dh_group on both",
                share.group,
                ecdh.group()
            ))),
            (Some(_), None) => Err(KeError::Peer("peer sent no ECDH share but dh_group is set here; configure the same dh_group on both".into())),
            (None, Some(_)) => Err(KeError::Peer("peer sent an ECDH share but dh_group = none here; configure the same dh_group on both".into())),
        }
    }
}

/// The peer an initiator talks to: the connection's `peers` section, else one bound to
/// the remote address.
fn initiator_peer<'a>(cfg: &'a Config, ctx: &ExchangeContext) -> Result<&'a PeerConfig, KeError> {
    let by_name = ctx.connection.as_deref().and_then(|n| cfg.peer_named(n));
    let by_remote = || {
        ctx.remote
            .and_then(|r| cfg.peers.iter().find(|p| p.remote == Some(r)))
    };
    by_name.or_else(by_remote).ok_or_else(|| {
        KeError::UnknownPeer(format!(
            "no peer SAE ID for connection '{}' (remote {}): add charon.plugins.qkd.peers.{}.sae_id",
            ctx.connection.as_deref().unwrap_or("?"),
            ctx.remote.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
            ctx.connection.as_deref().unwrap_or("<connection>")
        ))
    })
}

/// A responder accepts only SAE IDs of configured peers, bound to the connection and the
/// remote address where those are known.
fn authorize<'a>(
    cfg: &'a Config,
    ctx: &ExchangeContext,
    sender: &'a SaeId,
) -> Result<&'a PeerConfig, KeError> {
    if let Some(expected) = ctx.connection.as_deref().and_then(|n| cfg.peer_named(n)) {
        if &expected.sae_id != sender {
            return Err(KeError::Peer(format!(
                "peer claims SAE ID '{sender}' but connection '{}' expects '{}' (peers.{}.sae_id)",
                expected.name, expected.sae_id, expected.name
            )));
        }
    }
    let mut candidates = cfg.peers_with_sae(sender).peekable();
    if candidates.peek().is_none() {
        return Err(KeError::Peer(format!(
            "peer claims SAE ID '{sender}', which is not configured in charon.plugins.qkd.peers.*.sae_id"
        )));
    }
    candidates
        .find(|p| match (p.remote, ctx.remote) {
            (None, _) => true,
            (Some(bound), Some(actual)) => bound == actual,
            (Some(_), None) => false,
        })
        .ok_or_else(|| {
            KeError::Peer(format!(
                "SAE ID '{sender}' is bound to another address (peers.*.remote) than this peer's {}",
                ctx.remote.map(|r| r.to_string()).unwrap_or_else(|| "unknown address".into())
            ))
        })
}

/// AQUA's WAIT_QKD: retry transient KME failures (no key yet, KME briefly down) until
/// `wait_timeout` has passed. All attempts together end by one deadline, the later of
/// `wait_timeout` and `kme_timeout` from the start, so a short wait_timeout still allows one
/// whole request.
fn wait_for_keys(
    wait_timeout: Duration,
    kme_timeout: Duration,
    fetch: impl Fn(Instant) -> Result<Vec<QkdKey>, KmeError>,
) -> Result<Vec<QkdKey>, KmeError> {
    let start = Instant::now();
    let deadline = start + wait_timeout;
    let hard_deadline = deadline.max(start + kme_timeout);
    let mut pause = Duration::from_millis(50);
    loop {
        match fetch(hard_deadline) {
            Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
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
