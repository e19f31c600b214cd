//! FFI test: the plugin cdylib driven exactly as charon drives it, without charon.
//!
//! tests/ffi/fake_charon.c plays libstrongswan + libcharon (`lib` with settings, crypto
//! factory and proposal keywords, `dbg`, `charon` with bus and IKE SA, the enum name list;
//! built with -DSTRONGSWAN_VERSION also `library_init_register`, that VERSION string and
//! the plugin version check of strongSwan 6.0.3 and later). It dlopens the plugin cdylib
//! cargo built next to this test, loads it like the plugin loader, and runs one role of one
//! exchange in charon's call order (docs/strongswan-abi.md), exchanging KE data
//! as hex lines on stdin/stdout. Here two such processes (gw-a initiator, gw-b responder)
//! run against the KME simulator, and the outputs are checked against the simulator's
//! journal. Its own invariants (feature table layout, idempotent calls, NULL handling,
//! chunk ownership, enum names added and removed, every ECDH object destroyed) it reports
//! as "ok"/"not ok" lines; any "not ok" fails the test.
//!
//! Environment: CC (default `cc`) compiles the fake; QKD_FFI_VALGRIND=1 runs every process
//! under valgrind (definite leaks and memory errors fail the run).

use base64::Engine as _;
use qkd_kme_sim::{AdminCommand, SimOptions, TestLink};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strongswan_qkd::wire::{Keys, NoKeyReason, Request};

/// Generous: two cores shared with parallel tests (and valgrind when asked for).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Which libstrongswan the fake plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strongswan {
    /// No `library_init_register`, no version check.
    V6_0_1,
    /// Exports `library_init_register`, holds "6.1.0" in its read-only data, checks the
    /// plugin's version symbol like the real loader.
    V6_1_0,
    /// As V6_1_0 but holding "7.0.0": a release whose layouts nobody verified.
    V7_0_0,
}

impl Strongswan {
    fn version(self) -> &'static str {
        match self {
            Strongswan::V6_0_1 => "6.0.1",
            Strongswan::V6_1_0 => "6.1.0",
            Strongswan::V7_0_0 => "7.0.0",
        }
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cdylib cargo built together with the rlib this test links against (the library
/// target has both crate types, so `cargo test` builds both): target/<profile>/.
fn plugin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    // deps/ first: `cargo test` writes the cdylib there but does not always refresh the copy
    // in target/<profile>/ (that one may come from a `cargo build` with other features).
    let candidates = [
        deps.join("libstrongswan_qkd.so"),
        deps.join("../libstrongswan_qkd.so"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("plugin cdylib not found at {candidates:?}"))
        .canonicalize()
        .expect("canonical plugin path")
}

/// Compiles tests/ffi/fake_charon.c once per variant and test process.
fn fake_charon(version: Strongswan) -> &'static Path {
    static V601: OnceLock<PathBuf> = OnceLock::new();
    static V610: OnceLock<PathBuf> = OnceLock::new();
    static V700: OnceLock<PathBuf> = OnceLock::new();
    let cell = match version {
        Strongswan::V6_0_1 => &V601,
        Strongswan::V6_1_0 => &V610,
        Strongswan::V7_0_0 => &V700,
    };
    cell.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-charon");
        std::fs::create_dir_all(&dir).expect("create the build directory");
        let name = format!("fake_charon-{}", version.version());
        // Other test runs may share the target dir: build under a private name, then rename
        // (atomic; a process still running the old file keeps its inode).
        let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let mut cmd = Command::new(&cc);
        cmd.args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-g",
            "-O1",
            "-rdynamic",
        ])
        .arg("-I")
        .arg(repo().join("include"))
        .arg(repo().join("tests/ffi/fake_charon.c"))
        .arg("-o")
        .arg(&tmp)
        .args(["-ldl", "-lpthread"]);
        if version != Strongswan::V6_0_1 {
            cmd.arg(format!("-DSTRONGSWAN_VERSION=\"{}\"", version.version()));
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("running {cc}: {e}"));
        assert!(
            out.status.success(),
            "compiling fake_charon ({version:?}) failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join(name);
        std::fs::rename(&tmp, &path).expect("move fake_charon into place");
        path
    })
}

