//! Which strongSwan is running, and whether this build may serve it (the ABI guard).
//!
//! Our vtable and struct layouts (include/strongswan_abi.h) are checked against real
//! strongSwan headers by tests/abi_layout.rs (6.1.0) and were verified on 6.0.1 (see
//! docs/strongswan-abi.md, "How the ABI is verified"). A release series we did not check
//! may have moved a slot: we would call the wrong function with our pointers. So the plugin
//! loads only on the [`VERIFIED_SERIES`], unless the operator overrides that with
//! [`ALLOW_UNVERIFIED_KEY`].
//!
//! strongSwan >= 6.0.3 refuses a plugin whose `<name>_plugin_version` string differs from
//! its own VERSION, and libstrongswan exports no symbol holding it: the string exists only
//! in libstrongswan's read-only data (the plugin loader compares against it). So the
//! running version is read out of the loaded libstrongswan file, and the symbol is set to
//! it only when the guard lets the plugin load.

use crate::config::PREFIX;
use std::fmt;

/// The strongSwan release series (major, minor) whose layouts were verified for this build.
pub const VERIFIED_SERIES: [(u32, u32); 2] = [(6, 0), (6, 1)];

/// Setting (under `charon.plugins.qkd`) that loads the plugin on an unverified strongSwan.
pub const ALLOW_UNVERIFIED_KEY: &str = "allow_unverified_strongswan";

/// A strongSwan VERSION string: `6.1.0`, `6.0.3rc1`, `6.1.0dr2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub text: String,
}

impl Release {
    /// Parses `MAJOR.MINOR.PATCH` (each 1-3 digits) with an optional `drN`/`rcN` suffix.
    pub fn parse(text: &str) -> Option<Release> {
        if !(5..=16).contains(&text.len()) {
            return None;
        }
        let core_end = text
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len());
        let (core, suffix) = text.split_at(core_end);
        let parts: Vec<&str> = core.split('.').collect();
        let numeric =
            |p: &&str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        let suffix_ok = suffix.is_empty()
            || ["dr", "rc"].iter().any(|tag| {
                suffix
                    .strip_prefix(tag)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
        if parts.len() != 3 || !parts.iter().all(numeric) || !suffix_ok {
            return None;
        }
        Some(Release {
            major: parts[0].parse().ok()?,
            minor: parts[1].parse().ok()?,
            text: text.to_owned(),
        })
    }
}

/// The unique strongSwan 6+ version string among the NUL-terminated strings of `image` (a
/// libstrongswan file), if there is exactly one. Major 6 and up only: older releases have
/// no version check, and version-like strings such as `2.5.4` (an OID) are not ours.
pub fn find_version(image: &[u8]) -> Option<Release> {
    let mut found: Option<Release> = None;
    for s in image.split(|&b| b == 0) {
        let Some(release) = std::str::from_utf8(s)
            .ok()
            .and_then(Release::parse)
            .filter(|r| r.major >= 6)
        else {
            continue;
        };
        match &found {
            Some(prev) if prev.text != release.text => return None,
            _ => found = Some(release),
        }
    }
    found
}

/// What the plugin could find out about the strongSwan that loaded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Running {
    /// VERSION read from the loaded libstrongswan (possible from 6.0.2 on).
    Release(Release),
    /// No `library_init_register` (added in 6.0.2) but `key_exchange_method_names` (added
    /// in 6.0.0): strongSwan 6.0.0 or 6.0.1, which have no VERSION we can locate.
    Before6_0_2,
    /// Not recognisable as strongSwan 6; the reason.
    Unknown(String),
}

impl Running {
    fn series(&self) -> Option<(u32, u32)> {
        match self {
            Running::Release(r) => Some((r.major, r.minor)),
            Running::Before6_0_2 => Some((6, 0)),
            Running::Unknown(_) => None,
        }
    }
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Running::Release(r) => write!(f, "strongSwan {}", r.text),
            Running::Before6_0_2 => f.write_str("strongSwan 6.0.0 or 6.0.1"),
            Running::Unknown(why) => write!(f, "an unrecognised strongSwan ({why})"),
        }
    }
}

/// "6.0.x and 6.1.x"
fn verified_list() -> String {
    let names: Vec<String> = VERIFIED_SERIES
        .iter()
        .map(|(major, minor)| format!("{major}.{minor}.x"))
        .collect();
    names.join(" and ")
}

