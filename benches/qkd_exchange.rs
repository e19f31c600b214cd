//! Full `qkd` key exchanges (initiator + responder state machines, ETSI 014 client with
//! mutual TLS, wire codec, key confirmation) against the KME simulator on loopback.
//! Prints exchanges/s and latency percentiles; results go to BENCHMARKS.md.
//!
//!     cargo bench --bench qkd_exchange [-- EXCHANGES]

use qkd_kme_sim::{SimOptions, TestLink};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strongswan_qkd::config::{Config, SettingsSource};
use strongswan_qkd::ke::{ExchangeContext, QkdKeyExchange, Runtime};
use strongswan_qkd::kme::{Etsi014Client, KeySource};

struct Gateway<'a> {
    link: &'a TestLink,
    me: &'static str,
    peer: &'static str,
    url: String,
    key_size: u32,
    buffer: usize,
}

impl SettingsSource for Gateway<'_> {
    fn get(&self, peer: Option<&str>, key: &str) -> Option<String> {
        let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
        match (peer, key) {
            (None, "sae_id") => Some(self.me.into()),
            (None, "dh_group") => Some("none".into()),
            (None, "key_size") => Some(self.key_size.to_string()),
            (None, "buffer") => Some(self.buffer.to_string()),
            (None, "kme.url") => Some(self.url.clone()),
            (None, "kme.ca") => Some(path(self.link.ca_pem())),
            (None, "kme.cert") => Some(path(self.link.sae_cert(self.me))),
            (None, "kme.key") => Some(path(self.link.sae_key(self.me))),
            (Some(_), "sae_id") => Some(self.peer.into()),
            _ => None,
        }
    }

    fn peers(&self) -> Vec<String> {
        vec![self.peer.into()]
    }
}

fn runtime(gw: &Gateway) -> Arc<Runtime> {
    let config = Config::load(gw).expect("bench settings");
    let rt = Runtime::new(config, |kme| {
        Ok(Arc::new(Etsi014Client::new(kme)?) as Arc<dyn KeySource>)
    });
    Arc::new(rt.expect("KME client"))
}

fn gateways(link: &TestLink, key_size: u32, buffer: usize) -> (Arc<Runtime>, Arc<Runtime>) {
    let (a, b) = (TestLink::SAE_A, TestLink::SAE_B);
    let gw_a = Gateway {
        link,
        me: a,
        peer: b,
        url: link.kme_a_url.clone(),
        key_size,
        buffer,
    };
    let gw_b = Gateway {
        link,
        me: b,
        peer: a,
        url: link.kme_b_url.clone(),
        key_size,
        buffer,
    };
    (runtime(&gw_a), runtime(&gw_b))
}

/// A rekey inside an established IKE SA (where announcements flow).
fn ctx(name: &str) -> ExchangeContext {
    ExchangeContext {
        connection: Some(name.into()),
        established: true,
        ..Default::default()
    }
}

/// How long both sides of a rekey wait for the KME (initiator: its KE data; responder:
/// processing the request) when the KME is 20 ms away, with and without key buffers;
/// exchanges 100 ms apart, as a busy gateway's.
fn exchange_wait_with_slow_kme() {
    for buffer in [0, 4] {
        let link = TestLink::start(SimOptions::default());
        link.admin(qkd_kme_sim::AdminCommand::Latency { ms: 20 });
        let (rt_a, rt_b) = gateways(&link, 256, buffer);
        let (mut initiator_waits, mut responder_waits) = (Vec::new(), Vec::new());
        for n in 0..60 {
            let mut i = QkdKeyExchange::new(rt_a.clone(), ctx(TestLink::SAE_B), Vec::new());
            let mut r = QkdKeyExchange::new(rt_b.clone(), ctx(TestLink::SAE_A), Vec::new());
            let t = Instant::now();
            let request = i.get_public_key().expect("initiator");
            let initiator = t.elapsed();
            let t = Instant::now();
            r.set_public_key(&request).expect("responder");
            let responder = t.elapsed();
            i.set_public_key(&r.get_public_key().expect("response"))
                .expect("confirmation");
            // The first exchanges start the supply and carry the first announcements.
            if n >= 10 {
                initiator_waits.push(initiator);
                responder_waits.push(responder);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        initiator_waits.sort();
        responder_waits.sort();
        println!(
            "KME latency 20 ms, buffer={buffer}: initiator waits p50={:?} p99={:?}, responder p50={:?} p99={:?}",
            percentile(&initiator_waits, 0.50),
            percentile(&initiator_waits, 0.99),
            percentile(&responder_waits, 0.50),
            percentile(&responder_waits, 0.99)
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let exchanges: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    for key_size in [256u32, 1024] {
        let link = TestLink::start(SimOptions {
            max_key_count: 4096,
            key_rate: 1_000_000_000,
            ..SimOptions::default()
        });
        let (rt_a, rt_b) = gateways(&link, key_size, 0);

        let mut latencies = Vec::with_capacity(exchanges);
        let started = Instant::now();
        for _ in 0..exchanges {
            let t = Instant::now();
            let mut i = QkdKeyExchange::new(rt_a.clone(), ctx(TestLink::SAE_B), Vec::new());
            let mut r = QkdKeyExchange::new(rt_b.clone(), ctx(TestLink::SAE_A), Vec::new());
            let request = i.get_public_key().expect("initiator");
            r.set_public_key(&request).expect("responder");
            i.set_public_key(&r.get_public_key().expect("response"))
                .expect("confirmation");
            assert_eq!(*i.shared_secret().unwrap(), *r.shared_secret().unwrap());
            latencies.push(t.elapsed());
        }
        let total = started.elapsed();
        let stats = link.admin(qkd_kme_sim::AdminCommand::Stats);
        println!("simulator stats after the run: {stats}");
        latencies.sort();
        println!(
            "key_size={key_size:>4} bits  exchanges={exchanges}  {:>7.0} exchanges/s  p50={:?}  p99={:?}  max={:?}",
            exchanges as f64 / total.as_secs_f64(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1],
        );
    }
    exchange_wait_with_slow_kme();
}
