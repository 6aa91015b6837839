//! One Engine.IO session seen from Socket.IO: its namespaces, the binary
//! attachments still owed for an event, and the dispatch to the handler.

use std::sync::Arc;
use tokio::sync::oneshot;

use bytes::Bytes;
use serde_json::{Value, json};

use super::handler::{Event, Handler};
use super::packet::{Packet, PacketType, encode};
use super::socket::Socket;
use crate::engineio::{CloseReason, Outbox, ProtocolError, RequestInfo, SessionHandler};

/// An event or ack whose binary attachments are still arriving.
struct PendingBinary {
    nsp: String,
    kind: PacketType,
    id: Option<u64>,
    args: Value,
    expected: usize,
    attachments: Vec<Bytes>,
    /// Bytes of attachments still allowed for this event.
    budget: usize,
}

/// The Socket.IO state of one client connection.
pub struct Connection<H: Handler> {
    handler: Arc<H>,
    outbox: Outbox,
    sockets: Vec<(Socket, H::State)>,
    /// Boxed: rarely there, and inline it would make every connection's
    /// session as large as a JSON value and its attachments.
    pending: Option<Box<PendingBinary>>,
    joined: Option<oneshot::Sender<()>>,
    max_attachment_bytes: usize,
}

impl<H: Handler> Connection<H> {
    /// A connection that has joined no namespace yet. `joined` is signalled on the
    /// first successful CONNECT (the handshake deadline watches it); the
    /// binary attachments of one event may add up to `max_attachment_bytes`.
    pub fn new(
        handler: Arc<H>,
        outbox: Outbox,
        joined: oneshot::Sender<()>,
        max_attachment_bytes: usize,
    ) -> Self {
        Connection {
            handler,
            outbox,
            sockets: Vec::new(),
            pending: None,
            joined: Some(joined),
            max_attachment_bytes,
        }
    }

    fn send(&self, kind: PacketType, nsp: &str, data: Option<&Value>) {
        let mut packet = String::from("4");
        packet.push_str(&encode(kind, nsp, 0, None, data));
        self.outbox.send_text(Bytes::from(packet));
    }

    async fn on_connect(&mut self, request: &RequestInfo, nsp: &str, auth: Option<Value>) {
        if self.sockets.iter().any(|(socket, _)| socket.nsp() == nsp) {
            return;
        }
        if !self.handler.has_namespace(nsp) {
            let error = json!({"message": "Invalid namespace"});
            self.send(PacketType::ConnectError, nsp, Some(&error));
            return;
        }
        // The place is claimed before the handler looks at the CONNECT, so a
        // client being authenticated is not taken back meanwhile.
        let place = &request.place;
        if !place.join() {
            let error = json!({"message": "too many connections from this address"});
            self.send(PacketType::ConnectError, nsp, Some(&error));
            return;
        }
        let socket = Socket::new(nsp, self.outbox.clone());
        match self.handler.connect(&socket, auth, request).await {
            Ok(mut state) => {
                if let Some(joined) = self.joined.take() {
                    let _ = joined.send(());
                }
                self.send(PacketType::Connect, nsp, Some(&json!({"sid": socket.id()})));
                self.handler.connected(&mut state, &socket).await;
                // Clients nearly always join one namespace: room for exactly
                // that, where a first push would make room for four.
                self.sockets.reserve_exact(1);
                self.sockets.push((socket, state));
            }
            Err(error) => {
                if self.sockets.is_empty() {
                    request.place.clone().unjoin();
                }
                self.send(PacketType::ConnectError, nsp, Some(&error));
            }
        }
    }

    async fn on_disconnect(&mut self, nsp: &str) -> Result<(), ProtocolError> {
        let index = self
            .sockets
            .iter()
            .position(|(s, _)| s.nsp() == nsp)
            .ok_or_else(|| not_joined(nsp))?;
        let (socket, state) = self.sockets.swap_remove(index);
        self.handler
            .disconnect(state, &socket, "client namespace disconnect")
            .await;
        Ok(())
    }

    async fn dispatch(
        &mut self,
        nsp: &str,
        kind: PacketType,
        event: Event,
    ) -> Result<(), ProtocolError> {
        let (socket, state) = self
            .sockets
            .iter_mut()
            .find(|(s, _)| s.nsp() == nsp)
            .ok_or_else(|| not_joined(nsp))?;
        // Acks from clients answer server emits with a callback, which
        // nothing on this server makes; they are dropped.
        if matches!(kind, PacketType::Event | PacketType::BinaryEvent) {
            self.handler.event(state, socket, event).await;
        }
        Ok(())
    }
}

impl<H: Handler> SessionHandler for Connection<H> {
    async fn on_text(&mut self, request: &RequestInfo, text: &str) -> Result<(), ProtocolError> {
        if self.pending.is_some() {
            return Err(ProtocolError(
                "text packet while attachments were due".into(),
            ));
        }
        let packet = Packet::decode(text).map_err(|e| ProtocolError(e.to_string()))?;
        match packet.kind {
            PacketType::Connect => self.on_connect(request, packet.nsp, packet.data).await,
            PacketType::Disconnect => self.on_disconnect(packet.nsp).await?,
            PacketType::ConnectError => {
                return Err(ProtocolError("CONNECT_ERROR from a client".into()));
            }
            kind => {
                let args = packet.data.unwrap_or(Value::Null);
                if packet.attachments > 0 {
                    // Nothing is held for a namespace the client has not
                    // joined: attachments wait only on a joined socket.
                    if !self.sockets.iter().any(|(s, _)| s.nsp() == packet.nsp) {
                        return Err(not_joined(packet.nsp));
                    }
                    self.pending = Some(Box::new(PendingBinary {
                        nsp: packet.nsp.to_owned(),
                        kind,
                        id: packet.id,
                        args,
                        expected: packet.attachments,
                        attachments: Vec::with_capacity(packet.attachments),
                        budget: self.max_attachment_bytes,
                    }));
                } else {
                    let event = Event {
                        args,
                        attachments: Vec::new(),
                        ack: packet.id,
                    };
                    let nsp = packet.nsp.to_owned();
                    self.dispatch(&nsp, kind, event).await?;
                }
            }
        }
        Ok(())
    }

    async fn on_binary(&mut self, data: Bytes) -> Result<(), ProtocolError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(ProtocolError("binary message nobody announced".into()));
        };
        pending.budget = pending.budget.checked_sub(data.len()).ok_or_else(|| {
            ProtocolError(format!(
                "binary attachments larger than {} bytes in all",
                self.max_attachment_bytes
            ))
        })?;
        pending.attachments.push(data);
        if pending.attachments.len() == pending.expected
            && let Some(done) = self.pending.take()
        {
            let event = Event {
                args: done.args,
                attachments: done.attachments,
                ack: done.id,
            };
            self.dispatch(&done.nsp, done.kind, event).await?;
        }
        Ok(())
    }

    async fn on_close(mut self, reason: CloseReason) {
        for (socket, state) in self.sockets.drain(..) {
            self.handler
                .disconnect(state, &socket, reason.as_str())
                .await;
        }
    }
}

/// A packet for a namespace the client has not joined: the reference server
/// closes the connection.
fn not_joined(nsp: &str) -> ProtocolError {
    ProtocolError(format!("packet for namespace {nsp} before joining it"))
}
