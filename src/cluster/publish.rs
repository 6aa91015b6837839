//! Publishing one entry to the log, so that it is in the log exactly once
//! or, when the engine says no before it could have kept it, not at all.
//!
//! Every attempt carries the entry's id as `Nats-Msg-Id`. An attempt that
//! gets no answer (a timeout, the connection lost) is in doubt: the entry
//! may be in the stream or not. It is retried with the same id until the
//! stream answers; within the stream's duplicate window the answer to a
//! retry of a kept entry is the original's sequence, and after it a second
//! copy is appended that the store's `eid` window turns into a no-op. Once
//! in doubt, an entry is never refused: a refusal tells the client nothing
//! was kept, and that is no longer known. The answer's `duplicate` flag is
//! our own retry's echo, never something to tell a client.

use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use thiserror::Error;

use super::ClusterEngine;
use super::entry::EntryId;
use super::stream::LOG_SUBJECT;

/// Pause before retrying an in-doubt publish that failed at once (a lost
/// connection): the client is reconnecting, and the leader may be elected.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why an entry was not published: the engine said so before it could
/// have kept it, so nothing of it is in the log.
#[derive(Debug, Error)]
#[error("engine refused the entry: {0}")]
pub struct PublishRefused(pub String);

/// An entry in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Its stream sequence (the original's, when a retry found it kept).
    pub seq: u64,
    /// How many attempts it took: more than one when one was in doubt.
    pub attempts: u32,
}

/// Publishes `payload` as entry `eid`: where it is in the log.
/// Retries an in-doubt attempt until the stream answers; fails only when
/// the very first attempt was refused outright. Dropping the future stops
/// retrying (the entry stays in doubt).
pub async fn publish_entry(
    engine: &ClusterEngine,
    eid: &EntryId,
    payload: Bytes,
) -> Result<Published, PublishRefused> {
    let first = send_entry(engine, eid, payload.clone()).await;
    settle_entry(engine, eid, payload, first).await
}

/// The first attempt at publishing entry `eid`, handed to the connection
/// but not yet answered: attempts sent one after another reach the stream
/// in that order, so a caller that sends in order (one connection's
/// messages) and settles later keeps its order. Finish it with
/// [`settle_entry`].
pub async fn send_entry(engine: &ClusterEngine, eid: &EntryId, payload: Bytes) -> FirstAttempt {
    let publish = PublishMessage::build()
        .message_id(entry_id_hex(eid))
        .payload(payload);
    FirstAttempt(engine.jetstream.send_publish(LOG_SUBJECT, publish).await)
}

/// A first attempt from [`send_entry`].
pub struct FirstAttempt(Result<PublishAckFuture, PublishError>);

/// Waits for the answer to `first`, retrying while it is in doubt; as
/// [`publish_entry`].
pub async fn settle_entry(
    engine: &ClusterEngine,
    eid: &EntryId,
    payload: Bytes,
    first: FirstAttempt,
) -> Result<Published, PublishRefused> {
    let msg_id = entry_id_hex(eid);
    let mut in_doubt = false;
    let mut attempts = 0u32;
    let mut sent = Some(first.0);
    loop {
        attempts += 1;
        let sent = match sent.take() {
            Some(sent) => sent,
            None => {
                let publish = PublishMessage::build()
                    .message_id(msg_id.as_str())
                    .payload(payload.clone());
                engine.jetstream.send_publish(LOG_SUBJECT, publish).await
            }
        };
        let outcome = match sent {
            // Not handed to the connection at all: this attempt was not sent.
            Err(err) => Err((false, err)),
            Ok(ack) => ack.await.map_err(|err| {
                // Only an answer from the stream is an answer; the rest
                // (no ack in time, the connection lost meanwhile) is doubt.
                let answered = matches!(
                    err.kind(),
                    PublishErrorKind::StreamNotFound
                        | PublishErrorKind::WrongLastMessageId
                        | PublishErrorKind::WrongLastSequence
                        | PublishErrorKind::MaxPayloadExceeded
                        | PublishErrorKind::Other
                );
                (!answered, err)
            }),
        };
        match outcome {
            Ok(ack) => {
                if attempts > 1 {
                    tracing::info!(
                        "log entry {msg_id} known after {attempts} attempts: seq {}",
                        ack.sequence
                    );
                }
                return Ok(Published {
                    seq: ack.sequence,
                    attempts,
                });
            }
            Err((doubt, err)) => {
                in_doubt |= doubt;
                if !in_doubt {
                    return Err(PublishRefused(err.to_string()));
                }
                tracing::debug!("log entry {msg_id} in doubt (attempt {attempts}): {err}");
                if !doubt {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

/// An entry id as its `Nats-Msg-Id`: 32 lowercase hex digits.
pub fn entry_id_hex(eid: &EntryId) -> String {
    use std::fmt::Write;
    eid.iter().fold(String::with_capacity(32), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_hex() {
        let mut eid = [0u8; 16];
        eid[0] = 0xab;
        eid[15] = 0x01;
        assert_eq!(entry_id_hex(&eid), "ab000000000000000000000000000001");
    }
}
