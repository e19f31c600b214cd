//! How many key sets to keep in place for one peer: enough to cover the measured demand
//! over the measured refill delay, between a floor (`buffer`, kept even when idle) and a cap
//! (`buffer_max`). Demand and delay are measured, not configured, so the depth follows what
//! the tunnels really do and nothing is fetched that they do not need.

use std::time::{Duration, Instant};

/// Weight of a new sample in the smoothed averages: a few samples move them.
const SMOOTHING: f64 = 0.25;
/// Refill delay assumed until a refill has been timed.
const UNMEASURED_DELAY: Duration = Duration::from_millis(100);
/// Cover demand over this many refill delays: one for the request in flight, one spare for
/// a KME answering slower than usual.
const HEADROOM: f64 = 2.0;

/// Events per second, smoothed over inter-arrival times; decays while no event comes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rate {
    last: Option<Instant>,
    /// Smoothed seconds between events (None before the second event).
    interval: Option<f64>,
}

impl Rate {
    pub fn record(&mut self, now: Instant, events: usize) {
        if events == 0 {
            return;
        }
        if let Some(last) = self.last {
            // `events` at once count as that many equally spaced arrivals.
            let gap = now.saturating_duration_since(last).as_secs_f64() / events as f64;
            self.interval = Some(match self.interval {
                Some(i) => i + SMOOTHING * (gap - i),
                None => gap,
            });
        }
        self.last = Some(now);
    }

    /// Events per second; an idle stretch longer than the usual interval lowers it at once.
    pub fn per_second(&self, now: Instant) -> f64 {
        let (Some(last), Some(interval)) = (self.last, self.interval) else {
            return 0.0;
        };
        let idle = now.saturating_duration_since(last).as_secs_f64();
        let interval = interval.max(idle).max(1e-6);
        1.0 / interval
    }
}

/// The depth controller of one peer's outbound queue.
#[derive(Debug, Clone)]
pub struct Depth {
    floor: usize,
    cap: usize,
    /// Key sets taken by exchanges.
    demand: Rate,
    /// Keys delivered by the KME (for status: the supply the KME really gives).
    supply: Rate,
    /// Smoothed time from a refill request to its keys being in place.
    delay: Option<Duration>,
}

impl Depth {
    pub fn new(floor: usize, cap: usize) -> Depth {
        Depth {
            floor,
            cap: cap.max(floor),
            demand: Rate::default(),
            supply: Rate::default(),
            delay: None,
        }
    }

    pub fn taken(&mut self, now: Instant, sets: usize) {
        self.demand.record(now, sets);
    }

    /// A refill that took `delay` delivered `keys`.
    pub fn refilled(&mut self, now: Instant, keys: usize, delay: Duration) {
        self.supply.record(now, keys);
        self.delay = Some(match self.delay {
            Some(d) => d.mul_f64(1.0 - SMOOTHING) + delay.mul_f64(SMOOTHING),
            None => delay,
        });
    }

    pub fn demand(&self, now: Instant) -> f64 {
        self.demand.per_second(now)
    }

    pub fn supply(&self, now: Instant) -> f64 {
        self.supply.per_second(now)
    }

    /// Smoothed refill delay (None before the first refill).
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Sets to keep in place now: demand × refill delay × headroom, within [floor, cap];
    /// `room` is what the total bound still allows above the floor.
    pub fn target(&self, now: Instant, room: usize) -> usize {
        let delay = self.delay.unwrap_or(UNMEASURED_DELAY).as_secs_f64();
        // The epsilon keeps an exact product (20.000000000000004) from asking for one more set.
        let needed = (self.demand(now) * delay * HEADROOM - 1e-9).ceil().max(0.0) as usize;
        needed
            .min(self.cap)
            .min(self.floor.saturating_add(room))
            .max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `n` takes `gap` apart starting at `start`; returns the time of the last.
    fn takes(depth: &mut Depth, start: Instant, n: u32, gap: Duration) -> Instant {
        for i in 0..n {
            depth.taken(start + gap * i, 1);
        }
        start + gap * (n - 1)
    }

    #[test]
    fn idle_peer_keeps_the_floor() {
        let depth = Depth::new(4, 64);
        assert_eq!(depth.target(Instant::now(), usize::MAX), 4);
    }

    #[test]
    fn demand_over_the_refill_delay_sets_the_depth() {
        let t0 = Instant::now();
        let mut depth = Depth::new(4, 64);
        depth.refilled(t0, 1, 50 * MS);
        // 200 sets/s over a 50 ms refill, twice over.
        let last = takes(&mut depth, t0, 50, 5 * MS);
        assert!(
            (depth.demand(last) - 200.0).abs() < 1.0,
            "{}",
            depth.demand(last)
        );
        assert_eq!(depth.target(last, usize::MAX), 20);
    }

    #[test]
    fn depth_stays_within_the_cap_and_the_total_room() {
        let t0 = Instant::now();
        let mut depth = Depth::new(4, 16);
        depth.refilled(t0, 1, 100 * MS);
        let last = takes(&mut depth, t0, 100, MS);
        assert_eq!(depth.target(last, usize::MAX), 16, "cap");
        assert_eq!(
            depth.target(last, 3),
            7,
            "floor + what the total bound leaves"
        );
        assert_eq!(
            depth.target(last, 0),
            4,
            "the floor even when the total is used up"
        );
    }

    #[test]
    fn idle_peer_shrinks_back_to_the_floor() {
        let t0 = Instant::now();
        let mut depth = Depth::new(2, 64);
        depth.refilled(t0, 1, 100 * MS);
        let last = takes(&mut depth, t0, 40, 10 * MS);
        assert!(depth.target(last, usize::MAX) > 2);
        assert_eq!(depth.target(last + Duration::from_secs(2), usize::MAX), 2);
    }

    #[test]
    fn slower_kme_means_deeper_queue() {
        let t0 = Instant::now();
        let mut near = Depth::new(1, 64);
        let mut far = Depth::new(1, 64);
        near.refilled(t0, 1, 5 * MS);
        far.refilled(t0, 1, 200 * MS);
        let last = takes(&mut near, t0, 20, 20 * MS);
        takes(&mut far, t0, 20, 20 * MS);
        assert_eq!(near.target(last, usize::MAX), 1);
        assert_eq!(far.target(last, usize::MAX), 20);
    }

    #[test]
    fn supply_rate_counts_delivered_keys() {
        let t0 = Instant::now();
        let mut depth = Depth::new(1, 8);
        for i in 0..10 {
            depth.refilled(t0 + 100 * MS * i, 4, 10 * MS);
        }
        let rate = depth.supply(t0 + 900 * MS);
        assert!((rate - 40.0).abs() < 0.5, "{rate}");
    }
}
