//! The credential set that answers strongSwan's RFC 8784 PPK lookups from the KME. What is
//! answered, and how, is decided by [`crate::ppk`]; this is only its C face.
//!
//! A set's shared-key enumerator yields `shared_key_t *, id_match_t *me, id_match_t *other`
//! through a variadic `enumerate`/`va_list` `venumerate`, which stable Rust cannot implement.
//! So the answer is built from libstrongswan's own parts: a `mem_cred_t` holding the fetched
//! key (owner: the PPK_ID), whose own enumerator does the identity matching, nested in a
//! single-item enumerator over that `mem_cred_t` that destroys it after the lookup:
//! `enumerator_create_nested(enumerator_create_single(mem_cred, destroy_mem_cred),
//! mem_cred's shared enumerator, lookup arguments, free them)`. The nested enumerator
//! destroys the inner (mem_cred's) enumerator before the outer one's cleanup destroys the
//! set, so nothing is used after it is freed. See docs/strongswan-abi.md, "PPK lookups".

use super::abi::{
    credential_set_t, enumerator_t, identification_t, mem_cred_t, shared_key_type_t, SHARED_PPK,
};
use super::key_exchange::exchange_context;
use super::{boundary, chunk, symbols};
use crate::installed;
use crate::ppk::{self, Lookup};
use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The set registered with `lib->credmgr`; charon holds its address while registered.
struct PpkSet(std::cell::UnsafeCell<credential_set_t>);
// SAFETY: charon only reads the function pointers; we never write them after registration.
unsafe impl Sync for PpkSet {}

static SET: PpkSet = PpkSet(std::cell::UnsafeCell::new(credential_set_t {
    create_private_enumerator: return_null as *mut c_void,
    create_cert_enumerator: return_null as *mut c_void,
    create_shared_enumerator: Some(create_shared_enumerator),
    create_cdp_enumerator: return_null as *mut c_void,
    cache_cert: nop as *mut c_void,
}));

/// A `mem_cred_t` holding one random SHARED_PPK without owner, for the lookup strongSwan's
/// responder makes in IKE_SA_INIT to decide whether to send USE_PPK: "is there any PPK?"
/// (no IDs). Owner-less, it never matches a lookup by PPK_ID.
static ANY_PPK: AtomicPtr<mem_cred_t> = AtomicPtr::new(null_mut());

/// The four slots we do not serve; called with (this, ...) and ignoring it, as strongSwan's
/// own `return_null` is. No panic boundary: returning a constant cannot panic.
unsafe extern "C" fn return_null() -> *mut c_void {
    null_mut()
}

unsafe extern "C" fn nop() {}

/// Registers the set (plugin load, with the plugin's other registrations).
pub(crate) fn register() {
    let (Some(credmgr), Some(helpers)) = (
        symbols::lib().map(|l| l.credmgr).filter(|c| !c.is_null()),
        symbols::credential_helpers(),
    ) else {
        log::warn!(
            target: "cfg",
            "qkd: libstrongswan's credential manager or mem_cred/enumerator helpers not found: \
             PPK lookups (peers.<conn>.ppk) are not answered"
        );
        return;
    };
    let Some(any_ppk) = any_ppk_set(&helpers) else {
        log::warn!(target: "cfg", "qkd: could not create the PPK placeholder: PPK lookups are not answered");
        return;
    };
    ANY_PPK.store(any_ppk, Ordering::SeqCst);
    // SAFETY: `credmgr` is libstrongswan's live credential manager; SET is static, so it
    // outlives the registration, which unregister() ends before the library is unloaded.
    unsafe {
        if let Some(add_set) = (*credmgr).add_set {
            add_set(credmgr, SET.0.get());
        }
    }
}

/// Removes the set (plugin destroy). The manager's write lock waits for lookups in flight,
/// whose enumerators hold its read lock, so none is left when this returns.
pub(crate) fn unregister() {
    let any_ppk = ANY_PPK.swap(null_mut(), Ordering::SeqCst);
    if any_ppk.is_null() {
        return;
    }
    if let Some(credmgr) = symbols::lib().map(|l| l.credmgr).filter(|c| !c.is_null()) {
        // SAFETY: as in register(); removing a registered set is always allowed.
        unsafe {
            if let Some(remove_set) = (*credmgr).remove_set {
                remove_set(credmgr, SET.0.get());
            }
        }
    }
    // SAFETY: created by any_ppk_set, no longer reachable through the manager.
    unsafe { destroy_mem_cred(any_ppk as *mut c_void) };
}