/// A test's working directory: settings files and a copy of the PKI (so it outlives a
/// stopped simulator). Removed on drop.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new(test: &str) -> Site {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ffi-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        Site { dir }
    }

    fn copy_pki(&self, link: &TestLink) {
        let mut files = vec![link.ca_pem()];
        for sae in [TestLink::SAE_A, TestLink::SAE_B] {
            files.extend([link.sae_cert(sae), link.sae_key(sae)]);
        }
        for f in files {
            std::fs::copy(&f, self.dir.join(f.file_name().unwrap())).expect("copy PKI file");
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("UTF-8 path").to_owned()
    }

    /// Writes `charon.plugins.qkd.*` settings: our SAE and KME (mutual TLS with our SAE's
    /// certificate), the peer's connection section, then `extra` (keys relative to
    /// charon.plugins.qkd).
    fn settings(&self, name: &str, gw: &Gateway, kme_url: &str, extra: &[(&str, &str)]) -> PathBuf {
        let mut lines = vec![
            ("sae_id".to_owned(), gw.sae.to_owned()),
            ("kme.url".to_owned(), kme_url.to_owned()),
            ("kme.ca".to_owned(), self.file("ca.pem")),
            ("kme.cert".to_owned(), self.file(&format!("{}.pem", gw.sae))),
            ("kme.key".to_owned(), self.file(&format!("{}.key", gw.sae))),
            (
                format!("peers.{}.sae_id", gw.peer_conn),
                gw.peer_sae.to_owned(),
            ),
        ];
        // Exchanges fetch their own keys (the journal then shows one exchange's worth)
        // unless a test of the key supply sets a buffer.
        if !extra.iter().any(|(k, _)| *k == "buffer") {
            lines.push(("buffer".to_owned(), "0".to_owned()));
        }
        // The status socket of each fake charon in its own test directory, not in /var/run.
        if !extra.iter().any(|(k, _)| *k == "socket") {
            let socket = format!("unix://{}", self.file(&format!("{name}.qkd")));
            lines.push(("socket".to_owned(), socket));
        }
        lines.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let text: String = lines
            .iter()
            .map(|(k, v)| format!("charon.plugins.qkd.{k}={v}\n"))
            .collect();
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write settings");
        path
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One side's identity: its SAE, and the connection name + SAE of its peer.
struct Gateway {
    sae: &'static str,
    peer_conn: &'static str,
    peer_sae: &'static str,
}

const GW_A: Gateway = Gateway {
    sae: TestLink::SAE_A,
    peer_conn: "gw-b",
    peer_sae: TestLink::SAE_B,
};
const GW_B: Gateway = Gateway {
    sae: TestLink::SAE_B,
    peer_conn: "gw-a",
    peer_sae: TestLink::SAE_A,
};
/// gw-a's address as gw-b sees it (peers.gw-a.remote on gw-b).
const GW_A_ADDR: &str = "192.0.2.10";
const GW_B_ADDR: &str = "192.0.2.20";

/// A running fake_charon.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<JoinHandle<String>>,
    what: String,
}

impl Proc {
    fn spawn(version: Strongswan, settings: &Path, mode: &str, args: &[&str]) -> Proc {
        let fake = fake_charon(version);
        let mut cmd = if std::env::var("QKD_FFI_VALGRIND").is_ok_and(|v| v == "1") {
            let mut c = Command::new("valgrind");
            c.args([
                "-q",
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
            ])
            .arg(format!(
                "--suppressions={}",
                repo().join("tests/ffi/valgrind.supp").display()
            ))
            .arg(fake);
            c
        } else {
            Command::new(fake)
        };
        cmd.arg(plugin()).arg(settings).arg(mode).args(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", fake.display()));
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            s
        });
        Proc {
            stdin: child.stdin.take(),
            child,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
            what: format!("{mode} ({})", version.version()),
        }
    }

    /// The value of the next stdout line tagged `tag` ("TAG value"); None once stdout ends.
    fn next(&mut self, tag: &str) -> Option<String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if let Some(value) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                        return Some(value.to_owned());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("{} hung; stdout so far: {:#?}", self.what, self.stdout);
                }
            }
        }
    }

    fn send(&mut self, tag: &str, value: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        // A process that already gave up has closed its end: that shows in its outcome.
        let _ = writeln!(stdin, "{tag} {value}").and_then(|_| stdin.flush());
    }

    fn finish(mut self) -> Outcome {
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "{} did not exit; stdout so far: {:#?}",
                        self.what, self.stdout
                    );
                }
            }
        }
        let status = self.child.wait().expect("wait for fake_charon");
        let stderr = self.stderr.take().unwrap().join().expect("stderr reader");
        Outcome {
            status,
            stdout: self.stdout,
            stderr,
            what: self.what,
        }
    }
}

struct Outcome {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
    what: String,
}

impl Outcome {
    fn values(&self, tag: &str) -> Vec<&str> {
        self.stdout
            .iter()
            .filter_map(|l| l.strip_prefix(tag)?.strip_prefix(' '))
            .collect()
    }

