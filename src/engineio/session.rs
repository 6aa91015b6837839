//! One Engine.IO session, whichever transport carries it.
//!
//! A session outlives its transports: it starts on polling or websocket, may
//! move from polling to websocket, and ends once. It owns the application's
//! [`SessionHandler`] (behind a mutex, so packets are handled one at a time
//! and in order whichever request carries them), the outbox and the receiver
//! a transport drains, the heartbeat, and the transport state.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use bytes::Bytes;
use tokio::sync::{Mutex, MutexGuard, Notify};
use tokio_util::sync::CancellationToken;

use super::heartbeat::{Ended, Heartbeat};
use super::outbox::OutboxReceiver;
use super::packet::EnginePacket;
use super::payload::Record;
use super::{Admission, CloseReason, EngineConfig, Outbox, RequestInfo, SessionHandler};

/// Which transport a session is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Transport {
    /// HTTP long-polling: GETs drain the outbox, POSTs carry packets.
    Polling,
    /// A websocket has probed (`2probe`); polling GETs are released.
    Upgrading,
    /// A websocket carries the session; polling requests are refused.
    Websocket,
}

/// The state of one session, shared by its transports and its lifecycle task.
pub struct Session<S> {
    /// Boxed, not a `String`: the capacity word of every session is spared.
    sid: Box<str>,
    /// The handshake's request: only its address may use the sid, and its
    /// place under the connection limits is held for the session's life
    /// whichever transport carries it. Lent to the handler with each text
    /// message rather than copied into it.
    request: RequestInfo,
    /// Its token is the session's close signal, shared with the receiver.
    outbox: Outbox,
    handler: Mutex<Option<S>>,
    /// Taken by whichever transport drains the outbox: one polling GET at a
    /// time, or the websocket writer for good.
    receiver: Mutex<Option<OutboxReceiver>>,
    heartbeat: Heartbeat,
    /// A [`Transport`] as `u8`: read on every request, changed at most
    /// three times.
    transport: AtomicU8,
    transport_changed: Notify,
    /// The first [`CloseReason`] given, as [`reason_code`]; 0 while open.
    /// One byte where a `OnceLock` took eight: the session then fits an
    /// allocation size class smaller.
    reason: AtomicU8,
    /// Set once a poll has told the client its session is closed.
    close_answered: AtomicBool,
}

impl<S: SessionHandler> Session<S> {
    /// A session on `transport` whose messages go to `handler`.
    pub fn new(
        sid: String,
        request: RequestInfo,
        (outbox, receiver): (Outbox, OutboxReceiver),
        handler: S,
        (transport, heartbeat): (Transport, Heartbeat),
    ) -> Self {
        Session {
            sid: sid.into(),
            request,
            outbox,
            handler: Mutex::new(Some(handler)),
            receiver: Mutex::new(Some(receiver)),
            heartbeat,
            transport: AtomicU8::new(transport as u8),
            transport_changed: Notify::new(),
            reason: AtomicU8::new(0),
            close_answered: AtomicBool::new(false),
        }
    }

    /// The session id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// True if a request from `ip` may use this session.
    pub fn belongs_to(&self, ip: IpAddr) -> bool {
        self.request.remote.ip() == ip
    }

    /// The session's place under the connection limits.
    pub fn place(&self) -> &dyn Admission {
        &*self.request.place
    }

    /// The queue to the client.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Fires once the session is closing.
    pub fn closing(&self) -> &CancellationToken {
        self.outbox.closing()
    }

    /// The current transport.
    pub fn transport(&self) -> Transport {
        match self.transport.load(Ordering::Acquire) {
            0 => Transport::Polling,
            1 => Transport::Upgrading,
            _ => Transport::Websocket,
        }
    }

    /// Resolves once the session leaves the polling transport.
    pub async fn left_polling(&self) {
        loop {
            let changed = self.transport_changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change right after it wakes us.
            changed.as_mut().enable();
            if self.transport() != Transport::Polling {
                return;
            }
            changed.await;
        }
    }

