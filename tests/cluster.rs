//! `chatd run --cluster` end to end: a real three-server NATS JetStream
//! cluster (tests/common/nats.rs), real chatd nodes on loopback ports, real
//! Socket.IO clients. Each test shares one NATS cluster among its phases.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use chatd::client::Client;
use common::cluster::{Node, equal_exports, wait_for_ready_notification};
use common::nats::NatsCluster;
use common::{Server, chatd_err, chatd_ok, expect_event, send, wait_for_event, within};
use serde_json::{Value, json};

/// One test at a time: each runs three NATS servers and three nodes, and
/// two such tests side by side on a small machine slow each other into
/// timeouts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends `text` with `cid` and returns the ack's payload.
async fn send_cid(client: &Client, text: &str, cid: &str) -> Value {
    let ack = client
        .emit_with_ack("chat message", json!({"text": text, "cid": cid}))
        .await
        .expect("send")
        .await
        .expect("ack");
    ack.first().expect("JSON arguments")
}

/// Asks `request` with `payload` and returns the answer.
async fn ask(client: &Client, request: &str, payload: Value) -> Value {
    let ack = client
        .emit_with_ack(request, payload)
        .await
        .expect("ask")
        .await
        .expect("answer");
    ack.first().expect("JSON arguments")
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
    let _serial = SERIAL.lock().await;
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
    // Read receipts and typing cross nodes too.
    let read = ask(&two, "read", json!({"ts": first["message"]["ts"].as_u64()})).await;
    assert_eq!(read["ok"], true, "{read}");
    let receipt = wait_for_event(&mut one, "read").await;
    assert_eq!(receipt["user"], "Dummy-2");
    one.emit("typing", json!({"typing": true}))
        .await
        .expect("typing");
    let typing = wait_for_event(&mut two, "typing").await;
    assert_eq!(
        typing,
        json!({"roomId": "dm:Dummy-1_Dummy-2", "user": "Dummy-1", "typing": true})
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
    // Dummy-2 read "once", the last message, on node b.
    assert_eq!(inbox["conversations"][0]["unread"], 0);
    assert_eq!(inbox["conversations"][0]["read"], history[2]["ts"]);

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
    let manager = tempfile::tempdir().expect("temporary directory");
    let notify = manager.path().join("notify");
    let socket = UnixDatagram::bind(&notify).expect("a notify socket");
    let started = Instant::now();
    c.start_again_notifying(&notify);
    tokio::task::block_in_place(|| wait_for_ready_notification(&socket));
    eprintln!(
        "node c caught up with {sent} entries and was ready in {:?}",
        started.elapsed()
    );
    // READY=1 means caught up: its copy is the others' already, and
    // /healthz says so too.
    let exported = a.export();
    assert_eq!(exported.len(), 3 + sent);
    assert_eq!(c.export(), exported);
    assert_eq!(c.healthz().0, 200);
    assert_eq!(equal_exports(&[&a, &b, &c]).len(), 3 + sent);

    // ts and order the same everywhere.
    let query = json!({"limit": 200});
    let on_a = ask(&one, "history", query.clone()).await;
    let (probe_c, _, _) = join(&c, "Dummy-1", "Dummy-2").await;
    assert_eq!(ask(&probe_c, "history", query).await, on_a);
    drop(probe_c);

    // A purge on one node purges every node's copy.
    let before = history[2]["ts"].as_u64().expect("ts").to_string();
    let room = "dm:Dummy-1_Dummy-2";
    let purged = chatd_ok(
        b.data_dir(),
        &["purge", "--room", room, "--before", &before],
    );
    assert_eq!(purged.trim(), format!("Purged 2 messages from {room}"));
    let exported = equal_exports(&[&a, &b, &c]);
    assert_eq!(exported.len(), 1 + sent);
    assert_eq!(exported[0]["text"], "once");
    // A new, empty node copies everything before it is ready.
    let d = Node::start(&urls, "d");
    let took = d.wait_ready();
    eprintln!(
        "a new node copied {} entries and was ready in {took:?}",
        exported.len()
    );
    assert_eq!(d.export(), exported);

    // A node's copy alone cannot be purged: it would differ for good.
    c.stop();
    let refused = chatd_err(c.data_dir(), &["purge", "--room", room]);
    assert!(refused.contains("copy of a cluster's history"), "{refused}");
    a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_engine_messages_are_refused_and_it_comes_back_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsCluster::start();
    let urls = nats.urls();
    let a = Node::start(&urls, "a");
    let b = Node::start(&urls, "b");
    a.wait_ready();
    b.wait_ready();
    // A data directory with a single node's history cannot join: the two
    // histories would mix.
    let alone = tempfile::tempdir().expect("temporary directory");
    let single = Server::start(alone.path(), &[]);
    let ack = send(&single.connect_plain("Dummy-7", "Dummy-8").await, "alone").await;
    assert_eq!(ack["ok"], true, "{ack}");
    single.stop();
    let refused = Server::try_start(alone.path(), &["--cluster", &urls, "--node", "x"])
        .err()
        .expect("a single node's data directory is refused");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused
            .stderr
            .contains("cannot join the cluster: it holds the history of a node that ran alone"),
        "{}",
        refused.stderr
    );

    let (one, _, _) = join(&a, "Dummy-1", "Dummy-2").await;
    let (mut two, _, _) = join(&b, "Dummy-2", "Dummy-1").await;
    let ack = send(&one, "before").await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        wait_for_event(&mut two, "chat message").await,
        ack["message"]
    );

    tokio::task::block_in_place(|| {
        for i in 0..3 {
            nats.stop(i);
        }
    });
    let took = a.wait_health(|status, body| status == 503 && body.contains("engine"));
    eprintln!(
        "/healthz said 503 {took:?} after the engine stopped: {:?}",
        a.healthz().1
    );
    let refused = send_cid(&one, "while the engine is down", "down-1").await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["reason"], "unavailable", "{refused}");

    let started = Instant::now();
    tokio::task::block_in_place(|| {
        for i in 0..3 {
            nats.start_again(i);
        }
        nats.wait_ready();
    });
    a.wait_ready();
    b.wait_ready();
    eprintln!(
        "nodes healthy again {:?} after the engine was started",
        started.elapsed()
    );
    // The same cid, sent again now, is stored once: nothing was kept of it.
    let ack = send_cid(&one, "while the engine is down", "down-1").await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack.get("duplicate"), None, "{ack}");
    assert_eq!(
        wait_for_event(&mut two, "chat message").await,
        ack["message"]
    );
    let texts: Vec<Value> = equal_exports(&[&a, &b])
        .into_iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, [json!("before"), json!("while the engine is down")]);
}

