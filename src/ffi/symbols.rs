//! strongSwan's globals, resolved at run time with `dlsym(RTLD_DEFAULT, ...)`.
//!
//! Linking them would make the plugin unloadable outside charon (`charon` lives in
//! libcharon) and the test binaries unlinkable; charon has loaded both libraries before it
//! dlopens us, so the lookups succeed there.

use super::abi::{
    daemon_t, dbg_fn_t, enum_name_t, enumerator_create_nested_fn_t, enumerator_create_single_fn_t,
    library_t, mem_cred_create_fn_t, shared_key_create_fn_t,
};
use std::ffi::{c_void, CStr};
use std::ptr;

fn lookup(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with a NUL-terminated name has no preconditions.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// `library_t *lib` (libstrongswan).
pub(crate) fn lib() -> Option<&'static library_t> {
    let var = lookup(c"lib") as *const *const library_t;
    // SAFETY: `lib` is a pointer variable; the library object lives until the daemon exits.
    unsafe { var.as_ref().and_then(|p| p.as_ref()) }
}

/// `daemon_t *charon` (libcharon); absent in non-charon hosts.
pub(crate) fn charon() -> Option<&'static daemon_t> {
    let var = lookup(c"charon") as *const *const daemon_t;
    // SAFETY: as for `lib`.
    unsafe { var.as_ref().and_then(|p| p.as_ref()) }
}

/// The current value of the `dbg` hook (charon swaps it for its bus logger at startup).
pub(crate) fn dbg() -> dbg_fn_t {
    let var = lookup(c"dbg") as *const dbg_fn_t;
    // SAFETY: `dbg` is a function pointer variable.
    unsafe { var.as_ref().copied().flatten() }
}

/// strongSwan >= 6.0.2: the debug group DBG_WCH (5) exists and shifts the later groups.
pub(crate) fn has_wch_group() -> bool {
    !lookup(c"library_init_register").is_null()
}

/// strongSwan >= 6.0.0: key exchanges (not 5.x's diffie_hellman_t) and their name list.
pub(crate) fn has_key_exchange_method_names() -> bool {
    !lookup(c"key_exchange_method_names").is_null()
}

/// Path of the loaded libstrongswan (found via a symbol only >= 6.0.2 exports).
pub(crate) fn libstrongswan_path() -> Option<String> {
    let sym = lookup(c"library_init_register");
    if sym.is_null() {
        return None;
    }
    // SAFETY: dladdr fills `info` for an address inside a loaded object.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(sym, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        Some(
            CStr::from_ptr(info.dli_fname)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

type EnumNamesFn = unsafe extern "C" fn(*mut enum_name_t, *mut enum_name_t);

/// `enum_add_enum_names` / `enum_remove_enum_names` and the list they edit.
pub(crate) struct EnumNames {
    pub add: EnumNamesFn,
    pub remove: EnumNamesFn,
    pub key_exchange_methods: *mut enum_name_t,
}

pub(crate) fn enum_names() -> Option<EnumNames> {
    let add = lookup(c"enum_add_enum_names");
    let remove = lookup(c"enum_remove_enum_names");
    let var = lookup(c"key_exchange_method_names") as *const *mut enum_name_t;
    if add.is_null() || remove.is_null() || var.is_null() {
        return None;
    }
    // SAFETY: both are functions with this signature in libstrongswan 6; the variable is an
    // `enum_name_t *` that is set before any plugin loads.
    unsafe {
        let list = ptr::read(var);
        (!list.is_null()).then(|| EnumNames {
            add: std::mem::transmute::<*mut c_void, EnumNamesFn>(add),
            remove: std::mem::transmute::<*mut c_void, EnumNamesFn>(remove),
            key_exchange_methods: list,
        })
    }
}

/// The libstrongswan functions a PPK lookup's answer is built with (src/ffi/ppk.rs), typed
/// by include/strongswan_abi.h's `*_fn_t` typedefs (checked against 6.1.0 by
/// tests/abi_layout.rs).
pub(crate) struct CredentialHelpers {
    pub shared_key_create: shared_key_create_fn_t,
    pub mem_cred_create: mem_cred_create_fn_t,
    pub enumerator_create_single: enumerator_create_single_fn_t,
    pub enumerator_create_nested: enumerator_create_nested_fn_t,
}

/// `name` as the bindgen function pointer type `F` (an `Option<fn>`: None when absent).
///
/// # Safety
/// `F` must be `Option<unsafe extern "C" fn(..)>` with the exported function's signature.
unsafe fn function<F: Copy>(name: &CStr) -> F {
    let address = lookup(name);
    debug_assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
    // SAFETY: an Option of a function pointer has a pointer's layout, NULL being None; the
    // caller vouches for the signature.
    unsafe { std::mem::transmute_copy(&address) }
}

/// All of [`CredentialHelpers`], or None if one is missing.
pub(crate) fn credential_helpers() -> Option<CredentialHelpers> {
    // SAFETY: libstrongswan 6 exports these functions with the signatures of their typedefs.
    let helpers = unsafe {
        CredentialHelpers {
            shared_key_create: function(c"shared_key_create"),
            mem_cred_create: function(c"mem_cred_create"),
            enumerator_create_single: function(c"enumerator_create_single"),
            enumerator_create_nested: function(c"enumerator_create_nested"),
        }
    };
    (helpers.shared_key_create.is_some()
        && helpers.mem_cred_create.is_some()
        && helpers.enumerator_create_single.is_some()
        && helpers.enumerator_create_nested.is_some())
    .then_some(helpers)
}
