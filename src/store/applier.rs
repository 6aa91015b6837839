//! The applier: one OS thread applies every change, in log order, with
//! group commit.
//!
//! A redb commit with `Durability::Immediate` blocks on fsync, so it runs on
//! a dedicated `std::thread` rather than a tokio worker. The thread takes
//! every change queued while it committed the last batch (or, after the
//! queue ran empty, the next change and whatever joins it within a gather
//! window, `LINGER`) and applies them all in one transaction (`apply.rs`):
//! under load many changes share one fsync; when idle, a lone change waits
//! at most the gather window. The log position each change is applied at
//! is committed with it, so replaying a log after a crash skips what is
//! already in.
//!
//! Between commits, while nothing waits, the thread folds staged messages
//! into chunks (`fold.rs`) once `staged` holds [`FOLD_AT`] messages or the
//! queue has been idle for a while, and deletes what purges left behind
//! (`sweep.rs`), a step at a time: a change waits behind one step, never
//! behind a whole pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::apply::Batch;
use super::change::{Applied, AppliedBatch, Outcome, Pending};
use super::error::DbContext;
use super::fold::{FOLD_AT, STEP, fold_step};
use super::schema::BUCKETS;
use super::sweep::{pending as sweep_pending, sweep_step};
use super::{Store, StoreError};
use crate::metrics::METRICS;

/// Most changes applied in one transaction; bounds a batch's latency.
pub const MAX_BATCH: usize = 16384;

/// How long a batch begun on an empty queue waits for more changes to join it.
const LINGER: Duration = Duration::from_micros(1000);

/// How long the queue must stay empty before staged messages are folded
/// anyway (so an idle store settles into chunks).
const IDLE_FOLD: Duration = Duration::from_millis(500);

/// About how many purged messages one sweep step deletes.
const SWEEP_STEP: usize = 4096;

/// Longest wait between two attempts at a failing commit ([`ApplierMode::Retry`]).
const RETRY_MAX: Duration = Duration::from_secs(1);

// Applied batches waiting for their reader. Each holds up to MAX_BATCH
// changes; when full, the applier waits, the queue fills, submit() waits.
const OUTPUT_BATCHES: usize = 16;

/// What the applier does with a batch whose commit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplierMode {
    /// Hand the changes back in the batch's `Err` (single node: their
    /// senders are told `unavailable`; nothing was stored).
    HandBack,
    /// Try the same batch again, backing off, until it commits (cluster:
    /// every entry of the replicated log must be applied). Changes that can
    /// never apply (a gap in the log positions) are still handed back, as
    /// is the batch when the queue has closed.
    Retry,
}

/// Sends changes to the applier thread. Cheap to clone; the thread stops
/// once every handle is dropped and the queue is drained.
pub struct ApplierHandle<T> {
    tx: mpsc::Sender<Pending<T>>,
    healthy: Arc<AtomicBool>,
}

// Manual impl: deriving would needlessly require `T: Clone`.
impl<T> Clone for ApplierHandle<T> {
    fn clone(&self) -> Self {
        ApplierHandle {
            tx: self.tx.clone(),
            healthy: self.healthy.clone(),
        }
    }
}

impl<T: Send + 'static> ApplierHandle<T> {
    /// Queues a change; waits while the bounded queue is full
    /// (backpressure). Gives it back if the applier has stopped.
    pub async fn submit(&self, pending: Pending<T>) -> Result<(), Pending<T>> {
        self.tx.send(pending).await.map_err(|e| e.0)
    }

    /// Whether the last commit succeeded (false while commits fail).
    pub fn can_commit(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// A running applier: its input, its output, and its thread.
///
/// Graceful shutdown: drop every [`ApplierHandle`], then read `batches`
/// until it yields `None` (the thread drops its sender only after
/// committing the last queued change), or join `thread`.
pub struct Applier<T> {
    /// Where changes are submitted.
    pub handle: ApplierHandle<T>,
    /// Applied batches, in commit order; ends when the thread has finished.
    pub batches: mpsc::Receiver<AppliedBatch<T>>,
    /// The thread; it returns once all handles are gone and the queue is drained.
    pub thread: JoinHandle<()>,
}

impl<T: Send + 'static> Applier<T> {
    /// Starts the applier thread. `queue_len` (at least 1) bounds the
    /// submit queue.
    pub fn spawn(store: Store, queue_len: usize, mode: ApplierMode) -> Result<Applier<T>, StoreError> {
        let background = Background::load(&store)?;
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(StoreError::Spawn)?;
        let (tx, rx) = mpsc::channel(queue_len.max(1));
        let (out_tx, out_rx) = mpsc::channel(OUTPUT_BATCHES);
        let healthy = Arc::new(AtomicBool::new(true));
        let thread = {
            let healthy = healthy.clone();
            let worker = Worker {
                store,
                mode,
                background,
                healthy,
                timer,
            };
            std::thread::Builder::new()
                .name("chatd-applier".into())
                .spawn(move || worker.run(rx, out_tx))
                .map_err(StoreError::Spawn)?
        };
        Ok(Applier {
            handle: ApplierHandle { tx, healthy },
            batches: out_rx,
            thread,
        })
    }
}

