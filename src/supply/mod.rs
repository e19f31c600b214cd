//! Key supply (docs/design.md, "Key supply"): QKD keys in place on both sides before an
//! exchange needs them.
//!
//! Per peer, two buffers:
//! * the **outbound queue**: key sets this gateway obtained as ETSI master (enc_keys), used
//!   one per exchange it initiates, and announced to the peer in every exchange;
//! * the **inbound cache**: keys the peer announced, fetched from our KME as slave
//!   (dec_keys) before the peer's exchange names them.
//!
//! Buffers belong to the peer, not to an IKE SA: keys announced in one IKE SA serve every
//! later exchange with that peer. The depth of the outbound queue follows the measured
//! demand and KME delay (`depth.rs`), between `buffer` and `buffer_max`. A few refill threads
//! (`refill.rs`) serve every peer, at most two requests per peer and direction and a bounded
//! number per KME in flight; they start after charon dropped its privileges. An announcement
//! is only a hint, acted on once the IKE SA that carried it is authenticated: every exchange
//! names its key IDs and falls back to fetching them on demand, so a lost, stale or repeated
//! announcement, or a restart of either side, can only cost a KME round trip. Every key is
//! used once and wiped when used, expired (`key_ttl`) or dropped; keys fetched but never
//! used are counted as wasted.

mod depth;
mod inbound;
mod limit;
mod outbound;
mod refill;
mod used;

pub use limit::{Permit, RequestLimiter};
pub use outbound::Outstanding;
use refill::REFILL_THREADS;

use depth::Depth;
use used::UsedKeyIds;

use crate::ids::{KeyId, PeerIndex, SaeId};
use crate::kme::{KeySource, QkdKey};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The keys of one exchange: `key_size` bits over one or more KME keys.
pub struct KeySet {
    pub keys: Vec<QkdKey>,
    obtained: Instant,
    /// When its key IDs were last announced to the peer.
    announced: Option<Instant>,
    /// Number of the enc_keys (per peer) that delivered it.
    pub enc_number: u64,
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

/// How many key sets the supply may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthLimits {
    /// Outbound sets kept per peer even when idle (`buffer`); 0 turns buffering off.
    pub floor: usize,
    /// Most outbound sets per peer however high the demand (`buffer_max`).
    pub cap: usize,
    /// Most outbound sets above the floors over all peers together (`buffer_total`).
    pub total: usize,
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

/// Buffer levels and rates of one peer, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    pub outbound_sets: usize,
    pub inbound_keys: usize,
    pub pending_keys: usize,
    /// Outbound sets the depth controller keeps in place now, and its cap.
    pub target_sets: usize,
    pub cap_sets: usize,
    /// Key sets this gateway's exchanges take per second (smoothed).
    pub demand_per_second: f64,
    /// Keys the KME delivered into the outbound queue per second (smoothed).
    pub supply_per_second: f64,
    /// The KME pair replaces unfetched keys (detected): one set at a time.
    pub replacing_kme: bool,
}

impl Levels {
    /// How long the outbound queue lasts at the current demand without a refill.
    pub fn dry_in(&self) -> Option<Duration> {
        (self.demand_per_second > 0.0)
            .then(|| Duration::from_secs_f64(self.outbound_sets as f64 / self.demand_per_second))
    }
}

pub struct Supply {
    shared: Arc<Shared>,
}

struct Shared {
    peers: Vec<SupplyPeer>,
    /// Per peer: index of its KME among the distinct sources (peers may share one).
    kme_of: Vec<usize>,
    limits: DepthLimits,
    key_size: u32,
    ttl: Duration,
    /// How long announced IDs our KME does not deliver are asked for (refill::ANNOUNCEMENT_TTL).
    announcement_ttl: Duration,
    state: Mutex<State>,
    /// Signalled when buffers change (a take, an announcement, a delivery) or on stop.
    wake: Condvar,
    started: AtomicBool,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    counters: SupplyCounters,
}

