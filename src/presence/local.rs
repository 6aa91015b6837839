//! Presence of one node: its own connections are everyone there is.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    Announce, ConnKey, OnlineList, OnlineSample, Presence, SAMPLE_NAMES, Typing, UserPresence,
};
use crate::metrics::METRICS;

/// Presence kept in this process's memory.
pub struct LocalPresence {
    state: Mutex<PresenceState>,
    version: AtomicU64,
    announce: Arc<dyn Announce>,
}

#[derive(Default)]
struct PresenceState {
    conns: HashMap<ConnKey, Member>,
    /// Connections per user, in byte order of the names.
    users: BTreeMap<Arc<str>, usize>,
    /// Connections per user, per room.
    rooms: HashMap<Arc<str>, BTreeMap<Arc<str>, usize>>,
}

struct Member {
    user: Arc<str>,
    room: Option<Arc<str>>,
}

impl LocalPresence {
    /// Empty presence whose room changes go to `announce`.
    pub fn new(announce: Arc<dyn Announce>) -> Self {
        LocalPresence {
            state: Mutex::default(),
            version: AtomicU64::new(0),
            announce,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PresenceState> {
        // Every update is a few map operations that cannot panic halfway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Presence for LocalPresence {
    fn join(&self, conn: ConnKey, user: &Arc<str>, room: Option<&Arc<str>>) -> OnlineList {
        let (list, changed) = {
            let mut state = self.lock();
            *state.users.entry(user.clone()).or_default() += 1;
            state.conns.insert(
                conn,
                Member {
                    user: user.clone(),
                    room: room.cloned(),
                },
            );
            METRICS.set_presence(state.conns.len(), state.users.len());
            let (users, changed) = match room {
                None => (vec![user.to_string()], false),
                Some(room) => {
                    let members = state.rooms.entry(room.clone()).or_default();
                    let count = members.entry(user.clone()).or_default();
                    *count += 1;
                    let first = *count == 1;
                    (members.keys().map(|u| u.to_string()).collect(), first)
                }
            };
            // Versioned under the lock, so versions follow the order of the changes.
            let list = OnlineList {
                users,
                version: self.next_version(),
            };
            (list, changed)
        };
        if let (true, Some(room)) = (changed, room) {
            self.announce.online(room, &list, Some(conn));
        }
        list
    }

    fn leave(&self, conn: ConnKey) {
        let changed = {
            let mut state = self.lock();
            let Some(member) = state.conns.remove(&conn) else {
                return;
            };
            if let Some(count) = state.users.get_mut(&member.user) {
                *count -= 1;
                if *count == 0 {
                    state.users.remove(&member.user);
                }
            }
            METRICS.set_presence(state.conns.len(), state.users.len());
            let room = member.room;
            room.and_then(|room| {
                let members = state.rooms.get_mut(&room)?;
                let count = members.get_mut(&member.user)?;
                *count -= 1;
                if *count > 0 {
                    return None;
                }
                members.remove(&member.user);
                let list = OnlineList {
                    users: members.keys().map(|u| u.to_string()).collect(),
                    version: self.next_version(),
                };
                if members.is_empty() {
                    state.rooms.remove(&room);
                }
                Some((room, list))
            })
        };
        if let Some((room, list)) = changed {
            self.announce.online(&room, &list, None);
        }
    }

    fn everyone(&self) -> OnlineSample {
        let state = self.lock();
        OnlineSample {
            first: state
                .users
                .keys()
                .take(SAMPLE_NAMES)
                .map(|user| user.to_string())
                .collect(),
            total: state.users.len(),
        }
    }

    fn list(&self) -> Vec<UserPresence> {
        let state = self.lock();
        let mut rooms: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for member in state.conns.values() {
            if let Some(room) = &member.room {
                rooms
                    .entry(&member.user)
                    .or_default()
                    .push(room.to_string());
            }
        }
        state
            .users
            .iter()
            .map(|(user, &connections)| {
                let mut rooms = rooms.remove(&**user).unwrap_or_default();
                rooms.sort();
                rooms.dedup();
                UserPresence {
                    user: user.to_string(),
                    connections,
                    rooms,
                }
            })
            .collect()
    }

    fn relay_typing(&self, _typing: &Typing) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One announcement: the room, its users, the connection skipped.
    type Announced = (String, Vec<String>, Option<ConnKey>);

    /// Records every announcement.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Announced>>);

    impl Announce for Recorder {
        fn online(&self, room: &str, list: &OnlineList, skip: Option<ConnKey>) {
            self.0
                .lock()
                .unwrap()
                .push((room.into(), list.users.clone(), skip));
        }

        fn typing(&self, _typing: &Typing) {}
    }

    impl Recorder {
        fn take(&self) -> Vec<Announced> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    fn setup() -> (Arc<Recorder>, LocalPresence) {
        let recorder = Arc::new(Recorder::default());
        (recorder.clone(), LocalPresence::new(recorder))
    }

    #[test]
    fn a_room_counts_users_not_connections() {
        let (announced, presence) = setup();
        let (a, b): (Arc<str>, Arc<str>) = ("A".into(), "B".into());
        let room: Arc<str> = "dm:A_B".into();
        assert_eq!(presence.join(1, &a, Some(&room)).users, ["A"]);
        assert_eq!(
            announced.take(),
            [("dm:A_B".into(), vec!["A".into()], Some(1))]
        );
        let joined = presence.join(2, &b, Some(&room));
        assert_eq!(joined.users, ["A", "B"]);
        assert_eq!(
            announced.take(),
            [("dm:A_B".into(), vec!["A".into(), "B".into()], Some(2))]
        );
        presence.join(3, &a, Some(&room));
        presence.leave(3);
        assert!(
            announced.take().is_empty(),
            "A's second connection changes nothing"
        );
        presence.leave(2);
        assert_eq!(
            announced.take(),
            [("dm:A_B".into(), vec!["A".into()], None)]
        );
        presence.leave(1);
        assert_eq!(announced.take(), [("dm:A_B".into(), vec![], None)]);
        assert_eq!(presence.everyone().total, 0);
    }

    #[test]
    fn versions_increase_with_every_list() {
        let (_, presence) = setup();
        let a: Arc<str> = "A".into();
        let first = presence.join(1, &a, None);
        let second = presence.join(2, &a, None);
        assert_eq!(first.users, ["A"]);
        assert!(second.version > first.version);
    }

    #[test]
    fn operators_see_users_with_connections_and_rooms() {
        let (_, presence) = setup();
        let a: Arc<str> = "A".into();
        presence.join(1, &a, Some(&"dm:A_B".into()));
        presence.join(2, &a, None);
        presence.join(3, &a, Some(&"dm:A_B".into()));
        assert_eq!(
            presence.list(),
            [UserPresence {
                user: "A".into(),
                connections: 3,
                rooms: vec!["dm:A_B".into()]
            }]
        );
        let sample = presence.everyone();
        assert_eq!((sample.first, sample.total), (vec!["A".to_string()], 1));
    }
}
