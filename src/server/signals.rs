//! The process signals `chatd run` acts on: SIGTERM and SIGINT stop it,
//! SIGHUP reloads its TLS certificate (what `systemctl reload` sends).

use anyhow::Context;
use tokio::signal::unix::{Signal as Watch, SignalKind, signal};

/// What a received signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the certificate and go on serving.
    Reload,
    /// SIGTERM or SIGINT (named): shut down gracefully.
    Stop(&'static str),
}

/// Installed signal handlers.
pub struct Signals {
    term: Watch,
    int: Watch,
    hup: Watch,
}

impl Signals {
    /// Installs the handlers. Do it before announcing readiness: until then
    /// a SIGTERM kills the process and a SIGHUP, whose default action is to
    /// terminate, would too.
    pub fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
