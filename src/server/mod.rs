//! The network side of `chatd run`: accept TCP, finish TLS within a
//! deadline, serve HTTP/1.1 with hyper, and hand `/socket.io/` upgrades to
//! the Engine.IO websocket transport.

pub mod http;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod signals;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engineio::{EngineConfig, EngineHandler};
use crate::metrics::{HandshakeRefusal, METRICS};

/// A listener's settings and shared state.
pub struct Server<H> {
    /// URL paths that lead to Engine.IO, e.g. `/socket.io/`.
    pub paths: Vec<String>,
    /// The Engine.IO application (Socket.IO over chat, or the echo server).
    pub engine: Arc<H>,
    /// Protocol settings announced to clients.
    pub config: Arc<EngineConfig>,
    /// TLS, unless the operator chose plain ws/http.
    pub tls: Option<TlsAcceptor>,
    /// Cancelled to close every session (shutdown).
    pub sessions: CancellationToken,
    /// Tracks connection and session tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Admission control: connections in all and per IP.
    pub gate: Arc<limits::Gate>,
    /// How long a client may take for the TLS handshake and for sending its
    /// request headers (slowloris).
    pub handshake_timeout: Duration,
    /// Largest HTTP request head accepted, in bytes.
    pub max_header_bytes: usize,
}

impl<H: EngineHandler> Server<H> {
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
