//! Cluster mode's side of the engine, NATS JetStream: several chatd nodes,
//! one chat service, no single copy.
//!
//! - [`engine`]: the node's connection to the NATS cluster.
//! - [`stream`]: the log stream and the presence bucket, ensured at start.
//! - [`entry`]: the bytes of one log entry (a `Change` and its id); pure.
//! - [`publish`]: putting an entry in the log exactly once, retrying what
//!   is in doubt with the same id.
//! - [`consume`]: reading the log in order from a position, catch-up then
//!   live.
//! - [`log`]: the chat's `Log` on all of them: append publishes, every
//!   node follows the stream into its own store.
//! - [`health`]: whether the engine can take a publish now, with a reason.
//! - [`lease`], [`roster`]: presence on the KV bucket: a lease per node,
//!   a key per connection, a dead node's connections dropped everywhere.
//! - [`presence`]: the chat's `Presence` for the whole service, on them.
//! - [`typing`]: the typing relay between nodes, on a core NATS subject.

pub mod consume;
pub mod engine;
pub mod entry;
pub mod health;
pub mod lease;
pub mod log;
pub mod presence;
pub mod publish;
pub mod roster;
pub mod stream;
pub mod typing;

pub use self::engine::ClusterEngine;

use thiserror::Error;

/// What went wrong talking to the engine, with what was being done.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The client could not be set up.
    #[error("cannot connect to the NATS cluster at {urls}: {source}")]
    Connect {
        /// The URLs given.
        urls: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// A request to the engine failed.
    #[error("{doing}: {source}")]
    Engine {
        /// What was being done.
        doing: String,
        /// The engine's (or the client's) error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The node's store could not be read or written.
    #[error("the node's store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The node's store holds another history than the cluster's log.
    #[error(
        "this data directory cannot join the cluster: {0}; give the node an empty --data-dir (it copies the history from the cluster)"
    )]
    ForeignStore(String),
}

impl ClusterError {
    /// An engine error while `doing` something.
    pub fn engine(
        doing: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ClusterError {
        ClusterError::Engine {
            doing: doing.into(),
            source: Box::new(source),
        }
    }
}
