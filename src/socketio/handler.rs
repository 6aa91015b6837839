//! What an application implements to sit on the Socket.IO layer.

use std::future::Future;

use bytes::Bytes;
use serde_json::Value;

use super::Socket;
use crate::engineio::RequestInfo;

/// An event a client emitted.
#[derive(Debug, Clone)]
pub struct Event {
    /// The arguments, event name first, binary placeholders left in place.
    pub args: Value,
    /// The binary attachments the placeholders point at.
    pub attachments: Vec<Bytes>,
    /// Set when the client passed an acknowledgement callback.
    pub ack: Option<u64>,
}

impl Event {
    /// The event name, when it is a string.
    pub fn name(&self) -> Option<&str> {
        self.args.get(0).and_then(Value::as_str)
    }
}

/// The application on top of Socket.IO: decides who may join which
/// namespace and what events do.
pub trait Handler: Send + Sync + 'static {
    /// Per-socket state, created by [`Handler::connect`].
    type State: Send + Sync + 'static;

    /// Whether namespace `nsp` exists.
    fn has_namespace(&self, nsp: &str) -> bool;

    /// Admits or refuses a socket. `Err` carries the CONNECT_ERROR data.
    /// Nothing may be emitted yet: the client has not been told it joined.
    fn connect(
        &self,
        socket: &Socket,
        auth: Option<Value>,
        request: &RequestInfo,
    ) -> impl Future<Output = Result<Self::State, Value>> + Send;

    /// The client now knows it joined; the first emits go here.
    fn connected(
        &self,
        state: &mut Self::State,
        socket: &Socket,
    ) -> impl Future<Output = ()> + Send;

    /// An event from the client.
    fn event(
        &self,
        state: &mut Self::State,
        socket: &Socket,
        event: Event,
    ) -> impl Future<Output = ()> + Send;

    /// The socket left, for `reason` (Socket.IO's reason strings).
    fn disconnect(
        &self,
        state: Self::State,
        socket: &Socket,
        reason: &'static str,
    ) -> impl Future<Output = ()> + Send;
}
