//! KE data of the `qkd` method, wire version 3 (docs/design.md, sections 4 and 7).
//! (Over 500 lines only for its tests, which cover every field a peer can get wrong.)
//!
//! ```text
//! request  (initiator = ETSI master -> responder = slave):
//!   u8 version=3 | u8 type=1 | u8 flags (KEY_IDS|SHARES|DH_FALLBACK|NO_KEY|ANNOUNCE)
//!   u8 sae_len (1..=64) | sae_id (SaeId charset)
//!   [KEY_IDS]  u8 count (1..=16) | count x 16-byte binary UUID   the keys of this exchange
//!   [NO_KEY]   u8 reason (NoKeyReason)                           exactly one of KEY_IDS/NO_KEY
//!   [ANNOUNCE] u8 count (1..=16) | count x 16-byte binary UUID   the sender's next keys
//!   [SHARES]   u8 count (1..=2) | count x share
//! response (responder -> initiator):
//!   u8 version=3 | u8 type=2 | u8 flags (QKD_KEY|SHARES|ANNOUNCE)
//!   [QKD_KEY]  16-byte key confirmation tag
//!   [ANNOUNCE] u8 count (1..=16) | count x 16-byte binary UUID   the responder's next keys
//!   [SHARES]   u8 count (1..=2) | count x share
//! share: u16 method | u16 len (1..=1568) | value     an in-method key exchange's public
//!        value (x25519) or encapsulation key / ciphertext (ML-KEM), in the order their
//!        secrets follow the QKD key in the shared secret
//! ```
//! All integers are big-endian. Parsing is strict: unknown versions, types, flag bits or
//! reasons, out-of-range lengths and trailing bytes are rejected, since this is untrusted
//! peer input.
//!
//! Version 2 (over 1) lets an initiator without QKD key say so in-band (NO_KEY): the
//! responder then refuses inside the protocol, where strongSwan keeps the current SA and
//! retries, instead of the initiator failing locally in the middle of an exchange. ANNOUNCE
//! carries key IDs the sender obtained as master and will use next, so the peer can fetch
//! them from its KME before they are needed; it is a hint, never a commitment. Version 3
//! (over 2) carries up to two in-method key exchanges (an ECDH and an ML-KEM) where version 2
//! carried one ECDH share; 1568 bytes is ML-KEM-1024's encapsulation key and ciphertext.

use crate::ids::{KeyId, SaeId};
use std::fmt;

pub const VERSION: u8 = 3;
pub const MAX_KEY_IDS: usize = 16;
pub const MAX_SHARES: usize = 2;
pub const MAX_SHARE_LEN: usize = 1568;
pub const TAG_LEN: usize = 16;

const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

const REQ_KEY_IDS: u8 = 0x01;
const REQ_SHARES: u8 = 0x02;
const REQ_DH_FALLBACK: u8 = 0x04;
const REQ_NO_KEY: u8 = 0x08;
const REQ_ANNOUNCE: u8 = 0x10;

const RESP_QKD_KEY: u8 = 0x01;
const RESP_SHARES: u8 = 0x02;
const RESP_ANNOUNCE: u8 = 0x04;

/// The public part of one in-method key exchange, with the strongSwan key exchange method
/// that made it: an ECDH public value, an ML-KEM encapsulation key (request) or ciphertext
/// (response).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Share {
    pub method: u16,
    pub value: Vec<u8>,
}

/// Why an initiator has no QKD key for this exchange.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NoKeyReason {
    /// Its KME has no key left (503, or 404 / "try again" on some KMEs).
    KmeEmpty = 1,
    /// Its KME did not answer in time or could not be reached.
    KmeUnreachable = 2,
    /// Its KME refused the request or answered something unusable.
    KmeRefused = 3,
    /// A local limit or setting (too many KME requests in flight, no peer configured).
    Local = 4,
}

impl NoKeyReason {
    fn from_byte(b: u8) -> Option<NoKeyReason> {
        [
            NoKeyReason::KmeEmpty,
            NoKeyReason::KmeUnreachable,
            NoKeyReason::KmeRefused,
            NoKeyReason::Local,
        ]
        .into_iter()
        .find(|r| *r as u8 == b)
    }
}

