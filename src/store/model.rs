//! The store's rules as a plain in-memory model (vectors and maps, no
//! counters, no chunks), and a property-style test that applies random
//! changes to both (in random batches, with folds, sweeps and reopens in
//! between) and checks that outcomes, history pages, exports, cursors and
//! the conversation lists agree.

use std::collections::{BTreeMap, HashMap};

use super::apply::RoomCache;
use super::change::{Change, NewMessage, Outcome, PurgeSelection, ReadMark};
use super::clock::format_time;
use super::fold::fold_step;
use super::relist::relist_step;
use super::schema::BUCKETS;
use super::sweep::sweep_step;
use super::testutil::{apply_cached, exported, stage_cached};
use super::{HistoryQuery, Store, StoredMessage};

/// A room of the model: its pair, its messages (oldest first), cursors.
#[derive(Debug, Default)]
struct Room {
    users: Vec<String>,
    messages: Vec<StoredMessage>,
    newest_ts: u64,
    cursors: HashMap<String, u64>,
}

/// What the store should hold.
#[derive(Debug, Default)]
struct Model {
    rooms: BTreeMap<String, Room>,
    cids: HashMap<(String, String), (String, u64)>,
}

impl Model {
    fn apply(&mut self, change: &Change) -> Outcome {
        match change {
            Change::Message(m) => self.message(m),
            Change::Read(r) => self.read(r),
            Change::Purge(p) => self.purge(p),
        }
    }

    fn message(&mut self, m: &NewMessage) -> Outcome {
        if let Some(cid) = &m.cid
            && let Some((room, ts)) = self.cids.get(&(m.from.clone(), cid.clone()))
            && let Some(original) = self.rooms[room].messages.iter().find(|o| o.ts == *ts)
        {
            return Outcome::Duplicate(original.clone());
        }
        let room = self.rooms.entry(m.room.clone()).or_default();
        if room.users.is_empty() {
            room.users = vec![m.from.clone(), m.to.clone()];
            room.users.sort();
        }
        let ts = m.time_us.max(room.newest_ts + 1);
        let stored = StoredMessage {
            room: m.room.clone(),
            ts,
            id: m.sid.clone(),
            from: m.from.clone(),
            to: m.to.clone(),
            text: m.text.clone(),
            time: format_time(m.time_us, m.utc_offset_s),
        };
        room.messages.push(stored.clone());
        room.newest_ts = ts;
        room.cursors.insert(m.from.clone(), ts);
        if let Some(cid) = &m.cid {
            self.cids
                .insert((m.from.clone(), cid.clone()), (m.room.clone(), ts));
        }
        Outcome::Stored(stored)
    }

    fn read(&mut self, r: &ReadMark) -> Outcome {
        let unknown = Outcome::ReadUnchanged {
            room: r.room.clone(),
            user: r.user.clone(),
            ts: 0,
            known: false,
        };
        let Some(room) = self.rooms.get_mut(&r.room) else {
            return unknown;
        };
        if !room.users.contains(&r.user) || room.messages.is_empty() {
            return unknown;
        }
        let cursor = room.cursors.get(&r.user).copied().unwrap_or(0);
        let target = r.ts.min(room.newest_ts);
        if target <= cursor {
            return Outcome::ReadUnchanged {
                room: r.room.clone(),
                user: r.user.clone(),
                ts: cursor,
                known: true,
            };
        }
        room.cursors.insert(r.user.clone(), target);
        Outcome::ReadMoved {
            room: r.room.clone(),
            user: r.user.clone(),
            ts: target,
        }
    }

    fn purge(&mut self, p: &PurgeSelection) -> Outcome {
        let mut count = 0;
        for (name, room) in &mut self.rooms {
            let before = match p {
                PurgeSelection::Room { room, before } if room == name => before.unwrap_or(u64::MAX),
                PurgeSelection::Room { .. } => continue,
                PurgeSelection::All { before } => *before,
            };
            let had = room.messages.len();
            room.messages.retain(|m| m.ts >= before);
            count += (had - room.messages.len()) as u64;
            if had > 0 && room.messages.is_empty() {
                room.cursors.clear();
            }
        }
        Outcome::Purged { count }
    }

    /// `user`'s conversations: (room, peer, last, unread, read, peer read).
    fn conversations(&self, user: &str) -> Vec<(String, String, StoredMessage, u64, u64, u64)> {
        let mut list: Vec<_> = self
            .rooms
            .iter()
            .filter(|(_, room)| room.users.iter().any(|u| u == user) && !room.messages.is_empty())
            .map(|(name, room)| {
                let peer = room
                    .users
                    .iter()
                    .find(|u| *u != user)
                    .unwrap_or(&room.users[0]);
                let read = room.cursors.get(user).copied().unwrap_or(0);
                let peer_read = room.cursors.get(peer).copied().unwrap_or(0);
                let unread = room
                    .messages
                    .iter()
                    .filter(|m| m.from == *peer && m.ts > read)
                    .count() as u64;
                let last = room.messages.last().unwrap().clone();
                (name.clone(), peer.clone(), last, unread, read, peer_read)
            })
            .collect();
        list.sort_by(|a, b| b.2.ts.cmp(&a.2.ts).then(a.0.cmp(&b.0)));
        list
    }
}

