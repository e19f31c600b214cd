//! The status socket: one thread, one connection at a time, one request per connection.
//!
//! The socket is made mode 0600, so only its owner (charon's user, root on Debian) can
//! connect, like `charon.vici`. The thread only reads counters and takes the buffers'
//! lock for a moment: it never holds anything charon's threads wait for. A client that
//! sends nothing, too much or garbage gets an error document or is dropped after
//! [`IO_TIMEOUT`], never more.

use super::{answer, Snapshot, MAX_REQUEST};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long one client may take to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Input read and discarded after the answer.
const DRAIN_LIMIT: u64 = 64 * 1024;

pub type SnapshotFn = dyn Fn() -> Option<Snapshot> + Send + Sync;

pub struct StatusServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusServer {
    /// Binds `path` (replacing a stale socket, never another kind of file) and starts the
    /// thread that answers with `snapshot`.
    pub fn start(path: &Path, snapshot: Arc<SnapshotFn>) -> io::Result<StatusServer> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another process serves this socket",
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("qkd-status".into())
                .spawn(move || serve(listener, &stop, &*snapshot))?
        };
        Ok(StatusServer {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusServer {
    /// Stops the thread (waking its accept with a connection of our own), waits for it,
    /// and removes the socket.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let woke = UnixStream::connect(&self.path).is_ok();
        if let Some(thread) = self.thread.take() {
            if woke {
                let _ = thread.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, stop: &AtomicBool, snapshot: &SnapshotFn) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(stream) => {
                // A bug in one answer must not end the server (nor reach charon).
                match catch_unwind(AssertUnwindSafe(|| handle(stream, snapshot))) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::debug!("qkd: status client: {e}"),
                    Err(_) => log::error!(
                        "qkd: internal error answering a status request (please report this bug)"
                    ),
                }
            }
            Err(e) => {
                log::warn!("qkd: status socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle(mut stream: UnixStream, snapshot: &SnapshotFn) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let reply = match read_request(&mut stream)? {
        Some(line) => answer(&line, snapshot),
        None => super::error_reply(format!(
            "request longer than {MAX_REQUEST} bytes or not ended by a newline"
        )),
    };
    stream.write_all(reply.as_bytes())?;
    stream.write_all(b"\n")?;
    // Closing with unread input would reset the connection before the client read the
    // error: take (boundedly) what an oversized request still sends.
    stream.shutdown(std::net::Shutdown::Write)?;
    let _ = io::copy(&mut (&stream).take(DRAIN_LIMIT), &mut io::sink());
    Ok(())
}

/// One request line without its newline; None if it exceeds [`MAX_REQUEST`] or the client
/// closed without a newline.
fn read_request(stream: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            return Ok((line.len() <= MAX_REQUEST).then_some(line));
        }
        line.extend_from_slice(&chunk[..n]);
        if line.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

/// Client side: asks the server at `path` for its snapshot.
pub fn request_status(path: &Path) -> Result<Snapshot, String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is charon running with the qkd plugin? The plugin \
             opens its socket with the first key exchange or `swanctl --reload-settings`)",
            path.display()
        )
    })?;
    let timeout = Some(IO_TIMEOUT * 2);
    let io = |e: io::Error| format!("{}: {e}", path.display());
    stream.set_read_timeout(timeout).map_err(io)?;
    stream.set_write_timeout(timeout).map_err(io)?;
    stream
        .write_all(super::status_request().as_bytes())
        .map_err(io)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(io)?;
    super::parse_answer(text.trim_end())
}
