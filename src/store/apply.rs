//! Applying changes in log order: the rules every node follows, so every
//! node derives the same outcome from the same log.
//!
//! - A message gets `ts = max(time_us, room's newest ts + 1)`: unique and
//!   strictly increasing per room, whatever the clocks do; its `time` comes
//!   from `time_us` and the accepting node's UTC offset.
//! - `(from, cid)` already carried by a stored message (not purged): a
//!   duplicate, nothing stored; likewise an `eid` applied within the last
//!   [`EID_WINDOW`] log positions (cluster retries).
//! - Sending moves the sender's read cursor to the new message.
//! - A read cursor only moves forward, never past the room's newest message.
//! - A purge raises the room's floor (all rooms' for `All`): what is below
//!   it is gone at once for every reader and every rule; a room left empty
//!   leaves its users' inboxes and its cursors go back to 0. The bytes go
//!   later, in small steps (`sweep.rs`), so a big purge does not stall the
//!   applier.
//!
//! A [`Batch`] applies a group commit's changes in one write transaction,
//! keeping the room states it touches in memory and writing each once, with
//! its inbox and `oldest` entries, when the batch is done.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use redb::{ReadableTable, Table, WriteTransaction};

use super::change::{Change, NewMessage, Outcome, PurgeCommand, ReadMark};
use super::clock::format_time;
use super::error::DbContext;
use super::read::{find_message, position, room_id, room_state};
use super::record::{self, Context, RecordRef, Sid, Stamp};
use super::room::RoomState;
use super::schema::{
    APPLIED_SEQ_KEY, CHUNKS, CIDS, EID_LOG, EIDS, INBOX, NEXT_ROOM_KEY, OLDEST, ROOM_IDS, ROOMS,
    STAGED, STATE, SWEEP, bucket, read_u64, write_u64,
};
use super::{StoreError, StoredMessage};

/// How many log positions an entry id is remembered for: a cluster entry
/// published again within this many positions is a duplicate.
pub const EID_WINDOW: u64 = 1_000_000;

/// Every table a batch writes, opened once per transaction.
pub(crate) struct Tables<'t> {
    pub state: Table<'t, &'static [u8], &'static [u8]>,
    pub room_ids: Table<'t, &'static [u8], u32>,
    pub rooms: Table<'t, u32, &'static [u8]>,
    pub chunks: Table<'t, (u32, u64), &'static [u8]>,
    pub staged: Table<'t, (u8, u64), &'static [u8]>,
    pub inbox: Table<'t, (&'static [u8], u64, &'static [u8]), ()>,
    pub cids: Table<'t, (&'static [u8], &'static [u8]), (u32, u64, u64)>,
    pub eids: Table<'t, [u8; 16], (u64, u32, u64)>,
    pub eid_log: Table<'t, u64, [u8; 16]>,
    pub oldest: Table<'t, (u64, u32), ()>,
    pub sweep: Table<'t, u32, ()>,
}

impl<'t> Tables<'t> {
    /// Opens them all in `txn`.
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, StoreError> {
        Ok(Tables {
            state: txn.open_table(STATE).ctx("opening state")?,
            room_ids: txn.open_table(ROOM_IDS).ctx("opening room ids")?,
            rooms: txn.open_table(ROOMS).ctx("opening rooms")?,
            chunks: txn.open_table(CHUNKS).ctx("opening chunks")?,
            staged: txn.open_table(STAGED).ctx("opening staged messages")?,
            inbox: txn.open_table(INBOX).ctx("opening inbox")?,
            cids: txn.open_table(CIDS).ctx("opening cids")?,
            eids: txn.open_table(EIDS).ctx("opening eids")?,
            eid_log: txn.open_table(EID_LOG).ctx("opening eid log")?,
            oldest: txn.open_table(OLDEST).ctx("opening oldest")?,
            sweep: txn.open_table(SWEEP).ctx("opening sweep")?,
        })
    }
}

/// A room state being changed by a batch, and what its keys were before.
struct Touched {
    state: RoomState,
    // The room's newest ts when it had messages at the batch's start (its
    // inbox key then), and its oldest ts (its `oldest` key).
    inbox_at_start: Option<u64>,
    oldest_at_start: u64,
}

/// One write transaction's worth of applied changes.
pub(crate) struct Batch<'t> {
    /// The open tables.
    pub t: Tables<'t>,
    applied_seq: u64,
    next_room: u64,
    touched: HashMap<u32, Touched>,
    ids: HashMap<String, u32>,
    buf: Vec<u8>,
}

