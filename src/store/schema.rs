//! Table layout (schema 4) and the schema check done at open.
//!
//! | table      | key                          | value                         |
//! |------------|------------------------------|-------------------------------|
//! | `state`    | name                         | `schema`, `applied_seq`, `next_room` (u64 LE), `log_id`; `probe` only during a write probe |
//! | `room_ids` | room name                    | room id (u32)                 |
//! | `rooms`    | room id                      | [`RoomState`](super::room::RoomState) |
//! | `chunks`   | (room id, first ts)          | a chunk of the room's messages (`chunk.rs`) |
//! | `staged`   | (bucket of the room, seq)    | room id, ts, record: messages not yet in chunks |
//! | `inbox`    | (user, MAX - last ts, room)  | (): each user's rooms, newest first, but see `relist` |
//! | `relist`   | (user, room)                 | last ts in the user's `inbox` key for the room (0: none): rooms whose key is behind (`relist.rs`) |
//! | `cids`     | (user, cid)                  | (room id, ts, seq) of the message |
//! | `eids`     | entry id (cluster)           | (seq, room id, ts) it produced  |
//! | `eid_log`  | seq                          | entry id: the eids to forget, oldest first |
//! | `oldest`   | (oldest ts, room id)         | (): which rooms a purge of everything before a ts touches |
//! | `sweep`    | room id                      | (): rooms whose purged messages are still on disk |
//! | `meta`     | "schema_version" (`&str`)    | 3 or more: what chatd 0.1 (schema 1 and 2) reads, so it refuses the file |
//!
//! Schema 4 adds `relist` to schema 3: an older build would take a key
//! that is behind for the truth, so it refuses the file. A schema 3 file
//! becomes schema 4 in place when opened (an empty `relist`).
//!
//! No table of schema 4 has a `&str` in its types: redb decodes `&str`
//! with `unwrap`, so a damaged page would panic the server; names are
//! `&[u8]`, and every value the store decodes is validated. The one
//! exception is the legacy `meta` marker, which this build writes once and
//! reads only when the file has no `state` table (schema 1 or 2).
//!
//! A message is applied into `staged`, appended at the tail of one of
//! [`BUCKETS`] ranges however many rooms a commit touches; between commits
//! the applier folds a bucket at a time into `chunks` (`fold.rs`), so a
//! room's history is its chunks followed by its staged messages.

use std::path::Path;

use redb::{ReadableTable, TableDefinition, TableError, TableHandle, WriteTransaction};

use super::StoreError;
use super::error::DbContext;

/// Named values of the store (see the module doc).
pub(crate) const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
/// Room name → room id.
pub(crate) const ROOM_IDS: TableDefinition<&[u8], u32> = TableDefinition::new("room_ids");
/// Room id → encoded room state.
pub(crate) const ROOMS: TableDefinition<u32, &[u8]> = TableDefinition::new("rooms");
/// (room id, ts of the first message) → chunk.
pub(crate) const CHUNKS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("chunks");
/// (bucket, seq) → room id (u32 LE), ts (u64 LE), record.
pub(crate) const STAGED: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("staged");
/// (user, u64::MAX - ts of the room's newest message, room name) → ().
pub(crate) const INBOX: TableDefinition<(&[u8], u64, &[u8]), ()> = TableDefinition::new("inbox");
/// (user, room name) → the ts in the user's `inbox` key for the room (0:
/// none) while that key is behind the room's newest message.
pub(crate) const RELIST: TableDefinition<(&[u8], &[u8]), u64> = TableDefinition::new("relist");
/// A `cids` key: (sender, cid).
pub(crate) type CidKey = (&'static [u8], &'static [u8]);

/// A `cids` value: (room id, ts, seq) of the message that carries the cid.
pub(crate) type CidValue = (u32, u64, u64);

/// The `cids` table as a write transaction opens it.
pub(crate) type CidTable<'t> = redb::Table<'t, CidKey, CidValue>;

