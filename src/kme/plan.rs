//! Request planning: from a KME's `status` to "this many keys of that size per set, in
//! requests of at most that many keys". Checked before any key is requested, because a KME
//! consumes keys even when we then refuse its answer.

use super::json::Status;
use super::KmeError;
use crate::wire::MAX_KEY_IDS;

/// How one set of `size_bits` bits is obtained from a KME: `keys_per_set` keys of
/// `key_bits` bits each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub key_bits: u32,
    pub keys_per_set: usize,
}

/// Decides how to assemble exactly `size_bits` bits from what `status` says the KME serves:
/// one key of `size_bits` if that size is allowed, else `size_bits / key_size` keys of the
/// KME's default size. `served_bits` is the only size the KME was seen to hand out when it
/// ignored the `size` we asked for: then only keys of that size are planned. Nothing is
/// ever truncated: a size that cannot be met exactly, or that takes more keys than one KE
/// message can name ([`MAX_KEY_IDS`]), is a configuration error that says what to
/// configure instead.
pub fn plan(
    status: &Status,
    served_bits: Option<u32>,
    size_bits: u32,
    url: &str,
) -> Result<Plan, KmeError> {
    if size_bits == 0 || !size_bits.is_multiple_of(8) {
        return Err(KmeError::Config(format!(
            "key_size must be a positive multiple of 8 bits, not {size_bits}"
        )));
    }
    let default = served_bits.unwrap_or(status.key_size);
    let (min, max) = match served_bits {
        Some(bits) => (bits, bits),
        None => (
            status.min_key_size.unwrap_or(default),
            status.max_key_size.unwrap_or(default),
        ),
    };
    if default == 0 || min > max {
        return Err(KmeError::Protocol(format!(
            "KME {url} reports an unusable status (key_size {default}, min_key_size {min}, \
             max_key_size {max}); check the KME"
        )));
    }
    let plan = if (min..=max).contains(&size_bits) {
        Plan {
            key_bits: size_bits,
            keys_per_set: 1,
        }
    } else if default.is_multiple_of(8) && size_bits.is_multiple_of(default) {
        Plan {
            key_bits: default,
            keys_per_set: (size_bits / default) as usize,
        }
    } else {
        let sizes = if served_bits.is_some() {
            format!("only keys of {default} bits (it ignores the size asked for)")
        } else {
            format!("keys of {min}..{max} bits (default {default})")
        };
        return Err(KmeError::Config(format!(
            "key_size = {size_bits} cannot be served exactly by KME {url}: it hands out \
             {sizes}; configure key_size within {min}..{max} or as a multiple of {default}"
        )));
    };
    if plan.keys_per_set > MAX_KEY_IDS {
        return Err(KmeError::Config(format!(
            "key_size = {size_bits} takes {} keys of {default} bits at KME {url}, more than the \
             {MAX_KEY_IDS} key IDs one KE message carries; configure key_size at most {}",
            plan.keys_per_set,
            MAX_KEY_IDS as u64 * default as u64
        )));
    }
    Ok(plan)
}

/// Most keys one request may ask for (enc_keys and dec_keys alike); one when the KME does
/// not say.
pub fn request_limit(status: &Status, url: &str) -> Result<usize, KmeError> {
    match status.max_key_per_request.unwrap_or(1) {
        0 => Err(KmeError::Protocol(format!(
            "KME {url} reports max_key_per_request 0; check the KME"
        ))),
        n => Ok(n as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(key_size: u32, min: u32, max: u32, per_request: u32) -> Status {
        serde_json::from_value(serde_json::json!({
            "key_size": key_size, "min_key_size": min, "max_key_size": max,
            "max_key_per_request": per_request
        }))
        .unwrap()
    }

    fn plan_of(key_bits: u32, keys_per_set: usize) -> Plan {
        Plan {
            key_bits,
            keys_per_set,
        }
    }

    #[test]
    fn plan_asks_for_one_key_when_the_size_is_allowed() {
        let p = plan(&status(256, 64, 1024, 128), None, 512, "k").unwrap();
        assert_eq!(p, plan_of(512, 1));
    }

    #[test]
    fn plan_assembles_default_size_keys() {
        let p = plan(&status(128, 128, 128, 3), None, 1024, "k").unwrap();
        assert_eq!(p, plan_of(128, 8));
    }

    #[test]
    fn plan_uses_conservative_defaults_for_missing_limits() {
        let s: Status = serde_json::from_str(r#"{"key_size":256}"#).unwrap();
        assert_eq!(plan(&s, None, 256, "k").unwrap(), plan_of(256, 1));
        assert_eq!(plan(&s, None, 768, "k").unwrap(), plan_of(256, 3));
        assert_eq!(request_limit(&s, "k").unwrap(), 1);
    }

    #[test]
    fn plan_follows_the_size_a_kme_really_serves() {
        // status allows 512, but the KME was seen to hand out 256-bit keys whatever we ask.
        let s = status(256, 64, 1024, 10);
        assert_eq!(plan(&s, Some(256), 512, "k").unwrap(), plan_of(256, 2));
        match plan(&s, Some(256), 384, "https://kme") {
            Err(KmeError::Config(m)) => {
                assert!(
                    m.contains("ignores the size") && m.contains("multiple of 256"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plan_refuses_more_keys_than_one_ke_message_names() {
        // A KME reporting a 32-bit default key_size: 8192 bits would be 256 key IDs.
        let s = status(32, 32, 32, 100);
        assert_eq!(plan(&s, None, 512, "k").unwrap(), plan_of(32, 16));
        match plan(&s, None, 544, "https://kme") {
            Err(KmeError::Config(m)) => assert!(
                m.contains("17 keys") && m.contains("16 key IDs") && m.contains("at most 512"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plan_refuses_unreachable_sizes_and_says_what_to_configure() {
        match plan(&status(256, 256, 256, 10), None, 384, "https://kme") {
            Err(KmeError::Config(m)) => {
                assert!(m.contains("384") && m.contains("multiple of 256"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        for bits in [100, 0] {
            assert!(matches!(
                plan(&status(256, 64, 1024, 10), None, bits, "k"),
                Err(KmeError::Config(_))
            ));
        }
        assert!(matches!(
            request_limit(&status(256, 64, 1024, 0), "k"),
            Err(KmeError::Protocol(_))
        ));
    }
}
