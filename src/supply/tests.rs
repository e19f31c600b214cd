//! Supply tests against a fake KME that numbers its keys and can be made to fail.

use super::inbound::MAX_UNVERIFIED;
use super::*;
use crate::kme::KmeError;
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;
use std::thread;
use zeroize::Zeroizing;

#[derive(Default)]
struct NumberingKme {
    issued: AtomicU32,
    enc_calls: AtomicU32,
    dec_calls: AtomicU32,
    down: AtomicBool,
    /// Answers like a KME that does not know the SAE: waiting does not help.
    refusing: AtomicBool,
    /// enc_keys does not answer while set (until its deadline).
    holding: AtomicBool,
    /// enc_keys calls in progress.
    enc_in_progress: AtomicU32,
    /// dec_keys does not answer while set (until its deadline); calls in progress.
    dec_holding: AtomicBool,
    dec_in_progress: AtomicU32,
    /// Each enc_keys answer takes this long.
    delay: Mutex<Duration>,
    /// The most sets one enc_keys call asked for.
    most_sets: AtomicU32,
}

/// A key ID the fake KME does not know (a whole dec_keys naming it is refused).
const UNKNOWN: KeyId = KeyId([0xee; 16]);

impl NumberingKme {
    fn key(n: u8) -> QkdKey {
        QkdKey {
            id: KeyId([n; 16]),
            material: Zeroizing::new(vec![n; 32]),
        }
    }

    fn fail_if_down(&self) -> Result<(), KmeError> {
        if self.refusing.load(Ordering::SeqCst) {
            return Err(KmeError::Rejected {
                url: "https://kme.test".into(),
                status: 400,
                message: "unknown slave SAE ID".into(),
            });
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(KmeError::NoKeyAvailable {
                url: "https://kme.test".into(),
                message: "empty".into(),
            });
        }
        Ok(())
    }
}

impl KeySource for NumberingKme {
    fn enc_keys(
        &self,
        _: &SaeId,
        _: u32,
        sets: usize,
        deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        self.enc_calls.fetch_add(1, Ordering::SeqCst);
        self.most_sets.fetch_max(sets as u32, Ordering::SeqCst);
        self.enc_in_progress.fetch_add(1, Ordering::SeqCst);
        while self.holding.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let delay = *self.delay.lock().unwrap();
        thread::sleep(delay);
        self.enc_in_progress.fetch_sub(1, Ordering::SeqCst);
        self.fail_if_down()?;
        Ok((0..sets)
            .map(|_| vec![Self::key(self.issued.fetch_add(1, Ordering::SeqCst) as u8)])
            .collect())
    }

    fn dec_keys(
        &self,
        _: &SaeId,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        self.dec_calls.fetch_add(1, Ordering::SeqCst);
        self.dec_in_progress.fetch_add(1, Ordering::SeqCst);
        while self.dec_holding.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let delay = *self.delay.lock().unwrap();
        thread::sleep(delay);
        self.dec_in_progress.fetch_sub(1, Ordering::SeqCst);
        self.fail_if_down()?;
        if ids.contains(&UNKNOWN) {
            return Err(KmeError::Rejected {
                url: "https://kme.test".into(),
                status: 400,
                message: "one or more keys specified are not found on KME".into(),
            });
        }
        Ok(ids.iter().map(|id| Self::key(id.0[0])).collect())
    }

    fn keys_per_set(&self, _: &SaeId, _: u32, _: Instant) -> Result<usize, KmeError> {
        Ok(1)
    }

    fn url(&self) -> &str {
        "https://kme.test"
    }
}

fn peer(n: usize, kme: &Arc<NumberingKme>) -> SupplyPeer {
    SupplyPeer {
        sae_id: SaeId::new(&format!("sae-{n}")).unwrap(),
        source: kme.clone(),
        kme_timeout: Duration::from_secs(1),
    }
}

