//! The refill threads: top up every peer's outbound queue to its depth (enc_keys, several
//! sets per request), fetch announced keys into the inbound caches (dec_keys, several IDs per
//! request), expire old keys, and back off per peer while its KME fails. At most [`PER_PEER`]
//! requests per peer and direction are in flight (a peer's needs are coalesced into them),
//! and at most [`PER_KME`] per KME, so one slow KME or peer cannot hold up the others' refills. KME calls
//! run without the lock held.

use super::{Buffers, Cached, KeySet, Shared};
use crate::ids::{KeyId, PeerIndex};
use crate::kme::KmeError;
use crate::wire::MAX_KEY_IDS;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After an answer that waiting cannot change (unknown SAE, refused certificate, bad
/// settings): the KME is asked again this much later, so many such peers cannot flood it.
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);
/// Announced key IDs our KME has not delivered by then are no longer asked for: the peer
/// has used them (we fetched on demand) or the KME never will.
pub const ANNOUNCEMENT_TTL: Duration = Duration::from_secs(60);
/// Longest sleep with nothing to do: expiry is checked at least this often.
const IDLE: Duration = Duration::from_secs(1);

/// Refill threads: requests to different KMEs and peers run side by side.
pub const REFILL_THREADS: usize = 4;
/// Refill requests in flight to one KME at most: a slow KME leaves a thread for the others.
const PER_KME: usize = REFILL_THREADS - 1;
/// Requests in flight for one peer and direction at most: a burst need not wait for the
/// small enc_keys an idle peer started before it, nor keys announced just now for the
/// dec_keys of earlier ones.
const PER_PEER: usize = 2;

enum Job {
    Outbound {
        peer: PeerIndex,
        sets: usize,
    },
    /// Announced key IDs with the time of their announcement; when the request is sent.
    Inbound {
        peer: PeerIndex,
        pending: Vec<(KeyId, Instant)>,
        sent: Instant,
    },
}

enum Held {
    Sets(usize),
    Ids(Vec<KeyId>, Instant),
}

impl Job {
    fn peer(&self) -> PeerIndex {
        match self {
            Job::Outbound { peer, .. } | Job::Inbound { peer, .. } => *peer,
        }
    }
}

pub(super) fn run(shared: Arc<Shared>) {
    let mut next_peer = PeerIndex(0);
    while let Some(job) = next_job(&shared, &mut next_peer) {
        let peer = job.peer();
        // What the job holds in the peer's buffers, to release if it panics.
        let held = match &job {
            Job::Outbound { sets, .. } => Held::Sets(*sets),
            Job::Inbound { pending, sent, .. } => {
                Held::Ids(pending.iter().map(|(id, _)| *id).collect(), *sent)
            }
        };
        // A panic in a KME request must not end the thread with the peer marked busy.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
            Job::Outbound { peer, sets } => fill_outbound(&shared, peer, sets),
            Job::Inbound {
                peer,
                pending,
                sent,
            } => fill_inbound(&shared, peer, pending, sent),
        }));
        let mut state = shared.lock();
        state.kme_requests[shared.kme_of[peer]] -= 1;
        if done.is_err() {
            log::error!(
                "qkd: BUG: a key supply refill for SAE '{}' panicked; the refill is retried later",
                shared.peers[peer].sae_id
            );
            let buffers = &mut state.buffers[peer];
            match held {
                Held::Sets(sets) => buffers.outbound_done(sets),
                Held::Ids(ids, sent) => buffers.inbound_done(&ids, sent),
            }
            buffers.retry_at = Some(Instant::now() + MAX_BACKOFF);
        }
        shared.wake.notify_all();
    }
    shared.lock().live_threads -= 1;
    shared.wake.notify_all();
}

