//! Reading a damaged store for what is still readable: `chatd check`
//! walks it and says what is not; `chatd salvage` also copies every
//! readable message, read cursor and cid into a new store.
//!
//! redb does not check a page's checksum when it reads it, so a damaged
//! page shows as a decode error, garbage, or a panic inside redb (caught:
//! `contain.rs`). Each room is read on its own; a walk over a table that
//! hits a damaged page goes on from the first key after it that can be
//! reached (found by probing further ahead, then narrowing down), and says
//! which range it could not read. Room ids, ts, `time`, senders, cids and
//! cursors are kept as they were; counts and chunk layout are rebuilt from
//! what was read, so the new store is consistent by construction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use redb::{Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase};

use super::apply::Tables;
use super::chunk::{Builder, Sealed};
use super::error::DbContext;
use super::read::{for_chunk_records, room_state, staged_entry, staged_record};
use super::record::{RecordRef, Sid, Stamp};
use super::room::RoomState;
use super::schema::{
    APPLIED_SEQ_KEY, BUCKETS, CHUNKS, CIDS, LOG_ID_KEY, NEXT_ROOM_KEY, ROOMS, STAGED, STATE,
    read_u64, write_u64,
};
use super::{Store, StoreError, contained};

/// Room ids probed past the last one found when `next_room` is unreadable.
const ROOM_ID_SLACK: u32 = 4096;

/// What a walk over a store read, and what it could not.
#[derive(Debug, Default)]
pub struct Salvaged {
    /// Rooms read (their state, with the cursors).
    pub rooms: u64,
    /// Messages read.
    pub messages: u64,
    /// cids read whose message was read too.
    pub cids: u64,
    /// What could not be read, one line each; empty: nothing was lost.
    pub lost: Vec<String>,
}

/// A record read from the old file, owning its strings.
struct Owned {
    ts: u64,
    side: usize,
    clock: Option<(u64, i32)>,
    literal: String,
    sid: String,
    names: Option<(String, String)>,
    cid: Option<String>,
    text: String,
}

impl Owned {
    fn of(r: &RecordRef<'_>) -> Owned {
        let (clock, literal) = match r.stamp {
            Stamp::Clock { delta_s, offset_s } => (Some((delta_s, offset_s)), String::new()),
            Stamp::Literal(time) => (None, time.to_owned()),
        };
        Owned {
            ts: r.ts,
            side: r.side,
            clock,
            literal,
            sid: r.sid.text(),
            names: r.names.map(|(f, t)| (f.to_owned(), t.to_owned())),
            cid: r.cid.map(str::to_owned),
            text: r.text.to_owned(),
        }
    }

    fn record(&self) -> RecordRef<'_> {
        RecordRef {
            ts: self.ts,
            side: self.side,
            stamp: match self.clock {
                Some((delta_s, offset_s)) => Stamp::Clock { delta_s, offset_s },
                None => Stamp::Literal(&self.literal),
            },
            sid: Sid::of(&self.sid),
            names: self.names.as_ref().map(|(f, t)| (f.as_str(), t.as_str())),
            cid: self.cid.as_deref(),
            text: &self.text,
        }
    }
}

