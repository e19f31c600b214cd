//! The plugin's installed state: the runtime every new key exchange picks up (settings, KME
//! clients, key buffers), how it is built from the settings charon hands over, what
//! `swanctl --reload-settings` replaces, and the status socket that serves it
//! ([`status_socket`]). No `unsafe` here: `ffi` reads charon's settings and calls in.
//!
//! Key economy on reload: the new settings are loaded and validated, and compared with the
//! running ones, before anything that talks to a KME is built, so a refused reload consumes
//! no key. Identical settings (and unchanged PEM files) keep the running runtime as it is,
//! its key buffers included. Otherwise every KME client is built before `Runtime::new`, and
//! the clients of peers whose KME settings did not change are kept ([`kept_key_sources`]).

use crate::config::{Config, KmeSettings, PeerConfig, PREFIX};
use crate::health;
use crate::ke::Runtime;
use crate::kme::{Etsi014Client, FailoverSource, KeySource, KmeError, PROBE_INTERVAL};
use crate::status::{KmeStats, MeasuredSource, Snapshot};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

pub(crate) mod status_socket;

/// The runtime every new key exchange picks up, and what its KME clients were built from.
pub(crate) struct Installed {
    runtime: Arc<Runtime>,
    pem_files: Vec<(KmeSettings, PemFiles)>,
    /// The statistics of each KME client's nodes (each a [`MeasuredSource`]), by client
    /// identity: a client kept across a reload keeps its statistics.
    kme_stats: Vec<(Arc<dyn KeySource>, NodeStats)>,
    built: SystemTime,
}

/// The statistics of each node of one KME client, by node URL.
type NodeStats = Vec<(String, Arc<KmeStats>)>;

/// Replaced on reload, dropped on unload. Exchanges in flight keep the runtime they started
/// with (they hold an `Arc`).
static INSTALLED: RwLock<Option<Installed>> = RwLock::new(None);

/// A panic while the lock was held leaves a whole runtime or none (it is only ever
/// replaced whole): recovered and reported, never read as "no runtime".
fn installed_read() -> RwLockReadGuard<'static, Option<Installed>> {
    health::read("the installed runtime", &INSTALLED)
}

fn installed_write() -> RwLockWriteGuard<'static, Option<Installed>> {
    health::write("the installed runtime", &INSTALLED)
}

pub(crate) fn current() -> Option<Arc<Runtime>> {
    Some(installed_read().as_ref()?.runtime.clone())
}

/// What `qkdctl status` shows about the installed runtime.
pub(crate) fn snapshot() -> Option<Snapshot> {
    let installed = installed_read();
    let installed = installed.as_ref()?;
    Some(crate::status::collect(
        &installed.runtime,
        installed.built,
        |source, url| {
            let nodes = installed.stats_of(source)?;
            nodes.into_iter().find(|(u, _)| u == url).map(|(_, s)| s)
        },
    ))
}

/// Identity of one file's contents as the file system tells it, without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

/// The CA, certificate and key files of one KME's settings (None: unreadable). A client
/// read them when it was built: a certificate renewed under the same path needs a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PemFiles([Option<FileStamp>; 3]);

impl PemFiles {
    fn of(kme: &KmeSettings) -> PemFiles {
        PemFiles([&kme.ca, &kme.cert, &kme.key].map(|path| {
            std::fs::metadata(path).ok().map(|m| FileStamp {
                inode: m.ino(),
                len: m.len(),
                modified: m.modified().ok(),
            })
        }))
    }
}

impl Installed {
    fn new(runtime: Runtime, kme_stats: Vec<(Arc<dyn KeySource>, NodeStats)>) -> Installed {
        let mut pem_files: Vec<(KmeSettings, PemFiles)> = Vec::new();
        for peer in &runtime.config.peers {
            let kme = runtime.config.kme_for(peer);
            if !pem_files.iter().any(|(s, _)| s == kme) {
                pem_files.push((kme.clone(), PemFiles::of(kme)));
            }
        }
        Installed {
            runtime: Arc::new(runtime),
            pem_files,
            kme_stats,
            built: SystemTime::now(),
        }
    }

    fn stats_of(&self, source: &Arc<dyn KeySource>) -> Option<NodeStats> {
        self.kme_stats
            .iter()
            .find(|(s, _)| Arc::ptr_eq(s, source))
            .map(|(_, stats)| stats.clone())
    }

    /// Whether the client built for `kme` would be built the same way today.
    fn pem_files_unchanged(&self, kme: &KmeSettings) -> bool {
        self.pem_files
            .iter()
            .any(|(s, files)| s == kme && *files == PemFiles::of(kme))
    }

