//! ETSI GS QKD 014 v1.1.1 REST client (the SAE side): `status`, `enc_keys`, `dec_keys`.
//!
//! HTTPS with mutual TLS through reqwest's blocking client on a rustls configuration we
//! build ourselves with the *ring* provider, so no OpenSSL is ever loaded into charon and
//! no process-wide default crypto provider is needed. One `reqwest::blocking::Client` per
//! KME keeps connections alive between requests; it is `Send + Sync` and is called from
//! charon's worker threads directly (never from inside a tokio runtime, where reqwest's
//! blocking client panics).
//!
//! Key material handling: response bodies are read into a buffer that is wiped when dropped
//! (and when it grows), the base64 strings are borrowed from that buffer (or copied into a
//! string that is wiped) and decoded straight into `Zeroizing` buffers. What we cannot
//! reach: plaintext held in hyper's/rustls' internal read buffers, and serde_json's scratch
//! buffer in the rare case a KME escapes characters (`\/`) inside a base64 string.

use super::{KeyId, KeySource, KmeError, KmeSettings, QkdKey, SaeId};
use base64::Engine as _;
use reqwest::blocking::{Client, Response};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::{Zeroize, Zeroizing};

/// Bound on any KME response body. 128 keys of 1024 bits are about 30 KiB of JSON; a KME
/// sending more than this is broken or hostile, and we do not buffer it.
const MAX_BODY: usize = 1 << 20;

/// Error `details` longer than this are left out of log lines (the `message` is kept).
const MAX_DETAILS: usize = 200;

/// Longest KME-provided text we put into an error message.
const MAX_MESSAGE: usize = 300;

/// The rustls client configuration for one KME: its CA, our SAE certificate and key.
///
/// Loading it separately from [`Etsi014Client`] lets the plugin check the PEM files at
/// load/reload time and name the offending setting.
pub struct KmeTlsConfig {
    config: rustls::ClientConfig,
}

impl KmeTlsConfig {
    /// Reads `settings.ca`, `settings.cert` and `settings.key` (PEM) and builds a TLS 1.2/1.3
    /// client configuration that trusts only that CA and authenticates with that certificate.
    pub fn load(settings: &KmeSettings) -> Result<KmeTlsConfig, KmeError> {
        let mut roots = rustls::RootCertStore::empty();
        for (n, ca) in read_certs("kme.ca", &settings.ca)?.into_iter().enumerate() {
            roots.add(ca).map_err(|e| {
                KmeError::Config(format!(
                    "kme.ca: certificate #{} in '{}' is not usable as a trust anchor: {e}",
                    n + 1,
                    settings.ca
                ))
            })?;
        }
        let chain = read_certs("kme.cert", &settings.cert)?;
        let key = read_key(&settings.key)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KmeError::Config(format!("TLS setup for the KME failed: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                KmeError::Config(format!(
                    "kme.cert / kme.key: '{}' and '{}' do not form a usable client identity: {e}",
                    settings.cert, settings.key
                ))
            })?;
        Ok(KmeTlsConfig { config })
    }
}

