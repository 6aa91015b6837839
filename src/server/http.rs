//! HTTP routing: `/socket.io/` (Engine.IO), `/healthz`, and 404 for the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Server;
use super::limits::Permit;
use crate::engineio::{EngineHandler, RequestInfo, websocket};

/// Serves HTTP/1.1 requests on one connection until it closes or upgrades.
/// `permit` holds the connection's place under the limits until the
/// connection, or the session it upgraded to, ends.
pub async fn serve_connection<H, S>(
    server: Arc<Server<H>>,
    stream: S,
    remote: SocketAddr,
    permit: Arc<Permit>,
) where
    H: EngineHandler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (header_timeout, max_head) = (server.handshake_timeout, server.max_header_bytes);
    let shutdown = server.sessions.clone();
    let service = hyper::service::service_fn(move |request| {
        let (server, permit) = (server.clone(), permit.clone());
        async move { Ok::<_, std::convert::Infallible>(route(server, request, remote, permit)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_head.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Shutdown: finish the request in progress, then close, so an idle
        // keep-alive client (a health checker) does not hold up the exit.
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %remote, "http connection ended");
    }
}

fn route<H: EngineHandler>(
    server: Arc<Server<H>>,
    mut request: Request<Incoming>,
    remote: SocketAddr,
    permit: Arc<Permit>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let Some(mount) = server
        .paths
        .iter()
        .find(|mount| path == *mount || path == mount.trim_end_matches('/'))
    else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if param("EIO") != Some("4") {
        return engine_error(5, "Unsupported protocol version");
    }
    if param("transport") != Some("websocket") {
        return engine_error(0, "Transport unknown");
    }
    if param("sid").is_some() {
        // Upgrading a polling session: no polling sessions exist here.
        return engine_error(1, "Session ID unknown");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return engine_error(3, "Bad request");
    }
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(upgrade) => upgrade,
        Err(_) => return engine_error(3, "Bad request"),
    };
    let info = RequestInfo {
        path: mount.clone(),
        query,
        remote,
    };
    let session = websocket::serve(
        upgrade,
        server.engine.clone(),
        server.config.clone(),
        info,
        server.sessions.clone(),
    );
    server.tracker.spawn(async move {
        session.await;
        drop(permit);
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// A plain-text answer.
pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The reference server's error answer: status 400, `{"code","message"}`.
fn engine_error(code: u8, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
