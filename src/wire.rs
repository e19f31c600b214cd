//! KE data of the `qkd` method, wire version 1 (DESIGN §2).
//!
//! ```text
//! request  (initiator -> responder):
//!   u8 version=1 | u8 type=1 | u8 flags (KEY_IDS|ECDH|DH_FALLBACK)
//!   u8 sae_len | sae_id (SaeId charset)
//!   [KEY_IDS] u8 count (1..=16) | count x 16-byte binary UUID
//!   [ECDH]    u16 group | u16 len (1..=512) | share
//! response (responder -> initiator):
//!   u8 version=1 | u8 type=2 | u8 flags (QKD_KEY|ECDH)
//!   [QKD_KEY] 16-byte key confirmation tag
//!   [ECDH]    u16 group | u16 len (1..=512) | share
//! ```
//! All integers are big-endian. Parsing is strict: unknown versions, types or flag bits,
//! out-of-range lengths and trailing bytes are rejected, since this is untrusted peer input.

use crate::ids::{KeyId, SaeId};
use std::fmt;

pub const VERSION: u8 = 1;
pub const MAX_KEY_IDS: usize = 16;
pub const MAX_SHARE_LEN: usize = 512;
pub const TAG_LEN: usize = 16;

const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;

const REQ_KEY_IDS: u8 = 0x01;
const REQ_ECDH: u8 = 0x02;
const REQ_DH_FALLBACK: u8 = 0x04;

const RESP_QKD_KEY: u8 = 0x01;
const RESP_ECDH: u8 = 0x02;

/// An ECDH public value together with the strongSwan key exchange method that made it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EcdhShare {
    pub group: u16,
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Request {
    /// The initiator's (ETSI master's) SAE ID, needed by the responder for dec_keys.
    pub sender: SaeId,
    /// The sender accepts an ECDH-only secret if QKD keys cannot be obtained.
    pub allows_dh_fallback: bool,
    /// Empty when the initiator fell back to ECDH alone.
    pub key_ids: Vec<KeyId>,
    pub ecdh: Option<EcdhShare>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Response {
    /// Present iff the responder obtained the QKD keys.
    pub confirmation: Option<[u8; TAG_LEN]>,
    pub ecdh: Option<EcdhShare>,
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
        if self.key_ids.len() > MAX_KEY_IDS {
            return Err(bad(format!(
                "{} key IDs exceed the maximum of {MAX_KEY_IDS}",
                self.key_ids.len()
            )));
        }
        if self.key_ids.is_empty() && self.ecdh.is_none() {
            return Err(bad("request carries neither key IDs nor an ECDH share"));
        }
        let mut flags = 0;
        if !self.key_ids.is_empty() {
            flags |= REQ_KEY_IDS;
        }
        if self.ecdh.is_some() {
            flags |= REQ_ECDH;
        }
        if self.allows_dh_fallback {
            flags |= REQ_DH_FALLBACK;
        }
        let sae = self.sender.as_str().as_bytes();
        let mut out = vec![VERSION, TYPE_REQUEST, flags, sae.len() as u8];
        out.extend_from_slice(sae);
        if !self.key_ids.is_empty() {
            out.push(self.key_ids.len() as u8);
            for id in &self.key_ids {
                out.extend_from_slice(&id.0);
            }
        }
        if let Some(share) = &self.ecdh {
            encode_share(share, &mut out)?;
        }
        Ok(out)
    }

    pub fn decode(data: &[u8]) -> Result<Request, WireError> {
        let mut r = Reader::new(data);
        let flags = r.header(TYPE_REQUEST)?;
        if flags & !(REQ_KEY_IDS | REQ_ECDH | REQ_DH_FALLBACK) != 0 {
            return Err(bad(format!("unknown request flags {flags:#04x}")));
        }
        if flags & (REQ_KEY_IDS | REQ_ECDH) == 0 {
            return Err(bad("request carries neither key IDs nor an ECDH share"));
        }
        let sae_len = r.u8()? as usize;
        let sae = std::str::from_utf8(r.bytes(sae_len)?).map_err(|_| bad("SAE ID is not UTF-8"))?;
        let sender = SaeId::new(sae).map_err(bad)?;
        let mut key_ids = Vec::new();
        if flags & REQ_KEY_IDS != 0 {
            let count = r.u8()? as usize;
            if count == 0 || count > MAX_KEY_IDS {
                return Err(bad(format!(
                    "key ID count {count} outside 1..={MAX_KEY_IDS}"
                )));
            }
            for _ in 0..count {
                let mut id = [0u8; 16];
                id.copy_from_slice(r.bytes(16)?);
                key_ids.push(KeyId(id));
            }
        }
        let ecdh = if flags & REQ_ECDH != 0 {
            Some(r.share()?)
        } else {
            None
        };
        r.finish()?;
        Ok(Request {
            sender,
            allows_dh_fallback: flags & REQ_DH_FALLBACK != 0,
            key_ids,
            ecdh,
        })
    }
}

impl Response {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut flags = 0;
        if self.confirmation.is_some() {
            flags |= RESP_QKD_KEY;
        }
        if self.ecdh.is_some() {
            flags |= RESP_ECDH;
        }
        let mut out = vec![VERSION, TYPE_RESPONSE, flags];
        if let Some(tag) = &self.confirmation {
            out.extend_from_slice(tag);
        }
        if let Some(share) = &self.ecdh {
            encode_share(share, &mut out)?;
        }
        Ok(out)
    }

    pub fn decode(data: &[u8]) -> Result<Response, WireError> {
        let mut r = Reader::new(data);
        let flags = r.header(TYPE_RESPONSE)?;
        if flags & !(RESP_QKD_KEY | RESP_ECDH) != 0 {
            return Err(bad(format!("unknown response flags {flags:#04x}")));
        }
        let confirmation = if flags & RESP_QKD_KEY != 0 {
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(r.bytes(TAG_LEN)?);
            Some(tag)
        } else {
            None
        };
        let ecdh = if flags & RESP_ECDH != 0 {
            Some(r.share()?)
        } else {
            None
        };
        r.finish()?;
        Ok(Response { confirmation, ecdh })
    }
}

