//! ETSI GS QKD 014 v1.1.1 REST client (the SAE side): `status`, `enc_keys`, `dec_keys`.
//!
//! HTTPS with mutual TLS through reqwest's blocking client on the rustls configuration of
//! [`super::tls`]. One `reqwest::blocking::Client` per KME keeps connections alive between
//! requests; it is `Send + Sync` and is called from charon's worker threads directly (never
//! from inside a tokio runtime, where reqwest's blocking client panics).
//!
//! The reqwest client owns a runtime thread that parses TLS from the network, so it is
//! built on the first request, never in [`Etsi014Client::new`]: the plugin constructs
//! clients while charon still runs as root, and a thread started then would keep root's
//! capabilities after charon dropped its own.
//!
//! Deadlines: every request gets `min(kme.timeout, the caller's deadline)` as a *total*
//! budget (reqwest's per-request timeout covers connect, TLS, headers and the whole body;
//! the client-wide one only bounds each read, so a KME dripping its body would stretch a
//! request without end), and the body loop checks the same instant between reads.

use super::json::{self, ErrorText, Status};
use super::plan::{self, request_limit};
use super::{KeyId, KeySource, KmeError, KmeSettings, KmeTlsConfig, QkdKey, SaeId};
use crate::wire::MAX_KEY_IDS;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{StatusCode, Url};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Bound on any KME response body. 128 keys of 1024 bits are about 30 KiB of JSON; a KME
/// sending more than this is broken or hostile, and we do not buffer it.
const MAX_BODY: usize = 1 << 20;

/// What we know of a KME for one peer SAE.
#[derive(Clone)]
struct PeerStatus {
    status: Status,
    /// The one key size this KME hands out whatever `size` we ask for, once seen.
    served_bits: Option<u32>,
}

/// The three ETSI 014 operations, for error messages that say what to check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    Status,
    EncKeys,
    DecKeys,
}

/// Fetches QKD keys from one ETSI GS QKD 014 KME.
pub struct Etsi014Client {
    base: Url,
    /// The URL as configured, for log lines.
    url: String,
    timeout: Duration,
    tls: rustls::ClientConfig,
    /// Built on the first request (see the module doc: no thread before charon drops
    /// privileges); a clone of the handle is used outside the lock.
    http: Mutex<Option<Client>>,
    /// `status` per peer SAE, read once: key sizes and limits do not change while running
    /// (a 400 from enc_keys drops the entry, in case the KME was reconfigured).
    status_cache: Mutex<HashMap<SaeId, PeerStatus>>,
}

impl Etsi014Client {
    /// Checks the settings and loads the PEM files. No request is made and no thread is
    /// started yet.
    pub fn new(settings: &KmeSettings) -> Result<Etsi014Client, KmeError> {
        let base = parse_base_url(&settings.url)?;
        if settings.timeout.is_zero() {
            return Err(KmeError::Config(
                "kme.timeout must be greater than 0".into(),
            ));
        }
        let tls = KmeTlsConfig::load(settings)?;
        Ok(Etsi014Client {
            base,
            url: settings.url.clone(),
            timeout: settings.timeout,
            tls: tls.config,
            http: Mutex::new(None),
            status_cache: Mutex::new(HashMap::new()),
        })
    }

    fn http(&self) -> Result<Client, KmeError> {
        let mut http = lock(&self.http);
        if let Some(client) = http.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::builder()
            .use_preconfigured_tls(self.tls.clone())
            .https_only(true)
            // charon's environment must not be able to divert key requests through a proxy,
            // and a KME has no business redirecting an SAE elsewhere.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.timeout)
            .build()
            .map_err(|e| {
                KmeError::Config(format!(
                    "cannot set up the HTTPS client for KME {}: {e}",
                    self.url
                ))
            })?;
        *http = Some(client.clone());
        Ok(client)
    }

