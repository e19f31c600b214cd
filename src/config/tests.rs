use super::values::CURVE_25519;
use super::*;
use std::path::Path;

pub const MINIMAL: &[(&str, &str)] = &[
    ("sae_id", "sae-a"),
    ("kme.url", "https://192.0.2.30:8443/"),
    ("kme.ca", "/etc/qkd/ca.pem"),
    ("kme.cert", "/etc/qkd/sae-a.pem"),
    ("kme.key", "/etc/qkd/sae-a.key"),
    ("peers.gw-b.sae_id", "sae-b"),
];

fn load_with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut m = MapSettings::new(MINIMAL);
    for (k, v) in extra {
        if v.is_empty() {
            m.0.remove(*k);
        } else {
            m.0.insert(k.to_string(), v.to_string());
        }
    }
    Config::load(&m)
}

#[test]
fn defaults() {
    let c = load_with(&[]).unwrap();
    assert_eq!(c.sae_id.as_str(), "sae-a");
    assert_eq!(c.method_id, DEFAULT_METHOD_ID);
    assert_eq!(c.key_size, 256);
    assert_eq!(c.fallback, Fallback::None);
    assert_eq!(c.wait_timeout, Duration::ZERO);
    assert_eq!(c.dh_group, Some(CURVE_25519));
    assert_eq!(c.kem, None);
    assert_eq!(c.inner_methods(), [CURVE_25519]);
    assert_eq!(c.buffer, DEFAULT_BUFFER);
    assert_eq!(c.key_ttl, Duration::from_secs(3600));
    assert_eq!(c.max_kme_requests, 4);
    assert_eq!(
        c.status_socket.as_deref(),
        Some(Path::new("/var/run/charon.qkd"))
    );
    let kme = c.kme.as_ref().unwrap();
    assert_eq!(kme.url, "https://192.0.2.30:8443");
    assert_eq!(kme.timeout, Duration::from_secs(5));
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peer_named("gw-b").unwrap().sae_id.as_str(), "sae-b");
    assert!(
        !c.peers[0].ppk,
        "PPK lookups are answered only where enabled"
    );
    assert_eq!(c.kme_for(&c.peers[0]).url, kme.url);
}

#[test]
fn status_socket_is_a_unix_uri_or_none() {
    let c = load_with(&[("socket", "unix:///run/qkd/status")]).unwrap();
    assert_eq!(
        c.status_socket.as_deref(),
        Some(Path::new("/run/qkd/status"))
    );
    assert_eq!(
        load_with(&[("socket", "none")]).unwrap().status_socket,
        None
    );
    for bad in [
        "/run/charon.qkd",
        "unix://relative",
        "tcp://127.0.0.1:1",
        "unix://",
    ] {
        let e = load_with(&[("socket", bad)]).unwrap_err();
        assert_eq!(e.key, "socket", "{bad}");
    }
}

#[test]
fn all_values() {
    let c = load_with(&[
        ("method_id", "2000"),
        ("key_size", "512"),
        ("fallback", "dh"),
        ("wait_timeout", "2m"),
        ("dh_group", "none"),
        ("kem", "mlkem1024"),
        ("buffer", "0"),
        ("key_ttl", "10m"),
        ("max_kme_requests", "1"),
        ("kme.timeout", "1.5"),
        ("peers.gw-b.remote", "192.0.2.20"),
        ("peers.gw-b.ppk", "yes"),
        ("peers.gw-b.kme.url", "https://kme-x:1"),
        ("peers.gw-b.kme.ca", "ca"),
        ("peers.gw-b.kme.cert", "c"),
        ("peers.gw-b.kme.key", "k"),
    ])
    .unwrap();
    assert_eq!(
        (c.method_id, c.key_size, c.fallback),
        (2000, 512, Fallback::Dh)
    );
    assert_eq!(c.wait_timeout, Duration::from_secs(120));
    assert_eq!(c.dh_group, None);
    assert_eq!(c.inner_methods(), [ML_KEM_1024]);
    assert_eq!((c.buffer, c.max_kme_requests), (0, 1));
    assert_eq!(c.key_ttl, Duration::from_secs(600));
    assert_eq!(c.kme.as_ref().unwrap().timeout, Duration::from_millis(1500));
    let p = &c.peers[0];
    assert_eq!(p.remote, Some("192.0.2.20".parse().unwrap()));
    assert!(p.ppk);
    assert_eq!(c.kme_for(p).url, "https://kme-x:1");
}

