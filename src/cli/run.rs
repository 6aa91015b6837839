//! `chatd run`: the server.

mod cluster;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use argh::FromArgs;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::cluster::ClusterNode;
use crate::admin::retention;
use crate::admin::server::AdminServer;
use crate::chat::auth::{DEFAULT_MAX_TTL, TokenKey};
use crate::chat::console::Console;
use crate::chat::rate::RateLimit;
use crate::chat::service::Ticket;
use crate::chat::service::{Chat, ChatConfig};
use crate::datadir;
use crate::duration::parse_duration;
use crate::engineio::EngineConfig;
use crate::health::Health;
use crate::log::Log;
use crate::metrics::METRICS;
use crate::server::limits::{ConnectionLimits, Gate};
use crate::server::notify::Notifier;
use crate::server::proxy::{Cidr, TrustedProxies};
use crate::server::signals::{Signal, Signals};
use crate::server::{Server, metrics, tls};
use crate::socketio::SocketIo;
use crate::store::{DB_FILE_NAME, Store, StoreError};

/// How long shutdown waits for in-flight messages to commit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for sessions to flush and close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for the store's file to be closed cleanly.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// new rooms (a first message to someone) per minute per user, in bursts of as many; 0 = off (default 60)
    #[argh(option, default = "60")]
    pub new_rooms_per_minute: u32,

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

    /// bytes that may wait for one slow client before it is disconnected (default 4194304)
    #[argh(option, default = "4 * 1024 * 1024")]
    pub outbound_bytes: usize,

    /// seconds a client has to join after its websocket opens (default 10)
    #[argh(option, default = "10")]
    pub connect_timeout: u64,

    /// seconds a client has for the TLS handshake and for its request headers (default 10)
    #[argh(option, default = "10")]
    pub handshake_timeout: u64,

    /// connections held at once, in all (default 10000)
    #[argh(option, default = "10_000")]
    pub max_connections: usize,

    /// joined connections held at once from one IP address (IPv6: one prefix, see --ipv6-prefix-len) (default 256)
    #[argh(option, default = "256")]
    pub max_connections_per_ip: usize,

    /// connections not yet joined (Socket.IO CONNECT) held at once from one address; a newer one closes the oldest (default 64)
    #[argh(option, default = "64")]
    pub max_unjoined_per_ip: usize,

    /// how many leading bits of an IPv6 address name one client for the per-IP limits (default 64: a /64)
    #[argh(option, default = "64")]
    pub ipv6_prefix_len: u8,

    /// a reverse proxy (address or block, e.g. 10.0.0.0/8) whose X-Forwarded-For or PROXY protocol header names the client; repeatable (default: none, the header is ignored)
    #[argh(option)]
    pub trusted_proxy: Vec<Cidr>,

    /// the longest lifetime a token may have, e.g. 12h, 30d (default 30d)
    #[argh(option, default = "DEFAULT_MAX_TTL", from_str_fn(parse_duration))]
    pub max_token_ttl: Duration,

    /// largest HTTP request head (URL and headers) accepted, in bytes (default 16384)
    #[argh(option, default = "16_384")]
    pub max_header_bytes: usize,

    /// purge history older than this (e.g. 30d) at start and every minute (default: keep all)
    #[argh(option, from_str_fn(parse_duration))]
    pub retention: Option<Duration>,

    /// serve Prometheus metrics over plain HTTP at http://ADDR/metrics (default: off)
    #[argh(option)]
    pub metrics_listen: Option<String>,

    /// an origin (scheme://host[:port]) whose web pages may connect; repeatable (default: none)
    #[argh(option)]
    pub cors_origin: Vec<String>,

    /// do not serve the built-in web client at / (it answers 404)
    #[argh(switch)]
    pub no_web: bool,

    /// run as one node of a cluster on these NATS JetStream servers: nats://HOST:PORT[,nats://HOST:PORT...] (default: a single node)
    #[argh(option)]
    pub cluster: Option<String>,

    /// this node's name in the cluster: 1-64 of A-Z a-z 0-9 _ - (default: the host name)
    #[argh(option)]
    pub node: Option<String>,

    /// start with an empty history although the data directory was used before and its chatd.redb is missing or empty
    #[argh(switch)]
    pub new_store: bool,
}

