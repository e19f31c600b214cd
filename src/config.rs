//! Typed plugin settings (`<ns>.plugins.qkd.*` in strongswan.conf) and their validation.
//!
//! Values are read as strings through [`SettingsSource`] (strongSwan's `lib->settings` in
//! charon, a map in tests) and parsed here, so every refusal names the exact key.

use crate::ids::SaeId;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings for talking to one KME (possibly a redundant group of nodes sharing one key
/// store, see [`KmeSettings::nodes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmeSettings {
    /// Base URL up to and excluding `/api/v1/...`, e.g. `https://kme-a.example:8443`: the
    /// first (preferred) node.
    pub url: String,
    /// Further nodes of the same KME (`kme.url` is a comma-separated list), tried in this
    /// order after `url`. Same CA, certificate, key and timeout.
    pub standby_urls: Vec<String>,
    /// PEM file with the CA certificate(s) that sign the KME's server certificate.
    pub ca: String,
    /// PEM file with our SAE client certificate (chain).
    pub cert: String,
    /// PEM file with the private key of `cert`.
    pub key: String,
    /// Upper bound for one HTTP request including connect and TLS handshake.
    pub timeout: Duration,
}

impl KmeSettings {
    /// The settings of each node, in the order they are tried: one entry per URL, each
    /// without standby URLs.
    pub fn nodes(&self) -> Vec<KmeSettings> {
        std::iter::once(&self.url)
            .chain(&self.standby_urls)
            .map(|url| KmeSettings {
                url: url.clone(),
                standby_urls: Vec::new(),
                ..self.clone()
            })
            .collect()
    }
}

/// Prefix shown in messages; the real lookup goes through `lib->ns` (charon, charon-systemd).
pub const PREFIX: &str = "charon.plugins.qkd";

/// Read access to the plugin's settings section.
pub trait SettingsSource {
    /// Value of `plugins.qkd.<key>`, or of `plugins.qkd.peers.<peer>.<key>` when `peer` is
    /// given. `key` may contain dots (sub-sections); `peer` is one section name.
    fn get(&self, peer: Option<&str>, key: &str) -> Option<String>;
    /// Names of the subsections of `plugins.qkd.peers`.
    fn peers(&self) -> Vec<String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// QKD is mandatory: no key, no SA.
    None,
    /// Accept the in-method ECDH secret alone when both peers allow it.
    Dh,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fallback::None => "none",
            Fallback::Dh => "dh",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// swanctl connection name (section name under `peers`).
    pub name: String,
    pub sae_id: SaeId,
    /// If set, a responder accepts this peer's SAE ID only from this address.
    pub remote: Option<IpAddr>,
    /// KME override for this peer (else the global `kme`).
    pub kme: Option<KmeSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub sae_id: SaeId,
    pub method_id: u16,
    pub key_size: u32,
    pub fallback: Fallback,
    pub wait_timeout: Duration,
    /// strongSwan key exchange method for the in-method ECDH share; None = no ECDH.
    pub dh_group: Option<u16>,
    /// strongSwan key exchange method of the in-method post-quantum KEM (ML-KEM); its
    /// secret follows the ECDH secret. None = no KEM.
    pub kem: Option<u16>,
    /// Key sets kept ready per peer and direction: the outbound queue (our keys as master,
    /// announced to the peer) and the inbound cache (the peer's announced keys, fetched
    /// ahead). 0 = fetch on demand in the exchange.
    pub buffer: usize,
    /// Most outbound key sets per peer when the measured demand asks for more than
    /// `buffer` (and the inbound cache's bound); >= buffer.
    pub buffer_max: usize,
    /// Most outbound key sets above the `buffer` floors over all peers together (memory).
    pub buffer_total: usize,
    /// Buffered keys older than this are wiped unused (and counted as wasted).
    pub key_ttl: Duration,
    /// KME requests charon's worker threads may have in flight at once; beyond it an
    /// exchange fails fast instead of tying up another thread.
    pub max_kme_requests: usize,
    /// Where `qkdctl` reads status and metrics (a UNIX socket); None = no status socket.
    pub status_socket: Option<PathBuf>,
    pub kme: Option<KmeSettings>,
    pub peers: Vec<PeerConfig>,
}

