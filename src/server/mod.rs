//! The network side of `chatd run`: accept TCP within the connection
//! limits, learn the client's address from a trusted proxy, finish TLS
//! within a deadline, serve HTTP/1.1 with hyper, and hand `/socket.io/`
//! requests to the Engine.IO transports (long-polling and websocket).

pub mod body;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod proxy_protocol;
pub mod refusals;
pub mod signals;
pub mod tls;
pub mod tls_stream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engineio::{Engine, EngineConfig, EngineHandler};
use crate::health::Health;
use crate::metrics::{HandshakeRefusal, METRICS};
use limits::{ConnectionLimits, Gate, Place};
use proxy::TrustedProxies;
use proxy_protocol::{ProxyHeaderError, SNIFF_LEN};
use refusals::REFUSALS;
use tls_stream::TlsAcceptor;

/// A listener's settings and shared state.
pub struct Server<H: EngineHandler> {
    /// URL paths that lead to Engine.IO, e.g. `/socket.io/`.
    pub paths: Vec<&'static str>,
    /// The Engine.IO sessions over the application (Socket.IO over chat, or
    /// the echo server).
    pub engine: Arc<Engine<H>>,
    /// TLS, unless the operator chose plain ws/http.
    pub tls: Option<TlsAcceptor>,
    /// Origins whose web pages may use the server (CORS, and the `Origin`
    /// of websocket handshakes); requests without an `Origin` are not
    /// from a browser page and always pass.
    pub cors_origins: Vec<String>,
    /// Cancelled to close every session (shutdown).
    pub sessions: CancellationToken,
    /// Tracks connection and session tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Admission control: connections in all and per client address.
    pub gate: Arc<Gate>,
    /// Proxies whose word about the client's address is taken (PROXY
    /// protocol, `X-Forwarded-For`).
    pub trusted_proxies: TrustedProxies,
    /// How long a client may take for the TLS handshake, for sending its
    /// request headers (slowloris), and for sending a request body.
    pub handshake_timeout: Duration,
    /// Largest HTTP request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// What `/healthz` answers: 200 while no part of the node is failing.
    pub health: Arc<Health>,
    /// Serve the built-in web client at `/` ([`crate::web`]).
    pub web: bool,
}

impl<H: EngineHandler> Server<H> {
    /// A server of `handler` at `/socket.io/`, without TLS, with no
    /// cross-origin page allowed and the default limits; adjust the public
    /// fields before sharing it.
    pub fn new(handler: Arc<H>, config: EngineConfig) -> Self {
        let (sessions, tracker) = (CancellationToken::new(), TaskTracker::new());
        Server {
            paths: vec!["/socket.io/"],
            engine: Arc::new(Engine::new(
                handler,
                Arc::new(config),
                sessions.clone(),
                tracker.clone(),
            )),
            tls: None,
            cors_origins: Vec::new(),
            sessions,
            tracker,
            gate: Gate::new(ConnectionLimits::default()),
            trusted_proxies: TrustedProxies::default(),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            health: Arc::default(),
            web: false,
        }
    }

    /// True if a page from `origin` may use the server.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|allowed| allowed == origin)
    }

    /// Accepts connections until `stop` is cancelled.
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        tokio::spawn(REFUSALS.log_until(stop.clone()));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let from_proxy = self.trusted_proxies.contains(peer.ip());
            let admitted = if from_proxy {
                self.gate.admit_proxy()
            } else {
                self.gate.admit(peer.ip())
            };
            // Refusals are counted and logged (summed up) by the gate.
            let Ok(place) = admitted else { continue };
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            let mut tcp = tcp;
            self.tracker.spawn(async move {
                let deadline = Instant::now() + server.handshake_timeout;
                let (peer, place) = if from_proxy {
                    match server.proxied_client(&mut tcp, peer, deadline).await {
                        Some(Some((client, own))) => {
                            drop(place);
                            (client, own)
                        }
                        Some(None) => (peer, place),
                        None => return,
                    }
                } else {
                    (peer, place)
                };
                let watched = place.clone();
                tokio::select! {
                    _ = server.connection(tcp, peer, place, deadline) => {}
                    // A newer client of the address needed the place.
                    _ = watched.taken_back() => {}
                }
            });
        }
    }

    /// The client a trusted proxy names in a PROXY protocol header, with a
    /// place of its own (the connection then counts as the client's, not the
    /// proxy's); `Some(None)` without a header, `None` if the connection
    /// must end (a bad or late header, or no place for the client).
    async fn proxied_client(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Option<Option<(SocketAddr, Arc<Place>)>> {
        match tokio::time::timeout_at(deadline, read_proxy_header(tcp)).await {
            Ok(Ok(None)) => Some(None),
            Ok(Ok(Some(client))) => {
                let place = self.gate.admit(client.ip()).ok()?;
                Some(Some((client, place)))
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, %peer, "bad PROXY protocol header");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "PROXY protocol header timed out");
                None
            }
        }
    }

    /// One accepted connection: TLS, then HTTP until it closes or upgrades.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        place: Arc<Place>,
        deadline: Instant,
    ) {
        let Some(tls) = &self.tls else {
            return http::serve_connection(self.clone(), tcp, peer, place).await;
        };
        match tokio::time::timeout_at(deadline, tls.accept(tcp)).await {
            Ok(Ok(stream)) => http::serve_connection(self.clone(), stream, peer, place).await,
            Ok(Err(error)) => {
                METRICS.handshake_refused(HandshakeRefusal::Tls);
                tracing::debug!(%error, %peer, "TLS handshake failed")
            }
            Err(_) => {
                METRICS.handshake_refused(HandshakeRefusal::Tls);
                tracing::debug!(%peer, "TLS handshake timed out")
            }
        }
    }
}

/// Reads a PROXY protocol header, if the stream starts with one, and
/// returns the client it names; leaves any other stream untouched.
async fn read_proxy_header(tcp: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let invalid = |error: ProxyHeaderError| io::Error::new(io::ErrorKind::InvalidData, error);
    // Look before taking: a stream without a header must reach TLS or HTTP
    // whole. Proxies write the header in one piece; one that arrives in
    // parts is waited for a millisecond at a time (trusted peers only).
    let mut start = [0u8; 128];
    let header = loop {
        let seen = tcp.peek(&mut start).await?;
        if seen == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match proxy_protocol::sniff(&start[..seen.min(SNIFF_LEN)]) {
            Some(false) => return Ok(None),
            None => {}
            Some(true) => match proxy_protocol::parse(&start[..seen]).map_err(invalid)? {
                Some(header) => break header,
                // A version 2 header with long extensions: read as it is
                // announced, all of it is header.
                None if seen == start.len() && start.starts_with(b"\r\n") => {
                    let mut head = [0u8; 16];
                    tcp.read_exact(&mut head).await?;
                    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                    let mut whole = head.to_vec();
                    whole.resize(16 + len, 0);
                    tcp.read_exact(&mut whole[16..]).await?;
                    return Ok(proxy_protocol::parse(&whole)
                        .map_err(invalid)?
                        .and_then(|header| header.source));
                }
                None => {}
            },
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let mut consumed = vec![0u8; header.len];
    tcp.read_exact(&mut consumed).await?;
    Ok(header.source)
}
