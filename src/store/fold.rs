//! Folding: moving the `recent` log into the per-room `messages` table.
//!
//! The writer appends every new message to `recent`, keyed by ts within 16
//! buckets of rooms, so a commit dirties at most one tail page per bucket
//! however many rooms it touches; inserting into `messages` directly
//! rewrote one page per room per commit, which was most of the server's CPU
//! under load. Once `recent`
//! holds [`FOLD_AT`] messages, a [`FoldPass`] copies them into `messages`
//! room by room, then deletes them from `recent`: each room's tail page is
//! rewritten about once per pass instead of once per commit.
//!
//! A pass works in steps of about [`STEP`] messages, one transaction each,
//! between the writer's commits, so new messages never wait for a whole
//! pass. Until a pass ends, a folded message is in both tables; readers
//! take a room's `recent` entries only above its last ts in `messages`
//! (see `read.rs`), which is exact at every step: a room is copied whole,
//! and its newer messages are above everything copied. Steps skip the
//! fsync: the writer's next commit makes them durable, and a crash before
//! it returns the file to that of the last commit, itself a state between
//! two steps. A pass cut short leaves only copies behind; the next pass
//! copies them again, to the same keys.
//!
//! A room with [`DIRECT_AT`] or more messages in one commit and none
//! waiting in `recent` skips it: the commit rewrites the room's tail page
//! of `messages` once for all of them, cheaper than appending, copying
//! and deleting each. [`RecentRooms`] is how the writer knows which rooms
//! have messages waiting.

use std::collections::{HashMap, HashSet};

use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::error::DbContext;
use super::read::recent_by_room;
use super::schema::{BUCKETS, MESSAGES, RECENT, bucket};
use super::{Store, StoreError};

/// How many messages `recent` collects before a pass folds them. Readers
/// scan their room's bucket of `recent` for its newest messages, so this
/// also bounds that scan (about 0.1 ms when full).
pub(crate) const FOLD_AT: u64 = 16384;

/// About how many messages one step of a pass copies or deletes at least:
/// a few milliseconds of work, which is all a new message may wait behind
/// it. After a commit of n messages a step does at least 2n (each message
/// is copied once and deleted once), so passes keep up with any inflow
/// and `recent` stays near [`FOLD_AT`].
pub(crate) const STEP: usize = 1024;

/// How many messages a room needs in one commit to go straight to
/// `messages` (if it has none in `recent`). Live chat brings a room one or
/// two per commit; bulk inflow (a busy room, an import) brings dozens.
pub(crate) const DIRECT_AT: usize = 8;

/// The rooms with messages in `recent`, each with the newest ts it has
/// there, kept by the writer, which appends all of them. Such a room keeps
/// appending to `recent` until a pass has folded it, since readers take a
/// room's `recent` entries only above its last ts in `messages`. Purges
/// only remove messages, so a room listed may have none left (it then
/// merely misses a shortcut); a room with messages in `recent` is never
/// missing.
#[derive(Debug, Default)]
pub(crate) struct RecentRooms {
    newest: HashMap<String, u64>,
}

impl RecentRooms {
    /// The rooms of everything in `recent` now, copies a cut-short pass
    /// left included.
    pub(crate) fn load(store: &Store) -> Result<RecentRooms, StoreError> {
        let txn = store.db.begin_read().ctx("reading recent rooms")?;
        let recent = txn.open_table(RECENT).ctx("opening recent table")?;
        let newest = recent_by_room(&recent)?
            .into_iter()
            .filter_map(|(room, list)| Some((room, *list.last()?)))
            .collect();
        Ok(RecentRooms { newest })
    }

    /// The rooms of `batch` that go straight to `messages`: at least
    /// [`DIRECT_AT`] messages in it, none in `recent`.
    pub(crate) fn direct<'b>(
        &self,
        batch: impl ExactSizeIterator<Item = &'b str>,
    ) -> HashSet<&'b str> {
        if batch.len() < DIRECT_AT {
            return HashSet::new();
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for room in batch {
            *counts.entry(room).or_default() += 1;
        }
        counts
            .into_iter()
            .filter(|&(room, n)| n >= DIRECT_AT && !self.newest.contains_key(room))
            .map(|(room, _)| room)
            .collect()
    }

    /// Notes a message of `room` appended to `recent` with `ts`.
    pub(crate) fn appended(&mut self, room: &str, ts: u64) {
        match self.newest.get_mut(room) {
            Some(newest) => *newest = ts,
            None => {
                self.newest.insert(room.to_owned(), ts);
            }
        }
    }

    /// Forgets the rooms a finished pass has emptied: all their messages in
    /// `recent` were at or below `upto`, and are folded and deleted.
    pub(crate) fn folded(&mut self, upto: u64) {
        self.newest.retain(|_, newest| *newest > upto);
    }
}