    /// Moves the session from `from` to `to`; false if it was not on `from`.
    fn switch(&self, from: Transport, to: Transport) -> bool {
        let switched = self
            .transport
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if switched {
            self.transport_changed.notify_waiters();
        }
        switched
    }

    /// False once the session is closing or its pong is overdue.
    pub fn is_alive(&self) -> bool {
        !self.closing().is_cancelled() && !self.heartbeat.expired()
    }

    /// Why the session closed (or is closing); a server close if nobody said.
    pub fn reason(&self) -> CloseReason {
        let code = self.reason.load(Ordering::Acquire);
        code.checked_sub(1)
            .and_then(|at| REASONS.get(usize::from(at)))
            .copied()
            .unwrap_or(CloseReason::ServerClose)
    }

    /// Records `reason` unless one was given before: the first one stands.
    fn set_reason(&self, reason: CloseReason) {
        let code = reason_code(reason);
        let _ = self
            .reason
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    /// True for the first caller only, once the session closed at the
    /// client's request (a close packet): that one poll is answered `noop`
    /// (the client asked; a poll that raced its close must not fail), every
    /// later request is refused.
    pub fn answer_close(&self) -> bool {
        self.reason() == CloseReason::TransportClose
            && !self.close_answered.swap(true, Ordering::AcqRel)
    }

    /// True while the session closed at the client's request and no poll
    /// has told it yet.
    pub fn close_unanswered(&self) -> bool {
        self.reason() == CloseReason::TransportClose && !self.close_answered.load(Ordering::Acquire)
    }

    /// Closes after what is queued has been delivered.
    pub fn close(&self, reason: CloseReason) {
        self.set_reason(reason);
        self.outbox.close();
    }

    /// Closes at once, dropping what is queued.
    pub fn abort(&self, reason: CloseReason) {
        self.set_reason(reason);
        self.outbox.abort();
    }

    /// The handler, locked for a run of packets; `None` once closed.
    pub async fn handler(&self) -> MutexGuard<'_, Option<S>> {
        self.handler.lock().await
    }

    /// The outbox receiver, for a polling GET; `None` if another request
    /// holds it (two GETs at once).
    pub fn try_receiver(&self) -> Option<MutexGuard<'_, Option<OutboxReceiver>>> {
        self.receiver.try_lock().ok()
    }

    /// Hands one packet to the handler; `Err` ends the session.
    pub async fn receive(&self, handler: &mut S, record: Record<'_>) -> Result<(), CloseReason> {
        let packet = match record {
            Record::Binary(data) => {
                return handler
                    .on_binary(Bytes::from(data))
                    .await
                    .map_err(|_| CloseReason::ParseError);
            }
            Record::Packet(packet) => packet,
        };
        match packet {
            EnginePacket::Message(data) => handler
                .on_text(&self.request, data)
                .await
                .map_err(|_| CloseReason::ParseError),
            EnginePacket::Pong(_) => {
                self.heartbeat.pong();
                Ok(())
            }
            // In Engine.IO v4 only the server pings (the upgrade probe, which
            // the websocket transport handles, aside).
            EnginePacket::Ping(_) => Err(CloseReason::ParseError),
            EnginePacket::Close => Err(CloseReason::TransportClose),
            EnginePacket::Upgrade | EnginePacket::Noop => Ok(()),
            EnginePacket::Open(_) | EnginePacket::Binary(_) => Err(CloseReason::ParseError),
        }
    }

    /// A websocket probed: polling GETs are released. False if the session
    /// is not on polling (already upgrading or upgraded).
    pub fn begin_upgrade(&self) -> bool {
        self.switch(Transport::Polling, Transport::Upgrading)
    }

    /// The probing websocket went away before completing: back to polling.
    pub fn cancel_upgrade(&self) {
        self.switch(Transport::Upgrading, Transport::Polling);
    }

    /// The client switched to the websocket: polling is over, and the
    /// receiver (with whatever polling had not delivered) is the caller's.
    pub async fn complete_upgrade(&self) -> Option<OutboxReceiver> {
        if !self.switch(Transport::Upgrading, Transport::Websocket) {
            return None;
        }
        self.take_receiver().await
    }

    /// Takes the receiver for a transport that drains it for good.
    pub async fn take_receiver(&self) -> Option<OutboxReceiver> {
        self.receiver.lock().await.take()
    }

    /// The session's lifecycle: heartbeat, beside `transport` (a websocket
    /// carrying the session in the same task, lent pinned: passed by value
    /// it would be stored again in this future; a pending future for polling),
    /// until it closes (the engine closes every session at shutdown), then
    /// tell the handler, exactly once. The close is waited for here only:
    /// the heartbeat and the transport stop by being dropped, so an idle
    /// session holds one wait on it, not one per part.
    pub fn run<'a>(
        &'a self,
        config: &'a EngineConfig,
        transport: impl Future + 'a,
    ) -> impl Future<Output = ()> + 'a {
        async move {
            let live = async {
                if self.heartbeat.run(config, &self.outbox).await == Ended::TimedOut {
                    self.abort(CloseReason::PingTimeout);
                }
            };
            // Both parts end only as the session closes, when `closing` fires.
            // Combinators, not an async block: one would store `live` twice.
            let both = futures_util::future::join(live, transport);
            let closing = self.closing().cancelled();
            tokio::select! {
                biased;
                _ = both => {}
                _ = closing => {}
            }
            self.closing().cancel();
            let reason = self.reason();
            tracing::debug!(sid = %self.sid, reason = reason.as_str(), "engine.io session closed");
            // Boxed so this task does not carry the handler's (large, once-only)
            // close future, nor the handler itself, for the session's whole life.
            let close = self
                .handler
                .lock()
                .await
                .take()
                .map(|handler| Box::pin(handler.on_close(reason)));
            if let Some(close) = close {
                close.await;
            }
        }
    }
}

