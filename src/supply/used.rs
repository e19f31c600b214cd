//! The key IDs this gateway has keyed exchanges with, so that a KME that hands out one key
//! twice (a dec_keys answered again, a replayed ID) can never key two SAs with it.

use crate::ids::KeyId;
use std::collections::{HashSet, VecDeque};

/// The most recent `capacity` key IDs used (16 bytes each, twice).
pub struct UsedKeyIds {
    capacity: usize,
    order: VecDeque<KeyId>,
    seen: HashSet<KeyId>,
}

impl UsedKeyIds {
    pub fn new(capacity: usize) -> UsedKeyIds {
        UsedKeyIds {
            capacity,
            order: VecDeque::with_capacity(capacity),
            seen: HashSet::with_capacity(capacity),
        }
    }

    pub fn contains(&self, id: &KeyId) -> bool {
        self.seen.contains(id)
    }

    /// Records `ids` as used, unless one of them was used before: then records nothing and
    /// returns that ID.
    pub fn record(&mut self, ids: &[KeyId]) -> Result<(), KeyId> {
        if let Some(reused) = ids.iter().find(|id| self.seen.contains(id)) {
            return Err(*reused);
        }
        for id in ids {
            if self.order.len() == self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.seen.remove(&oldest);
                }
            }
            self.order.push_back(*id);
            self.seen.insert(*id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_is_accepted_once() {
        let mut used = UsedKeyIds::new(8);
        let (a, b) = (KeyId([1; 16]), KeyId([2; 16]));
        assert_eq!(used.record(&[a]), Ok(()));
        assert_eq!(used.record(&[b, a]), Err(a));
        assert_eq!(used.record(&[b]), Ok(()), "a refused set records nothing");
    }

    #[test]
    fn the_record_is_bounded() {
        let mut used = UsedKeyIds::new(2);
        let ids: Vec<KeyId> = (0..3).map(|n| KeyId([n; 16])).collect();
        for id in &ids {
            used.record(&[*id]).unwrap();
        }
        assert_eq!(used.seen.len(), 2);
        assert_eq!(used.record(&[ids[0]]), Ok(()), "the oldest was forgotten");
        assert_eq!(used.record(&[ids[2]]), Err(ids[2]));
    }
}