/// What one step of a pass left behind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    /// The pass is complete.
    pub done: bool,
    /// Messages left in `recent`, copies included.
    pub recent: u64,
}

/// A fold in progress: the rooms still to copy and where the copied
/// messages end.
#[derive(Debug)]
pub(crate) struct FoldPass {
    // Every ts in `recent` up to here is copied by this pass.
    upto: u64,
    // Rooms still to copy (last first), with their ts in `recent`.
    rooms: Vec<(String, Vec<u64>)>,
}

impl FoldPass {
    /// Plans a pass over everything in `recent` now (nothing to do when empty).
    pub(crate) fn start(store: &Store) -> Result<FoldPass, StoreError> {
        let txn = store.db.begin_read().ctx("starting fold")?;
        let recent = txn.open_table(RECENT).ctx("opening recent table")?;
        let rooms = recent_by_room(&recent)?;
        let upto = rooms.values().filter_map(|list| list.last().copied()).max();
        // Popped from the end: the rooms go in key order.
        let mut rooms: Vec<_> = rooms.into_iter().collect();
        rooms.reverse();
        Ok(FoldPass {
            upto: upto.unwrap_or(0),
            rooms,
        })
    }

    /// The newest ts this pass copies: after it, every message up to here
    /// is out of `recent`.
    pub(crate) fn upto(&self) -> u64 {
        self.upto
    }

