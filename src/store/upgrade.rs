//! The in-place upgrade of a schema 1 or 2 file to the current schema, done once, in
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
use super::apply::Tables;
use super::chunk::{Builder, Sealed};
use super::clock::offset_of;
use super::error::DbContext;
use super::record::{RecordRef, Sid, Stamp};
use super::room::RoomState;
use super::schema::{self, LEGACY_META, NEXT_ROOM_KEY, write_u64};

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

/// Copies a schema `version` (1 or 2) file into the current tables inside
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
        let mut copier = Tables::open(txn)?;
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

// Writes sealed chunks of room `id`.
fn write_chunks(
    tables: &mut Tables<'_>,
    id: u32,
    sealed: &mut Vec<Sealed>,
) -> Result<(), StoreError> {
    for chunk in sealed.drain(..) {
        tables
            .chunks
            .insert((id, chunk.first_ts), chunk.bytes.as_slice())
            .ctx("writing chunk")?;
    }
    Ok(())
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
        copier: &mut Tables<'_>,
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
        write_chunks(copier, self.id, &mut self.sealed)
    }

    fn finish(mut self, copier: &mut Tables<'_>) -> Result<(), StoreError> {
        // A room whose every message went in a purge is not copied.
        let Some(mut st) = self.state.take() else {
            return Ok(());
        };
        if !self.builder.is_empty() {
            self.sealed.push(self.builder.seal());
        }
        write_chunks(copier, self.id, &mut self.sealed)?;
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
                .insert(
                    (user.as_bytes(), u64::MAX - st.newest_ts, st.name.as_bytes()),
                    (),
                )
                .ctx("writing inbox")?;
        }
        copier
            .oldest
            .insert((st.oldest_ts, st.id), ())
            .ctx("writing oldest")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use redb::ReadableDatabase;
    use serde_json::Value;

    use super::*;
    use crate::store::schema::{LEGACY_VERSION_KEY, STATE};
    use crate::store::testutil::{exported as everything, msg};
    use crate::store::{Change, DB_FILE_NAME, HistoryQuery, Outcome, Store, StoredMessage};

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    // A copy of the schema 2 fixture in a fresh data directory.
    fn schema2_copy() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("schema2.redb"), dir.path().join(DB_FILE_NAME)).unwrap();
        dir
    }

    fn expected() -> Vec<StoredMessage> {
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("schema2.json")).unwrap())
                .unwrap();
        let field = |m: &Value, name: &str| m[name].as_str().unwrap().to_owned();
        doc["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| StoredMessage {
                room: field(m, "room"),
                ts: m["ts"].as_u64().unwrap(),
                id: field(m, "id"),
                from: field(m, "from"),
                to: field(m, "to"),
                text: field(m, "text"),
                time: field(m, "time"),
            })
            .collect()
    }

    #[test]
    fn a_schema_2_file_reads_back_identically_after_the_upgrade() {
        let dir = schema2_copy();
        let want = expected();
        let store = Store::open(dir.path()).unwrap();
        // Every message, field for field: ts as they were, time strings
        // byte for byte (those no offset reproduces kept as strings).
        assert_eq!(everything(&store), want);
        let mut rooms: Vec<String> = want.iter().map(|m| m.room.clone()).collect();
        rooms.dedup();
        assert_eq!(store.rooms().unwrap(), rooms);
        let all = HistoryQuery {
            limit: 1000,
            ..Default::default()
        };
        for room in &rooms {
            let page = store.history_page(room, &all).unwrap();
            let of_room: Vec<_> = want.iter().filter(|m| &m.room == room).cloned().collect();
            assert_eq!(page.messages, of_room, "{room}");
            assert_eq!(page.applied_seq, 0);
        }
        // Everything before the upgrade counts as read.
        let inbox = store.conversations("Dummy-1", None, None, 10).unwrap();
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].unread, 0);
        assert_eq!(
            inbox[0].last,
            *want
                .iter()
                .rfind(|m| m.room == "dm:Dummy-1_Dummy-2")
                .unwrap()
        );

        // The old tables are gone; the file reopens as schema 3, unchanged.
        drop(store);
        {
            let db = redb::Database::open(dir.path().join(DB_FILE_NAME)).unwrap();
            let txn = db.begin_read().unwrap();
            assert!(txn.open_table(LEGACY_MESSAGES).is_err());
            assert!(txn.open_table(LEGACY_RECENT).is_err());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(everything(&store), want);
        // New messages follow the old ones in their room.
        let newest = want
            .iter()
            .filter(|m| m.room == "dm:A_B")
            .map(|m| m.ts)
            .max()
            .unwrap();
        let Outcome::Stored(m) = store
            .apply(Change::Message(msg("dm:A_B", "B", "A", "after", 1)))
            .unwrap()
        else {
            panic!("not stored")
        };
        assert_eq!(m.ts, newest + 1);
        let inbox = store.conversations("A", None, None, 10).unwrap();
        let unread: Vec<_> = inbox.iter().map(|c| (c.room.as_str(), c.unread)).collect();
        assert_eq!(unread, [("r", 0), ("dm:A_B", 1)]);
    }

    #[test]
    fn a_schema_1_file_is_upgraded_too() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = redb::Database::create(dir.path().join(DB_FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            let mut messages = txn.open_table(LEGACY_MESSAGES).unwrap();
            for (room, ts, text) in [
                ("dm:A_B", 5, "one"),
                ("dm:A_B", 9, "two"),
                ("dm:B_C", 7, "three"),
            ] {
                let mut bytes = vec![LEGACY_RECORD_VERSION];
                let fields = ("sock", "B", "A", text, "01/01/1970, 12:00:00 am");
                bincode::serde::encode_into_std_write(
                    fields,
                    &mut bytes,
                    bincode::config::standard(),
                )
                .unwrap();
                messages.insert((room, ts), bytes.as_slice()).unwrap();
            }
            drop(messages);
            let mut meta = txn.open_table(LEGACY_META).unwrap();
            meta.insert(LEGACY_VERSION_KEY, 1).unwrap();
            meta.insert("last_ts", 9).unwrap();
            drop(meta);
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let got: Vec<(String, u64, String, String)> = everything(&store)
            .into_iter()
            .map(|m| (m.room, m.ts, m.from, m.text))
            .collect();
        assert_eq!(
            got,
            [
                ("dm:A_B".into(), 5, "B".into(), "one".into()),
                ("dm:A_B".into(), 9, "B".into(), "two".into()),
                ("dm:B_C".into(), 7, "B".into(), "three".into()),
            ]
        );
    }

    #[test]
    fn a_failed_upgrade_leaves_the_file_as_it_was() {
        let dir = schema2_copy();
        // Damage one record of `messages`: the upgrade stops at it.
        {
            let db = redb::Database::open(dir.path().join(DB_FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            let mut messages = txn.open_table(LEGACY_MESSAGES).unwrap();
            let ts = expected()
                .iter()
                .find(|m| m.room == "dm:Zed_alice")
                .unwrap()
                .ts;
            messages
                .insert(
                    ("dm:Zed_alice", ts),
                    [LEGACY_RECORD_VERSION, 0xfd].as_slice(),
                )
                .unwrap();
            drop(messages);
            txn.commit().unwrap();
        }
        match Store::open(dir.path()) {
            Err(StoreError::CorruptMessage { room, .. }) => assert_eq!(room, "dm:Zed_alice"),
            other => panic!("expected CorruptMessage, got {:?}", other.err()),
        }
        // Still schema 2: no state table, the marker still says 2.
        let db = redb::Database::open(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(STATE).is_err());
        let meta = txn.open_table(LEGACY_META).unwrap();
        let version = ReadableTable::get(&meta, LEGACY_VERSION_KEY)
            .unwrap()
            .unwrap()
            .value();
        assert_eq!(version, 2);
    }
}
