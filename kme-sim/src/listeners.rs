//! The HTTPS listeners of the simulated KMEs, which the admin `listener` command stops and
//! restarts. A KME may listen on several addresses (its redundant nodes, sharing its one
//! key store); a stopped listener has its socket closed and its open connections cut, so
//! clients see connection refused, as from a node that went down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::watch;

/// One listening address of one KME.
pub struct Listener {
    pub kme: String,
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    requests: AtomicU64,
}

impl Listener {
    /// Follows the listener's state (true: up).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// One ETSI request arrived through this listener.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// What `stats` reports per listener.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ListenerStats {
    pub kme: String,
    pub addr: SocketAddr,
    pub up: bool,
    /// ETSI requests (status, enc_keys, dec_keys) served through this listener.
    pub requests: u64,
}

#[derive(Default)]
pub struct Listeners {
    all: RwLock<Vec<Arc<Listener>>>,
}

impl Listeners {
    /// Registers a bound listener of `kme` (up).
    pub fn add(&self, kme: &str, addr: SocketAddr) -> Arc<Listener> {
        let listener = Arc::new(Listener {
            kme: kme.to_owned(),
            addr,
            up: watch::Sender::new(true),
            requests: AtomicU64::new(0),
        });
        self.write().push(listener.clone());
        listener
    }

    /// Stops (`up` false) or restarts the listener on `addr`; false if there is none.
    pub fn set_up(&self, addr: SocketAddr, up: bool) -> bool {
        let all = self.all.read().unwrap_or_else(|poison| poison.into_inner());
        match all.iter().find(|l| l.addr == addr) {
            Some(listener) => {
                listener.up.send_replace(up);
                true
            }
            None => false,
        }
    }

    /// Every listener's address, for the error of an unknown one.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let all = self.all.read().unwrap_or_else(|poison| poison.into_inner());
        all.iter().map(|l| l.addr).collect()
    }

    pub fn stats(&self) -> Vec<ListenerStats> {
        let all = self.all.read().unwrap_or_else(|poison| poison.into_inner());
        all.iter()
            .map(|l| ListenerStats {
                kme: l.kme.clone(),
                addr: l.addr,
                up: *l.up.borrow(),
                requests: l.requests.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Listener>>> {
        // A list of Arcs is never left half-written: a poisoned lock still holds a valid one.
        self.all
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
