//! This node's chat connections, and getting frames to them: every
//! connection of a user, every connection in a room.
//!
//! One mutex guards the maps; it is never held across I/O: sending only
//! queues an encoded frame on a connection's bounded outbox. A connection
//! that has just joined holds back what it should receive until its history
//! is sent (see [`Fanout::ready`]), so history and live frames meet without
//! a gap or a repeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use serde::Serialize;

use crate::presence::{Announce, ConnKey, OnlineList, Typing};
use crate::socketio::{Socket, event_packet};

/// Frames a connection may have waiting while its history is read; past
/// that its connection is closed (it would never catch up), and the client
/// reconnects to read its history afresh.
const MAX_BACKLOG: usize = 1024;

/// This node's connections.
#[derive(Default)]
pub struct Fanout {
    state: Mutex<FanoutState>,
}

#[derive(Default)]
struct FanoutState {
    /// Boxed: a hash table has up to twice the slots of its entries (16,384
    /// at 10,000 connections), and an inline `Conn` made every empty slot
    /// 128 bytes.
    conns: HashMap<ConnKey, Box<Conn>>,
    users: HashMap<Arc<str>, Vec<ConnKey>>,
    rooms: HashMap<Arc<str>, Vec<ConnKey>>,
}

struct Conn {
    user: Arc<str>,
    room: Option<Arc<str>>,
    socket: Socket,
    /// Frames held back while the connection's history is being read.
    backlog: Option<Vec<Held>>,
    /// The newest `online` list version the connection was sent.
    online_version: u64,
    /// Messages of its room up to this `ts` the client already has (its
    /// handshake's `since`): never sent live. A node whose copy lags learns
    /// of them after the client did.
    since: u64,
}

/// A frame held back while a connection's history is read.
enum Held {
    /// A settled change's event and its log position.
    Live(u64, Bytes),
    /// An `online` list and its version.
    Online(u64, Bytes),
}

impl Conn {
    fn hold(&mut self, held: Held) {
        match &mut self.backlog {
            Some(backlog) if backlog.len() >= MAX_BACKLOG => self.socket.close(),
            Some(backlog) => backlog.push(held),
            None => self.release(held),
        }
    }

    /// Sends a held frame, unless the connection has it already: a change
    /// its history holds, an `online` list older than one it was sent.
    fn release(&mut self, held: Held) {
        let frame = match held {
            Held::Live(_, frame) => frame,
            Held::Online(version, _) if version <= self.online_version => return,
            Held::Online(version, frame) => {
                self.online_version = version;
                frame
            }
        };
        self.socket.send_encoded(frame);
    }
}

/// A frame for every connection of two users (a message's sender and
/// recipient, a reader and the peer), but one.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The room it belongs to.
    pub room: &'a str,
    /// The two users whose connections get it.
    pub users: [&'a str; 2],
    /// Its log position.
    pub seq: u64,
    /// For a message: its `ts` (connections whose client has it already, by
    /// `since`, skip it).
    pub ts: Option<u64>,
    /// The encoded event.
    pub frame: Bytes,
    /// The connection it came from, which does not get it back.
    pub sender: Option<ConnKey>,
}

/// A connection joining the fan-out.
pub struct Joining {
    /// Its key.
    pub key: ConnKey,
    /// Its user.
    pub user: Arc<str>,
    /// Its room, when it has a peer.
    pub room: Option<Arc<str>>,
    /// Its socket.
    pub socket: Socket,
    /// Its handshake's `since` (0 without).
    pub since: u64,
}

impl Fanout {
    fn lock(&self) -> MutexGuard<'_, FanoutState> {
        // A panic elsewhere while holding the lock leaves plain maps behind,
        // still consistent enough to keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a connection. Until [`Fanout::ready`], what it should receive
    /// is held back, so it arrives after the history the caller sends.
    pub fn join(&self, joining: Joining) {
        let mut state = self.lock();
        let Joining {
            key,
            user,
            room,
            socket,
            since,
        } = joining;
        state.users.entry(user.clone()).or_default().push(key);
        if let Some(room) = &room {
            state.rooms.entry(room.clone()).or_default().push(key);
        }
        state.conns.insert(
            key,
            Box::new(Conn {
                user,
                room,
                socket,
                backlog: Some(Vec::new()),
                online_version: 0,
                since,
            }),
        );
    }

    /// Sends a joining connection its own `online` list: the first thing
    /// it is told, before its history and what was held back.
    pub fn send_online(&self, key: ConnKey, list: &OnlineList) {
        let frame = event_packet("/", "online", &list.users);
        if let Some(conn) = self.lock().conns.get_mut(&key) {
            conn.release(Held::Online(list.version, frame));
        }
    }