fn read_certs(
    setting: &str,
    path: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, KmeError> {
    let file = std::fs::File::open(path)
        .map_err(|e| KmeError::Config(format!("{setting}: cannot open '{path}': {e}")))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KmeError::Config(format!("{setting}: cannot read PEM from '{path}': {e}")))?;
    if certs.is_empty() {
        return Err(KmeError::Config(format!(
            "{setting}: '{path}' contains no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

fn read_key(path: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, KmeError> {
    // The file holds our private key: keep its bytes in a buffer that is wiped afterwards.
    let pem = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| KmeError::Config(format!("kme.key: cannot read '{path}': {e}")))?,
    );
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| KmeError::Config(format!("kme.key: cannot read PEM from '{path}': {e}")))?
        .ok_or_else(|| {
            KmeError::Config(format!(
                "kme.key: '{path}' contains no private key (PKCS#8, PKCS#1 or SEC1 PEM)"
            ))
        })
}

/// The `status` answer of a KME for one slave SAE, with the spec's JSON field names.
///
/// Only `key_size` is required: real KMEs leave fields out, and the planning code falls
/// back to conservative values (only `key_size`, one key per request) when they do.
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
    #[serde(default)]
    pub stored_key_count: Option<u64>,
    #[serde(default)]
    pub max_key_count: Option<u64>,
    #[serde(default)]
    pub max_key_per_request: Option<u32>,
    /// Bits.
    #[serde(default)]
    pub max_key_size: Option<u32>,
    /// Bits.
    #[serde(default)]
    pub min_key_size: Option<u32>,
    #[serde(rename = "max_SAE_ID_count", default)]
    pub max_sae_id_count: Option<u32>,
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

/// How `size_bits` of key material are obtained from a KME: `requests[i]` keys of
/// `key_bits` bits each in request `i`.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    key_bits: u32,
    requests: Vec<u32>,
}

impl Plan {
    fn key_count(&self) -> usize {
        self.requests.iter().map(|&n| n as usize).sum()
    }
}

/// Decides how to assemble exactly `size_bits` bits from what `status` says the KME serves:
/// one key of `size_bits` if that size is allowed, else `size_bits / key_size` keys of the
/// KME's default size spread over requests of at most `max_key_per_request` keys. Nothing
/// is ever truncated: a size that cannot be met exactly is a configuration error that says
/// what to configure instead.
fn plan(status: &Status, size_bits: u32, url: &str) -> Result<Plan, KmeError> {
    if size_bits == 0 || !size_bits.is_multiple_of(8) {
        return Err(KmeError::Config(format!(
            "key_size must be a positive multiple of 8 bits, not {size_bits}"
        )));
    }
    let default = status.key_size;
    let min = status.min_key_size.unwrap_or(default);
    let max = status.max_key_size.unwrap_or(default);
    let per_request = request_limit(status, url)?;
    if default == 0 || min > max {
        return Err(KmeError::Protocol(format!(
            "KME {url} reports an unusable status (key_size {default}, min_key_size {min}, \
             max_key_size {max}, max_key_per_request {per_request})"
        )));
    }
    if (min..=max).contains(&size_bits) {
        return Ok(Plan {
            key_bits: size_bits,
            requests: vec![1],
        });
    }
    if default.is_multiple_of(8) && size_bits.is_multiple_of(default) {
        let mut remaining = size_bits / default;
        let mut requests = Vec::new();
        while remaining > 0 {
            let n = remaining.min(per_request);
            requests.push(n);
            remaining -= n;
        }
        return Ok(Plan {
            key_bits: default,
            requests,
        });
    }
    Err(KmeError::Config(format!(
        "key_size = {size_bits} cannot be served exactly by KME {url}: it hands out keys of \
         {min}..{max} bits (default {default}); configure key_size within {min}..{max} or as a \
         multiple of {default}"
    )))
}

/// Most keys one request may ask for (enc_keys and dec_keys alike); one when the KME does
/// not say.
fn request_limit(status: &Status, url: &str) -> Result<u32, KmeError> {
    match status.max_key_per_request.unwrap_or(1) {
        0 => Err(KmeError::Protocol(format!(
            "KME {url} reports max_key_per_request 0"
        ))),
        n => Ok(n),
    }
}

/// Fetches QKD keys from one ETSI GS QKD 014 KME.
pub struct Etsi014Client {
    base: Url,
    /// The URL as configured, for log lines.
    url: String,
    timeout: Duration,
    http: Client,
    /// `status` per slave SAE, read once: key sizes and limits do not change while running
    /// (a 400 from enc_keys drops the entry, in case the KME was reconfigured).
    status_cache: Mutex<HashMap<SaeId, Status>>,
}

impl Etsi014Client {
    /// Builds the client: loads the PEM files and sets up the connection pool. No request
    /// is made yet.
    pub fn new(settings: &KmeSettings) -> Result<Etsi014Client, KmeError> {
        let base = parse_base_url(&settings.url)?;
        if settings.timeout.is_zero() {
            return Err(KmeError::Config(
                "kme.timeout must be greater than 0".into(),
            ));
        }
        let tls = KmeTlsConfig::load(settings)?;
        let http = Client::builder()
            .use_preconfigured_tls(tls.config)
            .https_only(true)
            // charon's environment must not be able to divert key requests through a proxy,
            // and a KME has no business redirecting an SAE elsewhere.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .build()
            .map_err(|e| {
                KmeError::Config(format!(
                    "cannot set up the HTTPS client for KME {}: {e}",
                    settings.url
                ))
            })?;
        Ok(Etsi014Client {
            base,
            url: settings.url.clone(),
            timeout: settings.timeout,
            http,
            status_cache: Mutex::new(HashMap::new()),
        })
    }

    /// `GET {url}/api/v1/keys/{slave}/status`.
    pub fn status(&self, slave: &SaeId) -> Result<Status, KmeError> {
        let url = endpoint(&self.base, slave, "status");
        let body = self.exchange(&url, self.http.get(url.clone()))?;
        serde_json::from_slice(&body).map_err(|e| {
            KmeError::Protocol(format!("KME {url} sent a status we cannot parse: {e}"))
        })
    }

    fn cached_status(&self, slave: &SaeId) -> Result<Status, KmeError> {
        if let Some(status) = self.cache().get(slave) {
            return Ok(status.clone());
        }
        let status = self.status(slave)?;
        self.cache().insert(slave.clone(), status.clone());
        Ok(status)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<SaeId, Status>> {
        // The map stays consistent even if a holder panicked: keep using it.
        self.status_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One `enc_keys` POST for `number` keys of `bits` bits, checked for count and length.
    fn enc_request(&self, slave: &SaeId, number: u32, bits: u32) -> Result<Vec<QkdKey>, KmeError> {
        #[derive(Serialize)]
        struct EncRequest {
            number: u32,
            size: u32,
        }
        let url = endpoint(&self.base, slave, "enc_keys");
        log::debug!("KME {url}: requesting {number} key(s) of {bits} bits");
        let body = self.exchange(
            &url,
            self.http
                .post(url.clone())
                .json(&EncRequest { number, size: bits }),
        )?;
        let keys = parse_keys(&body, &url)?;
        if keys.len() != number as usize {
            return Err(KmeError::Protocol(format!(
                "KME {url} returned {} key(s) instead of {number}",
                keys.len()
            )));
        }
        let bytes = (bits / 8) as usize;
        if let Some(k) = keys.iter().find(|k| k.material.len() != bytes) {
            return Err(KmeError::Protocol(format!(
                "KME {url} returned key {} of {} bits instead of {bits}",
                k.id,
                k.material.len() * 8
            )));
        }
        Ok(keys)
    }

    /// Sends a request and returns the body of a successful answer; maps everything else
    /// to a [`KmeError`].
    fn exchange(
        &self,
        url: &Url,
        request: reqwest::blocking::RequestBuilder,
    ) -> Result<Zeroizing<Vec<u8>>, KmeError> {
        let mut response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .map_err(|e| self.unreachable(url, &e))?;
        let status = response.status();
        let body = read_body(&mut response).map_err(|e| self.unreachable(url, &e))?;
        match body {
            Some(body) if status.is_success() => Ok(body),
            Some(body) => Err(error_from_answer(url, status, &body)),
            None => Err(KmeError::Protocol(format!(
                "KME {url} sent an answer larger than {MAX_BODY} bytes (HTTP {status})"
            ))),
        }
    }

    fn unreachable(&self, url: &Url, error: &(dyn std::error::Error + 'static)) -> KmeError {
        KmeError::Unreachable {
            url: url.to_string(),
            reason: transport_reason(error, self.timeout),
        }
    }
}

impl KeySource for Etsi014Client {
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        sets: usize,
        _deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        (0..sets.max(1))
            .map(|_| self.enc_set(slave, size_bits))
            .collect()
    }

    fn dec_keys(
        &self,
        master: &SaeId,
        ids: &[KeyId],
        _deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        self.dec_set(master, ids)
    }

    fn keys_per_set(
        &self,
        peer: &SaeId,
        size_bits: u32,
        _deadline: Instant,
    ) -> Result<usize, KmeError> {
        Ok(plan(&self.cached_status(peer)?, size_bits, &self.url)?.key_count())
    }

    fn url(&self) -> &str {
        &self.url
    }
}

impl Etsi014Client {
    fn enc_set(&self, slave: &SaeId, size_bits: u32) -> Result<Vec<QkdKey>, KmeError> {
        let plan = plan(&self.cached_status(slave)?, size_bits, &self.url)?;
        let mut keys = Vec::with_capacity(plan.key_count());
        for &number in &plan.requests {
            match self.enc_request(slave, number, plan.key_bits) {
                Ok(batch) => keys.extend(batch),
                Err(e) => {
                    if matches!(e, KmeError::Rejected { status: 400, .. }) {
                        self.cache().remove(slave);
                    }
                    return Err(e);
                }
            }
        }
        // The same key twice would repeat key material inside one secret.
        let mut seen = HashSet::new();
        if let Some(dup) = keys.iter().find(|k| !seen.insert(k.id)) {
            return Err(KmeError::Protocol(format!(
                "KME {} handed out key ID {} twice",
                self.url, dup.id
            )));
        }
        Ok(keys)
    }

    fn dec_set(&self, master: &SaeId, ids: &[KeyId]) -> Result<Vec<QkdKey>, KmeError> {
        #[derive(Serialize)]
        struct IdEntry {
            #[serde(rename = "key_ID")]
            key_id: String,
        }
        #[derive(Serialize)]
        struct DecRequest {
            #[serde(rename = "key_IDs")]
            key_ids: Vec<IdEntry>,
        }
        let mut seen = HashSet::new();
        if ids.is_empty() || !ids.iter().all(|id| seen.insert(*id)) {
            return Err(KmeError::Protocol(format!(
                "refusing to ask KME {} for an empty or repeating key ID list",
                self.url
            )));
        }
        // The master may have needed several requests for these keys; we must not exceed the
        // KME's per-request limit either. The status towards the master SAE tells it (any SAE
        // may be master, so a slave may ask); a KME that refuses gets the whole list at once.
        let limit = if ids.len() == 1 {
            1
        } else {
            match self.cached_status(master) {
                Ok(status) => request_limit(&status, &self.url)? as usize,
                Err(KmeError::Rejected { .. }) => ids.len(),
                Err(e) => return Err(e),
            }
        };
        let url = endpoint(&self.base, master, "dec_keys");
        let mut keys = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(limit) {
            log::debug!("KME {url}: requesting key(s) {chunk:?}");
            let request = DecRequest {
                key_ids: chunk
                    .iter()
                    .map(|id| IdEntry {
                        key_id: id.to_string(),
                    })
                    .collect(),
            };
            let body = self.exchange(&url, self.http.post(url.clone()).json(&request))?;
            keys.extend(order_keys(parse_keys(&body, &url)?, chunk, &url)?);
        }
        check_same_length(&keys, &url)?;
        Ok(keys)
    }
}

/// Checks the configured base URL: https, usable as a base, no query or fragment.
fn parse_base_url(text: &str) -> Result<Url, KmeError> {
    let url = Url::parse(text)
        .map_err(|e| KmeError::Config(format!("kme.url: '{text}' is not a valid URL: {e}")))?;
    if url.scheme() != "https" || url.cannot_be_a_base() || url.host().is_none() {
        return Err(KmeError::Config(format!(
            "kme.url: '{text}' must be an https:// URL of the KME (mutual TLS is mandatory)"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(KmeError::Config(format!(
            "kme.url: '{text}' must not contain a query or fragment"
        )));
    }
    Ok(url)
}

/// `{base}/api/v1/keys/{sae}/{operation}`, built segment by segment so that nothing can
/// change the path structure (SaeId is charset-restricted anyway, this is the second line).
fn endpoint(base: &Url, sae: &SaeId, operation: &str) -> Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("parse_base_url accepts only URLs that can be a base")
        .pop_if_empty()
        .extend(["api", "v1", "keys", sae.as_str(), operation]);
    url
}

/// Reads the whole body into a buffer that is wiped on drop, also when it has to grow
/// (a plain `Vec` would leave copies of key material behind in freed memory).
/// `None` when the body exceeds [`MAX_BODY`].
fn read_body(response: &mut Response) -> Result<Option<Zeroizing<Vec<u8>>>, std::io::Error> {
    let expected = response.content_length().unwrap_or(0).min(MAX_BODY as u64) as usize;
    let mut body = Zeroizing::new(Vec::with_capacity(expected.max(1024)));
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        let n = response.read(&mut chunk[..])?;
        if n == 0 {
            return Ok(Some(body));
        }
        if body.len() + n > MAX_BODY {
            return Ok(None);
        }
        if body.len() + n > body.capacity() {
            let capacity = (body.capacity() * 2).max(body.len() + n).min(MAX_BODY);
            let mut bigger = Zeroizing::new(Vec::with_capacity(capacity));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&chunk[..n]);
    }
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
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
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
/// straight into wiped buffers. Counts and sizes are checked by the callers.
fn parse_keys(body: &[u8], url: &Url) -> Result<Vec<QkdKey>, KmeError> {
    // serde_json's messages may quote the offending value; for a key container that could
    // be key material, so only the error class and position are reported.
    let container: KeyContainer = serde_json::from_slice(body).map_err(|e| {
        KmeError::Protocol(format!(
            "KME {url} sent an unusable key container ({:?} error at line {} column {})",
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
                KmeError::Protocol(format!(
                    "KME returned a malformed key_ID '{}' (from {url})",
                    printable(&k.key_id)
                ))
            })?;
            Ok(QkdKey {
                id,
                material: decode_key(&k.key.0, id, url)?,
            })
        })
        .collect()
}

fn decode_key(b64: &str, id: KeyId, url: &Url) -> Result<Zeroizing<Vec<u8>>, KmeError> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut material = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let len = engine.decode_slice(b64, &mut material[..]).map_err(|_| {
        KmeError::Protocol(format!(
            "KME {url} sent key {id} that is not valid padded base64"
        ))
    })?;
    material.truncate(len);
    if material.is_empty() {
        return Err(KmeError::Protocol(format!(
            "KME {url} sent key {id} with no material"
        )));
    }
    Ok(material)
}

/// Puts the keys of a dec_keys answer in the order of `ids`: a KME may reorder them, but it
/// must return exactly the requested IDs, each once.
fn order_keys(keys: Vec<QkdKey>, ids: &[KeyId], url: &Url) -> Result<Vec<QkdKey>, KmeError> {
    if keys.len() != ids.len() {
        return Err(KmeError::Protocol(format!(
            "KME {url} returned {} key(s) for {} requested key ID(s)",
            keys.len(),
            ids.len()
        )));
    }
    let mut by_id: HashMap<KeyId, QkdKey> = HashMap::with_capacity(keys.len());
    for key in keys {
        if !ids.contains(&key.id) {
            return Err(KmeError::Protocol(format!(
                "KME {url} returned key {} that was not requested",
                key.id
            )));
        }
        if let Some(dup) = by_id.insert(key.id, key) {
            return Err(KmeError::Protocol(format!(
                "KME {url} returned key {} more than once",
                dup.id
            )));
        }
    }
    Ok(ids
        .iter()
        .map(|id| {
            by_id
                .remove(id)
                .expect("count and membership checked above")
        })
        .collect())
}

/// The master obtained one key or several of one size: keys of different lengths mean the
/// KMEs disagree.
fn check_same_length(keys: &[QkdKey], url: &Url) -> Result<(), KmeError> {
    let Some(first) = keys.first() else {
        return Ok(());
    };
    match keys
        .iter()
        .find(|k| k.material.len() != first.material.len())
    {
        Some(k) => Err(KmeError::Protocol(format!(
            "KME {url} returned keys of different lengths ({} bits for {}, {} bits for {})",
            first.material.len() * 8,
            first.id,
            k.material.len() * 8,
            k.id
        ))),
        None => Ok(()),
    }
}

/// Maps a non-success answer to an error carrying the KME's `message` (and short
/// `details`), the HTTP status and the URL.
fn error_from_answer(url: &Url, status: StatusCode, body: &[u8]) -> KmeError {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<serde_json::Value>,
        details: Option<serde_json::Value>,
    }
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { message, details }) => {
            let text = |v: serde_json::Value| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let mut m = message.map(text).unwrap_or_else(|| "no message".into());
            if let Some(d) = details
                .map(|d| d.to_string())
                .filter(|d| d.len() <= MAX_DETAILS)
            {
                m = format!("{m}; details: {d}");
            }
            m
        }
        Err(_) if body.is_empty() => status.canonical_reason().unwrap_or("no message").into(),
        Err(_) => format!("non-JSON answer: {}", String::from_utf8_lossy(body)),
    };
    let message = printable(&message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        KmeError::NoKeyAvailable {
            url: url.to_string(),
            message,
        }
    } else {
        KmeError::Rejected {
            url: url.to_string(),
            status: status.as_u16(),
            message,
        }
    }
}

/// KME text goes into charon's log: one line, bounded, no control characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if text.chars().count() > MAX_MESSAGE {
        out.push_str("...");
    }
    out
}

