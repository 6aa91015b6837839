//! `chatd bench pairs`: P pairs of users, each pair in its DM room, both
//! sides sending `chat message` with an ack.
//!
//! Open loop (`--rate R`): each side sends R messages a second on a fixed
//! schedule, whatever the server does; a slow server shows up as latency
//! (measured from the scheduled send time, so a sender that falls behind
//! does not hide it), not as a slower sender. Closed loop: each side sends
//! its next message as soon as the previous one is acknowledged, so the
//! server's throughput is the limit.
//!
//! Sends wait on tokio's timer, whose resolution is 1 ms: an open-loop
//! message may leave up to a millisecond after its scheduled time, and that
//! counts in its latency.
//!
//! Latencies and `delivered_per_sec` cover the measured window only (sent,
//! respectively received, after the warm-up and before the end); the
//! counts (`sent`, `acked`, `delivered`, `lost`) cover the whole run, since
//! a message lost during the warm-up is lost all the same.
//!
//! The text carries its scheduled send time (`t=<ns since this run's
//! epoch>`) and a per-side sequence number (`s=<n>`), so the receiving
//! side measures end-to-end latency without any shared state, and the
//! end result can say exactly which acknowledged messages never arrived.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use super::proc::{CpuMeter, CpuSpent};
use super::target::{Target, check_file_limit};
use super::{Latencies, Progress, Report, Tally, count, error_kind, ratio};
use crate::client::{Ack, Client, ClientError, ClientEvent, RawArgs};

/// Handshakes in flight while the pairs connect.
const CONNECT_CONCURRENCY: usize = 64;

/// How long, after the last send, acknowledged messages may take to arrive
/// before they count as lost. Longer than the client's ack timeout (10 s),
/// so every ack is answered or timed out by then.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(12);

/// How each side paces its messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// This many messages a second per side, evenly spaced.
    Open {
        /// Messages per second per side.
        rate: f64,
    },
    /// The next message as soon as the previous one is acknowledged.
    Closed,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PairsConfig {
    /// Pairs of users; each pair is two connections.
    pub pairs: usize,
    /// How each side paces its messages.
    pub load: Load,
    /// How long the measured part lasts.
    pub duration: Duration,
    /// How long the load runs before measuring starts.
    pub warmup: Duration,
    /// Text length of each message in bytes (at least what the timestamp
    /// and sequence number take).
    pub size: usize,
    /// The server's pid, for its CPU time.
    pub server_pid: Option<u32>,
}

/// The run's clock: when it started, when measuring starts and stops.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Send times in texts are nanoseconds since this instant.
    epoch: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Clock {
    /// Whether something sent at `sent` belongs to the measured window.
    fn measured(&self, sent: Instant) -> bool {
        sent >= self.measure_from && sent < self.end
    }
}

/// Counters every side updates as it goes, for the progress line and for
/// knowing when the drain is over.
#[derive(Default)]
struct LiveCounts {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    /// Sides that have stopped sending and have every answer.
    done_sending: AtomicUsize,
}

/// Runs the scenario and reports.
pub async fn run(target: &Target, config: &PairsConfig) -> anyhow::Result<Report> {
    let sides = config.pairs * 2;
    check_file_limit(sides)?;
    let mut auths = Vec::with_capacity(sides);
    for i in 0..config.pairs {
        let (a, b) = (format!("bench-a-{i}"), format!("bench-b-{i}"));
        auths.push(target.auth(&a, Some(&b))?);
        auths.push(target.auth(&b, Some(&a))?);
    }
    let clients = target.connect_every(auths, CONNECT_CONCURRENCY).await?;

    let epoch = Instant::now();
    let measure_from = epoch + config.warmup;
    let clock = Clock {
        epoch,
        measure_from,
        end: measure_from + config.duration,
    };
    let live = Arc::new(LiveCounts::default());
    let stop = CancellationToken::new();
    let mut tasks = Vec::with_capacity(sides);
    for (index, client) in clients.into_iter().enumerate() {
        let first_send = match config.load {
            // Spread the sides over one interval, so the server sees an
            // even stream rather than bursts of every side at once.
            Load::Open { rate } => epoch + interval(rate).mul_f64(index as f64 / sides as f64),
            Load::Closed => epoch,
        };
        let side = PairEnd::new(client, config, clock, first_send, live.clone());
        tasks.push(tokio::spawn(side.run(stop.clone())));
    }

    let progress = Progress::start({
        let live = live.clone();
        move || {
            let elapsed = epoch.elapsed().as_secs_f64();
            let (sent, acked, delivered) = (
                live.sent.load(Ordering::Relaxed),
                live.acked.load(Ordering::Relaxed),
                live.delivered.load(Ordering::Relaxed),
            );
            format!("pairs: {elapsed:.0}s sent {sent} acked {acked} delivered {delivered}")
        }
    });
    sleep_until(clock.measure_from.into()).await;
    let meter = CpuMeter::start(config.server_pid)?;
    sleep_until(clock.end.into()).await;
    let cpu = meter.spent()?;

    // Drain: wait until every side has its answers and every acknowledged
    // message has arrived somewhere, or the drain times out.
    let drained = async {
        while live.done_sending.load(Ordering::Relaxed) < sides
            || live.delivered.load(Ordering::Relaxed) < live.acked.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
    stop.cancel();
    let mut outcomes = Vec::with_capacity(sides);
    for task in tasks {
        outcomes.push(task.await.context("a benchmark connection task failed")?);
    }
    drop(progress);
    Ok(report(config, outcomes, cpu))
}

fn interval(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate)
}