/// Master side: the next set of peer 0; its exchange is over at once.
fn take(s: &Supply, deadline: Instant) -> Option<KeySet> {
    s.take_outbound(PeerIndex(0), deadline).map(|(set, _)| set)
}

/// A fixed depth of `target` sets (floor = cap).
fn supply(kme: &Arc<NumberingKme>, target: usize, ttl: Duration) -> Supply {
    let limits = DepthLimits {
        floor: target,
        cap: target,
        total: 1000,
    };
    Supply::new(vec![peer(0, kme)], limits, 256, ttl)
}

/// One peer whose depth follows its demand from a floor of one set up to `cap`.
fn growing(kme: &Arc<NumberingKme>, cap: usize) -> Supply {
    let limits = DepthLimits {
        floor: 1,
        cap,
        total: 1000,
    };
    Supply::new(vec![peer(0, kme)], limits, 256, Duration::from_secs(60))
}

fn now() -> Instant {
    Instant::now()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not reached in 5 s");
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn nothing_runs_before_start_then_the_queue_fills_in_one_batch() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 3, Duration::from_secs(60));
    thread::sleep(Duration::from_millis(20));
    assert_eq!(
        kme.enc_calls.load(Ordering::SeqCst),
        0,
        "no KME request before start"
    );
    s.start();
    s.start();
    wait_for("queue full", || s.levels(PeerIndex(0)).outbound_sets == 3);
    assert_eq!(
        kme.enc_calls.load(Ordering::SeqCst),
        1,
        "one enc_keys for three sets"
    );
    assert_eq!(
        s.announcement(PeerIndex(0)),
        [KeyId([0; 16]), KeyId([1; 16]), KeyId([2; 16])]
    );
    let first = take(&s, now()).unwrap();
    assert_eq!(first.ids().collect::<Vec<_>>(), [KeyId([0; 16])]);
    wait_for("refilled", || s.levels(PeerIndex(0)).outbound_sets == 3);
    assert_eq!(
        s.announcement(PeerIndex(0)),
        [KeyId([3; 16]), KeyId([1; 16]), KeyId([2; 16])],
        "the new set first, then the ones used next again"
    );
}

/// A queue deeper than one announcement reaches the peer in batches: what was not announced
/// yet goes first, so the peer does not learn (and fetch) one new ID per exchange.
#[test]
fn a_deep_queue_is_announced_in_batches() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 20, Duration::from_secs(60));
    s.start();
    wait_for("queue full", || s.levels(PeerIndex(0)).outbound_sets == 20);
    let ids = |range: std::ops::Range<u8>| range.map(|n| KeyId([n; 16])).collect::<Vec<_>>();
    assert_eq!(s.announcement(PeerIndex(0)), ids(0..16));
    let second = s.announcement(PeerIndex(0));
    assert_eq!(second[..4], ids(16..20), "the rest, at once");
    assert_eq!(second[4..], ids(0..12), "then the head again");
}

#[test]
fn a_few_threads_serve_all_peers_and_are_joined_when_the_supply_goes() {
    let kme = Arc::new(NumberingKme::default());
    let peers = (0..200).map(|n| peer(n, &kme)).collect();
    let limits = DepthLimits {
        floor: 1,
        cap: 1,
        total: 0,
    };
    let s = Supply::new(peers, limits, 256, Duration::from_secs(60));
    s.start();
    wait_for("every peer served", || {
        PeerIndex::all(200).all(|p| s.levels(p).outbound_sets == 1)
    });
    assert_eq!(s.shared.threads.lock().unwrap().len(), REFILL_THREADS);
    drop(s);
    assert_eq!(
        Arc::strong_count(&kme),
        1,
        "every refill thread has ended when drop returns"
    );
}

