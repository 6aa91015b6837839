//! TLS on accepted TCP connections, driven through rustls' unbuffered API.
//!
//! tokio-rustls drives rustls' buffered API, which keeps a 4 KiB receive
//! buffer for as long as a connection lives; with 10,000 idle websockets
//! that was 4 of the 14 KiB each one cost the server. Here the buffers
//! (received records, decrypted data, records to send) hold memory while
//! the connection is busy and none once it waits: the socket is read only
//! after it has become readable, so an idle connection has no read buffer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much room one read from the socket asks for (as rustls' own reads).
const READ_SIZE: usize = 4096;

/// The most received bytes held while a record or handshake message is
/// incomplete: rustls refuses handshake messages over 64 KiB, and a record
/// is at most 16 KiB plus its overhead.
const MAX_INCOMING: usize = 64 * 1024 + 18 * 1024;

/// The most plaintext one write encrypts, so the records waiting for the
/// socket stay bounded however much the caller hands over.
const MAX_WRITE: usize = 64 * 1024;

/// Room for one record's header, tag and padding, to size the buffer that
/// receives encrypted records before rustls is asked to fill it.
const RECORD_OVERHEAD: usize = 64;

/// The payload of a full TLS record.
const MAX_FRAGMENT: usize = 16 * 1024;

/// Accepts TLS connections with one server configuration.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl From<Arc<ServerConfig>> for TlsAcceptor {
    fn from(config: Arc<ServerConfig>) -> Self {
        TlsAcceptor { config }
    }
}

impl TlsAcceptor {
    /// Completes the server side of a TLS handshake on `tcp`.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let tls = UnbufferedServerConnection::new(self.config.clone()).map_err(invalid)?;
        let mut stream = TlsStream {
            tcp,
            tls,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            taken: 0,
            outgoing: Vec::new(),
            sent: 0,
            peer_closed: false,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }
}

/// A TLS connection over TCP, server side, after its handshake.
pub struct TlsStream {
    tcp: TcpStream,
    tls: UnbufferedServerConnection,
    /// Received bytes rustls has not consumed: at most an incomplete record
    /// once processed.
    incoming: Vec<u8>,
    /// Decrypted data the reader has not taken yet, from `taken` on.
    plaintext: Vec<u8>,
    taken: usize,
    /// Encrypted records for the socket, sent up to `sent`.
    outgoing: Vec<u8>,
    sent: usize,
    /// The client sent close_notify: reads are at end of stream.
    peer_closed: bool,
}

/// Where the connection is, once rustls has processed what arrived.
enum Phase {
    /// The handshake needs more from the client.
    Handshaking,
    /// Application data may be sent.
    Open,
    /// Both sides sent close_notify.
    Closed,
}

/// What to do when rustls lets application data be written.
enum Action<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Why rustls wrote nothing into the buffer it was given.
enum Unwritten {
    /// The buffer must have this many bytes.
    Needs(usize),
    Failed(io::Error),
}

impl From<EncodeError> for Unwritten {
    fn from(error: EncodeError) -> Self {
        match error {
            EncodeError::InsufficientSize(short) => Unwritten::Needs(short.required_size),
            error => Unwritten::Failed(invalid(error)),
        }
    }
}

impl From<EncryptError> for Unwritten {
    fn from(error: EncryptError) -> Self {
        match error {
            EncryptError::InsufficientSize(short) => Unwritten::Needs(short.required_size),
            error => Unwritten::Failed(invalid(error)),
        }
    }
}

