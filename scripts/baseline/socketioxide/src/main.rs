//! The second benchmark baseline: the events of chatd's contract
//! (PROTOCOL.md §1: handshake `{user, peer}`, `chat message` with its ack,
//! `history` on join, `online`) on socketioxide, with history in memory and
//! no auth, over plain ws/http. It mirrors scripts/baseline/server.mjs event
//! for event, so scripts/bench.sh measures three servers doing the same work
//! (less chatd's durable store, which neither baseline has).
//!
//! `chatd-baseline-socketioxide --port N` (0 picks a free port; `Listening
//! at N` on stdout says which, as chatd and the Node baseline do).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::Socket;
use tokio::net::TcpListener;

/// The longest text accepted, in bytes of UTF-8 (the contract's default).
const MAX_TEXT_BYTES: usize = 4096;
/// Messages sent as `history` on join.
const HISTORY: usize = 50;
/// Packets a socket may have queued for sending. socketioxide's default
/// (128) drops emits to a socket that falls behind; the benchmark counts any
/// acknowledged message that never arrives as lost, and neither chatd (its
/// outbound budget is bytes, 4 MiB) nor Node drops that early.
const MAX_BUFFERED_PACKETS: usize = 4096;

/// The message object, field for field and in the contract's order.
#[derive(Serialize)]
struct Message {
    #[serde(rename = "roomId")]
    room_id: String,
    id: String,
    from: String,
    text: String,
    to: String,
    time: String,
    #[serde(rename = "__v")]
    version: u8,
    ts: u64,
}

/// The ack of an accepted message.
#[derive(Serialize)]
struct Accepted<'a> {
    ok: bool,
    message: &'a Message,
}

/// The ack (or `chat error`) of a refused message.
#[derive(Serialize)]
struct Refusal {
    ok: bool,
    error: &'static str,
    reason: &'static str,
}

/// Everything the server keeps: history per room, presence per room, the
/// last `ts` handed out.
#[derive(Default)]
struct Chat {
    history: HashMap<String, Vec<Arc<Message>>>,
    /// room -> user -> connections of that user in the room.
    members: HashMap<String, HashMap<String, usize>>,
    last_ts: u64,
}

/// The shared state; one lock, never held across an await.
type Shared = Arc<Mutex<Chat>>;

/// The handshake's auth payload (or query parameters; auth wins).
#[derive(Deserialize, Default, Clone)]
struct Handshake {
    user: Option<String>,
    peer: Option<String>,
}

/// Who a connection is, once its handshake passed.
#[derive(Clone)]
struct Identity {
    user: String,
    peer: Option<String>,
    room: Option<String>,
}

/// A refused handshake: the CONNECT_ERROR message.
#[derive(Debug)]
struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Refused {}

/// Whether the client asked for an ack: without one a refusal goes out as
/// a `chat error` event, as the contract says (socketioxide's `AckSender`
/// silently does nothing then).
struct WantsAck(bool);

impl<A: Adapter> FromMessageParts<A> for WantsAck {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(WantsAck(ack_id.is_some()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args().skip_while(|a| a != "--port").nth(1) {
        Some(port) => port.parse().map_err(|_| format!("bad --port {port:?}"))?,
        None => 5001,
    };
    let (service, io) = SocketIo::builder()
        .max_payload(65_536)
        .max_buffer_size(MAX_BUFFERED_PACKETS)
        .build_svc();
    let chat = Shared::default();
    io.ns(
        "/",
        {
            let chat = chat.clone();
            async move |socket: SocketRef, TryData(auth): TryData<Handshake>| {
                on_connect(socket, auth.unwrap_or_default(), chat).await
            }
        }
        .with(
            async |socket: SocketRef, TryData(auth): TryData<Handshake>| {
                identify(&socket, auth.unwrap_or_default()).map(|_| ())
            },
        ),
    );

    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    println!("Listening at {}", listener.local_addr()?.port());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let _ = connection.await;
        });
    }
}

