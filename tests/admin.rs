//! The operator commands `online`, `export` and `purge` against the real
//! binary, with the server running (through the admin socket) and stopped
//! (on the store file directly).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Server, chatd, chatd_err, chatd_ok, send, wait_for_event};
use serde_json::Value;

const A: &str = "Dummy-1";
const B: &str = "Dummy-2";
const C: &str = "Dummy-3";
const ROOM_AB: &str = "dm:Dummy-1_Dummy-2";
const ROOM_AC: &str = "dm:Dummy-1_Dummy-3";

/// The documented export fields, in order.
const FIELDS: [&str; 7] = ["roomId", "id", "from", "text", "to", "time", "__v"];

/// What clients were acked, per room, as exported JSON text (no `ts`),
/// and the ts of each.
struct Sent {
    ab: Vec<String>,
    ac: Vec<String>,
    ab_ts: Vec<u64>,
}

/// The export form of an accepted message's ack: the message without `ts`,
/// serialized with its keys in the order the server sent them.
fn export_form(ack: &Value) -> (String, u64) {
    assert_eq!(ack["ok"], true, "message refused: {ack}");
    let mut message = ack["message"].clone();
    let object = message.as_object_mut().expect("message object");
    let ts = object
        .shift_remove("ts")
        .and_then(|ts| ts.as_u64())
        .expect("a ts");
    (serde_json::to_string(&message).unwrap(), ts)
}

