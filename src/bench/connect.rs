//! `chatd bench connect`: full handshakes (TCP, TLS when the URL is
//! `wss://`, websocket upgrade, Socket.IO CONNECT with a token) as fast as
//! C at a time allow, and what each costs the server in CPU.
//!
//! Tokens are minted before the clock starts, so the figures hold only the
//! handshakes themselves. Connections stay open until every handshake is
//! done: the server's CPU time then counts joining, not leaving.

use std::time::Instant;

use super::proc::CpuMeter;
use super::target::{Target, check_file_limit};
use super::{Latencies, Report, Tally, count, error_kind, ratio};

/// What to run.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// Handshakes in all.
    pub connections: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// The server's pid, for its CPU time.
    pub server_pid: Option<u32>,
}

/// Runs the scenario and reports.
pub async fn run(target: &Target, config: &ConnectConfig) -> anyhow::Result<Report> {
    check_file_limit(config.connections)?;
    let auths = (0..config.connections)
        .map(|i| target.auth(&format!("bench-conn-{i}"), None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let meter = CpuMeter::start(config.server_pid)?;
    let started = Instant::now();
    let results = target.connect_all(auths, config.concurrency).await;
    let elapsed = started.elapsed();
    let cpu = meter.spent()?;

    let mut latencies = Latencies::default();
    let mut errors = Tally::new();
    let mut clients = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok((client, latency)) => {
                latencies.record(latency);
                clients.push(client);
            }
            Err(error) => count(&mut errors, error_kind(&error)),
        }
    }
    let handshakes = clients.len();
    drop(clients);

    let seconds = elapsed.as_secs_f64();
    let mut report = Report::new("connect");
    report.add("connections", config.connections, "");
    report.add("concurrency", config.concurrency, "");
    report.add("tls", target.is_tls(), "");
    report.add("auth", target.has_auth(), "");
    report.add("handshakes", handshakes, "");
    report.add_tally("errors", errors);
    report.add("elapsed_s", seconds, "s");
    report.add(
        "handshakes_per_sec",
        ratio(handshakes as f64, seconds),
        "/s",
    );
    report.add_latency("handshake", latencies.summary());
    report.add("server_cpu_s", cpu.server_s, "s");
    let per_handshake = cpu
        .server_s
        .and_then(|s| ratio(s * 1000.0, handshakes as f64));
    report.add("server_cpu_ms_per_handshake", per_handshake, "ms");
    let bench_busy = ratio(cpu.bench_s * 100.0, seconds);
    report.add("bench_cpu_percent", bench_busy, "%");
    Ok(report)
}
