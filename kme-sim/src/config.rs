//! Simulator configuration: the parameters of the simulated QKD link ([`SimOptions`]) and the
//! settings of `qkd-kme-sim serve` ([`ServeConfig`]), read from a TOML file and/or flags.
//!
//! Every flag has a TOML twin: `--kme-a-listen` is `listen` in the `[kme_a]` table,
//! `--key-rate` is `key_rate` in the `[link]` table, `--ca` and `--admin-listen` are top-level
//! `ca` and `admin_listen`. A flag overrides the file. Relative paths in the file are taken
//! relative to the file's directory, so a config and its certificates can move together.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::deviations::{is_integer_sae_id, DeviationSettings, Deviations};

/// Why a configuration was refused. Each message names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("missing setting {}", describe(.0))]
    Missing(&'static str),
    #[error("invalid setting {}: {reason}", describe(.setting))]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

/// Names a setting, given by its flag name, both as flag and as TOML key.
fn describe(flag: &str) -> String {
    const LINK_SETTINGS: [&str; 7] = [
        "key-size",
        "max-key-count",
        "key-rate",
        "max-key-per-request",
        "min-key-size",
        "max-key-size",
        "journal",
    ];
    const DEVIATION_SETTINGS: [&str; 1] = ["integer-sae-ids"];
    let toml = match (flag.strip_prefix("kme-a-"), flag.strip_prefix("kme-b-")) {
        (Some(key), _) => format!("[kme_a] {key}"),
        (_, Some(key)) => format!("[kme_b] {key}"),
        _ if LINK_SETTINGS.contains(&flag) => format!("[link] {flag}"),
        _ if DEVIATION_SETTINGS.contains(&flag) => format!("[deviations] {flag}"),
        _ => flag.to_owned(),
    };
    format!("--{flag} (`{}` in a config file)", toml.replace('-', "_"))
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// Parameters of the simulated QKD link, shared by both KMEs. Sizes are in bits, as in ETSI
/// GS QKD 014.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimOptions {
    /// Size of each stored key, and the `size` of a request that names none.
    pub key_size: u32,
    /// Capacity of the key pool; key generation stops while the pool is full.
    pub max_key_count: usize,
    /// Secret key rate of the link in bits per second; 0 means keys arrive only through the
    /// admin `refill` command.
    pub key_rate: u64,
    /// Most keys one enc_keys or dec_keys request may ask for.
    pub max_key_per_request: usize,
    /// Smallest `size` an enc_keys request may ask for.
    pub min_key_size: u32,
    /// Largest `size` an enc_keys request may ask for.
    pub max_key_size: u32,
    /// Remember every delivered key so the admin `journal` command can show it. This defeats
    /// the point of a key store and exists for tests and demos only.
    pub journal: bool,
    /// Deviations from the spec that both KMEs show at start (the admin `profile` command
    /// changes them at runtime).
    #[serde(skip)]
    pub deviations: Deviations,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            key_size: 256,
            max_key_count: 1000,
            key_rate: 1_000_000,
            max_key_per_request: 128,
            min_key_size: 64,
            max_key_size: 1024,
            journal: false,
            deviations: Deviations::default(),
        }
    }
}

/// Upper bound on any key size, so a typo cannot make one request allocate gigabytes.
const KEY_SIZE_LIMIT: u32 = 1 << 20;

impl SimOptions {
    /// Checks that the parameters describe a link that can serve at least its default request.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (setting, bits) in [
            ("key-size", self.key_size),
            ("min-key-size", self.min_key_size),
            ("max-key-size", self.max_key_size),
        ] {
            if bits == 0 || !bits.is_multiple_of(8) || bits > KEY_SIZE_LIMIT {
                return Err(invalid(
                    setting,
                    format!("{bits} bits: must be a non-zero multiple of 8 up to {KEY_SIZE_LIMIT}"),
                ));
            }
        }
        if self.min_key_size > self.max_key_size {
            return Err(invalid(
                "min-key-size",
                format!(
                    "{} is above max_key_size {}",
                    self.min_key_size, self.max_key_size
                ),
            ));
        }
        if !(self.min_key_size..=self.max_key_size).contains(&self.key_size) {
            return Err(invalid(
                "key-size",
                format!(
                    "{} is outside min_key_size..=max_key_size ({}..={})",
                    self.key_size, self.min_key_size, self.max_key_size
                ),
            ));
        }
        if self.max_key_count == 0 {
            return Err(invalid("max-key-count", "must be at least 1"));
        }
        if self.max_key_per_request == 0 {
            return Err(invalid("max-key-per-request", "must be at least 1"));
        }
        Ok(())
    }
}

