use super::server::{self, StatusServer};
use super::*;
use crate::config::Config;
use crate::config::MapSettings;
use crate::ids::{KeyId, SaeId};
use crate::kme::{FailoverSource, KmeError, NodeRole, NodeState, QkdKey};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use zeroize::Zeroizing;

/// Delivers one key per set, or while `failing` fails as a dry KME (503) or a stopped
/// node (unreachable) does.
struct FakeKme {
    url: &'static str,
    failing: AtomicBool,
    failure: fn(String) -> KmeError,
}

impl FakeKme {
    fn new(url: &'static str, failure: fn(String) -> KmeError) -> FakeKme {
        FakeKme {
            url,
            failing: AtomicBool::new(false),
            failure,
        }
    }

    fn dry(url: String) -> KmeError {
        KmeError::NoKeyAvailable {
            url,
            message: "503: no key".into(),
        }
    }

    fn stopped(url: String) -> KmeError {
        KmeError::Unreachable {
            url,
            reason: "connection refused".into(),
            maybe_served: false,
        }
    }
}

impl KeySource for FakeKme {
    fn enc_keys(
        &self,
        _: &SaeId,
        bits: u32,
        _: usize,
        _: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err((self.failure)(self.url.into()));
        }
        Ok(vec![vec![QkdKey {
            id: KeyId([7; 16]),
            material: Zeroizing::new(vec![0; bits as usize / 8]),
        }]])
    }
    fn dec_keys(&self, _: &SaeId, _: &[KeyId], _: Instant) -> Result<Vec<QkdKey>, KmeError> {
        Err(KmeError::Rejected {
            url: self.url.into(),
            status: 400,
            message: "unknown key ID".into(),
        })
    }
    fn keys_per_set(&self, _: &SaeId, _: u32, _: Instant) -> Result<usize, KmeError> {
        Ok(1)
    }
    fn url(&self) -> &str {
        self.url
    }
}

fn runtime_with_stats() -> (Runtime, Arc<FakeKme>, Arc<KmeStats>) {
    let config = Config::load(&MapSettings::new(&[
        ("sae_id", "sae-a"),
        ("kme.url", "https://kme-a.test:8443"),
        ("kme.ca", "ca"),
        ("kme.cert", "cert"),
        ("kme.key", "key"),
        ("buffer", "0"),
        ("peers.gw-b.sae_id", "sae-b"),
        ("peers.gw-c.sae_id", "sae-c"),
    ]))
    .unwrap();
    let kme = Arc::new(FakeKme::new("https://kme-a.test:8443", FakeKme::dry));
    let stats = Arc::new(KmeStats::default());
    let measured: Arc<dyn KeySource> = Arc::new(MeasuredSource::new(kme.clone(), stats.clone()));
    let rt = Runtime::new(config, |_| Ok(measured.clone())).unwrap();
    (rt, kme, stats)
}

fn snapshot_after_traffic() -> Snapshot {
    let (rt, kme, stats) = runtime_with_stats();
    let far = Instant::now() + std::time::Duration::from_secs(5);
    let sae_b = SaeId::new("sae-b").unwrap();
    for _ in 0..3 {
        rt.source(PeerIndex(0))
            .enc_keys(&sae_b, 256, 1, far)
            .unwrap();
    }
    kme.failing.store(true, Ordering::SeqCst);
    assert!(rt
        .source(PeerIndex(0))
        .enc_keys(&sae_b, 256, 1, far)
        .is_err());
    Counters::bump(&rt.counters.qkd_secrets);
    Counters::bump(&rt.counters.no_key_sent);
    collect(&rt, SystemTime::now(), |_, _| Some(stats.clone()))
}