    fn value(&self, tag: &str) -> Option<&str> {
        self.values(tag).first().copied()
    }

    fn has(&self, line: &str) -> bool {
        self.stdout.iter().any(|l| l == line)
    }

    fn hex(&self, tag: &str) -> Vec<u8> {
        let v = self
            .value(tag)
            .unwrap_or_else(|| panic!("{}: no {tag} line\n{self}", self.what));
        hex(v)
    }

    /// Exit 0 after a full run (DONE), every invariant held, nothing logged to an unknown
    /// debug group, and the plugin loaded as the emulated strongSwan version wants.
    fn assert_clean(&self, version: Strongswan) {
        assert!(
            self.status.success() && self.has("DONE"),
            "{}: did not finish cleanly\n{self}",
            self.what
        );
        assert!(
            !self.stdout.iter().any(|l| l.starts_with("not ok")),
            "{}: invariant failed\n{self}",
            self.what
        );
        assert!(
            !self.stderr.contains("dbg[?"),
            "{}: log to an unknown debug group\n{self}",
            self.what
        );
        assert_eq!(
            self.value("version"),
            Some(version.version()),
            "{}: qkd_plugin_version\n{self}",
            self.what
        );
    }

    fn assert_logged(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "{}: expected log text {text:?}\n{self}",
            self.what
        );
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- {} exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.status,
            self.stdout.join("\n"),
            self.stderr
        )
    }
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Passes the initiator's KE data to the responder and the response back, as the two
/// charons' IKE messages would, and collects both outcomes. A side that fails sends
/// nothing; the other then sees its stdin close ("NO_PEER_KE") and cleans up.
fn exchange(mut initiator: Proc, mut responder: Proc) -> (Outcome, Outcome) {
    if let Some(request) = initiator.next("KE") {
        responder.send("KE", &request);
        if let Some(response) = responder.next("KE") {
            initiator.send("KE", &response);
        }
    }
    let i = initiator.finish();
    let r = responder.finish();
    (i, r)
}

/// Delivered keys, oldest first: (key_ID, key bytes, master, slave, size).
fn journal(link: &TestLink) -> Vec<(String, Vec<u8>, String, String, u64)> {
    let Value::Array(entries) = link.admin(AdminCommand::Journal) else {
        panic!("journal is not a list")
    };
    let s = |e: &Value, k: &str| {
        e[k].as_str()
            .unwrap_or_else(|| panic!("journal entry without {k}: {e}"))
            .to_owned()
    };
    entries
        .iter()
        .map(|e| {
            let key = base64::engine::general_purpose::STANDARD
                .decode(s(e, "key"))
                .expect("base64 key");
            (
                s(e, "key_ID"),
                key,
                s(e, "master"),
                s(e, "slave"),
                e["size"].as_u64().expect("size"),
            )
        })
        .collect()
}

/// Settings of both gateways on `link`; gw-b binds gw-a's SAE ID to gw-a's address.
fn two_gateways(site: &Site, link: &TestLink, extra: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    site.copy_pki(link);
    let a = site.settings("gw-a.conf", &GW_A, &link.kme_a_url, extra);
    let mut b_extra = vec![("peers.gw-a.remote", GW_A_ADDR)];
    b_extra.extend_from_slice(extra);
    let b = site.settings("gw-b.conf", &GW_B, &link.kme_b_url, &b_extra);
    (a, b)
}

fn initiator(version: Strongswan, settings: &Path) -> Proc {
    Proc::spawn(
        version,
        settings,
        "initiator",
        &["--conn", GW_A.peer_conn, "--remote", GW_B_ADDR],
    )
}

/// A responder in IKE_SA_INIT/IKE_INTERMEDIATE has no connection yet: "(unnamed)".
fn responder(version: Strongswan, settings: &Path, remote: &str) -> Proc {
    Proc::spawn(version, settings, "responder", &["--remote", remote])
}

