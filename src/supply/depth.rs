//! How many key sets to keep in place for one peer: enough to cover the measured demand
//! over the measured refill delay, between a floor (`buffer`, kept even when idle) and a cap
//! (`buffer_max`). Demand and delay are measured, not configured, so the depth follows what
//! the tunnels really do and nothing is fetched that they do not need.

use std::time::{Duration, Instant};

/// Weight of a new sample in the smoothed averages: a few samples move them.
const SMOOTHING: f64 = 0.25;
/// Weight of an inter-arrival time shorter than the average: demand that rises is followed
/// faster than demand that falls, so a burst does not run the queue dry for long.
const RISING: f64 = 0.5;
/// Refill delay assumed until a refill has been timed.
const UNMEASURED_DELAY: Duration = Duration::from_millis(100);
/// Refill while the queue still covers demand over this many refill delays: one for our
/// request in flight, then the sets it brings are announced and used no sooner than two
/// more, time for the peer to fetch them from its KME (as far away as ours, presumably)
/// and for a KME answering slower than usual.
const HEADROOM: f64 = 3.0;
/// One refill request per peer at most this often (if the cap allows the batch it needs).
const REQUEST_SPACING: Duration = Duration::from_millis(20);
/// How fast the usual exchange round trip follows round trips longer than it (shorter ones
/// set it at once).
const ROUND_TRIP_CREEP: f64 = 1.0 / 256.0;

/// Events per second, smoothed over inter-arrival times; decays while no event comes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rate {
    last: Option<Instant>,
    /// Smoothed seconds between events (None before the second event).
    interval: Option<f64>,
}

impl Rate {
    /// `events` arrived at `now`; `excluded` of the time since the last arrival does not
    /// count (the source of the events was held up meanwhile).
    pub fn record(&mut self, now: Instant, events: usize, excluded: Duration) {
        if events == 0 {
            return;
        }
        if let Some(last) = self.last {
            // `events` at once count as that many equally spaced arrivals.
            let gap = now
                .saturating_duration_since(last)
                .saturating_sub(excluded)
                .as_secs_f64()
                / events as f64;
            self.interval = Some(match self.interval {
                Some(i) if gap < i => i + RISING * (gap - i),
                Some(i) => i + SMOOTHING * (gap - i),
                None => gap,
            });
        }
        self.last = Some(now);
    }

    /// Events per second; an idle stretch (without `excluded`) longer than twice the usual
    /// interval lowers it at once (not a shorter one: intervals vary around their average).
    pub fn per_second(&self, now: Instant, excluded: Duration) -> f64 {
        let (Some(last), Some(interval)) = (self.last, self.interval) else {
            return 0.0;
        };
        let idle = now
            .saturating_duration_since(last)
            .saturating_sub(excluded)
            .as_secs_f64();
        let interval = interval.max(idle / 2.0).max(1e-6);
        1.0 / interval
    }
}

