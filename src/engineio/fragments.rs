//! Reassembly of fragmented websocket messages, with a size limit.
//!
//! fastwebsockets bounds single frames but not the sum of a message's
//! fragments; a client could otherwise grow our memory without end by sending
//! continuation frames. Pure: frames in, whole messages out.
//!
//! A message that came in one frame is lent straight from that frame; a
//! reassembled one is handed over with the buffer it was built in, so
//! nothing stays allocated here once it has been handled (a fragmented
//! 64 KB message used to leave 64 KB behind for the connection's life).

use std::borrow::Cow;

use fastwebsockets::OpCode;

/// A complete data message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message's bytes (not yet checked for UTF-8).
    Text(Cow<'a, [u8]>),
    /// A binary message.
    Binary(Cow<'a, [u8]>),
}

/// Why a frame sequence is not a valid websocket message stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    /// The message grew past the limit.
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// A continuation without a start, or a new message inside one.
    #[error("invalid fragment sequence")]
    Sequence,
}

/// Collects the fragments of one message at a time.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    kind: Option<OpCode>,
    buffer: Vec<u8>,
}

impl Reassembler {
    /// Messages larger than `max` bytes are refused.
    pub fn new(max: usize) -> Self {
        Reassembler {
            max,
            kind: None,
            buffer: Vec::new(),
        }
    }

    /// Feeds one data frame (text, binary or continuation). Returns the
    /// message once it is complete; control frames are not for this.
    pub fn push<'a>(
        &'a mut self,
        opcode: OpCode,
        fin: bool,
        payload: &'a [u8],
    ) -> Result<Option<Message<'a>>, FragmentError> {
        match (opcode, self.kind) {
            (OpCode::Text | OpCode::Binary, None) => {
                if payload.len() > self.max {
                    return Err(FragmentError::TooLarge(self.max));
                }
                if fin {
                    return Ok(Some(message(opcode, Cow::Borrowed(payload))));
                }
                self.kind = Some(opcode);
                self.buffer.extend_from_slice(payload);
                Ok(None)
            }
            (OpCode::Continuation, Some(kind)) => {
                if self.buffer.len() + payload.len() > self.max {
                    return Err(FragmentError::TooLarge(self.max));
                }
                self.buffer.extend_from_slice(payload);
                if !fin {
                    return Ok(None);
                }
                self.kind = None;
                Ok(Some(message(
                    kind,
                    Cow::Owned(std::mem::take(&mut self.buffer)),
                )))
            }
            _ => Err(FragmentError::Sequence),
        }
    }
}

fn message(opcode: OpCode, payload: Cow<'_, [u8]>) -> Message<'_> {
    if opcode == OpCode::Text {
        Message::Text(payload)
    } else {
        Message::Binary(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_whole_messages_through() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Text, true, b"hello"),
            Ok(Some(Message::Text(Cow::Borrowed(b"hello"))))
        );
    }

    #[test]
    fn joins_fragments() {
        let mut r = Reassembler::new(10);
        assert_eq!(r.push(OpCode::Binary, false, b"ab"), Ok(None));
        assert_eq!(r.push(OpCode::Continuation, false, b"cd"), Ok(None));
        assert_eq!(
            r.push(OpCode::Continuation, true, b"e"),
            Ok(Some(Message::Binary(Cow::Owned(b"abcde".to_vec()))))
        );
        assert_eq!(
            r.buffer.capacity(),
            0,
            "the reassembled message took its buffer along"
        );
        assert_eq!(
            r.push(OpCode::Text, true, b"x"),
            Ok(Some(Message::Text(Cow::Borrowed(b"x"))))
        );
    }

    #[test]
    fn bounds_the_sum_of_fragments() {
        let mut r = Reassembler::new(4);
        assert_eq!(r.push(OpCode::Text, false, b"abc"), Ok(None));
        assert_eq!(
            r.push(OpCode::Continuation, false, b"de"),
            Err(FragmentError::TooLarge(4))
        );
        assert_eq!(
            Reassembler::new(2).push(OpCode::Text, true, b"abc"),
            Err(FragmentError::TooLarge(2))
        );
    }

    #[test]
    fn refuses_bad_sequences() {
        let mut r = Reassembler::new(10);
        assert_eq!(
            r.push(OpCode::Continuation, true, b"a"),
            Err(FragmentError::Sequence)
        );
        assert_eq!(r.push(OpCode::Text, false, b"a"), Ok(None));
        assert_eq!(
            r.push(OpCode::Text, true, b"b"),
            Err(FragmentError::Sequence)
        );
    }
}
