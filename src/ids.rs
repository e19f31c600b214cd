//! The identifiers every layer names: ETSI key IDs, SAE IDs and the index of a configured
//! peer. They sit below the wire codec, the configuration and the KME client, which all
//! carry them.

use std::fmt;
use std::ops::{Index, IndexMut};

/// An ETSI key ID: a UUID (any version; real KMEs differ), carried as 16 binary bytes on
/// the wire and formatted by us as 8-4-4-4-12 lower-case hex towards the KME.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// Parses any 8-4-4-4-12 hex UUID as a KME hands it out.
    pub fn parse(text: &str) -> Option<KeyId> {
        uuid::Uuid::try_parse(text)
            .ok()
            .filter(|_| text.len() == 36)
            .map(|u| KeyId(*u.as_bytes()))
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
        // A path segment of its own in KME URLs (`/api/v1/keys/{id}/enc_keys`), where "."
        // and ".." would name another resource.
        if id == "." || id == ".." {
            return Err(format!(
                "'{id}' is not a valid SAE ID (it would name another path in the KME's URLs)"
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

/// Key IDs as one comma-separated list, the form log lines and the interop tests use.
pub fn format_ids(ids: &[KeyId]) -> String {
    ids.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_not_sae_ids() {
        for id in [".", ".."] {
            let err = SaeId::new(id).unwrap_err();
            assert!(
                err.contains(&format!("'{id}' is not a valid SAE ID")),
                "{err}"
            );
        }
        for id in ["...", ".a", "a..b", "sae-b"] {
            assert!(SaeId::new(id).is_ok(), "{id}");
        }
    }
}

/// A peer's position among the configured peers (`Config::peers`), and in every per-peer
/// list built in the same order (KME sources, supply buffers, request limits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PeerIndex(pub usize);

impl PeerIndex {
    /// The indexes of `count` peers, in configuration order.
    pub fn all(count: usize) -> impl Iterator<Item = PeerIndex> {
        (0..count).map(PeerIndex)
    }
}

impl<T> Index<PeerIndex> for [T] {
    type Output = T;
    fn index(&self, peer: PeerIndex) -> &T {
        &self[peer.0]
    }
}

impl<T> IndexMut<PeerIndex> for [T] {
    fn index_mut(&mut self, peer: PeerIndex) -> &mut T {
        &mut self[peer.0]
    }
}

impl<T> Index<PeerIndex> for Vec<T> {
    type Output = T;
    fn index(&self, peer: PeerIndex) -> &T {
        &self[peer.0]
    }
}

impl<T> IndexMut<PeerIndex> for Vec<T> {
    fn index_mut(&mut self, peer: PeerIndex) -> &mut T {
        &mut self[peer.0]
    }
}