    /// `GET {url}/api/v1/keys/{slave}/status`.
    pub fn status(&self, slave: &SaeId, deadline: Instant) -> Result<Status, KmeError> {
        let url = endpoint(&self.base, slave, "status");
        let http = self.http()?;
        let body = self.exchange(
            &url,
            Operation::Status,
            slave,
            http.get(url.clone()),
            deadline,
        )?;
        json::parse_status(&body).map_err(|e| KmeError::Protocol(format!("KME {url} sent {e}")))
    }

    fn cached_status(&self, peer: &SaeId, deadline: Instant) -> Result<PeerStatus, KmeError> {
        if let Some(known) = lock(&self.status_cache).get(peer) {
            return Ok(known.clone());
        }
        let known = PeerStatus {
            status: self.status(peer, deadline)?,
            served_bits: None,
        };
        lock(&self.status_cache).insert(peer.clone(), known.clone());
        Ok(known)
    }

    /// One `enc_keys` POST for `number` keys of `bits` bits, checked for count and for one
    /// common length (which the caller compares with `bits`).
    fn enc_request(
        &self,
        slave: &SaeId,
        number: usize,
        bits: u32,
        deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        #[derive(Serialize)]
        struct EncRequest {
            number: usize,
            size: u32,
        }
        let url = endpoint(&self.base, slave, "enc_keys");
        log::debug!("KME {url}: requesting {number} key(s) of {bits} bits");
        let http = self.http()?;
        let request = http
            .post(url.clone())
            .json(&EncRequest { number, size: bits });
        let body = self.exchange(&url, Operation::EncKeys, slave, request, deadline)?;
        let keys = json::parse_keys(&body)
            .map_err(|e| KmeError::Protocol(format!("KME {url} sent {e}")))?;
        if keys.len() != number {
            return Err(KmeError::Protocol(format!(
                "KME {url} returned {} key(s) instead of {number}",
                keys.len()
            )));
        }
        check_same_length(&keys, &url)?;
        Ok(keys)
    }

    /// Sends a request within `min(kme.timeout, deadline)` and returns the body of a
    /// successful answer; maps everything else to a [`KmeError`].
    fn exchange(
        &self,
        url: &Url,
        operation: Operation,
        sae: &SaeId,
        request: RequestBuilder,
        deadline: Instant,
    ) -> Result<Zeroizing<Vec<u8>>, KmeError> {
        let now = Instant::now();
        let budget = self.timeout.min(deadline.saturating_duration_since(now));
        if budget.is_zero() {
            return Err(KmeError::Unreachable {
                url: url.to_string(),
                reason: "no time left before the exchange's deadline (wait_timeout)".into(),
            });
        }
        let until = now + budget;
        let mut response = request
            .timeout(budget)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .map_err(|e| self.transport_error(url, &e, budget))?;
        let status = response.status();
        let body =
            read_body(&mut response, until).map_err(|e| self.transport_error(url, &e, budget))?;
        match body {
            Some(body) if status.is_success() => Ok(body),
            Some(body) => Err(error_from_answer(url, operation, sae, status, &body)),
            None => Err(KmeError::Protocol(format!(
                "KME {url} sent an answer larger than {MAX_BODY} bytes (HTTP {status})"
            ))),
        }
    }

