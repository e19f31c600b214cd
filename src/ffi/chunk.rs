//! `chunk_t` buffers crossing the FFI edge.

use super::abi::chunk_t;
use zeroize::{Zeroize, Zeroizing};

/// Copies `data` into a `malloc`ed chunk that charon owns and releases with `free()`
/// (`chunk_free`/`chunk_clear`); the Rust allocator must not be used for it.
pub(crate) fn malloc_copy(data: &[u8]) -> Option<chunk_t> {
    // SAFETY: malloc of at least one byte; the copy stays within both buffers.
    unsafe {
        let ptr = libc::malloc(data.len().max(1)) as *mut u8;
        if ptr.is_null() {
            return None;
        }
        std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len());
        Some(chunk_t {
            ptr,
            len: data.len(),
        })
    }
}

/// Views a borrowed chunk from charon; `None` for a NULL pointer with a non-zero length.
///
/// # Safety
/// `chunk` must describe `len` readable bytes that outlive the returned slice.
pub(crate) unsafe fn borrow<'a>(chunk: &chunk_t) -> Option<&'a [u8]> {
    match (chunk.ptr.is_null(), chunk.len) {
        (_, 0) => Some(&[]),
        (true, _) => None,
        // SAFETY: non-NULL, and the caller vouches for `len` readable bytes.
        (false, len) => Some(unsafe { std::slice::from_raw_parts(chunk.ptr, len) }),
    }
}

/// Takes ownership of a chunk strongSwan allocated (with malloc) for us: copies it out and
/// frees it, wiping it first when it holds a secret.
///
/// # Safety
/// `chunk` must be a malloc'ed buffer of `len` bytes (or NULL) that nobody else frees.
pub(crate) unsafe fn take(chunk: chunk_t, secret: bool) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::new());
    if !chunk.ptr.is_null() {
        // SAFETY: the caller hands over a malloc'ed buffer of `len` bytes that is ours now;
        // it is freed exactly once, after the last access.
        let bytes = unsafe { std::slice::from_raw_parts_mut(chunk.ptr, chunk.len) };
        out.extend_from_slice(bytes);
        if secret {
            bytes.zeroize();
        }
        // SAFETY: see above.
        unsafe { libc::free(chunk.ptr as *mut libc::c_void) };
    }
    out
}