/// The ABI guard's verdict, with the line to log for the two unusual cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbiGuard {
    /// A verified series: load.
    Verified,
    /// Not verified, but the operator allowed it: load and log this warning.
    Overridden { warning: String },
    /// Not verified: do not load; log this line.
    Refused { reason: String },
}

impl AbiGuard {
    pub fn loads(&self) -> bool {
        !matches!(self, AbiGuard::Refused { .. })
    }
}

/// Decides whether this build may run inside `running`.
pub fn abi_guard(running: &Running, allow_unverified: bool) -> AbiGuard {
    if running
        .series()
        .is_some_and(|series| VERIFIED_SERIES.contains(&series))
    {
        return AbiGuard::Verified;
    }
    let verified = verified_list();
    if allow_unverified {
        AbiGuard::Overridden {
            warning: format!(
                "qkd: WARNING: running {running}, but this plugin's strongSwan ABI layouts were \
                 verified only for strongSwan {verified}; loading anyway because \
                 {PREFIX}.{ALLOW_UNVERIFIED_KEY} = yes: a changed layout can crash charon or \
                 misuse keys"
            ),
        }
    } else {
        AbiGuard::Refused {
            reason: format!(
                "qkd: not loading: running {running}, but this plugin's strongSwan ABI layouts \
                 were verified only for strongSwan {verified}; use a build verified for this \
                 release, or set {PREFIX}.{ALLOW_UNVERIFIED_KEY} = yes to load it at your own risk"
            ),
        }
    }
}

/// A log format string libstrongswan's crypto tester holds only when built without
/// `TESTABLE_KE` (`configure --disable-testable-ke`, strongSwan >= 6.0.2). Such a build's
/// `key_exchange_t` has no `set_seed`: five slots where include/strongswan_abi.h declares
/// six, so charon would call our `set_seed` as `get_method` and `get_method` as `destroy`.
pub const NO_TESTABLE_KE_MARKER: &[u8] = b"passed basic test (vector tests disabled)";

/// What the loaded libstrongswan file `image` tells: the running release and the verdict.
/// A build without `TESTABLE_KE` is refused whatever the override says: its layout is known
/// to differ from ours.
pub fn inspect(image: &[u8], path: &str, allow_unverified: bool) -> (Running, AbiGuard) {
    let running = find_version(image).map_or_else(
        || Running::Unknown(format!("no unique version string in {path}")),
        Running::Release,
    );
    if image
        .windows(NO_TESTABLE_KE_MARKER.len())
        .any(|w| w == NO_TESTABLE_KE_MARKER)
    {
        let reason = format!(
            "qkd: not loading: {path} ({running}) was built without TESTABLE_KE \
             (configure --disable-testable-ke), so its key_exchange_t lacks the set_seed slot \
             this plugin's ABI declares; rebuild strongSwan with --enable-testable-ke (the \
             default, as in Debian's packages)"
        );
        return (running, AbiGuard::Refused { reason });
    }
    let guard = abi_guard(&running, allow_unverified);
    (running, guard)
}

