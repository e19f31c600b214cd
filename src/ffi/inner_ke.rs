//! The in-method key exchanges of the hybrid (dh_group's ECDH, kem's ML-KEM): key exchange
//! objects from strongSwan's own crypto factory (`lib->crypto->create_ke`), so they come
//! from charon's vetted providers.

use super::abi::{chunk_t, key_exchange_t};
use super::{chunk, symbols};
use crate::config::method_name;
use crate::ke::InnerKe;
use zeroize::Zeroizing;

pub(crate) struct CharonKe {
    ke: *mut key_exchange_t,
    method: u16,
}

// SAFETY: charon uses one key exchange object from one thread at a time, possibly a
// different worker thread per call; strongSwan's KE objects have no thread affinity.
unsafe impl Send for CharonKe {}

impl CharonKe {
    /// Runs inside our constructor, under the crypto factory's read lock: a nested
    /// `create_ke` is a recursive read lock, which glibc allows.
    pub(crate) fn create(method: u16) -> Result<CharonKe, String> {
        let missing = || {
            format!(
                "strongSwan offers no key exchange method {} ({method})",
                method_name(method)
            )
        };
        let lib = symbols::lib().ok_or("libstrongswan's `lib` not found")?;
        // SAFETY: `lib->crypto` is the live crypto factory; create_ke returns NULL or an
        // object we own.
        let ke = unsafe {
            let crypto = lib.crypto.as_mut().ok_or_else(missing)?;
            let create = crypto.create_ke.ok_or_else(missing)?;
            create(crypto, method as _)
        };
        if ke.is_null() {
            return Err(missing());
        }
        Ok(CharonKe { ke, method })
    }

    /// Calls one of the two KE getters that hand us a malloc'ed chunk, and takes it over
    /// (wiped on free when it is a secret).
    fn owned_chunk(
        &self,
        getter: Option<unsafe extern "C" fn(*mut key_exchange_t, *mut chunk_t) -> bool>,
        secret: bool,
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let get =
            getter.ok_or_else(|| format!("method {}: {what}: no such method", self.method))?;
        let mut out = chunk_t {
            ptr: std::ptr::null_mut(),
            len: 0,
        };
        // SAFETY: on success `out` holds a malloc'ed buffer that we now own.
        unsafe {
            if !get(self.ke, &mut out) {
                return Err(format!("method {}: {what} failed", self.method));
            }
            Ok(chunk::take(out, secret))
        }
    }

    fn vtable(&self) -> &key_exchange_t {
        // SAFETY: `ke` is non-NULL and owned by us until drop.
        unsafe { &*self.ke }
    }
}

impl InnerKe for CharonKe {
    fn method(&self) -> u16 {
        self.method
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
                self.method
            ))
        }
    }

    fn shared_secret(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        let get = self.vtable().get_shared_secret;
        self.owned_chunk(get, true, "computing the shared secret")
    }
}

impl Drop for CharonKe {
    fn drop(&mut self) {
        if let Some(destroy) = self.vtable().destroy {
            // SAFETY: we own the object; it is not used afterwards.
            unsafe { destroy(self.ke) }
        }
    }
}
