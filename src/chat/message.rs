//! The message object clients receive, field for field as documented.

use serde::Serialize;

use crate::store::StoredMessage;

/// A stored message as it goes on the wire: `roomId, id, from, text, to,
/// time, __v` in that order, then the `ts` cursor (left out of exports).
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    /// The DM room, `dm:<first>_<second>`.
    #[serde(rename = "roomId")]
    pub room_id: &'a str,
    /// Socket id of the connection that sent it.
    pub id: &'a str,
    /// The sender.
    pub from: &'a str,
    /// The text.
    pub text: &'a str,
    /// The recipient.
    pub to: &'a str,
    /// Local wall-clock time of acceptance, as
    /// [`format_time`](crate::store::format_time) writes it.
    pub time: &'a str,
    /// Document version of the seed's schema; always 0.
    #[serde(rename = "__v")]
    pub version: u8,
    /// Microseconds since the epoch: unique, increasing within the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
}

impl<'a> MessageView<'a> {
    /// The wire form of a stored message, `ts` included.
    pub fn of(message: &'a StoredMessage) -> Self {
        MessageView {
            room_id: &message.room,
            id: &message.id,
            from: &message.from,
            text: &message.text,
            to: &message.to,
            time: &message.time,
            version: 0,
            ts: Some(message.ts),
        }
    }

    /// The export form of a stored message: the documented fields, no `ts`.
    pub fn export(message: &'a StoredMessage) -> Self {
        MessageView {
            ts: None,
            ..MessageView::of(message)
        }
    }

    /// Appends the JSON object, byte for byte what `serde_json` writes for
    /// this view. Every message is written once for its ack and fan-out and
    /// once per export, and `serde_json` looks at each byte of its strings
    /// on its own; this copies a string that needs no escape whole.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let strings: [(&[u8], &str); 6] = [
            (b"{\"roomId\":", self.room_id),
            (b",\"id\":", self.id),
            (b",\"from\":", self.from),
            (b",\"text\":", self.text),
            (b",\"to\":", self.to),
            (b",\"time\":", self.time),
        ];
        for (key, value) in strings {
            out.extend_from_slice(key);
            push_json_str(out, value);
        }
        out.extend_from_slice(b",\"__v\":");
        push_decimal(out, u64::from(self.version));
        if let Some(ts) = self.ts {
            out.extend_from_slice(b",\"ts\":");
            push_decimal(out, ts);
        }
        out.push(b'}');
    }
}

/// Appends `s` as a JSON string escaped as `serde_json` escapes it: `"`,
/// `\\` and the control characters, with the short forms where JSON has
/// them.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    if !any_needs_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0..0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                _ => out.push(b),
            }
        }
    }
    out.push(b'"');
}

/// True if some byte of `bytes` needs an escape, eight bytes at a time:
/// `below(w, n)` is non-zero exactly when a byte of `w` is below `n` (a
/// borrow may mark a byte above a true hit, never a word without one), and
/// a byte equal to `"` or `\\` is one that XORs to zero.
fn any_needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH_BITS: u64 = ONES << 7;
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH_BITS;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        let word = u64::from_le_bytes(le);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        if below(word, 0x20) | below(quote, 1) | below(backslash, 1) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| needs_escape(b))
}

/// True for a byte a JSON string must escape.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_the_documented_order() {
        let view = MessageView {
            room_id: "dm:Dummy-1_Dummy-2",
            id: "sid",
            from: "Dummy-1",
            text: "hi",
            to: "Dummy-2",
            time: "28/12/2025, 2:45:46 am",
            version: 0,
            ts: Some(7),
        };
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"roomId":"dm:Dummy-1_Dummy-2","id":"sid","from":"Dummy-1","text":"hi","to":"Dummy-2","time":"28/12/2025, 2:45:46 am","__v":0,"ts":7}"#
        );
        let export = MessageView { ts: None, ..view };
        assert!(!serde_json::to_string(&export).unwrap().contains("ts"));
    }

    fn written(view: &MessageView) -> String {
        let mut out = Vec::new();
        view.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_serde_json_writes_whatever_the_text() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        let texts = [
            "",
            "hi",
            "a \"quoted\" \\ back\\slash",
            "line\nbreak\r\ttab\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "ünïcödé 💬 中文",
            "\u{1}x\"",
            every_ascii.as_str(),
        ];
        for text in texts {
            for ts in [None, Some(0), Some(7), Some(u64::MAX)] {
                let view = MessageView {
                    room_id: "dm:Dummy-1_Dummy-2",
                    id: text,
                    from: "Dummy-1",
                    text,
                    to: "Dummy-2",
                    time: "28/12/2025, 2:45:46 am",
                    version: 0,
                    ts,
                };
                assert_eq!(
                    written(&view),
                    serde_json::to_string(&view).unwrap(),
                    "{text:?}"
                );
            }
        }
    }
}