#[test]
fn one_slow_kme_does_not_hold_up_another_kmes_refills() {
    let slow = Arc::new(NumberingKme::default());
    let fast = Arc::new(NumberingKme::default());
    slow.holding.store(true, Ordering::SeqCst);
    let limits = DepthLimits {
        floor: 2,
        cap: 2,
        total: 0,
    };
    let s = Supply::new(
        vec![peer(0, &slow), peer(1, &fast)],
        limits,
        256,
        Duration::from_secs(60),
    );
    s.start();
    wait_for("slow KME asked", || {
        slow.enc_in_progress.load(Ordering::SeqCst) == 1
    });
    wait_for("fast peer filled", || {
        s.levels(PeerIndex(1)).outbound_sets == 2
    });
    assert_eq!(
        s.levels(PeerIndex(0)).outbound_sets,
        0,
        "the slow KME has not answered"
    );
    slow.holding.store(false, Ordering::SeqCst);
    wait_for("slow peer filled", || {
        s.levels(PeerIndex(0)).outbound_sets == 2
    });
}

#[test]
fn an_exchange_waits_for_the_refill_in_flight_instead_of_asking_the_kme_again() {
    let kme = Arc::new(NumberingKme::default());
    kme.holding.store(true, Ordering::SeqCst);
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    wait_for("refill in flight", || {
        kme.enc_in_progress.load(Ordering::SeqCst) == 1
    });
    thread::scope(|scope| {
        let exchange = scope.spawn(|| take(&s, now() + Duration::from_secs(5)));
        kme.holding.store(false, Ordering::SeqCst);
        let set = exchange.join().unwrap().expect("a set from the refill");
        assert_eq!(set.ids().collect::<Vec<_>>(), [KeyId([0; 16])]);
    });
    let next = take(&s, now()).expect("the refill's second set stays queued");
    assert_eq!(
        next.ids().collect::<Vec<_>>(),
        [KeyId([1; 16])],
        "one request served the exchange and the queue"
    );
}

/// Exchanges as fast as keys come: each refill is asked for more sets than the last one
/// delivered, up to the cap, so a 20 ms KME is asked far fewer times than there are exchanges.
#[test]
fn depth_grows_with_demand_up_to_the_cap() {
    let kme = Arc::new(NumberingKme::default());
    *kme.delay.lock().unwrap() = Duration::from_millis(20);
    let s = growing(&kme, 8);
    s.start();
    wait_for("floor", || s.levels(PeerIndex(0)).outbound_sets == 1);
    assert_eq!(s.levels(PeerIndex(0)).target_sets, 1, "idle: the floor");
    let mut taken = 0;
    while taken < 100 {
        if take(&s, now() + Duration::from_secs(1)).is_some() {
            taken += 1;
        } else {
            thread::yield_now();
        }
    }
    assert_eq!(s.levels(PeerIndex(0)).target_sets, 8, "grown up to the cap");
    assert!(
        kme.most_sets.load(Ordering::SeqCst) <= 8,
        "asked within the cap"
    );
    // One set per request would take 100 calls; how far below depends on the machine's
    // load (the demand is measured), so the bound leaves room.
    let calls = kme.enc_calls.load(Ordering::SeqCst);
    assert!(calls <= 60, "{calls} enc_keys calls for 100 sets");
}

#[test]
fn the_total_bound_limits_growth_above_the_floors() {
    let kme = Arc::new(NumberingKme::default());
    *kme.delay.lock().unwrap() = Duration::from_millis(20);
    let limits = DepthLimits {
        floor: 1,
        cap: 8,
        total: 3,
    };
    let s = Supply::new(
        vec![peer(0, &kme), peer(1, &kme)],
        limits,
        256,
        Duration::from_secs(60),
    );
    s.start();
    wait_for("floors", || {
        PeerIndex::all(2).all(|p| s.levels(p).outbound_sets == 1)
    });
    let mut taken = 0;
    while taken < 60 {
        if take(&s, now() + Duration::from_secs(1)).is_some() {
            taken += 1;
        } else {
            thread::yield_now();
        }
        assert!(
            s.levels(PeerIndex(0)).outbound_sets <= 4,
            "floor 1 + total 3"
        );
    }
    assert_eq!(
        s.levels(PeerIndex(0)).target_sets,
        4,
        "grown to floor + total, no more"
    );
    assert!(kme.most_sets.load(Ordering::SeqCst) <= 4);
}

