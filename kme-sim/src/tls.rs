//! TLS for the KMEs: rustls with the `ring` provider, client certificates required and
//! verified against the SAE CA, and the SAE ID taken from the client certificate's subject CN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Why a KME's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM file {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("CA certificate {path} refused: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("server certificate {cert} or key {key} refused: {source}")]
    BadServerCert {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The TLS server configuration of one KME.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca_cert in read_certs(ca)? {
        roots.add(ca_cert).map_err(|source| TlsError::BadCa {
            path: ca.to_owned(),
            source,
        })?;
    }
    // No `allow_unauthenticated`: ETSI GS QKD 014 requires mutual authentication, so a client
    // without a certificate from this CA fails the handshake.
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = read_certs(cert)?;
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        path: key.to_owned(),
        source,
    })?;
    let bad_server_cert = |source| TlsError::BadServerCert {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(bad_server_cert)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key)
        .map_err(bad_server_cert)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The SAE ID of a verified client certificate: its first subject CN, if any.
pub fn sae_id(client_cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(client_cert).ok()?;
    let common_name = cert.subject().iter_common_name().next()?;
    common_name.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertAuthority;

    #[test]
    fn sae_id_is_the_client_cn() {
        let ca = CertAuthority::generate("ca").unwrap();
        let issued = ca.issue_client("1234-numeric-sae").unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(sae_id(&der).as_deref(), Some("1234-numeric-sae"));
        assert_eq!(sae_id(&CertificateDer::from(vec![0x30, 0x00])), None);
    }

    #[test]
    fn server_config_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = server_config(&empty, &empty, &empty).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = server_config(&missing, &empty, &empty).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
