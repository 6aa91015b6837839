//! Durable storage on redb: the ordered log of changes applied, and the
//! reads the chat needs.
//!
//! One file, `<data_dir>/chatd.redb`, holds every room's history, the read
//! cursors, the cids and the applied log position (schema 4, see
//! `schema.rs`). Every change goes through the [`Applier`] (one thread,
//! group commit), which applies [`Change`]s in log order by the rules of
//! `apply.rs`; reads (`history`, `conversations`, `export_*`, `rooms`) run
//! on any thread against MVCC snapshots. An older file is upgraded in
//! place the first time it is opened (`upgrade.rs`).

pub mod change;
mod chunk;
pub mod clock;
mod contain;
mod error;
mod fold;
#[doc(hidden)]
pub mod fuzzing;
mod inbox;
#[cfg(test)]
mod model;
mod read;
mod record;
mod relist;
mod room;
mod salvage;
mod schema;
mod sweep;
mod upgrade;

mod applier;
mod apply;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use redb::Database;
use tokio::sync::watch;

pub use self::applier::{Applier, ApplierHandle, ApplierMode, MAX_BATCH};
pub use self::apply::EID_WINDOW;
pub use self::change::{
    Applied, AppliedBatch, Change, NewMessage, NotApplied, Outcome, Pending, PurgeSelection,
    ReadMark,
};
pub use self::clock::{format_time, now_us, utc_offset_s};
pub use self::contain::{contained, panic_message};
use self::error::DbContext;
pub use self::error::StoreError;
pub use self::inbox::Conversation;
pub use self::read::{HistoryPage, HistoryQuery};
pub use self::salvage::{Salvaged, salvage};
pub use self::schema::SCHEMA_VERSION;

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "chatd.redb";

// redb's cache may grow to this much. Reads are mostly of the recent tail
// and of room states; what the server holds must not grow with the history.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A message as stored and as read back. `room` like "dm:Dummy-1_Dummy-2".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Room id, e.g. `dm:Dummy-1_Dummy-2`.
    pub room: String,
    /// Microseconds since the Unix epoch; unique and increasing within the
    /// room, the history cursor.
    pub ts: u64,
    /// Socket id of the sending connection.
    pub id: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Message text.
    pub text: String,
    /// Formatted local time of acceptance, as clients were sent it.
    pub time: String,
}

/// A cheaply clonable handle on the open database.
///
/// The database itself can be closed and opened again under the handle
/// ([`Store::reopen`]): redb refuses every commit after an I/O error until
/// its file is reopened, and a server must get over a full disk without a
/// restart. Every read and write takes the database open at that moment.
#[derive(Clone)]
pub struct Store {
    shared: Arc<StoreShared>,
}

/// What every clone of a [`Store`] shares.
struct StoreShared {
    path: PathBuf,
    // None while a reopen is under way (or after one failed).
    db: RwLock<Option<Arc<OpenDatabase>>>,
    // Why the store cannot commit now (None: it can), set by its applier.
    failing: watch::Sender<Option<String>>,
}

/// The database, and the process's count of open ones: redb marks a file
/// cleanly closed only when its `Database` is dropped, and a file that was
/// not must be walked whole (checksums, allocator state) at its next open,
/// which takes seconds for a large history. [`Store::wait_closed`] lets a
/// process wait for that before it exits.
struct OpenDatabase {
    // Some until dropped: see the Drop impl.
    db: Option<Database>,
    // Dropped after `db` (fields drop in order): counts the close.
    _open: OpenCount,
}

impl std::ops::Deref for OpenDatabase {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database is taken only when dropped")
    }
}

impl Drop for OpenDatabase {
    fn drop(&mut self) {
        // Closing commits redb's allocator state, which panics inside redb
        // when that state was read from a damaged file: contained, so a
        // damaged store never takes the process down on its way out.
        let db = self.db.take();
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db))) {
            tracing::warn!(
                "closing the store file failed ({}): its next open checks it whole",
                panic_message(&*panic)
            );
        }
    }
}

static OPEN: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct OpenCount;

impl OpenCount {
    fn new() -> OpenCount {
        *OPEN.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        OpenCount
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        *OPEN.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        OPEN.1.notify_all();
    }
}

// Manual impl: the database handle has nothing useful to print.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .finish()
    }
}