/// The handshake's user and peer, checked; query parameters fill in what
/// the auth payload lacks.
fn identify(socket: &SocketRef, auth: Handshake) -> Result<Identity, Refused> {
    let mut handshake = auth;
    let query = socket.req_parts().uri.query().unwrap_or("");
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "user" if handshake.user.is_none() => handshake.user = Some(value.into_owned()),
            "peer" if handshake.peer.is_none() => handshake.peer = Some(value.into_owned()),
            _ => {}
        }
    }
    let user = handshake.user.filter(|u| valid_name(u));
    let Some(user) = user else {
        return Err(Refused("invalid handshake: user"));
    };
    if let Some(peer) = &handshake.peer
        && (!valid_name(peer) || *peer == user)
    {
        return Err(Refused("invalid handshake: peer"));
    }
    let room = handshake.peer.as_deref().map(|peer| room_of(&user, peer));
    Ok(Identity {
        user,
        peer: handshake.peer,
        room,
    })
}

/// A joined connection: its handlers, presence and history.
async fn on_connect(socket: SocketRef, auth: Handshake, chat: Shared) {
    // The middleware already refused a bad handshake.
    let Ok(me) = identify(&socket, auth) else {
        return;
    };
    // Handlers first, before anything else, so no packet finds none.
    socket.on("chat message", {
        let (me, chat) = (me.clone(), chat.clone());
        async move |socket: SocketRef,
                    TryData(payload): TryData<Value>,
                    WantsAck(wants_ack): WantsAck,
                    ack: AckSender| {
            on_message(&socket, &me, &chat, payload.ok(), wants_ack, ack).await;
        }
    });
    socket.on_disconnect({
        let (me, chat) = (me.clone(), chat.clone());
        async move |socket: SocketRef| on_disconnect(&socket, &me, &chat).await
    });

    socket.join(user_room(&me.user));
    let Some(room) = &me.room else {
        let _ = socket.emit("online", &[&me.user]);
        return;
    };
    socket.join(room.clone());
    let (changed, online, history) = {
        let mut chat = chat.lock().expect("no handler panics holding the lock");
        let members = chat.members.entry(room.clone()).or_default();
        let count = members.entry(me.user.clone()).or_default();
        *count += 1;
        let changed = *count == 1;
        let online = sorted(members);
        let history = chat.history.get(room).map_or(&[][..], Vec::as_slice);
        let history = history[history.len().saturating_sub(HISTORY)..].to_vec();
        (changed, online, history)
    };
    if changed {
        let _ = socket.to(room.clone()).emit("online", &online).await;
    }
    let _ = socket.emit("online", &online);
    let _ = socket.emit("history", &history);
}

/// One `chat message`: checked, kept, sent to both users' other
/// connections, acknowledged.
async fn on_message(
    socket: &SocketRef,
    me: &Identity,
    chat: &Shared,
    payload: Option<Value>,
    wants_ack: bool,
    ack: AckSender,
) {
    match accept(socket, me, chat, payload) {
        Ok(message) => {
            let rooms = [user_room(&message.from), user_room(&message.to)];
            let _ = socket.to(rooms).emit("chat message", &*message).await;
            let _ = ack.send(&Accepted {
                ok: true,
                message: &message,
            });
        }
        Err(reason) => {
            let refusal = Refusal {
                ok: false,
                error: "Message is not accepted",
                reason,
            };
            if wants_ack {
                let _ = ack.send(&refusal);
            } else {
                let _ = socket.emit("chat error", &refusal);
            }
        }
    }
}

