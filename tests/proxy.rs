//! chatd behind a reverse proxy (`--trusted-proxy`): a real nginx (Debian's
//! package, started here on loopback with its own configuration) in front of
//! `chatd run --no-tls`, and the PROXY protocol as HAProxy writes it. Every
//! client comes from its own loopback address (127.0.0.0/8 is all loopback),
//! so the per-address limits see users, not the proxy.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::raw::RawClient;
use common::{Server, TIMEOUT};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const NGINX: &str = "/usr/sbin/nginx";

/// An nginx master process (and its worker) proxying to chatd, stopped by
/// its PID when dropped, however the test ends.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on a free loopback port, proxying HTTP and websockets
    /// to `upstream` and appending the client to `X-Forwarded-For`; `None`
    /// when nginx is not installed (outside CI).
    fn start(upstream: u16) -> Option<Nginx> {
        if !Path::new(NGINX).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{NGINX} is missing: .ci/run installs Debian's nginx"
            );
            eprintln!("skipped: {NGINX} is not installed (apt-get install nginx)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let prefix = dir.path().display();
        let config = format!(
            r#"
worker_processes 1;
worker_rlimit_nofile 8192;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx");
        // Ready once it has started its worker; its log is drained for its
        // whole life so a full pipe never blocks it.
        let (ready, started) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("start worker process") {
                    let _ = ready.send(());
                } else if line.contains("[emerg]") {
                    eprintln!("nginx: {line}");
                }
            }
        });
        let nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        started
            .recv_timeout(TIMEOUT)
            .expect("nginx started its worker");
        Some(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid. SIGTERM: the master
        // stops its worker before it exits.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A TCP connection to `port` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap_or_else(|error| panic!("connect from {from}: {error}"))
}

/// Joins `user` over a websocket from `from` to `port`; the CONNECT's answer.
async fn join_from(from: Ipv4Addr, port: u16, user: &str) -> (RawClient, Result<(), Value>) {
    let stream = connect_from(from, port).await;
    let mut client = RawClient::open_on(stream, &format!("127.0.0.1:{port}"), &[]).await;
    let joined = client.join(&json!({"user": user})).await;
    (client, joined)
}

/// The `i`-th user's own loopback address: 127.1.x.y.
fn user_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// `chatd run --no-tls --no-auth` trusting 127.0.0.1 as its proxy, with
/// `per_ip` joined connections per client address.
fn behind_local_proxy(data_dir: &Path, per_ip: usize) -> Server {
    let per_ip = per_ip.to_string();
    let args = [
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-ip",
        &per_ip,
    ];
    Server::start(data_dir, &args)
}

/// The CONNECT_ERROR past the joined limit of an address.
fn too_many() -> Result<(), Value> {
    Err(json!({"message": "too many connections from this address"}))
}

#[tokio::test]
async fn three_hundred_users_behind_nginx_join_and_one_abusive_user_is_limited_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = behind_local_proxy(dir.path(), 4);
    let Some(nginx) = Nginx::start(server.port) else {
        return;
    };
    // 300 users through one proxy: without the proxy's word, they would
    // be one address with 4 places.
    let mut users = Vec::new();
    for i in 0..300 {
        let (client, joined) = join_from(user_address(i), nginx.port, &format!("User-{i}")).await;
        assert_eq!(joined, Ok(()), "user {i}");
        users.push(client);
    }
    // One of them opens connection after connection: past 4, refused.
    let abuser = Ipv4Addr::new(127, 9, 9, 9);
    let mut held = Vec::new();
    for _ in 0..4 {
        let (client, joined) = join_from(abuser, nginx.port, "Abuser").await;
        assert_eq!(joined, Ok(()));
        held.push(client);
    }
    for _ in 0..3 {
        let (_client, joined) = join_from(abuser, nginx.port, "Abuser").await;
        assert_eq!(joined, too_many());
    }
    // Everyone else is unaffected: a newcomer joins, the 300 still chat.
    let (_late, joined) = join_from(user_address(300), nginx.port, "Late").await;
    assert_eq!(joined, Ok(()));
    let (first, last) = (0, users.len() - 1);
    users[first]
        .send_packet(r#"421["chat message",{"to":"User-299","text":"hello through nginx"}]"#)
        .await;
    assert_eq!(users[first].ack(1).await["ok"], true);
    loop {
        let packet = users[last].next_text().await;
        if packet.contains("hello through nginx") {
            break;
        }
    }
    drop((users, held));
    drop(nginx);
    server.stop();
}

#[tokio::test]
async fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let server = behind_local_proxy(dir.path(), 1);
    let port = server.port;
    let open = |from: Ipv4Addr, forwarded: &'static str| async move {
        let stream = connect_from(from, port).await;
        RawClient::open_on(
            stream,
            &format!("127.0.0.1:{port}"),
            &[("X-Forwarded-For", forwarded)],
        )
        .await
    };
    // From the trusted proxy: each named client has its own place.
    let mut a = open(Ipv4Addr::LOCALHOST, "203.0.113.1").await;
    assert_eq!(a.join(&json!({"user": "A"})).await, Ok(()));
    let mut b = open(Ipv4Addr::LOCALHOST, "198.51.100.9, 203.0.113.2").await;
    assert_eq!(b.join(&json!({"user": "B"})).await, Ok(()));
    let mut a2 = open(Ipv4Addr::LOCALHOST, "203.0.113.1").await;
    assert_eq!(a2.join(&json!({"user": "A"})).await, too_many());
    // From anyone else the header is ignored: a client cannot pick an
    // address to escape its limit.
    let mut c = open(Ipv4Addr::new(127, 0, 0, 5), "192.0.2.1").await;
    assert_eq!(c.join(&json!({"user": "C"})).await, Ok(()));
    let mut c2 = open(Ipv4Addr::new(127, 0, 0, 5), "192.0.2.2").await;
    assert_eq!(c2.join(&json!({"user": "C"})).await, too_many());
    server.stop();
}

/// A PROXY protocol version 2 header for a TCP/IPv4 client `from`.
fn proxy_v2(from: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(from) = from else {
        panic!("IPv4 only here")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(from.ip().octets());
    header.extend([127, 0, 0, 1]);
    header.extend(from.port().to_be_bytes());
    header.extend(5000u16.to_be_bytes());
    header
}

#[tokio::test]
async fn a_proxy_protocol_header_from_a_trusted_proxy_names_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = behind_local_proxy(dir.path(), 1);
    let port = server.port;
    let open = |header: Vec<u8>| async move {
        let mut stream = connect_from(Ipv4Addr::LOCALHOST, port).await;
        stream.write_all(&header).await.unwrap();
        RawClient::open_on(stream, &format!("127.0.0.1:{port}"), &[]).await
    };
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 5000\r\n").into_bytes();
    let mut a = open(v1("203.0.113.1")).await;
    assert_eq!(a.join(&json!({"user": "A"})).await, Ok(()));
    let mut a2 = open(proxy_v2("203.0.113.1:40001".parse().unwrap())).await;
    assert_eq!(a2.join(&json!({"user": "A"})).await, too_many());
    let mut b = open(proxy_v2("203.0.113.2:40002".parse().unwrap())).await;
    assert_eq!(b.join(&json!({"user": "B"})).await, Ok(()));
    // Without a header, a trusted proxy's own connection still works.
    let mut health = open(Vec::new()).await;
    assert_eq!(health.join(&json!({"user": "H"})).await, Ok(()));
    server.stop();
}