#[test]
fn snapshot_counts_and_times_kme_requests() {
    let s = snapshot_after_traffic();
    assert_eq!(s.protocol, PROTOCOL);
    assert_eq!(s.sae_id, "sae-a");
    assert_eq!(s.exchanges.qkd_secrets, 1);
    assert_eq!(s.exchanges.no_key_sent, 1);
    // Two peers, one KME client: one KME entry.
    assert_eq!(s.kmes.len(), 1);
    let kme = &s.kmes[0];
    assert_eq!((kme.requests, kme.errors, kme.keys), (4, 1, 3));
    assert_eq!(kme.latency.as_ref().unwrap().samples, 4);
    assert!(kme.last_success_unix.is_some());
    let err = kme.last_error.as_ref().unwrap();
    assert!(err.message.contains("503"), "{}", err.message);
    let names: Vec<_> = s
        .peers
        .iter()
        .map(|p| (p.name.as_str(), p.peer_sae_id.as_str()))
        .collect();
    assert_eq!(names, [("gw-b", "sae-b"), ("gw-c", "sae-c")]);
    assert!(s
        .peers
        .iter()
        .all(|p| p.kme == kme.url && p.local_sae_id == "sae-a"));
}

#[test]
fn a_kme_with_two_nodes_shows_which_one_serves_and_which_is_down() {
    let config = Config::load(&MapSettings::new(&[
        ("sae_id", "sae-a"),
        (
            "kme.url",
            "https://kme-a1.test:8443,https://kme-a2.test:8443",
        ),
        ("kme.ca", "ca"),
        ("kme.cert", "cert"),
        ("kme.key", "key"),
        ("buffer", "0"),
        ("peers.gw-b.sae_id", "sae-b"),
    ]))
    .unwrap();
    let urls = ["https://kme-a1.test:8443", "https://kme-a2.test:8443"];
    let nodes = urls.map(|url| Arc::new(FakeKme::new(url, FakeKme::stopped)));
    let stats = urls.map(|_| Arc::new(KmeStats::default()));
    let measured: Vec<Arc<dyn KeySource>> = nodes
        .iter()
        .zip(&stats)
        .map(|(n, s)| Arc::new(MeasuredSource::new(n.clone(), s.clone())) as Arc<dyn KeySource>)
        .collect();
    let source: Arc<dyn KeySource> = Arc::new(FailoverSource::new(
        measured,
        std::time::Duration::from_secs(3600),
    ));
    let rt = Runtime::new(config, |_| Ok(source.clone())).unwrap();
    let snapshot = || {
        collect(&rt, SystemTime::now(), |_, url| {
            urls.iter()
                .position(|u| *u == url)
                .map(|i| stats[i].clone())
        })
    };
    let far = Instant::now() + std::time::Duration::from_secs(5);
    let sae_b = SaeId::new("sae-b").unwrap();

    let s = snapshot();
    let states: Vec<_> = s
        .kmes
        .iter()
        .map(|k| (k.url.as_str(), k.state.as_str()))
        .collect();
    assert_eq!(states, [(urls[0], "active"), (urls[1], "standby")]);
    assert_eq!(s.peers[0].kme, urls[0]);

    nodes[0].failing.store(true, Ordering::SeqCst);
    rt.source(PeerIndex(0))
        .enc_keys(&sae_b, 256, 1, far)
        .unwrap();
    let s = snapshot();
    assert_eq!(s.peers[0].kme, urls[1]);
    let states: Vec<_> = s.kmes.iter().map(|k| k.state.as_str()).collect();
    assert_eq!(states, ["down", "active"]);
    assert!(s.kmes[0].down_since_unix.is_some() && s.kmes[1].down_since_unix.is_none());
    assert_eq!((s.kmes[0].errors, s.kmes[1].keys), (1, 1));
    assert_eq!(
        parse_answer(&serde_json::to_string(&s).unwrap()).unwrap(),
        s
    );

    let table = render_table(&s);
    assert!(
        table.contains(&format!(
            "KME {}: down since 0s ago, 1 requests, 0 keys, 1 errors; last error 0s ago: KME {} unreachable",
            urls[0], urls[0]
        )),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "KME {}: active, 1 requests, 1 keys, 0 errors",
            urls[1]
        )),
        "{table}"
    );
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("gw-b ")).collect();
    assert!(rows.len() == 1 && rows[0].contains(urls[1]), "{table}");

    let metrics = render_metrics(&s);
    for (url, active) in [(urls[0], 0), (urls[1], 1)] {
        assert!(
            metrics.contains(&format!(
                "strongswan_qkd_kme_active{{kme=\"{url}\"}} {active}\n"
            )),
            "{metrics}"
        );
    }
    assert!(metrics.contains(&format!(
        "strongswan_qkd_kme_down_since_timestamp_seconds{{kme=\"{}\"}} ",
        urls[0]
    )));
    assert!(!metrics.contains(&format!(
        "strongswan_qkd_kme_down_since_timestamp_seconds{{kme=\"{}\"}}",
        urls[1]
    )));
}

