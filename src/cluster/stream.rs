//! The two things a chat service keeps in the engine, created (or brought
//! to the configuration below) by whichever node starts first: the stream
//! that is the replicated log of changes, and the KV bucket of presence.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::{ClusterEngine, ClusterError};

/// The stream holding the log of changes.
pub const LOG_STREAM: &str = "CHATD_LOG";

/// The subject every entry of the log is published on.
pub const LOG_SUBJECT: &str = "chatd.log";

/// The KV bucket of presence: node leases and connections.
pub const PRESENCE_BUCKET: &str = "chatd_presence";

/// How long the stream remembers a `Nats-Msg-Id` to answer a retried
/// publish with the original's sequence. A retry later than this appends
/// a second entry, which the store's `eid` window makes a no-op.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The largest entry the stream takes: far above any message chatd
/// accepts (`--max-message-bytes` is a few KiB), far below what could hurt.
const MAX_ENTRY_BYTES: i32 = 1024 * 1024;

/// How long a limit marker (the delete marker the server writes when a
/// key's TTL runs out) stays in the presence bucket: long enough for every
/// watcher to see it.
const MARKER_TTL: Duration = Duration::from_secs(60);

/// How the engine keeps the log and presence.
#[derive(Clone, Copy, Debug)]
pub struct Replication {
    /// Copies of every entry (3 for a cluster of three servers: a quorum of
    /// two acknowledges a publish, one server may be lost).
    pub replicas: usize,
}

impl Default for Replication {
    fn default() -> Self {
        Replication { replicas: 3 }
    }
}

/// The log stream's configuration.
pub fn log_stream_config(replication: Replication) -> stream::Config {
    stream::Config {
        name: LOG_STREAM.to_owned(),
        description: Some("chatd: the ordered log of changes every node applies".to_owned()),
        subjects: vec![LOG_SUBJECT.to_owned()],
        // The log is the history: nothing ages out of it by itself
        // (retention is a Purge change in the log).
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replication.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_ENTRY_BYTES,
        ..Default::default()
    }
}

/// Creates the log stream, or updates it to [`log_stream_config`]; returns
/// its handle.
pub async fn ensure_log_stream(
    engine: &ClusterEngine,
    replication: Replication,
) -> Result<jetstream::stream::Stream, ClusterError> {
    let config = log_stream_config(replication);
    patiently(|| engine.jetstream.create_or_update_stream(config.clone()))
        .await
        .map_err(|source| ClusterError::engine(format!("create stream {LOG_STREAM}"), source))?;
    engine
        .jetstream
        .get_stream(LOG_STREAM)
        .await
        .map_err(|source| ClusterError::engine(format!("open stream {LOG_STREAM}"), source))
}

/// Creates the presence bucket (one value per key, per-key TTLs with limit
/// markers), or opens it as it is.
pub async fn ensure_presence_bucket(
    engine: &ClusterEngine,
    replication: Replication,
) -> Result<kv::Store, ClusterError> {
    let config = kv::Config {
        bucket: PRESENCE_BUCKET.to_owned(),
        description: "chatd: node leases and connections".to_owned(),
        history: 1,
        num_replicas: replication.replicas,
        storage: stream::StorageType::File,
        limit_markers: Some(MARKER_TTL),
        ..Default::default()
    };
    patiently(|| engine.jetstream.create_or_update_key_value(config.clone()))
        .await
        .map_err(|source| {
            ClusterError::engine(format!("create KV bucket {PRESENCE_BUCKET}"), source)
        })
}

/// Attempts at creating the stream or the bucket before giving up.
const CREATE_ATTEMPTS: u32 = 5;

/// Runs an idempotent create-or-update until it succeeds, at most
/// [`CREATE_ATTEMPTS`] times: creating a replicated stream takes a round of
/// the servers' consensus, which a busy cluster may not finish within one
/// request's timeout.
async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    mut create: impl FnMut() -> F,
) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match create().await {
            Err(err) if attempt < CREATE_ATTEMPTS => {
                tracing::debug!("creating in the engine (attempt {attempt}): {err}; again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}
