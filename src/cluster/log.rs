//! The log of a cluster node: the replicated stream, which every node
//! reads in order and applies to its own store.
//!
//! Appending publishes the change as an entry (exactly once, see
//! [`super::publish`]) and parks its ticket under the entry's id. A
//! follower reads the stream from the position after the last one this
//! node's store applied, and hands each entry to the store's applier with
//! its stream sequence as log position, and with the parked ticket when the
//! entry is this node's own. So a sender is answered only once its change
//! is in the stream (a quorum has it) *and* applied here, and every node
//! applies the same entries in the same order with the same outcome: an
//! entry carries its publisher's clock (`time_us`), and the store derives
//! `ts` from it and the room's last `ts`, never from the applying node's
//! clock.
//!
//! A change the engine refused before it could have kept it is settled as
//! [`Settled::Dropped`] (the sender is told `unavailable`); so is a change
//! appended while the engine is known to be down, without trying.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::consume::{LogReader, log_tail};
use super::entry::{EntryId, encode_entry};
use super::health::EngineHealth;
use super::publish::{send_entry, settle_entry};
use super::{ClusterEngine, ClusterError};
use crate::health::Health;
use crate::log::{Log, NotAppended, Settled};
use crate::store::change::{AppliedBatch, Change, Pending};
use crate::store::{Applier, ApplierHandle, ApplierMode, Store};

/// Settled batches that may wait for the chat before the applier waits.
const SETTLED_QUEUE: usize = 64;

/// The health part that reports catching up with the log.
pub const CATCH_UP_PART: &str = "catch-up";

/// The health part that reports a log this node cannot apply.
pub const LOG_PART: &str = "log";

/// Tickets of this node's entries, published and not yet applied here.
type Parked<T> = Arc<Mutex<HashMap<EntryId, T>>>;

/// The log of a node in a cluster.
pub struct JetStreamLog<T> {
    engine: ClusterEngine,
    health: watch::Receiver<EngineHealth>,
    parked: Parked<T>,
    refused: mpsc::Sender<Settled<T>>,
}

/// How far this node has applied the log, to tell when it has caught up.
pub struct CatchUp {
    applied: watch::Receiver<u64>,
    /// The log's last position when the node started: applied up to it,
    /// the node has caught up.
    pub tail: u64,
}

