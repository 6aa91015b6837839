//! `chatd bench`: load scenarios, one sub-subcommand each (see
//! [`crate::bench`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use argh::FromArgs;

use crate::bench::connect::{self, ConnectConfig};
use crate::bench::idle::{self, IdleConfig};
use crate::bench::pairs::{self, Load, PairsConfig};
use crate::bench::store::{self, InboxConfig, StoreConfig};
use crate::bench::target::Target;
use crate::bench::{Report, proc};

/// Measure a server (or the store) under load; prints a table, or JSON.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "bench")]
pub struct BenchCommand {
    #[argh(subcommand)]
    scenario: Scenario,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Scenario {
    Pairs(PairsCommand),
    Idle(IdleCommand),
    Connect(ConnectCommand),
    Store(StoreCommand),
}

impl BenchCommand {
    /// Runs the scenario and prints its report.
    pub fn execute(self) -> anyhow::Result<()> {
        // As many connections as the hard limit allows, before any opens.
        proc::raise_open_file_limit()?;
        // One worker per core this process may use: under `taskset -c 1`
        // that is one, and no time goes to moving tasks between threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let (report, json) = match self.scenario {
            Scenario::Pairs(command) => (runtime.block_on(command.run())?, command.json),
            Scenario::Idle(command) => (runtime.block_on(command.run())?, command.json),
            Scenario::Connect(command) => (runtime.block_on(command.run())?, command.json),
            Scenario::Store(command) => (runtime.block_on(command.run())?, command.json),
        };
        report.print(json);
        Ok(())
    }
}

/// Pairs of users chatting in DM rooms: delivered messages/s, end-to-end and ack latency, losses.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "pairs")]
pub struct PairsCommand {
    /// the server, ws://host:port or wss://host:port; repeat it for a cluster's nodes: connections go to them in turn, so a pair's two users are on different nodes
    #[argh(option)]
    url: Vec<String>,
    /// pairs of users, two connections each (default 100)
    #[argh(option, default = "100")]
    pairs: usize,
    /// messages per second each side sends, evenly spaced (default 20)
    #[argh(option)]
    rate: Option<f64>,
    /// send the next message as soon as the previous one is acknowledged, instead of at --rate
    #[argh(switch)]
    closed_loop: bool,
    /// seconds measured, after the warm-up (default 10)
    #[argh(option, default = "Duration::from_secs(10)", from_str_fn(seconds))]
    duration: Duration,
    /// seconds of load before measuring starts (default 2)
    #[argh(option, default = "Duration::from_secs(2)", from_str_fn(seconds))]
    warmup: Duration,
    /// bytes of text per message (default 100)
    #[argh(option, default = "100")]
    size: usize,
    /// the server's token secret file, to mint tokens with
    #[argh(option)]
    token_secret: Option<PathBuf>,
    /// connect without tokens, to a server running --no-auth
    #[argh(switch)]
    no_auth: bool,
    /// for wss://: PEM certificate to trust
    #[argh(option)]
    ca: Option<PathBuf>,
    /// for wss://: accept any certificate
    #[argh(switch)]
    insecure: bool,
    /// the server's pid: report its CPU time per 100k delivered messages
    #[argh(option)]
    server_pid: Option<u32>,
    /// print one JSON object instead of a table
    #[argh(switch)]
    json: bool,
}

impl PairsCommand {
    async fn run(&self) -> anyhow::Result<Report> {
        let load = match (self.rate, self.closed_loop) {
            (Some(_), true) => bail!("--rate and --closed-loop exclude each other"),
            (None, true) => Load::Closed,
            (Some(rate), false) if !(rate > 0.0 && rate.is_finite()) => {
                bail!("--rate must be a positive number of messages per second")
            }
            (rate, false) => Load::Open {
                rate: rate.unwrap_or(20.0),
            },
        };
        if self.pairs == 0 {
            bail!("--pairs must be at least 1");
        }
        let target = Target::new(
            &self.url,
            self.token_secret.as_deref(),
            self.no_auth,
            self.ca.as_deref(),
            self.insecure,
        )?;
        let config = PairsConfig {
            pairs: self.pairs,
            load,
            duration: self.duration,
            warmup: self.warmup,
            size: self.size,
            server_pid: self.server_pid,
        };
        pairs::run(&target, &config).await
    }
}

/// Connections held open doing nothing: the server's resident memory per connection.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "idle")]
pub struct IdleCommand {
    /// the server, ws://host:port or wss://host:port
    #[argh(option)]
    url: String,
    /// connections to hold
    #[argh(option)]
    connections: usize,
    /// seconds to hold them once all are connected
    #[argh(option, from_str_fn(seconds))]
    duration: Duration,
    /// the server's token secret file, to mint tokens with
    #[argh(option)]
    token_secret: Option<PathBuf>,
    /// connect without tokens, to a server running --no-auth
    #[argh(switch)]
    no_auth: bool,
    /// for wss://: PEM certificate to trust
    #[argh(option)]
    ca: Option<PathBuf>,
    /// for wss://: accept any certificate
    #[argh(switch)]
    insecure: bool,
    /// the server's pid: report its RSS per connection above its RSS before connecting
    #[argh(option)]
    server_pid: Option<u32>,
    /// print one JSON object instead of a table
    #[argh(switch)]
    json: bool,
}

