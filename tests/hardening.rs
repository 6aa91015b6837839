//! What an attacker tried against the server (issue 15), each as it was
//! done: no client, with or without a token, takes the server's memory, its
//! connection slots or another user's stream, and what chatd writes to disk
//! is private.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chatd::client::{Client, ClientError};
use common::raw::{POLLING, RawClient, http, polling_handshake, read_answer};
use common::{Server, TIMEOUT, bystanders_still_chat, chatd_err, send, start_server};
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;

/// Starts a POST on a new polling session of its own: the connection, with
/// the request head sent and `Content-Length` announcing `length` bytes.
fn post_head(port: u16, length: usize) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let sid = polling_handshake(&mut tcp);
    write!(
        tcp,
        "POST {POLLING}&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    tcp
}

#[tokio::test]
async fn polling_bodies_sent_a_byte_at_a_time_keep_the_server_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let before = server.rss_kib();
    let (connections, bytes) = (8, 3000);
    let port = server.port;
    let trickles: Vec<_> = (0..connections)
        .map(|_| {
            std::thread::spawn(move || {
                let mut tcp = post_head(port, 65_536);
                for _ in 0..bytes {
                    tcp.write_all(b"4").unwrap();
                    // The attack's pace: one byte per segment, as fast as a
                    // client can send them apart.
                    std::thread::sleep(Duration::from_micros(200));
                }
                tcp
            })
        })
        .collect();
    let held: Vec<TcpStream> = trickles.into_iter().map(|t| t.join().unwrap()).collect();
    // 24,000 bytes are waiting in bodies not yet complete. Held as hyper's
    // chunks they took ~4 KiB each (~94 MiB); copied into one buffer per
    // body, a few KiB per connection.
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "{connections} trickled bodies of {bytes} bytes grew the server by {grown} KiB"
    );
    drop(held);
    bystanders_still_chat(&server).await;
    server.stop();
}

#[tokio::test]
async fn a_body_still_trickling_at_the_deadline_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--handshake-timeout", "2"]);
    let mut tcp = post_head(server.port, 100);
    let started = Instant::now();
    let mut writer = tcp.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = std::thread::spawn({
        let stop = stop.clone();
        move || {
            // One byte every quarter second: 40 s for the body if let be.
            while !stop.load(Ordering::Relaxed) && writer.write_all(b"4").is_ok() {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    });
    let answer = tokio::task::spawn_blocking(move || read_answer(&mut tcp))
        .await
        .unwrap();
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    assert_eq!(answer.0, 408, "{answer:?}");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "cut off at the 2 s deadline, not {waited:?}"
    );
    bystanders_still_chat(&server).await;
    server.stop();
}

#[tokio::test]
async fn a_handshake_flood_from_one_address_leaves_its_other_clients_able_to_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &["--max-connections-per-ip", "16", "--connect-timeout", "10"],
    );
    let (port, stop) = (server.port, Arc::new(AtomicBool::new(false)));
    let (opened, sessions) = mpsc::channel();
    // Four flooders, each opening a polling session every 10 ms and
    // abandoning it: ten times the 40/s that kept an address's 256 places
    // full, from the same address as the clients below.
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) {
                        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
                        if http(&mut tcp, "GET", POLLING, "").0 == 200 {
                            let _ = opened.send(());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for _ in 0..200 {
            sessions
                .recv_timeout(TIMEOUT)
                .expect("the flood gets its sessions");
        }
    })
    .await
    .unwrap();
    // 200 abandoned sessions, far past 16 places: the clients still join.
    for round in 0..5 {
        let user = format!("Legit-{round}");
        let client = Client::connect_plain(server.addr(), json!({"user": user, "peer": "Alice"}))
            .await
            .unwrap_or_else(|error| panic!("client {round} could not join: {error}"));
        assert_eq!(send(&client, "made it").await["ok"], true);
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().unwrap();
    }
    // Thousands of sessions taken back, summed up in one log line per 10 s.
    let line = server.log_line("connections refused in the last 10s");
    assert!(line.contains("unjoined connections closed"), "{line}");
    server.stop();
}

#[tokio::test]
async fn binary_attachments_before_connect_close_the_connection_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A minute to join: what was announced used to be held that long.
    let server = Server::start(dir.path(), &["--connect-timeout", "60"]);
    let mut unjoined = RawClient::open_only(server.port).await;
    unjoined
        .send_packet(r#"451-["chat message",{"_placeholder":true,"num":0}]"#)
        .await;
    unjoined.closed_by_server().await;

    // Joined, the attachments of one event may not add up past maxPayload.
    let mut joined = RawClient::connect(server.port, "Mallory", "Alice").await;
    joined
        .send_packet(
            r#"452-9["chat message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
        )
        .await;
    for _ in 0..2 {
        joined
            .send_frame(Frame::binary(Payload::Owned(vec![7; 40_000])))
            .await;
    }
    joined.closed_by_server().await;
    bystanders_still_chat(&server).await;
    server.stop();
}

#[tokio::test]
async fn a_poll_overtaken_by_its_sessions_close_is_answered_noop_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let port = server.port;
    tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let sid = polling_handshake(&mut tcp);
        let target = format!("{POLLING}&sid={sid}");
        // The close POST arrives before the poll the client sent with it.
        assert_eq!(http(&mut tcp, "POST", &target, "1"), (200, "ok".into()));
        assert_eq!(http(&mut tcp, "GET", &target, ""), (200, "6".into()));
        assert_eq!(http(&mut tcp, "GET", &target, "").0, 400);
    })
    .await
    .unwrap();
    server.stop();
}

