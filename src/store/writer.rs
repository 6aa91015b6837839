//! The group-commit writer: one OS thread owns every write of new messages.
//!
//! A redb commit with `Durability::Immediate` (redb's default) blocks on
//! fsync, so it runs on a dedicated `std::thread` rather than a tokio worker.
//! The thread takes every message queued while it committed the last
//! batch (or, after the queue ran empty, the next message and whatever
//! joins it within a gather window, `LINGER`) and commits them all in one
//! transaction: under load, many messages share one fsync; when idle, a
//! lone message waits at most the gather window. A commit appends to the
//! `recent` table (a room with many messages in it may go straight to
//! `messages`); between commits the thread folds `recent` into the
//! per-room table a step at a time (see `fold.rs`).
//!
//! Being the only writer of messages is also what makes `ts` unique and
//! strictly increasing: each batch reads `last_ts` from `meta` inside its own
//! transaction, assigns `max(now_us, last_ts + 1)` to each message and
//! stores the new `last_ts` in the same commit, so the guarantee holds
//! across restarts and across clock steps backwards.

use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, ReadableTableMetadata};
use tokio::sync::mpsc;

use super::error::DbContext;
use super::fold::{FOLD_AT, FoldPass, RecentRooms, STEP};
use super::record::encode_fields_into;
use super::schema::{LAST_TS_KEY, MESSAGES, META, RECENT, bucket};
use super::{NewMessage, Store, StoreError, StoredMessage};
use crate::metrics::METRICS;

/// Most messages committed in one transaction; bounds a batch's latency.
pub const MAX_BATCH: usize = 16384;

/// How long a batch begun on an empty queue waits for more messages to join it.
const LINGER: std::time::Duration = std::time::Duration::from_micros(1000);

// Committed batches waiting for the chat layer. Each holds up to MAX_BATCH
// messages; when full, the writer waits, the queue fills, submit() waits.
const OUTPUT_BATCHES: usize = 16;

/// Sends new messages to the writer thread. Cheap to clone; the thread
/// stops once every handle is dropped and the queue is drained.
pub struct WriterHandle<T> {
    tx: mpsc::Sender<(NewMessage, T)>,
}

