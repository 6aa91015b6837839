//! Sweeping: deleting purged messages from disk, in small steps.
//!
//! A purge only raises a room's floor (`apply.rs`): from that commit on,
//! no reader and no rule sees what lies below it. The bytes go here,
//! between commits, a few thousand messages per transaction: the room's
//! chunks below the floor (one that straddles it is rewritten with what
//! remains), its staged messages below it, and the cids those messages
//! carried. Rooms waiting for a sweep are listed in `sweep`, so the work
//! survives a restart. Like fold steps, sweep steps skip the fsync.

use redb::{ReadableTable, Table};

use super::chunk::{self, Builder};
use super::error::DbContext;
use super::read::{for_staged, has_entries, room_state, staged_record};
use super::record::RecordRef;
use super::room::RoomState;
use super::schema::{CHUNKS, CIDS, CidTable, ROOMS, STAGED, SWEEP, bucket};
use super::{Store, StoreError};

/// What a sweep step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Messages deleted.
    pub deleted: usize,
    /// No room waits for a sweep any more.
    pub done: bool,
}

/// Whether some room waits for a sweep.
pub(crate) fn pending(store: &Store) -> Result<bool, StoreError> {
    has_entries(store, SWEEP, "reading sweep")
}

/// Deletes about `budget` purged messages of the first room waiting for a
/// sweep, in one non-durable transaction.
pub(crate) fn sweep_step(store: &Store, budget: usize) -> Result<Swept, StoreError> {
    let txn = store.begin_step()?;
    let swept = {
        let mut sweep = txn.open_table(SWEEP).ctx("opening sweep")?;
        let mut rooms = txn.open_table(ROOMS).ctx("opening rooms")?;
        let mut chunks = txn.open_table(CHUNKS).ctx("opening chunks")?;
        let mut staged = txn.open_table(STAGED).ctx("opening staged messages")?;
        let mut cids = txn.open_table(CIDS).ctx("opening cids")?;
        let first = sweep.first().ctx("reading sweep")?.map(|(k, _)| k.value());
        match first {
            None => Swept {
                deleted: 0,
                done: true,
            },
            Some(id) => {
                let (deleted, finished) = match room_state(&rooms, id)? {
                    Some(mut st) => {
                        let swept =
                            sweep_room(&mut chunks, &mut staged, &mut cids, &mut st, budget)?;
                        rooms
                            .insert(id, st.encode().as_slice())
                            .ctx("writing room state")?;
                        swept
                    }
                    None => (0, true),
                };
                if finished {
                    sweep.remove(id).ctx("updating sweep")?;
                }
                Swept {
                    deleted,
                    done: finished && sweep.first().ctx("reading sweep")?.is_none(),
                }
            }
        }
    };
    txn.commit().ctx("committing sweep step")?;
    Ok(swept)
}

// Deletes up to about `budget` of the room's messages below its floor;
// returns how many, and whether none is left. What goes need not decode:
// a damaged message can be purged; only its cid then stays behind (never
// matched again, since the message is below the floor).
fn sweep_room(
    chunks: &mut Table<'_, (u32, u64), &'static [u8]>,
    staged: &mut Table<'_, (u8, u64), &'static [u8]>,
    cids: &mut CidTable<'_>,
    st: &mut RoomState,
    budget: usize,
) -> Result<(usize, bool), StoreError> {
    let mut deleted = 0;
    loop {
        if deleted >= budget {
            return Ok((deleted, false));
        }
        // The first chunk starting below the floor, and whether another does.
        let found = {
            let mut below = chunks
                .range((st.id, 0)..(st.id, st.floor))
                .ctx("reading chunks")?;
            match below.next() {
                None => None,
                Some(first) => {
                    let (key, value) = first.ctx("reading chunks")?;
                    let found = (key.value().1, value.value().to_vec());
                    Some((found, below.next().is_some()))
                }
            }
        };
        let Some(((first_ts, bytes), another_below)) = found else {
            break;
        };
        // Whole when the next chunk starts below the floor (or at it), or
        // when the floor is past the room's newest message.
        let whole = st.floor > st.newest_ts
            || another_below
            || chunks
                .get((st.id, st.floor))
                .ctx("reading chunks")?
                .is_some();
        deleted += if whole {
            drop_chunk(chunks, cids, st, first_ts, &bytes)?
        } else {
            trim_chunk(chunks, cids, st, first_ts, &bytes)?
        };
    }
    // Then the staged messages below the floor, all at once: few, as the
    // fold keeps `staged` small.
    let mut purged = Vec::new();
    for_staged(staged, st, |seq, ts, bytes| {
        if ts >= st.floor {
            return Ok(false);
        }
        // The side is the flags' low bit; the cid, if the record decodes.
        let side = usize::from(bytes.first().is_some_and(|flags| flags & 1 == 1));
        let carried = staged_record(st, ts, bytes)
            .ok()
            .and_then(|r| Some((sender(st, &r).to_owned(), r.cid?.to_owned())));
        purged.push((seq, side, ts, carried));
        Ok(true)
    })?;
    for (seq, side, ts, carried) in purged {
        staged
            .remove((bucket(st.id), seq))
            .ctx("deleting staged message")?;
        st.staged[side] = st.staged[side].saturating_sub(1);
        if let Some((from, cid)) = carried {
            forget(cids, st.id, ts, &from, &cid)?;
        }
        deleted += 1;
    }
    Ok((deleted, true))
}

