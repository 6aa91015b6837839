//! HTTP routing: `/socket.io/` (Engine.IO over long-polling or websocket,
//! with the CORS allow-list), `/healthz`, the web client's files (`/`,
//! `/web/…`) unless it is off, and 404 for the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::Server;
use super::body::{self, BodyError};
use super::limits::Place;
use crate::engineio::session::Transport;
use crate::engineio::{EngineHandler, RequestError, RequestInfo, polling, query_param, websocket};

type Answer = Response<Full<Bytes>>;

/// Serves HTTP/1.1 requests on one connection from `peer` until it closes
/// or upgrades. `place` is the connection's place under the limits; a
/// websocket opened on it keeps it for the session's life.
pub async fn serve_connection<H, S>(
    server: Arc<Server<H>>,
    stream: S,
    peer: SocketAddr,
    place: Arc<Place>,
) where
    H: EngineHandler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = server.sessions.clone();
    let (header_timeout, max_head) = (server.handshake_timeout, server.max_header_bytes);
    let service = hyper::service::service_fn(move |request| {
        let (server, place) = (server.clone(), place.clone());
        async move { Ok::<_, std::convert::Infallible>(route(server, request, peer, place).await) }
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
        tracing::debug!(%error, %peer, "http connection ended");
    }
}

async fn route<H: EngineHandler>(
    server: Arc<Server<H>>,
    request: Request<Incoming>,
    peer: SocketAddr,
    place: Arc<Place>,
) -> Answer {
    let path = request.uri().path();
    if path == "/healthz" {
        return match server.health.status() {
            Ok(()) => plain(StatusCode::OK, "ok\n"),
            Err(reasons) => {
                let mut answer = text(
                    format!("unavailable: {reasons}\n"),
                    "text/plain; charset=utf-8",
                );
                *answer.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                answer
            }
        };
    }
    if server.web
        && let Some(answer) = crate::web::answer(request.method(), path, request.headers())
    {
        return answer;
    }
    let Some(mount) = server
        .paths
        .iter()
        .copied()
        .find(|mount| path == *mount || path == mount.trim_end_matches('/'))
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
        // Behind a trusted proxy, the client it names; else the peer.
        let forwarded_for = request.headers().get_all("x-forwarded-for");
        let client = server
            .trusted_proxies
            .client(peer, forwarded_for.iter().map(HeaderValue::as_bytes));
        // An active connection is the last its address gives up.
        place.touch();
        let carrier = Carrier { peer, place };
        engine_request(&server, request, client, mount, carrier)
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

/// The connection a request came on: its peer (a proxy, or the client
/// itself) and its place under the limits.
struct Carrier {
    peer: SocketAddr,
    place: Arc<Place>,
}

/// An Engine.IO request from `client`, checked in the reference server's
/// order: transport, then sid, then the handshake's method and protocol
/// version.
async fn engine_request<H: EngineHandler>(
    server: &Server<H>,
    mut request: Request<Incoming>,
    client: SocketAddr,
    mount: &'static str,
    carrier: Carrier,
) -> Result<Answer, Refusal> {
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let websocket = match query_param(&query, "transport") {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return Err(RequestError::TransportUnknown.into()),
    };
    let engine = &server.engine;

    if let Some(sid) = query_param(&query, "sid") {
        let session = match engine.find(sid, client.ip()) {
            Ok(session) => session,
            // A poll that raced its session's close at the client's request.
            Err(RequestError::SessionUnknown)
                if !websocket
                    && request.method() == Method::GET
                    && engine.closed_by_client(sid, client.ip()) =>
            {
                return Ok(text(polling::NOOP.to_owned(), "text/plain; charset=UTF-8"));
            }
            Err(error) => return Err(error.into()),
        };
        if session.place().is_joined() {
            // The connection serves a joined client: no newcomer may take
            // its place (it stays unjoined if the address has none left).
            carrier.place.join();
        }
        if websocket {
            let (answer, upgrade) = upgrade(&mut request)?;
            let max_payload = engine.config.max_payload;
            // The session keeps its own place: this connection's is
            // released once the upgrade is done.
            server
                .tracker
                .spawn(websocket::adopt(upgrade, session, max_payload));
            return Ok(answer);
        }
        return match *request.method() {
            Method::GET => Ok(text(
                polling::get(&session).await?,
                "text/plain; charset=UTF-8",
            )),
            Method::POST => {
                let deadline = Instant::now() + server.handshake_timeout;
                let limit = engine.config.max_payload;
                let body = body::read(request.into_body(), limit, deadline).await?;
                polling::post(&session, &body).await?;
                Ok(text("ok".to_owned(), "text/html"))
            }
            _ => Err(RequestError::BadRequest.into()),
        };
    }

    if request.method() != Method::GET {
        return Err(RequestError::BadHandshakeMethod.into());
    }
    if query_param(&query, "EIO") != Some("4") {
        return Err(RequestError::UnsupportedProtocolVersion.into());
    }
    // A polling session outlives the requests that carry it, so it holds a
    // place of its own: otherwise one keep-alive connection could open
    // sessions without end. So does a websocket from behind a proxy; a
    // direct websocket keeps its connection's place.
    let place = if websocket && client == carrier.peer {
        carrier.place
    } else {
        server.gate.admit(client.ip()).map_err(|_| Refusal::Full)?
    };
    let info = RequestInfo {
        query: request.uri().query().unwrap_or("").into(),
        remote: client,
        place,
    };
    if websocket {
        let (answer, upgrade) = upgrade(&mut request)?;
        let engine = engine.clone();
        server
            .tracker
            .spawn(websocket::serve(upgrade, engine, mount, Box::new(info)));
        Ok(answer)
    } else {
        let (_, open) = engine.open(mount, info, Transport::Polling);
        Ok(text(open, "text/plain; charset=UTF-8"))
    }
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

/// Why an Engine.IO request gets an error answer.
enum Refusal {
    /// The reference server's 400 with `{"code","message"}`.
    Engine(RequestError),
    /// A POST body past `maxPayload`: 413, as the reference server answers.
    TooLarge,
    /// A POST body not complete within the handshake timeout: 408.
    TimedOut,
    /// A new session past `--max-connections(-per-ip)`: 503, try later.
    Full,
}

impl From<RequestError> for Refusal {
    fn from(error: RequestError) -> Self {
        Refusal::Engine(error)
    }
}

impl From<BodyError> for Refusal {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge => Refusal::TooLarge,
            BodyError::TimedOut => Refusal::TimedOut,
            BodyError::Broken => Refusal::Engine(RequestError::BadRequest),
        }
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
            Refusal::TimedOut => {
                let mut answer = plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not complete in time\n",
                );
                // The rest of the body is not read: the connection ends.
                answer
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                answer
            }
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
