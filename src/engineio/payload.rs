//! The HTTP long-polling payload: several Engine.IO packets in one body.
//!
//! Packets are joined by the record separator `\x1e`; a binary message is
//! written as `b` followed by its standard (padded) base64. Pure: bytes in,
//! packets out, so it can be fuzzed.

use base64::Engine as _;

use super::packet::{EngineDecodeError, EnginePacket};

/// The separator between the packets of one payload.
pub const SEPARATOR: char = '\x1e';

/// One packet of a decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A text packet (any type), borrowing from the body.
    Packet(EnginePacket<'a>),
    /// A binary message, decoded from its base64 form.
    Binary(Vec<u8>),
}

/// Why a polling body is not a valid payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body is not UTF-8.
    #[error("payload is not UTF-8")]
    NotUtf8,
    /// A `b` record is not valid base64.
    #[error("invalid base64 in binary packet {0}")]
    Base64(usize),
    /// A text record is not an Engine.IO packet.
    #[error("packet {index}: {error}")]
    EnginePacket {
        /// The record's position in the payload.
        index: usize,
        /// What was wrong with it.
        error: EngineDecodeError,
    },
}

/// Decodes a whole POST body; any malformed record refuses the payload, as
/// the session must close on it anyway.
pub fn decode(body: &[u8]) -> Result<Vec<Record<'_>>, PayloadError> {
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
    text.split(SEPARATOR)
        .enumerate()
        .map(|(index, record)| match record.strip_prefix('b') {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Record::Binary)
                .map_err(|_| PayloadError::Base64(index)),
            None => EnginePacket::decode_text(record)
                .map(Record::Packet)
                .map_err(|error| PayloadError::EnginePacket { index, error }),
        })
        .collect()
}

/// Builds the body of a GET answer, one packet at a time.
#[derive(Debug, Default)]
pub struct Encoder {
    body: String,
}

impl Encoder {
    /// Appends an already encoded text packet (type digit included).
    pub fn text(&mut self, packet: &str) {
        self.separate();
        self.body.push_str(packet);
    }

    /// Appends a binary message as `b<base64>`.
    pub fn binary(&mut self, data: &[u8]) {
        self.separate();
        EnginePacket::Binary(data).encode_text(&mut self.body);
    }

    /// True while nothing has been appended.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The finished body.
    pub fn finish(self) -> String {
        self.body
    }

    fn separate(&mut self) {
        if !self.body.is_empty() {
            self.body.push(SEPARATOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_text_and_binary_records() {
        assert_eq!(
            decode(b"4hello\x1ebAQIDBA==\x1e3"),
            Ok(vec![
                Record::Packet(EnginePacket::Message("hello")),
                Record::Binary(vec![1, 2, 3, 4]),
                Record::Packet(EnginePacket::Pong("")),
            ])
        );
        assert_eq!(decode(b"1"), Ok(vec![Record::Packet(EnginePacket::Close)]));
    }

    #[test]
    fn refuses_malformed_payloads() {
        assert_eq!(
            decode(b"abc"),
            Err(PayloadError::EnginePacket {
                index: 0,
                error: EngineDecodeError::UnknownType('a')
            })
        );
        assert_eq!(decode(b"4a\x1ebnot base64!"), Err(PayloadError::Base64(1)));
        assert_eq!(decode(b"4a\xff"), Err(PayloadError::NotUtf8));
        assert_eq!(
            decode(b"4a\x1e"),
            Err(PayloadError::EnginePacket {
                index: 1,
                error: EngineDecodeError::Empty
            })
        );
        assert_eq!(
            decode(b""),
            Err(PayloadError::EnginePacket {
                index: 0,
                error: EngineDecodeError::Empty
            })
        );
    }

    #[test]
    fn encodes_joined_by_the_separator() {
        let mut encoder = Encoder::default();
        assert!(encoder.is_empty());
        encoder.text("4test1");
        encoder.binary(&[1, 2, 3, 4]);
        encoder.text("2");
        assert_eq!(encoder.finish(), "4test1\x1ebAQIDBA==\x1e2");
    }

    #[test]
    fn what_is_encoded_decodes_back() {
        let mut encoder = Encoder::default();
        encoder.text("4é\u{1f600}");
        encoder.binary(&[]);
        encoder.binary(&[0xff; 7]);
        let body = encoder.finish();
        assert_eq!(
            decode(body.as_bytes()),
            Ok(vec![
                Record::Packet(EnginePacket::Message("é\u{1f600}")),
                Record::Binary(vec![]),
                Record::Binary(vec![0xff; 7]),
            ])
        );
    }
}
