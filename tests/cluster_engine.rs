//! The engine side of cluster mode against a real three-server JetStream
//! cluster: the log stream, publishing with in-doubt retries, reading the
//! log in order, engine health, with servers killed with SIGKILL.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chatd::cluster::consume::{LogReader, log_tail};
use chatd::cluster::entry::{EntryId, encode_entry};
use chatd::cluster::health::{EngineHealth, watch_health};
use chatd::cluster::publish::publish_entry;
use chatd::cluster::stream::{LOG_STREAM, Replication, ensure_log_stream};
use chatd::cluster::{ClusterEngine, publish::PublishRefused};
use chatd::store::change::{Change, ReadMark};
use common::nats::NatsCluster;
use common::within;
use tokio::sync::watch;

fn urls(cluster: &NatsCluster) -> Vec<String> {
    cluster.urls().split(',').map(str::to_owned).collect()
}

/// A node connected to `cluster`, with the log stream ensured.
async fn log_node(
    cluster: &NatsCluster,
    name: &str,
) -> (ClusterEngine, async_nats::jetstream::stream::Stream) {
    let engine = ClusterEngine::connect(&urls(cluster), name)
        .await
        .expect("connect");
    let stream = ensure_log_stream(&engine, Replication::default())
        .await
        .expect("ensure the log stream");
    (engine, stream)
}

/// A change whose content says who published it and which one it was.
fn change(publisher: usize, n: u64) -> (EntryId, Bytes) {
    let mut eid = [0u8; 16];
    eid[..8].copy_from_slice(&(publisher as u64).to_be_bytes());
    eid[8..].copy_from_slice(&n.to_be_bytes());
    let change = Change::Read(ReadMark {
        room: format!("dm:p{publisher}_q"),
        user: format!("p{publisher}"),
        ts: n,
    });
    let mut bytes = Vec::new();
    encode_entry(&eid, &change, &mut bytes);
    (eid, Bytes::from(bytes))
}

async fn wait_health(
    health: &mut watch::Receiver<EngineHealth>,
    what: &str,
    wanted: impl Fn(&EngineHealth) -> bool,
) -> EngineHealth {
    within(what, health.wait_for(|h| wanted(h)))
        .await
        .expect("the health probe runs")
        .clone()
}

