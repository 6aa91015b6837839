//! The CLI side of the admin channel: reaching the running server through
//! `<data_dir>/admin.sock`, or the store file itself when no server runs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::{ExportScope, PurgeScope, SOCKET_FILE, exported_count};
use crate::presence::UserPresence;
use crate::store::{DB_FILE_NAME, Store, StoreError};

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nothing listens on the socket (or it does not exist).
    #[error(
        "no chatd server is running for data directory {} (no answer on {})",
        data_dir.display(),
        socket.display()
    )]
    NotRunning {
        /// The data directory asked about.
        data_dir: PathBuf,
        /// The socket tried.
        socket: PathBuf,
    },

    /// The socket exists but this user may not connect.
    #[error(
        "permission denied on {}: run this as the user chatd runs as (or root)",
        socket.display()
    )]
    Denied {
        /// The socket tried.
        socket: PathBuf,
    },

    /// The connection failed or broke.
    #[error("cannot talk to the chatd server on {}: {reason}", socket.display())]
    Connection {
        /// The socket tried.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The server refused the request (a 4xx answer); its words.
    #[error("the chatd server refused: {0}")]
    Refused(String),

    /// The server failed to carry out the request (a 5xx answer); its words.
    #[error("the chatd server failed: {0}")]
    Failed(String),

    /// The export stream ended early: the server hit an error or stopped.
    #[error("the export was cut short ({0}); see the chatd server's log")]
    CutShort(String),

    /// Writing what the server sent failed.
    #[error("cannot write the export: {0}")]
    Write(#[source] io::Error),

    /// The answer was not what this CLI expects (a different chatd version?).
    #[error("unexpected answer from the chatd server: {0}")]
    Protocol(String),
}

/// A client of one data directory's admin socket. Its methods block.
pub struct AdminClient {
    data_dir: PathBuf,
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl AdminClient {
    /// A client for the server of `data_dir`; connects on each request.
    pub fn new(data_dir: &Path) -> anyhow::Result<AdminClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(AdminClient {
            data_dir: data_dir.to_owned(),
            socket: data_dir.join(SOCKET_FILE),
            runtime,
        })
    }

    /// Whether a server answers on the socket.
    pub fn check(&self) -> Result<(), AdminError> {
        self.runtime.block_on(self.connect()).map(drop)
    }

    /// Who is online now.
    pub fn online(&self) -> Result<Vec<UserPresence>, AdminError> {
        self.runtime.block_on(async {
            let response = self.request(Method::GET, "/online").await?;
            let body = collect(response).await?;
            serde_json::from_slice(&body).map_err(|e| AdminError::Protocol(e.to_string()))
        })
    }

    /// Streams the export of `scope` into `out` chunk by chunk as it
    /// arrives; returns how many messages it held.
    pub fn export(&self, scope: &ExportScope, out: &mut impl Write) -> Result<u64, AdminError> {
        self.runtime.block_on(async {
            let path = format!("/export?{}", scope.to_query());
            let mut body = self.request(Method::GET, &path).await?.into_body();
            let mut newlines = 0u64;
            let mut tail = [0u8; 2];
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| AdminError::CutShort(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    newlines += data.iter().filter(|&&b| b == b'\n').count() as u64;
                    for &byte in data.iter().rev().take(2).rev() {
                        tail = [tail[1], byte];
                    }
                    out.write_all(&data).map_err(AdminError::Write)?;
                }
            }
            // Every export ends with `]` and a newline: anything else was
            // cut short, whatever the transport said.
            if tail != *b"]\n" {
                return Err(AdminError::CutShort(
                    "it does not end with the closing bracket".into(),
                ));
            }
            out.flush().map_err(AdminError::Write)?;
            Ok(exported_count(newlines))
        })
    }

    /// Purges `scope` on the server; returns how many messages went.
    pub fn purge(&self, scope: &PurgeScope) -> Result<u64, AdminError> {
        #[derive(serde::Deserialize)]
        struct Purged {
            purged: u64,
        }
        self.runtime.block_on(async {
            let path = format!("/purge?{}", scope.to_query());
            let body = collect(self.request(Method::POST, &path).await?).await?;
            serde_json::from_slice::<Purged>(&body)
                .map(|p| p.purged)
                .map_err(|e| AdminError::Protocol(e.to_string()))
        })
    }

    async fn connect(&self) -> Result<UnixStream, AdminError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|error| match error.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    AdminError::NotRunning {
                        data_dir: self.data_dir.clone(),
                        socket: self.socket.clone(),
                    }
                }
                io::ErrorKind::PermissionDenied => AdminError::Denied {
                    socket: self.socket.clone(),
                },
                _ => self.broken(error),
            })
    }

    // Sends one request on a fresh connection; a non-2xx answer is an error
    // carrying the server's message.
    async fn request(&self, method: Method, path: &str) -> Result<Response<Incoming>, AdminError> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.broken(e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin connection ended");
            }
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "chatd")
            .body(Empty::<Bytes>::new())
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.broken(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = collect(response).await.unwrap_or_default();
        let message = String::from_utf8_lossy(&body).trim().to_owned();
        Err(if status.is_client_error() {
            AdminError::Refused(message)
        } else {
            AdminError::Failed(message)
        })
    }

    fn broken(&self, error: impl std::fmt::Display) -> AdminError {
        AdminError::Connection {
            socket: self.socket.clone(),
            reason: error.to_string(),
        }
    }
}