/// Waits for work; None once the supply is dropped. Peers are served round-robin so one
/// busy peer cannot starve the others' turns.
fn next_job(shared: &Shared, next_peer: &mut PeerIndex) -> Option<Job> {
    let mut state = shared.lock();
    loop {
        if state.stopped {
            return None;
        }
        let now = Instant::now();
        let count = state.buffers.len();
        let mut soonest = now + IDLE;
        for offset in 0..count {
            let peer = PeerIndex((next_peer.0 + offset) % count);
            let (low_water, target) = shared.plan(&state, peer, now);
            let kme = shared.kme_of[peer];
            let kme_free = state.kme_requests[kme] < PER_KME;
            let buffers = &mut state.buffers[peer];
            expire(shared, peer, buffers, now);
            if let Some(at) = buffers.retry_at.filter(|at| *at > now) {
                soonest = soonest.min(at);
                continue;
            }
            // A replacing KME would delete the key of an exchange still going on.
            let coming = buffers.outbound.len() + buffers.outbound_in_flight;
            // Exchanges waiting on an empty queue are demand known now, before the depth
            // has measured it (a burst on an idle peer): more of them than sets coming
            // asks for one set each (within the cap).
            let waiting = if buffers.replacing {
                0
            } else {
                buffers.outbound_waiting
            };
            let fill_to = if waiting > coming {
                target.max(waiting.min(buffers.depth.cap()))
            } else {
                target
            };
            let outbound_short = (coming < low_water || coming < waiting)
                && buffers.outbound_requests < PER_PEER
                && !(buffers.replacing
                    && (buffers.outstanding > 0 || buffers.outbound_requests > 0));
            let job = if outbound_short {
                kme_free.then(|| {
                    let sets = fill_to - coming;
                    buffers.outbound_requests += 1;
                    buffers.outbound_in_flight += sets;
                    Job::Outbound { peer, sets }
                })
            } else if !buffers.pending.is_empty() && buffers.inbound_sent.len() < PER_PEER {
                kme_free.then(|| {
                    // The IDs exchanges wait for are first in line; many exchanges at once
                    // share one request (fill_inbound copes with one ID the KME refuses).
                    let n = buffers.pending.len().min(MAX_KEY_IDS);
                    let pending: Vec<(KeyId, Instant)> = buffers.pending.drain(..n).collect();
                    buffers.inbound_sent.push(now);
                    buffers.in_flight.extend(pending.iter().map(|(id, _)| *id));
                    Job::Inbound {
                        peer,
                        pending,
                        sent: now,
                    }
                })
            } else {
                None
            };
            if let Some(job) = job {
                state.kme_requests[kme] += 1;
                *next_peer = PeerIndex((peer.0 + 1) % count);
                return Some(job);
            }
        }
        let wait = soonest.saturating_duration_since(now);
        state = shared.wait(state, wait);
    }
}

fn expire(shared: &Shared, peer: PeerIndex, buffers: &mut Buffers, now: Instant) {
    let ttl = shared.ttl;
    let mut expired_keys = 0;
    buffers.outbound.retain(|set| {
        let keep = now.duration_since(set.obtained) < ttl;
        if !keep {
            expired_keys += set.keys.len();
        }
        keep
    });
    let cached = buffers.inbound.len();
    buffers
        .inbound
        .retain(|_, c| now.duration_since(c.obtained) < ttl);
    expired_keys += cached - buffers.inbound.len();
    if expired_keys > 0 {
        shared.waste("expired", &shared.peers[peer], expired_keys);
    }
    let announced = buffers.pending.len();
    buffers
        .pending
        .retain(|(_, at)| now.duration_since(*at) < shared.announcement_ttl);
    let undeliverable = announced - buffers.pending.len();
    if undeliverable > 0 {
        shared.count(&shared.counters.announce_failures, undeliverable);
        log::info!(
            "qkd: giving up on {undeliverable} key ID(s) SAE '{}' announced {:?} \
             ago or more that KME {} did not deliver; they are fetched on demand if the peer uses them",
            shared.peers[peer].sae_id,
            shared.announcement_ttl,
            shared.peers[peer].source.url()
        );
    }
}

fn fill_outbound(shared: &Shared, peer: PeerIndex, sets: usize) {
    let p = &shared.peers[peer];
    let asked = Instant::now();
    let deadline = asked + p.kme_timeout;
    let result = p
        .source
        .enc_keys(&p.sae_id, shared.key_size, sets, deadline);
    let mut state = shared.lock();
    let target = shared.target(&state, peer, Instant::now());
    let buffers = &mut state.buffers[peer];
    buffers.outbound_done(sets);
    match result {
        Ok(new_sets) => {
            let enc_number = buffers.enc_count;
            buffers.enc_count += 1;
            let now = Instant::now();
            let keys: usize = new_sets.iter().map(|s| s.len()).sum();
            buffers.depth.refilled(now, keys, now - asked);
            shared.count(&shared.counters.buffered, keys);
            buffers
                .outbound
                .extend(new_sets.into_iter().map(|keys| KeySet {
                    keys,
                    obtained: now,
                    announced: None,
                    enc_number,
                }));
            recovered(buffers);
            log::debug!(
                "qkd: {keys} key(s) from KME {} for SAE '{}' queued ({}/{} sets ready)",
                p.source.url(),
                p.sae_id,
                buffers.outbound.len(),
                target
            );
        }
        Err(e) => failed(shared, peer, buffers, "refilling the outbound queue", &e),
    }
    shared.wake.notify_all();
}

