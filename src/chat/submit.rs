//! What a client changes: a `chat message` is checked (shape, size, peer,
//! rate) and appended to the log; its answer comes once the log settles it
//! (see `dispatch.rs`).

use std::time::Instant;

use serde::Serialize;
use tokio::sync::oneshot;

use serde_json::Value;

use super::handshake::{ChatSession, KNOWN_ROOMS};
use super::names::valid_user_name;
use super::room::dm_room;
use super::service::{Chat, ClientTicket, Submitted, Ticket};
use super::validate::validate;
use crate::log::Log;
use crate::metrics::METRICS;
use crate::refusal::RefusalReason;
use crate::socketio::{Event, Socket};
use crate::store::change::{Change, NewMessage, Outcome, ReadMark};
use crate::store::{now_us, utc_offset_s};

impl<L: Log<Ticket>> Chat<L> {
    /// `chat message`: checked, then appended; refused at once if it fails
    /// a rule or the log cannot take it.
    pub(super) async fn on_chat_message(
        &self,
        session: &mut ChatSession,
        socket: &Socket,
        event: &Event,
    ) {
        let peer = session.peer.clone();
        let draft = match validate(
            event.args.get(1),
            !event.attachments.is_empty(),
            &session.user,
            peer.as_deref(),
            self.config.max_message_bytes,
        ) {
            Ok(draft) => draft,
            Err(reason) => return refuse(socket, event.ack, reason),
        };
        if !self.rates.take(&session.user, Instant::now()) {
            return refuse(socket, event.ack, RefusalReason::RateLimited);
        }
        let room = dm_room(&session.user, draft.to);
        if !self.may_open(session, &room).await {
            return refuse(socket, event.ack, RefusalReason::RateLimited);
        }
        // The semaphore is never closed, so this only waits.
        let Ok(unacked) = session.unacked.clone().acquire_owned().await else {
            return refuse(socket, event.ack, RefusalReason::Unavailable);
        };
        if !self.in_flight.enter() {
            return refuse(socket, event.ack, RefusalReason::Unavailable);
        }
        let time_us = now_us();
        let change = Change::Message(NewMessage {
            room,
            sid: socket.id().to_owned(),
            from: session.user.to_string(),
            to: draft.to.to_owned(),
            text: draft.text.to_owned(),
            cid: draft.cid.map(str::to_owned),
            time_us,
            utc_offset_s: utc_offset_s(time_us),
            eid: None,
        });
        let ticket = Ticket::Client(ClientTicket {
            sender: session.key,
            socket: socket.clone(),
            ack: event.ack,
            kind: Submitted::Message,
            unacked,
        });
        if let Err((_, ticket)) = self.log.append(change, ticket).await {
            self.in_flight.settle(1);
            unavailable(ticket);
        }
    }
}

impl<L: Log<Ticket>> Chat<L> {
    /// `read {peer?, ts}`: the user has read the room up to `ts`; appended
    /// to the log, answered once applied (see `dispatch.rs`).
    pub(super) async fn on_read(&self, session: &ChatSession, socket: &Socket, event: &Event) {
        let answer_error = |error: &str| {
            if let Some(id) = event.ack {
                socket.ack(id, &serde_json::json!({"ok": false, "error": error}));
            }
        };
        let Some(Value::Object(fields)) = event.args.get(1) else {
            return answer_error("read expects {peer?, ts}");
        };
        let Some(ts) = fields.get("ts").and_then(Value::as_u64) else {
            return answer_error("ts must be a message ts");
        };
        let peer = match fields.get("peer") {
            None | Some(Value::Null) => match &session.peer {
                Some(peer) => &**peer,
                None => return answer_error("no peer"),
            },
            Some(Value::String(peer)) if valid_user_name(peer) && **peer != *session.user => {
                peer.as_str()
            }
            Some(_) => return answer_error("invalid peer"),
        };
        let Ok(unacked) = session.unacked.clone().acquire_owned().await else {
            return answer_error("unavailable: try again");
        };
        if !self.in_flight.enter() {
            return answer_error("unavailable: try again");
        }
        let change = Change::Read(ReadMark {
            room: dm_room(&session.user, peer),
            user: session.user.to_string(),
            ts,
        });
        let ticket = Ticket::Client(ClientTicket {
            sender: session.key,
            socket: socket.clone(),
            ack: event.ack,
            kind: Submitted::Read,
            unacked,
        });
        if let Err((_, ticket)) = self.log.append(change, ticket).await {
            self.in_flight.settle(1);
            unavailable(ticket);
        }
    }
}

impl<L: Log<Ticket>> Chat<L> {
    /// True if `session`'s user may send to `room`: a room that has
    /// messages, or a new one within the user's new-room rate.
    async fn may_open(&self, session: &mut ChatSession, room: &str) -> bool {
        if session.known_rooms.iter().any(|known| **known == *room) {
            return true;
        }
        let store = self.store.clone();
        let name = room.to_owned();
        let exists = tokio::task::spawn_blocking(move || store.room_has_messages(&name))
            .await
            .ok()
            .and_then(Result::ok)
            // Unreadable: the message's own commit will tell.
            .unwrap_or(true);
        if !exists && !self.new_room_rates.take(&session.user, Instant::now()) {
            return false;
        }
        if session.known_rooms.len() >= KNOWN_ROOMS {
            session.known_rooms.remove(0);
        }
        session.known_rooms.push(room.into());
        true
    }
}

/// The answer to a refused `chat message`: by ack, or as a `chat error`.
#[derive(Serialize)]
struct RefusalAnswer {
    ok: bool,
    error: &'static str,
    reason: &'static str,
}

/// Refuses a `chat message` with `reason`.
pub(super) fn refuse(socket: &Socket, ack: Option<u64>, reason: RefusalReason) {
    METRICS.message_refused(reason);
    let answer = RefusalAnswer {
        ok: false,
        error: "Message is not accepted",
        reason: reason.as_str(),
    };
    match ack {
        Some(id) => socket.ack(id, &answer),
        None => socket.emit("chat error", &answer),
    };
}

/// Tells whoever submitted a change that it was not applied: nothing was
/// kept, they may retry.
pub(super) fn unavailable(ticket: Ticket) {
    match ticket {
        Ticket::Client(ticket) => match ticket.kind {
            Submitted::Message => refuse(&ticket.socket, ticket.ack, RefusalReason::Unavailable),
            Submitted::Read => {
                if let Some(id) = ticket.ack {
                    ticket.socket.ack(
                        id,
                        &serde_json::json!({"ok": false, "error": "unavailable: try again"}),
                    );
                }
            }
        },
        Ticket::Operator(reply) => {
            let _ = reply.send(Err("the change could not be applied now".into()));
        }
    }
}

impl<L: Log<Ticket>> Chat<L> {
    /// Applies an operator's change (a purge from the admin socket) through
    /// the log, in order with everything else; answers its outcome.
    pub async fn apply(&self, change: Change) -> Result<Outcome, String> {
        if !self.in_flight.enter() {
            return Err("the server is shutting down".into());
        }
        let (reply, outcome) = oneshot::channel();
        if let Err((_, ticket)) = self.log.append(change, Ticket::Operator(reply)).await {
            self.in_flight.settle(1);
            unavailable(ticket);
        }
        outcome
            .await
            .unwrap_or_else(|_| Err("the server stopped before applying it".into()))
    }
}
