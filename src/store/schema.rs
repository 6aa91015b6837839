//! Table layout and the schema-version check done at open.
//!
//! `messages` is keyed by `(room, ts)` so one room's history is one
//! contiguous, ts-ordered key range. New messages mostly go to `recent`
//! first, keyed by ts within a few buckets of rooms, and are folded into
//! `messages` in large batches (see `fold.rs`). A room's ts in `recent` are above its ts in `messages`
//! (apart from copies a fold has not yet deleted): the writer assigns
//! increasing ts, lets a room skip `recent` only while it has nothing
//! there, and a fold moves a room whole, so a room's history is its
//! `messages` range followed by its `recent` entries. `meta` holds small
//! named counters.

use std::path::Path;

use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};

use super::StoreError;
use super::error::DbContext;

/// Messages: `(room, ts)` -> record bytes (see `record.rs`).
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// Messages not yet folded: `(bucket, ts)` -> `(room, record bytes)`.
/// Appending by ts keeps a commit's writes on the last page of each of
/// [`BUCKETS`] tails however many rooms the commit touches, and a reader
/// looking for one room's messages scans only its room's bucket.
pub(crate) const RECENT: TableDefinition<RecentKey, (&str, &[u8])> = TableDefinition::new("recent");

/// A `recent` key: the room's [`bucket`] and the message's ts.
pub(crate) type RecentKey = (u8, u64);

const BUCKET_BITS: u32 = 4;

/// How many buckets `recent` is split into: a commit writes at most this
/// many tail pages, and a history read scans 1/BUCKETS of the table.
pub(crate) const BUCKETS: u8 = 1 << BUCKET_BITS;

/// The bucket of a room's messages in `recent`. Part of the file format:
/// FNV-1a, which never changes, rather than std's hasher, which may. Its
/// top bits, since its low bits hardly mix similar names.
pub(crate) fn bucket(room: &str) -> u8 {
    let hash = room.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash >> (64 - BUCKET_BITS)) as u8
}

/// Named u64 values: [`SCHEMA_VERSION_KEY`] and [`LAST_TS_KEY`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Meta key of the schema version.
pub(crate) const SCHEMA_VERSION_KEY: &str = "schema_version";

/// Meta key of the highest ts ever assigned; survives purges so ts never repeats.
pub(crate) const LAST_TS_KEY: &str = "last_ts";

/// The schema version this build writes and reads. Version 2 added
/// `recent`; a version 1 file is upgraded in place when opened (an older
/// chatd then refuses it, rather than miss the messages in `recent`).
pub const SCHEMA_VERSION: u64 = 2;

// The oldest version this build upgrades from.
const UPGRADES_FROM: u64 = 1;

/// Checks (or, on a fresh file, writes) the schema version, upgrades a
/// version 1 file, and makes sure every table exists so readers never see
/// "table does not exist".
pub(crate) fn check_or_init(txn: &WriteTransaction, path: &Path) -> Result<(), StoreError> {
    let not_chatd = |reason: String| StoreError::NotChatd {
        path: path.to_owned(),
        reason,
    };
    let had_tables = txn.list_tables().ctx("listing tables")?.next().is_some()
        || txn
            .list_multimap_tables()
            .ctx("listing tables")?
            .next()
            .is_some();

    let mut meta = match txn.open_table(META) {
        Ok(t) => t,
        // Someone else's table called "meta": not ours.
        Err(e @ (TableError::TableTypeMismatch { .. } | TableError::TableIsMultimap(_))) => {
            return Err(not_chatd(e.to_string()));
        }
        Err(e) => return Err(e).ctx("opening meta table"),
    };
    let found = meta
        .get(SCHEMA_VERSION_KEY)
        .ctx("reading schema version")?
        .map(|v| v.value());
    match found {
        None if had_tables => return Err(not_chatd("no schema version record".into())),
        None => {
            meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                .ctx("writing schema version")?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::NewerSchema {
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        Some(v) if (UPGRADES_FROM..SCHEMA_VERSION).contains(&v) => {
            // Version 2 only added `recent`, which is created below.
            meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                .ctx("writing schema version")?;
        }
        Some(v) if v < SCHEMA_VERSION => {
            return Err(StoreError::OlderSchema {
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        Some(_) => {}
    }
    drop(meta);
    let opened = txn
        .open_table(MESSAGES)
        .map(drop)
        .and_then(|()| txn.open_table(RECENT).map(drop));
    match opened {
        Ok(()) => Ok(()),
        Err(e @ (TableError::TableTypeMismatch { .. } | TableError::TableIsMultimap(_))) => {
            Err(not_chatd(e.to_string()))
        }
        Err(e) => Err(e).ctx("opening message tables"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_fixed_and_spread_similar_room_names() {
        // Stored on disk: these must never change.
        assert_eq!(bucket("dm:Dummy-1_Dummy-2"), 8);
        assert_eq!(bucket("dm:A_B"), 6);
        assert_eq!(bucket(""), 12);
        let mut counts = [0u32; BUCKETS as usize];
        for i in 0..1600 {
            counts[usize::from(bucket(&format!("dm:Dummy-{i}_Dummy-{}", i + 1)))] += 1;
        }
        // 100 each on average; a weak hash put everything in 4 buckets.
        assert!(counts.iter().all(|&n| (50..200).contains(&n)), "{counts:?}");
    }
}
