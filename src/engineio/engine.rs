//! The table of live sessions: opening them, finding them by sid, reaping
//! them when they end, and closing them all at shutdown.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::heartbeat::Heartbeat;
use super::packet::EngineHandshake;
use super::session::{Session, Transport};
use super::{
    CloseReason, EngineConfig, EngineHandler, Outbox, RequestError, RequestInfo, SessionHandler,
};

/// How long a polling session the client closed stays findable when no
/// poll has been told yet: a poll sent before the close was answered (the
/// close overtook it) is then told `noop` rather than refused.
const CLOSE_RACE_WINDOW: Duration = Duration::from_secs(5);

/// How long shutdown lets a session deliver its close before dropping it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The sessions, and whether shutdown has closed them.
struct Table<S> {
    live: HashSet<LiveSession<S>>,
    /// Set as shutdown closes every session in `live`: one opened later
    /// closes itself.
    closed_all: bool,
}

/// A live session, found in the table by its sid: the session holds the sid
/// already, so the table keeps no copy of it (a `String` key was 24 bytes
/// in every entry and an allocation beside each session).
struct LiveSession<S>(Arc<Session<S>>);

impl<S: SessionHandler> Borrow<str> for LiveSession<S> {
    fn borrow(&self) -> &str {
        self.0.sid()
    }
}

impl<S: SessionHandler> Hash for LiveSession<S> {
    fn hash<T: Hasher>(&self, state: &mut T) {
        self.0.sid().hash(state);
    }
}

impl<S: SessionHandler> PartialEq for LiveSession<S> {
    fn eq(&self, other: &Self) -> bool {
        self.0.sid() == other.0.sid()
    }
}

impl<S: SessionHandler> Eq for LiveSession<S> {}

/// The Engine.IO server state shared by every transport.
pub struct Engine<H: EngineHandler> {
    handler: Arc<H>,
    /// Protocol settings announced to clients.
    pub config: Arc<EngineConfig>,
    sessions: Mutex<Table<H::Session>>,
    /// Cancelled to close every session gracefully (shutdown).
    pub shutdown: CancellationToken,
    /// Set once the task that closes every session at shutdown runs: one
    /// task for all, where a wait in every session was 0.1 KiB of each.
    closer: OnceLock<()>,
    /// Tracks every session task so shutdown can wait for them.
    pub tracker: TaskTracker,
}

impl<H: EngineHandler> Engine<H> {
    /// An engine with no session yet.
    pub fn new(
        handler: Arc<H>,
        config: Arc<EngineConfig>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Engine {
            handler,
            config,
            sessions: Mutex::new(Table {
                live: HashSet::new(),
                closed_all: false,
            }),
            shutdown,
            closer: OnceLock::new(),
            tracker,
        }
    }

    /// Opens a session on `transport` and starts its lifecycle in a task of
    /// its own. Returns the session and its open packet: a websocket session
    /// has it queued already; a polling one answers the handshake request
    /// with it. `path` is the Engine.IO path the handshake came on.
    pub fn open(
        self: &Arc<Self>,
        path: &str,
        info: RequestInfo,
        transport: Transport,
    ) -> (Arc<Session<H::Session>>, String) {
        let (session, open) = self.create(path, info, transport);
        let (engine, lifecycle) = (self.clone(), session.clone());
        self.tracker.spawn(async move {
            let transport = std::future::pending::<()>();
            engine.lifecycle(&lifecycle, transport).await;
        });
        (session, open)
    }

