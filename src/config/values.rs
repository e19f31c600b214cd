//! Parsers of single setting values (method IDs, key sizes, counts, durations, key
//! exchange method names): a value in, a typed value or a message naming the problem out.

use super::Fallback;
use std::time::Duration;

pub(super) const CURVE_25519: u16 = 31;

pub(super) fn parse_method_id(v: &str) -> Result<u16, String> {
    let id: u32 = v.parse().map_err(|_| format!("'{v}' is not a number"))?;
    match id {
        65516 | 65535 => Err(format!("{id} is used by another QKD plugin with a different wire format; pick another ID in 1025..65534")),
        1025..=65535 => Ok(id as u16),
        _ => Err(format!("{id} is outside the private-use range 1025..65535")),
    }
}

pub(super) fn parse_key_size(v: &str) -> Result<u32, String> {
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

pub(super) fn parse_count(v: &str, min: usize, max: usize, what: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{v}': use a number of {what} between {min} and {max}"
        )),
    }
}

pub(super) fn parse_fallback(v: &str) -> Result<Fallback, String> {
    match v {
        "none" => Ok(Fallback::None),
        "dh" => Ok(Fallback::Dh),
        _ => Err(format!("'{v}' is not one of: none, dh")),
    }
}

/// A flag, in the spellings strongSwan's own settings accept.
pub(super) fn parse_yes_no(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "enabled" | "1" => Ok(true),
        "no" | "false" | "disabled" | "0" => Ok(false),
        _ => Err(format!("'{v}' is not one of: yes, no")),
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

pub(super) fn parse_dh_group(v: &str) -> Result<Option<u16>, String> {
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

pub(super) fn parse_kem(v: &str) -> Result<Option<u16>, String> {
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