/// Puts the sides' outcomes together. Sides come in pairs: side `2i` sends
/// to side `2i + 1` and back.
fn report(config: &PairsConfig, outcomes: Vec<SideFigures>, cpu: CpuSpent) -> Report {
    let mut lost = 0;
    for pair in outcomes.chunks(2) {
        lost += pair[0].lost_at(&pair[1]) + pair[1].lost_at(&pair[0]);
    }
    let mut total = SideFigures::default();
    for outcome in outcomes {
        total.merge(outcome);
    }
    let seconds = config.duration.as_secs_f64();
    let delivered_per_sec = ratio(total.delivered_in_window as f64, seconds);
    let delivered = total.delivered_in_window as f64;
    let per_100k = cpu.server_s.and_then(|s| ratio(s * 100_000.0, delivered));

    let mut report = Report::new("pairs");
    report.add("pairs", config.pairs, "");
    report.add("connections", config.pairs * 2, "");
    match config.load {
        Load::Open { rate } => {
            report.add("mode", "open", "");
            report.add(
                "offered_per_sec",
                rate * (config.pairs * 2) as f64,
                "msgs/s",
            );
        }
        Load::Closed => {
            report.add("mode", "closed", "");
            report.add("offered_per_sec", None::<f64>, "msgs/s");
        }
    }
    report.add("duration_s", seconds, "s");
    report.add("warmup_s", config.warmup.as_secs_f64(), "s");
    report.add("size_bytes", config.size, "B");
    report.add("delivered_per_sec", delivered_per_sec, "msgs/s");
    report.add_latency("e2e", total.e2e.summary());
    report.add_latency("ack", total.ack.summary());
    report.add("sent", total.sent, "msgs");
    report.add("acked", total.acked, "msgs");
    report.add("delivered", total.delivered, "msgs");
    report.add("lost", lost, "msgs");
    report.add("duplicates", total.duplicates, "msgs");
    report.add_tally("refusals", total.refusals);
    report.add_tally("errors", total.errors);
    report.add("server_cpu_s", cpu.server_s, "s");
    report.add("server_cpu_s_per_100k_delivered", per_100k, "s");
    // Where the server's time went, and what else its core did: the
    // figures that tell a change in the server from noise of the machine.
    let server = cpu.server;
    report.add(
        "server_cpu_percent",
        cpu.server_s.and_then(|s| ratio(s * 100.0, seconds)),
        "%",
    );
    report.add("server_user_s", server.map(|s| s.user_s), "s");
    report.add("server_system_s", server.map(|s| s.system_s), "s");
    report.add(
        "server_voluntary_switches",
        server.map(|s| s.voluntary_switches),
        "",
    );
    report.add(
        "server_involuntary_switches",
        server.map(|s| s.involuntary_switches),
        "",
    );
    report.add(
        "server_core_busy_percent",
        server.map(|s| s.core_busy_percent),
        "%",
    );
    report.add(
        "server_core_steal_percent",
        server.map(|s| s.core_steal_percent),
        "%",
    );
    // Busy time of the server's cores that was not the server's own.
    report.add(
        "server_core_others_percent",
        server.and_then(|s| {
            let own = ratio(cpu.server_s? * 100.0, seconds * s.cores as f64)?;
            Some((s.core_busy_percent - own).max(0.0))
        }),
        "%",
    );
    // On one core, a bench near 100% is itself the bottleneck.
    report.add(
        "bench_cpu_percent",
        ratio(cpu.bench_s * 100.0, seconds),
        "%",
    );
    report
}

/// A message sent and not yet answered.
struct Unanswered {
    seq: usize,
    /// When it was due: latency counts from here.
    scheduled: Instant,
    ack: Ack,
}

