//! Opening the websocket: URL, TCP, TLS, and the HTTP/1 upgrade to
//! `/socket.io/?EIO=4&transport=websocket`.

use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::Empty;
use hyper::Request;
use hyper::Uri;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ClientError;

/// The path every Socket.IO server listens on unless configured otherwise.
const SOCKET_IO_PATH: &str = "/socket.io/";

/// An upgraded websocket; plain and TLS connections end up as the same type.
pub(super) type UpgradedSocket = WebSocket<TokioIo<Upgraded>>;

/// Where a `ws://` / `wss://` URL points.
#[derive(Debug, PartialEq, Eq)]
struct WsEndpoint {
    tls: bool,
    /// The host as written, brackets of an IPv6 literal removed.
    host: String,
    port: u16,
    /// `host:port` for the Host header, as written in the URL.
    authority: String,
}

impl WsEndpoint {
    /// Reads a server URL the way socket.io-client does: `ws`/`http` or
    /// `wss`/`https`, default ports 80/443. The path names the Socket.IO
    /// namespace, and chatd serves only `/`.
    fn parse(url: &str) -> Result<WsEndpoint, ClientError> {
        let invalid = |reason: &'static str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| invalid("not a URL like wss://host:port"))?;
        let tls = match uri.scheme_str() {
            Some("wss" | "https") => true,
            Some("ws" | "http") => false,
            _ => return Err(invalid("the scheme must be wss:// or ws://")),
        };
        if !matches!(uri.path(), "" | "/") {
            return Err(invalid(
                "only the main namespace / exists: leave the path out",
            ));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority.host();
        Ok(WsEndpoint {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
        })
    }
}

/// Connects to `url` and upgrades to a websocket on the Socket.IO path.
/// `tls` is required for `wss://`.
pub(super) async fn open(
    url: &str,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<UpgradedSocket, ClientError> {
    let target = WsEndpoint::parse(url)?;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| ClientError::Connect {
            addr: target.authority.clone(),
            source,
        })?;
    // Socket.IO packets are small and latency matters more than packing.
    tcp.set_nodelay(true)
        .map_err(|source| ClientError::Connect {
            addr: target.authority.clone(),
            source,
        })?;
    if !target.tls {
        return upgrade(&target, tcp).await;
    }
    let config = tls.ok_or_else(|| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: "wss:// needs TLS settings (a certificate to trust, or insecure)",
    })?;
    let name = ServerName::try_from(target.host.clone()).map_err(|_| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: "the host is not a valid DNS name or IP address",
    })?;
    let stream = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|source| ClientError::Tls {
            host: target.host.clone(),
            source,
        })?;
    upgrade(&target, stream).await
}

/// Sends the upgrade request over `stream` and checks the answer.
async fn upgrade<S>(target: &WsEndpoint, stream: S) -> Result<UpgradedSocket, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let request = Request::builder()
        .method("GET")
        .uri(format!("{SOCKET_IO_PATH}?EIO=4&transport=websocket"))
        .header(HOST, target.authority.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Protocol(format!("cannot build the upgrade request: {e}")))?;
    let (socket, _response) =
        fastwebsockets::handshake::client(&TokioExecutor::new(), request, stream)
            .await
            .map_err(ClientError::Upgrade)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<WsEndpoint, String> {
        WsEndpoint::parse(url).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_schemes_hosts_and_default_ports() {
        assert_eq!(
            target("wss://127.0.0.1:5000").unwrap(),
            WsEndpoint {
                tls: true,
                host: "127.0.0.1".into(),
                port: 5000,
                authority: "127.0.0.1:5000".into()
            }
        );
        let t = target("ws://[::1]:80/").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "::1", 80));
        assert_eq!(target("https://chat.example").unwrap().port, 443);
        assert_eq!(target("http://chat.example").unwrap().port, 80);
    }

    #[test]
    fn refuses_other_schemes_and_namespaces() {
        assert!(target("ftp://h:1").unwrap_err().contains("scheme"));
        assert!(target("127.0.0.1:5000").unwrap_err().contains("scheme"));
        assert!(target("wss://h:1/admin").unwrap_err().contains("namespace"));
    }
}
