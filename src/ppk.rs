//! RFC 8784 post-quantum preshared keys (PPKs) from the KME, for peers without this plugin.
//!
//! strongSwan's responder looks up the PPK for the PPK_ID the initiator sent in IKE_AUTH
//! (`get_shared(SHARED_PPK, <PPK_ID>)`, see docs/strongswan-abi.md, "PPK lookups"). When
//! that PPK_ID is a KME key ID and the connection charon chose for the IKE SA is a peer with
//! `ppk = yes`, [`answer`] fetches that key with dec_keys, the peer's `sae_id` being the ETSI
//! master, and hands it back as the PPK. The lookup runs before the peer's AUTH is verified,
//! so the peer is treated as unauthenticated: the connection must enable it, the `remote`
//! binding applies, the KME request takes an unauthenticated slot of `max_kme_requests`,
//! and each key ID keys one IKE SA only (the slave's record of used IDs).

use crate::config::{PeerConfig, PREFIX};
use crate::ids::KeyId;
use crate::ke::{ExchangeContext, Runtime};
use crate::kme::KmeError;
use std::fmt;
use std::time::Instant;
use zeroize::Zeroizing;

/// The shortest PPK handed to strongSwan (RFC 8784 asks for at least 256 bits of entropy;
/// KMEs that hand out shorter keys are refused rather than weakening the IKE SA silently).
pub const MIN_PPK_BITS: usize = 256;

/// A PPK fetched for one PPK lookup.
pub struct Ppk {
    pub key_id: KeyId,
    pub key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Ppk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ppk({}, {} bits)", self.key_id, self.key.len() * 8)
    }
}

/// Why a PPK lookup for a PPK-enabled connection got no key.
#[derive(Debug)]
pub enum Refusal {
    /// The IKE SA comes from another address than `peers.<conn>.remote`.
    WrongAddress {
        bound: String,
        actual: String,
    },
    /// No KME request slot for unauthenticated peers free (`max_kme_requests`).
    Busy(String),
    Kme(KmeError),
    /// The key ID keyed an earlier exchange here.
    UsedBefore,
    /// The KME answered with no key or a too short one for this key ID.
    BadKey(String),
}

impl Refusal {
    /// The `result=failed:<cause>` token of the audit line.
    pub fn cause(&self) -> &'static str {
        match self {
            Refusal::WrongAddress { .. } => "peer-address",
            Refusal::Busy(_) => "kme-requests-limit",
            Refusal::Kme(error) => error.audit_cause(),
            Refusal::UsedBefore => "key-used",
            Refusal::BadKey(_) => "kme-key",
        }
    }
}

/// The lookup as charon passed it, with what charon tells about the IKE SA.
pub struct Lookup<'a> {
    /// The identity's encoding: for a PPK_ID received as type 2 (FIXED), its bytes.
    pub ppk_id: &'a [u8],
    pub ctx: &'a ExchangeContext,
}

/// The PPK for `lookup`, `Ok(None)` when the lookup is not ours (not a key ID, no
/// connection, or one without `ppk = yes`: strongSwan goes on without us), or why a lookup
/// that is ours gets no key. Logs the outcome of lookups that are ours with a `qkd-audit`
/// line; refusals through the limiter for unauthenticated peers.
pub fn answer(rt: &Runtime, lookup: &Lookup<'_>) -> Result<Option<Ppk>, Refusal> {
    let Some(key_id) = parse_ppk_id(lookup.ppk_id) else {
        log::debug!("qkd: PPK_ID is not a KME key ID, leaving the PPK lookup to strongSwan");
        return Ok(None);
    };
    let Some(peer) = ppk_peer(rt, lookup.ctx) else {
        log::debug!(
            "qkd: PPK_ID '{key_id}' for connection '{}', which has no {PREFIX}.peers.<conn>.ppk = yes: \
             leaving the PPK lookup to strongSwan",
            lookup.ctx.connection.as_deref().unwrap_or("(none)")
        );
        return Ok(None);
    };
    let url = rt.source(rt.peer_index(peer)).url().to_owned();
    let result = fetch(rt, peer, lookup.ctx, key_id);
    let audit = |result: &str| {
        format!(
            "qkd-audit: ike_sa={}[{}] exchange=ppk role=responder peer_sae={} key_ids={key_id} \
             kme={url} result={result}",
            peer.name,
            lookup
                .ctx
                .unique_id
                .map_or_else(|| "-".into(), |id| id.to_string()),
            peer.sae_id,
        )
    };
    match &result {
        Ok(ppk) => {
            log::info!(
                "qkd: PPK for PPK_ID '{key_id}' (connection '{}', SAE '{}'): {} bits from KME {url}",
                peer.name,
                peer.sae_id,
                ppk.key.len() * 8
            );
            log::info!("{}", audit("ppk"));
        }
        Err(refusal) => {
            rt.counters
                .unauthenticated_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let log = &rt.unauthenticated_log;
            log.log(
                log::Level::Error,
                format_args!(
                    "qkd: no PPK for PPK_ID '{key_id}' (connection '{}', SAE '{}'): {}",
                    peer.name,
                    peer.sae_id,
                    explain(refusal, peer, key_id, &url)
                ),
            );
            log.log(
                log::Level::Info,
                format_args!("{}", audit(&format!("failed:{}", refusal.cause()))),
            );
        }
    }
    result.map(Some)
}

