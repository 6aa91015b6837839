//! Refused and taken-back connections, counted for the metrics and logged at
//! most one line per interval: a flood must not flood the journal too.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::{ConnectionRefusal, METRICS};

/// How often the log sums up the refusals since its last line.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The refusals of this process.
pub static REFUSALS: Refusals = Refusals::new();

/// Refusals since the last log line, by kind.
pub struct Refusals {
    since_logged: [AtomicU64; ConnectionRefusal::ALL.len()],
}

impl Refusals {
    const fn new() -> Self {
        Refusals {
            since_logged: [const { AtomicU64::new(0) }; ConnectionRefusal::ALL.len()],
        }
    }

    /// Counts one refusal.
    pub fn count(&self, refusal: ConnectionRefusal) {
        METRICS.connection_refused(refusal);
        if let Some(slot) = self.slot(refusal) {
            slot.fetch_add(1, Relaxed);
        }
    }

    fn slot(&self, refusal: ConnectionRefusal) -> Option<&AtomicU64> {
        let at = ConnectionRefusal::ALL.iter().position(|r| *r == refusal)?;
        self.since_logged.get(at)
    }

    /// The log line summing up the refusals since the last one, if any.
    fn summary(&self) -> Option<String> {
        let counts: Vec<(ConnectionRefusal, u64)> = ConnectionRefusal::ALL
            .iter()
            .filter_map(|r| Some((*r, self.slot(*r)?.swap(0, Relaxed))))
            .filter(|(_, count)| *count > 0)
            .collect();
        if counts.is_empty() {
            return None;
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(refusal, count)| format!("{count} {}", describe(*refusal)))
            .collect();
        Some(format!(
            "in the last {}s: {}",
            LOG_INTERVAL.as_secs(),
            parts.join(", ")
        ))
    }

    /// Logs a summary every [`LOG_INTERVAL`] while there is something to
    /// say, until `stop`.
    pub async fn log_until(&self, stop: CancellationToken) {
        let mut interval = tokio::time::interval(LOG_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Some(summary) = self.summary() {
                tracing::warn!("connections refused {summary}");
            }
        }
    }
}

/// What the operator reads for each kind, with the flag that moves it.
fn describe(refusal: ConnectionRefusal) -> &'static str {
    match refusal {
        ConnectionRefusal::Total => "at the total limit (--max-connections)",
        ConnectionRefusal::PerAddress => "joins past an address's limit (--max-connections-per-ip)",
        ConnectionRefusal::TakenBack => {
            "unjoined connections closed to make room for newer ones (--max-unjoined-per-ip)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_summary_line_per_interval_with_the_counts() {
        let refusals = Refusals::new();
        assert_eq!(refusals.summary(), None);
        for _ in 0..40 {
            refusals.count(ConnectionRefusal::TakenBack);
        }
        refusals.count(ConnectionRefusal::Total);
        let line = refusals.summary().unwrap();
        assert!(line.contains("1 at the total limit"), "{line}");
        assert!(line.contains("40 unjoined connections closed"), "{line}");
        assert!(!line.contains("joins past"), "{line}");
        assert_eq!(refusals.summary(), None, "counts restart after a line");
    }
}