/// One KME of the simulated link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmeConfig {
    /// The KME ID reported as source_KME_ID / target_KME_ID in `status`.
    pub id: String,
    /// Addresses it listens on (HTTPS), one or more: several stand for redundant nodes of
    /// this KME, which share its key store.
    pub listen: Vec<SocketAddr>,
    /// Server certificate chain (PEM), signed by a CA the SAEs trust.
    pub cert: PathBuf,
    /// Server private key (PEM, PKCS#8 or SEC1/PKCS#1).
    pub key: PathBuf,
    /// SAE IDs attached to this KME, matched against client certificate CNs.
    pub saes: Vec<String>,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// CA that signs the SAE client certificates.
    pub ca: PathBuf,
    pub kme_a: KmeConfig,
    pub kme_b: KmeConfig,
    /// Plain-HTTP admin listener (loopback only); none when absent.
    pub admin_listen: Option<SocketAddr>,
    pub link: SimOptions,
}

/// The TOML file, every field optional so flags can fill the gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    ca: Option<PathBuf>,
    admin_listen: Option<SocketAddr>,
    #[serde(default)]
    kme_a: KmeFile,
    #[serde(default)]
    kme_b: KmeFile,
    #[serde(default)]
    link: LinkFile,
    #[serde(default)]
    deviations: DeviationSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KmeFile {
    id: Option<String>,
    listen: Option<Listen>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    saes: Option<Vec<String>>,
}

/// `listen` in a KME table: one address or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Listen {
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

