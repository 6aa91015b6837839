//! Helpers for tests that drive the real `chatd` binary: a server on a
//! loopback port, commands run to completion, waiting for the lines a
//! process prints, and clients (the project's own, and a raw one for
//! sending what no real client would).
//!
//! Nothing here sleeps: every wait is for a line, an event or the end of
//! the output, with a timeout.

#![allow(dead_code)] // Each test binary uses its own subset.

pub mod cluster;
pub mod nats;
pub mod raw;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use chatd::client::{Client, ClientEvent, ConnectOptions, RawArgs, tls};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The binary under test.
pub const CHATD: &str = env!("CARGO_BIN_EXE_chatd");

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `chatd ARGS... --data-dir DIR` to completion.
pub fn chatd(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(CHATD)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run chatd")
}

/// Stdout of a command that must succeed.
pub fn chatd_ok(data_dir: &Path, args: &[&str]) -> String {
    let out = chatd(data_dir, args);
    assert!(
        out.status.success(),
        "chatd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Stderr of a command that must fail.
pub fn chatd_err(data_dir: &Path, args: &[&str]) -> String {
    let out = chatd(data_dir, args);
    assert!(
        !out.status.success(),
        "chatd {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("stderr is UTF-8")
}

/// The lines a child process prints, read on a thread so a wait can time out.
pub struct Lines {
    lines: mpsc::Receiver<String>,
    /// Every line taken so far, for failure messages.
    seen: Vec<String>,
}

impl Lines {
    /// Starts reading `output` line by line.
    pub fn new(output: impl Read + Send + 'static) -> Lines {
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line; `None` when the output has ended.
    pub fn next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no line within {TIMEOUT:?}; seen so far: {:#?}", self.seen)
            }
        }
    }

    /// Skips lines until one equal to `expected`.
    pub fn wait_for_line(&mut self, expected: &str) {
        self.wait_for(expected, |line| line == expected);
    }

    /// Skips lines until one `matches`, and returns it; `what` names it in
    /// failure messages.
    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.next_line() {
                Some(line) if matches(&line) => return line,
                Some(_) => {}
                None => panic!("output ended before {what:?}; seen: {:#?}", self.seen),
            }
        }
        panic!("no {what:?} within {TIMEOUT:?}; seen: {:#?}", self.seen)
    }

    /// How many lines were taken so far.
    pub fn taken(&self) -> usize {
        self.seen.len()
    }

    /// Every remaining line, up to the end of the output.
    pub fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_line()).collect()
    }

    /// The last `n` lines of the whole output, taken or not, for a failing
    /// test's report; never panics (it runs while a test panics).
    fn last(&mut self, n: usize) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        self.seen[self.seen.len().saturating_sub(n)..].to_vec()
    }
}

/// A `chatd run` child process on a loopback port.
pub struct Server {
    /// The port it listens on.
    pub port: u16,
    /// Its data directory (history, secret, generated certificate).
    pub data_dir: PathBuf,
    /// The process.
    pub child: Child,
    console: Lines,
    logs: Lines,
    _dir: Option<TempDir>,
}

/// How a server that never started listening ended.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Starts `chatd run` with TLS and auth on (the defaults) on a fresh data
/// directory, with `ARGS...` added.
pub fn start_server(args: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join("data");
    let mut server = Server::spawn(&data_dir, args, &[]);
    server._dir = Some(dir);
    server
}

