//! systemd's service notification protocol (`sd_notify`): `READY=1` once
//! the server listens, `STOPPING=1` when it shuts down, and `WATCHDOG=1`
//! pings while it runs, as `Type=notify` with `WatchdogSec=` expects.
//!
//! Written here rather than taken from a crate: it is one datagram of
//! `KEY=VALUE` lines to the Unix socket named by `$NOTIFY_SOCKET`, and the
//! only subtlety is the abstract-namespace form (`@name`).

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use crate::health::Health;

/// A connection to the service manager, or nothing when not run by one.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Uses `$NOTIFY_SOCKET` if set. A socket that cannot be used is logged
    /// and ignored: chatd still serves, and systemd reports the start as
    /// failed or timed out, which points at the problem.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        Notifier::to(&path).unwrap_or_else(|error| {
            tracing::warn!(%error, socket = ?path, "cannot use NOTIFY_SOCKET");
            Notifier { target: None }
        })
    }

    /// Notifies the socket at `path`: a file system path, or `@name` for
    /// an abstract-namespace socket.
    fn to(path: &OsStr) -> io::Result<Notifier> {
        let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        // Sends happen on the runtime: a service manager that is slow to
        // read costs a logged, dropped notification, never a blocked worker.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some((socket, addr)),
        })
    }

    /// Tells the service manager the server is listening.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=listening");
    }

    /// Tells the service manager the server is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=shutting down");
    }

    /// Pings the service manager's watchdog every half `WATCHDOG_USEC` from a
    /// task on the runtime, so a wedged runtime stops the pings and systemd
    /// restarts the service; so does a node that has been failing (see
    /// [`Health`]) for longer than [`GIVE_UP_AFTER`] without recovering by
    /// itself. Does nothing unless the watchdog is on for this process.
    pub fn spawn_watchdog(self: &Arc<Self>, health: Arc<Health>) {
        let Some(period) = watchdog_period() else {
            return;
        };
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut starved = false;
            loop {
                tick.tick().await;
                let give_up = health.failing_for().is_some_and(|d| d > GIVE_UP_AFTER);
                if give_up && !starved {
                    tracing::error!(
                        "failing for more than {} s without recovering: no more watchdog pings, \
                         so the service manager restarts chatd",
                        GIVE_UP_AFTER.as_secs()
                    );
                }
                starved = give_up;
                if !give_up {
                    notifier.send("WATCHDOG=1");
                }
            }
        });
    }

    fn send(&self, state: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(state.as_bytes(), addr) {
            tracing::warn!(%error, state, "cannot notify the service manager");
        }
    }
}

/// How long a failing node keeps feeding the watchdog while it tries to
/// recover by itself.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// Half the watchdog timeout systemd set for this process, if any.
fn watchdog_period() -> Option<Duration> {
    // WATCHDOG_PID, when present, names the process meant: not a child
    // that inherited the environment.
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str()?.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// The path form is exercised end to end by `tests/lifecycle.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_socket_receives_the_datagram() -> io::Result<()> {
        let name = format!("chatd-notify-test-{}", std::process::id());
        let server = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        Notifier::to(OsStr::new(&format!("@{name}")))?.ready();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=listening");
        Ok(())
    }
}
