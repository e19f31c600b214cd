//! Key sources: where QKD keys come from.
//!
//! The key exchange (`crate::ke`) only sees the [`KeySource`] trait; the ETSI GS QKD 014
//! client ([`Etsi014Client`]) is the production implementation, tests use fakes.

mod etsi014;
mod pool;

pub use etsi014::{Etsi014Client, KmeTlsConfig, Status};
pub use pool::PrefetchPool;

use std::fmt;
use std::time::Duration;
use zeroize::Zeroizing;

/// An ETSI key ID: a UUID (any version; real KMEs differ), carried as 16 binary bytes on
/// the wire and formatted by us as 8-4-4-4-12 lower-case hex towards the KME.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// Parses any 8-4-4-4-12 hex UUID as a KME hands it out.
    pub fn parse(text: &str) -> Result<KeyId, KmeError> {
        uuid::Uuid::try_parse(text)
            .ok()
            .filter(|_| text.len() == 36)
            .map(|u| KeyId(*u.as_bytes()))
            .ok_or_else(|| KmeError::Protocol(format!("KME returned a malformed key_ID '{text}'")))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An SAE ID: opaque to us (KMEs use names, numbers, URNs), restricted to a safe charset
/// because it is sent in the KE payload and pasted into KME URL paths.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SaeId(String);

impl SaeId {
    pub const MAX_LEN: usize = 64;

    pub fn new(id: &str) -> Result<SaeId, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-:@".contains(c);
        if id.is_empty() || id.len() > Self::MAX_LEN || !id.chars().all(ok_char) {
            return Err(format!(
                "'{id}' is not a valid SAE ID (1-{} characters of A-Z a-z 0-9 . _ - : @)",
                Self::MAX_LEN
            ));
        }
        Ok(SaeId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SaeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SaeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaeId({})", self.0)
    }
}

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
/// charon's worker threads.
pub trait KeySource: Send + Sync {
    /// Master side: obtains keys for `slave` totalling exactly `size_bits` bits (split over
    /// as many keys as the KME's `status` requires), in order.
    fn enc_keys(&self, slave: &SaeId, size_bits: u32) -> Result<Vec<QkdKey>, KmeError>;

    /// Slave side: fetches the keys `master` obtained under `ids`, in the same order.
    fn dec_keys(&self, master: &SaeId, ids: &[KeyId]) -> Result<Vec<QkdKey>, KmeError>;

    /// Human-readable location for log lines (the KME base URL).
    fn url(&self) -> &str;
}

/// Settings for talking to one KME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmeSettings {
    /// Base URL up to and excluding `/api/v1/...`, e.g. `https://kme-a.example:8443`.
    pub url: String,
    /// PEM file with the CA certificate(s) that sign the KME's server certificate.
    pub ca: String,
    /// PEM file with our SAE client certificate (chain).
    pub cert: String,
    /// PEM file with the private key of `cert`.
    pub key: String,
    /// Upper bound for one HTTP request including connect and TLS handshake.
    pub timeout: Duration,
}
