//! The websocket transport: a session over one websocket, opened on it or
//! taken over from polling (the upgrade).
//!
//! One task carries the websocket: its reader hands packets to the session
//! while its writer, beside it in the same task, owns the write half, drains
//! the session's outbox and coalesces whatever is queued into one flush. A
//! session opened on the websocket runs its lifecycle (the heartbeat, whose
//! pings come through the outbox, then the close) in that task too, and the
//! session's close is waited for once for all three: an idle connection is
//! one task, not three, and its state is what waiting needs (each task and
//! each wait was a few hundred bytes of every idle connection's memory).

use std::future::Future;
use std::sync::Arc;

use fastwebsockets::{Frame, OpCode, Payload, upgrade::UpgradeFut};
use futures_util::FutureExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};
use tokio::time::Duration;

use super::fragments::{Message, Reassembler};
use super::frame_reader::FrameReader;
use super::frame_writer::FrameWriter;
use super::outbox::{Outbound, OutboxReceiver};
use super::packet::EnginePacket;
use super::payload::Record;
use super::session::{Session, Transport};
use super::{CloseReason, Engine, EngineHandler, RequestInfo, SessionHandler};

/// How many queued packets one writer wake-up writes before flushing.
const MAX_COALESCED: usize = 256;

/// How long a probing websocket may take to complete the upgrade (the
/// reference server's `upgradeTimeout`).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

type Stream = TokioIo<Upgraded>;
type WsReader = FrameReader<ReadHalf<Stream>>;

/// Completes the upgrade and splits the websocket; `None` if it failed.
async fn accept(
    upgrade: UpgradeFut,
    max_payload: usize,
) -> Option<(WsReader, FrameWriter<WriteHalf<Stream>>)> {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(error) => {
            tracing::debug!(%error, "websocket upgrade failed");
            return None;
        }
    };
    // Right after the upgrade nothing is buffered in `ws`: its stream can be
    // split into our frame reader and batching frame writer.
    let (read, write) = tokio::io::split(ws.into_inner());
    Some((FrameReader::new(read, max_payload), FrameWriter::new(write)))
}

/// Runs a new session on an upgraded websocket until it ends: the session's
/// lifecycle and the websocket carrying it, in this one task. `path` is the
/// Engine.IO path the handshake came on. `info` is boxed and the future is
/// built by a plain function: what an idle connection's task keeps of its
/// arguments is then a few pointers (an async fn would store them twice).
pub fn serve<H: EngineHandler>(
    upgrade: UpgradeFut,
    engine: Arc<Engine<H>>,
    path: &'static str,
    info: Box<RequestInfo>,
) -> impl Future<Output = ()> + Send {
    async move {
        let max_payload = engine.config.max_payload;
        let Some((read, write)) = accept(upgrade, max_payload).await else {
            return;
        };
        let (session, _) = engine.create(path, *info, Transport::Websocket);
        // Nothing else has seen the session yet: the receiver is there.
        let Some(receiver) = session.try_receiver().and_then(|mut taken| taken.take()) else {
            return;
        };
        // Pinned here and lent to the lifecycle: a future passed by value down
        // a chain of async fns is stored again at every level.
        let transport = std::pin::pin!(carry(read, write, receiver, &session, max_payload));
        engine.lifecycle(&session, transport).await;
    }
}

/// Takes a polling session over: answers the `2probe`, and once the client
/// sends `5`, drains the session's outbox (what polling had not delivered
/// first) and carries its packets. A websocket for a session that is not on
/// polling any more is accepted and closed at once, as the reference server
/// does.
pub async fn adopt<S: SessionHandler>(
    upgrade: UpgradeFut,
    session: Arc<Session<S>>,
    max_payload: usize,
) {
    let Some((mut read, mut write)) = accept(upgrade, max_payload).await else {
        return;
    };
    if session.transport() != Transport::Polling {
        close_now(&mut write).await;
        return;
    }
    let mut probing = false;
    let probe = tokio::select! {
        _ = session.closing().cancelled() => None,
        receiver = tokio::time::timeout(UPGRADE_TIMEOUT, probe(&mut read, &mut write, &session, &mut probing)) => receiver.ok().flatten(),
    };
    let Some(receiver) = probe else {
        if probing {
            session.cancel_upgrade();
        }
        close_now(&mut write).await;
        return;
    };
    // The session's lifecycle runs in a task of its own since it opened on
    // polling: this one stops with it.
    tokio::select! {
        biased;
        _ = carry(read, write, receiver, &session, max_payload) => {}
        _ = session.closing().cancelled() => {}
    }
}

