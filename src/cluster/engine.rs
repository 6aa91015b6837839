//! The connection to the engine: one NATS client per node, over which the
//! log, presence and the typing relay all travel.

use std::time::Duration;

use async_nats::jetstream;

use super::ClusterError;

/// How often the client pings its server: a dead server (a `kill -9`, a
/// cut cable) is noticed within two of these, then the client moves on to
/// another server of the cluster.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// The bound on one JetStream API request (stream info, KV get, ...) and on
/// one publish's wait for its ack; an in-doubt publish is retried, see
/// [`super::publish`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes of the log whose ack may be awaited at once.
const MAX_ACKS_PENDING: usize = 32 * 1024;

/// The longest pause between attempts to reach a server again.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A node's connection to the engine.
#[derive(Clone, Debug)]
pub struct ClusterEngine {
    /// The core NATS client (presence, the typing relay).
    pub client: async_nats::Client,
    /// JetStream over that client (the log, the KV bucket).
    pub jetstream: jetstream::Context,
    /// This node's name.
    pub node: String,
}

impl ClusterEngine {
    /// Connects to the cluster at `urls` (`nats://host:port`, any number) as
    /// node `node`. Returns at once: when no server can be reached yet, the
    /// client keeps trying in the background (and [`super::health`] says
    /// so), as it does whenever the connection drops later.
    pub async fn connect(urls: &[String], node: &str) -> Result<ClusterEngine, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("chatd {node}"))
            .ping_interval(PING_INTERVAL)
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                MAX_RECONNECT_DELAY.min(Duration::from_millis(50) * attempts as u32)
            })
            .connect(urls)
            .await
            .map_err(|source| ClusterError::Connect {
                urls: urls.join(","),
                source,
            })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            // Publishes waiting for their ack wait for room instead of
            // failing: under load the sender is held back, not refused.
            .max_ack_inflight(MAX_ACKS_PENDING)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(ClusterEngine {
            client,
            jetstream,
            node: node.to_owned(),
        })
    }
}