async fn collect(response: Response<Incoming>) -> Result<Bytes, AdminError> {
    response
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| AdminError::Protocol(format!("cannot read the answer: {e}")))
}

/// Where an export or purge runs.
pub enum StoreAccess {
    /// No server holds the store: the CLI opened it itself.
    Direct(Store),
    /// A server holds the store and answers on its admin socket.
    Server(AdminClient),
}

impl StoreAccess {
    /// Picks the way in for `data_dir` by redb's file lock: if the store
    /// opens, no server runs and the CLI works on the file; if it is locked,
    /// the server that holds it is asked through `admin.sock`. Never creates
    /// a data directory or store that is not there.
    pub fn reach(data_dir: &Path) -> anyhow::Result<StoreAccess> {
        let db = data_dir.join(DB_FILE_NAME);
        match std::fs::metadata(&db) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                // Tell a missing directory from an unreadable one.
                let missing = match std::fs::read_dir(data_dir) {
                    Ok(_) => db.display().to_string(),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        data_dir.display().to_string()
                    }
                    Err(error) => {
                        return Err(error).with_context(|| {
                            format!(
                                "cannot read the data directory {}: run this as the user \
                                 chatd runs as (or root), or check --data-dir",
                                data_dir.display()
                            )
                        });
                    }
                };
                return Err(anyhow!(
                    "no chatd history in {}: {missing} does not exist (is --data-dir right?)",
                    data_dir.display()
                ));
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "cannot read {}: run this as the user chatd runs as (or root)",
                        db.display()
                    )
                });
            }
        }
        match Store::open(data_dir) {
            Ok(store) => Ok(StoreAccess::Direct(store)),
            Err(StoreError::Locked { .. }) => {
                let client = AdminClient::new(data_dir)?;
                match client.check() {
                    Ok(()) => Ok(StoreAccess::Server(client)),
                    Err(AdminError::NotRunning { socket, .. }) => Err(anyhow!(
                        "{} is in use by another process, but no chatd server answers on {}: \
                         another chatd export or purge may be running on it; try again when \
                         it is done",
                        db.display(),
                        socket.display()
                    )),
                    Err(error) => Err(error.into()),
                }
            }
            Err(error @ StoreError::NewerSchema { .. }) => {
                Err(anyhow::Error::new(error).context(format!(
                    "cannot read {}: it was written by a newer chatd; use that version",
                    db.display()
                )))
            }
            Err(error) => Err(anyhow::Error::new(error).context(format!(
                "cannot open the message store in {}",
                data_dir.display()
            ))),
        }
    }
}
