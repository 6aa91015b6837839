//! The server's Prometheus metrics: one process-wide set of atomics, bumped
//! where things happen and rendered in the text exposition format when the
//! `--metrics-listen` endpoint is scraped.
//!
//! Hand-written rather than built on the `prometheus-client` crate: the set
//! is fixed at compile time (no label values come from clients), so plain
//! atomics plus a formatter are less code than a registry, cost one relaxed
//! add on the hot paths, and add no dependency.
//!
//! A `static` rather than an `Arc` threaded through constructors: the
//! counters are bumped deep inside layers (outbox, store writer) that should
//! not grow a parameter for them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::refusal::RefusalReason;

/// The metrics of this process.
pub static METRICS: Metrics = Metrics::new();

/// Why a client's connection was refused before it could chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// The TLS handshake failed or timed out.
    Tls,
    /// The Socket.IO handshake was malformed (user, peer, since).
    Invalid,
    /// The token was missing, expired or wrong.
    Unauthorized,
}

impl HandshakeRefusal {
    const ALL: [HandshakeRefusal; 3] = [
        HandshakeRefusal::Tls,
        HandshakeRefusal::Invalid,
        HandshakeRefusal::Unauthorized,
    ];

    fn as_str(self) -> &'static str {
        match self {
            HandshakeRefusal::Tls => "tls",
            HandshakeRefusal::Invalid => "invalid",
            HandshakeRefusal::Unauthorized => "unauthorized",
        }
    }
}

/// Why a client did not get, or lost, its place under the connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// Every place was taken by a joined client: closed at accept.
    Total,
    /// A CONNECT past its address's joined limit.
    PerAddress,
    /// An unjoined connection closed to make room for a newer one.
    TakenBack,
}

impl ConnectionRefusal {
    /// Every kind, in the order the metrics list them.
    pub const ALL: [ConnectionRefusal; 3] = [
        ConnectionRefusal::Total,
        ConnectionRefusal::PerAddress,
        ConnectionRefusal::TakenBack,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ConnectionRefusal::Total => "total",
            ConnectionRefusal::PerAddress => "per_address",
            ConnectionRefusal::TakenBack => "taken_back",
        }
    }
}

/// Upper bounds of the commit batch size buckets, in messages.
const BATCH_BUCKETS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384];
/// Upper bounds of the commit latency buckets, in microseconds (0.5 ms to 2.5 s:
/// an fsync on an SSD to a struggling disk).
const LATENCY_BUCKETS: [u64; 12] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000,
];

