//! `chatd run --retention DURATION`: history older than that is purged in
//! the background.
//!
//! A sweep runs when the server starts and then every [`SWEEP_INTERVAL`]
//! (once a minute), so no message outlives the retention period by much more
//! than a minute. A sweep is one purge change through the chat's log, in
//! order with everything else (in a cluster, on every node): it raises the
//! floor of the rooms it touches at once, and the store deletes the bytes
//! in small steps between commits, so the chat never waits for a whole
//! sweep.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::chat::service::{Chat, Ticket};
use crate::log::Log;
use crate::store::{Change, Outcome, PurgeSelection, now_us};

/// Time between retention sweeps.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Purges messages older than `retention` now and every
/// [`SWEEP_INTERVAL`] until `stop` is cancelled. A failed sweep is logged
/// and tried again at the next interval.
pub async fn run<L: Log<Ticket>>(chat: Arc<Chat<L>>, retention: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let before = cutoff(now_us(), retention);
        match chat
            .apply(Change::Purge(PurgeSelection::All { before }))
            .await
        {
            Ok(Outcome::Purged { count: 0 }) => {}
            Ok(Outcome::Purged { count }) => {
                tracing::info!(purged = count, before, "retention: purged old messages");
            }
            Ok(other) => tracing::error!(?other, "retention sweep: unexpected outcome"),
            Err(error) => tracing::error!(%error, "retention sweep failed"),
        }
    }
}

/// The ts before which messages are older than `retention` at `now_us`.
pub fn cutoff(now_us: u64, retention: Duration) -> u64 {
    now_us.saturating_sub(u64::try_from(retention.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::rate::RateLimit;
    use crate::chat::service::ChatConfig;
    use crate::store::testutil::{put, tmp_store};

    #[test]
    fn cutoff_saturates() {
        assert_eq!(cutoff(10_000_000, Duration::from_secs(3)), 7_000_000);
        assert_eq!(cutoff(5, Duration::from_secs(3)), 0);
        assert_eq!(cutoff(5, Duration::MAX), 0);
    }

    #[tokio::test]
    async fn first_sweep_runs_at_once_and_keeps_recent_messages() {
        let (_dir, store) = tmp_store();
        let now = now_us();
        put(&store, "dm:A_B", now - 3_600_000_000, "old");
        put(&store, "dm:A_B", now, "new");
        let config = ChatConfig {
            auth: None,
            max_message_bytes: 4096,
            rate: RateLimit::per_second(0),
            new_rooms_per_minute: 0,
            console: false,
            unacked_per_connection: 4,
        };
        let chat = Chat::start(store.clone(), config).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(chat, Duration::from_secs(60), stop.clone()));
        // The first tick is immediate; wait for its purge to land.
        for _ in 0..500 {
            let left = store
                .export_room::<crate::store::StoreError>("dm:A_B", None, None, |_| Ok(()))
                .unwrap();
            if left == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
        let mut texts = Vec::new();
        store
            .export_room::<crate::store::StoreError>("dm:A_B", None, None, |m| {
                texts.push(m.text.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!(texts, ["new"]);
    }
}
