//! The key material of one simulated QKD link.
//!
//! Keys of `key_size` bits come from the operating system's CSPRNG at the link's secret key
//! rate into a pool bounded by `max_key_count`, as a real link distils them. Generation is
//! computed lazily from the elapsed time whenever the store is touched, so an idle simulator
//! burns no CPU and a fast request loop really drains the pool. The pool starts full, like a
//! link that has been up for a while.
//!
//! A key leaves the pool when a master SAE asks for it (enc_keys); it then waits, bound to
//! that master and the slave SAE it named, until the slave asks for it by ID (dec_keys), and
//! is erased after that second delivery. All key buffers zeroize on drop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use base64::Engine;
use serde::Serialize;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::config::SimOptions;

/// Secret bytes that are wiped when dropped.
pub type SecretBytes = Zeroizing<Vec<u8>>;

/// Keys delivered to the master but not yet to the slave are bounded too (a slave that never
/// asks must not grow memory forever): beyond this many times `max_key_count` the oldest go.
const PENDING_KEYS_PER_POOL_KEY: usize = 4;

/// The journal keeps at most this many of the most recent keys.
const JOURNAL_CAPACITY: usize = 100_000;

/// Why the store could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("not enough key material: {needed} stored keys needed, {stored} available")]
    Exhausted { needed: usize, stored: usize },
    #[error("one or more keys specified are not found on KME")]
    NotFound { missing: Vec<String> },
    #[error("key {key_id} was requested for slave SAE {slave:?}")]
    WrongSlave { key_id: Uuid, slave: String },
    #[error("operating system random generator failed: {0}")]
    Random(getrandom::Error),
}

/// A key as handed to an SAE.
pub struct DeliveredKey {
    pub id: Uuid,
    pub key: SecretBytes,
}

/// A key delivered to its master SAE and kept for its slave SAE.
struct PendingKey {
    master: String,
    slave: String,
    key: SecretBytes,
    /// Reservation order, to evict the oldest when too many wait.
    seq: u64,
}

/// A delivered key as recorded by the journal (test/demo only).
#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    #[serde(rename = "key_ID")]
    pub key_id: Uuid,
    /// Base64, as in an ETSI key container.
    pub key: Zeroizing<String>,
    pub master: String,
    pub slave: String,
    /// Key size in bits.
    pub size: u32,
}

/// Counters and gauges of the store, for the admin `stats` command.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyStoreStats {
    pub stored_key_count: usize,
    pub pending_key_count: usize,
    pub keys_generated: u64,
    pub keys_delivered_to_master: u64,
    pub keys_delivered_to_slave: u64,
    pub pending_keys_evicted: u64,
    pub generation_paused: bool,
}

struct StoreState {
    /// Generated keys not yet delivered, oldest first.
    pool: VecDeque<SecretBytes>,
    pending: HashMap<Uuid, PendingKey>,
    next_seq: u64,
    paused: bool,
    /// When generation was last accounted for.
    accounted_until: Instant,
    /// Generated-but-not-yet-whole-key credit, in bit-nanoseconds (bits/s * ns), so that
    /// slow rates accumulate exactly without floating point.
    credit: u128,
    journal: Option<VecDeque<JournalEntry>>,
    stats: KeyStoreStats,
}

/// The shared key store of one QKD link.
pub struct KeyStore {
    options: SimOptions,
    state: Mutex<StoreState>,
    /// Unit tests set the time generation is computed from, so they need no sleep.
    #[cfg(test)]
    test_now: Mutex<Option<Instant>>,
}

/// `bytes` fresh bytes from the operating system's CSPRNG.
pub fn random_secret(bytes: usize) -> Result<SecretBytes, KeyStoreError> {
    let mut key = Zeroizing::new(vec![0u8; bytes]);
    getrandom::fill(&mut key).map_err(KeyStoreError::Random)?;
    Ok(key)
}

impl KeyStore {
    /// A store whose pool is already full. `options` must have been validated.
    pub fn new(options: &SimOptions) -> Result<KeyStore, KeyStoreError> {
        let key_bytes = options.key_size as usize / 8;
        let pool = (0..options.max_key_count)
            .map(|_| random_secret(key_bytes))
            .collect::<Result<VecDeque<_>, _>>()?;
        let stats = KeyStoreStats {
            stored_key_count: 0,
            pending_key_count: 0,
            keys_generated: pool.len() as u64,
            keys_delivered_to_master: 0,
            keys_delivered_to_slave: 0,
            pending_keys_evicted: 0,
            generation_paused: false,
        };
        Ok(KeyStore {
            options: options.clone(),
            state: Mutex::new(StoreState {
                pool,
                pending: HashMap::new(),
                next_seq: 0,
                paused: false,
                accounted_until: Instant::now(),
                credit: 0,
                journal: options.journal.then(VecDeque::new),
                stats,
            }),
            #[cfg(test)]
            test_now: Mutex::new(None),
        })
    }

    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    fn now(&self) -> Instant {
        #[cfg(test)]
        if let Some(now) = *self.test_now.lock().unwrap() {
            return now;
        }
        Instant::now()
    }