struct State {
    stopped: bool,
    /// Refill threads still running.
    live_threads: usize,
    buffers: Vec<Buffers>,
    /// Refill requests in flight per KME (indexed like `Shared::kme_of`'s values).
    kme_requests: Vec<usize>,
    /// Announcements received in IKE SAs not yet authenticated, by IKE SA unique ID.
    unverified: VecDeque<Unverified>,
    /// Key IDs this gateway used as slave (ETSI dec_keys), to refuse a second use.
    used_as_slave: UsedKeyIds,
}

/// An announcement held until its IKE SA is authenticated (or gone).
struct Unverified {
    ike_sa: u32,
    peer: PeerIndex,
    ids: Vec<KeyId>,
    ids_per_set: usize,
}

/// Key IDs remembered as used by the slave side (512 KiB at most).
const USED_IDS_REMEMBERED: usize = 16384;

struct Buffers {
    outbound: VecDeque<KeySet>,
    depth: Depth,
    /// enc_keys refills for this peer in flight, and the sets they asked for.
    outbound_requests: usize,
    outbound_in_flight: usize,
    inbound: HashMap<KeyId, Cached>,
    /// Announced, not fetched yet (oldest first), with the time of the announcement.
    pending: VecDeque<(KeyId, Instant)>,
    /// Being fetched by a refill thread right now.
    in_flight: HashSet<KeyId>,
    /// Exchanges started as master that are not over yet.
    outstanding: usize,
    /// Exchanges waiting for an outbound set right now (the queue was empty).
    outbound_waiting: usize,
    /// enc_keys answered for this peer so far (refills and on-demand fetches).
    enc_count: u64,
    /// The peer's KME pair replaces keys the slave has not fetched when enc_keys is called
    /// again (detected): one set at a time, no enc_keys while an exchange is outstanding.
    replacing: bool,
    /// When each dec_keys refill for this peer in flight was sent.
    inbound_sent: Vec<Instant>,
    /// Smoothed time a dec_keys refill takes (None before the first).
    inbound_delay: Option<Duration>,
    /// Inbound keys one peer exchange uses; bounds what an announcement may ask for.
    ids_per_set: usize,
    /// No refill for this peer before then (after a KME failure).
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Buffers {
    fn new(limits: &DepthLimits) -> Buffers {
        Buffers {
            outbound: VecDeque::new(),
            depth: Depth::new(limits.floor, limits.cap),
            outbound_requests: 0,
            outbound_in_flight: 0,
            inbound: HashMap::new(),
            pending: VecDeque::new(),
            in_flight: HashSet::new(),
            outstanding: 0,
            outbound_waiting: 0,
            enc_count: 0,
            replacing: false,
            inbound_sent: Vec::new(),
            inbound_delay: None,
            ids_per_set: 1,
            retry_at: None,
            backoff: Duration::ZERO,
        }
    }
}

struct Cached {
    key: QkdKey,
    obtained: Instant,
}

impl Supply {
    /// `peers` indexed like the configuration's peers. Starts nothing: see [`Supply::start`].
    pub fn new(
        peers: Vec<SupplyPeer>,
        limits: DepthLimits,
        key_size: u32,
        ttl: Duration,
    ) -> Supply {
        let mut kmes: Vec<&Arc<dyn KeySource>> = Vec::new();
        let kme_of = peers
            .iter()
            .map(
                |p| match kmes.iter().position(|k| Arc::ptr_eq(k, &p.source)) {
                    Some(i) => i,
                    None => {
                        kmes.push(&p.source);
                        kmes.len() - 1
                    }
                },
            )
            .collect();
        let kme_count = kmes.len();
        let buffers = peers.iter().map(|_| Buffers::new(&limits)).collect();
        Supply {
            shared: Arc::new(Shared {
                peers,
                kme_of,
                limits,
                key_size,
                ttl,
                announcement_ttl: refill::ANNOUNCEMENT_TTL,
                state: Mutex::new(State {
                    stopped: false,
                    live_threads: 0,
                    buffers,
                    kme_requests: vec![0; kme_count],
                    unverified: VecDeque::new(),
                    used_as_slave: UsedKeyIds::new(USED_IDS_REMEMBERED),
                }),
                wake: Condvar::new(),
                started: AtomicBool::new(false),
                threads: Mutex::new(Vec::new()),
                counters: SupplyCounters::default(),
            }),
        }
    }