impl fmt::Display for NoKeyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoKeyReason::KmeEmpty => "its KME has no key available",
            NoKeyReason::KmeUnreachable => "its KME is unreachable",
            NoKeyReason::KmeRefused => "its KME refused the request",
            NoKeyReason::Local => "a local limit or setting",
        })
    }
}

/// The QKD part of a request: the keys of this exchange, or why there are none.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Keys {
    Ids(Vec<KeyId>),
    /// No key IDs: the sender has no keys for this exchange, for this reason.
    Missing(NoKeyReason),
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Request {
    /// The initiator's (ETSI master's) SAE ID, needed by the responder for dec_keys.
    pub sender: SaeId,
    /// The sender accepts a secret of the in-method key exchanges alone if QKD keys cannot
    /// be obtained.
    pub allows_dh_fallback: bool,
    pub keys: Keys,
    /// Key IDs the sender will use next as master (empty: none announced).
    pub announce: Vec<KeyId>,
    pub shares: Vec<Share>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Response {
    /// Present iff the responder obtained the QKD keys.
    pub confirmation: Option<[u8; TAG_LEN]>,
    /// Key IDs the responder will use next as master.
    pub announce: Vec<KeyId>,
    pub shares: Vec<Share>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed qkd KE data: {}", self.0)
    }
}

impl std::error::Error for WireError {}

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

impl Request {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut flags = 0;
        match &self.keys {
            Keys::Ids(_) => flags |= REQ_KEY_IDS,
            Keys::Missing(_) => flags |= REQ_NO_KEY,
        }
        if !self.announce.is_empty() {
            flags |= REQ_ANNOUNCE;
        }
        if !self.shares.is_empty() {
            flags |= REQ_SHARES;
        }
        if self.allows_dh_fallback {
            flags |= REQ_DH_FALLBACK;
        }
        let sae = self.sender.as_str().as_bytes();
        let mut out = vec![VERSION, TYPE_REQUEST, flags, sae.len() as u8];
        out.extend_from_slice(sae);
        match &self.keys {
            Keys::Ids(ids) => encode_ids(ids, "key IDs", &mut out)?,
            Keys::Missing(reason) => out.push(*reason as u8),
        }
        encode_tail(&self.announce, &self.shares, &mut out)?;
        Ok(out)
    }

    pub fn decode(data: &[u8]) -> Result<Request, WireError> {
        let mut r = Reader::new(data);
        let flags = r.header(TYPE_REQUEST)?;
        let known = REQ_KEY_IDS | REQ_SHARES | REQ_DH_FALLBACK | REQ_NO_KEY | REQ_ANNOUNCE;
        if flags & !known != 0 {
            return Err(bad(format!("unknown request flags {flags:#04x}")));
        }
        if (flags & REQ_KEY_IDS != 0) == (flags & REQ_NO_KEY != 0) {
            return Err(bad("request must carry either key IDs or a no-key reason"));
        }
        let sae_len = r.u8()? as usize;
        let sae = std::str::from_utf8(r.bytes(sae_len)?).map_err(|_| bad("SAE ID is not UTF-8"))?;
        let sender = SaeId::new(sae).map_err(bad)?;
        let keys = if flags & REQ_KEY_IDS != 0 {
            Keys::Ids(r.ids("key ID")?)
        } else {
            let b = r.u8()?;
            Keys::Missing(
                NoKeyReason::from_byte(b)
                    .ok_or_else(|| bad(format!("unknown no-key reason {b}")))?,
            )
        };
        let (announce, shares) = r.tail(flags & REQ_ANNOUNCE != 0, flags & REQ_SHARES != 0)?;
        Ok(Request {
            sender,
            allows_dh_fallback: flags & REQ_DH_FALLBACK != 0,
            keys,
            announce,
            shares,
        })
    }
}