/// (sender, cid) → (room id, ts, seq) of the message that carries it.
pub(crate) const CIDS: TableDefinition<CidKey, CidValue> = TableDefinition::new("cids");
/// Entry id → (seq, room id, ts) of the message it produced.
pub(crate) const EIDS: TableDefinition<[u8; 16], (u64, u32, u64)> = TableDefinition::new("eids");
/// seq → entry id applied there, for pruning `eids` by log position.
pub(crate) const EID_LOG: TableDefinition<u64, [u8; 16]> = TableDefinition::new("eid_log");
/// (ts of the room's oldest stored message, room id) → ().
pub(crate) const OLDEST: TableDefinition<(u64, u32), ()> = TableDefinition::new("oldest");
/// Room id → (): purged messages still to delete from disk.
pub(crate) const SWEEP: TableDefinition<u32, ()> = TableDefinition::new("sweep");
/// Schema 1 and 2's named counters; now only the version marker.
pub(crate) const LEGACY_META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `state` key of the schema version.
pub(crate) const SCHEMA_KEY: &[u8] = b"schema";
/// `state` key of the last applied log position.
pub(crate) const APPLIED_SEQ_KEY: &[u8] = b"applied_seq";
/// `state` key of the id the next new room gets.
pub(crate) const NEXT_ROOM_KEY: &[u8] = b"next_room";
/// `state` key of the identity of the log the store follows (cluster).
pub(crate) const LOG_ID_KEY: &[u8] = b"log_id";
/// `state` key the write probe after a storage fault writes and removes.
pub(crate) const PROBE_KEY: &[u8] = b"probe";
/// `meta` key of the schema version (schema 1 and 2, and the marker).
pub(crate) const LEGACY_VERSION_KEY: &str = "schema_version";

/// How many ranges `staged` is split into: a commit writes at most this
/// many tail pages, and a history read scans 1/BUCKETS of the table.
pub(crate) const BUCKETS: u8 = 16;

/// The bucket of a room's messages in `staged`.
pub(crate) fn bucket(room_id: u32) -> u8 {
    (room_id % u32::from(BUCKETS)) as u8
}

/// The schema version this build writes and reads. Version 3 keeps
/// messages in chunks, with room states, read cursors, cids and the
/// applied log position; version 4 (this one) adds `relist`. Versions 1
/// and 2 are upgraded in place when opened (`upgrade.rs`), version 3 by
/// [`check_or_init`].
pub const SCHEMA_VERSION: u64 = 4;

/// The last version before `relist`: upgraded by creating it.
const BEFORE_RELIST: u64 = 3;

/// The oldest version this build upgrades from.
pub(crate) const UPGRADES_FROM: u64 = 1;

/// What the schema check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// A current file (or a fresh one, now initialised; or a schema 3
    /// one, now upgraded).
    Current,
    /// A file of an older schema this build upgrades from.
    Legacy(u64),
}

