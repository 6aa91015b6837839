//! Read paths: history pages, streaming exports, the room list, cursors.
//!
//! Each call reads one MVCC snapshot, so it never blocks (or is blocked by)
//! the applier, and a page is consistent with itself and with the
//! `applied_seq` it reports. A room's history is its chunks, oldest first,
//! then its messages in `staged` (found by scanning the room's bucket from
//! the position its state names, which folding keeps short). Messages below
//! the room's purge floor are skipped: a sweep may not have deleted them yet.
//!
//! The helpers here work on any snapshot, the applier's write transaction
//! included, so applying and reading decode messages with the same code.

use std::collections::BTreeMap;

use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable};

use super::chunk;
use super::clock::format_time;
use super::error::DbContext;
use super::record::{self, Context, RecordRef, Stamp};
use super::room::RoomState;
use super::schema::{
    APPLIED_SEQ_KEY, CHUNKS, LOG_ID_KEY, ROOM_IDS, ROOMS, STAGED, STATE, bucket, read_u64,
};
use super::{Store, StoreError, StoredMessage};

/// A history page request; see [`Store::history_page`].
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Exclusive upper bound on ts.
    pub before: Option<u64>,
    /// Exclusive lower bound on ts.
    pub after: Option<u64>,
    /// Most messages to return (0 returns none).
    pub limit: usize,
    /// Ignore messages newer than this (inclusive).
    pub max_ts: Option<u64>,
}

impl HistoryQuery {
    // The inclusive ts range the bounds leave, or None if they leave nothing.
    fn inclusive_bounds(&self) -> Option<(u64, u64)> {
        let lo = match self.after {
            Some(a) => a.checked_add(1)?,
            None => 0,
        };
        let mut hi = u64::MAX;
        if let Some(b) = self.before {
            hi = hi.min(b.checked_sub(1)?);
        }
        if let Some(m) = self.max_ts {
            hi = hi.min(m);
        }
        (lo <= hi).then_some((lo, hi))
    }
}

/// A history page and the log position of the snapshot it was read from:
/// every change up to `applied_seq` is in it, none after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Oldest first.
    pub messages: Vec<StoredMessage>,
    /// The last log position applied in the snapshot read.
    pub applied_seq: u64,
}

/// The `chunks` table as any snapshot opens it.
pub(crate) trait Chunks: ReadableTable<(u32, u64), &'static [u8]> {}
impl<T: ReadableTable<(u32, u64), &'static [u8]>> Chunks for T {}

/// The `staged` table as any snapshot opens it.
pub(crate) trait Staged: ReadableTable<(u8, u64), &'static [u8]> {}
impl<T: ReadableTable<(u8, u64), &'static [u8]>> Staged for T {}

/// Whether `table` has any entry, as of now (`context` for errors).
pub(crate) fn has_entries<K: redb::Key + 'static, V: redb::Value + 'static>(
    store: &Store,
    table: redb::TableDefinition<K, V>,
    context: &'static str,
) -> Result<bool, StoreError> {
    let txn = store.db()?.begin_read().ctx("starting read transaction")?;
    let table = txn.open_table(table).ctx(context)?;
    Ok(table.first().ctx(context)?.is_some())
}

/// The state of room `id`, if it exists.
pub(crate) fn room_state(
    rooms: &impl ReadableTable<u32, &'static [u8]>,
    id: u32,
) -> Result<Option<RoomState>, StoreError> {
    let Some(bytes) = rooms.get(id).ctx("reading room state")? else {
        return Ok(None);
    };
    RoomState::decode(bytes.value())
        .map(Some)
        .map_err(|reason| StoreError::Corrupt {
            what: "room state",
            reason: format!("room id {id}: {reason}"),
        })
}

/// The id of the room called `name`, if it exists.
pub(crate) fn room_id(
    ids: &impl ReadableTable<&'static [u8], u32>,
    name: &str,
) -> Result<Option<u32>, StoreError> {
    Ok(ids
        .get(name.as_bytes())
        .ctx("reading room id")?
        .map(|v| v.value()))
}