/// Checks a successful exchange: equal secrets = the journal's QKD keys for sae-a -> sae-b
/// (in order) followed by the 32-byte toy ECDH secret (XOR of the two DH public values),
/// and the key IDs in both sides' logs.
fn assert_qkd_secret(link: &TestLink, i: &Outcome, r: &Outcome, key_bits: usize) {
    let secret = i.hex("SECRET");
    assert_eq!(
        secret,
        r.hex("SECRET"),
        "the peers derived different secrets\n{i}\n{r}"
    );

    let keys = journal(link);
    let total: u64 = keys.iter().map(|k| k.4).sum();
    assert_eq!(
        total as usize, key_bits,
        "exactly one exchange's worth of keys delivered: {keys:?}"
    );
    assert!(
        keys.iter().all(|k| k.2 == GW_A.sae && k.3 == GW_B.sae),
        "master sae-a, slave sae-b: {keys:?}"
    );
    let qkd: Vec<u8> = keys.iter().flat_map(|k| k.1.clone()).collect();
    assert_eq!(qkd.len() * 8, key_bits);
    assert_eq!(
        secret.len(),
        qkd.len() + 32,
        "QKD key || 32-byte ECDH secret"
    );
    assert_eq!(
        secret[..qkd.len()],
        qkd[..],
        "the secret starts with the QKD key material"
    );

    let (dh_i, dh_r) = (i.hex("DH"), r.hex("DH"));
    assert_eq!(
        (i.values("DH").len(), r.values("DH").len()),
        (1, 1),
        "one ECDH object per side"
    );
    let ecdh: Vec<u8> = dh_i.iter().zip(&dh_r).map(|(a, b)| a ^ b).collect();
    assert_eq!(
        secret[qkd.len()..],
        ecdh[..],
        "the secret ends with the ECDH secret"
    );

    let ids = keys
        .iter()
        .map(|k| k.0.as_str())
        .collect::<Vec<_>>()
        .join(",");
    i.assert_logged(&format!(
        "master for SAE 'sae-b' (connection 'gw-b'): got {key_bits} bits from KME"
    ));
    i.assert_logged(&format!("under key IDs {ids}\n"));
    r.assert_logged(&format!(
        "slave for SAE 'sae-a' (connection 'gw-a'): got {key_bits} bits from KME"
    ));
    r.assert_logged(&format!("under key IDs {ids}\n"));
    for side in [i, r] {
        side.assert_logged(&format!(
            "key IDs {ids} confirmed; shared secret = {key_bits}-bit QKD key + curve25519 secret"
        ));
        // The key must never reach a log line, in any hex spelling.
        for key in &keys {
            let lower: String = key.1.iter().map(|b| format!("{b:02x}")).collect();
            assert!(
                !side.stderr.to_lowercase().contains(&lower),
                "{}: QKD key logged\n{side}",
                side.what
            );
        }
    }
}

#[test]
fn exchange_secret_is_the_journal_key_then_the_ecdh_secret() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("exchange");
    let (a, b) = two_gateways(&site, &link, &[]);
    // Mixed versions: gw-a runs strongSwan 6.1.0, gw-b 6.0.1.
    let (i, r) = exchange(
        initiator(Strongswan::V6_1_0, &a),
        responder(Strongswan::V6_0_1, &b, GW_A_ADDR),
    );
    i.assert_clean(Strongswan::V6_1_0);
    r.assert_clean(Strongswan::V6_0_1);
    assert_qkd_secret(&link, &i, &r, 256);
    let key_id = &journal(&link)[0].0;
    i.assert_logged(&format!(
        "qkd-audit: ike_sa=gw-b[1] exchange=initial role=initiator peer_sae=sae-b \
         key_ids={key_id} kme={} result=qkd",
        link.kme_a_url.trim_end_matches('/')
    ));
    r.assert_logged(&format!(
        "qkd-audit: ike_sa=(unnamed)[1] exchange=initial role=responder peer_sae=sae-a \
         key_ids={key_id} kme={} result=qkd",
        link.kme_b_url.trim_end_matches('/')
    ));
    // DBG_CFG is 6 on 6.1.0 and 5 on 6.0.1: the plugin picks the right one at run time.
    i.assert_logged("dbg[CFG:1] qkd: SAE 'sae-a', method 1042 (QKD), 256-bit keys");
    r.assert_logged("dbg[CFG:1] qkd: SAE 'sae-b', method 1042 (QKD), 256-bit keys");
}

#[test]
fn exchange_assembles_key_size_from_several_kme_keys() {
    // A KME that hands out only 128-bit keys, one per request: 384 bits take three.
    let link = TestLink::start(SimOptions {
        key_size: 128,
        min_key_size: 128,
        max_key_size: 128,
        max_key_per_request: 1,
        ..SimOptions::default()
    });
    let site = Site::new("multikey");
    let (a, b) = two_gateways(&site, &link, &[("key_size", "384"), ("method_id", "4242")]);
    let (i, r) = exchange(
        initiator(Strongswan::V6_0_1, &a),
        responder(Strongswan::V6_1_0, &b, GW_A_ADDR),
    );
    i.assert_clean(Strongswan::V6_0_1);
    r.assert_clean(Strongswan::V6_1_0);
    assert_eq!(journal(&link).len(), 3, "three 128-bit keys");
    assert_qkd_secret(&link, &i, &r, 384);
    assert!(
        i.has("ok - get_method is 4242") && r.has("ok - get_method is 4242"),
        "{i}\n{r}"
    );
}

