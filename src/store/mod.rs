//! Durable message storage on redb.
//!
//! One file, `<data_dir>/chatd.redb`, holds every room's history. Reads
//! (`history`, `export_*`, `rooms`) run on any thread against MVCC
//! snapshots; new messages are written only by the group-commit writer
//! ([`Writer::spawn`]), which is what makes `ts` unique and increasing.

pub mod change;
mod error;
mod fold;
mod purge;
mod read;
mod record;
mod schema;
mod writer;
#[cfg(test)]
mod fixture_gen;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;

use self::error::DbContext;
pub use self::error::StoreError;
pub use self::read::{HistoryPage, HistoryQuery};
pub use self::record::{RECORD_VERSION, Record, decode_record, encode_record};
pub use self::schema::SCHEMA_VERSION;
pub use self::writer::{
    Committed, CommittedBatch, MAX_BATCH, Unstored, Writer, WriterHandle, now_us,
};

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "chatd.redb";

// redb's default cache may grow to 1 GiB; a chat server on a small VM should
// not, and history reads are mostly of the recent tail anyway.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A message as stored and as read back. `room` like "dm:Dummy-1_Dummy-2".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Room id, e.g. `dm:Dummy-1_Dummy-2`.
    pub room: String,
    /// Microseconds since the Unix epoch; unique, the history cursor.
    pub ts: u64,
    /// Socket id of the sending connection.
    pub id: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Message text.
    pub text: String,
    /// Formatted local time, as clients were sent it.
    pub time: String,
}

impl StoredMessage {
    /// Joins a key and its decoded record.
    pub fn from_record(room: String, ts: u64, r: Record) -> Self {
        StoredMessage {
            room,
            ts,
            id: r.id,
            from: r.from,
            to: r.to,
            text: r.text,
            time: r.time,
        }
    }
}

/// What a session hands the writer; the writer assigns ts and time.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Room id.
    pub room: String,
    /// Socket id of the sending connection.
    pub id: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Message text.
    pub text: String,
}

/// A cheaply clonable handle on the open database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

