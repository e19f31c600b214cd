//! Key sources: where QKD keys come from.
//!
//! The key exchange (`crate::ke`) only sees the [`KeySource`] trait; the ETSI GS QKD 014
//! client ([`Etsi014Client`]) is the production implementation, tests use fakes.

mod etsi014;

pub use etsi014::{Etsi014Client, KmeTlsConfig, Status};

use crate::config::KmeSettings;
use crate::ids::{KeyId, SaeId};

use std::fmt;
use std::time::Instant;
use zeroize::Zeroizing;

/// One key as delivered by a KME. The material is wiped when dropped.
pub struct QkdKey {
    pub id: KeyId,
    pub material: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for QkdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QkdKey({}, {} bytes)", self.id, self.material.len())
    }
}

/// Why a KME did not deliver keys. Every variant names the KME URL so that a log line
/// tells the operator which box to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmeError {
    /// TCP/TLS/timeout: the KME could not be reached or did not answer in time.
    Unreachable { url: String, reason: String },
    /// HTTP 503: the KME has no key (yet). Retrying may help (`wait_timeout`).
    NoKeyAvailable { url: String, message: String },
    /// Any other non-200 answer (400 unknown key ID, 401 wrong SAE, ...).
    Rejected {
        url: String,
        status: u16,
        message: String,
    },
    /// A 200 answer we cannot use (bad JSON, wrong key count or size, bad base64, ...).
    Protocol(String),
    /// Local setup problem (unreadable PEM file, ...).
    Config(String),
}

impl KmeError {
    /// True when waiting and asking again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            KmeError::NoKeyAvailable { .. } | KmeError::Unreachable { .. }
        )
    }
}

impl fmt::Display for KmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KmeError::Unreachable { url, reason } => write!(f, "KME {url} unreachable: {reason}"),
            KmeError::NoKeyAvailable { url, message } => {
                write!(f, "KME {url} has no key available (503: {message})")
            }
            KmeError::Rejected {
                url,
                status,
                message,
            } => {
                write!(f, "KME {url} refused the request ({status}: {message})")
            }
            KmeError::Protocol(m) | KmeError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for KmeError {}

/// What the key exchange needs from a KME. Implementations must be usable from any of
/// charon's worker threads and return by the caller's deadline.
pub trait KeySource: Send + Sync {
    /// Master side: up to `sets` key sets for `slave`, each exactly `size_bits` bits (as
    /// many keys per set as the KME's status requires); at least one set or an error.
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        sets: usize,
        deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError>;

    /// Slave side: the keys `master` obtained under `ids`, in the same order.
    fn dec_keys(
        &self,
        master: &SaeId,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError>;

    /// Key IDs one set of `size_bits` takes at this KME for `peer`, so a request with more
    /// IDs is refused before any dec_keys.
    fn keys_per_set(
        &self,
        peer: &SaeId,
        size_bits: u32,
        deadline: Instant,
    ) -> Result<usize, KmeError>;

    /// Human-readable location for log lines (the KME base URL).
    fn url(&self) -> &str;
}
