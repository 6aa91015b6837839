//! Read paths: history pages, streaming exports and the room list.
//!
//! Each call reads one MVCC snapshot, so it never blocks (or is blocked by)
//! the writer, and a page is consistent with itself. A room's history is
//! its range of `messages` followed by its entries in `recent` above the
//! last ts it has in `messages` (below it, `recent` holds copies a fold
//! pass has made and not yet deleted, see `fold.rs`). They are found by
//! scanning the room's bucket of `recent`, which the fold keeps small.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use redb::{AccessGuard, ReadOnlyTable, ReadableDatabase, ReadableTable, StorageError};

use super::error::DbContext;
use super::schema::{LAST_TS_KEY, MESSAGES, META, RECENT, RecentKey, bucket};
use super::{Store, StoreError, StoredMessage, decode_record};

/// A history page request; see [`Store::history`].
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Exclusive upper bound on ts.
    pub before: Option<u64>,
    /// Exclusive lower bound on ts.
    pub after: Option<u64>,
    /// Most messages to return (0 returns none).
    pub limit: usize,
    /// Ignore messages newer than this (inclusive), for a consistent snapshot.
    pub max_ts: Option<u64>,
}

impl HistoryQuery {
    // The inclusive ts range the bounds leave, or None if they leave nothing.
    fn inclusive_bounds(&self) -> Option<(u64, u64)> {
        let lo = match self.after {
            Some(a) => a.checked_add(1)?,
            None => 0,
        };
        let mut hi = u64::MAX;
        if let Some(b) = self.before {
            hi = hi.min(b.checked_sub(1)?);
        }
        if let Some(m) = self.max_ts {
            hi = hi.min(m);
        }
        (lo <= hi).then_some((lo, hi))
    }
}

/// A history page and the log position of the snapshot it was read from:
/// every change up to `applied_seq` is in it, none after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// The snapshot's log position.
    pub applied_seq: u64,
}

type KeyBounds<'a> = (Bound<(&'a str, u64)>, Bound<(&'a str, u64)>);

type Entry<'a> = (
    AccessGuard<'a, (&'static str, u64)>,
    AccessGuard<'a, &'static [u8]>,
);

type RecentTable = ReadOnlyTable<RecentKey, (&'static str, &'static [u8])>;

// Decodes one `messages` entry.
fn decode_entry(item: Result<Entry<'_>, StorageError>) -> Result<StoredMessage, StoreError> {
    let (key, value) = item.ctx("reading messages")?;
    let (room, ts) = key.value();
    decode_message(room, ts, value.value())
}

// The last ts `room` has in `messages`: its `recent` entries up to there
// are copies (see the module doc).
pub(crate) fn folded_upto(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    room: &str,
) -> Result<Option<u64>, StoreError> {
    let last = table
        .range((room, 0)..=(room, u64::MAX))
        .ctx("reading history")?
        .next_back()
        .transpose()
        .ctx("reading history")?;
    Ok(last.map(|(key, _)| key.value().1))
}

// A room's messages in `recent` with ts in `lo..=hi` and above `folded`,
// oldest first; only the room's own records are decoded.
fn recent_in_room<'t>(
    recent: &'t RecentTable,
    room: &'t str,
    folded: Option<u64>,
    lo: u64,
    hi: u64,
) -> Result<impl DoubleEndedIterator<Item = Result<StoredMessage, StoreError>> + 't, StoreError> {
    let lo = match folded {
        Some(upto) => lo.max(upto.saturating_add(1)),
        None => lo,
    };
    let b = bucket(room);
    // Above `folded`, lo may pass hi; the range stays well-formed and the
    // filter drops the one entry it can then hold.
    let range = recent
        .range((b, lo)..=(b, hi.max(lo)))
        .ctx("reading recent messages")?;
    Ok(range.filter_map(move |item| {
        let (key, value) = match item.ctx("reading recent messages") {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        let ((_, ts), (entry_room, bytes)) = (key.value(), value.value());
        (entry_room == room && ts <= hi).then(|| decode_message(room, ts, bytes))
    }))
}