#[test]
fn inner_methods_are_dh_group_then_kem() {
    let c = load_with(&[("kem", "mlkem768")]).unwrap();
    assert_eq!(c.inner_methods(), [CURVE_25519, ML_KEM_768]);
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("sae_id", "")], "charon.plugins.qkd.sae_id: missing"),
        (
            &[("sae_id", "a/b")],
            "charon.plugins.qkd.sae_id: 'a/b' is not a valid SAE ID",
        ),
        (
            &[("peers.gw-b.sae_id", "..")],
            "charon.plugins.qkd.peers.gw-b.sae_id: '..' is not a valid SAE ID",
        ),
        (
            &[("method_id", "1024")],
            "charon.plugins.qkd.method_id: 1024 is outside",
        ),
        (
            &[("method_id", "65516")],
            "charon.plugins.qkd.method_id: 65516 is used by another",
        ),
        (
            &[("key_size", "100")],
            "charon.plugins.qkd.key_size: 100 bits",
        ),
        (
            &[("key_size", "257")],
            "charon.plugins.qkd.key_size: 257 bits",
        ),
        (
            &[("fallback", "yes")],
            "charon.plugins.qkd.fallback: 'yes' is not one of",
        ),
        (
            &[("wait_timeout", "5x")],
            "charon.plugins.qkd.wait_timeout: '5x': unknown time unit",
        ),
        (
            &[("dh_group", "modp1024")],
            "charon.plugins.qkd.dh_group: 'modp1024'",
        ),
        (
            &[("kem", "kyber768")],
            "charon.plugins.qkd.kem: 'kyber768' is not one of: mlkem512",
        ),
        (&[("buffer", "65")], "charon.plugins.qkd.buffer: '65'"),
        (
            &[("key_ttl", "0s")],
            "charon.plugins.qkd.key_ttl: must be longer",
        ),
        (
            &[("max_kme_requests", "0")],
            "charon.plugins.qkd.max_kme_requests: '0': use a number of requests between 1",
        ),
        (
            &[("kme.url", "http://kme:80")],
            "charon.plugins.qkd.kme.url: 'http://kme:80' must be an https://",
        ),
        (
            &[("kme.ca", "")],
            "charon.plugins.qkd.kme.ca: required with kme.url",
        ),
        (
            &[
                ("peers.gw-b.sae_id", ""),
                ("peers.gw-b.remote", "192.0.2.20"),
            ],
            "charon.plugins.qkd.peers.gw-b.sae_id: missing",
        ),
        (
            &[("peers.gw-b.ppk", "required")],
            "charon.plugins.qkd.peers.gw-b.ppk: 'required' is not one of: yes, no",
        ),
        (
            &[("peers.gw-b.remote", "gw-b")],
            "charon.plugins.qkd.peers.gw-b.remote: 'gw-b'",
        ),
        (
            &[("kme.url", "")],
            "charon.plugins.qkd.peers.gw-b.kme.url: no KME configured",
        ),
    ];
    for (extra, expected) in cases {
        let err = load_with(extra).unwrap_err().to_string();
        assert!(
            err.starts_with(expected),
            "{err:?} should start with {expected:?}"
        );
    }
}

/// Every key `Config::load` reads is documented in the shipped qkd.conf and qkd.opt.
#[test]
fn every_setting_is_documented() {
    struct Recording(MapSettings, std::cell::RefCell<Vec<String>>);
    impl SettingsSource for Recording {
        fn get(&self, peer: Option<&str>, key: &str) -> Option<String> {
            self.1.borrow_mut().push(match peer {
                Some(_) => format!("peers.<conn>.{key}"),
                None => key.to_owned(),
            });
            self.0.get(peer, key)
        }
        fn peers(&self) -> Vec<String> {
            self.0.peers()
        }
    }
    let src = Recording(MapSettings::new(MINIMAL), Default::default());
    Config::load(&src).unwrap();
    let conf = include_str!("../../strongswan-conf/strongswan.d/charon/qkd.conf");
    let opt = include_str!("../../strongswan-conf/qkd.opt");
    let conf_keys = documented_keys(conf);
    for key in src.1.borrow().iter() {
        // The per-peer kme section is documented as a whole (same keys as kme.*).
        let documented = key
            .strip_prefix("peers.<conn>.kme.")
            .map_or(key.clone(), |_| "peers.<conn>.kme".into());
        assert!(
            opt.contains(&format!("charon.plugins.qkd.{documented} ")),
            "{key} missing in qkd.opt"
        );
        assert!(
            conf_keys.contains(&format!("qkd.{key}")),
            "{key} missing in qkd.conf (documented there: {conf_keys:?})"
        );
    }
    assert!(src.1.borrow().len() >= 14, "read {:?}", src.1.borrow());
}

