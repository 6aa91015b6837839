//! The HTTP long-polling transport: a GET takes what the server queued for
//! the client (held until something is queued), a POST delivers the client's
//! packets. HTTP itself stays in `server::http`; this is the session side.

use super::outbox::Outbound;
use super::payload::{self, Encoder};
use super::session::{Session, Transport};
use super::{CloseReason, RequestError, SessionHandler};

/// The answer to a poll that must end without data: `noop`.
pub const NOOP: &str = "6";
/// The close packet.
const CLOSE: &str = "1";

/// Answers a GET: every packet queued, or, once there is none, the first
/// one to be queued. Two GETs at once end the session, as the reference
/// server does: the second is refused, the first answered with a close.
pub async fn get<S: SessionHandler>(session: &Session<S>) -> Result<String, RequestError> {
    match session.transport() {
        Transport::Polling => {}
        // Release the poll so the client can finish the upgrade.
        Transport::Upgrading => return Ok(NOOP.to_owned()),
        Transport::Websocket => return Err(RequestError::BadRequest),
    }
    let Some(mut receiver) = session.try_receiver() else {
        tracing::debug!(
            sid = session.sid(),
            "two polls at once: closing the session"
        );
        session.abort(CloseReason::TransportError);
        return Err(RequestError::BadRequest);
    };
    let Some(receiver) = receiver.as_mut() else {
        return Err(RequestError::BadRequest);
    };
    let first = tokio::select! {
        biased;
        _ = session.closing().cancelled() => None,
        _ = session.left_polling() => return Ok(NOOP.to_owned()),
        item = receiver.recv() => Some(item),
    };
    let Some(first) = first else {
        return Ok(closed_answer(session).to_owned());
    };
    // A POST being handled right now may queue more: wait for it to finish
    // so everything one POST caused leaves in this one answer.
    drop(session.handler().await);

    let mut body = Encoder::default();
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match item {
            Outbound::Text(packet) => body.text(&String::from_utf8_lossy(&packet)),
            Outbound::Binary(data) => body.binary(&data),
            // Websocket control frames have no polling form.
            Outbound::WsPong(_) => {}
            Outbound::Close => {
                body.text(CLOSE);
                session.abort(CloseReason::ServerClose);
                break;
            }
        }
        next = receiver.try_recv();
    }
    if body.is_empty() {
        // Only websocket pongs were queued: answer so the client polls again.
        body.text(NOOP);
    }
    Ok(body.finish())
}

/// The answer of a poll whose session closed while it waited: the client
/// asked for the close (`noop`, as the reference server answers), or it is
/// told with a close packet.
fn closed_answer<S: SessionHandler>(session: &Session<S>) -> &'static str {
    match session.reason() {
        CloseReason::TransportClose => {
            // This poll tells the client; later ones are refused.
            let _first = session.answer_close();
            NOOP
        }
        _ => CLOSE,
    }
}

/// Handles a POST body: every packet is handed to the session in order
/// before this returns, so a GET that follows sees everything they caused.
/// A malformed payload closes the session; the POST itself still succeeds,
/// as with the reference server.
pub async fn post<S: SessionHandler>(
    session: &Session<S>,
    body: &[u8],
) -> Result<(), RequestError> {
    if session.transport() == Transport::Websocket {
        return Err(RequestError::BadRequest);
    }
    let records = match payload::decode(body) {
        Ok(records) => records,
        Err(error) => {
            tracing::debug!(sid = session.sid(), %error, "closing a polling session");
            session.abort(CloseReason::ParseError);
            return Ok(());
        }
    };
    let mut handler = session.handler().await;
    let Some(handler) = handler.as_mut() else {
        return Err(RequestError::SessionUnknown);
    };
    for record in records {
        if let Err(reason) = session.receive(handler, record).await {
            session.abort(reason);
            break;
        }
    }
    Ok(())
}
