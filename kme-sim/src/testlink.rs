//! [`TestLink`]: a whole simulated QKD link for other crates' tests, in one call.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::admin::{self, AdminCommand};
use crate::certs::{self, KmeCertSpec};
use crate::config::{KmeConfig, ServeConfig, SimOptions};
use crate::link::Link;
use crate::server::Simulator;

/// A running simulated link on 127.0.0.1: KME-A serving SAEs [`TestLink::SAE_A`] and
/// [`TestLink::INTEGER_SAE_A`], KME-B serving [`TestLink::SAE_B`], [`TestLink::SAE_B2`] and
/// [`TestLink::INTEGER_SAE_B`], plus the admin listener, with the journal on. (The integer
/// SAE IDs serve tests of the integer-SAE-ID deviation, under which the others get 400.) It runs on its own thread and tokio runtime, so blocking clients in the test
/// thread (and async clients on another runtime) both work. Dropping it stops the simulator
/// and deletes the certificate directory.
pub struct TestLink {
    /// Directory with the test PKI: `ca.pem`, `kme-a.pem`/`.key`, `kme-b.pem`/`.key` and
    /// `<SAE ID>.pem`/`.key` for each SAE constant below.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT` of KME-A (certificate valid for 127.0.0.1 and localhost).
    pub kme_a_url: String,
    /// A second listener of KME-A (same key store), standing for a redundant KME node.
    pub kme_a_standby_url: String,
    /// `https://127.0.0.1:PORT` of KME-B.
    pub kme_b_url: String,
    /// `http://127.0.0.1:PORT` of the admin listener (for `qkd-kme-sim admin --url`).
    pub admin_url: String,
    link: Arc<Link>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _pki: tempfile::TempDir,
}

impl TestLink {
    /// The SAE attached to KME-A.
    pub const SAE_A: &'static str = "sae-a";
    /// The SAE attached to KME-B.
    pub const SAE_B: &'static str = "sae-b";
    /// A second SAE attached to KME-B, e.g. to ask for another slave's keys.
    pub const SAE_B2: &'static str = "sae-b2";
    /// An SAE whose certificate the CA signed but that no KME serves (401 everywhere).
    pub const SAE_UNREGISTERED: &'static str = "sae-unregistered";
    /// An SAE attached to KME-A with an integer ID, for the integer-SAE-ID deviation.
    pub const INTEGER_SAE_A: &'static str = "1001";
    /// An SAE attached to KME-B with an integer ID.
    pub const INTEGER_SAE_B: &'static str = "2001";
    /// KME IDs, as reported by `status`.
    pub const KME_A_ID: &'static str = "KME-A";
    pub const KME_B_ID: &'static str = "KME-B";

    /// Generates the PKI and starts the link. `opts.journal` is forced on. Panics with the
    /// reason if anything fails: this is a test fixture.
    pub fn start(opts: SimOptions) -> TestLink {
        let pki = tempfile::Builder::new()
            .prefix("qkd-kme-sim-")
            .tempdir()
            .expect("create a temporary directory for the test PKI");
        let dir = pki.path().to_path_buf();
        let kmes: Vec<KmeCertSpec> = ["kme-a", "kme-b"]
            .iter()
            .map(|name| KmeCertSpec {
                name: (*name).to_owned(),
                sans: vec!["127.0.0.1".into(), "localhost".into()],
            })
            .collect();
        let saes = [
            Self::SAE_A,
            Self::SAE_B,
            Self::SAE_B2,
            Self::SAE_UNREGISTERED,
            Self::INTEGER_SAE_A,
            Self::INTEGER_SAE_B,
        ]
        .map(String::from);
        certs::write_bundle(&dir, &kmes, &saes).expect("generate the test PKI");

        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let kme = |id: &str, name: &str, saes: &[&str], listeners: usize| KmeConfig {
            id: id.to_owned(),
            listen: vec![loopback; listeners],
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            saes: saes.iter().map(|s| (*s).to_owned()).collect(),
        };
        let config = ServeConfig {
            ca: dir.join("ca.pem"),
            kme_a: kme(
                Self::KME_A_ID,
                "kme-a",
                &[Self::SAE_A, Self::INTEGER_SAE_A],
                2,
            ),
            kme_b: kme(
                Self::KME_B_ID,
                "kme-b",
                &[Self::SAE_B, Self::SAE_B2, Self::INTEGER_SAE_B],
                1,
            ),
            admin_listen: Some(loopback),
            link: SimOptions {
                journal: true,
                ..opts
            },
        };
        config.link.validate().expect("valid SimOptions");

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("qkd-kme-sim")
            .enable_all()
            .build()
            .expect("start a tokio runtime for the simulator");
        let simulator = runtime
            .block_on(Simulator::bind(&config))
            .expect("start the simulator");
        let addrs = simulator.listen_addrs();
        let link = simulator.link();
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("qkd-kme-sim".into())
            .spawn(move || {
                runtime.block_on(simulator.run(
                    async {
                        // A dropped sender also means stop.
                        let _ = stop.await;
                    },
                    Duration::from_millis(200),
                ));
            })
            .expect("spawn the simulator thread");

        TestLink {
            dir,
            kme_a_url: format!("https://{}", addrs.kme_a[0]),
            kme_a_standby_url: format!("https://{}", addrs.kme_a[1]),
            kme_b_url: format!("https://{}", addrs.kme_b[0]),
            admin_url: admin::url_for(addrs.admin.expect("admin listener was configured")),
            link,
            shutdown: Some(shutdown),
            thread: Some(thread),
            _pki: pki,
        }
    }

    /// The CA certificate that signed both KME and all SAE certificates.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The client certificate (PEM) of `sae`, one of the SAE constants.
    pub fn sae_cert(&self, sae: &str) -> PathBuf {
        self.dir.join(format!("{sae}.pem"))
    }

    /// The client private key (PKCS#8 PEM) of `sae`.
    pub fn sae_key(&self, sae: &str) -> PathBuf {
        self.dir.join(format!("{sae}.key"))
    }

    /// Certificate followed by key, the form `reqwest::Identity::from_pem` takes.
    pub fn sae_identity_pem(&self, sae: &str) -> Vec<u8> {
        let mut pem = std::fs::read(self.sae_cert(sae)).expect("read SAE certificate");
        pem.extend(std::fs::read(self.sae_key(sae)).expect("read SAE key"));
        pem
    }

    /// Runs an admin command in-process (no HTTP, so it works from any thread or runtime)
    /// and returns its JSON answer, as `qkd-kme-sim admin` would print it. Panics on failure
    /// (e.g. `Journal` cannot fail here since the journal is always on).
    pub fn admin(&self, command: AdminCommand) -> Value {
        admin::execute(&self.link, &command)
            .unwrap_or_else(|err| panic!("admin {command:?}: {err}"))
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the simulator thread was already reported on stderr; do not panic
            // again inside drop.
            let _ = thread.join();
        }
    }
}