impl Server {
    /// Starts `chatd run --no-tls --no-auth` on `data_dir` with `EXTRA...`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::try_start(data_dir, extra)
            .unwrap_or_else(|failure| panic!("chatd run did not start: {failure:?}"))
    }

    /// Like [`start`](Self::start), but a server that exits before
    /// listening is an `Err`, not a panic.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Server, StartFailure> {
        Server::launch(
            data_dir,
            &[&["--no-tls", "--no-auth"][..], extra].concat(),
            &[],
        )
    }

    /// Starts `chatd run --listen 127.0.0.1:0 --data-dir DIR ARGS...` with
    /// `envs` added to its environment, as a service manager would.
    pub fn spawn(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        Server::launch(data_dir, args, envs)
            .unwrap_or_else(|failure| panic!("chatd run did not start: {failure:?}"))
    }

    /// Like [`try_start`](Self::try_start) with TLS and auth on, run under
    /// `umask` (through `sh`, as a login shell's setting would be).
    pub fn try_spawn_under_umask(
        data_dir: &Path,
        umask: &str,
        args: &[&str],
    ) -> Result<Server, StartFailure> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(CHATD);
        Server::launch_with(command, data_dir, args, &[])
    }

    fn launch(
        data_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Server, StartFailure> {
        Server::launch_with(Command::new(CHATD), data_dir, args, envs)
    }

    /// Runs `command` (chatd, or something that execs it) with `run` and
    /// the arguments appended.
    fn launch_with(
        mut command: Command,
        data_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Server, StartFailure> {
        let mut child = command
            .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "chatd=info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chatd run");
        // Both pipes are drained for the server's whole life: a full pipe
        // would block it.
        let mut logs = Lines::new(child.stderr.take().expect("piped stderr"));
        let mut console = Lines::new(child.stdout.take().expect("piped stdout"));
        let Some(line) = console.next_line() else {
            let status = child.wait().expect("wait for chatd run");
            return Err(StartFailure {
                status,
                stderr: logs.rest().join("\n"),
            });
        };
        let port = line
            .strip_prefix("Listening at ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("expected `Listening at N`, got {line:?}"));
        Ok(Server {
            port,
            data_dir: data_dir.to_owned(),
            child,
            console,
            logs,
            _dir: None,
        })
    }

    /// Waits for a log line (stderr) containing `needle`, and returns it.
    pub fn log_line(&mut self, needle: &str) -> String {
        self.logs.wait_for(needle, |line| line.contains(needle))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the server.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "cannot signal chatd run");
    }

    /// Skips console lines until one equal to `expected`.
    pub fn wait_for_line(&mut self, expected: &str) {
        self.console.wait_for_line(expected);
    }

    /// The console (stdout) lines read so far, `Listening at` included.
    pub fn console_lines_taken(&self) -> usize {
        self.console.taken()
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `wss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("wss://127.0.0.1:{}", self.port)
    }

    /// The self-signed certificate the server generated and serves.
    pub fn cert(&self) -> PathBuf {
        chatd::server::tls::self_signed_paths(&self.data_dir).0
    }

    /// A token for `user` signed with the server's secret.
    pub fn token(&self, user: &str) -> String {
        chatd::cli::token::mint_token(user, Duration::from_secs(3600), Some(&self.data_dir), None)
            .expect("mint a token")
    }

    /// Client options that trust the server's certificate.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            tls: Some(tls::trusting(&self.cert()).expect("trust the server's certificate")),
            ..ConnectOptions::default()
        }
    }

    /// Connects `user` to `peer` with a valid token over verified TLS.
    pub async fn connect(&self, user: &str, peer: &str) -> Client {
        let auth = json!({"user": user, "peer": peer, "token": self.token(user)});
        Client::connect(&self.url(), auth, &self.options())
            .await
            .expect("connect")
    }

    /// Connects `user` to `peer` on a `--no-tls --no-auth` server.
    pub async fn connect_plain(&self, user: &str, peer: &str) -> Client {
        Client::connect_plain(self.addr(), json!({"user": user, "peer": peer}))
            .await
            .expect("connect")
    }

    /// The server's resident memory, from /proc, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status of chatd");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    /// Stops the server with SIGTERM, checks that it exits with 0, and
    /// returns every console line it printed.
    pub fn stop(self) -> Vec<String> {
        self.stop_with_output().0
    }

    /// Like [`stop`](Self::stop), but returns every log line (stderr).
    pub fn stop_with_logs(self) -> Vec<String> {
        self.stop_with_output().1
    }

    // Every console line and every log line, once the server exited with 0.
    fn stop_with_output(mut self) -> (Vec<String>, Vec<String>) {
        self.signal(libc::SIGTERM);
        // Its stdout closes when it exits: wait for that, with a timeout.
        self.console.rest();
        let status = self.child.wait().expect("wait for chatd run");
        self.logs.rest();
        let logs = std::mem::take(&mut self.logs.seen);
        assert_eq!(
            status.code(),
            Some(0),
            "chatd run exited badly: {}",
            logs.join("\n")
        );
        (std::mem::take(&mut self.console.seen), logs)
    }
}

/// Awaits `future`, failing the test with `what` if it takes too long.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test must not leave a server behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what the server logged.
        if std::thread::panicking() {
            eprintln!(
                "----- chatd on port {} logged (last lines) -----\n{}",
                self.port,
                self.logs.last(80).join("\n")
            );
        }
    }
}

/// The next event of `client`, which must be named `name`; returns its
/// first argument.
pub async fn expect_event(client: &mut Client, name: &str) -> Value {
    let ClientEvent { name: got, args } = next_event(client).await;
    assert_eq!(got, name, "unexpected event with {args:?}");
    first(args)
}

/// Skips events until one named `name`; returns its first argument.
pub async fn wait_for_event(client: &mut Client, name: &str) -> Value {
    loop {
        let ClientEvent { name: got, args } = next_event(client).await;
        if got == name {
            return first(args);
        }
    }
}

/// Alice and Bob (on a `--no-tls --no-auth` server) still exchange a
/// message: the server carries on whatever another client did.
pub async fn bystanders_still_chat(server: &Server) {
    let alice = server.connect_plain("Alice", "Bob").await;
    let mut bob = server.connect_plain("Bob", "Alice").await;
    let ack = send(&alice, "still here?").await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        wait_for_event(&mut bob, "chat message").await["text"],
        "still here?"
    );
}

/// Sends a `chat message` with an ack and returns the ack's payload.
pub async fn send(client: &Client, text: &str) -> Value {
    let ack = client
        .emit_with_ack("chat message", json!(text))
        .await
        .expect("send")
        .await
        .expect("ack");
    first(ack)
}

async fn next_event(client: &mut Client) -> ClientEvent {
    tokio::time::timeout(TIMEOUT, client.next_event())
        .await
        .unwrap_or_else(|_| panic!("no event within {TIMEOUT:?}"))
        .unwrap_or_else(|| panic!("the connection ended while an event was awaited"))
}

fn first(args: RawArgs) -> Value {
    args.first().expect("the arguments are JSON")
}