fn fill_inbound(shared: &Shared, peer: PeerIndex, pending: Vec<(KeyId, Instant)>, sent: Instant) {
    let ids: Vec<KeyId> = pending.iter().map(|(id, _)| *id).collect();
    let p = &shared.peers[peer];
    let deadline = sent + p.kme_timeout;
    let result = match p.source.dec_keys(&p.sae_id, &ids, deadline) {
        // A KME refuses a whole dec_keys for one ID it does not know (one used meanwhile,
        // or a stale one): ask for each alone, so that one such ID costs no other key.
        Err(e) if !e.is_transient() && ids.len() > 1 => {
            let mut keys = Vec::new();
            for id in &ids {
                match p
                    .source
                    .dec_keys(&p.sae_id, std::slice::from_ref(id), deadline)
                {
                    Ok(mut key) => keys.append(&mut key),
                    Err(e) if e.is_transient() => break,
                    Err(_) => {}
                }
            }
            if keys.is_empty() {
                Err(e)
            } else {
                let undelivered = ids.len() - keys.len();
                shared.count(&shared.counters.announce_failures, undelivered);
                Ok(keys)
            }
        }
        result => result,
    };
    let mut state = shared.lock();
    let buffers = &mut state.buffers[peer];
    buffers.inbound_done(&ids, sent);
    let took = sent.elapsed();
    buffers.inbound_delay = Some(match buffers.inbound_delay {
        Some(d) => (d * 3 + took) / 4,
        None => took,
    });
    match result {
        Ok(keys) => {
            let now = Instant::now();
            shared.count(&shared.counters.buffered, keys.len());
            for key in keys {
                buffers
                    .inbound
                    .insert(key.id, Cached { key, obtained: now });
            }
            recovered(buffers);
        }
        Err(e) if e.is_transient() => {
            // Try these again later, as announced then: they expire (ANNOUNCEMENT_TTL) if
            // the KME never delivers them.
            for entry in pending.into_iter().rev() {
                buffers.pending.push_front(entry);
            }
            failed(shared, peer, buffers, "fetching announced keys", &e);
        }
        Err(e) => {
            shared.count(&shared.counters.announce_failures, ids.len());
            log::info!(
                "qkd: KME {} did not deliver key IDs {} that SAE '{}' announced ({e}); \
                 they will be fetched if the peer uses them",
                p.source.url(),
                crate::ids::format_ids(&ids),
                p.sae_id
            );
        }
    }
    shared.wake.notify_all();
}

impl Buffers {
    fn outbound_done(&mut self, sets: usize) {
        self.outbound_requests -= 1;
        self.outbound_in_flight -= sets;
    }

    fn inbound_done(&mut self, ids: &[KeyId], sent: Instant) {
        if let Some(pos) = self.inbound_sent.iter().position(|at| *at == sent) {
            self.inbound_sent.swap_remove(pos);
        }
        for id in ids {
            self.in_flight.remove(id);
        }
    }
}

/// The pause before a peer's next refill after `e`, given the previous one (zero after a
/// success): doubling from FIRST_BACKOFF up to MAX_BACKOFF while the KME may recover by
/// itself, REFUSED_BACKOFF when it refused the peer (a setting must change first).
pub(super) fn next_backoff(previous: Duration, e: &KmeError) -> Duration {
    if e.is_transient() {
        (previous * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF)
    } else {
        REFUSED_BACKOFF
    }
}

fn recovered(buffers: &mut Buffers) {
    buffers.retry_at = None;
    buffers.backoff = Duration::ZERO;
}

fn failed(shared: &Shared, peer: PeerIndex, buffers: &mut Buffers, what: &str, e: &KmeError) {
    let first = buffers.backoff.is_zero();
    buffers.backoff = next_backoff(buffers.backoff, e);
    buffers.retry_at = Some(Instant::now() + buffers.backoff);
    let message = format!(
        "qkd: {what} for SAE '{}': {e}; retrying in {:?}",
        shared.peers[peer].sae_id, buffers.backoff
    );
    // The first failure of a run is worth an operator's attention, the retries are not.
    if first {
        log::info!("{message}");
    } else {
        log::debug!("{message}");
    }
}
