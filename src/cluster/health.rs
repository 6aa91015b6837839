//! Whether the engine can take a publish right now, as a state with a
//! reason: what `/healthz` answers and what makes a node refuse messages
//! with `unavailable` instead of sending them into a void.
//!
//! A probe asks for the log stream's info every [`PROBE_INTERVAL`]: the
//! answer comes from the stream's leader, so an answer naming a leader
//! means a quorum of servers holds the stream and a publish would be
//! acknowledged. No connection, no answer in time, or no leader is `Down`
//! with the reason.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ClusterEngine;
use super::stream::LOG_STREAM;
use crate::health::Health;

/// How often the probe asks.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The engine's state as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineHealth {
    /// Reachable, and the log stream has a leader.
    Up,
    /// Not usable now, and why (for `/healthz` and the log).
    Down(String),
}

impl EngineHealth {
    /// True when publishes can be acknowledged.
    pub fn is_up(&self) -> bool {
        *self == EngineHealth::Up
    }
}

/// Starts probing the engine; the receiver sees every change of state
/// (starting `Down` until the first probe succeeds). The probe ends when
/// every receiver is gone.
pub fn watch_health(engine: ClusterEngine) -> (watch::Receiver<EngineHealth>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(EngineHealth::Down("not yet connected to the engine".into()));
    let probe = tokio::spawn(async move {
        let mut interval = tokio::time::interval(PROBE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if tx.is_closed() {
                return;
            }
            let health = probe(&engine).await;
            tx.send_if_modified(|current| {
                if *current == health {
                    return false;
                }
                match &health {
                    EngineHealth::Up => tracing::info!("engine: up"),
                    EngineHealth::Down(reason) => tracing::warn!("engine: down: {reason}"),
                }
                *current = health;
                true
            });
        }
    });
    (rx, probe)
}

/// The health part that reports the engine.
pub const ENGINE_PART: &str = "engine";

/// Keeps the node's health part [`ENGINE_PART`] in step with `engine`
/// until the probe ends.
pub async fn report_engine(mut engine: watch::Receiver<EngineHealth>, health: Arc<Health>) {
    loop {
        match &*engine.borrow_and_update() {
            EngineHealth::Up => health.recover(ENGINE_PART),
            EngineHealth::Down(reason) => health.fail(ENGINE_PART, reason.clone()),
        }
        if engine.changed().await.is_err() {
            return;
        }
    }
}

/// One look at the engine.
async fn probe(engine: &ClusterEngine) -> EngineHealth {
    if engine.client.connection_state() != State::Connected {
        return EngineHealth::Down("engine unreachable: not connected to any NATS server".into());
    }
    let stream = match engine.jetstream.get_stream(LOG_STREAM).await {
        Ok(stream) => stream,
        Err(err) => return EngineHealth::Down(format!("engine: stream {LOG_STREAM}: {err}")),
    };
    match stream.cached_info().cluster.as_ref() {
        // A single server without clustering has no leader to name.
        None => EngineHealth::Up,
        Some(cluster) if cluster.leader.as_deref().is_some_and(|l| !l.is_empty()) => {
            EngineHealth::Up
        }
        Some(_) => EngineHealth::Down(format!(
            "engine without quorum: stream {LOG_STREAM} has no leader"
        )),
    }
}
