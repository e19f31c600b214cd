//! TLS towards a KME: loading our PEM files into a rustls client configuration, and saying
//! in words what a refused handshake means for the operator.
//!
//! The *ring* provider is passed explicitly, so no OpenSSL is ever loaded into charon and no
//! process-wide default crypto provider is needed.

use super::{KmeError, KmeSettings};
use rustls::{CertificateError, ExtendedKeyPurpose};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The rustls client configuration for one KME: its CA, our SAE certificate and key.
///
/// Loading it separately from [`super::Etsi014Client`] lets the plugin check the PEM files
/// at load/reload time and name the offending setting.
pub struct KmeTlsConfig {
    pub(super) config: rustls::ClientConfig,
}

impl KmeTlsConfig {
    /// Reads `settings.ca`, `settings.cert` and `settings.key` (PEM) and builds a TLS 1.2/1.3
    /// client configuration that trusts only that CA and authenticates with that certificate.
    pub fn load(settings: &KmeSettings) -> Result<KmeTlsConfig, KmeError> {
        let mut roots = rustls::RootCertStore::empty();
        for (n, ca) in read_certs("kme.ca", &settings.ca)?.into_iter().enumerate() {
            roots.add(ca).map_err(|e| {
                let why = if is_v1_certificate_error(&e.to_string()) {
                    "it is an X.509 v1 certificate, which is not accepted as a trust anchor; \
                     the KME's CA certificate must be re-issued as X.509 v3"
                        .to_owned()
                } else {
                    e.to_string()
                };
                KmeError::Config(format!(
                    "kme.ca: certificate #{} in '{}' is not usable as a trust anchor: {why}",
                    n + 1,
                    settings.ca
                ))
            })?;
        }
        let chain = read_certs("kme.cert", &settings.cert)?;
        let key = read_key(&settings.key)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| KmeError::Config(format!("TLS setup for the KME failed: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                KmeError::Config(format!(
                    "kme.cert / kme.key: '{}' and '{}' do not form a usable client identity: {e}",
                    settings.cert, settings.key
                ))
            })?;
        Ok(KmeTlsConfig { config })
    }
}

fn read_certs(setting: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, KmeError> {
    let file = std::fs::File::open(path)
        .map_err(|e| KmeError::Config(format!("{setting}: cannot open '{path}': {e}")))?;
    // Sections other than CERTIFICATE (a key bundled in the same file) are skipped.
    let certs = CertificateDer::pem_reader_iter(file)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KmeError::Config(format!("{setting}: cannot read PEM from '{path}': {e}")))?;
    if certs.is_empty() {
        return Err(KmeError::Config(format!(
            "{setting}: '{path}' contains no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, KmeError> {
    // The file holds our private key: keep its bytes in a buffer that is wiped afterwards.
    let pem = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| KmeError::Config(format!("kme.key: cannot read '{path}': {e}")))?,
    );
    // The first PKCS#8, PKCS#1 or SEC1 section; other sections (certificates) are skipped.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => KmeError::Config(format!(
            "kme.key: '{path}' contains no private key (PKCS#8, PKCS#1 or SEC1 PEM)"
        )),
        e => KmeError::Config(format!("kme.key: cannot read PEM from '{path}': {e}")),
    })
}

/// webpki refuses X.509 v1 certificates; rustls passes that on only as an opaque "other"
/// error whose text names webpki's variant.
fn is_v1_certificate_error(text: &str) -> bool {
    text.contains("UnsupportedCertVersion")
}