    /// Opens a session on `transport` whose lifecycle the caller runs: a
    /// websocket runs it in its own task, so an idle connection is one task.
    pub fn create(
        self: &Arc<Self>,
        path: &str,
        info: RequestInfo,
        transport: Transport,
    ) -> (Arc<Session<H::Session>>, String) {
        let sid = super::new_id();
        let upgrades: &[&str] = match transport {
            Transport::Polling => &["websocket"],
            Transport::Upgrading | Transport::Websocket => &[],
        };
        let open = EngineHandshake {
            sid: &sid,
            upgrades,
            ping_interval: self.config.ping_interval.as_millis() as u64,
            ping_timeout: self.config.ping_timeout.as_millis() as u64,
            max_payload: self.config.max_payload,
        }
        .encode();
        let (outbox, receiver) =
            Outbox::with_max_bytes(self.config.outbound_queue, self.config.outbound_bytes);
        if transport == Transport::Websocket {
            // First in the queue, before anything the handler sends.
            outbox.send_text(Bytes::from(open.clone()));
        }
        let handler = self.handler.open(outbox.clone(), path, &info);
        let session = Arc::new(Session::new(
            sid,
            info,
            (outbox, receiver),
            handler,
            (transport, Heartbeat::new(&self.config)),
        ));
        let late = {
            let mut table = self.table();
            table.live.replace(LiveSession(session.clone()));
            table.closed_all
        };
        self.closer
            .get_or_init(|| drop(tokio::spawn(self.clone().close_all())));
        if late {
            // Shutdown closed the others already: this one the same way.
            session.close(CloseReason::ServerClose);
            let session = session.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
                session.abort(CloseReason::ServerClose);
            });
        }
        (session, open)
    }

    /// At shutdown, closes every session gracefully, and drops those still
    /// there after [`SHUTDOWN_GRACE`] (a polling client between two polls
    /// may never come back for its close packet). Not tracked: shutdown
    /// waits for the sessions, not for the grace of those that ended.
    async fn close_all(self: Arc<Self>) {
        self.shutdown.cancelled().await;
        let sessions: Vec<_> = {
            let mut table = self.table();
            table.closed_all = true;
            table.live.iter().map(|live| live.0.clone()).collect()
        };
        for session in &sessions {
            session.close(CloseReason::ServerClose);
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        for session in &sessions {
            session.abort(CloseReason::ServerClose);
        }
    }

    /// A session's lifecycle ([`Session::run`]) beside `transport`, then its
    /// removal from the table.
    /// A plain function returning the future: an async fn would store its
    /// arguments twice in every idle session's task.
    pub fn lifecycle<'a>(
        &'a self,
        session: &'a Session<H::Session>,
        transport: impl Future + 'a,
    ) -> impl Future<Output = ()> + 'a {
        async move {
            session.run(&self.config, transport).await;
            if session.transport() == Transport::Polling && session.close_unanswered() {
                // Its place stays taken meanwhile, so this costs a client
                // nothing it could use to pile sessions up.
                tokio::select! {
                    _ = tokio::time::sleep(CLOSE_RACE_WINDOW) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            }
            self.table().live.remove(session.sid());
        }
    }

    /// The live session `sid`, if the request comes from the address that
    /// opened it. A session whose pong is overdue is closed here rather than
    /// whenever its timer fires, so the answer never depends on timer jitter.
    pub fn find(&self, sid: &str, ip: IpAddr) -> Result<Arc<Session<H::Session>>, RequestError> {
        let session = self
            .table()
            .live
            .get(sid)
            .map(|live| &live.0)
            .filter(|session| session.belongs_to(ip))
            .cloned()
            .ok_or(RequestError::SessionUnknown)?;
        if !session.is_alive() {
            session.abort(CloseReason::PingTimeout);
            return Err(RequestError::SessionUnknown);
        }
        Ok(session)
    }

    /// True (once) when `sid` is a polling session its client closed and no
    /// poll has been told yet: a poll sent before the close was answered
    /// gets `noop` instead of an error, as if it had been waiting already.
    pub fn closed_by_client(&self, sid: &str, ip: IpAddr) -> bool {
        let session = self
            .table()
            .live
            .get(sid)
            .map(|live| &live.0)
            .filter(|session| session.belongs_to(ip))
            .cloned();
        session.is_some_and(|session| session.answer_close())
    }

    fn table(&self) -> MutexGuard<'_, Table<H::Session>> {
        // Inserts and removes are single calls: a panic cannot leave the map
        // half-updated, so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engineio::quiet::Quiet;
    use crate::engineio::{Outbound, Unlimited};

    /// An engine with no ping due for an hour.
    fn engine() -> Arc<Engine<Quiet>> {
        let config = EngineConfig {
            ping_interval: Duration::from_secs(3600),
            ..EngineConfig::default()
        };
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        Arc::new(Engine::new(
            Arc::new(Quiet),
            Arc::new(config),
            shutdown,
            tracker,
        ))
    }

    fn polling(engine: &Arc<Engine<Quiet>>) -> Arc<Session<Quiet>> {
        let info = RequestInfo {
            query: "".into(),
            remote: "127.0.0.1:1".parse().unwrap(),
            place: Arc::new(Unlimited),
        };
        engine.open("/engine.io/", info, Transport::Polling).0
    }

    /// Shuts `engine` down and waits for its sessions; how long that took.
    async fn shut_down(engine: &Engine<Quiet>) -> Duration {
        let started = tokio::time::Instant::now();
        engine.shutdown.cancel();
        engine.tracker.close();
        engine.tracker.wait().await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_queues_the_close_and_drops_an_undelivered_one_after_the_grace() {
        let engine = engine();
        let session = polling(&engine);
        assert_eq!(
            shut_down(&engine).await,
            SHUTDOWN_GRACE,
            "ended by the grace"
        );
        assert_eq!(session.reason(), CloseReason::ServerClose);
        let mut receiver = session.take_receiver().await.expect("never taken");
        assert!(matches!(receiver.try_recv(), Some(Outbound::Close)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_closing_within_the_grace_ends_then() {
        let engine = engine();
        let closing = polling(&engine).closing().clone();
        tokio::spawn(async move {
            // The writer delivering the close ends the session.
            tokio::time::sleep(SHUTDOWN_GRACE / 4).await;
            closing.cancel();
        });
        assert_eq!(shut_down(&engine).await, SHUTDOWN_GRACE / 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_opened_after_shutdown_closed_the_others_closes_the_same_way() {
        let engine = engine();
        let first = polling(&engine);
        assert_eq!(shut_down(&engine).await, SHUTDOWN_GRACE);
        assert!(first.closing().is_cancelled());
        let started = tokio::time::Instant::now();
        let late = polling(&engine);
        let mut receiver = late.take_receiver().await.expect("never taken");
        assert!(matches!(receiver.try_recv(), Some(Outbound::Close)));
        late.closing().cancelled().await;
        assert_eq!(started.elapsed(), SHUTDOWN_GRACE, "dropped after the grace");
        assert_eq!(late.reason(), CloseReason::ServerClose);
    }
}