/// The ts of every entry in `recent`, by room, each room's in ts order:
/// what an export or a fold pass walks, a few bytes per message rather
/// than the messages themselves.
pub(crate) fn recent_by_room(
    recent: &impl ReadableTable<RecentKey, (&'static str, &'static [u8])>,
) -> Result<BTreeMap<String, Vec<u64>>, StoreError> {
    let mut rooms: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // A room's messages are all in one bucket, so each list is in ts order.
    for item in recent.iter().ctx("reading recent messages")? {
        let (key, value) = item.ctx("reading recent messages")?;
        let ((_, ts), (room, _)) = (key.value(), value.value());
        match rooms.get_mut(room) {
            Some(list) => list.push(ts),
            None => {
                rooms.insert(room.to_owned(), vec![ts]);
            }
        }
    }
    Ok(rooms)
}

// Emits, and takes out of `newer`, the `recent` messages of every room
// before `until` (of every room if None); in `folded`'s room only those
// above its last ts in `messages`.
fn emit_recent_before<E: From<StoreError>>(
    recent: &RecentTable,
    newer: &mut BTreeMap<String, Vec<u64>>,
    until: Option<&str>,
    folded: Option<&(String, u64)>,
    emit: &mut impl FnMut(&StoredMessage) -> Result<(), E>,
) -> Result<(), E> {
    while let Some(entry) = newer.first_entry() {
        if until.is_some_and(|room| entry.key().as_str() >= room) {
            break;
        }
        let floor = folded
            .filter(|(room, _)| room == entry.key())
            .map(|&(_, ts)| ts);
        let (room, list) = entry.remove_entry();
        let b = bucket(&room);
        for ts in list {
            if floor.is_some_and(|upto| ts <= upto) {
                continue;
            }
            let value = recent.get((b, ts)).ctx("reading recent messages")?;
            // Present: the index and this lookup read one snapshot.
            if let Some(value) = value {
                emit(&decode_message(&room, ts, value.value().1)?)?;
            }
        }
    }
    Ok(())
}

// Decodes a record, naming its key if it is corrupt.
fn decode_message(room: &str, ts: u64, bytes: &[u8]) -> Result<StoredMessage, StoreError> {
    match decode_record(bytes) {
        Ok(record) => Ok(StoredMessage::from_record(room.to_owned(), ts, record)),
        Err(e) => Err(StoreError::CorruptMessage {
            room: room.to_owned(),
            ts,
            reason: match e {
                StoreError::BadRecord(reason) => reason,
                other => other.to_string(),
            },
        }),
    }
}

/// The first room after `after` (or the first room at all), by byte order.
pub(crate) fn next_room(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    after: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let entry = match after {
        None => table.first().ctx("listing rooms")?,
        Some(room) => {
            let from: KeyBounds<'_> = (Bound::Excluded((room, u64::MAX)), Bound::Unbounded);
            table
                .range(from)
                .ctx("listing rooms")?
                .next()
                .transpose()
                .ctx("listing rooms")?
        }
    };
    Ok(entry.map(|(k, _)| k.value().0.to_owned()))
}

impl Store {
    /// History query, oldest first. `before`/`after` are exclusive bounds.
    /// Only `before`: the newest `limit` older than it; only `after`: the
    /// oldest `limit` newer than it; both: the oldest `limit` strictly
    /// between; neither: the newest `limit`. With `max_ts`, messages with
    /// ts > max_ts are ignored.
    pub fn history(&self, room: &str, q: &HistoryQuery) -> Result<Vec<StoredMessage>, StoreError> {
        self.history_page(room, q).map(|page| page.messages)
    }

    /// [`Store::history`] with the log position of the snapshot it read.
    pub fn history_page(&self, room: &str, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let txn = self.db.begin_read().ctx("starting read transaction")?;
        let meta = txn.open_table(META).ctx("opening meta table")?;
        // Today's ts is unique across rooms and increases in commit order:
        // the highest one committed is the snapshot's log position.
        let applied_seq = meta
            .get(LAST_TS_KEY)
            .ctx("reading last_ts")?
            .map(|v| v.value())
            .unwrap_or(0);
        let Some((lo, hi)) = q.inclusive_bounds() else {
            return Ok(HistoryPage {
                messages: Vec::new(),
                applied_seq,
            });
        };
        if q.limit == 0 {
            return Ok(HistoryPage {
                messages: Vec::new(),
                applied_seq,
            });
        }
        let table = txn.open_table(MESSAGES).ctx("opening messages table")?;
        let recent = txn.open_table(RECENT).ctx("opening recent table")?;
        let range = table
            .range((room, lo)..=(room, hi))
            .ctx("reading history")?;
        let newer = recent_in_room(&recent, room, folded_upto(&table, room)?, lo, hi)?;
        // Cap the up-front allocation: limit comes from a client.
        let mut out = Vec::with_capacity(q.limit.min(256));
        if q.after.is_some() {
            for item in range.map(decode_entry).chain(newer).take(q.limit) {
                out.push(item?);
            }
        } else {
            // Without a lower bound the page is the newest end: walk backwards.
            for item in newer
                .rev()
                .chain(range.rev().map(decode_entry))
                .take(q.limit)
            {
                out.push(item?);
            }
            out.reverse();
        }
        Ok(HistoryPage {
            messages: out,
            applied_seq,
        })
    }

