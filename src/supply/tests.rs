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
    /// Each enc_keys answer takes this long.
    delay: Mutex<Duration>,
    /// The most sets one enc_keys call asked for.
    most_sets: AtomicU32,
}

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
        thread::sleep(*self.delay.lock().unwrap());
        self.enc_in_progress.fetch_sub(1, Ordering::SeqCst);
        self.fail_if_down()?;
        Ok((0..sets)
            .map(|_| vec![Self::key(self.issued.fetch_add(1, Ordering::SeqCst) as u8)])
            .collect())
    }

    fn dec_keys(&self, _: &SaeId, ids: &[KeyId], _: Instant) -> Result<Vec<QkdKey>, KmeError> {
        self.dec_calls.fetch_add(1, Ordering::SeqCst);
        thread::sleep(*self.delay.lock().unwrap());
        self.fail_if_down()?;
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

/// A fixed depth of `target` sets (floor = cap).
fn supply(kme: &Arc<NumberingKme>, target: usize, ttl: Duration) -> Supply {
    let limits = DepthLimits {
        floor: target,
        cap: target,
        total: 1000,
    };
    Supply::new(vec![peer(0, kme)], limits, 256, ttl)
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
    wait_for("queue full", || s.levels(0).outbound_sets == 3);
    assert_eq!(
        kme.enc_calls.load(Ordering::SeqCst),
        1,
        "one enc_keys for three sets"
    );
    assert_eq!(
        s.announcement(0),
        [KeyId([0; 16]), KeyId([1; 16]), KeyId([2; 16])]
    );
    let first = s.take_outbound(0, now()).unwrap();
    assert_eq!(first.ids().collect::<Vec<_>>(), [KeyId([0; 16])]);
    wait_for("refilled", || s.levels(0).outbound_sets == 3);
    assert_eq!(
        s.announcement(0)[0],
        KeyId([1; 16]),
        "FIFO: announced = used next"
    );
}

/// A refill that is not urgent waits until the exchange that took keys is done; one that
/// is urgent (queue empty) does not; more takes do not postpone it further.
#[test]
fn refills_wait_for_the_exchange_unless_the_queue_is_empty() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    wait_for("queue full", || s.levels(0).outbound_sets == 2);
    let taken = Instant::now();
    s.take_outbound(0, now()).unwrap();
    thread::sleep(refill::SETTLE / 5);
    assert_eq!(s.levels(0).outbound_sets, 1, "not refilled while settling");
    s.take_outbound(0, now()).unwrap();
    wait_for("empty queue refilled", || s.levels(0).outbound_sets == 2);
    assert!(
        taken.elapsed() < refill::SETTLE,
        "an empty queue is refilled at once"
    );

    let s = supply(&kme, 4, Duration::from_secs(60));
    s.start();
    wait_for("queue full", || s.levels(0).outbound_sets == 4);
    let first = Instant::now();
    let gap = refill::SETTLE * 2 / 5;
    for _ in 0..3 {
        s.take_outbound(0, now()).unwrap();
        thread::sleep(gap);
    }
    wait_for("refilled", || s.levels(0).outbound_sets == 4);
    // Had each take extended the wait, the refill could not come before the last take's
    // 2 gaps + SETTLE.
    assert!(
        first.elapsed() < 2 * gap + refill::SETTLE,
        "refill postponed by later takes: {:?}",
        first.elapsed()
    );
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
        (0..200).all(|p| s.levels(p).outbound_sets == 1)
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
    wait_for("fast peer filled", || s.levels(1).outbound_sets == 2);
    assert_eq!(
        s.levels(0).outbound_sets,
        0,
        "the slow KME has not answered"
    );
    slow.holding.store(false, Ordering::SeqCst);
    wait_for("slow peer filled", || s.levels(0).outbound_sets == 2);
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
        let exchange = scope.spawn(|| s.take_outbound(0, now() + Duration::from_secs(5)));
        kme.holding.store(false, Ordering::SeqCst);
        let set = exchange.join().unwrap().expect("a set from the refill");
        assert_eq!(set.ids().collect::<Vec<_>>(), [KeyId([0; 16])]);
    });
    assert_eq!(
        kme.enc_calls.load(Ordering::SeqCst),
        1,
        "one request served both"
    );
    assert!(
        s.take_outbound(0, now()).is_some(),
        "the refill's second set stays queued"
    );
}