impl<'t> Batch<'t> {
    /// Starts a batch in `txn`.
    pub(crate) fn begin(txn: &'t WriteTransaction) -> Result<Batch<'t>, StoreError> {
        let t = Tables::open(txn)?;
        let applied_seq = read_u64(&t.state, APPLIED_SEQ_KEY)?.unwrap_or(0);
        let next_room = read_u64(&t.state, NEXT_ROOM_KEY)?.unwrap_or(0);
        Ok(Batch {
            t,
            applied_seq,
            next_room,
            touched: HashMap::new(),
            ids: HashMap::new(),
            buf: Vec::new(),
        })
    }

    /// Where a change with log position `seq` (None: the next) goes:
    /// `Ok(Some(n))` to apply at `n`, `Ok(None)` if it was applied already,
    /// an error if it would leave a gap.
    pub(crate) fn position_of(&self, seq: Option<u64>) -> Result<Option<u64>, StoreError> {
        let next = self.applied_seq + 1;
        match seq {
            None => Ok(Some(next)),
            Some(n) if n < next => Ok(None),
            Some(n) if n == next => Ok(Some(n)),
            Some(n) => Err(StoreError::LogGap {
                applied: self.applied_seq,
                got: n,
            }),
        }
    }

    /// Applies `change` at log position `seq` (from [`Batch::position_of`]).
    pub(crate) fn apply(&mut self, seq: u64, change: &Change) -> Result<Outcome, StoreError> {
        let outcome = match change {
            Change::Message(m) => self.message(seq, m)?,
            Change::Read(r) => self.read(r)?,
            Change::Purge(p) => self.purge(p)?,
        };
        self.applied_seq = seq;
        Ok(outcome)
    }

    fn message(&mut self, seq: u64, m: &NewMessage) -> Result<Outcome, StoreError> {
        if let Some(eid) = m.eid
            && let Some(original) = self.eid_original(seq, eid, m)?
        {
            return Ok(Outcome::Duplicate(original));
        }
        if let Some(cid) = &m.cid
            && let Some((room, ts, cid_seq)) = self.cid_names(&m.from, cid)?
            && let Some(original) = self.find(room, ts, Some(cid_seq))?
        {
            self.remember_eid(seq, m.eid, room, ts)?;
            return Ok(Outcome::Duplicate(original));
        }
        let id = self.room_for_message(m)?;
        let st = &mut self.touched.get_mut(&id).expect("room_for_message loads it").state;
        let ts = m.time_us.max(st.newest_ts.checked_add(1).ok_or_else(|| {
            StoreError::TsExhausted {
                room: m.room.clone(),
            }
        })?);
        let (side, names) = st.sender(&m.from, &m.to);
        let record = RecordRef {
            ts,
            side,
            stamp: Stamp::Clock {
                delta_s: ts / 1_000_000 - m.time_us / 1_000_000,
                offset_s: m.utc_offset_s,
            },
            sid: Sid::of(&m.sid),
            names: names.then_some((m.from.as_str(), m.to.as_str())),
            cid: m.cid.as_deref(),
            text: &m.text,
        };
        self.buf.clear();
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&ts.to_le_bytes());
        record::encode(&mut self.buf, &record, Context { ts, offset_s: 0 });
        self.t
            .staged
            .insert((bucket(id), seq), self.buf.as_slice())
            .ctx("staging message")?;

        if !st.has_messages() {
            st.oldest_ts = ts;
        }
        if st.staged == [0, 0] {
            st.staged_from = seq;
        }
        st.staged[side] += 1;
        st.newest_seq = seq;
        st.newest_ts = ts;
        st.count[side] += 1;
        if !names {
            // Who replies has read what came before.
            st.cursor[side] = ts;
            st.cursor_count[side] = st.count[1 - side];
        }
        if let Some(cid) = &m.cid {
            self.t
                .cids
                .insert((m.from.as_bytes(), cid.as_bytes()), (id, ts, seq))
                .ctx("recording cid")?;
        }
        self.remember_eid(seq, m.eid, id, ts)?;
        Ok(Outcome::Stored(StoredMessage {
            room: m.room.clone(),
            ts,
            id: m.sid.clone(),
            from: m.from.clone(),
            to: m.to.clone(),
            text: m.text.clone(),
            time: format_time(m.time_us, m.utc_offset_s),
        }))
    }

    // The (room, ts, seq) of the message `from` sent with `cid`, if recorded.
    fn cid_names(&self, from: &str, cid: &str) -> Result<Option<(u32, u64, u64)>, StoreError> {
        Ok(self
            .t
            .cids
            .get((from.as_bytes(), cid.as_bytes()))
            .ctx("reading cids")?
            .map(|v| v.value()))
    }

