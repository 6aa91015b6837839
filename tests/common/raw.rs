//! A deliberately low-level Socket.IO client over a plain websocket, for
//! tests that must send what no real client would: malformed packets, raw
//! frames, handshakes left unfinished. Everything else uses the project's
//! own client (`chatd::client`).

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::TIMEOUT;

/// Hands hyper's background futures to tokio.
struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

/// A Socket.IO v5 connection driven packet by packet.
pub struct RawClient {
    ws: WebSocket<TokioIo<Upgraded>>,
    next_ack: u64,
    /// The socket id the server gave this connection.
    pub sid: String,
}

impl RawClient {
    /// Connects to `127.0.0.1:port` as `user`, talking to `peer`.
    pub async fn connect(port: u16, user: &str, peer: &str) -> RawClient {
        let mut client = RawClient::open_only(port).await;
        let auth = serde_json::json!({ "user": user, "peer": peer });
        if let Err(refusal) = client.join(&auth).await {
            panic!("CONNECT refused: {refusal}");
        }
        client
    }

    /// Sends CONNECT with `auth`; `Err` holds the CONNECT_ERROR's data.
    pub async fn join(&mut self, auth: &Value) -> Result<(), Value> {
        self.send_text(format!("40{auth}")).await;
        let answer = self.next_text().await;
        if let Some(error) = answer.strip_prefix("44") {
            return Err(serde_json::from_str(error).expect("CONNECT_ERROR payload is JSON"));
        }
        let body = answer
            .strip_prefix("40")
            .unwrap_or_else(|| panic!("expected CONNECT, got {answer}"));
        let body: Value = serde_json::from_str(body).expect("CONNECT payload is JSON");
        self.sid = body["sid"].as_str().expect("a sid").to_owned();
        Ok(())
    }

    /// Opens the Engine.IO session (websocket and open packet) without
    /// joining any Socket.IO namespace.
    pub async fn open_only(port: u16) -> RawClient {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to chatd");
        RawClient::open_on(stream, &format!("127.0.0.1:{port}"), &[]).await
    }

    /// Opens the Engine.IO session over `stream` (to `host`, with extra
    /// request `headers`) without joining any namespace.
    pub async fn open_on(
        stream: tokio::net::TcpStream,
        host: &str,
        headers: &[(&str, &str)],
    ) -> RawClient {
        let mut request = hyper::Request::builder()
            .method("GET")
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("Host", host)
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, request, stream)
            .await
            .expect("websocket handshake");
        let mut client = RawClient {
            ws,
            next_ack: 1,
            sid: String::new(),
        };
        let open = client.next_text().await;
        assert!(
            open.starts_with("0{"),
            "expected the open packet, got {open}"
        );
        client
    }

    /// Sends one raw Engine.IO text packet, whatever it holds.
    pub async fn send_packet(&mut self, packet: &str) {
        self.send_text(packet.to_owned()).await;
    }

    /// Sends one raw websocket frame, whatever it holds.
    pub async fn send_frame(&mut self, frame: Frame<'_>) {
        self.ws.write_frame(frame).await.expect("websocket write");
    }

    /// Waits for the acknowledgement `id` and returns its first argument.
    pub async fn ack(&mut self, id: u64) -> Value {
        let prefix = format!("43{id}");
        loop {
            let packet = self.next_text().await;
            if let Some(rest) = packet.strip_prefix(&prefix) {
                let args: Value = serde_json::from_str(rest).expect("ack args are JSON");
                return args[0].clone();
            }
        }
    }

    /// Waits until chatd closes this connection (a close frame or the end of
    /// the stream), answering pings meanwhile; panics if it stays open.
    pub async fn closed_by_server(mut self) {
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.ws.read_frame())
                .await
                .expect("chatd closed the connection in time");
            match frame {
                Err(_) => return,
                Ok(frame) if frame.opcode == OpCode::Close => return,
                Ok(frame) if frame.opcode == OpCode::Text && frame.payload.as_ref() == b"2" => {
                    self.send_text("3".into()).await;
                }
                Ok(_) => {}
            }
        }
    }

    /// The next Engine.IO text packet (not a ping), answering pings on the way.
    pub async fn next_text(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.ws.read_frame())
                .await
                .expect("chatd answered in time")
                .expect("a websocket frame");
            match frame.opcode {
                OpCode::Text => {
                    let text = String::from_utf8(frame.payload.to_vec()).expect("UTF-8 text");
                    if text == "2" {
                        self.send_text("3".into()).await;
                        continue;
                    }
                    return text;
                }
                OpCode::Close => panic!("chatd closed the websocket"),
                _ => continue,
            }
        }
    }

    async fn send_text(&mut self, text: String) {
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
            .await
            .expect("websocket write");
    }
}

/// One request on a keep-alive HTTP/1.1 connection: the status and body.
pub fn http(tcp: &mut TcpStream, method: &str, target: &str, body: &str) -> (u16, String) {
    write!(
        tcp,
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_answer(tcp)
}

/// Reads one HTTP/1.1 answer: the status and body.
pub fn read_answer(tcp: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("an HTTP answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0; length];
    tcp.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// Opens a polling session: its sid.
pub fn polling_handshake(tcp: &mut TcpStream) -> String {
    let (status, open) = http(tcp, "GET", POLLING, "");
    assert_eq!(status, 200, "{open}");
    let open: Value = serde_json::from_str(&open[1..]).expect("an open packet");
    open["sid"].as_str().expect("a sid").to_owned()
}

/// The polling transport's URL.
pub const POLLING: &str = "/socket.io/?EIO=4&transport=polling";
