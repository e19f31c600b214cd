//! The status socket: one thread, one connection at a time, one request per connection.
//!
//! The socket is mode 0600 from the moment it has its name, so only its owner (charon's
//! user, root on Debian) can ever connect, like `charon.vici`: it is bound inside a fresh
//! directory of mode 0700, made 0600 there, then renamed into place. The thread only reads
//! counters and takes the buffers' lock for a moment: it never holds anything charon's
//! threads wait for. A client that sends nothing, too much or garbage gets an error
//! document or is dropped after [`CLIENT_DEADLINE`] in all, never more; stopping the
//! server cuts off the client it is serving at once, so a stalled client cannot delay a
//! reload or charon's shutdown.

use crate::health;
use qkd_status::{answer, error_reply, Snapshot, MAX_REQUEST};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one client may take in all: to send its request and read the answer.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// How long stopping the server waits for its thread before leaving it behind (logged).
const JOIN_BOUND: Duration = Duration::from_secs(5);
/// Input read and discarded after the answer.
const DRAIN_LIMIT: u64 = 64 * 1024;

pub type SnapshotFn = dyn Fn() -> Option<Snapshot> + Send + Sync;

/// What the server thread and [`StatusServer::drop`] share.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    /// The client being served, for stop to cut off.
    client: Mutex<Option<UnixStream>>,
}

pub struct StatusServer {
    path: PathBuf,
    control: Arc<Control>,
    thread: Option<(JoinHandle<()>, mpsc::Receiver<()>)>,
}

impl StatusServer {
    /// Binds `path` (replacing a stale socket, never another kind of file) and starts the
    /// thread that answers with `snapshot`.
    pub fn start(path: &Path, snapshot: Arc<SnapshotFn>) -> io::Result<StatusServer> {
        Self::start_with_deadline(path, snapshot, CLIENT_DEADLINE)
    }

    pub(super) fn start_with_deadline(
        path: &Path,
        snapshot: Arc<SnapshotFn>,
        client_deadline: Duration,
    ) -> io::Result<StatusServer> {
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
        let listener = bind_private(path)?;
        let control = Arc::new(Control::default());
        // Dropped when the thread ends, however it ends: what Drop waits for.
        let (done, finished) = mpsc::channel::<()>();
        let thread = {
            let control = control.clone();
            std::thread::Builder::new()
                .name("qkd-status".into())
                .spawn(move || {
                    let _done = done;
                    let served = catch_unwind(AssertUnwindSafe(|| {
                        serve(listener, &control, &*snapshot, client_deadline)
                    }));
                    if served.is_err() {
                        health::record(format_args!("panic in the status server thread"));
                    }
                })?
        };
        Ok(StatusServer {
            path: path.to_owned(),
            control,
            thread: Some((thread, finished)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds a socket at `path` that never exists there with another mode than 0600: bound in
/// a new directory of mode 0700 next to it, made 0600, then renamed into place.
pub(super) fn bind_private(path: &Path) -> io::Result<UnixListener> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path has no file name",
        )
    })?;
    let dir = path.with_file_name(format!(
        ".{}.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let private = dir.join("s");
    let bound = UnixListener::bind(&private).and_then(|listener| {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&private, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&private);
    let _ = std::fs::remove_dir(&dir);
    bound
}

impl Drop for StatusServer {
    /// Stops the thread (cutting off its client, waking its accept with a connection of
    /// our own), waits for it at most [`JOIN_BOUND`], and removes the socket.
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(client) = health::lock("the status client", &self.control.client).as_ref() {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        let _ = UnixStream::connect(&self.path);
        if let Some((thread, finished)) = self.thread.take() {
            match finished.recv_timeout(JOIN_BOUND) {
                Err(RecvTimeoutError::Timeout) => log::error!(
                    "qkd: the status socket thread did not stop within {}s; leaving it behind \
                     (unix://{})",
                    JOIN_BOUND.as_secs(),
                    self.path.display()
                ),
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = thread.join();
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, control: &Control, snapshot: &SnapshotFn, deadline: Duration) {
    for conn in listener.incoming() {
        if control.stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(stream) => {
                let cut_off = stream.try_clone().ok();
                *health::lock("the status client", &control.client) = cut_off;
                // Stop may have come before the client was stored: it is not served then.
                if control.stop.load(Ordering::SeqCst) {
                    return;
                }
                // A bug in one answer must not end the server (nor reach charon).
                let client = Client {
                    stream,
                    until: Instant::now() + deadline,
                };
                match catch_unwind(AssertUnwindSafe(|| handle(client, snapshot))) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::debug!("qkd: status client: {e}"),
                    Err(_) => health::record(format_args!("panic answering a status request")),
                }
                health::lock("the status client", &control.client).take();
            }
            Err(e) => {
                log::warn!("qkd: status socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A client connection with one deadline for everything it does.
struct Client {
    stream: UnixStream,
    until: Instant,
}

impl Client {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not finish within its deadline",
            ));
        }
        Ok(left)
    }
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.remaining()?))?;
        self.stream.read(buf)
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.remaining()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn handle(mut client: Client, snapshot: &SnapshotFn) -> io::Result<()> {
    let reply = match read_request(&mut client)? {
        Some(line) => answer(&line, snapshot),
        None => error_reply(format!(
            "request longer than {MAX_REQUEST} bytes or not ended by a newline"
        )),
    };
    client.write_all(reply.as_bytes())?;
    client.write_all(b"\n")?;
    // Closing with unread input would reset the connection before the client read the
    // error: take (boundedly) what an oversized request still sends.
    client.stream.shutdown(std::net::Shutdown::Write)?;
    let _ = io::copy(&mut (&mut client).take(DRAIN_LIMIT), &mut io::sink());
    Ok(())
}

/// One request line without its newline; None if it exceeds [`MAX_REQUEST`] or the client
/// closed without a newline.
fn read_request(stream: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
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