#[test]
fn percentiles_are_nearest_rank() {
    let stats = KmeStats::default();
    for ms in 1..=100 {
        stats.record_request(std::time::Duration::from_millis(ms), Ok(1));
    }
    let node = NodeState {
        url: "u".into(),
        role: NodeRole::Active,
    };
    let l = stats.status(&node).latency.unwrap();
    assert_eq!((l.p50_us, l.p99_us), (50_000, 99_000));
    // The window keeps the most recent requests only.
    for _ in 0..300 {
        stats.record_request(std::time::Duration::from_millis(2), Ok(1));
    }
    let status = stats.status(&node);
    assert_eq!(status.requests, 400);
    assert_eq!(status.latency.unwrap().p99_us, 2_000);
}

#[test]
fn requests_are_answered_and_bad_ones_get_an_error_document() {
    let s = snapshot_after_traffic();
    let reply = answer(br#"{"command":"status"}"#, || Some(s.clone()));
    assert_eq!(parse_answer(&reply).unwrap(), s);
    for bad in [
        &b"garbage"[..],
        b"{}",
        br#"{"command":"status","x":1}"#,
        b"\xff\xfe",
    ] {
        let reply = answer(bad, || unreachable!("no snapshot for a bad request"));
        assert!(
            parse_answer(&reply).unwrap_err().contains("bad request"),
            "{reply}"
        );
    }
    let reply = answer(br#"{"command":"flush"}"#, || unreachable!());
    assert!(parse_answer(&reply)
        .unwrap_err()
        .contains("unknown command 'flush'"));
    let reply = answer(br#"{"command":"status"}"#, || None);
    assert!(parse_answer(&reply)
        .unwrap_err()
        .contains("no configuration"));
}

#[test]
fn metrics_are_prometheus_text_with_help_and_type() {
    let s = snapshot_after_traffic();
    let text = render_metrics(&s);
    assert!(text.contains(
        "# TYPE strongswan_qkd_qkd_secrets_total counter\nstrongswan_qkd_qkd_secrets_total 1\n"
    ));
    assert!(
        text.contains("strongswan_qkd_outbound_key_sets{peer=\"gw-b\",peer_sae_id=\"sae-b\"} 0\n")
    );
    assert!(text.contains("strongswan_qkd_kme_requests_total{kme=\"https://kme-a.test:8443\"} 4\n"));
    assert!(text.contains("strongswan_qkd_kme_keys_total{kme=\"https://kme-a.test:8443\"} 3\n"));
    assert!(text.contains(
        "strongswan_qkd_kme_latency_seconds{kme=\"https://kme-a.test:8443\",quantile=\"0.99\"} "
    ));
    assert!(text
        .contains("strongswan_qkd_kme_latency_seconds_count{kme=\"https://kme-a.test:8443\"} 4\n"));
    // Every sample belongs to a family announced with HELP and TYPE just before it.
    let mut family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            family = rest.split(' ').next().unwrap().to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            assert!(rest.starts_with(&format!("{family} ")), "{line}");
        } else {
            assert!(line.starts_with(&family), "{line} outside {family}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

#[test]
fn table_has_one_row_per_peer_and_the_last_kme_error() {
    let table = render_table(&snapshot_after_traffic());
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "qkd {}: SAE 'sae-a', method 1042 (QKD), 256-bit keys, in-method curve25519,",
            env!("CARGO_PKG_VERSION")
        )),
        "{table}"
    );
    assert!(lines[1].contains("1 QKD secrets"), "{table}");
    assert!(lines[3].starts_with("PEER"), "{table}");
    assert!(
        lines[4].starts_with("gw-b ") && lines[4].contains("sae-b"),
        "{table}"
    );
    assert!(lines[5].starts_with("gw-c "), "{table}");
    assert!(
        lines[6].contains(
            "KME https://kme-a.test:8443: active, 4 requests, 3 keys, 1 errors; last error 0s ago: KME https://kme-a.test:8443 has no key"
        ),
        "{table}"
    );
}

#[test]
fn server_answers_survives_bad_clients_and_is_owner_only() {
    let dir = std::env::temp_dir().join(format!("qkd-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("charon.qkd");
    let s = snapshot_after_traffic();
    let served = s.clone();
    let server = StatusServer::start(&path, Arc::new(move || Some(served.clone()))).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second server refuses a socket that is in use.
    assert!(StatusServer::start(&path, Arc::new(|| None)).is_err());

    let raw = |request: &[u8]| {
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(request).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        reply
    };
    assert!(raw(b"not json\n").contains("bad request"));
    assert!(raw(&vec![b'x'; 5000]).contains("longer than"));
    assert!(raw(b"{\"command\":\"status\"}").contains("not ended by a newline"));
    // A client that connects and says nothing is dropped without blocking later ones for long.
    let _silent = UnixStream::connect(&path).unwrap();
    assert_eq!(request_status(&path).unwrap(), s);

    drop(server);
    assert!(!path.exists(), "the socket is removed on stop");
    // A stale socket file (no server behind it) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let server = StatusServer::start(&path, Arc::new(|| None)).unwrap();
    assert!(request_status(&path)
        .unwrap_err()
        .contains("no configuration"));
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn socket_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkd-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A client that sends one byte every 100 ms and never a newline, until the server closes
/// the connection; tells `closed` when that happened.
fn trickling_client(path: &Path) -> std::sync::mpsc::Receiver<()> {
    let mut client = UnixStream::connect(path).unwrap();
    let (closed, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while client.write_all(b"x").is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = closed.send(());
    });
    rx
}

/// The name of the socket never refers to anything but a 0600 socket: it is bound under
/// another name, in a private directory, and renamed into place.
#[test]
fn the_socket_is_bound_privately_then_renamed_into_place() {
    let dir = socket_dir("status-bind");
    let path = dir.join("charon.qkd");
    let listener = server::bind_private(&path).unwrap();
    let bound = listener.local_addr().unwrap();
    let bound = bound.as_pathname().unwrap();
    assert_ne!(
        bound, path,
        "bound at the public name (then chmod: a window)"
    );
    assert!(
        !bound.parent().unwrap().exists(),
        "the private directory is gone"
    );
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    UnixStream::connect(&path).expect("served under its public name");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "nothing else left behind"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client that keeps sending, a byte at a time, is cut off at its deadline in all (not
/// one per read, which it would never exceed).
#[test]
fn a_trickling_client_is_dropped_at_its_total_deadline() {
    let dir = socket_dir("status-trickle");
    let path = dir.join("charon.qkd");
    let server = StatusServer::start_with_deadline(
        &path,
        Arc::new(|| None),
        std::time::Duration::from_millis(300),
    )
    .unwrap();
    let closed = trickling_client(&path);
    closed
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the server closed the connection");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Stopping the server (plugin unload, a reload moving the socket) does not wait for the
/// client it is serving, however long that client's deadline.
#[test]
fn a_stalled_client_does_not_delay_stop() {
    let dir = socket_dir("status-stop");
    let path = dir.join("charon.qkd");
    let server = StatusServer::start_with_deadline(
        &path,
        Arc::new(|| None),
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let closed = trickling_client(&path);
    let _silent = UnixStream::connect(&path).unwrap();
    let (stopped, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(server);
        let _ = stopped.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("stop returned while a client was being served");
    // Not left behind after a bounded wait: the thread cut its client off and ended.
    closed
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("stop cut the client off");
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn internal_errors_show_in_the_table_and_the_metrics() {
    let mut s = snapshot_after_traffic();
    s.internal_errors = 2;
    let table = render_table(&s);
    assert!(
        table.contains("INTERNAL ERRORS: 2 since the plugin was loaded"),
        "{table}"
    );
    let metrics = render_metrics(&s);
    assert!(
        metrics.contains("strongswan_qkd_internal_errors_total 2\n"),
        "{metrics}"
    );
    s.internal_errors = 0;
    assert!(!render_table(&s).contains("INTERNAL ERRORS"));
}
