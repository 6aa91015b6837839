//! `chatd bench`: load scenarios against a running server (or, for `store`,
//! against the storage layer alone), measured from the client side and, given
//! the server's pid, from `/proc`.
//!
//! Every scenario drives the server with the project's own Socket.IO client
//! ([`crate::client`]), so it measures any conforming Socket.IO server the
//! same way: `scripts/bench.sh` runs each scenario against chatd and against
//! a stock Node.js Socket.IO server in the same run.
//!
//! This module holds what the scenarios share: latency samples and their
//! percentiles, the report (a table, or one JSON object), and the progress
//! line.

pub mod connect;
pub mod idle;
pub mod pairs;
pub mod proc;
pub mod store;
pub mod target;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::task::AbortOnDropHandle;

use crate::client::ClientError;

/// Latency samples in whole microseconds.
///
/// A plain vector, sorted once at the end: exact percentiles, 4 bytes a
/// sample (a 100 s run at 40,000 messages/s keeps 16 MB), and recording is a
/// push. Each task keeps its own and they are merged at the end, so nothing
/// is shared while measuring.
#[derive(Debug, Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    /// Records one latency (saturating at about 71 minutes).
    pub fn record(&mut self, latency: Duration) {
        self.0
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// Percentiles and maximum, in milliseconds; `None` without samples.
    pub fn summary(mut self) -> Option<Summary> {
        self.0.sort_unstable();
        let samples = &self.0;
        let max = *samples.last()?;
        // Nearest rank: the smallest sample with at least q of them at or below it.
        let rank = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).max(1) - 1];
        let ms = |micros: u32| f64::from(micros) / 1000.0;
        Some(Summary {
            p50: ms(rank(0.50)),
            p90: ms(rank(0.90)),
            p99: ms(rank(0.99)),
            max: ms(max),
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// A scenario's figures, in the order they were added: printed as a table,
/// or as one JSON object (`{"scenario": ..., key: value, ...}`).
#[derive(Debug)]
pub struct Report {
    scenario: &'static str,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct Row {
    key: String,
    value: Value,
    unit: &'static str,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            rows: Vec::new(),
        }
    }

    /// Adds a figure. `key` is its JSON name; `unit` is shown in the table.
    /// `None` (a figure that needs `--server-pid`, say) becomes `null`.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<Value>, unit: &'static str) {
        self.rows.push(Row {
            key: key.into(),
            value: value.into(),
            unit,
        });
    }

    /// Adds `<prefix>_p50_ms`, `_p90_ms`, `_p99_ms` and `_max_ms` (`null`
    /// without samples).
    pub fn add_latency(&mut self, prefix: &str, summary: Option<Summary>) {
        let part = |f: fn(&Summary) -> f64| summary.as_ref().map(f);
        self.add(format!("{prefix}_p50_ms"), part(|s| s.p50), "ms");
        self.add(format!("{prefix}_p90_ms"), part(|s| s.p90), "ms");
        self.add(format!("{prefix}_p99_ms"), part(|s| s.p99), "ms");
        self.add(format!("{prefix}_max_ms"), part(|s| s.max), "ms");
    }

    /// Adds a tally as an object of counts (`{}` when nothing was counted).
    pub fn add_tally(&mut self, key: &str, tally: Tally) {
        let counts = tally.into_iter().map(|(k, n)| (k, Value::from(n)));
        self.add(key, Value::Object(counts.collect()), "");
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("scenario".into(), self.scenario.into());
        for row in &self.rows {
            object.insert(row.key.clone(), row.value.clone());
        }
        Value::Object(object)
    }

    /// The report as an aligned table, one figure a line.
    pub fn to_table(&self) -> String {
        let width = self.rows.iter().map(|row| row.key.len()).max().unwrap_or(0);
        let mut table = format!("chatd bench {}\n", self.scenario);
        for row in &self.rows {
            let value = table_value(&row.value);
            let line = format!("  {:width$}  {value} {}", row.key, row.unit);
            table.push_str(line.trim_end());
            table.push('\n');
        }
        table
    }

    /// Prints the report on stdout, as JSON or as a table.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
        } else {
            print!("{}", self.to_table());
        }
    }
}