    /// Whether the KME client built for `old_peer` can serve `new_peer` under `new` exactly
    /// as before: the same connection asking the same KME (URL, credentials and their
    /// files, timeout) for keys for the same SAE IDs, of the same size.
    fn key_source_unchanged(
        &self,
        old_peer: &PeerConfig,
        new: &Config,
        new_peer: &PeerConfig,
    ) -> bool {
        let old = &self.runtime.config;
        old_peer.name == new_peer.name
            && old_peer.sae_id == new_peer.sae_id
            && old.kme_for(old_peer) == new.kme_for(new_peer)
            && (&old.sae_id, old.key_size) == (&new.sae_id, new.key_size)
            && self.pem_files_unchanged(old.kme_for(old_peer))
    }
}

/// For each peer of `new` (in the order of `new.peers`), the key source the installed
/// runtime uses for that peer if it can keep serving it unchanged
/// ([`Installed::key_source_unchanged`]), else None.
///
/// A peer whose KME settings did not change keeps its client (and its TLS session). Its
/// buffered keys survive only a reload that changes nothing at all ([`ReloadPlan::Keep`]):
/// the key supply belongs to one runtime.
pub(crate) fn kept_key_sources(
    installed: &Installed,
    new: &Config,
) -> Vec<Option<Arc<dyn KeySource>>> {
    let old = &installed.runtime;
    new.peers
        .iter()
        .map(|new_peer| {
            old.config
                .peers
                .iter()
                .find(|old_peer| installed.key_source_unchanged(old_peer, new, new_peer))
                .map(|old_peer| old.source(old.peer_index(old_peer)).clone())
        })
        .collect()
}

/// A new client for the KME of `settings`: one measured ETSI 014 client per node, behind a
/// [`FailoverSource`] when `kme.url` lists several nodes.
fn connect(settings: &KmeSettings) -> Result<(Arc<dyn KeySource>, NodeStats), KmeError> {
    let mut nodes: Vec<Arc<dyn KeySource>> = Vec::new();
    let mut stats = Vec::new();
    for node in settings.nodes() {
        let client = Etsi014Client::new(&node)?;
        let node_stats = Arc::new(KmeStats::default());
        nodes.push(Arc::new(MeasuredSource::new(
            Arc::new(client),
            node_stats.clone(),
        )));
        stats.push((node.url, node_stats));
    }
    let source = match <[_; 1]>::try_from(nodes) {
        Ok([single]) => single,
        Err(nodes) => Arc::new(FailoverSource::new(nodes, PROBE_INTERVAL)),
    };
    Ok((source, stats))
}

