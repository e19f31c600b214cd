//! The two renderings of a [`Snapshot`]: the `qkdctl status` table and the Prometheus
//! text of `qkdctl metrics`.

use crate::{KmeState, KmeStatus, PeerStatus, Snapshot};
use std::fmt::Write;

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
            None => k.state.to_string(),
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

/// A metric's value for one peer.
type PerPeer = fn(&PeerStatus) -> String;
/// A metric's value for one KME node; None leaves the node out.
type PerKme = fn(&KmeStatus) -> Option<String>;

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
    let per_peer = |value: PerPeer| {
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
    let peer_gauges: [(&str, &str, PerPeer); 6] = [
        ("outbound_key_sets", "Key sets in the peer's outbound queue (this gateway as ETSI master).", |p| p.outbound_sets.to_string()),
        ("inbound_keys", "Keys in the peer's inbound cache (fetched ahead as ETSI slave).", |p| p.inbound_keys.to_string()),
        ("pending_keys", "Keys the peer announced that are not fetched yet.", |p| p.pending_keys.to_string()),
        ("outbound_target_sets", "Key sets the depth controller keeps in the peer's outbound queue now (demand x KME delay, within buffer..buffer_max).", |p| p.target_sets.to_string()),
        ("key_demand_sets_per_second", "Key sets this gateway's exchanges with the peer take per second (smoothed).", |p| format!("{:.3}", p.demand_per_second)),
        ("key_supply_keys_per_second", "Keys the KME delivers into the peer's outbound queue per second (smoothed).", |p| format!("{:.3}", p.supply_per_second)),
    ];
    for (name, help, value) in peer_gauges {
        family(name, "gauge", help, per_peer(value));
    }
    let per_kme = |value: PerKme| {
        s.kmes
            .iter()
            .filter_map(|k| Some((format!("{{kme=\"{}\"}}", label(&k.url)), value(k)?)))
            .collect::<Vec<_>>()
    };
    let kme_families: [(&str, &str, &str, PerKme); 5] = [
        (
            "kme_active",
            "gauge",
            "1 for the KME node requests go to, 0 for a standby or down node of the same KME.",
            |k| Some(u8::from(k.state == KmeState::Active).to_string()),
        ),
        (
            "kme_down_since_timestamp_seconds",
            "gauge",
            "Unix time since which the KME node is down (absent while it answers).",
            |k| k.down_since_unix.map(|t| t.to_string()),
        ),
        (
            "kme_requests_total",
            "counter",
            "enc_keys and dec_keys requests to the KME (one may be several HTTP requests).",
            |k| Some(k.requests.to_string()),
        ),
        (
            "kme_keys_total",
            "counter",
            "Keys the KME delivered (to exchanges and into the buffers).",
            |k| Some(k.keys.to_string()),
        ),
        (
            "kme_errors_total",
            "counter",
            "KME requests that failed (unreachable, no key, refused, unusable answer).",
            |k| Some(k.errors.to_string()),
        ),
    ];
    for (name, kind, help, value) in kme_families {
        family(name, kind, help, per_kme(value));
    }
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
    let kme_timestamps: [(&str, &str, PerKme); 2] = [
        (
            "kme_last_success_timestamp_seconds",
            "Unix time of the KME's last successful answer (absent before the first).",
            |k| k.last_success_unix.map(|t| t.to_string()),
        ),
        (
            "kme_last_error_timestamp_seconds",
            "Unix time of the KME's last error (absent before the first).",
            |k| k.last_error.as_ref().map(|e| e.at_unix.to_string()),
        ),
    ];
    for (name, help, value) in kme_timestamps {
        family(name, "gauge", help, per_kme(value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_label_values() {
        assert_eq!(age(1000, Some(1000 - 300)), "5m ago");
        assert_eq!(age(1000, None), "never");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