/// Every close reason; a session stores one as its place here plus one
/// (0 is open), and reads it back from the same list.
const REASONS: [CloseReason; 5] = [
    CloseReason::TransportClose,
    CloseReason::TransportError,
    CloseReason::PingTimeout,
    CloseReason::ParseError,
    CloseReason::ServerClose,
];

/// `reason` as [`Session::reason`] reads it back; never 0 (open).
fn reason_code(reason: CloseReason) -> u8 {
    let at = REASONS.iter().position(|known| *known == reason);
    // Every reason is in the list; 5 places fit a byte.
    at.map_or(REASONS.len(), |at| at + 1) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engineio::Unlimited;
    use crate::engineio::quiet::Quiet;
    use std::sync::Arc;
    use std::time::Duration;

    fn session(config: &EngineConfig) -> Session<Quiet> {
        Session::new(
            "sid".to_owned(),
            RequestInfo {
                query: "".into(),
                remote: "127.0.0.1:1".parse().unwrap(),
                place: Arc::new(Unlimited),
            },
            Outbox::new(8),
            Quiet,
            (Transport::Polling, Heartbeat::new(config)),
        )
    }

    #[tokio::test]
    async fn the_first_close_reason_given_stands() {
        let reasons = [
            CloseReason::TransportClose,
            CloseReason::TransportError,
            CloseReason::PingTimeout,
            CloseReason::ParseError,
            CloseReason::ServerClose,
        ];
        for first in reasons {
            let session = session(&EngineConfig::default());
            assert_eq!(session.reason(), CloseReason::ServerClose, "none given");
            session.close(first);
            for later in reasons {
                session.abort(later);
            }
            assert_eq!(session.reason(), first);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_runs_until_it_closes_and_then_gives_up_its_handler() {
        let config = EngineConfig {
            ping_interval: Duration::from_secs(3600),
            ..EngineConfig::default()
        };
        let session = session(&config);
        let closing = session.closing().clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            closing.cancel();
        });
        let started = tokio::time::Instant::now();
        session.run(&config, std::future::pending::<()>()).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(session.handler().await.is_none(), "on_close took it");
    }
}
