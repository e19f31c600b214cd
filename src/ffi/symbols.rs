//! strongSwan's globals, resolved at run time with `dlsym(RTLD_DEFAULT, ...)`.
//!
//! Linking them would make the plugin unloadable outside charon (`charon` lives in
//! libcharon) and the test binaries unlinkable; charon has loaded both libraries before it
//! dlopens us, so the lookups succeed there.

use super::abi::{daemon_t, dbg_fn_t, enum_name_t, library_t};
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
