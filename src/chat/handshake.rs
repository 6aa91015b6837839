//! The Socket.IO handshake of the chat: who connects (`user`), to whom
//! (`peer`), from where in the history (`since`), and the token that proves
//! it. A refusal is the CONNECT_ERROR payload of the contract.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::auth::TokenKey;
use super::names::valid_user_name;
use super::rate::TokenBucket;
use super::requests::REQUEST_RATE;
use super::room::dm_room;
use crate::engineio::RequestInfo;
use crate::metrics::{HandshakeRefusal, METRICS};
use crate::presence::ConnKey;

/// One connection's chat state, made by a successful handshake.
pub struct ChatSession {
    /// Its key in presence and fan-out.
    pub key: ConnKey,
    /// Who it is.
    pub user: Arc<str>,
    /// The peer its handshake named, if any.
    pub peer: Option<Arc<str>>,
    /// The room with that peer.
    pub room: Option<Arc<str>>,
    /// The `ts` of the last message the client has of that room.
    pub since: Option<u64>,
    /// Places for changes awaiting their commit; see
    /// [`ChatConfig::unacked_per_connection`](super::service::ChatConfig).
    pub unacked: Arc<Semaphore>,
    /// The connection's budget of `history` and `conversations` requests.
    pub requests: TokenBucket,
    /// Rooms this connection has found to exist (or created): a message to
    /// one of them needs no new-room check. At most [`KNOWN_ROOMS`].
    pub known_rooms: Vec<Arc<str>>,
}

/// How many rooms a connection remembers as known.
pub const KNOWN_ROOMS: usize = 16;

/// What a handshake asks for, read from the auth payload and the query.
pub struct Handshake {
    /// Who connects.
    pub user: String,
    /// The peer, if any.
    pub peer: Option<String>,
    /// The `since` cursor, if any.
    pub since: Option<u64>,
}

/// Reads and checks a handshake: names, `since`, and the token when `auth`
/// is on. `Err` is the CONNECT_ERROR payload.
pub fn check(
    auth_payload: Option<&Value>,
    request: &RequestInfo,
    auth: Option<&TokenKey>,
) -> Result<Handshake, Value> {
    let field = |name: &str| -> Option<String> {
        match auth_payload.and_then(|payload| payload.get(name)) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => request.query_param(name).map(Cow::into_owned),
        }
    };
    let invalid = |why: &str| {
        METRICS.handshake_refused(HandshakeRefusal::Invalid);
        json!({"message": format!("invalid handshake: {why}")})
    };
    let user = field("user").ok_or_else(|| invalid("user is required"))?;
    if !valid_user_name(&user) {
        return Err(invalid(
            "user must be 1-32 characters of A-Z a-z 0-9 . - starting with a letter or digit",
        ));
    }
    let peer = match field("peer").filter(|peer| !peer.is_empty()) {
        None => None,
        Some(peer) if !valid_user_name(&peer) => {
            return Err(invalid("peer is not a valid user name"));
        }
        Some(peer) if peer == user => return Err(invalid("peer must differ from user")),
        Some(peer) => Some(peer),
    };
    let since = match field("since").filter(|since| !since.is_empty()) {
        None => None,
        Some(since) => Some(
            since
                .parse::<u64>()
                .map_err(|_| invalid("since must be a message ts"))?,
        ),
    };
    if let Some(key) = auth {
        let token = field("token").unwrap_or_default();
        if let Err(error) = key.verify(&token, &user) {
            tracing::info!(%user, remote = %request.remote, %error, "handshake refused");
            METRICS.handshake_refused(HandshakeRefusal::Unauthorized);
            return Err(json!({"message": "unauthorized"}));
        }
    }
    Ok(Handshake { user, peer, since })
}

impl ChatSession {
    /// The session of an admitted handshake.
    pub fn new(key: ConnKey, handshake: Handshake, unacked: usize) -> ChatSession {
        let Handshake { user, peer, since } = handshake;
        let room = peer.as_deref().map(|peer| Arc::from(dm_room(&user, peer)));
        ChatSession {
            key,
            user: user.into(),
            peer: peer.map(Into::into),
            room,
            since,
            unacked: Arc::new(Semaphore::new(unacked.max(1))),
            requests: TokenBucket::new(REQUEST_RATE, std::time::Instant::now()),
            known_rooms: Vec::new(),
        }
    }
}
