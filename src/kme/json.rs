//! Parsing what a KME sends: `status`, key containers and error bodies. Pure functions on
//! bytes (fuzzed: `fuzz/fuzz_targets/kme_json.rs`); the client adds the URL to errors.
//!
//! Key material handling: the base64 strings are borrowed from the caller's (wiped) body
//! buffer, or copied into a string that is wiped when the JSON escapes characters (`\/`)
//! inside one, and decoded straight into `Zeroizing` buffers of their final size. Error
//! messages never quote a key container's content.

use super::{KeyId, QkdKey};
use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use zeroize::{Zeroize, Zeroizing};

/// Longest KME-provided text we put into an error message.
const MAX_MESSAGE: usize = 300;

/// Error `details` longer than this are left out of log lines (the `message` is kept).
const MAX_DETAILS: usize = 200;

/// A KME answer we cannot use; the text says what was wrong (never with key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// The `status` answer of a KME for one slave SAE, with the spec's JSON field names.
///
/// Only `key_size` is required: real KMEs leave fields out or send null, and the planning
/// code falls back to conservative values (only `key_size`, one key per request) when they
/// do. The counts are informational only (some KMEs cap `stored_key_count` at a small
/// number): whatever they hold, never a reason to refuse the status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    #[serde(rename = "source_KME_ID", default, deserialize_with = "opt_text")]
    pub source_kme_id: Option<String>,
    #[serde(rename = "target_KME_ID", default, deserialize_with = "opt_text")]
    pub target_kme_id: Option<String>,
    #[serde(rename = "master_SAE_ID", default, deserialize_with = "opt_text")]
    pub master_sae_id: Option<String>,
    #[serde(rename = "slave_SAE_ID", default, deserialize_with = "opt_text")]
    pub slave_sae_id: Option<String>,
    /// Default key size in bits.
    pub key_size: u32,
    #[serde(default, deserialize_with = "opt_count")]
    pub stored_key_count: Option<u64>,
    #[serde(default, deserialize_with = "opt_count")]
    pub max_key_count: Option<u64>,
    #[serde(default)]
    pub max_key_per_request: Option<u32>,
    /// Bits.
    #[serde(default)]
    pub max_key_size: Option<u32>,
    /// Bits.
    #[serde(default)]
    pub min_key_size: Option<u32>,
    #[serde(rename = "max_SAE_ID_count", default, deserialize_with = "opt_count")]
    pub max_sae_id_count: Option<u64>,
    #[serde(default)]
    pub status_extension: Option<serde_json::Value>,
}

/// KME and SAE IDs are opaque: some KMEs send them as JSON numbers.
fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Str(String),
        Num(serde_json::Number),
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| match t {
        Text::Str(s) => s,
        Text::Num(n) => n.to_string(),
    }))
}

/// An informational count: any JSON value is accepted, only a non-negative integer kept.
fn opt_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_u64())
}

/// Parses a `status` answer.
pub fn parse_status(body: &[u8]) -> Result<Status, ParseError> {
    serde_json::from_slice(body).map_err(|e| {
        ParseError(format!(
            "a status we cannot parse ({})",
            printable(&e.to_string())
        ))
    })
}

/// A base64 key string from a key container: borrowed from the (wiped) body buffer when
/// the JSON has no escapes, otherwise an owned copy that is wiped on drop.
struct SecretStr<'a>(Cow<'a, str>);

impl Drop for SecretStr<'_> {
    fn drop(&mut self) {
        if let Cow::Owned(s) = &mut self.0 {
            s.zeroize();
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for SecretStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = SecretStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(SecretStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SecretStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(SecretStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit(PhantomData))
    }
}

/// The spec's key container; extensions are ignored.
#[derive(Deserialize)]
struct KeyContainer<'a> {
    #[serde(borrow)]
    keys: Vec<WireKey<'a>>,
}

#[derive(Deserialize)]
struct WireKey<'a> {
    #[serde(rename = "key_ID")]
    key_id: String,
    #[serde(borrow)]
    key: SecretStr<'a>,
}