/// Checks the schema version (writing it into a fresh file, and upgrading
/// a schema 3 one); on success every current table exists, so readers never see "table does not
/// exist". A legacy file is left for the caller to upgrade.
pub(crate) fn check_or_init(txn: &WriteTransaction, path: &Path) -> Result<Found, StoreError> {
    let not_chatd = |reason: String| StoreError::NotChatd {
        path: path.to_owned(),
        reason,
    };
    let mut names = Vec::new();
    for table in txn.list_tables().ctx("listing tables")? {
        names.push(table.name().to_owned());
    }
    let has_multimap = txn
        .list_multimap_tables()
        .ctx("listing tables")?
        .next()
        .is_some();
    let has = |name: &str| names.iter().any(|n| n == name);
    if has(STATE.name()) {
        let version = read_u64(&open(txn, STATE, &not_chatd)?, SCHEMA_KEY)?;
        match version {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(SCHEMA_VERSION) => {}
            Some(BEFORE_RELIST) => {
                let mut state = open(txn, STATE, &not_chatd)?;
                write_u64(&mut state, SCHEMA_KEY, SCHEMA_VERSION)?;
            }
            Some(v) => {
                return Err(StoreError::OlderSchema {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            None => return Err(not_chatd("no schema version in state".into())),
        }
    } else if has(LEGACY_META.name()) {
        let meta = open(txn, LEGACY_META, &not_chatd)?;
        let version = meta
            .get(LEGACY_VERSION_KEY)
            .ctx("reading schema version")?
            .map(|v| v.value());
        return match version {
            None => Err(not_chatd("no schema version record".into())),
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::NewerSchema {
                found: v,
                supported: SCHEMA_VERSION,
            }),
            Some(v) if (UPGRADES_FROM..SCHEMA_VERSION).contains(&v) => Ok(Found::Legacy(v)),
            Some(v) if v < UPGRADES_FROM => Err(StoreError::OlderSchema {
                found: v,
                supported: SCHEMA_VERSION,
            }),
            Some(_) => Err(not_chatd("schema 3+ marker without a state table".into())),
        };
    } else if !names.is_empty() || has_multimap {
        return Err(not_chatd("no schema version record".into()));
    } else {
        init(txn)?;
    }
    create_tables(txn, &not_chatd)?;
    Ok(Found::Current)
}

/// Writes what a fresh file starts with: the version in `state`
/// and the legacy marker.
pub(crate) fn init(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut state = txn.open_table(STATE).ctx("opening state table")?;
    write_u64(&mut state, SCHEMA_KEY, SCHEMA_VERSION)?;
    write_u64(&mut state, APPLIED_SEQ_KEY, 0)?;
    write_u64(&mut state, NEXT_ROOM_KEY, 0)?;
    let mut meta = txn.open_table(LEGACY_META).ctx("opening meta table")?;
    meta.insert(LEGACY_VERSION_KEY, SCHEMA_VERSION)
        .ctx("writing schema version")?;
    Ok(())
}

/// Tells whether the disk takes writes again: durably writes
/// [`PROBE_BYTES`] under a key of its own, then removes them. Big enough
/// that pages freed inside the file cannot hold it all, so a disk that is
/// still full fails it (a one-page probe passed there, and the next batch
/// failed again).
pub(crate) fn probe(db: &redb::Database) -> Result<(), StoreError> {
    let write = |value: Option<&[u8]>| -> Result<(), StoreError> {
        let txn = db.begin_write().ctx("starting a write probe")?;
        {
            let mut state = txn.open_table(STATE).ctx("opening state table")?;
            match value {
                Some(value) => state.insert(PROBE_KEY, value).map(drop),
                None => state.remove(PROBE_KEY).map(drop),
            }
            .ctx("writing a write probe")?;
        }
        txn.commit().ctx("committing a write probe")
    };
    write(Some(&vec![0x5a; PROBE_BYTES]))?;
    write(None)
}

/// Size of the write [`probe`] makes.
pub(crate) const PROBE_BYTES: usize = 1024 * 1024;

/// Creates every current table that does not exist yet.
pub(crate) fn create_tables(
    txn: &WriteTransaction,
    not_chatd: &impl Fn(String) -> StoreError,
) -> Result<(), StoreError> {
    open(txn, STATE, not_chatd)?;
    open(txn, ROOM_IDS, not_chatd)?;
    open(txn, ROOMS, not_chatd)?;
    open(txn, CHUNKS, not_chatd)?;
    open(txn, STAGED, not_chatd)?;
    open(txn, INBOX, not_chatd)?;
    open(txn, RELIST, not_chatd)?;
    open(txn, CIDS, not_chatd)?;
    open(txn, EIDS, not_chatd)?;
    open(txn, EID_LOG, not_chatd)?;
    open(txn, OLDEST, not_chatd)?;
    open(txn, SWEEP, not_chatd)?;
    Ok(())
}

// Opens (creating) a table; one of another type or kind means the file is
// not chatd's.
fn open<'t, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &'t WriteTransaction,
    table: TableDefinition<K, V>,
    not_chatd: &impl Fn(String) -> StoreError,
) -> Result<redb::Table<'t, K, V>, StoreError> {
    match txn.open_table(table) {
        Ok(t) => Ok(t),
        Err(e @ (TableError::TableTypeMismatch { .. } | TableError::TableIsMultimap(_))) => {
            Err(not_chatd(e.to_string()))
        }
        Err(e) => Err(e).ctx("opening tables"),
    }
}

/// Reads a u64 `state` value (absent: None).
pub(crate) fn read_u64(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<u64>, StoreError> {
    let Some(value) = table.get(key).ctx("reading state")? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value.value().try_into().map_err(|_| StoreError::Corrupt {
        what: "state value",
        reason: format!("{} bytes for a u64", value.value().len()),
    })?;
    Ok(Some(u64::from_le_bytes(bytes)))
}

/// Writes a u64 `state` value.
pub(crate) fn write_u64(
    table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    key: &[u8],
    value: u64,
) -> Result<(), StoreError> {
    table
        .insert(key, value.to_le_bytes().as_slice())
        .ctx("writing state")?;
    Ok(())
}
