//! The two renderings of a fixed snapshot, byte for byte: `qkdctl status` and `qkdctl
//! metrics` are read by people and by scrapers, so a change to either shows up here.
//! After an intended change: `QKD_UPDATE_GOLDEN=1 cargo test -p qkd-status` and review the
//! diff of tests/golden/.

use qkd_status::*;

fn snapshot() -> Snapshot {
    Snapshot {
        protocol: PROTOCOL,
        plugin_version: "0.1.0".into(),
        now_unix: 1_000_000,
        since_unix: 1_000_000 - 7_300,
        sae_id: "sae-a".into(),
        method_id: 1042,
        key_size: 256,
        buffer: 4,
        fallback: "none".into(),
        in_method: "curve25519 + mlkem768".into(),
        exchanges: ExchangeCounters {
            qkd_secrets: 12,
            dh_fallbacks: 1,
            no_key_sent: 2,
            no_key_refused: 3,
            failures: 4,
            key_mismatches: 1,
            unauthenticated_refused: 5,
        },
        buffered_keys: BufferCounters {
            buffered: 40,
            used: 30,
            wasted: 2,
            announce_failures: 1,
        },
        kmes: vec![
            KmeStatus {
                url: "https://kme-a1.test:8443".into(),
                state: KmeState::Down,
                down_since_unix: Some(1_000_000 - 90),
                requests: 7,
                errors: 3,
                keys: 8,
                latency_us_total: 70_500,
                latency: Some(Latency {
                    samples: 7,
                    p50_us: 8_000,
                    p99_us: 20_250,
                }),
                last_success_unix: Some(1_000_000 - 4_000),
                last_error: Some(LastError {
                    at_unix: 1_000_000 - 90,
                    message: "KME https://kme-a1.test:8443 unreachable".into(),
                }),
            },
            KmeStatus {
                url: "https://kme-a2.test:8443".into(),
                state: KmeState::Active,
                down_since_unix: None,
                requests: 20,
                errors: 0,
                keys: 41,
                latency_us_total: 100_000,
                latency: Some(Latency {
                    samples: 20,
                    p50_us: 4_500,
                    p99_us: 9_000,
                }),
                last_success_unix: Some(1_000_000 - 3),
                last_error: None,
            },
            KmeStatus {
                url: "https://kme-\"c\".test".into(),
                state: KmeState::Standby,
                down_since_unix: None,
                requests: 0,
                errors: 0,
                keys: 0,
                latency_us_total: 0,
                latency: None,
                last_success_unix: None,
                last_error: None,
            },
        ],
        peers: vec![
            PeerStatus {
                name: "gw-b".into(),
                local_sae_id: "sae-a".into(),
                peer_sae_id: "sae-b".into(),
                kme: "https://kme-a2.test:8443".into(),
                outbound_sets: 4,
                inbound_keys: 3,
                pending_keys: 1,
                target_sets: 6,
                cap_sets: 64,
                demand_per_second: 0.25,
                supply_per_second: 1.5,
                dry_in_seconds: Some(16.0),
                replacing_kme: false,
            },
            PeerStatus {
                name: "gw-c".into(),
                local_sae_id: "sae-a".into(),
                peer_sae_id: "sae-c".into(),
                kme: "https://kme-\"c\".test".into(),
                outbound_sets: 0,
                inbound_keys: 0,
                pending_keys: 0,
                target_sets: 4,
                cap_sets: 64,
                demand_per_second: 0.0,
                supply_per_second: 0.0,
                dry_in_seconds: None,
                replacing_kme: true,
            },
        ],
        internal_errors: 2,
    }
}

fn check(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("QKD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, golden, "{name} differs from {}", path.display());
}

#[test]
fn the_table_is_unchanged() {
    check("table.txt", &render_table(&snapshot()));
}

#[test]
fn the_metrics_are_unchanged() {
    check("metrics.txt", &render_metrics(&snapshot()));
}

#[test]
fn the_json_round_trips_through_the_protocol() {
    let s = snapshot();
    let reply = answer(br#"{"command":"status"}"#, || Some(s.clone()));
    assert_eq!(parse_answer(&reply).unwrap(), s);
}
