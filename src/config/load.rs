//! From a [`SettingsSource`] to a validated [`Config`]: each key read in its scope (global
//! or one peer) and parsed, every refusal naming the full key.

use super::values::{
    parse_count, parse_dh_group, parse_fallback, parse_kem, parse_key_size, parse_method_id,
    parse_yes_no, CURVE_25519,
};
use super::*;
use std::net::IpAddr;

/// Typed reads for one scope (global or one peer) that report the full key on error.
struct Scope<'a> {
    src: &'a dyn SettingsSource,
    peer: Option<&'a str>,
}

impl Scope<'_> {
    fn path(&self, key: &str) -> String {
        match self.peer {
            Some(p) => format!("peers.{p}.{key}"),
            None => key.to_owned(),
        }
    }

    fn error(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            key: self.path(key),
            problem: problem.into(),
        }
    }

    fn str(&self, key: &str) -> Option<String> {
        self.src
            .get(self.peer, key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.str(key)
            .map(|v| parse(&v).map_err(|e| self.error(key, e)))
            .transpose()
    }

    fn kme(&self) -> Result<Option<KmeSettings>, ConfigError> {
        let Some(list) = self.str("kme.url") else {
            return Ok(None);
        };
        let mut urls: Vec<String> = Vec::new();
        for url in list.split(',').map(str::trim) {
            if !url.starts_with("https://") {
                return Err(self.error(
                    "kme.url",
                    format!("'{url}' must be an https:// URL (ETSI GS QKD 014 requires TLS)"),
                ));
            }
            let url = url.trim_end_matches('/').to_owned();
            if urls.contains(&url) {
                return Err(self.error(
                    "kme.url",
                    format!("'{url}' is listed twice: name each node of the KME once"),
                ));
            }
            urls.push(url);
        }
        let url = urls.remove(0);
        let file = |key: &str| {
            self.str(key)
                .ok_or_else(|| self.error(key, "required with kme.url (PEM file for mutual TLS)"))
        };
        Ok(Some(KmeSettings {
            url,
            standby_urls: urls,
            ca: file("kme.ca")?,
            cert: file("kme.cert")?,
            key: file("kme.key")?,
            timeout: self
                .parse("kme.timeout", parse_duration)?
                .unwrap_or(DEFAULT_KME_TIMEOUT),
        }))
    }
}

impl Config {
    pub fn load(src: &dyn SettingsSource) -> Result<Config, ConfigError> {
        let global = Scope { src, peer: None };
        let sae_id = global.parse("sae_id", SaeId::new)?.ok_or_else(|| {
            global.error(
                "sae_id",
                "missing: set this gateway's SAE ID as known to its KME",
            )
        })?;
        let method_id = global
            .parse("method_id", parse_method_id)?
            .unwrap_or(DEFAULT_METHOD_ID);
        let key_size = global
            .parse("key_size", parse_key_size)?
            .unwrap_or(DEFAULT_KEY_SIZE);
        let fallback = global
            .parse("fallback", parse_fallback)?
            .unwrap_or(Fallback::None);
        let wait_timeout = global
            .parse("wait_timeout", parse_duration)?
            .unwrap_or(Duration::ZERO);
        let dh_group = global
            .parse("dh_group", parse_dh_group)?
            .unwrap_or(Some(CURVE_25519));
        let kem = global.parse("kem", parse_kem)?.unwrap_or(None);
        let buffer = global
            .parse("buffer", |v| parse_count(v, 0, 64, "key sets"))?
            .unwrap_or(DEFAULT_BUFFER);
        let buffer_max = global
            .parse("buffer_max", |v| {
                parse_count(v, 0, MAX_BUFFER_MAX, "key sets")
            })?
            .unwrap_or(DEFAULT_BUFFER_MAX);
        if buffer_max < buffer {
            return Err(global.error(
                "buffer_max",
                format!("{buffer_max} is below buffer = {buffer}; set buffer_max >= buffer"),
            ));
        }
        let buffer_total = global
            .parse("buffer_total", |v| parse_count(v, 0, 1 << 20, "key sets"))?
            .unwrap_or(DEFAULT_BUFFER_TOTAL);
        let key_ttl = global
            .parse("key_ttl", parse_duration)?
            .unwrap_or(DEFAULT_KEY_TTL);
        if key_ttl.is_zero() {
            return Err(global.error("key_ttl", "must be longer than 0s"));
        }
        let max_kme_requests = global
            .parse("max_kme_requests", |v| parse_count(v, 1, 64, "requests"))?
            .unwrap_or(DEFAULT_MAX_KME_REQUESTS);
        let status_socket = global
            .parse("socket", parse_status_socket)?
            .unwrap_or_else(|| parse_status_socket(DEFAULT_STATUS_SOCKET).expect("valid default"));
        let kme = global.kme()?;

        let mut peers = Vec::new();
        for name in src.peers() {
            let scope = Scope {
                src,
                peer: Some(&name),
            };
            let sae_id = scope
                .parse("sae_id", SaeId::new)?
                .ok_or_else(|| scope.error("sae_id", "missing: the peer gateway's SAE ID"))?;
            let remote = scope.parse("remote", |v| {
                v.parse::<IpAddr>().map_err(|e| format!("'{v}': {e}"))
            })?;
            let ppk = scope.parse("ppk", parse_yes_no)?.unwrap_or(false);
            let peer_kme = scope.kme()?;
            if peer_kme.is_none() && kme.is_none() {
                return Err(scope.error(
                    "kme.url",
                    "no KME configured: set kme.url globally or for this peer",
                ));
            }
            peers.push(PeerConfig {
                name,
                sae_id,
                remote,
                kme: peer_kme,
                ppk,
            });
        }
        if kme.is_none() && peers.is_empty() {
            return Err(global.error(
                "kme.url",
                "missing: the URL of this gateway's KME (https://host:port)",
            ));
        }
        Ok(Config {
            sae_id,
            method_id,
            key_size,
            fallback,
            wait_timeout,
            dh_group,
            kem,
            buffer,
            buffer_max,
            buffer_total,
            key_ttl,
            max_kme_requests,
            status_socket,
            kme,
            peers,
        })
    }
}