/// Splits a `staged` value into room id, ts and record bytes.
pub(crate) fn staged_entry(bytes: &[u8]) -> Option<(u32, u64, &[u8])> {
    let room = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let ts = u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?);
    Some((room, ts, &bytes[12..]))
}

/// Decodes a staged record (encoded after its own ts).
pub(crate) fn staged_record<'a>(
    st: &RoomState,
    ts: u64,
    bytes: &'a [u8],
) -> Result<RecordRef<'a>, StoreError> {
    let mut input = bytes;
    let decoded = record::decode(&mut input, Context { ts, offset_s: 0 });
    match decoded {
        Ok(r) if input.is_empty() && r.ts == ts => Ok(r),
        Ok(_) => Err(corrupt(st, ts, "trailing bytes or a ts delta".into())),
        Err(reason) => Err(corrupt(st, ts, reason)),
    }
}

/// Calls `f(seq, ts, record bytes)` for the room's messages in `staged`,
/// oldest first, until it returns false.
pub(crate) fn for_staged(
    staged: &impl Staged,
    st: &RoomState,
    mut f: impl FnMut(u64, u64, &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    if st.staged == [0, 0] {
        return Ok(());
    }
    let b = bucket(st.id);
    for item in staged
        .range((b, st.staged_from)..=(b, u64::MAX))
        .ctx("reading staged messages")?
    {
        let (key, value) = item.ctx("reading staged messages")?;
        let Some((room, ts, bytes)) = staged_entry(value.value()) else {
            return Err(StoreError::Corrupt {
                what: "staged message",
                reason: format!("seq {}: too short", key.value().1),
            });
        };
        if room == st.id && !f(key.value().1, ts, bytes)? {
            break;
        }
    }
    Ok(())
}

/// Calls `f(record)` for the records of one chunk, oldest first, until it
/// returns false.
pub(crate) fn for_chunk_records(
    st: &RoomState,
    first_ts: u64,
    bytes: &[u8],
    mut f: impl FnMut(RecordRef<'_>) -> Result<bool, StoreError>,
) -> Result<chunk::Header, StoreError> {
    let (header, records) = chunk::open(first_ts, bytes).map_err(|e| corrupt(st, first_ts, e))?;
    for r in records {
        if !f(r.map_err(|e| corrupt(st, first_ts, e))?)? {
            break;
        }
    }
    Ok(header)
}

/// A stored message object from its room and record.
pub(crate) fn message(st: &RoomState, r: &RecordRef<'_>) -> StoredMessage {
    let (from, to) = match r.names {
        Some((from, to)) => (from.to_owned(), to.to_owned()),
        None => (st.users[r.side].clone(), st.users[1 - r.side].clone()),
    };
    StoredMessage {
        room: st.name.clone(),
        ts: r.ts,
        id: r.sid.text(),
        from,
        to,
        text: r.text.to_owned(),
        time: match r.stamp {
            Stamp::Literal(time) => time.to_owned(),
            Stamp::Clock { delta_s, offset_s } => {
                let time_s = (r.ts / 1_000_000).saturating_sub(delta_s);
                format_time(time_s.saturating_mul(1_000_000), offset_s)
            }
        },
    }
}

fn corrupt(st: &RoomState, ts: u64, reason: String) -> StoreError {
    StoreError::CorruptMessage {
        room: st.name.clone(),
        ts,
        reason,
    }
}

/// The room's message with this ts (not purged), if there is one. `seq`,
/// when known, finds a staged message without a scan.
pub(crate) fn find_message(
    chunks: &impl Chunks,
    staged: &impl Staged,
    st: &RoomState,
    ts: u64,
    seq: Option<u64>,
) -> Result<Option<StoredMessage>, StoreError> {
    if ts < st.floor || !st.has_messages() || ts > st.newest_ts {
        return Ok(None);
    }
    if let Some(seq) = seq
        && let Some(value) = staged
            .get((bucket(st.id), seq))
            .ctx("reading staged message")?
        && let Some((room, at, bytes)) = staged_entry(value.value())
        && (room, at) == (st.id, ts)
    {
        return Ok(Some(message(st, &staged_record(st, ts, bytes)?)));
    }
    let mut found = None;
    let chunk = chunks
        .range((st.id, 0)..=(st.id, ts))
        .ctx("reading chunks")?
        .next_back()
        .transpose()
        .ctx("reading chunks")?;
    if let Some((key, value)) = chunk {
        for_chunk_records(st, key.value().1, value.value(), |r| {
            if r.ts == ts {
                found = Some(message(st, &r));
            }
            Ok(r.ts < ts)
        })?;
    }
    if found.is_none() {
        for_staged(staged, st, |_, at, bytes| {
            if at == ts {
                found = Some(message(st, &staged_record(st, ts, bytes)?));
            }
            Ok(at < ts)
        })?;
    }
    Ok(found)
}

/// The room's newest message (not purged), if any.
pub(crate) fn newest_message(
    chunks: &impl Chunks,
    staged: &impl Staged,
    st: &RoomState,
) -> Result<Option<StoredMessage>, StoreError> {
    let seq = (st.staged != [0, 0]).then_some(st.newest_seq);
    find_message(chunks, staged, st, st.newest_ts, seq)
}

/// Per side, how many of the room's messages (since it began) have a ts
/// below `floor`, and the ts of its first message at or above it.
/// Exact for any `floor` at or above the room's purge floor; below it, the
/// counts are those at the purge floor.
pub(crate) fn position(
    chunks: &impl Chunks,
    staged: &impl Staged,
    st: &RoomState,
    floor: u64,
) -> Result<([u64; 2], Option<u64>), StoreError> {
    if floor > st.newest_ts {
        return Ok((st.count, None));
    }
    if floor <= st.floor {
        return Ok((st.floor_count, st.has_messages().then_some(st.oldest_ts)));
    }
    // The last chunk starting below `floor`, and the one after it.
    let below = chunks
        .range((st.id, 0)..(st.id, floor))
        .ctx("reading chunks")?
        .next_back()
        .transpose()
        .ctx("reading chunks")?;
    let mut counts = None;
    let mut next = None;
    if let Some((key, value)) = below {
        let mut tally = [0u64; 2];
        let header = for_chunk_records(st, key.value().1, value.value(), |r| {
            if r.ts < floor {
                tally[r.side] += 1;
                return Ok(true);
            }
            next = Some(r.ts);
            Ok(false)
        })?;
        counts = Some([header.before[0] + tally[0], header.before[1] + tally[1]]);
    }
    if next.is_none() {
        let after = chunks
            .range((st.id, floor)..=(st.id, u64::MAX))
            .ctx("reading chunks")?
            .next()
            .transpose()
            .ctx("reading chunks")?;
        if let Some((key, value)) = after {
            let first_ts = key.value().1;
            let (header, _) =
                chunk::open(first_ts, value.value()).map_err(|e| corrupt(st, first_ts, e))?;
            // Everything before this chunk is below `floor`.
            return Ok((header.before, Some(first_ts)));
        }
    }
    if let (Some(counts), Some(_)) = (counts, next) {
        return Ok((counts, next));
    }
    // Past the chunks: the messages before the staged ones, then those.
    let mut counts = [st.count[0] - st.staged[0], st.count[1] - st.staged[1]];
    for_staged(staged, st, |_, ts, bytes| {
        if ts >= floor {
            next = Some(ts);
            return Ok(false);
        }
        counts[staged_record(st, ts, bytes)?.side] += 1;
        Ok(true)
    })?;
    Ok((counts, next))
}

// The messages of a room with ts in `lo..=hi`, oldest first, to `f` until
// it returns false.
fn for_range(
    chunks: &impl Chunks,
    staged: &impl Staged,
    st: &RoomState,
    lo: u64,
    hi: u64,
    mut f: impl FnMut(&RecordRef<'_>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let lo = lo.max(st.floor);
    if lo > hi || !st.has_messages() {
        return Ok(());
    }
    // Start in the chunk that holds `lo`.
    let start = chunks
        .range((st.id, 0)..=(st.id, lo))
        .ctx("reading chunks")?
        .next_back()
        .transpose()
        .ctx("reading chunks")?
        .map_or(lo, |(key, _)| key.value().1);
    let mut going = true;
    for item in chunks
        .range((st.id, start)..=(st.id, hi))
        .ctx("reading chunks")?
    {
        let (key, value) = item.ctx("reading chunks")?;
        for_chunk_records(st, key.value().1, value.value(), |r| {
            if r.ts > hi {
                going = false;
            } else if r.ts >= lo {
                going = f(&r)?;
            }
            Ok(going)
        })?;
        if !going {
            return Ok(());
        }
    }
    for_staged(staged, st, |_, ts, bytes| {
        if ts > hi {
            return Ok(false);
        }
        if ts < lo {
            return Ok(true);
        }
        f(&staged_record(st, ts, bytes)?)
    })
}

// The newest `limit` messages of a room with ts in `lo..=hi`, oldest first.
fn newest_in_range(
    chunks: &impl Chunks,
    staged: &impl Staged,
    st: &RoomState,
    lo: u64,
    hi: u64,
    limit: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    let lo = lo.max(st.floor);
    let mut newest_first = Vec::new();
    if lo > hi || !st.has_messages() {
        return Ok(newest_first);
    }
    // Staged messages are the newest: take theirs first.
    let mut staged_in_range = Vec::new();
    for_staged(staged, st, |_, ts, bytes| {
        if ts > hi {
            return Ok(false);
        }
        if ts >= lo {
            staged_in_range.push((ts, bytes.to_vec()));
        }
        Ok(true)
    })?;
    for (ts, bytes) in staged_in_range.iter().rev().take(limit) {
        newest_first.push(message(st, &staged_record(st, *ts, bytes)?));
    }
    let mut page = Vec::new();
    for item in chunks
        .range((st.id, 0)..=(st.id, hi))
        .ctx("reading chunks")?
        .rev()
    {
        if newest_first.len() >= limit {
            break;
        }
        let (key, value) = item.ctx("reading chunks")?;
        let first_ts = key.value().1;
        page.clear();
        for_chunk_records(st, first_ts, value.value(), |r| {
            if (lo..=hi).contains(&r.ts) {
                page.push(message(st, &r));
            }
            Ok(r.ts <= hi)
        })?;
        let room_left = limit - newest_first.len();
        newest_first.extend(page.drain(..).rev().take(room_left));
        if first_ts <= lo {
            break;
        }
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// The tables a room read needs, opened on one snapshot.
struct Snapshot {
    txn: ReadTransaction,
}

impl Snapshot {
    fn room(&self, name: &str) -> Result<Option<RoomState>, StoreError> {
        let ids = self.txn.open_table(ROOM_IDS).ctx("opening room ids")?;
        let Some(id) = room_id(&ids, name)? else {
            return Ok(None);
        };
        let rooms = self.txn.open_table(ROOMS).ctx("opening rooms")?;
        room_state(&rooms, id)
    }

    fn chunks(&self) -> Result<ReadOnlyTable<(u32, u64), &'static [u8]>, StoreError> {
        self.txn.open_table(CHUNKS).ctx("opening chunks")
    }

    fn staged(&self) -> Result<ReadOnlyTable<(u8, u64), &'static [u8]>, StoreError> {
        self.txn.open_table(STAGED).ctx("opening staged messages")
    }

    fn applied_seq(&self) -> Result<u64, StoreError> {
        let state = self.txn.open_table(STATE).ctx("opening state")?;
        Ok(read_u64(&state, APPLIED_SEQ_KEY)?.unwrap_or(0))
    }
}

impl Store {
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            txn: self.db()?.begin_read().ctx("starting read transaction")?,
        })
    }

    /// History query, oldest first. `before`/`after` are exclusive bounds.
    /// Only `before`: the newest `limit` older than it; only `after`: the
    /// oldest `limit` newer than it; both: the oldest `limit` strictly
    /// between; neither: the newest `limit`. With `max_ts`, messages with
    /// ts > max_ts are ignored.
    pub fn history_page(&self, room: &str, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let snap = self.snapshot()?;
        let applied_seq = snap.applied_seq()?;
        let mut page = HistoryPage {
            messages: Vec::new(),
            applied_seq,
        };
        let (Some((lo, hi)), Some(st)) = (q.inclusive_bounds(), snap.room(room)?) else {
            return Ok(page);
        };
        if q.limit == 0 {
            return Ok(page);
        }
        let (chunks, staged) = (snap.chunks()?, snap.staged()?);
        if q.after.is_some() {
            // Capped: the limit comes from a client.
            page.messages.reserve(q.limit.min(256));
            for_range(&chunks, &staged, &st, lo, hi, |r| {
                page.messages.push(message(&st, r));
                Ok(page.messages.len() < q.limit)
            })?;
        } else {
            page.messages = newest_in_range(&chunks, &staged, &st, lo, hi, q.limit)?;
        }
        Ok(page)
    }

    /// Streams messages of one room (ts in `since..=until` when given),
    /// oldest first, to `f`, without loading the room into memory. `f` may
    /// return an error to stop. Returns how many messages `f` accepted.
    pub fn export_room<E: From<StoreError>>(
        &self,
        room: &str,
        since: Option<u64>,
        until: Option<u64>,
        mut f: impl FnMut(&StoredMessage) -> Result<(), E>,
    ) -> Result<u64, E> {
        let snap = self.snapshot()?;
        let Some(st) = snap.room(room)? else {
            return Ok(0);
        };
        let (chunks, staged) = (snap.chunks()?, snap.staged()?);
        let (lo, hi) = (since.unwrap_or(0), until.unwrap_or(u64::MAX));
        let mut count = 0;
        let mut emit = |m: &StoredMessage| -> Result<(), E> {
            f(m)?;
            count += 1;
            Ok(())
        };
        export_one(&chunks, &staged, &st, lo, hi, None, &mut emit)?;
        Ok(count)
    }

    /// Streams every message of every room (rooms in byte order, each
    /// oldest first) to `f`. Memory stays flat: one chunk at a time, and
    /// the positions of what waits in `staged` (a bounded table).
    pub fn export_all<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&StoredMessage) -> Result<(), E>,
    ) -> Result<u64, E> {
        let snap = self.snapshot()?;
        let (chunks, staged) = (snap.chunks()?, snap.staged()?);
        // One pass over `staged` instead of one scan of a bucket per room.
        let mut waiting: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for item in staged.iter().ctx("reading staged messages")? {
            let (key, value) = item.ctx("reading staged messages")?;
            if let Some((room, _, _)) = staged_entry(value.value()) {
                waiting.entry(room).or_default().push(key.value().1);
            }
        }
        let ids = snap.txn.open_table(ROOM_IDS).ctx("opening room ids")?;
        let rooms = snap.txn.open_table(ROOMS).ctx("opening rooms")?;
        let mut count = 0;
        let mut emit = |m: &StoredMessage| -> Result<(), E> {
            f(m)?;
            count += 1;
            Ok(())
        };
        for item in ids.iter().ctx("listing rooms")? {
            let (_, id) = item.ctx("listing rooms")?;
            let Some(st) = room_state(&rooms, id.value())? else {
                continue;
            };
            let seqs = waiting.remove(&st.id).unwrap_or_default();
            export_one(&chunks, &staged, &st, 0, u64::MAX, Some(&seqs), &mut emit)?;
        }
        Ok(count)
    }

    /// Names of rooms that have at least one message, in byte order.
    pub fn rooms(&self) -> Result<Vec<String>, StoreError> {
        let snap = self.snapshot()?;
        let ids = snap.txn.open_table(ROOM_IDS).ctx("opening room ids")?;
        let rooms = snap.txn.open_table(ROOMS).ctx("opening rooms")?;
        let mut listed = Vec::new();
        for item in ids.iter().ctx("listing rooms")? {
            let (_, id) = item.ctx("listing rooms")?;
            if let Some(st) = room_state(&rooms, id.value())?
                && st.has_messages()
            {
                listed.push(st.name);
            }
        }
        Ok(listed)
    }

    /// True if `room` has at least one message.
    pub fn room_has_messages(&self, room: &str) -> Result<bool, StoreError> {
        Ok(self
            .snapshot()?
            .room(room)?
            .is_some_and(|st| st.has_messages()))
    }

    /// `user`'s read cursor in `room`: the ts of the newest message read, 0
    /// for none (or no such room).
    pub fn read_cursor(&self, room: &str, user: &str) -> Result<u64, StoreError> {
        let snap = self.snapshot()?;
        Ok(snap
            .room(room)?
            .and_then(|st| Some(st.cursor[st.side_of(user)?]))
            .unwrap_or(0))
    }

    /// The last log position applied (0 for none).
    pub fn applied_seq(&self) -> Result<u64, StoreError> {
        self.snapshot()?.applied_seq()
    }

    /// The identity of the log this store follows, as set by
    /// [`Store::set_log_id`]; None until then.
    pub fn log_id(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let snap = self.snapshot()?;
        let state = snap.txn.open_table(STATE).ctx("opening state")?;
        Ok(state
            .get(LOG_ID_KEY)
            .ctx("reading log id")?
            .map(|v| v.value().to_vec()))
    }
}

