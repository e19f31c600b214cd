//! The responder of an exchange, the ETSI slave: checks who the peer claims to be, obtains
//! the keys it names (inbound cache or KME) within the bounds an unauthenticated peer gets,
//! and answers with the key confirmation.

use super::{
    confirm, wait_for_keys, Counters, ExchangeContext, KeError, QkdKeyExchange, QkdMaterial, Role,
};
use crate::config::{Config, Fallback, PeerConfig, PREFIX};
use crate::ids::{format_ids, KeyId, PeerIndex, SaeId};
use crate::kme::KmeError;
use crate::wire::{Keys, Request, Response, MAX_KEY_IDS};
use std::time::Instant;

impl QkdKeyExchange {
    pub(super) fn respond(&mut self, data: &[u8]) -> Result<(), KeError> {
        self.role = Some(Role::Responder);
        let rt = self.rt.clone();
        let cfg = &rt.config;
        let request = Request::decode(data)?;
        if request.sender == cfg.sae_id {
            return Err(KeError::BadPeerData(format!(
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
            Keys::Missing(reason) => Err(KeError::PeerHasNoKey(format!(
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
    pub(super) fn take_announcement(&self, peer: PeerIndex, ids: &[KeyId], ids_per_set: usize) {
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
    pub(super) fn slave_keys(
        &self,
        peer: PeerIndex,
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
    pub(super) fn check_key_count(
        &self,
        peer: PeerIndex,
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
        Err(KeError::BadPeerData(format!(
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
    pub(super) fn check_size(
        &self,
        peer: PeerIndex,
        master: &SaeId,
        qkd: QkdMaterial,
        from: &str,
    ) -> Result<QkdMaterial, KeError> {
        if let Err(reused) = self.rt.supply.record_used(&qkd.key_ids) {
            return Err(KeError::BadPeerData(format!(
                "key ID {reused} (SAE '{master}') already keyed an earlier exchange here: \
                 refusing to use a QKD key twice (the peer repeats key IDs, or KME {} \
                 delivered this key again)",
                self.rt.source(peer).url()
            )));
        }
        let key_size = self.rt.config.key_size as usize;
        let bits = qkd.key.len() * 8;
        if bits != key_size {
            return Err(KeError::BadPeerData(format!(
                "SAE '{master}' named key IDs {}: {} key(s) of {bits} bits in all {from}, but \
                 key_size = {key_size} here; configure the same key_size on both peers",
                qkd.ids(),
                qkd.key_ids.len(),
            )));
        }
        Ok(qkd)
    }
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
            return Err(KeError::BadPeerData(format!(
                "peer claims SAE ID '{sender}' but connection '{}' expects '{}' (peers.{}.sae_id)",
                expected.name, expected.sae_id, expected.name
            )));
        }
    }
    let mut candidates = cfg.peers_with_sae(sender).peekable();
    if candidates.peek().is_none() {
        return Err(KeError::BadPeerData(format!(
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
            KeError::BadPeerData(format!(
                "SAE ID '{sender}' is bound to another address (peers.*.remote) than this peer's {}",
                ctx.remote.map(|r| r.to_string()).unwrap_or_else(|| "unknown address".into())
            ))
        })
}

/// Smallest key (bits) a KME is taken to hand out without its status saying so: bounds the
/// key IDs a peer may name for one exchange ([`plausible_key_ids`]).
const MIN_PLAUSIBLE_KEY_BITS: u32 = 128;

/// Key IDs a peer may name for `key_size` bits without our KME's status saying more: keys
/// of at least [`MIN_PLAUSIBLE_KEY_BITS`], never more than one KE message carries.
fn plausible_key_ids(key_size: u32) -> usize {
    ((key_size / MIN_PLAUSIBLE_KEY_BITS) as usize).clamp(1, MAX_KEY_IDS)
}