/// Exchanges as fast as keys come: each refill is asked for more sets than the last one
/// delivered, up to the cap, so a 20 ms KME is asked far fewer times than there are exchanges.
#[test]
fn depth_grows_with_demand_up_to_the_cap() {
    let kme = Arc::new(NumberingKme::default());
    *kme.delay.lock().unwrap() = Duration::from_millis(20);
    let limits = DepthLimits {
        floor: 1,
        cap: 8,
        total: 1000,
    };
    let s = Supply::new(vec![peer(0, &kme)], limits, 256, Duration::from_secs(60));
    s.start();
    wait_for("floor", || s.levels(0).outbound_sets == 1);
    assert_eq!(s.levels(0).target_sets, 1, "idle: the floor");
    let mut taken = 0;
    while taken < 100 {
        if s.take_outbound(0, now() + Duration::from_secs(1)).is_some() {
            taken += 1;
        } else {
            thread::yield_now();
        }
    }
    assert_eq!(
        kme.most_sets.load(Ordering::SeqCst),
        8,
        "asked up to the cap"
    );
    let calls = kme.enc_calls.load(Ordering::SeqCst);
    assert!(calls < 40, "{calls} enc_keys calls for 100 sets");
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
    wait_for("floors", || (0..2).all(|p| s.levels(p).outbound_sets == 1));
    let mut taken = 0;
    while taken < 60 {
        if s.take_outbound(0, now() + Duration::from_secs(1)).is_some() {
            taken += 1;
        } else {
            thread::yield_now();
        }
        assert!(s.levels(0).outbound_sets <= 4, "floor 1 + total 3");
    }
    assert_eq!(
        kme.most_sets.load(Ordering::SeqCst),
        4,
        "grown to floor + total, no more"
    );
}

#[test]
fn announcements_of_an_ike_sa_being_set_up_wait_for_its_authentication() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 4, Duration::from_secs(60));
    s.start();
    let ids: Vec<KeyId> = (20..23).map(|n| KeyId([n; 16])).collect();
    s.hold_announcement(7, 0, &ids, 1);
    s.hold_announcement(8, 0, &[KeyId([30; 16])], 1);
    assert_eq!(
        s.levels(0).pending_keys,
        0,
        "nothing fetched for an unauthenticated peer"
    );
    s.forget(8);
    s.authenticated(8);
    s.authenticated(7);
    wait_for("fetched after authentication", || {
        s.levels(0).inbound_keys == 3
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
        s.hold_announcement(ike_sa, 0, &[KeyId([1; 16])], 1);
    }
    s.authenticated(0);
    assert_eq!(s.levels(0).pending_keys, 0, "the oldest was dropped");
    s.authenticated(MAX_UNVERIFIED as u32);
    assert_eq!(s.levels(0).pending_keys, 1);
}