/// Parses a key container: key IDs as UUIDs, keys as standard padded base64 decoded
/// straight into wiped buffers. Counts and sizes are checked by the caller.
pub fn parse_keys(body: &[u8]) -> Result<Vec<QkdKey>, ParseError> {
    // serde_json's messages may quote the offending value; for a key container that could
    // be key material, so only the error class and position are reported.
    let container: KeyContainer = serde_json::from_slice(body).map_err(|e| {
        ParseError(format!(
            "an unusable key container ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    container
        .keys
        .iter()
        .map(|k| {
            let id = KeyId::parse(&k.key_id).ok_or_else(|| {
                ParseError(format!("a malformed key_ID '{}'", printable(&k.key_id)))
            })?;
            Ok(QkdKey {
                id,
                material: decode_key(&k.key.0, id)?,
            })
        })
        .collect()
}

fn decode_key(b64: &str, id: KeyId) -> Result<Zeroizing<Vec<u8>>, ParseError> {
    let engine = &base64::engine::general_purpose::STANDARD;
    // Allocated once at the largest size the string can decode to, then only shortened:
    // a growing buffer would leave copies of the key in freed memory.
    let mut material = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let len = engine
        .decode_slice(b64, &mut material[..])
        .map_err(|_| ParseError(format!("key {id} that is not valid padded base64")))?;
    material.truncate(len);
    if material.is_empty() {
        return Err(ParseError(format!("key {id} with no material")));
    }
    Ok(material)
}

/// What a KME said in a non-success answer, made printable and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorText {
    /// The spec's `message` (plus short `details`), FastAPI's `detail` (string or 422 list),
    /// an HTML page's title or text, or the raw text; empty for an empty body.
    pub text: String,
    /// The body was an HTML page (a web server or proxy answered, not the KME application).
    pub html: bool,
}

/// Reads an error body in the shapes real KMEs send: `{"message": ..., "details": [...]}`
/// (spec), `{"detail": "..."}`, `{"detail": [{"loc": [...], "msg": "..."}]}` (422), HTML
/// pages, plain text.
pub fn parse_error(body: &[u8]) -> ErrorText {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<serde_json::Value>,
        details: Option<serde_json::Value>,
        detail: Option<serde_json::Value>,
    }
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start();
    let lower_start = trimmed
        .chars()
        .take(15)
        .collect::<String>()
        .to_ascii_lowercase();
    if lower_start.starts_with("<!doctype html") || lower_start.starts_with("<html") {
        return ErrorText {
            text: printable(&html_text(trimmed)),
            html: true,
        };
    }
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message,
            details,
            detail,
        }) => {
            let mut parts = Vec::new();
            if let Some(m) = message.filter(|m| !m.is_null()) {
                parts.push(json_text(&m));
            }
            if let Some(d) = detail.filter(|d| !d.is_null()) {
                parts.push(detail_text(&d));
            }
            if let Some(d) = details
                .filter(|d| !d.is_null())
                .map(|d| d.to_string())
                .filter(|d| d.len() <= MAX_DETAILS)
            {
                parts.push(format!("details: {d}"));
            }
            if parts.is_empty() {
                "no message".to_owned()
            } else {
                parts.join("; ")
            }
        }
        Err(_) => text.trim().to_owned(),
    };
    ErrorText {
        text: printable(&text),
        html: false,
    }
}

fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// FastAPI's `detail`: a string, or for 422 a list of `{"loc": [...], "msg": "..."}`.
fn detail_text(detail: &serde_json::Value) -> String {
    match detail {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| match (item.get("loc"), item.get("msg")) {
                (Some(serde_json::Value::Array(loc)), Some(msg)) => format!(
                    "{}: {}",
                    loc.iter().map(json_text).collect::<Vec<_>>().join("."),
                    json_text(msg)
                ),
                (_, Some(msg)) => json_text(msg),
                _ => item.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => json_text(other),
    }
}

/// An HTML page's `<title>`, or else its text without tags.
fn html_text(html: &str) -> String {
    // ASCII-only lowering keeps byte offsets valid in `html`.
    let lower = html.to_ascii_lowercase();
    if let (Some(start), Some(end)) = (lower.find("<title>"), lower.find("</title>")) {
        let start = start + "<title>".len();
        if start <= end {
            let title = html[start..end].trim();
            if !title.is_empty() {
                return format!("HTML page \"{title}\"");
            }
        }
    }
    let mut text = String::with_capacity(html.len().min(4 * MAX_MESSAGE));
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    format!(
        "HTML page \"{}\"",
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// KME text goes into charon's log: one line, bounded, no control characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if text.chars().nth(MAX_MESSAGE).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_all_spec_fields_and_ignores_unknown_ones() {
        let s = parse_status(
            br#"{"source_KME_ID":"KME-A","target_KME_ID":7,"master_SAE_ID":"sae-a",
                "slave_SAE_ID":"sae-b","key_size":256,"stored_key_count":25000,
                "max_key_count":100000,"max_key_per_request":128,"max_key_size":1024,
                "min_key_size":64,"max_SAE_ID_count":0,"status_extension":{"x":1},
                "vendor_field":true}"#,
        )
        .unwrap();
        assert_eq!(s.source_kme_id.as_deref(), Some("KME-A"));
        assert_eq!(s.target_kme_id.as_deref(), Some("7"));
        assert_eq!(s.master_sae_id.as_deref(), Some("sae-a"));
        assert_eq!(s.slave_sae_id.as_deref(), Some("sae-b"));
        assert_eq!(
            (
                s.key_size,
                s.stored_key_count,
                s.max_key_count,
                s.max_key_per_request
            ),
            (256, Some(25000), Some(100000), Some(128))
        );
        assert_eq!(
            (s.min_key_size, s.max_key_size, s.max_sae_id_count),
            (Some(64), Some(1024), Some(0))
        );
        assert!(s.status_extension.is_some());
    }

    #[test]
    fn status_tolerates_missing_null_and_odd_optional_fields_but_needs_key_size() {
        let s = parse_status(br#"{"key_size":128}"#).unwrap();
        assert_eq!(s.key_size, 128);
        assert_eq!(s.max_key_per_request, None);
        let s = parse_status(
            br#"{"key_size":256,"source_KME_ID":"K","target_KME_ID":"K","stored_key_count":-1,
                "max_key_count":null,"max_key_per_request":null,"max_SAE_ID_count":"n/a",
                "status_extension":null}"#,
        )
        .unwrap();
        assert_eq!((s.stored_key_count, s.max_key_count), (None, None));
        assert!(parse_status(br#"{"max_key_size":128}"#).is_err());
        assert!(parse_status(br#"{"key_size":null}"#).is_err());
    }

    #[test]
    fn key_container_decodes_material_and_ids() {
        let body = br#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139",
            "key":"AAECAw==","key_ID_extension":null}],"key_container_extension":{}}"#;
        let keys = parse_keys(body).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys[0].id.to_string(),
            "bc490419-7d60-487f-adc1-4ddcc177c139"
        );
        assert_eq!(&keys[0].material[..], &[0, 1, 2, 3]);
        // Decoded into a buffer of its final size: no growth, no reallocation.
        assert_eq!(keys[0].material.capacity(), 4 + 2);
    }

    #[test]
    fn key_container_accepts_any_uuid_version_and_escaped_base64() {
        // Version-1 UUID, upper case; "\/" is a legal JSON escape a KME may use.
        let body =
            br#"{"keys":[{"key_ID":"C2F5E1A0-0B1C-11EF-8000-0242AC120002","key":"\/\/8="}]}"#;
        let keys = parse_keys(body).unwrap();
        assert_eq!(
            keys[0].id.to_string(),
            "c2f5e1a0-0b1c-11ef-8000-0242ac120002"
        );
        assert_eq!(&keys[0].material[..], &[0xff, 0xff]);
    }

    #[test]
    fn key_container_errors_never_quote_key_material() {
        for body in [
            &br#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139","key":"c2VjcmV0"#[..],
            br#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139","key":"c2VjcmV0!"}]}"#,
            br#"{"keys":"c2VjcmV0"}"#,
            br#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139","key":"c2VjcmV0"},{"key":"c2VjcmV0"}]}"#,
        ] {
            let e = parse_keys(body).unwrap_err();
            assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        }
    }

    #[test]
    fn key_container_rejects_bad_ids_and_unpadded_base64() {
        for body in [
            &br#"{"keys":[{"key_ID":"not-a-uuid","key":"AAECAw=="}]}"#[..],
            br#"{"keys":[{"key_ID":"bc4904197d60487fadc14ddcc177c139","key":"AAECAw=="}]}"#,
            br#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139","key":"AAECAw"}]}"#,
            br#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139","key":""}]}"#,
            br#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139","key":"AAEC-w=="}]}"#,
        ] {
            assert!(parse_keys(body).is_err());
        }
    }

    fn text(body: &str) -> String {
        parse_error(body.as_bytes()).text
    }

    #[test]
    fn error_bodies_in_every_shape_real_kmes_send_are_shown() {
        assert_eq!(
            text(r#"{"message":"key not found","details":[{"key_ID":"x"}]}"#),
            r#"key not found; details: [{"key_ID":"x"}]"#
        );
        let long = format!(
            r#"{{"message":"m","details":[{{"d":"{}"}}]}}"#,
            "x".repeat(500)
        );
        assert_eq!(text(&long), "m");
        assert_eq!(
            text(r#"{"detail":"Element not found"}"#),
            "Element not found"
        );
        assert_eq!(
            text(
                r#"{"detail":[{"loc":["path","slave_SAE_ID"],"msg":"value is not a valid integer","type":"type_error.integer"}]}"#
            ),
            "path.slave_SAE_ID: value is not a valid integer"
        );
        assert_eq!(text(r#"{"error":1}"#), "no message");
        assert_eq!(text(""), "");
        assert_eq!(text("Bad request\n"), "Bad request");
    }

    #[test]
    fn html_error_pages_are_reduced_to_their_title_or_text() {
        let e = parse_error(
            b"<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n\
              <body><center><h1>400 Bad Request</h1></center></body></html>",
        );
        assert!(e.html);
        assert_eq!(
            e.text,
            "HTML page \"400 No required SSL certificate was sent\""
        );
        let e = parse_error(
            b"<!DOCTYPE html><html><body><h1>Internal\nServer Error</h1></body></html>",
        );
        assert!(e.html);
        assert_eq!(e.text, "HTML page \"Internal Server Error\"");
        // Characters whose lower case is longer, and a closing tag before the opening one.
        let e = parse_error("<HTML><TITLE>İSTANBUL İ</TITLE></HTML>".as_bytes());
        assert_eq!(e.text, "HTML page \"İSTANBUL İ\"");
        let e = parse_error("<html>İ</title><title>x".as_bytes());
        assert_eq!(e.text, "HTML page \"İ x\"");
    }

    #[test]
    fn error_text_is_made_printable_and_bounded() {
        let body = format!("junk\n{}", "y".repeat(1000));
        let e = text(&body);
        assert!(!e.contains('\n') && e.ends_with("..."), "{e}");
        assert!(e.len() < MAX_MESSAGE + 10);
    }
}
