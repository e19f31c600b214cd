//! One simulated QKD link: the key store both KMEs share, the faults injected into it and the
//! counters the admin `stats` command reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use serde::Serialize;

use crate::config::SimOptions;
use crate::deviations::Deviations;
use crate::keystore::{KeyStore, KeyStoreError};
use crate::listeners::{ListenerStats, Listeners};

/// Faults injected through the admin interface. Each one is a single atomic so the request
/// path reads it without taking a lock.
#[derive(Debug, Default)]
pub struct Faults {
    fail_503: AtomicBool,
    drop_connections: AtomicBool,
    latency_ms: AtomicU64,
    mismatch_next: AtomicBool,
    hang: AtomicBool,
    drip: AtomicBool,
}

impl Faults {
    /// Every ETSI request is answered 503, as by a KME whose link is down.
    pub fn fail_503(&self) -> bool {
        self.fail_503.load(Ordering::Relaxed)
    }

    pub fn set_fail_503(&self, on: bool) {
        self.fail_503.store(on, Ordering::Relaxed);
    }

    /// Every ETSI request makes the KME close the connection without an answer.
    pub fn drop_connections(&self) -> bool {
        self.drop_connections.load(Ordering::Relaxed)
    }

    pub fn set_drop_connections(&self, on: bool) {
        self.drop_connections.store(on, Ordering::Relaxed);
    }

    /// Delay added before every ETSI answer.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Arms the fault that hands the slave wrong keys on the next dec_keys.
    pub fn arm_mismatch(&self) {
        self.mismatch_next.store(true, Ordering::Relaxed);
    }

    /// Whether this dec_keys must get wrong keys; disarms the fault.
    pub fn take_mismatch(&self) -> bool {
        self.mismatch_next.swap(false, Ordering::Relaxed)
    }

    /// Every ETSI request is read and never answered, as by a KME that hangs.
    pub fn hang(&self) -> bool {
        self.hang.load(Ordering::Relaxed)
    }

    pub fn set_hang(&self, on: bool) {
        self.hang.store(on, Ordering::Relaxed);
    }

    /// Every ETSI answer body is sent one byte at a time (see `etsi::DRIP_INTERVAL`).
    pub fn drip(&self) -> bool {
        self.drip.load(Ordering::Relaxed)
    }

    pub fn set_drip(&self, on: bool) {
        self.drip.store(on, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FaultStats {
        FaultStats {
            fail_503: self.fail_503(),
            drop: self.drop_connections(),
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            mismatch_next: self.mismatch_next.load(Ordering::Relaxed),
            hang: self.hang(),
            drip: self.drip(),
        }
    }
}

/// The ETSI endpoints, for counting requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Status,
    EncKeys,
    DecKeys,
}

/// Request and connection counters of both KMEs together.
#[derive(Debug, Default)]
pub struct Counters {
    status_requests: AtomicU64,
    enc_keys_requests: AtomicU64,
    dec_keys_requests: AtomicU64,
    responses_200: AtomicU64,
    responses_400: AtomicU64,
    responses_401: AtomicU64,
    responses_503: AtomicU64,
    responses_other: AtomicU64,
    tls_connections: AtomicU64,
    tls_handshake_failures: AtomicU64,
    dropped_requests: AtomicU64,
    mismatched_deliveries: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn request(&self, endpoint: Endpoint) {
        bump(match endpoint {
            Endpoint::Status => &self.status_requests,
            Endpoint::EncKeys => &self.enc_keys_requests,
            Endpoint::DecKeys => &self.dec_keys_requests,
        });
    }

    pub fn response(&self, status: u16) {
        bump(match status {
            200 => &self.responses_200,
            400 => &self.responses_400,
            401 => &self.responses_401,
            503 => &self.responses_503,
            _ => &self.responses_other,
        });
    }

    pub fn tls_connection(&self) {
        bump(&self.tls_connections);
    }

    pub fn tls_handshake_failure(&self) {
        bump(&self.tls_handshake_failures);
    }

    pub fn dropped_request(&self) {
        bump(&self.dropped_requests);
    }

    pub fn mismatched_delivery(&self) {
        bump(&self.mismatched_deliveries);
    }

    fn snapshot(&self) -> CounterStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterStats {
            requests: RequestStats {
                status: get(&self.status_requests),
                enc_keys: get(&self.enc_keys_requests),
                dec_keys: get(&self.dec_keys_requests),
            },
            responses: ResponseStats {
                ok: get(&self.responses_200),
                bad_request: get(&self.responses_400),
                unauthorized: get(&self.responses_401),
                unavailable: get(&self.responses_503),
                other: get(&self.responses_other),
            },
            tls_connections: get(&self.tls_connections),
            tls_handshake_failures: get(&self.tls_handshake_failures),
            dropped_requests: get(&self.dropped_requests),
            mismatched_deliveries: get(&self.mismatched_deliveries),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RequestStats {
    pub status: u64,
    pub enc_keys: u64,
    pub dec_keys: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResponseStats {
    #[serde(rename = "200")]
    pub ok: u64,
    #[serde(rename = "400")]
    pub bad_request: u64,
    #[serde(rename = "401")]
    pub unauthorized: u64,
    #[serde(rename = "503")]
    pub unavailable: u64,
    pub other: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CounterStats {
    pub requests: RequestStats,
    pub responses: ResponseStats,
    /// Mutually authenticated connections accepted (one per client while it keeps alive).
    pub tls_connections: u64,
    pub tls_handshake_failures: u64,
    pub dropped_requests: u64,
    pub mismatched_deliveries: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FaultStats {
    pub fail_503: bool,
    pub drop: bool,
    pub latency_ms: u64,
    pub mismatch_next: bool,
    pub hang: bool,
    pub drip: bool,
}

/// What the admin `stats` command returns.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LinkStats {
    #[serde(flatten)]
    pub keys: crate::keystore::KeyStoreStats,
    #[serde(flatten)]
    pub counters: CounterStats,
    pub faults: FaultStats,
    pub deviations: Deviations,
    pub listeners: Vec<ListenerStats>,
}

/// A simulated QKD link, shared by its two KMEs and the admin interface.
pub struct Link {
    pub store: KeyStore,
    pub faults: Faults,
    pub counters: Counters,
    /// The KMEs' HTTPS listeners (registered by the server when it binds them).
    pub listeners: Listeners,
    deviations: RwLock<Deviations>,
}

impl Link {
    /// A link with a full key pool. `options` must have been validated.
    pub fn new(options: &SimOptions) -> Result<Link, KeyStoreError> {
        Ok(Link {
            store: KeyStore::new(options)?,
            faults: Faults::default(),
            counters: Counters::default(),
            listeners: Listeners::default(),
            deviations: RwLock::new(options.deviations),
        })
    }

    /// The deviations from the spec in force now.
    pub fn deviations(&self) -> Deviations {
        // A plain value is never left half-written: a poisoned lock still holds a valid one.
        *self
            .deviations
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn set_deviations(&self, deviations: Deviations) {
        *self
            .deviations
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = deviations;
    }

    pub fn stats(&self) -> Result<LinkStats, KeyStoreError> {
        Ok(LinkStats {
            keys: self.store.stats()?,
            counters: self.counters.snapshot(),
            faults: self.faults.snapshot(),
            deviations: self.deviations(),
            listeners: self.listeners.stats(),
        })
    }
}
