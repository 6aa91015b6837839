//! What a client asks for: `history` pages and the `conversations` inbox. Reads run on the blocking pool
//! against a store snapshot, never holding up the log. Each connection may
//! ask [`REQUEST_RATE`]: a store read and a page of up to 200 messages are
//! the dearest thing a client can ask for, so one connection must not be
//! able to take the server's time from everyone else.

use serde_json::{Value, json};

use super::handshake::ChatSession;
use super::message::MessageView;
use super::names::valid_user_name;
use super::rate::RateLimit;
use super::room::dm_room;
use super::service::{Chat, Ticket};
use crate::log::Log;
use crate::socketio::{Event, Socket};
use crate::store::{Conversation, HistoryPage, HistoryQuery, StoredMessage};

/// Messages in the `history` sent on connect, and the default page.
pub const HISTORY_PAGE: usize = 50;
/// Most messages in one `history` answer (and in a `since` replay).
pub const HISTORY_MAX: usize = 200;

/// `history` and `conversations` requests per second per connection,
/// sustained, in bursts of up to 20; past it they are refused.
pub const REQUEST_RATE: RateLimit = RateLimit {
    rate: 10.0,
    burst: 20,
};

/// The answer to a request over [`REQUEST_RATE`].
const TOO_MANY: &str = "rate_limited: at most 10 history or conversations requests a second (bursts of 20) per connection";

impl<L: Log<Ticket>> Chat<L> {
    /// `history {peer?, before?, after?, limit?}`, answered by ack.
    pub(super) async fn on_history(
        &self,
        session: &mut ChatSession,
        socket: &Socket,
        event: &Event,
    ) {
        let Some(ack) = event.ack else { return };
        if !session
            .requests
            .take(REQUEST_RATE, std::time::Instant::now())
        {
            socket.ack(ack, &json!({"ok": false, "error": TOO_MANY}));
            return;
        }
        match self.history_request(session, event.args.get(1)).await {
            Ok(messages) => socket.ack(ack, &json!({"ok": true, "messages": messages})),
            Err(error) => socket.ack(ack, &json!({"ok": false, "error": error})),
        };
    }

    /// `conversations {before?, beforeRoom?, limit?}`, answered by ack.
    pub(super) async fn on_conversations(
        &self,
        session: &mut ChatSession,
        socket: &Socket,
        event: &Event,
    ) {
        let Some(ack) = event.ack else { return };
        if !session
            .requests
            .take(REQUEST_RATE, std::time::Instant::now())
        {
            socket.ack(ack, &json!({"ok": false, "error": TOO_MANY}));
            return;
        }
        match self.conversations_request(session, event.args.get(1)).await {
            Ok(list) => socket.ack(ack, &json!({"ok": true, "conversations": list})),
            Err(error) => socket.ack(ack, &json!({"ok": false, "error": error})),
        };
    }

    async fn conversations_request(
        &self,
        session: &ChatSession,
        payload: Option<&Value>,
    ) -> Result<Vec<Value>, String> {
        let empty = serde_json::Map::new();
        let fields = match payload {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(fields)) => fields,
            Some(_) => return Err("conversations expects {before?, beforeRoom?, limit?}".into()),
        };
        let before = match fields.get("before") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_u64().ok_or("before must be a message ts")?),
        };
        let before_room = match fields.get("beforeRoom") {
            None | Some(Value::Null) => None,
            Some(Value::String(room)) if room.len() <= 80 => Some(room.clone()),
            Some(_) => return Err("beforeRoom must be a room id".into()),
        };
        let limit = page_limit(fields.get("limit"))?;
        let store = self.store.clone();
        let user = session.user.clone();
        let read = tokio::task::spawn_blocking(move || {
            store.conversations(&user, before, before_room.as_deref(), limit)
        })
        .await;
        match read {
            Ok(Ok(list)) => Ok(list.iter().map(conversation_json).collect()),
            Ok(Err(error)) => {
                tracing::error!(%error, "reading conversations failed");
                Err("conversations are unavailable".into())
            }
            Err(_) => Err("conversations are unavailable".into()),
        }
    }

    async fn history_request(
        &self,
        session: &ChatSession,
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
        let limit = page_limit(fields.get("limit"))?;
        let query = HistoryQuery {
            before: cursor("before")?,
            after: cursor("after")?,
            limit,
            max_ts: None,
        };
        let room = dm_room(&session.user, peer);
        self.read_history(room, query)
            .await
            .map(|page| page.messages.iter().map(view_json).collect())
    }

    /// Reads a history page on the blocking pool.
    pub(super) async fn read_history(
        &self,
        room: String,
        query: HistoryQuery,
    ) -> Result<HistoryPage, String> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.history_page(&room, &query)).await {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(error)) => {
                tracing::error!(%error, "reading history failed");
                Err("history is unavailable".into())
            }
            Err(_) => Err("history is unavailable".into()),
        }
    }
}

/// A request's `limit`: [`HISTORY_PAGE`] when absent, at most [`HISTORY_MAX`].
fn page_limit(limit: Option<&Value>) -> Result<usize, String> {
    match limit {
        None | Some(Value::Null) => Ok(HISTORY_PAGE),
        Some(value) => match value.as_u64() {
            Some(n) if n > 0 => Ok((n as usize).min(HISTORY_MAX)),
            _ => Err("limit must be a positive integer".into()),
        },
    }
}

/// A conversation as the JSON object clients receive.
fn conversation_json(conversation: &Conversation) -> Value {
    json!({
        "roomId": conversation.room,
        "peer": conversation.peer,
        "last": view_json(&conversation.last),
        "unread": conversation.unread,
        "read": conversation.read,
        "peerRead": conversation.peer_read,
    })
}

/// A stored message as the JSON object clients receive.
pub(super) fn view_json(message: &StoredMessage) -> Value {
    serde_json::to_value(MessageView::of(message)).unwrap_or(Value::Null)
}
