//! Folding: moving staged messages into their rooms' chunks.
//!
//! Every message is applied into `staged`, keyed by (bucket of its room,
//! log position), so a commit appends to at most [`BUCKETS`] tail pages
//! however many rooms it touches. Between commits the applier folds: a
//! step takes the oldest messages of one bucket (about [`STEP`]), appends
//! each room's to its last chunk (sealing full ones, see `chunk.rs`),
//! deletes them from `staged` and updates the rooms' states, all in one
//! transaction. A room's messages are in one bucket, and a step takes a
//! prefix of it, so a room's history is always its chunks followed by its
//! staged messages, and readers see every message exactly once at every
//! step.
//!
//! Steps skip the fsync: the applier's next commit makes them durable, and
//! a crash before it leaves the file as the last commit left it, with the
//! messages still staged; the next fold moves them again.
//!
//! Messages below a room's purge floor are dropped on the way (with their
//! cids), never brought back into chunks.

use std::collections::BTreeMap;

use redb::{ReadableTable, ReadableTableMetadata};

use super::apply::tail_builder;
use super::chunk::Sealed;
use super::error::DbContext;
use super::read::{room_state, staged_entry, staged_record};
use super::room::RoomState;
use super::schema::{BUCKETS, CHUNKS, CIDS, CidTable, ROOMS, STAGED};
use super::sweep::forget_cid;
use super::{Store, StoreError};

/// How many staged messages start a fold pass over every bucket. Readers
/// scan their room's bucket of `staged` for its newest messages, so this
/// also bounds that scan.
pub(crate) const FOLD_AT: u64 = 16384;

/// About how many messages one fold step moves at least: a few
/// milliseconds of work, which is all a new change may wait behind it.
pub(crate) const STEP: usize = 1024;

/// What a fold step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Folded {
    /// Messages taken out of `staged` (moved, or dropped as purged).
    pub moved: usize,
    /// The bucket has nothing left.
    pub bucket_empty: bool,
    /// Messages left in `staged`, all buckets.
    pub staged: u64,
}

/// Moves up to `budget` (at least 1) of bucket `b`'s oldest staged messages
/// into chunks, in one non-durable transaction.
pub(crate) fn fold_step(store: &Store, b: u8, budget: usize) -> Result<Folded, StoreError> {
    debug_assert!(b < BUCKETS);
    let txn = store.begin_step()?;
    let folded = {
        let mut staged = txn.open_table(STAGED).ctx("opening staged messages")?;
        let mut chunks = txn.open_table(CHUNKS).ctx("opening chunks")?;
        let mut rooms = txn.open_table(ROOMS).ctx("opening rooms")?;
        let mut cids = txn.open_table(CIDS).ctx("opening cids")?;

        // The bucket's oldest entries, by room, each room's in order.
        let mut by_room: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        let mut last_seq = None;
        let mut taken = 0;
        for item in staged
            .range((b, 0)..=(b, u64::MAX))
            .ctx("reading staged messages")?
            .take(budget.max(1))
        {
            let (key, value) = item.ctx("reading staged messages")?;
            let seq = key.value().1;
            let Some((room, _, _)) = staged_entry(value.value()) else {
                return Err(StoreError::Corrupt {
                    what: "staged message",
                    reason: format!("seq {seq}: too short"),
                });
            };
            by_room
                .entry(room)
                .or_default()
                .push((seq, value.value().to_vec()));
            last_seq = Some(seq);
            taken += 1;
        }
        let bucket_empty = match last_seq {
            None => true,
            Some(last) => {
                for item in staged
                    .extract_from_if((b, 0)..=(b, last), |_, _| true)
                    .ctx("deleting folded messages")?
                {
                    item.ctx("deleting folded messages")?;
                }
                staged
                    .range((b, last)..=(b, u64::MAX))
                    .ctx("reading staged messages")?
                    .next()
                    .is_none()
            }
        };
        for (id, entries) in by_room {
            let Some(mut st) = room_state(&rooms, id)? else {
                return Err(StoreError::Corrupt {
                    what: "staged message",
                    reason: format!("room id {id} does not exist"),
                });
            };
            let next_seq = entries.last().map_or(0, |&(seq, _)| seq + 1);
            append(&mut chunks, &mut cids, &mut st, &entries)?;
            st.staged_from = next_seq;
            rooms
                .insert(id, st.encode().as_slice())
                .ctx("writing room state")?;
        }
        Folded {
            moved: taken,
            bucket_empty,
            staged: staged.len().ctx("counting staged messages")?,
        }
    };
    txn.commit().ctx("committing fold step")?;
    Ok(folded)
}