    // What `eid` produced, if it was applied within the window: the stored
    // message, or (purged since) the same message rebuilt from this copy
    // of the entry with the ts it got.
    fn eid_original(
        &mut self,
        seq: u64,
        eid: [u8; 16],
        m: &NewMessage,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let recorded = self.t.eids.get(eid).ctx("reading eids")?.map(|v| v.value());
        let Some((at, room, ts)) = recorded else {
            return Ok(None);
        };
        if seq.saturating_sub(at) >= EID_WINDOW {
            return Ok(None);
        }
        if let Some(original) = self.find(room, ts, Some(at))? {
            return Ok(Some(original));
        }
        Ok(Some(StoredMessage {
            room: m.room.clone(),
            ts,
            id: m.sid.clone(),
            from: m.from.clone(),
            to: m.to.clone(),
            text: m.text.clone(),
            time: format_time(m.time_us, m.utc_offset_s),
        }))
    }

    fn remember_eid(
        &mut self,
        seq: u64,
        eid: Option<[u8; 16]>,
        room: u32,
        ts: u64,
    ) -> Result<(), StoreError> {
        let Some(eid) = eid else { return Ok(()) };
        self.t
            .eids
            .insert(eid, (seq, room, ts))
            .ctx("recording eid")?;
        self.t.eid_log.insert(seq, eid).ctx("recording eid")?;
        Ok(())
    }

    // The stored (not purged) message of room `id` at `ts`.
    fn find(&mut self, id: u32, ts: u64, seq: Option<u64>) -> Result<Option<StoredMessage>, StoreError> {
        if !self.load(id)? {
            return Ok(None);
        }
        let st = &self.touched[&id].state;
        find_message(&self.t.chunks, &self.t.staged, st, ts, seq)
    }

    fn read(&mut self, r: &ReadMark) -> Result<Outcome, StoreError> {
        let unknown = || Outcome::ReadUnchanged {
            room: r.room.clone(),
            user: r.user.clone(),
            ts: 0,
            known: false,
        };
        let Some(id) = self.id_of(&r.room)? else {
            return Ok(unknown());
        };
        self.load(id)?;
        let st = &self.touched[&id].state;
        let Some(side) = st.side_of(&r.user) else {
            return Ok(unknown());
        };
        if !st.has_messages() {
            return Ok(unknown());
        }
        let target = r.ts.min(st.newest_ts);
        if target <= st.cursor[side] {
            return Ok(Outcome::ReadUnchanged {
                room: r.room.clone(),
                user: r.user.clone(),
                ts: st.cursor[side],
                known: true,
            });
        }
        let (through, _) = match target.checked_add(1) {
            Some(next) => position(&self.t.chunks, &self.t.staged, st, next)?,
            None => (st.count, None),
        };
        let st = &mut self.touched.get_mut(&id).expect("loaded above").state;
        st.cursor[side] = target;
        st.cursor_count[side] = through[1 - side];
        Ok(Outcome::ReadMoved {
            room: r.room.clone(),
            user: r.user.clone(),
            ts: target,
        })
    }

    fn purge(&mut self, p: &PurgeCommand) -> Result<Outcome, StoreError> {
        let count = match p {
            PurgeCommand::Room { room, before } => match self.id_of(room)? {
                Some(id) => self.purge_room(id, before.unwrap_or(u64::MAX))?,
                None => 0,
            },
            PurgeCommand::All { before } => {
                // Only the rooms whose oldest message is older than `before`.
                let mut ids = Vec::new();
                for item in self.t.oldest.range((0, 0)..(*before, 0)).ctx("reading oldest")? {
                    ids.push(item.ctx("reading oldest")?.0.value().1);
                }
                let mut count = 0;
                for id in ids {
                    count += self.purge_room(id, *before)?;
                }
                count
            }
        };
        Ok(Outcome::Purged { count })
    }

    // Raises room `id`'s floor to `before` (at most past its newest message);
    // returns how many messages that purged.
    fn purge_room(&mut self, id: u32, before: u64) -> Result<u64, StoreError> {
        if !self.load(id)? {
            return Ok(0);
        }
        let st = &self.touched[&id].state;
        let floor = before.min(st.newest_ts.saturating_add(1));
        if !st.has_messages() || floor <= st.oldest_ts {
            return Ok(0);
        }
        let (below, next) = position(&self.t.chunks, &self.t.staged, st, floor)?;
        let st = &mut self.touched.get_mut(&id).expect("loaded above").state;
        let purged = below[0] + below[1] - st.floor_count[0] - st.floor_count[1];
        st.floor = floor;
        st.floor_count = below;
        match next {
            Some(oldest) => st.oldest_ts = oldest,
            None => {
                st.oldest_ts = 0;
                st.cursor = [0, 0];
                st.cursor_count = [0, 0];
            }
        }
        self.t.sweep.insert(id, ()).ctx("queueing a sweep")?;
        Ok(purged)
    }