/// Carries `session` on this websocket from now on: the writer drains its
/// outbox while the reader reads, polled together in the caller's task (so a
/// handler the reader waits for never holds up what the writer sends). It
/// runs until the session closes, and the caller stops it then. A plain
/// function: an async one would hold its arguments beside the futures they
/// were moved into.
fn carry<'a, S: SessionHandler>(
    read: WsReader,
    write: FrameWriter<WriteHalf<Stream>>,
    receiver: OutboxReceiver,
    session: &'a Session<S>,
    max_payload: usize,
) -> impl Future<Output = ()> + Send + 'a {
    let writer = WriteLoop {
        ws: write,
        receiver,
    };
    futures_util::future::join(writer.run(), read_loop(read, session, max_payload)).map(|_| ())
}

/// The upgrade dance on the new websocket: `2probe` → `3probe`, then `5`.
/// Returns the session's receiver once the upgrade is complete; `None` if
/// the client did anything else. `probing` tells whether this websocket
/// started the upgrade (and so must undo it on failure).
async fn probe<S: SessionHandler, W: AsyncWrite + Unpin + Send>(
    read: &mut WsReader,
    write: &mut FrameWriter<W>,
    session: &Session<S>,
    probing: &mut bool,
) -> Option<OutboxReceiver> {
    loop {
        let frame = read.next().await.ok()?;
        let text = match frame.opcode {
            // A pong is optional while probing; a close ends the probe.
            OpCode::Ping | OpCode::Pong => continue,
            OpCode::Text if frame.fin => std::str::from_utf8(frame.payload).ok()?,
            _ => return None,
        };
        match EnginePacket::decode_text(text) {
            Ok(EnginePacket::Ping("probe")) if !*probing => {
                if !session.begin_upgrade() {
                    return None;
                }
                *probing = true;
                write
                    .send(Frame::text(Payload::Borrowed(b"3probe")))
                    .await
                    .ok()?;
            }
            Ok(EnginePacket::Upgrade) if *probing => return session.complete_upgrade().await,
            _ => return None,
        }
    }
}

/// Sends a close frame on a websocket that carries no session.
async fn close_now<W: AsyncWrite + Unpin + Send>(write: &mut FrameWriter<W>) {
    let _ = write.send(Frame::close_raw(Payload::Borrowed(&[]))).await;
}

