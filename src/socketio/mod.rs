//! Socket.IO v5 on top of Engine.IO: namespaces, events, acknowledgements.
//!
//! [`packet`] is the pure codec. [`SocketIo`] adapts any [`Handler`] (the chat
//! domain, or the conformance echo server) to the Engine.IO layer.

pub mod connection;
pub mod handler;
pub mod packet;
pub mod socket;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use connection::Connection;
pub use handler::{Event, Handler};
pub use socket::{Socket, event_packet};

use crate::engineio::{EngineHandler, Outbox, RequestInfo};

/// The Socket.IO layer for one application handler.
pub struct SocketIo<H> {
    handler: Arc<H>,
    connect_timeout: Duration,
}

impl<H: Handler> SocketIo<H> {
    /// Serves `handler`; a session that joins no namespace within
    /// `connect_timeout` of opening is closed.
    pub fn new(handler: Arc<H>, connect_timeout: Duration) -> Self {
        SocketIo {
            handler,
            connect_timeout,
        }
    }
}

impl<H: Handler> EngineHandler for SocketIo<H> {
    type Session = Connection<H>;

    fn open(&self, outbox: Outbox, info: RequestInfo) -> Connection<H> {
        let joined = Arc::new(AtomicBool::new(false));
        let deadline = self.connect_timeout;
        let (watched, watcher) = (joined.clone(), outbox.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(deadline) => {
                    if !watched.load(Ordering::Relaxed) {
                        tracing::debug!("no CONNECT before the handshake deadline: closing");
                        watcher.abort();
                    }
                }
                _ = watcher.closed() => {}
            }
        });
        Connection::new(self.handler.clone(), outbox, info, joined)
    }
}
