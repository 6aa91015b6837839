//! A store file damaged on disk (bytes of a real `chatd.redb`, written by
//! the binary, overwritten): no command panics, an export that cannot be
//! complete exits non-zero and leaves `--out` as it was (server stopped or
//! running), `chatd check` names what is unreadable, and `chatd salvage`
//! copies everything else into a new store that serves it, cids included.
//! Also: a data directory that lost its `chatd.redb` is not silently
//! started afresh, and a SIGTERM leaves a file that opens without redb's
//! repair (which rejects a whole file for one bad checksum).

mod common;

use std::path::Path;

use common::{Server, chatd, chatd_err, chatd_ok, send};
use serde_json::{Value, json};

/// Messages sent in each room.
const SENT: usize = 30;

/// A history written by `chatd run`: Alice to Bob `ab-<i>` (cid `a<i>`)
/// and Carol to Dave `cd-<i>`, then a clean stop.
async fn history(data: &Path) {
    let server = Server::start(data, &["--rate-limit", "0"]);
    let alice = server.connect_plain("Alice", "Bob").await;
    let carol = server.connect_plain("Carol", "Dave").await;
    for i in 0..SENT {
        let payload = json!({"text": format!("ab-{i}-{}", "a".repeat(80)), "cid": format!("a{i}")});
        let ack = alice
            .emit_with_ack("chat message", payload)
            .await
            .unwrap()
            .await
            .unwrap()
            .decode::<Vec<Value>>()
            .expect("JSON arguments");
        assert_eq!(ack[0]["ok"], true, "{ack:?}");
        let ack = send(&carol, &format!("cd-{i}-{}", "c".repeat(80))).await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    drop((alice, carol));
    server.stop();
}

/// Overwrites every copy of `needle` in the store file with 0xff bytes
/// (not UTF-8: the record holding it no longer decodes).
fn damage(data: &Path, needle: &str) {
    let path = data.join("chatd.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = needle.as_bytes();
    let mut hits = 0;
    for at in 0..bytes.len() - needle.len() {
        if &bytes[at..at + needle.len()] == needle {
            bytes[at..at + needle.len()].fill(0xff);
            hits += 1;
        }
    }
    assert!(hits > 0, "{needle:?} is not in the file");
    std::fs::write(&path, bytes).unwrap();
}

/// Texts of the exported messages of `room`, by their prefix number.
fn numbers(export: &str, prefix: &str) -> Vec<usize> {
    let messages: Vec<Value> = serde_json::from_str(export).expect("a JSON array");
    messages
        .iter()
        .filter_map(|m| m["text"].as_str()?.strip_prefix(prefix))
        .map(|rest| rest.split('-').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_damaged_record_never_passes_for_a_complete_export_and_is_salvaged_around() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    history(&data).await;
    damage(&data, "cd-15-");
    let out = tmp.path().join("backup.json");
    let out_arg = out.to_str().unwrap();

    // Server stopped: the export fails, the earlier backup stays.
    std::fs::write(&out, "previous backup").unwrap();
    let output = chatd(&data, &["export", "--all", "--out", out_arg]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous backup");

    let err = chatd_err(&data, &["check"]);
    assert!(err.contains("dm:Carol_Dave"), "{err}");
    assert!(err.contains("chatd salvage"), "{err}");

    // Server running on the damaged file: it serves what is readable; an
    // export that meets the damage fails through it just the same.
    let server = Server::start(&data, &[]);
    let output = chatd(&data, &["export", "--all", "--out", out_arg]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous backup");
    let output = chatd(&data, &["export", "--room", "dm:Carol_Dave"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let alice_room = chatd_ok(&data, &["export", "--room", "dm:Alice_Bob"]);
    assert_eq!(numbers(&alice_room, "ab-"), (0..SENT).collect::<Vec<_>>());
    let alice_room: Vec<Value> = serde_json::from_str(&alice_room).unwrap();
    // The damaged room still takes messages (they do not touch the damaged
    // chunk), as do the others. (A connection that joins that room is
    // closed: its history is unreadable.)
    let carol = server.connect_plain("Carol", "Eve").await;
    let alice = server.connect_plain("Alice", "Bob").await;
    let into_damage = json!({"text": "into the damage", "to": "Dave"});
    let ack = carol
        .emit_with_ack("chat message", into_damage)
        .await
        .unwrap()
        .await
        .unwrap()
        .decode::<Vec<Value>>()
        .expect("JSON arguments");
    assert_eq!(ack[0]["ok"], true, "{ack:?}");
    let ack = send(&alice, "elsewhere").await;
    assert_eq!(ack["ok"], true, "{ack}");
    drop((carol, alice));
    let err = chatd_err(&data, &["salvage", "--out", "/nonexistent-never-created"]);
    assert!(err.contains("stop the chatd server"), "{err}");
    server.stop();

    // Salvage: everything readable into a new store, the loss reported.
    let new = tmp.path().join("salvaged");
    let output = chatd(&data, &["salvage", "--out", new.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Salvaged into"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dm:Carol_Dave"), "{stderr}");
    chatd_ok(&new, &["check"]);
    let salvaged = chatd_ok(&new, &["export", "--all"]);
    assert_eq!(numbers(&salvaged, "ab-"), (0..SENT).collect::<Vec<_>>());
    let carol = numbers(&salvaged, "cd-");
    // What came before the damaged record is kept; that record is not.
    assert!(carol.starts_with(&(0..15).collect::<Vec<_>>()), "{carol:?}");
    assert!(!carol.contains(&15), "{carol:?}");
    // Byte for byte what the damaged store held for the rooms it could read.
    let copied: Vec<Value> = serde_json::from_str(&salvaged).unwrap();
    assert!(alice_room.iter().all(|m| copied.contains(m)));
    assert!(copied.iter().any(|m| m["text"] == "elsewhere"));
    assert!(copied.iter().any(|m| m["text"] == "into the damage"));

    // The salvaged store serves, and knows the cids it had.
    let server = Server::start(&new, &[]);
    let alice = server.connect_plain("Alice", "Bob").await;
    let again = json!({"text": "ab-3-resent", "cid": "a3"});
    let ack = alice
        .emit_with_ack("chat message", again)
        .await
        .unwrap()
        .await
        .unwrap()
        .decode::<Vec<Value>>()
        .expect("JSON arguments");
    assert_eq!(ack[0]["duplicate"], true, "{ack:?}");
    assert!(
        ack[0]["message"]["text"]
            .as_str()
            .unwrap()
            .starts_with("ab-3-a")
    );
    drop(alice);
    server.stop();

    // Salvage never writes over a store.
    let err = chatd_err(&data, &["salvage", "--out", new.to_str().unwrap()]);
    assert!(err.contains("exists"), "{err}");
}

#[tokio::test]
async fn a_lost_store_file_is_not_replaced_by_an_empty_history() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A server with TLS ran here: it left its certificate in tls/.
    Server::spawn(&data, &[], &[]).stop();
    assert!(data.join("tls").is_dir());
    let db = data.join("chatd.redb");
    for state in ["empty", "missing"] {
        match state {
            "empty" => std::fs::write(&db, b"").unwrap(),
            _ => std::fs::remove_file(&db).unwrap(),
        }
        let Err(failure) = Server::try_start(&data, &[]) else {
            panic!("started on a {state} store");
        };
        assert_eq!(failure.status.code(), Some(1));
        assert!(failure.stderr.contains(state), "{}", failure.stderr);
        assert!(failure.stderr.contains("--new-store"), "{}", failure.stderr);
    }
    // Deliberately afresh.
    let server = Server::start(&data, &["--new-store"]);
    server.stop();
    assert!(std::fs::metadata(&db).unwrap().len() > 0);
}

/// Whether opening the store file at `data` runs redb's repair (the walk
/// of the whole file an unclean close forces, which rejects the file if
/// any page's checksum fails).
fn open_needs_repair(data: &Path) -> bool {
    let repaired = std::rc::Rc::new(std::cell::Cell::new(false));
    let seen = repaired.clone();
    let mut builder = redb::Database::builder();
    builder.set_repair_callback(move |_| seen.set(true));
    drop(
        builder
            .open(data.join("chatd.redb"))
            .expect("the store opens"),
    );
    repaired.get()
}

#[tokio::test]
async fn a_graceful_stop_leaves_a_file_that_opens_without_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    history(&data).await;
    assert!(
        !open_needs_repair(&data),
        "SIGTERM left a file that needs repair"
    );

    // What the check tells apart: a kill leaves one that does.
    let server = Server::start(&data, &[]);
    let alice = server.connect_plain("Alice", "Bob").await;
    assert_eq!(send(&alice, "before the kill").await["ok"], true);
    drop(server); // SIGKILL
    assert!(
        open_needs_repair(&data),
        "a killed server's file opened without repair"
    );
}
