//! Key sources: where QKD keys come from.
//!
//! The key exchange (`crate::ke`) only sees the [`KeySource`] trait; the ETSI GS QKD 014
//! client ([`Etsi014Client`]) is the production implementation, tests use fakes.
//!
//! The client is split along its jobs: `tls` (PEM files, rustls configuration, what a
//! refused certificate means), `plan` (KME `status` → how many keys of which size per set),
//! [`json`] (parsing what a KME sends: status, key containers, error bodies; public for the
//! fuzz targets) and `client` (HTTP, deadlines, the [`KeySource`] implementation).
//! [`FailoverSource`] spreads one KME's requests over its redundant nodes.

mod client;
mod failover;
pub mod json;
mod plan;
mod tls;

pub use client::Etsi014Client;
pub use failover::{FailoverSource, NodeRole, NodeState, PROBE_INTERVAL};
pub use json::Status;
pub use tls::KmeTlsConfig;

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

/// Why a KME did not deliver keys. Every variant names the KME URL (or the setting) so
/// that a log line tells the operator which box or which line to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmeError {
    /// TCP failure, closed connection or no (complete) answer in time: the KME could not be
    /// reached. Retrying may help. `maybe_served`: the connection was up when it failed, so
    /// the KME may have received the request and handed out the keys (see
    /// [`FailoverSource`] for why that matters).
    Unreachable {
        url: String,
        reason: String,
        maybe_served: bool,
    },
    /// The TLS handshake was refused (certificate verification on either side, a TLS alert):
    /// nothing changes until a certificate is re-issued or a setting fixed, so never retried.
    Tls { url: String, reason: String },
    /// The KME has no key (yet): 503 per the spec, or what some KMEs send instead (404
    /// "Element not found", 400 "... Try again later."). Retrying may help (`wait_timeout`).
    NoKeyAvailable { url: String, message: String },
    /// Any other non-200 answer (400 unknown key ID, 401 wrong SAE, ...); `message` says
    /// what the operator should check.
    Rejected {
        url: String,
        status: u16,
        message: String,
    },
    /// A 200 answer we cannot use (bad JSON, wrong key count or size, bad base64, ...).
    Protocol(String),
    /// Local setup problem (unreadable PEM file, a key_size the KME cannot serve, ...).
    Config(String),
}

impl KmeError {
    /// True when waiting and asking again may succeed: the KME had no key, or could not be
    /// reached in time. Certificate, configuration and protocol errors stay as they are.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            KmeError::NoKeyAvailable { .. } | KmeError::Unreachable { .. }
        )
    }

    /// The cause token of a `qkd-audit` line's `result=failed:<cause>`.
    pub fn audit_cause(&self) -> &'static str {
        match self {
            KmeError::Unreachable { .. } => "kme-unreachable",
            KmeError::NoKeyAvailable { .. } => "kme-no-key",
            KmeError::Rejected { .. } => "kme-refused",
            KmeError::Tls { .. } => "kme-tls",
            KmeError::Protocol(_) => "kme-protocol",
            KmeError::Config(_) => "kme-config",
        }
    }
}

impl fmt::Display for KmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KmeError::Unreachable { url, reason, .. } => {
                write!(f, "KME {url} unreachable: {reason}")
            }
            KmeError::Tls { url, reason } => write!(f, "KME {url}: {reason}"),
            KmeError::NoKeyAvailable { url, message } => {
                write!(f, "KME {url} has no key available ({message})")
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
/// charon's worker threads, and every call returns by its `deadline` (a charon worker waits
/// in it).
pub trait KeySource: Send + Sync {
    /// Master: up to `sets` key sets for `slave`, each exactly `size_bits` bits (as many keys
    /// per set as the KME's status requires), in as few enc_keys requests as
    /// max_key_per_request allows; at least one set or an error; returns by `deadline`.
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        sets: usize,
        deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError>;

    /// Slave: the keys `master` obtained under `ids`, in the same order (batched per
    /// max_key_per_request); returns by `deadline`.
    fn dec_keys(
        &self,
        master: &SaeId,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError>;

    /// Key IDs one set of `size_bits` takes at this KME for `peer` (cached status; one status
    /// request if not cached). Lets callers refuse a peer's request with more IDs before any
    /// dec_keys, and check key_size (incl. the wire limit of 16 IDs,
    /// [`crate::wire::MAX_KEY_IDS`]) before any enc_keys consumes keys.
    fn keys_per_set(
        &self,
        peer: &SaeId,
        size_bits: u32,
        deadline: Instant,
    ) -> Result<usize, KmeError>;

    /// [`Self::keys_per_set`] if it is known without asking the KME (cached status), so a
    /// peer's request can be checked before it costs a KME request slot.
    fn known_keys_per_set(&self, _peer: &SaeId, _size_bits: u32) -> Option<usize> {
        None
    }

    /// Human-readable location for log lines (the KME base URL; of a KME with several
    /// nodes, the one in use).
    fn url(&self) -> &str;

    /// The KME nodes behind this source in the order they are tried, and their state (for
    /// `qkdctl`). A KME without standby nodes is its own only node, always active.
    fn nodes(&self) -> Vec<NodeState> {
        vec![NodeState {
            url: self.url().to_owned(),
            role: NodeRole::Active,
        }]
    }
}
