//! What can go wrong in a qkd key exchange, said so that the log line tells an operator what
//! to check.

use crate::ids::SaeId;
use crate::kme::KmeError;
use crate::wire::WireError;
use std::fmt;

#[derive(Debug)]
pub enum KeError {
    /// We cannot tell which peer (and so which SAE ID) this exchange is for.
    UnknownPeer(String),
    /// The KME did not deliver (after waiting, if `wait_timeout` is set).
    Kme {
        peer: SaeId,
        error: KmeError,
    },
    /// Too many KME requests in flight already (`max_kme_requests` or a share of it). Never
    /// a reason to fall back to DH: the exchange is refused in-band and retried.
    Busy(String),
    /// The peer's KE data is malformed or does not fit what we sent.
    BadPeerData(String),
    Wire(WireError),
    /// Both KMEs delivered keys for the same IDs, but not the same keys.
    KeyMismatch {
        key_ids: String,
    },
    /// QKD failed on one side and fallback = dh is not allowed on both sides.
    NoFallback(String),
    /// The peer started the exchange without a QKD key: refused in-band, which strongSwan
    /// answers by keeping the current SA and retrying. Normal while a QKD link is dry.
    PeerHasNoKey(String),
    /// Our own encoder refused what we built (a local limit, never the peer's fault).
    Encode(WireError),
    /// An in-method key exchange (dh_group, kem) failed.
    InnerKe(String),
    /// charon asked again about an exchange that already failed (and was logged).
    AlreadyFailed,
    /// The initiator was asked for the secret of an exchange whose response carried no KE
    /// data: the peer refused it (in-band, e.g. without a QKD key on its side). `no_key_sent`:
    /// our request already said we had no key (and that was logged).
    PeerRefused {
        no_key_sent: bool,
    },
    /// strongSwan called us out of order.
    OutOfOrder(&'static str),
}

impl KeError {
    /// How loud the log line should be: a dry QKD link is normal operation, and charon
    /// querying an exchange that already failed is not news.
    pub fn level(&self) -> log::Level {
        match self {
            KeError::PeerHasNoKey(_) | KeError::Busy(_) => log::Level::Warn,
            KeError::PeerRefused { no_key_sent: false } => log::Level::Info,
            KeError::AlreadyFailed | KeError::PeerRefused { no_key_sent: true } => {
                log::Level::Debug
            }
            _ => log::Level::Error,
        }
    }
}

impl fmt::Display for KeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeError::UnknownPeer(m)
            | KeError::BadPeerData(m)
            | KeError::NoFallback(m)
            | KeError::Busy(m)
            | KeError::PeerHasNoKey(m) => f.write_str(m),
            KeError::Kme { peer, error } => write!(f, "no QKD key for SAE '{peer}': {error}"),
            KeError::Wire(e) => write!(f, "peer sent {e}"),
            KeError::Encode(e) => write!(f, "building our KE data failed: {e}"),
            KeError::KeyMismatch { key_ids } => write!(
                f,
                "key confirmation failed for key IDs {key_ids}: the peer's KME delivered different key \
                 material than ours (QKD link or KME fault); refusing the key"
            ),
            KeError::InnerKe(m) => write!(f, "in-method key exchange failed: {m}"),
            KeError::AlreadyFailed => f.write_str("this key exchange failed earlier (see above)"),
            KeError::PeerRefused { no_key_sent } => write!(
                f,
                "no shared secret: the peer refused the exchange{} (see its log); strongSwan \
                 keeps the current SA and retries a rekey (an initial exchange is not retried)",
                if *no_key_sent {
                    " we started without QKD key"
                } else {
                    " (its response carried no qkd key exchange data)"
                }
            ),
            KeError::OutOfOrder(m) => write!(f, "unexpected call order: {m}"),
        }
    }
}

impl std::error::Error for KeError {}

impl From<WireError> for KeError {
    fn from(e: WireError) -> Self {
        KeError::Wire(e)
    }
}
