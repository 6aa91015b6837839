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
//! its `oldest` entry, when the batch is done. A room's `inbox` keys are
//! not rewritten at every message: the first message after they were
//! exact marks them behind in `relist`, and the applier brings them up to
//! date later, once for however many messages came meanwhile (`relist.rs`).

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};

use redb::{ReadableTable, Table, WriteTransaction};

use super::change::{Change, NewMessage, Outcome, PurgeSelection, ReadMark};
use super::chunk::{Builder, Sealed};
use super::clock::format_time;
use super::error::DbContext;
use super::read::{find_message, position, room_id, room_state};
use super::record::{self, Context, RecordRef, Sid, Stamp};
use super::room::RoomState;
use super::schema::{
    APPLIED_SEQ_KEY, CHUNKS, CIDS, CidTable, EID_LOG, EIDS, INBOX, NEXT_ROOM_KEY, OLDEST, RELIST,
    ROOM_IDS, ROOMS, STAGED, STATE, SWEEP, bucket, read_u64, write_u64,
};
use super::{StoreError, StoredMessage};

/// What [`Batch::apply`] did with one change. A message stored now is
/// only its `ts` until the batch has committed: [`Effect::into_outcome`]
/// then makes the message object out of the change itself, moving its
/// strings instead of copying them, so the applier neither allocates them
/// again nor frees them on a thread other than the one that made them.
#[derive(Debug)]
pub(crate) enum Effect {
    /// The change's message is stored with this `ts`.
    Stored {
        /// The message's `ts`.
        ts: u64,
    },
    /// Anything else, complete.
    Done(Outcome),
}

impl Effect {
    /// The outcome of `change`, the change this effect came from.
    pub(crate) fn into_outcome(self, change: Change) -> Outcome {
        match (self, change) {
            (Effect::Done(outcome), _) => outcome,
            (Effect::Stored { ts }, Change::Message(m)) => Outcome::Stored(stored(m, ts)),
            (Effect::Stored { .. }, other) => unreachable!("{other:?} stores no message"),
        }
    }

    /// True for a purge that deleted messages.
    pub(crate) fn purged(&self) -> bool {
        matches!(self, Effect::Done(Outcome::Purged { count }) if *count > 0)
    }
}

/// The message object of `m` stored with `ts`.
fn stored(m: NewMessage, ts: u64) -> StoredMessage {
    StoredMessage {
        time: format_time(m.time_us, m.utc_offset_s),
        room: m.room,
        ts,
        id: m.sid,
        from: m.from,
        to: m.to,
        text: m.text,
    }
}

/// How many messages a room needs in one batch to skip `staged`.
pub(crate) const DIRECT_AT: usize = 8;

/// A builder that goes on with a room's last chunk (unless it lies below
/// the purge floor: then a new chunk starts after everything before it).
pub(crate) fn tail_builder(
    chunks: &impl super::read::Chunks,
    st: &RoomState,
) -> Result<Builder, StoreError> {
    let tail = chunks
        .range((st.id, 0)..=(st.id, u64::MAX))
        .ctx("reading chunks")?
        .next_back()
        .transpose()
        .ctx("reading chunks")?;
    if let Some((key, value)) = tail {
        let first_ts = key.value().1;
        let builder = Builder::resume(first_ts, value.value()).map_err(|reason| {
            StoreError::CorruptMessage {
                room: st.name.clone(),
                ts: first_ts,
                reason,
            }
        })?;
        if builder.last_ts().is_some_and(|last| last >= st.floor) {
            return Ok(builder);
        }
    }
    // Everything before the first staged message comes before this chunk.
    Ok(Builder::new([
        st.count[0] - st.staged[0],
        st.count[1] - st.staged[1],
    ]))
}

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
    pub relist: Table<'t, (&'static [u8], &'static [u8]), u64>,
    pub cids: CidTable<'t>,
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
            relist: txn.open_table(RELIST).ctx("opening relist")?,
            cids: txn.open_table(CIDS).ctx("opening cids")?,
            eids: txn.open_table(EIDS).ctx("opening eids")?,
            eid_log: txn.open_table(EID_LOG).ctx("opening eid log")?,
            oldest: txn.open_table(OLDEST).ctx("opening oldest")?,
            sweep: txn.open_table(SWEEP).ctx("opening sweep")?,
        })
    }
}

