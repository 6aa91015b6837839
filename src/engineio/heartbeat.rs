//! The Engine.IO v4 heartbeat, the same for every transport.
//!
//! The server pings every `ping_interval` from the session's start and
//! expects each pong within `ping_timeout` of its ping. The ping goes
//! through the session's outbox, so whichever transport currently drains it
//! (a polling GET or a websocket writer) delivers it.
//!
//! The schedule is fixed from the start, and deadlines count from when a
//! ping is due, not from when a timer got to it or when the last pong
//! came: on a busy machine neither late timers nor slow round trips stretch
//! it. A silent client's session ends `ping_interval + ping_timeout` after
//! it opened, and the third ping comes three intervals in, as the protocol
//! suites expect within their one-second connect timeout.

use std::future::Future;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::time::Instant;

use super::{EngineConfig, Outbox};

/// How a heartbeat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The outbox refused a ping: the session is closing.
    Closed,
    /// A pong did not come in time.
    TimedOut,
}

/// One session's heartbeat state, shared by the pinger and the transports.
#[derive(Debug)]
pub struct Heartbeat {
    /// When the pong for the current (or next) ping is due; `None` from a
    /// pong until the pinger sends the next ping.
    deadline: Mutex<Option<Instant>>,
}

impl Heartbeat {
    /// A heartbeat whose first ping is due one interval from now.
    pub fn new(config: &EngineConfig) -> Self {
        Heartbeat {
            deadline: Mutex::new(Some(Instant::now() + pong_within(config))),
        }
    }

    /// Records the client's pong. A pong nobody asked for does not answer
    /// the next ping in advance: the ping sets the deadline again.
    pub fn pong(&self) {
        *self.lock() = None;
    }

    /// True once the owed pong is overdue. Requests check this themselves so
    /// an expired session is refused even if the timer has not fired yet.
    pub fn expired(&self) -> bool {
        self.lock()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Pings until a pong is late or the outbox refuses a ping. It does not
    /// watch the session's close itself: whoever runs it stops polling it
    /// then (one wait on the close signal per session, not one per part).
    ///
    /// The pong is looked for when it is due rather than waited for, so an
    /// idle session's pinger holds one timer and no waiter. (Were
    /// `ping_timeout` longer than `ping_interval`, the next ping would wait
    /// for the pong's deadline: the client still gets a ping at least every
    /// `ping_interval + ping_timeout`.)
    ///
    /// A plain function returning the future: an async fn would store its
    /// arguments twice in every idle session's task.
    pub fn run<'a>(
        &'a self,
        config: &'a EngineConfig,
        outbox: &'a Outbox,
    ) -> impl Future<Output = Ended> + Send + 'a {
        async move {
            let mut due = self
                .lock()
                .unwrap_or_else(|| Instant::now() + pong_within(config));
            loop {
                let ping_at = due.checked_sub(config.ping_timeout).unwrap_or(due);
                tokio::time::sleep_until(ping_at).await;
                *self.lock() = Some(due);
                if !outbox.send_text(Bytes::from_static(b"2")) {
                    return Ended::Closed;
                }
                tokio::time::sleep_until(due).await;
                if self.lock().is_some() {
                    return Ended::TimedOut;
                }
                due += config.ping_interval;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // The guarded value is a plain Option: a panic elsewhere cannot leave
        // it half-written, so a poisoned lock is still usable.
        self.deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// From the start of an interval, how long until its ping's pong is due.
fn pong_within(config: &EngineConfig) -> std::time::Duration {
    config.ping_interval + config.ping_timeout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engineio::Outbound;
    use std::time::Duration;

    fn config() -> EngineConfig {
        EngineConfig {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            ..EngineConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_and_times_out_without_a_pong() {
        let (outbox, mut receiver) = Outbox::new(8);
        let heartbeat = Heartbeat::new(&config());
        let started = Instant::now();
        let ended = heartbeat.run(&config(), &outbox).await;
        assert_eq!(ended, Ended::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert!(heartbeat.expired());
        assert!(matches!(receiver.try_recv(), Some(Outbound::Text(t)) if t == "2"));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_come_every_interval_from_the_start_while_pongs_come_back() {
        let (outbox, mut receiver) = Outbox::new(8);
        let heartbeat = std::sync::Arc::new(Heartbeat::new(&config()));
        let closing = receiver.closing.clone();
        let pinger = {
            let (heartbeat, outbox) = (heartbeat.clone(), outbox.clone());
            tokio::spawn(async move { heartbeat.run(&config(), &outbox).await })
        };
        let started = Instant::now();
        for ping in 1..=3 {
            assert!(matches!(receiver.recv().await, Outbound::Text(t) if t == "2"));
            assert_eq!(started.elapsed(), ping * Duration::from_millis(300));
            assert!(!heartbeat.expired());
            // A slow pong does not push the next ping back.
            tokio::time::advance(Duration::from_millis(150)).await;
            heartbeat.pong();
        }
        // A closed session's outbox refuses the next ping.
        closing.cancel();
        assert_eq!(pinger.await.expect("the pinger ends"), Ended::Closed);
        assert!(outbox.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_longer_than_the_interval_keeps_an_answering_session_alive() {
        let config = EngineConfig {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(500),
            ..EngineConfig::default()
        };
        let (outbox, mut receiver) = Outbox::new(8);
        let heartbeat = std::sync::Arc::new(Heartbeat::new(&config));
        let closing = receiver.closing.clone();
        let pinger = {
            let (heartbeat, outbox, config) = (heartbeat.clone(), outbox.clone(), config.clone());
            tokio::spawn(async move { heartbeat.run(&config, &outbox).await })
        };
        let started = Instant::now();
        // The first ping comes one interval in; each next one once the
        // previous pong's deadline has passed, one interval apart from then.
        for at in [300, 800, 1100, 1400] {
            assert!(matches!(receiver.recv().await, Outbound::Text(t) if t == "2"));
            assert_eq!(started.elapsed(), Duration::from_millis(at));
            tokio::time::advance(Duration::from_millis(10)).await;
            heartbeat.pong();
            assert!(!heartbeat.expired());
        }
        closing.cancel();
        assert_eq!(pinger.await.expect("the pinger ends"), Ended::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_pinger_does_not_extend_the_deadline() {
        let heartbeat = Heartbeat::new(&config());
        // The session's task has not run at all for 0.6 s (a busy machine):
        // a client that has said nothing is overdue all the same.
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!heartbeat.expired());
        tokio::time::advance(Duration::from_millis(101)).await;
        assert!(heartbeat.expired());
    }
}
