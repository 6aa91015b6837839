//! The in-place upgrade of a schema 1 or 2 file to schema 3, done once, in
//! the transaction that opens the file (so a crash leaves it as it was).
//!
//! Schema 2 kept one key per message, `messages: (room, ts) -> record`
//! (a version byte, then bincode of id, from, to, text, time), with newer
//! messages in `recent: (bucket, ts) -> (room, record)` until folded; its
//! readers took a room's `recent` entries only above its last ts in
//! `messages` (older ones are copies a fold had not yet deleted). Schema 1
//! had no `recent`.
//!
//! Every room is copied, in byte order, into chunks; its ts stay as they
//! were. A `time` string is kept as the UTC offset that reproduces it byte
//! for byte, or, when none does (a string some other code wrote), as the
//! string itself. Messages from before the upgrade count as read: both
//! users' cursors start at the room's newest message.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::Deserialize;

use super::StoreError;
use super::chunk::{Builder, Sealed};
use super::clock::offset_of;
use super::error::DbContext;
use super::record::{RecordRef, Sid, Stamp};
use super::room::RoomState;
use super::schema::{
    self, CHUNKS, INBOX, LEGACY_META, NEXT_ROOM_KEY, OLDEST, ROOM_IDS, ROOMS, STATE, write_u64,
};

/// Schema 1 and 2: `(room, ts)` → record.
const LEGACY_MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// Schema 2: `(bucket, ts)` → `(room, record)`.
const LEGACY_RECENT: TableDefinition<(u8, u64), (&str, &[u8])> = TableDefinition::new("recent");

/// Schema 2's record format byte.
const LEGACY_RECORD_VERSION: u8 = 1;

/// What an upgrade copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Upgraded {
    /// Messages copied.
    pub messages: u64,
    /// Rooms copied.
    pub rooms: u64,
    /// Messages whose `time` no UTC offset reproduces, kept as strings.
    pub literal_times: u64,
}

// A schema 2 record; field order is its format.
#[derive(Deserialize)]
struct LegacyRecord<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    from: &'a str,
    #[serde(borrow)]
    to: &'a str,
    #[serde(borrow)]
    text: &'a str,
    #[serde(borrow)]
    time: &'a str,
}

fn decode_legacy<'a>(room: &str, ts: u64, bytes: &'a [u8]) -> Result<LegacyRecord<'a>, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptMessage {
        room: room.to_owned(),
        ts,
        reason,
    };
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    if version != LEGACY_RECORD_VERSION {
        return Err(corrupt(format!("unknown record format version {version}")));
    }
    let (record, used): (LegacyRecord<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(body, bincode::config::standard())
            .map_err(|e| corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(corrupt(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(record)
}

/// Copies a schema `version` (1 or 2) file into schema 3 tables inside
/// `txn`, then drops the old tables.
pub(crate) fn from_legacy(
    txn: &WriteTransaction,
    version: u64,
    path: &Path,
) -> Result<Upgraded, StoreError> {
    let not_chatd = |reason: String| StoreError::NotChatd {
        path: path.to_owned(),
        reason,
    };
    schema::init(txn)?;
    schema::create_tables(txn, &not_chatd)?;
    let mut upgraded = Upgraded::default();
    {
        let messages = txn
            .open_table(LEGACY_MESSAGES)
            .map_err(|e| not_chatd(e.to_string()))?;
        // Schema 2's newer messages, by room (a bounded table: the fold
        // kept it near 16k messages).
        let mut newer: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        if version >= 2 {
            let recent = txn
                .open_table(LEGACY_RECENT)
                .map_err(|e| not_chatd(e.to_string()))?;
            for item in recent.iter().ctx("reading recent messages")? {
                let (key, value) = item.ctx("reading recent messages")?;
                let (room, bytes) = value.value();
                newer
                    .entry(room.to_owned())
                    .or_default()
                    .push((key.value().1, bytes.to_vec()));
            }
        }
        let mut names: BTreeSet<String> = newer.keys().cloned().collect();
        let mut last: Option<String> = None;
        while let Some(room) = next_room(&messages, last.as_deref())? {
            names.insert(room.clone());
            last = Some(room);
        }
        let mut copier = Copier::open(txn)?;
        for (id, name) in (0u32..).zip(&names) {
            let mut room = RoomCopy::new(id, name);
            let mut folded_upto = None;
            for item in messages
                .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                .ctx("reading messages")?
            {
                let (key, value) = item.ctx("reading messages")?;
                let ts = key.value().1;
                room.push(ts, value.value(), &mut copier, &mut upgraded)?;
                folded_upto = Some(ts);
            }
            // A room's `recent` entries up to its last ts in `messages`
            // are copies of folded ones.
            let mut waiting = newer.remove(name).unwrap_or_default();
            waiting.sort_by_key(|&(ts, _)| ts);
            for (ts, bytes) in waiting {
                if folded_upto.is_none_or(|upto| ts > upto) {
                    room.push(ts, &bytes, &mut copier, &mut upgraded)?;
                }
            }
            room.finish(&mut copier)?;
            upgraded.rooms += 1;
        }
        write_u64(&mut copier.state, NEXT_ROOM_KEY, upgraded.rooms)?;
    }
    txn.delete_table(LEGACY_MESSAGES)
        .ctx("dropping the old messages table")?;
    if version >= 2 {
        txn.delete_table(LEGACY_RECENT)
            .ctx("dropping the old recent table")?;
    }
    txn.open_table(LEGACY_META)
        .ctx("opening meta table")?
        .remove("last_ts")
        .ctx("dropping last_ts")?;
    Ok(upgraded)
}

/// The first room after `after` (or the first at all) in `messages`.
fn next_room(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    after: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let entry = match after {
        None => table.first().ctx("listing rooms")?,
        Some(room) => table
            .range::<(&str, u64)>((Bound::Excluded((room, u64::MAX)), Bound::Unbounded))
            .ctx("listing rooms")?
            .next()
            .transpose()
            .ctx("listing rooms")?,
    };
    Ok(entry.map(|(k, _)| k.value().0.to_owned()))
}

/// The schema 3 tables the copy writes.
struct Copier<'t> {
    state: redb::Table<'t, &'static [u8], &'static [u8]>,
    room_ids: redb::Table<'t, &'static [u8], u32>,
    rooms: redb::Table<'t, u32, &'static [u8]>,
    chunks: redb::Table<'t, (u32, u64), &'static [u8]>,
    inbox: redb::Table<'t, (&'static [u8], u64, &'static [u8]), ()>,
    oldest: redb::Table<'t, (u64, u32), ()>,
}

impl<'t> Copier<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Copier<'t>, StoreError> {
        Ok(Copier {
            state: txn.open_table(STATE).ctx("opening state")?,
            room_ids: txn.open_table(ROOM_IDS).ctx("opening room ids")?,
            rooms: txn.open_table(ROOMS).ctx("opening rooms")?,
            chunks: txn.open_table(CHUNKS).ctx("opening chunks")?,
            inbox: txn.open_table(INBOX).ctx("opening inbox")?,
            oldest: txn.open_table(OLDEST).ctx("opening oldest")?,
        })
    }

    fn write_chunks(&mut self, id: u32, sealed: &mut Vec<Sealed>) -> Result<(), StoreError> {
        for chunk in sealed.drain(..) {
            self.chunks
                .insert((id, chunk.first_ts), chunk.bytes.as_slice())
                .ctx("writing chunk")?;
        }
        Ok(())
    }
}

/// One room being copied, oldest message first.
struct RoomCopy<'n> {
    id: u32,
    name: &'n str,
    state: Option<RoomState>,
    builder: Builder,
    sealed: Vec<Sealed>,
}

