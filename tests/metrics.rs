//! `chatd run --metrics-listen`: after some chat traffic, a Prometheus
//! scrape shows it (connections, users, accepted and refused messages,
//! refused handshakes, group-commit batches and their latency).

mod common;

use chatd::client::{Client, ClientError};
use common::{Server, send, within};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs `path` from the metrics listener: (status line and headers, body).
async fn scrape(addr: &str, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    within("the scrape", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn a_scrape_shows_the_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::spawn(
        &data,
        &["--no-tls", "--no-auth", "--metrics-listen", "127.0.0.1:0"],
        &[],
    );
    let line = server.log_line("metrics at http://");
    let addr = line
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

    let alice = server.connect_plain("Dummy-1", "Dummy-2").await;
    assert_eq!(send(&alice, "Hello World!").await["ok"], true);
    assert_eq!(send(&alice, "   ").await["reason"], "empty");

    let stranger = Client::connect_plain(server.addr(), json!({"user": "no spaces allowed"})).await;
    assert!(
        matches!(&stranger, Err(ClientError::Refused(message)) if message.contains("invalid handshake")),
        "{:?}",
        stranger.err()
    );

    let (head, body) = scrape(&addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for sample in [
        "chatd_connections_open 1",
        "chatd_users_online 1",
        "chatd_messages_accepted_total 1",
        "chatd_messages_refused_total{reason=\"empty\"} 1",
        "chatd_messages_refused_total{reason=\"rate_limited\"} 0",
        "chatd_handshakes_refused_total{reason=\"invalid\"} 1",
        "chatd_handshakes_refused_total{reason=\"unauthorized\"} 0",
        "chatd_outbound_queue_drops_total 0",
        "chatd_commit_batch_messages_bucket{le=\"1\"} 1",
        "chatd_commit_batch_messages_count 1",
        "chatd_commit_duration_seconds_count 1",
        "chatd_store_recent_messages 1",
    ] {
        assert!(
            body.lines().any(|line| line == sample),
            "missing {sample:?} in:\n{body}"
        );
    }
    let (head, _) = scrape(&addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    drop(alice);
    server.stop();
}
