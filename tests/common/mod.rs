//! Helpers for tests that drive the real `chatd` binary: a server on a fresh
//! data directory, and waiting for the lines a process prints.
//!
//! Nothing here sleeps: every wait is for a line (or the end of the output)
//! with a timeout.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use chatd::client::{Client, ConnectOptions, Event, tls};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The binary under test.
pub const CHATD: &str = env!("CARGO_BIN_EXE_chatd");

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

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
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.next_line() {
                Some(line) if line == expected => return,
                Some(_) => {}
                None => panic!("output ended before {expected:?}; seen: {:#?}", self.seen),
            }
        }
        panic!("no {expected:?} within {TIMEOUT:?}; seen: {:#?}", self.seen)
    }

    /// Every remaining line, up to the end of the output.
    pub fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_line()).collect()
    }
}

/// A `chatd run` on a fresh data directory, TLS and auth on (the defaults).
pub struct TestServer {
    /// The port it listens on (loopback).
    pub port: u16,
    /// Its data directory (secret, generated certificate, history).
    pub data_dir: PathBuf,
    /// The process.
    pub child: Child,
    console: Lines,
    _dir: TempDir,
}

/// Starts `chatd run --listen 127.0.0.1:0 --data-dir <fresh dir> ARGS...`
/// and waits for its `Listening at N` line.
pub fn start_server(args: &[&str]) -> TestServer {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join("data");
    let mut child = Command::new(CHATD)
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .args(args)
        // Warnings only: info logs would flood the test output.
        .env("RUST_LOG", "chatd=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start chatd run");
    let mut console = Lines::new(child.stdout.take().expect("piped stdout"));
    let line = console
        .next_line()
        .expect("chatd run exited before listening");
    let port = line
        .strip_prefix("Listening at ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("expected `Listening at N`, got {line:?}"));
    TestServer {
        port,
        data_dir,
        child,
        console,
        _dir: dir,
    }
}

impl TestServer {
    /// Skips console lines until one equal to `expected`.
    pub fn wait_for_line(&mut self, expected: &str) {
        self.console.wait_for_line(expected);
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

    /// Stops the server with SIGTERM and checks that it exits with 0.
    pub fn stop(mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "cannot signal chatd run"
        );
        // Its stdout closes when it exits: wait for that, with a timeout.
        self.console.rest();
        let status = self.child.wait().expect("wait for chatd run");
        assert!(status.success(), "chatd run exited with {status}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A failed test must not leave a server behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The next event of `client`, which must be named `name`; returns its
/// first argument.
pub async fn expect_event(client: &mut Client, name: &str) -> Value {
    let event = tokio::time::timeout(TIMEOUT, client.next_event())
        .await
        .unwrap_or_else(|_| panic!("no {name:?} event within {TIMEOUT:?}"))
        .unwrap_or_else(|| panic!("the connection ended before a {name:?} event"));
    let Event {
        name: got,
        mut args,
    } = event;
    assert_eq!(got, name, "unexpected event with {args:?}");
    if args.is_empty() {
        Value::Null
    } else {
        args.swap_remove(0)
    }
}