    fn transport_error(
        &self,
        url: &Url,
        error: &(dyn std::error::Error + 'static),
        budget: Duration,
    ) -> KmeError {
        match transport_reason(error, budget, self.timeout) {
            Transport::Tls(reason) => KmeError::Tls {
                url: url.to_string(),
                reason,
            },
            Transport::Other(reason) => KmeError::Unreachable {
                url: url.to_string(),
                reason,
            },
        }
    }

    /// Re-plans after the KME answered an enc_keys for `asked` bits with keys of `served`
    /// bits: some KMEs ignore `size` and always hand out their default size. Remembered for
    /// this peer, so later calls ask for that size directly.
    fn adopt_served_size(
        &self,
        slave: &SaeId,
        known: &PeerStatus,
        size_bits: u32,
        asked: u32,
        served: u32,
    ) -> Result<plan::Plan, KmeError> {
        let url = endpoint(&self.base, slave, "enc_keys");
        let plan = plan::plan(&known.status, Some(served), size_bits, &self.url).map_err(|e| {
            KmeError::Protocol(format!(
                "KME {url} returned keys of {served} bits when asked for {asked} bits, and \
                 key_size = {size_bits} cannot be assembled from those: {e}"
            ))
        })?;
        log::warn!(
            "qkd: KME {} ignores the key size asked for ({asked} bits) and hands out {served}-bit \
             keys: key_size = {size_bits} is assembled from {} of them for SAE '{slave}' from now on",
            self.url,
            plan.keys_per_set
        );
        lock(&self.status_cache).insert(
            slave.clone(),
            PeerStatus {
                served_bits: Some(served),
                ..known.clone()
            },
        );
        Ok(plan)
    }
}

impl KeySource for Etsi014Client {
    fn enc_keys(
        &self,
        slave: &SaeId,
        size_bits: u32,
        sets: usize,
        deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        if sets == 0 {
            return Err(KmeError::Config(format!(
                "asked KME {} for 0 key sets",
                self.url
            )));
        }
        let known = self.cached_status(slave, deadline)?;
        let per_request = request_limit(&known.status, &self.url)?;
        let mut plan = plan::plan(&known.status, known.served_bits, size_bits, &self.url)?;
        let mut keys: Vec<QkdKey> = Vec::with_capacity(plan.keys_per_set * sets);
        let mut failure = None;
        while keys.len() < plan.keys_per_set * sets {
            let number = (plan.keys_per_set * sets - keys.len()).min(per_request);
            match self.enc_request(slave, number, plan.key_bits, deadline) {
                Ok(batch) => {
                    let served = (batch[0].material.len() * 8) as u32;
                    if served != plan.key_bits {
                        if !keys.is_empty() {
                            failure = Some(KmeError::Protocol(format!(
                                "KME {} returned keys of {served} bits instead of {} bits",
                                self.url, plan.key_bits
                            )));
                            break;
                        }
                        plan = self.adopt_served_size(
                            slave,
                            &known,
                            size_bits,
                            plan.key_bits,
                            served,
                        )?;
                        keys.reserve_exact((plan.keys_per_set * sets).saturating_sub(number));
                    }
                    keys.extend(batch);
                }
                Err(e) => {
                    if matches!(e, KmeError::Rejected { status: 400, .. }) {
                        lock(&self.status_cache).remove(slave);
                    }
                    failure = Some(e);
                    break;
                }
            }
        }
        // The same key twice would repeat key material inside one secret.
        let mut seen = HashSet::with_capacity(keys.len());
        if let Some(dup) = keys.iter().find(|k| !seen.insert(k.id)) {
            return Err(KmeError::Protocol(format!(
                "KME {} handed out key ID {} twice",
                self.url, dup.id
            )));
        }
        let complete = keys.len() / plan.keys_per_set;
        match failure {
            Some(e) if complete == 0 => return Err(e),
            Some(e) => log::debug!(
                "qkd: KME {}: {e}; using the {complete} of {sets} key set(s) obtained",
                self.url
            ),
            None => {}
        }
        // Keys of an incomplete set are dropped (and wiped) here: the KME has handed them out.
        let mut keys = keys.into_iter();
        Ok((0..complete)
            .map(|_| keys.by_ref().take(plan.keys_per_set).collect())
            .collect())
    }

