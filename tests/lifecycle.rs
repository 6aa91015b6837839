//! `chatd run` the way the systemd unit runs it: readiness, watchdog and
//! stopping notifications over `$NOTIFY_SOCKET`, a certificate renewed and
//! reloaded on SIGHUP without dropping the connections already open, and a
//! graceful exit 0 on SIGTERM.

mod common;

use std::fs;
use std::sync::Arc;

use bytes::Bytes;
use common::{Server, within};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// A fresh self-signed certificate for `localhost`: (certificate, key) PEM.
fn new_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A TLS client that trusts exactly one certificate.
fn trusting(cert_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(cert_pem)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One keep-alive HTTPS connection to chatd.
struct Https {
    requests: SendRequest<Empty<Bytes>>,
    /// The certificate chatd presented in this connection's handshake.
    served: CertificateDer<'static>,
}

impl Https {
    async fn open(port: u16, connector: &TlsConnector) -> std::io::Result<Https> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await?;
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (requests, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Https { requests, served })
    }

    /// GET /healthz on this connection: its status and body.
    async fn healthz(&mut self) -> (u16, String) {
        let request = hyper::Request::get("/healthz")
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let response = self.requests.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }
}

/// Receives what chatd tells the service manager, one datagram per item.
fn service_manager(socket: UnixDatagram) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf).await {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Waits for a notification holding the line `state`, skipping others.
async fn notified(notifications: &mut mpsc::UnboundedReceiver<String>, state: &str) {
    within(state, async {
        loop {
            let datagram = notifications.recv().await.expect("notify socket closed");
            if datagram.lines().any(|line| line == state) {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn notifies_reloads_the_certificate_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let mut notifications = service_manager(UnixDatagram::bind(&notify_path).unwrap());
    let cert = tmp.path().join("cert.pem");
    let key = tmp.path().join("key.pem");
    let (first_cert, first_key) = new_certificate();
    fs::write(&cert, &first_cert).unwrap();
    fs::write(&key, &first_key).unwrap();
    let data = tmp.path().join("data");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();

    let mut chatd = Server::spawn(
        &data,
        &["--tls-cert", &path(&cert), "--tls-key", &path(&key)],
        &[
            ("NOTIFY_SOCKET", &path(&notify_path)),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    // READY=1 comes first: nothing before it may suggest the server is up.
    let first = within("READY=1", notifications.recv()).await.unwrap();
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    notified(&mut notifications, "WATCHDOG=1").await;
    // And keeps coming, every half WATCHDOG_USEC.
    notified(&mut notifications, "WATCHDOG=1").await;

    let mut before = Https::open(chatd.port, &trusting(&first_cert))
        .await
        .unwrap();
    assert_eq!(before.served, der(&first_cert));
    assert_eq!(before.healthz().await, (200, "ok\n".to_owned()));

    // An ACME client renews the pair, then asks for a reload.
    let (second_cert, second_key) = new_certificate();
    fs::write(&cert, &second_cert).unwrap();
    fs::write(&key, &second_key).unwrap();
    chatd.signal(libc::SIGHUP);
    chatd.log_line("TLS certificate reloaded");

    let mut after = Https::open(chatd.port, &trusting(&second_cert))
        .await
        .unwrap();
    assert_eq!(after.served, der(&second_cert));
    assert_eq!(after.healthz().await, (200, "ok\n".to_owned()));
    assert!(
        Https::open(chatd.port, &trusting(&first_cert))
            .await
            .is_err(),
        "new handshakes must no longer get the old certificate"
    );
    // The connection opened before the reload goes on working.
    assert_eq!(before.healthz().await, (200, "ok\n".to_owned()));

    // A broken renewal is refused and the current pair kept.
    fs::write(&cert, "not a certificate").unwrap();
    chatd.signal(libc::SIGHUP);
    let refused = chatd.log_line("TLS certificate not reloaded");
    assert!(refused.contains("cert.pem"), "{refused}");
    let mut still = Https::open(chatd.port, &trusting(&second_cert))
        .await
        .unwrap();
    assert_eq!(still.healthz().await, (200, "ok\n".to_owned()));

    chatd.stop();
    notified(&mut notifications, "STOPPING=1").await;
}
