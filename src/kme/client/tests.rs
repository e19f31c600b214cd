use super::answer::*;
use super::*;
use reqwest::StatusCode;

fn url() -> Url {
    Url::parse("https://kme.example:8443/api/v1/keys/sae-b/enc_keys").unwrap()
}

fn sae() -> SaeId {
    SaeId::new("sae-b").unwrap()
}

fn key(id: u8, material: &[u8]) -> QkdKey {
    QkdKey {
        id: KeyId([id; 16]),
        material: Zeroizing::new(material.to_vec()),
    }
}

#[test]
fn dec_answer_is_put_in_requested_order() {
    let ids = [KeyId([1; 16]), KeyId([2; 16]), KeyId([3; 16])];
    let got = order_keys(
        vec![key(3, b"cc"), key(1, b"aa"), key(2, b"bb")],
        &ids,
        &url(),
    )
    .unwrap();
    let order: Vec<_> = got.iter().map(|k| (k.id, k.material.to_vec())).collect();
    assert_eq!(
        order,
        vec![
            (ids[0], b"aa".to_vec()),
            (ids[1], b"bb".to_vec()),
            (ids[2], b"cc".to_vec())
        ]
    );
}

#[test]
fn dec_answer_must_match_the_request() {
    let ids = [KeyId([1; 16]), KeyId([2; 16])];
    for keys in [
        vec![key(1, b"aa")],                               // too few
        vec![key(1, b"aa"), key(9, b"bb")],                // foreign ID
        vec![key(1, b"aa"), key(1, b"aa")],                // duplicate
        vec![key(1, b"aa"), key(2, b"bb"), key(2, b"bb")], // too many
    ] {
        assert!(matches!(
            order_keys(keys, &ids, &url()),
            Err(KmeError::Protocol(_))
        ));
    }
}

#[test]
fn keys_of_different_lengths_are_refused() {
    assert!(check_same_length(&[key(1, b"aa"), key(2, b"bb")], &url()).is_ok());
    assert!(matches!(
        check_same_length(&[key(1, b"aa"), key(2, b"bbb")], &url()),
        Err(KmeError::Protocol(_))
    ));
}

fn answer(operation: Operation, code: u16, body: &str) -> KmeError {
    error_from_answer(
        &url(),
        operation,
        &sae(),
        StatusCode::from_u16(code).unwrap(),
        body.as_bytes(),
    )
}

