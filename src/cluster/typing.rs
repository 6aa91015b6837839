//! The typing relay between nodes: a `typing` event is not stored, so it
//! goes on a core NATS subject, best effort, as the contract allows (a
//! lost `typing: true` is resent by the client while the user types).
//!
//! Wire: `<origin node>\n<room>\n<user>\n<peer>\n<0|1>`, every field a
//! validated name, so no field holds a newline.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{ClusterEngine, ClusterError};
use crate::presence::Typing;

/// The subject typing events travel on.
pub const TYPING_SUBJECT: &str = "chatd.typing";

/// Sends `typing` to the other nodes.
pub async fn relay_typing(engine: &ClusterEngine, typing: &Typing) -> Result<(), ClusterError> {
    let wire = format!(
        "{}\n{}\n{}\n{}\n{}",
        engine.node,
        typing.room,
        typing.user,
        typing.peer,
        u8::from(typing.typing)
    );
    engine
        .client
        .publish(TYPING_SUBJECT, Bytes::from(wire))
        .await
        .map_err(|err| ClusterError::engine("relay typing", err))
}

/// The typing events other nodes relay (this node's own are skipped).
pub async fn typing_from_other_nodes(
    engine: &ClusterEngine,
) -> Result<impl Stream<Item = Typing> + use<>, ClusterError> {
    let subscription = engine
        .client
        .subscribe(TYPING_SUBJECT)
        .await
        .map_err(|err| ClusterError::engine("subscribe to typing", err))?;
    let node = engine.node.clone();
    Ok(subscription.filter_map(move |message| {
        let typing = decode_typing(&message.payload)
            .filter(|(origin, _)| *origin != node)
            .map(|(_, typing)| typing);
        async move { typing }
    }))
}

/// Reads one relayed event: its origin node and the event.
pub fn decode_typing(wire: &[u8]) -> Option<(String, Typing)> {
    let mut fields = std::str::from_utf8(wire).ok()?.split('\n');
    let mut field = || fields.next().filter(|f| !f.is_empty()).map(str::to_owned);
    let (origin, room, user, peer) = (field()?, field()?, field()?, field()?);
    let typing = match field()?.as_str() {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    if fields.next().is_some() {
        return None;
    }
    Some((
        origin,
        Typing {
            room,
            user,
            peer,
            typing,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_typing_reads_back_and_junk_is_dropped() {
        let wire = b"n1\ndm:a_b\na\nb\n1";
        let (origin, typing) = decode_typing(wire).expect("decodes");
        assert_eq!(origin, "n1");
        assert_eq!(
            typing,
            Typing {
                room: "dm:a_b".into(),
                user: "a".into(),
                peer: "b".into(),
                typing: true
            }
        );
        for junk in [
            &b""[..],
            b"n1\ndm:a_b\na\nb\n2",
            b"n1\ndm:a_b\na\nb\n1\nx",
            b"n1\n\na\nb\n0",
            b"\xff",
        ] {
            assert_eq!(decode_typing(junk), None);
        }
    }
}
