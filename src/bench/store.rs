//! `chatd bench store`: the storage layer alone, on a temporary data
//! directory. Durable inserts through the real applier (group commit), fed
//! from several tasks at once as a busy server's sessions feed it; the
//! store settled (everything folded into chunks); the bytes it takes on
//! disk and in memory; an export of everything through the same code
//! `chatd export --all` runs; the time to open it again. With `--inbox`,
//! the conversation list and read cursors at scale instead.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Latencies, Report, proc, ratio};
use crate::admin::{ExportScope, write_export};
use crate::store::change::NewMessage;
use crate::store::{
    Applier, ApplierMode, Change, MAX_BATCH, Outcome, Pending, ReadMark, Store, now_us,
};

/// Tasks submitting messages at once: enough that the queue fills while
/// the applier commits, so batches form as they do under load.
const SUBMITTERS: u64 = 8;

/// What to run.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Messages to store.
    pub messages: u64,
    /// Rooms they are spread over, round-robin.
    pub rooms: u64,
    /// Length of each text in bytes (None: about 57, "benchmark message
    /// number N with a little padding text").
    pub text_bytes: Option<usize>,
}

/// What the inbox scenario builds.
#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// Messages in the big room (3 of them unread).
    pub room_messages: u64,
    /// Rooms of the user with many conversations.
    pub conversations: u64,
    /// Timed calls of each kind.
    pub samples: usize,
}

/// Conversations in a page of the inbox scenario: the whole list of the
/// user with ten, so both users' pages hold as many entries.
const PAGE: usize = 10;

/// What [`fill`] stored.
#[derive(Debug, Clone, Copy)]
pub struct Filled {
    /// Messages committed.
    pub messages: u64,
    /// Write transactions (one fsync each) they took.
    pub batches: u64,
}

/// Stores `count` messages, the `i`th being `message(i)`, through the
/// applier, submitted from [`SUBMITTERS`] tasks. Returns once every message
/// is committed.
pub async fn fill_with(
    store: Store,
    count: u64,
    message: impl Fn(u64) -> NewMessage + Send + Sync + 'static,
) -> anyhow::Result<Filled> {
    let Applier {
        handle,
        mut batches,
        thread,
    } = Applier::<()>::spawn(store, 2 * MAX_BATCH, ApplierMode::HandBack)?;
    let message = Arc::new(message);
    let mut submitters = tokio::task::JoinSet::new();
    for first in 0..SUBMITTERS {
        let handle = handle.clone();
        let message = message.clone();
        submitters.spawn(async move {
            for i in (first..count).step_by(SUBMITTERS as usize) {
                let pending = Pending {
                    seq: None,
                    change: Change::Message(message(i)),
                    ticket: None,
                };
                if handle.submit(pending).await.is_err() {
                    bail!("the store applier stopped");
                }
            }
            Ok(())
        });
    }
    // The applier's thread ends once every handle is gone and the queue is
    // applied; the submitters hold the remaining handles.
    drop(handle);
    let mut filled = Filled {
        messages: 0,
        batches: 0,
    };
    // Applied batches are read as they come, or the applier would stall.
    while let Some(batch) = batches.recv().await {
        let applied = batch.result.map_err(|(error, _)| error)?;
        filled.messages += applied.len() as u64;
        filled.batches += 1;
    }
    while let Some(submitted) = submitters.join_next().await {
        submitted.context("a submitting task failed")??;
    }
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the store applier thread panicked"))?;
    Ok(filled)
}

/// Stores `messages` synthetic messages round-robin over `rooms` rooms
/// `dm:u0000_v0000`, ... (see [`StoreConfig`] for the texts).
pub async fn fill(
    store: Store,
    messages: u64,
    rooms: u64,
    text_bytes: Option<usize>,
) -> anyhow::Result<Filled> {
    let rooms = rooms.max(1);
    fill_with(store, messages, move |i| synthetic(i, rooms, text_bytes)).await
}

/// The `i`th synthetic message.
fn synthetic(i: u64, rooms: u64, text_bytes: Option<usize>) -> NewMessage {
    let r = i % rooms;
    let (from, to) = (format!("u{r:04}"), format!("v{r:04}"));
    let mut text = format!("benchmark message number {i} with a little padding text");
    if let Some(n) = text_bytes {
        text.truncate(n);
        text.extend(std::iter::repeat_n('x', n.saturating_sub(text.len())));
    }
    NewMessage {
        room: format!("dm:{from}_{to}"),
        // A 20-character base64url id, as the server generates.
        sid: format!("bench{r:015}"),
        from,
        to,
        text,
        cid: None,
        time_us: now_us(),
        utc_offset_s: 0,
        eid: None,
    }
}

/// Allocated bytes of a file (its blocks, not its apparent size: the
/// database file is sparse) and its apparent size.
fn file_bytes(store: &Store) -> anyhow::Result<(u64, u64)> {
    let meta = std::fs::metadata(store.path())
        .with_context(|| format!("cannot read the size of {}", store.path().display()))?;
    Ok((meta.blocks() * 512, meta.len()))
}

