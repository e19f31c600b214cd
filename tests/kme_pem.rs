//! Loading the KME's CA, our SAE certificate and key from PEM files (src/kme/tls.rs, PEM
//! parsing of rustls-pki-types): what loads, and that every refusal names the setting, the
//! file and what is wrong with it.

use qkd_kme_sim::certs::CertAuthority;
use std::path::PathBuf;
use std::time::Duration;
use strongswan_qkd::config::KmeSettings;
use strongswan_qkd::kme::{KmeError, KmeTlsConfig};

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA and an SAE certificate issued by it, as PEM files in a fresh directory.
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("kme-pem-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = CertAuthority::generate("pem test CA").unwrap();
        let sae = ca.issue_client("sae-a").unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("sae.pem"), &sae.cert_pem).unwrap();
        std::fs::write(dir.join("sae.key"), sae.key_pem.as_bytes()).unwrap();
        // Key and certificate in one file, key first.
        let bundle = format!("{}{}", sae.key_pem.as_str(), sae.cert_pem);
        std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
        // A PEM section whose END line is missing.
        let cut = &sae.cert_pem[..sae.cert_pem.find("-----END").unwrap()];
        std::fs::write(dir.join("truncated.pem"), cut).unwrap();
        std::fs::write(dir.join("text.pem"), "no PEM in here\n").unwrap();
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    fn settings(&self, ca: &str, cert: &str, key: &str) -> KmeSettings {
        KmeSettings {
            url: "https://kme.example:8443".into(),
            standby_urls: Vec::new(),
            ca: self.path(ca),
            cert: self.path(cert),
            key: self.path(key),
            timeout: Duration::from_secs(1),
        }
    }

    fn refusal(&self, ca: &str, cert: &str, key: &str) -> String {
        match KmeTlsConfig::load(&self.settings(ca, cert, key)) {
            Err(KmeError::Config(m)) => m,
            Err(e) => panic!("not a configuration error: {e:?}"),
            Ok(_) => panic!("loaded ca={ca} cert={cert} key={key}"),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn valid_pem_files_load_also_when_key_and_certificate_share_a_file() {
    let pki = Pki::new("valid");
    KmeTlsConfig::load(&pki.settings("ca.pem", "sae.pem", "sae.key")).expect("separate files");
    KmeTlsConfig::load(&pki.settings("ca.pem", "bundle.pem", "bundle.pem"))
        .expect("key and certificate in one file");
}

#[test]
fn each_refusal_names_the_setting_the_file_and_what_is_wrong() {
    let pki = Pki::new("refused");
    // (ca, cert, key), then the setting and file the refusal must name, and what it says.
    let cases = [
        (
            ["missing.pem", "sae.pem", "sae.key"],
            "kme.ca",
            "cannot open",
        ),
        (
            ["text.pem", "sae.pem", "sae.key"],
            "kme.ca",
            "contains no PEM certificate",
        ),
        (
            ["truncated.pem", "sae.pem", "sae.key"],
            "kme.ca",
            "cannot read PEM",
        ),
        (
            ["ca.pem", "sae.key", "sae.key"],
            "kme.cert",
            "contains no PEM certificate",
        ),
        (
            ["ca.pem", "truncated.pem", "sae.key"],
            "kme.cert",
            "cannot read PEM",
        ),
        (
            ["ca.pem", "sae.pem", "missing.key"],
            "kme.key",
            "cannot read",
        ),
        (
            ["ca.pem", "sae.pem", "sae.pem"],
            "kme.key",
            "contains no private key",
        ),
        (
            ["ca.pem", "sae.pem", "text.pem"],
            "kme.key",
            "contains no private key",
        ),
    ];
    for ([ca, cert, key], setting, what) in cases {
        let file = match setting {
            "kme.ca" => ca,
            "kme.cert" => cert,
            _ => key,
        };
        let m = pki.refusal(ca, cert, key);
        assert!(
            m.starts_with(&format!("{setting}: "))
                && m.contains(&format!("'{}'", pki.path(file)))
                && m.contains(what),
            "expected '{setting}: ... {file} ... {what}', got: {m}"
        );
    }
}
