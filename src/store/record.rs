//! The on-disk encoding of one message, shared by the `staged` table and
//! the chunks of `chunks` (see `chunk.rs`).
//!
//! Only what the room does not already say is written: the sender as one
//! bit (which of the room's two users), `ts` as a delta from the previous
//! message of the chunk, `time` as the accepting clock's offset from `ts`
//! (seconds, usually 0) and its UTC offset (only when it changes), a
//! 20-character base64url socket id as its 15 bytes. A message of a
//! 32-byte text takes about 52 bytes.
//!
//! ```text
//! flags u8      bit 0: sent by the room's second user
//!               bit 1: sid is 15 raw bytes (else a string)
//!               bit 2: a cid follows
//!               bit 3: `time` is a literal string (an upgraded message whose
//!                      string no offset reproduces)
//!               bit 4: a time delta follows (else 0)
//!               bit 5: a new UTC offset follows (else the previous one)
//!               bit 6: explicit from/to (names that are not the room's pair)
//! varint        ts - previous ts
//! [varint]      seconds from the clock reading to ts           (bit 4)
//! [zigzag]      UTC offset, seconds                             (bit 5)
//! [string]      literal time                                    (bit 3)
//! 15 bytes | string   sid                                       (bit 1)
//! [string string]     from, to                                  (bit 6)
//! [string]      cid                                             (bit 2)
//! string        text
//! ```
//!
//! A string is a varint length and UTF-8 bytes. Decoding validates every
//! length and every string, so a damaged record is an error, never a panic,
//! and never allocates more than the record's own size.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const SECOND_USER: u8 = 1 << 0;
const RAW_SID: u8 = 1 << 1;
const HAS_CID: u8 = 1 << 2;
const LITERAL_TIME: u8 = 1 << 3;
const TIME_DELTA: u8 = 1 << 4;
const NEW_OFFSET: u8 = 1 << 5;
const NAMES: u8 = 1 << 6;
const KNOWN_FLAGS: u8 = 0x7f;

/// Bytes of a socket id kept raw: 20 base64url characters.
const RAW_SID_BYTES: usize = 15;

/// Which of the room's two users sent a message: 0 the first (in byte
/// order), 1 the second.
pub(crate) type Side = usize;

/// A message's `time`: how to recompute the string, or the string itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp<'a> {
    /// `format_time(ts - delta_s seconds, offset_s)`.
    Clock {
        /// Whole seconds from the accepting clock's reading up to `ts`.
        delta_s: u64,
        /// The accepting node's UTC offset.
        offset_s: i32,
    },
    /// A string kept as it was (see `upgrade.rs`).
    Literal(&'a str),
}

/// A socket id: 15 raw bytes when it is a 20-character base64url id (what
/// chatd generates), else the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sid<'a> {
    /// The decoded bytes of a 20-character base64url id.
    Raw([u8; RAW_SID_BYTES]),
    /// Any other id.
    Text(&'a str),
}

impl<'a> Sid<'a> {
    /// The compact form of `sid` when it has one.
    pub(crate) fn of(sid: &'a str) -> Sid<'a> {
        if sid.len() == 20 {
            let mut raw = [0u8; RAW_SID_BYTES];
            // 20 characters are 120 bits, exactly 15 bytes: a decoded id
            // always encodes back to the same string.
            if URL_SAFE_NO_PAD.decode_slice(sid, &mut raw) == Ok(RAW_SID_BYTES) {
                return Sid::Raw(raw);
            }
        }
        Sid::Text(sid)
    }

    /// The id as clients see it.
    pub(crate) fn text(self) -> String {
        match self {
            Sid::Raw(raw) => URL_SAFE_NO_PAD.encode(raw),
            Sid::Text(text) => text.to_owned(),
        }
    }
}

/// One message record, borrowed from the bytes it was decoded from (or
/// from the change being applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordRef<'a> {
    /// The message's ts.
    pub ts: u64,
    /// Who of the room's pair sent it (ignored with `names`).
    pub side: Side,
    /// Its `time`.
    pub stamp: Stamp<'a>,
    /// Socket id of the sending connection.
    pub sid: Sid<'a>,
    /// Sender and recipient when they are not the room's pair.
    pub names: Option<(&'a str, &'a str)>,
    /// The client's id for exactly-once send.
    pub cid: Option<&'a str>,
    /// The text.
    pub text: &'a str,
}

/// What a record's encoding depends on besides the record: the previous
/// record's ts and UTC offset in the same chunk (ts 0 / offset 0 before the
/// first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Context {
    /// ts of the previous record.
    pub ts: u64,
    /// UTC offset of the previous record that had one.
    pub offset_s: i32,
}