#[test]
fn every_no_key_answer_of_real_kmes_is_no_key_available() {
    for (code, body) in [
        (503, r#"{"message":"no key"}"#),
        (404, r#"{"detail":"Element not found"}"#),
        (400, r#"{"message":"Not enough keys. Try again later."}"#),
    ] {
        for operation in [Operation::EncKeys, Operation::DecKeys] {
            let e = answer(operation, code, body);
            assert!(
                matches!(e, KmeError::NoKeyAvailable { .. }) && e.is_transient(),
                "{e:?}"
            );
            if code != 503 {
                assert!(
                    e.to_string()
                        .contains("this KME may mean: no key available"),
                    "{e}"
                );
            }
        }
    }
    match answer(Operation::EncKeys, 503, "") {
        KmeError::NoKeyAvailable { message, .. } => {
            assert_eq!(message, "503: Service Unavailable")
        }
        other => panic!("{other:?}"),
    }
    // A 404 on status is a wrong URL, not an empty KME.
    let e = answer(Operation::Status, 404, r#"{"detail":"Not Found"}"#);
    assert!(
        matches!(e, KmeError::Rejected { status: 404, .. }) && e.to_string().contains("kme.url"),
        "{e}"
    );
}

#[test]
fn bad_requests_on_status_and_enc_keys_point_at_sae_ids_and_kme_url() {
    for (operation, code, body) in [
        (Operation::Status, 400, r#"{"message":"Bad request"}"#),
        (
            Operation::EncKeys,
            500,
            "<html><title>500 Internal Server Error</title></html>",
        ),
        (
            Operation::EncKeys,
            422,
            r#"{"detail":[{"loc":["path","slave_SAE_ID"],"msg":"value is not a valid integer"}]}"#,
        ),
    ] {
        let e = answer(operation, code, body);
        let m = e.to_string();
        assert!(!e.is_transient());
        if code == 422 {
            assert!(
                m.contains("slave_SAE_ID: value is not a valid integer"),
                "{m}"
            );
            continue;
        }
        assert!(
            m.contains("peers.<conn>.sae_id")
                && m.contains("sae_id")
                && m.contains("kme.url")
                && m.contains("'sae-b'")
                && m.contains("integers"),
            "{m}"
        );
    }
    let m = answer(
        Operation::EncKeys,
        500,
        "<html><title>500 Internal Server Error</title></html>",
    )
    .to_string();
    assert!(m.contains("HTML page \"500 Internal Server Error\""), "{m}");
}

#[test]
fn unauthorized_points_at_our_certificate_and_the_sae() {
    let m = answer(Operation::DecKeys, 401, r#"{"message":"unauthorized"}"#).to_string();
    assert!(
        m.contains("401: unauthorized") && m.contains("kme.cert") && m.contains("sae_id"),
        "{m}"
    );
}

#[test]
fn an_html_400_about_certificates_is_a_refused_client_certificate() {
    let m = answer(
        Operation::EncKeys,
        400,
        "<html><head><title>400 The SSL certificate error</title></head></html>",
    )
    .to_string();
    assert!(
        m.contains("refused our client certificate") && m.contains("kme.cert / kme.key"),
        "{m}"
    );
}

#[test]
fn unknown_keys_on_dec_keys_point_at_the_kme_pair() {
    let m = answer(
        Operation::DecKeys,
        400,
        r#"{"message":"keys do not exist","details":[{"key_ID":"x"}]}"#,
    )
    .to_string();
    assert!(
        m.contains(r#"keys do not exist; details: [{"key_ID":"x"}]"#)
            && m.contains("master SAE 'sae-b'"),
        "{m}"
    );
}

#[test]
fn endpoints_are_built_from_segments() {
    let sae = SaeId::new("sae-b").unwrap();
    let base = parse_base_url("https://192.0.2.30:8443").unwrap();
    assert_eq!(
        endpoint(&base, &sae, "enc_keys").as_str(),
        "https://192.0.2.30:8443/api/v1/keys/sae-b/enc_keys"
    );
    let prefixed = parse_base_url("https://kme.example/qkd/").unwrap();
    assert_eq!(
        endpoint(&prefixed, &sae, "status").as_str(),
        "https://kme.example/qkd/api/v1/keys/sae-b/status"
    );
    // ':' and '@' are allowed in SAE IDs; they must stay inside their path segment.
    let odd = SaeId::new("urn:sae@site").unwrap();
    let url = endpoint(&base, &odd, "dec_keys");
    assert_eq!(url.host_str(), Some("192.0.2.30"));
    assert_eq!(url.path_segments().unwrap().nth(3), Some("urn:sae@site"));
}

#[test]
fn base_url_must_be_plain_https() {
    for bad in [
        "http://kme:80",
        "kme:8443",
        "https://kme/?a=b",
        "https://kme/#x",
        "nonsense",
    ] {
        match parse_base_url(bad) {
            Err(KmeError::Config(m)) => assert!(m.starts_with("kme.url"), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

fn reason(error: &(dyn std::error::Error + 'static), budget: Duration) -> (bool, String) {
    match transport_reason(error, budget, Duration::from_secs(5)) {
        Transport::Tls(r) => (true, r),
        Transport::Other(r) => (false, r),
    }
}

#[test]
fn transport_reason_explains_tls_and_timeouts() {
    // As hyper-rustls reports it: tokio-rustls' io::Error inside another io::Error.
    let tls = std::io::Error::other(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    ));
    let (is_tls, r) = reason(&tls, Duration::from_secs(5));
    assert!(is_tls && r.contains("kme.ca"), "{r}");
    let alert = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
    );
    let (is_tls, r) = reason(&alert, Duration::from_secs(5));
    assert!(is_tls && r.contains("kme.cert / kme.key"), "{r}");
    let slow = std::io::Error::new(std::io::ErrorKind::TimedOut, "operation timed out");
    let (is_tls, r) = reason(&slow, Duration::from_secs(5));
    assert!(
        !is_tls && r.starts_with("no complete answer within 5s (kme.timeout)"),
        "{r}"
    );
    let (_, r) = reason(&slow, Duration::from_secs(1));
    assert!(r.contains("before the exchange's deadline"), "{r}");
    let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed connection");
    let (is_tls, r) = reason(&eof, Duration::from_secs(5));
    assert!(
        !is_tls && r.starts_with("the KME closed the connection"),
        "{r}"
    );
}
