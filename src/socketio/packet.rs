//! Socket.IO v5 packets: pure encoding and decoding, no I/O.
//!
//! Text form: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]`,
//! carried inside Engine.IO message packets. Binary attachments follow a
//! BINARY_EVENT/BINARY_ACK as separate Engine.IO binary messages.

use serde_json::Value;
use std::io::Write as _;

/// The most attachments one packet may announce; more is treated as abuse.
pub const MAX_ATTACHMENTS: usize = 16;

/// Event names the reference server keeps for itself; a client emitting one
/// is breaking the protocol.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The seven Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Join a namespace (client) or confirm the join (server).
    Connect = 0,
    /// Leave a namespace.
    Disconnect = 1,
    /// An event, optionally expecting an acknowledgement.
    Event = 2,
    /// The answer to an event that asked for one.
    Ack = 3,
    /// The server refused a CONNECT.
    ConnectError = 4,
    /// An event whose arguments hold binary placeholders.
    BinaryEvent = 5,
    /// An acknowledgement whose arguments hold binary placeholders.
    BinaryAck = 6,
}

impl PacketType {
    fn from_digit(c: u8) -> Option<Self> {
        Some(match c {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

/// One decoded Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet<'a> {
    /// What the packet is.
    pub kind: PacketType,
    /// The namespace, `/` when the packet names none.
    pub nsp: &'a str,
    /// The acknowledgement id, when the sender expects (or gives) an answer.
    pub id: Option<u64>,
    /// How many binary attachments follow this packet.
    pub attachments: usize,
    /// The JSON payload, when there is one.
    pub data: Option<Value>,
}

/// Why text could not be read as a Socket.IO packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Empty text or an unknown type digit.
    #[error("unknown packet type")]
    UnknownType,
    /// The attachment count of a binary packet is missing or too large.
    #[error("bad attachment count")]
    BadAttachments,
    /// The acknowledgement id does not fit in 64 bits.
    #[error("bad ack id")]
    BadAckId,
    /// The payload is not valid JSON.
    #[error("invalid JSON payload")]
    InvalidJson,
    /// The payload's shape does not fit the packet type.
    #[error("invalid payload for {0:?}")]
    InvalidPayload(PacketType),
}

impl<'a> Packet<'a> {
    /// Decodes the text of one Socket.IO packet.
    pub fn decode(text: &'a str) -> Result<Packet<'a>, DecodeError> {
        let bytes = text.as_bytes();
        let kind = bytes
            .first()
            .copied()
            .and_then(PacketType::from_digit)
            .ok_or(DecodeError::UnknownType)?;
        let mut rest = &text[1..];

        let mut attachments = 0;
        if kind.is_binary() {
            let dash = rest.find('-').ok_or(DecodeError::BadAttachments)?;
            attachments = rest[..dash]
                .parse::<usize>()
                .ok()
                .filter(|n| {
                    *n <= MAX_ATTACHMENTS && rest[..dash].bytes().all(|b| b.is_ascii_digit())
                })
                .ok_or(DecodeError::BadAttachments)?;
            rest = &rest[dash + 1..];
        }

        let mut nsp = "/";
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            nsp = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
        }

        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = if digits > 0 {
            let id = rest[..digits]
                .parse::<u64>()
                .map_err(|_| DecodeError::BadAckId)?;
            rest = &rest[digits..];
            Some(id)
        } else {
            None
        };

        let data = if rest.is_empty() {
            None
        } else {
            Some(serde_json::from_str::<Value>(rest).map_err(|_| DecodeError::InvalidJson)?)
        };

        let packet = Packet {
            kind,
            nsp,
            id,
            attachments,
            data,
        };
        if packet.payload_fits() {
            Ok(packet)
        } else {
            Err(DecodeError::InvalidPayload(kind))
        }
    }

    /// Mirrors the reference parser's checks of payload shape per type.
    fn payload_fits(&self) -> bool {
        match (self.kind, &self.data) {
            (PacketType::Connect, None | Some(Value::Object(_))) => true,
            (PacketType::Disconnect, None) => true,
            (PacketType::ConnectError, Some(Value::Object(_) | Value::String(_))) => true,
            (PacketType::Event | PacketType::BinaryEvent, Some(Value::Array(args))) => {
                match args.first() {
                    Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
                    Some(Value::Number(_)) => true,
                    _ => false,
                }
            }
            (PacketType::Ack | PacketType::BinaryAck, Some(Value::Array(_))) => self.id.is_some(),
            _ => false,
        }
    }
}

/// Writes a packet header (type, attachments, namespace, ack id) into `out`;
/// the JSON payload, if any, goes right after it.
pub fn write_header(
    out: &mut Vec<u8>,
    kind: PacketType,
    nsp: &str,
    attachments: usize,
    id: Option<u64>,
) {
    out.push(b'0' + kind as u8);
    if kind.is_binary() {
        let _ = write!(out, "{attachments}-");
    }
    if nsp != "/" {
        out.extend_from_slice(nsp.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        let _ = write!(out, "{id}");
    }
}

/// Encodes a whole packet with an optional JSON payload.
pub fn encode(
    kind: PacketType,
    nsp: &str,
    attachments: usize,
    id: Option<u64>,
    data: Option<&Value>,
) -> String {
    let mut out = Vec::new();
    write_header(&mut out, kind, nsp, attachments, id);
    if let Some(data) = data {
        let _ = serde_json::to_writer(&mut out, data);
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_connect_with_and_without_auth() {
        let p = Packet::decode("0").unwrap();
        assert_eq!((p.kind, p.nsp, p.data), (PacketType::Connect, "/", None));
        let p = Packet::decode("0/admin,{\"token\":\"x\"}").unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.data, Some(json!({"token": "x"})));
        let p = Packet::decode("0/admin,").unwrap();
        assert_eq!((p.nsp, p.data), ("/admin", None));
    }

    #[test]
    fn decodes_events_with_ack_ids() {
        let p = Packet::decode("2/chat,12[\"hi\",1]").unwrap();
        assert_eq!(p.kind, PacketType::Event);
        assert_eq!(p.nsp, "/chat");
        assert_eq!(p.id, Some(12));
        assert_eq!(p.data, Some(json!(["hi", 1])));
        let p = Packet::decode("37[]").unwrap();
        assert_eq!((p.kind, p.id), (PacketType::Ack, Some(7)));
    }

    #[test]
    fn decodes_binary_attachment_counts() {
        let p = Packet::decode("51-[\"up\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, p.attachments), (PacketType::BinaryEvent, 1));
        assert_eq!(
            Packet::decode("5x-[\"a\"]"),
            Err(DecodeError::BadAttachments)
        );
        assert_eq!(
            Packet::decode("5999-[\"a\"]"),
            Err(DecodeError::BadAttachments)
        );
        assert_eq!(Packet::decode("5[\"a\"]"), Err(DecodeError::BadAttachments));
    }

    #[test]
    fn refuses_malformed_packets() {
        assert_eq!(Packet::decode(""), Err(DecodeError::UnknownType));
        assert_eq!(Packet::decode("9"), Err(DecodeError::UnknownType));
        assert_eq!(Packet::decode("2[\"a\""), Err(DecodeError::InvalidJson));
        assert_eq!(
            Packet::decode("2{\"a\":1}"),
            Err(DecodeError::InvalidPayload(PacketType::Event))
        );
        assert_eq!(
            Packet::decode("2[]"),
            Err(DecodeError::InvalidPayload(PacketType::Event))
        );
        assert_eq!(
            Packet::decode("2[\"disconnect\"]"),
            Err(DecodeError::InvalidPayload(PacketType::Event))
        );
        assert_eq!(
            Packet::decode("0[1]"),
            Err(DecodeError::InvalidPayload(PacketType::Connect))
        );
        assert_eq!(
            Packet::decode("3[1]"),
            Err(DecodeError::InvalidPayload(PacketType::Ack))
        );
        assert_eq!(
            Packet::decode("299999999999999999999999[\"a\"]"),
            Err(DecodeError::BadAckId)
        );
        assert_eq!(
            Packet::decode("1{}"),
            Err(DecodeError::InvalidPayload(PacketType::Disconnect))
        );
    }

    #[test]
    fn numbers_survive_a_decode_encode_round_trip() {
        // Found by the socketio_packet fuzzer: a long integer parsed with
        // inexact float parsing came back as another number.
        let text = r#"0{"":500129375901285628210936020}"#;
        let packet = Packet::decode(text).unwrap();
        let again = encode(
            packet.kind,
            packet.nsp,
            packet.attachments,
            packet.id,
            packet.data.as_ref(),
        );
        assert_eq!(Packet::decode(&again).unwrap(), packet);
    }

    #[test]
    fn encodes_like_the_reference_encoder() {
        assert_eq!(
            encode(
                PacketType::Connect,
                "/",
                0,
                None,
                Some(&json!({"sid": "a"}))
            ),
            "0{\"sid\":\"a\"}"
        );
        assert_eq!(
            encode(PacketType::Event, "/x", 0, Some(3), Some(&json!(["e"]))),
            "2/x,3[\"e\"]"
        );
        assert_eq!(
            encode(PacketType::BinaryAck, "/", 2, Some(9), Some(&json!([]))),
            "62-9[]"
        );
        assert_eq!(encode(PacketType::Disconnect, "/x", 0, None, None), "1/x,");
    }
}