impl IdleCommand {
    async fn run(&self) -> anyhow::Result<Report> {
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        let target = Target::new(
            std::slice::from_ref(&self.url),
            self.token_secret.as_deref(),
            self.no_auth,
            self.ca.as_deref(),
            self.insecure,
        )?;
        let config = IdleConfig {
            connections: self.connections,
            duration: self.duration,
            server_pid: self.server_pid,
        };
        idle::run(&target, &config).await
    }
}

/// Full handshakes (TCP, TLS, upgrade, CONNECT with a token): rate, latency, server CPU per handshake.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "connect")]
pub struct ConnectCommand {
    /// the server, ws://host:port or wss://host:port
    #[argh(option)]
    url: String,
    /// handshakes in all (default 1000)
    #[argh(option, default = "1000")]
    connections: usize,
    /// handshakes in flight at once (default 16)
    #[argh(option, default = "16")]
    concurrency: usize,
    /// the server's token secret file, to mint tokens with
    #[argh(option)]
    token_secret: Option<PathBuf>,
    /// connect without tokens, to a server running --no-auth
    #[argh(switch)]
    no_auth: bool,
    /// for wss://: PEM certificate to trust
    #[argh(option)]
    ca: Option<PathBuf>,
    /// for wss://: accept any certificate
    #[argh(switch)]
    insecure: bool,
    /// the server's pid: report its CPU time per handshake
    #[argh(option)]
    server_pid: Option<u32>,
    /// print one JSON object instead of a table
    #[argh(switch)]
    json: bool,
}

impl ConnectCommand {
    async fn run(&self) -> anyhow::Result<Report> {
        if self.connections == 0 || self.concurrency == 0 {
            bail!("--connections and --concurrency must be at least 1");
        }
        let target = Target::new(
            std::slice::from_ref(&self.url),
            self.token_secret.as_deref(),
            self.no_auth,
            self.ca.as_deref(),
            self.insecure,
        )?;
        let config = ConnectConfig {
            connections: self.connections,
            concurrency: self.concurrency,
            server_pid: self.server_pid,
        };
        connect::run(&target, &config).await
    }
}

/// The store alone, on a temporary data directory: durable inserts/s through the applier, bytes on disk per message once settled, resident memory, export/s, reopen time; with --inbox, conversations and read at scale.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "store")]
pub struct StoreCommand {
    /// messages to insert (default 200000)
    #[argh(option, default = "200_000")]
    messages: u64,
    /// rooms to spread them over (default 1000)
    #[argh(option, default = "1000")]
    rooms: u64,
    /// bytes of text per message (default: about 57)
    #[argh(option)]
    text_bytes: Option<usize>,
    /// run the inbox scenario instead: a room of --room-messages with 3
    /// unread, a user of --conversations rooms
    #[argh(switch)]
    inbox: bool,
    /// messages in the inbox scenario's big room (default 1000000)
    #[argh(option, default = "1_000_000")]
    room_messages: u64,
    /// rooms of the inbox scenario's busy user (default 10000)
    #[argh(option, default = "10_000")]
    conversations: u64,
    /// print one JSON object instead of a table
    #[argh(switch)]
    json: bool,
}

impl StoreCommand {
    async fn run(&self) -> anyhow::Result<Report> {
        if self.inbox {
            let config = InboxConfig {
                room_messages: self.room_messages,
                conversations: self.conversations,
                samples: 200,
            };
            return store::inbox(&config).await;
        }
        let config = StoreConfig {
            messages: self.messages,
            rooms: self.rooms,
            text_bytes: self.text_bytes,
        };
        store::run(&config).await
    }
}

/// Parses a number of seconds, e.g. `10` or `0.5`.
fn seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("expected a positive number of seconds, got {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BenchCommand, String> {
        BenchCommand::from_args(&["bench"], args).map_err(|e| e.output)
    }

    #[test]
    fn parses_scenarios() {
        let command = parse(&[
            "pairs",
            "--url",
            "ws://h:1",
            "--closed-loop",
            "--duration",
            "0.5",
        ]);
        let Scenario::Pairs(pairs) = command.unwrap().scenario else {
            panic!("expected pairs");
        };
        assert!(pairs.closed_loop);
        assert_eq!(pairs.duration, Duration::from_millis(500));
        assert_eq!(pairs.pairs, 100);
        let err = parse(&[
            "idle",
            "--url",
            "ws://h:1",
            "--connections",
            "5",
            "--duration",
            "0",
        ]);
        assert!(err.unwrap_err().contains("positive number of seconds"));
        assert!(parse(&["store", "--messages", "10", "--json"]).is_ok());
        assert!(parse(&["connect", "--url", "ws://h:1"]).is_ok());
    }
}
