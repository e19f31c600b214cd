//! What `qkdctl` shows: a [`Snapshot`] of one runtime (counters, buffer levels, KME
//! statistics), the request protocol of the status socket, and the two renderings
//! (`qkdctl status`, `qkdctl metrics`).
//!
//! Protocol: the client sends one JSON line, `{"command":"status"}` (at most
//! [`MAX_REQUEST`] bytes), and reads one JSON document until the server closes: a
//! [`Snapshot`], or `{"error":"..."}`. `protocol` in the snapshot is bumped on incompatible
//! changes. The plugin serves it in [`server`]; the snapshot is JSON, not text, so one
//! plugin serves every rendering and scripts get the numbers as they are.

mod measured;
pub mod server;

pub use measured::{KmeStats, MeasuredSource};

use crate::ke::{Counters, Runtime};
use crate::kme::KeySource;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub const PROTOCOL: u32 = 1;
/// Longest request line the server reads; anything longer is refused.
pub const MAX_REQUEST: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub protocol: u32,
    pub plugin_version: String,
    /// The plugin's clock when the snapshot was taken (ages are relative to it).
    pub now_unix: u64,
    /// When this runtime was built: plugin load, or the last reload that changed settings.
    /// The counters count from then.
    pub since_unix: u64,
    pub sae_id: String,
    pub method_id: u16,
    pub key_size: u32,
    pub buffer: usize,
    pub fallback: String,
    /// The key exchanges inside the qkd method (dh_group, kem), e.g. "curve25519 + mlkem768".
    #[serde(default)]
    pub in_method: String,
    pub exchanges: ExchangeCounters,
    pub buffered_keys: BufferCounters,
    pub kmes: Vec<KmeStatus>,
    pub peers: Vec<PeerStatus>,
    /// Panics caught and poisoned locks recovered since the plugin was loaded
    /// ([`crate::health`]): each was logged as an internal error; should stay 0.
    #[serde(default)]
    pub internal_errors: u64,
}

/// [`Counters`]: key exchanges by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeCounters {
    pub qkd_secrets: u64,
    pub dh_fallbacks: u64,
    pub no_key_sent: u64,
    pub no_key_refused: u64,
    pub failures: u64,
    /// Of the failures: key confirmation found different keys under the same key IDs.
    pub key_mismatches: u64,
    /// Exchanges refused as responder before the peer was authenticated (IKE_SA_INIT,
    /// IKE_INTERMEDIATE), for any reason: anyone can drive this one, so it is kept apart
    /// from `no_key_refused` and `failures`.
    #[serde(default)]
    pub unauthenticated_refused: u64,
}

