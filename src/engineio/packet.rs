//! Engine.IO v4 packets: pure encoding and decoding, no I/O.
//!
//! A text packet is one type digit followed by its data; over websocket a
//! binary frame is a message packet carrying bytes. See
//! <https://github.com/socketio/engine.io-protocol> for the format.

use std::fmt::Write as _;

/// One decoded Engine.IO packet, borrowing from the frame it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `0`: the handshake; only servers send it, so decoding keeps its data raw.
    Open(&'a str),
    /// `1`: the peer closes the session.
    Close,
    /// `2`: heartbeat request (the client sends `2probe` while upgrading).
    Ping(&'a str),
    /// `3`: heartbeat answer.
    Pong(&'a str),
    /// `4`: a text message, the carrier of Socket.IO packets.
    Message(&'a str),
    /// A binary message (a websocket binary frame, or `b<base64>` on polling).
    Binary(&'a [u8]),
    /// `5`: the client switches the session to the probed transport.
    Upgrade,
    /// `6`: nothing; used to release a pending poll during upgrade.
    Noop,
}

/// Why bytes could not be read as an Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineDecodeError {
    /// The frame had no type digit at all.
    #[error("empty packet")]
    Empty,
    /// The first character is not a known packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A packet type that never carries data came with some.
    #[error("unexpected data after packet type {0}")]
    UnexpectedData(char),
}

impl<'a> EnginePacket<'a> {
    /// Decodes a text frame (websocket) or one record of a polling payload.
    pub fn decode_text(text: &'a str) -> Result<EnginePacket<'a>, EngineDecodeError> {
        let mut chars = text.chars();
        let kind = chars.next().ok_or(EngineDecodeError::Empty)?;
        let data = chars.as_str();
        let bare = |packet: EnginePacket<'a>| {
            if data.is_empty() {
                Ok(packet)
            } else {
                Err(EngineDecodeError::UnexpectedData(kind))
            }
        };
        match kind {
            '0' => Ok(EnginePacket::Open(data)),
            '1' => bare(EnginePacket::Close),
            '2' => Ok(EnginePacket::Ping(data)),
            '3' => Ok(EnginePacket::Pong(data)),
            '4' => Ok(EnginePacket::Message(data)),
            '5' => bare(EnginePacket::Upgrade),
            '6' => bare(EnginePacket::Noop),
            other => Err(EngineDecodeError::UnknownType(other)),
        }
    }

    /// Appends the text form of this packet to `out`. Binary packets are
    /// written as `b<base64>`, the polling transport's form.
    pub fn encode_text(&self, out: &mut String) {
        match self {
            EnginePacket::Open(data) => {
                out.push('0');
                out.push_str(data);
            }
            EnginePacket::Close => out.push('1'),
            EnginePacket::Ping(data) => {
                out.push('2');
                out.push_str(data);
            }
            EnginePacket::Pong(data) => {
                out.push('3');
                out.push_str(data);
            }
            EnginePacket::Message(data) => {
                out.push('4');
                out.push_str(data);
            }
            EnginePacket::Binary(bytes) => {
                use base64::Engine as _;
                out.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
            }
            EnginePacket::Upgrade => out.push('5'),
            EnginePacket::Noop => out.push('6'),
        }
    }
}

/// The fields of the open packet a server sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineHandshake<'a> {
    /// The Engine.IO session id.
    pub sid: &'a str,
    /// Transports the client may upgrade to from the current one.
    pub upgrades: &'a [&'a str],
    /// Milliseconds between the server's pings.
    pub ping_interval: u64,
    /// Milliseconds the server waits for a pong before closing.
    pub ping_timeout: u64,
    /// The largest packet (or polling payload) the server accepts, in bytes.
    pub max_payload: usize,
}

impl EngineHandshake<'_> {
    /// The full open packet, `0{"sid":...}`.
    pub fn encode(&self) -> String {
        let mut out = String::from("0{\"sid\":");
        out.push_str(&serde_json::Value::from(self.sid).to_string());
        out.push_str(",\"upgrades\":[");
        for (i, upgrade) in self.upgrades.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(*upgrade).to_string());
        }
        let _ = write!(
            out,
            "],\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
            self.ping_interval, self.ping_timeout, self.max_payload
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_text_type() {
        assert_eq!(EnginePacket::decode_text("1"), Ok(EnginePacket::Close));
        assert_eq!(
            EnginePacket::decode_text("2probe"),
            Ok(EnginePacket::Ping("probe"))
        );
        assert_eq!(EnginePacket::decode_text("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(
            EnginePacket::decode_text("42[\"a\"]"),
            Ok(EnginePacket::Message("2[\"a\"]"))
        );
        assert_eq!(EnginePacket::decode_text("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(EnginePacket::decode_text("6"), Ok(EnginePacket::Noop));
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(EnginePacket::decode_text(""), Err(EngineDecodeError::Empty));
        assert_eq!(
            EnginePacket::decode_text("9hello"),
            Err(EngineDecodeError::UnknownType('9'))
        );
        assert_eq!(
            EnginePacket::decode_text("é"),
            Err(EngineDecodeError::UnknownType('é'))
        );
        assert_eq!(
            EnginePacket::decode_text("1x"),
            Err(EngineDecodeError::UnexpectedData('1'))
        );
    }

    #[test]
    fn encodes_text_and_base64_binary() {
        let mut out = String::new();
        EnginePacket::Message("hello").encode_text(&mut out);
        EnginePacket::Binary(&[1, 2, 3]).encode_text(&mut out);
        assert_eq!(out, "4hellobAQID");
    }

    #[test]
    fn open_packet_has_the_reference_field_order() {
        let open = EngineHandshake {
            sid: "abc",
            upgrades: &["websocket"],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 65536,
        };
        assert_eq!(
            open.encode(),
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":65536}"#
        );
    }
}
