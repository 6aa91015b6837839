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
//! When a commit fails for a fault of the disk (full, read-only, I/O
//! errors), redb refuses every later one until its file is reopened. The
//! applier then refuses changes at once (handed back: `unavailable`), sets
//! the store's [`failing`](Store::failing) reason, and tries to reopen the
//! file and write to it, backing off from [`REOPEN_FIRST`] to
//! [`REOPEN_MAX`]; once that succeeds it goes on as before, with no
//! restart. It logs the start and the end of such an outage, and every
//! [`OUTAGE_REPORT`] in between how many changes it refused.
//!
//! A cluster node's store is a copy of a log kept elsewhere
//! ([`ApplierMode::Retry`]): what its last commits applied, a restart
//! applies again from the log. Its commits are therefore made durable at
//! checkpoints, at most [`CHECKPOINT`] apart, when the queue goes idle and
//! when the applier stops; in between they skip the fsync. A single node's
//! store is the log itself ([`ApplierMode::HandBack`]): every commit is
//! durable before anyone is told.
//!
//! Between commits, while nothing waits, the thread folds staged messages
//! into chunks (`fold.rs`) once `staged` holds [`FOLD_AT`] messages or the
//! queue has been idle for a while, deletes what purges left behind
//! (`sweep.rs`), and writes afresh the inbox keys of rooms marked behind
//! (`relist.rs`) once [`RELIST_AFTER`] has passed, some user has
//! [`RELIST_PER_USER`] rooms marked, or the queue is idle, a step at a
//! time: a change waits behind one step, never behind a whole
//! pass.

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::Durability;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::watch;

use super::apply::{Batch, Effect, RoomCache};
use super::change::{Applied, AppliedBatch, NotApplied, Outcome, Pending};
use super::error::DbContext;
use super::fold::{FOLD_AT, STEP, fold_step};
use super::relist::{
    RELIST_AFTER, RELIST_PER_USER, RELIST_STEP, pending as relist_pending, relist_step,
};
use super::schema::BUCKETS;
use super::sweep::{pending as sweep_pending, sweep_step};
use super::{Store, StoreError, contained};
use crate::metrics::METRICS;

/// Most changes applied in one transaction; bounds a batch's latency.
pub const MAX_BATCH: usize = 16384;

/// How long a batch begun on an empty queue waits for more changes to join it.
const LINGER: Duration = Duration::from_micros(1000);

/// How long the queue must stay empty before staged messages are folded
/// anyway (so an idle store settles into chunks).
const IDLE_FOLD: Duration = Duration::from_millis(500);

/// Longest time a cluster node's commits go without an fsync (see the
/// module doc): bounds what a crashed node applies again from the log.
pub const CHECKPOINT: Duration = Duration::from_secs(1);

/// About how many purged messages one sweep step deletes.
const SWEEP_STEP: usize = 4096;

/// First wait before trying a failing commit again ([`ApplierMode::Retry`]).
const RETRY_FIRST: Duration = Duration::from_millis(10);

/// Longest wait between two attempts at a failing commit ([`ApplierMode::Retry`]).
const RETRY_MAX: Duration = Duration::from_secs(1);

/// First wait before reopening a store whose disk failed; doubled after
/// each failed attempt.
const REOPEN_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between two attempts at reopening a failed store.
const REOPEN_MAX: Duration = Duration::from_secs(5);

/// How often the log says that a store still cannot commit.
const OUTAGE_REPORT: Duration = Duration::from_secs(10);

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
    /// is the batch when the queue has closed. The store being a copy of
    /// that log, commits are durable at checkpoints only ([`CHECKPOINT`]).
    Retry,
}

impl ApplierMode {
    /// Whether a commit `since_sync` after the last durable one is made
    /// durable: always, unless the store is a copy of a log kept elsewhere
    /// (Retry) and that commit is more recent than [`CHECKPOINT`].
    fn durable(self, since_sync: Duration) -> bool {
        self == ApplierMode::HandBack || since_sync >= CHECKPOINT
    }
}

/// Sends changes to the applier thread. Cheap to clone; the thread stops
/// once every handle is dropped and the queue is drained.
pub struct ApplierHandle<T> {
    tx: mpsc::Sender<Pending<T>>,
    failing: watch::Receiver<Option<String>>,
}

// Manual impl: deriving would needlessly require `T: Clone`.
impl<T> Clone for ApplierHandle<T> {
    fn clone(&self) -> Self {
        ApplierHandle {
            tx: self.tx.clone(),
            failing: self.failing.clone(),
        }
    }
}

impl<T: Send + 'static> ApplierHandle<T> {
    /// Queues a change; waits while the bounded queue is full
    /// (backpressure). Gives it back if the applier has stopped.
    pub async fn submit(&self, pending: Pending<T>) -> Result<(), Pending<T>> {
        self.tx.send(pending).await.map_err(|e| e.0)
    }

    /// Whether the store can commit (false from a failed commit until a
    /// later one succeeds).
    pub fn can_commit(&self) -> bool {
        self.failing.borrow().is_none()
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
    pub fn spawn(
        store: Store,
        queue_len: usize,
        mode: ApplierMode,
    ) -> Result<Applier<T>, StoreError> {
        let (out_tx, out_rx) = mpsc::channel(OUTPUT_BATCHES);
        let (handle, thread) = Applier::spawn_into(store, queue_len, mode, out_tx, |batch| batch)?;
        Ok(Applier {
            handle,
            batches: out_rx,
            thread,
        })
    }

    /// Starts the applier thread handing each applied batch, as `wrap`
    /// turns it, straight to `out`: for a reader that wants its own type,
    /// with no task in between to forward it (one wake-up per commit, not
    /// two).
    pub fn spawn_into<O: Send + 'static>(
        store: Store,
        queue_len: usize,
        mode: ApplierMode,
        out: mpsc::Sender<O>,
        wrap: fn(AppliedBatch<T>) -> O,
    ) -> Result<(ApplierHandle<T>, JoinHandle<()>), StoreError> {
        let background = Background::load(&store)?;
        let last_seq = contained("reading the log position", || store.applied_seq())?;
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(StoreError::Spawn)?;
        let (tx, rx) = mpsc::channel(queue_len.max(1));
        store.set_failing(None);
        let failing = store.failing();
        let thread = {
            let worker = Worker {
                store,
                mode,
                background,
                last_seq,
                outage: None,
                last_outage: None,
                timer,
                rooms: RoomCache::default(),
                synced: Instant::now(),
                stranded: false,
            };
            std::thread::Builder::new()
                .name("chatd-applier".into())
                .spawn(move || worker.run(rx, out, wrap))
                .map_err(StoreError::Spawn)?
        };
        Ok((ApplierHandle { tx, failing }, thread))
    }
}

