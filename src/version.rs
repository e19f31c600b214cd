//! Finding the running strongSwan version, which `qkd_plugin_version` must equal.
//!
//! strongSwan >= 6.0.3 refuses a plugin whose `<name>_plugin_version` string differs from
//! its own VERSION, and libstrongswan exports no symbol holding it: the string exists only
//! in libstrongswan's read-only data (the plugin loader compares against it). So one plugin
//! build serves every 6.x by reading that constant out of the loaded libstrongswan file.

/// The unique version-shaped string (`6.1.0`, `6.0.3rc1`, `6.1.0dr2`) among the
/// NUL-terminated strings of `image`, if there is exactly one.
pub fn find_version_string(image: &[u8]) -> Option<String> {
    let mut found: Option<&[u8]> = None;
    for s in image.split(|&b| b == 0) {
        if is_version(s) {
            match found {
                Some(prev) if prev != s => return None,
                _ => found = Some(s),
            }
        }
    }
    found.map(|s| String::from_utf8_lossy(s).into_owned())
}

fn is_version(s: &[u8]) -> bool {
    let text = match std::str::from_utf8(s) {
        Ok(t) if (5..=16).contains(&t.len()) => t,
        _ => return false,
    };
    let core_end = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (core, suffix) = text.split_at(core_end);
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
    let suffix_ok = suffix.is_empty()
        || ["dr", "rc"].iter().any(|tag| {
            suffix
                .strip_prefix(tag)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    // Major 6 and up: the version check exists only there.
    parts.len() == 3
        && parts.iter().all(numeric)
        && parts[0].parse::<u32>().is_ok_and(|m| m >= 6)
        && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_single_version() {
        let image = b"\x7fELF\0plugin version %s doesn't match version %s\x006.1.0\0lib\0";
        assert_eq!(find_version_string(image).as_deref(), Some("6.1.0"));
        assert_eq!(
            find_version_string(b"a\x006.0.3rc1\0b\x006.0.3rc1\0").as_deref(),
            Some("6.0.3rc1")
        );
        assert_eq!(
            find_version_string(b"\x006.1.0dr2\0").as_deref(),
            Some("6.1.0dr2")
        );
    }

    #[test]
    fn refuses_ambiguity_and_lookalikes() {
        assert_eq!(find_version_string(b"\x006.1.0\x006.0.1\0"), None);
        for s in [
            "5.9.14", "1.2.3", "6.1", "6.1.0.1", "6.1.0x", "2.5.4.3", "6..1", "6.1.0rc", "v6.1.0",
        ] {
            let image = format!("\0{s}\0");
            assert_eq!(find_version_string(image.as_bytes()), None, "{s}");
        }
    }
}
