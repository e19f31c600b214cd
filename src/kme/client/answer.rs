//! What a KME answers, checked and explained: the body read within bounds (size, deadline,
//! wiped on drop), dec_keys answers put in the requested order, keys of one length, and
//! error answers and transport failures turned into messages that say what to check.

use crate::ids::{KeyId, SaeId};
use crate::kme::json::{self, ErrorText};
use crate::kme::{KmeError, QkdKey};
use reqwest::blocking::Response;
use reqwest::{StatusCode, Url};
use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Bound on any KME response body. 128 keys of 1024 bits are about 30 KiB of JSON; a KME
/// sending more than this is broken or hostile, and we do not buffer it.
pub(super) const MAX_BODY: usize = 1 << 20;

/// The three ETSI 014 operations, for error messages that say what to check.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    Status,
    EncKeys,
    DecKeys,
}

/// Reads the whole body by `until` into a buffer that is wiped on drop, also when it has to
/// grow (a plain `Vec` would leave copies of key material behind in freed memory).
/// `None` when the body exceeds [`MAX_BODY`].
pub(super) fn read_body(
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
pub(super) fn order_keys(
    keys: Vec<QkdKey>,
    ids: &[KeyId],
    url: &Url,
) -> Result<Vec<QkdKey>, KmeError> {
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
pub(super) fn check_same_length(keys: &[QkdKey], url: &Url) -> Result<(), KmeError> {
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
pub(super) fn error_from_answer(
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
pub(super) enum Transport {
    /// The TLS handshake was refused: not transient.
    Tls(String),
    Other(String),
}

/// Explains a transport failure: timeouts name `kme.timeout`, TLS failures say which
/// side's certificate was refused and what to do (see [`crate::kme::tls::explain`]).
pub(super) fn transport_reason(
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
        return Transport::Tls(crate::kme::tls::explain(&tls));
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
