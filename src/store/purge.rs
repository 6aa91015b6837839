//! Deleting history: one room at once, or every room in bounded batches.
//! Both tables are purged (see `schema.rs`): `messages` by room range,
//! `recent` by scanning a room's bucket (every bucket for `--all`), which
//! the fold keeps small.

use std::collections::HashMap;
use std::ops::Bound;

use redb::Table;

use super::error::DbContext;
use super::read::{folded_upto, next_room};
use super::schema::{BUCKETS, MESSAGES, RECENT, RecentKey, bucket};
use super::{Store, StoreError};

// Removes up to `max` messages of `room` with ts < `before` (all if None);
// returns how many went.
fn delete_in_room(
    table: &mut Table<'_, (&'static str, u64), &'static [u8]>,
    room: &str,
    before: Option<u64>,
    max: usize,
) -> Result<usize, StoreError> {
    let hi = match before {
        Some(b) => Bound::Excluded((room, b)),
        None => Bound::Included((room, u64::MAX)),
    };
    let extracted = table
        .extract_from_if((Bound::Included((room, 0)), hi), |_, _| true)
        .ctx("deleting messages")?;
    let mut deleted = 0;
    // Only entries pulled from the iterator are removed, so take() bounds the batch.
    for item in extracted.take(max) {
        item.ctx("deleting messages")?;
        deleted += 1;
    }
    Ok(deleted)
}

// Removes up to `max` entries of `recent` with ts < `before` that belong to
// `room` (any room if None). Returns how many it removed and how many of
// those were not copies of messages in `folded` (see `fold.rs`), so each
// message counts once; run it before deleting from `folded`.
fn delete_recent(
    recent: &mut Table<'_, RecentKey, (&'static str, &'static [u8])>,
    folded: &Table<'_, (&'static str, u64), &'static [u8]>,
    room: Option<&str>,
    before: Option<u64>,
    max: usize,
) -> Result<(usize, usize), StoreError> {
    let buckets = match room {
        Some(room) => bucket(room)..=bucket(room),
        None => 0..=BUCKETS - 1,
    };
    let end = before.unwrap_or(u64::MAX);
    let mut floors: HashMap<String, Option<u64>> = HashMap::new();
    let (mut removed, mut messages) = (0, 0);
    for b in buckets {
        let extracted = recent
            .extract_from_if((b, 0)..(b, end), |_, (entry_room, _)| {
                room.is_none_or(|r| r == entry_room)
            })
            .ctx("deleting messages")?;
        for item in extracted.take(max - removed) {
            let (key, value) = item.ctx("deleting messages")?;
            let ((_, ts), (entry_room, _)) = (key.value(), value.value());
            let floor = match floors.get(entry_room) {
                Some(&floor) => floor,
                None => {
                    let floor = folded_upto(folded, entry_room)?;
                    floors.insert(entry_room.to_owned(), floor);
                    floor
                }
            };
            removed += 1;
            if floor.is_none_or(|upto| ts > upto) {
                messages += 1;
            }
        }
    }
    Ok((removed, messages))
}

