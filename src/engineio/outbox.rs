//! The bounded outbound queue of one Engine.IO session.
//!
//! Everything the server sends to a client goes through its outbox: the
//! transport's writer task is the only one that touches the socket. The queue
//! is bounded so a client that stops reading cannot make the server grow its
//! memory: when the queue is full the session is closed instead.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::METRICS;

/// One item for a transport's writer.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A complete Engine.IO text packet (type digit included), valid UTF-8.
    Text(Bytes),
    /// An Engine.IO binary message.
    Binary(Bytes),
    /// A websocket-level pong owed to the client's ping frame.
    WsPong(Bytes),
    /// Flush what is queued before this, then close the session.
    Close,
}

/// The sending side of a session's queue; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
    closing: CancellationToken,
}

/// What a transport's writer drains.
#[derive(Debug)]
pub struct OutboxReceiver {
    /// Items in the order they were queued.
    pub rx: mpsc::Receiver<Outbound>,
    /// Fires when the session must stop without flushing.
    pub closing: CancellationToken,
}

impl Outbox {
    /// Creates a queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let closing = CancellationToken::new();
        let receiver = OutboxReceiver {
            rx,
            closing: closing.clone(),
        };
        (Outbox { tx, closing }, receiver)
    }

    /// Queues an item without waiting. A full queue means the client is not
    /// reading: the session is aborted and `false` returned.
    pub fn send(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!("outbound queue full: disconnecting a client that stopped reading");
                METRICS.outbound_drop();
                self.abort();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a text packet that is already encoded (fan-out shares one copy).
    pub fn send_text(&self, packet: Bytes) -> bool {
        self.send(Outbound::Text(packet))
    }

    /// Closes the session after what is already queued has been written.
    pub fn close(&self) {
        if self.tx.try_send(Outbound::Close).is_err() {
            self.abort();
        }
    }

    /// Closes the session at once, dropping whatever is queued.
    pub fn abort(&self) {
        self.closing.cancel();
    }

    /// True once the session is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.closing.is_cancelled() || self.tx.is_closed()
    }

    /// Resolves when the session starts closing.
    pub async fn closed(&self) {
        tokio::select! {
            _ = self.closing.cancelled() => {}
            _ = self.tx.closed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_aborts_the_session() {
        let (outbox, receiver) = Outbox::new(2);
        assert!(outbox.send_text(Bytes::from_static(b"4a")));
        assert!(outbox.send_text(Bytes::from_static(b"4b")));
        assert!(!outbox.send_text(Bytes::from_static(b"4c")));
        assert!(receiver.closing.is_cancelled());
        assert!(outbox.is_closed());
    }

    #[test]
    fn sends_after_the_writer_is_gone_are_refused() {
        let (outbox, receiver) = Outbox::new(2);
        drop(receiver);
        assert!(!outbox.send_text(Bytes::from_static(b"4a")));
        assert!(outbox.is_closed());
    }
}
