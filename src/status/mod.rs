//! The plugin's side of the status protocol ([`qkd_status`], which `qkdctl` shares):
//! collecting a [`Snapshot`] of one runtime, measuring the KMEs ([`measured`]) and serving
//! the socket ([`server`]).

mod measured;
pub mod server;

pub use measured::{KmeStats, MeasuredSource};
pub use qkd_status::*;

use crate::ids::PeerIndex;
use crate::ke::{Counters, Runtime};
use crate::kme::KeySource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl From<&Counters> for ExchangeCounters {
    fn from(c: &Counters) -> Self {
        ExchangeCounters {
            qkd_secrets: load(&c.qkd_secrets),
            dh_fallbacks: load(&c.dh_fallbacks),
            no_key_sent: load(&c.no_key_sent),
            no_key_refused: load(&c.no_key_refused),
            failures: load(&c.failures),
            key_mismatches: load(&c.key_mismatches),
            unauthenticated_refused: load(&c.unauthenticated_refused),
        }
    }
}

/// The state of `rt`, built at `since`. `stats_of` finds the statistics of one node
/// (by URL) of a peer's key source (None for a node that is not measured).
pub fn collect(
    rt: &Runtime,
    since: SystemTime,
    stats_of: impl Fn(&Arc<dyn KeySource>, &str) -> Option<Arc<KmeStats>>,
) -> Snapshot {
    let cfg = &rt.config;
    let mut kmes: Vec<KmeStatus> = Vec::new();
    let mut peers = Vec::with_capacity(cfg.peers.len());
    for (index, peer) in PeerIndex::all(cfg.peers.len()).zip(&cfg.peers) {
        let source = rt.source(index);
        let url = source.url().to_owned();
        for node in source.nodes() {
            if kmes.iter().any(|k| k.url == node.url) {
                continue;
            }
            kmes.push(match stats_of(source, &node.url) {
                Some(stats) => stats.status(&node),
                None => KmeStats::default().status(&node),
            });
        }
        let levels = rt.supply.levels(index);
        peers.push(PeerStatus {
            name: peer.name.clone(),
            local_sae_id: cfg.sae_id.to_string(),
            peer_sae_id: peer.sae_id.to_string(),
            kme: url,
            outbound_sets: levels.outbound_sets,
            inbound_keys: levels.inbound_keys,
            pending_keys: levels.pending_keys,
            target_sets: levels.target_sets,
            cap_sets: levels.cap_sets,
            demand_per_second: levels.demand_per_second,
            supply_per_second: levels.supply_per_second,
            dry_in_seconds: levels.dry_in().map(|d| d.as_secs_f64()),
            replacing_kme: levels.replacing_kme,
        });
    }
    let supply = rt.supply.counters();
    Snapshot {
        protocol: PROTOCOL,
        plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
        now_unix: measured::unix_seconds(SystemTime::now()),
        since_unix: measured::unix_seconds(since),
        sae_id: cfg.sae_id.to_string(),
        method_id: cfg.method_id,
        key_size: cfg.key_size,
        buffer: cfg.buffer,
        fallback: cfg.fallback.to_string(),
        in_method: crate::ke::describe_methods(cfg.inner_methods().into_iter()),
        exchanges: ExchangeCounters::from(&rt.counters),
        buffered_keys: BufferCounters {
            buffered: load(&supply.buffered),
            used: load(&supply.used),
            wasted: load(&supply.wasted),
            announce_failures: load(&supply.announce_failures),
        },
        kmes,
        peers,
        internal_errors: crate::health::internal_errors(),
    }
}

#[cfg(test)]
mod tests;