/// The thread's state.
struct Worker {
    store: Store,
    mode: ApplierMode,
    background: Background,
    healthy: Arc<AtomicBool>,
    // Waits for the queue with a timeout (tokio's blocking_recv has none).
    timer: tokio::runtime::Runtime,
}

impl Worker {
    // The thread body. Returns (dropping `out`) when the queue is closed and empty.
    fn run<T>(mut self, mut rx: mpsc::Receiver<Pending<T>>, out: mpsc::Sender<AppliedBatch<T>>) {
        let mut out_open = true;
        loop {
            // Background work goes on while no change waits.
            while self.background.busy() && rx.is_empty() {
                self.background.step(&self.store, 0);
            }
            let first = match rx.try_recv() {
                Ok(first) => first,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    match self.timer.block_on(tokio::time::timeout(IDLE_FOLD, rx.recv())) {
                        // A commit's fsync costs the same for one change as
                        // for hundreds: give those already on their way a
                        // moment to join the first.
                        Ok(Some(first)) => {
                            std::thread::sleep(LINGER);
                            first
                        }
                        Ok(None) => break,
                        Err(_) => {
                            self.background.idle(&self.store);
                            continue;
                        }
                    }
                }
            };
            let mut batch = vec![first];
            // Whatever queued up during the previous commit shares this one.
            while batch.len() < MAX_BATCH {
                let Ok(next) = rx.try_recv() else { break };
                batch.push(next);
            }
            let count = batch.len();
            let result = self.commit_batch(batch, &rx);
            // Keep committing even if nobody listens: the changes are still
            // applied, only their answers are lost.
            if out_open && out.blocking_send(AppliedBatch { result }).is_err() {
                tracing::warn!("applied-batch receiver dropped; answers are being discarded");
                out_open = false;
            }
            // After the answers are on their way, so a step delays only
            // changes still queued.
            self.background.step(&self.store, count);
        }
        self.background.finish(&self.store);
    }

    // Applies a batch, retrying per the mode; the result for the output.
    fn commit_batch<T>(
        &mut self,
        batch: Vec<Pending<T>>,
        rx: &mpsc::Receiver<Pending<T>>,
    ) -> Result<Vec<Applied<T>>, (StoreError, Vec<Pending<T>>)> {
        let mut backoff = Duration::from_millis(10);
        loop {
            let started = Instant::now();
            match commit(&self.store, &batch) {
                Ok(committed) => {
                    METRICS.commit(batch.len(), started.elapsed());
                    METRICS.set_recent(committed.staged);
                    if !self.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!("store commits again");
                    }
                    self.background.committed(&committed);
                    return Ok(answers(batch, committed.outcomes));
                }
                Err(error) => {
                    if self.healthy.swap(false, Ordering::Relaxed) {
                        tracing::error!(%error, changes = batch.len(), "store commit failed");
                    }
                    let retry = self.mode == ApplierMode::Retry
                        && !matches!(error, StoreError::LogGap { .. })
                        && !rx.is_closed();
                    if !retry {
                        tracing::error!(%error, changes = batch.len(), "changes not applied");
                        return Err((error, batch));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

// Pairs each change with its outcome; changes applied before (a replay)
// are answered only if they carry a ticket.
fn answers<T>(batch: Vec<Pending<T>>, outcomes: Vec<(u64, Option<Outcome>)>) -> Vec<Applied<T>> {
    batch
        .into_iter()
        .zip(outcomes)
        .filter_map(|(pending, (seq, outcome))| match outcome {
            Some(outcome) => Some(Applied {
                seq,
                outcome,
                ticket: pending.ticket,
            }),
            None => pending.ticket.is_some().then_some(Applied {
                seq,
                outcome: Outcome::AlreadyApplied,
                ticket: pending.ticket,
            }),
        })
        .collect()
}

/// What a committed batch did: each change's log position and outcome
/// (None: applied before), and how many messages are staged now.
pub(crate) struct Committed {
    /// Each change's log position and outcome.
    pub outcomes: Vec<(u64, Option<Outcome>)>,
    /// Messages in `staged` after the commit.
    pub staged: u64,
    /// Some purge removed messages.
    pub purged: bool,
}

/// Applies `batch` in one durable transaction.
pub(crate) fn commit<T>(store: &Store, batch: &[Pending<T>]) -> Result<Committed, StoreError> {
    use redb::ReadableTableMetadata;
    let txn = store.db.begin_write().ctx("starting a commit")?;
    let mut applied = Batch::begin(&txn)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut purged = false;
    for pending in batch {
        match applied.position_of(pending.seq)? {
            Some(seq) => {
                let outcome = applied.apply(seq, &pending.change)?;
                purged |= matches!(outcome, Outcome::Purged { count } if count > 0);
                outcomes.push((seq, Some(outcome)));
            }
            None => outcomes.push((pending.seq.unwrap_or(0), None)),
        }
    }
    let staged = applied.t.staged.len().ctx("counting staged messages")?;
    applied.finish()?;
    txn.commit().ctx("committing changes")?;
    Ok(Committed {
        outcomes,
        staged,
        purged,
    })
}

/// The fold and sweep work between commits.
struct Background {
    // The bucket a fold pass is at, when one is under way.
    folding: Option<u8>,
    // Messages in `staged`.
    staged: u64,
    // Purged messages may be waiting for a sweep.
    sweeping: bool,
    // A step committed without fsync since the last durable commit.
    unsynced: bool,
}

impl Background {
    fn load(store: &Store) -> Result<Background, StoreError> {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = store.db.begin_read().ctx("starting read transaction")?;
        let staged = txn
            .open_table(super::schema::STAGED)
            .ctx("opening staged messages")?
            .len()
            .ctx("counting staged messages")?;
        Ok(Background {
            folding: None,
            staged,
            sweeping: sweep_pending(store)?,
            unsynced: false,
        })
    }

    fn busy(&self) -> bool {
        self.folding.is_some() || self.sweeping
    }

    fn committed(&mut self, committed: &Committed) {
        self.staged = committed.staged;
        self.sweeping |= committed.purged;
        self.unsynced = false;
        if self.folding.is_none() && self.staged >= FOLD_AT {
            self.folding = Some(0);
        }
    }

    // Nothing has come for a while: fold whatever is staged.
    fn idle(&mut self, store: &Store) {
        if self.folding.is_none() && self.staged > 0 {
            self.folding = Some(0);
        }
        if !self.busy() && self.unsynced {
            // Make the last steps durable while there is time.
            match make_durable(store) {
                Ok(()) => self.unsynced = false,
                Err(error) => tracing::warn!(%error, "syncing fold steps failed"),
            }
        }
    }

    // One step of whatever is under way, sized to keep up with the
    // `committed` changes just applied. A failed step abandons its pass:
    // nothing is lost, a later pass does the work again.
    fn step(&mut self, store: &Store, committed: usize) {
        if let Some(b) = self.folding {
            match fold_step(store, b, STEP.max(2 * committed)) {
                Ok(folded) => {
                    self.unsynced = true;
                    self.staged = folded.staged;
                    METRICS.set_recent(folded.staged);
                    if folded.bucket_empty {
                        self.folding = (b + 1 < BUCKETS).then_some(b + 1);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, bucket = b, "folding staged messages failed");
                    self.folding = None;
                }
            }
        } else if self.sweeping {
            match sweep_step(store, SWEEP_STEP) {
                Ok(swept) => {
                    self.unsynced = true;
                    self.sweeping = !swept.done;
                }
                Err(error) => {
                    tracing::error!(%error, "deleting purged messages failed");
                    self.sweeping = false;
                }
            }
        }
    }

    // At exit: leave nothing non-durable behind.
    fn finish(&mut self, store: &Store) {
        if self.unsynced
            && let Err(error) = make_durable(store)
        {
            tracing::warn!(%error, "syncing fold steps failed");
        }
    }
}

/// An empty durable commit: makes the non-durable steps before it durable.
pub(crate) fn make_durable(store: &Store) -> Result<(), StoreError> {
    store
        .db
        .begin_write()
        .ctx("starting a sync")?
        .commit()
        .ctx("syncing")
}

impl Store {
    /// Applies one change now, in its own durable transaction, at the next
    /// log position, and for a purge deletes the purged messages before
    /// returning: what the operator commands do when no server runs. Not
    /// for use beside a running [`Applier`] of a cluster node, whose log
    /// positions are the log's.
    pub fn apply(&self, change: super::change::Change) -> Result<Outcome, StoreError> {
        let pending = Pending::<()> {
            seq: None,
            change,
            ticket: None,
        };
        let mut committed = commit(self, std::slice::from_ref(&pending))?;
        let (_, outcome) = committed.outcomes.remove(0);
        let outcome = outcome.expect("the next position is always applied");
        if committed.purged {
            while !sweep_step(self, SWEEP_STEP)?.done {}
            make_durable(self)?;
        }
        Ok(outcome)
    }
}
