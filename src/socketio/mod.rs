//! Socket.IO v5 on top of Engine.IO: namespaces, events, acknowledgements.
//!
//! [`packet`] is the pure codec. [`SocketIo`] adapts any [`Handler`] (the chat
//! domain, or the conformance echo server) to the Engine.IO layer.

pub mod connection;
pub mod handler;
pub mod packet;
pub mod socket;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

pub use connection::Connection;
pub use handler::{Event, Handler};
pub use socket::{Socket, event_packet, event_packet_with};

use crate::engineio::{EngineHandler, Outbox, RequestInfo};

/// The Socket.IO layer for one application handler.
pub struct SocketIo<H> {
    handler: Arc<H>,
    connect_timeout: Duration,
    max_attachment_bytes: usize,
}

impl<H: Handler> SocketIo<H> {
    /// Serves `handler`; a session that joins no namespace within
    /// `connect_timeout` of opening is closed, and so is one whose binary
    /// attachments to one event add up to more than `max_attachment_bytes`.
    pub fn new(handler: Arc<H>, connect_timeout: Duration, max_attachment_bytes: usize) -> Self {
        SocketIo {
            handler,
            connect_timeout,
            max_attachment_bytes,
        }
    }
}

impl<H: Handler> EngineHandler for SocketIo<H> {
    type Session = Connection<H>;

    fn open(&self, outbox: Outbox, _: &str, info: &RequestInfo) -> Connection<H> {
        let (joined, watched) = oneshot::channel();
        let deadline = self.connect_timeout;
        let (watcher, place) = (outbox.clone(), info.place.clone());
        // Ends at the deadline, when the server takes the unjoined place
        // back, or as soon as the client joins (or leaves), so it does not
        // linger beside every connection.
        tokio::spawn(async move {
            tokio::select! {
                _ = watched => {}
                _ = tokio::time::sleep(deadline) => {
                    tracing::debug!("no CONNECT before the handshake deadline: closing");
                    watcher.abort();
                }
                _ = place.taken_back() => {
                    tracing::debug!("unjoined place taken back for a newer client: closing");
                    watcher.abort();
                }
            }
        });
        Connection::new(
            self.handler.clone(),
            outbox,
            joined,
            self.max_attachment_bytes,
        )
    }
}