    fn dec_keys(
        &self,
        master: &SaeId,
        ids: &[KeyId],
        deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
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
        let mut seen = HashSet::with_capacity(ids.len());
        if ids.is_empty() || ids.len() > MAX_KEY_IDS || !ids.iter().all(|id| seen.insert(*id)) {
            return Err(KmeError::Protocol(format!(
                "refusing to ask KME {} for {} key IDs (1..={MAX_KEY_IDS}, each once)",
                self.url,
                ids.len()
            )));
        }
        // The master may have needed several requests for these keys; we must not exceed the
        // KME's per-request limit either. The status towards the master SAE tells it (any SAE
        // may be master, so a slave may ask); a KME that refuses gets the whole list at once.
        let limit = if ids.len() == 1 {
            1
        } else {
            match self.cached_status(master, deadline) {
                Ok(known) => request_limit(&known.status, &self.url)?,
                Err(KmeError::Rejected { .. }) => ids.len(),
                Err(e) => return Err(e),
            }
        };
        let url = endpoint(&self.base, master, "dec_keys");
        let http = self.http()?;
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
            let body = self.exchange(
                &url,
                Operation::DecKeys,
                master,
                http.post(url.clone()).json(&request),
                deadline,
            )?;
            let got = json::parse_keys(&body)
                .map_err(|e| KmeError::Protocol(format!("KME {url} sent {e}")))?;
            keys.extend(order_keys(got, chunk, &url)?);
        }
        check_same_length(&keys, &url)?;
        Ok(keys)
    }

    fn keys_per_set(
        &self,
        peer: &SaeId,
        size_bits: u32,
        deadline: Instant,
    ) -> Result<usize, KmeError> {
        let known = self.cached_status(peer, deadline)?;
        Ok(plan::plan(&known.status, known.served_bits, size_bits, &self.url)?.keys_per_set)
    }

    fn known_keys_per_set(&self, peer: &SaeId, size_bits: u32) -> Option<usize> {
        let known = lock(&self.status_cache).get(peer).cloned()?;
        let plan = plan::plan(&known.status, known.served_bits, size_bits, &self.url).ok()?;
        Some(plan.keys_per_set)
    }

