//! Key supply (docs/design.md §7): QKD keys in place on both sides before an exchange needs them.
//!
//! Per peer, two buffers:
//! * the **outbound queue**: key sets this gateway obtained as ETSI master (enc_keys), used
//!   one per exchange it initiates, and announced to the peer inside encrypted exchanges;
//! * the **inbound cache**: keys the peer announced, fetched from our KME as slave
//!   (dec_keys) before the peer's exchange names them.
//!
//! One refill thread serves every peer (`refill.rs`); it is started by the first exchange,
//! so never before charon has dropped its privileges. An announcement is only a hint: every
//! exchange names its key IDs and falls back to fetching them on demand, so a lost, stale or
//! repeated announcement, or a restart of either side, can only cost a KME round trip.
//! Every key is used once and wiped when used, expired (`key_ttl`) or dropped; keys fetched
//! but never used are counted as wasted.

mod limit;
mod refill;

pub use limit::{Permit, RequestLimiter};
pub use refill::SETTLE;

use crate::ids::{KeyId, SaeId};
use crate::kme::{KeySource, QkdKey};
use crate::wire::MAX_KEY_IDS;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The keys of one exchange: `key_size` bits over one or more KME keys.
pub struct KeySet {
    pub keys: Vec<QkdKey>,
    obtained: Instant,
}

impl KeySet {
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|k| k.id)
    }
}

/// One peer as the supply sees it.
pub struct SupplyPeer {
    /// The peer's SAE ID: slave of our outbound keys, master of the inbound ones.
    pub sae_id: SaeId,
    pub source: Arc<dyn KeySource>,
    /// Bound of one refill request to this peer's KME.
    pub kme_timeout: Duration,
}

/// What happened to buffered keys (counted per key, not per set).
#[derive(Default)]
pub struct SupplyCounters {
    /// Delivered by a KME into a buffer.
    pub buffered: AtomicU64,
    /// Taken from a buffer by an exchange.
    pub used: AtomicU64,
    /// Wiped unused: expired, or dropped with the buffer.
    pub wasted: AtomicU64,
    /// Announced key IDs our KME could not deliver (fetched on demand if ever used).
    pub announce_failures: AtomicU64,
}

/// Buffer levels of one peer, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub outbound_sets: usize,
    pub inbound_keys: usize,
    pub pending_keys: usize,
}

pub struct Supply {
    shared: Arc<Shared>,
}

struct Shared {
    peers: Vec<SupplyPeer>,
    /// Outbound key sets kept per peer; the inbound cache holds as many sets' worth.
    target: usize,
    key_size: u32,
    ttl: Duration,
    state: Mutex<State>,
    /// Signalled when buffers change (a take, an announcement, a delivery) or on stop.
    wake: Condvar,
    started: AtomicBool,
    counters: SupplyCounters,
}

struct State {
    stopped: bool,
    buffers: Vec<Buffers>,
}

#[derive(Default)]
struct Buffers {
    outbound: VecDeque<KeySet>,
    inbound: HashMap<KeyId, Cached>,
    /// Announced, not fetched yet (oldest first).
    pending: VecDeque<KeyId>,
    /// Being fetched by the refill thread right now.
    in_flight: HashSet<KeyId>,
    /// Inbound keys one peer exchange uses; bounds what an announcement may ask for.
    ids_per_set: usize,
    /// No refill for this peer before then (after a KME failure).
    retry_at: Option<Instant>,
    /// An exchange with this peer just took keys or announced some: while it still has
    /// messages to go, a refill that is not urgent waits (refill::SETTLE).
    settle_until: Option<Instant>,
    backoff: Duration,
}

impl Buffers {
    /// Defers a refill that is not urgent by refill::SETTLE from the first exchange after
    /// the refill thread last found nothing to do for this peer, never longer: a stream of
    /// exchanges cannot starve the refill.
    fn settle(&mut self, now: Instant) {
        self.settle_until.get_or_insert(now + refill::SETTLE);
    }
}

struct Cached {
    key: QkdKey,
    obtained: Instant,
}

impl Supply {
    /// `peers` indexed like the configuration's peers. Starts nothing: see [`Supply::start`].
    pub fn new(peers: Vec<SupplyPeer>, target: usize, key_size: u32, ttl: Duration) -> Supply {
        let buffers = peers.iter().map(|_| Buffers::default()).collect();
        Supply {
            shared: Arc::new(Shared {
                peers,
                target,
                key_size,
                ttl,
                state: Mutex::new(State {
                    stopped: false,
                    buffers,
                }),
                wake: Condvar::new(),
                started: AtomicBool::new(false),
                counters: SupplyCounters::default(),
            }),
        }
    }

    /// Starts the refill thread once (no-op with `buffer = 0`). Called from exchanges, which
    /// charon runs only after dropping its privileges.
    pub fn start(&self) {
        if self.shared.target == 0 || self.shared.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("qkd-supply".into())
            .spawn(move || refill::run(shared));
        if let Err(e) = spawned {
            log::error!(
                "qkd: cannot start the key supply thread ({e}): keys are fetched on demand"
            );
        }
    }