impl Response {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut flags = 0;
        if self.confirmation.is_some() {
            flags |= RESP_QKD_KEY;
        }
        if !self.announce.is_empty() {
            flags |= RESP_ANNOUNCE;
        }
        if !self.shares.is_empty() {
            flags |= RESP_SHARES;
        }
        let mut out = vec![VERSION, TYPE_RESPONSE, flags];
        if let Some(tag) = &self.confirmation {
            out.extend_from_slice(tag);
        }
        encode_tail(&self.announce, &self.shares, &mut out)?;
        Ok(out)
    }

    pub fn decode(data: &[u8]) -> Result<Response, WireError> {
        let mut r = Reader::new(data);
        let flags = r.header(TYPE_RESPONSE)?;
        if flags & !(RESP_QKD_KEY | RESP_SHARES | RESP_ANNOUNCE) != 0 {
            return Err(bad(format!("unknown response flags {flags:#04x}")));
        }
        let confirmation = if flags & RESP_QKD_KEY != 0 {
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(r.bytes(TAG_LEN)?);
            Some(tag)
        } else {
            None
        };
        let (announce, shares) = r.tail(flags & RESP_ANNOUNCE != 0, flags & RESP_SHARES != 0)?;
        Ok(Response {
            confirmation,
            announce,
            shares,
        })
    }
}

/// Our own encoder refuses what the decoder would; the message says it is our limit, so a
/// caller never blames the peer for it.
fn encode_ids(ids: &[KeyId], what: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    if ids.is_empty() || ids.len() > MAX_KEY_IDS {
        return Err(bad(format!(
            "cannot send {} {what}: the wire format carries 1..={MAX_KEY_IDS}",
            ids.len()
        )));
    }
    out.push(ids.len() as u8);
    for id in ids {
        out.extend_from_slice(&id.0);
    }
    Ok(())
}

/// The fields that end both messages, each sent only when not empty (a flag says it is
/// there): key IDs announced for later exchanges, then the in-method shares.
fn encode_tail(announce: &[KeyId], shares: &[Share], out: &mut Vec<u8>) -> Result<(), WireError> {
    if !announce.is_empty() {
        encode_ids(announce, "announced key IDs", out)?;
    }
    if !shares.is_empty() {
        encode_shares(shares, out)?;
    }
    Ok(())
}