    /// Does one step in its own transaction: copies the next rooms
    /// (about `budget` messages), or once all are copied deletes up to
    /// `budget` copied messages from `recent`.
    pub(crate) fn step(&mut self, store: &Store, budget: usize) -> Result<Step, StoreError> {
        let mut txn = store.db.begin_write().ctx("starting fold step")?;
        // No fsync of its own: the writer's next commit makes it durable.
        // A crash before that loses only moves that had not happened yet:
        // the file is as after the last commit, messages still in `recent`.
        txn.set_durability(Durability::None)
            .ctx("making the fold step non-durable")?;
        let step = {
            let mut recent = txn.open_table(RECENT).ctx("opening recent table")?;
            let done = if self.rooms.is_empty() {
                // The copied messages: each bucket's entries up to `upto`.
                let mut deleted = 0;
                for b in 0..BUCKETS {
                    deleted += recent
                        .extract_from_if((b, 0)..=(b, self.upto), |_, _| true)
                        .ctx("deleting folded messages")?
                        .take(budget - deleted)
                        .try_fold(0, |n, item| item.map(|_| n + 1))
                        .ctx("deleting folded messages")?;
                    if deleted == budget {
                        break;
                    }
                }
                deleted < budget
            } else {
                let mut messages = txn.open_table(MESSAGES).ctx("opening messages table")?;
                let mut copied = 0;
                while copied < budget
                    && let Some((room, list)) = self.rooms.pop()
                {
                    let b = bucket(&room);
                    for ts in list {
                        // Gone if purged since the pass began: not brought back.
                        let Some(value) = recent.get((b, ts)).ctx("reading recent message")? else {
                            continue;
                        };
                        let (_, bytes) = value.value();
                        messages
                            .insert((room.as_str(), ts), bytes)
                            .ctx("folding message")?;
                        copied += 1;
                    }
                }
                false
            };
            Step {
                done,
                recent: recent.len().ctx("counting recent messages")?,
            }
        };
        txn.commit().ctx("committing fold step")?;
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::store::StoredMessage;

    // Every message as export_all streams it.
    fn everything(store: &Store) -> Vec<StoredMessage> {
        let mut all = Vec::new();
        store
            .export_all::<StoreError>(|m| {
                all.push(m.clone());
                Ok(())
            })
            .unwrap();
        all
    }

    // Rooms of very different sizes, interleaved in ts as live traffic is.
    fn rows() -> Vec<(&'static str, u64)> {
        (1..=3000u64)
            .map(|ts| {
                let room = match ts % 10 {
                    0 => "dm:A_B",
                    1..=3 => "dm:A_C",
                    _ => "dm:B_C",
                };
                (room, ts)
            })
            .collect()
    }

    #[test]
    fn every_step_of_a_pass_reads_the_same_and_the_pass_empties_recent() {
        let (_dir, store) = tmp_store();
        // Folded up to ts 1000, as after an earlier pass.
        put_many_split(&store, &rows(), 1001);
        let before = everything(&store);
        let mut pass = FoldPass::start(&store).unwrap();
        let mut steps = 0;
        loop {
            let done = pass.step(&store, STEP).unwrap().done;
            steps += 1;
            assert_eq!(everything(&store), before, "after step {steps}");
            if done {
                break;
            }
        }
        assert_eq!(recent_len(&store), 0);
        // 2000 to copy in rooms of 200, 600 and 1200, then 2000 to delete.
        assert!((3..=6).contains(&steps), "{steps} steps");

        // New messages during a pass stay in `recent`, above what it copies.
        put_many_split(&store, &[("dm:A_B", 5000)], 0);
        let mut pass = FoldPass::start(&store).unwrap();
        put_many_split(&store, &[("dm:A_B", 5001)], 0);
        while !pass.step(&store, STEP).unwrap().done {}
        assert_eq!(recent_len(&store), 1);
        assert_eq!(everything(&store).len(), 3002);
    }

    #[test]
    fn a_room_may_skip_recent_once_a_pass_has_emptied_it() {
        let (_dir, store) = tmp_store();
        put_many_split(&store, &rows(), 1001);
        let mut rooms = RecentRooms::load(&store).unwrap();
        let busy = ["dm:A_B", "dm:new"].repeat(DIRECT_AT);
        let direct = |rooms: &RecentRooms| {
            let mut direct: Vec<_> = rooms.direct(busy.iter().copied()).into_iter().collect();
            direct.sort();
            direct
        };
        assert_eq!(direct(&rooms), ["dm:new"]);
        // Too few of a room's messages in a commit to skip `recent`.
        assert!(rooms.direct(busy[..DIRECT_AT].iter().copied()).is_empty());

        let mut pass = FoldPass::start(&store).unwrap();
        // Appended during the pass, so above what it copies: still waiting.
        put_many_split(&store, &[("dm:A_C", 5000)], 0);
        rooms.appended("dm:A_C", 5000);
        while !pass.step(&store, STEP).unwrap().done {}
        rooms.folded(pass.upto());
        assert_eq!(direct(&rooms), ["dm:A_B", "dm:new"]);
        let waiting = ["dm:A_C"; DIRECT_AT];
        assert!(rooms.direct(waiting.iter().copied()).is_empty());
    }

    const CRASH_DIR_ENV: &str = "CHATD_FOLD_CRASH_DIR";

    // The last ts `room` has in `messages`.
    fn folded_last(store: &Store, room: &str) -> Option<u64> {
        let txn = store.db.begin_read().unwrap();
        let messages = txn.open_table(MESSAGES).unwrap();
        crate::store::read::folded_upto(&messages, room).unwrap()
    }

    #[test]
    #[ignore = "helper: run by a_crash_loses_only_fold_steps_after_the_last_commit in a child process"]
    fn fold_then_crash_child() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let store = Store::open(std::path::Path::new(&dir)).unwrap();
        put_many_split(&store, &rows(), 0);
        let mut pass = FoldPass::start(&store).unwrap();
        // Copies dm:A_B and dm:A_C; the commit after it makes that durable.
        pass.step(&store, STEP).unwrap();
        put_many_split(&store, &[("dm:A_B", 5000)], 0);
        // Copies dm:B_C and deletes every copy: never followed by a commit.
        while !pass.step(&store, STEP).unwrap().done {}
        assert_eq!(recent_len(&store), 1);
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
        // The steps after the last commit are gone, their messages still
        // in `recent`; the step before it stayed.
        assert_eq!(recent_len(&store), 3001);
        assert_eq!(folded_last(&store, "dm:A_C"), Some(2993));
        assert_eq!(folded_last(&store, "dm:B_C"), None);
        // Every message reads once, in order, before and after another pass.
        let mut want: Vec<(String, u64)> = rows().iter().map(|&(r, ts)| (r.into(), ts)).collect();
        want.push(("dm:A_B".into(), 5000));
        want.sort();
        let keys = |store: &Store| -> Vec<(String, u64)> {
            everything(store)
                .into_iter()
                .map(|m| (m.room, m.ts))
                .collect()
        };
        assert_eq!(keys(&store), want);
        let mut pass = FoldPass::start(&store).unwrap();
        while !pass.step(&store, STEP).unwrap().done {}
        assert_eq!(recent_len(&store), 0);
        assert_eq!(keys(&store), want);
    }

    #[test]
    fn a_pass_does_not_bring_back_what_was_purged_meanwhile() {
        let (_dir, store) = tmp_store();
        put_many_split(&store, &rows(), 0);
        let mut pass = FoldPass::start(&store).unwrap();
        store.purge_room("dm:B_C", None).unwrap();
        while !pass.step(&store, STEP).unwrap().done {}
        assert_eq!(store.rooms().unwrap(), ["dm:A_B", "dm:A_C"]);
        assert_eq!(everything(&store).len(), 1200);
    }

    #[test]
    fn a_pass_cut_short_leaves_copies_the_next_pass_repeats() {
        let (_dir, store) = tmp_store();
        put_many_split(&store, &rows(), 0);
        let before = everything(&store);
        let mut cut = FoldPass::start(&store).unwrap();
        cut.step(&store, STEP).unwrap();
        drop(cut);
        assert_eq!(everything(&store), before);
        let mut pass = FoldPass::start(&store).unwrap();
        while !pass.step(&store, STEP).unwrap().done {}
        assert_eq!(recent_len(&store), 0);
        assert_eq!(everything(&store), before);
    }
}
