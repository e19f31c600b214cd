//! `key_exchange_t` for the `qkd` method: a vtable in front of [`QkdKeyExchange`].

use super::abi::{
    chunk_t, key_exchange_method_t, key_exchange_t, IKE_ESTABLISHED, IKE_REKEYED, IKE_REKEYING,
};
use super::inner_ke::CharonKe;
use super::{boundary, chunk, symbols};
use crate::installed::{self, status_socket};
use crate::ke::{ExchangeContext, InnerKe, KeError, QkdKeyExchange};
use std::ffi::CStr;
use std::net::IpAddr;

/// charon only sees `public`; the pointer it holds is the start of this struct.
#[repr(C)]
struct QkdKe {
    public: key_exchange_t,
    exchange: QkdKeyExchange,
}

/// `ke_constructor_t`. charon calls it as `create(method, g, p)` (variadic); the two chunks
/// are for MODP_CUSTOM only and, on the SysV/AAPCS64 ABIs, can be ignored by a callee that
/// declares just `method`.
pub(crate) unsafe extern "C" fn create(method: key_exchange_method_t) -> *mut key_exchange_t {
    boundary("qkd key exchange constructor", std::ptr::null_mut(), || {
        let Some(rt) = installed::current() else {
            log::error!("qkd: plugin not configured, cannot create a key exchange");
            return std::ptr::null_mut();
        };
        if method != rt.config.method_id as key_exchange_method_t {
            return std::ptr::null_mut();
        }
        // Worker thread: charon has dropped its capabilities (see installed/status_socket.rs).
        status_socket::ensure(rt.config.status_socket.as_deref(), false);
        let inner: Result<Vec<Box<dyn InnerKe>>, String> = rt
            .config
            .inner_methods()
            .into_iter()
            .map(|method| CharonKe::create(method).map(|ke| Box::new(ke) as Box<dyn InnerKe>))
            .collect();
        let inner = match inner {
            Ok(inner) => inner,
            Err(e) => {
                log::error!(
                    "qkd: {e}; check charon.plugins.qkd.dh_group / kem and the loaded crypto plugins"
                );
                return std::ptr::null_mut();
            }
        };
        let ke = Box::new(QkdKe {
            public: key_exchange_t {
                get_shared_secret: Some(get_shared_secret),
                set_public_key: Some(set_public_key),
                get_public_key: Some(get_public_key),
                set_seed: Some(set_seed),
                get_method: Some(get_method),
                destroy: Some(destroy),
            },
            exchange: QkdKeyExchange::new(rt, exchange_context(), inner),
        });
        Box::into_raw(ke) as *mut key_exchange_t
    })
}