impl Store {
    /// Starts the non-durable write transaction of a background step
    /// (fold, sweep, relist): the applier's next durable commit, or its
    /// idle sync, makes it durable.
    pub(crate) fn begin_step(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db()?.begin_write().ctx("starting a background step")?;
        txn.set_durability(redb::Durability::None)
            .ctx("making a background step non-durable")?;
        Ok(txn)
    }

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
        let db = open_database(&path)?;
        Ok(Store {
            shared: Arc::new(StoreShared {
                path,
                db: RwLock::new(Some(Arc::new(db))),
                failing: watch::Sender::new(None),
            }),
        })
    }

    /// The database as open now; [`StoreError::Closed`] while a reopen is
    /// under way.
    fn db(&self) -> Result<Arc<OpenDatabase>, StoreError> {
        let db = self.shared.db.read().unwrap_or_else(|e| e.into_inner());
        db.clone().ok_or_else(|| StoreError::Closed {
            path: self.shared.path.clone(),
        })
    }

    /// Closes the database and opens its file again, checking the schema
    /// as [`Store::open`] does and writing to it durably (a write probe):
    /// what clears redb's "previous I/O error" state once the disk works
    /// again. Until it succeeds, every read and write gives
    /// [`StoreError::Closed`]; a read under way on the old file fails.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let old = self
            .shared
            .db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Closes the file, unless a read still holds it.
        drop(old);
        let db = open_database(&self.shared.path)?;
        schema::probe(&db)?;
        *self.shared.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
        Ok(())
    }

    /// Why the store cannot commit now (None while it can): its applier
    /// sets it when a commit fails and clears it once one succeeds again.
    pub fn failing(&self) -> watch::Receiver<Option<String>> {
        self.shared.failing.subscribe()
    }

    /// Sets what [`Store::failing`] tells.
    pub(crate) fn set_failing(&self, reason: Option<String>) {
        self.shared.failing.send_replace(reason);
    }

    /// Waits (at most `timeout`) until every store this process opened is
    /// closed, its last handle dropped (the applier's thread holds one until
    /// its queue is drained and its last commit made): call it after
    /// dropping everything that uses the store, before exiting, so the file
    /// is marked cleanly closed. False if some store is still open.
    pub fn wait_closed(timeout: std::time::Duration) -> bool {
        let open = OPEN.0.lock().unwrap_or_else(|e| e.into_inner());
        let (open, _) = OPEN
            .1
            .wait_timeout_while(open, timeout, |open| *open > 0)
            .unwrap_or_else(|e| e.into_inner());
        *open == 0
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Records the identity of the log this store follows (a cluster's
    /// stream), so a node can refuse to apply another log on top of it.
    pub fn set_log_id(&self, id: &[u8]) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().ctx("starting write")?;
        txn.open_table(schema::STATE)
            .ctx("opening state")?
            .insert(schema::LOG_ID_KEY, id)
            .ctx("writing log id")?;
        txn.commit().ctx("committing log id")
    }
}

/// Opens (creating) the database file and checks (or writes) its schema,
/// upgrading an older one; a damaged file is an error, not a panic.
fn open_database(path: &Path) -> Result<OpenDatabase, StoreError> {
    contained("opening the store", || open_database_unguarded(path))
}

