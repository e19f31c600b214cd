//! The slave side of the key supply: keys the peer names, from the inbound cache or fetched
//! for the exchange by the refill threads; announcements accepted, or held until their IKE SA
//! is authenticated; the record of key IDs used.

use super::{can_refill, Buffers, Cached, Shared, State, Supply, Unverified};
use crate::ids::{KeyId, PeerIndex};
use crate::kme::QkdKey;
use crate::wire::MAX_KEY_IDS;
use std::time::{Duration, Instant};

/// Most announcements held for IKE SAs being set up: an unauthenticated peer can occupy no
/// more than this fixed budget (oldest dropped first), and nothing is fetched for them.
pub(super) const MAX_UNVERIFIED: usize = 256;
/// A KME whose dec_keys answers come within this (plus FAST_KME_MARGIN) is fast enough for
/// exchanges with peers not yet authenticated to wait for. They wait while it stays so, at
/// most UNAUTHENTICATED_WAIT: a burst of exchanges (many peers initiating at once after a
/// start) is served by a few rounds of shared requests, which then take longer than one
/// answer; a flood holds charon's workers no longer than that, and not at all on a slow KME.
const FAST_KME: Duration = Duration::from_millis(250);
const FAST_KME_MARGIN: Duration = Duration::from_millis(50);
const UNAUTHENTICATED_WAIT: Duration = Duration::from_secs(1);
/// Most key IDs pending per peer when exchanges add the ones they wait for (a flood of
/// unauthenticated exchanges naming made-up IDs gets no further).
const MAX_PENDING: usize = 256;

impl Supply {
    /// Slave side: the keys `ids` from the inbound cache, in order, if all are there. Keys
    /// not cached are handed to the refill threads first in line (bounded per peer), and
    /// waited for until `deadline`, like keys they are fetching already. For an exchange
    /// with a peer not yet `authenticated`, only while our KME answers this peer fast
    /// (FAST_KME), at most UNAUTHENTICATED_WAIT: a flood of exchanges before
    /// authentication cannot hold charon's threads waiting on a slow KME. None: the
    /// refill failed, cannot run or is too slow; what is still pending is withdrawn so that
    /// the caller can fetch on demand (within its own request budget, saying why there is
    /// no key) without a double fetch.
    pub fn take_inbound(
        &self,
        peer: PeerIndex,
        ids: &[KeyId],
        deadline: Instant,
        authenticated: bool,
    ) -> Option<Vec<QkdKey>> {
        let mut state = self.shared.lock();
        // Keys an authenticated peer announced and a refill is fetching are waited for until
        // `deadline` in any case; `ask_deadline` bounds waiting for what this exchange asks.
        let ask_deadline = if authenticated {
            deadline
        } else if answers_fast(&state.buffers[peer], Instant::now()) {
            deadline.min(Instant::now() + UNAUTHENTICATED_WAIT)
        } else {
            Instant::now()
        };
        // The refill threads are asked once: what they could not deliver is fetched on demand.
        let mut first_pass = true;
        let mut asked = false;
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
            if refill_possible && first_pass && now < ask_deadline {
                let missing: Vec<KeyId> = ids
                    .iter()
                    .filter(|id| {
                        !buffers.inbound.get(id).is_some_and(fresh)
                            && !buffers.in_flight.contains(id)
                            && !buffers.pending.iter().any(|(p, _)| p == *id)
                    })
                    .copied()
                    .collect();
                if !missing.is_empty() && buffers.pending.len() + missing.len() <= MAX_PENDING {
                    for id in missing.into_iter().rev() {
                        buffers.pending.push_front((id, now));
                    }
                    asked = true;
                    self.shared.wake.notify_all();
                }
            }
            first_pass = false;
            let wait_until = if asked { ask_deadline } else { deadline };
            let coming = ids.iter().any(|id| {
                buffers.in_flight.contains(id)
                    || (refill_possible && buffers.pending.iter().any(|(p, _)| p == id))
            });
            let kme_slowed = asked && !authenticated && !answers_fast(buffers, now);
            if !coming || now >= wait_until || kme_slowed || state.stopped {
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
            // A KME that stops answering wakes nobody: look again within FAST_KME.
            let wait = (wait_until - now).min(FAST_KME);
            state = self.shared.wait(state, wait);
        }
    }

    /// Slave side: `peer` announced `ids` in an authenticated exchange whose own keys
    /// (`ids_per_set` of them) our KME delivered. Queues what is new, bounded by the cache
    /// size (`buffer_max` sets), for the refill threads.
    pub fn accept_announcement(&self, peer: PeerIndex, ids: &[KeyId], ids_per_set: usize) {
        let mut state = self.shared.lock();
        self.shared.accept(&mut state, peer, ids, ids_per_set);
    }

    /// Slave side, in an IKE SA not yet authenticated (IKE_SA_INIT/IKE_INTERMEDIATE): the
    /// announcement is held, unused, until [`Supply::authenticated`] says the IKE SA that
    /// carried it completed IKE_AUTH. Later announcements of the same IKE SA replace it.
    pub fn hold_announcement(
        &self,
        ike_sa: u32,
        peer: PeerIndex,
        ids: &[KeyId],
        ids_per_set: usize,
    ) {
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

    /// Whether `id` keyed an exchange here as slave already (see [`Self::record_used`]).
    pub fn was_used(&self, id: &KeyId) -> bool {
        self.shared.lock().used_as_slave.contains(id)
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

/// Whether our KME answers this peer's dec_keys fast (FAST_KME), as far as known: its
/// answers so far (before the first, those of enc_keys: the same KME), and no request in
/// flight for longer.
fn answers_fast(b: &Buffers, now: Instant) -> bool {
    b.inbound_delay
        .or(b.depth.delay())
        .is_some_and(|d| d <= FAST_KME)
        && b.inbound_sent
            .iter()
            .all(|sent| now.duration_since(*sent) <= FAST_KME + FAST_KME_MARGIN)
}

impl Shared {
    fn accept(&self, state: &mut State, peer: PeerIndex, ids: &[KeyId], ids_per_set: usize) {
        if self.limits.floor == 0 || ids.is_empty() {
            return;
        }
        let used = &state.used_as_slave;
        let buffers = &mut state.buffers[peer];
        buffers.ids_per_set = ids_per_set.max(1);
        let room = (self.limits.cap * buffers.ids_per_set).saturating_sub(
            buffers.inbound.len() + buffers.pending.len() + buffers.in_flight.len(),
        );
        // An ID an exchange used already (the announcement overtaken by the peer's next
        // exchange) is gone at the KME: asking for it would fail.
        let fresh: Vec<KeyId> = ids
            .iter()
            .filter(|id| {
                !used.contains(id)
                    && !buffers.inbound.contains_key(id)
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
        self.wake.notify_all();
    }
}
