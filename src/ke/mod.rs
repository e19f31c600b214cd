//! The `qkd` key exchange as a state machine, independent of charon.
//!
//! strongSwan drives a key exchange object with three calls whose order reveals the role
//! (docs/strongswan-abi.md, "Key exchange objects"): the initiator calls `get_public_key`
//! first, the responder `set_public_key` first (KEM order). The initiator of each exchange
//! is the ETSI master (enc_keys), the responder the slave (dec_keys), so roles are per
//! exchange: whoever starts a rekey fetches the new key.

mod audit;
mod confirm;
mod loglimit;
mod runtime;

pub use runtime::{Counters, Runtime};

use crate::config::{method_name, Config, Fallback, PeerConfig, PREFIX};
use crate::ids::{format_ids, KeyId, SaeId};
use crate::kme::{KmeError, QkdKey};
use crate::wire::{Keys, NoKeyReason, Request, Response, Share, WireError, MAX_KEY_IDS};
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

#[derive(Debug)]
pub enum KeError {
    /// We cannot tell which peer (and so which SAE ID) this exchange is for.
    UnknownPeer(String),
    /// The KME did not deliver (after waiting, if `wait_timeout` is set).
    Kme {
        peer: SaeId,
        error: KmeError,
    },
    /// Too many KME requests in flight already (`max_kme_requests` or a share of it). Never
    /// a reason to fall back to DH: the exchange is refused in-band and retried.
    Busy(String),
    /// The peer's KE data is malformed or does not fit what we sent.
    Peer(String),
    Wire(WireError),
    /// Both KMEs delivered keys for the same IDs, but not the same keys.
    KeyMismatch {
        key_ids: String,
    },
    /// QKD failed on one side and fallback = dh is not allowed on both sides.
    NoFallback(String),
    /// The peer started the exchange without a QKD key: refused in-band, which strongSwan
    /// answers by keeping the current SA and retrying. Normal while a QKD link is dry.
    PeerHasNoKey(String),
    /// Our own encoder refused what we built (a local limit, never the peer's fault).
    Encode(WireError),
    /// An in-method key exchange (dh_group, kem) failed.
    InnerKe(String),
    /// charon asked again about an exchange that already failed (and was logged).
    AlreadyFailed,
    /// The initiator was asked for the secret of an exchange whose response carried no KE
    /// data: the peer refused it (in-band, e.g. without a QKD key on its side). `no_key_sent`:
    /// our request already said we had no key (and that was logged).
    PeerRefused {
        no_key_sent: bool,
    },
    /// strongSwan called us out of order.
    State(&'static str),
}

impl KeError {
    /// How loud the log line should be: a dry QKD link is normal operation, and charon
    /// querying an exchange that already failed is not news.
    pub fn level(&self) -> log::Level {
        match self {
            KeError::PeerHasNoKey(_) | KeError::Busy(_) => log::Level::Warn,
            KeError::PeerRefused { no_key_sent: false } => log::Level::Info,
            KeError::AlreadyFailed | KeError::PeerRefused { no_key_sent: true } => {
                log::Level::Debug
            }
            _ => log::Level::Error,
        }
    }
}

impl fmt::Display for KeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeError::UnknownPeer(m)
            | KeError::Peer(m)
            | KeError::NoFallback(m)
            | KeError::Busy(m)
            | KeError::PeerHasNoKey(m) => f.write_str(m),
            KeError::Kme { peer, error } => write!(f, "no QKD key for SAE '{peer}': {error}"),
            KeError::Wire(e) => write!(f, "peer sent {e}"),
            KeError::Encode(e) => write!(f, "building our KE data failed: {e}"),
            KeError::KeyMismatch { key_ids } => write!(
                f,
                "key confirmation failed for key IDs {key_ids}: the peer's KME delivered different key \
                 material than ours (QKD link or KME fault); refusing the key"
            ),
            KeError::InnerKe(m) => write!(f, "in-method key exchange failed: {m}"),
            KeError::AlreadyFailed => f.write_str("this key exchange failed earlier (see above)"),
            KeError::PeerRefused { no_key_sent } => write!(
                f,
                "no shared secret: the peer refused the exchange{} (see its log); strongSwan \
                 keeps the current SA and retries",
                if *no_key_sent {
                    " we started without QKD key"
                } else {
                    " (its response carried no qkd key exchange data)"
                }
            ),
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
        peer: usize,
        qkd: Option<QkdMaterial>,
        /// The keys came from the outbound queue, from this enc_keys (see Supply::unconfirmed).
        queued: Option<u64>,
        /// Held until the exchange is over.
        _outstanding: crate::supply::Outstanding,
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
            return Err(KeError::State(
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
                peer, qkd, queued, ..
            }) => {
                self.role = Some(Role::InitiatorDone);
                self.complete(data, peer, qkd, queued)
            }
            Some(done) => {
                self.role = Some(done);
                Err(KeError::State("set_public_key called twice"))
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
            (None, _) => Err(KeError::State(
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
            if !matches!(e, KeError::State(_)) {
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
    fn deadline(&self, peer: usize) -> Instant {
        let kme_timeout = self.rt.config.kme_for(&self.rt.config.peers[peer]).timeout;
        Instant::now() + self.rt.config.wait_timeout + kme_timeout
    }

    fn initiate(&mut self) -> Result<Vec<u8>, KeError> {
        let rt = self.rt.clone();
        let cfg = &rt.config;
        // Without a configured peer there is no SAE to ask for: a configuration error that
        // fails here, loudly, rather than a key shortage.
        let peer_cfg = initiator_peer(cfg, &self.ctx)?;
        let peer = rt.peer_index(peer_cfg);
        self.audit.peer_sae = Some(peer_cfg.sae_id.clone());
        self.audit.kme = Some(rt.source(peer).url().to_owned());
        let deadline = self.deadline(peer);
        let mut queued = None;
        let keys = match rt.supply.take_outbound(peer, deadline) {
            Some(set) => {
                queued = Some(set.enc_number);
                let qkd = QkdMaterial::from_keys(set.keys);
                qkd.log_obtained(
                    "master",
                    &peer_cfg.sae_id,
                    peer_cfg,
                    "from the outbound queue",
                );
                Ok(qkd)
            }
            None => self.fetch_enc(peer, deadline),
        };
        // Falling back means a secret of the in-method key exchanges alone: only offer it if
        // there are some, and never because our KME request budget is full (a flood must
        // not be able to downgrade us).
        let offers_dh = cfg.fallback == Fallback::Dh
            && !self.inner.is_empty()
            && !matches!(keys, Err(KeError::Busy(_)));
        let (qkd, request_keys) = match keys {
            Ok(qkd) => {
                let ids = Keys::Ids(qkd.key_ids.clone());
                self.audit.key_ids = qkd.key_ids.clone();
                (Some(qkd), ids)
            }
            Err(error) => {
                self.audit.sent_no_key = true;
                let reason = no_key_reason(&error);
                let n = Counters::bump(&rt.counters.no_key_sent);
                log::warn!(
                    "qkd: {error}; starting the exchange without QKD key ({reason}, #{n}): {}",
                    if offers_dh {
                        "the peer may accept a secret of the in-method key exchanges alone (fallback = dh)"
                    } else {
                        "the peer will refuse it and strongSwan keeps the current SA and retries"
                    }
                );
                (None, Keys::None(reason))
            }
        };
        let request = Request {
            sender: cfg.sae_id.clone(),
            allows_dh_fallback: offers_dh,
            keys: request_keys,
            // Also in an initial exchange: the peer acts on it once this IKE SA is
            // authenticated, and its next initial exchange then finds the keys in place.
            announce: rt.supply.announcement(peer),
            shares: self.own_shares()?,
        };
        let data = request.encode().map_err(KeError::Encode)?;
        self.role = Some(Role::Initiator {
            peer,
            qkd,
            queued,
            _outstanding: rt.supply.outstanding(peer),
        });
        self.own_data = Some(data.clone());
        Ok(data)
    }

    /// On-demand enc_keys in charon's thread, within the request cap and the deadline.
    fn fetch_enc(&self, peer: usize, deadline: Instant) -> Result<QkdMaterial, KeError> {
        let rt = &self.rt;
        let peer_cfg = &rt.config.peers[peer];
        let source = rt.source(peer);
        let _permit = self.permit(peer)?;
        let mut sets = wait_for_keys(rt.config.wait_timeout, || {
            source.enc_keys(&peer_cfg.sae_id, rt.config.key_size, 1, deadline)
        })
        .map_err(|error| KeError::Kme {
            peer: peer_cfg.sae_id.clone(),
            error,
        })?;
        let set = sets.drain(..).next().ok_or_else(|| KeError::Kme {
            peer: peer_cfg.sae_id.clone(),
            error: KmeError::Protocol(format!("KME {} returned no key set", source.url())),
        })?;
        let qkd = QkdMaterial::from_keys(set);
        qkd.log_obtained(
            "master",
            &peer_cfg.sae_id,
            peer_cfg,
            &format!("from KME {}", source.url()),
        );
        rt.supply.fetched_on_demand(peer);
        Ok(qkd)
    }

    /// A slot of the on-demand KME request budget for `peer`: its share, and for a
    /// responder before authentication the unauthenticated share.
    fn permit(&self, peer: usize) -> Result<crate::supply::Permit, KeError> {
        let authenticated = !self.unauthenticated();
        self.rt
            .limiter
            .try_acquire(peer, authenticated)
            .map_err(|full| {
                KeError::Busy(format!(
                    "no QKD key for SAE '{}' now: {full}; not waiting for another, and not \
                     falling back to DH for it: the exchange is refused in-band and retried \
                     (raise buffer so exchanges need no KME request)",
                    self.rt.config.peers[peer].sae_id
                ))
            })
    }

    fn complete(
        &mut self,
        data: &[u8],
        peer: usize,
        qkd: Option<QkdMaterial>,
        queued: Option<u64>,
    ) -> Result<(), KeError> {
        let rt = self.rt.clone();
        let peer_sae = &rt.config.peers[peer].sae_id;
        let response = Response::decode(data)?;
        let qkd = match (qkd, response.confirmation) {
            (Some(qkd), Some(tag)) => {
                if !confirm::verify(&tag, &qkd.key, &rt.config.sae_id, peer_sae, &qkd.key_ids) {
                    return Err(KeError::KeyMismatch { key_ids: qkd.ids() });
                }
                self.take_announcement(peer, &response.announce, qkd.key_ids.len());
                Some(qkd)
            }
            (Some(qkd), None) => {
                if let Some(enc_number) = queued {
                    rt.supply.unconfirmed(peer, enc_number);
                }
                let why = format!(
                    "SAE '{peer_sae}' could not obtain QKD key IDs {} from its KME",
                    qkd.ids()
                );
                if rt.config.fallback != Fallback::Dh {
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
        let inner = self.peer_shares(response.shares)?;
        self.finish(qkd, inner)
    }

    fn respond(&mut self, data: &[u8]) -> Result<(), KeError> {
        self.role = Some(Role::Responder);
        let rt = self.rt.clone();
        let cfg = &rt.config;
        let request = Request::decode(data)?;
        if request.sender == cfg.sae_id {
            return Err(KeError::Peer(format!(
                "peer claims our own SAE ID '{}': check {PREFIX}.sae_id on both gateways",
                cfg.sae_id
            )));
        }
        let peer_cfg = authorize(cfg, &self.ctx, &request.sender)?;
        let peer = rt.peer_index(peer_cfg);
        self.audit.peer_sae = Some(request.sender.clone());
        self.audit.kme = Some(rt.source(peer).url().to_owned());
        if let Keys::Ids(ids) = &request.keys {
            self.audit.key_ids = ids.clone();
        }
        let both_allow_dh =
            cfg.fallback == Fallback::Dh && request.allows_dh_fallback && !self.inner.is_empty();
        // Everything cheap before any KME request.
        self.check_share_methods(&request.shares)?;
        let obtained = match &request.keys {
            Keys::None(reason) => Err(KeError::PeerHasNoKey(format!(
                "SAE '{}' started the exchange without QKD key ({reason})",
                request.sender
            ))),
            Keys::Ids(ids) => self.slave_keys(peer, &request.sender, ids),
        };
        let qkd = match obtained {
            Ok(qkd) => {
                self.take_announcement(peer, &request.announce, qkd.key_ids.len());
                Some(qkd)
            }
            Err(error) if both_allow_dh && !matches!(error, KeError::Busy(_)) => {
                self.log(
                    log::Level::Warn,
                    format_args!("qkd: {error}; both peers allow fallback = dh"),
                );
                None
            }
            Err(busy @ KeError::Busy(_)) => return Err(busy),
            Err(KeError::PeerHasNoKey(why)) => {
                let n = Counters::bump(if self.unauthenticated() {
                    &rt.counters.unauthenticated_refused
                } else {
                    &rt.counters.no_key_refused
                });
                return Err(KeError::PeerHasNoKey(format!(
                    "{why}; {}: refusing it in-band (#{n}), strongSwan keeps the current SA and \
                     the peer retries",
                    self.fallback_rule()
                )));
            }
            Err(error) => return Err(self.no_fallback(error)),
        };
        // KEM order: an ML-KEM encapsulates to the initiator's key here, before our shares
        // (its ciphertext) exist.
        let inner_secret = self.peer_shares(request.shares)?;
        let response = Response {
            confirmation: qkd
                .as_ref()
                .map(|q| confirm::tag(&q.key, &request.sender, &cfg.sae_id, &q.key_ids)),
            announce: rt.supply.announcement(peer),
            shares: self.own_shares()?,
        };
        self.own_data = Some(response.encode().map_err(KeError::Encode)?);
        self.finish(qkd, inner_secret)
    }

    /// The peer's announcement in an exchange whose own keys (`ids_per_set`) both KMEs
    /// delivered: fetched ahead at once in an authenticated IKE SA; in one being set up, held
    /// until it is authenticated (trust rule: an unauthenticated peer makes us fetch nothing).
    fn take_announcement(&self, peer: usize, ids: &[KeyId], ids_per_set: usize) {
        let supply = &self.rt.supply;
        match (self.ctx.established, self.ctx.unique_id) {
            (true, _) => supply.accept_announcement(peer, ids, ids_per_set),
            (false, Some(ike_sa)) => supply.hold_announcement(ike_sa, peer, ids, ids_per_set),
            (false, None) => {}
        }
    }

    /// Slave side: the keys the peer named, from the inbound cache or on demand. How many
    /// keys make up `key_size` is what the master's KME delivered, not what ours predicts
    /// (some KMEs ignore the size asked for): any plausible count is fetched
    /// ([`Self::check_key_count`], before the cache or any KME request), and the bits must
    /// add up to `key_size` exactly ([`Self::check_size`]).
    fn slave_keys(
        &self,
        peer: usize,
        master: &SaeId,
        ids: &[KeyId],
    ) -> Result<QkdMaterial, KeError> {
        let rt = &self.rt;
        let cfg = &rt.config;
        let peer_cfg = &cfg.peers[peer];
        let source = rt.source(peer);
        let deadline = self.deadline(peer);
        self.check_key_count(peer, master, ids, deadline)?;
        let authenticated = !self.unauthenticated();
        if let Some(keys) = rt.supply.take_inbound(peer, ids, deadline, authenticated) {
            let qkd = QkdMaterial::from_keys(keys);
            qkd.log_obtained("slave", master, peer_cfg, "from the inbound cache");
            let from = format!(
                "from the inbound cache (fetched ahead from KME {})",
                source.url()
            );
            return self.check_size(peer, master, qkd, &from);
        }
        let _permit = self.permit(peer)?;
        let keys = wait_for_keys(cfg.wait_timeout, || source.dec_keys(master, ids, deadline))
            .map_err(|error| {
                // Keys an authenticated peer obtained, unknown to our KME: replaced unfetched.
                if authenticated
                    && matches!(
                        error,
                        KmeError::Rejected {
                            status: 400 | 404,
                            ..
                        }
                    )
                {
                    rt.supply.named_keys_missing(peer);
                }
                KeError::Kme {
                    peer: master.clone(),
                    error,
                }
            })?;
        let qkd = QkdMaterial::from_keys(keys);
        let from = format!("from KME {}", source.url());
        qkd.log_obtained("slave", master, peer_cfg, &from);
        self.check_size(peer, master, qkd, &from)
    }

    /// A peer may name up to [`plausible_key_ids`] key IDs for `key_size` (keys of at least
    /// [`MIN_PLAUSIBLE_KEY_BITS`]), or as many as our KME's status says one set takes if its
    /// keys are smaller. Refused before any KME request otherwise, so that an
    /// unauthenticated peer cannot make us fetch (and burn) many keys.
    fn check_key_count(
        &self,
        peer: usize,
        master: &SaeId,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Result<(), KeError> {
        let key_size = self.rt.config.key_size;
        let plausible = plausible_key_ids(key_size);
        if ids.len() <= plausible {
            return Ok(());
        }
        let source = self.rt.source(peer);
        // Known without asking the KME: no request slot taken.
        let predicted = match source.known_keys_per_set(master, key_size) {
            Some(predicted) => predicted,
            None => {
                let _permit = self.permit(peer)?;
                source
                    .keys_per_set(master, key_size, deadline)
                    .map_err(|error| KeError::Kme {
                        peer: master.clone(),
                        error,
                    })?
            }
        };
        if ids.len() <= predicted {
            return Ok(());
        }
        Err(KeError::Peer(format!(
            "SAE '{master}' named {} key IDs ({}) for one exchange, more than key_size = \
             {key_size} takes (at most {plausible} keys of {MIN_PLAUSIBLE_KEY_BITS} bits or more, \
             or the {predicted} that KME {} plans); not fetching them (check key_size on both \
             peers)",
            ids.len(),
            format_ids(ids),
            source.url()
        )))
    }

    /// The keys delivered for the peer's key IDs must add up to `key_size` exactly, and
    /// none may have keyed an exchange before.
    fn check_size(
        &self,
        peer: usize,
        master: &SaeId,
        qkd: QkdMaterial,
        from: &str,
    ) -> Result<QkdMaterial, KeError> {
        if let Err(reused) = self.rt.supply.record_used(&qkd.key_ids) {
            return Err(KeError::Peer(format!(
                "key ID {reused} (SAE '{master}') already keyed an earlier exchange here: \
                 refusing to use a QKD key twice (the peer repeats key IDs, or KME {} \
                 delivered this key again)",
                self.rt.source(peer).url()
            )));
        }
        let key_size = self.rt.config.key_size as usize;
        let bits = qkd.key.len() * 8;
        if bits != key_size {
            return Err(KeError::Peer(format!(
                "SAE '{master}' named key IDs {}: {} key(s) of {bits} bits in all {from}, but \
                 key_size = {key_size} here; configure the same key_size on both peers",
                qkd.ids(),
                qkd.key_ids.len(),
            )));
        }
        Ok(qkd)
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
            return Err(KeError::Peer(format!(
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

/// "curve25519 + mlkem768", or "no in-method key exchange (dh_group = kem = none)".
pub fn describe_methods(methods: impl Iterator<Item = u16>) -> String {
    let names: Vec<String> = methods.map(method_name).collect();
    if names.is_empty() {
        "no in-method key exchange (dh_group = kem = none)".into()
    } else {
        names.join(" + ")
    }
}

/// Smallest key (bits) a KME is taken to hand out without its status saying so: bounds the
/// key IDs a peer may name for one exchange ([`plausible_key_ids`]).
const MIN_PLAUSIBLE_KEY_BITS: u32 = 128;

/// Key IDs a peer may name for `key_size` bits without our KME's status saying more: keys
/// of at least [`MIN_PLAUSIBLE_KEY_BITS`], never more than one KE message carries.
fn plausible_key_ids(key_size: u32) -> usize {
    ((key_size / MIN_PLAUSIBLE_KEY_BITS) as usize).clamp(1, MAX_KEY_IDS)
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

/// The reason an initiator without key gives its peer.
fn no_key_reason(error: &KeError) -> NoKeyReason {
    match error {
        KeError::Kme {
            error: KmeError::NoKeyAvailable { .. },
            ..
        } => NoKeyReason::KmeEmpty,
        KeError::Kme {
            error: KmeError::Unreachable { .. },
            ..
        } => NoKeyReason::KmeUnreachable,
        KeError::Kme { .. } => NoKeyReason::KmeRefused,
        _ => NoKeyReason::Local,
    }
}

#[cfg(test)]
mod tests;