/// Where room `st`'s inbox keys stand, by `relist`.
fn listing_of(
    relist: &impl ReadableTable<(&'static [u8], &'static [u8]), u64>,
    st: &RoomState,
) -> Result<Listing, StoreError> {
    let behind = relist
        .get((st.users[0].as_bytes(), st.name.as_bytes()))
        .ctx("reading relist")?;
    Ok(match behind {
        Some(ts) => Listing::Behind(ts.value()),
        None => Listing::Exact,
    })
}

/// Most rooms whose ids and states a [`RoomCache`] keeps (about 200 bytes
/// each): a chat's busy rooms, not its whole history.
const CACHED_ROOMS: usize = 4096;

/// Room ids and states as the applier's last commit left them, kept from
/// one batch to the next: live chat brings the same rooms commit after
/// commit, and reading and decoding each one's state every time cost more
/// than applying its message. Only the applier's own thread writes room
/// states while it runs; it forgets what its fold and sweep steps rewrite
/// ([`RoomCache::forget_bucket`], [`RoomCache::clear`]), a failed commit
/// leaves the cache empty, and a batch that finds the log moved on
/// without it starts empty.
#[derive(Default)]
pub(crate) struct RoomCache {
    ids: HashMap<String, u32>,
    states: HashMap<u32, (RoomState, Listing)>,
    // The log position the states are as of.
    seq: u64,
    /// The users of the rooms whose inbox keys the batch that left this
    /// marked behind (two per room).
    pub marked: Vec<String>,
}

impl RoomCache {
    /// Forgets the states of bucket `b`'s rooms (a fold step rewrote them).
    pub(crate) fn forget_bucket(&mut self, b: u8) {
        self.states.retain(|&id, _| bucket(id) != b);
    }

    /// Forgets every state (a sweep step, a reopened file).
    pub(crate) fn clear(&mut self) {
        self.states.clear();
    }

    /// Forgets the states of `rooms` (a relist step brought their inbox
    /// keys up to date).
    pub(crate) fn forget(&mut self, rooms: &[u32]) {
        for id in rooms {
            self.states.remove(id);
        }
    }
}

/// Where a room's `inbox` keys stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    /// They carry the room's newest ts (none while it has no messages).
    Exact,
    /// They carry this ts (0: there are none), and `relist` says so.
    Behind(u64),
}

/// A room state being changed by a batch, and what its keys were before.
struct Touched {
    state: RoomState,
    listing: Listing,
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
    // Rooms were created: `next_room` is written back.
    created: bool,
    touched: HashMap<u32, Touched>,
    // Room ids and untouched room states from earlier commits.
    ids: HashMap<String, u32>,
    cached: HashMap<u32, (RoomState, Listing)>,
    buf: Vec<u8>,
    // Rooms with DIRECT_AT or more messages in this batch.
    busy: HashSet<String>,
    // The users of rooms whose inbox keys were marked behind.
    marked: Vec<String>,
    // Busy rooms' messages on their way straight into chunks.
    direct: HashMap<u32, Direct>,
}

/// A room's messages going straight into its chunks, skipping `staged`.
struct Direct {
    builder: Builder,
    sealed: Vec<Sealed>,
}

