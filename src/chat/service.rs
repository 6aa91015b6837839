//! The chat application shared by every connection: its configuration and
//! the parts each job uses — the log changes go to, presence, this node's
//! connections, the per-user rates, what is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::auth::TokenKey;
use super::clock::watch_steps;
use super::console::Console;
use super::dispatch::dispatch;
use super::drain::InFlight;
use super::fanout::Fanout;
use super::rate::{RateBuckets, RateLimit};
use super::typing::{TYPING_RATE, Typists};
use crate::log::{LocalLog, Log, Settled};
use crate::presence::{ConnKey, LocalPresence, Presence};
use crate::socketio::Socket;
use crate::store::change::Outcome;
use crate::store::{MAX_BATCH, Store, StoreError};

/// Changes that may wait for the store before senders wait: two full
/// batches, so the next one fills while one commits.
pub const LOG_QUEUE: usize = 2 * MAX_BATCH;

/// The chat rules a server runs with.
pub struct ChatConfig {
    /// The token key; `None` runs without auth (`--no-auth`).
    pub auth: Option<TokenKey>,
    /// Longest accepted text, in UTF-8 bytes.
    pub max_message_bytes: usize,
    /// Per-user message rate.
    pub rate: RateLimit,
    /// New rooms (a first message to someone) one user may open a minute,
    /// in bursts of as many; 0 turns the limit off.
    pub new_rooms_per_minute: u32,
    /// Whether to print the console lines.
    pub console: bool,
    /// Changes one connection may have waiting for their commit. Past it
    /// the connection's reader waits (TCP pushes back on the client), so one
    /// group commit never queues more acks for a connection than its
    /// outbound queue holds; keep it well under `--outbound-queue`.
    pub unacked_per_connection: usize,
}

/// Who a change's outcome goes to; travels through the log untouched.
pub enum Ticket {
    /// A client's `chat message` or `read`.
    Client(ClientTicket),
    /// An operator's change (a purge from the admin socket), answered with
    /// its outcome or why it was not applied.
    Operator(oneshot::Sender<Result<Outcome, String>>),
}

/// A client's change awaiting its commit.
pub struct ClientTicket {
    /// The connection it came from (which does not get its echo).
    pub sender: ConnKey,
    /// Where the ack goes.
    pub socket: Socket,
    /// The client's ack id, when it passed a callback.
    pub ack: Option<u64>,
    /// Which event it was, for the shape of the answer.
    pub kind: Submitted,
    /// The sender's place among its unacked changes, freed with the ticket.
    pub unacked: OwnedSemaphorePermit,
}

/// The client event a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// `chat message`.
    Message,
    /// `read`.
    Read,
}

/// The chat application, shared by every connection.
pub struct Chat<L> {
    pub(super) log: L,
    pub(super) presence: Arc<dyn Presence>,
    pub(super) fanout: Arc<Fanout>,
    pub(super) store: Store,
    pub(super) config: ChatConfig,
    pub(super) rates: RateBuckets,
    pub(super) typing_rates: RateBuckets,
    pub(super) new_room_rates: RateBuckets,
    pub(super) typists: Typists,
    pub(super) in_flight: InFlight,
    pub(super) console: Option<Arc<Console>>,
    next_key: AtomicU64,
}

impl Chat<LocalLog<Ticket>> {
    /// The chat of a node that runs alone: its store is the log, its
    /// connections are everyone.
    pub fn start(store: Store, config: ChatConfig) -> Result<Arc<Self>, StoreError> {
        let (log, settled) = LocalLog::start(store.clone(), LOG_QUEUE)?;
        let fanout = Arc::new(Fanout::default());
        let presence = Arc::new(LocalPresence::new(fanout.clone()));
        Ok(Chat::new(log, settled, presence, fanout, store, config))
    }
}

impl<L: Log<Ticket>> Chat<L> {
    /// The chat on `log` (whose settled changes arrive on `settled`) and
    /// `presence` (which announces to `fanout`); starts the dispatcher that
    /// answers and fans out what the log settles.
    pub fn new(
        log: L,
        settled: mpsc::Receiver<Settled<Ticket>>,
        presence: Arc<dyn Presence>,
        fanout: Arc<Fanout>,
        store: Store,
        config: ChatConfig,
    ) -> Arc<Self> {
        let console = config.console.then(|| Console::start(presence.clone()));
        let chat = Arc::new(Chat {
            log,
            console,
            presence,
            fanout,
            store,
            rates: RateBuckets::new(config.rate),
            typing_rates: RateBuckets::new(TYPING_RATE),
            new_room_rates: RateBuckets::new(RateLimit::per_minute(config.new_rooms_per_minute)),
            typists: Typists::default(),
            config,
            in_flight: InFlight::default(),
            next_key: AtomicU64::new(1),
        });
        tokio::spawn(dispatch(chat.clone(), settled));
        tokio::spawn(watch_steps());
        chat
    }

    /// Who is online, for operators.
    pub fn presence(&self) -> &dyn Presence {
        &*self.presence
    }

    /// The message store, for operators (export, purge, retention).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops taking changes and waits until every submitted one is applied
    /// and answered (or refused). The transport then closes every
    /// connection after what is queued for it, with no Socket.IO
    /// DISCONNECT, so clients reconnect once the server is back.
    pub async fn shutdown(&self) {
        self.in_flight.close().await;
    }

    /// Every connection has closed (the end of a shutdown): the console
    /// sums up what it left out.
    pub fn closed(&self) {
        if let Some(console) = &self.console {
            console.flush();
        }
    }

    /// A key for a new connection.
    pub(super) fn new_key(&self) -> ConnKey {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }
}
