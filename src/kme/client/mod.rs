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
//!
//! What the KME answers is checked and explained in [`answer`] (bounded body, keys in the
//! requested order, error texts of real KMEs turned into what to check).

mod answer;

use super::json::{self, Status};
use super::plan::{self, request_limit};
use super::{KeyId, KeySource, KmeError, KmeSettings, KmeTlsConfig, QkdKey, SaeId};
use crate::wire::MAX_KEY_IDS;
use answer::{
    check_same_length, error_from_answer, order_keys, read_body, transport_reason, Operation,
    Transport, MAX_BODY,
};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::Url;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// What we know of a KME for one peer SAE.
#[derive(Clone)]
struct PeerStatus {
    status: Status,
    /// The one key size this KME hands out whatever `size` we ask for, once seen.
    served_bits: Option<u32>,
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
    /// Keys of a key set the KME delivered only partly (it ran dry between the requests of
    /// one enc_keys), per slave SAE, with their size: the next enc_keys for that slave
    /// completes the set with them, so the KME's keys are not thrown away (a one-shot KME
    /// would not hand them out again).
    incomplete: Mutex<HashMap<SaeId, (u32, Vec<QkdKey>)>>,
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
            incomplete: Mutex::new(HashMap::new()),
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
                maybe_served: false,
            });
        }
        let until = now + budget;
        let mut response = request
            .timeout(budget)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            // Only a failed connect (or TLS handshake) proves the KME never saw the request.
            .map_err(|e| self.transport_error(url, &e, budget, !e.is_connect()))?;
        let status = response.status();
        let body = read_body(&mut response, until)
            .map_err(|e| self.transport_error(url, &e, budget, true))?;
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
        maybe_served: bool,
    ) -> KmeError {
        match transport_reason(error, budget, self.timeout) {
            Transport::Tls(reason) => KmeError::Tls {
                url: url.to_string(),
                reason,
            },
            Transport::Other(reason) => KmeError::Unreachable {
                url: url.to_string(),
                reason,
                maybe_served,
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
        if let Some((bits, kept)) = lock(&self.incomplete).remove(slave) {
            // Kept keys of another size (the KME changed) cannot complete this set.
            if bits == plan.key_bits && kept.len() < plan.keys_per_set {
                keys.extend(kept);
            }
        }
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
        let mut keys = keys.into_iter();
        let delivered: Vec<Vec<QkdKey>> = (0..complete)
            .map(|_| keys.by_ref().take(plan.keys_per_set).collect())
            .collect();
        let rest: Vec<QkdKey> = keys.collect();
        if !rest.is_empty() {
            log::debug!(
                "qkd: KME {}: kept {} key(s) of an incomplete set for SAE '{slave}' to complete \
                 the next one",
                self.url,
                rest.len()
            );
            lock(&self.incomplete).insert(slave.clone(), (plan.key_bits, rest));
        }
        match failure {
            Some(e) if complete == 0 => Err(e),
            Some(e) => {
                log::debug!(
                    "qkd: KME {}: {e}; using the {complete} of {sets} key set(s) obtained",
                    self.url
                );
                Ok(delivered)
            }
            None => Ok(delivered),
        }
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

#[cfg(test)]
mod tests;