pub const DEFAULT_METHOD_ID: u16 = 1042;
pub const DEFAULT_KEY_SIZE: u32 = 256;
const DEFAULT_KME_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_BUFFER: usize = 4;
/// Enough for ~500 new SAs/s with the KME 50 ms away (depth = demand × delay × 2).
pub const DEFAULT_BUFFER_MAX: usize = 64;
const MAX_BUFFER_MAX: usize = 4096;
/// 4096 sets of 256-bit keys: 128 KiB of key material above the floors.
pub const DEFAULT_BUFFER_TOTAL: usize = 4096;
const DEFAULT_KEY_TTL: Duration = Duration::from_secs(3600);
/// Well below charon's 16 worker threads, so DPD, rekeys and vici keep threads.
const DEFAULT_MAX_KME_REQUESTS: usize = 4;
/// The status socket's default and syntax are the status protocol's, which `qkdctl` shares.
pub use qkd_status::{parse_status_socket, DEFAULT_STATUS_SOCKET};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

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

    /// The key exchanges carried inside the qkd method, in the order their shares travel
    /// and their secrets follow the QKD key: dh_group, then kem.
    pub fn inner_methods(&self) -> Vec<u16> {
        self.dh_group.into_iter().chain(self.kem).collect()
    }

    pub fn peer_named(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    pub fn peers_with_sae<'a>(&'a self, sae: &'a SaeId) -> impl Iterator<Item = &'a PeerConfig> {
        self.peers.iter().filter(move |p| &p.sae_id == sae)
    }

    /// The KME this gateway uses for `peer`.
    pub fn kme_for<'a>(&'a self, peer: &'a PeerConfig) -> &'a KmeSettings {
        peer.kme
            .as_ref()
            .or(self.kme.as_ref())
            .expect("Config::load guarantees a KME per peer")
    }
}

const CURVE_25519: u16 = 31;

fn parse_method_id(v: &str) -> Result<u16, String> {
    let id: u32 = v.parse().map_err(|_| format!("'{v}' is not a number"))?;
    match id {
        65516 | 65535 => Err(format!("{id} is used by another QKD plugin with a different wire format; pick another ID in 1025..65534")),
        1025..=65535 => Ok(id as u16),
        _ => Err(format!("{id} is outside the private-use range 1025..65535")),
    }
}

fn parse_key_size(v: &str) -> Result<u32, String> {
    let bits: u32 = v
        .parse()
        .map_err(|_| format!("'{v}' is not a number of bits"))?;
    if !(128..=8192).contains(&bits) || !bits.is_multiple_of(8) {
        return Err(format!(
            "{bits} bits: use a multiple of 8 between 128 and 8192"
        ));
    }
    Ok(bits)
}

fn parse_count(v: &str, min: usize, max: usize, what: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{v}': use a number of {what} between {min} and {max}"
        )),
    }
}

fn parse_fallback(v: &str) -> Result<Fallback, String> {
    match v {
        "none" => Ok(Fallback::None),
        "dh" => Ok(Fallback::Dh),
        _ => Err(format!("'{v}' is not one of: none, dh")),
    }
}

/// strongSwan time syntax: a number with an optional s/m/h/d suffix.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let (num, unit) = match v
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '.')
    {
        Some((i, _)) => v.split_at(i),
        None => (v, "s"),
    };
    let factor = match unit.trim() {
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("'{v}': unknown time unit (use s, m, h or d)")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{v}' is not a duration"))?;
    // Digits and dots only, so n is finite and not negative; a century bounds the rest
    // (Duration::from_secs_f64 panics on values it cannot hold).
    let secs = n * factor;
    if secs > MAX_DURATION_SECS {
        return Err(format!("'{v}' is longer than any timeout makes sense for"));
    }
    Ok(Duration::from_secs_f64(secs))
}

const MAX_DURATION_SECS: f64 = 100.0 * 365.0 * 86400.0;

/// dh_group values and their strongSwan key exchange method numbers.
const DH_GROUPS: &[(&str, u16)] = &[
    ("curve25519", CURVE_25519),
    ("x25519", CURVE_25519),
    ("curve448", 32),
    ("x448", 32),
    ("ecp256", 19),
    ("ecp384", 20),
    ("ecp521", 21),
    ("modp2048", 14),
    ("modp3072", 15),
];

fn parse_dh_group(v: &str) -> Result<Option<u16>, String> {
    parse_method(v, DH_GROUPS)
}

/// strongSwan's numbers for ML-KEM-512/768/1024 (key_exchange_method_t).
pub const ML_KEM_512: u16 = 35;
pub const ML_KEM_768: u16 = 36;
pub const ML_KEM_1024: u16 = 37;