// One room's messages in `lo..=hi` to `emit`. `staged_seqs`, when given,
// are where the room's staged messages are (export_all found them all at once).
fn export_one<E: From<StoreError>>(
    chunks: &impl Chunks,
    staged: &impl Staged,
    st: &RoomState,
    lo: u64,
    hi: u64,
    staged_seqs: Option<&[u64]>,
    emit: &mut impl FnMut(&StoredMessage) -> Result<(), E>,
) -> Result<(), E> {
    // With the staged positions known, the range walk need only do chunks.
    let folded_only;
    let walk = match staged_seqs {
        Some(_) => {
            folded_only = RoomState {
                staged: [0, 0],
                ..st.clone()
            };
            &folded_only
        }
        None => st,
    };
    let mut failed = None;
    for_range(chunks, staged, walk, lo, hi, |r| {
        match emit(&message(st, r)) {
            Ok(()) => Ok(true),
            Err(e) => {
                failed = Some(e);
                Ok(false)
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let b = bucket(st.id);
    for &seq in staged_seqs.unwrap_or_default() {
        let Some(value) = staged.get((b, seq)).ctx("reading staged messages")? else {
            continue;
        };
        let Some((_, ts, bytes)) = staged_entry(value.value()) else {
            continue;
        };
        if (lo.max(st.floor)..=hi).contains(&ts) {
            emit(&message(st, &staged_record(st, ts, bytes)?))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::change::{Change, PurgeSelection};
    use crate::store::fold::fold_step;
    use crate::store::testutil::*;

    const ROOM: &str = "dm:A_B";

    // Where the fixture's messages are when a test reads them.
    #[derive(Debug, Clone, Copy)]
    enum Layout {
        Staged,
        Folded,
        // Folded up to ts 50, the rest staged.
        Half,
        // Half, plus a purge below ts 5 that no sweep has deleted yet.
        Unswept,
    }

    const LAYOUTS: [Layout; 4] = [
        Layout::Staged,
        Layout::Folded,
        Layout::Half,
        Layout::Unswept,
    ];

    // ROOM holds ts 10, 20, ..., 100, with 19 other rooms around it (some
    // in its bucket of `staged`), whose messages must never leak in.
    fn fixture(layout: Layout) -> (tempfile::TempDir, Store) {
        let (dir, store) = tmp_store();
        let others: Vec<String> = (0..19).map(|i| format!("dm:A_{i:02}")).collect();
        let mut changes = Vec::new();
        if matches!(layout, Layout::Unswept) {
            changes.push(Change::Message(msg(ROOM, "A", "B", "purged", 1)));
        }
        for ts in (10..=100).step_by(10) {
            changes.push(Change::Message(msg(ROOM, "A", "B", &format!("m{ts}"), ts)));
            for other in &others {
                changes.push(Change::Message(msg(other, "A", "B", "x", ts + 1)));
            }
            if ts == 50 && !matches!(layout, Layout::Staged) {
                stage_all(&store, changes.drain(..));
                fold_all(&store);
            }
        }
        stage_all(&store, changes);
        if matches!(layout, Layout::Folded) {
            fold_all(&store);
        }
        if matches!(layout, Layout::Unswept) {
            // Purged through a batch: the sweep Store::apply would run does not.
            let purge = PurgeSelection::Room {
                room: ROOM.into(),
                before: Some(5),
            };
            stage_all(&store, [Change::Purge(purge)]);
        }
        (dir, store)
    }

    fn ts(
        store: &Store,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        max_ts: Option<u64>,
    ) -> Vec<u64> {
        let q = HistoryQuery {
            before,
            after,
            limit,
            max_ts,
        };
        let page = store.history_page(ROOM, &q).unwrap();
        page.messages.iter().map(|m| m.ts).collect()
    }

    #[test]
    fn history_paging() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let none: Vec<u64> = Vec::new();
            // neither: the newest `limit`
            assert_eq!(ts(&s, None, None, 3, None), [80, 90, 100], "{layout:?}");
            assert_eq!(ts(&s, None, None, 50, None).len(), 10);
            // only before: the newest `limit` older than it (exclusive)
            assert_eq!(ts(&s, Some(50), None, 2, None), [30, 40]);
            assert_eq!(ts(&s, Some(70), None, 3, None), [40, 50, 60]);
            assert_eq!(ts(&s, Some(50), None, 10, None), [10, 20, 30, 40]);
            assert_eq!(ts(&s, Some(10), None, 10, None), none);
            // only after: the oldest `limit` newer than it (exclusive)
            assert_eq!(ts(&s, None, Some(50), 2, None), [60, 70]);
            assert_eq!(ts(&s, None, Some(0), 2, None), [10, 20], "{layout:?}");
            assert_eq!(ts(&s, None, Some(30), 3, None), [40, 50, 60]);
            assert_eq!(ts(&s, None, Some(100), 5, None), none);
            // both: the oldest `limit` strictly between
            assert_eq!(ts(&s, Some(80), Some(20), 3, None), [30, 40, 50]);
            assert_eq!(ts(&s, Some(30), Some(20), 3, None), none);
            assert_eq!(ts(&s, Some(20), Some(30), 3, None), none);
            // max_ts hides newer messages (inclusive)
            assert_eq!(ts(&s, None, None, 2, Some(65)), [50, 60]);
            assert_eq!(ts(&s, None, None, 2, Some(60)), [50, 60]);
            assert_eq!(ts(&s, None, Some(40), 10, Some(65)), [50, 60]);
            assert_eq!(ts(&s, Some(90), None, 2, Some(45)), [30, 40]);
            // degenerate bounds
            assert_eq!(ts(&s, None, None, 0, None), none);
            assert_eq!(ts(&s, Some(0), None, 5, None), none);
            assert_eq!(ts(&s, None, Some(u64::MAX), 5, None), none);
        }
    }

    #[test]
    fn history_returns_full_messages_and_unknown_room_is_empty() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let q = HistoryQuery {
                limit: 1,
                ..Default::default()
            };
            let page = s.history_page(ROOM, &q).unwrap();
            assert_eq!(
                page.messages,
                [StoredMessage {
                    room: ROOM.into(),
                    ts: 100,
                    id: "jxKCSoWK6t4p8vojAAAD".into(),
                    from: "A".into(),
                    to: "B".into(),
                    text: "m100".into(),
                    time: "01/01/1970, 12:00:00 am".into(),
                }]
            );
            assert_eq!(page.applied_seq, s.applied_seq().unwrap());
            assert!(s.history_page("dm:X_Y", &q).unwrap().messages.is_empty());
        }
    }

    #[test]
    fn export_room_streams_in_order_with_inclusive_bounds() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let mut seen = Vec::new();
            let n = s
                .export_room::<StoreError>(ROOM, Some(20), Some(40), |m| {
                    seen.push((m.ts, m.text.clone()));
                    Ok(())
                })
                .unwrap();
            assert_eq!(n, 3);
            assert_eq!(
                seen,
                [(20, "m20".into()), (30, "m30".into()), (40, "m40".into())]
            );
            let all = s
                .export_room::<StoreError>(ROOM, None, None, |_| Ok(()))
                .unwrap();
            assert_eq!(all, 10, "{layout:?}");
            assert_eq!(
                s.export_room::<StoreError>(ROOM, Some(50), Some(40), |_| Ok(()))
                    .unwrap(),
                0
            );
        }
    }

    #[derive(Debug)]
    enum StopOr {
        Stop,
        Store,
    }
    impl From<StoreError> for StopOr {
        fn from(_: StoreError) -> Self {
            StopOr::Store
        }
    }

    #[test]
    fn an_export_callback_error_stops_the_stream() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let mut calls = 0;
            let r = s.export_all(|_| {
                calls += 1;
                if calls == 3 {
                    Err(StopOr::Stop)
                } else {
                    Ok(())
                }
            });
            assert!(matches!(r, Err(StopOr::Stop)));
            assert_eq!(calls, 3);
        }
    }

    #[test]
    fn export_all_is_rooms_in_byte_order_each_oldest_first() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let mut keys = Vec::new();
            let n = s
                .export_all::<StoreError>(|m| {
                    keys.push((m.room.clone(), m.ts));
                    Ok(())
                })
                .unwrap();
            assert_eq!(n, 200, "{layout:?}");
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
            assert_eq!(keys[0], ("dm:A_00".into(), 11));
            let rooms = s.rooms().unwrap();
            assert_eq!(rooms.len(), 20);
            assert!(rooms.is_sorted());
        }
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        for layout in [Layout::Staged, Layout::Folded] {
            let (_dir, s) = fixture(layout);
            // Flip bytes in the middle of the room's stored values.
            let txn = s.db().unwrap().begin_write().unwrap();
            {
                let mut staged = txn.open_table(STAGED).unwrap();
                let mut chunks = txn.open_table(CHUNKS).unwrap();
                let damage = |bytes: &[u8]| {
                    let mut bytes = bytes.to_vec();
                    let last = bytes.len() - 1;
                    bytes[last - 2] = 0xff;
                    bytes[last] = 0xff;
                    bytes
                };
                let keys: Vec<_> = staged
                    .iter()
                    .unwrap()
                    .map(|i| i.unwrap().0.value())
                    .collect();
                for key in keys {
                    let value = damage(staged.get(key).unwrap().unwrap().value());
                    staged.insert(key, value.as_slice()).unwrap();
                }
                let keys: Vec<_> = chunks
                    .iter()
                    .unwrap()
                    .map(|i| i.unwrap().0.value())
                    .collect();
                for key in keys {
                    let value = damage(chunks.get(key).unwrap().unwrap().value());
                    chunks.insert(key, value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            let q = HistoryQuery {
                limit: 50,
                ..Default::default()
            };
            assert!(matches!(
                s.history_page(ROOM, &q),
                Err(StoreError::CorruptMessage { room, .. }) if room == ROOM
            ));
            assert!(s.export_all::<StoreError>(|_| Ok(())).is_err());
            // Purging it needs no decoding of what goes.
            let purge = PurgeSelection::Room {
                room: ROOM.into(),
                before: None,
            };
            assert!(s.apply(Change::Purge(purge)).is_ok());
            assert!(s.history_page(ROOM, &q).unwrap().messages.is_empty());
        }
    }

    #[test]
    fn a_fold_step_leaves_every_message_readable_once() {
        let (_dir, s) = fixture(Layout::Staged);
        let all = |s: &Store| -> Vec<(String, u64)> {
            exported(s).into_iter().map(|m| (m.room, m.ts)).collect()
        };
        let before = all(&s);
        for b in 0..crate::store::schema::BUCKETS {
            while !fold_step(&s, b, 7).unwrap().bucket_empty {
                assert_eq!(all(&s), before);
                assert_eq!(ts(&s, None, None, 100, None).len(), 10);
            }
        }
        assert_eq!(all(&s), before);
    }
}
