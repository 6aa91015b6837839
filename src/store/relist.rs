//! Relisting: bringing rooms' `inbox` keys up to date, once for however
//! many messages came meanwhile.
//!
//! A user's `inbox` key for a room carries the ts of the room's newest
//! message, so keeping it exact costs two deletes and two inserts per
//! message: about a quarter of the server's work per message in a busy
//! closed loop. Instead the first message after a room's keys were exact
//! marks them behind in `relist` (one insert per user, `apply.rs`), and
//! later messages to the room touch no key at all. Between commits the
//! applier takes what `relist` holds, a step at a time, and writes each
//! marked room's keys afresh from its state: once [`RELIST_AFTER`] has
//! passed since the first mark, or once some user has [`RELIST_PER_USER`]
//! rooms marked, or sooner when the queue goes idle.
//!
//! Readers stay exact throughout: a conversation list reads a user's
//! `relist` entries in the same snapshot as the `inbox` keys, skips the
//! keys they mark, and puts those rooms in by their states' newest ts
//! (`inbox.rs`). A room's entries (one per user) go in one step, so a
//! room is marked for both of its users or for neither.

use std::collections::HashSet;
use std::time::Duration;

use redb::ReadableTable;

use super::error::DbContext;
use super::read::{has_entries, room_id, room_state};
use super::schema::{INBOX, RELIST, ROOM_IDS, ROOMS};
use super::{Store, StoreError};

/// Longest a room's inbox keys stay behind while changes keep coming
/// (the queue going idle relists at once).
pub(crate) const RELIST_AFTER: Duration = Duration::from_secs(1);

/// How many of one user's rooms marked behind start a relist pass sooner
/// than [`RELIST_AFTER`]: a conversation page reads the state of each of
/// its user's rooms that is behind, so this bounds that work (a user of
/// thousands of rooms that all had a message within the second would
/// otherwise cost a page that many reads). Per user, not in all: with a
/// thousand busy rooms, a count over all users would start a pass every
/// few milliseconds, every few messages per room, and give back much of
/// what writing the keys behind saves.
pub(crate) const RELIST_PER_USER: usize = 64;

/// About how many `relist` entries one step takes: a few milliseconds of
/// work, which is all a new change may wait behind it.
pub(crate) const RELIST_STEP: usize = 512;

/// What a relist step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relisted {
    /// The rooms whose keys it wrote (their cached listing is stale).
    pub rooms: Vec<u32>,
    /// Nothing is left in `relist`.
    pub done: bool,
}

/// Whether some room's inbox keys are behind.
pub(crate) fn pending(store: &Store) -> Result<bool, StoreError> {
    has_entries(store, RELIST, "reading relist")
}

