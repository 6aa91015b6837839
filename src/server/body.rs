//! Request bodies (polling POSTs): read into one buffer that grows with the
//! bytes that arrive, never past the limit, and only until a deadline.
//!
//! hyper hands a body over in chunks that share its read buffer; keeping
//! them (as collecting them does) keeps a whole read buffer alive per chunk,
//! so a client sending one byte per write made the server hold about 4 KiB
//! per byte. Here every chunk is copied and dropped at once, and a body
//! that trickles in slower than the deadline allows is cut off.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit (announced or sent).
    #[error("request body larger than the limit")]
    TooLarge,
    /// Not complete by the deadline.
    #[error("request body not complete in time")]
    TimedOut,
    /// The connection failed or the framing was invalid.
    #[error("request body unreadable")]
    Broken,
}

/// A body being received: its bytes so far, at most `limit`.
#[derive(Debug)]
pub struct BodyBuffer {
    bytes: Vec<u8>,
    limit: usize,
}

impl BodyBuffer {
    /// An empty buffer for a body of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        BodyBuffer {
            bytes: Vec::new(),
            limit,
        }
    }

    /// Appends one chunk. The buffer grows with what arrived (doubling, so
    /// a body costs amortized copies), never past the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        let len = self.bytes.len() + chunk.len();
        if len > self.limit {
            return Err(BodyError::TooLarge);
        }
        if len > self.bytes.capacity() {
            let target = (2 * self.bytes.capacity()).clamp(len, self.limit);
            self.bytes.reserve_exact(target - self.bytes.len());
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    /// The body.
    pub fn finish(self) -> Bytes {
        Bytes::from(self.bytes)
    }
}

/// Reads `body` whole: at most `limit` bytes (a larger announced length is
/// refused before anything is read), complete by `deadline`.
pub async fn read(mut body: Incoming, limit: usize, deadline: Instant) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    let mut buffer = BodyBuffer::new(limit);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => return Ok(buffer.finish()),
            Ok(Some(Err(error))) => {
                tracing::debug!(%error, "request body unreadable");
                return Err(BodyError::Broken);
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Some(chunk) = frame.data_ref() {
            buffer.push(chunk)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_what_arrives_and_never_past_the_limit() {
        let mut buffer = BodyBuffer::new(1000);
        for _ in 0..10 {
            buffer.push(b"x").unwrap();
        }
        assert!(buffer.bytes.capacity() < 64, "{}", buffer.bytes.capacity());
        buffer.push(&[b'y'; 900]).unwrap();
        assert!(buffer.bytes.capacity() <= 1000);
        assert_eq!(buffer.push(&[b'z'; 91]), Err(BodyError::TooLarge));
        buffer.push(&[b'z'; 90]).unwrap();
        assert_eq!(buffer.bytes.capacity(), 1000);
        let body = buffer.finish();
        assert_eq!(body.len(), 1000);
        assert_eq!(&body[..11], b"xxxxxxxxxxy");
    }
}
