//! The chat application on the Socket.IO layer: handshake and auth, `online`
//! and `history` on connect, `chat message` validation and submission, the
//! `history` request, and — after each group commit — acks and fan-out.
//!
//! Data flows one way: a session validates and submits to the store writer;
//! the writer commits; the dispatcher acks the senders and hands the batch to
//! the hub, which queues frames on recipients' outboxes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::auth::TokenKey;
use super::console::Console;
use super::hub::{ConnKey, Delivery, Hub};
use super::message::{MessageView, format_time};
use super::names::valid_user_name;
use super::rate::RateLimit;
use super::room::dm_room;
use super::validate::{Refusal, validate};
use crate::engineio::RequestInfo;
use crate::metrics::{HandshakeRefusal, METRICS};
use crate::socketio::{Event, Handler, Socket, event_packet};
use crate::store::{
    CommittedBatch, HistoryQuery, NewMessage, Store, StoredMessage, Writer, WriterHandle,
};

/// Messages in the `history` sent on connect.
const HISTORY_ON_CONNECT: usize = 50;
/// Most messages in one `history` answer (and in a `since` replay).
const HISTORY_MAX: usize = 200;
/// Messages that may wait for the store writer before senders wait: two
/// full batches, so the next one fills while one commits.
pub const WRITER_QUEUE: usize = 2 * crate::store::MAX_BATCH;

/// The chat rules a server runs with.
pub struct ChatConfig {
    /// The token key; `None` runs without auth (`--no-auth`).
    pub auth: Option<TokenKey>,
    /// Longest accepted text, in UTF-8 bytes.
    pub max_message_bytes: usize,
    /// Per-user message rate.
    pub rate: RateLimit,
    /// Whether to print the console lines.
    pub console: bool,
    /// Messages one connection may have waiting for their commit. Past it
    /// the connection's reader waits (TCP pushes back on the client), so one
    /// group commit never queues more acks for a connection than its
    /// outbound queue holds; keep it well under `--outbound-queue`.
    pub unacked_per_connection: usize,
}

/// Who a message's ack goes to; travels through the store writer untouched.
pub struct Ticket {
    sender: ConnKey,
    socket: Socket,
    ack: Option<u64>,
    /// The sender's place among its unacked messages, freed with the ticket
    /// once the ack is queued.
    _unacked: OwnedSemaphorePermit,
}

/// The chat application, shared by every connection.
pub struct Chat {
    hub: Arc<Hub>,
    store: Store,
    writer: WriterHandle<Ticket>,
    config: ChatConfig,
    /// Messages submitted but not yet acked or refused.
    in_flight: AtomicUsize,
    closing: AtomicBool,
    settled: Notify,
}

/// One connection's chat state.
pub struct Session {
    key: ConnKey,
    user: Arc<str>,
    peer: Option<Arc<str>>,
    room: Option<Arc<str>>,
    since: Option<u64>,
    unacked: Arc<Semaphore>,
}

impl Chat {
    /// Starts the store writer and the dispatcher that acks and fans out
    /// what it commits.
    pub fn start(store: Store, config: ChatConfig) -> Result<Arc<Chat>, crate::store::StoreError> {
        let watermark = store.last_ts()?;
        let writer = Writer::<Ticket>::spawn(store.clone(), WRITER_QUEUE, format_time)?;
        let chat = Arc::new(Chat {
            hub: Arc::new(Hub::new(config.rate, watermark)),
            store,
            writer: writer.handle,
            config,
            in_flight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            settled: Notify::new(),
        });
        tokio::spawn(dispatch(chat.clone(), writer.batches));
        Ok(chat)
    }