fn open_database_unguarded(path: &Path) -> Result<OpenDatabase, StoreError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_owned(),
            },
            source => StoreError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
    let txn = db.begin_write().ctx("starting schema check")?;
    if let schema::Found::Legacy(version) = schema::check_or_init(&txn, path)? {
        let started = std::time::Instant::now();
        tracing::info!(path = %path.display(), version, "upgrading the store to schema {SCHEMA_VERSION}");
        let upgraded = upgrade::from_legacy(&txn, version, path)?;
        tracing::info!(
            messages = upgraded.messages,
            rooms = upgraded.rooms,
            literal_times = upgraded.literal_times,
            secs = started.elapsed().as_secs_f64(),
            "store upgraded"
        );
    }
    txn.commit().ctx("committing schema check")?;
    Ok(OpenDatabase {
        db: Some(db),
        _open: OpenCount::new(),
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for tests that need a store with known contents.

    use super::apply::RoomCache;
    use super::change::NewMessage;
    use super::fold::fold_step;
    use super::schema::{BUCKETS, STAGED};
    use super::{Change, Store};

    /// A store in a fresh temporary directory (kept alive by the `TempDir`).
    pub fn tmp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    /// A message from `from` to `to` accepted at `time_us` (UTC).
    pub fn msg(room: &str, from: &str, to: &str, text: &str, time_us: u64) -> NewMessage {
        NewMessage {
            room: room.into(),
            sid: "jxKCSoWK6t4p8vojAAAD".into(),
            from: from.into(),
            to: to.into(),
            text: text.into(),
            cid: None,
            time_us,
            utc_offset_s: 0,
            eid: None,
        }
    }

    /// Stores a message from A to B with exactly this `ts` (above the
    /// room's newest), as the server would have.
    pub fn put(store: &Store, room: &str, ts: u64, text: &str) {
        let outcome = store
            .apply(Change::Message(msg(room, "A", "B", text, ts)))
            .unwrap();
        assert!(
            matches!(&outcome, super::Outcome::Stored(m) if m.ts == ts),
            "{outcome:?}"
        );
    }

    /// Applies `changes` in one transaction, as one group commit would
    /// (a room with many messages in it skips `staged`).
    pub fn apply_all(
        store: &Store,
        changes: impl IntoIterator<Item = Change>,
    ) -> Vec<super::Outcome> {
        apply_cached(store, changes, &mut Default::default())
    }

    /// [`apply_all`] from the rooms an earlier batch left in `cache`, as
    /// the applier does.
    pub fn apply_cached(
        store: &Store,
        changes: impl IntoIterator<Item = Change>,
        cache: &mut RoomCache,
    ) -> Vec<super::Outcome> {
        let batch: Vec<super::Pending<()>> = changes
            .into_iter()
            .map(|change| super::Pending {
                seq: None,
                change,
                ticket: None,
            })
            .collect();
        let committed = super::applier::commit(store, &batch, cache, true).unwrap();
        batch
            .into_iter()
            .zip(committed.effects)
            .filter_map(|(pending, (_, effect))| Some(effect?.into_outcome(pending.change)))
            .collect()
    }

    /// Applies `changes` in one transaction, staging every message, as a
    /// commit of live traffic does (one or two messages per room).
    pub fn stage_all(
        store: &Store,
        changes: impl IntoIterator<Item = Change>,
    ) -> Vec<super::Outcome> {
        stage_cached(store, changes, &mut Default::default())
    }

    /// [`stage_all`] from the rooms an earlier batch left in `cache`.
    pub fn stage_cached(
        store: &Store,
        changes: impl IntoIterator<Item = Change>,
        cache: &mut RoomCache,
    ) -> Vec<super::Outcome> {
        let txn = store.db().unwrap().begin_write().unwrap();
        let mut batch = super::apply::Batch::begin(&txn, std::mem::take(cache)).unwrap();
        let outcomes = changes
            .into_iter()
            .map(|change| {
                let seq = batch.position_of(None).unwrap().unwrap();
                batch.apply(seq, &change).unwrap().into_outcome(change)
            })
            .collect();
        let rooms = batch.finish().unwrap();
        txn.commit().unwrap();
        *cache = rooms;
        outcomes
    }

    /// The rooms of `user`'s first page of conversations, in order.
    pub fn conversation_rooms(store: &Store, user: &str) -> Vec<String> {
        let list = store.conversations(user, None, None, 50).unwrap();
        list.into_iter().map(|c| c.room).collect()
    }

    /// Every message, as `export_all` streams them.
    pub fn exported(store: &Store) -> Vec<super::StoredMessage> {
        let mut all = Vec::new();
        store
            .export_all::<super::StoreError>(|m| {
                all.push(m.clone());
                Ok(())
            })
            .unwrap();
        all
    }

    /// How many messages wait in `staged`.
    pub fn staged_len(store: &Store) -> u64 {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = store.db().unwrap().begin_read().unwrap();
        txn.open_table(STAGED).unwrap().len().unwrap()
    }

    /// Folds everything staged into chunks, in small steps.
    pub fn fold_all(store: &Store) {
        for b in 0..BUCKETS {
            while !fold_step(store, b, 100).unwrap().bucket_empty {}
        }
        assert_eq!(staged_len(store), 0);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    use redb::TableDefinition;

    use super::schema::{LEGACY_META, LEGACY_VERSION_KEY, SCHEMA_KEY, STATE, write_u64};
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
        assert_eq!(store.applied_seq().unwrap(), 1);
    }

    #[test]
    fn reopen_keeps_the_data_and_closes_reads_of_the_old_file() {
        let (_dir, store) = tmp_store();
        put(&store, "r", 1, "x");
        let reading = redb::ReadableDatabase::begin_read(&**store.db().unwrap()).unwrap();
        // redb closes the file under a read still under way: it fails.
        store.reopen().unwrap();
        assert!(reading.open_table(schema::STATE).is_err());
        drop(reading);
        assert_eq!(store.rooms().unwrap(), vec!["r".to_string()]);
        put(&store, "r", 2, "y");
        assert_eq!(store.applied_seq().unwrap(), 2);
    }

    #[test]
    fn a_schema_3_file_becomes_schema_4_in_place_and_lists_its_rooms() {
        let (dir, store) = tmp_store();
        apply_all(
            &store,
            [Change::Message(msg("dm:Ann_Bob", "Ann", "Bob", "1", 100))],
        );
        store.settle().unwrap();
        // What schema 3 left: no `relist`, version 3.
        let txn = store.db().unwrap().begin_write().unwrap();
        assert!(txn.delete_table(schema::RELIST).unwrap());
        write_u64(&mut txn.open_table(STATE).unwrap(), SCHEMA_KEY, 3).unwrap();
        txn.commit().unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&**store.db().unwrap()).unwrap();
        let version = schema::read_u64(&txn.open_table(STATE).unwrap(), SCHEMA_KEY).unwrap();
        assert_eq!(version, Some(SCHEMA_VERSION));
        drop(txn);
        apply_all(
            &store,
            [Change::Message(msg("dm:Ann_Cy", "Ann", "Cy", "2", 200))],
        );
        assert_eq!(
            conversation_rooms(&store, "Ann"),
            ["dm:Ann_Cy", "dm:Ann_Bob"]
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let (dir, store) = tmp_store();
        let txn = store.db().unwrap().begin_write().unwrap();
        write_u64(
            &mut txn.open_table(STATE).unwrap(),
            SCHEMA_KEY,
            SCHEMA_VERSION + 1,
        )
        .unwrap();
        txn.commit().unwrap();
        drop(store);
        match Store::open(dir.path()) {
            Err(StoreError::NewerSchema { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected NewerSchema, got {:?}", other.err()),
        }
    }

    #[test]
    fn a_fresh_file_carries_the_marker_older_chatd_reads() {
        // chatd 0.1 reads meta["schema_version"]: 3 makes it refuse the file.
        let (dir, store) = tmp_store();
        drop(store);
        let db = redb::Database::open(dir.path().join(DB_FILE_NAME)).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let meta = txn.open_table(LEGACY_META).unwrap();
        let version = redb::ReadableTable::get(&meta, LEGACY_VERSION_KEY).unwrap();
        assert_eq!(version.map(|v| v.value()), Some(SCHEMA_VERSION));
    }

    /// A redb file that some other program (or an old chatd) wrote with `fill`.
    fn legacy_meta(version: u64) -> tempfile::TempDir {
        foreign_db(|txn| {
            txn.open_table(LEGACY_META)
                .unwrap()
                .insert(LEGACY_VERSION_KEY, version)
                .unwrap();
        })
    }

    #[test]
    fn legacy_versions_outside_the_upgrade_range_are_refused() {
        let dir = legacy_meta(0);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::OlderSchema { found: 0, .. })
        ));
        let dir = legacy_meta(SCHEMA_VERSION + 1);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NewerSchema { .. })
        ));
        // The marker without the tables it marks.
        let dir = legacy_meta(SCHEMA_VERSION);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NotChatd { .. })
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
    fn meta_or_state_table_of_another_type_is_not_chatd() {
        for name in ["meta", "state"] {
            let dir = foreign_db(|txn| {
                let t: TableDefinition<u64, u64> = TableDefinition::new(name);
                txn.open_table(t).unwrap().insert(1, 2).unwrap();
            });
            assert!(
                matches!(Store::open(dir.path()), Err(StoreError::NotChatd { .. })),
                "{name}"
            );
        }
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
