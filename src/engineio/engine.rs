//! The table of live sessions: opening them, finding them by sid, reaping
//! them when they end.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::heartbeat::Heartbeat;
use super::packet::Handshake;
use super::session::{Session, Transport};
use super::{EngineConfig, EngineHandler, Outbox, RequestError, RequestInfo};

/// How long a polling session the client closed stays findable when no
/// poll has been told yet: a poll sent before the close was answered (the
/// close overtook it) is then told `noop` rather than refused.
const CLOSE_RACE_WINDOW: Duration = Duration::from_secs(5);

/// The Engine.IO server state shared by every transport.
pub struct Engine<H: EngineHandler> {
    handler: Arc<H>,
    /// Protocol settings announced to clients.
    pub config: Arc<EngineConfig>,
    sessions: Mutex<HashMap<String, Arc<Session<H::Session>>>>,
    /// Cancelled to close every session gracefully (shutdown).
    pub shutdown: CancellationToken,
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
            sessions: Mutex::default(),
            shutdown,
            tracker,
        }
    }

    /// Opens a session on `transport` and starts its lifecycle in a task of
    /// its own. Returns the session and its open packet: a websocket session
    /// has it queued already; a polling one answers the handshake request
    /// with it.
    pub fn open(
        self: &Arc<Self>,
        info: RequestInfo,
        transport: Transport,
    ) -> (Arc<Session<H::Session>>, String) {
        let (session, open) = self.create(info, transport);
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
        &self,
        info: RequestInfo,
        transport: Transport,
    ) -> (Arc<Session<H::Session>>, String) {
        let sid = super::new_id();
        let upgrades: &[&str] = match transport {
            Transport::Polling => &["websocket"],
            Transport::Upgrading | Transport::Websocket => &[],
        };
        let open = Handshake {
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
        let (remote_ip, place) = (info.remote.ip(), info.place.clone());
        let handler = self.handler.open(outbox.clone(), info);
        let session = Arc::new(Session::new(
            sid.clone(),
            (remote_ip, place),
            (outbox, receiver),
            handler,
            (transport, Heartbeat::new(&self.config)),
        ));
        self.table().insert(sid, session.clone());
        (session, open)
    }

    /// A session's lifecycle ([`Session::run`]) beside `transport`, then its
    /// removal from the table.
    pub async fn lifecycle(&self, session: &Session<H::Session>, transport: impl Future) {
        session.run(&self.config, &self.shutdown, transport).await;
        if session.transport() == Transport::Polling && session.close_unanswered() {
            // Its place stays taken meanwhile, so this costs a client
            // nothing it could use to pile sessions up.
            tokio::select! {
                _ = tokio::time::sleep(CLOSE_RACE_WINDOW) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
        self.table().remove(session.sid());
    }

    /// The live session `sid`, if the request comes from the address that
    /// opened it. A session whose pong is overdue is closed here rather than
    /// whenever its timer fires, so the answer never depends on timer jitter.
    pub fn find(&self, sid: &str, ip: IpAddr) -> Result<Arc<Session<H::Session>>, RequestError> {
        let session = self
            .table()
            .get(sid)
            .filter(|session| session.belongs_to(ip))
            .cloned()
            .ok_or(RequestError::SessionUnknown)?;
        if !session.is_alive() {
            session.abort(super::CloseReason::PingTimeout);
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
            .get(sid)
            .filter(|session| session.belongs_to(ip))
            .cloned();
        session.is_some_and(|session| session.answer_close())
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Arc<Session<H::Session>>>> {
        // Inserts and removes are single calls: a panic cannot leave the map
        // half-updated, so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
