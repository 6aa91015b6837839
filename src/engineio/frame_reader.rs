//! The read side of a server websocket: client frames parsed out of a buffer
//! that grows while data streams in and shrinks back once it is drained.
//!
//! fastwebsockets' reader keeps a fixed 8 KiB buffer for every connection,
//! busy or idle; measured with 10,000 idle connections that was 7.6 of the
//! 17.6 KiB each one cost. Here a connection waiting with nothing buffered
//! holds no buffer at all: what arrives then lands on the stack and is
//! copied into a fresh buffer (as the TLS layer below frees its own while
//! the socket has nothing). Parsing a frame head is pure ([`parse_head`],
//! fuzzed); unmasking is fastwebsockets'.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::ready;

use bytes::{Buf, BytesMut};
use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The least one read asks for: room for a typical chat frame in one read,
/// and the size of the stack landing of a read from an empty buffer.
const IDLE_CAPACITY: usize = 512;
/// The most one read asks for while a burst streams in.
const MAX_READ: usize = 16 * 1024;

/// The head of one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Last frame of its message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The client's masking key.
    pub mask: [u8; 4],
    /// Bytes of the head itself.
    pub len: usize,
    /// Bytes of payload after the head.
    pub payload_len: usize,
}

/// Why a client's frame is refused (RFC 6455 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV bits set: no extension was negotiated.
    #[error("reserved bits set without an extension")]
    Reserved,
    /// An opcode the RFC does not define.
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    /// Clients must mask every frame.
    #[error("unmasked client frame")]
    Unmasked,
    /// Control frames are single frames of at most 125 bytes.
    #[error("fragmented or oversized control frame")]
    Control,
    /// A payload over the limit.
    #[error("frame payload larger than {0} bytes")]
    TooLarge(usize),
}

/// Why reading the next frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The stream ended, mid-frame or between frames.
    #[error("connection closed without a close frame")]
    Eof,
    /// The client sent an invalid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Parses the head of a client frame at the start of `bytes`: `None` if more
/// bytes are needed. Payloads over `max_payload` are refused from the head,
/// before any of them is buffered.
pub fn parse_head(bytes: &[u8], max_payload: usize) -> Result<Option<Head>, FrameError> {
    let [first, second, rest @ ..] = bytes else {
        return Ok(None);
    };
    if first & 0b0111_0000 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = first & 0b1000_0000 != 0;
    let code = first & 0b0000_1111;
    let opcode = OpCode::try_from(code).map_err(|_| FrameError::Opcode(code))?;
    if second & 0b1000_0000 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (extended, length) = match second & 0b0111_1111 {
        126 => (
            2,
            rest.get(..2)
                .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
        ),
        127 => (
            8,
            rest.get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default())),
        ),
        short => (0, Some(u64::from(short))),
    };
    let Some(length) = length else {
        return Ok(None);
    };
    let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if control && (!fin || length > 125) {
        return Err(FrameError::Control);
    }
    let payload_len = usize::try_from(length)
        .ok()
        .filter(|len| *len <= max_payload)
        .ok_or(FrameError::TooLarge(max_payload))?;
    let Some(mask) = rest.get(extended..extended + 4) else {
        return Ok(None);
    };
    Ok(Some(Head {
        fin,
        opcode,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        len: 2 + extended + 4,
        payload_len,
    }))
}

/// One frame from the client, unmasked, borrowed from the reader's buffer
/// until the next read.
#[derive(Debug)]
pub struct InFrame<'a> {
    /// Last frame of its message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The unmasked payload.
    pub payload: &'a [u8],
}

/// Reads client frames from `stream`.
pub struct FrameReader<R> {
    stream: R,
    buffer: BytesMut,
    /// Bytes of the frame last returned, dropped on the next read.
    returned: usize,
    max_payload: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing frames with payloads over `max_payload` bytes.
    pub fn new(stream: R, max_payload: usize) -> Self {
        FrameReader {
            stream,
            buffer: BytesMut::new(),
            returned: 0,
            max_payload,
        }
    }