#[test]
fn announced_keys_are_fetched_ahead_bounded_and_once() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    let ids: Vec<KeyId> = (10..15).map(|n| KeyId([n; 16])).collect();
    s.accept_announcement(0, &ids, 1);
    s.accept_announcement(0, &ids, 1);
    wait_for("cached", || s.levels(0).inbound_keys == 2);
    assert_eq!(
        s.levels(0).pending_keys,
        0,
        "room for 2 sets of 1 key: the rest ignored"
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    let keys = s.take_inbound(0, &ids[..1], deadline, true).unwrap();
    assert_eq!(&keys[0].material[..], &[10; 32]);
    assert!(
        s.take_inbound(0, &ids[..1], now(), true).is_none(),
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
    s.accept_announcement(0, &id, 1);
    assert_eq!(s.levels(0).pending_keys, 1);
    assert!(s.take_inbound(0, &id, Instant::now(), true).is_none());
    assert_eq!(
        s.levels(0).pending_keys,
        0,
        "no double fetch by the refill thread later"
    );
}

#[test]
fn expired_keys_are_wiped_and_counted_as_wasted() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 1, Duration::from_millis(50));
    s.start();
    wait_for("queued", || s.levels(0).outbound_sets == 1);
    s.accept_announcement(0, &[KeyId([9; 16])], 1);
    wait_for("cached", || s.levels(0).inbound_keys == 1);
    thread::sleep(Duration::from_millis(60));
    assert!(
        s.take_outbound(0, now())
            .is_none_or(|set| set.ids().all(|id| id != KeyId([0; 16]))),
        "an expired set is never handed out"
    );
    wait_for("expired and counted", || {
        s.counters().wasted.load(Ordering::SeqCst) >= 2
    });
}

#[test]
fn a_failing_kme_is_retried_with_backoff_and_the_buffer_recovers() {
    let kme = Arc::new(NumberingKme::default());
    kme.down.store(true, Ordering::SeqCst);
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    thread::sleep(Duration::from_millis(500));
    let attempts = kme.enc_calls.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&attempts),
        "{attempts} attempts in 0.5 s: backoff"
    );
    assert!(s.take_outbound(0, now()).is_none());
    kme.down.store(false, Ordering::SeqCst);
    wait_for("recovered", || s.levels(0).outbound_sets == 2);
}

#[test]
fn a_kme_that_refuses_the_peer_is_asked_again_only_after_a_long_pause() {
    let kme = Arc::new(NumberingKme::default());
    kme.refusing.store(true, Ordering::SeqCst);
    let s = supply(&kme, 2, Duration::from_secs(60));
    s.start();
    thread::sleep(Duration::from_millis(600));
    assert_eq!(
        kme.enc_calls.load(Ordering::SeqCst),
        1,
        "no retry within 0.6 s"
    );
}

#[test]
fn announced_ids_the_kme_never_delivers_expire() {
    let kme = Arc::new(NumberingKme::default());
    kme.down.store(true, Ordering::SeqCst);
    let mut s = supply(&kme, 1, Duration::from_secs(60));
    Arc::get_mut(&mut s.shared).unwrap().announcement_ttl = Duration::from_millis(100);
    s.start();
    s.accept_announcement(0, &[KeyId([5; 16])], 1);
    wait_for("given up", || {
        s.counters().announce_failures.load(Ordering::SeqCst) == 1
    });
    assert_eq!(s.levels(0).pending_keys, 0);
}

#[test]
fn a_cached_key_past_key_ttl_is_not_handed_out() {
    let kme = Arc::new(NumberingKme::default());
    let s = supply(&kme, 1, Duration::from_millis(50));
    s.start();
    let id = [KeyId([6; 16])];
    s.accept_announcement(0, &id, 1);
    wait_for("cached", || s.levels(0).inbound_keys == 1);
    thread::sleep(Duration::from_millis(60));
    assert!(
        s.take_inbound(0, &id, now(), true).is_none(),
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
        .take_inbound(0, &ids, now() + Duration::from_secs(5), true)
        .expect("fetched for the exchange");
    assert_eq!(keys.len(), 2);
    assert_eq!(kme.dec_calls.load(Ordering::SeqCst), 1);
}

/// Many exchanges at once with an empty queue: they wait for the refill threads, which ask
/// the KME for many sets per request, instead of each asking the KME (or failing).
#[test]
fn exchanges_at_once_share_batched_refills() {
    let kme = Arc::new(NumberingKme::default());
    *kme.delay.lock().unwrap() = Duration::from_millis(20);
    kme.holding.store(true, Ordering::SeqCst);
    let limits = DepthLimits {
        floor: 1,
        cap: 16,
        total: 1000,
    };
    let s = Supply::new(vec![peer(0, &kme)], limits, 256, Duration::from_secs(60));
    s.start();
    let got = thread::scope(|scope| {
        let takers: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| s.take_outbound(0, now() + Duration::from_secs(5))))
            .collect();
        kme.holding.store(false, Ordering::SeqCst);
        takers
            .into_iter()
            .map(|t| t.join().unwrap().is_some())
            .filter(|got| *got)
            .count()
    });
    assert_eq!(got, 12, "every exchange got a set");
    let calls = kme.enc_calls.load(Ordering::SeqCst);
    assert!(calls < 12, "{calls} enc_keys calls for 12 exchanges");
}

