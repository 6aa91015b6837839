//! One-off: writes tests/fixtures/schema2.redb and schema2.json with the
//! schema 2 code (run: cargo test --lib store::fixture_gen -- --ignored).

use super::fold::{FoldPass, STEP};
use super::writer::Writer;
use super::{NewMessage, Store};

fn stamp(ts: u64) -> String {
    use chrono::{FixedOffset, TimeZone};
    let secs = (ts / 1_000_000) as i64;
    let fmt = "%d/%m/%Y, %-I:%M:%S %P";
    let at = |offset: i32| {
        FixedOffset::east_opt(offset)
            .unwrap()
            .timestamp_opt(secs, 0)
            .unwrap()
            .format(fmt)
            .to_string()
    };
    match (ts / 7) % 6 {
        0 | 1 => at(0),
        2 => at(5 * 3600 + 1800),
        3 => at(-8 * 3600),
        4 => at(13 * 3600 + 45 * 60),
        _ => format!("not a time {ts}"),
    }
}

fn msg(room: &str, from: &str, to: &str, i: usize) -> NewMessage {
    let id = match i % 5 {
        0 => "jxKCSoWK6t4p8vojAAAD".to_string(),
        1 => format!("Bre91jFhRIFHalbm{:04}", i % 10000),
        2 => format!("sock{i}"),
        3 => "a+b/c=d_e-f~g!h@i#j$".to_string(),
        _ => format!("{:020}", i),
    };
    let text = match i % 4 {
        0 => format!("Hello World! from {from} #{i}"),
        1 => format!("héllo 🌍 {i} ünïcödé"),
        2 => "x".repeat(1 + i % 300),
        _ => format!("line one\nline \"two\" {i}\t<tab>"),
    };
    NewMessage {
        room: room.into(),
        id,
        from: from.into(),
        to: to.into(),
        text,
    }
}

const ROOMS: [(&str, &str, &str); 5] = [
    ("dm:Dummy-1_Dummy-2", "Dummy-1", "Dummy-2"),
    ("dm:A_B", "A", "B"),
    ("dm:Zed_alice", "Zed", "alice"),
    ("dm:a.b_c-d", "a.b", "c-d"),
    ("r", "A", "B"),
];

async fn write(store: &Store, start: usize, n: usize, burst: bool) {
    let mut w = Writer::<()>::spawn(store.clone(), 4096, stamp).unwrap();
    for i in start..start + n {
        let (room, a, b) = ROOMS[if burst { 0 } else { i % ROOMS.len() }];
        let (from, to) = if i % 3 == 0 { (b, a) } else { (a, b) };
        // One message whose names do not match its room.
        let m = if i == start + 3 {
            msg("dm:A_B", "C", "D", i)
        } else {
            msg(room, from, to, i)
        };
        w.handle.submit(m, ()).await.unwrap();
        if i % 37 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    }
    drop(w.handle);
    while let Some(b) = w.batches.recv().await {
        b.result.map_err(|(e, _)| e).unwrap();
    }
    w.thread.join().unwrap();
}

#[tokio::test]
#[ignore = "one-off fixture generator"]
async fn generate_schema2_fixture() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    // Folded through a full pass.
    write(&store, 0, 300, false).await;
    // A burst in one room: 8+ per commit go straight to `messages`.
    write(&store, 300, 60, true).await;
    let mut pass = FoldPass::start(&store).unwrap();
    while !pass.step(&store, STEP).unwrap().done {}
    // More, then a pass cut short after its copy step: copies in both tables.
    write(&store, 360, 200, false).await;
    let mut pass = FoldPass::start(&store).unwrap();
    pass.step(&store, 10_000).unwrap();
    drop(pass);
    // And some only in `recent`.
    write(&store, 560, 90, false).await;
    // A purge, so ts have gaps.
    let q = super::HistoryQuery { limit: 1000, ..Default::default() };
    let cut = store.history("dm:a.b_c-d", &q).unwrap()[20].ts;
    assert_eq!(store.purge_room("dm:a.b_c-d", Some(cut)).unwrap(), 20);
    {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = store.db.begin_read().unwrap();
        let m = txn.open_table(super::schema::MESSAGES).unwrap().len().unwrap();
        let r = txn.open_table(super::schema::RECENT).unwrap().len().unwrap();
        println!("messages {m} recent {r}");
    }

    let mut all = Vec::new();
    store
        .export_all::<super::StoreError>(|m| {
            all.push(serde_json::json!({
                "room": m.room, "ts": m.ts, "id": m.id, "from": m.from,
                "to": m.to, "text": m.text, "time": m.time,
            }));
            Ok(())
        })
        .unwrap();
    let last_ts = store.last_ts().unwrap();
    drop(store);
    {
        let mut db = redb::Database::open(tmp.path().join(super::DB_FILE_NAME)).unwrap();
        db.compact().unwrap();
    }
    std::fs::copy(tmp.path().join(super::DB_FILE_NAME), dir.join("schema2.redb")).unwrap();
    let doc = serde_json::json!({"last_ts": last_ts, "messages": all});
    std::fs::write(
        dir.join("schema2.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
}
