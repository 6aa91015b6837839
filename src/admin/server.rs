//! The server side of the admin channel: `<data_dir>/admin.sock`, served
//! inside `chatd run` with hyper's HTTP/1.1 on a tokio `UnixListener`.
//!
//! Presence comes from the hub; exports run on the blocking pool against
//! the same [`Store`](crate::store::Store) the chat writes to, so live
//! traffic goes on; purges are changes applied through the chat's log.
//! An export is streamed: a blocking task reads the store and sends chunks of
//! at most [`CHUNK_BYTES`] down a channel of [`CHUNKS_IN_FLIGHT`] slots that
//! is the response body, so memory stays flat and a slow client slows the
//! reader rather than filling memory.

use std::convert::Infallible;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ExportError, ExportScope, PurgeScope, SOCKET_FILE, write_export};
use crate::chat::service::{Chat, Ticket};
use crate::datadir::temp_sibling;
use crate::log::Log;
use crate::store::panic_message;
use crate::store::{Change, Outcome};

/// Bytes gathered before an export chunk is sent.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Export chunks that may wait for the client before the reader waits.
pub const CHUNKS_IN_FLIGHT: usize = 8;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of every admin response: a whole text, or a streamed export.
type AdminBody = BoxBody<Bytes, io::Error>;

/// The admin socket of a running server.
pub struct AdminServer {
    path: PathBuf,
    stop: CancellationToken,
    tracker: TaskTracker,
    accept: JoinHandle<()>,
}

impl AdminServer {
    /// Creates `<data_dir>/admin.sock` with mode 0600 and serves it until
    /// [`shutdown`](Self::shutdown). A socket file nobody answers on (left by
    /// a crash) is replaced; one a live server answers on is an error. Must
    /// be called inside the tokio runtime.
    pub fn start<L: Log<Ticket>>(
        data_dir: &Path,
        chat: Arc<Chat<L>>,
    ) -> anyhow::Result<AdminServer> {
        let path = data_dir.join(SOCKET_FILE);
        let listener = bind(&path)?;
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(listener, chat, stop.clone(), tracker.clone()));
        tracing::info!(socket = %path.display(), "admin socket ready");
        Ok(AdminServer {
            path,
            stop,
            tracker,
            accept,
        })
    }

    /// Path of the socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, drops open admin connections (an export in progress
    /// ends cut short) and removes the socket file.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.accept.await;
        self.tracker.close();
        self.tracker.wait().await;
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(%error, socket = %self.path.display(), "cannot remove the admin socket");
        }
    }
}

/// Binds the socket under a temporary name, restricts it to mode 0600 and
/// only then renames it into place: no moment where `path` accepts others.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    remove_stale(path)?;
    let tmp = temp_sibling(path);
    let listener = UnixListener::bind(&tmp).with_context(|| {
        format!(
            "cannot create the admin socket {} (Unix socket paths are limited to 107 bytes: \
             use a shorter --data-dir if it is long)",
            tmp.display()
        )
    })?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(error)
            .with_context(|| format!("cannot create the admin socket {}", path.display()));
    }
    Ok(listener)
}

/// Removes a socket file left by a server that is gone; refuses to touch one
/// that answers, or anything that is not a socket.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot inspect {}", path.display()));
        }
    };
    if !metadata.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: move it out of the data directory",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another chatd server answers on {}: stop it, or pass another --data-dir",
            path.display()
        ),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing a stale admin socket");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))
        }
        Err(error) => {
            Err(error).with_context(|| format!("cannot check the socket {}", path.display()))
        }
    }
}

async fn accept_loop<L: Log<Ticket>>(
    listener: UnixListener,
    chat: Arc<Chat<L>>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let chat = chat.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve_connection(chat, stream) => {}
            }
        });
    }
}

async fn serve_connection<L: Log<Ticket>>(chat: Arc<Chat<L>>, stream: UnixStream) {
    let service = hyper::service::service_fn(move |request| {
        let chat = chat.clone();
        async move { Ok::<_, Infallible>(route(&chat, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        tracing::debug!(%error, "admin connection ended");
    }
}

async fn route<L: Log<Ticket>>(
    chat: &Arc<Chat<L>>,
    request: Request<Incoming>,
) -> Response<AdminBody> {
    let query = request.uri().query().unwrap_or("");
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/online") => match serde_json::to_vec(&chat.presence().list()) {
            Ok(json) => whole(StatusCode::OK, "application/json", json),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        },
        (&Method::GET, "/export") => match ExportScope::from_query(query) {
            Ok(scope) => export(chat, scope),
            Err(why) => text(StatusCode::BAD_REQUEST, why),
        },
        (&Method::POST, "/purge") => match PurgeScope::from_query(query) {
            Ok(scope) => purge(chat, scope).await,
            Err(why) => text(StatusCode::BAD_REQUEST, why),
        },
        (_, "/online" | "/export" | "/purge") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        }
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!("unknown admin request {path}: is this chatd older than the CLI?"),
        ),
    }
}

