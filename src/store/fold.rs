//! Folding: moving the `recent` log into the per-room `messages` table.
//!
//! The writer appends every new message to `recent`, keyed by ts alone, so
//! a commit dirties only that table's last pages however many rooms it
//! touches; inserting into `messages` directly rewrote one page per room
//! per commit, which was most of the server's CPU under load. Once `recent`
//! holds [`FOLD_AT`] messages, one transaction moves all of them into
//! `messages` and empties `recent`: each room's tail page is then rewritten
//! once per fold instead of once per commit.

use redb::ReadableTable;

use super::error::DbContext;
use super::schema::{MESSAGES, RECENT};
use super::{Store, StoreError};

/// How many messages `recent` collects before they are folded. Readers scan
/// `recent` for a room's newest messages, so this also bounds that scan
/// (a fraction of a millisecond); a fold of this many takes a few ms for a
/// hundred rooms, tens of ms for thousands.
pub(crate) const FOLD_AT: u64 = 8192;

/// Moves every message of `recent` into `messages` in one durable
/// transaction; returns how many moved.
pub(crate) fn fold(store: &Store) -> Result<u64, StoreError> {
    let txn = store.db.begin_write().ctx("starting fold")?;
    let moved = {
        let recent = txn.open_table(RECENT).ctx("opening recent table")?;
        let mut entries = Vec::with_capacity(usize::try_from(FOLD_AT).unwrap_or(0));
        for item in recent.iter().ctx("reading recent messages")? {
            let (ts, value) = item.ctx("reading recent messages")?;
            let (room, bytes) = value.value();
            entries.push((room.to_owned(), ts.value(), bytes.to_vec()));
        }
        // In key order each room's tail page is found once and stays hot
        // while its messages go in.
        entries.sort_unstable_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
        let mut messages = txn.open_table(MESSAGES).ctx("opening messages table")?;
        for (room, ts, bytes) in &entries {
            messages
                .insert((room.as_str(), *ts), bytes.as_slice())
                .ctx("folding message")?;
        }
        entries.len() as u64
    };
    // Dropping the whole table frees its pages without a delete per entry;
    // it is made again at once so readers always find it.
    txn.delete_table(RECENT).ctx("emptying recent table")?;
    txn.open_table(RECENT).ctx("opening recent table")?;
    txn.commit().ctx("committing fold")?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    // Every message as export_all streams it.
    fn everything(store: &Store) -> Vec<crate::store::StoredMessage> {
        let mut all = Vec::new();
        store
            .export_all::<StoreError>(|m| {
                all.push(m.clone());
                Ok(())
            })
            .unwrap();
        all
    }

    #[test]
    fn fold_moves_recent_into_messages_and_reads_see_no_difference() {
        let (_dir, store) = tmp_store();
        let rows: Vec<_> = (1..=300u64)
            .map(|ts| (["dm:A_B", "dm:A_C", "dm:B_C"][ts as usize % 3], ts))
            .collect();
        // Folded up to ts 100, as after an earlier fold.
        put_many_split(&store, &rows, 101);
        let before = everything(&store);
        assert_eq!(recent_len(&store), 200);

        assert_eq!(fold(&store).unwrap(), 200);
        assert_eq!(recent_len(&store), 0);
        assert_eq!(everything(&store), before);
        assert_eq!(store.rooms().unwrap(), ["dm:A_B", "dm:A_C", "dm:B_C"]);

        // An empty `recent` folds to nothing, and stays usable.
        assert_eq!(fold(&store).unwrap(), 0);
        put_recent_raw(&store, "dm:A_B", 301, b"\x01");
        assert_eq!(recent_len(&store), 1);
    }
}