fn any_ppk_set(helpers: &symbols::CredentialHelpers) -> Option<*mut mem_cred_t> {
    let mut random = zeroize::Zeroizing::new([0u8; 32]);
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let filled = unsafe { libc::getrandom(random.as_mut_ptr() as *mut c_void, random.len(), 0) };
    if filled != random.len() as isize {
        return None;
    }
    // SAFETY: no owner to hand over.
    let mem = unsafe { mem_cred_with_key(helpers, &random[..], null_mut()) };
    (!mem.is_null()).then_some(mem)
}

/// A new `mem_cred_t` holding `key` (copied once, into the malloc'ed chunk the shared key
/// wipes and frees) as SHARED_PPK owned by `owner` (none if NULL); NULL if libstrongswan
/// cannot make one, with everything made so far released.
///
/// # Safety
/// `owner` is NULL or an identity the caller hands over (destroyed here on failure).
unsafe fn mem_cred_with_key(
    helpers: &symbols::CredentialHelpers,
    key: &[u8],
    owner: *mut identification_t,
) -> *mut mem_cred_t {
    // SAFETY: libstrongswan's constructors; add_shared takes ownership of the shared key and
    // the owner (a NULL-terminated list); on failure each object is released once.
    unsafe {
        let release_owner = || {
            if let Some(destroy) = owner.as_mut().and_then(|o| o.destroy) {
                destroy(owner);
            }
        };
        let (Some(mem_cred_create), Some(shared_key_create)) =
            (helpers.mem_cred_create, helpers.shared_key_create)
        else {
            release_owner();
            return null_mut();
        };
        let mem = mem_cred_create();
        let Some(add_shared) = mem.as_mut().and_then(|set| set.add_shared) else {
            release_owner();
            destroy_mem_cred(mem as *mut c_void);
            return null_mut();
        };
        let Some(material) = chunk::malloc_copy(key) else {
            release_owner();
            destroy_mem_cred(mem as *mut c_void);
            return null_mut();
        };
        let shared = shared_key_create(SHARED_PPK, material);
        if shared.is_null() {
            drop(chunk::take(material, true));
            release_owner();
            destroy_mem_cred(mem as *mut c_void);
            return null_mut();
        }
        if owner.is_null() {
            add_shared(mem, shared, null_mut::<identification_t>());
        } else {
            add_shared(mem, shared, owner, null_mut::<identification_t>());
        }
        mem
    }
}

/// `credential_set_t.create_shared_enumerator`: NULL (nothing from us) unless the lookup is
/// for a SHARED_PPK and [`ppk::answer`] has a key for it.
unsafe extern "C" fn create_shared_enumerator(
    _: *mut credential_set_t,
    type_: shared_key_type_t,
    me: *mut identification_t,
    other: *mut identification_t,
) -> *mut enumerator_t {
    boundary("PPK lookup", null_mut(), || {
        if type_ != SHARED_PPK {
            return null_mut();
        }
        // SAFETY: charon passes NULL or identities it owns for the duration of the lookup,
        // which lasts until the enumerator we return is destroyed.
        let Some(ppk_id) = (unsafe { me.as_mut() }) else {
            return if other.is_null() {
                any_ppk_enumerator()
            } else {
                null_mut()
            };
        };
        let Some(get_encoding) = ppk_id.get_encoding else {
            return null_mut();
        };
        // SAFETY: as above; the encoding points into the identity.
        let encoding = unsafe { get_encoding(ppk_id) };
        // SAFETY: the chunk describes the identity's own bytes.
        let Some(bytes) = (unsafe { chunk::borrow(&encoding) }) else {
            return null_mut();
        };
        let Some(rt) = installed::current() else {
            return null_mut();
        };
        let ctx = exchange_context();
        match ppk::answer(
            &rt,
            &Lookup {
                ppk_id: bytes,
                ctx: &ctx,
            },
        ) {
            Ok(Some(found)) => key_enumerator(&found.key, type_, me, other),
            _ => null_mut(),
        }
    })
}