#[tokio::test]
async fn a_fragmented_message_leaves_no_buffer_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-payload", "2000000"]);
    let mut clients = Vec::new();
    for i in 0..24 {
        clients.push(RawClient::connect(server.port, &format!("Frag-{i}"), "Alice").await);
    }
    let before = server.rss_kib();
    let fragment = vec![b'x'; 64 * 1024];
    for client in &mut clients {
        // A 1 MiB event nobody listens for, in 16 fragments.
        let head = br#"42["ignored",""#;
        client
            .send_frame(Frame::new(
                false,
                OpCode::Text,
                None,
                Payload::Borrowed(head),
            ))
            .await;
        for _ in 0..15 {
            client
                .send_frame(Frame::new(
                    false,
                    OpCode::Continuation,
                    None,
                    Payload::Borrowed(&fragment),
                ))
                .await;
        }
        client
            .send_frame(Frame::new(
                true,
                OpCode::Continuation,
                None,
                Payload::Borrowed(br#""]"#),
            ))
            .await;
        // Handled in order: its ack means the large one is done.
        client.send_packet(r#"421["chat message","after"]"#).await;
        assert_eq!(client.ack(1).await["ok"], true);
    }
    // Kept, the reassembly buffers would be 24 MiB.
    let grown = server.rss_kib().saturating_sub(before);
    assert!(
        grown < 12 * 1024,
        "24 drained connections grew the server by {grown} KiB"
    );
    drop(clients);
    server.stop();
}

/// A token for `user` valid `from`..`until` (seconds from now), signed with
/// the server's secret.
fn token(server: &Server, user: &str, not_before: i64, expires: i64) -> String {
    let secret =
        chatd::datadir::load_secret(&server.data_dir.join(chatd::datadir::SECRET_FILE)).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": user, "iat": now, "nbf": now + not_before, "exp": now + expires});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_past_the_maximum_lifetime_or_not_yet_valid_are_refused() {
    let server = start_server(&["--max-token-ttl", "1h"]);
    let refused = |token: String| {
        let auth = json!({"user": "Alice", "peer": "Bob", "token": token});
        let options = server.options();
        let url = server.url();
        async move { Client::connect(&url, auth, &options).await.err() }
    };
    let unauthorized = |error: Option<ClientError>| matches!(&error, Some(ClientError::Refused(reason)) if reason == "unauthorized");
    assert!(unauthorized(
        refused(token(&server, "Alice", 0, 2 * 3600)).await
    ));
    assert!(unauthorized(
        refused(token(&server, "Alice", 600, 1800)).await
    ));
    assert!(refused(token(&server, "Alice", -5, 1800)).await.is_none());
    // The built-in minting refuses what a server would refuse, and says
    // which flag to change.
    let err = chatd_err(&server.data_dir, &["token", "Alice", "--ttl", "31d"]);
    assert!(err.contains("--max-token-ttl"), "{err}");
    server.stop();
}

#[test]
fn a_short_token_secret_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "hunter2\n").unwrap();
    let failure = Server::try_spawn_under_umask(
        &tmp.path().join("data"),
        "077",
        &["--no-tls", "--jwt-secret", secret.to_str().unwrap()],
    )
    .err()
    .expect("a 7-byte secret is refused");
    assert!(
        failure.stderr.contains("is 7 bytes long") && failure.stderr.contains("at least 32"),
        "{}",
        failure.stderr
    );
}

/// Every file and directory under `dir` with its mode.
fn modes(dir: &std::path::Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((
            path.display().to_string(),
            meta.permissions().mode() & 0o777,
        ));
        if meta.is_dir() {
            out.extend(modes(&path));
        }
    }
    out
}

#[tokio::test]
async fn what_chatd_creates_is_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    // TLS and auth on: the certificate, the key, the secret, the history
    // and the admin socket are all created under umask 000.
    let server = Server::try_spawn_under_umask(&data, "000", &[])
        .unwrap_or_else(|failure| panic!("chatd run did not start: {failure:?}"));
    let client = server.connect("Alice", "Bob").await;
    assert_eq!(send(&client, "private").await["ok"], true);
    let created = modes(&data);
    for name in [
        "chatd.redb",
        "jwt-secret",
        "tls",
        "cert.pem",
        "key.pem",
        "admin.sock",
    ] {
        assert!(
            created.iter().any(|(path, _)| path.ends_with(name)),
            "{name} in {created:?}"
        );
    }
    for (path, mode) in &created {
        let want = if std::path::Path::new(path).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(*mode, want, "{path} has mode {mode:o}");
    }
    drop(client);
    server.stop();

    // Once another user could write there, chatd refuses to run, and says
    // how to fix it.
    let history = data.join("chatd.redb");
    std::fs::set_permissions(&history, std::fs::Permissions::from_mode(0o666)).unwrap();
    let failure = Server::try_spawn_under_umask(&data, "077", &[])
        .err()
        .expect("refused");
    assert!(
        failure
            .stderr
            .contains("chatd.redb: writable by other users")
            && failure.stderr.contains("chmod go-w"),
        "{}",
        failure.stderr
    );
    std::fs::set_permissions(&history, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let failure = Server::try_spawn_under_umask(&data, "077", &[])
        .err()
        .expect("refused");
    assert!(failure.stderr.contains("mode 0777"), "{}", failure.stderr);
}
