//! Reading the log in order from a given position: first what is already
//! in the stream (catch-up), then each entry as it is committed (live).
//!
//! Built on JetStream's ordered consumer (ephemeral, no acks, recreated by
//! the client from the last position it delivered whenever a delivery goes
//! missing or its server goes away). On top of it the reader keeps its own
//! position: an entry at or below it is never handed out twice, and a
//! consumer that fails for good is recreated from it.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;

use super::entry::{EntryError, LogEntry, decode_entry};
use super::{ClusterEngine, ClusterError};

/// How long the reader waits for an entry before it asks whether the log
/// has any it was not given.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Pause before recreating a consumer that failed for good.
const RECREATE_PAUSE: Duration = Duration::from_millis(500);

/// One entry read from the log.
#[derive(Debug)]
pub struct LogRecord {
    /// Its stream sequence: its position in the log. Positions only grow,
    /// with gaps where entries were deleted from the stream.
    pub seq: u64,
    /// The entry, or why its bytes are not one this node can read.
    pub entry: Result<LogEntry, EntryError>,
    /// Entries after it already in the stream when it was delivered: 0
    /// means the reader has caught up with the log as it was then.
    pub pending: u64,
}

/// An in-order reader of the log.
pub struct LogReader {
    engine: ClusterEngine,
    stream: Stream,
    messages: Option<pull::Ordered>,
    next_seq: u64,
}

impl LogReader {
    /// A reader whose first entry is the one at `from_seq` (or the first
    /// after it, where entries were deleted). Connects lazily, on the first
    /// [`next`](Self::next).
    pub fn new(engine: ClusterEngine, stream: Stream, from_seq: u64) -> LogReader {
        LogReader {
            engine,
            stream,
            messages: None,
            next_seq: from_seq.max(1),
        }
    }

    /// The position of the next entry it will hand out (or of the first
    /// after it).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next entry of the log, waiting for one to be committed. Engine
    /// trouble is retried inside (the wait just gets longer); cancel-safe.
    pub async fn next(&mut self) -> LogRecord {
        loop {
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => match open(&self.stream, self.next_seq, &self.engine.node).await {
                    Ok(messages) => self.messages.insert(messages),
                    Err(err) => {
                        tracing::debug!("log reader: {err}; retrying");
                        tokio::time::sleep(RECREATE_PAUSE).await;
                        continue;
                    }
                },
            };
            let next = tokio::select! {
                next = messages.next() => Some(next),
                () = tokio::time::sleep(STALL_CHECK) => None,
            };
            let Some(next) = next else {
                if stalled(&self.stream, self.next_seq).await {
                    tracing::warn!(
                        "log reader: no entry for {STALL_CHECK:?} while the log has entries from {} on; reopening",
                        self.next_seq
                    );
                    self.messages = None;
                }
                continue;
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    tracing::warn!("log reader at seq {}: {err}; reopening", self.next_seq);
                    self.messages = None;
                    tokio::time::sleep(RECREATE_PAUSE).await;
                    continue;
                }
                None => {
                    self.messages = None;
                    continue;
                }
            };
            let (seq, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(err) => {
                    tracing::warn!(
                        "log reader: a delivery without its position ({err}); reopening"
                    );
                    self.messages = None;
                    continue;
                }
            };
            if seq < self.next_seq {
                // Redelivered by a recreated consumer: already handed out.
                continue;
            }
            self.next_seq = seq + 1;
            return LogRecord {
                seq,
                entry: decode_entry(&message.payload),
                pending,
            };
        }
    }
}

/// Whether `stream` holds entries from `next_seq` on that a reader was not
/// given: its consumer is lost (its server died, say), which the client
/// would notice only after two missed idle heartbeats, 30 s.
async fn stalled(stream: &Stream, next_seq: u64) -> bool {
    log_tail(stream).await.is_ok_and(|tail| tail >= next_seq)
}

/// An ordered consumer of `stream` from `next_seq` on. A free function, so
/// the reader (whose consumer is not `Sync`) is not borrowed across its
/// awaits and can be moved into a task.
async fn open(stream: &Stream, next_seq: u64, node: &str) -> Result<pull::Ordered, ClusterError> {
    let config = pull::OrderedConfig {
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: next_seq,
        },
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|err| ClusterError::engine("create the log consumer", err))?
        .messages()
        .await
        .map_err(|err| ClusterError::engine("read the log", err))
        .inspect(|_| tracing::debug!("{node}: reading the log from seq {next_seq}"))
}

/// The position of the log's last entry now (0 for an empty log): a node
/// that has applied up to it has caught up.
pub async fn log_tail(stream: &Stream) -> Result<u64, ClusterError> {
    stream
        .get_info()
        .await
        .map(|info| info.state.last_sequence)
        .map_err(|err| ClusterError::engine("read the log's last position", err))
}
