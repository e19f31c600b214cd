//! The initiator of an exchange, the ETSI master: takes (or fetches) the key set, sends its
//! key IDs and announcement, and checks the responder's key confirmation.

use super::{
    confirm, wait_for_keys, Counters, ExchangeContext, KeError, QkdKeyExchange, QkdMaterial, Role,
};
use crate::config::{Config, Fallback, PeerConfig};
use crate::ids::PeerIndex;
use crate::kme::KmeError;
use crate::wire::{Keys, NoKeyReason, Request, Response};
use std::time::Instant;

impl QkdKeyExchange {
    pub(super) fn initiate(&mut self) -> Result<Vec<u8>, KeError> {
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
        let mut outstanding = None;
        let keys = match rt.supply.take_outbound(peer, deadline) {
            Some((set, exchange)) => {
                queued = Some(set.enc_number);
                outstanding = Some(exchange);
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
                        "the peer will refuse it; strongSwan keeps the current SA and retries a rekey (an initial exchange is not retried)"
                    }
                );
                (None, Keys::Missing(reason))
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
            outstanding: outstanding.unwrap_or_else(|| rt.supply.outstanding(peer)),
        });
        self.own_data = Some(data.clone());
        Ok(data)
    }

    /// On-demand enc_keys in charon's thread, within the request cap and the deadline.
    pub(super) fn fetch_enc(
        &self,
        peer: PeerIndex,
        deadline: Instant,
    ) -> Result<QkdMaterial, KeError> {
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
    pub(super) fn permit(&self, peer: PeerIndex) -> Result<crate::supply::Permit, KeError> {
        let authenticated = !self.unauthenticated();
        self.rt
            .limiter
            .try_acquire(peer, authenticated)
            .map_err(|full| {
                KeError::Busy(format!(
                    "no QKD key for SAE '{}' now: {full}; not waiting for another, and not \
                     falling back to DH for it: the exchange is refused in-band (strongSwan retries \
                     a rekey, not an initial exchange; raise buffer so exchanges need no KME \
                     request)",
                    self.rt.config.peers[peer].sae_id
                ))
            })
    }

    pub(super) fn complete(
        &mut self,
        data: &[u8],
        peer: PeerIndex,
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
                return Err(KeError::BadPeerData(
                    "peer confirmed QKD keys although we sent no key IDs".into(),
                ))
            }
            (None, None) => None,
        };
        let inner = self.peer_shares(response.shares)?;
        self.finish(qkd, inner)
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

/// The reason an initiator without key gives its peer.
pub(super) fn no_key_reason(error: &KeError) -> NoKeyReason {
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