/// The depth controller of one peer's outbound queue.
#[derive(Debug, Clone)]
pub struct Depth {
    floor: usize,
    cap: usize,
    /// Key sets taken by exchanges, as they would be taken were the queue never empty.
    demand: Rate,
    /// Exchanges waiting for a refill now, since when, and how long exchanges waited since
    /// the last take: that time is not counted as a gap between takes, or demand held back
    /// by an empty queue would look low and keep the queue shallow.
    waiting: usize,
    waiting_since: Option<Instant>,
    waited: Duration,
    /// The usual round trip of our exchanges with the peer: what an answer takes beyond it
    /// is the peer waiting for keys (our announcements came too late for its KME), and is
    /// held-back demand like our own waits.
    usual_round_trip: Option<Duration>,
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
            waiting: 0,
            waiting_since: None,
            waited: Duration::ZERO,
            usual_round_trip: None,
            supply: Rate::default(),
            delay: None,
        }
    }

    /// An exchange asks for `sets` (before it knows whether it must wait).
    pub fn taken(&mut self, now: Instant, sets: usize) {
        self.demand.record(now, sets, self.held_back(now));
        self.waited = Duration::ZERO;
        if self.waiting > 0 {
            self.waiting_since = Some(now);
        }
    }

    /// An exchange found the queue empty and waits for a refill.
    pub fn wait_started(&mut self, now: Instant) {
        if self.waiting == 0 {
            self.waiting_since = Some(now);
        }
        self.waiting += 1;
    }

    /// An exchange stopped waiting (with or without a set).
    pub fn wait_ended(&mut self, now: Instant) {
        self.waiting = self.waiting.saturating_sub(1);
        if self.waiting == 0 {
            self.waited = self.held_back(now);
            self.waiting_since = None;
        }
    }

    /// The peer answered an exchange that took a set, `took` after the take.
    pub fn answered(&mut self, took: Duration) {
        let usual = match self.usual_round_trip {
            Some(usual) if took > usual => usual + (took - usual).mul_f64(ROUND_TRIP_CREEP),
            _ => took,
        };
        self.usual_round_trip = Some(usual);
        self.waited += took - usual;
    }

    /// Time since the last take during which exchanges waited for the queue or the peer.
    fn held_back(&self, now: Instant) -> Duration {
        self.waited
            + self
                .waiting_since
                .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    /// A refill that took `delay` delivered `keys`.
    pub fn refilled(&mut self, now: Instant, keys: usize, delay: Duration) {
        self.supply.record(now, keys, Duration::ZERO);
        self.delay = Some(match self.delay {
            Some(d) => d.mul_f64(1.0 - SMOOTHING) + delay.mul_f64(SMOOTHING),
            None => delay,
        });
    }

    pub fn demand(&self, now: Instant) -> f64 {
        self.demand.per_second(now, self.held_back(now))
    }

    pub fn supply(&self, now: Instant) -> f64 {
        self.supply.per_second(now, Duration::ZERO)
    }

    /// Smoothed refill delay (None before the first refill).
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// When to refill and up to what, within [floor, cap]; `room` is what the total bound
    /// still allows above the floor: (refill below this many sets, fill up to this many).
    /// The low-water mark covers demand over [`HEADROOM`] refill delays (and is never below
    /// the floor); above it, a batch of at least the sets
    /// taken during one refill and at least [`REQUEST_SPACING`]'s worth, so at high demand
    /// one KME request serves many exchanges instead of each costing one on both sides.
    pub fn plan(&self, now: Instant, room: usize) -> (usize, usize) {
        let delay = self.delay.unwrap_or(UNMEASURED_DELAY).as_secs_f64();
        let demand = self.demand(now);
        let need = demand * delay;
        // The epsilon keeps an exact product (20.000000000000004) from asking for one more set.
        let sets = |x: f64| (x - 1e-9).ceil().max(0.0) as usize;
        let low_water = sets(need * HEADROOM).max(self.floor);
        let batch = sets(need.max(demand * REQUEST_SPACING.as_secs_f64())).max(1);
        let bound = self
            .cap
            .min(self.floor.saturating_add(room))
            .max(self.floor);
        let target = (low_water + batch - 1).min(bound).max(self.floor);
        (low_water.min(target), target)
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
        assert_eq!(depth.plan(Instant::now(), usize::MAX).1, 4);
    }

    #[test]
    fn demand_over_the_refill_delay_sets_the_depth() {
        let t0 = Instant::now();
        let mut depth = Depth::new(4, 64);
        depth.refilled(t0, 1, 50 * MS);
        // 200 sets/s over a 50 ms refill: refill below three times that, a batch of once
        // that on top.
        let last = takes(&mut depth, t0, 50, 5 * MS);
        assert!(
            (depth.demand(last) - 200.0).abs() < 1.0,
            "{}",
            depth.demand(last)
        );
        assert_eq!(depth.plan(last, usize::MAX), (30, 39));
    }

    /// A near KME and high demand: the low-water mark stays at the floor, but each refill
    /// brings 20 ms of demand, not one set per exchange.
    #[test]
    fn high_demand_at_a_near_kme_is_served_in_batches() {
        let t0 = Instant::now();
        let mut depth = Depth::new(4, 64);
        assert_eq!(depth.plan(t0, usize::MAX), (4, 4), "idle: the floor");
        depth.refilled(t0, 1, 5 * MS);
        let last = takes(&mut depth, t0, 50, 4 * MS);
        assert_eq!(depth.plan(last, usize::MAX), (4, 8));
    }

    /// One exchange after another, 3 ms apart, each waiting 20 ms for a refill: the demand
    /// is what they would take from a full queue, not what the empty queue let through.
    #[test]
    fn time_spent_waiting_for_a_refill_does_not_lower_the_demand() {
        let t0 = Instant::now();
        let mut depth = Depth::new(1, 64);
        let mut at = t0;
        for _ in 0..20 {
            depth.taken(at, 1);
            depth.wait_started(at);
            at += 20 * MS;
            depth.wait_ended(at);
            at += 3 * MS;
        }
        let demand = depth.demand(at);
        assert!((demand - 333.3).abs() < 5.0, "{demand}");
        assert!(
            depth.demand(at + 100 * MS) < 30.0,
            "idle without waiting lowers it"
        );
    }

    /// Setups back to back whose answers come 20 ms late because the peer fetches our
    /// keys on demand: the demand is what the setups would make with the keys in place at
    /// the peer, so the queue (and what we announce) grows until the peer has them in time.
    #[test]
    fn the_peer_waiting_for_keys_does_not_lower_the_demand() {
        let t0 = Instant::now();
        let mut depth = Depth::new(1, 64);
        depth.refilled(t0, 1, 25 * MS);
        let mut at = t0;
        for n in 0..30 {
            depth.taken(at, 1);
            let round_trip = if n < 5 { 5 * MS } else { 25 * MS };
            depth.answered(round_trip);
            at += round_trip + 2 * MS;
        }
        let demand = depth.demand(at);
        assert!(demand > 100.0, "{demand}");
        assert!(depth.plan(at, usize::MAX).1 >= 8);
    }

    #[test]
    fn depth_stays_within_the_cap_and_the_total_room() {
        let t0 = Instant::now();
        let mut depth = Depth::new(4, 16);
        depth.refilled(t0, 1, 100 * MS);
        let last = takes(&mut depth, t0, 100, MS);
        assert_eq!(depth.plan(last, usize::MAX).1, 16, "cap");
        assert_eq!(
            depth.plan(last, 3).1,
            7,
            "floor + what the total bound leaves"
        );
        assert_eq!(
            depth.plan(last, 0).1,
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
        assert!(depth.plan(last, usize::MAX).1 > 2);
        assert_eq!(depth.plan(last + Duration::from_secs(2), usize::MAX).1, 2);
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
        assert_eq!(near.plan(last, usize::MAX).1, 1);
        assert_eq!(far.plan(last, usize::MAX).1, 39);
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