/// Reads frames and hands packets to the session until the websocket ends
/// (the session is then closed); the caller stops it once the session
/// closes otherwise. A plain function returning the future: an async fn
/// would store its arguments twice in every idle connection's task.
fn read_loop<S: SessionHandler>(
    mut read: WsReader,
    session: &Session<S>,
    max_payload: usize,
) -> impl Future<Output = ()> + Send + '_ {
    async move {
        let mut messages = Reassembler::new(max_payload);
        let reason = loop {
            let frame = match read.next().await {
                Ok(frame) => frame,
                Err(error) => {
                    tracing::debug!(%error, sid = session.sid(), "websocket read ended");
                    break CloseReason::TransportError;
                }
            };
            let message = match frame.opcode {
                OpCode::Close => Err(CloseReason::TransportClose),
                OpCode::Ping => {
                    let pong = bytes::Bytes::copy_from_slice(frame.payload);
                    session.outbox().send(Outbound::WsPong(pong));
                    continue;
                }
                OpCode::Pong => continue,
                opcode => match messages.push(opcode, frame.fin, frame.payload) {
                    Ok(None) => continue,
                    Ok(Some(message)) => Ok(message),
                    Err(error) => {
                        tracing::debug!(%error, sid = session.sid(), "closing websocket");
                        Err(CloseReason::TransportError)
                    }
                },
            };
            let record = match &message {
                Ok(Message::Text(bytes)) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| EnginePacket::decode_text(text).ok())
                    .map(Record::Packet)
                    .ok_or(CloseReason::ParseError),
                Ok(Message::Binary(bytes)) => Ok(Record::Binary(bytes.to_vec())),
                Err(reason) => Err(*reason),
            };
            let outcome = match record {
                // Boxed: locking the handler and its future are large and
                // short-lived; inline, every idle connection would carry them.
                Ok(record) => match Box::pin(deliver(session, record)).await {
                    Some(outcome) => outcome,
                    None => return,
                },
                Err(reason) => Err(reason),
            };
            if let Err(reason) = outcome {
                break reason;
            }
        };
        if reason == CloseReason::TransportError {
            session.abort(reason);
        } else {
            // Let the writer deliver what is queued, then the close frame.
            session.close(reason);
        }
    }
}

/// Hands one record to the session's handler, in turn with the other
/// transports; `None` once the session has closed (its handler is gone).
async fn deliver<S: SessionHandler>(
    session: &Session<S>,
    record: Record<'_>,
) -> Option<Result<(), CloseReason>> {
    let mut handler = session.handler().await;
    let handler = handler.as_mut()?;
    Some(session.receive(handler, record).await)
}

/// The writer of one websocket session.
struct WriteLoop<W> {
    ws: FrameWriter<W>,
    receiver: OutboxReceiver,
}

/// Whether the writer goes on after a batch.
enum Flow {
    Continue,
    Closed,
}

impl<W: AsyncWrite + Unpin + Send> WriteLoop<W> {
    /// Writes what the outbox holds until the close frame is written or the
    /// socket fails; the caller stops it once the session closes otherwise.
    /// Between wake-ups it holds only the outbox's wait: a batch is framed
    /// without waiting, and only its flush is awaited. A plain function
    /// returning the future: an async fn would store the writer twice.
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            loop {
                let first = self.receiver.recv().await;
                let flow = self.frame_batch(first);
                if self.ws.flush().await.is_err() {
                    break;
                }
                if let Flow::Closed = flow {
                    break;
                }
            }
            // Whatever ended the loop, the reader and the session must stop too.
            self.receiver.closing.cancel();
        }
    }

    /// Frames `first` and whatever else is already queued (up to
    /// [`MAX_COALESCED`] items) for one write, up to and including a close.
    fn frame_batch(&mut self, first: Outbound) -> Flow {
        let mut next = Some(first);
        let mut framed = 0;
        while let Some(item) = next.take() {
            let frame = match &item {
                Outbound::Text(bytes) => Frame::text(Payload::Borrowed(bytes)),
                Outbound::Binary(bytes) => Frame::binary(Payload::Borrowed(bytes)),
                Outbound::WsPong(bytes) => Frame::pong(Payload::Borrowed(bytes)),
                Outbound::Close => {
                    self.ws.push(Frame::close(1000, b""));
                    return Flow::Closed;
                }
            };
            self.ws.push(frame);
            framed += 1;
            if framed < MAX_COALESCED {
                next = self.receiver.try_recv();
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engineio::Outbox;
    use bytes::Bytes;
    use fastwebsockets::{Role, WebSocket};

    #[tokio::test]
    async fn a_writer_wake_up_writes_every_queued_packet_even_past_the_coalescing_limit() {
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let write = FrameWriter::new(server_io);
        let (outbox, receiver) = Outbox::new(4 * MAX_COALESCED);
        let total = 2 * MAX_COALESCED + 3;
        for i in 0..total {
            assert!(outbox.send_text(Bytes::from(format!("4{i}"))));
        }
        outbox.close();
        let writer = WriteLoop {
            ws: write,
            receiver,
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