/// The thread's state.
struct Worker {
    store: Store,
    mode: ApplierMode,
    background: Background,
    // The last log position committed (as far as this thread knows).
    last_seq: u64,
    // Set while the store cannot commit.
    outage: Option<Outage>,
    // When the last outage ended, and the wait its reopens had reached.
    last_outage: Option<(Instant, Duration)>,
    // Waits for the queue with a timeout (tokio's blocking_recv has none).
    timer: tokio::runtime::Runtime,
    // Rooms as the last commit left them.
    rooms: RoomCache,
    // When a commit was last made durable.
    synced: Instant,
    // Set when a reopen lost applied log entries (Retry): the store stays
    // failing until the node restarts.
    stranded: bool,
}

impl Worker {
    // The thread body. Returns (dropping `out`) when the queue is closed and empty.
    fn run<T, O>(
        mut self,
        mut rx: mpsc::Receiver<Pending<T>>,
        out: mpsc::Sender<O>,
        wrap: fn(AppliedBatch<T>) -> O,
    ) {
        let mut out_open = true;
        loop {
            // Background work goes on while no change waits.
            while self.outage.is_none() && self.background.busy() && rx.is_empty() {
                self.background_step(0);
            }
            let first = match rx.try_recv() {
                Ok(first) => first,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let next = async { tokio::time::timeout(IDLE_FOLD, rx.recv()).await };
                    match self.timer.block_on(next) {
                        // A commit's fsync costs the same for one change as
                        // for hundreds: give those already on their way a
                        // moment to join the first.
                        Ok(Some(first)) => {
                            std::thread::sleep(LINGER);
                            first
                        }
                        Ok(None) => break,
                        Err(_) => {
                            if self.recover().is_some() {
                                self.background.idle(&self.store);
                            }
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
            if out_open && out.blocking_send(wrap(AppliedBatch { result })).is_err() {
                tracing::warn!("applied-batch receiver dropped; answers are being discarded");
                out_open = false;
            }
            // After the answers are on their way, so a step delays only
            // changes still queued.
            if self.outage.is_none() {
                self.background_step(count);
            }
        }
        self.background.finish(&self.store);
    }

    // Applies a batch, retrying per the mode; the result for the output.
    #[expect(
        clippy::result_large_err,
        reason = "called once per batch, and the Err carries the batch back by design"
    )]
    fn commit_batch<T>(
        &mut self,
        batch: Vec<Pending<T>>,
        rx: &mpsc::Receiver<Pending<T>>,
    ) -> Result<Vec<Applied<T>>, NotApplied<T>> {
        let mut backoff = RETRY_FIRST;
        // A batch whose commit failed is committed again after a reopen
        // once, not in a loop (a disk that takes the probe, not the batch).
        let mut faults = 0;
        loop {
            let retry = self.mode == ApplierMode::Retry && !rx.is_closed();
            if self.outage.is_some() && faults > 1 && !retry {
                return Err(self.refuse(batch));
            }
            if self.outage.is_some() {
                match self.recover() {
                    Some(Reopened { landed: false }) => {}
                    Some(Reopened { landed: true }) => {
                        // Not committed again: it may be in already.
                        let reason = "the commit failed, yet the store moved on: the changes may \
                                      have been stored; resend them with their cid"
                            .to_owned();
                        return Err((StoreError::Failing { reason }, batch));
                    }
                    None if retry => {
                        std::thread::sleep(REOPEN_FIRST);
                        continue;
                    }
                    None => return Err(self.refuse(batch)),
                }
            }
            let started = Instant::now();
            let durable = self.mode.durable(started.duration_since(self.synced));
            let rooms = &mut self.rooms;
            match contained("committing changes", || {
                commit(&self.store, &batch, rooms, durable)
            }) {
                Ok(committed) => {
                    if durable {
                        self.synced = started;
                    }
                    METRICS.commit(batch.len(), started.elapsed());
                    METRICS.set_recent(committed.staged);
                    if let Some(seq) = committed.effects.iter().map(|(seq, _)| *seq).max() {
                        self.last_seq = self.last_seq.max(seq);
                    }
                    self.background.committed(&committed);
                    if backoff > RETRY_FIRST {
                        tracing::info!("store commits again");
                        self.store.set_failing(None);
                    }
                    return Ok(answers(batch, committed.effects));
                }
                // Reopened at once (a fault that passed commits the batch
                // on the next turn), else refused.
                Err(error) if error.is_storage_fault() => {
                    faults += 1;
                    self.fault(&error);
                }
                Err(error) => {
                    if !retry || matches!(error, StoreError::LogGap { .. }) {
                        tracing::error!(%error, changes = batch.len(), "changes not applied");
                        return Err((error, batch));
                    }
                    // The log waits for this batch: the node is stuck.
                    if backoff == RETRY_FIRST {
                        tracing::error!(%error, changes = batch.len(), "store commit failed, retrying");
                        self.store
                            .set_failing(Some(format!("cannot apply the log: {error}")));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    // A commit or a background step failed for a fault of the disk: an
    // outage begins (or goes on), with a reopen due now.
    fn fault(&mut self, error: &StoreError) {
        if self.outage.is_some() {
            return;
        }
        tracing::error!(
            %error,
            "store cannot commit: refusing changes until its file is reopened and takes writes"
        );
        let mut outage = Outage::new(error.to_string());
        // A disk that fails again soon after a recovery is retried no
        // sooner than the last one was.
        if let Some((ended, backoff)) = self.last_outage
            && ended.elapsed() < OUTAGE_REPORT
        {
            outage.backoff = (backoff * 2).min(REOPEN_MAX);
            outage.next_reopen = Instant::now() + outage.backoff;
        }
        self.store.set_failing(Some(outage.reason()));
        self.outage = Some(outage);
    }

    // During an outage: the batch goes back to its senders, counted.
    fn refuse<T>(&mut self, batch: Vec<Pending<T>>) -> NotApplied<T> {
        let outage = self.outage.as_mut().expect("refused only during an outage");
        outage.refused += batch.len() as u64;
        outage.refused_total += batch.len() as u64;
        outage.report();
        let reason = outage.reason();
        (StoreError::Failing { reason }, batch)
    }

    // Ends an outage if it can: when a reopen is due, reopens the file and
    // writes to it. Some when the store can commit (again); None while
    // the outage goes on.
    fn recover(&mut self) -> Option<Reopened> {
        if self.stranded {
            return None;
        }
        let outage = match &mut self.outage {
            None => return Some(Reopened { landed: false }),
            Some(outage) if Instant::now() < outage.next_reopen => {
                outage.report();
                return None;
            }
            Some(outage) => outage,
        };
        let reopened = self.store.reopen().and_then(|()| {
            let background = Background::load(&self.store)?;
            let applied = contained("reading the log position", || self.store.applied_seq())?;
            Ok((applied, background))
        });
        let (applied, background) = match reopened {
            Ok(reopened) => reopened,
            Err(error) => {
                outage.retry_later(&error);
                self.store.set_failing(Some(outage.reason()));
                return None;
            }
        };
        if applied < self.last_seq && self.mode == ApplierMode::Retry {
            // Applied by commits the fault kept from their checkpoint; the
            // log will not give them to this applier again.
            let reason = format!(
                "the store lost log entries {} to {} it had applied before the disk failed: \
                 restart the node to apply them again from the log",
                applied + 1,
                self.last_seq
            );
            tracing::error!("{reason}");
            self.store.set_failing(Some(reason));
            self.stranded = true;
            return None;
        }
        if applied < self.last_seq {
            tracing::error!(
                applied,
                committed = self.last_seq,
                "the reopened store lacks committed changes: the disk lost writes it had confirmed"
            );
        } else if applied > self.last_seq {
            tracing::warn!(
                applied,
                committed = self.last_seq,
                "a commit reported as failed was stored: its senders were told `unavailable`"
            );
        }
        tracing::info!(
            secs = outage.since.elapsed().as_secs_f64(),
            refused = outage.refused_total,
            reopens = outage.attempts + 1,
            "store recovered: reopened, it takes writes again"
        );
        let landed = applied > self.last_seq;
        self.last_seq = applied;
        self.rooms = RoomCache::default();
        self.last_outage = Some((Instant::now(), outage.backoff));
        self.background = background;
        self.outage = None;
        self.store.set_failing(None);
        Some(Reopened { landed })
    }

    // One step of background work; a fault of the disk starts an outage.
    fn background_step(&mut self, committed: usize) {
        // What a step rewrote, the room cache no longer knows.
        match self.background.step(&self.store, committed) {
            Ok(Stepped::Folded(b)) => self.rooms.forget_bucket(b),
            Ok(Stepped::Swept) => self.rooms.clear(),
            Ok(Stepped::Relisted(rooms)) => self.rooms.forget(&rooms),
            Ok(Stepped::Nothing) => {}
            Err(error) => {
                if error.is_storage_fault() {
                    self.fault(&error);
                }
            }
        }
    }
}

/// A store reopened after an outage; `landed`: the failed commit that began
/// it was stored after all (the log position moved on).
struct Reopened {
    landed: bool,
}

/// A store that cannot commit, from the first failed commit until a
/// reopen and a write succeed.
struct Outage {
    since: Instant,
    // The error that began it, and the last reopen's.
    first: String,
    last: Option<String>,
    attempts: u32,
    next_reopen: Instant,
    backoff: Duration,
    // Changes refused since the last report, and in all.
    refused: u64,
    refused_total: u64,
    reported: Instant,
}

impl Outage {
    fn new(first: String) -> Outage {
        let now = Instant::now();
        Outage {
            since: now,
            first,
            last: None,
            attempts: 0,
            next_reopen: now,
            backoff: REOPEN_FIRST,
            refused: 0,
            refused_total: 0,
            reported: now,
        }
    }

    // For the health check and the refused changes.
    fn reason(&self) -> String {
        let secs = self.since.elapsed().as_secs();
        match &self.last {
            Some(last) => format!(
                "cannot commit for {secs}s: {}; reopening failed: {last}",
                self.first
            ),
            None => format!("cannot commit for {secs}s: {}", self.first),
        }
    }

    fn retry_later(&mut self, error: &StoreError) {
        self.attempts += 1;
        self.last = Some(error.to_string());
        self.next_reopen = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(REOPEN_MAX);
    }

    // One line per OUTAGE_REPORT at most, however many batches come.
    fn report(&mut self) {
        if self.reported.elapsed() < OUTAGE_REPORT {
            return;
        }
        tracing::warn!(
            secs = self.since.elapsed().as_secs(),
            refused = self.refused,
            reopens = self.attempts,
            last_error = self.last.as_deref().unwrap_or(&self.first),
            "store still cannot commit"
        );
        self.refused = 0;
        self.reported = Instant::now();
    }
}

// Pairs each change with its outcome; changes applied before (a replay)
// are answered only if they carry a ticket.
fn answers<T>(batch: Vec<Pending<T>>, effects: Vec<(u64, Option<Effect>)>) -> Vec<Applied<T>> {
    batch
        .into_iter()
        .zip(effects)
        .filter_map(|(pending, (seq, effect))| match effect {
            Some(effect) => Some(Applied {
                seq,
                outcome: effect.into_outcome(pending.change),
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

/// What a committed batch did: each change's log position and effect
/// (None: applied before), and how many messages are staged now.
pub(crate) struct Committed {
    /// Each change's log position and effect.
    pub effects: Vec<(u64, Option<Effect>)>,
    /// Messages in `staged` after the commit.
    pub staged: u64,
    /// Some purge removed messages.
    pub purged: bool,
    /// The users of the rooms whose inbox keys were marked behind (two
    /// per room, `relist.rs`).
    pub marked: Vec<String>,
    /// The commit was durable, and so is every commit and step before it.
    pub durable: bool,
}

/// Applies `batch` in one transaction, durable or not (then made durable
/// by a later one), starting from the rooms in `rooms` and leaving there
/// the rooms it committed (nothing if it failed).
pub(crate) fn commit<T>(
    store: &Store,
    batch: &[Pending<T>],
    rooms: &mut RoomCache,
    durable: bool,
) -> Result<Committed, StoreError> {
    use redb::ReadableTableMetadata;
    let cache = std::mem::take(rooms);
    let mut txn = store.db()?.begin_write().ctx("starting a commit")?;
    if !durable {
        txn.set_durability(Durability::None)
            .ctx("making the commit non-durable")?;
    }
    let mut applied = Batch::begin(&txn, cache)?;
    applied.expect(batch.iter().map(|pending| &pending.change));
    let mut effects = Vec::with_capacity(batch.len());
    let mut purged = false;
    for pending in batch {
        match applied.position_of(pending.seq)? {
            Some(seq) => {
                let effect = applied.apply(seq, &pending.change)?;
                purged |= effect.purged();
                effects.push((seq, Some(effect)));
            }
            None => effects.push((pending.seq.unwrap_or(0), None)),
        }
    }
    let staged = applied.t.staged.len().ctx("counting staged messages")?;
    let mut cache = applied.finish()?;
    txn.commit().ctx("committing changes")?;
    let marked = std::mem::take(&mut cache.marked);
    *rooms = cache;
    Ok(Committed {
        effects,
        staged,
        purged,
        marked,
        durable,
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
    // Since when some room's inbox keys have been behind, if any are.
    behind_since: Option<Instant>,
    // How many rooms of each user were marked behind since then (at
    // least), and whether one user has RELIST_PER_USER of them.
    behind: HashMap<String, usize>,
    crowded: bool,
    // Relist now rather than when RELIST_AFTER has passed.
    relist_now: bool,
    // A commit or step made without fsync since the last durable commit.
    unsynced: bool,
}

impl Background {
    fn load(store: &Store) -> Result<Background, StoreError> {
        contained("reading what waits to be folded and swept", || {
            Background::load_unguarded(store)
        })
    }

    fn load_unguarded(store: &Store) -> Result<Background, StoreError> {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = store.db()?.begin_read().ctx("starting read transaction")?;
        let staged = txn
            .open_table(super::schema::STAGED)
            .ctx("opening staged messages")?
            .len()
            .ctx("counting staged messages")?;
        Ok(Background {
            folding: None,
            staged,
            sweeping: sweep_pending(store)?,
            behind_since: relist_pending(store)?.then(Instant::now),
            behind: HashMap::new(),
            crowded: false,
            relist_now: false,
            unsynced: false,
        })
    }

    fn busy(&self) -> bool {
        self.folding.is_some() || self.sweeping || self.relist_due()
    }

    fn relist_due(&self) -> bool {
        self.behind_since
            .is_some_and(|since| self.relist_now || self.crowded || since.elapsed() >= RELIST_AFTER)
    }

    fn committed(&mut self, committed: &Committed) {
        self.staged = committed.staged;
        self.sweeping |= committed.purged;
        if !committed.marked.is_empty() && self.behind_since.is_none() {
            self.behind_since = Some(Instant::now());
            self.relist_now = false;
        }
        for user in &committed.marked {
            let rooms = self.behind.entry(user.clone()).or_default();
            *rooms += 1;
            self.crowded |= *rooms >= RELIST_PER_USER;
        }
        self.unsynced = !committed.durable;
        if self.folding.is_none() && self.staged >= FOLD_AT {
            self.folding = Some(0);
        }
    }

    // Nothing has come for a while: make the last commits and steps
    // durable while there is time, and fold whatever is staged.
    fn idle(&mut self, store: &Store) {
        if self.unsynced {
            match make_durable(store) {
                Ok(()) => self.unsynced = false,
                Err(error) => tracing::warn!(%error, "syncing the last commits and steps failed"),
            }
        }
        if self.folding.is_none() && self.staged > 0 {
            self.folding = Some(0);
        }
        self.relist_now = self.behind_since.is_some();
    }

    // One step of whatever is under way, sized to keep up with the
    // `committed` changes just applied. A failed step abandons its pass
    // (logged here, given back for the caller to tell a fault of the disk):
    // nothing is lost, a later pass does the work again.
    fn step(&mut self, store: &Store, committed: usize) -> Result<Stepped, StoreError> {
        if self.relist_due() {
            return match contained("relisting inbox keys", || relist_step(store, RELIST_STEP)) {
                Ok(relisted) => {
                    self.unsynced = true;
                    if relisted.done {
                        self.behind_since = None;
                        self.behind = HashMap::new();
                        self.crowded = false;
                        self.relist_now = false;
                    }
                    Ok(Stepped::Relisted(relisted.rooms))
                }
                Err(error) => {
                    tracing::error!(%error, "relisting inbox keys failed");
                    // Tried again a while later, not at every step.
                    self.behind_since = Some(Instant::now());
                    self.relist_now = false;
                    self.crowded = false;
                    Err(error)
                }
            };
        }
        if let Some(b) = self.folding {
            match contained("folding staged messages", || {
                fold_step(store, b, STEP.max(2 * committed))
            }) {
                Ok(folded) => {
                    self.unsynced = true;
                    self.staged = folded.staged;
                    METRICS.set_recent(folded.staged);
                    if folded.bucket_empty {
                        self.folding = (b + 1 < BUCKETS).then_some(b + 1);
                    }
                    Ok(Stepped::Folded(b))
                }
                Err(error) => {
                    tracing::error!(%error, bucket = b, "folding staged messages failed");
                    self.folding = None;
                    Err(error)
                }
            }
        } else if self.sweeping {
            match contained("deleting purged messages", || sweep_step(store, SWEEP_STEP)) {
                Ok(swept) => {
                    self.unsynced = true;
                    self.sweeping = !swept.done;
                    Ok(Stepped::Swept)
                }
                Err(error) => {
                    tracing::error!(%error, "deleting purged messages failed");
                    self.sweeping = false;
                    Err(error)
                }
            }
        } else {
            Ok(Stepped::Nothing)
        }
    }

    // At exit: leave nothing non-durable behind.
    fn finish(&mut self, store: &Store) {
        if self.unsynced
            && let Err(error) = make_durable(store)
        {
            tracing::warn!(%error, "syncing the last commits and steps failed");
        }
    }
}

/// Which background step ran, so the applier forgets what it rewrote.
enum Stepped {
    /// None was under way.
    Nothing,
    /// A fold step, of this bucket's rooms.
    Folded(u8),
    /// A sweep step, of some room.
    Swept,
    /// A relist step, of these rooms.
    Relisted(Vec<u32>),
}

/// An empty durable commit: makes the non-durable steps before it durable.
pub(crate) fn make_durable(store: &Store) -> Result<(), StoreError> {
    store
        .db()?
        .begin_write()
        .ctx("starting a sync")?
        .commit()
        .ctx("syncing")
}

impl Store {
    /// Folds every staged message into chunks, deletes what purges left
    /// behind and relists every room whose inbox keys are behind, durably:
    /// what an idle applier does in the background, for when none runs
    /// (benchmarks, tests, the offline commands).
    pub fn settle(&self) -> Result<(), StoreError> {
        for b in 0..BUCKETS {
            while !fold_step(self, b, STEP)?.bucket_empty {}
        }
        while !sweep_step(self, SWEEP_STEP)?.done {}
        while !relist_step(self, RELIST_STEP)?.done {}
        make_durable(self)
    }

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
        let mut committed = commit(
            self,
            std::slice::from_ref(&pending),
            &mut RoomCache::default(),
            true,
        )?;
        let (_, effect) = committed.effects.remove(0);
        let outcome = effect
            .expect("the next position is always applied")
            .into_outcome(pending.change);
        if committed.purged {
            while !sweep_step(self, SWEEP_STEP)?.done {}
            make_durable(self)?;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    use super::*;
    use crate::store::change::{Change, NewMessage};
    use crate::store::read::{room_id, room_state};
    use crate::store::schema::{ROOM_IDS, ROOMS};
    use crate::store::testutil::*;
    use crate::store::{HistoryQuery, StoredMessage};

    fn message(room: &str, i: usize) -> NewMessage {
        msg(room, "A", "B", &format!("hello {i}"), 1_000 + i as u64)
    }

    fn pending(room: &str, i: usize) -> Pending<usize> {
        Pending {
            seq: None,
            change: Change::Message(message(room, i)),
            ticket: Some(i),
        }
    }

    // Drains the output until the applier has finished.
    async fn collect<T>(batches: &mut mpsc::Receiver<AppliedBatch<T>>) -> Vec<AppliedBatch<T>> {
        let mut out = Vec::new();
        while let Some(b) = batches.recv().await {
            out.push(b);
        }
        out
    }

    fn stored(applied: Vec<Applied<usize>>) -> Vec<(StoredMessage, usize)> {
        applied
            .into_iter()
            .map(|a| match (a.outcome, a.ticket) {
                (Outcome::Stored(m), Some(t)) => (m, t),
                other => panic!("expected a stored message with its ticket, got {other:?}"),
            })
            .collect()
    }

    // Sets a room's newest ts straight in its state.
    fn set_newest(store: &Store, room: &str, newest: u64) {
        let txn = store.db().unwrap().begin_write().unwrap();
        {
            let ids = txn.open_table(ROOM_IDS).unwrap();
            let id = room_id(&ids, room).unwrap().unwrap();
            let mut rooms = txn.open_table(ROOMS).unwrap();
            let mut st = room_state(&rooms, id).unwrap().unwrap();
            st.newest_ts = newest;
            rooms.insert(id, st.encode().as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn group_commit_applies_in_order_and_answers_each_ticket() {
        let (_dir, store) = tmp_store();
        let Applier {
            handle,
            mut batches,
            thread,
        } = Applier::<usize>::spawn(store.clone(), 2000, ApplierMode::HandBack).unwrap();
        // Hold the write lock so the applier cannot commit while we queue:
        // it takes at most one batch before blocking, the rest wait in the queue.
        let blocker = store.db().unwrap().begin_write().unwrap();
        for i in 0..1000 {
            let room = if i % 2 == 0 { "dm:A_B" } else { "dm:A_C" };
            handle.submit(pending(room, i)).await.unwrap();
        }
        drop(blocker);
        drop(handle);
        let got = collect(&mut batches).await;
        thread.join().unwrap();

        assert!(got.len() <= 2, "1000 changes took {} commits", got.len());
        let applied: Vec<Applied<usize>> = got
            .into_iter()
            .flat_map(|b| b.result.map_err(|(e, _)| e).unwrap())
            .collect();
        // Log positions in submit order.
        assert!(applied.iter().map(|a| a.seq).eq(1..=1000));
        let committed = stored(applied);
        for (i, (m, ticket)) in committed.iter().enumerate() {
            assert_eq!(*ticket, i);
            assert_eq!(m.text, format!("hello {i}"));
        }
        // What was answered is what is stored.
        let q = HistoryQuery {
            limit: 1000,
            ..Default::default()
        };
        let page = store.history_page("dm:A_B", &q).unwrap();
        let answered: Vec<_> = committed
            .iter()
            .map(|(m, _)| m.clone())
            .filter(|m| m.room == "dm:A_B")
            .collect();
        assert_eq!(page.messages, answered);
        assert_eq!(page.applied_seq, 1000);
    }

    #[tokio::test]
    async fn folds_keep_up_with_large_commits_and_nothing_is_lost() {
        let (_dir, store) = tmp_store();
        let Applier {
            handle,
            mut batches,
            thread,
        } = Applier::<usize>::spawn(store.clone(), 4096, ApplierMode::HandBack).unwrap();
        let total = 3 * FOLD_AT as usize + 10;
        for i in 0..total {
            let room = ["dm:A_B", "dm:A_C", "dm:A_D"][i % 3];
            handle.submit(pending(room, i)).await.unwrap();
        }
        drop(handle);
        let answered: Vec<StoredMessage> = collect(&mut batches)
            .await
            .into_iter()
            .flat_map(|b| stored(b.result.map_err(|(e, _)| e).unwrap()))
            .map(|(m, _)| m)
            .collect();
        thread.join().unwrap();
        assert_eq!(answered.len(), total);
        // Had the folds fallen behind, `staged` would hold most of it.
        let left = staged_len(&store);
        assert!(left < 2 * FOLD_AT, "{left} messages left staged");
        let q = HistoryQuery {
            limit: total,
            ..Default::default()
        };
        for room in ["dm:A_B", "dm:A_C", "dm:A_D"] {
            let want: Vec<_> = answered
                .iter()
                .filter(|m| m.room == room)
                .cloned()
                .collect();
            assert_eq!(
                store.history_page(room, &q).unwrap().messages,
                want,
                "{room}"
            );
        }
    }

    #[test]
    fn relisting_is_due_a_second_after_the_first_mark_or_once_a_user_has_many_rooms_marked() {
        let mut background = Background {
            folding: None,
            staged: 0,
            sweeping: false,
            behind_since: None,
            behind: HashMap::new(),
            crowded: false,
            relist_now: false,
            unsynced: false,
        };
        // A room of the hub and one of its peers, as a commit reports it.
        let marking = |peer: usize| Committed {
            effects: Vec::new(),
            staged: 0,
            purged: false,
            marked: vec!["hub".to_owned(), format!("peer{peer}")],
            durable: true,
        };
        for peer in 1..RELIST_PER_USER {
            background.committed(&marking(peer));
        }
        // Many rooms marked, none of the peers with more than one: not yet.
        assert!(!background.relist_due() && !background.busy());
        background.committed(&marking(RELIST_PER_USER));
        assert!(background.relist_due() && background.busy());

        background.crowded = false;
        assert!(!background.relist_due());
        background.behind_since = Some(Instant::now() - RELIST_AFTER);
        assert!(background.relist_due());
    }

    #[tokio::test]
    async fn an_idle_applier_folds_what_is_staged_and_relists_inbox_keys() {
        let (_dir, store) = tmp_store();
        let mut applier =
            Applier::<usize>::spawn(store.clone(), 16, ApplierMode::HandBack).unwrap();
        // One message in each of ten rooms: too few each to skip `staged`.
        for i in 0..10 {
            applier
                .handle
                .submit(pending(&format!("dm:A_{i}"), i))
                .await
                .unwrap();
        }
        let mut answered = 0;
        while answered < 10 {
            answered += applier.batches.recv().await.unwrap().result.unwrap().len();
        }
        assert!(staged_len(&store) > 0);
        assert!(relist_pending(&store).unwrap());
        // Wait for the idle fold and relist, without sleeping blindly: poll
        // with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        while staged_len(&store) > 0 || relist_pending(&store).unwrap() {
            assert!(Instant::now() < deadline, "the idle applier never folded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let newest_first: Vec<String> = (0..10).rev().map(|i| format!("dm:A_{i}")).collect();
        assert_eq!(conversation_rooms(&store, "A"), newest_first);
        let q = HistoryQuery {
            limit: 100,
            ..Default::default()
        };
        for i in 0..10 {
            let room = format!("dm:A_{i}");
            assert_eq!(store.history_page(&room, &q).unwrap().messages.len(), 1);
        }
    }

    #[test]
    fn a_single_nodes_commits_are_all_durable_a_cluster_nodes_at_checkpoints() {
        for since in [Duration::ZERO, CHECKPOINT / 2, CHECKPOINT, 2 * CHECKPOINT] {
            assert!(ApplierMode::HandBack.durable(since));
        }
        assert!(!ApplierMode::Retry.durable(Duration::ZERO));
        assert!(!ApplierMode::Retry.durable(CHECKPOINT - Duration::from_millis(1)));
        assert!(ApplierMode::Retry.durable(CHECKPOINT));
        assert!(ApplierMode::Retry.durable(2 * CHECKPOINT));
    }

    #[tokio::test]
    async fn a_failed_commit_hands_the_changes_back_and_the_applier_goes_on() {
        let (_dir, store) = tmp_store();
        put(&store, "dm:A_B", 5, "first");
        // No ts can follow u64::MAX: the batch must fail, storing nothing.
        set_newest(&store, "dm:A_B", u64::MAX);
        let mut applier = Applier::<usize>::spawn(store.clone(), 4, ApplierMode::HandBack).unwrap();
        applier.handle.submit(pending("dm:A_B", 1)).await.unwrap();
        let Err((error, back)) = applier.batches.recv().await.unwrap().result else {
            panic!("expected a failure")
        };
        assert!(matches!(error, StoreError::TsExhausted { .. }));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].ticket, Some(1));
        // One change the rules refuse is no fault of the store.
        assert!(applier.handle.can_commit());
        assert_eq!(store.applied_seq().unwrap(), 1);

        set_newest(&store, "dm:A_B", 5);
        applier.handle.submit(pending("dm:A_B", 2)).await.unwrap();
        let ok = stored(applier.batches.recv().await.unwrap().result.unwrap());
        assert_eq!((ok[0].0.ts, ok[0].1), (1002, 2));
        assert!(applier.handle.can_commit());
    }

    #[tokio::test]
    async fn retry_mode_applies_the_batch_once_the_store_can_commit_again() {
        let (_dir, store) = tmp_store();
        put(&store, "dm:A_B", 5, "first");
        set_newest(&store, "dm:A_B", u64::MAX);
        let mut applier = Applier::<usize>::spawn(store.clone(), 4, ApplierMode::Retry).unwrap();
        applier.handle.submit(pending("dm:A_B", 1)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while applier.handle.can_commit() {
            assert!(Instant::now() < deadline, "the commit never failed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The disk is back: the same batch commits, nothing handed back.
        set_newest(&store, "dm:A_B", 5);
        let ok = stored(applier.batches.recv().await.unwrap().result.unwrap());
        assert_eq!((ok[0].0.ts, ok[0].1), (1001, 1));
        assert!(applier.handle.can_commit());
    }

    #[tokio::test]
    async fn log_positions_from_the_log_skip_replays_and_refuse_gaps() {
        let (_dir, store) = tmp_store();
        let mut applier = Applier::<usize>::spawn(store.clone(), 16, ApplierMode::Retry).unwrap();
        let at = |seq, i, ticket| Pending {
            seq: Some(seq),
            change: Change::Message(message("dm:A_B", i)),
            ticket,
        };
        applier.handle.submit(at(1, 1, Some(1))).await.unwrap();
        applier.handle.submit(at(2, 2, None)).await.unwrap();
        let mut seqs = Vec::new();
        while seqs.len() < 2 {
            let batch = applier.batches.recv().await.unwrap().result.unwrap();
            seqs.extend(batch.iter().map(|a| a.seq));
        }
        assert_eq!(seqs, [1, 2]);
        // A replay: no output without a ticket, AlreadyApplied with one.
        applier.handle.submit(at(1, 1, None)).await.unwrap();
        applier.handle.submit(at(2, 2, Some(22))).await.unwrap();
        let mut answers = Vec::new();
        while answers.is_empty() {
            answers = applier.batches.recv().await.unwrap().result.unwrap();
        }
        assert_eq!(answers.len(), 1);
        assert!(matches!(
            &answers[0],
            Applied {
                seq: 2,
                outcome: Outcome::AlreadyApplied,
                ticket: Some(22)
            }
        ));
        // A gap is never retried: handed back at once.
        applier.handle.submit(at(5, 5, Some(5))).await.unwrap();
        let Err((StoreError::LogGap { applied: 2, got: 5 }, back)) =
            applier.batches.recv().await.unwrap().result
        else {
            panic!("expected a log gap")
        };
        assert_eq!(back[0].ticket, Some(5));
        assert_eq!(exported(&store).len(), 2);
    }

    #[tokio::test]
    async fn the_applier_drains_its_queue_and_exits_when_handles_are_dropped() {
        let (dir, store) = tmp_store();
        let Applier {
            handle,
            mut batches,
            thread,
        } = Applier::<usize>::spawn(store.clone(), 64, ApplierMode::HandBack).unwrap();
        let second = handle.clone();
        for i in 0..50 {
            let h = if i % 2 == 0 { &handle } else { &second };
            h.submit(pending("r", i)).await.unwrap();
        }
        drop(handle);
        drop(second);
        let n: usize = collect(&mut batches)
            .await
            .into_iter()
            .map(|b| b.result.map_err(|(e, _)| e).unwrap().len())
            .sum();
        assert_eq!(n, 50);
        thread.join().unwrap();
        // The thread's Store clone is gone with it, so the file can be reopened.
        drop(store);
        Store::open(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn submit_gives_the_change_back_when_the_applier_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let dead = ApplierHandle::<usize> {
            tx,
            failing: watch::Sender::new(None).subscribe(),
        };
        let back = dead.submit(pending("r", 7)).await.unwrap_err();
        assert_eq!(back.ticket, Some(7));
    }

    const CRASH_DIR_ENV: &str = "CHATD_APPLIER_CRASH_DIR";

    // A crash child's store in the directory its parent named, and the
    // runtime that drives an applier on it.
    fn crash_child_store(dir: &str) -> (Store, tokio::runtime::Runtime) {
        let store = Store::open(std::path::Path::new(dir)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (store, runtime)
    }

    /// How the checkpoint child ends: right after its last commit, or
    /// after idling long enough for the idle checkpoint.
    const CHECKPOINT_END_ENV: &str = "CHATD_APPLIER_CHECKPOINT_END";

    /// Changes the checkpoint child applies, at log positions 1 to this.
    const CHECKPOINT_CHANGES: usize = 500;

    #[test]
    #[ignore = "helper: run by a_cluster_nodes_commits_reach_the_disk_at_checkpoints in a child process"]
    fn apply_as_a_cluster_node_then_crash_child() {
        let (Ok(dir), Ok(end)) = (
            std::env::var(CRASH_DIR_ENV),
            std::env::var(CHECKPOINT_END_ENV),
        ) else {
            return;
        };
        let (store, runtime) = crash_child_store(&dir);
        runtime.block_on(async {
            let mut applier = Applier::<usize>::spawn(store, 64, ApplierMode::Retry).unwrap();
            let handle = applier.handle.clone();
            tokio::spawn(async move {
                for i in 1..=CHECKPOINT_CHANGES {
                    let p = Pending {
                        seq: Some(i as u64),
                        change: Change::Message(message("dm:A_B", i)),
                        ticket: None,
                    };
                    handle.submit(p).await.unwrap();
                }
            });
            let mut applied = 0;
            while applied < CHECKPOINT_CHANGES {
                applied += applier.batches.recv().await.unwrap().result.unwrap().len();
            }
            if end == "idle" {
                // An idle node: the queue stays empty past the idle wait.
                tokio::time::sleep(IDLE_FOLD * 3).await;
            }
            // With the applier still running (its queue open, so it does
            // not stop and sync): exit runs no destructor, the file is left
            // as a crash leaves it.
            std::process::exit(0);
        })
    }

    // Runs the checkpoint child, ending as `end` says; the store it left.
    fn crashed_cluster_node(end: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "store::applier::tests::apply_as_a_cluster_node_then_crash_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .env(CHECKPOINT_END_ENV, end)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_cluster_nodes_commits_reach_the_disk_at_checkpoints() {
        // Crashed right after its commits: whatever the last checkpoint
        // made durable is there, exactly the log's first `applied` entries
        // (the rest a restart applies again from the log).
        let (_dir, store) = crashed_cluster_node("busy");
        let applied = store.applied_seq().unwrap() as usize;
        assert!(applied <= CHECKPOINT_CHANGES);
        let page = store
            .history_page(
                "dm:A_B",
                &HistoryQuery {
                    limit: CHECKPOINT_CHANGES + 1,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(page.messages.len(), applied);

        // Crashed after idling: the idle checkpoint made every commit durable.
        let (_dir, store) = crashed_cluster_node("idle");
        assert_eq!(store.applied_seq().unwrap() as usize, CHECKPOINT_CHANGES);
    }

    #[test]
    #[ignore = "helper: run by a_kill_loses_only_what_was_not_committed in a child process"]
    fn apply_until_killed_child() {
        let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
            return;
        };
        let (store, runtime) = crash_child_store(&dir);
        runtime.block_on(async {
            let mut applier = Applier::<usize>::spawn(store, 256, ApplierMode::HandBack).unwrap();
            let handle = applier.handle.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let room = ["dm:A_B", "dm:A_C", "dm:B_C", "dm:A_D", "dm:C_D"][i % 5];
                    let mut m = message(room, i);
                    m.cid = Some(format!("c{i}"));
                    let p = Pending {
                        seq: None,
                        change: Change::Message(m),
                        ticket: Some(i),
                    };
                    if handle.submit(p).await.is_err() {
                        return;
                    }
                    // A pause long enough for the idle fold, once.
                    if i == 3000 {
                        tokio::time::sleep(IDLE_FOLD * 2).await;
                    }
                }
            });
            let mut out = std::io::stdout().lock();
            while let Some(batch) = applier.batches.recv().await {
                for a in batch.result.unwrap() {
                    writeln!(out, "acked {}", a.ticket.unwrap()).unwrap();
                }
                out.flush().unwrap();
            }
        });
    }

    #[test]
    fn a_kill_loses_only_what_was_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "store::applier::tests::apply_until_killed_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut acked = 0usize;
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(i) = line.strip_prefix("acked ") {
                acked = acked.max(i.parse::<usize>().unwrap() + 1);
                // Past the idle fold, in the middle of committing.
                if acked > 6000 {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(acked > 6000, "the child stopped early");

        let store = Store::open(dir.path()).unwrap();
        // What is stored is exactly the first `applied` messages, in order:
        // every answered one, none of a commit the kill cut short.
        let applied = store.applied_seq().unwrap() as usize;
        assert!(applied >= acked, "{applied} applied, {acked} answered");
        let mut all = Vec::new();
        store
            .export_all::<StoreError>(|m| {
                all.push((m.room.clone(), m.text.clone()));
                Ok(())
            })
            .unwrap();
        assert_eq!(all.len(), applied);
        let mut by_room: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (room, text) in all {
            let i: usize = text.strip_prefix("hello ").unwrap().parse().unwrap();
            by_room.entry(room).or_default().push(i);
        }
        for (room, got) in &by_room {
            let k = ["dm:A_B", "dm:A_C", "dm:A_D", "dm:B_C", "dm:C_D"]
                .iter()
                .position(|r| r == room)
                .unwrap();
            let index = [0, 1, 3, 2, 4][k];
            let want: Vec<usize> = (0..applied).filter(|i| i % 5 == index).collect();
            assert_eq!(got, &want, "{room}");
        }
        // The cids came with them: a resend is a duplicate.
        let mut again = message("dm:A_B", 0);
        again.cid = Some("c0".into());
        assert!(matches!(
            store.apply(Change::Message(again)).unwrap(),
            Outcome::Duplicate(_)
        ));
        // And a fold from here moves everything staged, losing nothing.
        fold_all(&store);
        assert_eq!(exported(&store).len(), applied);
    }
}
