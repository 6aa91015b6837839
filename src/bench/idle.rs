//! `chatd bench idle`: N connections held open and doing nothing but answer
//! the server's pings; what each costs the server in resident memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;

use super::target::{Target, check_file_limit};
use super::{Progress, Report, proc, ratio};

/// Handshakes in flight while the connections open.
const CONNECT_CONCURRENCY: usize = 64;

/// How far apart the readings of a settling RSS are.
const SETTLE_STEP: Duration = Duration::from_millis(500);

/// The most readings taken while waiting for RSS to settle.
const SETTLE_READINGS: usize = 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// Connections to hold.
    pub connections: usize,
    /// How long to hold them once connected.
    pub duration: Duration,
    /// The server's pid, for its RSS.
    pub server_pid: Option<u32>,
}

/// Runs the scenario and reports.
pub async fn run(target: &Target, config: &IdleConfig) -> anyhow::Result<Report> {
    check_file_limit(config.connections)?;
    let auths = (0..config.connections)
        .map(|i| target.auth(&format!("bench-idle-{i}"), None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let baseline = config.server_pid.map(proc::rss_kib).transpose()?;
    let started = Instant::now();
    let clients = target.connect_every(auths, CONNECT_CONCURRENCY).await?;
    let connect_time = started.elapsed();
    let settled = match config.server_pid {
        Some(pid) => Some(settled_rss_kib(pid).await?),
        None => None,
    };

    // Each connection keeps reading (its reader answers the pings; the
    // events must still be taken) until it ends or the hold is over.
    let dropped = Arc::new(AtomicUsize::new(0));
    let holders: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let dropped = dropped.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                while client.next_event().await.is_some() {}
                dropped.fetch_add(1, Ordering::Relaxed);
            }))
        })
        .collect();
    let held_from = Instant::now();
    let progress = Progress::start({
        let dropped = dropped.clone();
        let connections = config.connections;
        move || {
            let held = held_from.elapsed().as_secs();
            let dropped = dropped.load(Ordering::Relaxed);
            format!("idle: {connections} connections held {held}s, {dropped} dropped")
        }
    });
    tokio::time::sleep(config.duration).await;
    let at_end = config.server_pid.map(proc::rss_kib).transpose()?;
    drop(progress);
    let dropped = dropped.load(Ordering::Relaxed);
    drop(holders);

    let per_connection = |rss: Option<u64>| {
        rss.zip(baseline)
            .and_then(|(rss, base)| ratio(rss as f64 - base as f64, config.connections as f64))
    };
    let mut report = Report::new("idle");
    report.add("connections", config.connections, "");
    report.add("connect_s", connect_time.as_secs_f64(), "s");
    report.add("held_s", config.duration.as_secs_f64(), "s");
    report.add("dropped", dropped, "");
    report.add("server_rss_baseline_kib", baseline, "KiB");
    report.add("server_rss_kib", settled, "KiB");
    report.add("server_rss_end_kib", at_end, "KiB");
    report.add("rss_per_connection_kib", per_connection(settled), "KiB");
    report.add("rss_per_connection_end_kib", per_connection(at_end), "KiB");
    Ok(report)
}

/// The server's RSS once it has settled: two readings [`SETTLE_STEP`] apart
/// within 1% of each other, or the last of [`SETTLE_READINGS`].
async fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let mut last = proc::rss_kib(pid)?;
    for _ in 1..SETTLE_READINGS {
        tokio::time::sleep(SETTLE_STEP).await;
        let now = proc::rss_kib(pid)?;
        if now.abs_diff(last) * 100 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}