/// One side's figures at the end.
#[derive(Default)]
struct SideFigures {
    sent: u64,
    /// Acknowledged with `ok: true`.
    acked: u64,
    /// Received from the peer (first copies only).
    delivered: u64,
    /// Deliveries received within the measured window.
    delivered_in_window: u64,
    duplicates: u64,
    /// By own sequence number: acknowledged with `ok: true`.
    acked_seqs: Vec<bool>,
    /// By the peer's sequence number: received.
    delivered_seqs: Vec<bool>,
    e2e: Latencies,
    ack: Latencies,
    refusals: Tally,
    errors: Tally,
}

impl SideFigures {
    /// How many of this side's acknowledged messages `peer` never received.
    fn lost_at(&self, peer: &SideFigures) -> u64 {
        let received = |seq: usize| peer.delivered_seqs.get(seq).copied().unwrap_or(false);
        let lost =
            (self.acked_seqs.iter().enumerate()).filter(|&(seq, &acked)| acked && !received(seq));
        lost.count() as u64
    }

    /// Adds `other`'s counts and samples (not its sequence numbers).
    fn merge(&mut self, other: SideFigures) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.delivered += other.delivered;
        self.delivered_in_window += other.delivered_in_window;
        self.duplicates += other.duplicates;
        self.e2e.merge(other.e2e);
        self.ack.merge(other.ack);
        for (tally, more) in [
            (&mut self.refusals, other.refusals),
            (&mut self.errors, other.errors),
        ] {
            for (key, n) in more {
                *tally.entry(key).or_default() += n;
            }
        }
    }
}

/// One connection: sends on its schedule, takes acks and deliveries.
struct PairEnd {
    client: Client,
    load: Load,
    clock: Clock,
    size: usize,
    next_send: Instant,
    live: Arc<LiveCounts>,
    outcome: SideFigures,
}

impl PairEnd {
    fn new(
        client: Client,
        config: &PairsConfig,
        clock: Clock,
        first_send: Instant,
        live: Arc<LiveCounts>,
    ) -> PairEnd {
        PairEnd {
            client,
            load: config.load,
            clock,
            size: config.size,
            next_send: first_send,
            live,
            outcome: SideFigures::default(),
        }
    }

    /// Runs until `stop`, or until the connection ends.
    async fn run(mut self, stop: CancellationToken) -> SideFigures {
        let mut in_flight: VecDeque<Unanswered> = VecDeque::new();
        let mut done_sending = false;
        loop {
            let sending = match self.load {
                Load::Open { .. } => self.next_send < self.clock.end,
                Load::Closed => Instant::now() < self.clock.end,
            };
            if !sending && in_flight.is_empty() && !done_sending {
                done_sending = true;
                self.live.done_sending.fetch_add(1, Ordering::Relaxed);
            }
            let send_now = sending && (self.load != Load::Closed || in_flight.is_empty());
            let first_answer = async {
                match in_flight.front_mut() {
                    Some(message) => (&mut message.ack).await,
                    None => std::future::pending().await,
                }
            };
            // Biased: answers and deliveries are timed as soon as they are
            // seen, before any new send.
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                answer = first_answer => {
                    let message = in_flight.pop_front().expect("an answer has a message");
                    self.on_answer(&message, answer);
                }
                event = self.client.next_event() => match event {
                    Some(event) => self.on_event(event),
                    None => {
                        count(&mut self.outcome.errors, "disconnected");
                        break;
                    }
                },
                () = send_due(self.load, self.next_send), if send_now => {
                    if let Some(message) = self.send().await {
                        in_flight.push_back(message);
                    }
                }
            }
        }
        for _ in in_flight {
            count(&mut self.outcome.errors, "unanswered");
        }
        if !done_sending {
            self.live.done_sending.fetch_add(1, Ordering::Relaxed);
        }
        self.outcome
    }

    /// Sends the next message; `None` if it could not be sent.
    async fn send(&mut self) -> Option<Unanswered> {
        let scheduled = match self.load {
            Load::Open { rate } => {
                let due = self.next_send;
                self.next_send += interval(rate);
                due
            }
            Load::Closed => Instant::now(),
        };
        let seq = self.outcome.acked_seqs.len();
        self.outcome.acked_seqs.push(false);
        let text = message_text(self.clock.epoch, scheduled, seq, self.size);
        match self
            .client
            .emit_with_ack("chat message", Value::String(text))
            .await
        {
            Ok(ack) => {
                self.outcome.sent += 1;
                self.live.sent.fetch_add(1, Ordering::Relaxed);
                Some(Unanswered {
                    seq,
                    scheduled,
                    ack,
                })
            }
            Err(error) => {
                count(&mut self.outcome.errors, error_kind(&error));
                None
            }
        }
    }

    fn on_answer(&mut self, message: &Unanswered, answer: Result<RawArgs, ClientError>) {
        let args = match answer {
            Ok(args) => args,
            Err(error) => return count(&mut self.outcome.errors, error_kind(&error)),
        };
        // An answer of another shape is a refusal without a reason, as a
        // missing `ok: true` is.
        let answer = args.first::<AckSummary>().unwrap_or_default();
        if answer.ok {
            self.outcome.acked += 1;
            self.outcome.acked_seqs[message.seq] = true;
            self.live.acked.fetch_add(1, Ordering::Relaxed);
            if self.clock.measured(message.scheduled) {
                self.outcome.ack.record(message.scheduled.elapsed());
            }
        } else {
            let reason = answer.reason.as_deref().unwrap_or("no reason");
            count(&mut self.outcome.refusals, reason);
        }
    }

    fn on_event(&mut self, event: ClientEvent) {
        // `online` and `history` come at connect: nothing to measure.
        if event.name != "chat message" {
            return;
        }
        let received = Instant::now();
        let message = event.args.first::<Delivered>();
        let Some((sent_ns, seq)) = message.ok().and_then(|m| parse_text(&m.text)) else {
            return count(&mut self.outcome.errors, "foreign_message");
        };
        let seqs = &mut self.outcome.delivered_seqs;
        if seqs.len() <= seq {
            seqs.resize(seq + 1, false);
        }
        if std::mem::replace(&mut seqs[seq], true) {
            self.outcome.duplicates += 1;
            return;
        }
        self.outcome.delivered += 1;
        self.live.delivered.fetch_add(1, Ordering::Relaxed);
        if received >= self.clock.measure_from && received < self.clock.end {
            self.outcome.delivered_in_window += 1;
        }
        let sent = self.clock.epoch + Duration::from_nanos(sent_ns);
        if self.clock.measured(sent) {
            self.outcome
                .e2e
                .record(received.saturating_duration_since(sent));
        }
    }
}

