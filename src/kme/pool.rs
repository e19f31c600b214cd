//! Key buffer (`prefetch`): keeps master-side keys for one peer ready, so an initiator does
//! not wait for a KME round trip — or for a slow QKD link — in the middle of a handshake.
//!
//! Only the master side can buffer: the slave needs the key IDs the master picked. A
//! background thread tops the buffer up whenever it falls below its target; the exchange
//! takes a buffered key if there is one and otherwise asks the KME directly. Buffered keys
//! are wiped when taken out and used, or when the buffer is dropped (on reload/unload).

use super::{KeyId, KeySource, KmeError, QkdKey, SaeId};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// A [`KeySource`] that serves `enc_keys` for one slave and size from a buffer.
pub struct PrefetchPool {
    shared: Arc<Shared>,
}

struct Shared {
    source: Arc<dyn KeySource>,
    slave: SaeId,
    size_bits: u32,
    target: usize,
    ready: Mutex<VecDeque<Vec<QkdKey>>>,
    /// Signalled when a key set is taken (refill) or the pool is dropped.
    wake: Condvar,
}

/// Longest pause between refill attempts while the KME has no key or is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Bound on one refill call; each KME request in it is bounded by kme.timeout anyway.
const REFILL_DEADLINE: Duration = Duration::from_secs(30);

