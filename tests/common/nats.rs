//! A real NATS JetStream cluster for tests: three `nats-server` processes
//! on free loopback ports, each with its own temporary store directory,
//! configured as `chatd run --cluster` expects its engine
//! (`sync_interval: always`).
//!
//! The harness waits for the cluster to be usable (every server healthy,
//! one meta leader that all of them agree on), can `kill -9` a server and
//! start it again on the same ports and store, finds a stream's leader, and
//! stops every server it started by its PID when dropped, so a failing test
//! leaves nothing behind.
//!
//! The binary is `$NATS_SERVER`, else what `scripts/install-nats.sh`
//! installs (it is run once per test binary; it only prints the path when
//! the pinned version is already there).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::TIMEOUT;

/// How often a wait polls a server's monitoring endpoint.
const POLL: Duration = Duration::from_millis(50);

/// The `nats-server` binary the tests run.
pub fn nats_server() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("NATS_SERVER") {
            return PathBuf::from(bin);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-nats.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("cannot run scripts/install-nats.sh");
        assert!(out.status.success(), "scripts/install-nats.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
    })
}

/// One server of the cluster.
struct NatsServer {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running JetStream cluster of three servers on loopback.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts three servers and waits until the cluster has a meta leader.
    ///
    /// A port can still be taken between the check and the server's bind
    /// (by anything else on the machine); a server that exits while the
    /// cluster forms is retried with fresh ports, up to three times.
    pub fn start() -> NatsCluster {
        let mut attempt = 1;
        loop {
            let mut cluster = NatsCluster::configure();
            for i in 0..cluster.servers.len() {
                cluster.start_again(i);
            }
            match cluster.try_wait_ready() {
                Ok(()) => return cluster,
                Err(why) if attempt < 3 => {
                    eprintln!("nats cluster, attempt {attempt}: {why}; again on new ports");
                    attempt += 1;
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    /// Writes the configuration of three servers on fresh ports.
    fn configure() -> NatsCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports: Vec<[u16; 3]> = (0..3)
            .map(|_| [free_port(), free_port(), free_port()])
            .collect();
        let routes = ports
            .iter()
            .map(|[_, cluster, _]| format!("nats-route://127.0.0.1:{cluster}"))
            .collect::<Vec<_>>()
            .join(", ");
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, &[client_port, cluster_port, monitor_port])| {
                let name = format!("n{}", i + 1);
                let store = dir.path().join(&name);
                let config = dir.path().join(format!("{name}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\n\
                         listen: 127.0.0.1:{client_port}\n\
                         http: 127.0.0.1:{monitor_port}\n\
                         jetstream {{ store_dir: \"{store}\", sync_interval: always }}\n\
                         cluster {{ name: chatd-test, listen: 127.0.0.1:{cluster_port}, routes: [{routes}] }}\n",
                        store = store.display(),
                    ),
                )
                .expect("write nats-server config");
                NatsServer {
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port,
                    monitor_port,
                    config,
                    child: None,
                }
            })
            .collect();
        NatsCluster { servers, _dir: dir }
    }

    /// `nats://127.0.0.1:P1,nats://127.0.0.1:P2,...`, as `--cluster` takes it.
    pub fn urls(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// The index of the server named `name` (`n1`, `n2`, `n3`).
    pub fn index_of(&self, name: &str) -> usize {
        self.servers
            .iter()
            .position(|server| server.name == name)
            .unwrap_or_else(|| panic!("no server named {name}"))
    }

    /// Kills server `i` with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, libc::SIGKILL);
    }

    /// Stops server `i` with SIGTERM (a clean shutdown) and reaps it.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGTERM);
    }

    fn signal(&mut self, i: usize, signal: i32) {
        let mut child = self.servers[i].child.take().expect("server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own, not yet reaped child: the pid is still ours.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "cannot signal nats-server {}", self.servers[i].name);
        child.wait().expect("reap nats-server");
    }

    /// Starts server `i` again on its ports and store, and waits until the
    /// cluster is whole again.
    pub fn restart(&mut self, i: usize) {
        self.start_again(i);
        self.wait_ready();
    }

    /// Whether server `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].child.is_some()
    }

