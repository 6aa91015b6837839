//! Who is online, and in which rooms: the `online` lists of the contract.
//!
//! The chat asks a [`Presence`] and never knows whether it covers this node
//! ([`LocalPresence`]) or a whole cluster (the cluster module's driver). A
//! presence tells the chat when a room's list changes through an
//! [`Announce`] sink, whether the change was made here or on another node.
//! Lists carry a version: two announcements racing to the same connection
//! cannot leave it with a stale list, since a connection drops any list
//! older than the last one it was sent.

mod local;

use std::sync::Arc;

pub use local::LocalPresence;

/// Identifies one chat connection on this node.
pub type ConnKey = u64;

/// How many names an [`OnlineSample`] carries: what the console shows of a
/// list (as Node's `console.log` shows 100 items of an array), and what
/// keeps a console line's cost bounded when thousands are online.
pub const SAMPLE_NAMES: usize = 100;

/// The `online` list of a room (sorted user names) and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineList {
    /// The users online in the room, in byte order.
    pub users: Vec<String>,
    /// Increases with every change a presence announces; a connection keeps
    /// the list with the highest version it was sent.
    pub version: u64,
}

/// Who is online, cheaply: the first names in order (at most
/// [`SAMPLE_NAMES`]) and the count, so a connect costs the same with ten
/// users online as with ten thousand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineSample {
    /// The first user names, in byte order.
    pub first: Vec<String>,
    /// How many users are online in all.
    pub total: usize,
}

/// One user's presence, for operators (`chatd online --json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserPresence {
    /// The user name.
    pub user: String,
    /// How many connections the user has open.
    pub connections: usize,
    /// The rooms those connections are in, sorted.
    pub rooms: Vec<String>,
}

/// A user started or stopped typing to a peer: relayed, never stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Typing {
    /// Their room.
    pub room: String,
    /// Who types.
    pub user: String,
    /// Who is told.
    pub peer: String,
    /// Started (true) or stopped (false).
    pub typing: bool,
}

/// Where presence news goes: this node's connections.
pub trait Announce: Send + Sync + 'static {
    /// `room`'s list changed to `list`: to the room's connections but `skip`
    /// (a joining connection, which is sent the list itself).
    fn online(&self, room: &str, list: &OnlineList, skip: Option<ConnKey>);

    /// `typing.peer`'s connections are told `typing`.
    fn typing(&self, typing: &Typing);
}

/// Presence as the chat uses it.
pub trait Presence: Send + Sync + 'static {
    /// A connection of `user` joined, in `room` when it has a peer. Returns
    /// the list the joining connection is sent: its room's, or just
    /// `[user]` without a room. Announces the room's new list to the
    /// room's other connections if it changed.
    fn join(&self, conn: ConnKey, user: &Arc<str>, room: Option<&Arc<str>>) -> OnlineList;

    /// A connection left; announces its room's new list if it changed.
    fn leave(&self, conn: ConnKey);

    /// Who is online, for the console.
    fn everyone(&self) -> OnlineSample;

    /// Every user online with connections and rooms, for operators.
    fn list(&self) -> Vec<UserPresence>;

    /// Tells the other nodes' connections of `typing.peer` (this node's
    /// were told already). Nothing to do on a node that runs alone.
    fn relay_typing(&self, typing: &Typing);
}
