//! The changes the store applies, in log order, and what applying them did.
//!
//! Every change of shared state (a message, a read cursor, a purge) is one
//! [`Change`]. On a single node the store's own queue orders them; in a
//! cluster the replicated log does, and every node applies the same changes
//! in the same order. `apply` is deterministic, so every node derives the
//! same [`Outcome`] (the same `ts`, the same duplicate, the same cursor).

use serde::{Deserialize, Serialize};

use super::StoredMessage;

/// A state change, applied in log order by the store on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new message.
    Message(NewMessage),
    /// A user has read a room up to a `ts`.
    Read(ReadMark),
    /// History deleted for good.
    Purge(PurgeSelection),
}

/// A message as a connection submitted it; the store assigns its `ts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Room id, `dm:A_B`.
    pub room: String,
    /// Socket id of the sending connection (the message's `id`).
    pub sid: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Message text.
    pub text: String,
    /// The client's own id for exactly-once send, already validated.
    pub cid: Option<String>,
    /// Wall clock at acceptance on the accepting node, Unix microseconds:
    /// the message's `time`, and the lower bound of its `ts`.
    pub time_us: u64,
    /// The accepting node's UTC offset at `time_us`, in seconds, so every
    /// node formats the same `time`.
    pub utc_offset_s: i32,
    /// Cluster only: the entry's own id (its `Nats-Msg-Id`), which makes a
    /// publish retried after the engine forgot it harmless.
    pub eid: Option<[u8; 16]>,
}

/// A read cursor to move forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    /// Room id, `dm:A_B`.
    pub room: String,
    /// Who has read.
    pub user: String,
    /// The `ts` of the newest message read.
    pub ts: u64,
}

/// Which messages a purge deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeSelection {
    /// One room's messages older than `before` (exclusive), all without it.
    Room {
        /// Room id, `dm:A_B`.
        room: String,
        /// Exclusive upper bound on ts.
        before: Option<u64>,
    },
    /// Every room's messages older than `before` (exclusive).
    All {
        /// Exclusive upper bound on ts.
        before: u64,
    },
}

/// What applying one change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new message, stored with its `ts`; the sender's read cursor moved
    /// to it (no `read` event for that: the message itself tells).
    Stored(StoredMessage),
    /// The sender's `cid` (or, in a cluster, the entry's `eid`) is already
    /// known: nothing was stored; this is the original message.
    Duplicate(StoredMessage),
    /// The cursor moved forward to `ts` (clamped to the room's newest message).
    ReadMoved {
        /// Room id.
        room: String,
        /// Whose cursor.
        user: String,
        /// The cursor now.
        ts: u64,
    },
    /// The cursor did not move; `ts` is where it is.
    ReadUnchanged {
        /// Room id.
        room: String,
        /// Whose cursor.
        user: String,
        /// The cursor as it is.
        ts: u64,
        /// False when the room has no messages (no conversation to read).
        known: bool,
    },
    /// How many messages a purge deleted.
    Purged {
        /// Messages deleted.
        count: u64,
    },
    /// The change's log position was applied before (a replay after a
    /// restart): nothing changed now. Reported only for a change submitted
    /// with a ticket; what it did then is not kept.
    AlreadyApplied,
}

/// A change waiting to be applied. `seq` is its log position when the log
/// is replicated (the stream sequence); on a single node the store assigns
/// the next one. `ticket` travels through untouched: who to answer.
#[derive(Debug)]
pub struct Pending<T> {
    /// Log position, when the log assigned it.
    pub seq: Option<u64>,
    /// The change.
    pub change: Change,
    /// Who to answer once it is applied (none for other nodes' changes).
    pub ticket: Option<T>,
}

/// One applied change.
#[derive(Debug)]
pub struct Applied<T> {
    /// Its log position.
    pub seq: u64,
    /// What applying it did.
    pub outcome: Outcome,
    /// The ticket it was submitted with.
    pub ticket: Option<T>,
}

/// The result of one group commit: every change applied, in log order, or
/// the commit failed and nothing of it was stored.
#[derive(Debug)]
pub struct AppliedBatch<T> {
    /// The applied changes, or the error and the pendings handed back.
    pub result: Result<Vec<Applied<T>>, NotApplied<T>>,
}

/// A failed commit: the error, and every pending change of it handed back.
pub type NotApplied<T> = (super::StoreError, Vec<Pending<T>>);