#[test]
fn announcements_of_an_ike_sa_being_set_up_wait_for_its_authentication() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 4, Duration::from_secs(60));
    s.start();
    let ids: Vec<KeyId> = (20..23).map(|n| KeyId([n; 16])).collect();
    s.hold_announcement(7, PeerIndex(0), &ids, 1);
    s.hold_announcement(8, PeerIndex(0), &[KeyId([30; 16])], 1);
    assert_eq!(
        s.levels(PeerIndex(0)).pending_keys,
        0,
        "nothing fetched for an unauthenticated peer"
    );
    s.forget(8);
    s.authenticated(8);
    s.authenticated(7);
    wait_for("fetched after authentication", || {
        s.levels(PeerIndex(0)).inbound_keys == 3
    });
    assert_eq!(
        kme.dec_calls.load(Ordering::SeqCst),
        1,
        "one dec_keys for the three"
    );
}

#[test]
fn held_announcements_are_bounded() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 4, Duration::from_secs(60));
    for ike_sa in 0..=MAX_UNVERIFIED as u32 {
        s.hold_announcement(ike_sa, PeerIndex(0), &[KeyId([1; 16])], 1);
    }
    s.authenticated(0);
    assert_eq!(
        s.levels(PeerIndex(0)).pending_keys,
        0,
        "the oldest was dropped"
    );
    s.authenticated(MAX_UNVERIFIED as u32);
    assert_eq!(s.levels(PeerIndex(0)).pending_keys, 1);
}

#[test]
fn announced_keys_are_fetched_ahead_bounded_and_once() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    let ids: Vec<KeyId> = (10..15).map(|n| KeyId([n; 16])).collect();
    s.accept_announcement(PeerIndex(0), &ids, 1);
    s.accept_announcement(PeerIndex(0), &ids, 1);
    wait_for("cached", || s.levels(PeerIndex(0)).inbound_keys == 2);
    assert_eq!(
        s.levels(PeerIndex(0)).pending_keys,
        0,
        "room for 2 sets of 1 key: the rest ignored"
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    let keys = s
        .take_inbound(PeerIndex(0), &ids[..1], deadline, true)
        .unwrap();
    assert_eq!(&keys[0].material[..], &[10; 32]);
    assert!(
        s.take_inbound(PeerIndex(0), &ids[..1], now(), true)
            .is_none(),
        "used once: no longer cached"
    );
    assert_eq!(s.counters().used.load(Ordering::SeqCst), 1);
}

#[test]
fn pending_keys_are_withdrawn_for_an_exchange_that_fetches_them_itself() {
    let kme = Arc::new(NumberingKme::default());
    // Not started: announcements stay pending.
    let s = supply(&kme, 2, Duration::from_secs(60));
    let id = [KeyId([7; 16])];
    s.accept_announcement(PeerIndex(0), &id, 1);
    assert_eq!(s.levels(PeerIndex(0)).pending_keys, 1);
    assert!(s
        .take_inbound(PeerIndex(0), &id, Instant::now(), true)
        .is_none());
    assert_eq!(
        s.levels(PeerIndex(0)).pending_keys,
        0,
        "no double fetch by the refill thread later"
    );
}

#[test]
fn expired_keys_are_wiped_and_counted_as_wasted() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 1, Duration::from_millis(50));
    s.start();
    wait_for("queued", || s.levels(PeerIndex(0)).outbound_sets == 1);
    s.accept_announcement(PeerIndex(0), &[KeyId([9; 16])], 1);
    wait_for("cached", || s.levels(PeerIndex(0)).inbound_keys == 1);
    thread::sleep(Duration::from_millis(60));
    assert!(
        take(&s, now()).is_none_or(|set| set.ids().all(|id| id != KeyId([0; 16]))),
        "an expired set is never handed out"
    );
    wait_for("expired and counted", || {
        s.counters().wasted.load(Ordering::SeqCst) >= 2
    });
}

