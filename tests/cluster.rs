//! `chatd run --cluster` end to end: a real three-server NATS JetStream
//! cluster (tests/common/nats.rs), real chatd nodes on loopback ports, real
//! Socket.IO clients. Each test shares one NATS cluster among its phases.

mod common;

use std::time::Instant;

use chatd::client::Client;
use common::cluster::{Node, equal_exports};
use common::nats::NatsCluster;
use common::{expect_event, send, wait_for_event};
use serde_json::{Value, json};

/// Sends `text` with `cid` and returns the ack's payload.
async fn send_cid(client: &Client, text: &str, cid: &str) -> Value {
    let ack = client
        .emit_with_ack("chat message", json!({"text": text, "cid": cid}))
        .await
        .expect("send")
        .await
        .expect("ack");
    ack.into_iter().next().unwrap_or(Value::Null)
}

/// Asks `request` with `payload` and returns the answer.
async fn ask(client: &Client, request: &str, payload: Value) -> Value {
    let ack = client
        .emit_with_ack(request, payload)
        .await
        .expect("ask")
        .await
        .expect("answer");
    ack.into_iter().next().unwrap_or(Value::Null)
}

/// Waits until `client`'s `online` list is `want` (`current` is the last
/// one it was sent): presence crosses nodes through the engine, a moment
/// after the join.
async fn online_becomes(client: &mut Client, mut current: Value, want: Value) {
    while current != want {
        current = wait_for_event(client, "online").await;
    }
}

/// Connects and takes the `online` and `history` a connection is sent.
async fn join(node: &Node, user: &str, peer: &str) -> (Client, Value, Value) {
    let mut client = node.connect(user, peer).await;
    let online = expect_event(&mut client, "online").await;
    let history = expect_event(&mut client, "history").await;
    (client, online, history)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_chat_as_one_service_and_a_node_that_was_down_catches_up_before_ready() {
    let nats = NatsCluster::start();
    let urls = nats.urls();
    let mut a = Node::start(&urls, "a");
    let b = Node::start(&urls, "b");
    let mut c = Node::start(&urls, "c");
    for node in [&a, &b, &c] {
        node.wait_ready();
    }

    // Dummy-1 on a, Dummy-2 on b: each sees the other online.
    let (mut one, online, history) = join(&a, "Dummy-1", "Dummy-2").await;
    assert_eq!(online, json!(["Dummy-1"]));
    assert_eq!(history, json!([]));
    let (mut two, online, _) = join(&b, "Dummy-2", "Dummy-1").await;
    let both = json!(["Dummy-1", "Dummy-2"]);
    online_becomes(&mut two, online, both.clone()).await;
    online_becomes(&mut one, json!(["Dummy-1"]), both).await;

    // Both ways, acked with the message the peer receives.
    let ack = send(&one, "Hello World! from Dummy-1").await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        wait_for_event(&mut two, "chat message").await,
        ack["message"]
    );
    let ack = send(&two, "Hello World! from Dummy-2").await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        wait_for_event(&mut one, "chat message").await,
        ack["message"]
    );

    // A cid sent again from another node is the same message, once.
    let first = send_cid(&one, "once", "cid-1").await;
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first.get("duplicate"), None);
    assert_eq!(
        wait_for_event(&mut two, "chat message").await,
        first["message"]
    );
    let (one_on_c, _, _) = join(&c, "Dummy-1", "Dummy-2").await;
    let again = send_cid(&one_on_c, "once", "cid-1").await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["message"], first["message"]);

    // History, since and conversations from the third node.
    let (_, _, history) = join(&c, "Dummy-2", "Dummy-1").await;
    let texts: Vec<&str> = history
        .as_array()
        .expect("history is an array")
        .iter()
        .map(|m| m["text"].as_str().expect("text"))
        .collect();
    assert_eq!(
        texts,
        [
            "Hello World! from Dummy-1",
            "Hello World! from Dummy-2",
            "once"
        ]
    );
    let since = history[0]["ts"].as_u64().expect("ts");
    let mut late = c
        .connect_with(json!({"user": "Dummy-2", "peer": "Dummy-1", "since": since}))
        .await;
    expect_event(&mut late, "online").await;
    assert_eq!(
        expect_event(&mut late, "history").await,
        json!(history.as_array().expect("an array")[1..])
    );
    let inbox = ask(&late, "conversations", json!({})).await;
    assert_eq!(inbox["ok"], true, "{inbox}");
    assert_eq!(inbox["conversations"][0]["last"], history[2]);
    // "once" came from Dummy-1 after Dummy-2's last message.
    assert_eq!(inbox["conversations"][0]["unread"], 1);

    // `chatd online` on any node: the whole service.
    let users: Vec<String> = c
        .online()
        .as_array()
        .expect("an array")
        .iter()
        .map(|u| u["user"].as_str().expect("user").to_owned())
        .collect();
    assert_eq!(users, ["Dummy-1", "Dummy-2"]);

    // Node c goes down while a and b chat; back, it catches up before it
    // says it is ready.
    drop((one_on_c, late));
    c.stop();
    let sent = 200;
    for i in 0..sent {
        let (from, to) = if i % 2 == 0 {
            (&one, &mut two)
        } else {
            (&two, &mut one)
        };
        let ack = send(from, &format!("while c is down {i}")).await;
        assert_eq!(ack["ok"], true, "{ack}");
        assert_eq!(wait_for_event(to, "chat message").await, ack["message"]);
    }
    let started = Instant::now();
    c.start_again();
    c.wait_ready();
    eprintln!(
        "node c caught up with {sent} entries and was ready in {:?}",
        started.elapsed()
    );
    // Ready means caught up: its copy is the others' already.
    let exported = a.export();
    assert_eq!(exported.len(), 3 + sent);
    assert_eq!(c.export(), exported);
    assert_eq!(equal_exports(&[&a, &b, &c]).len(), 3 + sent);

    // ts and order the same everywhere.
    let query = json!({"limit": 200});
    let on_a = ask(&one, "history", query.clone()).await;
    let (probe_c, _, _) = join(&c, "Dummy-1", "Dummy-2").await;
    assert_eq!(ask(&probe_c, "history", query).await, on_a);
    drop(probe_c);
    a.stop();
}
