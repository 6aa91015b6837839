//! The conversation list: a user's rooms, most recent first, with exact
//! unread counts and both read cursors.
//!
//! `inbox` holds one key per user and room, `(user, u64::MAX - ts of the
//! room's newest message, room name)`, kept by the applier whenever a
//! room's newest message changes; a page is a range read of the user's
//! keys. Each entry then costs two lookups and the newest message: the
//! counts are the room state's counters (see `room.rs`). Nothing scans a
//! room's history or the user's other rooms, so a page costs the same for
//! a room of a million messages as for one of three, and for a user of ten
//! thousand rooms as for one of ten.

use std::ops::Bound;

use redb::ReadableDatabase;

use super::error::DbContext;
use super::read::{newest_message, room_id, room_state};
use super::schema::{CHUNKS, INBOX, ROOM_IDS, ROOMS, STAGED};
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
        let txn = self.db.begin_read().ctx("starting read transaction")?;
        let inbox = txn.open_table(INBOX).ctx("opening inbox")?;
        let ids = txn.open_table(ROOM_IDS).ctx("opening room ids")?;
        let rooms = txn.open_table(ROOMS).ctx("opening rooms")?;
        let chunks = txn.open_table(CHUNKS).ctx("opening chunks")?;
        let staged = txn.open_table(STAGED).ctx("opening staged messages")?;
        for item in inbox
            .range::<InboxKey<'_>>((start, Bound::Unbounded))
            .ctx("reading inbox")?
        {
            let (key, _) = item.ctx("reading inbox")?;
            let (owner, _, room) = key.value();
            if owner != user_key {
                break;
            }
            let room = std::str::from_utf8(room).map_err(|e| StoreError::Corrupt {
                what: "inbox entry",
                reason: e.to_string(),
            })?;
            let Some(id) = room_id(&ids, room)? else {
                continue;
            };
            let Some(st) = room_state(&rooms, id)? else {
                continue;
            };
            let Some(side) = st.side_of(user) else {
                continue;
            };
            let Some(last) = newest_message(&chunks, &staged, &st)? else {
                continue;
            };
            list.push(Conversation {
                room: st.name.clone(),
                peer: st.users[1 - side].clone(),
                last,
                unread: st.unread(side),
                read: st.cursor[side],
                peer_read: st.cursor[1 - side],
            });
            if list.len() == limit {
                break;
            }
        }
        Ok(list)
    }
}
