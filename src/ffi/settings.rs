//! [`SettingsSource`] over strongSwan's `lib->settings`.

use super::abi::settings_t;
use crate::config::SettingsSource;
use std::ffi::{c_char, CStr, CString};
use std::ptr;

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