/// Explains a transport failure for the operator: timeouts name `kme.timeout`, TLS
/// failures say which side's certificate was refused and which settings to check.
fn transport_reason(error: &(dyn std::error::Error + 'static), timeout: Duration) -> String {
    let mut chain = Vec::new();
    let mut tls = None;
    let mut timed_out = false;
    let mut closed = false;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            tls.get_or_insert_with(|| t.clone());
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            timed_out |= r.is_timeout();
        }
        let io = e.downcast_ref::<std::io::Error>();
        timed_out |= io.is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        closed |= io.is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
        let text = e.to_string();
        // reqwest's own line repeats the URL, which the KmeError already carries; a wrapping
        // io::Error displays the same text as what it wraps.
        if !text.starts_with("error sending request") && chain.last() != Some(&text) {
            chain.push(text);
        }
        // io::Error::source() skips the error it wraps (hyper-rustls even wraps tokio-rustls'
        // io::Error around the rustls::Error in a second one): descend into it instead.
        current = match io.and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    let detail = chain.join(": ");
    match tls {
        Some(rustls::Error::InvalidCertificate(e)) => format!(
            "TLS handshake failed, the KME's server certificate is not trusted ({e}); check \
             kme.ca and that kme.url names a host in the KME certificate"
        ),
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "TLS handshake failed, the KME sent alert {alert:?}: it probably refused our client \
             certificate; check kme.cert / kme.key and that the KME trusts their CA"
        ),
        Some(e) => format!("TLS error ({e}); check kme.ca / kme.cert / kme.key"),
        None if timed_out => format!("no answer within {timeout:?} (kme.timeout): {detail}"),
        None if closed => format!("the KME closed the connection without answering: {detail}"),
        None => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("https://kme.example:8443/api/v1/keys/sae-b/enc_keys").unwrap()
    }

    fn status(key_size: u32, min: u32, max: u32, per_request: u32) -> Status {
        serde_json::from_value(serde_json::json!({
            "key_size": key_size, "min_key_size": min, "max_key_size": max,
            "max_key_per_request": per_request
        }))
        .unwrap()
    }

    #[test]
    fn status_parses_all_spec_fields_and_ignores_unknown_ones() {
        let s: Status = serde_json::from_str(
            r#"{"source_KME_ID":"KME-A","target_KME_ID":7,"master_SAE_ID":"sae-a",
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
    fn status_tolerates_missing_optional_fields_but_needs_key_size() {
        let s: Status = serde_json::from_str(r#"{"key_size":128}"#).unwrap();
        assert_eq!(s.key_size, 128);
        assert_eq!(s.max_key_per_request, None);
        assert!(serde_json::from_str::<Status>(r#"{"max_key_size":128}"#).is_err());
    }

    #[test]
    fn plan_asks_for_one_key_when_the_size_is_allowed() {
        let p = plan(&status(256, 64, 1024, 128), 512, "k").unwrap();
        assert_eq!(
            p,
            Plan {
                key_bits: 512,
                requests: vec![1]
            }
        );
    }

    #[test]
    fn plan_assembles_default_size_keys_over_several_requests() {
        // KME serves only 128-bit keys, at most 3 per request: 1024 bits = 8 keys = 3+3+2.
        let p = plan(&status(128, 128, 128, 3), 1024, "k").unwrap();
        assert_eq!(
            p,
            Plan {
                key_bits: 128,
                requests: vec![3, 3, 2]
            }
        );
        assert_eq!(p.key_count(), 8);
    }

    #[test]
    fn plan_uses_conservative_defaults_for_missing_limits() {
        let s: Status = serde_json::from_str(r#"{"key_size":256}"#).unwrap();
        assert_eq!(
            plan(&s, 256, "k").unwrap(),
            Plan {
                key_bits: 256,
                requests: vec![1]
            }
        );
        assert_eq!(
            plan(&s, 768, "k").unwrap(),
            Plan {
                key_bits: 256,
                requests: vec![1, 1, 1]
            }
        );
    }

    #[test]
    fn plan_refuses_unreachable_sizes_and_says_what_to_configure() {
        let e = plan(&status(256, 256, 256, 10), 384, "https://kme").unwrap_err();
        match e {
            KmeError::Config(m) => {
                assert!(m.contains("384") && m.contains("multiple of 256"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan(&status(256, 64, 1024, 10), 100, "k"),
            Err(KmeError::Config(_))
        ));
        assert!(matches!(
            plan(&status(256, 64, 1024, 10), 0, "k"),
            Err(KmeError::Config(_))
        ));
        assert!(matches!(
            plan(&status(256, 64, 1024, 0), 2048, "k"),
            Err(KmeError::Protocol(_))
        ));
    }

    #[test]
    fn key_container_decodes_material_and_ids() {
        let body = br#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139",
            "key":"AAECAw==","key_ID_extension":null}],"key_container_extension":{}}"#;
        let keys = parse_keys(body, &url()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys[0].id.to_string(),
            "bc490419-7d60-487f-adc1-4ddcc177c139"
        );
        assert_eq!(&keys[0].material[..], &[0, 1, 2, 3]);
    }

    #[test]
    fn key_container_accepts_any_uuid_version_and_escaped_base64() {
        // Version-1 UUID, upper case; "\/" is a legal JSON escape a KME may use.
        let body =
            br#"{"keys":[{"key_ID":"C2F5E1A0-0B1C-11EF-8000-0242AC120002","key":"\/\/8="}]}"#;
        let keys = parse_keys(body, &url()).unwrap();
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
            let e = parse_keys(body, &url()).unwrap_err();
            assert!(matches!(e, KmeError::Protocol(_)), "{e:?}");
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
            assert!(matches!(
                parse_keys(body, &url()),
                Err(KmeError::Protocol(_))
            ));
        }
    }

    fn key(id: u8, material: &[u8]) -> QkdKey {
        QkdKey {
            id: KeyId([id; 16]),
            material: Zeroizing::new(material.to_vec()),
        }
    }

    #[test]
    fn dec_answer_is_put_in_requested_order() {
        let ids = [KeyId([1; 16]), KeyId([2; 16]), KeyId([3; 16])];
        let got = order_keys(
            vec![key(3, b"cc"), key(1, b"aa"), key(2, b"bb")],
            &ids,
            &url(),
        )
        .unwrap();
        let order: Vec<_> = got.iter().map(|k| (k.id, k.material.to_vec())).collect();
        assert_eq!(
            order,
            vec![
                (ids[0], b"aa".to_vec()),
                (ids[1], b"bb".to_vec()),
                (ids[2], b"cc".to_vec())
            ]
        );
    }

    #[test]
    fn dec_answer_must_match_the_request() {
        let ids = [KeyId([1; 16]), KeyId([2; 16])];
        for keys in [
            vec![key(1, b"aa")],                               // too few
            vec![key(1, b"aa"), key(9, b"bb")],                // foreign ID
            vec![key(1, b"aa"), key(1, b"aa")],                // duplicate
            vec![key(1, b"aa"), key(2, b"bb"), key(2, b"bb")], // too many
        ] {
            assert!(matches!(
                order_keys(keys, &ids, &url()),
                Err(KmeError::Protocol(_))
            ));
        }
    }

    #[test]
    fn keys_of_different_lengths_are_refused() {
        assert!(check_same_length(&[key(1, b"aa"), key(2, b"bb")], &url()).is_ok());
        assert!(matches!(
            check_same_length(&[key(1, b"aa"), key(2, b"bbb")], &url()),
            Err(KmeError::Protocol(_))
        ));
    }

    #[test]
    fn http_errors_carry_status_message_and_short_details() {
        let e = error_from_answer(
            &url(),
            StatusCode::BAD_REQUEST,
            br#"{"message":"key not found","details":[{"key_ID":"x"}]}"#,
        );
        assert_eq!(
            e,
            KmeError::Rejected {
                url: url().to_string(),
                status: 400,
                message: r#"key not found; details: [{"key_ID":"x"}]"#.into()
            }
        );
        let long = format!(
            r#"{{"message":"m","details":[{{"d":"{}"}}]}}"#,
            "x".repeat(500)
        );
        assert_eq!(
            error_from_answer(&url(), StatusCode::UNAUTHORIZED, long.as_bytes()),
            KmeError::Rejected {
                url: url().to_string(),
                status: 401,
                message: "m".into()
            }
        );
        assert_eq!(
            error_from_answer(
                &url(),
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"message":"no key"}"#
            ),
            KmeError::NoKeyAvailable {
                url: url().to_string(),
                message: "no key".into()
            }
        );
    }

    #[test]
    fn non_json_error_bodies_are_made_printable_and_bounded() {
        let body = format!("<html>\n{}</html>", "y".repeat(1000));
        match error_from_answer(&url(), StatusCode::BAD_GATEWAY, body.as_bytes()) {
            KmeError::Rejected {
                status: 502,
                message,
                ..
            } => {
                assert!(
                    !message.contains('\n') && message.ends_with("..."),
                    "{message}"
                );
                assert!(message.len() < MAX_MESSAGE + 10);
            }
            other => panic!("{other:?}"),
        }
        match error_from_answer(&url(), StatusCode::SERVICE_UNAVAILABLE, b"") {
            KmeError::NoKeyAvailable { message, .. } => assert_eq!(message, "Service Unavailable"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endpoints_are_built_from_segments() {
        let sae = SaeId::new("sae-b").unwrap();
        let base = parse_base_url("https://192.0.2.30:8443").unwrap();
        assert_eq!(
            endpoint(&base, &sae, "enc_keys").as_str(),
            "https://192.0.2.30:8443/api/v1/keys/sae-b/enc_keys"
        );
        let prefixed = parse_base_url("https://kme.example/qkd/").unwrap();
        assert_eq!(
            endpoint(&prefixed, &sae, "status").as_str(),
            "https://kme.example/qkd/api/v1/keys/sae-b/status"
        );
        // ':' and '@' are allowed in SAE IDs; they must stay inside their path segment.
        let odd = SaeId::new("urn:sae@site").unwrap();
        let url = endpoint(&base, &odd, "dec_keys");
        assert_eq!(url.host_str(), Some("192.0.2.30"));
        assert_eq!(url.path_segments().unwrap().nth(3), Some("urn:sae@site"));
    }

    #[test]
    fn base_url_must_be_plain_https() {
        for bad in [
            "http://kme:80",
            "kme:8443",
            "https://kme/?a=b",
            "https://kme/#x",
            "nonsense",
        ] {
            match parse_base_url(bad) {
                Err(KmeError::Config(m)) => assert!(m.starts_with("kme.url"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_pem_files_name_the_setting_and_path() {
        let dir = std::env::temp_dir().join(format!("etsi014-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let empty = empty.to_str().unwrap().to_owned();
        let settings = |ca: &str, cert: &str, key: &str| KmeSettings {
            url: "https://kme.example".into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            timeout: Duration::from_secs(1),
        };
        let err = |s: KmeSettings| match KmeTlsConfig::load(&s) {
            Err(KmeError::Config(m)) => m,
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("loaded"),
        };
        let m = err(settings("/nonexistent/ca.pem", &empty, &empty));
        assert!(
            m.starts_with("kme.ca:") && m.contains("/nonexistent/ca.pem"),
            "{m}"
        );
        let m = err(settings(&empty, &empty, &empty));
        assert!(
            m.starts_with("kme.ca:") && m.contains("no PEM certificate"),
            "{m}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn transport_reason_explains_tls_and_timeouts() {
        // As hyper-rustls reports it: tokio-rustls' io::Error inside another io::Error.
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let r = transport_reason(&tls, Duration::from_secs(5));
        assert!(r.contains("check kme.ca"), "{r}");
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        let r = transport_reason(&alert, Duration::from_secs(5));
        assert!(r.contains("kme.cert / kme.key"), "{r}");
        let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "operation timed out");
        let r = transport_reason(&slow, Duration::from_secs(5));
        assert!(r.starts_with("no answer within 5s (kme.timeout)"), "{r}");
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed connection");
        let r = transport_reason(&eof, Duration::from_secs(5));
        assert!(r.starts_with("the KME closed the connection"), "{r}");
    }
}
