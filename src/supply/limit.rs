//! A cap on the KME requests charon's worker threads make themselves (on-demand fetches),
//! so a slow KME — or a peer that sends many exchanges before authenticating — can hold at
//! most that many of charon's threads; beyond it an exchange fails fast.
//!
//! The cap is shared out so that no one can take all of it: work for unauthenticated peers
//! (a responder in IKE_SA_INIT/IKE_INTERMEDIATE, whose claimed SAE ID anyone can send) gets
//! at most a quarter (rounded up), so authenticated rekeys and our own initiations always
//! find a slot unless `max_kme_requests` = 1; and with several peers, one peer's work gets
//! at most half (rounded up), so a flood claiming one peer's SAE ID leaves the others alone.

use crate::config::PREFIX;
use crate::health;
use crate::ids::PeerIndex;
use std::sync::{Arc, Mutex};

pub struct RequestLimiter {
    max: usize,
    per_peer_max: usize,
    unauthenticated_max: usize,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    unauthenticated: usize,
    per_peer: Vec<usize>,
}

/// One request slot, given back when dropped.
pub struct Permit {
    counts: Arc<Mutex<Counts>>,
    peer: PeerIndex,
    authenticated: bool,
}

impl RequestLimiter {
    /// `max` requests at once among `peers` peers.
    pub fn new(max: usize, peers: usize) -> RequestLimiter {
        RequestLimiter {
            max,
            per_peer_max: if peers > 1 { max.div_ceil(2) } else { max },
            unauthenticated_max: max.div_ceil(4),
            counts: Arc::new(Mutex::new(Counts {
                per_peer: vec![0; peers],
                ..Counts::default()
            })),
        }
    }

    /// A slot for work for `peer` (an index into the configured peers), `authenticated` or
    /// not, if every budget it counts against has room; never waits. Else what is full.
    pub fn try_acquire(&self, peer: PeerIndex, authenticated: bool) -> Result<Permit, String> {
        let mut counts = health::lock("the KME request limiter", &self.counts);
        let (max, in_flight) = (self.max, counts.total);
        if in_flight >= max {
            return Err(format!(
                "{in_flight} KME requests already in flight ({PREFIX}.max_kme_requests = {max})"
            ));
        }
        let for_peer = counts.per_peer[peer];
        if for_peer >= self.per_peer_max {
            return Err(format!(
                "{for_peer} KME requests already in flight for this peer (one peer may use \
                 {} of {PREFIX}.max_kme_requests = {max})",
                self.per_peer_max
            ));
        }
        if !authenticated && counts.unauthenticated >= self.unauthenticated_max {
            return Err(format!(
                "{} KME requests already in flight for peers not yet authenticated (they may \
                 use {} of {PREFIX}.max_kme_requests = {max}, the rest is kept for \
                 authenticated ones)",
                counts.unauthenticated, self.unauthenticated_max
            ));
        }
        counts.total += 1;
        counts.per_peer[peer] += 1;
        counts.unauthenticated += usize::from(!authenticated);
        Ok(Permit {
            counts: self.counts.clone(),
            peer,
            authenticated,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = health::lock("the KME request limiter", &self.counts);
        counts.total -= 1;
        counts.per_peer[self.peer] -= 1;
        counts.unauthenticated -= usize::from(!self.authenticated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_at_most_max_slots_and_takes_them_back() {
        let limiter = RequestLimiter::new(2, 1);
        let a = limiter.try_acquire(PeerIndex(0), true).expect("first slot");
        let _b = limiter
            .try_acquire(PeerIndex(0), true)
            .expect("second slot");
        let full = limiter
            .try_acquire(PeerIndex(0), true)
            .err()
            .expect("third is refused");
        assert!(
            full.contains(
                "2 KME requests already in flight (charon.plugins.qkd.max_kme_requests = 2)"
            ),
            "{full}"
        );
        drop(a);
        assert!(
            limiter.try_acquire(PeerIndex(0), true).is_ok(),
            "a returned slot is reusable"
        );
    }

    /// A flood before authentication takes a quarter of the slots at most: authenticated
    /// work keeps the rest.
    #[test]
    fn unauthenticated_work_leaves_slots_for_authenticated_work() {
        let limiter = RequestLimiter::new(4, 1);
        let flood: Vec<Permit> = (0..4)
            .filter_map(|_| limiter.try_acquire(PeerIndex(0), false).ok())
            .collect();
        assert_eq!(flood.len(), 1, "unauthenticated work gets 1 of 4 slots");
        let full = limiter.try_acquire(PeerIndex(0), false).err().unwrap();
        assert!(
            full.contains("KME requests already in flight for peers not yet authenticated"),
            "{full}"
        );
        let rekeys: Vec<Permit> = (0..3)
            .map(|_| {
                limiter
                    .try_acquire(PeerIndex(0), true)
                    .expect("authenticated work finds a slot")
            })
            .collect();
        assert!(limiter.try_acquire(PeerIndex(0), true).is_err(), "4 in all");
        drop(flood);
        drop(rekeys);
        // Each permit went back to the budget it came from.
        assert!(limiter.try_acquire(PeerIndex(0), false).is_ok());
    }

    /// With several peers, one peer's work (e.g. a flood claiming its SAE ID) gets at most
    /// half of the slots: the other peers keep theirs.
    #[test]
    fn one_peer_cannot_take_every_slot() {
        let limiter = RequestLimiter::new(4, 3);
        let _b = [
            limiter.try_acquire(PeerIndex(0), true).unwrap(),
            limiter.try_acquire(PeerIndex(0), true).unwrap(),
        ];
        let full = limiter.try_acquire(PeerIndex(0), true).err().unwrap();
        assert!(
            full.contains("KME requests already in flight for this peer"),
            "{full}"
        );
        let _c = limiter
            .try_acquire(PeerIndex(1), true)
            .expect("another peer still has room");
        let _d = limiter
            .try_acquire(PeerIndex(2), false)
            .expect("and another");
    }
}
