//! The classical half of the hybrid: a key exchange object from strongSwan's own crypto
//! factory (`lib->crypto->create_ke`), so the ECDH comes from charon's vetted providers.

use super::abi::{chunk_t, key_exchange_t};
use super::{chunk, symbols};
use crate::ke::Ecdh;
use zeroize::Zeroizing;

pub(crate) struct CharonEcdh {
    ke: *mut key_exchange_t,
    group: u16,
}

// SAFETY: charon uses one key exchange object from one thread at a time, possibly a
// different worker thread per call; strongSwan's KE objects have no thread affinity.
unsafe impl Send for CharonEcdh {}

impl CharonEcdh {
    /// Runs inside our constructor, under the crypto factory's read lock: a nested
    /// `create_ke` is a recursive read lock, which glibc allows.
    pub(crate) fn create(group: u16) -> Result<CharonEcdh, String> {
        let missing = || format!("strongSwan offers no key exchange method {group} for dh_group");
        let lib = symbols::lib().ok_or("libstrongswan's `lib` not found")?;
        // SAFETY: `lib->crypto` is the live crypto factory; create_ke returns NULL or an
        // object we own.
        let ke = unsafe {
            let crypto = lib.crypto.as_mut().ok_or_else(missing)?;
            let create = crypto.create_ke.ok_or_else(missing)?;
            create(crypto, group as _)
        };
        if ke.is_null() {
            return Err(missing());
        }
        Ok(CharonEcdh { ke, group })
    }

    /// Calls one of the two KE getters that hand us a malloc'ed chunk, and takes it over
    /// (wiped on free when it is a secret).
    fn owned_chunk(
        &self,
        getter: Option<unsafe extern "C" fn(*mut key_exchange_t, *mut chunk_t) -> bool>,
        secret: bool,
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let get = getter.ok_or_else(|| format!("method {}: {what}: no such method", self.group))?;
        let mut out = chunk_t {
            ptr: std::ptr::null_mut(),
            len: 0,
        };
        // SAFETY: on success `out` holds a malloc'ed buffer that we now own.
        unsafe {
            if !get(self.ke, &mut out) {
                return Err(format!("method {}: {what} failed", self.group));
            }
            Ok(chunk::take(out, secret))
        }
    }

    fn vtable(&self) -> &key_exchange_t {
        // SAFETY: `ke` is non-NULL and owned by us until drop.
        unsafe { &*self.ke }
    }
}

impl Ecdh for CharonEcdh {
    fn group(&self) -> u16 {
        self.group
    }

    fn public_value(&mut self) -> Result<Vec<u8>, String> {
        let get = self.vtable().get_public_key;
        Ok(self
            .owned_chunk(get, false, "creating our public value")?
            .to_vec())
    }

    fn set_peer_value(&mut self, value: &[u8]) -> Result<(), String> {
        let set = self
            .vtable()
            .set_public_key
            .ok_or("set_public_key missing")?;
        let borrowed = chunk_t {
            ptr: value.as_ptr() as *mut u8,
            len: value.len(),
        };
        // SAFETY: set_public_key only reads the borrowed chunk during the call.
        if unsafe { set(self.ke, borrowed) } {
            Ok(())
        } else {
            Err(format!(
                "method {}: the peer's public value was rejected",
                self.group
            ))
        }
    }

    fn shared_secret(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        let get = self.vtable().get_shared_secret;
        self.owned_chunk(get, true, "computing the shared secret")
    }
}

impl Drop for CharonEcdh {
    fn drop(&mut self) {
        if let Some(destroy) = self.vtable().destroy {
            // SAFETY: we own the object; it is not used afterwards.
            unsafe { destroy(self.ke) }
        }
    }
}
