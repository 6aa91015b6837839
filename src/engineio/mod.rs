//! Engine.IO v4: the session layer under Socket.IO.
//!
//! [`packet`] and [`payload`] are the pure codecs; a [`session::Session`]
//! lives in the [`engine::Engine`]'s table and is carried by [`polling`]
//! requests, a [`websocket`], or polling first and then a websocket. A
//! session hands every message packet to an [`EngineHandler`]'s session and
//! never looks inside it, so Socket.IO (or anything else) sits on top without
//! knowing which transport a client uses.
//!
//! The futures an idle connection's task holds are built by plain functions
//! returning an `async move` block where an async fn would do: an async fn
//! keeps its arguments and the locals they are moved into side by side in
//! every state, and each idle websocket's task carries that state.
#![expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of its arguments in its future"
)]

pub mod engine;
pub mod fragments;
pub mod frame_reader;
pub mod frame_writer;
pub mod heartbeat;
pub mod outbox;
pub mod packet;
pub mod payload;
pub mod polling;
pub mod session;
pub mod websocket;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use engine::Engine;
pub use outbox::{Outbound, Outbox};

/// Protocol settings a server announces in its open packet.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long the server waits for the pong before closing the session.
    pub ping_timeout: Duration,
    /// The largest packet accepted from a client, in bytes.
    pub max_payload: usize,
    /// How many packets may wait in one session's outbound queue.
    pub outbound_queue: usize,
    /// How many bytes may wait in one session's outbound queue.
    pub outbound_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 65_536,
            outbound_queue: 1024,
            outbound_bytes: outbox::DEFAULT_MAX_BYTES,
        }
    }
}

/// What the handshake request told us about the client.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The handshake URL's query string as it came (percent-encoded): one
    /// allocation kept for the session's life, where decoded pairs were a
    /// vector and two strings per parameter; decoded when asked.
    pub query: Box<str>,
    /// The client's address (behind a trusted proxy, the one it named).
    pub remote: SocketAddr,
    /// The session's place under the server's connection limits.
    pub place: Arc<dyn Admission>,
}

/// A session's admission under the server's connection limits (its place),
/// as the layers above see it: it starts unjoined, the application says when its client
/// joins, and the server may take an unjoined place back for a newer client
/// of the same address (the application then closes the session).
pub trait Admission: fmt::Debug + Send + Sync + 'static {
    /// The client joined: false if its address has no joined place left
    /// (the application refuses it). True if it had joined already.
    fn join(&self) -> bool;
    /// Undoes [`join`](Admission::join): the application refused the client
    /// after all.
    fn unjoin(self: Arc<Self>);
    /// True once the client joined.
    fn is_joined(&self) -> bool;
    /// Resolves if the server takes the place back before the client joins.
    fn taken_back(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// A place outside any limit: joined from the start, never taken back. For sessions
/// built without a server around them (tests, fuzzing).
#[derive(Debug, Default)]
pub struct Unlimited;

impl Admission for Unlimited {
    fn join(&self) -> bool {
        true
    }

    fn unjoin(self: Arc<Self>) {}

    fn is_joined(&self) -> bool {
        true
    }

    fn taken_back(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

impl RequestInfo {
    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

/// The first value of parameter `name` in a decoded query.
pub fn query_param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Why a session ended, in the reference server's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet or closed the websocket.
    TransportClose,
    /// The transport failed (reset, TLS error, oversized frame).
    TransportError,
    /// No pong within the ping timeout.
    PingTimeout,
    /// The client sent something that is not the protocol.
    ParseError,
    /// The server closed it (shutdown, slow reader, handler's decision).
    ServerClose,
}

impl CloseReason {
    /// The reason string Socket.IO reports for this close.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ParseError => "parse error",
            CloseReason::ServerClose => "server shutting down",
        }
    }
}

/// Why an Engine.IO request is refused, with the reference server's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `transport` is missing or not one we serve.
    #[error("Transport unknown")]
    TransportUnknown,
    /// No live session with that sid for this client.
    #[error("Session ID unknown")]
    SessionUnknown,
    /// A handshake that is not a GET.
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// The request does not fit the session's state (wrong transport, two
    /// polls at once, a websocket request without the upgrade).
    #[error("Bad request")]
    BadRequest,
    /// `EIO` is not 4.
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
}

impl RequestError {
    /// The numeric code of the reference server's JSON error body.
    pub fn code(self) -> u8 {
        match self {
            RequestError::TransportUnknown => 0,
            RequestError::SessionUnknown => 1,
            RequestError::BadHandshakeMethod => 2,
            RequestError::BadRequest => 3,
            RequestError::UnsupportedProtocolVersion => 5,
        }
    }
}

/// The layer above Engine.IO: opens a session handler per client.
pub trait EngineHandler: Send + Sync + 'static {
    /// The per-session state that receives the client's messages.
    type Session: SessionHandler;

    /// Called once the open packet is queued; `outbox` reaches the client,
    /// `path` is the Engine.IO path the handshake came on (a server may
    /// serve several). The session keeps `info` and lends it back with each
    /// text message.
    fn open(&self, outbox: Outbox, path: &str, info: &RequestInfo) -> Self::Session;
}

/// A protocol violation that ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct ProtocolError(pub String);

/// Receives one session's messages, in order, from whichever transport.
pub trait SessionHandler: Send + 'static {
    /// A text message packet's data, with the request that opened the
    /// session (kept by the session, not copied into every handler).
    fn on_text(
        &mut self,
        request: &RequestInfo,
        text: &str,
    ) -> impl Future<Output = Result<(), ProtocolError>> + Send;
    /// A binary message.
    fn on_binary(&mut self, data: Bytes) -> impl Future<Output = Result<(), ProtocolError>> + Send;
    /// The session is over; called exactly once.
    fn on_close(self, reason: CloseReason) -> impl Future<Output = ()> + Send;
}

/// A fresh 20-character URL-safe id, as the reference server's ids look.
pub fn new_id() -> String {
    use base64::Engine as _;
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A handler for the engine's own tests.
#[cfg(test)]
pub(crate) mod quiet {
    use bytes::Bytes;

    use super::{CloseReason, EngineHandler, Outbox, ProtocolError, RequestInfo, SessionHandler};

    /// Takes every packet and records nothing.
    pub(crate) struct Quiet;

    impl SessionHandler for Quiet {
        async fn on_text(&mut self, _: &RequestInfo, _: &str) -> Result<(), ProtocolError> {
            Ok(())
        }
        async fn on_binary(&mut self, _: Bytes) -> Result<(), ProtocolError> {
            Ok(())
        }
        async fn on_close(self, _: CloseReason) {}
    }

    impl EngineHandler for Quiet {
        type Session = Quiet;

        fn open(&self, _: Outbox, _: &str, _: &RequestInfo) -> Quiet {
            Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twenty_url_safe_characters_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 20);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a, b);
    }
}
