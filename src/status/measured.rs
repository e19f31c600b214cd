//! KME request statistics: a [`KeySource`] decorator that times every `enc_keys` and
//! `dec_keys` (from exchanges and from the refill thread alike) and keeps the last error.

use super::{KmeState, KmeStatus, LastError, Latency};
use crate::ids::{KeyId, SaeId};
use crate::kme::{KeySource, KmeError, NodeRole, NodeState, QkdKey};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Latency percentiles are taken over this many most recent requests.
const LATENCY_WINDOW: usize = 256;

/// What one KME client has seen. Shared by every peer using that client.
#[derive(Default)]
pub struct KmeStats {
    state: Mutex<StatsState>,
}

#[derive(Default)]
struct StatsState {
    requests: u64,
    errors: u64,
    keys: u64,
    total: Duration,
    recent: VecDeque<Duration>,
    last_success: Option<SystemTime>,
    last_error: Option<(SystemTime, String)>,
}

impl KmeStats {
    /// One key request (enc_keys or dec_keys) that took `elapsed` and, if it succeeded,
    /// delivered `keys` keys.
    pub fn record_request(&self, elapsed: Duration, outcome: Result<usize, &KmeError>) {
        let mut s = self.lock();
        s.requests += 1;
        s.total += elapsed;
        if s.recent.len() == LATENCY_WINDOW {
            s.recent.pop_front();
        }
        s.recent.push_back(elapsed);
        match outcome {
            Ok(keys) => {
                s.keys += keys as u64;
                s.last_success = Some(SystemTime::now());
            }
            Err(e) => {
                s.errors += 1;
                s.last_error = Some((SystemTime::now(), e.to_string()));
            }
        }
    }

    /// An error of a request that is not timed (the status query behind keys_per_set,
    /// which a client may answer from its cache).
    pub fn record_error(&self, error: &KmeError) {
        self.lock().last_error = Some((SystemTime::now(), error.to_string()));
    }

    /// What `qkdctl` shows of `node`, measured here.
    pub fn status(&self, node: &NodeState) -> KmeStatus {
        let s = self.lock();
        let mut recent: Vec<Duration> = s.recent.iter().copied().collect();
        recent.sort_unstable();
        let (state, down_since) = match node.role {
            NodeRole::Active => (KmeState::Active, None),
            NodeRole::Standby => (KmeState::Standby, None),
            NodeRole::Down { since } => (KmeState::Down, Some(unix_seconds(since))),
        };
        KmeStatus {
            url: node.url.clone(),
            state,
            down_since_unix: down_since,
            requests: s.requests,
            errors: s.errors,
            keys: s.keys,
            latency_us_total: micros(s.total),
            latency: (!recent.is_empty()).then(|| Latency {
                samples: recent.len(),
                p50_us: percentile(&recent, 0.50),
                p99_us: percentile(&recent, 0.99),
            }),
            last_success_unix: s.last_success.map(unix_seconds),
            last_error: s.last_error.as_ref().map(|(at, message)| LastError {
                at_unix: unix_seconds(*at),
                message: message.clone(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsState> {
        crate::health::lock("a KME node's statistics", &self.state)
    }
}

/// Nearest-rank percentile of sorted, non-empty `samples`, in microseconds.
fn percentile(samples: &[Duration], q: f64) -> u64 {
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    micros(samples[rank - 1])
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A key source whose requests are counted and timed in `stats`.
pub struct MeasuredSource {
    inner: Arc<dyn KeySource>,
    stats: Arc<KmeStats>,
}

impl MeasuredSource {
    pub fn new(inner: Arc<dyn KeySource>, stats: Arc<KmeStats>) -> MeasuredSource {
        MeasuredSource { inner, stats }
    }

    /// Runs `request`, recording its time and the number of keys (`count`) it delivered.
    fn timed<T>(
        &self,
        request: impl FnOnce() -> Result<T, KmeError>,
        count: impl FnOnce(&T) -> usize,
    ) -> Result<T, KmeError> {
        let started = Instant::now();
        let result = request();
        self.stats
            .record_request(started.elapsed(), result.as_ref().map(count));
        result
    }
}

impl KeySource for MeasuredSource {
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        sets: usize,
        deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        self.timed(
            || self.inner.enc_keys(slave, size_bits, sets, deadline),
            |sets| sets.iter().map(Vec::len).sum(),
        )
    }

    fn dec_keys(
        &self,
        master: &SaeId,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        self.timed(|| self.inner.dec_keys(master, ids, deadline), Vec::len)
    }

    fn keys_per_set(
        &self,
        peer: &SaeId,
        size_bits: u32,
        deadline: Instant,
    ) -> Result<usize, KmeError> {
        self.inner
            .keys_per_set(peer, size_bits, deadline)
            .inspect_err(|e| self.stats.record_error(e))
    }

    fn known_keys_per_set(&self, peer: &SaeId, size_bits: u32) -> Option<usize> {
        self.inner.known_keys_per_set(peer, size_bits)
    }

    fn url(&self) -> &str {
        self.inner.url()
    }

    fn nodes(&self) -> Vec<NodeState> {
        self.inner.nodes()
    }
}