/// When the peer's next refill may start (None: any time), and the pause it waits.
fn retry_at(s: &Supply) -> (Option<Instant>, Duration) {
    let state = s.shared.lock();
    let b = &state.buffers[PeerIndex(0)];
    (b.retry_at, b.backoff)
}

#[test]
fn a_failing_kme_is_retried_with_backoff_and_the_buffer_recovers() {
    let down = KmeError::Unreachable {
        url: "https://kme".into(),
        reason: "connection refused".into(),
        maybe_served: false,
    };
    let mut pauses = vec![refill::next_backoff(Duration::ZERO, &down)];
    while pauses.len() < 7 {
        pauses.push(refill::next_backoff(*pauses.last().unwrap(), &down));
    }
    let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000]);

    let kme = Arc::new(NumberingKme::default());
    kme.down.store(true, Ordering::SeqCst);
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    wait_for("a failed refill", || retry_at(&s).0.is_some());
    let (at, pause) = retry_at(&s);
    assert!(pause >= Duration::from_millis(200), "{pause:?}");
    assert!(at.unwrap() > now(), "the next refill waits");
    assert!(take(&s, now()).is_none());
    kme.down.store(false, Ordering::SeqCst);
    wait_for("recovered", || s.levels(PeerIndex(0)).outbound_sets == 2);
    assert_eq!(retry_at(&s), (None, Duration::ZERO));
}

#[test]
fn a_kme_that_refuses_the_peer_is_asked_again_only_after_a_long_pause() {
    let kme = Arc::new(NumberingKme::default());
    kme.refusing.store(true, Ordering::SeqCst);
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    wait_for("a refused refill", || retry_at(&s).0.is_some());
    let (at, pause) = retry_at(&s);
    assert_eq!(pause, Duration::from_secs(60));
    assert!(at.unwrap() > now() + Duration::from_secs(59));
    assert_eq!(kme.enc_calls.load(Ordering::SeqCst), 1);
}

#[test]
fn announced_ids_the_kme_never_delivers_expire() {
    let kme = Arc::new(NumberingKme::default());
    kme.down.store(true, Ordering::SeqCst);
    let mut s = supply(&kme, 1, Duration::from_secs(60));
    Arc::get_mut(&mut s.shared).unwrap().announcement_ttl = Duration::from_millis(100);
    s.start();
    s.accept_announcement(PeerIndex(0), &[KeyId([5; 16])], 1);
    wait_for("given up", || {
        s.counters().announce_failures.load(Ordering::SeqCst) == 1
    });
    assert_eq!(s.levels(PeerIndex(0)).pending_keys, 0);
}

#[test]
fn a_cached_key_past_key_ttl_is_not_handed_out() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 1, Duration::from_millis(50));
    s.start();
    let id = [KeyId([6; 16])];
    s.accept_announcement(PeerIndex(0), &id, 1);
    wait_for("cached", || s.levels(PeerIndex(0)).inbound_keys == 1);
    thread::sleep(Duration::from_millis(60));
    assert!(
        s.take_inbound(PeerIndex(0), &id, now(), true).is_none(),
        "expired at the take"
    );
}

/// A key the peer did not announce is fetched by the refill threads for the exchange that
/// needs it, not by the exchange's own request.
#[test]
fn an_exchange_waits_for_unannounced_keys_from_the_refill_threads() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 1, Duration::from_secs(60));
    s.start();
    let ids: Vec<KeyId> = (40..42).map(|n| KeyId([n; 16])).collect();
    let keys = s
        .take_inbound(PeerIndex(0), &ids, now() + Duration::from_secs(5), true)
        .expect("fetched for the exchange");
    assert_eq!(keys.len(), 2);
    assert_eq!(kme.dec_calls.load(Ordering::SeqCst), 1);
}