/// Parses an export and checks every object has exactly the documented
/// fields in order; returns each object as JSON text.
fn parse_export(text: &str) -> Vec<String> {
    let values: Vec<Value> = serde_json::from_str(text).expect("export is a JSON array");
    values
        .iter()
        .map(|value| {
            let keys: Vec<&str> = value
                .as_object()
                .expect("message object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, FIELDS);
            serde_json::to_string(value).unwrap()
        })
        .collect()
}

/// Sends three messages A→B and two C→A through the server.
async fn send_messages(server: &Server) -> Sent {
    let a = server.connect_plain(A, B).await;
    let c = server.connect_plain(C, A).await;
    let mut sent = Sent {
        ab: Vec::new(),
        ac: Vec::new(),
        ab_ts: Vec::new(),
    };
    for text in ["hello", "with \"quotes\" and\nnewline", "ünïcödé ✓"] {
        let (json, ts) = export_form(&send(&a, text).await);
        sent.ab.push(json);
        sent.ab_ts.push(ts);
    }
    for text in ["from C", "again"] {
        sent.ac.push(export_form(&send(&c, text).await).0);
    }
    sent
}

fn export(dir: &Path, args: &[&str]) -> Vec<String> {
    parse_export(&chatd_ok(dir, &[&["export"][..], args].concat()))
}

/// Export, purge and their refusals; the same whichever mode is in use.
fn check_export_and_purge(dir: &Path, sent: &Sent, out_dir: &Path) {
    // One room, either spelling, equals what the clients were acked.
    assert_eq!(export(dir, &["--room", ROOM_AB]), sent.ab);
    assert_eq!(export(dir, &["--room", "Dummy-2,Dummy-1"]), sent.ab);
    // Every room: room by room, oldest first.
    let all = [sent.ab.clone(), sent.ac.clone()].concat();
    assert_eq!(export(dir, &["--all"]), all);
    // Time bounds, inclusive, as raw ts and as RFC 3339 / durations.
    let since = sent.ab_ts[1].to_string();
    assert_eq!(
        export(dir, &["--room", ROOM_AB, "--since", &since]),
        sent.ab[1..]
    );
    assert_eq!(
        export(dir, &["--room", ROOM_AB, "--until", &since]),
        sent.ab[..2]
    );
    assert_eq!(
        export(
            dir,
            &[
                "--room",
                ROOM_AB,
                "--since",
                "1h",
                "--until",
                "2100-01-01T00:00:00Z"
            ]
        ),
        sent.ab
    );
    // A room without messages is an empty array, said so on stderr.
    let out = chatd(dir, &["export", "--room", "dm:Nobody_Somebody"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"[]\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("No messages in dm:Nobody_Somebody"));

    // --out: the same bytes as stdout, in a private file.
    let file = out_dir.join("all.json");
    let stdout = chatd_ok(dir, &["export", "--all"]);
    let file_arg = file.to_str().unwrap();
    let out = chatd(dir, &["export", "--all", "--out", file_arg]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Exported 5 messages from all rooms"));
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stdout);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A failed export leaves an existing --out file as it was.
    let err = chatd_err(dir, &["export", "--room", "bad", "--out", file_arg]);
    assert!(err.contains("--room"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stdout);
    assert_eq!(std::fs::read_dir(out_dir).unwrap().count(), 1);

    // Purging one room leaves the other intact.
    assert_eq!(
        chatd_ok(
            dir,
            &["purge", "--room", "Dummy-2,Dummy-1", "--before", &since]
        ),
        format!("Purged 1 message from {ROOM_AB}\n")
    );
    assert_eq!(export(dir, &["--room", ROOM_AB]), sent.ab[1..]);
    assert_eq!(
        chatd_ok(dir, &["purge", "--room", ROOM_AB]),
        format!("Purged 2 messages from {ROOM_AB}\n")
    );
    assert!(export(dir, &["--room", ROOM_AB]).is_empty());
    assert_eq!(export(dir, &["--room", ROOM_AC]), sent.ac);

    // Purging every room needs --before and --yes.
    let err = chatd_err(dir, &["purge", "--all", "--before", "0s"]);
    assert!(err.contains("without --yes"), "{err}");
    let err = chatd_err(dir, &["purge", "--all", "--yes"]);
    assert!(err.contains("--before"), "{err}");
    assert_eq!(export(dir, &["--room", ROOM_AC]), sent.ac);
    assert_eq!(
        chatd_ok(dir, &["purge", "--all", "--before", "0s", "--yes"]),
        "Purged 2 messages from all rooms\n"
    );
    assert!(export(dir, &["--all"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_the_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let server = Server::start(&dir, &[]);

    let socket = dir.join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.sock mode {mode:o}");

    assert_eq!(chatd_ok(&dir, &["online"]), "No one is Online\n");
    assert_eq!(chatd_ok(&dir, &["online", "--json"]), "[]\n");

    let sent = send_messages(&server).await;
    // Clients that stay connected while the operator looks.
    let mut _a = server.connect_plain(A, B).await;
    let mut _b = server.connect_plain(B, A).await;
    assert_eq!(
        chatd_ok(&dir, &["online"]),
        "Online :  [ 'Dummy-1', 'Dummy-2' ]\n"
    );
    let json: Value = serde_json::from_str(&chatd_ok(&dir, &["online", "--json"])).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"user": A, "connections": 1, "rooms": [ROOM_AB]},
            {"user": B, "connections": 1, "rooms": [ROOM_AB]},
        ])
    );
    for entry in json.as_array().unwrap() {
        let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["user", "connections", "rooms"]);
    }

    check_export_and_purge(&dir, &sent, &out_dir);

    // The history a new connection gets no longer holds purged messages.
    let mut c = server.connect_plain(C, A).await;
    assert_eq!(
        wait_for_event(&mut c, "history").await,
        serde_json::json!([])
    );

    server.stop();
    assert!(!socket.exists(), "admin.sock left behind after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_a_stopped_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let server = Server::start(&dir, &[]);
    let sent = send_messages(&server).await;
    server.stop();

    let err = chatd_err(&dir, &["online"]);
    assert!(
        err.contains(&format!(
            "no chatd server is running for data directory {}",
            dir.display()
        )) && err.contains("admin.sock"),
        "{err}"
    );
    let err = chatd_err(&dir, &["online", "--json"]);
    assert!(err.contains("no chatd server is running"), "{err}");

    check_export_and_purge(&dir, &sent, &out_dir);

    // What the direct purge deleted stays deleted for the next server.
    let server = Server::start(&dir, &[]);
    let mut a = server.connect_plain(A, B).await;
    assert_eq!(
        wait_for_event(&mut a, "history").await,
        serde_json::json!([])
    );
    server.stop();
}

#[test]
fn bad_input_fails_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = tmp.path().join("out.json");
    let out_arg = out.to_str().unwrap();

    // No data directory: said so, and none is created.
    let err = chatd_err(&dir, &["export", "--all", "--out", out_arg]);
    assert!(err.contains("no chatd history"), "{err}");
    let err = chatd_err(&dir, &["purge", "--room", "A,B"]);
    assert!(err.contains("no chatd history"), "{err}");
    assert!(!dir.exists() && !out.exists());

    drop(chatd::store::Store::open(&dir).unwrap());
    for (args, needle) in [
        (&["export", "--room", "Dummy-1"][..], "--room"),
        (&["export", "--room", "dm:a_b_c"], "--room"),
        (&["export", "--room", "A,A"], "--room"),
        (
            &["export", "--room", "A,B", "--since", "yesterday"],
            "--since",
        ),
        (&["export", "--room", "A,B", "--until", "12x"], "--until"),
        (&["export"], "--room"),
        (&["export", "--all", "--since", "1h"], "--room"),
        (&["purge", "--room", "nope"], "--room"),
        (&["purge", "--room", "A,B", "--before", "later"], "--before"),
        (&["purge", "--all", "--before", "1h"], "--yes"),
    ] {
        let mut with_out = args.to_vec();
        if args[0] == "export" {
            with_out.extend(["--out", out_arg]);
        }
        let err = chatd_err(&dir, &with_out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {out_arg}");
    }

    // A store written by a newer chatd is refused, and left as it was.
    let db_path = dir.join(chatd::store::DB_FILE_NAME);
    // Schema 3 keeps its version in `state`, little-endian.
    let state: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("state");
    let newer = (chatd::store::SCHEMA_VERSION + 1).to_le_bytes();
    {
        let db = redb::Database::open(&db_path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(state)
            .unwrap()
            .insert(b"schema".as_slice(), newer.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = chatd_err(&dir, &["export", "--all", "--out", out_arg]);
    assert!(err.contains("newer"), "{err}");
    let err = chatd_err(&dir, &["purge", "--room", "A,B"]);
    assert!(err.contains("newer"), "{err}");
    assert!(!out.exists());
    let db = redb::Database::open(&db_path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let version = txn
        .open_table(state)
        .unwrap()
        .get(b"schema".as_slice())
        .unwrap()
        .map(|v| v.value().to_vec());
    assert_eq!(version, Some(newer.to_vec()));
}

#[test]
fn a_held_store_is_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // This test process holds the store, as a long export would.
    let held = chatd::store::Store::open(&dir).unwrap();

    let failure = match Server::try_start(&dir, &[]) {
        Ok(server) => {
            server.stop();
            panic!("chatd run started on a store another process holds");
        }
        Err(failure) => failure,
    };
    assert!(!failure.status.success());
    assert!(
        failure.stderr.contains("is using the data directory"),
        "{}",
        failure.stderr
    );
    let err = chatd_err(&dir, &["export", "--all"]);
    assert!(err.contains("no chatd server answers"), "{err}");
    let err = chatd_err(&dir, &["online"]);
    assert!(err.contains("no chatd server is running"), "{err}");

    drop(held);
    Server::start(&dir, &[]).stop();
}