/// Without a QKD key the initiator still hands charon well-formed KE data that says why;
/// the responder refuses it in-band (set_public_key fails: charon answers
/// NO_PROPOSAL_CHOSEN, where strongSwan keeps the SA and retries).
fn assert_refused_in_band(i: &Outcome, r: &Outcome, reason: NoKeyReason, why: &str) {
    let request = Request::decode(&i.hex("KE")).expect("a well-formed request");
    assert_eq!(request.keys, Keys::Missing(reason), "{i}");
    assert!(!i.has("FAIL get_public_key"), "{i}");
    i.assert_logged("dbg[IKE:1] qkd: no QKD key for SAE 'sae-b': KME ");
    i.assert_logged(why);
    i.assert_logged("starting the exchange without QKD key");
    assert!(
        r.has("FAIL set_public_key") && r.value("KE").is_none(),
        "{r}"
    );
    r.assert_logged("qkd: SAE 'sae-a' started the exchange without QKD key");
    r.assert_logged("refusing it in-band");
    // The audit lines: charon drops the initiator's object without a response.
    i.assert_logged(
        "qkd-audit: ike_sa=gw-b[1] exchange=initial role=initiator peer_sae=sae-b key_ids=- kme=",
    );
    i.assert_logged(" result=no-key-sent");
    r.assert_logged("qkd-audit: ike_sa=(unnamed)[1] exchange=initial role=responder peer_sae=sae-a key_ids=- kme=");
    r.assert_logged(" result=refused-no-key");
}

#[test]
fn kme_503_sends_no_key_and_the_responder_refuses_in_band() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("fail503");
    let (a, b) = two_gateways(&site, &link, &[]);
    link.admin(AdminCommand::Fail503 { on: true });
    let (i, r) = exchange(
        initiator(Strongswan::V6_1_0, &a),
        responder(Strongswan::V6_1_0, &b, GW_A_ADDR),
    );
    i.assert_clean(Strongswan::V6_1_0);
    r.assert_clean(Strongswan::V6_1_0);
    assert_refused_in_band(&i, &r, NoKeyReason::KmeEmpty, "has no key available (503");
    assert!(journal(&link).is_empty(), "no key delivered");
}

#[test]
fn stopped_kme_sends_no_key_and_the_responder_refuses_in_band() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("stopped");
    let (a, b) = two_gateways(&site, &link, &[]);
    drop(link);
    let (i, r) = exchange(
        initiator(Strongswan::V6_0_1, &a),
        responder(Strongswan::V6_0_1, &b, GW_A_ADDR),
    );
    i.assert_clean(Strongswan::V6_0_1);
    r.assert_clean(Strongswan::V6_0_1);
    assert_refused_in_band(&i, &r, NoKeyReason::KmeUnreachable, "unreachable");
}

#[test]
fn kme_key_mismatch_fails_key_confirmation_on_the_initiator() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("mismatch");
    let (a, b) = two_gateways(&site, &link, &[]);
    link.admin(AdminCommand::MismatchNext);
    let (i, r) = exchange(
        initiator(Strongswan::V6_1_0, &a),
        responder(Strongswan::V6_1_0, &b, GW_A_ADDR),
    );
    i.assert_clean(Strongswan::V6_1_0);
    r.assert_clean(Strongswan::V6_1_0);
    let keys = journal(&link);
    assert_eq!(keys.len(), 1, "{keys:?}");
    // The responder cannot tell; it answers with a tag over the key it got.
    let r_secret = r.hex("SECRET");
    assert_ne!(
        r_secret[..32],
        keys[0].1[..],
        "the simulator did hand the slave another key"
    );
    assert!(
        i.has("FAIL set_public_key") && i.value("SECRET").is_none(),
        "{i}"
    );
    i.assert_logged(&format!(
        "dbg[IKE:1] qkd: key confirmation failed for key IDs {}",
        keys[0].0
    ));
}

#[test]
fn responder_refuses_an_sae_id_from_another_address() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("remote");
    let (a, b) = two_gateways(&site, &link, &[]);
    let (i, r) = exchange(
        initiator(Strongswan::V6_1_0, &a),
        responder(Strongswan::V6_1_0, &b, "198.51.100.7"),
    );
    i.assert_clean(Strongswan::V6_1_0);
    r.assert_clean(Strongswan::V6_1_0);
    assert!(
        r.has("FAIL set_public_key") && r.value("KE").is_none(),
        "{r}"
    );
    r.assert_logged("SAE ID 'sae-a' is bound to another address");
    r.assert_logged("198.51.100.7");
    // charon's responder sends NO_PROPOSAL_CHOSEN; the initiator gets no KE data.
    assert!(i.has("NO_PEER_KE") && i.value("SECRET").is_none(), "{i}");
}