/// What `qkd_plugin_version` should hold: the running VERSION when the plugin may load (so
/// the >= 6.0.3 loader accepts it), the verified series when it may not (so that loader's
/// own refusal reads "plugin version 6.0.x/6.1.x doesn't match version 7.0.0"). None when
/// the running VERSION is unknown: the initial value stays, which 6.0.0/6.0.1 never check
/// and a checking loader whose VERSION we cannot find refuses (the override cannot help).
pub fn plugin_version_symbol(running: &Running, guard: &AbiGuard) -> Option<String> {
    match (running, guard.loads()) {
        (Running::Release(r), true) => Some(r.text.clone()),
        (Running::Release(_), false) => Some(verified_list().replace(" and ", "/")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(text: &str) -> Running {
        Running::Release(Release::parse(text).expect("a version"))
    }

    #[test]
    fn finds_the_single_version() {
        let image = b"\x7fELF\0plugin version %s doesn't match version %s\x006.1.0\0lib\0";
        assert_eq!(
            find_version(image).map(|r| r.text).as_deref(),
            Some("6.1.0")
        );
        let rc = find_version(b"a\x006.0.3rc1\0b\x006.0.3rc1\0").unwrap();
        assert_eq!((rc.major, rc.minor, rc.text.as_str()), (6, 0, "6.0.3rc1"));
        assert_eq!(
            find_version(b"\x006.1.0dr2\0").map(|r| r.text).as_deref(),
            Some("6.1.0dr2")
        );
        assert_eq!(
            find_version(b"\x0010.12.3\0").map(|r| (r.major, r.minor)),
            Some((10, 12))
        );
    }

    #[test]
    fn refuses_ambiguity_and_lookalikes() {
        assert_eq!(find_version(b"\x006.1.0\x006.0.1\0"), None);
        for s in [
            "5.9.14", "1.2.3", "6.1", "6.1.0.1", "6.1.0x", "2.5.4.3", "6..1", "6.1.0rc", "v6.1.0",
        ] {
            let image = format!("\0{s}\0");
            assert_eq!(find_version(image.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn loads_on_the_verified_series_only() {
        for ok in ["6.0.1", "6.0.6", "6.1.0", "6.1.3rc1"] {
            assert_eq!(abi_guard(&release(ok), false), AbiGuard::Verified, "{ok}");
        }
        assert_eq!(abi_guard(&Running::Before6_0_2, false), AbiGuard::Verified);
        for refused in [
            release("6.2.0"),
            release("7.0.0"),
            release("60.1.0"),
            Running::Unknown("no key_exchange_method_names".into()),
        ] {
            let guard = abi_guard(&refused, false);
            assert!(!guard.loads(), "{refused}");
            let AbiGuard::Refused { reason } = guard else {
                unreachable!()
            };
            // The line names what runs, what was verified, and the way out.
            assert!(reason.contains(&refused.to_string()), "{reason}");
            assert!(reason.contains("6.0.x and 6.1.x"), "{reason}");
            assert!(
                reason.contains("charon.plugins.qkd.allow_unverified_strongswan = yes"),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_strongswan_without_testable_ke_is_refused_even_with_the_override() {
        let plain = b"\x7fELF\0enabled  %N[%s]: passed %u test vectors\x006.1.0\0".to_vec();
        let mut five_slots = plain.clone();
        five_slots.extend_from_slice(
            b"enabled  %N[%s]: passed basic test (vector tests disabled), %d points\0",
        );
        let path = "/usr/lib/ipsec/libstrongswan.so.0";
        assert_eq!(inspect(&plain, path, false).1, AbiGuard::Verified);
        for allow_unverified in [false, true] {
            let (running, guard) = inspect(&five_slots, path, allow_unverified);
            assert_eq!(running, release("6.1.0"));
            let AbiGuard::Refused { reason } = guard else {
                panic!("{guard:?}")
            };
            assert!(reason.contains(path), "{reason}");
            assert!(reason.contains("built without TESTABLE_KE"), "{reason}");
            assert!(reason.contains("--enable-testable-ke"), "{reason}");
        }
    }

    #[test]
    fn the_override_loads_with_a_warning() {
        let guard = abi_guard(&release("6.2.0"), true);
        let AbiGuard::Overridden { warning } = &guard else {
            panic!("{guard:?}")
        };
        assert!(guard.loads());
        assert!(
            warning.contains("WARNING: running strongSwan 6.2.0"),
            "{warning}"
        );
        assert!(warning.contains("verified only for strongSwan 6.0.x and 6.1.x"));
        // The override does not turn a verified series into a warning.
        assert_eq!(abi_guard(&release("6.1.0"), true), AbiGuard::Verified);
    }

    #[test]
    fn the_override_is_documented_with_its_default() {
        let opt = include_str!("../strongswan-conf/qkd.opt");
        let conf = include_str!("../strongswan-conf/strongswan.d/charon/qkd.conf");
        assert!(opt.contains(&format!("\n{PREFIX}.{ALLOW_UNVERIFIED_KEY} = no\n")));
        assert!(conf.contains(&format!("    # {ALLOW_UNVERIFIED_KEY} = no\n")));
    }

    #[test]
    fn the_version_symbol_matches_only_when_loading() {
        let running = release("7.0.0");
        let refused = abi_guard(&running, false);
        assert_eq!(
            plugin_version_symbol(&running, &refused).as_deref(),
            Some("6.0.x/6.1.x")
        );
        let allowed = abi_guard(&running, true);
        assert_eq!(
            plugin_version_symbol(&running, &allowed).as_deref(),
            Some("7.0.0")
        );
        let verified = release("6.1.0");
        assert_eq!(
            plugin_version_symbol(&verified, &AbiGuard::Verified).as_deref(),
            Some("6.1.0")
        );
        assert_eq!(
            plugin_version_symbol(&Running::Before6_0_2, &AbiGuard::Verified),
            None
        );
    }
}
