//! Who is connected where: presence per room and user, and the fan-out of
//! accepted messages to every connection of both users.
//!
//! One mutex guards the maps; it is never held across I/O: sending to a
//! connection only queues an encoded frame on its bounded outbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use super::console::NODE_MAX_ITEMS;
use super::rate::{RateLimit, TokenBucket};
use crate::metrics::METRICS;
use crate::socketio::{Socket, event_packet};

/// Identifies one connection in the hub.
pub type ConnKey = u64;

/// Frames a connection may have waiting while it catches up on history.
const MAX_BACKLOG: usize = 1024;

/// Presence and routing for the whole server.
pub struct Hub {
    state: Mutex<State>,
    next_key: AtomicU64,
    rate: RateLimit,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnKey, Conn>,
    users: BTreeMap<Arc<str>, User>,
    rooms: HashMap<Arc<str>, Vec<ConnKey>>,
    /// The highest `ts` fanned out so far: history up to it plus live
    /// delivery after it is every message exactly once.
    watermark: u64,
}

struct Conn {
    user: Arc<str>,
    room: Option<Arc<str>>,
    socket: Socket,
    /// Frames held back while the connection's history is being read.
    backlog: Option<Vec<Bytes>>,
}

impl Conn {
    fn send(&mut self, frame: &Bytes) {
        match &mut self.backlog {
            Some(backlog) if backlog.len() >= MAX_BACKLOG => self.socket.disconnect(),
            Some(backlog) => backlog.push(frame.clone()),
            None => {
                self.socket.send_encoded(frame.clone());
            }
        }
    }
}

struct User {
    conns: Vec<ConnKey>,
    bucket: TokenBucket,
}

/// What a connection learns when it joins.
#[derive(Debug)]
pub struct Joined {
    /// The `online` list of its room (just itself without a room).
    pub room_online: Vec<String>,
    /// Who is online, for the console.
    pub everyone: OnlineSample,
    /// Messages with `ts` up to this were fanned out before the join and
    /// must come from history; later ones arrive live.
    pub watermark: u64,
}

/// Who is online, cheaply: the first names in order (at most what the
/// console shows) and the count, so a connect costs the same with ten
/// users online as with ten thousand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineSample {
    /// The first user names, in byte order.
    pub first: Vec<String>,
    /// How many users are online in all.
    pub total: usize,
}

/// One accepted message to fan out.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The sender's user name.
    pub from: &'a str,
    /// The recipient's user name.
    pub to: &'a str,
    /// The message's `ts`.
    pub ts: u64,
    /// The encoded `chat message` event.
    pub frame: Bytes,
    /// The connection that sent it, which does not get it back.
    pub sender: ConnKey,
}

/// One user's presence, for operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    /// The user name.
    pub user: String,
    /// How many connections the user has open.
    pub connections: usize,
    /// The rooms those connections are in, sorted.
    pub rooms: Vec<String>,
}