fn export<L: Log<Ticket>>(chat: &Chat<L>, scope: ExportScope) -> Response<AdminBody> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let store = chat.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            buf: Vec::with_capacity(CHUNK_BYTES),
            tx,
        };
        // A panic inside the store (a damaged file) must end the export
        // as a failure the client sees, not as a short, well-formed one.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_export(&store, &scope, &mut out)
        }))
        .unwrap_or_else(|panic| {
            Err(ExportError::Write(io::Error::other(format!(
                "the store panicked while reading: {}",
                panic_message(&*panic)
            ))))
        });
        match written {
            Ok(count) => {
                tracing::info!(count, scope = scope.describe(), "exported");
                let _ = out.tx.blocking_send(Chunk::End);
            }
            Err(ExportError::Write(error)) if out.tx.is_closed() => {
                tracing::info!(%error, scope = scope.describe(), "export abandoned by the client");
            }
            Err(error) => {
                tracing::error!(%error, scope = scope.describe(), "export failed");
                let _ = out.tx.blocking_send(Chunk::Failed(error.to_string()));
            }
        }
    });
    let mut response = Response::new(ChannelBody { rx, ended: false }.boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A purge goes through the log like every other change: in order with
/// the messages around it (and, in a cluster, on every node).
async fn purge<L: Log<Ticket>>(chat: &Chat<L>, scope: PurgeScope) -> Response<AdminBody> {
    let described = scope.describe().to_owned();
    match chat.apply(Change::Purge(scope.command())).await {
        Ok(Outcome::Purged { count }) => {
            tracing::info!(purged = count, scope = described, "purged");
            let json = serde_json::json!({ "purged": count }).to_string();
            whole(StatusCode::OK, "application/json", json.into_bytes())
        }
        Ok(other) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("purge of {described}: unexpected outcome {other:?}"),
        ),
        Err(error) => {
            tracing::error!(%error, scope = described, "purge failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("purge of {described} failed: {error}"),
            )
        }
    }
}

fn whole(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<AdminBody> {
    let body = Full::new(Bytes::from(body))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, mut message: String) -> Response<AdminBody> {
    message.push('\n');
    whole(status, "text/plain; charset=utf-8", message.into_bytes())
}

/// One message down an export's body channel.
enum Chunk {
    /// The next bytes of the export.
    Data(Bytes),
    /// The export is complete.
    End,
    /// The export failed; the body ends with an error.
    Failed(String),
}

/// An `io::Write` that hands [`CHUNK_BYTES`]-sized chunks to a body channel,
/// waiting (it runs on the blocking pool) while the channel is full.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Chunk>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Chunk::Data(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the admin client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A response body fed by a channel. It ends well only after
/// [`Chunk::End`]: a failure, or a channel closed without it (the task
/// that fed it died), ends it with an error, so hyper aborts the response
/// and the client sees the export cut short rather than a well-formed
/// partial one.
struct ChannelBody {
    rx: mpsc::Receiver<Chunk>,
    ended: bool,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let next = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        Poll::Ready(match next {
            Some(Chunk::Data(data)) => Some(Ok(Frame::data(data))),
            Some(Chunk::End) => {
                self.ended = true;
                None
            }
            Some(Chunk::Failed(why)) => {
                self.ended = true;
                Some(Err(io::Error::other(why)))
            }
            None => {
                self.ended = true;
                Some(Err(io::Error::other("the export stopped before its end")))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET_FILE);
        // A socket file whose listener is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Only the socket is left in the directory: no temporary names.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = format!("{:#}", bind(&path).unwrap_err());
        assert!(err.contains("another chatd server answers"), "{err}");
        drop(listener);

        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        let err = format!("{:#}", bind(&path).unwrap_err());
        assert!(err.contains("not a socket"), "{err}");
    }

    #[tokio::test]
    async fn chunk_writer_sends_bounded_chunks() {
        let (tx, mut rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter {
                buf: Vec::new(),
                tx,
            };
            for _ in 0..3 * CHUNK_BYTES / 1000 {
                out.write_all(&[b'x'; 1000]).unwrap();
            }
            out.flush().unwrap();
        });
        let mut total = 0;
        while let Some(Chunk::Data(chunk)) = rx.recv().await {
            assert!(chunk.len() < CHUNK_BYTES + 1000);
            total += chunk.len();
        }
        writer.await.unwrap();
        assert_eq!(total, 3 * CHUNK_BYTES / 1000 * 1000);
    }

    async fn body_of(chunks: Vec<Chunk>) -> Result<Vec<u8>, io::Error> {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for chunk in chunks {
            tx.send(chunk).await.unwrap();
        }
        drop(tx);
        let body = ChannelBody { rx, ended: false };
        body.collect().await.map(|whole| whole.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn an_export_body_ends_well_only_after_its_end() {
        let data = |s: &'static str| Chunk::Data(Bytes::from_static(s.as_bytes()));
        assert_eq!(
            body_of(vec![data("[\n"), data("]\n"), Chunk::End])
                .await
                .unwrap(),
            b"[\n]\n"
        );
        let failed = body_of(vec![data("[\n"), Chunk::Failed("disk".into())]).await;
        assert_eq!(failed.unwrap_err().to_string(), "disk");
        // The feeding task died (a panic): no End, no Failed.
        let died = body_of(vec![data("[\n")]).await;
        assert!(died.unwrap_err().to_string().contains("before its end"));
    }

    #[test]
    fn chunk_writer_notices_a_gone_client() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut out = ChunkWriter {
            buf: Vec::new(),
            tx,
        };
        let err = out.write_all(&[0; CHUNK_BYTES]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
