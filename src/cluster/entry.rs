//! The bytes of one entry of the replicated log: a [`Change`] and its entry
//! id, as a node publishes it to the stream and every node reads it back.
//!
//! Pure: no I/O, and decoding never panics on any input (fuzzed by
//! `fuzz/fuzz_targets/log_entry.rs`). The layout is written out field by
//! field rather than derived, so a change to the Rust types cannot silently
//! change what is in the stream; the first byte is the format version, and
//! a node refuses versions it does not know instead of guessing.
//!
//! Version 1:
//!
//! ```text
//! version u8 = 1 | eid [u8; 16] | kind u8 | fields of the kind
//! kind 1 message:    room, sid, from, to, text: str | cid: opt str | time_us: uvar | utc_offset_s: svar
//! kind 2 read:       room, user: str | ts: uvar
//! kind 3 purge room: room: str | before: opt uvar
//! kind 4 purge all:  before: uvar
//! str = uvar length + UTF-8 bytes; opt X = 0 | 1 X; uvar = LEB128 u64; svar = zigzag uvar
//! ```
//!
//! A message's `eid` is the entry's: it is written once, in the header.

use thiserror::Error;

use crate::store::change::{Change, NewMessage, PurgeSelection, ReadMark};

/// The format version this node writes (and the only one it reads).
pub const ENTRY_VERSION: u8 = 1;

/// An entry's own id: its `Nats-Msg-Id`, what makes a retried publish and a
/// re-applied entry harmless.
pub type EntryId = [u8; 16];

const KIND_MESSAGE: u8 = 1;
const KIND_READ: u8 = 2;
const KIND_PURGE_ROOM: u8 = 3;
const KIND_PURGE_ALL: u8 = 4;

/// One decoded entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The entry id it was published with.
    pub eid: EntryId,
    /// The change (a message's `eid` is set to the entry's).
    pub change: Change,
}

/// Why bytes are not a log entry this node can read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntryError {
    /// Written by a newer (or foreign) format.
    #[error(
        "log entry format version {0} is not supported (this chatd reads version {ENTRY_VERSION})"
    )]
    Version(u8),
    /// An unknown change kind.
    #[error("unknown change kind {0}")]
    Kind(u8),
    /// The bytes end inside a field.
    #[error("log entry truncated")]
    Truncated,
    /// A string is not UTF-8.
    #[error("log entry holds a string that is not UTF-8")]
    Utf8,
    /// A number does not fit its field.
    #[error("log entry holds a number out of range")]
    Range,
    /// Bytes after the last field.
    #[error("log entry has {0} trailing bytes")]
    Trailing(usize),
}

/// Appends the encoding of `change` as entry `eid` to `out`.
pub fn encode_entry(eid: &EntryId, change: &Change, out: &mut Vec<u8>) {
    out.push(ENTRY_VERSION);
    out.extend_from_slice(eid);
    match change {
        Change::Message(m) => {
            out.push(KIND_MESSAGE);
            for field in [&m.room, &m.sid, &m.from, &m.to, &m.text] {
                put_str(out, field);
            }
            match &m.cid {
                Some(cid) => {
                    out.push(1);
                    put_str(out, cid);
                }
                None => out.push(0),
            }
            put_uvar(out, m.time_us);
            put_uvar(out, zigzag(m.utc_offset_s));
        }
        Change::Read(r) => {
            out.push(KIND_READ);
            put_str(out, &r.room);
            put_str(out, &r.user);
            put_uvar(out, r.ts);
        }
        Change::Purge(PurgeSelection::Room { room, before }) => {
            out.push(KIND_PURGE_ROOM);
            put_str(out, room);
            match before {
                Some(before) => {
                    out.push(1);
                    put_uvar(out, *before);
                }
                None => out.push(0),
            }
        }
        Change::Purge(PurgeSelection::All { before }) => {
            out.push(KIND_PURGE_ALL);
            put_uvar(out, *before);
        }
    }
}

