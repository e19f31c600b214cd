//! `qkd_plugin_version`: strongSwan >= 6.0.3 loads a plugin only if this `const char *`
//! equals its own VERSION; 6.0.1 ignores it. The loader reads it right after dlopen and
//! before calling `qkd_plugin_create`, so it is set by an ELF constructor (see
//! `crate::version` for how the running version is found).

use super::symbols;
use crate::version::find_version_string;
use std::ffi::{c_char, CString};

/// Overwritten at load time; the initial value only matters where no check exists.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut qkd_plugin_version: *const c_char = c"6.0.1".as_ptr();

fn running_version() -> Option<String> {
    let path = symbols::libstrongswan_path()?;
    find_version_string(&std::fs::read(path).ok()?)
}

extern "C" fn set_plugin_version() {
    // A panic here would abort charon's dlopen: contain it (nothing to log to yet).
    let found = std::panic::catch_unwind(running_version).ok().flatten();
    if let Some(version) = found.and_then(|v| CString::new(v).ok()) {
        // SAFETY: runs once at dlopen, single-threaded, before anything reads the symbol.
        // The string is leaked on purpose: the loader keeps the pointer.
        unsafe { qkd_plugin_version = version.into_raw() };
    }
}

#[used]
#[link_section = ".init_array"]
static SET_PLUGIN_VERSION: extern "C" fn() = set_plugin_version;