/// A burst while the small refill an idle peer started is still out: a second request for
/// the burst's sets goes out at once instead of after the first.
#[test]
fn a_burst_does_not_wait_for_the_refill_started_before_it() {
    let kme = Arc::new(NumberingKme::default());
    kme.holding.store(true, Ordering::SeqCst);
    let s = growing(&kme, 16);
    s.start();
    wait_for("the floor's refill out", || {
        kme.enc_in_progress.load(Ordering::SeqCst) == 1
    });
    thread::scope(|scope| {
        let takers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| take(&s, now() + Duration::from_secs(5))))
            .collect();
        wait_for("a second request for the burst", || {
            kme.enc_in_progress.load(Ordering::SeqCst) == 2
        });
        assert!(
            kme.most_sets.load(Ordering::SeqCst) > 1,
            "asked for the burst"
        );
        kme.holding.store(false, Ordering::SeqCst);
        for taker in takers {
            assert!(taker.join().unwrap().is_some());
        }
    });
}

/// Keys announced while a dec_keys for the peer is out are fetched at once, not after it:
/// otherwise they could arrive after the exchange that names them.
#[test]
fn announced_keys_do_not_wait_for_the_fetch_in_flight() {
    let kme = Arc::new(NumberingKme::default());
    kme.dec_holding.store(true, Ordering::SeqCst);
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    s.accept_announcement(PeerIndex(0), &[KeyId([60; 16])], 1);
    wait_for("first fetch out", || {
        kme.dec_in_progress.load(Ordering::SeqCst) == 1
    });
    s.accept_announcement(PeerIndex(0), &[KeyId([61; 16])], 1);
    wait_for("second fetch out beside it", || {
        kme.dec_in_progress.load(Ordering::SeqCst) == 2
    });
    kme.dec_holding.store(false, Ordering::SeqCst);
    wait_for("both cached", || s.levels(PeerIndex(0)).inbound_keys == 2);
}

/// One ID the KME does not know in a batch of announced IDs costs no other key.
#[test]
fn an_unknown_id_in_a_batch_costs_no_other_key() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 4, Duration::from_secs(60));
    s.start();
    let good = [KeyId([70; 16]), KeyId([71; 16])];
    s.accept_announcement(PeerIndex(0), &[good[0], UNKNOWN, good[1]], 1);
    wait_for("the known ones cached", || {
        s.levels(PeerIndex(0)).inbound_keys == 2
    });
    let deadline = now() + Duration::from_secs(1);
    assert!(s
        .take_inbound(PeerIndex(0), &good, deadline, true)
        .is_some());
}

/// An announcement that comes after the peer's next exchange used one of its IDs: that ID
/// is not asked for again (the KME no longer has it).
#[test]
fn used_ids_in_a_late_announcement_are_not_fetched() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 4, Duration::from_secs(60));
    s.start();
    let used = KeyId([80; 16]);
    s.record_used(&[used]).unwrap();
    s.accept_announcement(PeerIndex(0), &[used, KeyId([81; 16])], 1);
    wait_for("the other cached", || {
        s.levels(PeerIndex(0)).inbound_keys == 1
    });
    assert_eq!(s.levels(PeerIndex(0)).pending_keys, 0);
}

/// A failed exchange among others at the same time is no proof of a replacing KME (the
/// peer may have refused for its own limits); one that ran alone is.
#[test]
fn only_a_failure_alone_is_taken_for_a_replacing_kme() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    wait_for("queue full", || s.levels(PeerIndex(0)).outbound_sets == 2);
    let (first, one) = s.take_outbound(PeerIndex(0), now()).unwrap();
    let (_, other) = s.take_outbound(PeerIndex(0), now()).unwrap();
    wait_for("refilled after them", || {
        s.levels(PeerIndex(0)).outbound_sets == 2
    });
    s.unconfirmed(PeerIndex(0), first.enc_number);
    assert_eq!(
        s.levels(PeerIndex(0)).target_sets,
        2,
        "another exchange ran"
    );
    drop(other);
    s.unconfirmed(PeerIndex(0), first.enc_number);
    assert_eq!(s.levels(PeerIndex(0)).target_sets, 1, "alone: replacing");
    drop(one);
}