/// Writes afresh the inbox keys of the rooms of about `budget` `relist`
/// entries (at least one), and removes their entries, in one non-durable
/// transaction.
pub(crate) fn relist_step(store: &Store, budget: usize) -> Result<Relisted, StoreError> {
    let txn = store.begin_step()?;
    let relisted = {
        let mut relist = txn.open_table(RELIST).ctx("opening relist")?;
        let mut inbox = txn.open_table(INBOX).ctx("opening inbox")?;
        let ids = txn.open_table(ROOM_IDS).ctx("opening room ids")?;
        let rooms = txn.open_table(ROOMS).ctx("opening rooms")?;
        let mut names = Vec::new();
        for item in relist.iter().ctx("reading relist")?.take(budget.max(1)) {
            let (key, _) = item.ctx("reading relist")?;
            names.push((key.value().0.to_vec(), key.value().1.to_vec()));
        }
        let mut done_names = HashSet::new();
        let mut relisted = Vec::new();
        for (user, name) in names {
            if !done_names.insert(name.clone()) {
                continue;
            }
            let state = match std::str::from_utf8(&name) {
                Ok(room) => match room_id(&ids, room)? {
                    Some(id) => room_state(&rooms, id)?,
                    None => None,
                },
                Err(_) => None,
            };
            let Some(st) = state else {
                // No such room: nothing to list; the entry alone goes.
                relist
                    .remove((user.as_slice(), name.as_slice()))
                    .ctx("updating relist")?;
                continue;
            };
            for user in &st.users {
                let key = (user.as_bytes(), name.as_slice());
                let Some(listed) = relist.remove(key).ctx("updating relist")? else {
                    continue;
                };
                let listed = listed.value();
                if listed != 0 {
                    inbox
                        .remove((user.as_bytes(), u64::MAX - listed, name.as_slice()))
                        .ctx("updating inbox")?;
                }
                if st.has_messages() {
                    inbox
                        .insert(
                            (user.as_bytes(), u64::MAX - st.newest_ts, name.as_slice()),
                            (),
                        )
                        .ctx("updating inbox")?;
                }
            }
            relisted.push(st.id);
        }
        Relisted {
            rooms: relisted,
            done: relist.first().ctx("reading relist")?.is_none(),
        }
    };
    txn.commit().ctx("committing relist step")?;
    Ok(relisted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::change::{Change, PurgeSelection};
    use crate::store::testutil::*;

    fn inbox_keys(store: &Store) -> Vec<(String, u64, String)> {
        use redb::ReadableDatabase;
        let txn = store.db().unwrap().begin_read().unwrap();
        let inbox = txn.open_table(INBOX).unwrap();
        let keys = inbox.iter().unwrap().map(|item| {
            let (key, _) = item.unwrap();
            let (user, inverse, room) = key.value();
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
            (text(user), u64::MAX - inverse, text(room))
        });
        keys.collect()
    }

    fn send(store: &Store, from: &str, to: &str, time_us: u64) {
        let room = if from < to {
            format!("dm:{from}_{to}")
        } else {
            format!("dm:{to}_{from}")
        };
        apply_all(
            store,
            [Change::Message(msg(&room, from, to, "hi", time_us))],
        );
    }

    fn relist_everything(store: &Store) {
        while !relist_step(store, 1).unwrap().done {}
    }

    #[test]
    fn rooms_keep_their_order_while_their_keys_are_behind_and_after() {
        let (_dir, store) = tmp_store();
        send(&store, "Ann", "Bob", 100);
        send(&store, "Ann", "Cy", 200);
        relist_everything(&store);
        // Bob answers: his room goes back on top, its keys behind.
        send(&store, "Bob", "Ann", 300);
        assert!(pending(&store).unwrap());
        assert_eq!(
            conversation_rooms(&store, "Ann"),
            ["dm:Ann_Bob", "dm:Ann_Cy"]
        );
        assert_eq!(conversation_rooms(&store, "Bob"), ["dm:Ann_Bob"]);
        // Ann's keys for Bob's room still carry the first message.
        assert!(inbox_keys(&store).contains(&("Ann".into(), 100, "dm:Ann_Bob".into())));
        // Paging from the top entry: the rooms after it, once each.
        let page = store
            .conversations("Ann", Some(300), Some("dm:Ann_Bob"), 50)
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].room, "dm:Ann_Cy");

        relist_everything(&store);
        assert!(!pending(&store).unwrap());
        assert_eq!(
            conversation_rooms(&store, "Ann"),
            ["dm:Ann_Bob", "dm:Ann_Cy"]
        );
        assert_eq!(
            inbox_keys(&store),
            [
                ("Ann".into(), 300, "dm:Ann_Bob".into()),
                ("Ann".into(), 200, "dm:Ann_Cy".into()),
                ("Bob".into(), 300, "dm:Ann_Bob".into()),
                ("Cy".into(), 200, "dm:Ann_Cy".into()),
            ]
        );
    }

    #[test]
    fn a_room_purged_while_its_keys_are_behind_leaves_every_inbox() {
        let (_dir, store) = tmp_store();
        send(&store, "Ann", "Bob", 100);
        send(&store, "Bob", "Ann", 200);
        assert!(pending(&store).unwrap());
        let purge = PurgeSelection::Room {
            room: "dm:Ann_Bob".into(),
            before: None,
        };
        apply_all(&store, [Change::Purge(purge)]);
        assert!(conversation_rooms(&store, "Ann").is_empty());
        assert!(inbox_keys(&store).is_empty());
        assert!(!pending(&store).unwrap());
    }

    #[test]
    fn a_step_takes_both_users_of_a_room_or_neither() {
        let (_dir, store) = tmp_store();
        send(&store, "Ann", "Bob", 100);
        // One entry's budget: Ann's entry, and Bob's with it.
        let step = relist_step(&store, 1).unwrap();
        assert!(step.done);
        assert_eq!(step.rooms.len(), 1);
        assert_eq!(inbox_keys(&store).len(), 2);
    }
}
