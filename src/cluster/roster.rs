//! Presence in the engine: who is connected to which node, in a KV bucket
//! every node watches.
//!
//! Keys (bucket [`PRESENCE_BUCKET`](super::stream::PRESENCE_BUCKET)):
//! - `node.<node>`: the node's lease, `<instance>` as value, renewed well
//!   within its TTL (see [`super::lease`]). When a node dies its lease runs
//!   out and the server writes a limit marker, which every watcher sees.
//! - `conn.<node>.<conn>`: one per connection, `<user>\n<room>` as value
//!   (room empty without a peer), deleted when it closes.
//!
//! A node's connections count only while its lease lives: a watcher drops
//! them all when the lease goes ([`RosterEvent::NodeGone`]), and again when
//! a new instance of the node takes the lease ([`RosterEvent::NodeUp`]),
//! since a node clears its old keys before it takes its lease and puts its
//! connections after, and the bucket keeps that order. (A watch that
//! starts later replays the bucket by each key's last write, where renewed
//! leases come after the connections: it hands those out once the replay
//! is whole, see [`watch_roster`].)

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use futures_util::StreamExt;

use super::ClusterError;
use super::stream::PRESENCE_BUCKET;

/// What a watcher of the bucket learns, in the bucket's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterEvent {
    /// A node took (or renewed) its lease; when `instance` is new, drop
    /// every connection of that node known so far.
    NodeUp {
        /// The node.
        node: String,
        /// Its process instance (changes with every start).
        instance: String,
    },
    /// A node's lease ended (ran out, or the node left): its connections
    /// are gone.
    NodeGone {
        /// The node.
        node: String,
    },
    /// A connection joined on a node.
    Joined {
        /// The node it is on.
        node: String,
        /// Its key on that node.
        conn: u64,
        /// Its user.
        user: String,
        /// Its room, when it has a peer.
        room: Option<String>,
    },
    /// A connection closed.
    Left {
        /// The node it was on.
        node: String,
        /// Its key on that node.
        conn: u64,
    },
}

/// Whether `name` can name a node: 1 to 64 of `A–Z a–z 0–9 _ -` (it is a
/// token of KV keys and subjects).
pub fn is_valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The key of a node's lease.
pub fn lease_key(node: &str) -> String {
    format!("node.{node}")
}

fn conn_key(node: &str, conn: u64) -> String {
    format!("conn.{node}.{conn}")
}

/// This node's writes to the presence bucket.
#[derive(Clone, Debug)]
pub struct Roster {
    kv: kv::Store,
    node: String,
}

impl Roster {
    /// The roster of node `node` (a valid node name) in `kv`.
    pub fn new(kv: kv::Store, node: &str) -> Roster {
        Roster {
            kv,
            node: node.to_owned(),
        }
    }

    /// The node it writes for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The bucket.
    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// Tells every node that `conn` of `user` joined here.
    pub async fn announce(
        &self,
        conn: u64,
        user: &str,
        room: Option<&str>,
    ) -> Result<(), ClusterError> {
        let value = format!("{user}\n{}", room.unwrap_or(""));
        self.kv
            .put(conn_key(&self.node, conn), Bytes::from(value))
            .await
            .map(drop)
            .map_err(|err| ClusterError::engine("announce a connection", err))
    }

    /// Tells every node that `conn` closed.
    pub async fn withdraw(&self, conn: u64) -> Result<(), ClusterError> {
        self.kv
            .delete(conn_key(&self.node, conn))
            .await
            .map_err(|err| ClusterError::engine("withdraw a connection", err))
    }

    /// Removes every connection key this node left behind (a crash, a lost
    /// lease); done before the node takes its lease.
    pub async fn clear_own(&self) -> Result<(), ClusterError> {
        self.kv
            .stream
            .purge()
            .filter(format!("$KV.{PRESENCE_BUCKET}.conn.{}.>", self.node))
            .await
            .map(drop)
            .map_err(|err| ClusterError::engine("clear this node's connections", err))
    }
}

/// How long a watch waits for a change before it asks whether the bucket
/// has one it was not given.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Every node's presence as it is, then each change as it happens.
///
/// The watch is JetStream's ordered consumer, which the client recreates
/// when a delivery goes missing, but only notices a consumer lost with its
/// server (a stream leader's change, say) after missed heartbeats, and
/// after some failures not at all: meanwhile the node would not see other
/// nodes' users come and go. So a watch that is given nothing for
/// [`STALL_CHECK`] asks the bucket for the entry after the last one it was
/// given, and ends with an error when one was there at two checks in a row
/// (the caller watches again).
pub async fn watch_roster(
    kv: &kv::Store,
) -> Result<impl futures_util::Stream<Item = Result<RosterEvent, ClusterError>> + use<>, ClusterError>
{
    let watch = kv
        .watch_with_history(">")
        .await
        .map_err(|err| ClusterError::engine("watch presence", err))?;
    let watching = Watching {
        watch,
        bucket: kv.stream.clone(),
        seen: 0,
        undelivered: None,
        held_back: Vec::new(),
        ready: VecDeque::new(),
    };
    Ok(futures_util::stream::unfold(
        watching,
        |mut watching| async move {
            let event = watching.next_event().await?;
            Some((event, watching))
        },
    ))
}

