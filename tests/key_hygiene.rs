//! Key hygiene: no QKD key byte is left in freed heap memory.
//!
//! This test binary's global allocator wraps the system allocator and scans every block
//! that is freed, or given up by a reallocation, for the key pattern the fake KME hands out.
//! Reallocation always moves (allocate, copy, free the old block): any real allocator may
//! move a growing block, and the unwiped old copy is exactly the leak we look for. A full
//! exchange (initiator and responder, through the public API) runs with that fake KME and a
//! fake ECDH, then everything is dropped, and no freed block may have held key bytes.
//!
//! What this cannot see: key bytes left on the stack, in registers, or in memory that is
//! still allocated when the test ends (that is the job of `Zeroizing` on drop, which the
//! scan checks indirectly: the blocks are freed after the drop).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use strongswan_qkd::config::{Config, KmeSettings, MapSettings};
use strongswan_qkd::ids::{KeyId, SaeId};
use strongswan_qkd::ke::{ExchangeContext, InnerKe, QkdKeyExchange, Runtime};
use strongswan_qkd::kme::{KeySource, KmeError, QkdKey};
use zeroize::Zeroizing;

// ---- the key pattern ----------------------------------------------------------------------

/// Byte `i` of the key material of one exchange: 0xA5 ^ i. Any 8 consecutive bytes of it
/// in a freed block count as a leak; ordinary heap data does not look like this.
fn key_byte(i: usize) -> u8 {
    0xA5 ^ (i as u8)
}

/// Longest key material an exchange here uses (bytes); keeps `i` below 256.
const MAX_KEY_BYTES: usize = 128;
const WINDOW: usize = 8;

/// Whether `block` contains `WINDOW` consecutive bytes of the key pattern.
fn holds_key_bytes(block: &[u8]) -> bool {
    (0..block.len().saturating_sub(WINDOW - 1)).any(|at| {
        let start = (block[at] ^ 0xA5) as usize;
        start + WINDOW <= MAX_KEY_BYTES && (0..WINDOW).all(|k| block[at + k] == key_byte(start + k))
    })
}

// ---- the scanning allocator ---------------------------------------------------------------

struct ScanningAllocator;

static SCANNING: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);
/// Where each hit was freed (block size and backtrace), for the failure message.
static HIT_SITES: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while recording a hit: the recording allocates, and must not scan itself.
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

impl ScanningAllocator {
    /// Scans a block about to be freed.
    ///
    /// # Safety
    /// `ptr` must be a live allocation of `size` bytes.
    unsafe fn scan(&self, ptr: *const u8, size: usize) {
        if !SCANNING.load(Ordering::Relaxed) || RECORDING.with(Cell::get) {
            return;
        }
        // SAFETY: per the contract, `size` readable bytes at `ptr`.
        let block = unsafe { std::slice::from_raw_parts(ptr, size) };
        if holds_key_bytes(block) {
            HITS.fetch_add(1, Ordering::SeqCst);
            RECORDING.with(|r| r.set(true));
            let site = format!(
                "freed a {size}-byte block holding key bytes in {}",
                our_frames(&std::backtrace::Backtrace::force_capture().to_string())
            );
            HIT_SITES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(site);
            RECORDING.with(|r| r.set(false));
        }
    }
}

/// The plugin's own frames of a backtrace, innermost first: "function (file:line) < ...".
fn our_frames(backtrace: &str) -> String {
    let lines: Vec<&str> = backtrace.lines().map(str::trim).collect();
    let frames: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("strongswan_qkd::"))
        .map(|(i, l)| {
            let function = l.split_once(": ").map_or(*l, |(_, f)| f);
            let location = lines.get(i + 1).and_then(|n| n.strip_prefix("at ./"));
            format!("{function} ({})", location.unwrap_or("?"))
        })
        .collect();
    frames.join(" < ")
}

