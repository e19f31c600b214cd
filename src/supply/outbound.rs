//! The master side of the key supply: exchanges this gateway starts take key sets from the
//! peer's outbound queue (or wait for the refill threads), announce what comes next, and at
//! a KME that replaces unfetched keys run one at a time.

use super::{can_refill, KeySet, Shared, State, Supply};
use crate::ids::{KeyId, PeerIndex};
use crate::wire::MAX_KEY_IDS;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A set announced this recently gives way to sets not announced yet.
const REANNOUNCE: Duration = Duration::from_secs(1);

/// An exchange this gateway started as master, until it is over (dropped). At a KME that
/// replaces unfetched keys, no other enc_keys for the peer may run meanwhile.
pub struct Outstanding {
    shared: Arc<Shared>,
    peer: PeerIndex,
    since: Instant,
}

impl Outstanding {
    /// The peer answered the exchange (its keys confirmed): the round trip tells the depth
    /// controller whether the peer had to wait for keys.
    pub fn answered(self) {
        let took = self.since.elapsed();
        self.shared.lock().buffers[self.peer].depth.answered(took);
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.shared.lock().buffers[self.peer].outstanding -= 1;
        self.shared.wake.notify_all();
    }
}

impl Supply {
    /// Master side: the next unexpired outbound key set for `peer`. When the queue is empty,
    /// waits until `deadline` for the refill in flight or the one the refill threads start
    /// now (they batch, and keep within the KME's limits, what many exchanges at once would
    /// otherwise ask one by one). None: no refill runs or it failed (the KME is backed off):
    /// fetch on demand, which says why there is no key. The exchange is outstanding from
    /// the moment it took the set (at a replacing KME no refill may run in between) until
    /// the returned guard is dropped.
    pub fn take_outbound(
        &self,
        peer: PeerIndex,
        deadline: Instant,
    ) -> Option<(KeySet, Outstanding)> {
        let mut state = self.shared.lock();
        let counts_demand = self.shared.limits.floor > 0;
        if counts_demand {
            state.buffers[peer].depth.taken(Instant::now(), 1);
        }
        let mut waiting = false;
        state.buffers[peer].outbound_waiting += 1;
        let taken = loop {
            let now = Instant::now();
            let buffers = &mut state.buffers[peer];
            let mut taken = None;
            while let Some(set) = buffers.outbound.pop_front() {
                if now.duration_since(set.obtained) < self.shared.ttl {
                    self.shared
                        .count(&self.shared.counters.used, set.keys.len());
                    taken = Some(set);
                    break;
                }
                self.shared
                    .waste("outbound", &self.shared.peers[peer], set.keys.len());
            }
            // Wake the refill threads: demand just rose, the queue may need more.
            self.shared.wake.notify_all();
            if taken.is_some() {
                break taken;
            }
            // At a replacing KME the refill waits for the exchanges outstanding; so do we.
            let waits_for_others = buffers.replacing && buffers.outstanding > 0;
            let refill_coming =
                buffers.outbound_requests > 0 || waits_for_others || can_refill(&state, peer, now);
            if !refill_coming || now >= deadline || state.stopped {
                break None;
            }
            if !waiting && counts_demand {
                waiting = true;
                state.buffers[peer].depth.wait_started(now);
            }
            state = self.shared.wait(state, deadline - now);
        };
        state.buffers[peer].outbound_waiting -= 1;
        if waiting {
            state.buffers[peer].depth.wait_ended(Instant::now());
        }
        let set = taken?;
        state.buffers[peer].outstanding += 1;
        Some((set, self.outstanding_guard(peer)))
    }

    /// Master side: an exchange with `peer` starts (with keys from the queue or on demand);
    /// it is outstanding until the returned guard is dropped.
    pub fn outstanding(&self, peer: PeerIndex) -> Outstanding {
        self.shared.lock().buffers[peer].outstanding += 1;
        self.outstanding_guard(peer)
    }

