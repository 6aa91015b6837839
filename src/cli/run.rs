//! `chatd run`: the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use argh::FromArgs;
use tokio_util::sync::CancellationToken;

use crate::chat::auth::TokenKey;
use crate::chat::console::Console;
use crate::chat::handler::{Chat, ChatConfig};
use crate::chat::rate::RateLimit;
use crate::datadir;
use crate::engineio::EngineConfig;
use crate::server::{Server, tls};
use crate::socketio::SocketIo;
use crate::store::{Store, StoreError};

/// How long shutdown waits for in-flight messages to commit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for sessions to flush and close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the chat server.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunCommand {
    /// address to listen on (default 0.0.0.0:5000)
    #[argh(option, default = "String::from(\"0.0.0.0:5000\")")]
    pub listen: String,

    /// the data directory (history, secret, generated certificate)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,

    /// PEM certificate chain (default: a generated self-signed one)
    #[argh(option)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert
    #[argh(option)]
    pub tls_key: Option<PathBuf>,

    /// serve plain ws/http (behind a TLS-terminating proxy)
    #[argh(switch)]
    pub no_tls: bool,

    /// accept any well-formed user without a token (local development)
    #[argh(switch)]
    pub no_auth: bool,

    /// the token secret file (default: jwt-secret in the data directory)
    #[argh(option)]
    pub jwt_secret: Option<PathBuf>,

    /// messages per second per user, bursts of 5 seconds' worth; 0 = off (default 20)
    #[argh(option, default = "20")]
    pub rate_limit: u32,

    /// longest accepted message text in UTF-8 bytes (default 4096)
    #[argh(option, default = "4096")]
    pub max_message_bytes: usize,

    /// largest Engine.IO packet accepted, in bytes (default 65536)
    #[argh(option, default = "65536")]
    pub max_payload: usize,

    /// milliseconds between server pings (default 25000)
    #[argh(option, default = "25000")]
    pub ping_interval: u64,

    /// milliseconds to wait for a pong (default 20000)
    #[argh(option, default = "20000")]
    pub ping_timeout: u64,

    /// packets that may wait for one slow client before it is disconnected (default 1024)
    #[argh(option, default = "1024")]
    pub outbound_queue: usize,

    /// seconds a client has to join after connecting (default 10)
    #[argh(option, default = "10")]
    pub connect_timeout: u64,

    /// an origin (scheme://host[:port]) whose web pages may connect; repeatable (default: none)
    #[argh(option)]
    pub cors_origin: Vec<String>,
}

impl RunCommand {
    /// Starts the server and serves until SIGTERM or SIGINT.
    pub fn execute(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(self.serve())
    }

    /// The --cors-origin values as browsers send them in `Origin`.
    fn cors_origins(&self) -> anyhow::Result<Vec<String>> {
        self.cors_origin
            .iter()
            .map(|origin| {
                // Browsers never send a trailing slash or a path.
                let origin = origin.trim_end_matches('/');
                match origin.split_once("://") {
                    Some((scheme, host)) if !scheme.is_empty() && !host.is_empty() && !host.contains('/') => {
                        Ok(origin.to_owned())
                    }
                    _ => bail!("--cors-origin {origin:?} is not an origin like https://example.com or http://localhost:8080"),
                }
            })
            .collect()
    }

    async fn serve(self) -> anyhow::Result<()> {
        let data_dir = datadir::resolve(self.data_dir.as_deref());
        datadir::ensure(&data_dir)?;
        let store = Store::open(&data_dir).map_err(|error| match error {
            StoreError::Locked { .. } => anyhow::anyhow!(
                "{error}: another chatd server or command is using the data directory {}; stop it or pass another --data-dir",
                data_dir.display()
            ),
            error => anyhow::Error::new(error).context(format!("cannot open the message store in {}", data_dir.display())),
        })?;
        let auth = if self.no_auth {
            None
        } else {
            let secret = match &self.jwt_secret {
                Some(path) => datadir::load_secret(path)?,
                None => datadir::load_or_create_secret(&data_dir.join(datadir::SECRET_FILE))?,
            };
            Some(TokenKey::new(&secret))
        };
        let tls = match (self.no_tls, &self.tls_cert, &self.tls_key) {
            (true, None, None) => None,
            (true, _, _) => bail!("--no-tls cannot be combined with --tls-cert/--tls-key"),
            (false, Some(cert), Some(key)) => Some(tls::load_acceptor(cert, key)?),
            (false, None, None) => {
                let (cert, key) = tls::self_signed(&data_dir)?;
                Some(tls::load_acceptor(&cert, &key)?)
            }
            (false, _, _) => bail!(
                "--tls-cert and --tls-key go together: give both, or neither for the generated certificate"
            ),
        };
        if self.max_payload < 16 {
            bail!(
                "--max-payload {} is too small to carry any packet",
                self.max_payload
            );
        }

        let chat = Chat::start(
            store,
            ChatConfig {
                auth,
                max_message_bytes: self.max_message_bytes,
                rate: RateLimit::per_second(self.rate_limit),
                console: true,
            },
        )
        .context("cannot start the store writer")?;
        let listener = tokio::net::TcpListener::bind(&self.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: is another server using it? (--listen HOST:PORT)",
                    self.listen
                )
            })?;
        let port = listener
            .local_addr()
            .context("listener has no address")?
            .port();

        let mut server = Server::new(
            Arc::new(SocketIo::new(
                chat.clone(),
                Duration::from_secs(self.connect_timeout),
            )),
            EngineConfig {
                ping_interval: Duration::from_millis(self.ping_interval),
                ping_timeout: Duration::from_millis(self.ping_timeout),
                max_payload: self.max_payload,
                outbound_queue: self.outbound_queue,
            },
        );
        server.tls = tls.clone();
        server.cors_origins = self.cors_origins()?;
        let server = Arc::new(server);
        let stop_accepting = CancellationToken::new();
        let accept = tokio::spawn(server.clone().accept_loop(listener, stop_accepting.clone()));
        tracing::info!(data_dir = %data_dir.display(), tls = tls.is_some(), auth = !self.no_auth, "chatd listening on {}", self.listen);
        Console::listening(port);

        let signal = wait_for_signal().await?;
        tracing::info!(signal, "shutting down");
        stop_accepting.cancel();
        let _ = accept.await;
        if tokio::time::timeout(DRAIN_TIMEOUT, chat.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("in-flight messages did not settle in time");
        }
        server.sessions.cancel();
        server.tracker.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, server.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        Ok(())
    }
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
