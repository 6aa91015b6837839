//! Bad input never hurts anyone else: each test has a bystander pair keep
//! chatting while one client misbehaves, and the offender is answered with
//! an error or disconnected.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::raw::{POLLING, RawClient, http, polling_handshake};
use common::{Server, TIMEOUT, bystanders_still_chat, send, wait_for_event};
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;

#[tokio::test]
async fn malformed_packets_close_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-payload", "1000"]);
    let offences: Vec<(&str, Frame<'static>)> = vec![
        (
            "unknown engine.io type",
            Frame::text(Payload::Borrowed(b"9hello")),
        ),
        (
            "unknown socket.io type",
            Frame::text(Payload::Borrowed(b"4abc")),
        ),
        (
            "event that is not an array",
            Frame::text(Payload::Borrowed(b"42{}")),
        ),
        (
            "invalid JSON",
            Frame::text(Payload::Borrowed(b"42[\"chat message\"")),
        ),
        (
            "bad ack id",
            Frame::text(Payload::Borrowed(b"42abc[\"chat message\",\"x\"]")),
        ),
        (
            "packet for a namespace never joined",
            Frame::text(Payload::Borrowed(b"42/admin,[\"x\"]")),
        ),
        ("client ping", Frame::text(Payload::Borrowed(b"2"))),
        (
            "invalid UTF-8",
            Frame::text(Payload::Borrowed(b"42[\"\xff\"]")),
        ),
        (
            "binary nobody announced",
            Frame::binary(Payload::Borrowed(b"\x01\x02")),
        ),
        (
            "packet over maxPayload",
            Frame::text(Payload::Owned(vec![b'4'; 2000])),
        ),
        (
            "continuation without start",
            Frame::new(true, OpCode::Continuation, None, Payload::Borrowed(b"x")),
        ),
    ];
    for (what, frame) in offences {
        let mut offender = RawClient::connect(server.port, "Mallory", "Alice").await;
        offender.send_frame(frame).await;
        tokio::time::timeout(TIMEOUT, offender.closed_by_server())
            .await
            .unwrap_or_else(|_| panic!("{what}: the offender stayed connected"));
        bystanders_still_chat(&server).await;
    }
    server.stop();
}

#[tokio::test]
async fn fragments_adding_up_past_max_payload_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-payload", "1000"]);
    let mut offender = RawClient::connect(server.port, "Mallory", "Alice").await;
    offender
        .send_frame(Frame::new(
            false,
            OpCode::Text,
            None,
            Payload::Owned(vec![b'4'; 600]),
        ))
        .await;
    offender
        .send_frame(Frame::new(
            false,
            OpCode::Continuation,
            None,
            Payload::Owned(vec![b'x'; 600]),
        ))
        .await;
    offender.closed_by_server().await;
    bystanders_still_chat(&server).await;
    server.stop();
}

#[tokio::test]
async fn a_binary_attachment_is_refused_as_bad_payload_and_the_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut client = RawClient::connect(server.port, "Mallory", "Alice").await;
    client
        .send_packet(r#"451-7["chat message",{"_placeholder":true,"num":0}]"#)
        .await;
    client
        .send_frame(Frame::binary(Payload::Borrowed(b"\x00\x01")))
        .await;
    assert_eq!(
        client.ack(7).await,
        json!({"ok": false, "error": "Message is not accepted", "reason": "bad_payload"})
    );
    client
        .send_packet(r#"428["chat message","a normal message"]"#)
        .await;
    assert_eq!(client.ack(8).await["ok"], true);
    server.stop();
}

/// Reads until the server closes the TCP connection; returns how long it took.
fn time_until_closed(mut tcp: TcpStream) -> Duration {
    let start = Instant::now();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return start.elapsed();
            }
            Err(error) => panic!("the server kept a stalled connection open: {error}"),
        }
    }
}

#[tokio::test]
async fn stalled_handshakes_are_dropped_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--handshake-timeout", "1", "--connect-timeout", "1"],
    );
    // Slowloris: half a request head, then silence.
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.write_all(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A websocket that never sends Socket.IO CONNECT.
    let silent = tokio::spawn(RawClient::open_only(server.port));
    let waited = tokio::task::spawn_blocking(move || time_until_closed(slow))
        .await
        .unwrap();
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    silent.await.unwrap().closed_by_server().await;
    bystanders_still_chat(&server).await;
    server.stop();
}

#[tokio::test]
async fn idle_connections_past_the_unjoined_limit_close_the_oldest_and_joined_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-unjoined-per-ip", "4"]);
    let alice = server.connect_plain("Alice", "Bob").await;
    let mut bob = server.connect_plain("Bob", "Alice").await;
    let oldest = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    // Connected in order, so accepted in order: four newer ones fill the
    // address's unjoined places, and the oldest has to go.
    let newer: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    let waited = tokio::task::spawn_blocking(move || time_until_closed(oldest))
        .await
        .unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "closed at once, not at a timeout"
    );
    assert_eq!(send(&alice, "we are fine").await["ok"], true);
    assert_eq!(
        wait_for_event(&mut bob, "chat message").await["text"],
        "we are fine"
    );
    drop(newer);
    server.stop();
}