#[test]
fn defensive_paths_reload_and_unload_on_both_versions() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("probe");
    let (a, _) = two_gateways(&site, &link, &[("method_id", "1111")]);
    let changed = site.settings(
        "gw-a-changed.conf",
        &GW_A,
        &link.kme_a_url,
        &[("method_id", "1112")],
    );
    for version in [Strongswan::V6_0_1, Strongswan::V6_1_0] {
        let p = Proc::spawn(
            version,
            &a,
            "probe",
            &["--reload-settings", changed.to_str().unwrap()],
        )
        .finish();
        p.assert_clean(version);
        assert!(
            p.has("ok - feature 1 is PLUGIN_PROVIDE(KE, 1111) (kind 0 type 9 ke 1111)"),
            "{p}"
        );
        assert!(p.has("ok - set_public_key(garbage) is FALSE"), "{p}");
        // Same settings: reloaded. Another method_id: refused, the old one stays in force.
        assert_eq!(p.values("reload"), ["1", "0"], "{p}");
        p.assert_logged("dbg[CFG:1] qkd: settings reloaded (1 peer(s))");
        p.assert_logged(
            "dbg[CFG:1] qkd: charon.plugins.qkd.method_id, dh_group and kem only change on restart",
        );
        p.assert_logged("peer sent malformed qkd KE data");
    }
    assert!(
        journal(&link).is_empty(),
        "the probes never ask the KME for keys"
    );
}

#[test]
fn bad_settings_make_plugin_create_return_null() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("badcfg");
    let (a, _) = two_gateways(&site, &link, &[]);
    let text = std::fs::read_to_string(&a)
        .unwrap()
        .replace("charon.plugins.qkd.sae_id=sae-a\n", "");
    std::fs::write(&a, text).unwrap();
    for version in [Strongswan::V6_0_1, Strongswan::V6_1_0] {
        let p = Proc::spawn(version, &a, "probe", &[]).finish();
        assert_eq!(p.status.code(), Some(3), "plugin refused to load\n{p}");
        p.assert_logged("dbg[CFG:1] qkd: not loading: charon.plugins.qkd.sae_id: missing");
        p.assert_logged("qkd_plugin_create returned NULL");
        assert_eq!(p.value("version"), Some(version.version()), "{p}");
    }
}

#[test]
fn an_unverified_strongswan_is_refused_by_its_loader_and_by_plugin_create() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("abiguard");
    let (a, _) = two_gateways(&site, &link, &[]);
    let refusal = "dbg[CFG:1] qkd: not loading: running strongSwan 7.0.0, but this plugin's \
                   strongSwan ABI layouts were verified only for strongSwan 6.0.x and 6.1.x; \
                   use a build verified for this release, or set \
                   charon.plugins.qkd.allow_unverified_strongswan = yes to load it at your own risk";

    // A >= 6.0.3 loader: the version symbol names what was verified, so the loader's own
    // check refuses, after our line saying why.
    let p = Proc::spawn(Strongswan::V7_0_0, &a, "probe", &[]).finish();
    assert_eq!(p.status.code(), Some(3), "{p}");
    assert_eq!(p.value("version"), Some("6.0.x/6.1.x"), "{p}");
    p.assert_logged(refusal);
    p.assert_logged("plugin version 6.0.x/6.1.x doesn't match version 7.0.0");

    // A loader that never compares the symbol (6.0.2, LD_PRELOAD): qkd_plugin_create
    // refuses, with the same line, logged once.
    let p = Proc::spawn(Strongswan::V7_0_0, &a, "probe", &["--no-version-check"]).finish();
    assert_eq!(p.status.code(), Some(3), "{p}");
    p.assert_logged(refusal);
    p.assert_logged("qkd_plugin_create returned NULL");
    assert_eq!(p.stderr.matches("qkd: not loading").count(), 1, "{p}");
    assert!(
        !p.stdout.iter().any(|l| l.starts_with("ok - ")),
        "nothing registered: {p}"
    );
    assert!(journal(&link).is_empty(), "a refused plugin asks no KME");
}