    /// The presence map, for operators.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The message store, for operators (export, purge, retention).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops taking messages, waits until every submitted one is stored and
    /// acked (or refused), then disconnects everyone.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        loop {
            let settled = self.settled.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            settled.await;
        }
        self.hub.disconnect_all();
    }

    fn settle(&self, count: usize) {
        if self.in_flight.fetch_sub(count, Ordering::SeqCst) == count {
            self.settled.notify_waiters();
        }
    }

    async fn on_chat_message(&self, session: &Session, socket: &Socket, event: &Event) {
        let draft = match validate(
            event.args.get(1),
            !event.attachments.is_empty(),
            &session.user,
            session.peer.as_deref(),
            self.config.max_message_bytes,
        ) {
            Ok(draft) => draft,
            Err(refusal) => return refuse(socket, event.ack, refusal),
        };
        if !self.hub.take_token(&session.user) {
            return refuse(socket, event.ack, Refusal::RateLimited);
        }
        // The semaphore is never closed, so this only waits.
        let Ok(unacked) = session.unacked.clone().acquire_owned().await else {
            return refuse(socket, event.ack, Refusal::Unavailable);
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            self.settle(1);
            return refuse(socket, event.ack, Refusal::Unavailable);
        }
        let message = NewMessage {
            room: dm_room(&session.user, draft.to),
            id: socket.id().to_owned(),
            from: session.user.to_string(),
            to: draft.to.to_owned(),
            text: draft.text.to_owned(),
        };
        let ticket = Ticket {
            sender: session.key,
            socket: socket.clone(),
            ack: event.ack,
            _unacked: unacked,
        };
        if let Err((_, ticket)) = self.writer.submit(message, ticket).await {
            self.settle(1);
            refuse(&ticket.socket, ticket.ack, Refusal::Unavailable);
        }
    }

    async fn on_history(&self, session: &Session, socket: &Socket, event: &Event) {
        let Some(ack) = event.ack else { return };
        match self.history_request(session, event.args.get(1)).await {
            Ok(messages) => socket.ack(ack, &json!({"ok": true, "messages": messages})),
            Err(error) => socket.ack(ack, &json!({"ok": false, "error": error})),
        };
    }

    async fn history_request(
        &self,
        session: &Session,
        payload: Option<&Value>,
    ) -> Result<Vec<Value>, String> {
        let empty = serde_json::Map::new();
        let fields = match payload {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(fields)) => fields,
            Some(_) => return Err("history expects {peer?, before?, after?, limit?}".into()),
        };
        let cursor = |name: &str| match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{name} must be a message ts")),
        };
        let peer = match fields.get("peer") {
            None | Some(Value::Null) => session.peer.as_deref().ok_or("no peer")?,
            Some(Value::String(peer)) if valid_user_name(peer) && **peer != *session.user => peer,
            Some(_) => return Err("invalid peer".into()),
        };
        let limit = match fields.get("limit") {
            None | Some(Value::Null) => HISTORY_ON_CONNECT,
            Some(value) => match value.as_u64() {
                Some(n) if n > 0 => (n as usize).min(HISTORY_MAX),
                _ => return Err("limit must be a positive integer".into()),
            },
        };
        let query = HistoryQuery {
            before: cursor("before")?,
            after: cursor("after")?,
            limit,
            max_ts: Some(self.hub.watermark()),
        };
        let room = dm_room(&session.user, peer);
        self.read_history(room, query)
            .await
            .map(|messages| messages.iter().map(view_json).collect())
    }

    async fn read_history(
        &self,
        room: String,
        query: HistoryQuery,
    ) -> Result<Vec<StoredMessage>, String> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.history(&room, &query)).await {
            Ok(Ok(messages)) => Ok(messages),
            Ok(Err(error)) => {
                tracing::error!(%error, "reading history failed");
                Err("history is unavailable".into())
            }
            Err(_) => Err("history is unavailable".into()),
        }
    }
}

impl Handler for Chat {
    type State = Session;

    fn has_namespace(&self, nsp: &str) -> bool {
        nsp == "/"
    }