    /// Locks the state after crediting the keys generated since the last access.
    fn lock(&self) -> Result<MutexGuard<'_, StoreState>, KeyStoreError> {
        // No code panics while holding the lock, so a poisoned lock still holds a consistent
        // state; keep serving rather than failing every later request.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let now = self.now();
        let elapsed = now.saturating_duration_since(state.accounted_until);
        state.accounted_until = now;
        if state.paused || self.options.key_rate == 0 {
            return Ok(state);
        }
        let free = self.options.max_key_count.saturating_sub(state.pool.len());
        if free == 0 {
            // A full pool discards what the link distils meanwhile.
            state.credit = 0;
            return Ok(state);
        }
        let per_key = u128::from(self.options.key_size) * 1_000_000_000;
        let distilled = elapsed
            .as_nanos()
            .saturating_mul(u128::from(self.options.key_rate));
        state.credit = state.credit.saturating_add(distilled);
        let whole = usize::try_from(state.credit / per_key).unwrap_or(usize::MAX);
        let count = whole.min(free);
        if count == free {
            state.credit = 0;
        } else {
            state.credit -= count as u128 * per_key;
        }
        self.push_random_keys(&mut state, count)?;
        Ok(state)
    }

    fn push_random_keys(&self, state: &mut StoreState, count: usize) -> Result<(), KeyStoreError> {
        let key_bytes = self.options.key_size as usize / 8;
        for _ in 0..count {
            state.pool.push_back(random_secret(key_bytes)?);
        }
        state.stats.keys_generated += count as u64;
        Ok(())
    }

    /// Stored keys a request of `size_bits` consumes per delivered key: a smaller size is cut
    /// from one stored key (the rest is erased), a larger one joins consecutive stored keys.
    fn stored_keys_per_key(&self, size_bits: u32) -> usize {
        size_bits.div_ceil(self.options.key_size) as usize
    }

    /// Delivers `number` fresh keys of `size_bits` to `master`, keeping them for `slave`.
    /// Either all keys are delivered or none is taken from the pool.
    pub fn reserve(
        &self,
        master: &str,
        slave: &str,
        number: usize,
        size_bits: u32,
    ) -> Result<Vec<DeliveredKey>, KeyStoreError> {
        let per_key = self.stored_keys_per_key(size_bits);
        let key_bytes = size_bits as usize / 8;
        let mut state = self.lock()?;
        let needed = number * per_key;
        if needed > state.pool.len() {
            return Err(KeyStoreError::Exhausted {
                needed,
                stored: state.pool.len(),
            });
        }
        let mut delivered = Vec::with_capacity(number);
        for _ in 0..number {
            let mut key = Zeroizing::new(Vec::with_capacity(
                per_key * self.options.key_size as usize / 8,
            ));
            for stored in state.pool.drain(..per_key) {
                key.extend_from_slice(&stored);
            }
            key.truncate(key_bytes);
            let id = Uuid::new_v4();
            if let Some(journal) = state.journal.as_mut() {
                if journal.len() == JOURNAL_CAPACITY {
                    journal.pop_front();
                }
                journal.push_back(JournalEntry {
                    key_id: id,
                    key: Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&key)),
                    master: master.to_owned(),
                    slave: slave.to_owned(),
                    size: size_bits,
                });
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.pending.insert(
                id,
                PendingKey {
                    master: master.to_owned(),
                    slave: slave.to_owned(),
                    key: key.clone(),
                    seq,
                },
            );
            delivered.push(DeliveredKey { id, key });
        }
        state.stats.keys_delivered_to_master += number as u64;
        self.evict_oldest_pending(&mut state);
        Ok(delivered)
    }

    fn evict_oldest_pending(&self, state: &mut StoreState) {
        let limit = self
            .options
            .max_key_count
            .saturating_mul(PENDING_KEYS_PER_POOL_KEY);
        while state.pending.len() > limit {
            let Some(oldest) = state
                .pending
                .iter()
                .min_by_key(|(_, p)| p.seq)
                .map(|(id, _)| *id)
            else {
                break;
            };
            state.pending.remove(&oldest);
            state.stats.pending_keys_evicted += 1;
            tracing::warn!(key_id = %oldest, "key never fetched by its slave SAE erased");
        }
    }

    /// Delivers the keys `key_ids` that `master` reserved for `slave`, once, then erases them.
    /// Either all keys are delivered or none. IDs are matched case-insensitively; a malformed
    /// ID is simply not found.
    pub fn retrieve(
        &self,
        master: &str,
        slave: &str,
        key_ids: &[String],
    ) -> Result<Vec<DeliveredKey>, KeyStoreError> {
        self.deliver_to_slave(master, slave, key_ids, true)
    }

    /// As [`KeyStore::retrieve`], but keeps the keys so the slave can fetch them again (the
    /// repeatable dec_keys of some real KMEs).
    pub fn retrieve_repeatable(
        &self,
        master: &str,
        slave: &str,
        key_ids: &[String],
    ) -> Result<Vec<DeliveredKey>, KeyStoreError> {
        self.deliver_to_slave(master, slave, key_ids, false)
    }

    /// Erases the keys `master` reserved for `slave` that the slave has not fetched yet,
    /// except those in `keep`; returns how many.
    pub fn discard_unfetched(
        &self,
        master: &str,
        slave: &str,
        keep: &[Uuid],
    ) -> Result<usize, KeyStoreError> {
        let mut state = self.lock()?;
        let before = state.pending.len();
        state.pending.retain(|id, pending| {
            pending.master != master || pending.slave != slave || keep.contains(id)
        });
        Ok(before - state.pending.len())
    }

    fn deliver_to_slave(
        &self,
        master: &str,
        slave: &str,
        key_ids: &[String],
        erase: bool,
    ) -> Result<Vec<DeliveredKey>, KeyStoreError> {
        let mut state = self.lock()?;
        let mut found = Vec::with_capacity(key_ids.len());
        let mut seen = HashSet::with_capacity(key_ids.len());
        let mut missing = Vec::new();
        for raw in key_ids {
            match Uuid::try_parse(raw) {
                // A key asked for twice in one request can still be delivered only once.
                Ok(id) if seen.insert(id) => match state.pending.get(&id) {
                    Some(pending) if pending.master == master => found.push((id, pending)),
                    _ => missing.push(raw.clone()),
                },
                _ => missing.push(raw.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(KeyStoreError::NotFound { missing });
        }
        if let Some((id, pending)) = found.iter().find(|(_, p)| p.slave != slave) {
            return Err(KeyStoreError::WrongSlave {
                key_id: *id,
                slave: pending.slave.clone(),
            });
        }
        let delivered: Vec<DeliveredKey> = if erase {
            let ids: Vec<Uuid> = found.into_iter().map(|(id, _)| id).collect();
            ids.into_iter()
                .filter_map(|id| {
                    state
                        .pending
                        .remove(&id)
                        .map(|p| DeliveredKey { id, key: p.key })
                })
                .collect()
        } else {
            found
                .into_iter()
                .map(|(id, p)| DeliveredKey {
                    id,
                    key: p.key.clone(),
                })
                .collect()
        };
        state.stats.keys_delivered_to_slave += delivered.len() as u64;
        Ok(delivered)
    }

    /// Keys available for enc_keys now.
    pub fn stored_key_count(&self) -> Result<usize, KeyStoreError> {
        Ok(self.lock()?.pool.len())
    }

    /// Stops or restarts key generation; the pool keeps serving what it holds.
    pub fn set_paused(&self, paused: bool) -> Result<(), KeyStoreError> {
        // `lock` credits generation up to now, so pausing keeps what was already distilled
        // and resuming does not credit the paused period.
        self.lock()?.paused = paused;
        Ok(())
    }

    /// Adds up to `count` keys at once (never beyond `max_key_count`); returns how many.
    pub fn refill(&self, count: usize) -> Result<usize, KeyStoreError> {
        let mut state = self.lock()?;
        let added = count.min(self.options.max_key_count - state.pool.len());
        self.push_random_keys(&mut state, added)?;
        Ok(added)
    }

    pub fn stats(&self) -> Result<KeyStoreStats, KeyStoreError> {
        let state = self.lock()?;
        Ok(KeyStoreStats {
            stored_key_count: state.pool.len(),
            pending_key_count: state.pending.len(),
            generation_paused: state.paused,
            ..state.stats.clone()
        })
    }

    /// Delivered keys, oldest first, or `None` when the journal is off.
    pub fn journal(&self) -> Result<Option<Vec<JournalEntry>>, KeyStoreError> {
        let state = self.lock()?;
        Ok(state.journal.as_ref().map(|j| j.iter().cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn options(max_key_count: usize, key_rate: u64) -> SimOptions {
        SimOptions {
            max_key_count,
            key_rate,
            journal: true,
            ..SimOptions::default()
        }
    }

    fn ids(keys: &[DeliveredKey]) -> Vec<String> {
        keys.iter().map(|k| k.id.to_string()).collect()
    }

    #[test]
    fn master_and_slave_get_the_same_key_once() {
        let store = KeyStore::new(&options(10, 0)).unwrap();
        let master = store.reserve("a", "b", 2, 256).unwrap();
        assert_eq!(master.len(), 2);
        assert_eq!(master[0].key.len(), 32);
        assert_ne!(master[0].key, master[1].key);
        let slave = store.retrieve("a", "b", &ids(&master)).unwrap();
        for (m, s) in master.iter().zip(&slave) {
            assert_eq!(m.id, s.id);
            assert_eq!(m.key, s.key);
        }
        assert!(matches!(
            store.retrieve("a", "b", &ids(&master)),
            Err(KeyStoreError::NotFound { .. })
        ));
        let stats = store.stats().unwrap();
        assert_eq!(stats.stored_key_count, 8);
        assert_eq!(stats.pending_key_count, 0);
        assert_eq!(stats.keys_delivered_to_master, 2);
        assert_eq!(stats.keys_delivered_to_slave, 2);
    }

    #[test]
    fn pool_runs_dry_without_generation_and_refill_caps_at_capacity() {
        let store = KeyStore::new(&options(3, 0)).unwrap();
        store.reserve("a", "b", 3, 256).unwrap();
        assert!(matches!(
            store.reserve("a", "b", 1, 256),
            Err(KeyStoreError::Exhausted {
                needed: 1,
                stored: 0
            })
        ));
        assert_eq!(store.refill(10).unwrap(), 3);
        assert_eq!(store.stored_key_count().unwrap(), 3);
    }

    #[test]
    fn failed_request_takes_nothing() {
        let store = KeyStore::new(&options(3, 0)).unwrap();
        assert!(store.reserve("a", "b", 4, 256).is_err());
        assert_eq!(store.stored_key_count().unwrap(), 3);
        let keys = store.reserve("a", "b", 2, 256).unwrap();
        let mut asked = ids(&keys);
        asked.push(Uuid::new_v4().to_string());
        assert!(
            matches!(store.retrieve("a", "b", &asked), Err(KeyStoreError::NotFound { missing }) if missing.len() == 1)
        );
        // Both real keys are still there for the right request.
        assert_eq!(store.retrieve("a", "b", &ids(&keys)).unwrap().len(), 2);
    }

    #[test]
    fn wrong_slave_and_wrong_master_are_told_apart() {
        let store = KeyStore::new(&options(3, 0)).unwrap();
        let keys = store.reserve("a", "b", 1, 256).unwrap();
        assert!(matches!(
            store.retrieve("a", "c", &ids(&keys)),
            Err(KeyStoreError::WrongSlave { .. })
        ));
        assert!(matches!(
            store.retrieve("x", "b", &ids(&keys)),
            Err(KeyStoreError::NotFound { .. })
        ));
        assert_eq!(store.retrieve("a", "b", &ids(&keys)).unwrap().len(), 1);
    }

    #[test]
    fn duplicate_and_malformed_ids_are_not_found() {
        let store = KeyStore::new(&options(3, 0)).unwrap();
        let keys = store.reserve("a", "b", 1, 256).unwrap();
        let id = keys[0].id.to_string();
        assert!(store.retrieve("a", "b", &[id.clone(), id.clone()]).is_err());
        assert!(store.retrieve("a", "b", &["not-a-uuid".into()]).is_err());
        // Upper case is the same UUID.
        assert_eq!(
            store
                .retrieve("a", "b", &[id.to_uppercase()])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn other_sizes_cut_or_join_stored_keys() {
        let store = KeyStore::new(&options(10, 0)).unwrap();
        let small = store.reserve("a", "b", 2, 64).unwrap();
        assert_eq!(small[0].key.len(), 8);
        assert_eq!(store.stored_key_count().unwrap(), 8);
        let large = store.reserve("a", "b", 1, 520).unwrap();
        assert_eq!(large[0].key.len(), 65);
        assert_eq!(store.stored_key_count().unwrap(), 5);
    }

    #[test]
    fn generation_follows_the_key_rate_and_pauses() {
        // 256 bits per key at 256,000 bits/s: exactly one key per millisecond. The store
        // reads a clock the test sets, so the counts are exact and nothing sleeps.
        let store = KeyStore::new(&options(1000, 256_000)).unwrap();
        let t0 = Instant::now() + Duration::from_secs(1);
        let at = |ms: u64| {
            *store.test_now.lock().unwrap() = Some(t0 + Duration::from_millis(ms));
        };
        at(0);
        store.reserve("a", "b", 1000, 256).unwrap();
        assert_eq!(store.stored_key_count().unwrap(), 0);
        at(50);
        assert_eq!(store.stored_key_count().unwrap(), 50, "50 ms at 1 key/ms");
        // Fractions of a key carry over: 0.5 ms twice is one more key.
        *store.test_now.lock().unwrap() = Some(t0 + Duration::from_micros(50_500));
        assert_eq!(store.stored_key_count().unwrap(), 50);
        *store.test_now.lock().unwrap() = Some(t0 + Duration::from_micros(51_000));
        assert_eq!(store.stored_key_count().unwrap(), 51);
        store.set_paused(true).unwrap();
        assert!(store.stats().unwrap().generation_paused);
        at(81);
        assert_eq!(
            store.stored_key_count().unwrap(),
            51,
            "paused generates nothing"
        );
        store.set_paused(false).unwrap();
        assert!(!store.stats().unwrap().generation_paused);
        at(111);
        // The 30 paused milliseconds are not credited on resume.
        assert_eq!(store.stored_key_count().unwrap(), 81);
        // A full pool stops at capacity and discards what is distilled meanwhile.
        at(10_000);
        assert_eq!(store.stored_key_count().unwrap(), 1000);
        store.reserve("a", "b", 1000, 256).unwrap();
        at(10_010);
        assert_eq!(store.stored_key_count().unwrap(), 10);
        assert_eq!(store.stats().unwrap().keys_generated, 1000 + 1000 + 10);
    }

    #[test]
    fn journal_records_what_the_master_got() {
        let store = KeyStore::new(&options(3, 0)).unwrap();
        let keys = store.reserve("a", "b", 1, 128).unwrap();
        let journal = store.journal().unwrap().unwrap();
        assert_eq!(journal.len(), 1);
        assert_eq!(journal[0].key_id, keys[0].id);
        assert_eq!(
            *journal[0].key,
            base64::engine::general_purpose::STANDARD.encode(&keys[0].key)
        );
        assert_eq!(
            (
                journal[0].master.as_str(),
                journal[0].slave.as_str(),
                journal[0].size
            ),
            ("a", "b", 128)
        );
        let off = KeyStore::new(&SimOptions {
            max_key_count: 1,
            ..SimOptions::default()
        })
        .unwrap();
        assert!(off.journal().unwrap().is_none());
    }

    #[test]
    fn repeatable_retrieval_keeps_the_key_and_discarding_drops_only_that_pair() {
        let store = KeyStore::new(&options(10, 0)).unwrap();
        let keys = store.reserve("a", "b", 1, 256).unwrap();
        for _ in 0..3 {
            let again = store.retrieve_repeatable("a", "b", &ids(&keys)).unwrap();
            assert_eq!(again[0].key, keys[0].key);
        }
        store.reserve("a", "c", 1, 256).unwrap();
        let newer = store.reserve("a", "b", 1, 256).unwrap();
        assert_eq!(
            store.discard_unfetched("a", "b", &[newer[0].id]).unwrap(),
            1
        );
        assert!(store.retrieve("a", "b", &ids(&keys)).is_err());
        assert_eq!(store.stats().unwrap().pending_key_count, 2);
    }

    #[test]
    fn unclaimed_keys_are_evicted_oldest_first() {
        let store = KeyStore::new(&options(2, 0)).unwrap();
        let first = store.reserve("a", "b", 2, 256).unwrap();
        for _ in 0..PENDING_KEYS_PER_POOL_KEY - 1 {
            store.refill(2).unwrap();
            store.reserve("a", "b", 2, 256).unwrap();
        }
        assert_eq!(store.stats().unwrap().pending_keys_evicted, 0);
        store.refill(1).unwrap();
        store.reserve("a", "b", 1, 256).unwrap();
        let stats = store.stats().unwrap();
        assert_eq!(stats.pending_keys_evicted, 1);
        assert_eq!(stats.pending_key_count, 2 * PENDING_KEYS_PER_POOL_KEY);
        assert!(store.retrieve("a", "b", &ids(&first[..1])).is_err());
        assert!(store.retrieve("a", "b", &ids(&first[1..])).is_ok());
    }
}
