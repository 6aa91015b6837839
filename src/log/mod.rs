//! The ordered log of changes: how a chat change becomes durable and in
//! which order every change is applied.
//!
//! The chat appends a [`Change`] with a ticket (who to answer) and later
//! receives, in log order, what became of it: [`Settled::Applied`] once the
//! change is committed (in the log and in this node's store), or
//! [`Settled::Dropped`] when it was not and never will be. On one node the
//! log is the store's own queue ([`LocalLog`]); in a cluster it is a
//! replicated stream that every node applies (the cluster module's driver).
//! The chat code does not know which it has.

mod local;

use std::future::Future;

pub use local::LocalLog;

use crate::store::change::{Applied, AppliedBatch, Change};

/// What the log tells the chat about appended changes, in log order.
#[derive(Debug)]
pub enum Settled<T> {
    /// Changes applied to this node's store, in log order: this node's own
    /// (with their tickets) and, in a cluster, other nodes' (without).
    Applied(Vec<Applied<T>>),
    /// Changes that were not applied and never will be, and why; their
    /// senders are told `unavailable`.
    Dropped {
        /// What went wrong, for the log.
        error: String,
        /// Who to tell.
        tickets: Vec<T>,
    },
}

/// A change the log did not take, handed back with its ticket.
pub type NotAppended<T> = (Change, T);

/// An ordered, durable log of changes.
pub trait Log<T: Send + 'static>: Send + Sync + 'static {
    /// Appends `change`; its outcome arrives later as [`Settled`] with
    /// `ticket`. Waits while the log's queue is full (back-pressure on the
    /// sender); fails at once, handing both back, when the log is closed
    /// or cannot take changes now.
    fn append(
        &self,
        change: Change,
        ticket: T,
    ) -> impl Future<Output = Result<(), NotAppended<T>>> + Send;
}

impl<T> Settled<T> {
    /// What the chat is told of one batch from the store's applier.
    pub fn of_batch(batch: AppliedBatch<T>) -> Settled<T> {
        match batch.result {
            Ok(applied) => Settled::Applied(applied),
            Err((error, pendings)) => Settled::Dropped {
                error: error.to_string(),
                tickets: pendings.into_iter().filter_map(|p| p.ticket).collect(),
            },
        }
    }
}
