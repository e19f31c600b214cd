//! Response bodies: buffers wiped once sent, the drip fault, and building a response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;
use zeroize::Zeroizing;

/// Pace of the drip fault: slow enough that a client's per-read timeout never fires while its
/// whole request takes minutes.
pub const DRIP_INTERVAL: Duration = Duration::from_millis(500);

/// A response body buffer that is wiped once hyper has sent it. (Copies that hyper or
/// rustls make on the way to the socket are beyond our reach.)
pub struct SecretChunk {
    bytes: Zeroizing<Vec<u8>>,
    sent: usize,
}

impl Buf for SecretChunk {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.sent
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes[self.sent..]
    }

    fn advance(&mut self, count: usize) {
        assert!(
            count <= self.remaining(),
            "advance past the end of a response body"
        );
        self.sent += count;
    }
}

impl SecretChunk {
    /// Splits off the first byte (the chunk must not be empty).
    fn take_first_byte(&mut self) -> SecretChunk {
        let first = SecretChunk {
            bytes: Zeroizing::new(vec![self.chunk()[0]]),
            sent: 0,
        };
        self.advance(1);
        first
    }
}

/// The body of every ETSI response: sent at once, or one byte per [`DRIP_INTERVAL`] under
/// the drip fault.
pub struct EtsiBody {
    rest: Option<SecretChunk>,
    drip: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl EtsiBody {
    fn new(chunk: SecretChunk) -> EtsiBody {
        EtsiBody {
            rest: (chunk.remaining() > 0).then_some(chunk),
            drip: None,
        }
    }

    pub(super) fn dripping(self) -> EtsiBody {
        EtsiBody {
            drip: Some(Box::pin(tokio::time::sleep(DRIP_INTERVAL))),
            ..self
        }
    }
}

impl Body for EtsiBody {
    type Data = SecretChunk;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<SecretChunk>, Infallible>>> {
        let this = &mut *self;
        let Some(drip) = this.drip.as_mut() else {
            return Poll::Ready(this.rest.take().map(|chunk| Ok(Frame::data(chunk))));
        };
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        std::task::ready!(drip.as_mut().poll(cx));
        drip.as_mut()
            .reset(tokio::time::Instant::now() + DRIP_INTERVAL);
        let byte = rest.take_first_byte();
        if rest.remaining() == 0 {
            this.rest = None;
        }
        Poll::Ready(Some(Ok(Frame::data(byte))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(
            self.rest
                .as_ref()
                .map_or(0, |chunk| chunk.remaining() as u64),
        )
    }
}

/// Counts the bytes of a serialization, to size a buffer that never reallocates: a
/// reallocation would leave an unwiped copy of key material behind.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) fn json_response(status: StatusCode, body: &impl Serialize) -> Response<EtsiBody> {
    // Our response types are plain structs of strings and numbers: serializing cannot fail.
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, body).expect("response serializes");
    let mut bytes = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *bytes, body).expect("response serializes");
    response(status, "application/json", bytes)
}

/// A response that carries no key material.
pub(super) fn text_response(
    status: StatusCode,
    content_type: &'static str,
    text: String,
) -> Response<EtsiBody> {
    response(status, content_type, Zeroizing::new(text.into_bytes()))
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    bytes: Zeroizing<Vec<u8>>,
) -> Response<EtsiBody> {
    let mut response = Response::new(EtsiBody::new(SecretChunk { bytes, sent: 0 }));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Key containers must not linger in any cache.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
