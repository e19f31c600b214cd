//! A cap on the KME requests charon's worker threads make themselves (on-demand fetches),
//! so a slow KME — or a peer that sends many exchanges before authenticating — can hold at
//! most that many of charon's threads; beyond it an exchange fails fast.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct RequestLimiter {
    max: usize,
    in_flight: Arc<AtomicUsize>,
}

/// One request slot, given back when dropped.
pub struct Permit {
    in_flight: Arc<AtomicUsize>,
}

impl RequestLimiter {
    pub fn new(max: usize) -> RequestLimiter {
        RequestLimiter {
            max,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot if fewer than `max` are taken; never waits.
    pub fn try_acquire(&self) -> Option<Permit> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                in_flight: self.in_flight.clone(),
            })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_at_most_max_slots_and_takes_them_back() {
        let limiter = RequestLimiter::new(2);
        let a = limiter.try_acquire().expect("first slot");
        let _b = limiter.try_acquire().expect("second slot");
        assert!(limiter.try_acquire().is_none(), "third is refused");
        drop(a);
        assert!(
            limiter.try_acquire().is_some(),
            "a returned slot is reusable"
        );
    }
}