impl PrefetchPool {
    pub fn new(
        source: Arc<dyn KeySource>,
        slave: SaeId,
        size_bits: u32,
        target: usize,
    ) -> PrefetchPool {
        let shared = Arc::new(Shared {
            source,
            slave,
            size_bits,
            target,
            ready: Mutex::new(VecDeque::with_capacity(target)),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&shared);
        let name = format!("qkd-prefetch-{}", shared.slave);
        // If the thread cannot start, the pool stays empty and every request goes to the KME.
        let _ = thread::Builder::new()
            .name(name)
            .spawn(move || refill(weak));
        PrefetchPool { shared }
    }

    /// Key sets ready right now.
    pub fn ready(&self) -> usize {
        self.shared.ready.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Drop for PrefetchPool {
    fn drop(&mut self) {
        // The refill thread holds only a Weak reference: wake it so it notices and exits.
        self.shared.wake.notify_all();
    }
}

/// Refill loop: runs until the pool is dropped.
fn refill(weak: Weak<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(shared) = weak.upgrade() else { return };
        {
            let ready = shared.ready.lock().unwrap_or_else(|e| e.into_inner());
            if ready.len() >= shared.target {
                // Wait for a take (or the drop); the timeout re-checks whether we are dropped.
                let _ = shared.wake.wait_timeout(ready, Duration::from_secs(1));
                continue;
            }
        }
        match shared.source.enc_keys(
            &shared.slave,
            shared.size_bits,
            1,
            Instant::now() + REFILL_DEADLINE,
        ) {
            Ok(sets) => {
                let keys = sets.into_iter().next().unwrap_or_default();
                backoff = Duration::from_millis(100);
                let ids: Vec<String> = keys.iter().map(|k| k.id.to_string()).collect();
                let mut ready = shared.ready.lock().unwrap_or_else(|e| e.into_inner());
                ready.push_back(keys);
                log::debug!(
                    "qkd: prefetched key IDs {} for SAE '{}' ({}/{} ready)",
                    ids.join(","),
                    shared.slave,
                    ready.len(),
                    shared.target
                );
            }
            Err(e) => {
                log::debug!(
                    "qkd: prefetch for SAE '{}': {e}; retrying in {backoff:?}",
                    shared.slave
                );
                let ready = shared.ready.lock().unwrap_or_else(|e| e.into_inner());
                let _ = shared.wake.wait_timeout(ready, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

impl KeySource for PrefetchPool {
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        sets: usize,
        deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        let s = &self.shared;
        if slave == &s.slave && size_bits == s.size_bits {
            let taken = s
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            if let Some(keys) = taken {
                s.wake.notify_all();
                return Ok(vec![keys]);
            }
        }
        s.source.enc_keys(slave, size_bits, sets, deadline)
    }

    fn dec_keys(
        &self,
        master: &SaeId,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        self.shared.source.dec_keys(master, ids, deadline)
    }

    fn keys_per_set(
        &self,
        peer: &SaeId,
        size_bits: u32,
        deadline: Instant,
    ) -> Result<usize, KmeError> {
        self.shared.source.keys_per_set(peer, size_bits, deadline)
    }

    fn url(&self) -> &str {
        self.shared.source.url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use zeroize::Zeroizing;

    /// Hands out numbered keys; fails while `down` is set.
    #[derive(Default)]
    struct CountingKme {
        issued: AtomicU32,
        down: Mutex<bool>,
    }

    impl KeySource for CountingKme {
        fn enc_keys(
            &self,
            _: &SaeId,
            size_bits: u32,
            _: usize,
            _: Instant,
        ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
            if *self.down.lock().unwrap() {
                return Err(KmeError::NoKeyAvailable {
                    url: "k".into(),
                    message: "empty".into(),
                });
            }
            let n = self.issued.fetch_add(1, Ordering::SeqCst);
            Ok(vec![vec![QkdKey {
                id: KeyId([n as u8; 16]),
                material: Zeroizing::new(vec![n as u8; size_bits as usize / 8]),
            }]])
        }
        fn dec_keys(&self, _: &SaeId, _: &[KeyId], _: Instant) -> Result<Vec<QkdKey>, KmeError> {
            Err(KmeError::Protocol("not used".into()))
        }
        fn keys_per_set(&self, _: &SaeId, _: u32, _: Instant) -> Result<usize, KmeError> {
            Ok(1)
        }
        fn url(&self) -> &str {
            "k"
        }
    }

    fn wait_for(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not reached in 5 s");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn sae(s: &str) -> SaeId {
        SaeId::new(s).unwrap()
    }

    #[test]
    fn fills_to_target_serves_in_order_and_refills() {
        let kme = Arc::new(CountingKme::default());
        let pool = PrefetchPool::new(kme.clone(), sae("sae-b"), 256, 3);
        wait_for(|| pool.ready() == 3);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(kme.issued.load(Ordering::SeqCst), 3, "stops at the target");
        let first = pool
            .enc_keys(&sae("sae-b"), 256, 1, soon())
            .unwrap()
            .remove(0);
        assert_eq!(first[0].id, KeyId([0; 16]));
        assert_eq!(first[0].material.len(), 32);
        wait_for(|| kme.issued.load(Ordering::SeqCst) == 4 && pool.ready() == 3);
    }

    #[test]
    fn other_slaves_and_sizes_go_to_the_kme() {
        let kme = Arc::new(CountingKme::default());
        let pool = PrefetchPool::new(kme.clone(), sae("sae-b"), 256, 1);
        wait_for(|| pool.ready() == 1);
        assert_eq!(
            pool.enc_keys(&sae("sae-c"), 256, 1, soon()).unwrap()[0][0].id,
            KeyId([1; 16])
        );
        assert_eq!(
            pool.enc_keys(&sae("sae-b"), 512, 1, soon()).unwrap()[0][0]
                .material
                .len(),
            64
        );
        assert_eq!(pool.ready(), 1);
    }

    #[test]
    fn empty_pool_falls_through_and_recovers_after_an_outage() {
        let kme = Arc::new(CountingKme::default());
        *kme.down.lock().unwrap() = true;
        let pool = PrefetchPool::new(kme.clone(), sae("sae-b"), 256, 2);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(pool.ready(), 0);
        assert!(matches!(
            pool.enc_keys(&sae("sae-b"), 256, 1, soon()),
            Err(KmeError::NoKeyAvailable { .. })
        ));
        *kme.down.lock().unwrap() = false;
        wait_for(|| pool.ready() == 2);
    }

    #[test]
    fn dropping_the_pool_stops_the_refill_thread() {
        let kme = Arc::new(CountingKme::default());
        let pool = PrefetchPool::new(kme.clone(), sae("sae-b"), 256, 1);
        wait_for(|| pool.ready() == 1);
        drop(pool);
        wait_for(|| Arc::strong_count(&kme) == 1);
    }
}