/// What the bench reads of an acknowledgement: whether the message was
/// taken and, if not, why; the rest is skipped, no JSON tree is built.
#[derive(Deserialize, Default)]
struct AckSummary<'a> {
    #[serde(default)]
    ok: bool,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

/// What the bench reads of a delivered `chat message`: its text, borrowed
/// from the frame's text unless it has escapes.
#[derive(Deserialize)]
struct Delivered<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// Waits for the next scheduled send in open loop; returns at once in
/// closed loop, or when the schedule is already behind.
async fn send_due(load: Load, next_send: Instant) {
    if matches!(load, Load::Open { .. }) && next_send > Instant::now() {
        sleep_until(next_send.into()).await;
    }
}

/// `t=<ns since epoch> s=<seq>`, padded with `x` to `size` bytes.
fn message_text(epoch: Instant, scheduled: Instant, seq: usize, size: usize) -> String {
    let nanos = scheduled.saturating_duration_since(epoch).as_nanos();
    let mut text = String::with_capacity(size.max(48));
    // Writing to a String cannot fail.
    let _ = write!(text, "t={nanos} s={seq}");
    if text.len() < size {
        text.push(' ');
        text.extend(std::iter::repeat_n('x', size - text.len()));
    }
    text
}

/// The send time (ns since the epoch) and sequence number of a text
/// [`message_text`] wrote.
fn parse_text(text: &str) -> Option<(u64, usize)> {
    let rest = text.strip_prefix("t=")?;
    let (nanos, rest) = rest.split_once(" s=")?;
    let seq = rest.split(' ').next()?;
    Some((nanos.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_has_the_size() {
        let epoch = Instant::now();
        let text = message_text(epoch, epoch + Duration::from_nanos(1234), 7, 100);
        assert_eq!(text.len(), 100);
        assert!(text.starts_with("t=1234 s=7 xx"), "{text}");
        assert_eq!(parse_text(&text), Some((1234, 7)));
        let short = message_text(epoch, epoch, 12, 1);
        assert_eq!(short, "t=0 s=12");
        assert_eq!(parse_text(&short), Some((0, 12)));
        assert_eq!(parse_text("hello"), None);
    }

    #[test]
    fn lost_means_acknowledged_and_never_received() {
        let sender = SideFigures {
            acked_seqs: vec![true, false, true, true],
            ..SideFigures::default()
        };
        let receiver = SideFigures {
            delivered_seqs: vec![true, true],
            ..SideFigures::default()
        };
        assert_eq!(sender.lost_at(&receiver), 2);
    }
}