/// Appends what `write` puts into a buffer to `out`, offering `size` bytes
/// first and then as many as `write` says it needs.
fn append<E: Into<Unwritten>>(
    out: &mut Vec<u8>,
    mut size: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + size, 0);
        match write(&mut out[start..]).map_err(Into::into) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(Unwritten::Needs(needed)) if needed > size => size = needed,
            Err(Unwritten::Needs(_)) => {
                out.truncate(start);
                return Err(io::Error::other("rustls refused the room it asked for"));
            }
            Err(Unwritten::Failed(error)) => {
                out.truncate(start);
                return Err(error);
            }
        }
    }
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl TlsStream {
    /// Lets rustls process every complete record in `incoming`, queueing
    /// what it sends in `outgoing` and what it decrypts in `plaintext`, and
    /// performs `action` once application data may be written.
    fn process(&mut self, action: Action<'_>) -> io::Result<Phase> {
        loop {
            let status = self.tls.process_tls_records(&mut self.incoming);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(error) => {
                    self.queue_alert();
                    return Err(invalid(error));
                }
            };
            let phase = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut message) => {
                    append(&mut self.outgoing, 0, |out| message.encode(out))?;
                    None
                }
                // What was encoded waits in `outgoing`, ahead of anything
                // written later, and is sent before the next read waits.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    match action {
                        Action::Nothing => {}
                        Action::Encrypt(data) => {
                            let records = data.len() / MAX_FRAGMENT + 1;
                            let size = data.len() + records * RECORD_OVERHEAD;
                            append(&mut self.outgoing, size, |out| traffic.encrypt(data, out))?;
                        }
                        Action::CloseNotify => {
                            append(&mut self.outgoing, RECORD_OVERHEAD, |out| {
                                traffic.queue_close_notify(out)
                            })?
                        }
                    }
                    Some(Phase::Open)
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Phase::Closed),
                ConnectionState::BlockedHandshake => Some(Phase::Handshaking),
                // Early data is never enabled, and later rustls states are
                // unknown here.
                state => return Err(invalid(format!("unexpected TLS state {state:?}"))),
            };
            self.incoming.drain(..discard);
            if let Some(phase) = phase {
                return Ok(phase);
            }
        }
    }

    /// Encodes the alert rustls queued with the error it returned, so the
    /// client learns why the connection ends; rustls hands out queued
    /// messages before it reports its error again.
    fn queue_alert(&mut self) {
        let status = self.tls.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut message)) = status.state
            && append(&mut self.outgoing, 0, |out| message.encode(out)).is_ok()
        {
            let _ = self.poll_send(None);
        }
    }

    /// Drives the handshake until application data may flow both ways.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let phase = self.process(Action::Nothing)?;
            ready!(self.poll_send(Some(cx)))?;
            if matches!(phase, Phase::Closed) {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            if !self.tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads what the socket has into `incoming`: the number of bytes, 0 at
    /// end of stream. While the socket has nothing the buffers are freed,
    /// unless they hold part of a record.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            if self.incoming.len() >= MAX_INCOMING {
                return Poll::Ready(Err(invalid("TLS message too large")));
            }
            self.incoming.reserve(READ_SIZE);
            match self.tcp.try_read_buf(&mut self.incoming) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                    if self.taken == self.plaintext.len() {
                        (self.plaintext, self.taken) = (Vec::new(), 0);
                    }
                }
                read => return Poll::Ready(read),
            }
        }
    }

    /// Sends the records in `outgoing`, freeing the buffer once all are
    /// sent: rustls' buffered API allocated every record it sent too. With
    /// no context the socket is only tried, and no waker is registered: the
    /// reading half must not take the writing half's wake-up.
    fn poll_send(&mut self, mut cx: Option<&mut Context<'_>>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let unsent = &self.outgoing[self.sent..];
            let written = match cx.as_deref_mut() {
                Some(cx) => ready!(Pin::new(&mut self.tcp).poll_write(cx, unsent))?,
                None => match self.tcp.try_write(unsent) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        return Poll::Pending;
                    }
                    written => written?,
                },
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        (self.outgoing, self.sent) = (Vec::new(), 0);
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.plaintext.len() {
                let ready = &this.plaintext[this.taken..];
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.taken += n;
                if this.taken == this.plaintext.len() {
                    this.plaintext.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(if this.incoming.is_empty() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed within a TLS record",
                    ))
                });
            }
            this.process(Action::Nothing)?;
            // A key update's answer: sent now if the socket takes it, else
            // with the next write.
            let _ = this.poll_send(None)?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(Some(cx)))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        match this.process(Action::Encrypt(data))? {
            Phase::Open => {}
            Phase::Handshaking | Phase::Closed => {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            }
        }
        // The data is taken once encrypted; what the socket does not take
        // now is sent by the next write or flush.
        let _ = this.poll_send(None)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(Some(cx)))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // rustls queues close_notify once, however often this is polled.
        this.process(Action::CloseNotify)?;
        ready!(this.poll_send(Some(cx)))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tls::{CertFiles, read_certs, self_signed};
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server stream and the client's end of it, handshaken with TLS 1.3.
    async fn pair() -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        pair_with(rustls::DEFAULT_VERSIONS).await
    }

    /// A server stream and the client's end of it, handshaken with the
    /// newest of `versions`.
    async fn pair_with(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(tmp.path()).unwrap();
        let acceptor = CertFiles::load(&cert, &key).unwrap().acceptor().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.unwrap()
        });
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(read_certs(&cert, "--ca").unwrap().remove(0))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client = connector.connect(name, tcp).await.unwrap();
        (server.await.unwrap(), client)
    }

    /// Polls a read once: true if it is waiting for the client.
    async fn read_waits(stream: &mut TlsStream) -> bool {
        let mut byte = [0u8; 1];
        poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut byte);
            Poll::Ready(Pin::new(&mut *stream).poll_read(cx, &mut buf).is_pending())
        })
        .await
    }

    #[tokio::test]
    async fn large_messages_cross_in_small_reads_and_an_idle_stream_holds_no_buffer() {
        let (mut server, mut client) = pair().await;
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let echo = tokio::spawn(async move {
            let mut got = vec![0u8; 200_000];
            let mut at = 0;
            while at < got.len() {
                let end = (at + 700).min(got.len());
                at += server.read(&mut got[at..end]).await.unwrap();
            }
            server.write_all(&got).await.unwrap();
            server.flush().await.unwrap();
            assert!(read_waits(&mut server).await);
            assert_eq!(
                (
                    server.incoming.capacity(),
                    server.plaintext.capacity(),
                    server.outgoing.capacity()
                ),
                (0, 0, 0),
                "an idle stream holds no buffer"
            );
            server
        });
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut back = vec![0u8; sent.len()];
        client.read_exact(&mut back).await.unwrap();
        assert!(back == sent, "the echo differs");
        let mut server = echo.await.unwrap();

        // The client's close_notify ends the server's reads; the server's
        // own ends the client's.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.shutdown().await.unwrap();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_tls_1_2_client_chats_both_ways() {
        let (mut server, mut client) = pair_with(&[&rustls::version::TLS12]).await;
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    }

    #[tokio::test]
    async fn a_client_that_does_not_speak_tls_is_refused_with_an_alert() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(tmp.path()).unwrap();
        let acceptor = CertFiles::load(&cert, &key).unwrap().acceptor().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(acceptor.accept(tcp).await.is_err());
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        // A fatal alert record.
        assert_eq!(answer.first(), Some(&21), "{answer:?}");
    }
}
