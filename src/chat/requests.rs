//! What a client asks for: `history` pages. Reads run on the blocking pool
//! against a store snapshot, never holding up the log. Each connection may
//! ask [`REQUEST_RATE`]: a store read and a page of up to 200 messages are
//! the dearest thing a client can ask for, so one connection must not be
//! able to take the server's time from everyone else.

use serde_json::{Value, json};

use super::handshake::Session;
use super::message::MessageView;
use super::names::valid_user_name;
use super::rate::RateLimit;
use super::room::dm_room;
use super::service::{Chat, Ticket};
use crate::log::Log;
use crate::socketio::{Event, Socket};
use crate::store::{HistoryPage, HistoryQuery, StoredMessage};

/// Messages in the `history` sent on connect, and the default page.
pub const HISTORY_PAGE: usize = 50;
/// Most messages in one `history` answer (and in a `since` replay).
pub const HISTORY_MAX: usize = 200;

/// `history` and `conversations` requests per second per connection,
/// sustained, in bursts of up to 20; past it they are refused.
pub const REQUEST_RATE: RateLimit = RateLimit {
    rate: 10,
    burst: 20,
};

/// The answer to a request over [`REQUEST_RATE`].
const TOO_MANY: &str = "rate_limited: at most 10 history or conversations requests a second (bursts of 20) per connection";

impl<L: Log<Ticket>> Chat<L> {
    /// `history {peer?, before?, after?, limit?}`, answered by ack.
    pub(super) async fn on_history(&self, session: &mut Session, socket: &Socket, event: &Event) {
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
            None | Some(Value::Null) => HISTORY_PAGE,
            Some(value) => match value.as_u64() {
                Some(n) if n > 0 => (n as usize).min(HISTORY_MAX),
                _ => return Err("limit must be a positive integer".into()),
            },
        };
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

/// A stored message as the JSON object clients receive.
pub(super) fn view_json(message: &StoredMessage) -> Value {
    serde_json::to_value(MessageView::of(message)).unwrap_or(Value::Null)
}
