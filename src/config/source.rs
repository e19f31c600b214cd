//! Where setting values come from: the [`SettingsSource`] trait (charon's `lib->settings`
//! in `ffi`) and [`MapSettings`], the source of tests, benches and the fuzz target.

use std::collections::BTreeMap;

/// Read access to the plugin's settings section.
pub trait SettingsSource {
    /// Value of `plugins.qkd.<key>`, or of `plugins.qkd.peers.<peer>.<key>` when `peer` is
    /// given. `key` may contain dots (sub-sections); `peer` is one section name.
    fn get(&self, peer: Option<&str>, key: &str) -> Option<String>;
    /// Names of the subsections of `plugins.qkd.peers`.
    fn peers(&self) -> Vec<String>;
}

/// Settings as flat `key = value` pairs relative to `plugins.qkd` (`peers.<name>.<key>` for
/// peer sections): the [`SettingsSource`] of tests, benches and the fuzz target.
#[derive(Debug, Clone, Default)]
pub struct MapSettings(pub BTreeMap<String, String>);

impl MapSettings {
    pub fn new(pairs: &[(&str, &str)]) -> MapSettings {
        MapSettings(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// One `key=value` per line; lines without `=` are skipped.
    pub fn from_lines(text: &str) -> MapSettings {
        MapSettings(
            text.lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl SettingsSource for MapSettings {
    fn get(&self, peer: Option<&str>, key: &str) -> Option<String> {
        let full = match peer {
            Some(p) => format!("peers.{p}.{key}"),
            None => key.to_owned(),
        };
        self.0.get(&full).cloned()
    }

    fn peers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .0
            .keys()
            .filter_map(|k| {
                k.strip_prefix("peers.")?
                    .split('.')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        names.dedup();
        names
    }
}