/// Reads everything readable in the store file at `path` (opened read-only:
/// the damaged file is never written) and reports what is not; with
/// `into` (a new, empty store), copies it there. An error only when `into`
/// cannot be written or the file cannot be opened at all.
pub fn salvage(path: &Path, into: Option<&Store>) -> Result<Salvaged, StoreError> {
    let db = contained("opening the store read-only", || {
        Database::builder()
            .open_read_only(path)
            .map_err(|source| match source {
                DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                    path: path.to_owned(),
                },
                source => StoreError::Open {
                    path: path.to_owned(),
                    source,
                },
            })
    })?;
    let mut out = Salvaged::default();
    let (applied_seq, next_room, log_id) = read_state(&db, &mut out.lost);
    // Staged messages by room, from one walk per bucket.
    let mut staged: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for b in 0..BUCKETS {
        walk(
            &mut out.lost,
            &format!("staged messages of bucket {b}"),
            0,
            |from, f| {
                let txn = db.begin_read().ctx("starting read transaction")?;
                let table = txn.open_table(STAGED).ctx("opening staged")?;
                for item in table
                    .range((b, from)..=(b, u64::MAX))
                    .ctx("reading staged")?
                {
                    let (key, value) = item.ctx("reading staged")?;
                    f(key.value().1, value.value())?;
                }
                Ok(())
            },
            |_, value| {
                if let Some((room, ts, bytes)) = staged_entry(value) {
                    staged.entry(room).or_default().push((ts, bytes.to_vec()));
                }
                Ok(())
            },
        );
    }
    // Rooms whose every message was read keep all their cids; the
    // others only those of messages read.
    let mut partial: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut known: BTreeSet<u32> = BTreeSet::new();
    // Ids in a row without a readable room, and the run of unreadable
    // ones under way (its first id and error).
    let mut misses = 0;
    let mut unreadable: Option<(u32, String)> = None;
    let mut id = 0u32;
    let mut last_id = None;
    // Every id below next_room (or, when that is unreadable, any id),
    // until a long run of ids without a readable room.
    while misses < ROOM_ID_SLACK && next_room.is_none_or(|n| u64::from(id) < n) {
        let st = contained("reading a room state", || {
            let txn = db.begin_read().ctx("starting read transaction")?;
            room_state(&txn.open_table(ROOMS).ctx("opening rooms")?, id)
        });
        match st {
            Ok(Some(st)) => {
                misses = 0;
                end_run(&mut unreadable, id, &mut out.lost);
                last_id = Some(id);
                let waiting = staged.remove(&id).unwrap_or_default();
                let (records, complete) = read_room(&db, &st, waiting, &mut out.lost);
                if !complete {
                    partial.insert(id, records.iter().map(|r| r.ts).collect());
                }
                out.rooms += 1;
                out.messages += records.len() as u64;
                known.insert(id);
                if let Some(into) = into {
                    write_room(into, &st, &records)?;
                }
            }
            Ok(None) => {
                misses += 1;
                end_run(&mut unreadable, id, &mut out.lost);
            }
            Err(error) => {
                misses += 1;
                unreadable.get_or_insert((id, error.to_string()));
            }
        }
        let Some(next) = id.checked_add(1) else { break };
        id = next;
    }
    end_run(&mut unreadable, id, &mut out.lost);
    if next_room.is_some_and(|n| u64::from(id) < n) {
        out.lost.push(format!(
            "room ids from {id} on: not read, after {ROOM_ID_SLACK} in a row without a readable state"
        ));
    }
    for (room, _) in staged {
        out.lost.push(format!(
            "staged messages of room id {room}, whose state is missing"
        ));
    }
    let cids = read_cids(&db, &known, &partial, &mut out.lost);
    out.cids = cids.len() as u64;
    if let Some(into) = into {
        let txn = into.db()?.begin_write().ctx("starting a write")?;
        {
            let mut t = Tables::open(&txn)?;
            for ((user, cid), value) in &cids {
                t.cids
                    .insert((user.as_slice(), cid.as_slice()), value)
                    .ctx("writing cid")?;
            }
            write_u64(&mut t.state, APPLIED_SEQ_KEY, applied_seq)?;
            let next = next_room
                .unwrap_or(0)
                .max(last_id.map_or(0, |i| u64::from(i) + 1));
            write_u64(&mut t.state, NEXT_ROOM_KEY, next)?;
            if let Some(log_id) = &log_id {
                t.state
                    .insert(LOG_ID_KEY, log_id.as_slice())
                    .ctx("writing log id")?;
            }
        }
        txn.commit().ctx("committing the salvaged state")?;
    }
    Ok(out)
}

// Reports a run of room ids whose states were unreadable, ending before `id`.
fn end_run(run: &mut Option<(u32, String)>, id: u32, lost: &mut Vec<String>) {
    if let Some((first, error)) = run.take() {
        lost.push(format!(
            "room ids {first} to {}: their states are unreadable: {error}",
            id - 1
        ));
    }
}

