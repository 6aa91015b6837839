//! The network side of `chatd run`: accept TCP within the connection
//! limits, finish TLS within a deadline, serve HTTP/1.1 with hyper, and hand
//! `/socket.io/` requests to the Engine.IO transports (long-polling and
//! websocket).

pub mod http;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod signals;
pub mod tls;
pub mod tls_stream;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engineio::{Engine, EngineConfig, EngineHandler};
use crate::metrics::{HandshakeRefusal, METRICS};
use limits::{ConnectionLimits, Gate};
use tls_stream::TlsAcceptor;

/// A listener's settings and shared state.
pub struct Server<H: EngineHandler> {
    /// URL paths that lead to Engine.IO, e.g. `/socket.io/`.
    pub paths: Vec<String>,
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
    /// Admission control: connections in all and per IP.
    pub gate: Arc<Gate>,
    /// How long a client may take for the TLS handshake and for sending its
    /// request headers (slowloris).
    pub handshake_timeout: Duration,
    /// Largest HTTP request head accepted, in bytes.
    pub max_header_bytes: usize,
}

impl<H: EngineHandler> Server<H> {
    /// A server of `handler` at `/socket.io/`, without TLS, with no
    /// cross-origin page allowed and the default limits; adjust the public
    /// fields before sharing it.
    pub fn new(handler: Arc<H>, config: EngineConfig) -> Self {
        let (sessions, tracker) = (CancellationToken::new(), TaskTracker::new());
        Server {
            paths: vec!["/socket.io/".to_owned()],
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
            gate: Gate::new(ConnectionLimits {
                total: 10_000,
                per_ip: 256,
            }),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }

    /// True if a page from `origin` may use the server.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|allowed| allowed == origin)
    }

    /// Accepts connections until `stop` is cancelled.
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (tcp, remote) = tokio::select! {
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
            let permit = match self.gate.admit(remote.ip()) {
                Ok(permit) => Arc::new(permit),
                Err(refused) => {
                    tracing::warn!(%remote, %refused, "connection refused");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            self.tracker.spawn(async move {
                let Some(tls) = &server.tls else {
                    return http::serve_connection(server.clone(), tcp, remote, permit).await;
                };
                match tokio::time::timeout(server.handshake_timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        http::serve_connection(server.clone(), stream, remote, permit).await
                    }
                    Ok(Err(error)) => {
                        METRICS.handshake_refused(HandshakeRefusal::Tls);
                        tracing::debug!(%error, %remote, "TLS handshake failed")
                    }
                    Err(_) => {
                        METRICS.handshake_refused(HandshakeRefusal::Tls);
                        tracing::debug!(%remote, "TLS handshake timed out")
                    }
                }
            });
        }
    }
}
