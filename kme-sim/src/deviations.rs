//! Deviations from ETSI GS QKD 014 that KMEs in the field show (see the repository's
//! docs/real-kmes.md), so that clients can be tested against them without those KMEs.
//!
//! Each deviation is off by default: the simulator is spec-conformant unless told otherwise.
//! [`Profile::RealKme`] bundles the behaviour of the KME described in issue 8; single
//! deviations can be added to or taken out of a profile ([`DeviationSettings`]), by flag, in
//! the `[deviations]` table of a config file, or at runtime with the admin `profile` command.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How enc_keys treats the `size` a master asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SizeHandling {
    /// Keys of the size asked for; 400 for a non-multiple of 8 or a size out of range.
    #[default]
    Spec,
    /// Always `key_size` bits, whatever was asked for.
    Ignored,
    /// A non-multiple of 8 is floored to whole bytes instead of refused.
    FloorToBytes,
}

/// What a KME with too few keys answers to enc_keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NoKeyAnswer {
    /// 503 `not enough keys available on KME`.
    #[default]
    #[value(name = "503")]
    #[serde(rename = "503")]
    Unavailable503,
    /// 404 `Element not found`.
    #[value(name = "404")]
    #[serde(rename = "404")]
    NotFound404,
    /// 400 `Not enough keys available. Try again later.`
    #[value(name = "400")]
    #[serde(rename = "400")]
    TryAgain400,
}

/// The shape of JSON error bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorBodyStyle {
    /// `{"message": ..., "details": [...]}`.
    #[default]
    Spec,
    /// FastAPI's: `{"detail": "..."}`, and 422 `{"detail": [{"loc", "msg", "type"}]}` for a
    /// request that does not parse.
    Detail,
}

/// How often the slave may fetch a key with dec_keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DecKeysPolicy {
    /// Once; later, and for unknown key IDs, 400.
    #[default]
    Once,
    /// Again and again: the KME never erases a key handed to the slave.
    Repeatable,
    /// Once; later, and for unknown key IDs, 401 instead of 400.
    #[value(name = "once-then-401")]
    #[serde(rename = "once-then-401")]
    OnceThen401,
}

/// The behaviour profiles `--profile` selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// ETSI GS QKD 014 as written.
    #[default]
    Spec,
    /// The KME of issue 8 (a FastAPI KME): integer SAE IDs, `size` ignored, 404 when empty,
    /// `{"detail"}` errors, repeatable dec_keys, `stored_key_count` capped at 5, odd status
    /// fields, 25 ms per request.
    RealKme,
}

/// `stored_key_count` that the real-KME profile reports at most.
const REAL_KME_STORED_KEY_COUNT_CAP: usize = 5;

/// Service time per request of the real-KME profile (the median seen on real KMEs).
const REAL_KME_SERVICE_TIME_MS: u64 = 25;

/// The deviations in force. Everything off is the spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Deviations {
    /// SAE IDs in paths must be integers: a name gets a bare `400 Bad request`, an unknown
    /// number 500. (The configured SAE IDs must then be integers too.)
    pub integer_sae_ids: bool,
    pub size_handling: SizeHandling,
    pub no_key_answer: NoKeyAnswer,
    pub error_body: ErrorBodyStyle,
    /// 401 and 500 are answered with an HTML page instead of JSON.
    pub html_errors: bool,
    pub dec_keys: DecKeysPolicy,
    /// `status` reports at most this `stored_key_count`.
    pub stored_key_count_cap: Option<usize>,
    /// `status` reports the KME's own ID as `target_KME_ID` too.
    pub same_kme_ids: bool,
    /// `status` carries a null `status_extension` and vendor fields.
    pub status_extensions: bool,
    /// Each enc_keys erases the keys of the same master and slave that the slave has not
    /// fetched yet.
    pub replace_unfetched: bool,
    /// Time each ETSI request takes before it is answered, on top of the `latency` fault.
    pub service_time_ms: u64,
}

impl Profile {
    pub fn deviations(self) -> Deviations {
        match self {
            Profile::Spec => Deviations::default(),
            Profile::RealKme => Deviations {
                integer_sae_ids: true,
                size_handling: SizeHandling::Ignored,
                no_key_answer: NoKeyAnswer::NotFound404,
                error_body: ErrorBodyStyle::Detail,
                html_errors: false,
                dec_keys: DecKeysPolicy::Repeatable,
                stored_key_count_cap: Some(REAL_KME_STORED_KEY_COUNT_CAP),
                same_kme_ids: true,
                status_extensions: true,
                replace_unfetched: false,
                service_time_ms: REAL_KME_SERVICE_TIME_MS,
            },
        }
    }
}

impl Deviations {
    pub fn service_time(&self) -> Duration {
        Duration::from_millis(self.service_time_ms)
    }
}