/// What a TLS failure means and what to do about it. Certificate problems that real KMEs
/// have (no subjectAltName, no serverAuth EKU, X.509 v1, names that do not include the host
/// of `kme.url`) are the KME's certificate's fault, not our CA file's: say so.
pub(super) fn explain(error: &rustls::Error) -> String {
    const REISSUE: &str = "the KME's server certificate must be re-issued";
    match error {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } if presented.is_empty() => format!(
                    "it has no subjectAltName (rustls, like browsers, ignores the CN), so it \
                     is not valid for {expected:?}: {REISSUE} with a subjectAltName for the \
                     host in kme.url"
                ),
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => format!(
                    "it names only {} but kme.url asks for {expected:?}: {REISSUE} with a \
                     subjectAltName for that host (or set kme.url to a name it has)",
                    presented.join(", ")
                ),
                CertificateError::NotValidForName => format!(
                    "it is not valid for the host in kme.url: {REISSUE} with a subjectAltName \
                     for that host"
                ),
                CertificateError::InvalidPurpose => {
                    format!("it lacks the serverAuth extended key usage: {REISSUE} with it")
                }
                CertificateError::InvalidPurposeContext { presented, .. }
                    if !presented.contains(&ExtendedKeyPurpose::ServerAuth) =>
                {
                    format!("it lacks the serverAuth extended key usage: {REISSUE} with it")
                }
                CertificateError::Other(other) if is_v1_certificate_error(&other.to_string()) => {
                    format!("it (or a certificate in its chain) is X.509 v1: {REISSUE} as v3")
                }
                CertificateError::UnknownIssuer => "it is not signed by a CA in kme.ca: check \
                     that kme.ca holds the CA that issued the KME's certificate"
                    .to_owned(),
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => format!(
                    "it is outside its validity period ({cert}): check this gateway's clock, \
                     else {REISSUE}"
                ),
                other => format!("{other}; check kme.ca and the KME's certificate"),
            };
            format!("TLS handshake failed, the KME's server certificate was refused: {why}")
        }
        rustls::Error::AlertReceived(alert) => format!(
            "TLS handshake failed, the KME sent alert {alert:?}: it probably refused our client \
             certificate; check kme.cert / kme.key and that the KME trusts their CA"
        ),
        other => format!("TLS error ({other}); check kme.ca / kme.cert / kme.key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KmeSettings;
    use rustls::pki_types::ServerName;
    use std::time::Duration;

    fn explained(e: CertificateError) -> String {
        explain(&rustls::Error::InvalidCertificate(e))
    }

    #[test]
    fn a_certificate_without_san_is_blamed_on_the_kme_certificate() {
        let m = explained(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("192.0.2.30").unwrap().to_owned(),
            presented: vec![],
        });
        assert!(
            m.contains("no subjectAltName") && m.contains("re-issued"),
            "{m}"
        );
        assert!(!m.contains("check kme.ca"), "{m}");
    }

    #[test]
    fn a_certificate_naming_only_localhost_says_so() {
        let m = explained(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("kme-a.example").unwrap().to_owned(),
            presented: vec![r#"DnsName("localhost")"#.into()],
        });
        assert!(
            m.contains("localhost") && m.contains("kme-a.example") && m.contains("re-issued"),
            "{m}"
        );
    }

    #[test]
    fn a_certificate_without_server_auth_eku_says_so() {
        for e in [
            CertificateError::InvalidPurpose,
            CertificateError::InvalidPurposeContext {
                required: ExtendedKeyPurpose::ServerAuth,
                presented: vec![ExtendedKeyPurpose::ClientAuth],
            },
        ] {
            let m = explained(e);
            assert!(m.contains("serverAuth") && m.contains("re-issued"), "{m}");
        }
    }

    #[test]
    fn a_v1_certificate_says_so() {
        #[derive(Debug)]
        struct WebpkiV1;
        impl std::fmt::Display for WebpkiV1 {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("UnsupportedCertVersion")
            }
        }
        impl std::error::Error for WebpkiV1 {}
        let m = explained(CertificateError::Other(rustls::OtherError(Arc::new(
            WebpkiV1,
        ))));
        assert!(m.contains("X.509 v1") && m.contains("re-issued"), "{m}");
    }

    #[test]
    fn an_unknown_issuer_points_at_kme_ca_and_an_alert_at_our_certificate() {
        let m = explained(CertificateError::UnknownIssuer);
        assert!(m.contains("kme.ca"), "{m}");
        let m = explain(&rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        assert!(m.contains("kme.cert / kme.key"), "{m}");
    }

    #[test]
    fn missing_pem_files_name_the_setting_and_path() {
        let dir = std::env::temp_dir().join(format!("kme-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let empty = empty.to_str().unwrap().to_owned();
        let settings = |ca: &str, cert: &str, key: &str| KmeSettings {
            url: "https://kme.example".into(),
            standby_urls: Vec::new(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            timeout: Duration::from_secs(1),
        };
        let err = |s: KmeSettings| match KmeTlsConfig::load(&s) {
            Err(KmeError::Config(m)) => m,
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("loaded"),
        };
        let m = err(settings("/nonexistent/ca.pem", &empty, &empty));
        assert!(
            m.starts_with("kme.ca:") && m.contains("/nonexistent/ca.pem"),
            "{m}"
        );
        let m = err(settings(&empty, &empty, &empty));
        assert!(
            m.starts_with("kme.ca:") && m.contains("no PEM certificate"),
            "{m}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