/// The placeholder's enumerator, when a connection answers PPK lookups from the KME.
fn any_ppk_enumerator() -> *mut enumerator_t {
    let enabled = installed::current().is_some_and(|rt| rt.config.peers.iter().any(|p| p.ppk));
    let mem = ANY_PPK.load(Ordering::SeqCst);
    if !enabled || mem.is_null() {
        return null_mut();
    }
    // SAFETY: the placeholder lives until unregister(), which waits for this lookup (see
    // there); its set's enumerator takes NULL identities.
    unsafe {
        match (*mem).set.create_shared_enumerator {
            Some(create) => create(&mut (*mem).set, SHARED_PPK, null_mut(), null_mut()),
            None => null_mut(),
        }
    }
}

/// The lookup's arguments, for the inner enumerator of [`key_enumerator`].
struct LookupArgs {
    type_: shared_key_type_t,
    me: *mut identification_t,
    other: *mut identification_t,
}

/// An enumerator over `key` as a SHARED_PPK owned by the PPK_ID `me` (see the module
/// comment); NULL if libstrongswan cannot make one.
fn key_enumerator(
    key: &[u8],
    type_: shared_key_type_t,
    me: *mut identification_t,
    other: *mut identification_t,
) -> *mut enumerator_t {
    let Some(helpers) = symbols::credential_helpers() else {
        return null_mut();
    };
    let (Some(single), Some(nested)) = (
        helpers.enumerator_create_single,
        helpers.enumerator_create_nested,
    ) else {
        return null_mut();
    };
    // SAFETY: `me` is charon's live identity (its clone is ours and goes to the set); the
    // enumerators take ownership of what they wrap, as described in the module comment.
    unsafe {
        let Some(clone) = (*me).clone else {
            return null_mut();
        };
        let mem = mem_cred_with_key(&helpers, key, clone(me));
        if mem.is_null() {
            return null_mut();
        }
        let outer = single(mem as *mut c_void, Some(destroy_mem_cred));
        if outer.is_null() {
            destroy_mem_cred(mem as *mut c_void);
            return null_mut();
        }
        let args = Box::into_raw(Box::new(LookupArgs { type_, me, other }));
        nested(
            outer,
            Some(inner_shared_enumerator),
            args as *mut c_void,
            Some(free_args),
        )
    }
}

/// The nested enumerator's inner constructor: the mem_cred's own shared-key enumerator.
unsafe extern "C" fn inner_shared_enumerator(
    mem: *mut c_void,
    args: *mut c_void,
) -> *mut enumerator_t {
    boundary("PPK lookup enumerator", null_mut(), || {
        let (mem, args) = (mem as *mut mem_cred_t, args as *const LookupArgs);
        if mem.is_null() || args.is_null() {
            return null_mut();
        }
        // SAFETY: `mem` is the mem_cred of key_enumerator, alive until the outer single
        // enumerator is destroyed, after this inner one; `args` lives until free_args.
        unsafe {
            let args = &*args;
            match (*mem).set.create_shared_enumerator {
                Some(create) => create(&mut (*mem).set, args.type_, args.me, args.other),
                None => null_mut(),
            }
        }
    })
}

unsafe extern "C" fn free_args(args: *mut c_void) {
    boundary("PPK lookup cleanup", (), || {
        if !args.is_null() {
            // SAFETY: the Box key_enumerator leaked; the nested enumerator frees it once.
            drop(unsafe { Box::from_raw(args as *mut LookupArgs) });
        }
    })
}

/// Destroys a mem_cred_t (wiping the PPK it holds: shared keys are cleared on destroy).
unsafe extern "C" fn destroy_mem_cred(mem: *mut c_void) {
    boundary("PPK set cleanup", (), || {
        // SAFETY: NULL or a live mem_cred_t made by mem_cred_create, destroyed once.
        if let Some(set) = unsafe { (mem as *mut mem_cred_t).as_mut() } {
            if let Some(destroy) = set.destroy {
                // SAFETY: see above.
                unsafe { destroy(set) };
            }
        }
    })
}