#[test]
fn allow_unverified_strongswan_loads_with_a_warning() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("abioverride");
    let (a, _) = two_gateways(&site, &link, &[("allow_unverified_strongswan", "yes")]);
    for args in [&[][..], &["--no-version-check"][..]] {
        let p = Proc::spawn(Strongswan::V7_0_0, &a, "probe", args).finish();
        p.assert_clean(Strongswan::V7_0_0);
        p.assert_logged(
            "dbg[CFG:1] qkd: WARNING: running strongSwan 7.0.0, but this plugin's strongSwan ABI \
             layouts were verified only for strongSwan 6.0.x and 6.1.x; loading anyway because \
             charon.plugins.qkd.allow_unverified_strongswan = yes",
        );
        assert_eq!(p.stderr.matches("WARNING: running").count(), 1, "{p}");
    }
    // On a verified release the setting changes nothing, and says nothing.
    for version in [Strongswan::V6_0_1, Strongswan::V6_1_0] {
        let p = Proc::spawn(version, &a, "probe", &[]).finish();
        p.assert_clean(version);
        assert!(!p.stderr.contains("WARNING: running"), "{p}");
    }
    // "no" is strongSwan's "no": refused.
    let (refusing, _) = two_gateways(&site, &link, &[("allow_unverified_strongswan", "no")]);
    let p = Proc::spawn(Strongswan::V7_0_0, &refusing, "probe", &[]).finish();
    assert_eq!(p.status.code(), Some(3), "{p}");
}