// The applied log position, the next room id and the log id; what is
// unreadable is reported (the position then starts at 0).
fn read_state(
    db: &ReadOnlyDatabase,
    lost: &mut Vec<String>,
) -> (u64, Option<u64>, Option<Vec<u8>>) {
    let state = contained("reading the state table", || {
        let txn = db.begin_read().ctx("starting read transaction")?;
        let state = txn.open_table(STATE).ctx("opening state")?;
        let applied = read_u64(&state, APPLIED_SEQ_KEY)?.unwrap_or(0);
        let next_room = read_u64(&state, NEXT_ROOM_KEY)?;
        let log_id = state
            .get(LOG_ID_KEY)
            .ctx("reading log id")?
            .map(|v| v.value().to_vec());
        Ok((applied, next_room, log_id))
    });
    state.unwrap_or_else(|error| {
        lost.push(format!(
            "the state table (log position, next room id): {error}"
        ));
        (0, None, None)
    })
}

// Walks a table keyed by u64 (within one prefix) from `start`: `scan(from,
// f)` calls `f(key, value)` for each entry from key `from` on; `visit`
// takes each. A failed scan (a damaged page) goes on from the next key it
// can reach past the failure, reporting the range it skipped.
fn walk<S, V>(lost: &mut Vec<String>, what: &str, start: u64, scan: S, mut visit: V)
where
    S: Fn(u64, &mut dyn FnMut(u64, &[u8]) -> Result<(), StoreError>) -> Result<(), StoreError>,
    V: FnMut(u64, &[u8]) -> Result<(), StoreError>,
{
    let mut from = start;
    loop {
        let mut next = from;
        let scanned = contained("reading a table", || {
            scan(from, &mut |key, value| {
                next = key.saturating_add(1);
                visit(key, value)
            })
        });
        let Err(error) = scanned else { return };
        // The entry at `next` (or the page it is on) is unreadable.
        let Some(resume) = reachable_after(next, &scan) else {
            lost.push(format!("{what} from key {next} on: {error}"));
            return;
        };
        lost.push(format!("{what} from key {next} to {}: {error}", resume - 1));
        from = resume;
    }
}

