//! Test and demo PKI: one CA that signs the KME server certificates and the SAE client
//! certificates. An SAE certificate carries the SAE ID as its subject CN, which is how the
//! simulator identifies the SAE (see README.md). Keys are ECDSA P-256, written as PKCS#8 PEM.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use zeroize::Zeroizing;

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate certificate for {name:?}: {source}")]
    Generate { name: String, source: rcgen::Error },
    #[error(
        "{0:?} cannot be a file name: use letters, digits, '.', '_' and '-', not starting with '.'"
    )]
    FileName(String),
    #[error("invalid --kme value {0:?}: expected NAME[:SAN,SAN...]")]
    KmeSpec(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

/// A certificate authority held in memory.
pub struct CertAuthority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn generate_error(name: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate {
        name: name.to_owned(),
        source,
    }
}

impl CertAuthority {
    /// A new self-signed CA whose subject CN is `name`.
    pub fn generate(name: &str) -> Result<CertAuthority, CertError> {
        let key = KeyPair::generate().map_err(generate_error(name))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(generate_error(name))?;
        Ok(CertAuthority { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    fn issue(
        &self,
        common_name: &str,
        sans: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate().map_err(generate_error(common_name))?;
        let mut params =
            CertificateParams::new(sans.to_vec()).map_err(generate_error(common_name))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(generate_error(common_name))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// A KME server certificate valid for `sans` (IP addresses or DNS names).
    pub fn issue_server(&self, name: &str, sans: &[String]) -> Result<IssuedCert, CertError> {
        self.issue(name, sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// An SAE client certificate whose CN is the SAE ID.
    pub fn issue_client(&self, sae_id: &str) -> Result<IssuedCert, CertError> {
        self.issue(sae_id, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A `--kme NAME[:SAN,SAN...]` argument of `gen-certs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmeCertSpec {
    pub name: String,
    pub sans: Vec<String>,
}

impl FromStr for KmeCertSpec {
    type Err = CertError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, sans) = match spec.split_once(':') {
            Some((name, sans)) => (name, sans.split(',').map(str::to_owned).collect::<Vec<_>>()),
            None => (spec, Vec::new()),
        };
        if name.is_empty() || sans.iter().any(String::is_empty) {
            return Err(CertError::KmeSpec(spec.to_owned()));
        }
        Ok(KmeCertSpec {
            name: name.to_owned(),
            // A KME named like a host is reachable under that name unless told otherwise.
            sans: if sans.is_empty() {
                vec![name.to_owned()]
            } else {
                sans
            },
        })
    }
}

/// Names become file names, so they must not climb out of the output directory.
fn check_file_name(name: &str) -> Result<(), CertError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(CertError::FileName(name.to_owned()));
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let write_error = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(write_error)?;
    file.write_all(contents.as_bytes()).map_err(write_error)
}

fn write_pair(out: &Path, name: &str, cert_pem: &str, key_pem: &str) -> Result<(), CertError> {
    write_file(&out.join(format!("{name}.pem")), cert_pem, 0o644)?;
    write_file(&out.join(format!("{name}.key")), key_pem, 0o600)
}

/// Writes `ca.pem`/`ca.key`, `NAME.pem`/`NAME.key` per KME and `SAE_ID.pem`/`SAE_ID.key`
/// per SAE into `out` (created if missing) and returns the CA.
pub fn write_bundle(
    out: &Path,
    kmes: &[KmeCertSpec],
    saes: &[String],
) -> Result<CertAuthority, CertError> {
    let mut names: Vec<&str> = vec!["ca"];
    names.extend(kmes.iter().map(|k| k.name.as_str()));
    names.extend(saes.iter().map(String::as_str));
    for (i, name) in names.iter().enumerate() {
        check_file_name(name)?;
        if names[..i].contains(name) {
            // Two certificates would overwrite each other's files.
            return Err(CertError::FileName(format!("{name} (given twice)")));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| CertError::Write {
        path: out.to_owned(),
        source,
    })?;
    let ca = CertAuthority::generate("qkd-kme-sim test CA")?;
    write_pair(out, "ca", &ca.cert_pem(), &ca.key_pem())?;
    for kme in kmes {
        let issued = ca.issue_server(&kme.name, &kme.sans)?;
        write_pair(out, &kme.name, &issued.cert_pem, &issued.key_pem)?;
    }
    for sae in saes {
        let issued = ca.issue_client(sae)?;
        write_pair(out, sae, &issued.cert_pem, &issued.key_pem)?;
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kme_spec_parses_sans() {
        let spec: KmeCertSpec = "kme-a:127.0.0.1,kme-a.test".parse().unwrap();
        assert_eq!(spec.name, "kme-a");
        assert_eq!(spec.sans, vec!["127.0.0.1", "kme-a.test"]);
        let bare: KmeCertSpec = "kme-b".parse().unwrap();
        assert_eq!(bare.sans, vec!["kme-b"]);
        assert!("kme:".parse::<KmeCertSpec>().is_err());
        assert!(":1.2.3.4".parse::<KmeCertSpec>().is_err());
    }

    #[test]
    fn bundle_files_and_key_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let kmes = vec!["kme-a:127.0.0.1".parse().unwrap()];
        write_bundle(dir.path(), &kmes, &["sae-a".into()]).unwrap();
        for file in [
            "ca.pem",
            "ca.key",
            "kme-a.pem",
            "kme-a.key",
            "sae-a.pem",
            "sae-a.key",
        ] {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
            let expected = if file.ends_with(".key") {
                "-----BEGIN PRIVATE KEY-----"
            } else {
                "-----BEGIN CERTIFICATE-----"
            };
            assert!(text.starts_with(expected), "{file}: {text}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("sae-a.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn unsafe_or_duplicate_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for saes in [
            vec!["../x".to_string()],
            vec![".hidden".into()],
            vec!["ca".into()],
            vec!["s".into(), "s".into()],
        ] {
            assert!(
                matches!(
                    write_bundle(dir.path(), &[], &saes),
                    Err(CertError::FileName(_))
                ),
                "{saes:?}"
            );
        }
    }
}
