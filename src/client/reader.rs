//! The connection's one background task: reads every frame, answers the
//! server's pings, completes the CONNECT handshake, resolves
//! acknowledgements and queues events for [`super::Client::next_event`].

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::ReadHalf;
use tokio::sync::{mpsc, oneshot};

use super::{ClientError, ClientEvent, ClientShared, RawArgs};
use crate::engineio::fragments::{Message, Reassembler};
use crate::engineio::packet::EnginePacket;
use crate::socketio::packet::{DecodeError, PacketType, RawPacket};

/// The largest message accepted from the server. Generous: a `history`
/// answer holds up to 200 messages of several kilobytes each.
const MAX_MESSAGE: usize = 16 << 20;

/// The fields of the Engine.IO open packet the client uses.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Open {
    ping_interval: u64,
    ping_timeout: u64,
}

/// Reads one connection's websocket.
pub(super) struct Reader {
    read: WebSocketRead<ReadHalf<TokioIo<Upgraded>>>,
    shared: Arc<ClientShared>,
    messages: Reassembler,
}

impl Reader {
    /// A reader over the read half; control frames the protocol obliges us
    /// to answer (close) are written through `shared`.
    pub(super) fn new(
        mut read: WebSocketRead<ReadHalf<TokioIo<Upgraded>>>,
        shared: Arc<ClientShared>,
    ) -> Self {
        read.set_max_message_size(MAX_MESSAGE);
        Reader {
            read,
            shared,
            messages: Reassembler::new(MAX_MESSAGE),
        }
    }

    /// Reads the Engine.IO open packet. Returns how long the server may stay
    /// silent before the connection counts as dead: its ping interval plus
    /// its ping timeout, as socket.io-client reckons.
    pub(super) async fn read_open(&mut self) -> Result<Duration, ClientError> {
        let text = self.next_text().await?.ok_or(ClientError::Closed)?;
        let Ok(EnginePacket::Open(json)) = EnginePacket::decode_text(&text) else {
            return Err(ClientError::Protocol(format!(
                "expected the Engine.IO open packet, got {text:?}"
            )));
        };
        let open: Open = serde_json::from_str(json)
            .map_err(|e| ClientError::Protocol(format!("bad Engine.IO open packet: {e}")))?;
        Ok(Duration::from_millis(
            open.ping_interval.saturating_add(open.ping_timeout),
        ))
    }

    /// Runs until the connection ends. `connected` gets the Socket.IO sid,
    /// or why the server refused or the connection ended before it came.
    pub(super) async fn run(
        mut self,
        events: mpsc::UnboundedSender<ClientEvent>,
        connected: oneshot::Sender<Result<String, ClientError>>,
        silence: Duration,
    ) {
        let mut connected = Some(connected);
        let ended = loop {
            let text = match tokio::time::timeout(silence, self.next_text()).await {
                Err(_) => {
                    break ClientError::Protocol(format!("no ping from the server in {silence:?}"));
                }
                Ok(Err(error)) => break error,
                Ok(Ok(None)) => break ClientError::Closed,
                Ok(Ok(Some(text))) => text,
            };
            if let Err(error) = self.on_text(&text, &events, &mut connected).await {
                break error;
            }
        };
        tracing::debug!(reason = %ended, "socket.io client connection ended");
        self.shared.finish();
        if let Some(connected) = connected {
            let _ = connected.send(Err(ended));
        }
    }

    /// Handles one Engine.IO packet. An error ends the connection.
    async fn on_text(
        &mut self,
        text: &str,
        events: &mpsc::UnboundedSender<ClientEvent>,
        connected: &mut Option<oneshot::Sender<Result<String, ClientError>>>,
    ) -> Result<(), ClientError> {
        let packet = EnginePacket::decode_text(text)
            .map_err(|e| ClientError::Protocol(format!("{e} in {text:?}")))?;
        let socketio = match packet {
            EnginePacket::Ping(data) => {
                return self.shared.send_engineio(EnginePacket::Pong(data)).await;
            }
            EnginePacket::Close => return Err(ClientError::Closed),
            EnginePacket::Message(socketio) => socketio,
            _ => return Ok(()),
        };
        let malformed = |e: DecodeError| ClientError::Protocol(format!("{e} in {socketio:?}"));
        let packet = RawPacket::decode(socketio).map_err(malformed)?;
        if packet.nsp != "/" {
            return Ok(());
        }
        // Events and acks are most of the traffic: their arguments are
        // checked and handed on as text, for the receiver to decode only
        // what it needs.
        match packet.kind {
            PacketType::Event => {
                let event = packet.event().map_err(malformed)?;
                let event = ClientEvent {
                    name: event.name.into_owned(),
                    args: RawArgs::from_event_tail(event.args_tail),
                };
                // The receiver is gone only when the client is being dropped.
                let _ = events.send(event);
                return Ok(());
            }
            PacketType::Ack => {
                let (id, args) = packet.ack().map_err(malformed)?;
                self.shared.resolve(id, RawArgs::from_array(args));
                return Ok(());
            }
            _ => {}
        }
        match (packet.kind, packet.parse().map_err(malformed)?.data) {
            (PacketType::Connect, data) => {
                let sid = data
                    .as_ref()
                    .and_then(|d| d.get("sid"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| ClientError::Protocol("CONNECT without a sid".into()))?;
                if let Some(connected) = connected.take() {
                    let _ = connected.send(Ok(sid.to_owned()));
                }
            }
            (PacketType::ConnectError, data) => {
                let message = match &data {
                    Some(Value::String(message)) => Some(message.as_str()),
                    Some(error) => error.get("message").and_then(Value::as_str),
                    None => None,
                };
                let refused = ClientError::Refused(message.unwrap_or("no reason given").to_owned());
                if let Some(connected) = connected.take() {
                    let _ = connected.send(Err(refused));
                }
                return Err(ClientError::Closed);
            }
            (PacketType::Disconnect, _) => return Err(ClientError::Closed),
            (kind, _) => tracing::debug!(
                ?kind,
                "ignoring a Socket.IO packet the client does not handle"
            ),
        }
        Ok(())
    }

    /// The next text message; `None` when the websocket closes. Binary
    /// messages are skipped: chatd sends none, and attachments are not
    /// supported by this client.
    async fn next_text(&mut self) -> Result<Option<String>, ClientError> {
        let shared = &self.shared;
        let mut owed = |frame: Frame<'static>| async move { shared.write(frame).await };
        loop {
            let frame = self
                .read
                .read_frame(&mut owed)
                .await
                .map_err(|e| ClientError::Protocol(format!("websocket: {e}")))?;
            let message = match frame.opcode {
                OpCode::Close => return Ok(None),
                OpCode::Ping | OpCode::Pong => continue,
                opcode => self
                    .messages
                    .push(opcode, frame.fin, &frame.payload)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?,
            };
            if let Some(Message::Text(bytes)) = message {
                return String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|_| ClientError::Protocol("a text frame is not UTF-8".into()));
            }
        }
    }
}