impl CatchUp {
    /// Waits until the node has applied the log up to [`CatchUp::tail`],
    /// reporting progress under [`CATCH_UP_PART`] meanwhile.
    pub async fn wait(mut self, health: Arc<Health>) {
        let tail = self.tail;
        loop {
            let applied = *self.applied.borrow_and_update();
            if applied >= tail {
                health.recover(CATCH_UP_PART);
                return;
            }
            health.fail(
                CATCH_UP_PART,
                format!("catching up with the log: applied {applied} of {tail}"),
            );
            if self.applied.changed().await.is_err() {
                // The applier stopped: the log part says why.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl<T: Send + 'static> JetStreamLog<T> {
    /// Starts following `stream` into `store` (the store must follow this
    /// stream or be new: see [`claim_store`]) with an applier queue of
    /// `queue` changes. Returns the log, the settled changes in log order,
    /// and the catch-up to wait for before the node is ready. `health` is
    /// the engine's, as [`super::health::watch_health`] sees it; `report`
    /// gets the log's own trouble under [`LOG_PART`].
    pub async fn start(
        engine: ClusterEngine,
        stream: Stream,
        store: Store,
        health: watch::Receiver<EngineHealth>,
        report: Arc<Health>,
        queue: usize,
    ) -> Result<(JetStreamLog<T>, mpsc::Receiver<Settled<T>>, CatchUp), ClusterError> {
        let from = store.applied_seq()?;
        let tail = log_tail(&stream).await?;
        if from < tail {
            // Failing from now on, before anything can ask `/healthz`.
            report.fail(
                CATCH_UP_PART,
                format!("catching up with the log: applied {from} of {tail}"),
            );
        }
        // Every entry of the stream must be applied: a commit that fails is
        // tried again until it succeeds, never skipped.
        let applier = Applier::<T>::spawn(store, queue, ApplierMode::Retry)?;
        let (settled, rx) = mpsc::channel(SETTLED_QUEUE);
        let (applied_tx, applied) = watch::channel(from);
        tokio::spawn(forward(applier.batches, settled.clone(), applied_tx));
        let parked: Parked<T> = Arc::default();
        let reader = LogReader::new(engine.clone(), stream, from + 1);
        tokio::spawn(follow(reader, applier.handle, parked.clone(), report));
        tracing::info!(
            "{}: following the log from position {}, its tail at {tail}",
            engine.node,
            from + 1
        );
        let log = JetStreamLog {
            engine,
            health,
            parked,
            refused: settled,
        };
        Ok((log, rx, CatchUp { applied, tail }))
    }

    fn park(&self) -> MutexGuard<'_, HashMap<EntryId, T>> {
        lock(&self.parked)
    }
}

impl<T: Send + 'static> Log<T> for JetStreamLog<T> {
    async fn append(&self, change: Change, ticket: T) -> Result<(), NotAppended<T>> {
        // Refused at once while the engine is known to be down: sending it
        // would leave the sender waiting for an answer no one can give.
        if !self.health.borrow().is_up() {
            return Err((change, ticket));
        }
        let eid: EntryId = rand::random();
        let mut bytes = Vec::with_capacity(128);
        encode_entry(&eid, &change, &mut bytes);
        let payload = Bytes::from(bytes);
        // Parked before it is sent: the follower may meet the entry before
        // the publish's answer arrives.
        self.park().insert(eid, ticket);
        // Sent here, in the order the sender appends; answered in a task,
        // so one connection's messages are pipelined.
        let first = send_entry(&self.engine, &eid, payload.clone()).await;
        let engine = self.engine.clone();
        let parked = self.parked.clone();
        let refused = self.refused.clone();
        tokio::spawn(async move {
            if let Err(error) = settle_entry(&engine, &eid, payload, first).await {
                // Not in the stream, so the follower never meets it.
                let ticket = lock(&parked).remove(&eid);
                if let Some(ticket) = ticket {
                    let _ = refused
                        .send(Settled::Dropped {
                            error: error.to_string(),
                            tickets: vec![ticket],
                        })
                        .await;
                }
            }
        });
        Ok(())
    }
}

fn lock<T>(parked: &Parked<T>) -> MutexGuard<'_, HashMap<EntryId, T>> {
    // Every update is one map operation that cannot panic halfway.
    parked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes sure `store` may follow the log `stream` and marks it as doing
/// so: a store that follows another stream (one deleted and created again)
/// or that holds a single node's history would mix two histories.
pub async fn claim_store(store: &Store, stream: &mut Stream) -> Result<(), ClusterError> {
    let info = stream
        .info()
        .await
        .map_err(|err| ClusterError::engine("read the log stream's info", err))?;
    let id = format!(
        "{}@{}",
        info.config.name,
        info.created.unix_timestamp_nanos()
    );
    match store.log_id()? {
        Some(known) if known == id.as_bytes() => Ok(()),
        Some(known) => Err(ClusterError::ForeignStore(format!(
            "it follows the log {}, not this cluster's {id}",
            String::from_utf8_lossy(&known)
        ))),
        None if store.applied_seq()? > 0 => Err(ClusterError::ForeignStore(
            "it holds the history of a node that ran alone".into(),
        )),
        None => Ok(store.set_log_id(id.as_bytes())?),
    }
}

/// Reads the log in order and hands every entry to the applier, with its
/// ticket when it is this node's own. Stops (reporting why) at an entry it
/// cannot apply: skipping it would leave this node's copy different from
/// the others'.
async fn follow<T: Send + 'static>(
    mut reader: LogReader,
    applier: ApplierHandle<T>,
    parked: Parked<T>,
    report: Arc<Health>,
) {
    let mut expected = reader.next_seq();
    loop {
        let record = reader.next().await;
        let entry = match record.entry {
            Ok(entry) if record.seq == expected => entry,
            Ok(_) => {
                let missing = format!(
                    "entries {expected} to {} are missing from the stream",
                    record.seq - 1
                );
                return stuck(&report, &missing);
            }
            Err(error) => return stuck(&report, &format!("entry {}: {error}", record.seq)),
        };
        expected = record.seq + 1;
        let ticket = lock(&parked).remove(&entry.eid);
        let pending = Pending {
            seq: Some(record.seq),
            change: entry.change,
            ticket,
        };
        if applier.submit(pending).await.is_err() {
            return;
        }
    }
}

/// Reports that the log cannot be applied any further, and why.
fn stuck(report: &Health, problem: &str) {
    tracing::error!("cannot apply the log any further: {problem}");
    report.fail(LOG_PART, format!("cannot apply the log: {problem}"));
}

/// Turns the applier's batches into settled changes, noting the last
/// position applied.
async fn forward<T>(
    mut batches: mpsc::Receiver<AppliedBatch<T>>,
    settled: mpsc::Sender<Settled<T>>,
    applied: watch::Sender<u64>,
) {
    while let Some(batch) = batches.recv().await {
        if let Ok(changes) = &batch.result
            && let Some(last) = changes.last()
        {
            applied.send_replace(last.seq);
        }
        if settled.send(Settled::of_batch(batch)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_is_caught_up_once_it_applied_the_tail_it_started_with() {
        let health = Arc::new(Health::default());
        let (applied, rx) = watch::channel(2);
        let catch_up = CatchUp {
            applied: rx,
            tail: 5,
        };
        let waiting = tokio::spawn(catch_up.wait(health.clone()));
        tokio::task::yield_now().await;
        assert_eq!(
            health.status(),
            Err("catch-up: catching up with the log: applied 2 of 5".into())
        );
        applied.send_replace(4);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // Entries applied since the start count too: past the tail is done.
        applied.send_replace(7);
        waiting.await.expect("caught up");
        assert_eq!(health.status(), Ok(()));
    }
}