/// A small deterministic generator (an LCG), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const USERS: [&str; 4] = ["Ann", "Bob", "Cy", "Dee"];

fn room_of(a: &str, b: &str) -> String {
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    format!("dm:{first}_{second}")
}

// One random change; `clock` is the accepting node's clock, which mostly
// goes forward and sometimes steps back.
fn random_change(rng: &mut Rng, clock: &mut u64) -> Change {
    *clock = match rng.below(20) {
        0 => clock.saturating_sub(rng.below(5_000_000)),
        _ => *clock + rng.below(3_000_000),
    };
    let from = *rng.pick(&USERS);
    let to = *rng.pick(&USERS);
    let to = if to == from {
        USERS[(USERS.iter().position(|u| *u == from).unwrap() + 1) % 4]
    } else {
        to
    };
    let room = room_of(from, to);
    match rng.below(100) {
        0..70 => {
            let len = match rng.below(50) {
                0 => 5000,
                1..10 => 300,
                _ => rng.below(60) as usize,
            };
            Change::Message(NewMessage {
                room,
                sid: rng
                    .pick(&["jxKCSoWK6t4p8vojAAAD", "sock-1", "Bre91jFhRIFHalbm0001"])
                    .to_string(),
                from: from.into(),
                to: to.into(),
                text: "é".repeat(len / 2),
                cid: (rng.below(3) == 0).then(|| format!("c{}", rng.below(20))),
                time_us: *clock,
                utc_offset_s: *rng.pick(&[0, 3600, -8 * 3600, 19800]),
                eid: None,
            })
        }
        70..90 => Change::Read(ReadMark {
            room,
            user: from.into(),
            ts: clock.saturating_sub(rng.below(20_000_000)),
        }),
        90..96 => Change::Purge(PurgeSelection::Room {
            room,
            before: (rng.below(3) > 0).then(|| clock.saturating_sub(rng.below(60_000_000))),
        }),
        _ => Change::Purge(PurgeSelection::All {
            before: clock.saturating_sub(rng.below(120_000_000)),
        }),
    }
}

// Checks every read the chat makes against the model.
fn check(store: &Store, model: &Model, rng: &mut Rng, context: &str) {
    let exported = exported(store);
    let want: Vec<StoredMessage> = model
        .rooms
        .values()
        .flat_map(|room| room.messages.iter().cloned())
        .collect();
    assert_eq!(exported, want, "export, {context}");
    let rooms: Vec<String> = model
        .rooms
        .iter()
        .filter(|(_, room)| !room.messages.is_empty())
        .map(|(name, _)| name.clone())
        .collect();
    assert_eq!(store.rooms().unwrap(), rooms, "rooms, {context}");
    for (name, room) in &model.rooms {
        // A page with random bounds.
        let all = &room.messages;
        let bound = |rng: &mut Rng| match (all.is_empty(), rng.below(3)) {
            (false, 0) => Some(all[rng.below(all.len() as u64) as usize].ts),
            (false, 1) => Some(all[rng.below(all.len() as u64) as usize].ts + 1),
            _ => None,
        };
        let q = HistoryQuery {
            before: bound(rng),
            after: bound(rng),
            limit: 1 + rng.below(12) as usize,
            max_ts: None,
        };
        let inside: Vec<&StoredMessage> = all
            .iter()
            .filter(|m| q.before.is_none_or(|b| m.ts < b) && q.after.is_none_or(|a| m.ts > a))
            .collect();
        let page: Vec<StoredMessage> = match q.after {
            Some(_) => inside.iter().take(q.limit).map(|m| (*m).clone()).collect(),
            None => inside[inside.len().saturating_sub(q.limit)..]
                .iter()
                .map(|m| (*m).clone())
                .collect(),
        };
        assert_eq!(
            store.history_page(name, &q).unwrap().messages,
            page,
            "history {name} {q:?}, {context}"
        );
        for user in &room.users {
            let cursor = match room.messages.is_empty() {
                true => 0,
                false => room.cursors.get(user).copied().unwrap_or(0),
            };
            assert_eq!(
                store.read_cursor(name, user).unwrap(),
                cursor,
                "cursor {name} {user}, {context}"
            );
        }
    }
    for user in USERS {
        let got: Vec<_> = store
            .conversations(user, None, None, 100)
            .unwrap()
            .into_iter()
            .map(|c| (c.room, c.peer, c.last, c.unread, c.read, c.peer_read))
            .collect();
        let want = model.conversations(user);
        assert_eq!(got, want, "conversations of {user}, {context}");
        // The same list in pages, each going on after the last entry of
        // the one before; and `before` alone: rooms older than a ts.
        let limit = 1 + rng.below(4) as usize;
        let mut paged = Vec::new();
        loop {
            let after = paged.last().map(
                |(room, _, last, ..): &(String, String, StoredMessage, u64, u64, u64)| {
                    (last.ts, room.clone())
                },
            );
            let page = store
                .conversations(
                    user,
                    after.as_ref().map(|a| a.0),
                    after.as_ref().map(|a| a.1.as_str()),
                    limit,
                )
                .unwrap();
            let full = page.len() == limit;
            paged.extend(
                page.into_iter()
                    .map(|c| (c.room, c.peer, c.last, c.unread, c.read, c.peer_read)),
            );
            if !full {
                break;
            }
        }
        assert_eq!(paged, want, "conversations of {user} by {limit}, {context}");
        if let Some((_, _, last, ..)) = want.get(rng.below(want.len() as u64 + 1) as usize) {
            let older: Vec<String> = want
                .iter()
                .filter(|w| w.2.ts < last.ts)
                .map(|w| w.0.clone())
                .collect();
            let got: Vec<String> = store
                .conversations(user, Some(last.ts), None, 100)
                .unwrap()
                .into_iter()
                .map(|c| c.room)
                .collect();
            assert_eq!(
                got, older,
                "conversations of {user} before {}, {context}",
                last.ts
            );
        }
    }
}

