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
//! (`refill.rs`) serve every peer, at most one request per peer and direction and a bounded
//! number per KME in flight; they start after charon dropped its privileges. An announcement
//! is only a hint, acted on once the IKE SA that carried it is authenticated: every exchange
//! names its key IDs and falls back to fetching them on demand, so a lost, stale or repeated
//! announcement, or a restart of either side, can only cost a KME round trip. Every key is
//! used once and wiped when used, expired (`key_ttl`) or dropped; keys fetched but never
//! used are counted as wasted.

mod depth;
mod limit;
mod refill;
mod used;

pub use limit::{Permit, RequestLimiter};
pub use refill::{REFILL_THREADS, SETTLE};

use depth::Depth;
use used::UsedKeyIds;

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
    /// Number of the enc_keys (per peer) that delivered it.
    pub enc_number: u64,
}

impl KeySet {
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|k| k.id)
    }
}

/// An exchange this gateway started as master, until it is over (dropped). At a KME that
/// replaces unfetched keys, no other enc_keys for the peer may run meanwhile.
pub struct Outstanding {
    shared: Arc<Shared>,
    peer: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.shared.lock().buffers[self.peer].outstanding -= 1;
        self.shared.wake.notify_all();
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
    peer: usize,
    ids: Vec<KeyId>,
    ids_per_set: usize,
}

/// Most announcements held for IKE SAs being set up: an unauthenticated peer can occupy no
/// more than this fixed budget (oldest dropped first), and nothing is fetched for them.
const MAX_UNVERIFIED: usize = 256;
/// A KME whose dec_keys answers come within this is fast enough for exchanges with peers
/// not yet authenticated to wait for (a few answers' time, plus FAST_KME_MARGIN).
const FAST_KME: Duration = Duration::from_millis(250);
const FAST_KME_MARGIN: Duration = Duration::from_millis(50);
/// Most key IDs pending per peer when exchanges add the ones they wait for (a flood of
/// unauthenticated exchanges naming made-up IDs gets no further).
const MAX_PENDING: usize = 256;
/// Key IDs remembered as used by the slave side (512 KiB at most).
const USED_IDS_REMEMBERED: usize = 16384;

struct Buffers {
    outbound: VecDeque<KeySet>,
    depth: Depth,
    /// An enc_keys refill for this peer is in flight.
    refilling_outbound: bool,
    inbound: HashMap<KeyId, Cached>,
    /// Announced, not fetched yet (oldest first), with the time of the announcement.
    pending: VecDeque<(KeyId, Instant)>,
    /// Being fetched by a refill thread right now.
    in_flight: HashSet<KeyId>,
    /// An exchange waits for pending keys: fetch them without settling first.
    urgent: bool,
    /// Exchanges started as master that are not over yet.
    outstanding: usize,
    /// enc_keys answered for this peer so far (refills and on-demand fetches).
    enc_count: u64,
    /// The peer's KME pair replaces keys the slave has not fetched when enc_keys is called
    /// again (detected): one set at a time, no enc_keys while an exchange is outstanding.
    replacing: bool,
    /// When the dec_keys refill in flight (if any) was sent.
    inbound_asked: Option<Instant>,
    /// Smoothed time a dec_keys refill takes (None before the first).
    inbound_delay: Option<Duration>,
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
    fn new(limits: &DepthLimits) -> Buffers {
        Buffers {
            outbound: VecDeque::new(),
            depth: Depth::new(limits.floor, limits.cap),
            refilling_outbound: false,
            inbound: HashMap::new(),
            pending: VecDeque::new(),
            in_flight: HashSet::new(),
            urgent: false,
            outstanding: 0,
            enc_count: 0,
            replacing: false,
            inbound_asked: None,
            inbound_delay: None,
            ids_per_set: 1,
            retry_at: None,
            settle_until: None,
            backoff: Duration::ZERO,
        }
    }

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