impl Hub {
    /// An empty hub enforcing `rate` per user; `watermark` is the highest
    /// `ts` already in the store (all of it reaches clients as history).
    pub fn new(rate: RateLimit, watermark: u64) -> Self {
        Hub {
            state: Mutex::new(State {
                watermark,
                ..State::default()
            }),
            next_key: AtomicU64::new(1),
            rate,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain maps behind,
        // still consistent enough to keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A key for a new connection.
    pub fn new_key(&self) -> ConnKey {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection. Until [`Hub::ready`], what it should receive
    /// is held back so it arrives after the history the caller sends.
    pub fn join(
        &self,
        key: ConnKey,
        user: Arc<str>,
        room: Option<Arc<str>>,
        socket: Socket,
    ) -> Joined {
        let mut state = self.lock();
        let rate = self.rate;
        state
            .users
            .entry(user.clone())
            .or_insert_with(|| User {
                conns: Vec::new(),
                bucket: TokenBucket::new(rate, Instant::now()),
            })
            .conns
            .push(key);
        state.conns.insert(
            key,
            Conn {
                user: user.clone(),
                room: room.clone(),
                socket,
                backlog: Some(Vec::new()),
            },
        );
        let room_online = match &room {
            Some(room) => {
                let before = state.room_users(room);
                state.rooms.entry(room.clone()).or_default().push(key);
                let after = state.room_users(room);
                if after != before {
                    state.announce(room, &after, Some(key));
                }
                after
            }
            None => vec![user.to_string()],
        };
        METRICS.set_presence(state.conns.len(), state.users.len());
        Joined {
            room_online,
            everyone: state.everyone(),
            watermark: state.watermark,
        }
    }

    /// Releases what was held back for `key` since it joined.
    pub fn ready(&self, key: ConnKey) {
        let mut state = self.lock();
        if let Some(conn) = state.conns.get_mut(&key) {
            for frame in conn.backlog.take().unwrap_or_default() {
                conn.socket.send_encoded(frame);
            }
        }
    }

    /// Removes a connection; returns who is still online.
    pub fn leave(&self, key: ConnKey) -> OnlineSample {
        let mut state = self.lock();
        let before = match state.conns.get(&key).and_then(|conn| conn.room.clone()) {
            Some(room) => state.room_users(&room),
            None => Vec::new(),
        };
        if let Some(conn) = state.conns.remove(&key) {
            if let Some(user) = state.users.get_mut(&conn.user) {
                user.conns.retain(|k| *k != key);
                if user.conns.is_empty() {
                    state.users.remove(&conn.user);
                }
            }
            if let Some(room) = &conn.room {
                if let Some(members) = state.rooms.get_mut(room) {
                    members.retain(|k| *k != key);
                    if members.is_empty() {
                        state.rooms.remove(room);
                    }
                }
                let after = state.room_users(room);
                if after != before {
                    state.announce(room, &after, None);
                }
            }
        }
        METRICS.set_presence(state.conns.len(), state.users.len());
        state.everyone()
    }

    /// Takes one message from `user`'s rate budget.
    pub fn take_token(&self, user: &str) -> bool {
        let mut state = self.lock();
        match state.users.get_mut(user) {
            Some(entry) => entry.bucket.take(self.rate, Instant::now()),
            None => false,
        }
    }

    /// Fans out committed messages, in order, to every connection of both
    /// users except the sending one.
    pub fn deliver(&self, deliveries: &[Delivery<'_>]) {
        let mut state = self.lock();
        // Borrowed apart, so a user's connection list is read in place
        // while its connections are written to: no copy per message.
        let State {
            users,
            conns,
            watermark,
            ..
        } = &mut *state;
        for delivery in deliveries {
            for user in [delivery.from, delivery.to] {
                let Some(entry) = users.get(user) else {
                    continue;
                };
                for key in &entry.conns {
                    if *key == delivery.sender {
                        continue;
                    }
                    if let Some(conn) = conns.get_mut(key) {
                        conn.send(&delivery.frame);
                    }
                }
            }
            *watermark = (*watermark).max(delivery.ts);
        }
    }

    /// The highest `ts` delivered so far.
    pub fn watermark(&self) -> u64 {
        self.lock().watermark
    }

    /// Who is online, with connection counts and rooms.
    pub fn presence(&self) -> Vec<Presence> {
        let state = self.lock();
        state
            .users
            .iter()
            .map(|(user, entry)| {
                let mut rooms: Vec<String> = entry
                    .conns
                    .iter()
                    .filter_map(|key| state.conns.get(key)?.room.as_deref().map(str::to_owned))
                    .collect();
                rooms.sort();
                rooms.dedup();
                Presence {
                    user: user.to_string(),
                    connections: entry.conns.len(),
                    rooms,
                }
            })
            .collect()
    }

    /// Disconnects every connection (server shutdown).
    pub fn disconnect_all(&self) {
        let state = self.lock();
        for conn in state.conns.values() {
            conn.socket.disconnect();
        }
    }
}

impl State {
    fn room_users(&self, room: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|key| self.conns.get(key).map(|conn| conn.user.to_string()))
            .collect();
        users.sort();
        users.dedup();
        users
    }

    fn everyone(&self) -> OnlineSample {
        OnlineSample {
            first: self
                .users
                .keys()
                .take(NODE_MAX_ITEMS)
                .map(|user| user.to_string())
                .collect(),
            total: self.users.len(),
        }
    }

    /// Sends the room's new `online` list to its connections but `skip`.
    fn announce(&mut self, room: &str, online: &[String], skip: Option<ConnKey>) {
        let frame = event_packet("/", "online", online);
        let keys = self.rooms.get(room).cloned().unwrap_or_default();
        for key in keys {
            if Some(key) == skip {
                continue;
            }
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.send(&frame);
            }
        }
    }
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

    fn join(hub: &Hub, user: &str, room: Option<&str>) -> (ConnKey, Joined, OutboxReceiver) {
        let (socket, receiver) = socket();
        let key = hub.new_key();
        let joined = hub.join(key, user.into(), room.map(Into::into), socket);
        hub.ready(key);
        (key, joined, receiver)
    }

    #[test]
    fn room_presence_counts_users_not_connections() {
        let hub = Hub::new(RateLimit::per_second(20), 0);
        let room = Some("dm:A_B");
        let (a1, joined, mut a1_out) = join(&hub, "A", room);
        assert_eq!(joined.room_online, ["A"]);
        let (b, joined, _) = join(&hub, "B", room);
        assert_eq!(joined.room_online, ["A", "B"]);
        assert_eq!(drain(&mut a1_out), [r#"42["online",["A","B"]]"#]);
        let (a2, _, _) = join(&hub, "A", room);
        assert!(
            drain(&mut a1_out).is_empty(),
            "a second connection of A changes nothing"
        );
        hub.leave(a2);
        assert!(drain(&mut a1_out).is_empty());
        hub.leave(b);
        assert_eq!(
            drain(&mut a1_out),
            [r#"42["online",["A"]]"#],
            "B's leaving is announced"
        );
        let online = hub.leave(a1);
        assert_eq!((online.first.len(), online.total), (0, 0));
    }

    #[test]
    fn delivers_to_both_users_except_the_sender_and_holds_back_until_ready() {
        let hub = Hub::new(RateLimit::per_second(20), 0);
        let (a1, _, mut a1_out) = join(&hub, "A", Some("dm:A_B"));
        let (_a2, _, mut a2_out) = join(&hub, "A", Some("dm:A_C"));
        let (b_socket, mut b_out) = socket();
        let b = hub.new_key();
        let joined = hub.join(b, "B".into(), Some("dm:A_B".into()), b_socket);
        assert_eq!(joined.watermark, 0);
        drain(&mut a1_out);
        hub.deliver(&[Delivery {
            from: "A",
            to: "B",
            ts: 5,
            frame: Bytes::from_static(b"42[\"chat message\",1]"),
            sender: a1,
        }]);
        assert!(drain(&mut a1_out).is_empty());
        assert_eq!(drain(&mut a2_out), [r#"42["chat message",1]"#]);
        assert!(drain(&mut b_out).is_empty(), "held back until ready");
        hub.ready(b);
        assert_eq!(drain(&mut b_out), [r#"42["chat message",1]"#]);
        assert_eq!(hub.watermark(), 5);
    }

    #[test]
    fn reports_presence_for_operators() {
        let hub = Hub::new(RateLimit::per_second(20), 0);
        let _a = join(&hub, "A", Some("dm:A_B"));
        let _b = join(&hub, "A", None);
        assert_eq!(
            hub.presence(),
            [Presence {
                user: "A".into(),
                connections: 2,
                rooms: vec!["dm:A_B".into()]
            }]
        );
    }
}