// Manual impl: deriving would needlessly require `T: Clone`.
impl<T> Clone for WriterHandle<T> {
    fn clone(&self) -> Self {
        WriterHandle {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> WriterHandle<T> {
    /// Queues a message; waits while the bounded queue is full
    /// (backpressure). Gives the message and ticket back if the writer stopped.
    pub async fn submit(&self, msg: NewMessage, ticket: T) -> Result<(), (NewMessage, T)> {
        self.tx.send((msg, ticket)).await.map_err(|e| e.0)
    }
}

/// Messages a batch stored, each with its ticket, in commit order.
pub type Committed<T> = Vec<(StoredMessage, T)>;

/// Why a batch was not stored, and its messages with their tickets.
pub type Unstored<T> = (StoreError, Vec<(NewMessage, T)>);

/// One write transaction's outcome, in commit order. On failure nothing of
/// the batch was stored, and the messages come back with their tickets.
pub struct CommittedBatch<T> {
    /// The stored messages (with ts and time) and their tickets, or the
    /// error and the messages that were not stored.
    pub result: Result<Committed<T>, Unstored<T>>,
}

/// A running writer: its input, its output, and its thread.
///
/// Graceful shutdown: drop every [`WriterHandle`], then read `batches` until
/// it yields `None` (the thread drops its sender only after committing the
/// last queued message), or join `thread`.
pub struct Writer<T> {
    /// Where sessions submit messages.
    pub handle: WriterHandle<T>,
    /// Committed batches, in commit order; ends when the thread has finished.
    pub batches: mpsc::Receiver<CommittedBatch<T>>,
    /// The writer thread; it returns once all handles are gone and the queue is drained.
    pub thread: JoinHandle<()>,
}

impl<T: Send + 'static> Writer<T> {
    /// Starts the writer thread. `queue_capacity` (at least 1) bounds the
    /// submit queue; `stamp(ts)` formats the `time` field of each message.
    pub fn spawn(
        store: Store,
        queue_capacity: usize,
        stamp: impl Fn(u64) -> String + Send + 'static,
    ) -> Result<Writer<T>, StoreError> {
        let recent_rooms = RecentRooms::load(&store)?;
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let (out_tx, out_rx) = mpsc::channel(OUTPUT_BATCHES);
        let thread = std::thread::Builder::new()
            .name("chatd-writer".into())
            .spawn(move || run(store, recent_rooms, rx, out_tx, stamp))
            .map_err(StoreError::Spawn)?;
        Ok(Writer {
            handle: WriterHandle { tx },
            batches: out_rx,
            thread,
        })
    }
}

// The thread body. Returns (dropping `out`) when the queue is closed and empty.
fn run<T>(
    store: Store,
    mut recent_rooms: RecentRooms,
    mut rx: mpsc::Receiver<(NewMessage, T)>,
    out: mpsc::Sender<CommittedBatch<T>>,
    stamp: impl Fn(u64) -> String,
) {
    let mut out_open = true;
    let mut folding: Option<FoldPass> = None;
    loop {
        // A pass under way goes on while no message waits.
        while folding.is_some() && rx.is_empty() {
            folding = advance_fold(&store, &mut recent_rooms, folding, 0, 0);
        }
        // Messages that queued during the last commit make the next batch
        // at once. A commit's fsync costs the same for one message as for
        // hundreds: when the writer was idle, give the messages already on
        // their way a moment to join the first: fewer, fuller commits for
        // at most LINGER more latency.
        let first = match rx.try_recv() {
            Ok(first) => first,
            Err(_) => {
                let Some(first) = rx.blocking_recv() else {
                    break;
                };
                std::thread::sleep(LINGER);
                first
            }
        };
        let mut msgs = vec![first.0];
        let mut tickets = vec![first.1];
        // Whatever queued up during the previous commit shares this one.
        while msgs.len() < MAX_BATCH {
            let Ok((m, t)) = rx.try_recv() else { break };
            msgs.push(m);
            tickets.push(t);
        }
        let started = Instant::now();
        let (mut recent, mut committed) = (0, 0);
        let result = match commit_batch(&store, &mut recent_rooms, msgs, &stamp) {
            Ok((stored, in_recent)) => {
                METRICS.commit(stored.len(), started.elapsed());
                METRICS.set_recent(in_recent);
                (recent, committed) = (in_recent, stored.len());
                Ok(stored.into_iter().zip(tickets).collect())
            }
            Err((e, msgs)) => {
                tracing::error!(error = %e, messages = msgs.len(), "message batch not stored");
                Err((e, msgs.into_iter().zip(tickets).collect()))
            }
        };
        // Keep committing even if nobody listens: the messages are still accepted
        // into storage, only their acks are lost.
        if out_open && out.blocking_send(CommittedBatch { result }).is_err() {
            tracing::warn!("committed-batch receiver dropped; acks are being discarded");
            out_open = false;
        }
        // After the acks are on their way, so a fold step delays only
        // messages still queued.
        folding = advance_fold(&store, &mut recent_rooms, folding, recent, committed);
    }
}

// One step of the fold pass under way, or of a new one once `recent` holds
// FOLD_AT messages, sized to keep up with the `committed` messages just
// added; returns the pass if it is not finished. A failed step
// drops its pass: nothing is lost, the messages are still in `recent` and
// a later pass copies them again.
fn advance_fold(
    store: &Store,
    recent_rooms: &mut RecentRooms,
    pass: Option<FoldPass>,
    recent: u64,
    committed: usize,
) -> Option<FoldPass> {
    let mut pass = match pass {
        Some(pass) => pass,
        None if recent >= FOLD_AT => match FoldPass::start(store) {
            Ok(pass) => pass,
            Err(e) => {
                tracing::error!(error = %e, "planning a fold of recent messages failed");
                return None;
            }
        },
        None => return None,
    };
    match pass.step(store, STEP.max(2 * committed)) {
        Ok(step) => {
            METRICS.set_recent(step.recent);
            if step.done {
                recent_rooms.folded(pass.upto());
                return None;
            }
            Some(pass)
        }
        Err(e) => {
            tracing::error!(error = %e, "folding recent messages failed");
            None
        }
    }
}

/// The current time as a message `ts` would carry it: Unix microseconds
/// (0 for a clock before 1970 or past year 586,000).
pub fn now_us() -> u64 {
    // The writer then falls back to last_ts + 1.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_micros()).ok())
        .unwrap_or(0)
}

// Stores `msgs` in one durable transaction and says how many messages
// `recent` holds now; on failure hands them back.
#[expect(
    clippy::result_large_err,
    reason = "called once per batch, and the Err carries the batch back by design"
)]
fn commit_batch(
    store: &Store,
    recent_rooms: &mut RecentRooms,
    msgs: Vec<NewMessage>,
    stamp: &impl Fn(u64) -> String,
) -> Result<(Vec<StoredMessage>, u64), (StoreError, Vec<NewMessage>)> {
    let txn = match store.db.begin_write().ctx("starting message write") {
        Ok(t) => t,
        Err(e) => return Err((e, msgs)),
    };
    let last_ts = match read_last_ts(&txn) {
        Ok(t) => t,
        Err(e) => return Err((e, msgs)),
    };
    // Refuse rather than wrap: a wrapped ts would overwrite old messages.
    if last_ts.checked_add(msgs.len() as u64).is_none() {
        return Err((StoreError::TsExhausted { last_ts }, msgs));
    }
    let now = now_us();
    let mut last = last_ts;
    let stored: Vec<StoredMessage> = msgs
        .into_iter()
        .map(|m| {
            last = now.max(last + 1);
            StoredMessage {
                room: m.room,
                ts: last,
                id: m.id,
                from: m.from,
                to: m.to,
                text: m.text,
                time: stamp(last),
            }
        })
        .collect();
    let committed = insert_all(&txn, recent_rooms, &stored, last)
        .and_then(|recent| txn.commit().ctx("committing messages").map(|()| recent));
    match committed {
        Ok(recent) => Ok((stored, recent)),
        Err(e) => Err((e, stored.into_iter().map(NewMessage::from).collect())),
    }
}

