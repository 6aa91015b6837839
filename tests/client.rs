//! The client module (`chatd::client`) against the real server.

mod common;

use std::time::Duration;

use chatd::client::{Client, ClientError, ConnectOptions, tls};
use common::{TIMEOUT, expect_event, start_server};
use serde_json::{Value, json};

// Multi-threaded: the server helpers block on the console's pipe while the
// clients' reader tasks keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_refusals_history_and_delivery() {
    let mut server = start_server(&[]);
    let mut one = server.connect("Dummy-1", "Dummy-2").await;
    assert_eq!(expect_event(&mut one, "online").await, json!(["Dummy-1"]));
    assert_eq!(expect_event(&mut one, "history").await, json!([]));

    let answer = one
        .emit_with_ack("chat message", json!("Hello World! from Dummy-1"))
        .await
        .expect("sent")
        .await
        .expect("answered")
        .decode::<Vec<Value>>()
        .expect("JSON arguments");
    let [answer] = &answer[..] else {
        panic!("one argument expected: {answer:?}")
    };
    assert_eq!(answer["ok"], true);
    let message = &answer["message"];
    assert_eq!(message["from"], "Dummy-1");
    assert_eq!(message["to"], "Dummy-2");
    assert_eq!(message["roomId"], "dm:Dummy-1_Dummy-2");
    assert_eq!(message["id"], one.sid());

    let refused = one
        .emit_with_ack("chat message", json!(" "))
        .await
        .expect("sent")
        .await
        .expect("answered")
        .decode::<Vec<Value>>()
        .expect("JSON arguments");
    assert_eq!(
        refused,
        [json!({"ok": false, "error": "Message is not accepted", "reason": "empty"})]
    );

    let mut two = server.connect("Dummy-2", "Dummy-1").await;
    assert_eq!(
        expect_event(&mut two, "online").await,
        json!(["Dummy-1", "Dummy-2"])
    );
    assert_eq!(expect_event(&mut two, "history").await, json!([message]));
    assert_eq!(
        expect_event(&mut one, "online").await,
        json!(["Dummy-1", "Dummy-2"])
    );

    // Many in flight at once; each answer finds its own ack.
    let mut acks = Vec::new();
    for n in 0..20 {
        let ack = two
            .emit_with_ack("chat message", json!(format!("message {n}")))
            .await
            .expect("sent");
        acks.push(ack);
    }
    for (n, ack) in acks.into_iter().enumerate() {
        let answer: Vec<Value> = ack.await.expect("answered").decode().expect("JSON");
        assert_eq!(answer[0]["message"]["text"], format!("message {n}"));
        let delivered = expect_event(&mut one, "chat message").await;
        assert_eq!(delivered, answer[0]["message"]);
    }

    two.disconnect().await.expect("disconnect");
    assert_eq!(expect_event(&mut one, "online").await, json!(["Dummy-1"]));
    one.disconnect().await.expect("disconnect");
    server.wait_for_line("No one is Online");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_without_ack_is_refused_with_a_chat_error_event() {
    let server = start_server(&[]);
    let mut one = server.connect("Dummy-1", "Dummy-2").await;
    expect_event(&mut one, "online").await;
    expect_event(&mut one, "history").await;
    one.emit("chat message", json!(42)).await.expect("sent");
    assert_eq!(
        expect_event(&mut one, "chat error").await,
        json!({"ok": false, "error": "Message is not accepted", "reason": "bad_payload"})
    );
    one.disconnect().await.expect("disconnect");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered() {
    let server = start_server(&["--ping-interval", "200", "--ping-timeout", "200"]);
    let mut one = server.connect("Dummy-1", "Dummy-2").await;
    expect_event(&mut one, "online").await;
    expect_event(&mut one, "history").await;
    // Several heartbeats pass; a client that missed one pong would be gone
    // after 400 ms. Nothing to await here but time itself.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = one
        .emit_with_ack("chat message", json!("still here"))
        .await
        .expect("sent")
        .await
        .expect("answered")
        .decode::<Vec<Value>>()
        .expect("JSON arguments");
    assert_eq!(answer[0]["ok"], true);
    one.disconnect().await.expect("disconnect");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_verified_unless_insecure() {
    let server = start_server(&[]);
    let auth = json!({"user": "Dummy-1", "token": server.token("Dummy-1")});

    let other = tempfile::tempdir().expect("temporary directory");
    let (other_cert, _) = chatd::server::tls::self_signed(other.path()).expect("a certificate");
    let untrusted = ConnectOptions {
        tls: Some(tls::trusting(&other_cert).expect("TLS settings")),
        ..ConnectOptions::default()
    };
    let error = Client::connect(&server.url(), auth.clone(), &untrusted)
        .await
        .err()
        .expect("an untrusted certificate must fail");
    assert!(matches!(error, ClientError::Tls { .. }), "{error}");

    let no_tls = Client::connect(&server.url(), auth.clone(), &ConnectOptions::default())
        .await
        .err()
        .expect("wss:// without TLS settings must fail");
    assert!(matches!(no_tls, ClientError::InvalidUrl { .. }), "{no_tls}");

    let trusted = Client::connect(&server.url(), auth.clone(), &server.options())
        .await
        .expect("the server's own certificate is trusted");
    trusted.disconnect().await.expect("disconnect");

    let insecure = ConnectOptions {
        tls: Some(tls::insecure().expect("TLS settings")),
        ..ConnectOptions::default()
    };
    let mut client = Client::connect(&server.url(), auth, &insecure)
        .await
        .expect("--insecure accepts any certificate");
    // No peer: presence of just this user, and no history.
    assert_eq!(
        expect_event(&mut client, "online").await,
        json!(["Dummy-1"])
    );
    client.disconnect().await.expect("disconnect");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_say_why() {
    let server = start_server(&[]);
    let bad_token = json!({"user": "Dummy-1", "peer": "Dummy-2", "token": "nope"});
    let error = Client::connect(&server.url(), bad_token, &server.options())
        .await
        .err()
        .expect("a bad token must be refused");
    assert!(
        matches!(&error, ClientError::Refused(reason) if reason == "unauthorized"),
        "{error}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_websocket_without_auth() {
    let server = start_server(&["--no-tls", "--no-auth"]);
    let addr = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let mut client = Client::connect_plain(addr, json!({"user": "Dummy-1", "peer": "Dummy-2"}))
        .await
        .expect("connect");
    assert_eq!(
        expect_event(&mut client, "online").await,
        json!(["Dummy-1"])
    );
    let answer = client
        .emit_with_ack("chat message", json!({"text": "to three", "to": "Dummy-3"}))
        .await
        .expect("sent")
        .await
        .expect("answered")
        .decode::<Vec<Value>>()
        .expect("JSON arguments");
    assert_eq!(answer[0]["message"]["roomId"], "dm:Dummy-1_Dummy-3");
    client.disconnect().await.expect("disconnect");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_the_connection_is_seen_and_fails_later_emits() {
    let server = start_server(&[]);
    let mut client = server.connect("Dummy-1", "Dummy-2").await;
    expect_event(&mut client, "online").await;
    expect_event(&mut client, "history").await;
    server.stop();
    let end = tokio::time::timeout(TIMEOUT, client.next_event())
        .await
        .expect("the end is seen in time");
    assert_eq!(end, None);
    let error = client
        .emit_with_ack("chat message", Value::from("too late"))
        .await
        .err()
        .expect("no emit after the end");
    assert!(matches!(error, ClientError::Closed), "{error}");
}