    fn url(&self) -> &str {
        &self.url
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent even if a holder panicked: keep using them.
    crate::health::lock("a KME client's connection or status cache", mutex)
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

/// Reads the whole body by `until` into a buffer that is wiped on drop, also when it has to
/// grow (a plain `Vec` would leave copies of key material behind in freed memory).
/// `None` when the body exceeds [`MAX_BODY`].
fn read_body(
    response: &mut Response,
    until: Instant,
) -> Result<Option<Zeroizing<Vec<u8>>>, std::io::Error> {
    let expected = response.content_length().unwrap_or(0).min(MAX_BODY as u64) as usize;
    let mut body = Zeroizing::new(Vec::with_capacity(expected.max(1024)));
    let mut chunk = Zeroizing::new([0u8; 8192]);
    loop {
        let n = response.read(&mut chunk[..])?;
        if n == 0 {
            return Ok(Some(body));
        }
        if Instant::now() >= until {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the answer's body did not arrive in time",
            ));
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

/// Maps a non-success answer to an error carrying the KME's text, the HTTP status, the URL
/// and what the operator should check. Real KMEs say "no key left" as 503 (spec), 404
/// "Element not found" or 400 "... Try again later."; a 400 HTML page can be a web server
/// refusing our client certificate; 400/500 on status/enc_keys are often an SAE ID in a
/// form the KME does not take (some want integers).
fn error_from_answer(
    url: &Url,
    operation: Operation,
    sae: &SaeId,
    status: StatusCode,
    body: &[u8],
) -> KmeError {
    let ErrorText { text, html } = json::parse_error(body);
    let text = if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        text
    };
    let code = status.as_u16();
    let no_key = |text: String| KmeError::NoKeyAvailable {
        url: url.to_string(),
        message: text,
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return no_key(format!("{code}: {text}"));
    }
    let lower = text.to_lowercase();
    let keys_operation = operation != Operation::Status;
    if keys_operation
        && ((code == 404 && !html) || (code == 400 && lower.contains("try again later")))
    {
        return no_key(format!(
            "{code}: {text}: this KME may mean: no key available"
        ));
    }
    let hint = match (code, operation) {
        (400, _) if html && lower.contains("certificate") => {
            "the KME's web server refused our client certificate (an HTTP error page instead \
             of a TLS alert): check kme.cert / kme.key and that the KME trusts their CA"
                .to_owned()
        }
        (401, _) => format!(
            "the KME does not accept our client certificate for SAE '{sae}': check that \
             kme.cert is the certificate the KME registered for this gateway's sae_id, and \
             that '{sae}' is an SAE linked to it"
        ),
        (400 | 500, Operation::Status | Operation::EncKeys) => format!(
            "check that '{sae}' (peers.<conn>.sae_id) and this gateway's sae_id are SAE IDs \
             this KME knows, in its format (some KMEs take only integers), and that kme.url \
             is this KME's ETSI 014 base URL"
        ),
        (400, Operation::DecKeys) => format!(
            "the KME does not hold these keys for master SAE '{sae}': check that the peer \
             uses the KME paired with this one (kme.url on both sides), and that its keys \
             were not fetched or replaced already"
        ),
        (404, _) => "check kme.url: the KME has no ETSI 014 API at this path".to_owned(),
        _ => "check kme.url and the KME".to_owned(),
    };
    KmeError::Rejected {
        url: url.to_string(),
        status: code,
        message: format!("{text}; {hint}"),
    }
}

/// A transport failure explained for the operator.
enum Transport {
    /// The TLS handshake was refused: not transient.
    Tls(String),
    Other(String),
}

/// Explains a transport failure: timeouts name `kme.timeout`, TLS failures say which
/// side's certificate was refused and what to do (see [`super::tls::explain`]).
fn transport_reason(
    error: &(dyn std::error::Error + 'static),
    budget: Duration,
    timeout: Duration,
) -> Transport {
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
    if let Some(tls) = tls {
        return Transport::Tls(super::tls::explain(&tls));
    }
    Transport::Other(if timed_out && budget < timeout {
        format!("no complete answer within {budget:?}, what was left before the exchange's deadline (wait_timeout): {detail}")
    } else if timed_out {
        format!("no complete answer within {budget:?} (kme.timeout): {detail}")
    } else if closed {
        format!("the KME closed the connection without answering: {detail}")
    } else {
        detail
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("https://kme.example:8443/api/v1/keys/sae-b/enc_keys").unwrap()
    }

    fn sae() -> SaeId {
        SaeId::new("sae-b").unwrap()
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

    fn answer(operation: Operation, code: u16, body: &str) -> KmeError {
        error_from_answer(
            &url(),
            operation,
            &sae(),
            StatusCode::from_u16(code).unwrap(),
            body.as_bytes(),
        )
    }

    #[test]
    fn every_no_key_answer_of_real_kmes_is_no_key_available() {
        for (code, body) in [
            (503, r#"{"message":"no key"}"#),
            (404, r#"{"detail":"Element not found"}"#),
            (400, r#"{"message":"Not enough keys. Try again later."}"#),
        ] {
            for operation in [Operation::EncKeys, Operation::DecKeys] {
                let e = answer(operation, code, body);
                assert!(
                    matches!(e, KmeError::NoKeyAvailable { .. }) && e.is_transient(),
                    "{e:?}"
                );
                if code != 503 {
                    assert!(
                        e.to_string()
                            .contains("this KME may mean: no key available"),
                        "{e}"
                    );
                }
            }
        }
        match answer(Operation::EncKeys, 503, "") {
            KmeError::NoKeyAvailable { message, .. } => {
                assert_eq!(message, "503: Service Unavailable")
            }
            other => panic!("{other:?}"),
        }
        // A 404 on status is a wrong URL, not an empty KME.
        let e = answer(Operation::Status, 404, r#"{"detail":"Not Found"}"#);
        assert!(
            matches!(e, KmeError::Rejected { status: 404, .. })
                && e.to_string().contains("kme.url"),
            "{e}"
        );
    }

    #[test]
    fn bad_requests_on_status_and_enc_keys_point_at_sae_ids_and_kme_url() {
        for (operation, code, body) in [
            (Operation::Status, 400, r#"{"message":"Bad request"}"#),
            (
                Operation::EncKeys,
                500,
                "<html><title>500 Internal Server Error</title></html>",
            ),
            (
                Operation::EncKeys,
                422,
                r#"{"detail":[{"loc":["path","slave_SAE_ID"],"msg":"value is not a valid integer"}]}"#,
            ),
        ] {
            let e = answer(operation, code, body);
            let m = e.to_string();
            assert!(!e.is_transient());
            if code == 422 {
                assert!(
                    m.contains("slave_SAE_ID: value is not a valid integer"),
                    "{m}"
                );
                continue;
            }
            assert!(
                m.contains("peers.<conn>.sae_id")
                    && m.contains("sae_id")
                    && m.contains("kme.url")
                    && m.contains("'sae-b'")
                    && m.contains("integers"),
                "{m}"
            );
        }
        let m = answer(
            Operation::EncKeys,
            500,
            "<html><title>500 Internal Server Error</title></html>",
        )
        .to_string();
        assert!(m.contains("HTML page \"500 Internal Server Error\""), "{m}");
    }

    #[test]
    fn unauthorized_points_at_our_certificate_and_the_sae() {
        let m = answer(Operation::DecKeys, 401, r#"{"message":"unauthorized"}"#).to_string();
        assert!(
            m.contains("401: unauthorized") && m.contains("kme.cert") && m.contains("sae_id"),
            "{m}"
        );
    }

    #[test]
    fn an_html_400_about_certificates_is_a_refused_client_certificate() {
        let m = answer(
            Operation::EncKeys,
            400,
            "<html><head><title>400 The SSL certificate error</title></head></html>",
        )
        .to_string();
        assert!(
            m.contains("refused our client certificate") && m.contains("kme.cert / kme.key"),
            "{m}"
        );
    }

    #[test]
    fn unknown_keys_on_dec_keys_point_at_the_kme_pair() {
        let m = answer(
            Operation::DecKeys,
            400,
            r#"{"message":"keys do not exist","details":[{"key_ID":"x"}]}"#,
        )
        .to_string();
        assert!(
            m.contains(r#"keys do not exist; details: [{"key_ID":"x"}]"#)
                && m.contains("master SAE 'sae-b'"),
            "{m}"
        );
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

    fn reason(error: &(dyn std::error::Error + 'static), budget: Duration) -> (bool, String) {
        match transport_reason(error, budget, Duration::from_secs(5)) {
            Transport::Tls(r) => (true, r),
            Transport::Other(r) => (false, r),
        }
    }

    #[test]
    fn transport_reason_explains_tls_and_timeouts() {
        // As hyper-rustls reports it: tokio-rustls' io::Error inside another io::Error.
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let (is_tls, r) = reason(&tls, Duration::from_secs(5));
        assert!(is_tls && r.contains("kme.ca"), "{r}");
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        let (is_tls, r) = reason(&alert, Duration::from_secs(5));
        assert!(is_tls && r.contains("kme.cert / kme.key"), "{r}");
        let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "operation timed out");
        let (is_tls, r) = reason(&slow, Duration::from_secs(5));
        assert!(
            !is_tls && r.starts_with("no complete answer within 5s (kme.timeout)"),
            "{r}"
        );
        let (_, r) = reason(&slow, Duration::from_secs(1));
        assert!(r.contains("before the exchange's deadline"), "{r}");
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed connection");
        let (is_tls, r) = reason(&eof, Duration::from_secs(5));
        assert!(
            !is_tls && r.starts_with("the KME closed the connection"),
            "{r}"
        );
    }
}
