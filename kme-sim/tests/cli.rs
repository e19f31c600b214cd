//! The `qkd-kme-sim` binary as an operator uses it: gen-certs, serve (config file + flags),
//! admin, clear errors, and a clean exit on SIGTERM.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qkd-kme-sim"))
}

fn run(args: &[&str]) -> Output {
    sim().args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gen_certs(dir: &Path) {
    let out = run(&[
        "gen-certs",
        "--out",
        dir.to_str().unwrap(),
        "--kme",
        "kme-a:127.0.0.1,localhost",
        "--kme",
        "kme-b:127.0.0.1",
        "--sae",
        "sae-a",
        "--sae",
        "sae-b",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn admin(url: &str, command: &[&str]) -> Output {
    let mut args = vec!["admin", "--url", url];
    args.extend_from_slice(command);
    run(&args)
}

fn admin_json(url: &str, command: &[&str]) -> Value {
    let out = admin(url, command);
    assert!(out.status.success(), "admin {command:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Kills the server if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until_serving(server: &mut Server, admin_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !admin(admin_url, &["stats"]).status.success() {
        if let Some(status) = server.0.try_wait().unwrap() {
            let mut err = String::new();
            server
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("serve exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "simulator did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gen_certs_serve_admin_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    gen_certs(&dir.path().join("pki"));
    let (port_a, port_b, port_admin) = (free_port(), free_port(), free_port());
    let port_b2 = free_port();
    let config = dir.path().join("sim.toml");
    // Paths relative to the config file; the admin listener comes from a flag.
    std::fs::write(
        &config,
        format!(
            r#"
            ca = "pki/ca.pem"
            [kme_a]
            listen = "127.0.0.1:{port_a}"
            cert = "pki/kme-a.pem"
            key = "pki/kme-a.key"
            saes = ["sae-a"]
            [kme_b]
            listen = "127.0.0.1:{port_b}"
            cert = "pki/kme-b.pem"
            key = "pki/kme-b.key"
            saes = ["sae-b"]
            [link]
            max_key_count = 7
            key_rate = 0
            [deviations]
            same_kme_ids = true
            "#
        ),
    )
    .unwrap();
    let admin_url = format!("http://127.0.0.1:{port_admin}");
    let mut server = Server(
        sim()
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(["--admin-listen", &format!("127.0.0.1:{port_admin}")])
            // Repeated: KME-B listens on both (the flag replaces the file's one address).
            .args(["--kme-b-listen", &format!("127.0.0.1:{port_b}")])
            .args(["--kme-b-listen", &format!("127.0.0.1:{port_b2}")])
            // A bare switch flag means on.
            .arg("--status-extensions")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until_serving(&mut server, &admin_url);

    let pki = dir.path().join("pki");
    let mut identity = std::fs::read(pki.join("sae-a.pem")).unwrap();
    identity.extend(std::fs::read(pki.join("sae-a.key")).unwrap());
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.pem")).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let status: Value = client
        .get(format!(
            "https://localhost:{port_a}/api/v1/keys/sae-b/status"
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["stored_key_count"], 7, "{status}");
    assert_eq!(status["target_KME_ID"], "KME-A", "{status}");
    assert_eq!(status["status_extension"], Value::Null, "{status}");
    assert_eq!(status["vendor_link_state"], "up", "{status}");
    let enc_keys = format!("https://127.0.0.1:{port_a}/api/v1/keys/sae-b/enc_keys");
    assert!(client
        .post(&enc_keys)
        .json(&json!({"number": 2}))
        .send()
        .unwrap()
        .status()
        .is_success());

    let stats = admin_json(&admin_url, &["stats"]);
    assert_eq!(stats["keys_delivered_to_master"], 2, "{stats}");
    assert_eq!(stats["stored_key_count"], 5, "{stats}");
    assert_eq!(
        admin_json(&admin_url, &["fail-503", "on"]),
        json!({"fail_503": true})
    );
    assert_eq!(
        client
            .post(&enc_keys)
            .json(&json!({}))
            .send()
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        admin_json(&admin_url, &["fail-503", "off"]),
        json!({"fail_503": false})
    );
    assert_eq!(
        admin_json(&admin_url, &["latency", "0"]),
        json!({"latency_ms": 0})
    );
    assert_eq!(
        admin_json(&admin_url, &["refill", "100"]),
        json!({"added": 2, "stored_key_count": 7})
    );
    for command in [
        &["pause"][..],
        &["resume"],
        &["mismatch-next"],
        &["drop", "off"],
        &["hang", "off"],
        &["drip", "off"],
        &["profile", "spec"],
    ] {
        admin_json(&admin_url, command);
    }
    let listeners: Vec<String> = stats["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["kme"].as_str().unwrap(),
                l["addr"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        listeners,
        [
            format!("KME-A 127.0.0.1:{port_a}"),
            format!("KME-B 127.0.0.1:{port_b}"),
            format!("KME-B 127.0.0.1:{port_b2}")
        ]
    );
    let b2 = format!("127.0.0.1:{port_b2}");
    assert_eq!(
        admin_json(&admin_url, &["listener", &b2, "off"]),
        json!({"listener": b2, "up": false})
    );
    admin_json(&admin_url, &["listener", &b2, "on"]);
    let unknown = admin(&admin_url, &["listener", "127.0.0.1:1", "off"]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains(&b2), "{}", stderr(&unknown));
    let journal = admin(&admin_url, &["journal"]);
    assert!(!journal.status.success());
    assert!(
        stderr(&journal).contains("--journal"),
        "{}",
        stderr(&journal)
    );

    let kill = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    let mut log = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("QKD link simulator serving"), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    // Key material never reaches the log.
    assert!(!log.contains("\"key\""), "{log}");
}

#[test]
fn serve_refuses_bad_settings_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    gen_certs(dir.path());
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let good: Vec<String> = [
        "serve",
        "--ca",
        &p("ca.pem"),
        "--kme-a-listen",
        "127.0.0.1:0",
        "--kme-a-cert",
        &p("kme-a.pem"),
        "--kme-a-key",
        &p("kme-a.key"),
        "--kme-a-saes",
        "sae-a",
        "--kme-b-listen",
        "127.0.0.1:0",
        "--kme-b-cert",
        &p("kme-b.pem"),
        "--kme-b-key",
        &p("kme-b.key"),
        "--kme-b-saes",
        "sae-b,sae-c",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let with = |flag: &str, value: &str| {
        let mut args = good.clone();
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_owned(),
            None => args.extend([flag.to_owned(), value.to_owned()]),
        }
        args
    };
    let without = |flag: &str| {
        let mut args = good.clone();
        let i = args.iter().position(|a| a == flag).unwrap();
        args.drain(i..i + 2);
        args
    };
    let cases = [
        (without("--kme-a-listen"), "missing setting --kme-a-listen"),
        (with("--key-size", "100"), "invalid setting --key-size"),
        (
            with("--admin-listen", "192.0.2.1:9000"),
            "invalid setting --admin-listen",
        ),
        (with("--ca", &p("nope.pem")), "nope.pem"),
        (with("--kme-b-key", &p("kme-a.key")), "kme-b.pem"),
        (with("--config", &p("missing.toml")), "missing.toml"),
        // The real-KME profile takes only integer SAE IDs.
        (
            with("--profile", "real-kme"),
            "invalid setting --integer-sae-ids (`[deviations] integer_sae_ids` in a config file): SAE ID \"sae-a\"",
        ),
    ];
    for (args, expected) in cases {
        let out = sim().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
    }
    let out = run(&["serve", "--key-rate", "fast"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

#[test]
fn admin_errors() {
    let port = free_port();
    let out = admin(&format!("http://127.0.0.1:{port}"), &["stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the admin listener"),
        "{}",
        stderr(&out)
    );
    let out = admin("https://127.0.0.1:1", &["stats"]);
    assert!(stderr(&out).contains("plain http://"), "{}", stderr(&out));
    let out = admin("http://127.0.0.1:1", &["drop", "maybe"]);
    assert_eq!(out.status.code(), Some(2));
}
