//! The bounded outbound queue of one Engine.IO session.
//!
//! Everything the server sends to a client goes through its outbox: the
//! transport's writer task is the only one that touches the socket. The queue
//! is bounded, in packets and in bytes, so a client that stops reading
//! cannot make the server grow its memory (one `history` answer may be
//! close to a megabyte): when the queue is full the session is closed
//! instead. It holds
//! memory only for what is queued (tokio's channel keeps a block of 32 slots
//! per connection, 1.3 KiB of every idle connection): a burst's room is
//! given back once drained, and all of it once the writer waits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::METRICS;

/// A queue drained past this many slots of room gives them back.
const KEEP: usize = 32;

/// The bytes one session's queue may hold unless configured otherwise.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024;

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
    shared: Arc<OutboxShared>,
    closing: CancellationToken,
}

/// What a transport's writer drains.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<OutboxShared>,
    /// Fires when the session must stop without flushing.
    pub closing: CancellationToken,
}

#[derive(Debug)]
struct OutboxShared {
    queue: Mutex<Queue>,
    capacity: usize,
    max_bytes: usize,
    /// Wakes the one receiver; a notification sent while it is not waiting
    /// is kept for it.
    ready: Notify,
}

/// The queued items and their bytes.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    bytes: usize,
}

impl Outbound {
    /// The bytes it holds.
    fn len(&self) -> usize {
        match self {
            Outbound::Text(bytes) | Outbound::Binary(bytes) | Outbound::WsPong(bytes) => {
                bytes.len()
            }
            Outbound::Close => 0,
        }
    }
}

impl OutboxShared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; a poisoned queue is intact.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` unless the queue is full, in items or in bytes.
    fn push(&self, item: Outbound) -> bool {
        let mut queue = self.queue();
        let bytes = queue.bytes + item.len();
        if queue.items.len() >= self.capacity || bytes > self.max_bytes {
            return false;
        }
        queue.bytes = bytes;
        queue.items.push_back(item);
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Gives an empty queue's room back, for a writer about to wait.
    fn release_if_empty(&self) {
        let mut queue = self.queue();
        if queue.items.is_empty() {
            queue.items = VecDeque::new();
        }
    }

    fn pop(&self) -> Option<Outbound> {
        let mut queue = self.queue();
        let item = queue.items.pop_front()?;
        queue.bytes -= item.len();
        if queue.items.is_empty() && queue.items.capacity() > KEEP {
            queue.items = VecDeque::new();
        }
        Some(item)
    }
}

impl Outbox {
    /// Creates a queue holding at most `capacity` items and
    /// [`DEFAULT_MAX_BYTES`].
    pub fn new(capacity: usize) -> (Outbox, OutboxReceiver) {
        Outbox::with_max_bytes(capacity, DEFAULT_MAX_BYTES)
    }

    /// Creates a queue holding at most `capacity` items and `max_bytes`.
    pub fn with_max_bytes(capacity: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let shared = Arc::new(OutboxShared {
            queue: Mutex::default(),
            capacity: capacity.max(1),
            max_bytes,
            ready: Notify::new(),
        });
        let closing = CancellationToken::new();
        let receiver = OutboxReceiver {
            shared: shared.clone(),
            closing: closing.clone(),
        };
        (Outbox { shared, closing }, receiver)
    }

    /// Queues an item without waiting. A full queue means the client is not
    /// reading: the session is aborted and `false` returned, as it is once
    /// the session is closed.
    pub fn send(&self, item: Outbound) -> bool {
        if self.closing.is_cancelled() {
            return false;
        }
        if self.shared.push(item) {
            return true;
        }
        tracing::info!("outbound queue full: disconnecting a client that stopped reading");
        METRICS.outbound_drop();
        self.abort();
        false
    }

    /// Queues a text packet that is already encoded (fan-out shares one copy).
    pub fn send_text(&self, packet: Bytes) -> bool {
        self.send(Outbound::Text(packet))
    }

    /// Closes the session after what is already queued has been written.
    pub fn close(&self) {
        if !self.shared.push(Outbound::Close) {
            self.abort();
        }
    }

    /// Closes the session at once, dropping whatever is queued.
    pub fn abort(&self) {
        self.closing.cancel();
    }

    /// Fires when the session must stop (the receiver's `closing`).
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// True once the session is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.closing.is_cancelled()
    }
}

impl OutboxReceiver {
    /// The next item, once there is one.
    pub async fn recv(&mut self) -> Outbound {
        loop {
            let ready = self.shared.ready.notified();
            if let Some(item) = self.shared.pop() {
                return item;
            }
            // Idle connections wait far longer than they write.
            self.shared.release_if_empty();
            ready.await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.shared.pop()
    }
}

impl Drop for OutboxReceiver {
    /// Without a receiver nothing will ever be written: the session is over.
    fn drop(&mut self) {
        self.closing.cancel();
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
    fn a_queue_past_its_bytes_aborts_the_session_and_drained_bytes_count_again() {
        let (outbox, mut receiver) = Outbox::with_max_bytes(100, 10);
        assert!(outbox.send_text(Bytes::from_static(b"4aaaa")));
        assert!(outbox.send_text(Bytes::from_static(b"4bbbb")));
        assert!(receiver.try_recv().is_some());
        assert!(
            outbox.send_text(Bytes::from_static(b"4cccc")),
            "room again once drained"
        );
        assert!(!outbox.send_text(Bytes::from_static(b"4d")));
        assert!(outbox.is_closed());
    }

    #[tokio::test]
    async fn items_arrive_in_order_and_a_drained_burst_gives_its_room_back() {
        let (outbox, mut receiver) = Outbox::new(1000);
        for i in 0..500 {
            assert!(outbox.send_text(Bytes::from(format!("4{i}"))));
        }
        for i in 0..500 {
            assert!(matches!(receiver.recv().await, Outbound::Text(t) if t == format!("4{i}")));
        }
        assert!(receiver.try_recv().is_none());
        assert!(receiver.shared.queue().items.capacity() <= KEEP);
        let shared = receiver.shared.clone();
        let waiting = tokio::spawn(async move { receiver.recv().await });
        tokio::task::yield_now().await;
        assert_eq!(
            shared.queue().items.capacity(),
            0,
            "a waiting writer's queue holds no room"
        );
        assert!(outbox.send_text(Bytes::from_static(b"4late")));
        let late = waiting.await.expect("the receiver wakes");
        assert!(matches!(late, Outbound::Text(t) if t == "4late"));
    }

    #[test]
    fn sends_after_the_writer_is_gone_are_refused() {
        let (outbox, receiver) = Outbox::new(2);
        drop(receiver);
        assert!(!outbox.send_text(Bytes::from_static(b"4a")));
        assert!(outbox.is_closed());
    }
}
