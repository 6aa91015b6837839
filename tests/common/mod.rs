//! Helpers for tests that drive the real `chatd` binary: start and stop a
//! server, run a command, and a minimal Socket.IO client over a websocket.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The binary under test.
pub const CHATD: &str = env!("CARGO_BIN_EXE_chatd");

/// How long any single wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

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

/// A `chatd run` child process.
pub struct Server {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    /// Its data directory.
    pub data_dir: PathBuf,
    stdout: JoinHandle<Vec<String>>,
    stderr: JoinHandle<String>,
}

/// How a server that never started listening ended.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl Server {
    /// Starts `chatd run --no-tls --no-auth --listen 127.0.0.1:0 --data-dir DIR
    /// EXTRA...` and waits for its `Listening at <port>` line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::try_start(data_dir, extra)
            .unwrap_or_else(|failure| panic!("chatd run did not start: {failure:?}"))
    }

    /// Like [`start`](Self::start), but a server that exits before
    /// listening is an `Err`, not a panic.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Server, StartFailure> {
        let mut child = Command::new(CHATD)
            .args(["run", "--no-tls", "--no-auth", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chatd run");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        // Drain both pipes for the server's whole life: a full pipe would
        // block its console writes.
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        let (port_tx, port_rx) = mpsc::channel();
        let stdout = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("Listening at ") {
                    let _ = port_tx.send(port.trim().parse::<u16>().expect("a port number"));
                }
                lines.push(line);
            }
            lines
        });
        match port_rx.recv_timeout(PATIENCE) {
            Ok(port) => Ok(Server {
                child,
                port,
                data_dir: data_dir.to_owned(),
                stdout,
                stderr,
            }),
            // The stdout reader ended without the line: the server exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("wait for chatd run");
                Err(StartFailure {
                    status,
                    stderr: stderr.join().unwrap_or_default(),
                })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("chatd run did not print `Listening at` in time");
            }
        }
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

    /// Stops the server with SIGTERM and checks that it exits with 0;
    /// returns its console (stdout) lines.
    pub fn stop(mut self) -> Vec<String> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "cannot signal chatd run");
        let status = self.child.wait().expect("wait for chatd run");
        let stderr = self.stderr.join().unwrap_or_default();
        assert_eq!(status.code(), Some(0), "chatd run exited badly: {stderr}");
        self.stdout.join().unwrap_or_default()
    }
}

/// Hands hyper's background futures to tokio.
struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

/// A minimal Socket.IO v5 client on a plain websocket: enough to join as a
/// user and send acknowledged `chat message`s.
pub struct SioClient {
    ws: WebSocket<TokioIo<Upgraded>>,
    next_ack: u64,
    /// The socket id the server gave this connection.
    pub sid: String,
}

impl SioClient {
    /// Connects to `127.0.0.1:port` as `user`, talking to `peer`.
    pub async fn connect(port: u16, user: &str, peer: &str) -> SioClient {
        let mut client = SioClient::open_only(port).await;
        let auth = serde_json::json!({ "user": user, "peer": peer });
        client.send_text(format!("40{auth}")).await;
        let connected = client.next_text().await;
        let body = connected
            .strip_prefix("40")
            .unwrap_or_else(|| panic!("expected CONNECT, got {connected}"));
        let body: Value = serde_json::from_str(body).expect("CONNECT payload is JSON");
        client.sid = body["sid"].as_str().expect("a sid").to_owned();
        client
    }

    /// Opens the Engine.IO session (websocket and open packet) without
    /// joining any Socket.IO namespace.
    pub async fn open_only(port: u16) -> SioClient {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to chatd");
        let request = hyper::Request::builder()
            .method("GET")
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("Host", format!("127.0.0.1:{port}"))
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, request, stream)
            .await
            .expect("websocket handshake");
        let mut client = SioClient {
            ws,
            next_ack: 1,
            sid: String::new(),
        };
        let open = client.next_text().await;
        assert!(
            open.starts_with("0{"),
            "expected the open packet, got {open}"
        );
        client
    }

    /// Sends `text` as a `chat message` with an ack; returns the ack's
    /// payload (`{"ok":true,"message":{...}}` when accepted).
    pub async fn send(&mut self, text: &str) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let args = serde_json::json!(["chat message", text]);
        self.send_text(format!("42{id}{args}")).await;
        self.ack(id).await
    }

    /// Waits for the event `name` and returns its first argument.
    pub async fn event(&mut self, name: &str) -> Value {
        loop {
            let packet = self.next_text().await;
            if let Some(rest) = packet.strip_prefix("42") {
                let args: Value = serde_json::from_str(rest).expect("event args are JSON");
                if args[0] == name {
                    return args[1].clone();
                }
            }
        }
    }

    /// Sends one raw Engine.IO text packet, whatever it holds.
    pub async fn send_packet(&mut self, packet: &str) {
        self.send_text(packet.to_owned()).await;
    }

    /// Sends one raw websocket frame, whatever it holds.
    pub async fn send_frame(&mut self, frame: Frame<'_>) {
        self.ws.write_frame(frame).await.expect("websocket write");
    }

    /// Waits for the acknowledgement `id` and returns its first argument.
    pub async fn ack(&mut self, id: u64) -> Value {
        let prefix = format!("43{id}");
        loop {
            let packet = self.next_text().await;
            if let Some(rest) = packet.strip_prefix(&prefix) {
                let args: Value = serde_json::from_str(rest).expect("ack args are JSON");
                return args[0].clone();
            }
        }
    }

    /// Waits until chatd closes this connection (a close frame or the end of
    /// the stream), answering pings meanwhile; panics if it stays open.
    pub async fn closed_by_server(mut self) {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.read_frame())
                .await
                .expect("chatd closed the connection in time");
            match frame {
                Err(_) => return,
                Ok(frame) if frame.opcode == OpCode::Close => return,
                Ok(frame) if frame.opcode == OpCode::Text && frame.payload.as_ref() == b"2" => {
                    self.send_text("3".into()).await;
                }
                Ok(_) => {}
            }
        }
    }

    /// The next Engine.IO text packet (not a ping), answering pings on the way.
    pub async fn next_text(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.read_frame())
                .await
                .expect("chatd answered in time")
                .expect("a websocket frame");
            match frame.opcode {
                OpCode::Text => {
                    let text = String::from_utf8(frame.payload.to_vec()).expect("UTF-8 text");
                    if text == "2" {
                        self.send_text("3".into()).await;
                        continue;
                    }
                    return text;
                }
                OpCode::Close => panic!("chatd closed the websocket"),
                _ => continue,
            }
        }
    }

    async fn send_text(&mut self, text: String) {
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
            .await
            .expect("websocket write");
    }
}