    /// Starts the refill threads once (no-op with `buffer = 0`); they fill every peer's
    /// outbound queue to the floor at once. Must be called from a thread of charon that runs
    /// after charon dropped its privileges (a worker): the threads inherit its capabilities.
    pub fn start(&self) {
        if self.shared.limits.floor == 0 || self.shared.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut threads = self
            .shared
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for n in 0..REFILL_THREADS {
            let shared = self.shared.clone();
            shared.lock().live_threads += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("qkd-supply-{n}"))
                .spawn(move || refill::run(shared));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    self.shared.lock().live_threads -= 1;
                    log::error!(
                        "qkd: cannot start key supply thread {n} ({e}): {} of {REFILL_THREADS} run; \
                         keys are fetched on demand when none is in place",
                        threads.len()
                    );
                    break;
                }
            }
        }
    }

    pub fn counters(&self) -> &SupplyCounters {
        &self.shared.counters
    }

    pub fn levels(&self, peer: PeerIndex) -> Levels {
        let now = Instant::now();
        let state = self.shared.lock();
        let b = &state.buffers[peer];
        Levels {
            outbound_sets: b.outbound.len(),
            inbound_keys: b.inbound.len(),
            pending_keys: b.pending.len() + b.in_flight.len(),
            target_sets: self.shared.target(&state, peer, now),
            cap_sets: b.depth.cap(),
            demand_per_second: b.depth.demand(now),
            supply_per_second: b.depth.supply(now),
            replacing_kme: b.replacing,
        }
    }
}

/// A refill for `peer` can start now: threads run and its KME is not backed off.
fn can_refill(state: &State, peer: PeerIndex, now: Instant) -> bool {
    state.live_threads > 0
        && !state.stopped
        && state.buffers[peer].retry_at.is_none_or(|at| at <= now)
}

impl Drop for Supply {
    fn drop(&mut self) {
        // Tell the refill threads to finish and wait for them, bounded by the longest KME
        // request one of them may be in; buffered keys are wiped when the last reference goes.
        let bound = self
            .shared
            .peers
            .iter()
            .map(|p| p.kme_timeout)
            .max()
            .unwrap_or_default()
            + Duration::from_secs(1);
        let deadline = Instant::now() + bound;
        let mut state = self.shared.lock();
        state.stopped = true;
        self.shared.wake.notify_all();
        while state.live_threads > 0 {
            let now = Instant::now();
            if now >= deadline {
                log::error!(
                    "qkd: {} key supply thread(s) still in a KME request after {bound:?}; \
                     not waiting longer",
                    state.live_threads
                );
                return;
            }
            state = self.shared.wait(state, deadline - now);
        }
        drop(state);
        let threads = std::mem::take(
            &mut *self
                .shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for handle in threads {
            // The thread has left refill::run; a panic there was caught and logged.
            let _ = handle.join();
        }
    }
}

impl Shared {
    /// Waits for a change of the buffers (or `timeout`).
    fn wait<'a>(&self, state: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        self.wake
            .wait_timeout(state, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// A panic while the state was locked is recovered from, logged and counted
    /// (`crate::health`), never silently.
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::health::lock("key supply", &self.state)
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

    /// Outbound sets to keep for `peer` now: its depth controller's answer, with what the
    /// other peers hold above their floors counted against `buffer_total`.
    fn target(&self, state: &State, peer: PeerIndex, now: Instant) -> usize {
        self.plan(state, peer, now).1
    }

    /// Refill below the first, up to the second (depth::Depth::plan).
    fn plan(&self, state: &State, peer: PeerIndex, now: Instant) -> (usize, usize) {
        let floor = self.limits.floor;
        if state.buffers[peer].replacing {
            let one = floor.min(1);
            return (one, one);
        }
        let others_above_floor: usize = state
            .buffers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != peer.0)
            .map(|(_, b)| b.outbound.len().saturating_sub(floor))
            .sum();
        let room = self.limits.total.saturating_sub(others_above_floor);
        state.buffers[peer].depth.plan(now, room)
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