impl Listen {
    fn addrs(self) -> Vec<SocketAddr> {
        match self {
            Listen::One(addr) => vec![addr],
            Listen::Many(addrs) => addrs,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkFile {
    key_size: Option<u32>,
    max_key_count: Option<usize>,
    key_rate: Option<u64>,
    max_key_per_request: Option<usize>,
    min_key_size: Option<u32>,
    max_key_size: Option<u32>,
    journal: Option<bool>,
}

/// Flags of `qkd-kme-sim serve`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML file with the settings below (flags override it)
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// CA certificate (PEM) that signs SAE client certificates
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// KME ID of KME-A [default: KME-A]
    #[arg(long, value_name = "ID")]
    pub kme_a_id: Option<String>,
    /// Address(es) KME-A listens on (HTTPS); several (repeated or comma-separated) stand
    /// for redundant nodes of KME-A
    #[arg(long, value_name = "ADDR:PORT", value_delimiter = ',')]
    pub kme_a_listen: Option<Vec<SocketAddr>>,
    /// KME-A server certificate (PEM)
    #[arg(long, value_name = "PEM")]
    pub kme_a_cert: Option<PathBuf>,
    /// KME-A server private key (PEM)
    #[arg(long, value_name = "PEM")]
    pub kme_a_key: Option<PathBuf>,
    /// SAE IDs attached to KME-A
    #[arg(long, value_name = "ID,ID", value_delimiter = ',')]
    pub kme_a_saes: Option<Vec<String>>,
    /// KME ID of KME-B [default: KME-B]
    #[arg(long, value_name = "ID")]
    pub kme_b_id: Option<String>,
    /// Address(es) KME-B listens on (HTTPS); several (repeated or comma-separated) stand
    /// for redundant nodes of KME-B
    #[arg(long, value_name = "ADDR:PORT", value_delimiter = ',')]
    pub kme_b_listen: Option<Vec<SocketAddr>>,
    /// KME-B server certificate (PEM)
    #[arg(long, value_name = "PEM")]
    pub kme_b_cert: Option<PathBuf>,
    /// KME-B server private key (PEM)
    #[arg(long, value_name = "PEM")]
    pub kme_b_key: Option<PathBuf>,
    /// SAE IDs attached to KME-B
    #[arg(long, value_name = "ID,ID", value_delimiter = ',')]
    pub kme_b_saes: Option<Vec<String>>,
    /// Plain-HTTP admin listener for fault injection (loopback addresses only)
    #[arg(long, value_name = "127.0.0.1:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Size of each stored key in bits [default: 256]
    #[arg(long, value_name = "BITS")]
    pub key_size: Option<u32>,
    /// Capacity of the key pool [default: 1000]
    #[arg(long, value_name = "N")]
    pub max_key_count: Option<usize>,
    /// Secret key rate of the link [default: 1000000]
    #[arg(long, value_name = "BITS_PER_SECOND")]
    pub key_rate: Option<u64>,
    /// Most keys per request [default: 128]
    #[arg(long, value_name = "N")]
    pub max_key_per_request: Option<usize>,
    /// Smallest key size a request may ask for [default: 64]
    #[arg(long, value_name = "BITS")]
    pub min_key_size: Option<u32>,
    /// Largest key size a request may ask for [default: 1024]
    #[arg(long, value_name = "BITS")]
    pub max_key_size: Option<u32>,
    /// Remember delivered keys for `admin journal` (tests and demos only)
    #[arg(long)]
    pub journal: bool,
    #[command(flatten)]
    pub deviations: DeviationSettings,
}

impl ServeConfig {
    /// Builds the configuration from the optional file named by `--config` and the flags.
    pub fn load(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let (file, base) = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let file: ServeFile =
                    toml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, base)
            }
            None => (ServeFile::default(), PathBuf::new()),
        };
        Self::merge(file, &base, args)
    }

    fn merge(file: ServeFile, base: &Path, args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let from_file = |path: Option<PathBuf>| path.map(|p| base.join(p));
        let defaults = SimOptions::default();
        let link = SimOptions {
            key_size: args
                .key_size
                .or(file.link.key_size)
                .unwrap_or(defaults.key_size),
            max_key_count: args
                .max_key_count
                .or(file.link.max_key_count)
                .unwrap_or(defaults.max_key_count),
            key_rate: args
                .key_rate
                .or(file.link.key_rate)
                .unwrap_or(defaults.key_rate),
            max_key_per_request: args
                .max_key_per_request
                .or(file.link.max_key_per_request)
                .unwrap_or(defaults.max_key_per_request),
            min_key_size: args
                .min_key_size
                .or(file.link.min_key_size)
                .unwrap_or(defaults.min_key_size),
            max_key_size: args
                .max_key_size
                .or(file.link.max_key_size)
                .unwrap_or(defaults.max_key_size),
            journal: args.journal || file.link.journal.unwrap_or(defaults.journal),
            deviations: args.deviations.clone().or(file.deviations).resolve(),
        };
        link.validate()?;

        let kme_a = KmeConfig {
            id: args
                .kme_a_id
                .clone()
                .or(file.kme_a.id)
                .unwrap_or_else(|| "KME-A".into()),
            listen: args
                .kme_a_listen
                .clone()
                .or(file.kme_a.listen.map(Listen::addrs))
                .ok_or(ConfigError::Missing("kme-a-listen"))?,
            cert: args
                .kme_a_cert
                .clone()
                .or(from_file(file.kme_a.cert))
                .ok_or(ConfigError::Missing("kme-a-cert"))?,
            key: args
                .kme_a_key
                .clone()
                .or(from_file(file.kme_a.key))
                .ok_or(ConfigError::Missing("kme-a-key"))?,
            saes: args
                .kme_a_saes
                .clone()
                .or(file.kme_a.saes)
                .ok_or(ConfigError::Missing("kme-a-saes"))?,
        };
        let kme_b = KmeConfig {
            id: args
                .kme_b_id
                .clone()
                .or(file.kme_b.id)
                .unwrap_or_else(|| "KME-B".into()),
            listen: args
                .kme_b_listen
                .clone()
                .or(file.kme_b.listen.map(Listen::addrs))
                .ok_or(ConfigError::Missing("kme-b-listen"))?,
            cert: args
                .kme_b_cert
                .clone()
                .or(from_file(file.kme_b.cert))
                .ok_or(ConfigError::Missing("kme-b-cert"))?,
            key: args
                .kme_b_key
                .clone()
                .or(from_file(file.kme_b.key))
                .ok_or(ConfigError::Missing("kme-b-key"))?,
            saes: args
                .kme_b_saes
                .clone()
                .or(file.kme_b.saes)
                .ok_or(ConfigError::Missing("kme-b-saes"))?,
        };
        let config = ServeConfig {
            ca: args
                .ca
                .clone()
                .or(from_file(file.ca))
                .ok_or(ConfigError::Missing("ca"))?,
            kme_a,
            kme_b,
            admin_listen: args.admin_listen.or(file.admin_listen),
            link,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.kme_a.id == self.kme_b.id {
            return Err(invalid(
                "kme-b-id",
                format!("both KMEs are called {:?}", self.kme_a.id),
            ));
        }
        let mut addrs = HashSet::new();
        for (setting, listen) in [
            ("kme-a-listen", &self.kme_a.listen),
            ("kme-b-listen", &self.kme_b.listen),
        ] {
            if listen.is_empty() {
                return Err(invalid(setting, "no address given"));
            }
            // Port 0 (the OS picks one) is never taken twice.
            if let Some(twice) = listen.iter().find(|a| a.port() != 0 && !addrs.insert(**a)) {
                return Err(invalid(
                    setting,
                    format!("{twice} is listed twice (across both KMEs)"),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (setting, saes) in [
            ("kme-a-saes", &self.kme_a.saes),
            ("kme-b-saes", &self.kme_b.saes),
        ] {
            if saes.is_empty() {
                return Err(invalid(setting, "no SAE IDs given"));
            }
            for sae in saes {
                if sae.is_empty() {
                    return Err(invalid(setting, "empty SAE ID"));
                }
                // An SAE belongs to exactly one KME, otherwise "the other KME" is ambiguous.
                if !seen.insert(sae.as_str()) {
                    return Err(invalid(setting, format!("SAE ID {sae:?} is listed twice")));
                }
                // Such a KME could not even name this SAE in a path.
                if self.link.deviations.integer_sae_ids && !is_integer_sae_id(sae) {
                    return Err(invalid(
                        "integer-sae-ids",
                        format!("SAE ID {sae:?} of {setting} is not an integer"),
                    ));
                }
            }
        }
        if let Some(admin) = self.admin_listen {
            // The admin listener is unauthenticated plain HTTP that can read keys (journal).
            if !admin.ip().is_loopback() {
                return Err(invalid(
                    "admin-listen",
                    format!("{admin} is not a loopback address"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_args() -> ServeArgs {
        ServeArgs {
            ca: Some("ca.pem".into()),
            kme_a_listen: Some(vec!["127.0.0.1:8443".parse().unwrap()]),
            kme_a_cert: Some("a.pem".into()),
            kme_a_key: Some("a.key".into()),
            kme_a_saes: Some(vec!["sae-a".into()]),
            kme_b_listen: Some(vec!["127.0.0.1:8444".parse().unwrap()]),
            kme_b_cert: Some("b.pem".into()),
            kme_b_key: Some("b.key".into()),
            kme_b_saes: Some(vec!["sae-b".into()]),
            ..ServeArgs::default()
        }
    }

    #[test]
    fn flags_alone_make_a_config_with_defaults() {
        let config = ServeConfig::load(&full_args()).unwrap();
        assert_eq!(config.link, SimOptions::default());
        assert_eq!(config.kme_a.id, "KME-A");
        assert_eq!(config.kme_b.saes, vec!["sae-b".to_string()]);
        assert_eq!(config.admin_listen, None);
    }

    #[test]
    fn missing_setting_is_named() {
        let args = ServeArgs {
            kme_b_key: None,
            ..full_args()
        };
        let err = ServeConfig::load(&args).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing setting --kme-b-key (`[kme_b] key` in a config file)"
        );
    }

    #[test]
    fn file_paths_are_relative_to_the_file_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.toml");
        std::fs::write(
            &path,
            r#"
            ca = "certs/ca.pem"
            admin_listen = "127.0.0.1:9000"
            [kme_a]
            listen = ["127.0.0.1:8443", "127.0.0.1:8445"]
            cert = "certs/kme-a.pem"
            key = "certs/kme-a.key"
            saes = ["sae-a"]
            [kme_b]
            id = "east"
            listen = "127.0.0.1:8444"
            cert = "/abs/kme-b.pem"
            key = "certs/kme-b.key"
            saes = ["sae-b", "sae-c"]
            [link]
            key_rate = 5000
            max_key_count = 10
            "#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            max_key_count: Some(20),
            ..ServeArgs::default()
        };
        let config = ServeConfig::load(&args).unwrap();
        assert_eq!(config.ca, dir.path().join("certs/ca.pem"));
        assert_eq!(config.kme_b.cert, PathBuf::from("/abs/kme-b.pem"));
        assert_eq!(config.kme_b.id, "east");
        let a_listen: Vec<SocketAddr> = ["127.0.0.1:8443", "127.0.0.1:8445"]
            .map(|a| a.parse().unwrap())
            .into();
        assert_eq!(config.kme_a.listen, a_listen);
        assert_eq!(config.kme_b.listen, ["127.0.0.1:8444".parse().unwrap()]);
        assert_eq!(config.link.key_rate, 5000);
        assert_eq!(config.link.max_key_count, 20);
        assert_eq!(config.admin_listen, Some("127.0.0.1:9000".parse().unwrap()));
    }

    #[test]
    fn settings_are_described_as_flag_and_toml_key() {
        assert_eq!(describe("ca"), "--ca (`ca` in a config file)");
        assert_eq!(
            describe("admin-listen"),
            "--admin-listen (`admin_listen` in a config file)"
        );
        assert_eq!(
            describe("kme-a-saes"),
            "--kme-a-saes (`[kme_a] saes` in a config file)"
        );
        assert_eq!(
            describe("max-key-count"),
            "--max-key-count (`[link] max_key_count` in a config file)"
        );
        assert_eq!(
            describe("integer-sae-ids"),
            "--integer-sae-ids (`[deviations] integer_sae_ids` in a config file)"
        );
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sim.example.toml");
        let config = ServeConfig::load(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(config.link, SimOptions::default());
        assert_eq!(config.kme_b.listen, ["127.0.0.1:8444".parse().unwrap()]);
        assert!(config.kme_a.key.ends_with("pki/kme-a.key"));
    }

    #[test]
    fn deviations_come_from_profile_file_and_flags() {
        use crate::deviations::{NoKeyAnswer, Profile};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.toml");
        std::fs::write(
            &path,
            "[deviations]\nprofile = \"real-kme\"\nno_key_answer = \"400\"\nservice_time_ms = 40\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            deviations: DeviationSettings {
                integer_sae_ids: Some(false),
                service_time_ms: Some(10),
                ..DeviationSettings::default()
            },
            ..full_args()
        };
        let config = ServeConfig::load(&args).unwrap();
        assert_eq!(
            config.link.deviations,
            Deviations {
                integer_sae_ids: false,
                no_key_answer: NoKeyAnswer::TryAgain400,
                service_time_ms: 10,
                ..Profile::RealKme.deviations()
            }
        );
    }

    #[test]
    fn integer_sae_ids_need_integer_sae_ids_configured() {
        let integer = DeviationSettings {
            integer_sae_ids: Some(true),
            ..DeviationSettings::default()
        };
        let err = ServeConfig::load(&ServeArgs {
            deviations: integer.clone(),
            ..full_args()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: "integer-sae-ids",
                    ..
                }
            ),
            "{err}"
        );
        let config = ServeConfig::load(&ServeArgs {
            deviations: integer,
            kme_a_saes: Some(vec!["1".into()]),
            kme_b_saes: Some(vec!["2".into(), "3".into()]),
            ..full_args()
        })
        .unwrap();
        assert!(config.link.deviations.integer_sae_ids);
    }

    #[test]
    fn deviation_flags_parse() {
        use crate::deviations::{DecKeysPolicy, NoKeyAnswer, Profile, SizeHandling};
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            deviations: DeviationSettings,
        }
        let flags = Flags::try_parse_from([
            "serve",
            "--profile",
            "real-kme",
            "--integer-sae-ids",
            "off",
            "--html-errors",
            "--no-key-answer",
            "404",
            "--size-handling",
            "floor-to-bytes",
            "--dec-keys",
            "once-then-401",
            "--stored-key-count-cap",
            "3",
            "--service-time-ms",
            "25",
        ])
        .unwrap();
        assert_eq!(
            flags.deviations,
            DeviationSettings {
                profile: Some(Profile::RealKme),
                integer_sae_ids: Some(false),
                html_errors: Some(true),
                no_key_answer: Some(NoKeyAnswer::NotFound404),
                size_handling: Some(SizeHandling::FloorToBytes),
                dec_keys: Some(DecKeysPolicy::OnceThen401),
                stored_key_count_cap: Some(3),
                service_time_ms: Some(25),
                ..DeviationSettings::default()
            }
        );
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.toml");
        std::fs::write(&path, "[link]\nkey_rat = 5\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..full_args()
        };
        let err = ServeConfig::load(&args).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("key_rat"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        let cases: Vec<(ServeArgs, &str)> = vec![
            (
                ServeArgs {
                    key_size: Some(100),
                    ..full_args()
                },
                "key-size",
            ),
            (
                ServeArgs {
                    key_size: Some(2048),
                    ..full_args()
                },
                "key-size",
            ),
            (
                ServeArgs {
                    min_key_size: Some(512),
                    max_key_size: Some(256),
                    ..full_args()
                },
                "min-key-size",
            ),
            (
                ServeArgs {
                    max_key_count: Some(0),
                    ..full_args()
                },
                "max-key-count",
            ),
            (
                ServeArgs {
                    max_key_per_request: Some(0),
                    ..full_args()
                },
                "max-key-per-request",
            ),
            (
                ServeArgs {
                    kme_b_saes: Some(vec!["sae-a".into()]),
                    ..full_args()
                },
                "kme-b-saes",
            ),
            (
                ServeArgs {
                    kme_a_saes: Some(vec![]),
                    ..full_args()
                },
                "kme-a-saes",
            ),
            (
                ServeArgs {
                    admin_listen: Some("0.0.0.0:9000".parse().unwrap()),
                    ..full_args()
                },
                "admin-listen",
            ),
            (
                ServeArgs {
                    kme_b_listen: Some(vec!["127.0.0.1:8443".parse().unwrap()]),
                    ..full_args()
                },
                "kme-b-listen",
            ),
            (
                ServeArgs {
                    kme_a_listen: Some(vec![
                        "127.0.0.1:8443".parse().unwrap(),
                        "127.0.0.1:8443".parse().unwrap(),
                    ]),
                    ..full_args()
                },
                "kme-a-listen",
            ),
            (
                ServeArgs {
                    kme_a_listen: Some(vec![]),
                    ..full_args()
                },
                "kme-a-listen",
            ),
            (
                ServeArgs {
                    kme_b_id: Some("KME-A".into()),
                    ..full_args()
                },
                "kme-b-id",
            ),
        ];
        for (args, setting) in cases {
            match ServeConfig::load(&args) {
                Err(ConfigError::Invalid { setting: got, .. }) => assert_eq!(got, setting),
                other => panic!("expected {setting} to be refused, got {other:?}"),
            }
        }
    }
}
