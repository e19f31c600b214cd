//! Key confirmation tag: proves to the initiator that the responder's KME delivered the
//! same key material for the same key IDs, so a KME mismatch is reported as such instead of
//! surfacing later as a generic IKE AUTH failure.
//!
//! The tag key is derived from the QKD key under its own label, so the key itself is only
//! ever used as input to IKE's key derivation and to this one derivation.
//!
//! Key hygiene. Wiped: the derived confirmation key, which HMAC writes straight into a
//! `Zeroizing` buffer (no other copy is made here). Not wiped: the state hmac 0.12 keeps
//! inside `Hmac` (the SHA-256 chaining values after the key XOR ipad/opad blocks, which are
//! as good as the key for computing HMACs under it) and the padded key block it builds in
//! `new_from_slice`. hmac 0.12 and sha2 0.10 have no zeroize feature, and their state cannot
//! be wiped from outside without writing into their private fields. These values live only
//! in this function's stack frame (never on the heap: tests/key_hygiene.rs scans freed heap
//! blocks) and are overwritten by the next calls on this worker thread's stack.

use crate::ids::{KeyId, SaeId};
use crate::wire::TAG_LEN;
use hmac::digest::{FixedOutput, Output};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

const CONFIRM_KEY_LABEL: &[u8] = b"strongswan-qkd v1 key confirmation";

/// Both SAE IDs are bound, initiator (master) first, so a tag is valid for one direction.
pub fn tag(qkd_key: &[u8], master: &SaeId, slave: &SaeId, key_ids: &[KeyId]) -> [u8; TAG_LEN] {
    let mut kdf = HmacSha256::new_from_slice(qkd_key).expect("HMAC takes any key length");
    kdf.update(CONFIRM_KEY_LABEL);
    let mut confirm_key = Zeroizing::new([0u8; 32]);
    kdf.finalize_into(Output::<HmacSha256>::from_mut_slice(&mut confirm_key[..]));

    let mut mac = HmacSha256::new_from_slice(&confirm_key[..]).expect("HMAC takes any key length");
    for sae in [master, slave] {
        mac.update(&[sae.as_str().len() as u8]);
        mac.update(sae.as_str().as_bytes());
    }
    mac.update(&[key_ids.len() as u8]);
    for id in key_ids {
        mac.update(&id.0);
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}

/// Constant-time check of a received tag.
pub fn verify(
    received: &[u8; TAG_LEN],
    qkd_key: &[u8],
    master: &SaeId,
    slave: &SaeId,
    key_ids: &[KeyId],
) -> bool {
    let expected = tag(qkd_key, master, slave, key_ids);
    expected.ct_eq(received).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sae(s: &str) -> SaeId {
        SaeId::new(s).unwrap()
    }

    #[test]
    fn binds_key_ids_saes_and_material() {
        let ids = [KeyId([1; 16])];
        let t = tag(b"0123456789abcdef", &sae("a"), &sae("b"), &ids);
        assert!(verify(&t, b"0123456789abcdef", &sae("a"), &sae("b"), &ids));
        assert!(!verify(&t, b"0123456789abcdeX", &sae("a"), &sae("b"), &ids));
        assert!(!verify(&t, b"0123456789abcdef", &sae("b"), &sae("a"), &ids));
        assert!(!verify(
            &t,
            b"0123456789abcdef",
            &sae("a"),
            &sae("b"),
            &[KeyId([2; 16])]
        ));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(
            tag(b"k", &sae("ab"), &sae("c"), &ids),
            tag(b"k", &sae("a"), &sae("bc"), &ids)
        );
    }
}
