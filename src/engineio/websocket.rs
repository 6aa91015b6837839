//! The websocket transport: one Engine.IO session over one websocket.
//!
//! The connection's task reads frames and hands packets to the session; a
//! separate writer task owns the write half, drains the outbox, coalesces
//! whatever is queued into one flush, and runs the heartbeat.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite, upgrade::UpgradeFut};
use tokio::io::{AsyncWrite, BufWriter};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::fragments::{Message, Reassembler};
use super::outbox::{Outbound, OutboxReceiver};
use super::packet::{Handshake, Packet};
use super::{CloseReason, EngineConfig, EngineHandler, Outbox, RequestInfo, SessionHandler};

/// How many queued packets one writer wake-up writes before flushing.
const MAX_COALESCED: usize = 256;

/// Bytes buffered before the writer has to flush mid-batch.
const WRITE_BUFFER: usize = 4096;

/// What the reader tells the writer about the heartbeat.
#[derive(Default)]
struct Heartbeat {
    /// Milliseconds since the session started at which the last pong came.
    last_pong_ms: AtomicU64,
    /// Set by the writer when the pong did not come in time.
    timed_out: AtomicBool,
}

/// Runs a whole session on an upgraded websocket until it ends, or until
/// `shutdown` asks it to flush and close.
pub async fn serve<H: EngineHandler>(
    upgrade: UpgradeFut,
    handler: Arc<H>,
    config: Arc<EngineConfig>,
    info: RequestInfo,
    shutdown: CancellationToken,
) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(error) => {
            tracing::debug!(%error, remote = %info.remote, "websocket upgrade failed");
            return;
        }
    };
    // fastwebsockets writes each frame straight to its stream; a BufWriter
    // under the write half lets one flush carry every frame of a wake-up.
    let (read, mut write) = ws.split(|stream| {
        let (read, write) = tokio::io::split(stream);
        (read, BufWriter::with_capacity(WRITE_BUFFER, write))
    });
    write.set_writev(false);
    let mut read = read;
    read.set_max_message_size(config.max_payload + 1);
    let mut messages = Reassembler::new(config.max_payload);

    let (outbox, receiver) = Outbox::new(config.outbound_queue);
    let sid = super::new_id();
    let open = Handshake {
        sid: &sid,
        upgrades: &[],
        ping_interval: config.ping_interval.as_millis() as u64,
        ping_timeout: config.ping_timeout.as_millis() as u64,
        max_payload: config.max_payload,
    };
    outbox.send_text(Bytes::from(open.encode()));

    let started = Instant::now();
    let heartbeat = Arc::new(Heartbeat::default());
    let writer = WriteLoop {
        ws: write,
        receiver,
        config: config.clone(),
        heartbeat: heartbeat.clone(),
        started,
    };
    tokio::spawn(writer.run());

    let mut session = handler.open(outbox.clone(), info);
    let mut owed = |frame: Frame<'_>| {
        match frame.opcode {
            OpCode::Pong => {
                outbox.send(Outbound::WsPong(Bytes::copy_from_slice(&frame.payload)));
            }
            OpCode::Close => outbox.close(),
            _ => {}
        }
        std::future::ready(Ok::<(), Infallible>(()))
    };

    let mut shutting_down = false;
    let reason = loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                outbox.close();
                continue;
            }
            _ = outbox.closed() => {
                break if heartbeat.timed_out.load(Ordering::Relaxed) {
                    CloseReason::PingTimeout
                } else {
                    CloseReason::ServerClose
                };
            }
            frame = read.read_frame(&mut owed) => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(%error, %sid, "websocket read ended");
                break CloseReason::TransportError;
            }
        };
        let outcome = match frame.opcode {
            OpCode::Close => Err(CloseReason::TransportClose),
            OpCode::Ping | OpCode::Pong => Ok(()),
            opcode => match messages.push(opcode, frame.fin, &frame.payload) {
                Ok(None) => Ok(()),
                Ok(Some(Message::Text(bytes))) => match std::str::from_utf8(bytes) {
                    Ok(text) => on_text_packet(text, &mut session, &heartbeat, started).await,
                    Err(_) => Err(CloseReason::ParseError),
                },
                Ok(Some(Message::Binary(bytes))) => session
                    .on_binary(Bytes::copy_from_slice(bytes))
                    .await
                    .map_err(|_| CloseReason::ParseError),
                Err(error) => {
                    tracing::debug!(%error, %sid, "closing websocket");
                    Err(CloseReason::TransportError)
                }
            },
        };
        if let Err(reason) = outcome {
            break reason;
        }
    };
    tracing::debug!(%sid, reason = reason.as_str(), "engine.io session closed");
    outbox.close();
    session.on_close(reason).await;
}

