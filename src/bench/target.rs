//! The server under test: its URL (or a cluster's node URLs), TLS trust, and how to prove who a
//! benchmark user is (a token minted with the server's secret, or nothing
//! for a server running `--no-auth`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::client::Resumption;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Progress;
use crate::chat::auth::{DEFAULT_MAX_TTL, TokenKey};
use crate::cli::token::DEFAULT_TTL;
use crate::client::{Client, ClientError, ConnectOptions, tls};
use crate::datadir;

/// Where and how benchmark connections go.
pub struct Target {
    /// One URL, or a cluster's nodes: connections go to them in turn.
    urls: Vec<String>,
    options: ConnectOptions,
    /// `None` for a server running `--no-auth`.
    key: Option<TokenKey>,
}

/// A connection that joined, and how long its whole handshake took.
pub type Connected = (Client, Duration);

impl Target {
    /// A target from the command line's flags: the server's URL, or the
    /// URLs of a cluster's nodes (all `ws://` or all `wss://`);
    /// `token_secret` (the server's secret file) unless `no_auth`; for
    /// `wss://`, a certificate to trust (`ca`) or `insecure`.
    pub fn new(
        urls: &[String],
        token_secret: Option<&Path>,
        no_auth: bool,
        ca: Option<&Path>,
        insecure: bool,
    ) -> anyhow::Result<Target> {
        let key = match (token_secret, no_auth) {
            (Some(path), false) => {
                Some(TokenKey::new(&datadir::load_secret(path)?, DEFAULT_MAX_TTL))
            }
            (None, true) => None,
            _ => bail!("pass exactly one of --token-secret FILE and --no-auth"),
        };
        let is_tls = |url: &String| url.starts_with("wss://") || url.starts_with("https://");
        let Some(first) = urls.first() else {
            bail!("--url is required");
        };
        if urls.iter().any(|url| is_tls(url) != is_tls(first)) {
            bail!("the --url values must all be ws:// or all be wss://");
        }
        let tls = if is_tls(first) {
            let config = match (ca, insecure) {
                (Some(ca), false) => tls::trusting(ca)?,
                (None, true) => tls::insecure()?,
                _ => bail!("a wss:// URL needs exactly one of --ca FILE and --insecure"),
            };
            // Every benchmark handshake is a full one, as for a client
            // connecting for the first time: resumed sessions would make
            // the TLS cost look smaller than a fleet of new clients makes it.
            let mut config = Arc::unwrap_or_clone(config);
            config.resumption = Resumption::disabled();
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Target {
            urls: urls.to_vec(),
            options: ConnectOptions {
                tls,
                ..ConnectOptions::default()
            },
            key,
        })
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.options.tls.is_some()
    }

    /// Whether connections prove their user with a token.
    pub fn has_auth(&self) -> bool {
        self.key.is_some()
    }

    /// The CONNECT payload for `user` (talking to `peer`, if given), with a
    /// freshly minted token when the server checks them.
    pub fn auth(&self, user: &str, peer: Option<&str>) -> anyhow::Result<Value> {
        let mut auth = json!({ "user": user });
        if let Some(peer) = peer {
            auth["peer"] = peer.into();
        }
        if let Some(key) = &self.key {
            let token = key
                .issue(user, DEFAULT_TTL)
                .with_context(|| format!("cannot mint a token for {user}"))?;
            auth["token"] = token.into();
        }
        Ok(auth)
    }

    /// Opens one connection per auth payload, at most `concurrency`
    /// handshakes at a time, showing progress; the k-th goes to the k-th
    /// URL in turn. Results come in the order of `auths`.
    pub async fn connect_all(
        &self,
        auths: Vec<Value>,
        concurrency: usize,
    ) -> Vec<Result<Connected, ClientError>> {
        let total = auths.len();
        let done = Arc::new(AtomicUsize::new(0));
        let _progress = Progress::start({
            let done = done.clone();
            move || format!("connecting: {}/{total}", done.load(Ordering::Relaxed))
        });
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut handshakes = JoinSet::new();
        for (index, auth) in auths.into_iter().enumerate() {
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let url = self.url_of(index).to_owned();
            let (options, done) = (self.options.clone(), done.clone());
            handshakes.spawn(async move {
                let started = Instant::now();
                let result = Client::connect(&url, auth, &options).await;
                let result = result.map(|client| (client, started.elapsed()));
                drop(slot);
                done.fetch_add(1, Ordering::Relaxed);
                (index, result)
            });
        }
        let mut results: Vec<Option<Result<Connected, ClientError>>> =
            std::iter::repeat_with(|| None).take(total).collect();
        while let Some(joined) = handshakes.join_next().await {
            match joined {
                Ok((index, result)) => results[index] = Some(result),
                // A handshake task panicked: a bug, not a measurement.
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every handshake reported"))
            .collect()
    }

    /// Where the `index`-th connection goes.
    fn url_of(&self, index: usize) -> &str {
        &self.urls[index % self.urls.len()]
    }

    /// Opens one connection per auth payload like
    /// [`connect_all`](Self::connect_all), failing on the first that does
    /// not join.
    pub async fn connect_every(
        &self,
        auths: Vec<Value>,
        concurrency: usize,
    ) -> anyhow::Result<Vec<Client>> {
        let total = auths.len();
        self.connect_all(auths, concurrency)
            .await
            .into_iter()
            .enumerate()
            .map(|(index, result)| {
                result.map(|(client, _)| client).with_context(|| {
                    let url = self.url_of(index);
                    format!("connection {} of {total} to {url} failed", index + 1)
                })
            })
            .collect()
    }
}

/// Refuses to open more connections than this process may hold files: each
/// takes one, and the runtime needs a few of its own.
pub fn check_file_limit(connections: usize) -> anyhow::Result<()> {
    const SPARE: u64 = 64;
    let limit = super::proc::raise_open_file_limit()?;
    if connections as u64 + SPARE > limit {
        bail!(
            "{connections} connections need more open files than this process may have \
             ({limit}, of which {SPARE} are kept spare): use fewer, or raise the hard limit \
             (ulimit -Hn)"
        );
    }
    Ok(())
}