    /// Streams messages of one room (ts in `since..=until` when given),
    /// oldest first, to `f`, without loading the room into memory. `f` may
    /// return an error to stop. Returns how many messages `f` accepted.
    pub fn export_room<E: From<StoreError>>(
        &self,
        room: &str,
        since: Option<u64>,
        until: Option<u64>,
        mut f: impl FnMut(&StoredMessage) -> Result<(), E>,
    ) -> Result<u64, E> {
        let (lo, hi) = (since.unwrap_or(0), until.unwrap_or(u64::MAX));
        if lo > hi {
            return Ok(0);
        }
        let txn = self.db.begin_read().ctx("starting read transaction")?;
        let table = txn.open_table(MESSAGES).ctx("opening messages table")?;
        let recent = txn.open_table(RECENT).ctx("opening recent table")?;
        let range = table.range((room, lo)..=(room, hi)).ctx("exporting room")?;
        let newer = recent_in_room(&recent, room, folded_upto(&table, room)?, lo, hi)?;
        let mut count = 0;
        for item in range.map(decode_entry).chain(newer) {
            f(&item?)?;
            count += 1;
        }
        Ok(count)
    }

    /// Streams every message of every room (room order, then ts) to `f`.
    pub fn export_all<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&StoredMessage) -> Result<(), E>,
    ) -> Result<u64, E> {
        let txn = self.db.begin_read().ctx("starting read transaction")?;
        let table = txn.open_table(MESSAGES).ctx("opening messages table")?;
        let recent = txn.open_table(RECENT).ctx("opening recent table")?;
        let mut newer = recent_by_room(&recent)?;
        let mut count = 0;
        let mut emit = |m: &StoredMessage| -> Result<(), E> {
            f(m)?;
            count += 1;
            Ok(())
        };
        // The room being read from `messages`, and its last ts so far.
        let mut last: Option<(String, u64)> = None;
        for item in table.iter().ctx("exporting all rooms")? {
            let m = decode_entry(item)?;
            match &mut last {
                Some((room, ts)) if *room == m.room => *ts = m.ts,
                _ => {
                    // A new room: the rooms before it are complete in
                    // `messages`, so their `recent` messages come now.
                    emit_recent_before(
                        &recent,
                        &mut newer,
                        Some(&m.room),
                        last.as_ref(),
                        &mut emit,
                    )?;
                    last = Some((m.room.clone(), m.ts));
                }
            }
            emit(&m)?;
        }
        emit_recent_before(&recent, &mut newer, None, last.as_ref(), &mut emit)?;
        Ok(count)
    }

    /// The highest `ts` ever committed (0 for an empty store): every stored
    /// message has a `ts` at or below it.
    pub fn last_ts(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().ctx("starting read transaction")?;
        let meta = txn.open_table(META).ctx("opening meta table")?;
        let last = meta.get(LAST_TS_KEY).ctx("reading last_ts")?;
        Ok(last.map(|v| v.value()).unwrap_or(0))
    }

    /// Names of rooms that have at least one message, in byte order.
    pub fn rooms(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().ctx("starting read transaction")?;
        let table = txn.open_table(MESSAGES).ctx("opening messages table")?;
        let recent = txn.open_table(RECENT).ctx("opening recent table")?;
        let mut listed = Vec::new();
        // One seek per room rather than a scan of every message.
        while let Some(room) = next_room(&table, listed.last().map(String::as_str))? {
            listed.push(room);
        }
        let mut rooms: BTreeSet<String> = recent_by_room(&recent)?.into_keys().collect();
        rooms.extend(listed);
        Ok(rooms.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::store::encode_record;

    const ROOM: &str = "dm:A_B";

    // Where the fixture's messages are, as the writer and fold passes leave
    // them: from `recent_from` on in `recent`, before it in `messages`,
    // and with `copies` also in `recent` (a pass copied, not yet deleted).
    #[derive(Debug, Clone, Copy)]
    struct Layout {
        recent_from: u64,
        copies: bool,
    }

    // All folded, folded up to ts 55, nothing folded, and copied up to 55
    // but not yet deleted. Each read test runs on all four.
    const LAYOUTS: [Layout; 4] = [
        Layout {
            recent_from: u64::MAX,
            copies: false,
        },
        Layout {
            recent_from: 55,
            copies: false,
        },
        Layout {
            recent_from: 0,
            copies: false,
        },
        Layout {
            recent_from: 55,
            copies: true,
        },
    ];

    fn put_at(store: &Store, room: &str, ts: u64, bytes: &[u8], layout: Layout) {
        if ts >= layout.recent_from || layout.copies {
            put_recent_raw(store, room, ts, bytes);
        }
        if ts < layout.recent_from {
            put_raw(store, room, ts, bytes);
        }
    }

    // ROOM holds ts 10, 20, ..., 100; neighbouring rooms must never leak in.
    fn fixture(layout: Layout) -> (tempfile::TempDir, Store) {
        let (dir, store) = tmp_store();
        // ts is unique across rooms, as the writer assigns it.
        let others = (1..).zip(["dm:A_", "dm:A_B0", "dm:A_A"]);
        let mut keys: Vec<(&str, u64)> = (10..=100).step_by(10).map(|ts| (ROOM, ts)).collect();
        for (i, room) in others {
            keys.extend([(room, 5 + i), (room, 55 + i), (room, 500 + i)]);
        }
        for (room, ts) in keys {
            let text = if room == ROOM {
                format!("m{ts}")
            } else {
                "x".into()
            };
            put_at(
                &store,
                room,
                ts,
                &encode_record(&record(&text)).unwrap(),
                layout,
            );
        }
        (dir, store)
    }

    fn ts(
        store: &Store,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        max_ts: Option<u64>,
    ) -> Vec<u64> {
        let q = HistoryQuery {
            before,
            after,
            limit,
            max_ts,
        };
        store
            .history(ROOM, &q)
            .unwrap()
            .iter()
            .map(|m| m.ts)
            .collect()
    }

    #[test]
    fn history_paging() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            // neither: the newest `limit`
            assert_eq!(ts(&s, None, None, 3, None), [80, 90, 100]);
            assert_eq!(ts(&s, None, None, 50, None).len(), 10);
            // only before: the newest `limit` older than it (exclusive)
            assert_eq!(ts(&s, Some(50), None, 2, None), [30, 40]);
            assert_eq!(ts(&s, Some(70), None, 3, None), [40, 50, 60]);
            assert_eq!(ts(&s, Some(50), None, 10, None), [10, 20, 30, 40]);
            assert_eq!(ts(&s, Some(10), None, 10, None), Vec::<u64>::new());
            // only after: the oldest `limit` newer than it (exclusive)
            assert_eq!(ts(&s, None, Some(50), 2, None), [60, 70]);
            assert_eq!(ts(&s, None, Some(0), 2, None), [10, 20]);
            assert_eq!(ts(&s, None, Some(30), 3, None), [40, 50, 60]);
            assert_eq!(ts(&s, None, Some(100), 5, None), Vec::<u64>::new());
            // both: the oldest `limit` strictly between
            assert_eq!(ts(&s, Some(80), Some(20), 3, None), [30, 40, 50]);
            assert_eq!(ts(&s, Some(30), Some(20), 3, None), Vec::<u64>::new());
            assert_eq!(ts(&s, Some(20), Some(30), 3, None), Vec::<u64>::new());
            // max_ts hides newer messages (inclusive)
            assert_eq!(ts(&s, None, None, 2, Some(65)), [50, 60]);
            assert_eq!(ts(&s, None, None, 2, Some(60)), [50, 60]);
            assert_eq!(ts(&s, None, Some(40), 10, Some(65)), [50, 60]);
            assert_eq!(ts(&s, Some(90), None, 2, Some(45)), [30, 40]);
            // degenerate bounds
            assert_eq!(ts(&s, None, None, 0, None), Vec::<u64>::new());
            assert_eq!(ts(&s, Some(0), None, 5, None), Vec::<u64>::new());
            assert_eq!(ts(&s, None, Some(u64::MAX), 5, None), Vec::<u64>::new());
        }
    }

    #[test]
    fn history_returns_full_messages_and_unknown_room_is_empty() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let q = HistoryQuery {
                limit: 1,
                ..Default::default()
            };
            let got = s.history(ROOM, &q).unwrap();
            assert_eq!(
                got,
                [StoredMessage::from_record(ROOM.into(), 100, record("m100"))]
            );
            assert!(s.history("dm:X_Y", &q).unwrap().is_empty());
        }
    }

    #[test]
    fn export_room_streams_in_order_with_inclusive_bounds() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let mut seen = Vec::new();
            let n = s
                .export_room::<StoreError>(ROOM, Some(20), Some(40), |m| {
                    seen.push((m.ts, m.text.clone()));
                    Ok(())
                })
                .unwrap();
            assert_eq!(n, 3);
            assert_eq!(
                seen,
                [(20, "m20".into()), (30, "m30".into()), (40, "m40".into())]
            );
            let all = s
                .export_room::<StoreError>(ROOM, None, None, |_| Ok(()))
                .unwrap();
            assert_eq!(all, 10);
            assert_eq!(
                s.export_room::<StoreError>(ROOM, Some(50), Some(40), |_| Ok(()))
                    .unwrap(),
                0
            );
        }
    }

    #[derive(Debug)]
    enum StopOr {
        Stop,
        Store,
    }
    impl From<StoreError> for StopOr {
        fn from(_: StoreError) -> Self {
            StopOr::Store
        }
    }

    #[test]
    fn export_callback_error_stops_the_stream() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let mut calls = 0;
            let r = s.export_room(ROOM, None, None, |_| {
                calls += 1;
                if calls == 3 {
                    Err(StopOr::Stop)
                } else {
                    Ok(())
                }
            });
            assert!(matches!(r, Err(StopOr::Stop)));
            assert_eq!(calls, 3);
        }
    }

    #[test]
    fn export_all_is_in_room_then_ts_order() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            let mut keys = Vec::new();
            let n = s
                .export_all::<StoreError>(|m| {
                    keys.push((m.room.clone(), m.ts));
                    Ok(())
                })
                .unwrap();
            assert_eq!(n, 19);
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(keys, sorted);
            assert_eq!(keys[0], ("dm:A_".into(), 6));
        }
    }

    #[test]
    fn rooms_lists_each_room_once() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            assert_eq!(s.rooms().unwrap(), ["dm:A_", "dm:A_A", "dm:A_B", "dm:A_B0"]);
            let (_dir2, empty) = tmp_store();
            assert!(empty.rooms().unwrap().is_empty());
        }
    }

    #[test]
    fn corrupt_record_is_an_error_not_a_panic() {
        for layout in LAYOUTS {
            let (_dir, s) = fixture(layout);
            put_at(
                &s,
                ROOM,
                55,
                &[RECORD_VERSION_FOR_TEST, 0xFD, 0xFF, 0xFF],
                layout,
            );
            let q = HistoryQuery {
                limit: 50,
                ..Default::default()
            };
            match s.history(ROOM, &q) {
                Err(StoreError::CorruptMessage { room, ts, .. }) => {
                    assert_eq!((room.as_str(), ts), (ROOM, 55))
                }
                other => panic!("expected CorruptMessage, got {other:?}"),
            }
            // Pages that do not touch the bad record still work.
            assert_eq!(ts(&s, None, None, 2, None), [90, 100]);
            assert!(
                s.export_room::<StoreError>(ROOM, None, None, |_| Ok(()))
                    .is_err()
            );
            assert!(s.export_all::<StoreError>(|_| Ok(())).is_err());
            // Purging removes it without decoding it.
            assert_eq!(s.purge_room(ROOM, Some(56)).unwrap(), 6);
            assert_eq!(ts(&s, None, None, 50, None), [60, 70, 80, 90, 100]);
        }
    }

    const RECORD_VERSION_FOR_TEST: u8 = super::super::RECORD_VERSION;
}