/// [`crate::supply::SupplyCounters`]: buffered keys (counted per key, not per set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferCounters {
    pub buffered: u64,
    pub used: u64,
    pub wasted: u64,
    pub announce_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KmeStatus {
    /// One node of a KME (`kme.url` may list several, tried in order).
    pub url: String,
    /// `active` (requests go here), `standby` (another node of the same KME is active) or
    /// `down` (failed, skipped until it answers a probe).
    pub state: String,
    /// Since when the node is down.
    pub down_since_unix: Option<u64>,
    /// enc_keys and dec_keys requests of the plugin, answered or not. One request for a
    /// batch of key sets may be several HTTP requests (the client follows the KME's
    /// max_key_per_request), so a KME may count more.
    pub requests: u64,
    pub errors: u64,
    /// Keys the KME delivered (to exchanges and to the buffers).
    pub keys: u64,
    /// Time spent in those requests, in microseconds (integers: JSON keeps them exact).
    pub latency_us_total: u64,
    /// Over the most recent requests; None before the first.
    pub latency: Option<Latency>,
    pub last_success_unix: Option<u64>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub at_unix: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// swanctl connection name (`peers.<name>`).
    pub name: String,
    pub local_sae_id: String,
    pub peer_sae_id: String,
    /// URL of the KME node serving this peer now (an entry of `kmes`).
    pub kme: String,
    /// Key sets ready for exchanges this gateway starts (master, enc_keys).
    pub outbound_sets: usize,
    /// Keys the peer announced, fetched from our KME (slave, dec_keys).
    pub inbound_keys: usize,
    /// Announced keys not fetched yet.
    pub pending_keys: usize,
    /// Outbound sets the depth controller keeps in place now (demand × KME delay), and its
    /// cap (`buffer_max`). Fields from here on are absent in older plugins' snapshots.
    #[serde(default)]
    pub target_sets: usize,
    #[serde(default)]
    pub cap_sets: usize,
    /// Key sets this gateway's exchanges take per second (smoothed).
    #[serde(default)]
    pub demand_per_second: f64,
    /// Keys the KME delivers into the outbound queue per second (smoothed).
    #[serde(default)]
    pub supply_per_second: f64,
    /// Seconds until the outbound queue runs dry at the current demand (None: no demand).
    #[serde(default)]
    pub dry_in_seconds: Option<f64>,
    /// The KME pair replaces keys the slave has not fetched (detected): one set at a time.
    #[serde(default)]
    pub replacing_kme: bool,
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl From<&Counters> for ExchangeCounters {
    fn from(c: &Counters) -> Self {
        ExchangeCounters {
            qkd_secrets: load(&c.qkd_secrets),
            dh_fallbacks: load(&c.dh_fallbacks),
            no_key_sent: load(&c.no_key_sent),
            no_key_refused: load(&c.no_key_refused),
            failures: load(&c.failures),
            key_mismatches: load(&c.key_mismatches),
            unauthenticated_refused: load(&c.unauthenticated_refused),
        }
    }
}

impl Snapshot {
    /// The state of `rt`, built at `since`. `stats_of` finds the statistics of one node
    /// (by URL) of a peer's key source (None for a node that is not measured).
    pub fn collect(
        rt: &Runtime,
        since: SystemTime,
        stats_of: impl Fn(&Arc<dyn KeySource>, &str) -> Option<Arc<KmeStats>>,
    ) -> Snapshot {
        let cfg = &rt.config;
        let mut kmes: Vec<KmeStatus> = Vec::new();
        let mut peers = Vec::with_capacity(cfg.peers.len());
        for (index, peer) in cfg.peers.iter().enumerate() {
            let source = rt.source(index);
            let url = source.url().to_owned();
            for node in source.nodes() {
                if kmes.iter().any(|k| k.url == node.url) {
                    continue;
                }
                kmes.push(match stats_of(source, &node.url) {
                    Some(stats) => stats.status(&node),
                    None => KmeStats::default().status(&node),
                });
            }
            let levels = rt.supply.levels(index);
            peers.push(PeerStatus {
                name: peer.name.clone(),
                local_sae_id: cfg.sae_id.to_string(),
                peer_sae_id: peer.sae_id.to_string(),
                kme: url,
                outbound_sets: levels.outbound_sets,
                inbound_keys: levels.inbound_keys,
                pending_keys: levels.pending_keys,
                target_sets: levels.target_sets,
                cap_sets: levels.cap_sets,
                demand_per_second: levels.demand_per_second,
                supply_per_second: levels.supply_per_second,
                dry_in_seconds: levels.dry_in().map(|d| d.as_secs_f64()),
                replacing_kme: levels.replacing_kme,
            });
        }
        let supply = rt.supply.counters();
        Snapshot {
            protocol: PROTOCOL,
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            now_unix: measured::unix_seconds(SystemTime::now()),
            since_unix: measured::unix_seconds(since),
            sae_id: cfg.sae_id.to_string(),
            method_id: cfg.method_id,
            key_size: cfg.key_size,
            buffer: cfg.buffer,
            fallback: cfg.fallback.to_string(),
            in_method: crate::ke::describe_methods(cfg.inner_methods().into_iter()),
            exchanges: ExchangeCounters::from(&rt.counters),
            buffered_keys: BufferCounters {
                buffered: load(&supply.buffered),
                used: load(&supply.used),
                wasted: load(&supply.wasted),
                announce_failures: load(&supply.announce_failures),
            },
            kmes,
            peers,
            internal_errors: crate::health::internal_errors(),
        }
    }

    pub fn kme(&self, url: &str) -> Option<&KmeStatus> {
        self.kmes.iter().find(|k| k.url == url)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    command: String,
}

#[derive(Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

fn error_reply(error: impl Into<String>) -> String {
    serde_json::to_string(&ErrorReply {
        error: error.into(),
    })
    .expect("a string serializes")
}

/// The server's answer to one request line: a snapshot, or an error document.
/// `snapshot` is only called for a valid request; None means the plugin has no runtime.
pub fn answer(request: &[u8], snapshot: impl FnOnce() -> Option<Snapshot>) -> String {
    let request: Request = match serde_json::from_slice(request) {
        Ok(r) => r,
        Err(e) => {
            return error_reply(format!(
                "bad request ({e}): send {{\"command\":\"status\"}}"
            ))
        }
    };
    match request.command.as_str() {
        "status" => match snapshot() {
            Some(s) => serde_json::to_string(&s).expect("a snapshot serializes"),
            None => error_reply("the qkd plugin has no configuration loaded"),
        },
        other => error_reply(format!(
            "unknown command '{}': the only command is \"status\"",
            other.escape_debug()
        )),
    }
}

/// The request line `qkdctl` sends.
pub fn status_request() -> String {
    "{\"command\":\"status\"}\n".to_owned()
}

/// A client's reading of the server's answer.
pub fn parse_answer(text: &str) -> Result<Snapshot, String> {
    if let Ok(ErrorReply { error }) = serde_json::from_str::<ErrorReply>(text) {
        return Err(error);
    }
    let snapshot: Snapshot = serde_json::from_str(text)
        .map_err(|e| format!("unreadable answer from the plugin: {e}"))?;
    if snapshot.protocol != PROTOCOL {
        return Err(format!(
            "the plugin speaks status protocol {}, this qkdctl {PROTOCOL}: install matching versions",
            snapshot.protocol
        ));
    }
    Ok(snapshot)
}

/// "12s ago", "3m ago", "never".
fn age(now: u64, at: Option<u64>) -> String {
    let Some(at) = at else {
        return "never".into();
    };
    let s = now.saturating_sub(at);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}

/// `qkdctl status`: a summary, one row per peer, one line per KME.
pub fn render_table(s: &Snapshot) -> String {
    let mut out = String::new();
    let e = &s.exchanges;
    let b = &s.buffered_keys;
    let _ = writeln!(
        out,
        "qkd {}: SAE '{}', method {} (QKD), {}-bit keys, in-method {}, buffer {}, fallback {}, counting since {}",
        s.plugin_version,
        s.sae_id,
        s.method_id,
        s.key_size,
        s.in_method,
        s.buffer,
        s.fallback,
        age(s.now_unix, Some(s.since_unix))
    );
    let _ = writeln!(
        out,
        "exchanges: {} QKD secrets, {} DH fallbacks, {} started without key, {} refused (peer had no key), {} failed ({} key mismatches), {} refused before authentication",
        e.qkd_secrets, e.dh_fallbacks, e.no_key_sent, e.no_key_refused, e.failures, e.key_mismatches, e.unauthenticated_refused
    );
    let _ = writeln!(
        out,
        "buffered keys: {} fetched ahead, {} used, {} wasted, {} announced but undeliverable",
        b.buffered, b.used, b.wasted, b.announce_failures
    );
    let header = [
        "PEER",
        "LOCAL SAE",
        "PEER SAE",
        "KME",
        "ANSWERED",
        "P50",
        "P99",
        "OUT SETS",
        "IN KEYS",
        "PENDING",
        "DEPTH/CAP",
        "DEMAND/S",
        "SUPPLY/S",
        "DRY IN",
    ];
    let rows: Vec<[String; 14]> = s
        .peers
        .iter()
        .map(|p| {
            let kme = s.kme(&p.kme);
            let latency = kme.and_then(|k| k.latency.as_ref());
            [
                p.name.clone(),
                p.local_sae_id.clone(),
                p.peer_sae_id.clone(),
                p.kme.clone(),
                age(s.now_unix, kme.and_then(|k| k.last_success_unix)),
                latency.map_or("-".into(), |l| ms(l.p50_us)),
                latency.map_or("-".into(), |l| ms(l.p99_us)),
                p.outbound_sets.to_string(),
                p.inbound_keys.to_string(),
                p.pending_keys.to_string(),
                if p.replacing_kme {
                    format!(
                        "{}/{} (KME replaces unfetched keys)",
                        p.target_sets, p.cap_sets
                    )
                } else {
                    format!("{}/{}", p.target_sets, p.cap_sets)
                },
                format!("{:.1}", p.demand_per_second),
                format!("{:.1}", p.supply_per_second),
                p.dry_in_seconds.map_or("-".into(), |d| format!("{d:.1}s")),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    for k in &s.kmes {
        let state = match k.down_since_unix {
            Some(since) => format!("down since {}", age(s.now_unix, Some(since))),
            None => k.state.clone(),
        };
        let _ = write!(
            out,
            "KME {}: {state}, {} requests, {} keys, {} errors",
            k.url, k.requests, k.keys, k.errors
        );
        match &k.last_error {
            Some(err) => {
                let _ = writeln!(
                    out,
                    "; last error {}: {}",
                    age(s.now_unix, Some(err.at_unix)),
                    err.message
                );
            }
            None => out.push('\n'),
        }
    }
    if s.internal_errors > 0 {
        let _ = writeln!(
            out,
            "INTERNAL ERRORS: {} since the plugin was loaded (panics or poisoned locks, see the \
             \"qkd: internal error\" lines in charon's log): please report them",
            s.internal_errors
        );
    }
    out
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

/// `qkdctl metrics`: Prometheus text exposition format (version 0.0.4).
pub fn render_metrics(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP strongswan_qkd_{name} {help}");
        let _ = writeln!(out, "# TYPE strongswan_qkd_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "strongswan_qkd_{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v.to_string())];
    let e = &s.exchanges;
    let b = &s.buffered_keys;
    family(
        "info",
        "gauge",
        "Plugin version and this gateway's SAE ID (always 1).",
        vec![(
            format!(
                "{{version=\"{}\",sae_id=\"{}\",method_id=\"{}\"}}",
                label(&s.plugin_version),
                label(&s.sae_id),
                s.method_id
            ),
            "1".into(),
        )],
    );
    family(
        "start_time_seconds",
        "gauge",
        "When the counters started (plugin load or a reload that changed settings), Unix time.",
        one(s.since_unix),
    );
    for (name, help, value) in [
        ("qkd_secrets_total", "Key exchanges that ended with a QKD shared secret.", e.qkd_secrets),
        ("dh_fallbacks_total", "Key exchanges that ended with an ECDH-only secret (fallback = dh).", e.dh_fallbacks),
        ("no_key_sent_total", "Exchanges this gateway started without a QKD key (no key in the buffer or from the KME).", e.no_key_sent),
        ("no_key_refused_total", "Exchanges refused in-band because the peer had no QKD key.", e.no_key_refused),
        ("failures_total", "Key exchanges that failed for another reason (see the qkd-audit log lines).", e.failures),
        ("key_mismatches_total", "Failed exchanges whose KMEs delivered different keys under the same key IDs.", e.key_mismatches),
        ("unauthenticated_refused_total", "Exchanges refused as responder before the peer was authenticated (not in the other counters).", e.unauthenticated_refused),
        ("internal_errors_total", "Panics caught and poisoned locks recovered since the plugin was loaded (bugs: see the log).", s.internal_errors),
        ("keys_buffered_total", "Keys a KME delivered into the outbound queues and inbound caches.", b.buffered),
        ("keys_used_total", "Buffered keys taken by an exchange.", b.used),
        ("keys_wasted_total", "Buffered keys wiped unused (expired after key_ttl, or dropped on reload).", b.wasted),
        ("announce_failures_total", "Key IDs a peer announced that our KME could not deliver ahead.", b.announce_failures),
    ] {
        family(name, "counter", help, one(value));
    }
    let per_peer = |value: fn(&PeerStatus) -> String| {
        s.peers
            .iter()
            .map(|p| {
                (
                    format!(
                        "{{peer=\"{}\",peer_sae_id=\"{}\"}}",
                        label(&p.name),
                        label(&p.peer_sae_id)
                    ),
                    value(p),
                )
            })
            .collect()
    };
    family(
        "outbound_key_sets",
        "gauge",
        "Key sets in the peer's outbound queue (this gateway as ETSI master).",
        per_peer(|p| p.outbound_sets.to_string()),
    );
    family(
        "inbound_keys",
        "gauge",
        "Keys in the peer's inbound cache (fetched ahead as ETSI slave).",
        per_peer(|p| p.inbound_keys.to_string()),
    );
    family(
        "pending_keys",
        "gauge",
        "Keys the peer announced that are not fetched yet.",
        per_peer(|p| p.pending_keys.to_string()),
    );
    family(
        "outbound_target_sets",
        "gauge",
        "Key sets the depth controller keeps in the peer's outbound queue now (demand x KME delay, within buffer..buffer_max).",
        per_peer(|p| p.target_sets.to_string()),
    );
    family(
        "key_demand_sets_per_second",
        "gauge",
        "Key sets this gateway's exchanges with the peer take per second (smoothed).",
        per_peer(|p| format!("{:.3}", p.demand_per_second)),
    );
    family(
        "key_supply_keys_per_second",
        "gauge",
        "Keys the KME delivers into the peer's outbound queue per second (smoothed).",
        per_peer(|p| format!("{:.3}", p.supply_per_second)),
    );
    let per_kme = |value: &dyn Fn(&KmeStatus) -> Option<String>| {
        s.kmes
            .iter()
            .filter_map(|k| Some((format!("{{kme=\"{}\"}}", label(&k.url)), value(k)?)))
            .collect::<Vec<_>>()
    };
    family(
        "kme_active",
        "gauge",
        "1 for the KME node requests go to, 0 for a standby or down node of the same KME.",
        per_kme(&|k| Some(u8::from(k.state == "active").to_string())),
    );
    family(
        "kme_down_since_timestamp_seconds",
        "gauge",
        "Unix time since which the KME node is down (absent while it answers).",
        per_kme(&|k| k.down_since_unix.map(|t| t.to_string())),
    );
    family(
        "kme_requests_total",
        "counter",
        "enc_keys and dec_keys requests to the KME (one may be several HTTP requests).",
        per_kme(&|k| Some(k.requests.to_string())),
    );
    family(
        "kme_keys_total",
        "counter",
        "Keys the KME delivered (to exchanges and into the buffers).",
        per_kme(&|k| Some(k.keys.to_string())),
    );
    family(
        "kme_errors_total",
        "counter",
        "KME requests that failed (unreachable, no key, refused, unusable answer).",
        per_kme(&|k| Some(k.errors.to_string())),
    );
    let mut latency = Vec::new();
    for k in &s.kmes {
        let url = label(&k.url);
        if let Some(l) = &k.latency {
            for (q, us) in [("0.5", l.p50_us), ("0.99", l.p99_us)] {
                latency.push((format!("{{kme=\"{url}\",quantile=\"{q}\"}}"), seconds(us)));
            }
        }
        latency.push((
            format!("_sum{{kme=\"{url}\"}}"),
            seconds(k.latency_us_total),
        ));
        latency.push((format!("_count{{kme=\"{url}\"}}"), k.requests.to_string()));
    }
    family(
        "kme_latency_seconds",
        "summary",
        "KME request latency (quantiles over the most recent 256 requests).",
        latency,
    );
    family(
        "kme_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the KME's last successful answer (absent before the first).",
        per_kme(&|k| k.last_success_unix.map(|t| t.to_string())),
    );
    family(
        "kme_last_error_timestamp_seconds",
        "gauge",
        "Unix time of the KME's last error (absent before the first).",
        per_kme(&|k| k.last_error.as_ref().map(|e| e.at_unix.to_string())),
    );
    out
}

#[cfg(test)]
mod tests;
