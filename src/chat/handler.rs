//! The chat on the Socket.IO layer: each callback of a connection's life
//! handed to the job that does it (handshake, the first emits, submissions,
//! requests, leaving).

use serde_json::Value;

use super::fanout::Joining;
use super::handshake::{self, ChatSession};
use super::requests::{HISTORY_MAX, HISTORY_PAGE, view_json};
use super::service::{Chat, Ticket};
use crate::engineio::RequestInfo;
use crate::log::Log;
use crate::socketio::{Event, Handler, Socket};
use crate::store::HistoryQuery;

impl<L: Log<Ticket>> Handler for Chat<L> {
    type State = ChatSession;

    fn has_namespace(&self, nsp: &str) -> bool {
        nsp == "/"
    }

    async fn connect(
        &self,
        _socket: &Socket,
        auth: Option<Value>,
        request: &RequestInfo,
    ) -> Result<ChatSession, Value> {
        let handshake = handshake::check(auth.as_ref(), request, self.config.auth.as_ref())?;
        Ok(ChatSession::new(
            self.new_key(),
            handshake,
            self.config.unacked_per_connection,
        ))
    }

    async fn connected(&self, session: &mut ChatSession, socket: &Socket) {
        // In the fan-out before presence announces it, so nothing said
        // about the room from now on misses it.
        self.fanout.join(Joining {
            key: session.key,
            user: session.user.clone(),
            room: session.room.clone(),
            socket: socket.clone(),
            since: session.since.unwrap_or(0),
        });
        let online = self
            .presence
            .join(session.key, &session.user, session.room.as_ref());
        self.fanout.send_online(session.key, &online);
        if let Some(console) = &self.console {
            console.connected(&session.user, session.room.as_deref());
        }
        let mut history_seq = 0;
        if let Some(room) = &session.room {
            let query = match session.since {
                Some(since) => HistoryQuery {
                    after: Some(since),
                    limit: HISTORY_MAX,
                    ..Default::default()
                },
                None => HistoryQuery {
                    limit: HISTORY_PAGE,
                    ..Default::default()
                },
            };
            match self.read_history(room.to_string(), query).await {
                Ok(page) => {
                    let messages: Vec<Value> = page.messages.iter().map(view_json).collect();
                    socket.emit("history", &messages);
                    history_seq = page.applied_seq;
                }
                // The client retries on its own, as after a network drop.
                Err(_) => socket.close(),
            }
        }
        self.fanout.ready(session.key, history_seq);
    }

    async fn event(&self, session: &mut ChatSession, socket: &Socket, event: Event) {
        match event.name() {
            Some("chat message") => self.on_chat_message(session, socket, &event).await,
            Some("history") => self.on_history(session, socket, &event).await,
            Some("conversations") => self.on_conversations(session, socket, &event).await,
            Some("read") => self.on_read(session, socket, &event).await,
            Some("typing") => self.on_typing(session, &event),
            _ => {}
        }
    }

    async fn disconnect(&self, session: ChatSession, socket: &Socket, reason: &'static str) {
        if self.fanout.leave(session.key) {
            self.typist_left(&session.user);
        }
        self.presence.leave(session.key);
        tracing::debug!(user = %session.user, sid = socket.id(), reason, "disconnected");
        if let Some(console) = &self.console {
            console.disconnected(socket.id());
        }
    }
}
