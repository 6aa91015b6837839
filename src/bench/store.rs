//! `chatd bench store`: the storage layer alone, on a temporary data
//! directory. Durable inserts through the real group-commit writer, fed from
//! several tasks at once as a busy server's sessions feed it, then an export
//! of everything through the same code `chatd export --all` runs.

use std::time::Instant;

use anyhow::{Context, bail};

use super::{Report, proc, ratio};
use crate::admin::{ExportScope, write_export};
use crate::store::change::NewMessage;
use crate::store::{Applier, ApplierMode, Change, MAX_BATCH, Pending, Store, now_us};

/// Tasks submitting messages at once: enough that the queue fills while
/// the writer commits, so batches form as they do under load.
const SUBMITTERS: u64 = 8;

/// What to run.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Messages to store.
    pub messages: u64,
    /// Rooms they are spread over, round-robin.
    pub rooms: u64,
}

/// What [`fill`] stored.
#[derive(Debug, Clone, Copy)]
pub struct Filled {
    /// Messages committed.
    pub messages: u64,
    /// Write transactions (one fsync each) they took.
    pub batches: u64,
}

/// Stores `messages` synthetic messages (about 60 bytes of text each)
/// round-robin over `rooms` rooms `dm:u0000_v0000`, ..., through the
/// group-commit writer, submitted from [`SUBMITTERS`] tasks. Returns once
/// every message is committed.
pub async fn fill(store: Store, messages: u64, rooms: u64) -> anyhow::Result<Filled> {
    let rooms = rooms.max(1);
    let Applier {
        handle,
        mut batches,
        thread,
    } = Applier::<()>::spawn(store, 2 * MAX_BATCH, ApplierMode::HandBack)?;
    let mut submitters = tokio::task::JoinSet::new();
    for first in 0..SUBMITTERS {
        let handle = handle.clone();
        submitters.spawn(async move {
            for i in (first..messages).step_by(SUBMITTERS as usize) {
                let pending = Pending {
                    seq: None,
                    change: Change::Message(message(i, rooms)),
                    ticket: None,
                };
                if handle.submit(pending).await.is_err() {
                    bail!("the store applier stopped");
                }
            }
            Ok(())
        });
    }
    // The writer's thread ends once every handle is gone and the queue is
    // committed; the submitters hold the remaining handles.
    drop(handle);
    let mut filled = Filled {
        messages: 0,
        batches: 0,
    };
    // Committed batches are read as they come, or the writer would stall.
    while let Some(batch) = batches.recv().await {
        let committed = batch.result.map_err(|(error, _)| error)?;
        filled.messages += committed.len() as u64;
        filled.batches += 1;
    }
    while let Some(submitted) = submitters.join_next().await {
        submitted.context("a submitting task failed")??;
    }
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the store writer thread panicked"))?;
    Ok(filled)
}

/// The `i`th synthetic message.
fn message(i: u64, rooms: u64) -> NewMessage {
    let r = i % rooms;
    let (from, to) = (format!("u{r:04}"), format!("v{r:04}"));
    NewMessage {
        room: format!("dm:{from}_{to}"),
        sid: format!("bench-socket-{r:04}"),
        from,
        to,
        text: format!("benchmark message number {i} with a little padding text"),
        cid: None,
        time_us: now_us(),
        utc_offset_s: 0,
        eid: None,
    }
}

/// Runs the scenario on a temporary directory (removed afterwards) and
/// reports.
pub async fn run(config: &StoreConfig) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let store = Store::open(dir.path())?;

    let started = Instant::now();
    let filled = fill(store.clone(), config.messages, config.rooms).await?;
    let insert_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let exporter = store.clone();
    let exported = tokio::task::spawn_blocking(move || {
        write_export(&exporter, &ExportScope::All, std::io::sink())
    })
    .await
    .context("the export task failed")??;
    let export_s = started.elapsed().as_secs_f64();
    let file_bytes = std::fs::metadata(store.path())
        .with_context(|| format!("cannot read the size of {}", store.path().display()))?
        .len();

    let mut report = Report::new("store");
    report.add("messages", filled.messages, "msgs");
    report.add("rooms", config.rooms, "");
    report.add("insert_s", insert_s, "s");
    report.add(
        "inserts_per_sec",
        ratio(filled.messages as f64, insert_s),
        "msgs/s",
    );
    report.add("batches", filled.batches, "commits");
    let per_batch = ratio(filled.messages as f64, filled.batches as f64);
    report.add("messages_per_batch", per_batch, "msgs");
    report.add("exported", exported, "msgs");
    report.add("export_s", export_s, "s");
    report.add("export_per_sec", ratio(exported as f64, export_s), "msgs/s");
    report.add("db_file_bytes", file_bytes, "B");
    report.add("peak_rss_kib", proc::own_peak_rss_kib()?, "KiB");
    Ok(report)
}