/// Handles one Engine.IO text packet; `Err` ends the session.
async fn on_text_packet<S: SessionHandler>(
    text: &str,
    session: &mut S,
    heartbeat: &Heartbeat,
    started: Instant,
) -> Result<(), CloseReason> {
    match Packet::decode_text(text) {
        Ok(Packet::Message(data)) => session
            .on_text(data)
            .await
            .map_err(|_| CloseReason::ParseError),
        Ok(Packet::Pong(_)) => {
            let now = started.elapsed().as_millis() as u64;
            heartbeat.last_pong_ms.store(now.max(1), Ordering::Relaxed);
            Ok(())
        }
        // In Engine.IO v4 only the server pings (the upgrade probe aside).
        Ok(Packet::Ping(_)) => Err(CloseReason::ParseError),
        Ok(Packet::Close) => Err(CloseReason::TransportClose),
        Ok(Packet::Upgrade | Packet::Noop) => Ok(()),
        Ok(Packet::Open(_) | Packet::Binary(_)) | Err(_) => Err(CloseReason::ParseError),
    }
}

type Writer<W> = WebSocketWrite<BufWriter<W>>;

/// The writer task of one session.
struct WriteLoop<W> {
    ws: Writer<W>,
    receiver: OutboxReceiver,
    config: Arc<EngineConfig>,
    heartbeat: Arc<Heartbeat>,
    started: Instant,
}

/// Whether the writer goes on after a batch.
enum Flow {
    Continue,
    Closed,
}

impl<W: AsyncWrite + Unpin + Send> WriteLoop<W> {
    async fn run(mut self) {
        let closing = self.receiver.closing.clone();
        let mut next_ping = Instant::now() + self.config.ping_interval;
        let mut pong_due: Option<(Instant, u64)> = None;
        loop {
            let wake = pong_due.map_or(next_ping, |(deadline, _)| deadline);
            tokio::select! {
                biased;
                _ = closing.cancelled() => break,
                item = self.receiver.rx.recv() => {
                    let Some(item) = item else { break };
                    let flow = tokio::select! {
                        flow = self.write_batch(item) => flow,
                        _ = closing.cancelled() => break,
                    };
                    match flow {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Closed) | Err(_) => break,
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if let Some((_, sent_ms)) = pong_due.take() {
                        let pong_ms = self.heartbeat.last_pong_ms.load(Ordering::Relaxed);
                        if pong_ms < sent_ms {
                            self.heartbeat.timed_out.store(true, Ordering::Relaxed);
                            break;
                        }
                        next_ping = self.started + Duration::from_millis(pong_ms) + self.config.ping_interval;
                        continue;
                    }
                    let sent_ms = self.started.elapsed().as_millis() as u64;
                    let ping = tokio::select! {
                        result = self.write_now(Frame::text(Payload::Borrowed(b"2"))) => result,
                        _ = closing.cancelled() => break,
                    };
                    if ping.is_err() {
                        break;
                    }
                    pong_due = Some((Instant::now() + self.config.ping_timeout, sent_ms.max(1)));
                }
            }
        }
        // Whatever ended the loop, the reader must stop too.
        closing.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.flush()).await;
    }

    /// Writes `first` and whatever else is already queued (up to
    /// [`MAX_COALESCED`] items), then flushes once.
    async fn write_batch(
        &mut self,
        first: Outbound,
    ) -> Result<Flow, fastwebsockets::WebSocketError> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(item) = next.take() {
            let frame = match &item {
                Outbound::Text(bytes) => Frame::text(Payload::Borrowed(bytes)),
                Outbound::Binary(bytes) => Frame::binary(Payload::Borrowed(bytes)),
                Outbound::WsPong(bytes) => Frame::pong(Payload::Borrowed(bytes)),
                Outbound::Close => {
                    self.ws.write_frame(Frame::close(1000, b"")).await?;
                    self.ws.flush().await?;
                    return Ok(Flow::Closed);
                }
            };
            self.ws.write_frame(frame).await?;
            written += 1;
            if written < MAX_COALESCED {
                next = self.receiver.rx.try_recv().ok();
            }
        }
        self.ws.flush().await?;
        Ok(Flow::Continue)
    }

    async fn write_now(&mut self, frame: Frame<'_>) -> Result<(), fastwebsockets::WebSocketError> {
        self.ws.write_frame(frame).await?;
        self.ws.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engineio::Outbox;
    use fastwebsockets::{Role, WebSocket};

    #[tokio::test]
    async fn a_writer_wake_up_writes_every_queued_packet_even_past_the_coalescing_limit() {
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let (_, write) = fastwebsockets::after_handshake_split(
            tokio::io::empty(),
            BufWriter::with_capacity(WRITE_BUFFER, server_io),
            Role::Server,
        );
        let (outbox, receiver) = Outbox::new(4 * MAX_COALESCED);
        let total = 2 * MAX_COALESCED + 3;
        for i in 0..total {
            assert!(outbox.send_text(Bytes::from(format!("4{i}"))));
        }
        outbox.close();
        let writer = WriteLoop {
            ws: write,
            receiver,
            config: Arc::new(EngineConfig::default()),
            heartbeat: Arc::new(Heartbeat::default()),
            started: Instant::now(),
        };
        writer.run().await;

        let mut client = WebSocket::after_handshake(client_io, Role::Client);
        client.set_auto_close(false);
        for i in 0..total {
            let frame = client
                .read_frame()
                .await
                .expect("a frame per queued packet");
            assert_eq!(frame.payload.as_ref(), format!("4{i}").as_bytes());
        }
        let close = client.read_frame().await.expect("then the close frame");
        assert_eq!(close.opcode, OpCode::Close);
    }
}
