//! Runs the real `chatd` binary as a child process, the way a service
//! manager does, for the operations tests: its console port from stdout,
//! its log lines from stderr, signals, and its exit status.

use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long any one awaited event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Awaits `future`, failing the test with `what` if it takes too long.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A running `chatd run`.
pub struct Chatd {
    child: Child,
    /// The port from the console's `Listening at PORT` line.
    pub port: u16,
    logs: mpsc::UnboundedReceiver<String>,
}

impl Chatd {
    /// Starts `chatd run ARGS` with `envs` added to its environment, and
    /// waits until it announces its port.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Chatd {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("run")
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "chatd=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start chatd");

        // Forward stderr, line by line, to the test (and to its output, which
        // cargo shows when a test fails).
        let (tx, logs) = mpsc::unbounded_channel();
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("chatd: {line}");
                let _ = tx.send(line);
            }
        });

        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = within("Listening at", async {
            loop {
                let line = stdout
                    .next_line()
                    .await
                    .expect("reading chatd's stdout")
                    .expect("chatd exited before listening");
                if let Some(port) = line.strip_prefix("Listening at ") {
                    return port.parse().expect("a port number");
                }
            }
        })
        .await;
        // Keep draining the console so chatd never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Chatd { child, port, logs }
    }

    /// Waits for a log line containing `needle`, and returns it.
    pub async fn log_line(&mut self, needle: &str) -> String {
        within(&format!("a log line with {needle:?}"), async {
            loop {
                let line = self.logs.recv().await.expect("chatd closed stderr");
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("chatd is running") as i32;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        within("chatd to exit", self.child.wait())
            .await
            .expect("waiting for chatd")
    }
}