impl RunCommand {
    /// Starts the server and serves until SIGTERM or SIGINT.
    pub fn execute(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let served = runtime.block_on(self.serve());
        // Dropping the runtime drops every task, and with them the chat's
        // handles on the store; the store's applier then makes its last
        // commit and the file is closed cleanly, so the next start need
        // not check it whole.
        runtime.shutdown_timeout(STORE_CLOSE_TIMEOUT);
        if !Store::wait_closed(STORE_CLOSE_TIMEOUT) {
            tracing::warn!("the store was not closed in time: the next start checks it whole");
        }
        served
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

    async fn serve(mut self) -> anyhow::Result<()> {
        let data_dir = datadir::resolve(self.data_dir.as_deref());
        datadir::ensure(&data_dir)?;
        let outside: Vec<&std::path::Path> = [&self.jwt_secret, &self.tls_cert, &self.tls_key]
            .into_iter()
            .filter_map(|path| path.as_deref())
            .collect();
        datadir::check_private(&data_dir, &outside)?;
        if self.ipv6_prefix_len > 128 {
            bail!(
                "--ipv6-prefix-len {} is not a prefix length: give 0 to 128",
                self.ipv6_prefix_len
            );
        }
        if !self.new_store {
            history_not_lost(&data_dir)?;
        }
        let store = Store::open(&data_dir).map_err(|error| match error {
            StoreError::Locked { .. } => anyhow::anyhow!(
                "{error}: another chatd server, or a chatd export or purge, is using the data directory {dir}; \
                 `chatd online --data-dir {dir}` tells whether a server runs there: stop it, or wait for the \
                 export or purge to finish, or pass another --data-dir",
                dir = data_dir.display()
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
            Some(TokenKey::new(&secret, self.max_token_ttl))
        };
        let certs = match (self.no_tls, &self.tls_cert, &self.tls_key) {
            (true, None, None) => None,
            (true, _, _) => bail!("--no-tls cannot be combined with --tls-cert/--tls-key"),
            (false, Some(cert), Some(key)) => Some(tls::CertFiles::load(cert, key)?),
            (false, None, None) => {
                let (cert, key) = tls::self_signed(&data_dir)?;
                Some(tls::CertFiles::load(&cert, &key)?)
            }
            (false, _, _) => bail!(
                "--tls-cert and --tls-key go together: give both, or neither for the generated certificate"
            ),
        };
        if self.node.is_some() && self.cluster.is_none() {
            bail!("--node names a node of a cluster: give --cluster too");
        }
        if self.retention.is_some_and(|r| r.is_zero()) {
            bail!("--retention must be longer than 0s");
        }
        let tls = certs.as_ref().map(tls::CertFiles::acceptor).transpose()?;
        if self.max_payload < 16 {
            bail!(
                "--max-payload {} is too small to carry any packet",
                self.max_payload
            );
        }

        let config = ChatConfig {
            auth,
            max_message_bytes: self.max_message_bytes,
            rate: RateLimit::per_second(self.rate_limit),
            new_rooms_per_minute: self.new_rooms_per_minute,
            console: true,
            // A quarter of the queue: the rest is room for deliveries,
            // presence and history to the same connection.
            unacked_per_connection: (self.outbound_queue / 4).max(1),
        };
        let health = Arc::new(Health::default());
        let setup = Setup {
            data_dir,
            certs,
            tls,
            health: health.clone(),
        };
        match self.cluster.take() {
            None => {
                let chat = Chat::start(store, config).context("cannot start the store writer")?;
                self.serve_chat(chat, setup, std::future::ready(())).await
            }
            Some(urls) => {
                let ClusterNode {
                    chat,
                    catch_up,
                    departure,
                } = ClusterNode::start(&urls, self.node.as_deref(), store, config, health.clone())
                    .await?;
                let served = self.serve_chat(chat, setup, catch_up.wait(health)).await;
                departure.leave().await;
                served
            }
        }
    }

    /// Serves `chat` until SIGTERM or SIGINT; tells the service manager it
    /// is ready once `ready` (catching up with a cluster's log) is done.
    async fn serve_chat<L: Log<Ticket>>(
        self,
        chat: Arc<Chat<L>>,
        setup: Setup,
        ready: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Setup {
            data_dir,
            certs,
            tls,
            health,
        } = setup;
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
        if let Some(addr) = &self.metrics_listen {
            let bound = metrics::start(addr).await?;
            tracing::info!("metrics at http://{bound}/metrics");
        }

        let admin = AdminServer::start(&data_dir, chat.clone())?;
        let background = CancellationToken::new();
        if let Some(retention) = self.retention {
            tokio::spawn(retention::run(chat.clone(), retention, background.clone()));
        }

        let mut server = Server::new(
            Arc::new(SocketIo::new(
                chat.clone(),
                Duration::from_secs(self.connect_timeout),
                self.max_payload,
            )),
            EngineConfig {
                ping_interval: Duration::from_millis(self.ping_interval),
                ping_timeout: Duration::from_millis(self.ping_timeout),
                max_payload: self.max_payload,
                outbound_queue: self.outbound_queue,
                outbound_bytes: self.outbound_bytes,
            },
        );
        server.tls = tls.clone();
        server.cors_origins = self.cors_origins()?;
        server.gate = Gate::new(ConnectionLimits {
            total: self.max_connections,
            joined_per_address: self.max_connections_per_ip,
            unjoined_per_address: self.max_unjoined_per_ip,
            ipv6_prefix_len: self.ipv6_prefix_len,
        });
        server.trusted_proxies = TrustedProxies::new(self.trusted_proxy.clone());
        server.handshake_timeout = Duration::from_secs(self.handshake_timeout);
        server.max_header_bytes = self.max_header_bytes;
        server.web = !self.no_web;
        server.health = health.clone();
        let server = Arc::new(server);
        tokio::spawn(report_store_health(chat.store().failing(), health.clone()));
        let stop_accepting = CancellationToken::new();
        let accept = tokio::spawn(server.clone().accept_loop(listener, stop_accepting.clone()));
        tracing::info!(data_dir = %data_dir.display(), tls = tls.is_some(), auth = !self.no_auth, "chatd listening on {}", self.listen);
        let mut signals = Signals::install()?;
        Console::listening(port);
        let notifier = Arc::new(Notifier::from_env());
        let mut ready = std::pin::pin!(ready);
        let mut waiting = true;
        let signal = loop {
            let signal = tokio::select! {
                () = &mut ready, if waiting => {
                    waiting = false;
                    tracing::info!("ready");
                    notifier.ready();
                    notifier.spawn_watchdog(health.clone());
                    continue;
                }
                signal = signals.next() => signal,
            };
            match signal {
                Signal::Reload => reload_tls(certs.as_deref()),
                Signal::Stop(signal) => break signal,
            }
        };
        notifier.stopping();
        tracing::info!(signal, "shutting down");
        stop_accepting.cancel();
        background.cancel();
        let _ = accept.await;
        admin.shutdown().await;
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
        chat.closed();
        Ok(())
    }
}

/// What `serve` prepared for `serve_chat`.
struct Setup {
    data_dir: PathBuf,
    certs: Option<Arc<tls::CertFiles>>,
    tls: Option<crate::server::tls_stream::TlsAcceptor>,
    health: Arc<Health>,
}

/// Refuses to start with an empty history where one was kept before: a
/// missing `chatd.redb` beside the generated certificate (`tls/`, made by
/// an earlier `chatd run`), or an empty one beside that or the token
/// secret, is a lost or truncated file (a restore gone wrong, a wrong
/// mount), not a new installation. A secret alone is not enough to tell:
/// `chatd token` makes it before the first start.
fn history_not_lost(data_dir: &Path) -> anyhow::Result<()> {
    let db = data_dir.join(DB_FILE_NAME);
    let size = match std::fs::metadata(&db) {
        Ok(meta) => Some(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", db.display())),
    };
    let tls = data_dir.join(tls::SELF_SIGNED_DIR);
    let secret = data_dir.join(datadir::SECRET_FILE);
    let used_by = match size {
        None if tls.exists() => tls,
        Some(0) if tls.exists() => tls,
        Some(0) if secret.exists() => secret,
        _ => return Ok(()),
    };
    let state = if size.is_none() {
        "missing"
    } else {
        "empty (0 bytes)"
    };
    bail!(
        "{} is {state}, but {} shows a server kept its history here before: refusing to start \
         with an empty history. Restore the file from a backup (or mount the right volume); to \
         start afresh deliberately, run once with --new-store",
        db.display(),
        used_by.display()
    )
}

/// Keeps the health part "store" failing, with the store's reason, while
/// the store cannot commit.
async fn report_store_health(mut failing: watch::Receiver<Option<String>>, health: Arc<Health>) {
    loop {
        match &*failing.borrow_and_update() {
            Some(reason) => health.fail("store", reason.clone()),
            None => health.recover("store"),
        }
        if failing.changed().await.is_err() {
            return;
        }
    }
}

/// SIGHUP: serves the certificate files' current content from the next
/// handshake on (a renewal), or keeps the served one and says why not.
fn reload_tls(certs: Option<&tls::CertFiles>) {
    let Some(certs) = certs else {
        tracing::info!("SIGHUP: TLS is off (--no-tls), nothing to reload");
        return;
    };
    match certs.reload() {
        Ok(()) => {
            METRICS.tls_reload(true);
            tracing::info!(cert = %certs.cert_path().display(), "TLS certificate reloaded");
        }
        Err(error) => {
            METRICS.tls_reload(false);
            tracing::error!(
                "TLS certificate not reloaded, still serving the previous one: {error:#}"
            );
        }
    }
}