fn encode_share(share: &EcdhShare, out: &mut Vec<u8>) -> Result<(), WireError> {
    if share.value.is_empty() || share.value.len() > MAX_SHARE_LEN {
        return Err(bad(format!(
            "ECDH share of {} bytes outside 1..={MAX_SHARE_LEN}",
            share.value.len()
        )));
    }
    out.extend_from_slice(&share.group.to_be_bytes());
    out.extend_from_slice(&(share.value.len() as u16).to_be_bytes());
    out.extend_from_slice(&share.value);
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

    fn share(&mut self) -> Result<EcdhShare, WireError> {
        let group = self.u16()?;
        let len = self.u16()? as usize;
        if len == 0 || len > MAX_SHARE_LEN {
            return Err(bad(format!(
                "ECDH share length {len} outside 1..={MAX_SHARE_LEN}"
            )));
        }
        Ok(EcdhShare {
            group,
            value: self.bytes(len)?.to_vec(),
        })
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

    fn request() -> Request {
        Request {
            sender: SaeId::new("sae-a").unwrap(),
            allows_dh_fallback: true,
            key_ids: vec![KeyId([1; 16]), KeyId([2; 16])],
            ecdh: Some(EcdhShare {
                group: 31,
                value: vec![9; 32],
            }),
        }
    }

    #[test]
    fn request_round_trip_and_layout() {
        let req = request();
        let bytes = req.encode().unwrap();
        assert_eq!(&bytes[..4], &[1, 1, 0x07, 5]);
        assert_eq!(&bytes[4..9], b"sae-a");
        assert_eq!(bytes[9], 2);
        assert_eq!(bytes.len(), 10 + 32 + 4 + 32);
        assert_eq!(Request::decode(&bytes).unwrap(), req);
    }

    #[test]
    fn request_without_keys_is_fallback_only() {
        let req = Request {
            key_ids: vec![],
            ..request()
        };
        let bytes = req.encode().unwrap();
        assert_eq!(bytes[2], REQ_ECDH | REQ_DH_FALLBACK);
        assert_eq!(Request::decode(&bytes).unwrap(), req);
    }

    #[test]
    fn response_round_trip() {
        for resp in [
            Response {
                confirmation: Some([7; TAG_LEN]),
                ecdh: Some(EcdhShare {
                    group: 19,
                    value: vec![4; 65],
                }),
            },
            Response {
                confirmation: Some([7; TAG_LEN]),
                ecdh: None,
            },
            Response {
                confirmation: None,
                ecdh: Some(EcdhShare {
                    group: 31,
                    value: vec![1; 32],
                }),
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
        let mut v = good.clone();
        v[0] = 2;
        cases.push((v, "version"));
        let mut v = good.clone();
        v[1] = TYPE_RESPONSE;
        cases.push((v, "message type"));
        let mut v = good.clone();
        v[2] |= 0x80;
        cases.push((v, "flags"));
        let mut v = good.clone();
        v[2] &= !(REQ_KEY_IDS | REQ_ECDH);
        cases.push((v, "neither"));
        let mut v = good.clone();
        v[5] = b'/';
        cases.push((v, "SAE ID"));
        let mut v = good.clone();
        v[9] = 0;
        cases.push((v, "count"));
        let mut v = good.clone();
        v[9] = 17;
        cases.push((v, "count"));
        let mut v = good.clone();
        let share_len_at = 10 + 32 + 2;
        v[share_len_at] = 0x10;
        cases.push((v, "share length"));
        for (bytes, why) in cases {
            let err = Request::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should mention {why:?}");
        }
    }

    #[test]
    fn rejects_malformed_responses() {
        assert!(Response::decode(&request().encode().unwrap()).is_err());
        assert!(Response::decode(&[1, 2, RESP_QKD_KEY, 0, 0])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(Response::decode(&[1, 2, 0x08])
            .unwrap_err()
            .to_string()
            .contains("flags"));
    }

    #[test]
    fn refuses_to_encode_out_of_bounds() {
        let too_many = Request {
            key_ids: vec![KeyId([0; 16]); MAX_KEY_IDS + 1],
            ..request()
        };
        assert!(too_many.encode().is_err());
        let empty = Request {
            key_ids: vec![],
            ecdh: None,
            ..request()
        };
        assert!(empty.encode().is_err());
        let huge = Response {
            confirmation: None,
            ecdh: Some(EcdhShare {
                group: 1,
                value: vec![0; MAX_SHARE_LEN + 1],
            }),
        };
        assert!(huge.encode().is_err());
    }

    /// Decoding never panics on arbitrary input (cheap deterministic fuzz).
    #[test]
    fn decode_is_total() {
        let mut state = 0x1234_5678_u32;
        let good = request().encode().unwrap();
        for i in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let mut v = good.clone();
            let pos = state as usize % v.len();
            v[pos] = (state >> 8) as u8;
            v.truncate(v.len() - (i % 3));
            let _ = Request::decode(&v);
            let _ = Response::decode(&v);
        }
    }
}