/// Polls the status socket until `done` holds for the first peer (the plugin serves the
/// socket from the runtime installed at the time of each request).
fn status_when(
    socket: &Path,
    what: &str,
    done: impl Fn(&strongswan_qkd::status::PeerStatus) -> bool,
) -> strongswan_qkd::status::Snapshot {
    use strongswan_qkd::status::request_status;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = request_status(socket).expect("the plugin serves its status socket");
        if status.peers.first().is_some_and(&done) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reloads_that_change_nothing_or_are_refused_consume_no_keys() {
    let link = TestLink::start(SimOptions::default());
    let site = Site::new("reloadkeys");
    let (a, _) = two_gateways(&site, &link, &[("buffer", "2")]);
    let socket = PathBuf::from(site.file("gw-a.conf.qkd"));
    let same_socket = format!("unix://{}", socket.display());
    // Only method_id differs from gw-a.conf (the same status socket included).
    let restart_only = site.settings(
        "gw-a-method.conf",
        &GW_A,
        &link.kme_a_url,
        &[
            ("buffer", "2"),
            ("method_id", "1112"),
            ("socket", same_socket.as_str()),
        ],
    );
    let mut p = Proc::spawn(
        Strongswan::V6_1_0,
        &a,
        "probe",
        &[
            "--reload-settings",
            restart_only.to_str().unwrap(),
            "--hold",
        ],
    );
    // The probe's key exchange objects start the supply: gw-a's outbound queue fills to
    // its 2 key sets (256 bits, one key each).
    assert_eq!(p.next("HOLD").as_deref(), Some("reloading"));
    let filled = status_when(&socket, "the outbound queue never filled", |peer| {
        peer.outbound_sets == 2
    });
    assert_eq!(journal(&link).len(), 2);
    // Reload with the same settings (kept), then with another method_id (refused), then
    // create a key exchange object, as the next exchange would.
    p.send("GO", "reload");
    assert_eq!(p.next("HOLD").as_deref(), Some("unloading"));
    // Had either reload built a new runtime, its supply (started by the reload) would
    // begin with an empty queue, and the status, served from the installed runtime, would
    // show 2 sets only after they came from the KME: once it shows 2, the journal holds
    // every key any supply fetched to get there.
    let after = status_when(&socket, "the outbound queue is no longer full", |peer| {
        peer.outbound_sets == 2
    });
    let keys = journal(&link);
    let p = p.finish();
    p.assert_clean(Strongswan::V6_1_0);
    assert_eq!(p.values("reload"), ["1", "0"], "{p}");
    p.assert_logged(
        "qkd: settings reloaded (1 peer(s)), unchanged: keeping the KME clients and key buffers",
    );
    p.assert_logged("qkd: charon.plugins.qkd.method_id, dh_group and kem only change on restart");
    assert_eq!(
        keys.len(),
        2,
        "only the first outbound queue's 2 key sets were fetched: {keys:?}\n{p}"
    );
    assert_eq!(
        (after.kmes[0].requests, after.kmes[0].keys),
        (filled.kmes[0].requests, filled.kmes[0].keys),
        "no KME request since the queue filled\n{filled:?}\n{after:?}"
    );
    assert_eq!(after.buffered_keys, filled.buffered_keys);
}

#[test]
fn status_socket_shows_the_buffers_and_kme_after_the_first_exchange() {
    use std::os::unix::fs::PermissionsExt;
    use strongswan_qkd::status::request_status;

    let link = TestLink::start(SimOptions::default());
    let site = Site::new("status");
    let (a, _) = two_gateways(&site, &link, &[("buffer", "2")]);
    let socket = PathBuf::from(site.file("gw-a.conf.qkd"));
    let mut p = Proc::spawn(Strongswan::V6_1_0, &a, "probe", &["--hold"]);
    // The probe's key exchange objects started the status server and the key supply.
    assert_eq!(p.next("HOLD").as_deref(), Some("reloading"));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        let status = request_status(&socket).expect("the plugin serves its status socket");
        if status.peers[0].outbound_sets == 2 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the outbound queue never filled: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner only, like charon.vici");
    assert_eq!(status.sae_id, GW_A.sae);
    let peer = &status.peers[0];
    assert_eq!(
        (peer.name.as_str(), peer.peer_sae_id.as_str()),
        (GW_A.peer_conn, GW_A.peer_sae)
    );
    let kme = status.kme(&peer.kme).expect("the peer's KME is listed");
    assert_eq!(kme.url, link.kme_a_url.trim_end_matches('/'));
    // The journal counts the keys the KME handed out; each request of the refill thread
    // was timed.
    assert_eq!(journal(&link).len(), 2);
    assert!(kme.requests >= 1 && kme.errors == 0, "{kme:?}");
    assert_eq!(kme.keys, 2, "{kme:?}");
    assert!(
        kme.latency.is_some() && kme.last_success_unix.is_some(),
        "{kme:?}"
    );
    assert_eq!(status.buffered_keys.buffered, 2);

    p.send("GO", "reload");
    assert_eq!(p.next("HOLD").as_deref(), Some("unloading"));
    // An unchanged reload keeps the runtime and its counters.
    assert_eq!(request_status(&socket).unwrap().buffered_keys.buffered, 2);
    let p = p.finish();
    p.assert_clean(Strongswan::V6_1_0);
    p.assert_logged("qkd: status socket unix://");
    assert!(!socket.exists(), "unload removes the socket");
}

/// The credential set answering PPK lookups (peers.<conn>.ppk = yes) as ike_init.c and
/// ike_auth.c use it: a key exists for USE_PPK, the lookup by a KME key ID as PPK_ID returns
/// that key from the journal (the peer fetched it as master), a second lookup none; every
/// mem_cred_t, shared key, identity and enumerator the plugin made is gone afterwards.
#[test]
fn ppk_lookup_by_key_id_returns_the_kmes_key_once() {
    use strongswan_qkd::config::KmeSettings;
    use strongswan_qkd::ids::SaeId;
    use strongswan_qkd::kme::{Etsi014Client, KeySource};

    let link = TestLink::start(SimOptions::default());
    let site = Site::new("ppk");
    let (_, b) = two_gateways(&site, &link, &[("peers.gw-a.ppk", "yes")]);
    // What the peer without the plugin does: enc_keys at its KME for us.
    let master = Etsi014Client::new(&KmeSettings {
        url: link.kme_a_url.clone(),
        standby_urls: Vec::new(),
        ca: site.file("ca.pem"),
        cert: site.file("sae-a.pem"),
        key: site.file("sae-a.key"),
        timeout: Duration::from_secs(10),
    })
    .expect("KME-A client");
    // One key per emulated version (a key keys one IKE SA).
    let keys = master
        .enc_keys(
            &SaeId::new(TestLink::SAE_B).unwrap(),
            256,
            2,
            Instant::now() + Duration::from_secs(10),
        )
        .expect("enc_keys at KME-A");
    for (version, set) in [Strongswan::V6_0_1, Strongswan::V6_1_0]
        .into_iter()
        .zip(&keys)
    {
        let key = &set[0];
        let key_id = key.id.to_string();
        let p = Proc::spawn(
            version,
            &b,
            "ppk",
            &[
                "--conn",
                GW_B.peer_conn,
                "--remote",
                GW_A_ADDR,
                "--ppk-id",
                &key_id,
            ],
        )
        .finish();
        p.assert_clean(version);
        assert_eq!(p.hex("ppk"), key.material.to_vec(), "{p}");
        assert!(p.has("ok - the PPK matches its PPK_ID perfectly"), "{p}");
        p.assert_logged(&format!(
            "qkd-audit: ike_sa=gw-a[1] exchange=ppk role=responder peer_sae=sae-a \
             key_ids={key_id} kme={} result=ppk",
            link.kme_b_url
        ));
        // The second lookup of that PPK_ID: refused before any KME request.
        assert_eq!(p.values("again"), ["0"], "{p}");
        p.assert_logged("result=failed:key-used");
    }
}