impl<'n> RoomCopy<'n> {
    fn new(id: u32, name: &'n str) -> RoomCopy<'n> {
        RoomCopy {
            id,
            name,
            state: None,
            builder: Builder::new([0, 0]),
            sealed: Vec::new(),
        }
    }

    fn push(
        &mut self,
        ts: u64,
        bytes: &[u8],
        copier: &mut Copier<'_>,
        upgraded: &mut Upgraded,
    ) -> Result<(), StoreError> {
        let old = decode_legacy(self.name, ts, bytes)?;
        let st = self
            .state
            .get_or_insert_with(|| RoomState::new(self.id, self.name, old.from, old.to));
        let (side, names) = st.sender(old.from, old.to);
        let stamp = match offset_of(ts, old.time) {
            Some(offset_s) => Stamp::Clock {
                delta_s: 0,
                offset_s,
            },
            None => {
                upgraded.literal_times += 1;
                Stamp::Literal(old.time)
            }
        };
        let record = RecordRef {
            ts,
            side,
            stamp,
            sid: Sid::of(old.id),
            names: names.then_some((old.from, old.to)),
            cid: None,
            text: old.text,
        };
        self.builder.push(&record, &mut self.sealed);
        if st.oldest_ts == 0 {
            st.oldest_ts = ts;
        }
        st.newest_ts = ts;
        st.count[side] += 1;
        upgraded.messages += 1;
        copier.write_chunks(self.id, &mut self.sealed)
    }

    fn finish(mut self, copier: &mut Copier<'_>) -> Result<(), StoreError> {
        // A room whose every message went in a purge is not copied.
        let Some(mut st) = self.state.take() else {
            return Ok(());
        };
        if !self.builder.is_empty() {
            self.sealed.push(self.builder.seal());
        }
        copier.write_chunks(self.id, &mut self.sealed)?;
        // What was there before the upgrade counts as read.
        for side in 0..2 {
            st.cursor[side] = st.newest_ts;
            st.cursor_count[side] = st.count[1 - side];
        }
        copier
            .room_ids
            .insert(st.name.as_bytes(), st.id)
            .ctx("writing room id")?;
        copier
            .rooms
            .insert(st.id, st.encode().as_slice())
            .ctx("writing room state")?;
        for user in &st.users {
            copier
                .inbox
                .insert((user.as_bytes(), u64::MAX - st.newest_ts, st.name.as_bytes()), ())
                .ctx("writing inbox")?;
        }
        copier
            .oldest
            .insert((st.oldest_ts, st.id), ())
            .ctx("writing oldest")?;
        Ok(())
    }
}
