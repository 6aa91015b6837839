//! The conversation list: a user's rooms, most recent first, with exact
//! unread counts and both read cursors.
//!
//! `inbox` holds one key per user and room, `(user, u64::MAX - ts of the
//! room's newest message, room name)`; a page is a range read of the
//! user's keys. Keys of rooms that had messages since they were last
//! written are behind, and `relist` says which (`relist.rs`): the page
//! skips those keys and merges those rooms in by their states' newest ts.
//! Each entry then costs two lookups and the newest message: the counts
//! are the room state's counters (see `room.rs`). Nothing scans a room's
//! history, and of the user's other rooms only those marked behind (a few
//! dozen at most: the applier relists them within a second, and sooner
//! once a user has `RELIST_PER_USER` of them), so a page costs the same for
//! a room of a million messages as for one of three, and for a user of ten
//! thousand rooms as for one of ten.

use std::collections::HashSet;
use std::ops::Bound;

use redb::ReadableDatabase;

use super::error::DbContext;
use super::read::{newest_message, room_id, room_state};
use super::room::RoomState;
use super::schema::{CHUNKS, INBOX, RELIST, ROOM_IDS, ROOMS, STAGED};
use super::{Store, StoreError, StoredMessage};

/// One room of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Room id, `dm:A_B`.
    pub room: String,
    /// The other user of the room.
    pub peer: String,
    /// The room's newest message.
    pub last: StoredMessage,
    /// The peer's messages newer than the user's read cursor.
    pub unread: u64,
    /// The user's read cursor (0 for none).
    pub read: u64,
    /// The peer's read cursor (0 for none).
    pub peer_read: u64,
}

type InboxKey<'a> = (&'a [u8], u64, &'a [u8]);