// Manual impl: the database handle has nothing useful to print.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/chatd.redb`, creating `data_dir`
    /// too. Writes the schema version into a fresh file and checks it in an
    /// existing one: a newer version gives [`StoreError::NewerSchema`], a redb
    /// file without chatd's records gives [`StoreError::NotChatd`]. If the file
    /// is already open for writing (another process, or another `Store` in
    /// this one), gives [`StoreError::Locked`].
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| match source {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::Locked { path: path.clone() }
                }
                source => StoreError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let txn = db.begin_write().ctx("starting schema check")?;
        schema::check_or_init(&txn, &path)?;
        txn.commit().ctx("committing schema check")?;
        Ok(Store {
            db: Arc::new(db),
            path: Arc::new(path),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers that write straight into the tables, so tests control ts exactly.

    use super::schema::{MESSAGES, META, RECENT, bucket};
    use super::{Record, Store, encode_record};

    /// A store in a fresh temporary directory (kept alive by the `TempDir`).
    pub fn tmp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// The record `put` writes for `text`.
    pub fn record(text: &str) -> Record {
        Record {
            id: "sock".into(),
            from: "A".into(),
            to: "B".into(),
            text: text.into(),
            time: "t".into(),
        }
    }

    /// Stores a message with an exact key.
    pub fn put(store: &Store, room: &str, ts: u64, text: &str) {
        put_raw(store, room, ts, &encode_record(&record(text)).unwrap());
    }

    /// Stores arbitrary value bytes under a key.
    pub fn put_raw(store: &Store, room: &str, ts: u64, bytes: &[u8]) {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(MESSAGES)
            .unwrap()
            .insert((room, ts), bytes)
            .unwrap();
        txn.commit().unwrap();
    }

    /// Stores arbitrary value bytes in `recent` under `ts`, as the writer
    /// does before a fold (keep its ts above every ts in `messages`).
    pub fn put_recent_raw(store: &Store, room: &str, ts: u64, bytes: &[u8]) {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(RECENT)
            .unwrap()
            .insert((bucket(room), ts), (room, bytes))
            .unwrap();
        txn.commit().unwrap();
    }

    /// Stores many `(room, ts)` messages (text "x") in one transaction:
    /// those with ts >= `recent_from` in `recent`, the others in
    /// `messages`, as if the last fold ended just before `recent_from`.
    pub fn put_many_split(store: &Store, keys: &[(&str, u64)], recent_from: u64) {
        let bytes = encode_record(&record("x")).unwrap();
        let txn = store.db.begin_write().unwrap();
        {
            let mut folded = txn.open_table(MESSAGES).unwrap();
            let mut recent = txn.open_table(RECENT).unwrap();
            for &(room, ts) in keys {
                if ts >= recent_from {
                    recent
                        .insert((bucket(room), ts), (room, bytes.as_slice()))
                        .unwrap();
                } else {
                    folded.insert((room, ts), bytes.as_slice()).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }

    /// How many messages wait in `recent` for a fold.
    pub fn recent_len(store: &Store) -> u64 {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = store.db.begin_read().unwrap();
        txn.open_table(RECENT).unwrap().len().unwrap()
    }

    /// Overwrites a meta value.
    pub fn set_meta(store: &Store, key: &str, value: u64) {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(key, value).unwrap();
        txn.commit().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    use redb::TableDefinition;

    use super::schema::SCHEMA_VERSION_KEY;
    use super::testutil::*;
    use super::*;

    #[test]
    fn open_creates_dir_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let store = Store::open(&data).unwrap();
        assert_eq!(store.path(), data.join(DB_FILE_NAME));
        put(&store, "r", 1, "x");
        drop(store);
        let store = Store::open(&data).unwrap();
        assert_eq!(store.rooms().unwrap(), vec!["r".to_string()]);
    }

    #[test]
    fn newer_schema_is_refused() {
        let (dir, store) = tmp_store();
        set_meta(&store, SCHEMA_VERSION_KEY, SCHEMA_VERSION + 1);
        drop(store);
        match Store::open(dir.path()) {
            Err(StoreError::NewerSchema { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected NewerSchema, got {:?}", other.err()),
        }
    }

    #[test]
    fn version_1_file_is_upgraded_in_place() {
        let (dir, store) = tmp_store();
        put(&store, "r", 1, "x");
        // What chatd 0.1 left: schema version 1 and no `recent` table.
        let txn = store.db.begin_write().unwrap();
        assert!(txn.delete_table(schema::RECENT).unwrap());
        txn.commit().unwrap();
        set_meta(&store, SCHEMA_VERSION_KEY, 1);
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(recent_len(&store), 0);
        assert_eq!(store.rooms().unwrap(), ["r"]);
        drop(store);
        let db = redb::Database::open(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let meta = txn.open_table(schema::META).unwrap();
        let version = redb::ReadableTable::get(&meta, SCHEMA_VERSION_KEY).unwrap();
        assert_eq!(version.map(|v| v.value()), Some(SCHEMA_VERSION));
    }

    #[test]
    fn version_0_is_refused() {
        let (dir, store) = tmp_store();
        set_meta(&store, SCHEMA_VERSION_KEY, 0);
        drop(store);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::OlderSchema { found: 0, .. })
        ));
    }

    /// A redb file that some other program wrote with `fill`.
    fn foreign_db(fill: impl FnOnce(&redb::WriteTransaction)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        fill(&txn);
        txn.commit().unwrap();
        dir
    }

    #[test]
    fn other_redb_file_is_not_chatd() {
        let dir = foreign_db(|txn| {
            let t: TableDefinition<u64, u64> = TableDefinition::new("something_else");
            txn.open_table(t).unwrap().insert(1, 2).unwrap();
        });
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NotChatd { .. })
        ));
    }

    #[test]
    fn meta_table_of_another_type_is_not_chatd() {
        let dir = foreign_db(|txn| {
            let t: TableDefinition<u64, &str> = TableDefinition::new("meta");
            txn.open_table(t).unwrap().insert(1, "x").unwrap();
        });
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NotChatd { .. })
        ));
    }

    #[test]
    fn non_redb_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE_NAME), vec![0x42; 8192]).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Open { .. })
        ));
    }

    #[test]
    fn second_open_in_same_process_is_locked() {
        // redb locks with open-file-description locks, so a second handle in
        // the same process conflicts just as another process would.
        let (dir, store) = tmp_store();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
        drop(store);
        Store::open(dir.path()).unwrap();
    }

    const CHILD_ENV: &str = "CHATD_STORE_LOCK_HOLDER_DIR";

    #[test]
    #[ignore = "helper: run by locked_by_another_process in a child process"]
    fn lock_holder_child() {
        let Ok(dir) = std::env::var(CHILD_ENV) else {
            return;
        };
        let _store = Store::open(Path::new(&dir)).unwrap();
        println!("LOCK-HOLDER-READY");
        // Hold the lock until the parent closes our stdin.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }

    #[test]
    fn locked_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        // Re-run this test binary as the child, holding the store open.
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "store::tests::lock_holder_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let ready = out
            .by_ref()
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("LOCK-HOLDER-READY"));
        assert!(ready, "child did not open the store");
        let second = Store::open(dir.path());
        drop(child.stdin.take());
        // Keep reading: a closed pipe would fail the child's last lines of output.
        std::io::copy(&mut out, &mut std::io::sink()).unwrap();
        assert!(child.wait().unwrap().success());
        assert!(
            matches!(second, Err(StoreError::Locked { .. })),
            "got {:?}",
            second.err()
        );
        Store::open(dir.path()).unwrap();
    }
}
