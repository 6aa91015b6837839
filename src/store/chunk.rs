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
    // Counts no history reaches: whoever adds to them later must not overflow.
    if before[0]
        .checked_add(before[1])
        .and_then(|total| total.checked_add(records))
        .is_none()
    {
        return Err(format!(
            "message counts out of range ({records} records after {} and {})",
            before[0], before[1]
        ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{Sid, Stamp};

    fn record(ts: u64, text: &str) -> RecordRef<'_> {
        RecordRef {
            ts,
            side: (ts % 2) as Side,
            stamp: Stamp::Clock {
                delta_s: 0,
                offset_s: 3600,
            },
            sid: Sid::of("jxKCSoWK6t4p8vojAAAD"),
            names: None,
            cid: ts.is_multiple_of(7).then_some("cid"),
            text,
        }
    }

    fn decode_all(sealed: &Sealed) -> (Header, Vec<(u64, String)>) {
        let (header, records) = open(sealed.first_ts, &sealed.bytes).unwrap();
        let list = records
            .map(|r| r.map(|r| (r.ts, r.text.to_owned())))
            .collect::<Result<_, _>>()
            .unwrap();
        (header, list)
    }

    #[test]
    fn chunks_fill_a_page_and_keep_cumulative_counts() {
        let text = "x".repeat(32);
        let mut builder = Builder::new([5, 7]);
        let mut sealed = Vec::new();
        for i in 0..1000 {
            builder.push(&record(1_000_000 + i * 5000, &text), &mut sealed);
        }
        sealed.push(builder.seal());
        let mut before = [5, 7];
        let mut all = Vec::new();
        for (n, chunk) in sealed.iter().enumerate() {
            assert!(chunk.bytes.len() <= CHUNK_MAX);
            // Full but for less than one record, except the last.
            if n + 1 < sealed.len() {
                assert!(chunk.bytes.len() > CHUNK_MAX - 60, "{}", chunk.bytes.len());
            }
            let (header, records) = decode_all(chunk);
            assert_eq!(header.before, before);
            assert_eq!(header.records as usize, records.len());
            for (ts, _) in &records {
                before[(ts % 2) as usize] += 1;
            }
            all.extend(records);
        }
        assert!(
            all.iter()
                .map(|(ts, _)| *ts)
                .eq((0..1000).map(|i| 1_000_000 + i * 5000))
        );
        // 32-byte texts take about 52 bytes each, page overhead included.
        let per_message = (sealed.len() * 4096) as f64 / 1000.0;
        assert!(per_message < 60.0, "{per_message} bytes per message");
    }

    #[test]
    fn resuming_a_tail_chunk_continues_it_exactly() {
        let texts: Vec<String> = (0..200).map(|i| format!("message {i}")).collect();
        let build = |split: Option<usize>| {
            let mut builder = Builder::new([0, 0]);
            let mut sealed = Vec::new();
            for (i, text) in texts.iter().enumerate() {
                if Some(i) == split {
                    let tail = builder.seal();
                    builder = Builder::resume(tail.first_ts, &tail.bytes).unwrap();
                }
                builder.push(&record(10 + i as u64, text), &mut sealed);
            }
            sealed.push(builder.seal());
            sealed
        };
        let whole = build(None);
        for split in [1, 37, 150, 199] {
            assert_eq!(build(Some(split)), whole, "split at {split}");
        }
    }

    #[test]
    fn a_record_larger_than_a_chunk_gets_one_of_its_own() {
        let big = "y".repeat(5000);
        let mut builder = Builder::new([0, 0]);
        let mut sealed = Vec::new();
        builder.push(&record(1, "small"), &mut sealed);
        builder.push(&record(2, &big), &mut sealed);
        builder.push(&record(3, "small"), &mut sealed);
        sealed.push(builder.seal());
        let lens: Vec<usize> = sealed.iter().map(|c| decode_all(c).1.len()).collect();
        assert_eq!(lens, [1, 1, 1]);
        assert_eq!(decode_all(&sealed[1]).1[0].1, big);
    }

    #[test]
    fn damaged_chunks_are_errors_never_panics() {
        let mut builder = Builder::new([1, 2]);
        let mut sealed = Vec::new();
        for i in 0..20 {
            builder.push(&record(100 + i, "hello"), &mut sealed);
        }
        let chunk = builder.seal();
        let decodes = |bytes: &[u8]| -> Result<usize, String> {
            let (_, records) = open(chunk.first_ts, bytes)?;
            records
                .map(|r| r.map(|_| ()))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.len())
        };
        assert_eq!(decodes(&chunk.bytes), Ok(20));
        for n in 0..chunk.bytes.len() {
            assert!(decodes(&chunk.bytes[..n]).is_err(), "prefix of {n}");
        }
        let mut longer = chunk.bytes.clone();
        longer.push(0);
        assert!(decodes(&longer).is_err());
        // A deterministic fuzz: an LCG drives the bytes flipped.
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..3000 {
            let mut bytes = chunk.bytes.clone();
            for _ in 0..3 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % bytes.len();
                bytes[at] = (seed >> 13) as u8;
            }
            let _ = decodes(&bytes);
            let _ = Builder::resume(chunk.first_ts, &bytes);
        }
    }
}