fn encode_shares(shares: &[Share], out: &mut Vec<u8>) -> Result<(), WireError> {
    if shares.len() > MAX_SHARES {
        return Err(bad(format!(
            "cannot send {} in-method shares: the wire format carries 1..={MAX_SHARES}",
            shares.len()
        )));
    }
    out.push(shares.len() as u8);
    for share in shares {
        if share.value.is_empty() || share.value.len() > MAX_SHARE_LEN {
            return Err(bad(format!(
                "cannot send a method {} share of {} bytes: the wire format carries 1..={MAX_SHARE_LEN}",
                share.method,
                share.value.len()
            )));
        }
        out.extend_from_slice(&share.method.to_be_bytes());
        out.extend_from_slice(&(share.value.len() as u16).to_be_bytes());
        out.extend_from_slice(&share.value);
    }
    Ok(())
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.data.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads version and type, returns the flags byte.
    fn header(&mut self, expected_type: u8) -> Result<u8, WireError> {
        let version = self.u8()?;
        if version != VERSION {
            return Err(bad(format!(
                "unsupported version {version} (we speak {VERSION})"
            )));
        }
        let kind = self.u8()?;
        if kind != expected_type {
            return Err(bad(format!(
                "message type {kind}, expected {expected_type}"
            )));
        }
        self.u8()
    }

    /// A count-prefixed list of 1..=MAX_KEY_IDS binary UUIDs.
    fn ids(&mut self, what: &str) -> Result<Vec<KeyId>, WireError> {
        let count = self.u8()? as usize;
        if count == 0 || count > MAX_KEY_IDS {
            return Err(bad(format!(
                "{what} count {count} outside 1..={MAX_KEY_IDS}"
            )));
        }
        (0..count)
            .map(|_| {
                let mut id = [0u8; 16];
                id.copy_from_slice(self.bytes(16)?);
                Ok(KeyId(id))
            })
            .collect()
    }

    /// A count-prefixed list of 1..=MAX_SHARES in-method shares.
    fn shares(&mut self) -> Result<Vec<Share>, WireError> {
        let count = self.u8()? as usize;
        if count == 0 || count > MAX_SHARES {
            return Err(bad(format!("share count {count} outside 1..={MAX_SHARES}")));
        }
        (0..count)
            .map(|_| {
                let method = self.u16()?;
                let len = self.u16()? as usize;
                if len == 0 || len > MAX_SHARE_LEN {
                    return Err(bad(format!(
                        "method {method} share length {len} outside 1..={MAX_SHARE_LEN}"
                    )));
                }
                Ok(Share {
                    method,
                    value: self.bytes(len)?.to_vec(),
                })
            })
            .collect()
    }

    /// The fields that end both messages, each read when its flag is set: announced key
    /// IDs, then the in-method shares. Nothing may follow them.
    fn tail(mut self, announce: bool, shares: bool) -> Result<(Vec<KeyId>, Vec<Share>), WireError> {
        let announce = if announce {
            self.ids("announced key ID")?
        } else {
            Vec::new()
        };
        let shares = if shares { self.shares()? } else { Vec::new() };
        self.finish()?;
        Ok((announce, shares))
    }

    fn finish(self) -> Result<(), WireError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} trailing bytes", self.data.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(method: u16, len: usize) -> Share {
        Share {
            method,
            value: vec![9; len],
        }
    }

    fn request() -> Request {
        Request {
            sender: SaeId::new("sae-a").unwrap(),
            allows_dh_fallback: true,
            keys: Keys::Ids(vec![KeyId([1; 16]), KeyId([2; 16])]),
            announce: vec![KeyId([3; 16])],
            shares: vec![share(31, 32), share(36, 1184)],
        }
    }

    #[test]
    fn request_round_trip_and_layout() {
        let req = request();
        let bytes = req.encode().unwrap();
        assert_eq!(&bytes[..4], &[3, 1, 0x17, 5]);
        assert_eq!(&bytes[4..9], b"sae-a");
        assert_eq!(bytes[9], 2);
        assert_eq!(&bytes[10..26], &[1; 16]);
        assert_eq!(bytes[42], 1, "announce count after the key IDs");
        assert_eq!(&bytes[43..59], &[3; 16]);
        assert_eq!(bytes[59], 2, "share count after the announced IDs");
        assert_eq!(&bytes[60..64], &[0, 31, 0, 32]);
        assert_eq!(&bytes[96..100], &[0, 36, 0x04, 0xa0]);
        assert_eq!(bytes.len(), 100 + 1184);
        assert_eq!(Request::decode(&bytes).unwrap(), req);
    }

    #[test]
    fn no_key_request_carries_the_reason_and_nothing_else_is_required() {
        for reason in [
            NoKeyReason::KmeEmpty,
            NoKeyReason::KmeUnreachable,
            NoKeyReason::KmeRefused,
            NoKeyReason::Local,
        ] {
            let req = Request {
                keys: Keys::Missing(reason),
                announce: vec![],
                shares: vec![],
                allows_dh_fallback: false,
                ..request()
            };
            let bytes = req.encode().unwrap();
            assert_eq!(
                bytes,
                [&[3, 1, REQ_NO_KEY, 5][..], b"sae-a", &[reason as u8]].concat()
            );
            assert_eq!(Request::decode(&bytes).unwrap(), req);
        }
    }

    #[test]
    fn response_round_trip() {
        for resp in [
            Response {
                confirmation: Some([7; TAG_LEN]),
                announce: vec![KeyId([5; 16]), KeyId([6; 16])],
                shares: vec![share(19, 65)],
            },
            Response {
                confirmation: Some([7; TAG_LEN]),
                announce: vec![],
                shares: vec![],
            },
            Response {
                confirmation: None,
                announce: vec![],
                shares: vec![share(31, 32), share(37, MAX_SHARE_LEN)],
            },
        ] {
            assert_eq!(Response::decode(&resp.encode().unwrap()).unwrap(), resp);
        }
    }

    #[test]
    fn rejects_malformed_requests() {
        let good = request().encode().unwrap();
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "truncated"),
            (good[..good.len() - 1].to_vec(), "truncated"),
            ([good.clone(), vec![0]].concat(), "trailing"),
        ];
        let mut edit = |at: usize, f: &dyn Fn(u8) -> u8, why: &'static str| {
            let mut v = good.clone();
            v[at] = f(v[at]);
            cases.push((v, why));
        };
        edit(0, &|_| 2, "version");
        edit(1, &|_| TYPE_RESPONSE, "message type");
        edit(2, &|f| f | 0x80, "flags");
        edit(2, &|f| f | REQ_NO_KEY, "either key IDs or a no-key reason");
        edit(
            2,
            &|f| f & !REQ_KEY_IDS,
            "either key IDs or a no-key reason",
        );
        edit(5, &|_| b'/', "SAE ID");
        edit(9, &|_| 0, "count 0");
        edit(9, &|_| 17, "count 17");
        edit(42, &|_| 0, "announced key ID count 0");
        edit(59, &|_| 0, "share count 0");
        edit(59, &|_| 3, "share count 3");
        edit(62, &|_| 0x10, "method 31 share length");
        let mut no_key = [&[3, 1, REQ_NO_KEY, 5][..], b"sae-a", &[9]].concat();
        cases.push((no_key.clone(), "no-key reason 9"));
        no_key[9] = 0;
        cases.push((no_key, "no-key reason 0"));
        for (bytes, why) in cases {
            let err = Request::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should mention {why:?}");
        }
    }

    #[test]
    fn rejects_malformed_responses() {
        let cases: [(&[u8], &str); 5] = [
            (&[3, 1, 0], "message type"),
            (&[2, 2, 0], "version"),
            (&[3, 2, RESP_QKD_KEY, 0, 0], "truncated"),
            (&[3, 2, 0x08], "flags"),
            (&[3, 2, RESP_ANNOUNCE, 0], "count 0"),
        ];
        for (bytes, why) in cases {
            let err = Response::decode(bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should mention {why:?}");
        }
    }

    #[test]
    fn refuses_to_encode_out_of_bounds_as_our_own_limit() {
        let too_many = Request {
            keys: Keys::Ids(vec![KeyId([0; 16]); MAX_KEY_IDS + 1]),
            ..request()
        };
        let too_many_announced = Request {
            announce: vec![KeyId([0; 16]); MAX_KEY_IDS + 1],
            ..request()
        };
        let huge = Response {
            confirmation: None,
            announce: vec![],
            shares: vec![share(1, MAX_SHARE_LEN + 1)],
        };
        let too_many_shares = Response {
            shares: vec![share(31, 32); MAX_SHARES + 1],
            ..huge.clone()
        };
        for err in [
            too_many.encode().unwrap_err(),
            too_many_announced.encode().unwrap_err(),
            huge.encode().unwrap_err(),
            too_many_shares.encode().unwrap_err(),
        ] {
            assert!(err.to_string().contains("cannot send"), "{err}");
        }
    }

    /// Every mutation of a valid message either decodes to a message that encodes back to
    /// the same bytes (strict, canonical format) or is refused: a cheap deterministic fuzz
    /// that can fail, unlike "does not panic".
    #[test]
    fn decode_is_strict_and_canonical() {
        let mut state = 0x1234_5678_u32;
        let requests = [Request {
            shares: vec![share(31, 32), share(36, 8)],
            ..request()
        }
        .encode()
        .unwrap()];
        let responses = [Response {
            confirmation: Some([7; TAG_LEN]),
            announce: vec![KeyId([5; 16])],
            shares: vec![share(31, 32)],
        }
        .encode()
        .unwrap()];
        let mut decoded = 0;
        for i in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            for good in requests.iter().chain(&responses) {
                let mut v = good.clone();
                let pos = state as usize % v.len();
                v[pos] = (state >> 8) as u8;
                v.truncate(v.len() - (i % 3));
                if let Ok(r) = Request::decode(&v) {
                    assert_eq!(r.encode().unwrap(), v);
                    decoded += 1;
                }
                if let Ok(r) = Response::decode(&v) {
                    assert_eq!(r.encode().unwrap(), v);
                    decoded += 1;
                }
            }
        }
        assert!(
            decoded > 0,
            "some mutations (e.g. of key ID bytes) stay valid"
        );
    }
}