    /// Starts server `i` again without waiting for anything (to bring back
    /// several at once; then [`wait_ready`](Self::wait_ready)).
    pub fn start_again(&mut self, i: usize) {
        let server = &mut self.servers[i];
        assert!(server.child.is_none(), "{} already runs", server.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&server.log)
            .expect("open nats-server log");
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        server.child = Some(child);
    }

    /// Waits until every running server is healthy and they all name the
    /// same meta leader (so JetStream API requests are answered).
    pub fn wait_ready(&mut self) {
        if let Err(why) = self.try_wait_ready() {
            panic!("{why}");
        }
    }

    /// [`wait_ready`](Self::wait_ready), answering why not (a server
    /// exited, or no common meta leader in time) with the servers' logs.
    fn try_wait_ready(&mut self) -> Result<(), String> {
        let running: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.is_running(i))
            .collect();
        let what = "a meta leader known to every running server";
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut leaders = running.iter().map(|&i| {
                let healthy = self.monitor(i, "/healthz")?["status"] == "ok";
                let jsz = self.monitor(i, "/jsz")?;
                let leader = jsz["meta_cluster"]["leader"].as_str()?.to_owned();
                (healthy && !leader.is_empty()).then_some(leader)
            });
            if let Some(Some(first)) = leaders.next()
                && leaders.all(|leader| leader.as_deref() == Some(&first))
            {
                return Ok(());
            }
            for &i in &running {
                let server = &mut self.servers[i];
                let child = server.child.as_mut().expect("server is running");
                if let Ok(Some(status)) = child.try_wait() {
                    server.child = None;
                    let name = server.name.clone();
                    return Err(format!(
                        "{name} exited ({status}) before {what}\n{}",
                        self.logs()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no {what} within {TIMEOUT:?}\n{}", self.logs()));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The index of the server that leads stream `stream`, once a running
    /// server does and the replicas on the other running servers are current.
    pub fn stream_leader(&mut self, stream: &str) -> usize {
        self.wait_for(&format!("a leader of stream {stream}"), |cluster| {
            let running = |name: &str| {
                cluster
                    .servers
                    .iter()
                    .any(|server| server.name == name && server.child.is_some())
            };
            (0..cluster.servers.len())
                .filter(|&i| cluster.is_running(i))
                .find_map(|i| {
                    let jsz = cluster.monitor(i, "/jsz?streams=true")?;
                    let detail = jsz["account_details"]
                        .as_array()?
                        .iter()
                        .flat_map(|account| {
                            account["stream_detail"].as_array().into_iter().flatten()
                        })
                        .find(|detail| detail["name"] == stream)?;
                    let leader = detail["cluster"]["leader"].as_str()?;
                    let current = detail["cluster"]["replicas"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|replica| replica["name"].as_str().is_some_and(running))
                        .all(|replica| replica["current"] == true);
                    (running(leader) && current).then(|| cluster.index_of(leader))
                })
        })
    }

    /// Polls `probe` until it answers, failing the test with the servers'
    /// logs after [`TIMEOUT`].
    fn wait_for<T>(&self, what: &str, mut probe: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(answer) = probe(self) {
                return answer;
            }
            if Instant::now() > deadline {
                panic!("no {what} within {TIMEOUT:?}\n{}", self.logs());
            }
            std::thread::sleep(POLL);
        }
    }

    /// GETs `path` from server `i`'s monitoring port as JSON; `None` when it
    /// does not answer (yet).
    fn monitor(&self, i: usize, path: &str) -> Option<Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.servers[i].monitor_port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// The tail of every server's log, for failure messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|server| {
                let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                format!("----- {} -----\n{tail}", server.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                // Child::kill is kill(2) with SIGKILL on the child's own pid.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A loopback port nothing listens on right now, below Linux's ephemeral
/// range (32768 and up): a port the kernel handed out for `:0` can be taken
/// as the local port of some outgoing connection (the servers' own routes)
/// before the server binds it, and the server then exits. Ports come from
/// one sequence per test process, so clusters of tests running side by
/// side never pick the same one.
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LOW: u16 = 10_000;
    const SPAN: u16 = 22_000;
    // Each test binary starts at its own random offset into the range.
    let _ = NEXT.compare_exchange(
        0,
        rand::random::<u16>() % SPAN + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