impl Store {
    /// Deletes a room's messages with ts < `before` (all if None) in one
    /// transaction; returns how many.
    pub fn purge_room(&self, room: &str, before: Option<u64>) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().ctx("starting purge")?;
        let deleted = {
            let mut table = txn.open_table(MESSAGES).ctx("opening messages table")?;
            let mut recent = txn.open_table(RECENT).ctx("opening recent table")?;
            let (_, newer) = delete_recent(&mut recent, &table, Some(room), before, usize::MAX)?;
            newer + delete_in_room(&mut table, room, before, usize::MAX)?
        };
        txn.commit().ctx("committing purge")?;
        Ok(deleted as u64)
    }

    /// Deletes messages with ts < `before` in every room, at most `batch`
    /// (at least 1) per write transaction so the live writer is never held
    /// up for long; returns the total.
    pub fn purge_all_before(&self, before: u64, batch: usize) -> Result<u64, StoreError> {
        self.purge_all_before_observed(before, batch, |_| {})
    }

    // `committed(n)` is told the size of each committed batch (tests check the bound).
    pub(crate) fn purge_all_before_observed(
        &self,
        before: u64,
        batch: usize,
        mut committed: impl FnMut(usize),
    ) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        let mut total = 0;
        // `recent` goes first (it is small), then the rooms of `messages`.
        let mut recent_done = false;
        // The room to resume in: a batch may end in the middle of one.
        let mut resume: Option<String> = None;
        loop {
            let txn = self.db.begin_write().ctx("starting purge")?;
            // Entries removed, copies included: what `batch` bounds.
            let mut in_txn = 0usize;
            if !recent_done {
                let table = txn.open_table(MESSAGES).ctx("opening messages table")?;
                let mut recent = txn.open_table(RECENT).ctx("opening recent table")?;
                let (removed, newer) =
                    delete_recent(&mut recent, &table, None, Some(before), batch)?;
                in_txn = removed;
                total += newer as u64;
                recent_done = removed < batch;
            }
            if recent_done {
                let mut table = txn.open_table(MESSAGES).ctx("opening messages table")?;
                // Only the transaction that finishes `recent` starts without a room to resume in.
                let mut room = match resume.take() {
                    Some(r) => Some(r),
                    None => next_room(&table, None)?,
                };
                while let Some(r) = room {
                    let left = batch - in_txn;
                    let deleted = delete_in_room(&mut table, &r, Some(before), left)?;
                    in_txn += deleted;
                    total += deleted as u64;
                    if in_txn >= batch {
                        // The room may have more: come back to it next transaction.
                        resume = Some(r);
                        break;
                    }
                    room = next_room(&table, Some(&r))?;
                }
            }
            txn.commit().ctx("committing purge")?;
            committed(in_txn);
            if recent_done && resume.is_none() {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::store::HistoryQuery;

    fn all_ts(s: &Store, room: &str) -> Vec<u64> {
        let q = HistoryQuery {
            limit: usize::MAX,
            ..Default::default()
        };
        s.history(room, &q).unwrap().iter().map(|m| m.ts).collect()
    }

    // Folded, folded up to ts 8, nothing folded, and folded up to 8 with
    // the copies still in `recent`: purges reach both tables, and count
    // each message once.
    const LAYOUTS: [(u64, bool); 4] = [(u64::MAX, false), (8, false), (0, false), (8, true)];

    #[test]
    fn purge_room_before_and_all_leave_other_rooms() {
        // ts is unique across rooms, as the writer assigns it.
        let rows: Vec<_> = (1..=10u64)
            .flat_map(|i| [("a", 2 * i - 1), ("b", 2 * i)])
            .collect();
        for (recent_from, copies) in LAYOUTS {
            let (_dir, s) = tmp_store();
            put_many_split(&s, &rows, recent_from);
            if copies {
                let copied: Vec<_> = rows
                    .iter()
                    .copied()
                    .filter(|&(_, ts)| ts < recent_from)
                    .collect();
                put_many_split(&s, &copied, 0);
            }
            assert_eq!(s.purge_room("a", Some(7)).unwrap(), 3);
            assert_eq!(all_ts(&s, "a"), [7, 9, 11, 13, 15, 17, 19]);
            assert_eq!(all_ts(&s, "b").len(), 10);
            assert_eq!(s.purge_room("a", None).unwrap(), 7);
            assert!(all_ts(&s, "a").is_empty());
            assert_eq!(s.rooms().unwrap(), ["b"]);
            assert_eq!(s.purge_room("nope", None).unwrap(), 0);
            assert_eq!(all_ts(&s, "b").len(), 10, "layout {recent_from} {copies}");
        }
    }

    #[test]
    fn purge_all_before_in_batches() {
        // Rooms of 0, 1, 7 and 25 old folded messages, 9 old messages still
        // in `recent`, and one newer message each, so batches end in
        // `recent`, mid-room, at room ends, and in rooms with nothing to delete.
        let rooms = ["r0", "r1", "r2", "r3"];
        let mut rows = Vec::new();
        for (room, old) in rooms.into_iter().zip([0u64, 1, 7, 25]) {
            rows.extend((0..old).map(|ts| (room, ts)));
        }
        rows.extend((0..9u64).map(|k| (rooms[k as usize % 4], 100 + k)));
        rows.extend((1000..).zip(rooms).map(|(ts, room)| (room, ts)));
        let recent_from = 100;
        for batch in [1usize, 3, 5, 42, 100] {
            let (_d, s) = tmp_store();
            put_many_split(&s, &rows, recent_from);
            let mut commits = Vec::new();
            let total = s
                .purge_all_before_observed(1000, batch, |n| commits.push(n))
                .unwrap();
            assert_eq!(total, 42, "batch {batch}");
            assert!(
                commits.iter().all(|&n| n <= batch),
                "batch {batch}: {commits:?}"
            );
            assert!(
                commits.len() <= 42 / batch + 3,
                "batch {batch}: {commits:?}"
            );
            for (ts, room) in (1000..).zip(rooms) {
                assert_eq!(all_ts(&s, room), [ts], "batch {batch} room {room}");
            }
        }
        // batch 0 is taken as 1 rather than looping forever.
        let (_d, s) = tmp_store();
        put_many_split(&s, &rows, recent_from);
        assert_eq!(s.purge_all_before(1000, 0).unwrap(), 42);
    }
}