/// Before authentication an exchange may wait for the refill threads only while the KME
/// answers fast: a flood cannot hold charon's threads on a slow KME.
#[test]
fn an_unauthenticated_exchange_waits_only_for_a_fast_kme() {
    let ids = [KeyId([50; 16])];
    let fast = Arc::new(NumberingKme::default());
    let s = supply(&fast, 1, Duration::from_secs(60));
    s.start();
    wait_for("KME timed", || s.levels(0).outbound_sets == 1);
    let deadline = now() + Duration::from_secs(5);
    assert!(
        s.take_inbound(0, &ids, deadline, false).is_some(),
        "fast KME: waited"
    );

    let slow = Arc::new(NumberingKme::default());
    *slow.delay.lock().unwrap() = Duration::from_millis(300);
    let s = supply(&slow, 1, Duration::from_secs(60));
    s.start();
    wait_for("KME timed", || s.levels(0).outbound_sets == 1);
    let asked = now();
    assert!(
        s.take_inbound(0, &ids, deadline, false).is_none(),
        "slow KME: not waited for"
    );
    assert!(asked.elapsed() < Duration::from_millis(300));
    assert_eq!(
        s.levels(0).pending_keys,
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
    wait_for("queue full", || s.levels(0).outbound_sets == 2);
    let first = s.take_outbound(0, now()).unwrap();
    s.take_outbound(0, now() + Duration::from_secs(5)).unwrap();
    // Not the latest enc_keys any more once the queue refilled after it.
    wait_for("refilled", || s.levels(0).outbound_sets == 2);
    s.unconfirmed(0, first.enc_number);
    assert_eq!(s.levels(0).target_sets, 1, "one set at a time");
    let calls = kme.enc_calls.load(Ordering::SeqCst);
    let exchange = s.outstanding(0);
    while s.take_outbound(0, now()).is_some() {}
    assert!(
        s.take_outbound(0, now() + Duration::from_millis(100))
            .is_none(),
        "no set while another exchange is outstanding"
    );
    assert_eq!(
        kme.enc_calls.load(Ordering::SeqCst),
        calls,
        "no enc_keys meanwhile"
    );
    drop(exchange);
    assert!(s.take_outbound(0, now() + Duration::from_secs(5)).is_some());
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
    wait_for("queued", || s.levels(0).outbound_sets == 3);
    kme.holding.store(true, Ordering::SeqCst);
    let only = s.take_outbound(0, now()).unwrap();
    s.unconfirmed(0, only.enc_number);
    assert_eq!(
        s.levels(0).target_sets,
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
    wait_for("KME timed", || s.levels(0).outbound_sets == 1);
    let ids = [KeyId([60; 16])];
    s.accept_announcement(0, &ids, 1);
    wait_for("in flight", || {
        s.levels(0).pending_keys == 1 && kme.dec_calls.load(Ordering::SeqCst) == 1
    });
    let keys = s.take_inbound(0, &ids, now() + Duration::from_secs(5), false);
    assert!(keys.is_some(), "waited for the announced key");
    assert_eq!(kme.dec_calls.load(Ordering::SeqCst), 1);
}