/// Relists every room that is behind, then checks that the `inbox` keys
/// are exactly each user's rooms with messages at their newest ts.
fn relist_all(store: &Store, cache: &mut RoomCache, model: &Model, context: &str) {
    use redb::{ReadableDatabase, ReadableTable};
    for _ in 0..1000 {
        let relisted = relist_step(store, 1 + model.rooms.len()).unwrap();
        cache.forget(&relisted.rooms);
        if relisted.done {
            break;
        }
    }
    let txn = store.db().unwrap().begin_read().unwrap();
    let relist = txn.open_table(super::schema::RELIST).unwrap();
    assert!(
        relist.first().unwrap().is_none(),
        "relist left entries, {context}"
    );
    let inbox = txn.open_table(super::schema::INBOX).unwrap();
    let mut got = Vec::new();
    for item in inbox.iter().unwrap() {
        let (key, _) = item.unwrap();
        let (user, inverse, room) = key.value();
        got.push((user.to_vec(), inverse, room.to_vec()));
    }
    let mut want = Vec::new();
    for (name, room) in &model.rooms {
        let Some(last) = room.messages.last() else {
            continue;
        };
        for user in &room.users {
            want.push((
                user.as_bytes().to_vec(),
                u64::MAX - last.ts,
                name.as_bytes().to_vec(),
            ));
        }
    }
    want.sort();
    assert_eq!(got, want, "inbox keys after relisting, {context}");
}

#[test]
fn random_changes_read_back_as_the_model_says() {
    for seed in 1..=6u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut model = Model::default();
        let mut rng = Rng(seed);
        let mut clock = 1_766_889_946_000_000;
        // Carried from commit to commit and invalidated as the applier does.
        let mut cache = RoomCache::default();
        for round in 0..60 {
            let changes: Vec<Change> = (0..1 + rng.below(40))
                .map(|_| random_change(&mut rng, &mut clock))
                .collect();
            let want: Vec<Outcome> = changes.iter().map(|c| model.apply(c)).collect();
            // A group commit, or live traffic's (everything staged).
            let got = match rng.below(2) {
                0 => apply_cached(&store, changes.clone(), &mut cache),
                _ => stage_cached(&store, changes.clone(), &mut cache),
            };
            for ((change, want), got) in changes.iter().zip(want).zip(got) {
                assert_eq!(got, want, "seed {seed} round {round}: {change:?}");
            }
            // What runs between commits, at random.
            match rng.below(7) {
                0 => {
                    let b = rng.below(u64::from(BUCKETS)) as u8;
                    fold_step(&store, b, 1 + rng.below(8) as usize).unwrap();
                    cache.forget_bucket(b);
                }
                1 => {
                    sweep_step(&store, 1 + rng.below(8) as usize).unwrap();
                    cache.clear();
                }
                3 => {
                    let relisted = relist_step(&store, 1 + rng.below(8) as usize).unwrap();
                    cache.forget(&relisted.rooms);
                }
                4 if rng.below(3) == 0 => {
                    relist_all(
                        &store,
                        &mut cache,
                        &model,
                        &format!("seed {seed} round {round}"),
                    );
                }
                2 if rng.below(4) == 0 => {
                    drop(store);
                    store = Store::open(dir.path()).unwrap();
                    cache = RoomCache::default();
                }
                _ => {}
            }
            check(
                &store,
                &model,
                &mut rng,
                &format!("seed {seed} round {round}"),
            );
        }
        relist_all(
            &store,
            &mut cache,
            &model,
            &format!("seed {seed}, at the end"),
        );
    }
}