    /// The guard of an exchange already counted as outstanding.
    fn outstanding_guard(&self, peer: PeerIndex) -> Outstanding {
        Outstanding {
            shared: self.shared.clone(),
            peer,
            since: Instant::now(),
        }
    }

    /// Master side: an on-demand enc_keys for `peer` delivered (it counts like a refill:
    /// at a replacing KME it replaced what the peer had not fetched).
    pub fn fetched_on_demand(&self, peer: PeerIndex) {
        self.shared.lock().buffers[peer].enc_count += 1;
    }

    /// Master side: the peer did not obtain a set taken from the queue (the exchange failed
    /// or was refused). When enc_keys was called for the peer after that set's, the KME pair
    /// probably replaced it: from now on one set at a time for this peer (warned once).
    /// Only from an exchange that ran alone: with others at the same time the peer may
    /// have refused for its own limits (a burst of new IKE SAs), and the one-at-a-time mode
    /// would then serialize the whole burst.
    pub fn unconfirmed(&self, peer: PeerIndex, enc_number: u64) {
        let mut state = self.shared.lock();
        let buffers = &state.buffers[peer];
        // This exchange's own guard is still held.
        if enc_number + 1 >= buffers.enc_count || buffers.outstanding > 1 {
            return;
        }
        self.shared.replacing(
            &mut state,
            peer,
            "could not obtain key IDs this gateway obtained before a later enc_keys for it",
        );
    }

    /// Slave side, in an authenticated exchange: our KME says key IDs the peer obtained as
    /// master do not exist. The same KME pair serves our keys towards the peer, so our own
    /// queue for it is kept as for a replacing KME, before one of our exchanges fails too.
    pub fn named_keys_missing(&self, peer: PeerIndex) {
        let mut state = self.shared.lock();
        self.shared.replacing(
            &mut state,
            peer,
            "named key IDs our KME says do not exist (they were replaced before we fetched them)",
        );
    }

    /// The key IDs this gateway will use towards `peer`, for the peer to fetch ahead: sets
    /// not announced within [`REANNOUNCE`] first (a queue deeper than one announcement then
    /// reaches the peer in batches, one `dec_keys` each, not one ID per exchange), then
    /// the next sets to be used again, in case an announcement was lost.
    pub fn announcement(&self, peer: PeerIndex) -> Vec<KeyId> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let queue = &mut state.buffers[peer].outbound;
        let recent = |set: &KeySet| set.announced.is_some_and(|at| now - at < REANNOUNCE);
        let (fresh, again): (Vec<&mut KeySet>, Vec<&mut KeySet>) =
            queue.iter_mut().partition(|set| !recent(set));
        let mut ids = Vec::new();
        for set in fresh.into_iter().chain(again) {
            if ids.len() + set.keys.len() > MAX_KEY_IDS {
                break;
            }
            ids.extend(set.ids());
            set.announced = Some(now);
        }
        ids
    }
}

impl Shared {
    /// From now on (until reload) one key set at a time for `peer`; warned once.
    fn replacing(&self, state: &mut State, peer: PeerIndex, what: &str) {
        let buffers = &mut state.buffers[peer];
        if buffers.replacing || self.limits.floor == 0 {
            return;
        }
        buffers.replacing = true;
        // Sets from an enc_keys before the latest are gone at the KME already.
        let latest = buffers.enc_count.saturating_sub(1);
        let mut dropped = 0;
        buffers.outbound.retain(|set| {
            let alive = set.enc_number >= latest;
            if !alive {
                dropped += set.keys.len();
            }
            alive
        });
        let p = &self.peers[peer];
        if dropped > 0 {
            self.waste("replaced", p, dropped);
        }
        log::warn!(
            "qkd: SAE '{}' {what}: the KME pair (ours: {}) replaces keys the slave has not \
             fetched yet. Buffering for this peer now keeps one key set and asks for the next \
             only when the exchange using the last one is over (until reload); if the KMEs do \
             not replace keys, check the KME of the side that failed instead",
            p.sae_id,
            p.source.url()
        );
    }
}