/// Runs the scenario on a temporary directory (removed afterwards) and
/// reports.
pub async fn run(config: &StoreConfig) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let store = Store::open(dir.path())?;

    let started = Instant::now();
    let filled = fill(
        store.clone(),
        config.messages,
        config.rooms,
        config.text_bytes,
    )
    .await?;
    let insert_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let settler = store.clone();
    tokio::task::spawn_blocking(move || settler.settle())
        .await
        .context("the settle task failed")??;
    let settle_s = started.elapsed().as_secs_f64();
    let (allocated, apparent) = file_bytes(&store)?;
    let rss_kib = proc::rss_kib(std::process::id())?;

    let started = Instant::now();
    let exporter = store.clone();
    let (exported, text_bytes) = tokio::task::spawn_blocking(move || {
        let mut text_bytes = 0u64;
        let count = exporter.export_all::<crate::store::StoreError>(|m| {
            text_bytes += m.text.len() as u64;
            Ok(())
        })?;
        let written = write_export(&exporter, &ExportScope::All, std::io::sink())?;
        anyhow::ensure!(count == written, "the two exports differ");
        Ok::<_, anyhow::Error>((written, text_bytes))
    })
    .await
    .context("the export task failed")??;
    // Two passes were timed: halve it.
    let export_s = started.elapsed().as_secs_f64() / 2.0;

    drop(store);
    let started = Instant::now();
    let reopened = Store::open(dir.path())?;
    let reopen_ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(reopened);

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
    report.add("settle_s", settle_s, "s");
    report.add("exported", exported, "msgs");
    report.add("export_s", export_s, "s");
    report.add("export_per_sec", ratio(exported as f64, export_s), "msgs/s");
    report.add("db_allocated_bytes", allocated, "B");
    report.add("db_file_bytes", apparent, "B");
    let per_message = ratio(allocated as f64, filled.messages as f64);
    let text_per_message = ratio(text_bytes as f64, filled.messages as f64);
    report.add("bytes_per_message", per_message, "B");
    report.add("text_bytes_per_message", text_per_message, "B");
    if let (Some(all), Some(text)) = (per_message, text_per_message) {
        report.add("overhead_per_message", all - text, "B");
    }
    report.add("rss_settled_kib", rss_kib, "KiB");
    report.add("peak_rss_kib", proc::own_peak_rss_kib()?, "KiB");
    report.add("reopen_ms", reopen_ms, "ms");
    Ok(report)
}