/// Builds the runtime for `config`, keeping the clients `previous` may pass on. Every KME
/// client is built (which may fail) before `Runtime::new`, and the key supply starts only
/// with the first exchange, so a failure here consumes no key. New clients are wrapped in
/// a [`MeasuredSource`] for `qkdctl`; kept ones keep theirs.
fn build(config: Config, previous: Option<&Installed>) -> Result<Installed, String> {
    let kept = match previous {
        Some(installed) => kept_key_sources(installed, &config),
        None => vec![None; config.peers.len()],
    };
    let mut clients: Vec<(KmeSettings, Arc<dyn KeySource>)> = Vec::new();
    let mut kme_stats = Vec::new();
    for (peer, kept) in config.peers.iter().zip(kept) {
        let settings = config.kme_for(peer);
        if clients.iter().any(|(s, _)| s == settings) {
            continue;
        }
        let (client, stats) = match kept {
            Some(source) => {
                let stats = previous.and_then(|p| p.stats_of(&source));
                (source, stats.unwrap_or_default())
            }
            None => connect(settings).map_err(|e| e.to_string())?,
        };
        kme_stats.push((client.clone(), stats));
        clients.push((settings.clone(), client));
    }
    let runtime = Runtime::new(config, |settings| {
        match clients.iter().find(|(s, _)| s == settings) {
            Some((_, client)) => Ok(client.clone()),
            None => connect(settings).map(|(client, _)| client),
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(Installed::new(runtime, kme_stats))
}

/// `qkd_plugin_create`: installs the first runtime, built from the settings at load.
pub(crate) fn install(config: Config) -> Result<Arc<Runtime>, String> {
    let installed = build(config, None)?;
    let runtime = installed.runtime.clone();
    *installed_write() = Some(installed);
    Ok(runtime)
}

/// What a reload of `current` to `new` does.
#[derive(Debug, PartialEq, Eq)]
enum ReloadPlan {
    /// A setting fixed in charon's feature table changed: keep everything.
    Refuse(String),
    /// Nothing changed: keep the running runtime with its clients and key buffers.
    Keep,
    Replace,
}

fn plan(current: &Installed, new: &Config) -> ReloadPlan {
    let old = &current.runtime.config;
    if (old.method_id, old.dh_group, old.kem) != (new.method_id, new.dh_group, new.kem) {
        ReloadPlan::Refuse(format!(
            "{PREFIX}.method_id, dh_group and kem only change on restart; keeping the previous settings"
        ))
    } else if old == new
        && current
            .pem_files
            .iter()
            .all(|(kme, _)| current.pem_files_unchanged(kme))
    {
        ReloadPlan::Keep
    } else {
        ReloadPlan::Replace
    }
}

/// `swanctl --reload-settings`: new exchanges use the new settings. The method ID and the
/// ECDH dependency are fixed in the feature table, so changing them needs a restart.
/// `new`: the settings as charon has them now, or why they could not be read.
pub(crate) fn reload(new: Result<Config, String>) -> bool {
    let new = match new {
        Ok(config) => config,
        Err(e) => {
            log::error!(target: "cfg", "qkd: keeping the previous settings: {e}");
            return false;
        }
    };
    // Held across the build: a concurrent reload must not interleave with this one.
    let mut installed = installed_write();
    match installed.as_ref().map(|current| plan(current, &new)) {
        Some(ReloadPlan::Refuse(why)) => {
            log::error!(target: "cfg", "qkd: {why}");
            return false;
        }
        Some(ReloadPlan::Keep) => {
            log::info!(
                target: "cfg",
                "qkd: settings reloaded ({} peer(s)), unchanged: keeping the KME clients and key buffers",
                new.peers.len()
            );
            return true;
        }
        Some(ReloadPlan::Replace) | None => {}
    }
    let peers = new.peers.len();
    match build(new, installed.as_ref()) {
        Ok(built) => {
            log::info!(target: "cfg", "qkd: settings reloaded ({peers} peer(s))");
            *installed = Some(built);
            true
        }
        Err(e) => {
            log::error!(target: "cfg", "qkd: keeping the previous settings: {e}");
            false
        }
    }
}

/// Plugin unload: new exchanges find no runtime; the last exchange in flight drops it.
pub(crate) fn uninstall() {
    installed_write().take();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapSettings;
    use crate::ids::{KeyId, SaeId};
    use crate::kme::QkdKey;
    use std::time::Instant;

    const BASE: &[(&str, &str)] = &[
        ("sae_id", "sae-a"),
        ("kme.url", "https://kme-a.test"),
        ("kme.ca", "ca"),
        ("kme.cert", "cert"),
        ("kme.key", "key"),
        ("peers.gw-b.sae_id", "sae-b"),
        ("peers.gw-c.sae_id", "sae-c"),
    ];

    fn config(changes: &[(&str, &str)]) -> Config {
        let mut settings = MapSettings::new(BASE);
        for (k, v) in changes {
            settings.0.insert(k.to_string(), v.to_string());
        }
        Config::load(&settings).unwrap()
    }

    /// A key source that is never asked for keys: only its identity matters here.
    struct Unused;

    impl KeySource for Unused {
        fn enc_keys(
            &self,
            _: &SaeId,
            _: u32,
            _: usize,
            _: Instant,
        ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
            unreachable!("the reload policy never fetches keys")
        }
        fn dec_keys(&self, _: &SaeId, _: &[KeyId], _: Instant) -> Result<Vec<QkdKey>, KmeError> {
            unreachable!("the reload policy never fetches keys")
        }
        fn keys_per_set(&self, _: &SaeId, _: u32, _: Instant) -> Result<usize, KmeError> {
            unreachable!("the reload policy never fetches keys")
        }
        fn url(&self) -> &str {
            "https://kme.test"
        }
    }

    fn installed(config: Config) -> Installed {
        Installed::new(
            Runtime::new(config, |_| Ok(Arc::new(Unused) as Arc<dyn KeySource>)).unwrap(),
            Vec::new(),
        )
    }

    /// Which peers of `new` keep the installed sources, by name.
    fn kept(installed: &Installed, new: &Config) -> Vec<String> {
        let kept = kept_key_sources(installed, new);
        let old = &installed.runtime;
        assert_eq!(kept.len(), new.peers.len());
        new.peers
            .iter()
            .zip(kept)
            .filter_map(|(peer, source)| {
                let source = source?;
                let old_peer = old.config.peer_named(&peer.name).unwrap();
                assert!(Arc::ptr_eq(&source, old.source(old.peer_index(old_peer))));
                Some(peer.name.clone())
            })
            .collect()
    }

    /// The only test that touches the global runtime.
    #[test]
    fn a_panic_while_the_runtime_lock_is_held_does_not_switch_qkd_off() {
        *installed_write() = Some(installed(config(&[])));
        let installed_rt = current().expect("installed");
        std::thread::spawn(|| {
            let _guard = INSTALLED.write().unwrap();
            panic!("test: a panic while the runtime lock is held");
        })
        .join()
        .unwrap_err();
        assert!(INSTALLED.is_poisoned());
        let errors = health::internal_errors();
        let rt = current().expect("a poisoned lock still yields the installed runtime");
        assert!(Arc::ptr_eq(&rt, &installed_rt));
        assert!(snapshot().is_some(), "and qkdctl still sees it");
        assert!(
            health::internal_errors() > errors,
            "reported as an internal error"
        );
        assert!(snapshot().unwrap().internal_errors > errors);
        uninstall();
        assert!(current().is_none());
    }

    #[test]
    fn unchanged_peers_keep_their_key_source() {
        let old = installed(config(&[]));
        assert_eq!(kept(&old, &config(&[])), ["gw-b", "gw-c"]);
        // Settings that do not reach the KME leave the sources alone.
        let unrelated = config(&[("fallback", "dh"), ("peers.gw-b.remote", "192.0.2.2")]);
        assert_eq!(kept(&old, &unrelated), ["gw-b", "gw-c"]);
        // One peer's KME or SAE ID changed: only that peer gets a new source.
        let own_kme = config(&[
            ("peers.gw-c.kme.url", "https://kme-c.test"),
            ("peers.gw-c.kme.ca", "ca"),
            ("peers.gw-c.kme.cert", "cert"),
            ("peers.gw-c.kme.key", "key"),
        ]);
        assert_eq!(kept(&old, &own_kme), ["gw-b"]);
        assert_eq!(
            kept(&old, &config(&[("peers.gw-b.sae_id", "sae-x")])),
            ["gw-c"]
        );
        // A peer added under a new name has nothing to keep.
        assert_eq!(
            kept(&old, &config(&[("peers.gw-d.sae_id", "sae-d")])),
            ["gw-b", "gw-c"]
        );
    }

    #[test]
    fn what_every_buffer_depends_on_changes_every_source() {
        let old = installed(config(&[]));
        for change in [
            ("kme.url", "https://kme-a2.test"),
            ("kme.cert", "other-cert"),
            ("kme.timeout", "7s"),
            ("sae_id", "sae-a2"),
            ("key_size", "512"),
        ] {
            assert!(kept(&old, &config(&[change])).is_empty(), "{change:?}");
        }
    }

    #[test]
    fn reload_refuses_restart_settings_and_keeps_identical_ones() {
        let current = installed(config(&[]));
        assert!(matches!(
            plan(&current, &config(&[("method_id", "1111")])),
            ReloadPlan::Refuse(_)
        ));
        for restart_only in [("dh_group", "none"), ("kem", "mlkem768")] {
            assert!(matches!(
                plan(&current, &config(&[restart_only])),
                ReloadPlan::Refuse(_)
            ));
        }
        assert_eq!(plan(&current, &config(&[])), ReloadPlan::Keep);
        assert_eq!(
            plan(&current, &config(&[("buffer", "2")])),
            ReloadPlan::Replace
        );
    }

    #[test]
    fn a_renewed_certificate_under_the_same_path_needs_a_new_client() {
        let dir = std::env::temp_dir().join(format!("qkd-runtime-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        for name in ["ca.pem", "sae.pem", "sae.key"] {
            std::fs::write(path(name), "old").unwrap();
        }
        let files = [
            ("kme.ca", path("ca.pem")),
            ("kme.cert", path("sae.pem")),
            ("kme.key", path("sae.key")),
        ];
        let files: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let current = installed(config(&files));
        assert_eq!(plan(&current, &config(&files)), ReloadPlan::Keep);
        assert_eq!(kept(&current, &config(&files)), ["gw-b", "gw-c"]);

        std::fs::write(path("sae.pem"), "renewed").unwrap();
        assert_eq!(plan(&current, &config(&files)), ReloadPlan::Replace);
        assert!(kept(&current, &config(&files)).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