impl Context {
    /// The context after `record`.
    pub(crate) fn after(self, record: &RecordRef<'_>) -> Context {
        Context {
            ts: record.ts,
            offset_s: match record.stamp {
                Stamp::Clock { offset_s, .. } => offset_s,
                Stamp::Literal(_) => self.offset_s,
            },
        }
    }
}

/// Appends `record`, encoded after `prev`, to `out`. The record's ts must
/// not be below `prev.ts`.
pub(crate) fn encode(out: &mut Vec<u8>, record: &RecordRef<'_>, prev: Context) {
    let mut flags = 0;
    if record.side == 1 {
        flags |= SECOND_USER;
    }
    if matches!(record.sid, Sid::Raw(_)) {
        flags |= RAW_SID;
    }
    if record.cid.is_some() {
        flags |= HAS_CID;
    }
    if record.names.is_some() {
        flags |= NAMES;
    }
    match record.stamp {
        Stamp::Literal(_) => flags |= LITERAL_TIME,
        Stamp::Clock { delta_s, offset_s } => {
            if delta_s != 0 {
                flags |= TIME_DELTA;
            }
            if offset_s != prev.offset_s {
                flags |= NEW_OFFSET;
            }
        }
    }
    out.push(flags);
    put_varint(out, record.ts - prev.ts);
    match record.stamp {
        Stamp::Literal(time) => put_str(out, time),
        Stamp::Clock { delta_s, offset_s } => {
            if delta_s != 0 {
                put_varint(out, delta_s);
            }
            if offset_s != prev.offset_s {
                put_varint(out, zigzag(offset_s));
            }
        }
    }
    match record.sid {
        Sid::Raw(raw) => out.extend_from_slice(&raw),
        Sid::Text(sid) => put_str(out, sid),
    }
    if let Some((from, to)) = record.names {
        put_str(out, from);
        put_str(out, to);
    }
    if let Some(cid) = record.cid {
        put_str(out, cid);
    }
    put_str(out, record.text);
}

/// Decodes one record from the front of `input` (advancing it), encoded
/// after `prev`. The error says what is wrong, for the caller to place.
pub(crate) fn decode<'a>(input: &mut &'a [u8], prev: Context) -> Result<RecordRef<'a>, String> {
    let flags = take_u8(input)?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("unknown record flags {flags:#04x}"));
    }
    let ts = prev
        .ts
        .checked_add(take_varint(input)?)
        .ok_or("ts overflows")?;
    let stamp = if flags & LITERAL_TIME != 0 {
        if flags & (TIME_DELTA | NEW_OFFSET) != 0 {
            return Err("a literal time with clock fields".into());
        }
        Stamp::Literal(take_str(input)?)
    } else {
        let delta_s = match flags & TIME_DELTA {
            0 => 0,
            _ => take_varint(input)?,
        };
        let offset_s = match flags & NEW_OFFSET {
            0 => prev.offset_s,
            _ => unzigzag(take_varint(input)?).ok_or("UTC offset out of range")?,
        };
        Stamp::Clock { delta_s, offset_s }
    };
    let sid = if flags & RAW_SID != 0 {
        let raw = take(input, RAW_SID_BYTES)?;
        let mut bytes = [0u8; RAW_SID_BYTES];
        bytes.copy_from_slice(raw);
        Sid::Raw(bytes)
    } else {
        Sid::Text(take_str(input)?)
    };
    let names = match flags & NAMES {
        0 => None,
        _ => Some((take_str(input)?, take_str(input)?)),
    };
    let cid = match flags & HAS_CID {
        0 => None,
        _ => Some(take_str(input)?),
    };
    Ok(RecordRef {
        ts,
        side: usize::from(flags & SECOND_USER),
        stamp,
        sid,
        names,
        cid,
        text: take_str(input)?,
    })
}

/// Appends `value` as an LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a string: varint length, bytes.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Appends bytes: varint length, bytes.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Takes an LEB128 varint of at most 10 bytes that fits a u64.
pub(crate) fn take_varint(input: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take_u8(input)?;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err("varint overflows".into());
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

/// Takes one byte.
pub(crate) fn take_u8(input: &mut &[u8]) -> Result<u8, String> {
    let (&byte, rest) = input.split_first().ok_or("unexpected end")?;
    *input = rest;
    Ok(byte)
}

/// Takes `n` bytes.
pub(crate) fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if input.len() < n {
        return Err("unexpected end".into());
    }
    let (taken, rest) = input.split_at(n);
    *input = rest;
    Ok(taken)
}