/// A value as the table shows it: floats to three decimals, text without
/// quotes, maps as `key=value` lists.
fn table_value(value: &Value) -> String {
    match value {
        Value::Null => "n/a".into(),
        Value::String(text) => text.clone(),
        Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(f64::NAN)),
        Value::Object(map) if map.is_empty() => "none".into(),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| format!("{key}={}", table_value(value)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// A short name for what went wrong with a connection, to count errors by.
pub fn error_kind(error: &ClientError) -> &'static str {
    match error {
        ClientError::AckTimeout(_) => "ack_timeout",
        ClientError::Closed => "closed",
        ClientError::Send(_) => "send_failed",
        ClientError::ConnectTimeout(_) => "connect_timeout",
        ClientError::Refused(_) => "refused",
        ClientError::Connect { .. } => "tcp_connect",
        ClientError::Tls { .. } => "tls",
        ClientError::Upgrade(_) => "upgrade",
        ClientError::Protocol(_) => "protocol",
        ClientError::InvalidUrl { .. } => "invalid_url",
        ClientError::Arguments(_) => "unexpected_arguments",
    }
}

/// Counts by name: refusal reasons, error kinds.
pub type Tally = BTreeMap<String, u64>;

/// Adds one to `key`'s count.
pub fn count(tally: &mut Tally, key: &str) {
    *tally.entry(key.to_owned()).or_default() += 1;
}

/// `part / whole`, or `None` when `whole` is zero (a rate over no time, a
/// cost per nothing).
pub fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// A progress line on stderr, once a second while it lives: rewritten in
/// place with `\r` on a terminal, one line a second otherwise (a log file
/// keeps every reading).
pub struct Progress {
    task: AbortOnDropHandle<()>,
    terminal: bool,
}

impl Progress {
    /// Starts printing `line()` every second (the first after one second,
    /// so short runs print nothing).
    pub fn start(line: impl Fn() -> String + Send + 'static) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if terminal {
                    eprint!("\r\x1b[K{}", line());
                } else {
                    eprintln!("{}", line());
                }
            }
        });
        Progress {
            task: AbortOnDropHandle::new(task),
            terminal,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if self.terminal {
            // Clear the line so what follows starts on a clean one.
            eprint!("\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut latencies = Latencies::default();
        assert!(Latencies::default().summary().is_none());
        for micros in (1..=100).rev() {
            latencies.record(Duration::from_micros(micros * 1000));
        }
        let summary = latencies.summary().unwrap();
        assert_eq!(
            summary,
            Summary {
                p50: 50.0,
                p90: 90.0,
                p99: 99.0,
                max: 100.0
            }
        );
        let mut one = Latencies::default();
        one.record(Duration::from_micros(1500));
        let mut merged = Latencies::default();
        merged.merge(one);
        assert_eq!(merged.summary().unwrap().p50, 1.5);
    }

    #[test]
    fn report_as_json_and_table() {
        let mut report = Report::new("demo");
        report.add("delivered", 12u64, "msgs");
        report.add("mode", "open", "");
        report.add("cpu_s", None::<f64>, "s");
        report.add_tally("refusals", Tally::from([("empty".to_owned(), 2)]));
        report.add_latency("ack", None);
        let json = report.to_json();
        assert_eq!(json["scenario"], "demo");
        assert_eq!(json["delivered"], 12);
        assert!(json["cpu_s"].is_null() && json["ack_p99_ms"].is_null());
        let table = report.to_table();
        assert!(table.contains("delivered   12 msgs"), "{table}");
        assert!(table.contains("refusals    empty=2\n"), "{table}");
        assert!(table.contains("mode        open\n"), "{table}");
        assert!(table.contains("cpu_s       n/a s"), "{table}");
    }
}