    pub fn counters(&self) -> &SupplyCounters {
        &self.shared.counters
    }

    pub fn levels(&self, peer: usize) -> Levels {
        let state = self.shared.lock();
        let b = &state.buffers[peer];
        Levels {
            outbound_sets: b.outbound.len(),
            inbound_keys: b.inbound.len(),
            pending_keys: b.pending.len() + b.in_flight.len(),
        }
    }

    /// Master side: the next unexpired outbound key set for `peer`, if one is ready.
    pub fn take_outbound(&self, peer: usize) -> Option<KeySet> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let buffers = &mut state.buffers[peer];
        while let Some(set) = buffers.outbound.pop_front() {
            if now.duration_since(set.obtained) < self.shared.ttl {
                self.shared
                    .count(&self.shared.counters.used, set.keys.len());
                buffers.settle(now);
                self.shared.wake.notify_all();
                return Some(set);
            }
            self.shared
                .waste("outbound", &self.shared.peers[peer], set.keys.len());
        }
        None
    }

    /// The key IDs this gateway will use next towards `peer`, for the peer to fetch ahead.
    pub fn announcement(&self, peer: usize) -> Vec<KeyId> {
        let state = self.shared.lock();
        state.buffers[peer]
            .outbound
            .iter()
            .flat_map(KeySet::ids)
            .take(MAX_KEY_IDS)
            .collect()
    }

    /// Slave side: the keys `ids` from the inbound cache, in order, if all are there. Keys
    /// the refill thread is fetching right now are waited for until `deadline`; keys still
    /// pending are withdrawn so the caller can fetch them itself without a double fetch.
    pub fn take_inbound(
        &self,
        peer: usize,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Option<Vec<QkdKey>> {
        let mut state = self.shared.lock();
        loop {
            let buffers = &mut state.buffers[peer];
            if ids.iter().all(|id| buffers.inbound.contains_key(id)) {
                let keys: Vec<QkdKey> = ids
                    .iter()
                    .filter_map(|id| buffers.inbound.remove(id))
                    .map(|c| c.key)
                    .collect();
                self.shared.count(&self.shared.counters.used, keys.len());
                return Some(keys);
            }
            let now = Instant::now();
            if !ids.iter().any(|id| buffers.in_flight.contains(id)) || now >= deadline {
                buffers.pending.retain(|id| !ids.contains(id));
                // Keys of this exchange already cached are no use without the others.
                for id in ids {
                    if buffers.inbound.remove(id).is_some() {
                        self.shared.waste("inbound", &self.shared.peers[peer], 1);
                    }
                }
                return None;
            }
            state = self
                .shared
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Slave side: `peer` announced `ids` in an authenticated exchange whose own keys
    /// (`ids_per_set` of them) our KME delivered. Queues what is new, bounded by the cache
    /// size, for the refill thread.
    pub fn accept_announcement(&self, peer: usize, ids: &[KeyId], ids_per_set: usize) {
        if self.shared.target == 0 || ids.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        let buffers = &mut state.buffers[peer];
        buffers.ids_per_set = ids_per_set.max(1);
        let room = (self.shared.target * buffers.ids_per_set).saturating_sub(
            buffers.inbound.len() + buffers.pending.len() + buffers.in_flight.len(),
        );
        let fresh: Vec<KeyId> = ids
            .iter()
            .filter(|id| {
                !buffers.inbound.contains_key(id)
                    && !buffers.pending.contains(id)
                    && !buffers.in_flight.contains(id)
            })
            .take(room)
            .copied()
            .collect();
        if fresh.is_empty() {
            return;
        }
        buffers.pending.extend(fresh);
        buffers.settle(Instant::now());
        self.shared.wake.notify_all();
    }
}

impl Drop for Supply {
    fn drop(&mut self) {
        // The refill thread holds the shared state; tell it to finish. Buffered keys are
        // wiped when the last reference goes.
        self.shared.lock().stopped = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, counter: &AtomicU64, keys: usize) {
        counter.fetch_add(keys as u64, Ordering::Relaxed);
    }

    fn waste(&self, buffer: &str, peer: &SupplyPeer, keys: usize) {
        self.count(&self.counters.wasted, keys);
        log::debug!(
            "qkd: wiped {keys} unused {buffer} key(s) of SAE '{}' (expired or superseded)",
            peer.sae_id
        );
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let left: usize = state
            .buffers
            .iter()
            .map(|b| b.outbound.iter().map(|s| s.keys.len()).sum::<usize>() + b.inbound.len())
            .sum();
        if left > 0 {
            log::info!("qkd: wiping {left} unused buffered key(s) (reload or unload)");
        }
    }
}

#[cfg(test)]
mod tests;
