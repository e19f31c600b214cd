//! The settings parser, fed with `key=value` lines (`peers.<name>.<key>` for peer sections).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use strongswan_qkd::config::{Config, SettingsSource};

/// Settings as charon's `lib->settings` would hold them, from the fuzz input's lines.
struct MapSettings {
    global: BTreeMap<String, String>,
    peers: BTreeMap<String, BTreeMap<String, String>>,
}

impl MapSettings {
    fn from_lines(text: &str) -> MapSettings {
        let mut settings = MapSettings {
            global: BTreeMap::new(),
            peers: BTreeMap::new(),
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key.strip_prefix("peers.").and_then(|k| k.split_once('.')) {
                Some((peer, key)) => {
                    settings
                        .peers
                        .entry(peer.to_owned())
                        .or_default()
                        .insert(key.to_owned(), value.to_owned());
                }
                None => {
                    settings.global.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        settings
    }
}

impl SettingsSource for MapSettings {
    fn get(&self, peer: Option<&str>, key: &str) -> Option<String> {
        match peer {
            Some(peer) => self.peers.get(peer)?.get(key).cloned(),
            None => self.global.get(key).cloned(),
        }
    }

    fn peers(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::load(&MapSettings::from_lines(text));
    }
});