/// Full paths of the settings qkd.conf shows, commented out or not, with the example
/// peer section named `<conn>`: `qkd.kme.url`, `qkd.peers.<conn>.sae_id`, ...
fn documented_keys(conf: &str) -> Vec<String> {
    let mut sections: Vec<String> = Vec::new();
    let mut keys = Vec::new();
    for line in conf.lines() {
        let line = line.trim_start().trim_start_matches('#').trim();
        if let Some(name) = line.strip_suffix('{').map(str::trim) {
            let in_peers = sections.last().is_some_and(|s| s == "peers");
            sections.push(if in_peers {
                "<conn>".into()
            } else {
                name.into()
            });
        } else if line == "}" {
            sections.pop();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && !key.contains(' ') && !sections.is_empty() {
                keys.push(format!("{}.{key}", sections.join(".")));
            }
        }
    }
    keys
}

#[test]
fn documented_keys_are_full_paths() {
    let conf = "qkd {\n  # a = 1\n  kme {\n    # url = x\n  }\n  peers {\n    # gw {\n    #   a = 2\n    # }\n  }\n}\n";
    assert_eq!(
        documented_keys(conf),
        ["qkd.a", "qkd.kme.url", "qkd.peers.<conn>.a"]
    );
}

#[test]
fn kme_url_lists_the_nodes_of_one_kme_in_order() {
    let c = load_with(&[
        ("kme.url", "https://kme-a1:8443/, https://kme-a2:8443"),
        ("peers.gw-b.kme.url", "https://kme-x:1"),
        ("peers.gw-b.kme.ca", "ca"),
        ("peers.gw-b.kme.cert", "c"),
        ("peers.gw-b.kme.key", "k"),
    ])
    .unwrap();
    let kme = c.kme.as_ref().unwrap();
    let urls: Vec<_> = kme.nodes().into_iter().map(|n| n.url).collect();
    assert_eq!(urls, ["https://kme-a1:8443", "https://kme-a2:8443"]);
    assert!(kme.nodes().iter().all(|n| n.standby_urls.is_empty()
        && (&n.ca, &n.cert, &n.key, n.timeout) == (&kme.ca, &kme.cert, &kme.key, kme.timeout)));
    let one = c.kme_for(&c.peers[0]);
    assert_eq!(
        (one.url.as_str(), one.nodes().len()),
        ("https://kme-x:1", 1)
    );
    for (list, expected) in [
        (
            "https://a:1, https://a:1/",
            "charon.plugins.qkd.kme.url: 'https://a:1' is listed twice",
        ),
        (
            "https://a:1,,https://b:1",
            "charon.plugins.qkd.kme.url: '' must be an https://",
        ),
        (
            "https://a:1,http://b:1",
            "charon.plugins.qkd.kme.url: 'http://b:1' must be an https://",
        ),
    ] {
        let err = load_with(&[("kme.url", list)]).unwrap_err().to_string();
        assert!(
            err.starts_with(expected),
            "{err:?} should start with {expected:?}"
        );
    }
    let err = load_with(&[
        ("peers.gw-b.kme.url", "https://x:1,https://x:1"),
        ("peers.gw-b.kme.ca", "ca"),
        ("peers.gw-b.kme.cert", "c"),
        ("peers.gw-b.kme.key", "k"),
    ])
    .unwrap_err();
    assert_eq!(err.key, "peers.gw-b.kme.url");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
    assert!(parse_duration("s").is_err());
    // Found by the config_parse fuzz target: from_secs_f64 used to panic on this.
    assert!(parse_duration("9".repeat(400).as_str())
        .unwrap_err()
        .contains("longer"));
}