/// Decodes one entry; any malformation is an error, never a panic.
pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, EntryError> {
    let mut input = Input(bytes);
    let version = input.byte()?;
    if version != ENTRY_VERSION {
        return Err(EntryError::Version(version));
    }
    let eid: EntryId = input
        .take(16)?
        .try_into()
        .map_err(|_| EntryError::Truncated)?;
    let change = match input.byte()? {
        KIND_MESSAGE => Change::Message(NewMessage {
            room: input.str()?,
            sid: input.str()?,
            from: input.str()?,
            to: input.str()?,
            text: input.str()?,
            cid: if input.flag()? {
                Some(input.str()?)
            } else {
                None
            },
            time_us: input.uvar()?,
            utc_offset_s: unzigzag(input.uvar()?)?,
            eid: Some(eid),
        }),
        KIND_READ => Change::Read(ReadMark {
            room: input.str()?,
            user: input.str()?,
            ts: input.uvar()?,
        }),
        KIND_PURGE_ROOM => Change::Purge(PurgeSelection::Room {
            room: input.str()?,
            before: if input.flag()? {
                Some(input.uvar()?)
            } else {
                None
            },
        }),
        KIND_PURGE_ALL => Change::Purge(PurgeSelection::All {
            before: input.uvar()?,
        }),
        kind => return Err(EntryError::Kind(kind)),
    };
    match input.0.len() {
        0 => Ok(LogEntry { eid, change }),
        trailing => Err(EntryError::Trailing(trailing)),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uvar(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_uvar(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn zigzag(n: i32) -> u64 {
    u64::from(((n << 1) ^ (n >> 31)) as u32)
}

fn unzigzag(n: u64) -> Result<i32, EntryError> {
    let n = u32::try_from(n).map_err(|_| EntryError::Range)?;
    Ok(((n >> 1) as i32) ^ -((n & 1) as i32))
}

/// The unread rest of an entry.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, EntryError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(EntryError::Range),
        }
    }

    fn uvar(&mut self) -> Result<u64, EntryError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(EntryError::Range);
            }
            n |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(EntryError::Range)
    }

    fn str(&mut self) -> Result<String, EntryError> {
        let len = usize::try_from(self.uvar()?).map_err(|_| EntryError::Range)?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| EntryError::Utf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EID: EntryId = *b"0123456789abcdef";

    fn round_trip(change: Change) -> LogEntry {
        let mut bytes = Vec::new();
        encode_entry(&EID, &change, &mut bytes);
        decode_entry(&bytes).expect("decodes what it encoded")
    }

    fn message(cid: Option<&str>, utc_offset_s: i32) -> NewMessage {
        NewMessage {
            room: "dm:Dummy-1_Dummy-2".into(),
            sid: "jxKCSoWK6t4p8vojAAAD".into(),
            from: "Dummy-1".into(),
            to: "Dummy-2".into(),
            text: "Hello World! ✓".into(),
            cid: cid.map(str::to_owned),
            time_us: 1_766_889_946_123_456,
            utc_offset_s,
            eid: Some(EID),
        }
    }

    #[test]
    fn every_kind_of_change_round_trips() {
        let changes = [
            Change::Message(message(Some("c-1"), 19_800)),
            Change::Message(message(None, -36_000)),
            Change::Message(message(None, i32::MIN)),
            Change::Read(ReadMark {
                room: "dm:a_b".into(),
                user: "a".into(),
                ts: u64::MAX,
            }),
            Change::Purge(PurgeSelection::Room {
                room: "dm:a_b".into(),
                before: Some(0),
            }),
            Change::Purge(PurgeSelection::Room {
                room: "dm:a_b".into(),
                before: None,
            }),
            Change::Purge(PurgeSelection::All { before: 42 }),
        ];
        for change in changes {
            let entry = round_trip(change.clone());
            assert_eq!(entry, LogEntry { eid: EID, change });
        }
    }

    #[test]
    fn a_message_takes_the_entry_id_whatever_it_carried() {
        let mut m = message(None, 0);
        m.eid = None;
        let Change::Message(decoded) = round_trip(Change::Message(m)).change else {
            panic!("not a message");
        };
        assert_eq!(decoded.eid, Some(EID));
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let mut good = Vec::new();
        encode_entry(&EID, &Change::Message(message(Some("c"), 3600)), &mut good);
        for cut in 0..good.len() {
            assert!(decode_entry(&good[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut newer = good.clone();
        newer[0] = 2;
        assert_eq!(decode_entry(&newer), Err(EntryError::Version(2)));
        let mut kind = good.clone();
        kind[17] = 9;
        assert_eq!(decode_entry(&kind), Err(EntryError::Kind(9)));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_entry(&trailing), Err(EntryError::Trailing(1)));
        let mut overlong = vec![ENTRY_VERSION];
        overlong.extend_from_slice(&EID);
        overlong.extend_from_slice(&[
            KIND_PURGE_ALL,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ]);
        assert_eq!(decode_entry(&overlong), Err(EntryError::Range));
        let mut huge_len = vec![ENTRY_VERSION];
        huge_len.extend_from_slice(&EID);
        huge_len.extend_from_slice(&[KIND_PURGE_ROOM, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decode_entry(&huge_len), Err(EntryError::Truncated));
        let mut not_utf8 = vec![ENTRY_VERSION];
        not_utf8.extend_from_slice(&EID);
        not_utf8.extend_from_slice(&[KIND_PURGE_ROOM, 1, 0xff, 0]);
        assert_eq!(decode_entry(&not_utf8), Err(EntryError::Utf8));
    }

    #[test]
    fn the_fuzz_seeds_are_entries() {
        for seed in [
            &include_bytes!("../../fuzz/corpus/log_entry/seed-message")[..],
            include_bytes!("../../fuzz/corpus/log_entry/seed-read"),
            include_bytes!("../../fuzz/corpus/log_entry/seed-purge"),
        ] {
            let entry = decode_entry(seed).expect("a seed decodes");
            let mut bytes = Vec::new();
            encode_entry(&entry.eid, &entry.change, &mut bytes);
            assert_eq!(bytes, seed);
        }
    }

    #[test]
    fn varints_cover_the_whole_range() {
        for n in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_uvar(&mut out, n);
            assert_eq!(Input(&out).uvar(), Ok(n));
        }
        for n in [0, 1, -1, 19_800, -43_200, i32::MAX, i32::MIN] {
            assert_eq!(unzigzag(zigzag(n)), Ok(n));
        }
    }
}