/// Reads the log from `from` up to and including `to`: entry id → seqs.
async fn read_log(engine: &ClusterEngine, from: u64, to: u64) -> HashMap<EntryId, Vec<u64>> {
    let stream = ensure_log_stream(engine, Replication::default())
        .await
        .expect("stream");
    let mut reader = LogReader::new(engine.clone(), stream, from);
    let mut seen: HashMap<EntryId, Vec<u64>> = HashMap::new();
    while reader.next_seq() <= to {
        let record = within("the next log entry", reader.next()).await;
        let entry = record.entry.expect("every entry decodes");
        seen.entry(entry.eid).or_default().push(record.seq);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_replicated_read_back_in_order_and_a_retry_is_no_second_entry() {
    let mut cluster = NatsCluster::start();
    let (engine, stream) = log_node(&cluster, "node-a").await;
    assert_eq!(stream.cached_info().config.num_replicas, 3);
    cluster.stream_leader(LOG_STREAM);
    // A second node ensuring the same stream changes nothing.
    let other = ClusterEngine::connect(&urls(&cluster), "node-b")
        .await
        .expect("connect");
    ensure_log_stream(&other, Replication::default())
        .await
        .expect("ensure again");

    let mut seqs = Vec::new();
    for n in 0..20 {
        let (eid, bytes) = change(1, n);
        seqs.push(
            publish_entry(&engine, &eid, bytes)
                .await
                .expect("published")
                .seq,
        );
    }
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    // Our own retry of a kept entry is answered with the original position.
    let (eid, bytes) = change(1, 7);
    assert_eq!(
        publish_entry(&other, &eid, bytes)
            .await
            .expect("retried")
            .seq,
        8
    );
    assert_eq!(log_tail(&stream).await.expect("tail"), 20);

    // Read from the middle: catch-up, then a live entry from the other node.
    let mut reader = LogReader::new(other.clone(), stream.clone(), 15);
    for seq in 15..=20 {
        let record = within("a caught-up entry", reader.next()).await;
        assert_eq!(record.seq, seq);
        assert_eq!(record.pending, 20 - seq);
        assert_eq!(record.entry.expect("decodes").eid, change(1, seq - 1).0);
    }
    let (eid, bytes) = change(2, 0);
    publish_entry(&engine, &eid, bytes)
        .await
        .expect("published");
    let live = within("a live entry", reader.next()).await;
    assert_eq!((live.seq, live.entry.expect("decodes").eid), (21, eid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_why_without_quorum_and_comes_back_by_itself() {
    let mut cluster = NatsCluster::start();
    let engine = ClusterEngine::connect(&urls(&cluster), "node-a")
        .await
        .expect("connect");
    ensure_log_stream(&engine, Replication::default())
        .await
        .expect("stream");
    let (mut health, _probe) = watch_health(engine.clone());
    wait_health(&mut health, "engine up", EngineHealth::is_up).await;

    // Two of three servers gone: no quorum, whichever one the client is on.
    let leader = cluster.stream_leader(LOG_STREAM);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.kill(leader);
    cluster.kill(others[0]);
    let down = wait_health(&mut health, "engine down", |h| !h.is_up()).await;
    let EngineHealth::Down(reason) = down else {
        unreachable!()
    };
    assert!(!reason.is_empty());
    // Nothing sent is refused outright or left in doubt: a publish now
    // either is refused at once or waits; never acknowledged.
    let (eid, bytes) = change(9, 0);
    let attempt =
        tokio::time::timeout(Duration::from_secs(3), publish_entry(&engine, &eid, bytes)).await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "a publish without quorum was acknowledged: {attempt:?}"
    );

    cluster.restart(others[0]);
    cluster.restart(leader);
    wait_health(&mut health, "engine up again", EngineHealth::is_up).await;

    // Everything down: unreachable.
    for i in 0..3 {
        cluster.kill(i);
    }
    let EngineHealth::Down(reason) =
        wait_health(&mut health, "engine unreachable", |h| !h.is_up()).await
    else {
        unreachable!()
    };
    assert!(
        reason.contains("unreachable") || reason.contains("timed out"),
        "{reason}"
    );
    for i in 0..3 {
        cluster.start_again(i);
    }
    cluster.wait_ready();
    wait_health(
        &mut health,
        "engine up after a full restart",
        EngineHealth::is_up,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_stream_leader_during_publishes_loses_nothing_acknowledged() {
    const PUBLISHERS: usize = 8;
    // A kill lands between two publishes now and then (no publish in
    // flight at that instant); the leader of the moment is killed again,
    // up to this many times, until one was in doubt.
    const ROUNDS: usize = 4;
    let mut cluster = NatsCluster::start();
    let (engine, stream) = log_node(&cluster, "node-a").await;

    // Publishers publish one entry after another until told to stop; each
    // reports the entries acknowledged (with their seq) and refused, and
    // counts those known only after a retry.
    let stop = Arc::new(AtomicBool::new(false));
    let retried = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let engine = engine.clone();
        let stop = stop.clone();
        let retried = retried.clone();
        publishers.push(tokio::spawn(async move {
            let mut acked: Vec<(EntryId, u64)> = Vec::new();
            let mut refused: Vec<(EntryId, PublishRefused)> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (eid, bytes) = change(p, n);
                match publish_entry(&engine, &eid, bytes).await {
                    Ok(published) => {
                        acked.push((eid, published.seq));
                        if published.attempts > 1 {
                            retried.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(refusal) => {
                        refused.push((eid, refusal));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                n += 1;
            }
            (acked, refused)
        }));
    }
    // Each round: let some entries through, kill the leader, wait for a
    // new one, let more through, then bring the old leader back.
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let leader = cluster.stream_leader(LOG_STREAM);
        let before = wait_for_tail(&stream, log_tail(&stream).await.unwrap_or(0) + 200).await;
        cluster.kill(leader);
        let killed = std::time::Instant::now();
        // The write stall: until entries beyond those in flight at the
        // kill are committed by the new leader (for the report, not
        // asserted).
        wait_for_tail(&stream, before + PUBLISHERS as u64 + 1).await;
        let stall = killed.elapsed();
        let new_leader = cluster.stream_leader(LOG_STREAM);
        assert_ne!(new_leader, leader);
        wait_for_tail(&stream, before + 200).await;
        cluster.restart(leader);
        wait_for_tail(&stream, before + 400).await;
        rounds.push(format!(
            "leader {leader} -> {new_leader}, write stall {stall:?}"
        ));
        if retried.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);

    let mut acked = HashMap::new();
    let mut refused = Vec::new();
    for publisher in publishers {
        let (a, r) = within("publishers to finish", publisher)
            .await
            .expect("publisher");
        acked.extend(a);
        refused.extend(r);
    }
    // The publishes in flight when a leader died were in doubt, and
    // resolved by retrying them.
    let retried = retried.load(Ordering::Relaxed);
    assert!(
        retried > 0,
        "no publish was in doubt in {ROUNDS} leader kills: {rounds:?}"
    );
    let tail = log_tail(&stream).await.expect("tail");
    let log = read_log(&engine, 1, tail).await;
    for (eid, seq) in &acked {
        assert_eq!(log.get(eid), Some(&vec![*seq]), "acked entry {eid:?}");
    }
    for (eid, why) in &refused {
        assert!(
            !log.contains_key(eid),
            "refused entry ({why}) is in the log"
        );
    }
    for (eid, seqs) in &log {
        assert_eq!(seqs.len(), 1, "entry {eid:?} twice in the log: {seqs:?}");
        assert!(
            acked.contains_key(eid),
            "entry {eid:?} in the log was never acked"
        );
    }
    println!(
        "{} entries acknowledged ({retried} after a retry), {} refused; {}",
        acked.len(),
        refused.len(),
        rounds.join("; ")
    );
}

/// Waits until the log holds at least `n` entries; returns its tail.
async fn wait_for_tail(stream: &async_nats::jetstream::stream::Stream, n: u64) -> u64 {
    within(&format!("{n} entries in the log"), async {
        loop {
            if let Ok(tail) = log_tail(stream).await
                && tail >= n
            {
                return tail;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}
