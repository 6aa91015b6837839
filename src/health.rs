//! Whether this node can do its job now, and if not, why: what `/healthz`
//! answers, whether systemd's watchdog keeps being fed, and when `READY=1`
//! may be sent.
//!
//! Each part that can fail (the store's disk, a cluster's engine, catching
//! up with the log) reports under its own name; the node is healthy when no
//! part is failing. Parts log their own state changes: this only keeps them.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The health of this node, shared by the parts that report and the
/// endpoints that tell.
#[derive(Debug, Default)]
pub struct Health {
    failing: Mutex<BTreeMap<&'static str, Failing>>,
    recovered: Notify,
}

#[derive(Debug)]
struct Failing {
    reason: String,
    since: Instant,
}

impl Health {
    /// `part` cannot do its job, for `reason` (kept from the first report
    /// while it stays failing; the reason is updated).
    pub fn fail(&self, part: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        let mut failing = self.lock();
        match failing.get_mut(part) {
            Some(known) => known.reason = reason,
            None => {
                failing.insert(
                    part,
                    Failing {
                        reason,
                        since: Instant::now(),
                    },
                );
            }
        }
    }

    /// `part` works again.
    pub fn recover(&self, part: &'static str) {
        let mut failing = self.lock();
        if failing.remove(part).is_some() && failing.is_empty() {
            self.recovered.notify_waiters();
        }
    }

    /// `Ok` when nothing fails, else every failing part and why, as one line.
    pub fn status(&self) -> Result<(), String> {
        let failing = self.lock();
        if failing.is_empty() {
            return Ok(());
        }
        let reasons: Vec<String> = failing
            .iter()
            .map(|(part, failing)| format!("{part}: {}", failing.reason))
            .collect();
        Err(reasons.join("; "))
    }

    /// How long the node has been failing without a break (the oldest
    /// failure still going on), or `None` when healthy.
    pub fn failing_for(&self) -> Option<Duration> {
        self.lock().values().map(|f| f.since.elapsed()).max()
    }

    /// Waits until nothing fails.
    pub async fn wait_healthy(&self) {
        loop {
            let recovered = self.recovered.notified();
            if self.lock().is_empty() {
                return;
            }
            recovered.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Failing>> {
        self.failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn healthy_only_when_no_part_fails() {
        let health = Arc::new(Health::default());
        assert_eq!(health.status(), Ok(()));
        assert_eq!(health.failing_for(), None);
        health.fail("store", "disk full");
        health.fail("engine", "no quorum");
        health.fail("store", "disk full (still)");
        assert_eq!(
            health.status(),
            Err("engine: no quorum; store: disk full (still)".into())
        );
        let waiting = tokio::spawn({
            let health = health.clone();
            async move { health.wait_healthy().await }
        });
        health.recover("engine");
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        health.recover("store");
        waiting.await.unwrap();
        assert_eq!(health.status(), Ok(()));
    }
}