    /// Releases what was held back for `key` since it joined, but what its
    /// history (read at log position `history_seq`) already holds.
    pub fn ready(&self, key: ConnKey, history_seq: u64) {
        let mut state = self.lock();
        if let Some(conn) = state.conns.get_mut(&key) {
            for held in conn.backlog.take().unwrap_or_default() {
                match held {
                    Held::Live(seq, _) if seq <= history_seq => {}
                    held => conn.release(held),
                }
            }
        }
    }

    /// Removes a connection; true if it was its user's last on this node.
    pub fn leave(&self, key: ConnKey) -> bool {
        let mut state = self.lock();
        let Some(conn) = state.conns.remove(&key) else {
            return false;
        };
        if let Some(room) = &conn.room {
            remove_key(&mut state.rooms, room, key);
        }
        remove_key(&mut state.users, &conn.user, key)
    }

    /// Queues each delivery, in order, on every connection of its two users
    /// but its sender.
    pub fn deliver(&self, deliveries: &[Delivery<'_>]) {
        let mut state = self.lock();
        // Borrowed apart, so a user's connection list is read in place
        // while its connections are written to: no copy per delivery.
        let FanoutState { users, conns, .. } = &mut *state;
        for delivery in deliveries {
            let [first, second] = delivery.users;
            let second = (second != first).then_some(second);
            for user in std::iter::once(first).chain(second) {
                let Some(keys) = users.get(user) else {
                    continue;
                };
                for key in keys {
                    if Some(*key) == delivery.sender {
                        continue;
                    }
                    let Some(conn) = conns.get_mut(key) else {
                        continue;
                    };
                    let known = delivery.ts.is_some_and(|ts| {
                        ts <= conn.since && conn.room.as_deref() == Some(delivery.room)
                    });
                    if !known {
                        conn.hold(Held::Live(delivery.seq, delivery.frame.clone()));
                    }
                }
            }
        }
    }

    /// Sends `frame` at once to every connection of `user`: for what is not
    /// part of the log (`typing`), which never waits behind history.
    fn send_to_user(&self, user: &str, frame: &Bytes) {
        let state = self.lock();
        for key in state.users.get(user).into_iter().flatten() {
            if let Some(conn) = state.conns.get(key) {
                conn.socket.send_encoded(frame.clone());
            }
        }
    }

    /// True if `user` has a connection on this node.
    pub fn has_user(&self, user: &str) -> bool {
        self.lock().users.contains_key(user)
    }
}

impl Announce for Fanout {
    fn online(&self, room: &str, list: &OnlineList, skip: Option<ConnKey>) {
        let frame = event_packet("/", "online", &list.users);
        let mut state = self.lock();
        let FanoutState { rooms, conns, .. } = &mut *state;
        for key in rooms.get(room).into_iter().flatten() {
            if Some(*key) == skip {
                continue;
            }
            if let Some(conn) = conns.get_mut(key) {
                conn.hold(Held::Online(list.version, frame.clone()));
            }
        }
    }

    fn typing(&self, typing: &Typing) {
        if !self.has_user(&typing.peer) {
            return;
        }
        let event = TypingEvent {
            room_id: &typing.room,
            user: &typing.user,
            typing: typing.typing,
        };
        self.send_to_user(&typing.peer, &event_packet("/", "typing", &event));
    }
}

/// The `typing` event.
#[derive(Serialize)]
struct TypingEvent<'a> {
    #[serde(rename = "roomId")]
    room_id: &'a str,
    user: &'a str,
    typing: bool,
}

