//! A small async Socket.IO v5 client over the websocket transport: what
//! `chatd chat`, the benchmark and the integration tests talk to the server
//! with.
//!
//! One background task per connection reads frames, answers the server's
//! pings, resolves acknowledgements and queues incoming events; writers share
//! the websocket's write half behind an async mutex. So a connection costs
//! one task, which keeps thousands of them cheap.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chatd::client::ClientError> {
//! use chatd::client::{Client, ConnectOptions};
//! use serde_json::json;
//!
//! let auth = json!({"user": "Dummy-1", "peer": "Dummy-2", "token": "..."});
//! let mut client = Client::connect("ws://127.0.0.1:5000", auth, &ConnectOptions::default()).await?;
//! let answer: serde_json::Value = client.emit_with_ack("chat message", json!("hello")).await?.await?.first()?;
//! assert_eq!(answer["ok"], true);
//! while let Some(event) = client.next_event().await {
//!     println!("{} {}", event.name, event.args.json());
//! }
//! # Ok(()) }
//! ```

mod args;
mod reader;
pub mod tls;
mod websocket;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use fastwebsockets::{Frame, Payload, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::WriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Timeout;
use tokio_util::task::AbortOnDropHandle;

use crate::engineio::packet::EnginePacket;
use crate::socketio::packet::{PacketType, encode};

pub use args::RawArgs;

/// How long [`Client::disconnect`] waits for the server to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How to connect, beyond the URL and the auth payload.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TLS settings for `wss://` URLs: [`tls::trusting`] a certificate, or
    /// [`tls::insecure`]. Unused for `ws://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How long the whole handshake may take: TCP, TLS, upgrade, Socket.IO
    /// CONNECT.
    pub connect_timeout: Duration,
    /// How long an [`Ack`] waits for the server's answer.
    pub ack_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            tls: None,
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
        }
    }
}

/// An event the server emitted: its name and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEvent {
    /// The event name, e.g. `online`.
    pub name: String,
    /// The arguments after the name, decoded on demand.
    pub args: RawArgs,
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL cannot be used.
    #[error("cannot use the URL {url}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TLS handshake failed, e.g. the certificate is not trusted.
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// The host the certificate was checked for.
        host: String,
        /// The TLS error.
        source: std::io::Error,
    },
    /// The HTTP upgrade to a websocket failed.
    #[error("websocket upgrade failed: {0}")]
    Upgrade(#[source] WebSocketError),
    /// The server answered the Socket.IO CONNECT with CONNECT_ERROR.
    #[error("the server refused the connection: {0}")]
    Refused(String),
    /// The server sent something that is not the protocol.
    #[error("unexpected data from the server: {0}")]
    Protocol(String),
    /// The handshake did not finish within [`ConnectOptions::connect_timeout`].
    #[error("no answer from the server within {0:?}")]
    ConnectTimeout(Duration),
    /// No acknowledgement within [`ConnectOptions::ack_timeout`].
    #[error("no acknowledgement from the server within {0:?}")]
    AckTimeout(Duration),
    /// Writing to the websocket failed.
    #[error("cannot send to the server: {0}")]
    Send(#[source] WebSocketError),
    /// The connection has ended.
    #[error("the connection is closed")]
    Closed,
    /// An event's or acknowledgement's arguments do not decode into the
    /// type asked for.
    #[error("unexpected arguments from the server: {0}")]
    Arguments(#[source] serde_json::Error),
}

/// One Socket.IO connection to the main namespace.
///
/// Events queue up until [`Client::next_event`] takes them, without bound:
/// a long-lived client that ignores events should still drain them.
/// Dropping the client closes the connection.
pub struct Client {
    shared: Arc<ClientShared>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    /// The background reader; dropping the client stops it, which closes the
    /// connection.
    reader: AbortOnDropHandle<()>,
    sid: String,
    ack_timeout: Duration,
}

impl Client {
    /// Connects to `url` (`wss://host:port` or `ws://host:port`) and joins
    /// the main namespace with `auth` as the CONNECT payload.
    pub async fn connect(
        url: &str,
        auth: Value,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        tokio::time::timeout(options.connect_timeout, Self::handshake(url, auth, options))
            .await
            .map_err(|_| ClientError::ConnectTimeout(options.connect_timeout))?
    }

    /// Connects over plain `ws://` to `addr` with default options: for a
    /// server running with `--no-tls`, and for tests.
    pub async fn connect_plain(addr: SocketAddr, auth: Value) -> Result<Client, ClientError> {
        Self::connect(&format!("ws://{addr}"), auth, &ConnectOptions::default()).await
    }

    async fn handshake(
        url: &str,
        auth: Value,
        options: &ConnectOptions,
    ) -> Result<Client, ClientError> {
        let socket = websocket::open(url, options.tls.as_ref()).await?;
        let (read, write) = socket.split(tokio::io::split);
        let shared = Arc::new(ClientShared {
            writer: tokio::sync::Mutex::new(write),
            pending: Mutex::new(AwaitedAcks::default()),
        });
        let mut reader = reader::Reader::new(read, shared.clone());
        let heartbeat = reader.read_open().await?;

        let (events_tx, events) = mpsc::unbounded_channel();
        let (connected_tx, connected) = oneshot::channel();
        let reader =
            AbortOnDropHandle::new(tokio::spawn(reader.run(events_tx, connected_tx, heartbeat)));
        shared
            .send_socketio(PacketType::Connect, None, Some(&auth))
            .await?;
        // The reader drops the sender without answering if the connection
        // ends first.
        let sid = connected.await.map_err(|_| ClientError::Closed)??;
        Ok(Client {
            shared,
            events,
            reader,
            sid,
            ack_timeout: options.ack_timeout,
        })
    }

    /// The Socket.IO session id the server gave this connection.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// Emits `event` with one argument, without asking for an answer.
    pub async fn emit(&self, event: &str, data: Value) -> Result<(), ClientError> {
        let args = Value::Array(vec![Value::from(event), data]);
        self.shared
            .send_socketio(PacketType::Event, None, Some(&args))
            .await
    }

    /// Emits `event` with one argument and asks for an acknowledgement.
    /// Returns once the packet is written; await the [`Ack`] for the
    /// server's answer (its arguments), so many can be in flight at once.
    pub async fn emit_with_ack(&self, event: &str, data: Value) -> Result<Ack, ClientError> {
        let (answer, receiver) = oneshot::channel();
        let id = self.shared.pending().register(answer)?;
        // Made before sending: if sending fails, dropping it unregisters.
        let ack = Ack {
            id,
            shared: self.shared.clone(),
            timeout: self.ack_timeout,
            answer: Box::pin(tokio::time::timeout(self.ack_timeout, receiver)),
        };
        let args = Value::Array(vec![Value::from(event), data]);
        self.shared
            .send_socketio(PacketType::Event, Some(id), Some(&args))
            .await?;
        Ok(ack)
    }

    /// The next event from the server, oldest first; `None` once the
    /// connection has ended and every event received before has been taken.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Leaves the namespace and closes the websocket, as socket.io-client's
    /// `disconnect()` does, then waits (briefly) for the server to close its
    /// side.
    pub async fn disconnect(self) -> Result<(), ClientError> {
        if self.shared.pending().closed {
            return Ok(());
        }
        self.shared
            .send_socketio(PacketType::Disconnect, None, None)
            .await?;
        // The server may already be closing after the DISCONNECT packet; a
        // close frame that finds the socket gone has nothing left to do.
        let _ = self.shared.close().await;
        // The reader ends when the server's close frame or EOF arrives.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.reader).await;
        Ok(())
    }
}

/// The server's answer to one [`Client::emit_with_ack`]: resolves to the
/// acknowledgement's arguments (undecoded), or fails with [`ClientError::AckTimeout`] or
/// [`ClientError::Closed`].
pub struct Ack {
    id: u64,
    shared: Arc<ClientShared>,
    timeout: Duration,
    answer: Pin<Box<Timeout<oneshot::Receiver<RawArgs>>>>,
}

impl Future for Ack {
    type Output = Result<RawArgs, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.answer.as_mut().poll(cx)) {
            Ok(Ok(args)) => Ok(args),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::AckTimeout(self.timeout)),
        })
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        // An answer that timed out (or is no longer wanted) must not keep
        // its slot forever.
        self.shared.pending().acks.remove(&self.id);
    }
}