// SAFETY: every request is forwarded to `System`; realloc is alloc + copy + dealloc with
// the same layouts, which the GlobalAlloc contract allows.
unsafe impl GlobalAlloc for ScanningAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is live with `layout.size()` bytes until the dealloc below.
        unsafe {
            self.scan(ptr, layout.size());
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid `new_size` for `layout.align()`; the copy
        // stays within both blocks; the old block is freed once, after the copy.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = System.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[global_allocator]
static ALLOCATOR: ScanningAllocator = ScanningAllocator;

// ---- fakes --------------------------------------------------------------------------------

/// A KME pair that delivers the key pattern: key `n` of an exchange holds pattern bytes
/// `n * KEY_BYTES ..`, so the exchange's key material is the contiguous pattern. Key IDs
/// carry `n`, so the slave side recomputes the same material without storing it.
struct PatternKme {
    /// Bytes per key: an exchange of more bits takes several keys (as with a KME whose
    /// max_key_size is smaller than key_size).
    key_bytes: usize,
}

impl PatternKme {
    fn key(&self, n: usize) -> QkdKey {
        let mut id = [0x5A; 16];
        id[0] = n as u8;
        QkdKey {
            id: KeyId(id),
            // collect() of an exact-size iterator: one allocation, never grown.
            material: Zeroizing::new(
                (n * self.key_bytes..(n + 1) * self.key_bytes)
                    .map(key_byte)
                    .collect(),
            ),
        }
    }
}

impl KeySource for PatternKme {
    fn enc_keys(
        &self,
        _slave: &SaeId,
        size_bits: u32,
        sets: usize,
        _deadline: Instant,
    ) -> Result<Vec<Vec<QkdKey>>, KmeError> {
        let count = size_bits as usize / 8 / self.key_bytes;
        Ok((0..sets)
            .map(|_| (0..count).map(|n| self.key(n)).collect())
            .collect())
    }

    fn dec_keys(
        &self,
        _master: &SaeId,
        ids: &[KeyId],
        _deadline: Instant,
    ) -> Result<Vec<QkdKey>, KmeError> {
        Ok(ids.iter().map(|id| self.key(id.0[0] as usize)).collect())
    }

    fn keys_per_set(&self, _: &SaeId, size_bits: u32, _: Instant) -> Result<usize, KmeError> {
        Ok(size_bits as usize / 8 / self.key_bytes)
    }

    fn url(&self) -> &str {
        "https://kme.test"
    }
}

/// A toy ECDH whose shared secret is a constant (not key-pattern) value.
struct FakeDh;

impl InnerKe for FakeDh {
    fn method(&self) -> u16 {
        31
    }
    fn public_value(&mut self) -> Result<Vec<u8>, String> {
        Ok(vec![0x11; 32])
    }
    fn set_peer_value(&mut self, _value: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn shared_secret(&mut self) -> Result<Zeroizing<Vec<u8>>, String> {
        Ok(Zeroizing::new(vec![0x22; 32]))
    }
}

fn runtime(
    me: &str,
    peer_conn: &str,
    peer_sae: &str,
    key_bits: u32,
    key_bytes: usize,
) -> Arc<Runtime> {
    let settings = MapSettings(
        [
            ("sae_id", me),
            ("key_size", &key_bits.to_string()),
            ("kme.url", "https://kme.test"),
            ("kme.ca", "ca"),
            ("kme.cert", "cert"),
            ("kme.key", "key"),
            // Keys fetched in the exchange: the refill thread would outlive the scan.
            ("buffer", "0"),
            (&format!("peers.{peer_conn}.sae_id"), peer_sae),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let config = Config::load(&settings).expect("valid settings");
    let rt = Runtime::new(config, |_: &KmeSettings| {
        Ok(Arc::new(PatternKme { key_bytes }) as Arc<dyn KeySource>)
    })
    .expect("runtime");
    Arc::new(rt)
}

// ---- the exchange -------------------------------------------------------------------------

/// One complete exchange between gw-a (initiator, master) and gw-b (responder, slave) in
/// strongSwan's call order, with `key_bits` of QKD key split into keys of `key_bytes`;
/// everything it built is dropped when it returns. Returns the length of the shared secret.
/// (The one place to adapt when the ke/kme API changes.)
fn run_exchange(key_bits: u32, key_bytes: usize) -> usize {
    let a = runtime("sae-a", "gw-b", "sae-b", key_bits, key_bytes);
    let b = runtime("sae-b", "gw-a", "sae-a", key_bits, key_bytes);
    let mut initiator = QkdKeyExchange::new(
        a,
        ExchangeContext {
            connection: Some("gw-b".into()),
            ..Default::default()
        },
        vec![Box::new(FakeDh) as Box<dyn InnerKe>],
    );
    // A responder has no connection before authentication (charon's "(unnamed)").
    let mut responder = QkdKeyExchange::new(
        b,
        ExchangeContext::default(),
        vec![Box::new(FakeDh) as Box<dyn InnerKe>],
    );
    let request = initiator.get_public_key().expect("request");
    responder.set_public_key(&request).expect("responder");
    let response = responder.get_public_key().expect("response");
    initiator.set_public_key(&response).expect("initiator");
    let (si, sr) = (
        initiator.shared_secret().expect("initiator secret"),
        responder.shared_secret().expect("responder secret"),
    );
    assert_eq!(si, sr);
    let key_bytes_in_secret = (0..key_bits as usize / 8).all(|i| si[i] == key_byte(i));
    assert!(
        key_bytes_in_secret,
        "the secret starts with the pattern key"
    );
    si.len()
}

/// Runs `f` with the scan on and returns where key bytes were freed. One scan at a time:
/// the test harness runs tests on parallel threads.
fn freed_key_bytes(f: impl FnOnce()) -> Vec<String> {
    static ONE_SCAN: Mutex<()> = Mutex::new(());
    let _scan = ONE_SCAN.lock().unwrap_or_else(|e| e.into_inner());
    HITS.store(0, Ordering::SeqCst);
    SCANNING.store(true, Ordering::SeqCst);
    f();
    SCANNING.store(false, Ordering::SeqCst);
    let sites = std::mem::take(&mut *HIT_SITES.lock().unwrap());
    assert_eq!(sites.len(), HITS.load(Ordering::SeqCst));
    sites
}

#[test]
fn the_scanner_sees_an_unwiped_key_and_not_a_wiped_one() {
    // Scanner self-test: a plain Vec of key bytes freed is a hit, a Zeroizing one is not,
    // and a Zeroizing Vec that grows leaves its first buffer behind.
    let hits = freed_key_bytes(|| drop((0..32).map(key_byte).collect::<Vec<u8>>()));
    assert_eq!(hits.len(), 1);
    let hits = freed_key_bytes(|| drop(Zeroizing::new((0..32).map(key_byte).collect::<Vec<u8>>())));
    assert!(hits.is_empty(), "{hits:#?}");
    let hits = freed_key_bytes(|| {
        let mut grown = Zeroizing::new(Vec::new());
        grown.extend((0..16).map(key_byte));
        grown.extend((16..64).map(key_byte));
    });
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert!(!holds_key_bytes(&[
        0xA5, 0xA4, 0xA7, 0xA6, 0xA1, 0xA0, 0xA3, 0x00
    ]));
}

// Failed before QkdKeyExchange::finish and QkdMaterial::from_keys reserved their exact
// size: growing a Zeroizing<Vec> of key bytes freed the unwiped old buffer.
#[test]
fn an_exchange_leaves_no_key_bytes_in_freed_memory() {
    // One key of 256 bits, and 512 bits from four 128-bit keys (several keys are joined).
    let mut leaks = Vec::new();
    for (key_bits, key_bytes) in [(256, 32), (512, 16)] {
        let mut secret_len = 0;
        let hits = freed_key_bytes(|| secret_len = run_exchange(key_bits, key_bytes));
        assert_eq!(secret_len, key_bits as usize / 8 + 32);
        leaks.extend(hits.iter().map(|h| format!("{key_bits}-bit exchange: {h}")));
    }
    assert!(
        leaks.is_empty(),
        "{} freed block(s) held key bytes:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