// Appends a room's staged `entries` (oldest first, all of the room's
// oldest staged ones) to its chunks, dropping purged ones; updates its
// staged counts.
fn append(
    chunks: &mut redb::Table<'_, (u32, u64), &'static [u8]>,
    cids: &mut CidTable<'_>,
    st: &mut RoomState,
    entries: &[(u64, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut builder = tail_builder(chunks, st)?;
    let mut sealed: Vec<Sealed> = Vec::new();
    for (_, value) in entries {
        let Some((_, ts, bytes)) = staged_entry(value) else {
            continue;
        };
        let record = staged_record(st, ts, bytes)?;
        st.staged[record.side] = st.staged[record.side].saturating_sub(1);
        if ts < st.floor {
            forget_cid(cids, st, &record)?;
            builder.skip(record.side);
            continue;
        }
        builder.push(&record, &mut sealed);
    }
    if !builder.is_empty() {
        sealed.push(builder.seal());
    }
    for chunk in sealed {
        chunks
            .insert((st.id, chunk.first_ts), chunk.bytes.as_slice())
            .ctx("writing chunk")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::change::Change;
    use crate::store::testutil::*;

    const ROOMS: [&str; 3] = ["dm:A_B", "dm:A_C", "dm:B_C"];

    fn fill(store: &Store, n: u64) {
        let changes = (0..n).map(|i| {
            let room = ROOMS[(i % 3) as usize];
            Change::Message(msg(room, "A", "B", &format!("m{i}"), 1000 + i))
        });
        stage_all(store, changes);
    }

    fn keys(store: &Store) -> Vec<(String, u64)> {
        exported(store)
            .into_iter()
            .map(|m| (m.room, m.ts))
            .collect()
    }

    const CRASH_DIR_ENV: &str = "CHATD_FOLD_CRASH_DIR";

    #[test]
    #[ignore = "helper: run by a_crash_loses_only_fold_steps_after_the_last_commit in a child process"]
    fn fold_then_crash_child() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let store = Store::open(std::path::Path::new(&dir)).unwrap();
        fill(&store, 3000);
        // Folds dm:A_B (bucket 0); the commit after it makes that durable.
        while !fold_step(&store, 0, STEP).unwrap().bucket_empty {}
        stage_all(
            &store,
            [Change::Message(msg("dm:A_B", "A", "B", "late", 9000))],
        );
        // Folds the other rooms: never followed by a commit.
        for b in 0..BUCKETS {
            while !fold_step(&store, b, STEP).unwrap().bucket_empty {}
        }
        assert_eq!(staged_len(&store), 0);
        // Exit runs no destructor: the file is left as a crash leaves it.
        std::process::exit(0);
    }

    #[test]
    fn a_crash_loses_only_fold_steps_after_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "store::fold::tests::fold_then_crash_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());

        let store = Store::open(dir.path()).unwrap();
        // dm:A_C and dm:B_C are staged again; dm:A_B stayed folded, but
        // for the message committed after its fold.
        assert_eq!(staged_len(&store), 2001);
        let mut want: Vec<(String, u64)> = (0..3000)
            .map(|i| (ROOMS[(i % 3) as usize].to_string(), 1000 + i))
            .collect();
        want.push(("dm:A_B".into(), 9000));
        want.sort();
        assert_eq!(keys(&store), want);
        fold_all(&store);
        assert_eq!(keys(&store), want);
    }

    #[test]
    fn a_fold_drops_what_was_purged_while_it_waited() {
        let (_dir, store) = tmp_store();
        fill(&store, 30);
        let purge = crate::store::change::PurgeSelection::Room {
            room: "dm:A_B".into(),
            before: Some(1015),
        };
        stage_all(&store, [Change::Purge(purge)]);
        fold_all(&store);
        let left: Vec<u64> = keys(&store)
            .into_iter()
            .filter(|(room, _)| room == "dm:A_B")
            .map(|(_, ts)| ts)
            .collect();
        assert_eq!(left, [1015, 1018, 1021, 1024, 1027]);
        // Counts stay exact after it: B has 5 unread from A.
        let inbox = store.conversations("B", None, None, 10).unwrap();
        let ab = inbox.iter().find(|c| c.room == "dm:A_B").unwrap();
        assert_eq!(ab.unread, 5);
    }
}
