//! What the log settled, answered and fanned out in log order: acks to the
//! senders on this node, then the events to every connection concerned.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::fanout::Delivery;
use super::message::MessageView;
use super::service::{Chat, ClientTicket, Ticket};
use super::submit::unavailable;
use crate::log::{Log, Settled};
use crate::metrics::METRICS;
use crate::socketio::{event_packet, event_packet_with};
use crate::store::StoredMessage;
use crate::store::change::{Applied, Outcome};

/// The `read` event: a user's cursor in a room moved.
#[derive(Serialize)]
struct ReadEvent<'a> {
    #[serde(rename = "roomId")]
    room_id: &'a str,
    user: &'a str,
    ts: u64,
}

/// Answers and fans out each settled batch, in log order, until the log ends.
pub(super) async fn dispatch<L: Log<Ticket>>(
    chat: Arc<Chat<L>>,
    mut settled: mpsc::Receiver<Settled<Ticket>>,
) {
    while let Some(batch) = settled.recv().await {
        match batch {
            Settled::Applied(applied) => {
                // Every ticket entered the in-flight count when it was submitted.
                let answered = applied.iter().filter(|a| a.ticket.is_some()).count();
                let mut deliveries = Vec::with_capacity(applied.len());
                // Frames are built first and kept alive for the deliveries
                // that borrow their rooms and users.
                let events: Vec<SettledEvent> = applied.into_iter().filter_map(answer).collect();
                for event in &events {
                    deliveries.push(event.delivery());
                }
                chat.fanout.deliver(&deliveries);
                chat.in_flight.settle(answered);
            }
            Settled::Dropped { error, tickets } => {
                // The applier logs the failure (once per outage, not per batch).
                tracing::debug!(%error, count = tickets.len(), "changes not applied: refused");
                let count = tickets.len();
                for ticket in tickets {
                    unavailable(ticket);
                }
                chat.in_flight.settle(count);
            }
        }
    }
}

/// A settled change's event for the fan-out.
struct SettledEvent {
    room: String,
    users: [String; 2],
    seq: u64,
    ts: Option<u64>,
    frame: Bytes,
    sender: Option<u64>,
}

impl SettledEvent {
    fn delivery(&self) -> Delivery<'_> {
        Delivery {
            room: &self.room,
            users: [&self.users[0], &self.users[1]],
            seq: self.seq,
            ts: self.ts,
            frame: self.frame.clone(),
            sender: self.sender,
        }
    }
}

/// Answers one applied change's sender (if on this node) and returns the
/// event its outcome fans out, if any.
fn answer(applied: Applied<Ticket>) -> Option<SettledEvent> {
    let Applied {
        seq,
        outcome,
        ticket,
    } = applied;
    let client = match ticket {
        Some(Ticket::Client(client)) => Some(client),
        Some(Ticket::Operator(reply)) => {
            let _ = reply.send(Ok(outcome));
            return None;
        }
        None => None,
    };
    let sender = client.as_ref().map(|c| c.sender);
    match outcome {
        Outcome::Stored(message) => {
            // Counted before the ack goes out, so a client that saw its ack
            // also sees it counted.
            METRICS.messages_accepted(1);
            // The message object is written once, into the fan-out frame,
            // and the ack copies it from there: no buffer of its own.
            let mut object = 0..0;
            let frame = event_packet_with("/", "chat message", |frame| {
                let start = frame.len();
                MessageView::of(&message).write_json(frame);
                object = start..frame.len();
            });
            if let Some(client) = &client {
                ack_message(client, &frame[object], false);
            }
            Some(SettledEvent {
                frame,
                users: [message.from, message.to],
                room: message.room,
                seq,
                ts: Some(message.ts),
                sender,
            })
        }
        Outcome::Duplicate(message) => {
            if let Some(client) = &client {
                ack_message(client, &message_json(&message), true);
            }
            None
        }
        Outcome::ReadMoved { room, user, ts } => {
            if let Some(ClientTicket {
                ack: Some(id),
                socket,
                ..
            }) = &client
            {
                socket.ack(*id, &json!({"ok": true, "read": ts}));
            }
            let frame = event_packet(
                "/",
                "read",
                &ReadEvent {
                    room_id: &room,
                    user: &user,
                    ts,
                },
            );
            let peer = super::room::peer_in(&room, &user)
                .unwrap_or(&user)
                .to_owned();
            Some(SettledEvent {
                room,
                users: [user, peer],
                seq,
                ts: None,
                frame,
                sender,
            })
        }
        Outcome::ReadUnchanged { ts, known, .. } => {
            if let Some(ClientTicket {
                ack: Some(id),
                socket,
                ..
            }) = &client
            {
                let answer = match known {
                    true => json!({"ok": true, "read": ts}),
                    false => {
                        json!({"ok": false, "error": "unknown peer: no conversation with them"})
                    }
                };
                socket.ack(*id, &answer);
            }
            None
        }
        // Purges have no event; a replayed position has no answer to give.
        Outcome::Purged { .. } | Outcome::AlreadyApplied => None,
    }
}

/// A stored message as one JSON object, for an ack without a frame.
fn message_json(message: &StoredMessage) -> Vec<u8> {
    let mut json = Vec::with_capacity(160 + message.text.len());
    MessageView::of(message).write_json(&mut json);
    json
}

fn ack_message(client: &ClientTicket, json: &[u8], duplicate: bool) {
    if let Some(id) = client.ack {
        // `{ok, message, duplicate?}` around the message's own JSON.
        client.socket.ack_with(id, |answer| {
            answer.extend_from_slice(br#"{"ok":true,"message":"#);
            answer.extend_from_slice(json);
            if duplicate {
                answer.extend_from_slice(br#","duplicate":true"#);
            }
            answer.push(b'}');
        });
    }
}
