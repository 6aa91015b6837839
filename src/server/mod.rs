//! The network side of `chatd run`: accept TCP, finish TLS within a
//! deadline, serve HTTP/1.1 with hyper, and hand `/socket.io/` upgrades to
//! the Engine.IO transports (long-polling and websocket).

pub mod http;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engineio::{Engine, EngineConfig, EngineHandler};

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl<H: EngineHandler> Server<H> {
    /// A server of `handler` at `/socket.io/`, without TLS and with no
    /// cross-origin page allowed; adjust the public fields before sharing it.
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
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            self.tracker.spawn(async move {
                match &server.tls {
                    Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            http::serve_connection(server.clone(), stream, remote).await
                        }
                        Ok(Err(error)) => tracing::debug!(%error, %remote, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    },
                    None => http::serve_connection(server.clone(), tcp, remote).await,
                }
            });
        }
    }
}
