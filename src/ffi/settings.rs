//! [`SettingsSource`] over strongSwan's `lib->settings`.

use super::abi::settings_t;
use super::symbols;
use crate::config::{Config, SettingsSource};
use std::ffi::{c_char, CStr, CString};
use std::ptr;

/// The plugin's settings as charon has them now (`lib->settings`), validated.
pub(crate) fn load_config() -> Result<Config, String> {
    let settings = CharonSettings::from_lib()?;
    Config::load(&settings).map_err(|e| e.to_string())
}

pub(crate) struct CharonSettings {
    settings: *mut settings_t,
    /// `lib->ns`: "charon" or "charon-systemd" (which falls back to charon.*).
    ns: CString,
}

impl CharonSettings {
    pub(crate) fn new(settings: *mut settings_t, ns: &CStr) -> Option<CharonSettings> {
        (!settings.is_null()).then(|| CharonSettings {
            settings,
            ns: ns.to_owned(),
        })
    }

    /// `lib->settings` under `lib->ns`.
    pub(crate) fn from_lib() -> Result<CharonSettings, String> {
        let lib = symbols::lib().ok_or("libstrongswan's `lib` not found")?;
        if lib.ns.is_null() {
            return Err("lib->ns not set".into());
        }
        // SAFETY: lib->ns is non-NULL and a NUL-terminated string owned by the library.
        let ns = unsafe { CStr::from_ptr(lib.ns) };
        CharonSettings::new(lib.settings, ns).ok_or_else(|| "lib->settings not set".into())
    }

    /// `<ns>.plugins.qkd.<key>` read with strongSwan's own `get_bool`, so yes/no, true/false,
    /// enabled/disabled and 1/0 mean what they mean everywhere else in strongswan.conf.
    pub(crate) fn flag(&self, key: &str, default: bool) -> bool {
        let Ok(fmt) = CString::new(format!("%s.plugins.qkd.{key}")) else {
            return default;
        };
        // SAFETY: valid settings object; the format's one %s gets the NUL-terminated ns.
        // `key` is one of our own constants and holds no '%'.
        unsafe {
            match (*self.settings).get_bool {
                Some(get_bool) => get_bool(
                    self.settings,
                    fmt.as_ptr() as *mut _,
                    default.into(),
                    self.ns.as_ptr(),
                ),
                None => default,
            }
        }
    }

    fn string(value: *const c_char) -> Option<String> {
        // SAFETY: get_str returns NULL or a NUL-terminated string owned by the settings.
        (!value.is_null()).then(|| {
            unsafe { CStr::from_ptr(value) }
                .to_string_lossy()
                .into_owned()
        })
    }
}

impl SettingsSource for CharonSettings {
    fn get(&self, peer: Option<&str>, key: &str) -> Option<String> {
        // The key format is split on its own dots before arguments are substituted, so the
        // peer (connection) name is passed as an argument: a name with dots stays one section.
        // `key` is one of our own constants and never holds a '%'.
        // SAFETY: valid settings object; format and arguments are NUL-terminated strings
        // matching the %s conversions.
        unsafe {
            let get_str = (*self.settings).get_str?;
            match peer {
                None => {
                    let fmt = CString::new(format!("%s.plugins.qkd.{key}")).ok()?;
                    Self::string(get_str(
                        self.settings,
                        fmt.as_ptr() as *mut _,
                        ptr::null_mut(),
                        self.ns.as_ptr(),
                    ))
                }
                Some(peer) => {
                    let fmt = CString::new(format!("%s.plugins.qkd.peers.%s.{key}")).ok()?;
                    let peer = CString::new(peer).ok()?;
                    Self::string(get_str(
                        self.settings,
                        fmt.as_ptr() as *mut _,
                        ptr::null_mut(),
                        self.ns.as_ptr(),
                        peer.as_ptr(),
                    ))
                }
            }
        }
    }

    fn peers(&self) -> Vec<String> {
        let mut names = Vec::new();
        // SAFETY: the section enumerator yields `char *` names valid until the next call;
        // we copy each and destroy the enumerator.
        unsafe {
            let Some(create) = (*self.settings).create_section_enumerator else {
                return names;
            };
            let e = create(
                self.settings,
                c"%s.plugins.qkd.peers".as_ptr() as *mut _,
                self.ns.as_ptr(),
            );
            if e.is_null() {
                return names;
            }
            if let Some(enumerate) = (*e).enumerate {
                let mut name: *const c_char = ptr::null();
                while enumerate(e, &mut name as *mut *const c_char) {
                    names.extend(Self::string(name));
                }
            }
            if let Some(destroy) = (*e).destroy {
                destroy(e);
            }
        }
        names
    }
}
