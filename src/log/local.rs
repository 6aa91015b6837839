//! The log of a single node: changes go straight to the store's applier,
//! which gives each the next log position in its commit order.

use tokio::sync::mpsc;

use super::{Log, NotAppended, Settled};
use crate::store::change::{Change, Pending};
use crate::store::{Applier, ApplierHandle, ApplierMode, Store, StoreError};

/// Settled batches that may wait for the chat before the applier waits.
const SETTLED_QUEUE: usize = 64;

/// The log of a node that runs alone.
pub struct LocalLog<T> {
    applier: ApplierHandle<T>,
}

impl<T: Send + 'static> LocalLog<T> {
    /// Starts the store's applier with a queue of `queue` changes; returns
    /// the log and the settled changes, in commit order.
    pub fn start(
        store: Store,
        queue: usize,
    ) -> Result<(LocalLog<T>, mpsc::Receiver<Settled<T>>), StoreError> {
        // A failed commit is handed back: its senders are told
        // `unavailable`, and nothing of it was stored. Batches go from the
        // applier thread straight to the chat's channel.
        let (tx, rx) = mpsc::channel(SETTLED_QUEUE);
        let (applier, _thread) =
            Applier::spawn_into(store, queue, ApplierMode::HandBack, tx, Settled::of_batch)?;
        Ok((LocalLog { applier }, rx))
    }
}

impl<T: Send + 'static> Log<T> for LocalLog<T> {
    async fn append(&self, change: Change, ticket: T) -> Result<(), NotAppended<T>> {
        let pending = Pending {
            seq: None,
            change,
            ticket: Some(ticket),
        };
        self.applier.submit(pending).await.map_err(|back| {
            let ticket = back.ticket.expect("submitted with a ticket");
            (back.change, ticket)
        })
    }
}
