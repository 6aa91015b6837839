//! The log of a single node: changes go straight to the store's writer,
//! whose commit order is the log order.

use tokio::sync::mpsc;

use super::{Log, NotAppended, Settled};
use crate::store::change::{Applied, Change, Outcome};
use crate::store::{CommittedBatch, NewMessage, Store, StoreError, Writer, WriterHandle};

/// Settled batches that may wait for the chat before the writer waits.
const SETTLED_QUEUE: usize = 64;

/// The log of a node that runs alone.
pub struct LocalLog<T> {
    writer: WriterHandle<T>,
}

impl<T: Send + 'static> LocalLog<T> {
    /// Starts the store's writer with a queue of `queue` changes; returns
    /// the log and the settled changes, in commit order.
    pub fn start(
        store: Store,
        queue: usize,
        stamp: fn(u64) -> String,
    ) -> Result<(LocalLog<T>, mpsc::Receiver<Settled<T>>), StoreError> {
        let writer = Writer::<T>::spawn(store, queue, stamp)?;
        let (tx, rx) = mpsc::channel(SETTLED_QUEUE);
        tokio::spawn(forward(writer.batches, tx));
        Ok((
            LocalLog {
                writer: writer.handle,
            },
            rx,
        ))
    }
}

impl<T: Send + 'static> Log<T> for LocalLog<T> {
    async fn append(&self, change: Change, ticket: T) -> Result<(), NotAppended<T>> {
        let Change::Message(message) = change else {
            return Err((change, ticket));
        };
        let submitted = NewMessage {
            room: message.room,
            id: message.sid,
            from: message.from,
            to: message.to,
            text: message.text,
        };
        self.writer
            .submit(submitted, ticket)
            .await
            .map_err(|(back, ticket)| {
                let change = Change::Message(crate::store::change::NewMessage {
                    room: back.room,
                    sid: back.id,
                    from: back.from,
                    to: back.to,
                    text: back.text,
                    cid: message.cid,
                    time_us: message.time_us,
                    utc_offset_s: message.utc_offset_s,
                    eid: message.eid,
                });
                (change, ticket)
            })
    }
}

/// Turns the writer's committed batches into settled changes.
async fn forward<T>(
    mut batches: mpsc::Receiver<CommittedBatch<T>>,
    settled: mpsc::Sender<Settled<T>>,
) {
    while let Some(batch) = batches.recv().await {
        let next = match batch.result {
            Ok(committed) => Settled::Applied(
                committed
                    .into_iter()
                    .map(|(message, ticket)| Applied {
                        // Today's ts is unique across rooms and increases in
                        // commit order: the log position.
                        seq: message.ts,
                        outcome: Outcome::Stored(message),
                        ticket: Some(ticket),
                    })
                    .collect(),
            ),
            Err((error, unstored)) => Settled::Dropped {
                error: error.to_string(),
                tickets: unstored.into_iter().map(|(_, ticket)| ticket).collect(),
            },
        };
        if settled.send(next).await.is_err() {
            return;
        }
    }
}