    /// The next frame; waits for it to arrive in full.
    pub async fn next(&mut self) -> Result<InFrame<'_>, ReadError> {
        self.buffer.advance(self.returned);
        self.returned = 0;
        if self.buffer.is_empty() {
            // Drained: the next read lands on the stack while it waits.
            self.buffer = BytesMut::new();
        }
        let head = loop {
            if let Some(head) = parse_head(&self.buffer, self.max_payload)? {
                break head;
            }
            self.fill(0).await?;
        };
        let end = head.len + head.payload_len;
        while self.buffer.len() < end {
            self.fill(end - self.buffer.len()).await?;
        }
        let payload = &mut self.buffer[head.len..end];
        fastwebsockets::unmask(payload, head.mask);
        self.returned = end;
        Ok(InFrame {
            fin: head.fin,
            opcode: head.opcode,
            payload: &self.buffer[head.len..end],
        })
    }

    /// Reads once into room for what the frame still `needed`, at least
    /// [`IDLE_CAPACITY`] and at most [`MAX_READ`] bytes ahead of what has
    /// arrived: the buffer grows with the bytes a client sends, not with the
    /// length its frame head claims.
    async fn fill(&mut self, needed: usize) -> Result<(), ReadError> {
        if self.buffer.is_empty() {
            return self.fill_empty().await;
        }
        let room = needed
            .max(self.buffer.capacity())
            .clamp(IDLE_CAPACITY, MAX_READ);
        self.buffer.reserve(room);
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(ReadError::Eof);
        }
        Ok(())
    }

    /// Reads into an empty buffer: the read waits with a landing on the
    /// stack (polled, not held across the wait), and a buffer is allocated
    /// only for the bytes that arrived.
    async fn fill_empty(&mut self) -> Result<(), ReadError> {
        let (stream, buffer) = (&mut self.stream, &mut self.buffer);
        let read = poll_fn(|cx| {
            let mut landing = [0u8; IDLE_CAPACITY];
            let mut landing = ReadBuf::new(&mut landing);
            ready!(Pin::new(&mut *stream).poll_read(cx, &mut landing))?;
            buffer.extend_from_slice(landing.filled());
            std::task::Poll::Ready(Ok::<_, std::io::Error>(landing.filled().len()))
        })
        .await?;
        if read == 0 {
            return Err(ReadError::Eof);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    #[test]
    fn parses_heads_of_every_length_form() {
        for len in [0, 125, 126, 65535, 65536] {
            let bytes = frame(true, 2, &vec![0; len]);
            let head = parse_head(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(head.payload_len, len);
            assert_eq!(head.len + len, bytes.len());
            for cut in 0..head.len {
                assert_eq!(
                    parse_head(&bytes[..cut], 1 << 20),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn refuses_what_a_client_must_not_send() {
        let cases: [(Vec<u8>, FrameError); 5] = [
            (vec![0x81 | 0x40, 0x80, 0, 0, 0, 0], FrameError::Reserved),
            (vec![0x83, 0x80, 0, 0, 0, 0], FrameError::Opcode(3)),
            (vec![0x81, 0x00], FrameError::Unmasked),
            (frame(false, 9, b""), FrameError::Control),
            (frame(true, 9, &[0; 126]), FrameError::Control),
        ];
        for (bytes, error) in cases {
            assert_eq!(parse_head(&bytes, 1024), Err(error), "{bytes:?}");
        }
        let big = frame(true, 1, &[b'a'; 11]);
        assert_eq!(parse_head(&big, 10), Err(FrameError::TooLarge(10)));
    }

    #[tokio::test]
    async fn reads_frames_split_anywhere_and_shrinks_back_when_drained() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, 1 << 20);
        let large = vec![b'x'; 10_000];
        let mut wire = frame(true, 1, b"42[\"hi\"]");
        wire.extend(frame(false, 2, &large));
        wire.extend(frame(true, 9, b"ping"));
        wire.extend(frame(true, 0, b"!"));
        tokio::spawn(async move {
            // Through a 64-byte pipe: every frame arrives in pieces.
            client.write_all(&wire).await.unwrap();
            client.shutdown().await.unwrap();
        });

        let first = reader.next().await.unwrap();
        assert_eq!(
            (first.fin, first.opcode, first.payload),
            (true, OpCode::Text, &b"42[\"hi\"]"[..])
        );
        let second = reader.next().await.unwrap();
        assert_eq!((second.fin, second.opcode), (false, OpCode::Binary));
        assert_eq!(second.payload, &large[..]);
        let ping = reader.next().await.unwrap();
        assert_eq!((ping.opcode, ping.payload), (OpCode::Ping, &b"ping"[..]));
        let last = reader.next().await.unwrap();
        assert_eq!(
            (last.fin, last.opcode, last.payload),
            (true, OpCode::Continuation, &b"!"[..])
        );
        assert!(matches!(reader.next().await, Err(ReadError::Eof)));
        assert_eq!(
            reader.buffer.capacity(),
            0,
            "a drained reader holds nothing"
        );
    }

    #[tokio::test]
    async fn a_reader_waiting_with_nothing_buffered_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut reader = FrameReader::new(server, 4096);
        client.write_all(&frame(true, 1, b"4hello")).await.unwrap();
        assert_eq!(reader.next().await.unwrap().payload, b"4hello");
        // Polled once: nothing more has come, so it waits.
        let waiting = futures_util::FutureExt::now_or_never(reader.next());
        assert!(waiting.is_none(), "no frame yet");
        assert_eq!(reader.buffer.capacity(), 0, "waiting costs no buffer");
        // A frame longer than the landing arrives whole all the same.
        let long = vec![b'y'; 3 * IDLE_CAPACITY];
        client.write_all(&frame(true, 1, &long)).await.unwrap();
        assert_eq!(reader.next().await.unwrap().payload, &long[..]);
    }

    #[tokio::test]
    async fn a_head_claiming_a_large_payload_reserves_only_what_arrives() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, 1 << 20);
        let wire = frame(true, 2, &vec![0; 1 << 20]);
        let sent = wire.len() / 4;
        tokio::spawn(async move { client.write_all(&wire[..sent]).await.unwrap() });
        assert!(matches!(reader.next().await, Err(ReadError::Eof)));
        // Growth doubles (amortized), so up to twice what arrived; a
        // reservation for the whole claimed payload would be four times.
        assert!(
            reader.buffer.capacity() < 2 * sent + MAX_READ,
            "{} bytes reserved for {sent} received",
            reader.buffer.capacity(),
        );
    }

    #[tokio::test]
    async fn a_stream_ending_mid_frame_is_an_eof() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server, 1024);
        let wire = frame(true, 1, b"hello");
        client.write_all(&wire[..wire.len() - 1]).await.unwrap();
        drop(client);
        assert!(matches!(reader.next().await, Err(ReadError::Eof)));
    }
}