/// Sends `count` messages from `who` to `peer` one after another, each
/// with its own cid, connected to the first of `nodes` that answers. A
/// refused (`unavailable`) or unanswered message is resent with the same
/// cid until it is acked, on another node when its node is gone (at most
/// 20/s: the default rate limit). Returns the longest wait for an ack and
/// the index of the node it ended on.
async fn keep_sending(
    nodes: Vec<SocketAddr>,
    who: &str,
    peer: &str,
    count: usize,
) -> (Duration, usize) {
    let mut at = 0;
    let mut client = connect_any(&nodes, &mut at, who, peer).await;
    let mut longest = Duration::ZERO;
    for i in 0..count {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = format!("{who} {i}");
        let cid = format!("{who}-{i}");
        let started = Instant::now();
        loop {
            let sent = client
                .emit_with_ack("chat message", json!({"text": text, "cid": cid}))
                .await;
            let answer = match sent {
                Ok(answer) => tokio::time::timeout(Duration::from_secs(30), answer)
                    .await
                    .map(|answer| answer.map(|args| args.decode::<Vec<Value>>().expect("JSON"))),
                Err(_) => {
                    client = connect_any(&nodes, &mut at, who, peer).await;
                    continue;
                }
            };
            match answer {
                Ok(Ok(args)) if args[0]["ok"] == true => break,
                // Refusals only while the engine fails over (and the
                // rate limit, which the resends themselves run into).
                Ok(Ok(args)) => {
                    let reason = &args[0]["reason"];
                    assert!(
                        reason == "unavailable" || reason == "rate_limited",
                        "{args:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // No answer: the connection or its node is gone.
                Ok(Err(_)) | Err(_) => client = connect_any(&nodes, &mut at, who, peer).await,
            }
        }
        longest = longest.max(started.elapsed());
    }
    (longest, at)
}

/// Connects `who` to `peer` on `nodes[*at]`, or on the next node that
/// answers (`at` moves on to it).
async fn connect_any(nodes: &[SocketAddr], at: &mut usize, who: &str, peer: &str) -> Client {
    connect_any_with(nodes, at, json!({"user": who, "peer": peer})).await
}

/// Connects with `auth` to `nodes[*at]`, or to the next node that answers.
async fn connect_any_with(nodes: &[SocketAddr], at: &mut usize, auth: Value) -> Client {
    within("a node to connect to", async {
        loop {
            match Client::connect_plain(nodes[*at], auth.clone()).await {
                Ok(client) => return client,
                Err(_) => {
                    *at = (*at + 1) % nodes.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await
}

/// Counts the messages from `peer` that `user`, connected to the first of
/// `nodes` that answers, receives, live or in its `history`, until it has
/// `want` different ones. When its node goes away it connects to the next
/// with `since`, the `ts` of the last message it got, as a client does.
async fn receive_failing_over(
    nodes: Vec<SocketAddr>,
    user: &str,
    peer: &str,
    want: usize,
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut since: Option<u64> = None;
    let mut at = 0;
    while seen.len() < want {
        let mut auth = json!({"user": user, "peer": peer});
        if let Some(since) = since {
            auth["since"] = json!(since);
        }
        let mut client = connect_any_with(&nodes, &mut at, auth).await;
        while seen.len() < want {
            let Some(event) = within("a message", client.next_event()).await else {
                break;
            };
            let arg: Value = event.args.first().expect("JSON arguments");
            let messages = match event.name.as_str() {
                "history" => arg.as_array().cloned().unwrap_or_default(),
                "chat message" => vec![arg],
                _ => continue,
            };
            for m in messages.iter().filter(|m| m["from"] == peer) {
                *seen
                    .entry(m["text"].as_str().expect("text").to_owned())
                    .or_default() += 1;
                since = since.max(m["ts"].as_u64());
            }
        }
    }
    seen
}

/// Counts the `chat message`s `client` receives until it has `want`
/// different ones.
async fn receive(client: &mut Client, want: usize) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    while seen.len() < want {
        let m = wait_for_event(client, "chat message").await;
        *seen
            .entry(m["text"].as_str().expect("text").to_owned())
            .or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_and_of_the_streams_leader_loses_nothing_and_doubles_nothing() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsCluster::start();
    let urls = nats.urls();
    let a = Node::start(&urls, "a");
    let b = Node::start(&urls, "b");
    let mut c = Node::start(&urls, "c");
    for node in [&a, &b, &c] {
        node.wait_ready();
    }

    // Dummy-3 sends from node c to Dummy-4 on node a; c is killed midway:
    // Dummy-3 resends what was not acked on node a, and Dummy-4 gets every
    // message once. Dummy-5, idle on node c, leaves Dummy-6's `online` on
    // node a within 15 s.
    let (mut six, online, _) = join(&a, "Dummy-6", "Dummy-5").await;
    let (_five, _, _) = join(&c, "Dummy-5", "Dummy-6").await;
    online_becomes(&mut six, online, json!(["Dummy-5", "Dummy-6"])).await;
    let (mut four, _, _) = join(&a, "Dummy-4", "Dummy-3").await;
    let per_sender = 60;
    // Dummy-4 on node c too, back on node a with `since` once c is gone.
    let four_on_c = tokio::spawn(receive_failing_over(
        vec![c.server().addr(), a.server().addr()],
        "Dummy-4",
        "Dummy-3",
        per_sender,
    ));
    let failing_over = tokio::spawn(keep_sending(
        vec![c.server().addr(), a.server().addr()],
        "Dummy-3",
        "Dummy-4",
        per_sender,
    ));
    let mut seen = receive(&mut four, 20).await;
    let killed = Instant::now();
    c.kill();
    online_becomes(&mut six, json!(["Dummy-5", "Dummy-6"]), json!(["Dummy-6"])).await;
    let gone = killed.elapsed();
    eprintln!("a kill -9'd node's user left `online` after {gone:?}");
    assert!(gone < Duration::from_secs(15), "{gone:?}");
    let (stall, ended_on) = failing_over.await.expect("sender");
    eprintln!("longest wait for an ack with the sender's node killed: {stall:?}");
    assert_eq!(ended_on, 1, "Dummy-3 finished before its node was killed");
    for (text, n) in receive(&mut four, per_sender - seen.len()).await {
        *seen.entry(text).or_default() += n;
    }
    assert_eq!(seen.len(), per_sender);
    assert!(seen.values().all(|&n| n == 1), "delivered twice: {seen:?}");
    let seen = four_on_c.await.expect("receiver");
    assert!(
        seen.values().all(|&n| n == 1),
        "live and history overlap after a failover: {seen:?}"
    );

    // Two users send while the stream's leader is killed; Dummy-2's other
    // connection gets every message of the room once.
    let (mut watcher, _, _) = join(&b, "Dummy-2", "Dummy-1").await;
    let count = 150;
    let senders = [
        tokio::spawn(keep_sending(
            vec![a.server().addr()],
            "Dummy-1",
            "Dummy-2",
            count,
        )),
        tokio::spawn(keep_sending(
            vec![b.server().addr()],
            "Dummy-2",
            "Dummy-1",
            count,
        )),
    ];
    let mut seen = receive(&mut watcher, 20).await;
    let leader = tokio::task::block_in_place(|| {
        let leader = nats.stream_leader("CHATD_LOG");
        nats.kill(leader);
        leader
    });
    let mut stalls = Vec::new();
    for sender in senders {
        stalls.push(sender.await.expect("sender").0);
    }
    eprintln!("longest wait for an ack with the stream's leader killed: {stalls:?}");
    for (text, n) in receive(&mut watcher, 2 * count - seen.len()).await {
        *seen.entry(text).or_default() += n;
    }
    assert_eq!(seen.len(), 2 * count);
    assert!(seen.values().all(|&n| n == 1), "delivered twice: {seen:?}");

    // Every acked message stored once on every node, c included once it
    // is back.
    tokio::task::block_in_place(|| nats.restart(leader));
    c.start_again();
    c.wait_ready();
    let exported = equal_exports(&[&a, &b, &c]);
    let mut stored: HashMap<&str, usize> = HashMap::new();
    for m in &exported {
        *stored.entry(m["text"].as_str().expect("text")).or_default() += 1;
    }
    assert_eq!(
        stored.len(),
        per_sender + 2 * count,
        "some acked message is missing"
    );
    assert!(stored.values().all(|&n| n == 1), "stored twice: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_while_the_presence_buckets_leader_is_killed() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsCluster::start();
    let urls = nats.urls();
    let a = Node::start(&urls, "a");
    let b = Node::start(&urls, "b");
    for node in [&a, &b] {
        node.wait_ready();
    }
    let (mut one, online, _) = join(&a, "Dummy-1", "Dummy-2").await;
    assert_eq!(online, json!(["Dummy-1"]));

    // The bucket's leader dies (its consumers, the nodes' watches, with
    // it, and writes fail until a new one is elected): Dummy-2 joins on b
    // meanwhile, and later leaves; Dummy-1 on a sees both (each wait fails
    // after 20 s; a watch that is not watched again never delivers, a
    // dropped write never arrives).
    let leader = tokio::task::block_in_place(|| {
        let leader = nats.stream_leader("KV_chatd_presence");
        nats.kill(leader);
        leader
    });
    let killed = Instant::now();
    let (two, _, _) = join(&b, "Dummy-2", "Dummy-1").await;
    online_becomes(&mut one, online, json!(["Dummy-1", "Dummy-2"])).await;
    let joined = killed.elapsed();
    drop(two);
    let left_at = Instant::now();
    online_becomes(&mut one, json!(["Dummy-1", "Dummy-2"]), json!(["Dummy-1"])).await;
    let left = left_at.elapsed();
    eprintln!(
        "with the presence bucket's leader killed: joined seen after {joined:?}, left after {left:?}"
    );
    tokio::task::block_in_place(|| nats.restart(leader));
}
