//! Clock steps under a running server (libfaketime moves the wall clock of
//! the chatd process alone): a message's `time` is the wall clock when it
//! was accepted, its `ts` keeps increasing in its room, and a step is logged.

mod common;

use std::path::Path;

use common::{Server, within};
use serde_json::{Value, json};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

async fn send(client: &chatd::client::Client, text: &str) -> Value {
    let answer = within("the ack", async {
        client
            .emit_with_ack("chat message", json!(text))
            .await
            .expect("sent")
            .await
            .expect("answered")
    })
    .await;
    let answer: Value = answer.first().expect("JSON arguments");
    assert_eq!(answer["ok"], true, "{answer}");
    answer["message"].clone()
}

/// The date part of a message's `time`: `DD/MM/YYYY`.
fn day(message: &Value) -> String {
    message["time"].as_str().unwrap()[..10].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_follows_the_wall_clock_and_ts_keeps_increasing_across_steps() {
    if !Path::new(LIBFAKETIME).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{LIBFAKETIME} is missing: .ci/run installs Debian's faketime package");
        }
        eprintln!("skipped: {LIBFAKETIME} is missing (apt-get install faketime)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("clock-offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_path = offset.to_str().unwrap();
    let mut server = Server::spawn(
        &dir.path().join("data"),
        &["--no-tls", "--no-auth"],
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", offset_path),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let client = within("connect", server.connect_plain("Clock-1", "Clock-2")).await;
    let before = send(&client, "before the step").await;

    std::fs::write(&offset, "+1d\n").unwrap();
    server.log_line("the wall clock stepped forward");
    let ahead = send(&client, "a day ahead").await;

    std::fs::write(&offset, "+0\n").unwrap();
    server.log_line("the wall clock stepped backward");
    let after = send(&client, "back to now").await;

    assert_ne!(day(&ahead), day(&before), "time follows the clock forward");
    assert_eq!(day(&after), day(&before), "and back: {after}");
    let ts = |m: &Value| m["ts"].as_u64().unwrap();
    assert!(
        ts(&before) < ts(&ahead) && ts(&ahead) < ts(&after),
        "ts increases: {before} {ahead} {after}"
    );
    server.stop();
}
