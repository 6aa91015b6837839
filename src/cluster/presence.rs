//! Presence of a whole cluster, as the chat's [`Presence`]: this node's
//! connections and every other node's, from the presence bucket.
//!
//! The membership itself is a [`LocalPresence`] holding every connection of
//! the service: this node's under their own keys, other nodes' under keys
//! of their own (from [`REMOTE_KEYS`] up, never a connection here), so the
//! `online` lists, the console sample and `chatd online` cover the whole
//! service, and a list that changes because of another node is announced
//! to this node's connections in the room like any other.
//!
//! Around it, three tasks: a writer that puts this node's joins and leaves
//! in the bucket in the order they happened (and relays typing), the
//! node's lease (its connections are announced again whenever it is taken
//! again), and a watcher that applies the other nodes' changes, dropping a
//! node's connections when its lease ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::ClusterEngine;
use super::lease::{LeaseState, hold_lease};
use super::roster::{Roster, RosterEvent, watch_roster};
use super::typing::{relay_typing, typing_from_other_nodes};
use crate::presence::{
    Announce, ConnKey, LocalPresence, OnlineList, OnlineSample, Presence, Typing, UserPresence,
};

/// The first key given to another node's connection: far above any key
/// this node gives its own.
pub const REMOTE_KEYS: ConnKey = 1 << 62;

/// The pause before a failed write to the bucket is tried again; it
/// doubles with each failure up to [`WRITE_RETRY_MAX`].
const WRITE_RETRY_FIRST: Duration = Duration::from_millis(50);

/// The longest pause between attempts at one write.
const WRITE_RETRY_MAX: Duration = Duration::from_secs(1);

/// Pause before the watcher watches again after the watch failed.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

/// A change of this node's presence, for the bucket.
enum Write {
    Joined {
        conn: ConnKey,
        user: Arc<str>,
        room: Option<Arc<str>>,
    },
    Left(ConnKey),
    Typing(Typing),
}

/// Presence across every node of the service.
pub struct ClusterPresence {
    members: LocalPresence,
    node: String,
    /// To the writer task. Unbounded because `join` and `leave` cannot wait;
    /// each connection puts at most two writes in it.
    writes: mpsc::UnboundedSender<Write>,
    state: Mutex<Known>,
    next_remote: AtomicU64,
}

/// What the membership holds beyond the lists.
#[derive(Default)]
struct Known {
    /// This node's connections, to announce again when the lease is taken again.
    own: HashMap<ConnKey, (Arc<str>, Option<Arc<str>>)>,
    /// Other nodes' connections: node → (their key → our key).
    remote: HashMap<String, HashMap<u64, ConnKey>>,
    /// The instance each other node last took its lease as.
    instances: HashMap<String, String>,
}

impl ClusterPresence {
    /// Starts presence for node `roster.node()`: takes its lease, watches
    /// the bucket and the typing relay; room list changes and typing from
    /// other nodes go to `announce`.
    pub fn start(engine: ClusterEngine, roster: Roster, announce: Arc<dyn Announce>) -> Arc<Self> {
        let (writes, queue) = mpsc::unbounded_channel();
        let presence = Arc::new(ClusterPresence {
            members: LocalPresence::new(announce.clone()),
            node: roster.node().to_owned(),
            writes,
            state: Mutex::default(),
            next_remote: AtomicU64::new(REMOTE_KEYS),
        });
        let instance = format!("{:016x}", rand::random::<u64>());
        let (lease, _lease_task) = hold_lease(engine.clone(), roster.clone(), instance);
        tokio::spawn(write(engine.clone(), roster.clone(), lease.clone(), queue));
        tokio::spawn(reannounce(Arc::downgrade(&presence), lease));
        tokio::spawn(watch(Arc::downgrade(&presence), roster));
        tokio::spawn(relay_in(engine, announce));
        presence
    }

    fn lock(&self) -> MutexGuard<'_, Known> {
        // Every update is a few map operations that cannot panic halfway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one change another node made.
    fn apply(&self, event: RosterEvent) {
        match event {
            RosterEvent::NodeUp { node, instance } if node != self.node => {
                let renewed = self.lock().instances.get(&node) == Some(&instance);
                if !renewed {
                    // A new life of the node: what it had before is gone.
                    self.drop_node(&node);
                    self.lock().instances.insert(node, instance);
                }
            }
            RosterEvent::NodeGone { node } if node != self.node => {
                self.drop_node(&node);
                self.lock().instances.remove(&node);
            }
            RosterEvent::Joined {
                node,
                conn,
                user,
                room,
            } if node != self.node => {
                let key = self.next_remote.fetch_add(1, Ordering::Relaxed);
                let replaced = {
                    let mut known = self.lock();
                    // Keys of a node without a lease are what a dead node
                    // left behind; a live node takes its lease first.
                    if !known.instances.contains_key(&node) {
                        return;
                    }
                    known.remote.entry(node).or_default().insert(conn, key)
                };
                if let Some(old) = replaced {
                    self.members.leave(old);
                }
                let room: Option<Arc<str>> = room.map(Arc::from);
                self.members.join(key, &Arc::from(user), room.as_ref());
            }
            RosterEvent::Left { node, conn } if node != self.node => {
                let key = self
                    .lock()
                    .remote
                    .get_mut(&node)
                    .and_then(|conns| conns.remove(&conn));
                if let Some(key) = key {
                    self.members.leave(key);
                }
            }
            // This node's own changes are in the membership already.
            _ => {}
        }
    }