// The smallest key past `failed` from which a scan's first step works:
// probes ever further ahead, then narrows down between the last failure
// and the first success.
fn reachable_after<S>(failed: u64, scan: &S) -> Option<u64>
where
    S: Fn(u64, &mut dyn FnMut(u64, &[u8]) -> Result<(), StoreError>) -> Result<(), StoreError>,
{
    // Whether a scan from `key` reads its first entry (or finds none).
    let reads_from = |key: u64| {
        contained("probing a table", || {
            scan(key, &mut |_, _| Err(StoreError::RoomsExhausted)).or_else(|e| match e {
                // The first entry was read: stop there.
                StoreError::RoomsExhausted => Ok(()),
                e => Err(e),
            })
        })
        .is_ok()
    };
    let mut bad = failed;
    let mut step = 1u64;
    let good = loop {
        let probe = failed.checked_add(step)?;
        if reads_from(probe) {
            break probe;
        }
        bad = probe;
        step = step.checked_mul(2)?;
    };
    let (mut bad, mut good) = (bad, good);
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if reads_from(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

// Every readable message of room `st` at or above its purge floor, oldest
// first, and whether that is all of them.
fn read_room(
    db: &ReadOnlyDatabase,
    st: &RoomState,
    mut waiting: Vec<(u64, Vec<u8>)>,
    lost: &mut Vec<String>,
) -> (Vec<Owned>, bool) {
    let mut records: Vec<Result<Owned, String>> = Vec::new();
    let lost_before = lost.len();
    walk(
        lost,
        &format!("chunks of room {:?}", st.name),
        0,
        |from, f| {
            let txn = db.begin_read().ctx("starting read transaction")?;
            let chunks = txn.open_table(CHUNKS).ctx("opening chunks")?;
            for item in chunks
                .range((st.id, from)..=(st.id, u64::MAX))
                .ctx("reading chunks")?
            {
                let (key, value) = item.ctx("reading chunks")?;
                f(key.value().1, value.value())?;
            }
            Ok(())
        },
        |first_ts, bytes| {
            // A chunk that does not decode keeps the records before the
            // damage; the rest of it is reported.
            let decoded = for_chunk_records(st, first_ts, bytes, |r| {
                records.push(Ok(Owned::of(&r)));
                Ok(true)
            });
            if let Err(error) = decoded {
                records.push(Err(error.to_string()));
            }
            Ok(())
        },
    );
    waiting.sort_by_key(|&(ts, _)| ts);
    for (ts, bytes) in waiting {
        match staged_record(st, ts, &bytes) {
            Ok(r) => records.push(Ok(Owned::of(&r))),
            Err(error) => lost.push(format!("a staged message: {error}")),
        }
    }
    // Damaged chunks are reported; purged and repeated (half-folded)
    // records go; the rest is in ts order.
    let mut kept: Vec<Owned> = Vec::with_capacity(records.len());
    for r in records {
        match r {
            Err(error) => lost.push(format!("the rest of a chunk: {error}")),
            Ok(r) if r.ts >= st.floor && kept.last().is_none_or(|last| r.ts > last.ts) => {
                kept.push(r)
            }
            Ok(_) => {}
        }
    }
    let live: u64 = (0..2).map(|s| st.count[s] - st.floor_count[s]).sum();
    let complete = lost.len() == lost_before && kept.len() as u64 >= live;
    if kept.len() as u64 != live {
        lost.push(format!(
            "room {:?}: {} of its {live} messages read",
            st.name,
            kept.len()
        ));
    }
    (kept, complete)
}

// Writes room `st` with `records` (ts order) into `into`, in one commit:
// its chunks, its state (counts rebuilt; cursors, floor and newest ts
// kept), its inbox and oldest keys.
fn write_room(into: &Store, st: &RoomState, records: &[Owned]) -> Result<(), StoreError> {
    let mut new = RoomState::new(st.id, &st.name, &st.users[0], &st.users[1]);
    new.floor = st.floor;
    new.cursor = st.cursor;
    let mut builder = Builder::new([0, 0]);
    let mut sealed: Vec<Sealed> = Vec::new();
    let txn = into.db()?.begin_write().ctx("starting a write")?;
    {
        let mut t = Tables::open(&txn)?;
        for owned in records {
            let r = owned.record();
            builder.push(&r, &mut sealed);
            new.count[r.side] += 1;
            for side in 0..2 {
                if r.side != side && r.ts <= st.cursor[side] {
                    new.cursor_count[side] += 1;
                }
            }
            for chunk in sealed.drain(..) {
                t.chunks
                    .insert((st.id, chunk.first_ts), chunk.bytes.as_slice())
                    .ctx("writing chunk")?;
            }
        }
        if !builder.is_empty() {
            let chunk = builder.seal();
            t.chunks
                .insert((st.id, chunk.first_ts), chunk.bytes.as_slice())
                .ctx("writing chunk")?;
        }
        new.oldest_ts = records.first().map_or(0, |r| r.ts);
        new.newest_ts = records.last().map_or(0, |r| r.ts).max(st.newest_ts);
        t.room_ids
            .insert(st.name.as_bytes(), st.id)
            .ctx("writing room id")?;
        t.rooms
            .insert(st.id, new.encode().as_slice())
            .ctx("writing room state")?;
        if new.has_messages() {
            for user in &new.users {
                t.inbox
                    .insert(
                        (
                            user.as_bytes(),
                            u64::MAX - new.newest_ts,
                            st.name.as_bytes(),
                        ),
                        (),
                    )
                    .ctx("writing inbox")?;
            }
            t.oldest
                .insert((new.oldest_ts, st.id), ())
                .ctx("writing oldest")?;
        }
    }
    txn.commit().ctx("committing a salvaged room")
}

/// A cid entry: (sender, cid) and (room id, ts, seq).
type Cid = ((Vec<u8>, Vec<u8>), (u32, u64, u64));

// Every readable cid whose message was read. A damaged page loses the
// rest of its sender's cids (the walk goes on with the next sender).
fn read_cids(
    db: &ReadOnlyDatabase,
    known: &BTreeSet<u32>,
    partial: &BTreeMap<u32, BTreeSet<u64>>,
    lost: &mut Vec<String>,
) -> Vec<Cid> {
    let mut cids = Vec::new();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let mut last_user: Option<Vec<u8>> = None;
        let scanned = contained("reading cids", || {
            let txn = db.begin_read().ctx("starting read transaction")?;
            let table = txn.open_table(CIDS).ctx("opening cids")?;
            let start: (&[u8], &[u8]) = (&from, &[]);
            for item in table.range(start..).ctx("reading cids")? {
                let (key, value) = item.ctx("reading cids")?;
                let (user, cid) = key.value();
                let (room, ts, seq) = value.value();
                last_user = Some(user.to_vec());
                let read = known.contains(&room)
                    && partial.get(&room).is_none_or(|read| read.contains(&ts));
                if read {
                    cids.push(((user.to_vec(), cid.to_vec()), (room, ts, seq)));
                }
            }
            Ok(())
        });
        let Err(error) = scanned else { break };
        // Past every name that starts with the last sender read.
        let mut next = last_user.unwrap_or_else(|| from.clone());
        next.push(0xff);
        lost.push(format!(
            "cids from sender {:?} on, up to the next readable sender: {error}",
            String::from_utf8_lossy(&next[..next.len() - 1])
        ));
        if next.len() > 256 {
            break;
        }
        from = next;
    }
    cids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::change::{Change, PurgeSelection, ReadMark};
    use crate::store::testutil::*;
    use crate::store::{DB_FILE_NAME, Outcome};

    #[test]
    fn an_intact_store_is_copied_whole_with_cursors_cids_and_purges() {
        let (dir, store) = tmp_store();
        for i in 1..=40u64 {
            let mut m = msg("dm:A_B", "A", "B", &format!("m{i}"), 1_000 * i);
            m.cid = Some(format!("c{i}"));
            store.apply(Change::Message(m)).unwrap();
            put(&store, "dm:C_D", 1_000 * i, &format!("n{i}"));
        }
        fold_all(&store);
        // Staged ones too, a cursor, and a purge of the oldest ten.
        put(&store, "dm:A_B", 99_000, "staged");
        let cursor = exported(&store)[20].ts;
        store
            .apply(Change::Read(ReadMark {
                room: "dm:A_B".into(),
                user: "B".into(),
                ts: cursor,
            }))
            .unwrap();
        let floor = exported(&store)[10].ts;
        store
            .apply(Change::Purge(PurgeSelection::Room {
                room: "dm:A_B".into(),
                before: Some(floor),
            }))
            .unwrap();
        let before = exported(&store);
        let unread = store.conversations("B", None, None, 10).unwrap();
        drop(store);

        let new_dir = tempfile::tempdir().unwrap();
        let new = Store::open(new_dir.path()).unwrap();
        let path = dir.path().join(DB_FILE_NAME);
        let salvaged = salvage(&path, Some(&new)).unwrap();
        assert!(salvaged.lost.is_empty(), "{:?}", salvaged.lost);
        assert_eq!(salvaged.rooms, 2);
        assert_eq!(salvaged.messages, before.len() as u64);
        assert_eq!(salvaged.cids, 30);
        assert_eq!(exported(&new), before);
        assert_eq!(new.read_cursor("dm:A_B", "B").unwrap(), cursor);
        assert_eq!(new.conversations("B", None, None, 10).unwrap(), unread);
        // A cid of a copied message is a duplicate; one of a purged one is not.
        let mut again = msg("dm:A_B", "A", "B", "again", 200_000);
        again.cid = Some("c20".into());
        assert!(matches!(
            new.apply(Change::Message(again.clone())).unwrap(),
            Outcome::Duplicate(m) if m.text == "m20"
        ));
        again.cid = Some("c5".into());
        assert!(matches!(
            new.apply(Change::Message(again)).unwrap(),
            Outcome::Stored(m) if m.ts > 99_000
        ));
    }
}