/// Checks a message as the contract says and keeps it; the refusal reason
/// otherwise.
fn accept(
    socket: &SocketRef,
    me: &Identity,
    chat: &Shared,
    payload: Option<Value>,
) -> Result<Arc<Message>, &'static str> {
    let (text, to) = match payload {
        Some(Value::String(text)) => (text, me.peer.clone()),
        Some(Value::Object(mut object)) => match object.remove("text") {
            Some(Value::String(text)) => {
                let to = match object.remove("to") {
                    Some(Value::String(to)) => Some(to),
                    None | Some(Value::Null) => me.peer.clone(),
                    Some(_) => return Err("invalid_peer"),
                };
                (text, to)
            }
            _ => return Err("bad_payload"),
        },
        _ => return Err("bad_payload"),
    };
    if text.trim().is_empty() {
        return Err("empty");
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err("too_long");
    }
    let Some(to) = to else {
        return Err("no_peer");
    };
    if !valid_name(&to) || to == me.user {
        return Err("invalid_peer");
    }
    let room_id = room_of(&me.user, &to);
    let mut chat = chat.lock().expect("no handler panics holding the lock");
    let ts = now_micros().max(chat.last_ts + 1);
    chat.last_ts = ts;
    let message = Arc::new(Message {
        room_id: room_id.clone(),
        id: socket.id.to_string(),
        from: me.user.clone(),
        text,
        to,
        time: stamp(ts / 1_000_000),
        version: 0,
        ts,
    });
    chat.history
        .entry(room_id)
        .or_default()
        .push(message.clone());
    Ok(message)
}

/// Presence: the room hears `online` when the user's last connection in it
/// goes.
async fn on_disconnect(socket: &SocketRef, me: &Identity, chat: &Shared) {
    let Some(room) = &me.room else { return };
    let online = {
        let mut chat = chat.lock().expect("no handler panics holding the lock");
        let Some(members) = chat.members.get_mut(room) else {
            return;
        };
        let count = members.entry(me.user.clone()).or_insert(1);
        *count -= 1;
        if *count > 0 {
            return;
        }
        members.remove(&me.user);
        let online = sorted(members);
        if members.is_empty() {
            chat.members.remove(room);
        }
        online
    };
    let _ = socket.to(room.clone()).emit("online", &online).await;
}

/// The contract's user name rule: 1–32 of `A–Z a–z 0–9 . -`, starting with
/// a letter or digit.
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=32).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-')
}

/// `dm:<first>_<second>`, the names in byte order.
fn room_of(a: &str, b: &str) -> String {
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    format!("dm:{first}_{second}")
}

/// The socketioxide room every connection of `user` is in.
fn user_room(user: &str) -> String {
    format!("user:{user}")
}

fn sorted(members: &HashMap<String, usize>) -> Vec<String> {
    let mut names: Vec<String> = members.keys().cloned().collect();
    names.sort_unstable();
    names
}

fn now_micros() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    now.map_or(0, |d| d.as_micros() as u64)
}

/// `DD/MM/YYYY, h:mm:ss am|pm` in UTC (the Node baseline's format).
fn stamp(unix_seconds: u64) -> String {
    let (days, secs) = (unix_seconds / 86_400, unix_seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let h12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let half = if hour < 12 { "am" } else { "pm" };
    format!("{day:02}/{month:02}/{year}, {h12}:{minute:02}:{second:02} {half}")
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's
/// algorithm for the proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_like_the_node_baseline() {
        // 2025-12-28T02:45:46Z, the contract's example (in UTC).
        assert_eq!(stamp(1_766_889_946), "28/12/2025, 2:45:46 am");
        assert_eq!(stamp(0), "01/01/1970, 12:00:00 am");
        assert_eq!(stamp(951_825_600), "29/02/2000, 12:00:00 pm");
    }

    #[test]
    fn names_and_rooms() {
        assert!(valid_name("Dummy-1") && valid_name("a.b"));
        assert!(!valid_name("") && !valid_name("-a") && !valid_name(&"a".repeat(33)));
        assert_eq!(room_of("Dummy-2", "Dummy-1"), "dm:Dummy-1_Dummy-2");
    }
}