/// The write half of the websocket.
type ClientWriter = WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>;

/// What the client handle, its acks and the reader task share.
struct ClientShared {
    writer: tokio::sync::Mutex<ClientWriter>,
    pending: Mutex<AwaitedAcks>,
}

/// Acknowledgements awaited, and whether the connection has ended.
#[derive(Default)]
struct AwaitedAcks {
    closed: bool,
    next_id: u64,
    acks: HashMap<u64, oneshot::Sender<RawArgs>>,
}

impl AwaitedAcks {
    /// Takes the next ack id for `answer`, unless the connection has ended
    /// (then no answer could ever come).
    fn register(&mut self, answer: oneshot::Sender<RawArgs>) -> Result<u64, ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.acks.insert(id, answer);
        Ok(id)
    }
}

impl ClientShared {
    fn pending(&self) -> MutexGuard<'_, AwaitedAcks> {
        // Nothing panics while holding the lock, so a poisoned one still
        // holds consistent data.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one Socket.IO packet (main namespace) as an Engine.IO message.
    async fn send_socketio(
        &self,
        kind: PacketType,
        id: Option<u64>,
        data: Option<&Value>,
    ) -> Result<(), ClientError> {
        let socketio = encode(kind, "/", 0, id, data);
        self.send_engineio(EnginePacket::Message(&socketio)).await
    }

    /// Sends one Engine.IO packet as a text frame.
    async fn send_engineio(&self, packet: EnginePacket<'_>) -> Result<(), ClientError> {
        let mut text = String::new();
        packet.encode_text(&mut text);
        self.write(Frame::text(Payload::Owned(text.into_bytes())))
            .await
    }

    /// Sends the websocket close frame.
    async fn close(&self) -> Result<(), ClientError> {
        self.write(Frame::close(1000, b"")).await
    }

    async fn write(&self, frame: Frame<'_>) -> Result<(), ClientError> {
        if self.pending().closed {
            return Err(ClientError::Closed);
        }
        let mut writer = self.writer.lock().await;
        writer.write_frame(frame).await.map_err(ClientError::Send)?;
        // TLS buffers records: flush so the packet leaves now.
        writer.flush().await.map_err(ClientError::Send)
    }

    /// Hands an acknowledgement's arguments to whoever waits for them.
    fn resolve(&self, id: u64, args: RawArgs) {
        if let Some(answer) = self.pending().acks.remove(&id) {
            // The Ack may have been dropped meanwhile; nobody to tell then.
            let _ = answer.send(args);
        }
    }

    /// Marks the connection ended: every awaited ack fails with `Closed`.
    fn finish(&self) {
        let mut pending = self.pending();
        pending.closed = true;
        pending.acks.clear();
    }
}
