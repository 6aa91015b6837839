//! Transitional: the schema 2 writer API (`Writer`, `NewMessage` without a
//! clock reading, `CommittedBatch`, `history` as a plain list, `last_ts`)
//! over the applier, so the chat keeps working unchanged until it moves to
//! the ordered-log API. Removed when it has.

use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::applier::{Applier, ApplierHandle, ApplierMode};
use super::change::{self, Change, Outcome, Pending};
use super::clock::{now_us, utc_offset_s};
use super::error::DbContext;
use super::read::room_state;
use super::schema::ROOMS;
use super::{HistoryQuery, Store, StoreError, StoredMessage};

/// What a session hands the writer; the store assigns ts and time.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Room id.
    pub room: String,
    /// Socket id of the sending connection.
    pub id: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Message text.
    pub text: String,
}

/// Messages a batch stored, each with its ticket, in commit order.
pub type Committed<T> = Vec<(StoredMessage, T)>;

/// Why a batch was not stored, and its messages with their tickets.
pub type Unstored<T> = (StoreError, Vec<(NewMessage, T)>);

/// One write transaction's outcome, in commit order.
pub struct CommittedBatch<T> {
    /// The stored messages and their tickets, or the error and the
    /// messages that were not stored.
    pub result: Result<Committed<T>, Unstored<T>>,
}

/// Sends new messages to the applier.
pub struct WriterHandle<T> {
    inner: ApplierHandle<T>,
}

impl<T> Clone for WriterHandle<T> {
    fn clone(&self) -> Self {
        WriterHandle {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Send + 'static> WriterHandle<T> {
    /// Queues a message stamped now; gives it back if the applier stopped.
    pub async fn submit(&self, msg: NewMessage, ticket: T) -> Result<(), (NewMessage, T)> {
        let time_us = now_us();
        let pending = Pending {
            seq: None,
            change: Change::Message(change::NewMessage {
                room: msg.room,
                sid: msg.id,
                from: msg.from,
                to: msg.to,
                text: msg.text,
                cid: None,
                time_us,
                utc_offset_s: utc_offset_s(time_us),
                eid: None,
            }),
            ticket: Some(ticket),
        };
        self.inner.submit(pending).await.map_err(unpend)
    }
}

fn unpend<T>(pending: Pending<T>) -> (NewMessage, T) {
    let Pending {
        change: Change::Message(m),
        ticket: Some(ticket),
        ..
    } = pending
    else {
        unreachable!("the writer submits only messages with tickets")
    };
    (
        NewMessage {
            room: m.room,
            id: m.sid,
            from: m.from,
            to: m.to,
            text: m.text,
        },
        ticket,
    )
}

/// A running writer: the applier, and a thread turning its batches into
/// committed batches.
pub struct Writer<T> {
    /// Where sessions submit messages.
    pub handle: WriterHandle<T>,
    /// Committed batches, in commit order.
    pub batches: mpsc::Receiver<CommittedBatch<T>>,
    /// The converting thread; returns after the applier's.
    pub thread: JoinHandle<()>,
}

impl<T: Send + 'static> Writer<T> {
    /// Starts the applier; `_stamp` is ignored (the store formats `time`).
    pub fn spawn(
        store: Store,
        queue_capacity: usize,
        _stamp: impl Fn(u64) -> String + Send + 'static,
    ) -> Result<Writer<T>, StoreError> {
        let Applier {
            handle,
            mut batches,
            thread,
        } = Applier::<T>::spawn(store, queue_capacity, ApplierMode::HandBack)?;
        let (tx, rx) = mpsc::channel(16);
        let converter = std::thread::Builder::new()
            .name("chatd-writer".into())
            .spawn(move || {
                while let Some(batch) = batches.blocking_recv() {
                    let result = match batch.result {
                        Ok(applied) => Ok(applied
                            .into_iter()
                            .filter_map(|a| match (a.outcome, a.ticket) {
                                (Outcome::Stored(m), Some(t)) => Some((m, t)),
                                _ => None,
                            })
                            .collect()),
                        Err((e, pendings)) => Err((e, pendings.into_iter().map(unpend).collect())),
                    };
                    if tx.blocking_send(CommittedBatch { result }).is_err() {
                        // Nobody listens: keep draining so the applier goes on.
                        continue;
                    }
                }
                let _ = thread.join();
            })
            .map_err(StoreError::Spawn)?;
        Ok(Writer {
            handle: WriterHandle { inner: handle },
            batches: rx,
            thread: converter,
        })
    }
}

impl Store {
    /// History as a list (see [`Store::history_page`]).
    pub fn history(&self, room: &str, q: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self.history_page(room, q)?.messages)
    }

    /// The highest ts of any room (0 for none): a scan of the rooms.
    pub fn last_ts(&self) -> Result<u64, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self.db.begin_read().ctx("starting read transaction")?;
        let rooms = txn.open_table(ROOMS).ctx("opening rooms")?;
        let mut last = 0;
        for item in rooms.iter().ctx("listing rooms")? {
            let (id, _) = item.ctx("listing rooms")?;
            if let Some(st) = room_state(&rooms, id.value())? {
                last = last.max(st.newest_ts);
            }
        }
        Ok(last)
    }
}
