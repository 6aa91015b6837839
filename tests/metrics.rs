//! `chatd run --metrics-listen`: after some chat traffic, a Prometheus
//! scrape shows it (connections, users, accepted and refused messages,
//! refused handshakes, group-commit batches and their latency).

mod chatd_process;

use chatd_process::{Chatd, within};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bare Socket.IO client over a plain websocket: enough to join and send.
struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    /// Opens the websocket and reads the Engine.IO open packet.
    async fn open(port: u16) -> Client {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\n\
              Upgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        // Byte by byte up to the blank line: what follows is websocket data.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut client = Client {
            ws: WebSocket::after_handshake(tcp, Role::Client),
        };
        assert!(client.next().await.starts_with('0'), "Engine.IO open");
        client
    }

    async fn send(&mut self, packet: &str) {
        let frame = Frame::text(Payload::Owned(packet.as_bytes().to_vec()));
        self.ws.write_frame(frame).await.unwrap();
    }

    /// The next text packet.
    async fn next(&mut self) -> String {
        within("a packet from chatd", async {
            loop {
                let frame = self.ws.read_frame().await.unwrap();
                if frame.opcode == OpCode::Text {
                    return String::from_utf8(frame.payload.to_vec()).unwrap();
                }
            }
        })
        .await
    }

    /// Skips packets until one starting with `prefix`, and returns it.
    async fn until(&mut self, prefix: &str) -> String {
        loop {
            let packet = self.next().await;
            if packet.starts_with(prefix) {
                return packet;
            }
        }
    }
}

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
    let mut chatd = Chatd::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--no-tls",
            "--no-auth",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    let line = chatd.log_line("metrics at http://").await;
    let addr = line
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

    let mut alice = Client::open(chatd.port).await;
    alice.send(r#"40{"user":"Dummy-1","peer":"Dummy-2"}"#).await;
    alice.until("40{").await;
    alice.send(r#"421["chat message","Hello World!"]"#).await;
    assert!(alice.until("431").await.contains(r#""ok":true"#));
    alice.send(r#"422["chat message","   "]"#).await;
    assert!(alice.until("432").await.contains(r#""reason":"empty""#));

    let mut stranger = Client::open(chatd.port).await;
    stranger.send(r#"40{"user":"no spaces allowed"}"#).await;
    assert!(stranger.until("44").await.contains("invalid handshake"));

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
    ] {
        assert!(
            body.lines().any(|line| line == sample),
            "missing {sample:?} in:\n{body}"
        );
    }
    let (head, _) = scrape(&addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    drop(alice);
    let status = chatd.stop().await;
    assert!(status.success(), "chatd exited with {status}");
}