    fn drop_node(&self, node: &str) {
        let conns = self.lock().remote.remove(node).unwrap_or_default();
        if !conns.is_empty() {
            tracing::info!(
                "presence: node {node} is gone with {} connections",
                conns.len()
            );
        }
        for key in conns.into_values() {
            self.members.leave(key);
        }
    }

    /// Forgets every other node's connections (the watch starts over).
    fn drop_remote(&self) {
        let nodes: Vec<String> = self.lock().remote.keys().cloned().collect();
        for node in nodes {
            self.drop_node(&node);
        }
        self.lock().instances.clear();
    }
}

impl Presence for ClusterPresence {
    fn join(&self, conn: ConnKey, user: &Arc<str>, room: Option<&Arc<str>>) -> OnlineList {
        self.lock().own.insert(conn, (user.clone(), room.cloned()));
        let _ = self.writes.send(Write::Joined {
            conn,
            user: user.clone(),
            room: room.cloned(),
        });
        self.members.join(conn, user, room)
    }

    fn leave(&self, conn: ConnKey) {
        if self.lock().own.remove(&conn).is_some() {
            let _ = self.writes.send(Write::Left(conn));
        }
        self.members.leave(conn);
    }

    fn everyone(&self) -> OnlineSample {
        self.members.everyone()
    }

    fn list(&self) -> Vec<UserPresence> {
        self.members.list()
    }

    fn relay_typing(&self, typing: &Typing) {
        let _ = self.writes.send(Write::Typing(typing.clone()));
    }
}

/// Puts this node's changes in the bucket, in order, once the node holds
/// its lease: taking it clears what the node left in the bucket before.
async fn write(
    engine: ClusterEngine,
    roster: Roster,
    mut lease: tokio::sync::watch::Receiver<LeaseState>,
    mut queue: mpsc::UnboundedReceiver<Write>,
) {
    if lease
        .wait_for(|state| matches!(state, LeaseState::Held { .. }))
        .await
        .is_err()
    {
        return;
    }
    while let Some(change) = queue.recv().await {
        // A join or leave is retried until the bucket has it (the engine
        // may be electing a leader, a few seconds): dropped, the other
        // nodes would miss the user until this node's lease is taken
        // again. Later changes wait, so the bucket keeps their order.
        let mut pause = WRITE_RETRY_FIRST;
        let mut failures = 0u32;
        loop {
            let result = match &change {
                Write::Joined { conn, user, room } => {
                    roster.announce(*conn, user, room.as_deref()).await
                }
                Write::Left(conn) => roster.withdraw(*conn).await,
                // Typing is best effort: one try.
                Write::Typing(typing) => relay_typing(&engine, typing).await.or(Ok(())),
            };
            match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("presence: written to the engine after {failures} failures");
                    }
                    break;
                }
                Err(err) => {
                    if failures == 0 {
                        tracing::warn!("presence: not written to the engine: {err}; retrying");
                    }
                    failures += 1;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(WRITE_RETRY_MAX);
                }
            }
        }
    }
}

/// Announces this node's connections again each time the lease is taken
/// again (the other nodes dropped them when it ran out).
async fn reannounce(
    presence: std::sync::Weak<ClusterPresence>,
    mut lease: tokio::sync::watch::Receiver<LeaseState>,
) {
    while lease.changed().await.is_ok() {
        let generation = match &*lease.borrow_and_update() {
            LeaseState::Held { generation } => *generation,
            LeaseState::Lost(_) => continue,
        };
        let Some(presence) = presence.upgrade() else {
            return;
        };
        if generation > 1 {
            let own: Vec<_> = presence
                .lock()
                .own
                .iter()
                .map(|(conn, (user, room))| (*conn, user.clone(), room.clone()))
                .collect();
            tracing::info!(
                "presence: lease taken again; announcing {} connections",
                own.len()
            );
            for (conn, user, room) in own {
                let _ = presence.writes.send(Write::Joined { conn, user, room });
            }
        }
    }
}

/// Applies the other nodes' presence, watching again when the watch fails.
async fn watch(presence: std::sync::Weak<ClusterPresence>, roster: Roster) {
    loop {
        match watch_roster(roster.bucket()).await {
            Ok(events) => {
                let mut events = Box::pin(events);
                // The watch delivers every live key first: start from nothing.
                match presence.upgrade() {
                    Some(presence) => presence.drop_remote(),
                    None => return,
                }
                while let Some(event) = events.next().await {
                    let Some(presence) = presence.upgrade() else {
                        return;
                    };
                    match event {
                        Ok(event) => presence.apply(event),
                        Err(err) => {
                            tracing::warn!("presence: {err}; watching again");
                            break;
                        }
                    }
                }
            }
            Err(err) => tracing::debug!("presence: {err}"),
        }
        if presence.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

/// Hands typing relayed by other nodes to this node's connections.
async fn relay_in(engine: ClusterEngine, announce: Arc<dyn Announce>) {
    loop {
        match typing_from_other_nodes(&engine).await {
            Ok(typing) => {
                let mut typing = Box::pin(typing);
                while let Some(event) = typing.next().await {
                    announce.typing(&event);
                }
            }
            Err(err) => tracing::debug!("typing relay: {err}"),
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}
