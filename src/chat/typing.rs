//! `typing`: relayed at once to the peer's connections, never stored. A
//! user's `typing: true` holds for [`HOLD`]; when the typist's last
//! connection closes while it holds, the peer is told `typing: false`, so
//! no "typing…" is left hanging.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::handshake::ChatSession;
use super::names::valid_user_name;
use super::rate::RateLimit;
use super::room::dm_room;
use super::service::{Chat, Ticket};
use crate::log::Log;
use crate::presence::{Announce as _, Typing};
use crate::socketio::Event;

/// How long a `typing: true` holds without being repeated.
pub const HOLD: Duration = Duration::from_secs(5);

/// At most this many `typing` events per second per user are relayed; the
/// rest are dropped silently.
pub const TYPING_RATE: RateLimit = RateLimit {
    rate: 5.0,
    burst: 5,
};

/// Fewest typists kept before a sweep forgets expired ones.
const SWEEP_FLOOR: usize = 1024;

/// Who is typing to whom, until when.
#[derive(Debug)]
pub struct Typists {
    state: Mutex<Holds>,
}

#[derive(Debug)]
struct Holds {
    /// Typist → (peer, until) for every `typing: true` not yet over.
    by_user: HashMap<Box<str>, Vec<(Box<str>, Instant)>>,
    sweep_at: usize,
}

impl Default for Typists {
    fn default() -> Self {
        Typists {
            state: Mutex::new(Holds {
                by_user: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }
}

impl Typists {
    fn lock(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that `user` started (or stopped) typing to `peer` at `now`.
    pub fn note(&self, user: &str, peer: &str, typing: bool, now: Instant) {
        let mut state = self.lock();
        if state.by_user.len() >= state.sweep_at {
            state.by_user.retain(|_, holds| {
                holds.retain(|(_, until)| *until > now);
                !holds.is_empty()
            });
            state.sweep_at = (2 * state.by_user.len()).max(SWEEP_FLOOR);
        }
        let holds = match (state.by_user.get_mut(user), typing) {
            (Some(holds), _) => holds,
            (None, false) => return,
            (None, true) => state.by_user.entry(user.into()).or_default(),
        };
        holds.retain(|(held, until)| &**held != peer && *until > now);
        if typing {
            holds.push((peer.into(), now + HOLD));
        }
        if holds.is_empty() {
            state.by_user.remove(user);
        }
    }

    /// `user`'s last connection closed: the peers they were still typing
    /// to, forgotten.
    pub fn stop(&self, user: &str, now: Instant) -> Vec<Box<str>> {
        let holds = self.lock().by_user.remove(user).unwrap_or_default();
        holds
            .into_iter()
            .filter(|(_, until)| *until > now)
            .map(|(peer, _)| peer)
            .collect()
    }
}

impl<L: Log<Ticket>> Chat<L> {
    /// `typing {peer?, typing}`: relayed to the peer's connections here and
    /// on other nodes; malformed or over the rate, dropped silently.
    pub(super) fn on_typing(&self, session: &ChatSession, event: &Event) {
        let Some(Value::Object(fields)) = event.args.get(1) else {
            return;
        };
        let Some(typing) = fields.get("typing").and_then(Value::as_bool) else {
            return;
        };
        let peer = match fields.get("peer") {
            None | Some(Value::Null) => match &session.peer {
                Some(peer) => &**peer,
                None => return,
            },
            Some(Value::String(peer)) if valid_user_name(peer) && **peer != *session.user => {
                peer.as_str()
            }
            Some(_) => return,
        };
        let now = Instant::now();
        if !self.typing_rates.take(&session.user, now) {
            return;
        }
        self.typists.note(&session.user, peer, typing, now);
        self.relay_typing(Typing {
            room: dm_room(&session.user, peer),
            user: session.user.to_string(),
            peer: peer.to_owned(),
            typing,
        });
    }

    /// `user`'s last connection on this node closed: whoever they were
    /// typing to is told they stopped.
    pub(super) fn typist_left(&self, user: &str) {
        for peer in self.typists.stop(user, Instant::now()) {
            self.relay_typing(Typing {
                room: dm_room(user, &peer),
                user: user.to_owned(),
                peer: peer.into(),
                typing: false,
            });
        }
    }

    fn relay_typing(&self, typing: Typing) {
        self.fanout.typing(&typing);
        self.presence.relay_typing(&typing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typist_who_leaves_stops_only_what_still_holds() {
        let typists = Typists::default();
        let start = Instant::now();
        typists.note("A", "B", true, start);
        typists.note("A", "C", true, start);
        typists.note("A", "D", true, start);
        typists.note("A", "C", false, start);
        let later = start + HOLD / 2;
        typists.note("A", "D", true, later);
        // B's hold ran out; C was stopped; D was repeated and still holds.
        let peers = typists.stop("A", start + HOLD + Duration::from_millis(1));
        assert_eq!(peers, vec![Box::<str>::from("D")]);
        assert!(
            typists.stop("A", later).is_empty(),
            "forgotten once stopped"
        );
    }

    #[test]
    fn expired_typists_are_swept() {
        let typists = Typists::default();
        let start = Instant::now();
        for i in 0..SWEEP_FLOOR {
            typists.note(&format!("u{i}"), "B", true, start);
        }
        typists.note("late", "B", true, start + HOLD * 2);
        assert_eq!(typists.lock().by_user.len(), 1);
    }
}