/// Many exchanges at once with an empty queue: they wait for the refill threads, which ask
/// the KME for many sets per request, instead of each asking the KME (or failing).
#[test]
fn exchanges_at_once_share_batched_refills() {
    let kme = Arc::new(NumberingKme::default());
    *kme.delay.lock().unwrap() = Duration::from_millis(20);
    kme.holding.store(true, Ordering::SeqCst);
    let s = growing(&kme, 16);
    s.start();
    let got = thread::scope(|scope| {
        let takers: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| take(&s, now() + Duration::from_secs(5))))
            .collect();
        wait_for("all waiting", || {
            s.shared.lock().buffers[PeerIndex(0)].outbound_waiting == 12
        });
        kme.holding.store(false, Ordering::SeqCst);
        takers
            .into_iter()
            .map(|t| t.join().unwrap().is_some())
            .filter(|got| *got)
            .count()
    });
    assert_eq!(got, 12, "every exchange got a set");
    // The floor's refill (held), then one request for every exchange waiting meanwhile;
    // later ones top the queue up.
    assert!(
        kme.most_sets.load(Ordering::SeqCst) >= 11,
        "one request for the exchanges waiting"
    );
    let calls = kme.enc_calls.load(Ordering::SeqCst);
    assert!(calls < 12, "{calls} enc_keys calls for 12 exchanges");
}

/// Many exchanges before authentication at once (peers initiating together after a start)
/// take several rounds of shared dec_keys; each answer comes fast, so every exchange waits
/// for its round instead of being refused after the first.
#[test]
fn a_burst_before_authentication_waits_for_rounds_of_fast_answers() {
    let kme = Arc::new(NumberingKme::default());
    *kme.delay.lock().unwrap() = Duration::from_millis(200);
    let s = supply(&kme, 1, Duration::from_secs(60));
    s.start();
    wait_for("KME timed", || s.levels(PeerIndex(0)).outbound_sets == 1);
    let deadline = now() + Duration::from_secs(5);
    let got = thread::scope(|scope| {
        let takers: Vec<_> = (100..148u8)
            .map(|n| {
                let s = &s;
                scope.spawn(move || {
                    s.take_inbound(PeerIndex(0), &[KeyId([n; 16])], deadline, false)
                        .is_some()
                })
            })
            .collect();
        takers
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|got| *got)
            .count()
    });
    assert_eq!(got, 48, "every exchange of the burst got its key");
    let calls = kme.dec_calls.load(Ordering::SeqCst);
    assert!(calls >= 3, "{calls} dec_keys: 48 IDs take several rounds");
}

/// Before authentication an exchange may wait for the refill threads only while the KME
/// answers fast: a flood cannot hold charon's threads on a slow KME.
#[test]
fn an_unauthenticated_exchange_waits_only_for_a_fast_kme() {
    let ids = [KeyId([50; 16])];
    let fast = Arc::new(NumberingKme::default());
    let s = supply(&fast, 1, Duration::from_secs(60));
    s.start();
    wait_for("KME timed", || s.levels(PeerIndex(0)).outbound_sets == 1);
    let deadline = now() + Duration::from_secs(5);
    assert!(
        s.take_inbound(PeerIndex(0), &ids, deadline, false)
            .is_some(),
        "fast KME: waited"
    );

    let slow = Arc::new(NumberingKme::default());
    *slow.delay.lock().unwrap() = Duration::from_millis(300);
    let s = supply(&slow, 1, Duration::from_secs(60));
    s.start();
    wait_for("KME timed", || s.levels(PeerIndex(0)).outbound_sets == 1);
    let asked = now();
    assert!(
        s.take_inbound(PeerIndex(0), &ids, deadline, false)
            .is_none(),
        "slow KME: not waited for"
    );
    assert!(asked.elapsed() < Duration::from_millis(300));
    assert_eq!(
        s.levels(PeerIndex(0)).pending_keys,
        0,
        "nothing left for the refill threads"
    );
    assert_eq!(slow.dec_calls.load(Ordering::SeqCst), 0);
}