/// Removes `key` from `name`'s list; true if that emptied (and dropped) it.
fn remove_key(lists: &mut HashMap<Arc<str>, Vec<ConnKey>>, name: &str, key: ConnKey) -> bool {
    let Some(keys) = lists.get_mut(name) else {
        return false;
    };
    keys.retain(|k| *k != key);
    if keys.is_empty() {
        lists.remove(name);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engineio::outbox::OutboxReceiver;
    use crate::engineio::{Outbound, Outbox};

    fn socket() -> (Socket, OutboxReceiver) {
        let (outbox, receiver) = Outbox::new(64);
        (Socket::new("/", outbox), receiver)
    }

    fn drain(receiver: &mut OutboxReceiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Outbound::Text(bytes)) = receiver.try_recv() {
            out.push(String::from_utf8(bytes.to_vec()).unwrap());
        }
        out
    }

    fn join(fanout: &Fanout, key: ConnKey, user: &str, room: Option<&str>) -> OutboxReceiver {
        let (socket, receiver) = socket();
        fanout.join(Joining {
            key,
            user: user.into(),
            room: room.map(Into::into),
            socket,
            since: 0,
        });
        receiver
    }

    fn message(seq: u64, sender: ConnKey) -> Delivery<'static> {
        Delivery {
            room: "dm:A_B",
            users: ["A", "B"],
            seq,
            ts: Some(seq * 10),
            frame: Bytes::from(format!("42[\"chat message\",{seq}]")),
            sender: Some(sender),
        }
    }

    #[test]
    fn delivers_to_both_users_except_the_sender() {
        let fanout = Fanout::default();
        let mut a1 = join(&fanout, 1, "A", Some("dm:A_B"));
        let mut a2 = join(&fanout, 2, "A", Some("dm:A_C"));
        let mut b = join(&fanout, 3, "B", Some("dm:A_B"));
        let mut c = join(&fanout, 4, "C", Some("dm:A_C"));
        for key in 1..=4 {
            fanout.ready(key, 0);
        }
        fanout.deliver(&[message(5, 1)]);
        assert!(drain(&mut a1).is_empty(), "not back to its sender");
        assert_eq!(drain(&mut a2), [r#"42["chat message",5]"#]);
        assert_eq!(drain(&mut b), [r#"42["chat message",5]"#]);
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn a_joining_connection_gets_only_what_its_history_lacks_after_it() {
        let fanout = Fanout::default();
        let mut b = join(&fanout, 1, "B", Some("dm:A_B"));
        fanout.deliver(&[message(5, 9), message(6, 9), message(7, 9)]);
        assert!(drain(&mut b).is_empty(), "held back until ready");
        // Its history was read at position 6: it holds 5 and 6 already.
        fanout.ready(1, 6);
        assert_eq!(drain(&mut b), [r#"42["chat message",7]"#]);
        fanout.deliver(&[message(8, 9)]);
        assert_eq!(drain(&mut b), [r#"42["chat message",8]"#]);
    }

    #[test]
    fn a_client_that_has_messages_by_since_is_not_sent_them_live() {
        let fanout = Fanout::default();
        let (socket, mut b) = socket();
        fanout.join(Joining {
            key: 1,
            user: "B".into(),
            room: Some("dm:A_B".into()),
            socket,
            since: 60,
        });
        fanout.ready(1, 0);
        // A lagging node applies, after the join, messages the client saw elsewhere.
        fanout.deliver(&[message(5, 9), message(6, 9), message(7, 9)]);
        assert_eq!(drain(&mut b), [r#"42["chat message",7]"#]);
    }

    #[test]
    fn a_stale_online_list_never_follows_a_newer_one() {
        let fanout = Fanout::default();
        let mut a = join(&fanout, 1, "A", Some("dm:A_B"));
        let newer = OnlineList {
            users: vec!["A".into(), "B".into()],
            version: 7,
        };
        let older = OnlineList {
            users: vec!["A".into()],
            version: 6,
        };
        // A newer list announced while A joins waits behind its history;
        // once released it follows A's own (older) one.
        fanout.online("dm:A_B", &newer, None);
        fanout.send_online(1, &older);
        assert_eq!(drain(&mut a), [r#"42["online",["A"]]"#]);
        fanout.ready(1, 0);
        assert_eq!(drain(&mut a), [r#"42["online",["A","B"]]"#]);
        // An older list after a newer one is dropped.
        fanout.online("dm:A_B", &older, None);
        fanout.online("dm:A_B", &newer, Some(1));
        assert!(drain(&mut a).is_empty());
    }

    #[test]
    fn typing_goes_to_every_connection_of_the_peer_only() {
        let fanout = Fanout::default();
        let mut a = join(&fanout, 1, "A", Some("dm:A_B"));
        let mut b1 = join(&fanout, 2, "B", Some("dm:A_B"));
        let mut b2 = join(&fanout, 3, "B", None);
        fanout.typing(&Typing {
            room: "dm:A_B".into(),
            user: "A".into(),
            peer: "B".into(),
            typing: true,
        });
        let event = r#"42["typing",{"roomId":"dm:A_B","user":"A","typing":true}]"#;
        assert_eq!(drain(&mut b1), [event], "not held back behind history");
        assert_eq!(drain(&mut b2), [event]);
        assert!(drain(&mut a).is_empty());
    }

    #[test]
    fn leave_tells_when_a_users_last_connection_went() {
        let fanout = Fanout::default();
        let _a1 = join(&fanout, 1, "A", None);
        let _a2 = join(&fanout, 2, "A", Some("dm:A_B"));
        assert!(!fanout.leave(1));
        assert!(fanout.has_user("A"));
        assert!(fanout.leave(2));
        assert!(!fanout.has_user("A"));
        assert!(!fanout.leave(2), "twice is harmless");
    }
}
