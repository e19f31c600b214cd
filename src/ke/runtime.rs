//! What every key exchange of one plugin configuration shares: the settings, one KME client
//! per distinct KME (so TLS connections are reused across exchanges), the key supply
//! (buffers and their refill threads), the cap on on-demand KME requests, and counters.

use super::loglimit::LogLimiter;
use crate::config::{Config, KmeSettings, PeerConfig};
use crate::ids::PeerIndex;
use crate::kme::{KeySource, KmeError};
use crate::supply::{DepthLimits, RequestLimiter, Supply, SupplyPeer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Runtime {
    pub config: Config,
    /// Indexed like `config.peers`; peers sharing a KME share one client.
    sources: Vec<Arc<dyn KeySource>>,
    pub supply: Supply,
    pub limiter: RequestLimiter,
    pub counters: Counters,
    /// What responders log about exchanges before the peer is authenticated.
    pub unauthenticated_log: LogLimiter,
}

#[derive(Default)]
pub struct Counters {
    pub qkd_secrets: AtomicU64,
    pub dh_fallbacks: AtomicU64,
    /// Exchanges this gateway started without a QKD key ("no key" request sent).
    pub no_key_sent: AtomicU64,
    /// Exchanges refused in-band because the peer had no QKD key.
    pub no_key_refused: AtomicU64,
    pub failures: AtomicU64,
    /// Of the failures: both KMEs delivered keys for the same IDs, but different keys.
    pub key_mismatches: AtomicU64,
    /// Exchanges refused as responder before the peer was authenticated, for any reason
    /// (counted here only, not in `no_key_refused` or `failures`).
    pub unauthenticated_refused: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Runtime {
    /// Builds the KME clients (`connect`, once per distinct KME) and the key supply. Starts
    /// no thread: see [`Supply::start`].
    pub fn new(
        config: Config,
        connect: impl Fn(&KmeSettings) -> Result<Arc<dyn KeySource>, KmeError>,
    ) -> Result<Runtime, KmeError> {
        let mut made: Vec<(KmeSettings, Arc<dyn KeySource>)> = Vec::new();
        let mut sources = Vec::with_capacity(config.peers.len());
        for peer in &config.peers {
            let settings = config.kme_for(peer);
            let source = match made.iter().find(|(s, _)| s == settings) {
                Some((_, source)) => source.clone(),
                None => {
                    let source = connect(settings)?;
                    made.push((settings.clone(), source.clone()));
                    source
                }
            };
            sources.push(source);
        }
        let supply_peers = config
            .peers
            .iter()
            .zip(&sources)
            .map(|(peer, source)| SupplyPeer {
                sae_id: peer.sae_id.clone(),
                source: source.clone(),
                kme_timeout: config.kme_for(peer).timeout,
            })
            .collect();
        Ok(Runtime {
            supply: Supply::new(
                supply_peers,
                DepthLimits {
                    floor: config.buffer,
                    cap: config.buffer_max,
                    total: config.buffer_total,
                },
                config.key_size,
                config.key_ttl,
            ),
            limiter: RequestLimiter::new(config.max_kme_requests, config.peers.len()),
            config,
            sources,
            counters: Counters::default(),
            unauthenticated_log: LogLimiter::new(std::time::Instant::now()),
        })
    }

    /// Index of `peer` (a reference into `self.config.peers`) for the sources and buffers.
    pub fn peer_index(&self, peer: &PeerConfig) -> PeerIndex {
        self.config
            .peers
            .iter()
            .position(|p| std::ptr::eq(p, peer))
            .map(PeerIndex)
            .expect("peer belongs to this runtime's config")
    }

    pub fn source(&self, peer: PeerIndex) -> &Arc<dyn KeySource> {
        &self.sources[peer]
    }
}
