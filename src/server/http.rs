//! HTTP routing: `/socket.io/` (Engine.IO over long-polling or websocket,
//! with the CORS allow-list), `/healthz`, and 404 for the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Server;
use super::limits::Permit;
use crate::engineio::session::Transport;
use crate::engineio::{EngineHandler, RequestError, RequestInfo, polling, websocket};

type Answer = Response<Full<Bytes>>;

/// Serves HTTP/1.1 requests on one connection until it closes or upgrades.
/// `permit` holds the connection's place under the limits until the
/// connection, or the websocket session it upgraded to, ends.
pub async fn serve_connection<H, S>(
    server: Arc<Server<H>>,
    stream: S,
    remote: SocketAddr,
    permit: Arc<Permit>,
) where
    H: EngineHandler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = server.sessions.clone();
    let (header_timeout, max_head) = (server.handshake_timeout, server.max_header_bytes);
    let service = hyper::service::service_fn(move |request| {
        let (server, permit) = (server.clone(), permit.clone());
        async move { Ok::<_, std::convert::Infallible>(route(server, request, remote, permit).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper refuses anything under 8 KiB.
        .max_buf_size(max_head.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            // Polling clients keep their connections alive between
            // requests: finish the request in flight (a held poll is
            // answered as its session closes), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %remote, "http connection ended");
    }
}

async fn route<H: EngineHandler>(
    server: Arc<Server<H>>,
    request: Request<Incoming>,
    remote: SocketAddr,
    permit: Arc<Permit>,
) -> Answer {
    let path = request.uri().path();
    if path == "/healthz" {
        return plain(StatusCode::OK, "ok\n");
    }
    let Some(mount) = server
        .paths
        .iter()
        .find(|mount| path == *mount || path == mount.trim_end_matches('/'))
        .cloned()
    else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    // A browser page names its origin; anything else (Node, mobile) sends
    // none and is not subject to CORS.
    let origin = match request.headers().get(header::ORIGIN) {
        None => None,
        Some(origin) if origin.to_str().is_ok_and(|o| allowed(&server, &request, o)) => {
            Some(origin.clone())
        }
        Some(_) => return plain(StatusCode::FORBIDDEN, "origin not allowed\n"),
    };
    let mut answer = if request.method() == Method::OPTIONS {
        preflight(&request)
    } else {
        engine_request(&server, request, remote, mount, permit)
            .await
            .unwrap_or_else(Refusal::answer)
    };
    if let Some(origin) = origin {
        let headers = answer.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    answer
}

/// True if a page from `origin` may use the server: it is on the allow-list,
/// or it is the server's own origin (not cross-origin at all; websocket
/// clients such as python's send it by default).
fn allowed<H: EngineHandler>(
    server: &Server<H>,
    request: &Request<Incoming>,
    origin: &str,
) -> bool {
    if server.allows_origin(origin) {
        return true;
    }
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    host.is_some_and(|host| {
        origin
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    })
}

/// A CORS preflight from an allowed origin (the caller adds the origin).
fn preflight(request: &Request<Incoming>) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = StatusCode::NO_CONTENT;
    let headers = answer.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(asked) = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    answer
}

/// An Engine.IO request, checked in the reference server's order:
/// transport, then sid, then the handshake's method and protocol version.
async fn engine_request<H: EngineHandler>(
    server: &Server<H>,
    mut request: Request<Incoming>,
    remote: SocketAddr,
    path: String,
    permit: Arc<Permit>,
) -> Result<Answer, Refusal> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let info = RequestInfo {
        path,
        query,
        remote,
    };
    let websocket = match info.query_param("transport") {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return Err(RequestError::TransportUnknown.into()),
    };
    let engine = &server.engine;

    if let Some(sid) = info.query_param("sid") {
        let session = engine.find(sid, remote.ip())?;
        if websocket {
            let (answer, upgrade) = upgrade(&mut request)?;
            let max_payload = engine.config.max_payload;
            server.tracker.spawn(holding(permit, move || {
                websocket::adopt(upgrade, session, max_payload)
            }));
            return Ok(answer);
        }
        return match *request.method() {
            Method::GET => Ok(text(
                polling::get(&session).await?,
                "text/plain; charset=UTF-8",
            )),
            Method::POST => {
                let body = read_body(request, engine.config.max_payload).await?;
                polling::post(&session, &body).await?;
                Ok(text("ok".to_owned(), "text/html"))
            }
            _ => Err(RequestError::BadRequest.into()),
        };
    }

    if request.method() != Method::GET {
        return Err(RequestError::BadHandshakeMethod.into());
    }
    if info.query_param("EIO") != Some("4") {
        return Err(RequestError::UnsupportedProtocolVersion.into());
    }
    if websocket {
        let (answer, upgrade) = upgrade(&mut request)?;
        let engine = engine.clone();
        server.tracker.spawn(holding(permit, move || {
            websocket::serve(upgrade, engine, info)
        }));
        Ok(answer)
    } else {
        // A polling session outlives the requests that carry it, so it holds
        // a place of its own: otherwise one keep-alive connection could open
        // sessions without end, each kept until its heartbeat expires.
        let place = server.gate.admit(remote.ip()).map_err(|refused| {
            tracing::warn!(%remote, %refused, "polling session refused");
            Refusal::Full
        })?;
        let (session, open) = engine.open(info, Transport::Polling);
        server.tracker.spawn(async move {
            // Once upgraded, the websocket's connection holds the place.
            tokio::select! {
                _ = session.left_polling() => {}
                _ = session.closing().cancelled() => {}
            }
            drop(place);
        });
        Ok(text(open, "text/plain; charset=UTF-8"))
    }
}

/// Runs the websocket session `start` makes, keeping its connection's place
/// under the limits until it ends (the HTTP connection task is gone after
/// the upgrade). The session is made here rather than passed in: a future
/// an async fn takes and awaits is stored twice in its state, and this one
/// lives as long as the connection (1.7 KiB per idle connection instead of
/// 0.9).
async fn holding<F: std::future::Future<Output = ()>>(
    permit: Arc<Permit>,
    start: impl FnOnce() -> F,
) {
    start().await;
    drop(permit);
}

/// The 101 answer and the pending websocket of an upgrade request.
fn upgrade(
    request: &mut Request<Incoming>,
) -> Result<(Answer, fastwebsockets::upgrade::UpgradeFut), RequestError> {
    if !fastwebsockets::upgrade::is_upgrade_request(request) {
        return Err(RequestError::BadRequest);
    }
    let (answer, upgrade) =
        fastwebsockets::upgrade::upgrade(request).map_err(|_| RequestError::BadRequest)?;
    Ok((answer.map(|_| Full::new(Bytes::new())), upgrade))
}

/// A POST body of at most `limit` bytes.
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Refusal> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(Refusal::TooLarge),
        Err(error) => {
            tracing::debug!(%error, "POST body unreadable");
            Err(Refusal::Engine(RequestError::BadRequest))
        }
    }
}

/// Why an Engine.IO request gets an error answer.
enum Refusal {
    /// The reference server's 400 with `{"code","message"}`.
    Engine(RequestError),
    /// A POST body past `maxPayload`: 413, as the reference server answers.
    TooLarge,
    /// A new session past `--max-connections(-per-ip)`: 503, try later.
    Full,
}

impl From<RequestError> for Refusal {
    fn from(error: RequestError) -> Self {
        Refusal::Engine(error)
    }
}

impl Refusal {
    fn answer(self) -> Answer {
        match self {
            Refusal::Engine(error) => {
                let body = serde_json::json!({"code": error.code(), "message": error.to_string()});
                let mut answer = text(body.to_string(), "application/json");
                *answer.status_mut() = StatusCode::BAD_REQUEST;
                answer
            }
            Refusal::TooLarge => plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n"),
            Refusal::Full => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is at its connection limit\n",
            ),
        }
    }
}

/// A 200 answer with `body` of type `content_type`.
fn text(body: String, content_type: &'static str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer
}

/// A short plain-text answer with `status`.
pub(super) fn plain(status: StatusCode, body: &'static str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *answer.status_mut() = status;
    answer
}
