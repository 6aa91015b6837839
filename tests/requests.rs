//! What one client may ask of the server, with or without reconnecting:
//! a user's message rate and new-room rate survive their disconnects, and a connection's
//! `history` requests are limited so a flood of them cannot hold up
//! everyone else.

mod common;

use std::time::{Duration, Instant};

use chatd::client::Client;
use common::{Server, within};
use serde_json::{Value, json};

/// Sends `text` and waits for its ack.
async fn send(client: &Client, text: &str) -> Value {
    within("the ack", async {
        client
            .emit_with_ack("chat message", json!(text))
            .await
            .expect("sent")
            .await
            .expect("answered")
            .first::<Value>()
            .expect("JSON arguments")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_gains_nothing_on_the_message_rate() {
    let dir = tempfile::tempdir().unwrap();
    // The contract's default: 20 messages a second in bursts of 100.
    let server = Server::start(dir.path(), &[]);
    let started = Instant::now();
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..3 {
        let client = within("connect", server.connect_plain("Spam-1", "Victim-1")).await;
        for i in 0..110 {
            let answer = send(&client, &format!("spam {i}")).await;
            match answer["ok"].as_bool() {
                Some(true) => accepted += 1,
                _ => {
                    assert_eq!(answer["reason"], "rate_limited", "{answer}");
                    refused += 1;
                }
            }
        }
        client.disconnect().await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // One burst, then the sustained rate, however often it reconnected.
    let bound = 100 + (20.0 * elapsed).ceil() as usize;
    assert!(
        accepted <= bound,
        "{accepted} accepted in {elapsed:.2} s over 3 connections (bound {bound})"
    );
    assert_eq!(accepted + refused, 330);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_flood_is_refused_and_a_bystander_is_not_held_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--rate-limit", "0"]);
    let writer = within("connect", server.connect_plain("Target", "Flood-0")).await;
    for i in 0..50 {
        assert_eq!(send(&writer, &format!("page filler {i}")).await["ok"], true);
    }

    let mut flooders = Vec::new();
    for i in 0..8 {
        let client = within(
            "connect",
            server.connect_plain(&format!("Flood-{i}"), "Target"),
        )
        .await;
        flooders.push(client);
    }
    let calm = within("connect", server.connect_plain("Calm-1", "Calm-2")).await;

    let started = Instant::now();
    let mut pending = Vec::new();
    for client in &flooders {
        for _ in 0..200 {
            let answer = client
                .emit_with_ack("history", json!({"limit": 50}))
                .await
                .expect("sent");
            pending.push(answer);
        }
    }
    // The bystander's round trips while the flood is being answered.
    let mut round_trips = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        assert_eq!(send(&calm, &format!("calm {i}")).await["ok"], true);
        round_trips.push(sent.elapsed());
    }
    let (mut served, mut limited) = (0usize, 0usize);
    for answer in pending {
        let answer = within("a history answer", answer).await.expect("answered");
        let answer: Vec<Value> = answer.decode().expect("JSON arguments");
        match answer[0]["ok"].as_bool() {
            Some(true) => served += 1,
            _ => {
                let error = answer[0]["error"].as_str().unwrap_or_default();
                assert!(error.starts_with("rate_limited"), "{answer:?}");
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Each connection: a burst of 20, then 10 a second.
    let bound = 8 * (20 + (10.0 * elapsed).ceil() as usize);
    assert!(
        served <= bound,
        "{served} served in {elapsed:.2} s (bound {bound})"
    );
    assert_eq!(served + limited, 8 * 200);
    round_trips.sort();
    let median = round_trips[round_trips.len() / 2];
    println!(
        "bystander round trips during the flood: median {median:?}, max {:?}",
        round_trips.last()
    );
    assert!(
        median < Duration::from_millis(20),
        "the bystander waited {median:?} (median) behind the flood"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rooms_are_limited_per_user_and_minute() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--rate-limit", "0", "--new-rooms-per-minute", "10"],
    );
    let client = within("connect", server.connect_plain("Opener", "Peer-0")).await;
    let mut outcomes = Vec::new();
    for i in 0..15 {
        let answer = within("the ack", async {
            client
                .emit_with_ack(
                    "chat message",
                    json!({"text": "hi", "to": format!("Peer-{i}")}),
                )
                .await
                .expect("sent")
                .await
                .expect("answered")
                .decode::<Vec<Value>>()
                .expect("JSON arguments")
        })
        .await;
        outcomes.push(answer[0]["ok"] == true || answer[0]["reason"] != "rate_limited");
    }
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        10,
        "{outcomes:?}"
    );
    // Rooms that exist stay open, from any connection, reconnecting gains nothing.
    client.disconnect().await.unwrap();
    let again = within("connect", server.connect_plain("Opener", "Peer-3")).await;
    assert_eq!(send(&again, "still open").await["ok"], true);
    let answer = within("the ack", async {
        again
            .emit_with_ack("chat message", json!({"text": "hi", "to": "Peer-99"}))
            .await
            .expect("sent")
            .await
            .expect("answered")
            .decode::<Vec<Value>>()
            .expect("JSON arguments")
    })
    .await;
    assert_eq!(answer[0]["reason"], "rate_limited", "{answer:?}");
}
