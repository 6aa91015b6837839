//! Changes submitted and not yet settled, so a shutdown can let every one
//! of them commit and be answered before it disconnects anyone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Counts changes in flight between their submission and their answer.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    closing: AtomicBool,
    settled: Notify,
}

impl InFlight {
    /// Counts one more change in flight; false (counting nothing) once
    /// closing, when nothing new may be submitted.
    pub fn enter(&self) -> bool {
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            self.settle(1);
            return false;
        }
        true
    }

    /// `count` changes were answered.
    pub fn settle(&self, count: usize) {
        if count > 0 && self.count.fetch_sub(count, Ordering::SeqCst) == count {
            self.settled.notify_waiters();
        }
    }

    /// Refuses new changes from now on and waits until every one in flight
    /// is answered.
    pub async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        loop {
            let settled = self.settled.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            settled.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn close_waits_for_what_is_in_flight_and_refuses_more() {
        let in_flight = Arc::new(InFlight::default());
        assert!(in_flight.enter());
        assert!(in_flight.enter());
        let closing = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.close().await }
        });
        tokio::task::yield_now().await;
        in_flight.settle(1);
        assert!(!closing.is_finished());
        in_flight.settle(1);
        closing.await.unwrap();
        assert!(!in_flight.enter(), "nothing new once closed");
        // Closing again with nothing in flight returns at once.
        in_flight.close().await;
    }
}