/// Every counter and gauge chatd exports.
pub struct Metrics {
    connections: AtomicU64,
    users: AtomicU64,
    accepted: AtomicU64,
    refused: [AtomicU64; RefusalReason::ALL.len()],
    handshakes_refused: [AtomicU64; HandshakeRefusal::ALL.len()],
    connections_refused: [AtomicU64; ConnectionRefusal::ALL.len()],
    outbound_drops: AtomicU64,
    tls_reloads: [AtomicU64; 2],
    recent: AtomicU64,
    batch_size: Histogram<{ BATCH_BUCKETS.len() }>,
    commit_latency: Histogram<{ LATENCY_BUCKETS.len() }>,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            connections: AtomicU64::new(0),
            users: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: [const { AtomicU64::new(0) }; RefusalReason::ALL.len()],
            handshakes_refused: [const { AtomicU64::new(0) }; HandshakeRefusal::ALL.len()],
            connections_refused: [const { AtomicU64::new(0) }; ConnectionRefusal::ALL.len()],
            outbound_drops: AtomicU64::new(0),
            tls_reloads: [const { AtomicU64::new(0) }; 2],
            recent: AtomicU64::new(0),
            batch_size: Histogram::new(&BATCH_BUCKETS),
            commit_latency: Histogram::new(&LATENCY_BUCKETS),
        }
    }

    /// Records the hub's presence after a join or leave: chat connections
    /// open and distinct users online.
    pub fn set_presence(&self, connections: usize, users: usize) {
        self.connections.store(connections as u64, Relaxed);
        self.users.store(users as u64, Relaxed);
    }

    /// Counts messages that were committed and acknowledged.
    pub fn messages_accepted(&self, count: usize) {
        self.accepted.fetch_add(count as u64, Relaxed);
    }

    /// Counts one refused `chat message`.
    pub fn message_refused(&self, reason: RefusalReason) {
        let slot = RefusalReason::ALL.iter().position(|r| *r == reason);
        if let Some(counter) = slot.and_then(|slot| self.refused.get(slot)) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Counts one connection refused before it could chat.
    pub fn handshake_refused(&self, reason: HandshakeRefusal) {
        let slot = HandshakeRefusal::ALL.iter().position(|r| *r == reason);
        if let Some(counter) = slot.and_then(|slot| self.handshakes_refused.get(slot)) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Counts one connection refused or taken back under the limits.
    pub fn connection_refused(&self, reason: ConnectionRefusal) {
        let slot = ConnectionRefusal::ALL.iter().position(|r| *r == reason);
        if let Some(counter) = slot.and_then(|slot| self.connections_refused.get(slot)) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Counts one client disconnected because its outbound queue was full.
    pub fn outbound_drop(&self) {
        self.outbound_drops.fetch_add(1, Relaxed);
    }

    /// Counts one TLS certificate reload, successful or not.
    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads[usize::from(ok)].fetch_add(1, Relaxed);
    }

    /// Records one committed write transaction of the store writer.
    pub fn commit(&self, messages: usize, latency: Duration) {
        self.batch_size.observe(messages as u64);
        self.commit_latency
            .observe(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records how many messages wait in the store's `recent` table for a fold.
    pub fn set_recent(&self, messages: u64) {
        self.recent.store(messages, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let get = |counter: &AtomicU64| counter.load(Relaxed);
        gauge(
            &mut out,
            "chatd_connections_open",
            "Socket.IO connections joined to the chat.",
            get(&self.connections),
        );
        gauge(
            &mut out,
            "chatd_users_online",
            "Distinct users with at least one connection.",
            get(&self.users),
        );
        counter(
            &mut out,
            "chatd_messages_accepted_total",
            "Messages committed to the store and acknowledged.",
            get(&self.accepted),
        );
        counters_by(
            &mut out,
            "chatd_messages_refused_total",
            "Chat messages refused, by the reason the client was given.",
            "reason",
            RefusalReason::ALL
                .iter()
                .map(|r| r.as_str())
                .zip(&self.refused),
        );
        counters_by(
            &mut out,
            "chatd_handshakes_refused_total",
            "Connections refused before joining: failed TLS, malformed or unauthorized handshakes.",
            "reason",
            HandshakeRefusal::ALL
                .iter()
                .map(|r| r.as_str())
                .zip(&self.handshakes_refused),
        );
        counters_by(
            &mut out,
            "chatd_connections_refused_total",
            "Connections refused or closed under the limits: at the total limit, joins past an address's limit, unjoined connections taken back for newer ones.",
            "reason",
            ConnectionRefusal::ALL
                .iter()
                .map(|r| r.as_str())
                .zip(&self.connections_refused),
        );
        counter(
            &mut out,
            "chatd_outbound_queue_drops_total",
            "Clients disconnected because they stopped reading and their outbound queue filled.",
            get(&self.outbound_drops),
        );
        counters_by(
            &mut out,
            "chatd_tls_reloads_total",
            "TLS certificate reloads on SIGHUP, by result.",
            "result",
            ["error", "ok"].into_iter().zip(&self.tls_reloads),
        );
        gauge(
            &mut out,
            "chatd_store_recent_messages",
            "Messages in the store's recent table, waiting to be folded into per-room history.",
            get(&self.recent),
        );
        self.batch_size.render(
            &mut out,
            "chatd_commit_batch_messages",
            "Messages per store write transaction (group commit).",
            1,
        );
        self.commit_latency.render(
            &mut out,
            "chatd_commit_duration_seconds",
            "Time to write and fsync one batch of messages.",
            1_000_000,
        );
        out
    }
}

/// A Prometheus histogram over integer observations, with `N` fixed buckets.
struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    /// Observations per bucket (not cumulative); the last is `+Inf` only.
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    sum: AtomicU64,
    count: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: &'static [u64; N]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        let bucket = self.bounds.iter().position(|bound| value <= *bound);
        match bucket {
            Some(bucket) => self.buckets[bucket].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum.fetch_add(value, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Writes the histogram; observations are in units of `1/scale` of the
    /// exported unit (e.g. microseconds for seconds, `scale` 1 000 000).
    fn render(&self, out: &mut String, name: &str, help: &str, scale: u64) {
        header(out, name, "histogram", help);
        let to_unit = |value: u64| value as f64 / scale as f64;
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let labels = format!("{{le=\"{}\"}}", to_unit(*bound));
            sample(out, &format!("{name}_bucket"), &labels, cumulative);
        }
        // Scrapes race with observations; reading count last and taking the
        // larger keeps `+Inf` >= every bucket, as Prometheus requires.
        cumulative += self.overflow.load(Relaxed);
        let sum = self.sum.load(Relaxed);
        let count = self.count.load(Relaxed).max(cumulative);
        sample(out, &format!("{name}_bucket"), "{le=\"+Inf\"}", count);
        let _ = writeln!(out, "{name}_sum {}", to_unit(sum));
        sample(out, &format!("{name}_count"), "", count);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    let _ = writeln!(out, "{name}{labels} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    sample(out, name, "", value);
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    sample(out, name, "", value);
}

/// One counter family with a sample per value of `label`.
fn counters_by<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: impl Iterator<Item = (&'a str, &'a AtomicU64)>,
) {
    header(out, name, "counter", help);
    for (value, count) in samples {
        sample(
            out,
            name,
            &format!("{{{label}=\"{value}\"}}"),
            count.load(Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_scaled() {
        let histogram = Histogram::new(&[1_000, 10_000]);
        for micros in [500, 1_000, 5_000, 20_000] {
            histogram.observe(micros);
        }
        let mut out = String::new();
        histogram.render(&mut out, "t_seconds", "test", 1_000_000);
        let expected = "\
# HELP t_seconds test
# TYPE t_seconds histogram
t_seconds_bucket{le=\"0.001\"} 2
t_seconds_bucket{le=\"0.01\"} 3
t_seconds_bucket{le=\"+Inf\"} 4
t_seconds_sum 0.0265
t_seconds_count 4
";
        assert_eq!(out, expected);
    }

    #[test]
    fn every_reason_has_a_sample() {
        let metrics = Metrics::new();
        metrics.message_refused(RefusalReason::RateLimited);
        metrics.message_refused(RefusalReason::RateLimited);
        metrics.handshake_refused(HandshakeRefusal::Unauthorized);
        metrics.tls_reload(false);
        metrics.connection_refused(ConnectionRefusal::TakenBack);
        metrics.commit(3, Duration::from_millis(2));
        let text = metrics.render();
        assert!(text.contains("chatd_messages_refused_total{reason=\"rate_limited\"} 2\n"));
        assert!(text.contains("chatd_messages_refused_total{reason=\"empty\"} 0\n"));
        assert!(text.contains("chatd_handshakes_refused_total{reason=\"unauthorized\"} 1\n"));
        assert!(text.contains("chatd_tls_reloads_total{result=\"error\"} 1\n"));
        assert!(text.contains("chatd_connections_refused_total{reason=\"taken_back\"} 1\n"));
        assert!(text.contains("chatd_commit_batch_messages_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("chatd_commit_duration_seconds_bucket{le=\"0.0025\"} 1\n"));
        for reason in RefusalReason::ALL {
            assert!(text.contains(&format!("{{reason=\"{}\"}}", reason.as_str())));
        }
    }
}
