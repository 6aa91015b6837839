//! `chatd run --cluster`: the node's side of a cluster. The chat gets the
//! replicated log and the service-wide presence instead of the local ones;
//! it does not know which it has.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::chat::fanout::Fanout;
use crate::chat::service::{Chat, ChatConfig, LOG_QUEUE, Ticket};
use crate::cluster::health::{report_engine, watch_health};
use crate::cluster::lease::release;
use crate::cluster::log::{CatchUp, JetStreamLog, claim_store};
use crate::cluster::presence::ClusterPresence;
use crate::cluster::roster::{Roster, is_valid_node_name};
use crate::cluster::stream::{Replication, ensure_log_stream, ensure_presence_bucket};
use crate::cluster::{ClusterEngine, ClusterError};
use crate::health::Health;
use crate::store::Store;

/// Pause between attempts to reach the engine at start.
const START_RETRY: Duration = Duration::from_secs(1);

/// How long a clean shutdown waits to give the node's lease up.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// A node of a cluster: its chat, and what starting and stopping need.
pub(super) struct ClusterNode {
    /// The chat, on the cluster's log and presence.
    pub chat: Arc<Chat<JetStreamLog<Ticket>>>,
    /// Done once the node has applied the log as it was at start.
    pub catch_up: CatchUp,
    /// What a clean shutdown does last.
    pub departure: Departure,
}

/// Leaving the cluster at a clean shutdown.
pub(super) struct Departure(Roster);

impl ClusterNode {
    /// Joins the cluster at `urls` (comma-separated `nats://HOST:PORT`) as
    /// node `node` (the host name without one) with `store` as its copy.
    /// Waits until the engine answers, reporting in `health` meanwhile.
    pub async fn start(
        urls: &str,
        node: Option<&str>,
        store: Store,
        config: ChatConfig,
        health: Arc<Health>,
    ) -> anyhow::Result<ClusterNode> {
        let urls = parse_urls(urls)?;
        let node = match node {
            Some(node) => node.to_owned(),
            None => host_name()?,
        };
        if !is_valid_node_name(&node) {
            bail!("--node {node:?} is not a node name: give 1 to 64 of A-Z a-z 0-9 _ -");
        }
        let engine = ClusterEngine::connect(&urls, &node).await?;
        let (engine_health, _probe) = watch_health(engine.clone());
        tokio::spawn(report_engine(engine_health.clone(), health.clone()));
        let replication = Replication::default();
        let (mut stream, bucket) = loop {
            match ensure(&engine, replication).await {
                Ok(both) => break both,
                Err(err) => {
                    tracing::warn!("cannot set up the cluster's stream and bucket yet: {err}");
                    tokio::time::sleep(START_RETRY).await;
                }
            }
        };
        claim_store(&store, &mut stream).await?;
        let (log, settled, catch_up) = JetStreamLog::start(
            engine.clone(),
            stream,
            store.clone(),
            engine_health,
            health,
            LOG_QUEUE,
        )
        .await
        .context("cannot start following the cluster's log")?;
        let fanout = Arc::new(Fanout::default());
        let roster = Roster::new(bucket, &node);
        let presence = ClusterPresence::start(engine, roster.clone(), fanout.clone());
        tracing::info!("node {node} of the cluster at {}", urls.join(","));
        let chat = Chat::new(log, settled, presence, fanout, store, config);
        Ok(ClusterNode {
            chat,
            catch_up,
            departure: Departure(roster),
        })
    }
}

impl Departure {
    /// A clean shutdown: the node's users leave `online` everywhere now
    /// rather than when its lease runs out.
    pub async fn leave(self) {
        match tokio::time::timeout(RELEASE_TIMEOUT, release(&self.0)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("presence: {err}"),
            Err(_) => tracing::warn!("presence: the lease was not given up in time"),
        }
    }
}

/// The log stream and the presence bucket, created if need be.
async fn ensure(
    engine: &ClusterEngine,
    replication: Replication,
) -> Result<
    (
        async_nats::jetstream::stream::Stream,
        async_nats::jetstream::kv::Store,
    ),
    ClusterError,
> {
    let stream = ensure_log_stream(engine, replication).await?;
    let bucket = ensure_presence_bucket(engine, replication).await?;
    Ok((stream, bucket))
}

/// `nats://h1:4222,nats://h2:4222` as a list, each checked.
fn parse_urls(urls: &str) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        bail!("--cluster needs at least one nats://HOST:PORT");
    }
    for url in &list {
        let rest = url
            .strip_prefix("nats://")
            .or_else(|| url.strip_prefix("tls://"));
        if rest.is_none_or(|hostport| hostport.is_empty() || hostport.contains('/')) {
            bail!("--cluster: {url:?} is not a NATS server address like nats://10.0.0.1:4222");
        }
    }
    Ok(list)
}

/// The host's name up to its first dot: the default node name.
fn host_name() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        bail!("cannot read the host name: give the node a name with --node NAME");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    let name = name.split('.').next().unwrap_or_default();
    if !is_valid_node_name(name) {
        bail!("the host name {name:?} cannot name a node: give one with --node NAME");
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_are_checked() {
        assert_eq!(
            parse_urls("nats://a:4222, nats://b:4222,").unwrap(),
            ["nats://a:4222", "nats://b:4222"]
        );
        for bad in ["", ",", "http://a:4222", "nats://", "a:4222", "nats://a/x"] {
            assert!(parse_urls(bad).is_err(), "{bad:?}");
        }
    }
}