/// Connection name and remote address of the IKE SA the calling thread has checked out.
/// A responder in IKE_SA_INIT/IKE_INTERMEDIATE has no connection yet ("(unnamed)").
pub(super) fn exchange_context() -> ExchangeContext {
    let mut ctx = ExchangeContext::default();
    // SAFETY: charon's bus and the checked-out IKE SA are valid for the duration of this
    // call; get_unique_id returns a number; get_name/get_other_host return NULL or
    // borrowed objects we only read, and the address chunk points into the host object.
    unsafe {
        let Some(bus) = symbols::charon().and_then(|c| c.bus.as_mut()) else {
            return ctx;
        };
        let Some(ike_sa) = bus.get_sa.and_then(|get_sa| get_sa(bus).as_mut()) else {
            return ctx;
        };
        if let Some(name) = ike_sa.get_name.map(|f| f(ike_sa)).filter(|p| !p.is_null()) {
            let name = CStr::from_ptr(name).to_string_lossy();
            if name != "(unnamed)" {
                ctx.connection = Some(name.into_owned());
            }
        }
        ctx.unique_id = ike_sa.get_unique_id.map(|f| f(ike_sa));
        // ESTABLISHED, or REKEYING/REKEYED while an IKE rekey runs on it: authenticated.
        ctx.established = ike_sa.get_state.is_some_and(|get_state| {
            matches!(
                get_state(ike_sa),
                IKE_ESTABLISHED | IKE_REKEYING | IKE_REKEYED
            )
        });
        if let Some(host) = ike_sa.get_other_host.and_then(|f| f(ike_sa).as_mut()) {
            if let Some(addr) = host.get_address.map(|f| f(host)) {
                ctx.remote = match chunk::borrow(&addr) {
                    Some(b) if b.len() == 4 => {
                        Some(IpAddr::from(<[u8; 4]>::try_from(b).expect("4 bytes")))
                    }
                    Some(b) if b.len() == 16 => {
                        Some(IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes")))
                    }
                    _ => None,
                };
            }
        }
    }
    ctx
}

/// # Safety
/// `this` must be NULL or a pointer returned by [`create`] and not yet destroyed.
unsafe fn exchange<'a>(this: *mut key_exchange_t) -> Option<&'a mut QkdKeyExchange> {
    // SAFETY: per the contract above, `this` is NULL or the start of a live QkdKe.
    unsafe { (this as *mut QkdKe).as_mut() }.map(|ke| &mut ke.exchange)
}

/// Copies a result of `ex` into a malloc'ed chunk for charon, or logs why there is none.
fn hand_out<T: AsRef<[u8]>>(
    ex: &QkdKeyExchange,
    result: Result<T, KeError>,
    out: &mut chunk_t,
) -> bool {
    match result {
        Ok(data) => chunk::malloc_copy(data.as_ref())
            .map(|c| *out = c)
            .is_some(),
        Err(e) => {
            ex.log_error(&e);
            false
        }
    }
}

unsafe extern "C" fn get_public_key(this: *mut key_exchange_t, value: *mut chunk_t) -> bool {
    boundary("get_public_key", false, || {
        // SAFETY: charon passes the object our constructor returned.
        let (Some(ex), false) = (unsafe { exchange(this) }, value.is_null()) else {
            return false;
        };
        let result = ex.get_public_key();
        // SAFETY: `value` is non-NULL and points to charon's chunk variable.
        hand_out(ex, result, unsafe { &mut *value })
    })
}

unsafe extern "C" fn set_public_key(this: *mut key_exchange_t, value: chunk_t) -> bool {
    boundary("set_public_key", false, || {
        // SAFETY: charon passes the object our constructor returned and a chunk it owns for
        // the duration of the call.
        let (Some(ex), Some(data)) = (unsafe { exchange(this) }, unsafe { chunk::borrow(&value) })
        else {
            return false;
        };
        let result = ex.set_public_key(data);
        result.map_err(|e| ex.log_error(&e)).is_ok()
    })
}

unsafe extern "C" fn get_shared_secret(this: *mut key_exchange_t, secret: *mut chunk_t) -> bool {
    boundary("get_shared_secret", false, || {
        // SAFETY: charon passes the object our constructor returned.
        let (Some(ex), false) = (unsafe { exchange(this) }, secret.is_null()) else {
            return false;
        };
        // SAFETY: `secret` is non-NULL and points to charon's chunk variable.
        hand_out(ex, ex.shared_secret(), unsafe { &mut *secret })
    })
}

/// Only strongSwan's crypto tester seeds key exchanges, and `qkd` has no test vectors.
/// No panic boundary: returning a constant cannot panic.
unsafe extern "C" fn set_seed(
    _: *mut key_exchange_t,
    _: chunk_t,
    _: *mut super::abi::drbg_t,
) -> bool {
    false
}

unsafe extern "C" fn get_method(this: *mut key_exchange_t) -> key_exchange_method_t {
    boundary("get_method", 0, || {
        // SAFETY: charon passes the object our constructor returned.
        unsafe { exchange(this) }.map_or(0, |ex| ex.method() as key_exchange_method_t)
    })
}

unsafe extern "C" fn destroy(this: *mut key_exchange_t) {
    boundary("destroy", (), || {
        if !this.is_null() {
            // Dropping wipes the secret and key material (Zeroizing) and destroys the ECDH.
            // SAFETY: a non-NULL `this` is the Box our constructor leaked; charon destroys
            // each key exchange once.
            drop(unsafe { Box::from_raw(this as *mut QkdKe) });
        }
    })
}
