//! The one error type of the store, so callers can match on the cases they
//! act on (`Locked`, `NewerSchema`) and print the rest with context.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another handle in this one) has the database open
    /// for writing. The CLI takes this as "a server is running" and asks it.
    #[error("database {path} is in use by another process")]
    Locked {
        /// The database file.
        path: PathBuf,
    },

    /// The file was written by a newer chatd; opening it could corrupt it.
    #[error("database schema version {found} is newer than this chatd supports ({supported})")]
    NewerSchema {
        /// Version recorded in the file.
        found: u64,
        /// Newest version this build understands.
        supported: u64,
    },

    /// The file was written by an older schema this build cannot migrate.
    #[error("database schema version {found} is not supported (expected {supported})")]
    OlderSchema {
        /// Version recorded in the file.
        found: u64,
        /// Version this build understands.
        supported: u64,
    },

    /// The file is a valid redb database, but not one chatd created.
    #[error("{path} is not a chatd database: {reason}")]
    NotChatd {
        /// The database file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },

    /// The database file could not be opened or created.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: redb::DatabaseError,
    },

    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },

    /// A redb operation failed; `context` says which.
    #[error("{context}: {source}")]
    Db {
        /// What the store was doing.
        context: &'static str,
        /// What redb reported.
        #[source]
        source: redb::Error,
    },

    /// Record bytes that do not decode (see [`decode_record`](super::decode_record)).
    #[error("bad record: {0}")]
    BadRecord(String),

    /// A stored message whose record does not decode.
    #[error("corrupt message record at room {room:?} ts {ts}: {reason}")]
    CorruptMessage {
        /// Room of the key.
        room: String,
        /// Timestamp of the key.
        ts: u64,
        /// Why it did not decode.
        reason: String,
    },

    /// `last_ts` is so high that another ts would wrap around.
    #[error("timestamps exhausted: last_ts is {last_ts}")]
    TsExhausted {
        /// The stored last_ts.
        last_ts: u64,
    },

    /// The writer thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    Spawn(#[source] std::io::Error),

    /// A record could not be encoded (should not happen for string fields).
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// Attaches a context string to any redb error, so `?` stays short at call sites.
pub(crate) trait DbContext<T> {
    /// Wraps the error in [`StoreError::Db`] with `context`.
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbContext<T> for Result<T, E> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db {
            context,
            source: e.into(),
        })
    }
}