/// A set the peer could not obtain although a later enc_keys came after it: the KME pair
/// replaces unfetched keys. From then on one set at a time, none fetched while an exchange
/// is outstanding, and exchanges wait for the one before.
#[test]
fn a_replacing_kme_gets_one_set_at_a_time() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    wait_for("queue full", || s.levels(PeerIndex(0)).outbound_sets == 2);
    let first = take(&s, now()).unwrap();
    take(&s, now() + Duration::from_secs(5)).unwrap();
    // Not the latest enc_keys any more once the queue refilled after it.
    wait_for("refilled", || s.levels(PeerIndex(0)).outbound_sets == 2);
    s.unconfirmed(PeerIndex(0), first.enc_number);
    assert_eq!(s.levels(PeerIndex(0)).target_sets, 1, "one set at a time");
    let calls = kme.enc_calls.load(Ordering::SeqCst);
    let exchange = s.outstanding(PeerIndex(0));
    while take(&s, now()).is_some() {}
    assert!(
        take(&s, now() + Duration::from_millis(100)).is_none(),
        "no set while another exchange is outstanding"
    );
    assert_eq!(
        kme.enc_calls.load(Ordering::SeqCst),
        calls,
        "no enc_keys meanwhile"
    );
    drop(exchange);
    let (_, exchange) = s
        .take_outbound(PeerIndex(0), now() + Duration::from_secs(5))
        .expect("a set once the exchange before is over");
    // A taken set's exchange is outstanding until it is over: no enc_keys (which would
    // replace that set at the KME) runs before.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        s.levels(PeerIndex(0)).outbound_sets,
        0,
        "not refilled while it runs"
    );
    drop(exchange);
    wait_for("refilled after it", || {
        s.levels(PeerIndex(0)).outbound_sets == 1
    });
    assert_eq!(
        kme.most_sets.load(Ordering::SeqCst),
        2,
        "never more than the floor asked"
    );
}

#[test]
fn a_failed_exchange_with_the_latest_keys_is_not_taken_for_replacement() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 3, Duration::from_secs(60));
    s.start();
    wait_for("queued", || s.levels(PeerIndex(0)).outbound_sets == 3);
    kme.holding.store(true, Ordering::SeqCst);
    let only = take(&s, now()).unwrap();
    s.unconfirmed(PeerIndex(0), only.enc_number);
    assert_eq!(
        s.levels(PeerIndex(0)).target_sets,
        3,
        "no later enc_keys: not a replacing KME"
    );
    kme.holding.store(false, Ordering::SeqCst);
}

/// Keys an authenticated peer announced and a refill is fetching are waited for by the next
/// initial exchange that names them, however slow the KME: the exchange asks for nothing.
#[test]
fn an_unauthenticated_exchange_waits_for_announced_keys_in_flight() {
    let kme = Arc::new(NumberingKme::default());
    *kme.delay.lock().unwrap() = Duration::from_millis(300);
    let s = supply(&kme, 1, Duration::from_secs(60));
    s.start();
    wait_for("KME timed", || s.levels(PeerIndex(0)).outbound_sets == 1);
    let ids = [KeyId([60; 16])];
    s.accept_announcement(PeerIndex(0), &ids, 1);
    wait_for("in flight", || {
        s.levels(PeerIndex(0)).pending_keys == 1 && kme.dec_calls.load(Ordering::SeqCst) == 1
    });
    let keys = s.take_inbound(PeerIndex(0), &ids, now() + Duration::from_secs(5), false);
    assert!(keys.is_some(), "waited for the announced key");
    assert_eq!(kme.dec_calls.load(Ordering::SeqCst), 1);
}
