//! A node's lease in the presence bucket: the key whose life is the node's
//! presence. Taken at start, renewed every [`RENEW_EVERY`] with a TTL of
//! [`LEASE_TTL`]; when the node dies it is not renewed, the server expires
//! it and writes a limit marker, and every other node drops the dead
//! node's connections (see [`super::roster`]): its users are gone from
//! `online` everywhere within the TTL and the marker's delivery, well under
//! the 15 s the contract allows.
//!
//! Each renewal expects the revision of the last one, so a node notices
//! when its lease ran out while it could not reach the engine (or another
//! process took the same node name): it takes the lease again, and
//! [`LeaseState::Held`] carries a new `generation`, the cue for the node
//! to put its connections in the bucket again (the others dropped them).

use std::time::{Duration, Instant};

use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_TTL};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::roster::{Roster, lease_key};
use super::stream::PRESENCE_BUCKET;
use super::{ClusterEngine, ClusterError};

/// How long a lease lives without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often the lease is renewed: a few renewals may fail (an engine
/// fail-over takes 4-9 s) before the lease runs out.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// The lease as its holder knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Not (yet, or any more) held: this node's users may be missing from
    /// the other nodes' `online`; why.
    Lost(String),
    /// Held. `generation` counts the times it was taken: when it changes,
    /// the node's connections must be announced again.
    Held {
        /// 1 for the first take, then one more per take.
        generation: u64,
    },
}

/// Takes and keeps the lease of `roster`'s node, as process `instance`
/// (unique per start). The task stops when every receiver is gone; use
/// [`release`] on a clean shutdown.
pub fn hold_lease(
    engine: ClusterEngine,
    roster: Roster,
    instance: String,
) -> (watch::Receiver<LeaseState>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(LeaseState::Lost("not yet taken".into()));
    let task = tokio::spawn(async move {
        let mut generation = 0;
        let mut revision = None;
        let mut renewed = Instant::now();
        let mut ticks = tokio::time::interval(RENEW_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if tx.is_closed() {
                return;
            }
            let result = match revision {
                None => take(&engine, &roster, &instance).await,
                Some(last) => put_lease(&engine, &roster, &instance, Some(last)).await,
            };
            match result {
                Ok(next) => {
                    if revision.is_none() {
                        generation += 1;
                        tracing::info!("presence: lease of node {} taken", engine.node);
                        tx.send_replace(LeaseState::Held { generation });
                    }
                    revision = Some(next);
                    renewed = Instant::now();
                }
                Err(LeaseError::Gone) => {
                    tracing::warn!(
                        "presence: the lease of node {} ran out or was taken over; taking it again",
                        engine.node
                    );
                    revision = None;
                    tx.send_replace(LeaseState::Lost("the lease ran out".into()));
                }
                Err(LeaseError::Engine(err)) => {
                    tracing::debug!("presence: lease renewal failed: {err}");
                    if renewed.elapsed() > LEASE_TTL {
                        tx.send_if_modified(|state| {
                            let lost = matches!(state, LeaseState::Held { .. });
                            if lost {
                                *state = LeaseState::Lost(format!("lease not renewed: {err}"));
                            }
                            lost
                        });
                    }
                }
            }
        }
    });
    (rx, task)
}

/// Gives the lease up at a clean shutdown: the other nodes drop this
/// node's connections at once instead of after the TTL.
pub async fn release(roster: &Roster) -> Result<(), ClusterError> {
    roster
        .bucket()
        .delete(lease_key(roster.node()))
        .await
        .map_err(|err| ClusterError::engine("release the node's lease", err))?;
    roster.clear_own().await
}

enum LeaseError {
    /// The lease is not the one this node last wrote.
    Gone,
    /// The engine did not answer.
    Engine(ClusterError),
}

/// Clears what a previous life of this node left and takes the lease.
async fn take(engine: &ClusterEngine, roster: &Roster, instance: &str) -> Result<u64, LeaseError> {
    roster.clear_own().await.map_err(LeaseError::Engine)?;
    put_lease(engine, roster, instance, None).await
}

/// Writes the lease with its TTL; with `expect`, only over that revision.
async fn put_lease(
    engine: &ClusterEngine,
    roster: &Roster,
    instance: &str,
    expect: Option<u64>,
) -> Result<u64, LeaseError> {
    let subject = format!("$KV.{PRESENCE_BUCKET}.{}", lease_key(roster.node()));
    let mut message = PublishMessage::build()
        .header(NATS_MESSAGE_TTL, format!("{}s", LEASE_TTL.as_secs()))
        .payload(Bytes::copy_from_slice(instance.as_bytes()));
    if let Some(revision) = expect {
        message = message.header(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, revision.to_string());
    }
    let ack = engine
        .jetstream
        .send_publish(subject, message)
        .await
        .map_err(|err| LeaseError::Engine(ClusterError::engine("renew the lease", err)))?
        .await;
    match ack {
        Ok(ack) => Ok(ack.sequence),
        Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Err(LeaseError::Gone),
        Err(err) => Err(LeaseError::Engine(ClusterError::engine(
            "renew the lease",
            err,
        ))),
    }
}
