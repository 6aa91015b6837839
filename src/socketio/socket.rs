//! A client's membership of one namespace: the handle handlers emit through.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::packet::{PacketType, write_header};
use crate::engineio::{Outbound, Outbox};

/// One connected Socket.IO socket. Cloning is cheap; every clone reaches the
/// same client through its session's bounded outbox.
#[derive(Debug, Clone)]
pub struct Socket {
    id: Arc<str>,
    nsp: Arc<str>,
    outbox: Outbox,
}

impl Socket {
    /// A socket with a fresh id in namespace `nsp`.
    pub fn new(nsp: &str, outbox: Outbox) -> Socket {
        Socket {
            id: crate::engineio::new_id().into(),
            nsp: nsp.into(),
            outbox,
        }
    }

    /// The socket id the client sees as `socket.id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace the socket joined.
    pub fn nsp(&self) -> &str {
        &self.nsp
    }

    /// Emits `event` with one JSON argument. Returns false when the client
    /// is gone or was disconnected for not reading.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> bool {
        self.send_encoded(event_packet(&self.nsp, event, data))
    }

    /// Emits an event whose arguments (event name first) and binary
    /// attachments are given as they came in: an echo keeps placeholders.
    pub fn emit_raw(&self, args: &Value, attachments: &[Bytes]) -> bool {
        self.send_with_attachments(PacketType::Event, None, args, attachments)
    }

    /// Answers the client's acknowledgement `id` with one JSON argument.
    pub fn ack<T: Serialize + ?Sized>(&self, id: u64, data: &T) -> bool {
        self.ack_with(id, |packet| push_json(packet, data))
    }

    /// [`Socket::ack`] with the argument written as JSON text by
    /// `write_argument`, for a caller that has its JSON at hand.
    pub fn ack_with(&self, id: u64, write_argument: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut packet = engineio_message();
        write_header(&mut packet, PacketType::Ack, &self.nsp, 0, Some(id));
        packet.push(b'[');
        write_argument(&mut packet);
        packet.push(b']');
        self.send_encoded(packet.into())
    }

    /// Answers acknowledgement `id` with arguments and attachments as given.
    pub fn ack_raw(&self, id: u64, args: &Value, attachments: &[Bytes]) -> bool {
        self.send_with_attachments(PacketType::Ack, Some(id), args, attachments)
    }

    /// Queues an Engine.IO packet that is already encoded, such as a
    /// fan-out frame built once by [`event_packet`] for many sockets.
    pub fn send_encoded(&self, packet: Bytes) -> bool {
        self.outbox.send_text(packet)
    }

    /// Closes the client's connection after what is queued, as the reference
    /// server does at shutdown: a stock client sees its transport close and
    /// reconnects on its own (one that sends `since` catches up). A
    /// Socket.IO DISCONNECT would instead stop it from ever reconnecting.
    pub fn close(&self) {
        self.outbox.close();
    }

    /// True once the client is gone.
    pub fn is_closed(&self) -> bool {
        self.outbox.is_closed()
    }

    fn send_with_attachments(
        &self,
        kind: PacketType,
        id: Option<u64>,
        args: &Value,
        attachments: &[Bytes],
    ) -> bool {
        let kind = match (kind, attachments.is_empty()) {
            (PacketType::Event, false) => PacketType::BinaryEvent,
            (PacketType::Ack, false) => PacketType::BinaryAck,
            (kind, _) => kind,
        };
        let mut packet = engineio_message();
        write_header(&mut packet, kind, &self.nsp, attachments.len(), id);
        push_json(&mut packet, args);
        let mut sent = self.send_encoded(packet.into());
        for attachment in attachments {
            sent &= self.outbox.send(Outbound::Binary(attachment.clone()));
        }
        sent
    }
}

/// Encodes a whole Engine.IO message carrying event `event` with one JSON
/// argument, ready for [`Socket::send_encoded`] on any socket of `nsp`.
pub fn event_packet<T: Serialize + ?Sized>(nsp: &str, event: &str, data: &T) -> Bytes {
    event_packet_with(nsp, event, |packet| push_json(packet, data))
}

/// [`event_packet`] with the argument written as JSON text by
/// `write_argument`, for a caller that has its JSON at hand.
pub fn event_packet_with(
    nsp: &str,
    event: &str,
    write_argument: impl FnOnce(&mut Vec<u8>),
) -> Bytes {
    let mut packet = engineio_message();
    write_header(&mut packet, PacketType::Event, nsp, 0, None);
    packet.push(b'[');
    push_json(&mut packet, event);
    packet.push(b',');
    write_argument(&mut packet);
    packet.push(b']');
    packet.into()
}

fn push_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // serde_json only fails on maps with non-string keys or on failing
    // Serialize impls, neither of which the payload types here have.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A buffer for one outgoing packet, its Engine.IO `message` type (`4`)
/// written: room for a typical event or ack up front, so encoding one does
/// not grow the buffer step by step.
fn engineio_message() -> Vec<u8> {
    let mut packet = Vec::with_capacity(256);
    packet.push(b'4');
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn socket(nsp: &str) -> (Socket, crate::engineio::outbox::OutboxReceiver) {
        let (outbox, receiver) = Outbox::new(8);
        (Socket::new(nsp, outbox), receiver)
    }

    fn next_text(receiver: &mut crate::engineio::outbox::OutboxReceiver) -> String {
        match receiver.try_recv() {
            Some(Outbound::Text(bytes)) => String::from_utf8(bytes.to_vec()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    #[test]
    fn emits_and_acks_in_the_wire_format() {
        let (socket, mut out) = socket("/");
        socket.emit("online", &["Dummy-1"]);
        socket.ack(7, &json!({"ok": true}));
        assert_eq!(next_text(&mut out), r#"42["online",["Dummy-1"]]"#);
        assert_eq!(next_text(&mut out), r#"437[{"ok":true}]"#);
    }

    #[test]
    fn echoes_binary_attachments_after_the_packet() {
        let (socket, mut out) = socket("/custom");
        let args = json!(["message-back", {"_placeholder": true, "num": 0}]);
        socket.emit_raw(&args, &[Bytes::from_static(&[1, 2])]);
        assert_eq!(
            next_text(&mut out),
            r#"451-/custom,["message-back",{"_placeholder":true,"num":0}]"#
        );
        assert!(matches!(out.try_recv(), Some(Outbound::Binary(b)) if b[..] == [1, 2]));
    }
}
