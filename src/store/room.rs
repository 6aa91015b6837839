//! The state of one room: its users, counters, purge floor and read
//! cursors, one `rooms` entry per room, kept by the applier.
//!
//! Unread counts come from cumulative counters, so they cost nothing to
//! read however long the history: `count[s]` is every message side `s` ever
//! sent in the room (purged ones included), `cursor_count[u]` how many of
//! the peer's messages were at or below user `u`'s cursor when it was set,
//! `floor_count[s]` how many of side `s`'s messages lie below the purge
//! floor. The peer's messages user `u` has not read are those above both
//! the cursor and the floor:
//! `count[peer] - max(cursor_count[u], floor_count[peer])`.

use super::record::{Side, put_bytes, put_varint, take_str, take_u8, take_varint};

/// Format byte of an encoded room state.
const FORMAT: u8 = 1;

/// A room's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomState {
    /// The room's id: the first half of its keys in `chunks` and elsewhere.
    pub id: u32,
    /// Room name, `dm:A_B`.
    pub name: String,
    /// Its two users in byte order (from its first message).
    pub users: [String; 2],
    /// The highest ts ever assigned in the room (a purge does not lower it).
    pub newest_ts: u64,
    /// ts of the oldest message still stored; 0 when none is.
    pub oldest_ts: u64,
    /// Messages below this ts are purged.
    pub floor: u64,
    /// Messages each side ever sent.
    pub count: [u64; 2],
    /// Messages of each side below `floor`.
    pub floor_count: [u64; 2],
    /// Each user's read cursor: the ts of the newest message read, 0 for none.
    pub cursor: [u64; 2],
    /// Messages of each user's peer at or below that user's cursor.
    pub cursor_count: [u64; 2],
    /// Messages of each side waiting in `staged` (purged ones included
    /// until they are swept).
    pub staged: [u64; 2],
    /// A log position at or below the room's first message in `staged`.
    pub staged_from: u64,
    /// Log position of the room's newest message, when it is in `staged`.
    pub newest_seq: u64,
}

impl RoomState {
    /// A room about to get its first message, from `from` to `to`.
    pub(crate) fn new(id: u32, name: &str, from: &str, to: &str) -> RoomState {
        let mut users = [from.to_owned(), to.to_owned()];
        users.sort();
        RoomState {
            id,
            name: name.to_owned(),
            users,
            newest_ts: 0,
            oldest_ts: 0,
            floor: 0,
            count: [0, 0],
            floor_count: [0, 0],
            cursor: [0, 0],
            cursor_count: [0, 0],
            staged: [0, 0],
            staged_from: 0,
            newest_seq: 0,
        }
    }

    /// Whether the room has messages that are not purged.
    pub(crate) fn has_messages(&self) -> bool {
        self.oldest_ts != 0
    }

    /// Which of the pair `user` is, if either.
    pub(crate) fn side_of(&self, user: &str) -> Option<Side> {
        self.users.iter().position(|u| u == user)
    }

    /// The side a message from `from` to `to` counts for, and whether its
    /// names must be stored because they are not the room's pair.
    pub(crate) fn sender(&self, from: &str, to: &str) -> (Side, bool) {
        match self.side_of(from) {
            Some(side) => (side, self.users[1 - side] != to),
            None => (0, true),
        }
    }

    /// Messages of `side`'s peer that `side` has not read.
    pub(crate) fn unread(&self, side: Side) -> u64 {
        let peer = 1 - side;
        self.count[peer] - self.cursor_count[side].max(self.floor_count[peer])
    }

    /// Encodes the state for `rooms`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.name.len());
        out.push(FORMAT);
        put_varint(&mut out, u64::from(self.id));
        put_bytes(&mut out, self.name.as_bytes());
        for user in &self.users {
            put_bytes(&mut out, user.as_bytes());
        }
        for value in [
            self.newest_ts,
            self.oldest_ts,
            self.floor,
            self.staged_from,
            self.newest_seq,
        ] {
            put_varint(&mut out, value);
        }
        for pair in [
            self.count,
            self.floor_count,
            self.cursor,
            self.cursor_count,
            self.staged,
        ] {
            put_varint(&mut out, pair[0]);
            put_varint(&mut out, pair[1]);
        }
        out
    }

    /// Decodes a `rooms` value, checking that its counters are consistent.
    pub(crate) fn decode(bytes: &[u8]) -> Result<RoomState, String> {
        let mut input = bytes;
        let format = take_u8(&mut input)?;
        if format != FORMAT {
            return Err(format!("unknown room state format {format}"));
        }
        let id = u32::try_from(take_varint(&mut input)?).map_err(|_| "room id out of range")?;
        let name = take_str(&mut input)?.to_owned();
        let users = [
            take_str(&mut input)?.to_owned(),
            take_str(&mut input)?.to_owned(),
        ];
        let mut one = || take_varint(&mut input);
        let (newest_ts, oldest_ts, floor, staged_from, newest_seq) =
            (one()?, one()?, one()?, one()?, one()?);
        let mut pair = || -> Result<[u64; 2], String> { Ok([one()?, one()?]) };
        let state = RoomState {
            id,
            name,
            users,
            newest_ts,
            oldest_ts,
            floor,
            staged_from,
            newest_seq,
            count: pair()?,
            floor_count: pair()?,
            cursor: pair()?,
            cursor_count: pair()?,
            staged: pair()?,
        };
        if !input.is_empty() {
            return Err(format!("{} trailing bytes", input.len()));
        }
        // What `unread` and `stored` subtract must be there to subtract.
        let consistent = (0..2).all(|s| {
            state.floor_count[s] <= state.count[s]
                && state.cursor_count[1 - s] <= state.count[s]
                && state.staged[s] <= state.count[s]
        });
        if !consistent {
            return Err("inconsistent counters".into());
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RoomState {
        let mut st = RoomState::new(7, "dm:Ann_Bob", "Bob", "Ann");
        st.newest_ts = 1_766_889_946_123_456;
        st.oldest_ts = 10;
        st.floor = 5;
        st.count = [10, 20];
        st.floor_count = [1, 2];
        st.cursor = [1_766_889_946_123_456, 40];
        st.cursor_count = [20, 3];
        st.staged = [4, 5];
        st.staged_from = 99;
        st.newest_seq = 120;
        st
    }

    #[test]
    fn a_state_round_trips_and_knows_its_pair() {
        let st = sample();
        assert_eq!(st.users, ["Ann", "Bob"]);
        assert_eq!(RoomState::decode(&st.encode()).unwrap(), st);
        assert_eq!(st.side_of("Bob"), Some(1));
        assert_eq!(st.sender("Bob", "Ann"), (1, false));
        assert_eq!(st.sender("Bob", "Cy"), (1, true));
        assert_eq!(st.sender("Cy", "Ann"), (0, true));
        // Ann read everything of Bob's; Bob has 10 - max(3, 1) unread.
        assert_eq!((st.unread(0), st.unread(1)), (0, 7));
    }

    #[test]
    fn damaged_or_inconsistent_states_are_errors() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(RoomState::decode(&bytes[..n]).is_err(), "prefix of {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(RoomState::decode(&longer).is_err());
        let mut st = sample();
        st.floor_count = [11, 0];
        assert!(RoomState::decode(&st.encode()).is_err());
        let mut st = sample();
        st.cursor_count = [21, 0];
        assert!(RoomState::decode(&st.encode()).is_err());
    }
}
