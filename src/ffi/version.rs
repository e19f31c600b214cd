//! The ABI guard at the FFI edge: finds the running strongSwan, decides once whether this
//! build may serve it (`crate::version`), sets `qkd_plugin_version` accordingly and logs the
//! verdict when it is not a plain "verified".
//!
//! strongSwan >= 6.0.3 loads a plugin only if the `const char *` `qkd_plugin_version` equals
//! its own VERSION; 6.0.1 and 6.0.2 ignore it (as does the loader for a constructor found
//! through RTLD_DEFAULT). The loader reads the symbol right after dlopen and before calling
//! `qkd_plugin_create`, so it is set by an ELF constructor; `qkd_plugin_create` checks the
//! same verdict again for the loaders that never look at the symbol.

use super::settings::CharonSettings;
use super::{log as charon_log, symbols};
use crate::version::{
    abi_guard, inspect, plugin_version_symbol, AbiGuard, Running, ALLOW_UNVERIFIED_KEY,
};
use std::ffi::{c_char, CString};
use std::sync::{Once, OnceLock};

/// Overwritten at load time (see [`plugin_version_symbol`]); the initial value stays only
/// where the running VERSION cannot be found, i.e. before 6.0.2, which checks no version.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut qkd_plugin_version: *const c_char = c"6.0.1".as_ptr();

/// The running strongSwan and the verdict for it. 6.0.0/6.0.1 (no library path to read)
/// always have `set_seed`; `TESTABLE_KE` only became optional in 6.0.2.
fn inspect_running() -> (Running, AbiGuard) {
    let running = match symbols::libstrongswan_path() {
        Some(path) => match std::fs::read(&path) {
            Ok(image) => return inspect(&image, &path, allow_unverified()),
            Err(e) => Running::Unknown(format!("cannot read {path}: {e}")),
        },
        None if symbols::has_key_exchange_method_names() => Running::Before6_0_2,
        None => Running::Unknown(
            "libstrongswan exports neither library_init_register nor key_exchange_method_names"
                .into(),
        ),
    };
    let guard = abi_guard(&running, allow_unverified());
    (running, guard)
}

fn allow_unverified() -> bool {
    CharonSettings::from_lib().is_ok_and(|settings| settings.flag(ALLOW_UNVERIFIED_KEY, false))
}

/// The running strongSwan and the verdict for it, found once per process.
fn verdict() -> &'static (Running, AbiGuard) {
    static VERDICT: OnceLock<(Running, AbiGuard)> = OnceLock::new();
    VERDICT.get_or_init(inspect_running)
}

/// Whether the plugin may load; logs a refusal or an override once per process (the ELF
/// constructor and `qkd_plugin_create` both ask).
pub(crate) fn abi_allows_loading() -> bool {
    static LOGGED: Once = Once::new();
    let (_, guard) = verdict();
    LOGGED.call_once(|| {
        charon_log::install();
        match guard {
            AbiGuard::Verified => {}
            AbiGuard::Overridden { warning } => log::warn!(target: "cfg", "{warning}"),
            AbiGuard::Refused { reason } => log::error!(target: "cfg", "{reason}"),
        }
    });
    guard.loads()
}

extern "C" fn set_plugin_version() {
    // A panic here would abort charon's dlopen: contain it (there may be no logger yet).
    let _ = std::panic::catch_unwind(|| {
        // Outside strongSwan (e.g. a test binary linking the rlib) there is nothing to guard.
        if symbols::lib().is_none() {
            return;
        }
        // Logged here: a loader that refuses on the symbol never calls qkd_plugin_create.
        abi_allows_loading();
        let (running, guard) = verdict();
        if let Some(version) =
            plugin_version_symbol(running, guard).and_then(|v| CString::new(v).ok())
        {
            // SAFETY: runs once at dlopen, single-threaded, before the loader reads the
            // symbol. The string is leaked on purpose: the loader keeps the pointer.
            unsafe { qkd_plugin_version = version.into_raw() };
        }
    });
}

#[used]
#[link_section = ".init_array"]
static SET_PLUGIN_VERSION: extern "C" fn() = set_plugin_version;