/// The inbox at scale: `conversations` for a reader with 3 unread in a
/// room of `room_messages` against one with 3 unread in a room of 10, and
/// for a user of `conversations` rooms (first page and one deep in the
/// list) against one of 10; `read` applied in the big room against the
/// small one. Each figure is the median of `samples` calls.
pub async fn inbox(config: &InboxConfig) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let store = Store::open(dir.path())?;
    let room_messages = config.room_messages.max(4);
    let rooms = config.conversations.max(11);
    let started = Instant::now();
    // The big room and the small one: everything from `peer` but the
    // reader's own every tenth.
    let room = |i: u64, room: &'static str, reader: &'static str| {
        let (from, to) = if i.is_multiple_of(10) {
            (reader, "peer")
        } else {
            ("peer", reader)
        };
        NewMessage {
            room: room.into(),
            sid: "benchxxxxxxxxxxxxxx0".into(),
            from: from.into(),
            to: to.into(),
            text: format!("message {i} of a long conversation"),
            cid: None,
            time_us: now_us(),
            utc_offset_s: 0,
            eid: None,
        }
    };
    let big = room_messages - 3;
    fill_with(store.clone(), big, move |i| room(i, "dm:big_peer", "big")).await?;
    fill_with(store.clone(), 7, move |i| room(i, "dm:peer_small", "small")).await?;
    // The hub's rooms, and the few's: one message each.
    let hub = move |i: u64, user: &'static str| NewMessage {
        room: format!("dm:{user}_p{i:06}"),
        sid: "benchxxxxxxxxxxxxxx0".into(),
        from: format!("p{i:06}"),
        to: user.into(),
        text: format!("hello {user}"),
        cid: None,
        time_us: now_us(),
        utc_offset_s: 0,
        eid: None,
    };
    fill_with(store.clone(), rooms, move |i| hub(i, "hub")).await?;
    fill_with(store.clone(), 10, move |i| hub(i, "few")).await?;
    // Both readers have read all; then 3 new from the peer each.
    for (name, reader) in [("dm:big_peer", "big"), ("dm:peer_small", "small")] {
        store.apply(Change::Read(ReadMark {
            room: name.into(),
            user: reader.into(),
            ts: u64::MAX,
        }))?;
    }
    fill_with(store.clone(), 3, move |i| room(i + 1, "dm:big_peer", "big")).await?;
    fill_with(store.clone(), 3, move |i| {
        room(i + 1, "dm:peer_small", "small")
    })
    .await?;
    let fill_s = started.elapsed().as_secs_f64();
    // The hub's rooms got their messages moments ago: the last of them
    // still have their inbox keys behind (up to a few hundred, see
    // `relist.rs`), the most a page has to merge in.
    let behind_started = Instant::now();
    let behind = store.conversations("hub", None, None, PAGE)?;
    let hub_behind_us = behind_started.elapsed().as_secs_f64() * 1e6;
    anyhow::ensure!(behind.len() == PAGE, "the hub's first page is short");
    let settler = store.clone();
    tokio::task::spawn_blocking(move || settler.settle())
        .await
        .context("the settle task failed")??;
    for (user, room_name) in [("big", "dm:big_peer"), ("small", "dm:peer_small")] {
        let list = store.conversations(user, None, None, 50)?;
        let unread = list.iter().find(|c| c.room == room_name).map(|c| c.unread);
        anyhow::ensure!(
            unread == Some(3),
            "{user}: expected 3 unread, got {unread:?}"
        );
    }

    let samples = config.samples.max(1);
    let timed = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<Option<f64>> {
        let mut latencies = Latencies::default();
        for _ in 0..samples {
            let started = Instant::now();
            f()?;
            latencies.record(started.elapsed());
        }
        Ok(latencies.summary().map(|s| s.p50 * 1000.0))
    };
    let page = |user: &'static str, before: Option<(u64, String)>| {
        let store = store.clone();
        move || -> anyhow::Result<()> {
            let (ts, room) = before.clone().unzip();
            let list = store.conversations(user, ts, room.as_deref(), PAGE)?;
            anyhow::ensure!(!list.is_empty(), "no conversations for {user}");
            Ok(())
        }
    };
    let big_room_us = timed(&page("big", None))?;
    let small_room_us = timed(&page("small", None))?;
    let hub_first_us = timed(&page("hub", None))?;
    // A cursor half way down the hub's list.
    let mut cursor = None;
    for _ in 0..(rooms / 2 / 50) {
        let (ts, room) = cursor.clone().unzip();
        let list = store.conversations("hub", ts, room.as_deref(), 50)?;
        cursor = list.last().map(|c| (c.last.ts, c.room.clone()));
    }
    let hub_deep_us = timed(&page("hub", cursor))?;
    let few_us = timed(&page("few", None))?;

    // `read` through the applier, at a message below the newest (the cursor
    // then has to be placed among the room's messages).
    let mut applier = Applier::<()>::spawn(store.clone(), 16, ApplierMode::HandBack)?;
    let rooms_read = [("dm:big_peer", "big"), ("dm:peer_small", "small")];
    let mut cursors = Vec::new();
    for (name, reader) in rooms_read {
        let cursor = store
            .conversations(reader, None, None, 50)?
            .into_iter()
            .find(|c| c.room == name)
            .map(|c| c.read)
            .unwrap_or(0);
        cursors.push(cursor);
    }
    let mut latencies = [Latencies::default(), Latencies::default()];
    // The two rooms in turn, so both see the same disk.
    for k in 1..=samples.min(100) as u64 {
        for (i, (name, reader)) in rooms_read.into_iter().enumerate() {
            // Forward by a microsecond each time, between the messages read
            // and the 3 unread: the cursor's place among the room's
            // messages has to be found.
            let pending = Pending {
                seq: None,
                change: Change::Read(ReadMark {
                    room: name.into(),
                    user: reader.into(),
                    ts: cursors[i] + k,
                }),
                ticket: Some(()),
            };
            let started = Instant::now();
            if applier.handle.submit(pending).await.is_err() {
                bail!("the store applier stopped");
            }
            let batch = tokio::time::timeout(Duration::from_secs(30), applier.batches.recv())
                .await
                .context("no answer from the applier")?
                .context("the applier stopped")?;
            let applied = batch.result.map_err(|(error, _)| error)?;
            anyhow::ensure!(
                applied
                    .iter()
                    .all(|a| matches!(a.outcome, Outcome::ReadMoved { .. })),
                "a read did not move its cursor"
            );
            latencies[i].record(started.elapsed());
        }
    }
    let read_us = latencies.map(|l| l.summary().map(|s| s.p50 * 1000.0));
    drop(applier.handle);
    while applier.batches.recv().await.is_some() {}

    let mut report = Report::new("store-inbox");
    report.add("room_messages", room_messages, "msgs");
    report.add("conversations", rooms, "rooms");
    report.add("fill_s", fill_s, "s");
    report.add("conversations_big_room_us", big_room_us, "µs");
    report.add("conversations_small_room_us", small_room_us, "µs");
    report.add(
        "big_over_small",
        ratio(big_room_us.unwrap_or(0.0), small_room_us.unwrap_or(0.0)),
        "",
    );
    report.add("conversations_many_first_page_us", hub_first_us, "µs");
    report.add("conversations_many_behind_us", hub_behind_us, "µs");
    report.add("conversations_many_deep_page_us", hub_deep_us, "µs");
    report.add("conversations_few_us", few_us, "µs");
    report.add(
        "many_over_few",
        ratio(hub_deep_us.unwrap_or(0.0), few_us.unwrap_or(0.0)),
        "",
    );
    report.add("read_big_room_us", read_us[0], "µs");
    report.add("read_small_room_us", read_us[1], "µs");
    report.add("peak_rss_kib", proc::own_peak_rss_kib()?, "KiB");
    Ok(report)
}