impl<'t> Batch<'t> {
    /// Starts a batch in `txn` with the rooms the last one left in `cache`
    /// (dropped if the log has moved on since: another writer).
    pub(crate) fn begin(
        txn: &'t WriteTransaction,
        cache: RoomCache,
    ) -> Result<Batch<'t>, StoreError> {
        let t = Tables::open(txn)?;
        let applied_seq = read_u64(&t.state, APPLIED_SEQ_KEY)?.unwrap_or(0);
        let next_room = read_u64(&t.state, NEXT_ROOM_KEY)?.unwrap_or(0);
        let cache = match cache.seq == applied_seq {
            true => cache,
            false => RoomCache::default(),
        };
        Ok(Batch {
            t,
            applied_seq,
            next_room,
            created: false,
            touched: HashMap::new(),
            ids: cache.ids,
            cached: cache.states,
            buf: Vec::new(),
            busy: HashSet::new(),
            marked: Vec::new(),
            direct: HashMap::new(),
        })
    }

    /// Notes the changes the batch is about to apply: a room with
    /// [`DIRECT_AT`] or more messages among them (and none staged) has
    /// them written straight into its chunks. Live chat brings a room one
    /// or two per commit; bulk inflow (a busy room, an import) brings
    /// dozens, and one chunk rewrite for all of them beats staging,
    /// folding and deleting each.
    pub(crate) fn expect<'c>(&mut self, changes: impl ExactSizeIterator<Item = &'c Change>) {
        if changes.len() < DIRECT_AT {
            return;
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for change in changes {
            if let Change::Message(m) = change {
                *counts.entry(m.room.as_str()).or_default() += 1;
            }
        }
        self.busy = counts
            .into_iter()
            .filter(|&(_, n)| n >= DIRECT_AT)
            .map(|(room, _)| room.to_owned())
            .collect();
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
    pub(crate) fn apply(&mut self, seq: u64, change: &Change) -> Result<Effect, StoreError> {
        let effect = match change {
            Change::Message(m) => self.message(seq, m)?,
            Change::Read(r) => Effect::Done(self.read(r)?),
            Change::Purge(p) => Effect::Done(self.purge(p)?),
        };
        self.applied_seq = seq;
        Ok(effect)
    }

    fn message(&mut self, seq: u64, m: &NewMessage) -> Result<Effect, StoreError> {
        if let Some(eid) = m.eid
            && let Some(original) = self.eid_original(seq, eid, m)?
        {
            return Ok(Effect::Done(Outcome::Duplicate(original)));
        }
        if let Some(cid) = &m.cid
            && let Some((room, ts, cid_seq)) = self.cid_names(&m.from, cid)?
            && let Some(original) = self.find(room, ts, Some(cid_seq))?
        {
            self.remember_eid(seq, m.eid, room, ts)?;
            return Ok(Effect::Done(Outcome::Duplicate(original)));
        }
        let id = self.room_for_message(m)?;
        let st = &mut self
            .touched
            .get_mut(&id)
            .expect("room_for_message loads it")
            .state;
        let ts =
            m.time_us.max(
                st.newest_ts
                    .checked_add(1)
                    .ok_or_else(|| StoreError::TsExhausted {
                        room: m.room.clone(),
                    })?,
            );
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
        let direct = st.staged == [0, 0] && self.busy.contains(&m.room);
        if direct {
            let to_chunks = match self.direct.entry(id) {
                Entry::Occupied(slot) => slot.into_mut(),
                Entry::Vacant(slot) => slot.insert(Direct {
                    builder: tail_builder(&self.t.chunks, st)?,
                    sealed: Vec::new(),
                }),
            };
            to_chunks.builder.push(&record, &mut to_chunks.sealed);
        } else {
            self.buf.clear();
            self.buf.extend_from_slice(&id.to_le_bytes());
            self.buf.extend_from_slice(&ts.to_le_bytes());
            record::encode(&mut self.buf, &record, Context { ts, offset_s: 0 });
            self.t
                .staged
                .insert((bucket(id), seq), self.buf.as_slice())
                .ctx("staging message")?;
            if st.staged == [0, 0] {
                st.staged_from = seq;
            }
            st.staged[side] += 1;
            st.newest_seq = seq;
        }
        if !st.has_messages() {
            st.oldest_ts = ts;
        }
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
        Ok(Effect::Stored { ts })
    }

    // Writes a room's direct messages into its chunks, so lookups see them.
    fn flush(&mut self, id: u32) -> Result<(), StoreError> {
        let Some(mut direct) = self.direct.remove(&id) else {
            return Ok(());
        };
        if !direct.builder.is_empty() {
            direct.sealed.push(direct.builder.seal());
        }
        for chunk in direct.sealed {
            self.t
                .chunks
                .insert((id, chunk.first_ts), chunk.bytes.as_slice())
                .ctx("writing chunk")?;
        }
        Ok(())
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
        match self.find(room, ts, Some(at))? {
            Some(original) => Ok(Some(original)),
            None => Ok(Some(stored(m.clone(), ts))),
        }
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
    fn find(
        &mut self,
        id: u32,
        ts: u64,
        seq: Option<u64>,
    ) -> Result<Option<StoredMessage>, StoreError> {
        if !self.load(id)? {
            return Ok(None);
        }
        self.flush(id)?;
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
        self.flush(id)?;
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

    fn purge(&mut self, p: &PurgeSelection) -> Result<Outcome, StoreError> {
        let count = match p {
            PurgeSelection::Room { room, before } => match self.id_of(room)? {
                Some(id) => self.purge_room(id, before.unwrap_or(u64::MAX))?,
                None => 0,
            },
            PurgeSelection::All { before } => {
                // Only the rooms whose oldest message is older than
                // `before`: as of the last commit in `oldest`, and as of
                // now for the rooms this batch changed.
                let mut ids = BTreeSet::new();
                for item in self
                    .t
                    .oldest
                    .range((0, 0)..(*before, 0))
                    .ctx("reading oldest")?
                {
                    ids.insert(item.ctx("reading oldest")?.0.value().1);
                }
                ids.extend(
                    self.touched
                        .iter()
                        .filter(|(_, t)| t.state.has_messages() && t.state.oldest_ts < *before)
                        .map(|(&id, _)| id),
                );
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
        self.flush(id)?;
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
        self.created = true;
        self.t
            .room_ids
            .insert(m.room.as_bytes(), id)
            .ctx("creating room")?;
        self.ids.insert(m.room.clone(), id);
        self.touched.insert(
            id,
            Touched {
                state: RoomState::new(id, &m.room, &m.from, &m.to),
                listing: Listing::Exact,
                inbox_at_start: None,
                oldest_at_start: 0,
            },
        );
        Ok(id)
    }

    // Makes room `id`'s state available in `touched`; false if no such room.
    fn load(&mut self, id: u32) -> Result<bool, StoreError> {
        if let Entry::Vacant(slot) = self.touched.entry(id) {
            let (state, listing) = match self.cached.remove(&id) {
                Some(cached) => cached,
                None => match room_state(&self.t.rooms, id)? {
                    Some(state) => {
                        let listing = listing_of(&self.t.relist, &state)?;
                        (state, listing)
                    }
                    None => return Ok(false),
                },
            };
            slot.insert(Touched {
                listing,
                inbox_at_start: state.has_messages().then_some(state.newest_ts),
                oldest_at_start: state.oldest_ts,
                state,
            });
        }
        Ok(true)
    }

    /// Writes the room states the batch touched (with their inbox and
    /// `oldest` entries), the applied log position and the next room id,
    /// and forgets entry ids older than the window. Returns the rooms as
    /// the batch leaves them, for the next one once this one is committed.
    pub(crate) fn finish(mut self) -> Result<RoomCache, StoreError> {
        let direct: Vec<u32> = self.direct.keys().copied().collect();
        for id in direct {
            self.flush(id)?;
        }
        let touched: Vec<(u32, Touched)> = self.touched.drain().collect();
        for (id, mut touched) in touched {
            touched.listing = self.list(&touched)?;
            let st = &touched.state;
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
            if self.cached.len() >= CACHED_ROOMS {
                self.cached.clear();
            }
            self.cached.insert(id, (touched.state, touched.listing));
        }
        write_u64(&mut self.t.state, APPLIED_SEQ_KEY, self.applied_seq)?;
        if self.created {
            write_u64(&mut self.t.state, NEXT_ROOM_KEY, self.next_room)?;
        }
        self.prune_eids()?;
        if self.ids.len() > CACHED_ROOMS {
            self.ids.clear();
        }
        Ok(RoomCache {
            ids: std::mem::take(&mut self.ids),
            states: std::mem::take(&mut self.cached),
            seq: self.applied_seq,
            marked: std::mem::take(&mut self.marked),
        })
    }

    // Keeps a touched room's inbox keys true to its state: a room with
    // messages and a newer newest ts is marked behind in `relist` (once,
    // until a relist step lists it again); a room left without messages
    // leaves its users' inboxes at once. Returns where the keys stand now.
    fn list(&mut self, touched: &Touched) -> Result<Listing, StoreError> {
        let st = &touched.state;
        let listed = match touched.listing {
            Listing::Behind(ts) => (ts != 0).then_some(ts),
            Listing::Exact => touched.inbox_at_start,
        };
        let now = st.has_messages().then_some(st.newest_ts);
        match (touched.listing, now) {
            (Listing::Behind(_), Some(_)) => Ok(touched.listing),
            (Listing::Exact, Some(_)) if now == listed => Ok(Listing::Exact),
            (Listing::Exact, Some(_)) => {
                let behind = listed.unwrap_or(0);
                for user in &st.users {
                    self.t
                        .relist
                        .insert((user.as_bytes(), st.name.as_bytes()), behind)
                        .ctx("marking inbox keys behind")?;
                }
                self.marked.extend(st.users.iter().cloned());
                Ok(Listing::Behind(behind))
            }
            (_, None) => {
                for user in &st.users {
                    if let Some(ts) = listed {
                        self.t
                            .inbox
                            .remove((user.as_bytes(), u64::MAX - ts, st.name.as_bytes()))
                            .ctx("updating inbox")?;
                    }
                    self.t
                        .relist
                        .remove((user.as_bytes(), st.name.as_bytes()))
                        .ctx("updating relist")?;
                }
                Ok(Listing::Exact)
            }
        }
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
            let current = self
                .t
                .eids
                .get(eid)
                .ctx("pruning eids")?
                .map(|v| v.value().0);
            if current == Some(seq) {
                self.t.eids.remove(eid).ctx("pruning eids")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::*;
    use crate::store::{HistoryQuery, Store};

    const ROOM: &str = "dm:Ann_Bob";

    fn send(store: &Store, from: &str, text: &str, time_us: u64) -> Outcome {
        let to = if from == "Ann" { "Bob" } else { "Ann" };
        store
            .apply(Change::Message(msg(ROOM, from, to, text, time_us)))
            .unwrap()
    }

    fn stored(outcome: Outcome) -> StoredMessage {
        match outcome {
            Outcome::Stored(m) => m,
            other => panic!("expected Stored, got {other:?}"),
        }
    }

    fn read(store: &Store, user: &str, ts: u64) -> Outcome {
        store
            .apply(Change::Read(ReadMark {
                room: ROOM.into(),
                user: user.into(),
                ts,
            }))
            .unwrap()
    }

    fn purge(store: &Store, command: PurgeSelection) -> u64 {
        match store.apply(Change::Purge(command)).unwrap() {
            Outcome::Purged { count } => count,
            other => panic!("expected Purged, got {other:?}"),
        }
    }

    fn before(ts: u64) -> PurgeSelection {
        PurgeSelection::Room {
            room: ROOM.into(),
            before: Some(ts),
        }
    }

    fn texts(store: &Store, room: &str) -> Vec<String> {
        let q = HistoryQuery {
            limit: 1000,
            ..Default::default()
        };
        let page = store.history_page(room, &q).unwrap();
        page.messages.into_iter().map(|m| m.text).collect()
    }

    fn unread(store: &Store, user: &str) -> Vec<(String, u64, u64, u64)> {
        store
            .conversations(user, None, None, 100)
            .unwrap()
            .into_iter()
            .map(|c| (c.room, c.unread, c.read, c.peer_read))
            .collect()
    }

    #[test]
    fn ts_is_the_clock_unless_the_room_is_ahead_and_time_is_the_clock() {
        let (_dir, store) = tmp_store();
        let t = 1_766_889_946_123_456;
        let first = stored(send(&store, "Ann", "one", t));
        assert_eq!(first.ts, t);
        assert_eq!(first.time, "28/12/2025, 2:45:46 am");
        // A clock that went back: ts goes on from the room's newest, `time`
        // says what the clock said.
        let second = stored(send(&store, "Bob", "two", t - 5_000_000));
        assert_eq!(second.ts, t + 1);
        assert_eq!(second.time, "28/12/2025, 2:45:41 am");
        // Another room keeps its own ts: the same ts is fine there.
        let other = store
            .apply(Change::Message(msg("dm:Ann_Cy", "Cy", "Ann", "x", t)))
            .unwrap();
        assert_eq!(stored(other).ts, t);
        // What was answered is what is read back, folded or not.
        let q = HistoryQuery {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(
            store.history_page(ROOM, &q).unwrap().messages,
            [first.clone(), second.clone()]
        );
        fold_all(&store);
        assert_eq!(
            store.history_page(ROOM, &q).unwrap().messages,
            [first, second]
        );
    }

    #[test]
    fn time_uses_the_accepting_nodes_offset() {
        let (_dir, store) = tmp_store();
        let mut m = msg(ROOM, "Ann", "Bob", "hi", 1_766_889_946_123_456);
        m.utc_offset_s = 5 * 3600 + 1800;
        let sent = stored(store.apply(Change::Message(m)).unwrap());
        assert_eq!(sent.time, "28/12/2025, 8:15:46 am");
        fold_all(&store);
        let q = HistoryQuery {
            limit: 1,
            ..Default::default()
        };
        assert_eq!(store.history_page(ROOM, &q).unwrap().messages, [sent]);
    }

    #[test]
    fn a_repeated_cid_is_the_original_until_it_is_purged() {
        let (_dir, store) = tmp_store();
        let with_cid = |from: &str, to: &str, room: &str, text: &str, time: u64| {
            let mut m = msg(room, from, to, text, time);
            m.cid = Some("c-1".into());
            store.apply(Change::Message(m)).unwrap()
        };
        let original = stored(with_cid("Ann", "Bob", ROOM, "first try", 10));
        // The same user and cid, even in another room, even with other text.
        for (room, to) in [(ROOM, "Bob"), ("dm:Ann_Cy", "Cy")] {
            match with_cid("Ann", to, room, "second try", 20) {
                Outcome::Duplicate(m) => assert_eq!(m, original),
                other => panic!("expected Duplicate, got {other:?}"),
            }
        }
        assert_eq!(texts(&store, ROOM), ["first try"]);
        assert!(store.rooms().unwrap().iter().all(|r| r != "dm:Ann_Cy"));
        // Another user's cid is theirs.
        stored(with_cid("Bob", "Ann", ROOM, "bob's", 30));
        // Folded, it is still found; after a restart too.
        fold_all(&store);
        assert!(
            matches!(with_cid("Ann", "Bob", ROOM, "x", 40), Outcome::Duplicate(m) if m == original)
        );
        // A purge forgets it: the next send with it is new.
        assert_eq!(
            purge(
                &store,
                PurgeSelection::Room {
                    room: ROOM.into(),
                    before: Some(11)
                }
            ),
            1
        );
        let again = stored(with_cid("Ann", "Bob", ROOM, "after purge", 50));
        assert_eq!(again.text, "after purge");
        assert_eq!(texts(&store, ROOM), ["bob's", "after purge"]);
    }

    #[test]
    fn an_eid_is_a_duplicate_within_the_window_only() {
        let (_dir, store) = tmp_store();
        let txn = store.db().unwrap().begin_write().unwrap();
        let mut batch = Batch::begin(&txn, RoomCache::default()).unwrap();
        let mut m = msg(ROOM, "Ann", "Bob", "hi", 10);
        m.eid = Some([7; 16]);
        let mut apply = |seq: u64| {
            let change = Change::Message(m.clone());
            batch.apply(seq, &change).unwrap().into_outcome(change)
        };
        let original = stored(apply(1));
        // A retry of the same entry, later in the log.
        match apply(5) {
            Outcome::Duplicate(d) => assert_eq!(d, original),
            other => panic!("expected Duplicate, got {other:?}"),
        }
        // Out of the window it is new (the engine's own dedup covers far less).
        let late = apply(1 + EID_WINDOW);
        assert!(matches!(late, Outcome::Stored(s) if s.ts == 11));
        batch.finish().unwrap();
        txn.commit().unwrap();
        // The window's old end is pruned by position.
        let txn = store.db().unwrap().begin_write().unwrap();
        let t = Tables::open(&txn).unwrap();
        assert_eq!(
            t.eid_log.first().unwrap().unwrap().0.value(),
            1 + EID_WINDOW
        );
    }

    #[test]
    fn sending_reads_what_came_before_and_read_moves_forward_only() {
        let (_dir, store) = tmp_store();
        let a1 = stored(send(&store, "Ann", "a1", 100)).ts;
        let b1 = stored(send(&store, "Bob", "b1", 200)).ts;
        let b2 = stored(send(&store, "Bob", "b2", 300)).ts;
        assert_eq!(unread(&store, "Ann"), [(ROOM.into(), 2, a1, b2)]);
        assert_eq!(unread(&store, "Bob"), [(ROOM.into(), 0, b2, a1)]);
        // Up to b1: one left.
        assert!(matches!(read(&store, "Ann", b1), Outcome::ReadMoved { ts, .. } if ts == b1));
        assert_eq!(unread(&store, "Ann"), [(ROOM.into(), 1, b1, b2)]);
        // Backwards: nothing moves.
        assert!(matches!(
            read(&store, "Ann", a1),
            Outcome::ReadUnchanged { ts, known: true, .. } if ts == b1
        ));
        // Past the newest: clamped to it.
        assert!(matches!(read(&store, "Ann", u64::MAX), Outcome::ReadMoved { ts, .. } if ts == b2));
        assert_eq!(unread(&store, "Ann"), [(ROOM.into(), 0, b2, b2)]);
        assert_eq!(store.read_cursor(ROOM, "Ann").unwrap(), b2);
        // A ts between messages counts what is at or below it.
        let b3 = stored(send(&store, "Bob", "b3", 400)).ts;
        stored(send(&store, "Bob", "b4", 500));
        fold_all(&store);
        assert!(matches!(
            read(&store, "Ann", b3 + 1),
            Outcome::ReadMoved { .. }
        ));
        assert_eq!(unread(&store, "Ann")[0].1, 1);
        // Not a room, not a member, nothing to read.
        let unknown = |o: Outcome| {
            matches!(
                o,
                Outcome::ReadUnchanged {
                    known: false,
                    ts: 0,
                    ..
                }
            )
        };
        assert!(unknown(read(&store, "Cy", b2)));
        assert!(unknown(
            store
                .apply(Change::Read(ReadMark {
                    room: "dm:X_Y".into(),
                    user: "X".into(),
                    ts: 1
                }))
                .unwrap()
        ));
    }

    #[test]
    fn unread_is_exact_in_a_long_folded_room() {
        let (_dir, store) = tmp_store();
        let mut ts = Vec::new();
        for part in [0..1500u64, 1500..3000] {
            let changes = part.map(|i| {
                let (from, to) = match i < 1000 && i % 3 == 0 {
                    true => ("Ann", "Bob"),
                    false => ("Bob", "Ann"),
                };
                Change::Message(msg(ROOM, from, to, &format!("message {i}"), 1000 + i))
            });
            ts.extend(stage_all(&store, changes).into_iter().map(|o| stored(o).ts));
            // The first half in chunks, the second staged.
            if ts.len() == 1500 {
                fold_all(&store);
            }
        }
        // Ann read up to message 2000: Bob's after it are unread.
        read(&store, "Ann", ts[2000]);
        let want = 999;
        assert_eq!(unread(&store, "Ann")[0].1, want);
        fold_all(&store);
        assert_eq!(unread(&store, "Ann")[0].1, want);
        // Purge below Ann's cursor changes nothing; above it, what is gone is not unread.
        purge(&store, before(ts[1000]));
        assert_eq!(unread(&store, "Ann")[0].1, want);
        purge(&store, before(ts[2500]));
        assert_eq!(unread(&store, "Ann")[0].1, 500);
        assert_eq!(texts(&store, ROOM).len(), 500);
    }

    #[test]
    fn purges_take_what_is_below_their_bound_in_log_order() {
        let (_dir, store) = tmp_store();
        for t in 1..=4 {
            send(&store, "Ann", "x", t * 10);
            store
                .apply(Change::Message(msg(
                    "dm:Ann_Cy",
                    "Cy",
                    "Ann",
                    "y",
                    t * 10 + 1,
                )))
                .unwrap();
        }
        read(&store, "Bob", 40);
        assert_eq!(
            purge(
                &store,
                PurgeSelection::Room {
                    room: ROOM.into(),
                    before: Some(25)
                }
            ),
            2
        );
        assert_eq!(texts(&store, ROOM).len(), 2);
        // Nothing twice.
        assert_eq!(
            purge(
                &store,
                PurgeSelection::Room {
                    room: ROOM.into(),
                    before: Some(25)
                }
            ),
            0
        );
        // Everything before a ts, in every room.
        assert_eq!(purge(&store, PurgeSelection::All { before: 32 }), 4);
        assert_eq!(texts(&store, "dm:Ann_Cy"), ["y"]);
        assert_eq!(texts(&store, ROOM), ["x"]);
        // A room emptied leaves the inbox; its cursors go back to 0.
        assert_eq!(
            purge(
                &store,
                PurgeSelection::Room {
                    room: ROOM.into(),
                    before: None
                }
            ),
            1
        );
        assert_eq!(store.rooms().unwrap(), ["dm:Ann_Cy"]);
        assert_eq!(unread(&store, "Bob"), []);
        assert_eq!(store.read_cursor(ROOM, "Bob").unwrap(), 0);
        // A bound in the future takes only what is there now: later
        // messages (even with older clocks) stay.
        assert_eq!(purge(&store, PurgeSelection::All { before: u64::MAX }), 1);
        let m = stored(send(&store, "Bob", "back", 5));
        assert_eq!(m.ts, 41, "ts never repeats in a room");
        assert_eq!(texts(&store, ROOM), ["back"]);
        assert_eq!(unread(&store, "Ann"), [(ROOM.into(), 1, 0, 41)]);
        assert_eq!(
            purge(
                &store,
                PurgeSelection::Room {
                    room: "dm:nope".into(),
                    before: None
                }
            ),
            0
        );
    }

    #[test]
    fn log_positions_are_committed_and_replays_skipped() {
        let (_dir, store) = tmp_store();
        send(&store, "Ann", "x", 1);
        send(&store, "Ann", "y", 2);
        assert_eq!(store.applied_seq().unwrap(), 2);
        let txn = store.db().unwrap().begin_write().unwrap();
        let batch = Batch::begin(&txn, RoomCache::default()).unwrap();
        assert_eq!(batch.position_of(None).unwrap(), Some(3));
        assert_eq!(batch.position_of(Some(2)).unwrap(), None);
        assert_eq!(batch.position_of(Some(3)).unwrap(), Some(3));
        assert!(matches!(
            batch.position_of(Some(5)),
            Err(StoreError::LogGap { applied: 2, got: 5 })
        ));
    }
}
