//! Chunks: a room's messages packed together, the value of one `chunks`
//! entry keyed by `(room id, ts of its first message)`.
//!
//! Why chunks: redb splits a full leaf page in half unless the new key goes
//! past the whole tree's last key, so one key per message, inserted in the
//! middle of the tree (every room but the newest), leaves pages half full.
//! A chunk fills one page on its own ([`CHUNK_MAX`]), so the leaves holding
//! them are full whatever the order rooms grow in; only a room's last chunk
//! (its tail, still growing) may be short.
//!
//! ```text
//! u8        format (1)
//! u8        flags: bit 0 = some record has a cid
//! varint    records
//! varint×2  messages of each side of the room before this chunk (since the
//!           room began, purged ones included): what unread counts add to
//! records   see `record.rs`, each after the previous (the first after the key's ts)
//! ```

use super::record::{self, Context, RecordRef, Side, take_u8, take_varint};

/// Chunk format byte.
const FORMAT: u8 = 1;

const HAS_CIDS: u8 = 1 << 0;

/// The largest chunk that fits one 4 KiB redb leaf page with its key: the
/// leaf header (4 bytes), one value-end offset (4) and the 12-byte key.
/// Larger, the leaf would need two pages; two chunks never share a page,
/// so a page holds one full chunk and nothing else.
pub(crate) const CHUNK_MAX: usize = 4096 - 4 - 4 - 12;

/// A decoded chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Header {
    /// Records in the chunk.
    pub records: u64,
    /// Messages of each side in the room before the chunk's first.
    pub before: [u64; 2],
    /// Some record carries a cid (a purge must then forget them).
    pub has_cids: bool,
}

/// Decodes a chunk's records one by one; the last item is an error if the
/// bytes hold fewer or more records than the header says.
pub(crate) struct Records<'a> {
    rest: &'a [u8],
    prev: Context,
    left: u64,
    failed: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordRef<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            if self.rest.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(format!("{} trailing bytes", self.rest.len())));
        }
        match record::decode(&mut self.rest, self.prev) {
            Ok(r) => {
                self.prev = self.prev.after(&r);
                self.left -= 1;
                Some(Ok(r))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads a chunk's header and returns its records, the first of which has
/// ts `first_ts` (the key's).
pub(crate) fn open(first_ts: u64, bytes: &[u8]) -> Result<(Header, Records<'_>), String> {
    let mut input = bytes;
    let format = take_u8(&mut input)?;
    if format != FORMAT {
        return Err(format!("unknown chunk format {format}"));
    }
    let flags = take_u8(&mut input)?;
    if flags & !HAS_CIDS != 0 {
        return Err(format!("unknown chunk flags {flags:#04x}"));
    }
    let records = take_varint(&mut input)?;
    let before = [take_varint(&mut input)?, take_varint(&mut input)?];
    if records == 0 {
        return Err("an empty chunk".into());
    }
    let header = Header {
        records,
        before,
        has_cids: flags & HAS_CIDS != 0,
    };
    let reader = Records {
        rest: input,
        prev: Context {
            ts: first_ts,
            offset_s: 0,
        },
        left: records,
        failed: false,
    };
    Ok((header, reader))
}

/// Builds chunks of at most [`CHUNK_MAX`] bytes from records in ts order;
/// a record larger than that gets a chunk of its own.
#[derive(Debug)]
pub(crate) struct Builder {
    first_ts: u64,
    header: Header,
    // Records of each side in this chunk.
    own: [u64; 2],
    body: Vec<u8>,
    // What the next record is encoded after.
    prev: Context,
}

/// A chunk ready to store: its key's ts and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Sealed {
    /// ts of its first record (the key's second half).
    pub first_ts: u64,
    /// The encoded chunk.
    pub bytes: Vec<u8>,
}

impl Builder {
    /// An empty chunk of a room in which `before` messages of each side
    /// came before it.
    pub(crate) fn new(before: [u64; 2]) -> Builder {
        Builder {
            first_ts: 0,
            header: Header {
                records: 0,
                before,
                has_cids: false,
            },
            own: [0, 0],
            body: Vec::new(),
            prev: Context::default(),
        }
    }

    /// Continues an existing chunk (a room's tail), to append to it.
    pub(crate) fn resume(first_ts: u64, bytes: &[u8]) -> Result<Builder, String> {
        let (header, mut records) = open(first_ts, bytes)?;
        let body = records.rest.to_vec();
        let mut own = [0, 0];
        for r in records.by_ref() {
            own[r?.side] += 1;
        }
        Ok(Builder {
            first_ts,
            header,
            own,
            body,
            prev: records.prev,
        })
    }

    /// ts of the last record, if any.
    pub(crate) fn last_ts(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.prev.ts)
    }

    /// Counts a message of `side` that comes before this (empty) chunk's
    /// first record but is not in it (purged): the counts stay cumulative.
    /// Purges take a prefix of a room, so this comes only before any push.
    pub(crate) fn skip(&mut self, side: Side) {
        self.header.before[side] += 1;
    }

    /// Whether the chunk has no record yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.header.records == 0
    }

    /// Appends `record` (ts at or above the last one's), first sealing the
    /// chunk into `sealed` if the record would take it past [`CHUNK_MAX`].
    pub(crate) fn push(&mut self, record: &RecordRef<'_>, sealed: &mut Vec<Sealed>) {
        if !self.is_empty() {
            let mark = self.body.len();
            record::encode(&mut self.body, record, self.prev);
            let grown = Header {
                records: self.header.records + 1,
                ..self.header
            };
            if header_len(&grown) + self.body.len() <= CHUNK_MAX {
                self.counted(record);
                return;
            }
            self.body.truncate(mark);
            sealed.push(self.seal());
        }
        // The first record of a chunk is encoded after itself: its ts is the key's.
        let first = Context {
            ts: record.ts,
            offset_s: 0,
        };
        self.first_ts = record.ts;
        self.prev = first;
        record::encode(&mut self.body, record, first);
        self.counted(record);
    }

    fn counted(&mut self, record: &RecordRef<'_>) {
        self.header.records += 1;
        self.header.has_cids |= record.cid.is_some();
        self.own[record.side] += 1;
        self.prev = self.prev.after(record);
    }

    /// The chunk as it is now (call only when it has records); the builder
    /// goes on with an empty chunk that follows it.
    pub(crate) fn seal(&mut self) -> Sealed {
        let mut bytes = Vec::with_capacity(header_len(&self.header) + self.body.len());
        encode_header(&mut bytes, &self.header);
        bytes.extend_from_slice(&self.body);
        let sealed = Sealed {
            first_ts: self.first_ts,
            bytes,
        };
        let before = [
            self.header.before[0] + self.own[0],
            self.header.before[1] + self.own[1],
        ];
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        *self = Builder {
            body,
            ..Builder::new(before)
        };
        sealed
    }
}

fn encode_header(out: &mut Vec<u8>, header: &Header) {
    out.push(FORMAT);
    out.push(if header.has_cids { HAS_CIDS } else { 0 });
    record::put_varint(out, header.records);
    record::put_varint(out, header.before[0]);
    record::put_varint(out, header.before[1]);
}

fn header_len(header: &Header) -> usize {
    2 + varint_len(header.records) + varint_len(header.before[0]) + varint_len(header.before[1])
}

fn varint_len(value: u64) -> usize {
    (64 - value.max(1).leading_zeros() as usize).div_ceil(7)
}