/// Takes length-prefixed bytes.
pub(crate) fn take_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = take_varint(input)?;
    // A length past the input fails here, before anything is allocated.
    let len = usize::try_from(len).map_err(|_| "length out of range")?;
    take(input, len)
}

/// Takes a length-prefixed UTF-8 string.
pub(crate) fn take_str<'a>(input: &mut &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(take_bytes(input)?).map_err(|e| format!("not UTF-8: {e}"))
}

fn zigzag(value: i32) -> u64 {
    u64::from(((value << 1) ^ (value >> 31)) as u32)
}

fn unzigzag(value: u64) -> Option<i32> {
    let value = u32::try_from(value).ok()?;
    Some(((value >> 1) as i32) ^ -((value & 1) as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts: u64) -> RecordRef<'static> {
        RecordRef {
            ts,
            side: 1,
            stamp: Stamp::Clock {
                delta_s: 0,
                offset_s: 3600,
            },
            sid: Sid::of("jxKCSoWK6t4p8vojAAAD"),
            names: None,
            cid: None,
            text: "Hello 🌍 World!",
        }
    }

    fn round_trip(record: &RecordRef<'_>, prev: Context) -> usize {
        let mut bytes = Vec::new();
        encode(&mut bytes, record, prev);
        let mut input = bytes.as_slice();
        assert_eq!(decode(&mut input, prev).unwrap(), *record);
        assert!(input.is_empty());
        bytes.len()
    }

    #[test]
    fn every_field_round_trips() {
        let plain = sample(1_766_889_946_123_456);
        let prev = Context {
            ts: 1_766_889_946_000_000,
            offset_s: 3600,
        };
        // flags, 3-byte ts delta, 15-byte sid, 1-byte length, 17-byte text.
        assert_eq!(round_trip(&plain, prev), 1 + 3 + 15 + 1 + 17);
        let full = RecordRef {
            ts: u64::MAX,
            side: 0,
            stamp: Stamp::Clock {
                delta_s: 7,
                offset_s: -5 * 3600 - 1800,
            },
            sid: Sid::Text("not-an-id"),
            names: Some(("C", "D")),
            cid: Some("client:1"),
            text: "",
        };
        round_trip(&full, Context::default());
        let literal = RecordRef {
            stamp: Stamp::Literal("not a time"),
            ..plain
        };
        round_trip(&literal, prev);
        for offset_s in [i32::MIN, i32::MAX, -1, 0, 1] {
            let stamp = Stamp::Clock {
                delta_s: 0,
                offset_s,
            };
            round_trip(&RecordRef { stamp, ..plain }, prev);
        }
    }

    #[test]
    fn only_canonical_base64url_ids_are_raw() {
        let id = "jxKCSoWK6t4p8vojAAAD";
        assert!(matches!(Sid::of(id), Sid::Raw(_)));
        assert_eq!(Sid::of(id).text(), id);
        for other in [
            "sock1",
            "jxKCSoWK6t4p8vojAAA=",
            "jxKCSoWK6t4p8vojAA+D",
            "",
            "é",
        ] {
            assert_eq!(Sid::of(other), Sid::Text(other), "{other}");
        }
    }

    #[test]
    fn varints_reject_overflow_and_overlong_forms() {
        for value in [0, 1, 127, 128, 300, u64::MAX >> 1, u64::MAX] {
            let mut bytes = Vec::new();
            put_varint(&mut bytes, value);
            let mut input = bytes.as_slice();
            assert_eq!(take_varint(&mut input).unwrap(), value);
        }
        let mut too_big: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(take_varint(&mut too_big).is_err());
        let mut too_long: &[u8] = &[0x80; 11];
        assert!(take_varint(&mut too_long).is_err());
    }

    #[test]
    fn every_truncation_and_bad_byte_is_an_error() {
        let mut bytes = Vec::new();
        let record = RecordRef {
            cid: Some("c"),
            names: Some(("C", "D")),
            ..sample(5)
        };
        encode(&mut bytes, &record, Context::default());
        for n in 0..bytes.len() {
            assert!(decode(&mut &bytes[..n], Context::default()).is_err(), "{n}");
        }
        let mut unknown = bytes.clone();
        unknown[0] |= 0x80;
        assert!(decode(&mut unknown.as_slice(), Context::default()).is_err());
        // The text's last byte made invalid UTF-8.
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() = 0xff;
        assert!(decode(&mut bad.as_slice(), Context::default()).is_err());
        // A length near u64::MAX fails without an allocation.
        let mut huge = vec![0, 0];
        huge.extend([0xff; 9]);
        huge.push(0x01);
        assert!(decode(&mut huge.as_slice(), Context::default()).is_err());
    }
}