    async fn connect(
        &self,
        _socket: &Socket,
        auth: Option<Value>,
        request: &RequestInfo,
    ) -> Result<Session, Value> {
        let field = |name: &str| -> Option<String> {
            match auth.as_ref().and_then(|auth| auth.get(name)) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => request.query_param(name).map(str::to_owned),
            }
        };
        let invalid = |why: &str| {
            METRICS.handshake_refused(HandshakeRefusal::Invalid);
            json!({"message": format!("invalid handshake: {why}")})
        };
        let user = field("user").ok_or_else(|| invalid("user is required"))?;
        if !valid_user_name(&user) {
            return Err(invalid(
                "user must be 1-32 characters of A-Z a-z 0-9 . - starting with a letter or digit",
            ));
        }
        let peer = match field("peer").filter(|peer| !peer.is_empty()) {
            None => None,
            Some(peer) if !valid_user_name(&peer) => {
                return Err(invalid("peer is not a valid user name"));
            }
            Some(peer) if peer == user => return Err(invalid("peer must differ from user")),
            Some(peer) => Some(peer),
        };
        let since = match field("since").filter(|since| !since.is_empty()) {
            None => None,
            Some(since) => Some(
                since
                    .parse::<u64>()
                    .map_err(|_| invalid("since must be a message ts"))?,
            ),
        };
        if let Some(key) = &self.config.auth {
            let token = field("token").unwrap_or_default();
            if let Err(error) = key.verify(&token, &user) {
                tracing::info!(%user, remote = %request.remote, %error, "handshake refused");
                METRICS.handshake_refused(HandshakeRefusal::Unauthorized);
                return Err(json!({"message": "unauthorized"}));
            }
        }
        let room = peer.as_deref().map(|peer| Arc::from(dm_room(&user, peer)));
        Ok(Session {
            key: self.hub.new_key(),
            user: user.into(),
            peer: peer.map(Into::into),
            room,
            since,
            unacked: Arc::new(Semaphore::new(self.config.unacked_per_connection.max(1))),
        })
    }

    async fn connected(&self, session: &mut Session, socket: &Socket) {
        let joined = self.hub.join(
            session.key,
            session.user.clone(),
            session.room.clone(),
            socket.clone(),
        );
        socket.emit("online", &joined.room_online);
        if self.config.console {
            Console::connected(&joined.everyone, &session.user, session.room.as_deref());
        }
        if let Some(room) = &session.room {
            let query = match session.since {
                Some(since) => HistoryQuery {
                    after: Some(since),
                    limit: HISTORY_MAX,
                    max_ts: Some(joined.watermark),
                    ..Default::default()
                },
                None => HistoryQuery {
                    limit: HISTORY_ON_CONNECT,
                    max_ts: Some(joined.watermark),
                    ..Default::default()
                },
            };
            match self.read_history(room.to_string(), query).await {
                Ok(messages) => {
                    let messages: Vec<Value> = messages.iter().map(view_json).collect();
                    socket.emit("history", &messages);
                }
                Err(_) => socket.disconnect(),
            }
        }
        self.hub.ready(session.key);
    }

    async fn event(&self, session: &mut Session, socket: &Socket, event: Event) {
        match event.name() {
            Some("chat message") => self.on_chat_message(session, socket, &event).await,
            Some("history") => self.on_history(session, socket, &event).await,
            _ => {}
        }
    }

    async fn disconnect(&self, session: Session, socket: &Socket, reason: &'static str) {
        let everyone = self.hub.leave(session.key);
        tracing::debug!(user = %session.user, sid = socket.id(), reason, "disconnected");
        if self.config.console {
            Console::disconnected(socket.id(), &everyone);
        }
    }
}

/// The answer to a refused `chat message`: by ack, or as a `chat error`.
#[derive(Serialize)]
struct Refused {
    ok: bool,
    error: &'static str,
    reason: &'static str,
}

fn refuse(socket: &Socket, ack: Option<u64>, refusal: Refusal) {
    METRICS.message_refused(refusal);
    let answer = Refused {
        ok: false,
        error: "Message is not accepted",
        reason: refusal.as_str(),
    };
    match ack {
        Some(id) => socket.ack(id, &answer),
        None => socket.emit("chat error", &answer),
    };
}

/// The answer to an accepted `chat message`.
#[derive(Serialize)]
struct Accepted<'a> {
    ok: bool,
    message: &'a RawValue,
}

fn view(message: &StoredMessage) -> MessageView<'_> {
    MessageView::of(message)
}

fn view_json(message: &StoredMessage) -> Value {
    serde_json::to_value(view(message)).unwrap_or(Value::Null)
}

/// Acks and fans out each committed batch, in commit order.
async fn dispatch(chat: Arc<Chat>, mut batches: mpsc::Receiver<CommittedBatch<Ticket>>) {
    while let Some(batch) = batches.recv().await {
        match batch.result {
            Ok(committed) => {
                let count = committed.len();
                // Counted before the acks go out, so a client that saw its
                // ack also sees it counted.
                METRICS.messages_accepted(count);
                let mut deliveries = Vec::with_capacity(count);
                for (message, ticket) in &committed {
                    let Ok(json) = serde_json::value::to_raw_value(&view(message)) else {
                        continue;
                    };
                    if let Some(id) = ticket.ack {
                        ticket.socket.ack(
                            id,
                            &Accepted {
                                ok: true,
                                message: &json,
                            },
                        );
                    }
                    deliveries.push(Delivery {
                        from: &message.from,
                        to: &message.to,
                        ts: message.ts,
                        frame: event_packet("/", "chat message", &json),
                        sender: ticket.sender,
                    });
                }
                chat.hub.deliver(&deliveries);
                chat.settle(count);
            }
            Err((error, unstored)) => {
                tracing::error!(%error, count = unstored.len(), "commit failed: messages refused");
                let count = unstored.len();
                for (_, ticket) in unstored {
                    refuse(&ticket.socket, ticket.ack, Refusal::Unavailable);
                }
                chat.settle(count);
            }
        }
    }
}
