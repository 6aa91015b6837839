//! The conformance server: chatd's Engine.IO and Socket.IO layers wired to
//! the echo handlers the official protocol test suites expect
//! (socketio/engine.io-protocol and socketio/socket.io-protocol, folder
//! `test-suite`). Proof that the protocol layers are generic: the chat
//! domain is just another handler on the same code.
//!
//! `cargo run --example conformance -- --port 3000`, then run the suites
//! (see `scripts/conformance.sh`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatd::engineio::{
    CloseReason, EngineConfig, EngineHandler, Outbound, Outbox, ProtocolError, RequestInfo,
    SessionHandler,
};
use chatd::server::Server;
use chatd::server::limits::{ConnectionLimits, Gate};
use chatd::socketio::{Connection, Event, Handler, Socket, SocketIo};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Serve the official protocol test suites' reference setup.
#[derive(argh::FromArgs)]
struct Args {
    /// port to listen on, on 127.0.0.1 (the suites use 3000)
    #[argh(option, default = "3000")]
    port: u16,
}

/// The Socket.IO suite's handler: `auth` echo on connect, `message` →
/// `message-back`, `message-with-ack` → ack with the same arguments.
struct Echo;

impl Handler for Echo {
    type State = ();

    fn has_namespace(&self, nsp: &str) -> bool {
        nsp == "/" || nsp == "/custom"
    }

    async fn connect(
        &self,
        socket: &Socket,
        auth: Option<Value>,
        _: &RequestInfo,
    ) -> Result<(), Value> {
        let auth = auth.unwrap_or_else(|| Value::Object(Default::default()));
        let socket = socket.clone();
        // The suite reads the CONNECT answer and the `auth` event with two
        // one-shot listeners; the reference server's timing keeps them in
        // separate TCP reads, so this one does too.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            socket.emit("auth", &auth);
        });
        Ok(())
    }

    async fn connected(&self, _: &mut (), _: &Socket) {}

    async fn event(&self, _: &mut (), socket: &Socket, event: Event) {
        if socket.nsp() != "/" {
            return;
        }
        let name = event.name().map(str::to_owned);
        let Value::Array(mut args) = event.args else {
            return;
        };
        match (name.as_deref(), event.ack) {
            (Some("message"), _) => {
                args[0] = Value::from("message-back");
                socket.emit_raw(&Value::Array(args), &event.attachments);
            }
            (Some("message-with-ack"), Some(id)) => {
                args.remove(0);
                socket.ack_raw(id, &Value::Array(args), &event.attachments);
            }
            _ => {}
        }
    }

    async fn disconnect(&self, _: (), _: &Socket, _: &'static str) {}
}

/// The Engine.IO suite's handler: every message comes straight back.
struct EngineEcho {
    outbox: Outbox,
}

impl SessionHandler for EngineEcho {
    async fn on_text(&mut self, _: &RequestInfo, text: &str) -> Result<(), ProtocolError> {
        let mut packet = String::with_capacity(1 + text.len());
        packet.push('4');
        packet.push_str(text);
        self.outbox.send_text(Bytes::from(packet));
        Ok(())
    }

    async fn on_binary(&mut self, data: Bytes) -> Result<(), ProtocolError> {
        self.outbox.send(Outbound::Binary(data));
        Ok(())
    }

    async fn on_close(self, _: CloseReason) {}
}

/// One session of either suite, chosen by the request path.
enum Session {
    Engine(EngineEcho),
    SocketIo(Box<Connection<Echo>>),
}

impl SessionHandler for Session {
    async fn on_text(&mut self, request: &RequestInfo, text: &str) -> Result<(), ProtocolError> {
        match self {
            Session::Engine(session) => session.on_text(request, text).await,
            Session::SocketIo(session) => session.on_text(request, text).await,
        }
    }

    async fn on_binary(&mut self, data: Bytes) -> Result<(), ProtocolError> {
        match self {
            Session::Engine(session) => session.on_binary(data).await,
            Session::SocketIo(session) => session.on_binary(data).await,
        }
    }

    async fn on_close(self, reason: CloseReason) {
        match self {
            Session::Engine(session) => session.on_close(reason).await,
            Session::SocketIo(session) => (*session).on_close(reason).await,
        }
    }
}

/// `/engine.io/` gets the raw echo, `/socket.io/` the Socket.IO echo.
struct Suites {
    socketio: SocketIo<Echo>,
}

impl EngineHandler for Suites {
    type Session = Session;

    fn open(&self, outbox: Outbox, path: &str, info: &RequestInfo) -> Session {
        if path == "/engine.io/" {
            Session::Engine(EngineEcho { outbox })
        } else {
            Session::SocketIo(Box::new(self.socketio.open(outbox, path, info)))
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = argh::from_env();
    let mut server = Server::new(
        Arc::new(Suites {
            socketio: SocketIo::new(Arc::new(Echo), Duration::from_millis(1000), 1_000_000),
        }),
        EngineConfig {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            max_payload: 1_000_000,
            outbound_queue: 1024,
            outbound_bytes: chatd::engineio::outbox::DEFAULT_MAX_BYTES,
        },
    );
    server.paths = vec!["/engine.io/", "/socket.io/"];
    // The suites open many sessions from one address.
    server.gate = Gate::new(ConnectionLimits {
        total: 10_000,
        joined_per_address: 10_000,
        unjoined_per_address: 10_000,
        ..ConnectionLimits::default()
    });
    let server = Arc::new(server);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("conformance server listening on 127.0.0.1:{}", args.port);
    server.accept_loop(listener, CancellationToken::new()).await;
    Ok(())
}
