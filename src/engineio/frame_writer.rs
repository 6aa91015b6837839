//! The write side of a server websocket: frames encoded by fastwebsockets
//! into one buffer, sent with one write per batch.
//!
//! fastwebsockets' own write half writes each frame straight to the stream,
//! so coalescing needed a `BufWriter` and its 4 KiB buffer for every
//! connection, busy or idle. Here the buffer lives only while a batch is
//! being written: an idle connection holds none.

use fastwebsockets::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Room for the longest frame header (opcode, length, mask).
const MAX_HEAD: usize = 16;

/// Frames queued for one write to `stream`.
pub struct FrameWriter<W> {
    stream: W,
    buffer: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer for a server-side websocket over `stream`.
    pub fn new(stream: W) -> Self {
        FrameWriter {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Appends `frame` (unmasked: the server does not mask) to the batch.
    pub fn push(&mut self, mut frame: Frame<'_>) {
        let mut head = [0u8; MAX_HEAD];
        let len = frame.fmt_head(&mut head);
        self.buffer.reserve(len + frame.payload.len());
        self.buffer.extend_from_slice(&head[..len]);
        self.buffer.extend_from_slice(&frame.payload);
    }

    /// Sends the batch and flushes the stream (TLS records included).
    pub async fn flush(&mut self) -> std::io::Result<()> {
        // Freed whatever its size: writes come in batches a wake-up apart,
        // and most connections wait far longer between them than they write.
        let batch = std::mem::take(&mut self.buffer);
        self.stream.write_all(&batch).await?;
        drop(batch);
        self.stream.flush().await
    }

    /// Sends `frame` at once.
    pub async fn send(&mut self, frame: Frame<'_>) -> std::io::Result<()> {
        self.push(frame);
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::{OpCode, Payload, Role, WebSocket};

    #[tokio::test]
    async fn a_batch_of_frames_reads_back_as_those_frames_and_frees_its_buffer() {
        let (server, client) = tokio::io::duplex(1 << 16);
        let mut writer = FrameWriter::new(server);
        writer.push(Frame::text(Payload::Borrowed(b"4hello")));
        writer.push(Frame::binary(Payload::Owned(vec![7; 3000])));
        writer.flush().await.unwrap();
        assert_eq!(
            writer.buffer.capacity(),
            0,
            "a sent batch's buffer is freed"
        );
        writer
            .send(Frame::text(Payload::Borrowed(b"2")))
            .await
            .unwrap();
        assert_eq!(writer.buffer.capacity(), 0, "a small one's too");
        writer.send(Frame::close(1000, b"")).await.unwrap();

        let mut client = WebSocket::after_handshake(client, Role::Client);
        client.set_auto_close(false);
        let text = client.read_frame().await.unwrap();
        assert_eq!(
            (text.opcode, text.payload.as_ref()),
            (OpCode::Text, &b"4hello"[..])
        );
        let binary = client.read_frame().await.unwrap();
        assert_eq!(
            (binary.opcode, binary.payload.len()),
            (OpCode::Binary, 3000)
        );
        let ping = client.read_frame().await.unwrap();
        assert_eq!(
            (ping.opcode, ping.payload.as_ref()),
            (OpCode::Text, &b"2"[..])
        );
        assert_eq!(client.read_frame().await.unwrap().opcode, OpCode::Close);
    }
}