/// kem values: strongSwan's proposal keywords for ML-KEM.
const KEMS: &[(&str, u16)] = &[
    ("mlkem512", ML_KEM_512),
    ("mlkem768", ML_KEM_768),
    ("mlkem1024", ML_KEM_1024),
];

fn parse_kem(v: &str) -> Result<Option<u16>, String> {
    parse_method(v, KEMS)
}

fn parse_method(v: &str, known: &[(&str, u16)]) -> Result<Option<u16>, String> {
    if v == "none" {
        return Ok(None);
    }
    known
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, method)| Some(*method))
        .ok_or_else(|| {
            let names: Vec<&str> = known.iter().map(|(name, _)| *name).collect();
            format!("'{v}' is not one of: {}, none", names.join(", "))
        })
}

/// The setting value naming a key exchange method (`mlkem768`), else its number.
pub fn method_name(method: u16) -> String {
    DH_GROUPS
        .iter()
        .chain(KEMS)
        .find(|(_, m)| *m == method)
        .map_or_else(|| format!("method {method}"), |(name, _)| name.to_string())
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    pub const MINIMAL: &[(&str, &str)] = &[
        ("sae_id", "sae-a"),
        ("kme.url", "https://192.0.2.30:8443/"),
        ("kme.ca", "/etc/qkd/ca.pem"),
        ("kme.cert", "/etc/qkd/sae-a.pem"),
        ("kme.key", "/etc/qkd/sae-a.key"),
        ("peers.gw-b.sae_id", "sae-b"),
    ];

    fn load_with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut m = MapSettings::new(MINIMAL);
        for (k, v) in extra {
            if v.is_empty() {
                m.0.remove(*k);
            } else {
                m.0.insert(k.to_string(), v.to_string());
            }
        }
        Config::load(&m)
    }

    #[test]
    fn defaults() {
        let c = load_with(&[]).unwrap();
        assert_eq!(c.sae_id.as_str(), "sae-a");
        assert_eq!(c.method_id, DEFAULT_METHOD_ID);
        assert_eq!(c.key_size, 256);
        assert_eq!(c.fallback, Fallback::None);
        assert_eq!(c.wait_timeout, Duration::ZERO);
        assert_eq!(c.dh_group, Some(CURVE_25519));
        assert_eq!(c.kem, None);
        assert_eq!(c.inner_methods(), [CURVE_25519]);
        assert_eq!(c.buffer, DEFAULT_BUFFER);
        assert_eq!(c.key_ttl, Duration::from_secs(3600));
        assert_eq!(c.max_kme_requests, 4);
        assert_eq!(
            c.status_socket.as_deref(),
            Some(Path::new("/var/run/charon.qkd"))
        );
        let kme = c.kme.as_ref().unwrap();
        assert_eq!(kme.url, "https://192.0.2.30:8443");
        assert_eq!(kme.timeout, Duration::from_secs(5));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peer_named("gw-b").unwrap().sae_id.as_str(), "sae-b");
        assert_eq!(c.kme_for(&c.peers[0]).url, kme.url);
    }

    #[test]
    fn status_socket_is_a_unix_uri_or_none() {
        let c = load_with(&[("socket", "unix:///run/qkd/status")]).unwrap();
        assert_eq!(
            c.status_socket.as_deref(),
            Some(Path::new("/run/qkd/status"))
        );
        assert_eq!(
            load_with(&[("socket", "none")]).unwrap().status_socket,
            None
        );
        for bad in [
            "/run/charon.qkd",
            "unix://relative",
            "tcp://127.0.0.1:1",
            "unix://",
        ] {
            let e = load_with(&[("socket", bad)]).unwrap_err();
            assert_eq!(e.key, "socket", "{bad}");
        }
    }

    #[test]
    fn all_values() {
        let c = load_with(&[
            ("method_id", "2000"),
            ("key_size", "512"),
            ("fallback", "dh"),
            ("wait_timeout", "2m"),
            ("dh_group", "none"),
            ("kem", "mlkem1024"),
            ("buffer", "0"),
            ("key_ttl", "10m"),
            ("max_kme_requests", "1"),
            ("kme.timeout", "1.5"),
            ("peers.gw-b.remote", "192.0.2.20"),
            ("peers.gw-b.kme.url", "https://kme-x:1"),
            ("peers.gw-b.kme.ca", "ca"),
            ("peers.gw-b.kme.cert", "c"),
            ("peers.gw-b.kme.key", "k"),
        ])
        .unwrap();
        assert_eq!(
            (c.method_id, c.key_size, c.fallback),
            (2000, 512, Fallback::Dh)
        );
        assert_eq!(c.wait_timeout, Duration::from_secs(120));
        assert_eq!(c.dh_group, None);
        assert_eq!(c.inner_methods(), [ML_KEM_1024]);
        assert_eq!((c.buffer, c.max_kme_requests), (0, 1));
        assert_eq!(c.key_ttl, Duration::from_secs(600));
        assert_eq!(c.kme.as_ref().unwrap().timeout, Duration::from_millis(1500));
        let p = &c.peers[0];
        assert_eq!(p.remote, Some("192.0.2.20".parse().unwrap()));
        assert_eq!(c.kme_for(p).url, "https://kme-x:1");
    }

    #[test]
    fn inner_methods_are_dh_group_then_kem() {
        let c = load_with(&[("kem", "mlkem768")]).unwrap();
        assert_eq!(c.inner_methods(), [CURVE_25519, ML_KEM_768]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("sae_id", "")], "charon.plugins.qkd.sae_id: missing"),
            (
                &[("sae_id", "a/b")],
                "charon.plugins.qkd.sae_id: 'a/b' is not a valid SAE ID",
            ),
            (
                &[("peers.gw-b.sae_id", "..")],
                "charon.plugins.qkd.peers.gw-b.sae_id: '..' is not a valid SAE ID",
            ),
            (
                &[("method_id", "1024")],
                "charon.plugins.qkd.method_id: 1024 is outside",
            ),
            (
                &[("method_id", "65516")],
                "charon.plugins.qkd.method_id: 65516 is used by another",
            ),
            (
                &[("key_size", "100")],
                "charon.plugins.qkd.key_size: 100 bits",
            ),
            (
                &[("key_size", "257")],
                "charon.plugins.qkd.key_size: 257 bits",
            ),
            (
                &[("fallback", "yes")],
                "charon.plugins.qkd.fallback: 'yes' is not one of",
            ),
            (
                &[("wait_timeout", "5x")],
                "charon.plugins.qkd.wait_timeout: '5x': unknown time unit",
            ),
            (
                &[("dh_group", "modp1024")],
                "charon.plugins.qkd.dh_group: 'modp1024'",
            ),
            (
                &[("kem", "kyber768")],
                "charon.plugins.qkd.kem: 'kyber768' is not one of: mlkem512",
            ),
            (&[("buffer", "65")], "charon.plugins.qkd.buffer: '65'"),
            (
                &[("key_ttl", "0s")],
                "charon.plugins.qkd.key_ttl: must be longer",
            ),
            (
                &[("max_kme_requests", "0")],
                "charon.plugins.qkd.max_kme_requests: '0': use a number of requests between 1",
            ),
            (
                &[("kme.url", "http://kme:80")],
                "charon.plugins.qkd.kme.url: 'http://kme:80' must be an https://",
            ),
            (
                &[("kme.ca", "")],
                "charon.plugins.qkd.kme.ca: required with kme.url",
            ),
            (
                &[
                    ("peers.gw-b.sae_id", ""),
                    ("peers.gw-b.remote", "192.0.2.20"),
                ],
                "charon.plugins.qkd.peers.gw-b.sae_id: missing",
            ),
            (
                &[("peers.gw-b.remote", "gw-b")],
                "charon.plugins.qkd.peers.gw-b.remote: 'gw-b'",
            ),
            (
                &[("kme.url", "")],
                "charon.plugins.qkd.peers.gw-b.kme.url: no KME configured",
            ),
        ];
        for (extra, expected) in cases {
            let err = load_with(extra).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
    }

    /// Every key `Config::load` reads is documented in the shipped qkd.conf and qkd.opt.
    #[test]
    fn every_setting_is_documented() {
        struct Recording(MapSettings, std::cell::RefCell<Vec<String>>);
        impl SettingsSource for Recording {
            fn get(&self, peer: Option<&str>, key: &str) -> Option<String> {
                self.1.borrow_mut().push(match peer {
                    Some(_) => format!("peers.<conn>.{key}"),
                    None => key.to_owned(),
                });
                self.0.get(peer, key)
            }
            fn peers(&self) -> Vec<String> {
                self.0.peers()
            }
        }
        let src = Recording(MapSettings::new(MINIMAL), Default::default());
        Config::load(&src).unwrap();
        let conf = include_str!("../strongswan-conf/strongswan.d/charon/qkd.conf");
        let opt = include_str!("../strongswan-conf/qkd.opt");
        let conf_keys = documented_keys(conf);
        for key in src.1.borrow().iter() {
            // The per-peer kme section is documented as a whole (same keys as kme.*).
            let documented = key
                .strip_prefix("peers.<conn>.kme.")
                .map_or(key.clone(), |_| "peers.<conn>.kme".into());
            assert!(
                opt.contains(&format!("charon.plugins.qkd.{documented} ")),
                "{key} missing in qkd.opt"
            );
            assert!(
                conf_keys.contains(&format!("qkd.{key}")),
                "{key} missing in qkd.conf (documented there: {conf_keys:?})"
            );
        }
        assert!(src.1.borrow().len() >= 14, "read {:?}", src.1.borrow());
    }

    /// Full paths of the settings qkd.conf shows, commented out or not, with the example
    /// peer section named `<conn>`: `qkd.kme.url`, `qkd.peers.<conn>.sae_id`, ...
    fn documented_keys(conf: &str) -> Vec<String> {
        let mut sections: Vec<String> = Vec::new();
        let mut keys = Vec::new();
        for line in conf.lines() {
            let line = line.trim_start().trim_start_matches('#').trim();
            if let Some(name) = line.strip_suffix('{').map(str::trim) {
                let in_peers = sections.last().is_some_and(|s| s == "peers");
                sections.push(if in_peers {
                    "<conn>".into()
                } else {
                    name.into()
                });
            } else if line == "}" {
                sections.pop();
            } else if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && !key.contains(' ') && !sections.is_empty() {
                    keys.push(format!("{}.{key}", sections.join(".")));
                }
            }
        }
        keys
    }

    #[test]
    fn documented_keys_are_full_paths() {
        let conf = "qkd {\n  # a = 1\n  kme {\n    # url = x\n  }\n  peers {\n    # gw {\n    #   a = 2\n    # }\n  }\n}\n";
        assert_eq!(
            documented_keys(conf),
            ["qkd.a", "qkd.kme.url", "qkd.peers.<conn>.a"]
        );
    }

    #[test]
    fn kme_url_lists_the_nodes_of_one_kme_in_order() {
        let c = load_with(&[
            ("kme.url", "https://kme-a1:8443/, https://kme-a2:8443"),
            ("peers.gw-b.kme.url", "https://kme-x:1"),
            ("peers.gw-b.kme.ca", "ca"),
            ("peers.gw-b.kme.cert", "c"),
            ("peers.gw-b.kme.key", "k"),
        ])
        .unwrap();
        let kme = c.kme.as_ref().unwrap();
        let urls: Vec<_> = kme.nodes().into_iter().map(|n| n.url).collect();
        assert_eq!(urls, ["https://kme-a1:8443", "https://kme-a2:8443"]);
        assert!(kme.nodes().iter().all(|n| n.standby_urls.is_empty()
            && (&n.ca, &n.cert, &n.key, n.timeout) == (&kme.ca, &kme.cert, &kme.key, kme.timeout)));
        let one = c.kme_for(&c.peers[0]);
        assert_eq!(
            (one.url.as_str(), one.nodes().len()),
            ("https://kme-x:1", 1)
        );
        for (list, expected) in [
            (
                "https://a:1, https://a:1/",
                "charon.plugins.qkd.kme.url: 'https://a:1' is listed twice",
            ),
            (
                "https://a:1,,https://b:1",
                "charon.plugins.qkd.kme.url: '' must be an https://",
            ),
            (
                "https://a:1,http://b:1",
                "charon.plugins.qkd.kme.url: 'http://b:1' must be an https://",
            ),
        ] {
            let err = load_with(&[("kme.url", list)]).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
        let err = load_with(&[
            ("peers.gw-b.kme.url", "https://x:1,https://x:1"),
            ("peers.gw-b.kme.ca", "ca"),
            ("peers.gw-b.kme.cert", "c"),
            ("peers.gw-b.kme.key", "k"),
        ])
        .unwrap_err();
        assert_eq!(err.key, "peers.gw-b.kme.url");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("s").is_err());
        // Found by the config_parse fuzz target: from_secs_f64 used to panic on this.
        assert!(parse_duration("9".repeat(400).as_str())
            .unwrap_err()
            .contains("longer"));
    }
}
