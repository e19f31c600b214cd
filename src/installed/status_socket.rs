//! The status socket's place in charon's life cycle.
//!
//! charon loads plugins as root with all capabilities and drops them before its worker
//! threads run any job. The server thread must only ever run with the dropped set, so it
//! is not started at plugin load: it starts lazily, with the first key exchange object
//! (created in a worker thread) or with `swanctl --reload-settings` (also a worker thread),
//! whichever comes first. Until then `qkdctl` says the socket is not there yet. A changed
//! `socket` setting takes effect with the next reload; unload stops the thread and removes
//! the socket.

use crate::health;
use crate::status::server::StatusServer;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

struct State {
    server: Option<StatusServer>,
    /// A path that could not be served: not retried by every exchange, only by a reload.
    failed: Option<PathBuf>,
}

static STATE: Mutex<State> = Mutex::new(State {
    server: None,
    failed: None,
});

/// Serves `path` (None: no socket) unless already serving it. `retry`: try again a path
/// that failed before.
pub(crate) fn ensure(path: Option<&Path>, retry: bool) {
    let mut state = health::lock("the status socket state", &STATE);
    if state.server.as_ref().map(StatusServer::path) == path
        || (!retry && state.failed.as_deref() == path)
    {
        return;
    }
    // Dropping the old server stops its thread and removes its socket.
    state.server = None;
    state.failed = None;
    let Some(path) = path else {
        return;
    };
    match StatusServer::start(path, Arc::new(super::snapshot)) {
        Ok(server) => {
            log::info!(target: "cfg", "qkd: status socket unix://{} (qkdctl)", path.display());
            state.server = Some(server);
        }
        Err(e) => {
            log::error!(
                target: "cfg",
                "qkd: cannot serve the status socket unix://{}: {e} (charon.plugins.qkd.socket)",
                path.display()
            );
            state.failed = Some(path.to_owned());
        }
    }
}

/// Plugin unload.
pub(crate) fn stop() {
    let mut state = health::lock("the status socket state", &STATE);
    state.server = None;
    state.failed = None;
}