// Removes a chunk wholly below the floor, forgetting the cids its records
// carry when it has some; returns how many records went (1 if its header
// does not decode).
fn drop_chunk(
    chunks: &mut Table<'_, (u32, u64), &'static [u8]>,
    cids: &mut CidTable<'_>,
    st: &RoomState,
    first_ts: u64,
    bytes: &[u8],
) -> Result<usize, StoreError> {
    chunks.remove((st.id, first_ts)).ctx("deleting chunk")?;
    let Ok((header, records)) = chunk::open(first_ts, bytes) else {
        return Ok(1);
    };
    if header.has_cids {
        for r in records {
            let Ok(r) = r else { break };
            forget_cid(cids, st, &r)?;
        }
    }
    Ok(usize::try_from(header.records).unwrap_or(usize::MAX))
}

// Rewrites a chunk that straddles the floor without its records below it;
// returns how many records went.
fn trim_chunk(
    chunks: &mut Table<'_, (u32, u64), &'static [u8]>,
    cids: &mut CidTable<'_>,
    st: &RoomState,
    first_ts: u64,
    bytes: &[u8],
) -> Result<usize, StoreError> {
    let corrupt = |reason| StoreError::CorruptMessage {
        room: st.name.clone(),
        ts: first_ts,
        reason,
    };
    let (header, records) = chunk::open(first_ts, bytes).map_err(corrupt)?;
    let mut rest = Builder::new(header.before);
    let mut sealed = Vec::new();
    let mut dropped = 0;
    for r in records {
        let r = r.map_err(corrupt)?;
        if r.ts < st.floor {
            forget_cid(cids, st, &r)?;
            rest.skip(r.side);
            dropped += 1;
        } else {
            rest.push(&r, &mut sealed);
        }
    }
    chunks.remove((st.id, first_ts)).ctx("deleting chunk")?;
    if !rest.is_empty() {
        sealed.push(rest.seal());
    }
    for chunk in sealed {
        chunks
            .insert((st.id, chunk.first_ts), chunk.bytes.as_slice())
            .ctx("writing chunk")?;
    }
    Ok(dropped)
}

/// Forgets the cid a purged record carried, if the cid still names it.
pub(crate) fn forget_cid(
    cids: &mut CidTable<'_>,
    st: &RoomState,
    r: &RecordRef<'_>,
) -> Result<(), StoreError> {
    match r.cid {
        Some(cid) => forget(cids, st.id, r.ts, sender(st, r), cid),
        None => Ok(()),
    }
}

// Who sent a record of the room.
fn sender<'a>(st: &'a RoomState, r: &RecordRef<'a>) -> &'a str {
    match r.names {
        Some((from, _)) => from,
        None => &st.users[r.side],
    }
}

