//! The client side of the status socket, as `qkdctl` uses it.

use crate::{parse_answer, status_request, Snapshot};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// What the client waits for an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(4);

/// Asks the server at `path` for its snapshot.
pub fn request_status(path: &Path) -> Result<Snapshot, String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is charon running with the qkd plugin? The plugin \
             opens its socket with the first key exchange or `swanctl --reload-settings`)",
            path.display()
        )
    })?;
    let timeout = Some(IO_TIMEOUT);
    let io = |e: io::Error| format!("{}: {e}", path.display());
    stream.set_read_timeout(timeout).map_err(io)?;
    stream.set_write_timeout(timeout).map_err(io)?;
    stream.write_all(status_request().as_bytes()).map_err(io)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(io)?;
    parse_answer(text.trim_end())
}