impl Store {
    /// `user`'s rooms that have messages, most recent first (by the ts of
    /// their newest message; equal ts by room name, ascending), at most
    /// `limit`. `before`: only rooms whose newest message is older than it;
    /// with `before_room` as well, the rooms after that entry of the list
    /// (the last entry of the previous page). `before_room` alone is ignored.
    pub fn conversations(
        &self,
        user: &str,
        before: Option<u64>,
        before_room: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        let user_key = user.as_bytes();
        let start: Bound<InboxKey<'_>> = match (before, before_room) {
            (None, _) => Bound::Included((user_key, 0, b"".as_slice())),
            (Some(ts), Some(room)) => Bound::Excluded((user_key, u64::MAX - ts, room.as_bytes())),
            (Some(ts), None) => match (u64::MAX - ts).checked_add(1) {
                Some(inverse) => Bound::Included((user_key, inverse, b"".as_slice())),
                // Nothing is older than ts 0.
                None => return Ok(Vec::new()),
            },
        };
        let mut list = Vec::new();
        if limit == 0 {
            return Ok(list);
        }
        // Whether a key (u64::MAX - ts, room) comes after the start.
        let after_start = |inverse: u64, room: &[u8]| match &start {
            Bound::Excluded((_, i, r)) => (inverse, room) > (*i, *r),
            Bound::Included((_, i, r)) => (inverse, room) >= (*i, *r),
            Bound::Unbounded => true,
        };
        let txn = self.db()?.begin_read().ctx("starting read transaction")?;
        let inbox = txn.open_table(INBOX).ctx("opening inbox")?;
        let relist = txn.open_table(RELIST).ctx("opening relist")?;
        let ids = txn.open_table(ROOM_IDS).ctx("opening room ids")?;
        let rooms = txn.open_table(ROOMS).ctx("opening rooms")?;
        let chunks = txn.open_table(CHUNKS).ctx("opening chunks")?;
        let staged = txn.open_table(STAGED).ctx("opening staged messages")?;
        let state_of = |room: &[u8]| -> Result<Option<RoomState>, StoreError> {
            let room = std::str::from_utf8(room).map_err(|e| StoreError::Corrupt {
                what: "inbox entry",
                reason: e.to_string(),
            })?;
            match room_id(&ids, room)? {
                Some(id) => room_state(&rooms, id),
                None => Ok(None),
            }
        };
        // The user's rooms whose keys are behind (see `relist.rs`): their
        // keys are skipped, and they come in by their states' newest ts.
        let mut skipped = HashSet::new();
        let mut behind = Vec::new();
        for item in relist
            .range::<(&[u8], &[u8])>((user_key, b"".as_slice())..)
            .ctx("reading relist")?
        {
            let (key, _) = item.ctx("reading relist")?;
            let (owner, room) = key.value();
            if owner != user_key {
                break;
            }
            skipped.insert(room.to_vec());
            if let Some(st) = state_of(room)?
                && st.has_messages()
                && after_start(u64::MAX - st.newest_ts, room)
            {
                behind.push((u64::MAX - st.newest_ts, st));
            }
        }
        behind.sort_by(|a, b| (a.0, a.1.name.as_bytes()).cmp(&(b.0, b.1.name.as_bytes())));
        let mut behind = behind.into_iter().peekable();
        let push = |st: &RoomState, list: &mut Vec<Conversation>| -> Result<(), StoreError> {
            if let Some(side) = st.side_of(user)
                && let Some(last) = newest_message(&chunks, &staged, st)?
            {
                list.push(Conversation {
                    room: st.name.clone(),
                    peer: st.users[1 - side].clone(),
                    last,
                    unread: st.unread(side),
                    read: st.cursor[side],
                    peer_read: st.cursor[1 - side],
                });
            }
            Ok(())
        };
        for item in inbox
            .range::<InboxKey<'_>>((start, Bound::Unbounded))
            .ctx("reading inbox")?
        {
            let (key, _) = item.ctx("reading inbox")?;
            let (owner, inverse, room) = key.value();
            if owner != user_key {
                break;
            }
            if skipped.contains(room) {
                continue;
            }
            while list.len() < limit
                && let Some((_, st)) =
                    behind.next_if(|(i, st)| (*i, st.name.as_bytes()) < (inverse, room))
            {
                push(&st, &mut list)?;
            }
            if list.len() < limit
                && let Some(st) = state_of(room)?
            {
                push(&st, &mut list)?;
            }
            if list.len() >= limit {
                return Ok(list);
            }
        }
        for (_, st) in behind {
            if list.len() >= limit {
                break;
            }
            push(&st, &mut list)?;
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::change::{Change, ReadMark};
    use crate::store::testutil::*;

    #[test]
    fn rooms_come_newest_first_then_by_name_and_page_without_gaps() {
        let (_dir, store) = tmp_store();
        // 300 peers of Ann; rooms share last ts in threes.
        let changes = (0..300u64).map(|i| {
            let peer = format!("p{i:03}");
            Change::Message(msg(
                &format!("dm:Ann_{peer}"),
                &peer,
                "Ann",
                "hi",
                1000 + i / 3,
            ))
        });
        apply_all(&store, changes);
        let mut want: Vec<(u64, String)> = (0..300u64)
            .map(|i| (1000 + i / 3, format!("dm:Ann_p{i:03}")))
            .collect();
        want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

        let mut got = Vec::new();
        let mut cursor: Option<(u64, String)> = None;
        loop {
            let page = store
                .conversations(
                    "Ann",
                    cursor.as_ref().map(|c| c.0),
                    cursor.as_ref().map(|c| c.1.as_str()),
                    7,
                )
                .unwrap();
            let Some(last) = page.last() else { break };
            cursor = Some((last.last.ts, last.room.clone()));
            got.extend(page.iter().map(|c| (c.last.ts, c.room.clone())));
        }
        assert_eq!(got, want);
        // `before` alone: rooms whose last message is older.
        let older = store.conversations("Ann", Some(1050), None, 1000).unwrap();
        assert!(older.iter().all(|c| c.last.ts < 1050));
        assert_eq!(older.len(), 150);
        assert!(
            store
                .conversations("Ann", Some(0), None, 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .conversations("Nobody", None, None, 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .conversations("Ann", None, None, 0)
                .unwrap()
                .is_empty()
        );
        // A user whose name is a prefix of another's sees only their own.
        assert_eq!(store.conversations("p00", None, None, 10).unwrap().len(), 0);
        assert_eq!(
            store.conversations("p001", None, None, 10).unwrap().len(),
            1
        );
    }

    #[test]
    fn an_entry_has_the_peer_the_last_message_and_both_cursors() {
        let (_dir, store) = tmp_store();
        let room = "dm:Ann_Bob";
        apply_all(
            &store,
            [
                Change::Message(msg(room, "Ann", "Bob", "hi", 10)),
                Change::Message(msg(room, "Bob", "Ann", "hello", 20)),
                Change::Message(msg(room, "Bob", "Ann", "there?", 30)),
                Change::Read(ReadMark {
                    room: room.into(),
                    user: "Ann".into(),
                    ts: 20,
                }),
            ],
        );
        let ann = store.conversations("Ann", None, None, 10).unwrap();
        assert_eq!(ann.len(), 1);
        assert_eq!(ann[0].room, room);
        assert_eq!(ann[0].peer, "Bob");
        assert_eq!(ann[0].last.text, "there?");
        assert_eq!((ann[0].unread, ann[0].read, ann[0].peer_read), (1, 20, 30));
        let bob = &store.conversations("Bob", None, None, 10).unwrap()[0];
        assert_eq!(
            (bob.peer.as_str(), bob.unread, bob.read, bob.peer_read),
            ("Ann", 0, 30, 20)
        );
        // A newer message moves the room up, folded or not.
        apply_all(
            &store,
            [Change::Message(msg("dm:Ann_Cy", "Cy", "Ann", "yo", 25))],
        );
        fold_all(&store);
        let rooms: Vec<_> = store
            .conversations("Ann", None, None, 10)
            .unwrap()
            .into_iter()
            .map(|c| (c.room, c.last.ts))
            .collect();
        assert_eq!(rooms, [("dm:Ann_Bob".into(), 30), ("dm:Ann_Cy".into(), 25)]);
    }
}