fn read_last_ts(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).ctx("opening meta table")?;
    let last = meta.get(LAST_TS_KEY).ctx("reading last_ts")?;
    Ok(last.map(|v| v.value()).unwrap_or(0))
}

// Stores the batch (in `recent`, or in `messages` for the rooms
// `recent_rooms` sends there) and records `last_ts`; returns how many
// messages `recent` holds now. If the commit then fails, `recent_rooms`
// may list rooms with nothing in `recent`, which is harmless.
fn insert_all(
    txn: &redb::WriteTransaction,
    recent_rooms: &mut RecentRooms,
    stored: &[StoredMessage],
    last_ts: u64,
) -> Result<u64, StoreError> {
    let mut recent = txn.open_table(RECENT).ctx("opening recent table")?;
    let direct = recent_rooms.direct(stored.iter().map(|m| m.room.as_str()));
    let mut messages = match direct.is_empty() {
        true => None,
        false => Some(txn.open_table(MESSAGES).ctx("opening messages table")?),
    };
    let mut bytes = Vec::new();
    for m in stored {
        encode_fields_into(&mut bytes, &m.id, &m.from, &m.to, &m.text, &m.time)?;
        if let Some(messages) = messages
            .as_mut()
            .filter(|_| direct.contains(m.room.as_str()))
        {
            messages
                .insert((m.room.as_str(), m.ts), bytes.as_slice())
                .ctx("inserting message")?;
        } else {
            recent
                .insert((bucket(&m.room), m.ts), (m.room.as_str(), bytes.as_slice()))
                .ctx("inserting message")?;
            recent_rooms.appended(&m.room, m.ts);
        }
    }
    let mut meta = txn.open_table(META).ctx("opening meta table")?;
    meta.insert(LAST_TS_KEY, last_ts).ctx("writing last_ts")?;
    recent.len().ctx("counting recent messages")
}