/// A watch of the bucket and how far it got.
struct Watching {
    watch: kv::Watch,
    bucket: Stream,
    /// The revision (stream position) of the last entry delivered.
    seen: u64,
    /// An entry after `seen` the bucket held at the last stall check.
    undelivered: Option<u64>,
    /// Connections replayed before the bucket was replayed whole.
    held_back: Vec<RosterEvent>,
    /// Events to hand out before reading on.
    ready: VecDeque<RosterEvent>,
}

impl Watching {
    /// The next event; `None` once the watch ended.
    ///
    /// The bucket as it is comes first, in the order of each key's last
    /// write: a node renews its lease every few seconds, so its lease
    /// usually comes after the connections it announced since it took it,
    /// which a watcher would take for a dead node's leftovers. While
    /// replaying, connections are held back until the bucket has been
    /// replayed whole, then handed out after every lease.
    async fn next_event(&mut self) -> Option<Result<RosterEvent, ClusterError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            let next = tokio::select! {
                next = self.watch.next() => next?,
                () = tokio::time::sleep(STALL_CHECK) => {
                    if let Err(err) = self.check_stall().await {
                        return Some(Err(err));
                    }
                    continue;
                }
            };
            let entry = match next {
                Ok(entry) => entry,
                Err(err) => return Some(Err(ClusterError::engine("watch presence", err))),
            };
            self.seen = entry.revision;
            let event = roster_event(&entry.key, entry.operation, &entry.value);
            match event {
                Some(joined @ RosterEvent::Joined { .. }) => self.held_back.push(joined),
                Some(event) => self.ready.push_back(event),
                None => {}
            }
            // Once replayed whole, every entry is handed out as it comes.
            if entry.seen_current {
                self.ready.extend(self.held_back.drain(..));
            }
        }
    }

    /// Fails when an entry the bucket held at the previous check has still
    /// not been delivered (one held at a single check may just be on its
    /// way). A bucket that cannot be asked is not a stall.
    async fn check_stall(&mut self) -> Result<(), ClusterError> {
        if let Some(missing) = self.undelivered.take()
            && missing > self.seen
        {
            return Err(ClusterError::engine(
                "watch presence",
                std::io::Error::other(format!(
                    "no change delivered for {STALL_CHECK:?} while the bucket holds revision {missing} (last delivered {})",
                    self.seen
                )),
            ));
        }
        self.undelivered = self
            .bucket
            .direct_get_next_for_subject(format!("$KV.{PRESENCE_BUCKET}.>"), Some(self.seen + 1))
            .await
            .ok()
            .map(|message| message.sequence);
        Ok(())
    }
}

/// What one bucket entry means; `None` for keys that are not ours.
pub fn roster_event(key: &str, operation: Operation, value: &[u8]) -> Option<RosterEvent> {
    let put = operation == Operation::Put;
    if let Some(node) = key.strip_prefix("node.") {
        let node = node.to_owned();
        return Some(if put {
            RosterEvent::NodeUp {
                node,
                instance: String::from_utf8_lossy(value).into_owned(),
            }
        } else {
            RosterEvent::NodeGone { node }
        });
    }
    let (node, conn) = key.strip_prefix("conn.")?.split_once('.')?;
    let conn = conn.parse().ok()?;
    let node = node.to_owned();
    if !put {
        return Some(RosterEvent::Left { node, conn });
    }
    let (user, room) = std::str::from_utf8(value).ok()?.split_once('\n')?;
    Some(RosterEvent::Joined {
        node,
        conn,
        user: user.to_owned(),
        room: (!room.is_empty()).then(|| room.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_entries_become_events() {
        assert_eq!(
            roster_event("node.a", Operation::Put, b"i1"),
            Some(RosterEvent::NodeUp {
                node: "a".into(),
                instance: "i1".into()
            })
        );
        assert_eq!(
            roster_event("node.a", Operation::Purge, b""),
            Some(RosterEvent::NodeGone { node: "a".into() })
        );
        assert_eq!(
            roster_event("conn.a.7", Operation::Put, b"Dummy-1\ndm:Dummy-1_Dummy-2"),
            Some(RosterEvent::Joined {
                node: "a".into(),
                conn: 7,
                user: "Dummy-1".into(),
                room: Some("dm:Dummy-1_Dummy-2".into())
            })
        );
        assert_eq!(
            roster_event("conn.a.7", Operation::Put, b"Dummy-1\n"),
            Some(RosterEvent::Joined {
                node: "a".into(),
                conn: 7,
                user: "Dummy-1".into(),
                room: None
            })
        );
        assert_eq!(
            roster_event("conn.a.7", Operation::Delete, b""),
            Some(RosterEvent::Left {
                node: "a".into(),
                conn: 7
            })
        );
        for (key, value) in [
            ("conn.a.x", &b"u\n"[..]),
            ("conn.a", b"u\n"),
            ("conn.a.7", b"no newline"),
            ("conn.a.7", b"\xff\n"),
            ("other", b""),
        ] {
            assert_eq!(roster_event(key, Operation::Put, value), None, "{key}");
        }
    }

    #[test]
    fn node_names_are_key_tokens() {
        assert!(is_valid_node_name("chat-1"));
        assert!(is_valid_node_name("A_b-9"));
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(!is_valid_node_name(bad), "{bad:?}");
        }
    }
}
