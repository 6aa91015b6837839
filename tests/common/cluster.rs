//! chatd nodes of one cluster for tests: `chatd run --cluster` children on
//! loopback ports, each with its own data directory (kept across restarts
//! of the node), on a [`NatsCluster`](super::nats::NatsCluster).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chatd::client::Client;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::raw::http;
use super::{Server, TIMEOUT, chatd_ok};

/// How often a wait polls a node's `/healthz`.
const POLL: Duration = Duration::from_millis(20);

/// One chatd node of a cluster.
pub struct Node {
    /// Its `--node` name.
    pub name: String,
    /// The running process, when it runs.
    pub server: Option<Server>,
    urls: String,
    data_dir: PathBuf,
    _dir: TempDir,
}

impl Node {
    /// Starts node `name` (`--no-tls --no-auth`) on the engine at `urls`
    /// with a fresh data directory; waits until it listens, not until it
    /// is ready (see [`Node::wait_ready`]).
    pub fn start(urls: &str, name: &str) -> Node {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut node = Node {
            name: name.to_owned(),
            server: None,
            urls: urls.to_owned(),
            data_dir: dir.path().join("data"),
            _dir: dir,
        };
        node.start_again();
        node
    }

    /// Starts the node again on its data directory.
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "{} already runs", self.name);
        self.server = Some(Server::start(
            &self.data_dir,
            &["--cluster", &self.urls, "--node", &self.name],
        ));
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the node runs")
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `/healthz`: its status and body.
    pub fn healthz(&self) -> (u16, String) {
        let mut tcp = TcpStream::connect(self.server().addr()).expect("connect to /healthz");
        http(&mut tcp, "GET", "/healthz", "")
    }

    /// Waits until `/healthz` answers 200 (the node caught up); returns
    /// how long that took.
    pub fn wait_ready(&self) -> Duration {
        self.wait_health(|status, _| status == 200)
    }

    /// Waits until `/healthz` answers as `want` says; returns how long
    /// that took.
    pub fn wait_health(&self, want: impl Fn(u16, &str) -> bool) -> Duration {
        let started = Instant::now();
        loop {
            let (status, body) = self.healthz();
            if want(status, &body) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{}: /healthz still {status} {body:?} after {TIMEOUT:?}",
                self.name
            );
            std::thread::sleep(POLL);
        }
    }

    /// `kill -9` of the node.
    pub fn kill(&mut self) {
        let mut server = self.server.take().expect("the node runs");
        server.child.kill().expect("kill -9 chatd");
        server.child.wait().expect("reap chatd");
    }

    /// Stops the node with SIGTERM; it must exit with 0.
    pub fn stop(&mut self) {
        self.server.take().expect("the node runs").stop();
    }

    /// `chatd export --all` of the node's copy (the running node answers).
    pub fn export(&self) -> Vec<Value> {
        let text = chatd_ok(&self.data_dir, &["export", "--all"]);
        serde_json::from_str(&text).expect("export is JSON")
    }

    /// `chatd online --json` on this node.
    pub fn online(&self) -> Value {
        let text = chatd_ok(&self.data_dir, &["online", "--json"]);
        serde_json::from_str(&text).expect("online --json is JSON")
    }

    /// Connects `user` to `peer` on this node.
    pub async fn connect(&self, user: &str, peer: &str) -> Client {
        self.connect_with(json!({"user": user, "peer": peer})).await
    }

    /// Connects with `auth` as the handshake.
    pub async fn connect_with(&self, auth: Value) -> Client {
        Client::connect_plain(self.server().addr(), auth)
            .await
            .expect("connect")
    }
}

/// Waits until every node's export is the same as `nodes[0]`'s, and
/// returns it. Nodes apply the log at their own pace: a node may be a
/// moment behind the one that answered a client.
pub fn equal_exports(nodes: &[&Node]) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let first = nodes[0].export();
        let others: Vec<Vec<Value>> = nodes[1..].iter().map(|node| node.export()).collect();
        if others.iter().all(|other| *other == first) {
            return first;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "exports still differ after {TIMEOUT:?}: {} vs {:?}",
            first.len(),
            others.iter().map(Vec::len).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