    // The id of room `name`, if it exists.
    fn id_of(&mut self, name: &str) -> Result<Option<u32>, StoreError> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(Some(id));
        }
        let id = room_id(&self.t.room_ids, name)?;
        if let Some(id) = id {
            self.ids.insert(name.to_owned(), id);
        }
        Ok(id)
    }

    // The room a message goes to, created (with the message's pair as its
    // users) if new, and loaded.
    fn room_for_message(&mut self, m: &NewMessage) -> Result<u32, StoreError> {
        if let Some(id) = self.id_of(&m.room)? {
            self.load(id)?;
            return Ok(id);
        }
        let id = u32::try_from(self.next_room).map_err(|_| StoreError::RoomsExhausted)?;
        self.next_room += 1;
        self.t
            .room_ids
            .insert(m.room.as_bytes(), id)
            .ctx("creating room")?;
        self.ids.insert(m.room.clone(), id);
        self.touched.insert(
            id,
            Touched {
                state: RoomState::new(id, &m.room, &m.from, &m.to),
                inbox_at_start: None,
                oldest_at_start: 0,
            },
        );
        Ok(id)
    }

    // Makes room `id`'s state available in `touched`; false if no such room.
    fn load(&mut self, id: u32) -> Result<bool, StoreError> {
        if let Entry::Vacant(slot) = self.touched.entry(id) {
            let Some(state) = room_state(&self.t.rooms, id)? else {
                return Ok(false);
            };
            slot.insert(Touched {
                inbox_at_start: state.has_messages().then_some(state.newest_ts),
                oldest_at_start: state.oldest_ts,
                state,
            });
        }
        Ok(true)
    }

    /// Writes the room states the batch touched (with their inbox and
    /// `oldest` entries), the applied log position and the next room id,
    /// and forgets entry ids older than the window.
    pub(crate) fn finish(mut self) -> Result<(), StoreError> {
        for (id, touched) in self.touched.drain() {
            let st = &touched.state;
            let inbox_now = st.has_messages().then_some(st.newest_ts);
            if inbox_now != touched.inbox_at_start {
                for user in &st.users {
                    if let Some(ts) = touched.inbox_at_start {
                        self.t
                            .inbox
                            .remove((user.as_bytes(), u64::MAX - ts, st.name.as_bytes()))
                            .ctx("updating inbox")?;
                    }
                    if let Some(ts) = inbox_now {
                        self.t
                            .inbox
                            .insert((user.as_bytes(), u64::MAX - ts, st.name.as_bytes()), ())
                            .ctx("updating inbox")?;
                    }
                }
            }
            if st.oldest_ts != touched.oldest_at_start {
                if touched.oldest_at_start != 0 {
                    self.t
                        .oldest
                        .remove((touched.oldest_at_start, id))
                        .ctx("updating oldest")?;
                }
                if st.oldest_ts != 0 {
                    self.t
                        .oldest
                        .insert((st.oldest_ts, id), ())
                        .ctx("updating oldest")?;
                }
            }
            self.t
                .rooms
                .insert(id, st.encode().as_slice())
                .ctx("writing room state")?;
        }
        write_u64(&mut self.t.state, APPLIED_SEQ_KEY, self.applied_seq)?;
        write_u64(&mut self.t.state, NEXT_ROOM_KEY, self.next_room)?;
        self.prune_eids()
    }

    // Forgets entry ids applied EID_WINDOW or more positions ago.
    fn prune_eids(&mut self) -> Result<(), StoreError> {
        let Some(end) = self.applied_seq.checked_sub(EID_WINDOW) else {
            return Ok(());
        };
        let old = self
            .t
            .eid_log
            .extract_from_if(..=end, |_, _| true)
            .ctx("pruning eids")?;
        let mut forget = Vec::new();
        for item in old {
            let (seq, eid) = item.ctx("pruning eids")?;
            forget.push((seq.value(), eid.value()));
        }
        for (seq, eid) in forget {
            // Only if it still points at this position.
            let current = self.t.eids.get(eid).ctx("pruning eids")?.map(|v| v.value().0);
            if current == Some(seq) {
                self.t.eids.remove(eid).ctx("pruning eids")?;
            }
        }
        Ok(())
    }
}