/// A PPK_ID is a key ID when it is exactly a KME key ID as text (8-4-4-4-12 hex).
pub fn parse_ppk_id(ppk_id: &[u8]) -> Option<KeyId> {
    std::str::from_utf8(ppk_id).ok().and_then(KeyId::parse)
}

/// The configured peer with `ppk = yes` named by the IKE SA's connection. charon picked that
/// connection from the peer's unauthenticated IDi; the `remote` binding is checked later.
fn ppk_peer<'a>(rt: &'a Runtime, ctx: &ExchangeContext) -> Option<&'a PeerConfig> {
    ctx.connection
        .as_deref()
        .and_then(|name| rt.config.peer_named(name))
        .filter(|peer| peer.ppk)
}

fn fetch(
    rt: &Runtime,
    peer: &PeerConfig,
    ctx: &ExchangeContext,
    key_id: KeyId,
) -> Result<Ppk, Refusal> {
    if let Some(bound) = peer.remote {
        if ctx.remote != Some(bound) {
            return Err(Refusal::WrongAddress {
                bound: bound.to_string(),
                actual: ctx
                    .remote
                    .map_or_else(|| "an unknown address".into(), |r| r.to_string()),
            });
        }
    }
    // Before asking the KME: a used key is not fetched again (record_used below decides
    // between two lookups racing for one ID).
    if rt.supply.was_used(&key_id) {
        return Err(Refusal::UsedBefore);
    }
    let index = rt.peer_index(peer);
    let _permit = rt
        .limiter
        .try_acquire(index, false)
        .map_err(Refusal::Busy)?;
    let deadline = Instant::now() + rt.config.kme_for(peer).timeout;
    let keys = rt
        .source(index)
        .dec_keys(&peer.sae_id, &[key_id], deadline)
        .map_err(Refusal::Kme)?;
    let Some(key) = keys.into_iter().find(|k| k.id == key_id) else {
        return Err(Refusal::BadKey(
            "its answer holds no key under that ID".into(),
        ));
    };
    // The KME has handed the key out: used now, whatever happens next.
    rt.supply
        .record_used(&[key_id])
        .map_err(|_| Refusal::UsedBefore)?;
    let bits = key.material.len() * 8;
    if bits < MIN_PPK_BITS {
        return Err(Refusal::BadKey(format!(
            "the key has {bits} bits, less than the {MIN_PPK_BITS} a PPK needs here"
        )));
    }
    Ok(Ppk {
        key_id,
        key: key.material,
    })
}

/// The log line's reason: what happened and what to check.
fn explain(refusal: &Refusal, peer: &PeerConfig, key_id: KeyId, url: &str) -> String {
    let name = &peer.name;
    match refusal {
        Refusal::WrongAddress { bound, actual } => format!(
            "the IKE SA comes from {actual}, but {PREFIX}.peers.{name}.remote = {bound}; \
             not asking KME {url}"
        ),
        Refusal::Busy(why) => format!("{why}; not asking KME {url}, the peer may retry"),
        Refusal::Kme(error) => format!(
            "{error} (dec_keys for key ID {key_id}, master SAE '{}' = {PREFIX}.peers.{name}.sae_id: \
             check that the peer fetched this key for our SAE ID and that {PREFIX}.peers.{name}.sae_id \
             names the peer's SAE ID)",
            peer.sae_id
        ),
        Refusal::UsedBefore => format!(
            "key ID {key_id} already keyed an earlier exchange here: a QKD key is used once; \
             the peer must fetch a new key from its KME for every IKE SA (KME {url})"
        ),
        Refusal::BadKey(why) => format!("KME {url} answered dec_keys for key ID {key_id}, but {why}"),
    }
}

#[cfg(test)]
mod tests;
