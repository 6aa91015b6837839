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

    /// The database is being closed and opened again after a storage
    /// fault ([`Store::reopen`](super::Store::reopen)), or that failed.
    #[error("database {path} is closed while it is reopened after a storage error")]
    Closed {
        /// The database file.
        path: PathBuf,
    },

    /// The store cannot commit now (its disk failed); the applier refuses
    /// changes until it has reopened the file and a write succeeded.
    #[error("the store cannot commit now: {reason}")]
    Failing {
        /// What failed, and since when.
        reason: String,
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

    /// A stored message that does not decode.
    #[error("corrupt message record in room {room:?} at ts {ts}: {reason}")]
    CorruptMessage {
        /// The room.
        room: String,
        /// The ts of the message (or of the first message of its chunk).
        ts: u64,
        /// Why it did not decode.
        reason: String,
    },

    /// Reading the file panicked inside redb: a damaged page.
    #[error(
        "the store file is damaged ({what} failed: {reason}); `chatd check` tells what is readable, `chatd salvage --out NEW_DIR` copies it into a new store"
    )]
    Damaged {
        /// What the store was doing.
        what: &'static str,
        /// What the panic said.
        reason: String,
    },

    /// Some other stored value that does not decode.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What it was.
        what: &'static str,
        /// Why it did not decode.
        reason: String,
    },

    /// The room's newest ts is u64::MAX: no later ts exists.
    #[error("timestamps exhausted in room {room:?}")]
    TsExhausted {
        /// The room.
        room: String,
    },

    /// Every room id (u32) is taken.
    #[error("room ids exhausted")]
    RoomsExhausted,

    /// A change came with a log position past the next one: the log has a
    /// gap the store cannot fill (a bug in whoever feeds the applier).
    #[error("log position {got} does not follow the last applied one, {applied}")]
    LogGap {
        /// The last position applied.
        applied: u64,
        /// The position given.
        got: u64,
    },

    /// The applier thread could not be started.
    #[error("cannot start the applier thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl StoreError {
    /// Whether this is a fault of the disk or of the open file (I/O
    /// errors, redb's "previous I/O error" state, a closed database) that
    /// reopening the file may clear once the disk works again. Damaged
    /// content and changes the rules refuse are not: a reopen reads the
    /// same bytes.
    pub fn is_storage_fault(&self) -> bool {
        match self {
            StoreError::Db { source, .. } => matches!(
                source,
                redb::Error::Io(_)
                    | redb::Error::PreviousIo
                    | redb::Error::DatabaseClosed
                    | redb::Error::Backend(_)
                    | redb::Error::LockPoisoned(_)
            ),
            StoreError::Closed { .. }
            | StoreError::Failing { .. }
            | StoreError::Open { .. }
            | StoreError::Locked { .. }
            | StoreError::Io { .. } => true,
            _ => false,
        }
    }
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
