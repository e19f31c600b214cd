//! What every key exchange of one plugin configuration shares: the settings, one KME client
//! per distinct KME (so TLS connections are reused across exchanges), the per-peer key
//! buffers (`prefetch`), and counters.

use crate::config::KmeSettings;
use crate::config::{Config, PeerConfig};
use crate::kme::{KeySource, KmeError, PrefetchPool};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Runtime {
    pub config: Config,
    /// Indexed like `config.peers`; peers sharing a KME share one client (each behind its
    /// own key buffer when `prefetch` is set).
    sources: Vec<Arc<dyn KeySource>>,
    pub counters: Counters,
}

#[derive(Default)]
pub struct Counters {
    pub qkd_secrets: AtomicU64,
    pub dh_fallbacks: AtomicU64,
    pub failures: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Runtime {
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
            sources.push(match config.prefetch {
                0 => source,
                n => Arc::new(PrefetchPool::new(
                    source,
                    peer.sae_id.clone(),
                    config.key_size,
                    n,
                )),
            });
        }
        Ok(Runtime {
            config,
            sources,
            counters: Counters::default(),
        })
    }

    pub fn source_for(&self, peer: &PeerConfig) -> &Arc<dyn KeySource> {
        let index = self
            .config
            .peers
            .iter()
            .position(|p| std::ptr::eq(p, peer))
            .expect("peer belongs to this runtime's config");
        &self.sources[index]
    }
}