    pub fn levels(&self, peer: usize) -> Levels {
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

    /// Master side: the next unexpired outbound key set for `peer`. When the queue is empty,
    /// waits until `deadline` for the refill in flight or the one the refill threads start
    /// now (they batch, and keep within the KME's limits, what many exchanges at once would
    /// otherwise ask one by one). None: no refill runs or it failed (the KME is backed off):
    /// fetch on demand, which says why there is no key.
    pub fn take_outbound(&self, peer: usize, deadline: Instant) -> Option<KeySet> {
        let mut state = self.shared.lock();
        if self.shared.limits.floor > 0 {
            state.buffers[peer].depth.taken(Instant::now(), 1);
        }
        loop {
            let now = Instant::now();
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
            // Wake the refill threads: demand just rose, the queue may need more.
            self.shared.wake.notify_all();
            // At a replacing KME the refill waits for the exchanges outstanding; so do we.
            let waits_for_others = buffers.replacing && buffers.outstanding > 0;
            let refill_coming =
                buffers.refilling_outbound || waits_for_others || can_refill(&state, peer, now);
            if !refill_coming || now >= deadline || state.stopped {
                return None;
            }
            state = self.shared.wait(state, deadline - now);
        }
    }

    /// Master side: an exchange with `peer` starts (with keys from the queue or on demand);
    /// it is outstanding until the returned guard is dropped.
    pub fn outstanding(&self, peer: usize) -> Outstanding {
        self.shared.lock().buffers[peer].outstanding += 1;
        Outstanding {
            shared: self.shared.clone(),
            peer,
        }
    }

    /// Master side: an on-demand enc_keys for `peer` delivered (it counts like a refill:
    /// at a replacing KME it replaced what the peer had not fetched).
    pub fn fetched_on_demand(&self, peer: usize) {
        self.shared.lock().buffers[peer].enc_count += 1;
    }

    /// Master side: the peer did not obtain a set taken from the queue (the exchange failed
    /// or was refused). When enc_keys was called for the peer after that set's, the KME pair
    /// probably replaced it: from now on one set at a time for this peer (warned once).
    pub fn unconfirmed(&self, peer: usize, enc_number: u64) {
        let mut state = self.shared.lock();
        let buffers = &mut state.buffers[peer];
        if buffers.replacing || enc_number + 1 >= buffers.enc_count {
            return;
        }
        buffers.replacing = true;
        let p = &self.shared.peers[peer];
        log::warn!(
            "qkd: SAE '{}' could not obtain key IDs this gateway obtained from KME {} before \
             a later enc_keys for it: the KME pair replaces keys the slave has not fetched yet. \
             Buffering for this peer now keeps one key set and asks for the next only when the \
             exchange using the last one is over (until reload); if the KME does not replace \
             keys, check the peer's KME instead",
            p.sae_id,
            p.source.url()
        );
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
    /// not cached are handed to the refill threads first in line (bounded per peer), and
    /// waited for until `deadline`, like keys they are fetching already. For an exchange
    /// with a peer not yet `authenticated`, only while our KME answers this peer fast
    /// (FAST_KME), and no longer than a few of its answers take: a flood of exchanges
    /// before authentication cannot hold charon's threads waiting on a slow KME. None: the
    /// refill failed, cannot run or is too slow; what is still pending is withdrawn so that
    /// the caller can fetch on demand (within its own request budget, saying why there is
    /// no key) without a double fetch.
    pub fn take_inbound(
        &self,
        peer: usize,
        ids: &[KeyId],
        deadline: Instant,
        authenticated: bool,
    ) -> Option<Vec<QkdKey>> {
        let mut state = self.shared.lock();
        let deadline = if authenticated {
            deadline
        } else {
            let b = &state.buffers[peer];
            let now = Instant::now();
            // Before a first dec_keys, the enc_keys refills (the same KME) tell its speed.
            match b
                .inbound_delay
                .or(b.depth.delay())
                .filter(|d| *d <= FAST_KME)
            {
                // A dec_keys for this peer stuck longer than that: the KME is slow now.
                Some(delay) if b.inbound_asked.is_none_or(|at| now - at <= delay * 4) => {
                    deadline.min(now + delay * 4 + FAST_KME_MARGIN)
                }
                _ => now,
            }
        };
        loop {
            let now = Instant::now();
            let buffers = &mut state.buffers[peer];
            let fresh = |c: &Cached| now.duration_since(c.obtained) < self.shared.ttl;
            if ids
                .iter()
                .all(|id| buffers.inbound.get(id).is_some_and(fresh))
            {
                let keys: Vec<QkdKey> = ids
                    .iter()
                    .filter_map(|id| buffers.inbound.remove(id))
                    .map(|c| c.key)
                    .collect();
                self.shared.count(&self.shared.counters.used, keys.len());
                return Some(keys);
            }
            let refill_possible = can_refill(&state, peer, now);
            let buffers = &mut state.buffers[peer];
            if refill_possible {
                let asked: Vec<KeyId> = ids
                    .iter()
                    .filter(|id| {
                        !buffers.inbound.get(id).is_some_and(fresh)
                            && !buffers.in_flight.contains(id)
                            && !buffers.pending.iter().any(|(p, _)| p == *id)
                    })
                    .copied()
                    .collect();
                if !asked.is_empty() && buffers.pending.len() + asked.len() <= MAX_PENDING {
                    for id in asked.into_iter().rev() {
                        buffers.pending.push_front((id, now));
                    }
                    buffers.urgent = true;
                    self.shared.wake.notify_all();
                }
            }
            let coming = ids.iter().any(|id| {
                buffers.in_flight.contains(id)
                    || (refill_possible && buffers.pending.iter().any(|(p, _)| p == id))
            });
            if !coming || now >= deadline || state.stopped {
                let buffers = &mut state.buffers[peer];
                buffers.pending.retain(|(id, _)| !ids.contains(id));
                // Keys of this exchange already cached are no use without the others.
                for id in ids {
                    if buffers.inbound.remove(id).is_some() {
                        self.shared.waste("inbound", &self.shared.peers[peer], 1);
                    }
                }
                return None;
            }
            state = self.shared.wait(state, deadline - now);
        }
    }

    /// Slave side: `peer` announced `ids` in an authenticated exchange whose own keys
    /// (`ids_per_set` of them) our KME delivered. Queues what is new, bounded by the cache
    /// size (`buffer_max` sets), for the refill threads.
    pub fn accept_announcement(&self, peer: usize, ids: &[KeyId], ids_per_set: usize) {
        let mut state = self.shared.lock();
        self.shared.accept(&mut state, peer, ids, ids_per_set);
    }

    /// Slave side, in an IKE SA not yet authenticated (IKE_SA_INIT/IKE_INTERMEDIATE): the
    /// announcement is held, unused, until [`Supply::authenticated`] says the IKE SA that
    /// carried it completed IKE_AUTH. Later announcements of the same IKE SA replace it.
    pub fn hold_announcement(&self, ike_sa: u32, peer: usize, ids: &[KeyId], ids_per_set: usize) {
        if self.shared.limits.floor == 0 || ids.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        state.unverified.retain(|u| u.ike_sa != ike_sa);
        if state.unverified.len() >= MAX_UNVERIFIED {
            state.unverified.pop_front();
        }
        state.unverified.push_back(Unverified {
            ike_sa,
            peer,
            ids: ids.iter().take(MAX_KEY_IDS).copied().collect(),
            ids_per_set,
        });
    }

    /// IKE SA `ike_sa` is authenticated: what it announced may be fetched now.
    pub fn authenticated(&self, ike_sa: u32) {
        let mut state = self.shared.lock();
        if let Some(pos) = state.unverified.iter().position(|u| u.ike_sa == ike_sa) {
            let held = state.unverified.remove(pos).expect("position is in range");
            self.shared
                .accept(&mut state, held.peer, &held.ids, held.ids_per_set);
        }
    }

    /// Slave side: records the key IDs an exchange is about to be keyed with; Err names one
    /// that keyed an exchange before (a KME answering dec_keys twice): the exchange must fail.
    pub fn record_used(&self, ids: &[KeyId]) -> Result<(), KeyId> {
        self.shared.lock().used_as_slave.record(ids)
    }

    /// IKE SA `ike_sa` is gone (or failed) before it was authenticated: forget what it said.
    pub fn forget(&self, ike_sa: u32) {
        self.shared.lock().unverified.retain(|u| u.ike_sa != ike_sa);
    }
}

/// A refill for `peer` can start now: threads run and its KME is not backed off.
fn can_refill(state: &State, peer: usize, now: Instant) -> bool {
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
    fn target(&self, state: &State, peer: usize, now: Instant) -> usize {
        let floor = self.limits.floor;
        if state.buffers[peer].replacing {
            return floor.min(1);
        }
        let others_above_floor: usize = state
            .buffers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != peer)
            .map(|(_, b)| b.outbound.len().saturating_sub(floor))
            .sum();
        let room = self.limits.total.saturating_sub(others_above_floor);
        state.buffers[peer].depth.target(now, room)
    }

    fn accept(&self, state: &mut State, peer: usize, ids: &[KeyId], ids_per_set: usize) {
        if self.limits.floor == 0 || ids.is_empty() {
            return;
        }
        let buffers = &mut state.buffers[peer];
        buffers.ids_per_set = ids_per_set.max(1);
        let room = (self.limits.cap * buffers.ids_per_set).saturating_sub(
            buffers.inbound.len() + buffers.pending.len() + buffers.in_flight.len(),
        );
        let fresh: Vec<KeyId> = ids
            .iter()
            .filter(|id| {
                !buffers.inbound.contains_key(id)
                    && !buffers.pending.iter().any(|(p, _)| p == *id)
                    && !buffers.in_flight.contains(id)
            })
            .take(room)
            .copied()
            .collect();
        if fresh.is_empty() {
            return;
        }
        let now = Instant::now();
        buffers
            .pending
            .extend(fresh.into_iter().map(|id| (id, now)));
        buffers.settle(now);
        self.wake.notify_all();
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
