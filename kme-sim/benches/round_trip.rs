//! enc_keys + dec_keys round trip on loopback through the simulator, as the plugin does it:
//! a reqwest blocking client per SAE over mutual TLS, connections kept alive.
//!
//! `cargo bench -p qkd-kme-sim --bench round_trip [-- ROUND_TRIPS]` prints p50/p90/p99/max.
//! The link's key rate is set far above what the loop consumes, so the numbers measure the
//! simulator's request handling, not a drained pool.

use std::time::{Duration, Instant};

use qkd_kme_sim::{SimOptions, TestLink};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const WARM_UP: usize = 500;
const DEFAULT_ROUND_TRIPS: usize = 10_000;

fn client(link: &TestLink, sae: &str) -> Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(link.ca_pem()).unwrap()).unwrap();
    Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&link.sae_identity_pem(sae)).unwrap())
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

/// One enc_keys at KME-A by the master, then dec_keys at KME-B by the slave; checks that both
/// got the same key so a broken simulator cannot post a good time.
fn round_trip(master: &Client, slave: &Client, enc_url: &str, dec_url: &str) {
    let sent: Value = master
        .post(enc_url)
        .json(&json!({"number": 1, "size": 256}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = &sent["keys"][0];
    let received: Value = slave
        .post(dec_url)
        .json(&json!({"key_IDs": [{"key_ID": key["key_ID"]}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        received["keys"][0]["key"], key["key"],
        "{sent} / {received}"
    );
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    // `cargo bench` passes `--bench`; the only argument we take is an optional count.
    let round_trips = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(DEFAULT_ROUND_TRIPS);
    let link = TestLink::start(SimOptions {
        key_rate: 1_000_000_000,
        max_key_count: 100_000,
        ..SimOptions::default()
    });
    let master = client(&link, TestLink::SAE_A);
    let slave = client(&link, TestLink::SAE_B);
    let enc_url = format!(
        "{}/api/v1/keys/{}/enc_keys",
        link.kme_a_url,
        TestLink::SAE_B
    );
    let dec_url = format!(
        "{}/api/v1/keys/{}/dec_keys",
        link.kme_b_url,
        TestLink::SAE_A
    );

    for _ in 0..WARM_UP {
        round_trip(&master, &slave, &enc_url, &dec_url);
    }
    let mut latencies = Vec::with_capacity(round_trips);
    let started = Instant::now();
    for _ in 0..round_trips {
        let t = Instant::now();
        round_trip(&master, &slave, &enc_url, &dec_url);
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();

    let stats = link.admin(qkd_kme_sim::AdminCommand::Stats);
    let enc_requests = stats["requests"]["enc_keys"].as_u64().unwrap();
    assert_eq!(
        stats["responses"]["200"].as_u64().unwrap(),
        2 * enc_requests,
        "{stats}"
    );
    // One connection per SAE for the whole run: the numbers include no TLS handshakes.
    assert_eq!(stats["tls_connections"], 2, "{stats}");
    println!("qkd-kme-sim round trip (enc_keys at KME-A + dec_keys at KME-B, 1 x 256-bit key, mTLS, keep-alive)");
    println!("round trips: {round_trips} (after {WARM_UP} warm-up)");
    println!("p50: {:?}", percentile(&latencies, 0.50));
    println!("p90: {:?}", percentile(&latencies, 0.90));
    println!("p99: {:?}", percentile(&latencies, 0.99));
    println!("max: {:?}", latencies[latencies.len() - 1]);
    println!(
        "throughput: {:.0} round trips/s",
        round_trips as f64 / total.as_secs_f64()
    );
}