#[tokio::test]
async fn a_join_past_the_per_ip_limit_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-connections-per-ip", "2"]);
    let _alice = server.connect_plain("Alice", "Bob").await;
    let bob = server.connect_plain("Bob", "Alice").await;
    let mut carol = RawClient::open_only(server.port).await;
    let auth = json!({"user": "Carol", "peer": "Alice"});
    assert_eq!(
        carol.join(&auth).await,
        Err(json!({"message": "too many connections from this address"}))
    );
    // The refused client may try again once a place is free.
    drop(bob);
    let deadline = Instant::now() + TIMEOUT;
    while carol.join(&auth).await.is_err() {
        assert!(Instant::now() < deadline, "Bob's place was never freed");
    }
    server.stop();
}

#[tokio::test]
async fn a_polling_session_past_the_unjoined_limit_closes_the_oldest_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-unjoined-per-ip", "4"]);
    let port = server.port;
    tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        // The connection holds one of the four places; in use, it is the
        // last to go. Three sessions take the rest, a fourth the oldest's.
        let sids: Vec<String> = (0..4).map(|_| polling_handshake(&mut tcp)).collect();
        let target = |sid: &str| format!("{POLLING}&sid={sid}");
        // Each retry is one more round trip, no sleep: the oldest session
        // closes as soon as its watcher hears.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (status, body) = http(&mut tcp, "GET", &target(&sids[0]), "");
            if status == 400 || body == "1" {
                break;
            }
            assert!(Instant::now() < deadline, "the oldest session stayed open");
        }
        let (status, body) = http(&mut tcp, "POST", &target(&sids[3]), "6");
        assert_eq!((status, body.as_str()), (200, "ok"), "the newest lives");
    })
    .await
    .unwrap();
    server.stop();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_while_its_peer_floods() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--outbound-queue",
            "64",
            "--rate-limit",
            "0",
            "--max-message-bytes",
            "60000",
        ],
    );
    let mut sender = RawClient::connect(server.port, "Flood-1", "Flood-2").await;
    let stalled = RawClient::connect(server.port, "Flood-2", "Flood-1").await;
    assert_eq!(sender.next_text().await, r#"42["online",["Flood-1"]]"#);
    assert_eq!(sender.next_text().await, r#"42["history",[]]"#);
    assert_eq!(
        sender.next_text().await,
        r#"42["online",["Flood-1","Flood-2"]]"#
    );
    // Far more than the kernel's socket buffers hold: the stalled client's
    // queue must fill, and it must be dropped rather than buffered.
    let text = "x".repeat(50_000);
    let (batch, batches) = (32u64, 20u64);
    let mut peer_dropped = false;
    for round in 0..batches {
        for id in round * batch + 1..=(round + 1) * batch {
            let packet = format!("42{id}{}", json!(["chat message", text]));
            sender.send_packet(&packet).await;
        }
        // The sender reads its acks as it goes, as a real client does; only
        // the stalled peer stops reading.
        let mut acked = 0;
        while acked < batch {
            let packet = sender.next_text().await;
            if packet == r#"42["online",["Flood-1"]]"# {
                peer_dropped = true;
            } else if packet.starts_with("43") {
                assert!(
                    packet.contains(r#""ok":true"#),
                    "accepted: {}",
                    &packet[..60]
                );
                acked += 1;
            }
        }
    }
    assert!(peer_dropped, "the stalled peer was disconnected");
    // 32 MB went to a client that read nothing; the server kept at most its
    // queue of 64 frames plus socket buffers, not the flood.
    let rss = server.rss_kib();
    assert!(rss < 150 * 1024, "server memory stayed bounded: {rss} KiB");
    drop(stalled);
    server.stop();
}

#[tokio::test]
async fn connections_past_the_total_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-connections", "2"]);
    let alice = server.connect_plain("Alice", "Bob").await;
    let _bob = server.connect_plain("Bob", "Alice").await;
    let refused = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let waited = tokio::task::spawn_blocking(move || time_until_closed(refused))
        .await
        .unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "refused at once, not at a timeout"
    );
    assert_eq!(send(&alice, "still served").await["ok"], true);
    server.stop();
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-header-bytes", "8192"]);
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // The server may stop reading (and reset) before the whole head is sent.
    let _ = tcp.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "no normal answer to an oversized head: {answer}"
    );
    let mut ok = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    ok.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"));
    server.stop();
}

#[tokio::test]
async fn a_burst_larger_than_the_outbound_queue_is_acked_in_full_not_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    // One group commit can hold hundreds of this burst: without backpressure
    // on the sender, their acks would overflow its 64-packet queue at once.
    let server = Server::start(dir.path(), &["--outbound-queue", "64", "--rate-limit", "0"]);
    let mut client = RawClient::connect(server.port, "Burst-1", "Burst-2").await;
    let count = 1000u64;
    for id in 1..=count {
        client
            .send_packet(&format!(
                "42{id}{}",
                json!(["chat message", format!("burst {id}")])
            ))
            .await;
    }
    let mut acked = 0;
    while acked < count {
        let packet = client.next_text().await;
        if packet.starts_with("43") {
            assert!(packet.contains(r#""ok":true"#), "{packet}");
            acked += 1;
        }
    }
    server.stop();
}
