//! A polling POST as the server receives it: the body arriving in chunks of
//! any size (the first byte picks it) into one bounded buffer, decoded into
//! packets, and handed to a Socket.IO connection in order (CONNECT,
//! events, attachments within their budget or not). Nothing panics and the
//! buffer never holds more than the limit.
#![no_main]
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chatd::engineio::packet::EnginePacket;
use chatd::engineio::payload::{self, Record};
use chatd::engineio::{Outbox, RequestInfo, SessionHandler, Unlimited};
use chatd::server::body::BodyBuffer;
use chatd::socketio::{Connection, Event, Handler, Socket};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The largest body and the attachments budget, small so both are hit.
const LIMIT: usize = 4096;

/// An application that admits everyone and ignores what they send.
struct Sink;

impl Handler for Sink {
    type State = ();

    fn has_namespace(&self, nsp: &str) -> bool {
        nsp == "/"
    }

    async fn connect(&self, _: &Socket, _: Option<Value>, _: &RequestInfo) -> Result<(), Value> {
        Ok(())
    }

    async fn connected(&self, _: &mut (), _: &Socket) {}

    async fn event(&self, _: &mut (), _: &Socket, _: Event) {}

    async fn disconnect(&self, _: (), _: &Socket, _: &'static str) {}
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let mut buffer = BodyBuffer::new(LIMIT);
    for piece in body.chunks(usize::from(chunk).max(1)) {
        if buffer.push(piece).is_err() {
            assert!(body.len() > LIMIT);
            return;
        }
    }
    let body = buffer.finish();
    let Ok(records) = payload::decode(&body) else {
        return;
    };
    runtime().block_on(async {
        let (outbox, _receiver) = Outbox::new(64);
        let info = RequestInfo {
            query: "".into(),
            remote: "127.0.0.1:1".parse().unwrap(),
            place: Arc::new(Unlimited),
        };
        let (joined, _watched) = tokio::sync::oneshot::channel();
        let mut connection = Connection::new(Arc::new(Sink), outbox, joined, LIMIT);
        for record in records {
            let handled = match record {
                Record::Packet(EnginePacket::Message(text)) => connection.on_text(&info, text).await,
                Record::Binary(data) => connection.on_binary(Bytes::from(data)).await,
                Record::Packet(_) => Ok(()),
            };
            if handled.is_err() {
                break;
            }
        }
        connection.on_close(chatd::engineio::CloseReason::TransportClose).await;
    });
});