fn forget(
    cids: &mut CidTable<'_>,
    room: u32,
    ts: u64,
    from: &str,
    cid: &str,
) -> Result<(), StoreError> {
    let key = (from.as_bytes(), cid.as_bytes());
    let names_it = cids
        .get(key)
        .ctx("reading cids")?
        .is_some_and(|v| (v.value().0, v.value().1) == (room, ts));
    if names_it {
        cids.remove(key).ctx("forgetting cid")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::change::{Change, PurgeSelection};
    use crate::store::schema::{CIDS, SWEEP};
    use crate::store::testutil::*;
    use crate::store::{HistoryQuery, Outcome};

    const ROOM: &str = "dm:A_B";

    // `n` messages from A with cids "c<i>", ts 1..=n, some folded.
    fn filled(n: u64, folded: u64) -> (tempfile::TempDir, Store) {
        let (dir, store) = tmp_store();
        let changes = |range: std::ops::Range<u64>| {
            range.map(|i| {
                let mut m = msg(
                    ROOM,
                    "A",
                    "B",
                    &format!("message {i} {}", "x".repeat(40)),
                    i + 1,
                );
                m.cid = Some(format!("c{i}"));
                Change::Message(m)
            })
        };
        stage_all(&store, changes(0..folded));
        fold_all(&store);
        stage_all(&store, changes(folded..n));
        (dir, store)
    }

    fn cids(store: &Store) -> u64 {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = store.db().unwrap().begin_read().unwrap();
        txn.open_table(CIDS).unwrap().len().unwrap()
    }

    fn chunk_firsts(store: &Store) -> Vec<u64> {
        use redb::ReadableDatabase;
        let txn = store.db().unwrap().begin_read().unwrap();
        let chunks = txn.open_table(CHUNKS).unwrap();
        chunks
            .iter()
            .unwrap()
            .map(|i| i.unwrap().0.value().1)
            .collect()
    }

    fn purge_in_batch(store: &Store, before: u64) -> u64 {
        let purge = Change::Purge(PurgeSelection::Room {
            room: ROOM.into(),
            before: Some(before),
        });
        match stage_all(store, [purge]).remove(0) {
            Outcome::Purged { count } => count,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sweeps_delete_purged_chunks_and_staged_messages_with_their_cids() {
        let (_dir, store) = filled(1000, 800);
        let chunks_before = chunk_firsts(&store);
        assert!(chunks_before.len() > 5, "{chunks_before:?}");
        // Into the middle of a chunk.
        let cut = (chunks_before[3] + chunks_before[4]) / 2;
        assert_eq!(purge_in_batch(&store, cut), cut - 1);
        // Nothing deleted yet, but nothing below the floor reads.
        assert_eq!(cids(&store), 1000);
        assert!(pending(&store).unwrap());
        let q = HistoryQuery {
            limit: 2000,
            ..Default::default()
        };
        let left = |store: &Store| store.history_page(ROOM, &q).unwrap().messages;
        assert_eq!(left(&store)[0].ts, cut);
        // Small steps until done.
        let mut steps = 0;
        loop {
            steps += 1;
            let swept = sweep_step(&store, 100).unwrap();
            assert_eq!(left(&store).len() as u64, 1001 - cut);
            if swept.done {
                break;
            }
        }
        assert!(steps >= 2, "{steps} steps");
        assert!(!pending(&store).unwrap());
        assert_eq!(cids(&store), 1001 - cut);
        // The straddling chunk now starts at the floor.
        let after = chunk_firsts(&store);
        assert_eq!(after[0], cut);
        assert_eq!(after[1..], chunks_before[4..]);

        // Into the staged messages: they go too, and so do their cids.
        assert_eq!(purge_in_batch(&store, 900), 900 - cut);
        while !sweep_step(&store, 100).unwrap().done {}
        assert_eq!(cids(&store), 101);
        assert_eq!(staged_len(&store), 101);
        assert!(chunk_firsts(&store).is_empty());
        // Unread and the history still add up, and a fold does not bring anything back.
        fold_all(&store);
        assert_eq!(left(&store).len(), 101);
        assert_eq!(left(&store)[0].ts, 900);
    }

    #[test]
    fn a_sweep_left_for_later_survives_a_restart() {
        let (dir, store) = filled(300, 300);
        purge_in_batch(&store, 250);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(pending(&store).unwrap());
        while !sweep_step(&store, 1000).unwrap().done {}
        {
            use redb::{ReadableDatabase, ReadableTableMetadata};
            let txn = store.db().unwrap().begin_read().unwrap();
            assert_eq!(txn.open_table(SWEEP).unwrap().len().unwrap(), 0);
        }
        assert_eq!(cids(&store), 51);
    }
}