/// A profile plus single deviations that override it: the flags of `serve` and the
/// `[deviations]` table of its config file. Switches take `on`/`off`; a bare switch flag
/// means `on`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct DeviationSettings {
    /// Behaviour bundle; the flags below override single parts of it [default: spec]
    #[arg(long, value_enum, value_name = "PROFILE")]
    pub profile: Option<Profile>,
    /// Path SAE IDs must be integers (name: bare 400, unknown number: 500)
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on", value_parser = parse_switch)]
    pub integer_sae_ids: Option<bool>,
    /// What enc_keys does with `size`
    #[arg(long, value_enum, value_name = "HOW")]
    pub size_handling: Option<SizeHandling>,
    /// Status code of enc_keys when the pool has too few keys
    #[arg(long, value_enum, value_name = "CODE")]
    pub no_key_answer: Option<NoKeyAnswer>,
    /// Shape of JSON error bodies
    #[arg(long, value_enum, value_name = "STYLE")]
    pub error_body: Option<ErrorBodyStyle>,
    /// Answer 401 and 500 with HTML pages
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on", value_parser = parse_switch)]
    pub html_errors: Option<bool>,
    /// How often the slave may fetch a key
    #[arg(long, value_enum, value_name = "POLICY")]
    pub dec_keys: Option<DecKeysPolicy>,
    /// Highest stored_key_count that status reports
    #[arg(long, value_name = "N")]
    pub stored_key_count_cap: Option<usize>,
    /// status names the KME itself as target_KME_ID
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on", value_parser = parse_switch)]
    pub same_kme_ids: Option<bool>,
    /// status carries null and vendor extension fields
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on", value_parser = parse_switch)]
    pub status_extensions: Option<bool>,
    /// Each enc_keys erases the keys its slave has not fetched yet
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on", value_parser = parse_switch)]
    pub replace_unfetched: Option<bool>,
    /// Milliseconds each ETSI request takes
    #[arg(long, value_name = "MS")]
    pub service_time_ms: Option<u64>,
}

/// `on`/`off` for switch flags and admin commands.
pub fn parse_switch(word: &str) -> Result<bool, String> {
    match word {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, not {word:?}")),
    }
}

impl DeviationSettings {
    /// These settings where given, `fallback` where not (flags over the config file).
    pub fn or(self, fallback: DeviationSettings) -> DeviationSettings {
        DeviationSettings {
            profile: self.profile.or(fallback.profile),
            integer_sae_ids: self.integer_sae_ids.or(fallback.integer_sae_ids),
            size_handling: self.size_handling.or(fallback.size_handling),
            no_key_answer: self.no_key_answer.or(fallback.no_key_answer),
            error_body: self.error_body.or(fallback.error_body),
            html_errors: self.html_errors.or(fallback.html_errors),
            dec_keys: self.dec_keys.or(fallback.dec_keys),
            stored_key_count_cap: self.stored_key_count_cap.or(fallback.stored_key_count_cap),
            same_kme_ids: self.same_kme_ids.or(fallback.same_kme_ids),
            status_extensions: self.status_extensions.or(fallback.status_extensions),
            replace_unfetched: self.replace_unfetched.or(fallback.replace_unfetched),
            service_time_ms: self.service_time_ms.or(fallback.service_time_ms),
        }
    }

    /// The profile's deviations with the single settings applied.
    pub fn resolve(&self) -> Deviations {
        let base = self.profile.unwrap_or_default().deviations();
        Deviations {
            integer_sae_ids: self.integer_sae_ids.unwrap_or(base.integer_sae_ids),
            size_handling: self.size_handling.unwrap_or(base.size_handling),
            no_key_answer: self.no_key_answer.unwrap_or(base.no_key_answer),
            error_body: self.error_body.unwrap_or(base.error_body),
            html_errors: self.html_errors.unwrap_or(base.html_errors),
            dec_keys: self.dec_keys.unwrap_or(base.dec_keys),
            stored_key_count_cap: self.stored_key_count_cap.or(base.stored_key_count_cap),
            same_kme_ids: self.same_kme_ids.unwrap_or(base.same_kme_ids),
            status_extensions: self.status_extensions.unwrap_or(base.status_extensions),
            replace_unfetched: self.replace_unfetched.unwrap_or(base.replace_unfetched),
            service_time_ms: self.service_time_ms.unwrap_or(base.service_time_ms),
        }
    }
}

/// Whether `sae` is an SAE ID as the integer-SAE-ID KME takes them.
pub fn is_integer_sae_id(sae: &str) -> bool {
    !sae.is_empty() && sae.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_settings_override_the_profile_and_flags_override_the_file() {
        let file = DeviationSettings {
            profile: Some(Profile::RealKme),
            dec_keys: Some(DecKeysPolicy::OnceThen401),
            ..DeviationSettings::default()
        };
        let flags = DeviationSettings {
            integer_sae_ids: Some(false),
            dec_keys: Some(DecKeysPolicy::Once),
            ..DeviationSettings::default()
        };
        let resolved = flags.or(file).resolve();
        assert_eq!(
            resolved,
            Deviations {
                integer_sae_ids: false,
                dec_keys: DecKeysPolicy::Once,
                ..Profile::RealKme.deviations()
            }
        );
        assert_eq!(
            DeviationSettings::default().resolve(),
            Deviations::default()
        );
    }

    #[test]
    fn integer_sae_ids_are_digits_only() {
        assert!(is_integer_sae_id("17"));
        assert!(!is_integer_sae_id(""));
        assert!(!is_integer_sae_id("sae-a"));
        assert!(!is_integer_sae_id("-1"));
    }

    #[test]
    fn switch_words() {
        assert_eq!(parse_switch("on"), Ok(true));
        assert_eq!(parse_switch("off"), Ok(false));
        assert!(parse_switch("yes").is_err());
    }
}