impl From<StoredMessage> for NewMessage {
    /// Drops what the writer assigned (ts, time): used to hand back unstored messages.
    fn from(m: StoredMessage) -> Self {
        NewMessage {
            room: m.room,
            id: m.id,
            from: m.from,
            to: m.to,
            text: m.text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::store::HistoryQuery;

    fn msg(room: &str, i: usize) -> NewMessage {
        NewMessage {
            room: room.into(),
            id: format!("sock{i}"),
            from: "A".into(),
            to: "B".into(),
            text: format!("hello {i}"),
        }
    }

    fn stamp(ts: u64) -> String {
        format!("time-of-{ts}")
    }

    // Drains the output until the writer thread has finished.
    async fn collect<T>(batches: &mut mpsc::Receiver<CommittedBatch<T>>) -> Vec<CommittedBatch<T>> {
        let mut out = Vec::new();
        while let Some(b) = batches.recv().await {
            out.push(b);
        }
        out
    }

    #[tokio::test]
    async fn group_commit_batches_and_ts_increase() {
        let (_dir, store) = tmp_store();
        let Writer {
            handle,
            mut batches,
            thread,
        } = Writer::<usize>::spawn(store.clone(), 2000, stamp).unwrap();
        // Hold the write lock so the writer cannot commit while we queue:
        // it takes at most one batch before blocking, the rest wait in the queue.
        let blocker = store.db.begin_write().unwrap();
        for i in 0..1000 {
            let room = if i % 2 == 0 { "dm:A_B" } else { "dm:A_C" };
            handle.submit(msg(room, i), i).await.unwrap();
        }
        drop(blocker);
        drop(handle);
        let got = collect(&mut batches).await;
        thread.join().unwrap();

        assert!(got.len() <= 2, "1000 messages took {} commits", got.len());
        let committed: Vec<(StoredMessage, usize)> = got
            .into_iter()
            .flat_map(|b| b.result.map_err(|(e, _)| e).unwrap())
            .collect();
        assert_eq!(committed.len(), 1000);
        for (i, (m, ticket)) in committed.iter().enumerate() {
            // Tickets come back with their own message, in submit order.
            assert_eq!(*ticket, i);
            assert_eq!(m.text, format!("hello {i}"));
            assert_eq!(m.time, stamp(m.ts));
        }
        assert!(committed.windows(2).all(|w| w[0].0.ts < w[1].0.ts));

        // What was acked is what is stored, time string included.
        let q = HistoryQuery {
            limit: 1000,
            ..Default::default()
        };
        let stored = store.history("dm:A_B", &q).unwrap();
        let acked: Vec<_> = committed
            .iter()
            .map(|(m, _)| m.clone())
            .filter(|m| m.room == "dm:A_B")
            .collect();
        assert_eq!(stored, acked);
    }

    #[tokio::test]
    async fn folds_keep_up_with_large_commits_and_nothing_is_lost() {
        let (_dir, store) = tmp_store();
        let Writer {
            handle,
            mut batches,
            thread,
        } = Writer::<usize>::spawn(store.clone(), 4096, stamp).unwrap();
        // Commits of up to 4096 (the queue), far more than a step's minimum.
        let total = 4 * FOLD_AT as usize + 10;
        for i in 0..total {
            let room = if i % 2 == 0 { "dm:A_B" } else { "dm:A_C" };
            handle.submit(msg(room, i), i).await.unwrap();
        }
        drop(handle);
        let acked: Vec<StoredMessage> = collect(&mut batches)
            .await
            .into_iter()
            .flat_map(|b| b.result.map_err(|(e, _)| e).unwrap())
            .map(|(m, _)| m)
            .collect();
        thread.join().unwrap();
        assert_eq!(acked.len(), total);
        // Had the passes fallen behind, `recent` would hold most of it.
        let left = recent_len(&store);
        assert!(left < 2 * FOLD_AT, "{left} messages left in recent");
        let q = HistoryQuery {
            limit: total,
            ..Default::default()
        };
        for room in ["dm:A_B", "dm:A_C"] {
            let want: Vec<_> = acked.iter().filter(|m| m.room == room).cloned().collect();
            assert_eq!(store.history(room, &q).unwrap(), want, "{room}");
        }
    }

    // Commits one message per entry of `rooms`, in order, in one batch.
    fn commit(store: &Store, recent_rooms: &mut RecentRooms, rooms: &[&str]) -> Vec<StoredMessage> {
        let msgs = rooms
            .iter()
            .enumerate()
            .map(|(i, room)| msg(room, i))
            .collect();
        commit_batch(store, recent_rooms, msgs, &stamp)
            .map_err(|(e, _)| e)
            .unwrap()
            .0
    }

    #[test]
    fn a_busy_room_skips_recent_unless_it_has_messages_there() {
        let (_dir, store) = tmp_store();
        let mut recent_rooms = RecentRooms::load(&store).unwrap();
        let mixed: Vec<&str> = (0..30)
            .map(|i| if i % 10 == 0 { "dm:quiet" } else { "dm:busy" })
            .collect();
        let mut acked = commit(&store, &mut recent_rooms, &mixed);
        // 27 for dm:busy went straight to `messages`, 3 for dm:quiet did not.
        assert_eq!(recent_len(&store), 3);

        // dm:quiet now has messages in `recent`: its next ones follow them
        // there, however many, or they would hide behind the newer ones.
        acked.extend(commit(&store, &mut recent_rooms, &["dm:quiet"; 20]));
        assert_eq!(recent_len(&store), 23);
        acked.extend(commit(&store, &mut recent_rooms, &["dm:busy"; 20]));
        assert_eq!(recent_len(&store), 23);

        let q = HistoryQuery {
            limit: 100,
            ..Default::default()
        };
        for room in ["dm:busy", "dm:quiet"] {
            let want: Vec<_> = acked.iter().filter(|m| m.room == room).cloned().collect();
            assert_eq!(store.history(room, &q).unwrap(), want, "{room}");
        }

        // A restarted writer knows which rooms have messages in `recent`.
        let mut restarted = RecentRooms::load(&store).unwrap();
        commit(&store, &mut restarted, &["dm:quiet"; 10]);
        assert_eq!(recent_len(&store), 33);
    }

    #[tokio::test]
    async fn ts_increase_across_batches() {
        let (_dir, store) = tmp_store();
        let mut w = Writer::<()>::spawn(store, 16, stamp).unwrap();
        let mut last = 0;
        for i in 0..5 {
            w.handle.submit(msg("r", i), ()).await.unwrap();
            let b = w.batches.recv().await.unwrap();
            let ts = b.result.map_err(|(e, _)| e).unwrap()[0].0.ts;
            assert!(ts > last);
            last = ts;
        }
    }

    #[tokio::test]
    async fn writer_drains_queue_and_exits_when_handles_dropped() {
        let (_dir, store) = tmp_store();
        let Writer {
            handle,
            mut batches,
            thread,
        } = Writer::<usize>::spawn(store.clone(), 64, stamp).unwrap();
        let second = handle.clone();
        for i in 0..50 {
            let h = if i % 2 == 0 { &handle } else { &second };
            h.submit(msg("r", i), i).await.unwrap();
        }
        drop(handle);
        drop(second);
        // Every queued message is committed before the output ends.
        let n: usize = collect(&mut batches)
            .await
            .into_iter()
            .map(|b| b.result.map_err(|(e, _)| e).unwrap().len())
            .sum();
        assert_eq!(n, 50);
        thread.join().unwrap();
        // The thread's Store clone is gone with it, so the file can be reopened.
        drop(store);
        Store::open(_dir.path()).unwrap();
    }

    #[tokio::test]
    async fn submit_fails_with_message_back_when_writer_is_gone() {
        let (_dir, store) = tmp_store();
        let Writer {
            handle,
            batches,
            thread,
        } = Writer::<u32>::spawn(store, 4, stamp).unwrap();
        // Nobody reads the output from here on.
        drop(batches);
        // A handle whose writer has gone (its queue receiver dropped).
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let dead = WriterHandle::<u32> { tx };
        let (m, t) = dead.submit(msg("r", 7), 7).await.unwrap_err();
        assert_eq!((m.text.as_str(), t), ("hello 7", 7));
        // The real writer still commits with nobody reading its output.
        handle.submit(msg("r", 1), 1).await.unwrap();
        drop(handle);
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn ts_stays_increasing_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        // A last_ts far in the future stands in for a clock that went backwards.
        let future = now_us() + 1_000_000_000_000;
        let first = {
            let store = Store::open(dir.path()).unwrap();
            set_meta(&store, LAST_TS_KEY, future);
            let mut w = Writer::<()>::spawn(store, 4, stamp).unwrap();
            w.handle.submit(msg("r", 0), ()).await.unwrap();
            drop(w.handle);
            let b = collect(&mut w.batches).await;
            w.thread.join().unwrap();
            b.into_iter()
                .next()
                .unwrap()
                .result
                .map_err(|(e, _)| e)
                .unwrap()[0]
                .0
                .ts
        };
        assert_eq!(first, future + 1);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.last_ts().unwrap(),
            future + 1,
            "last_ts is readable after reopen"
        );
        let mut w = Writer::<()>::spawn(store, 4, stamp).unwrap();
        w.handle.submit(msg("r", 1), ()).await.unwrap();
        let b = w.batches.recv().await.unwrap();
        assert_eq!(b.result.map_err(|(e, _)| e).unwrap()[0].0.ts, future + 2);
    }

    #[tokio::test]
    async fn failed_commit_returns_messages_and_tickets_and_writer_goes_on() {
        let (_dir, store) = tmp_store();
        // No ts can follow u64::MAX, so the batch must fail without storing anything.
        set_meta(&store, LAST_TS_KEY, u64::MAX);
        let mut w = Writer::<u32>::spawn(store.clone(), 4, stamp).unwrap();
        w.handle.submit(msg("r", 1), 11).await.unwrap();
        let b = w.batches.recv().await.unwrap();
        let Err((err, back)) = b.result else {
            panic!("expected failure")
        };
        assert!(matches!(err, StoreError::TsExhausted { .. }));
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].0.text.as_str(), back[0].1), ("hello 1", 11));
        assert!(store.rooms().unwrap().is_empty());

        set_meta(&store, LAST_TS_KEY, 0);
        w.handle.submit(msg("r", 2), 22).await.unwrap();
        let b = w.batches.recv().await.unwrap();
        let ok = b.result.map_err(|(e, _)| e).unwrap();
        assert_eq!(ok[0].1, 22);
        assert_eq!(store.rooms().unwrap(), ["r"]);
    }
}
