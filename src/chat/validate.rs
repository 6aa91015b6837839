//! The rules a `chat message` must pass before it is stored.

use serde_json::Value;

use super::names::valid_user_name;

/// Why a message was refused, as the `reason` clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No text, or only white space.
    Empty,
    /// Longer than the configured limit in UTF-8 bytes.
    TooLong,
    /// No `to` and no peer from the handshake.
    NoPeer,
    /// `to` is not a valid name, or is the sender.
    InvalidPeer,
    /// Over the sender's message rate.
    RateLimited,
    /// Any other shape: number, array, null, binary, missing `text`.
    BadPayload,
    /// The server is shutting down or the store failed; nothing was kept.
    Unavailable,
}

impl Refusal {
    /// Every reason, for reporting (the metrics list each one, even at 0).
    pub const ALL: [Refusal; 7] = [
        Refusal::Empty,
        Refusal::TooLong,
        Refusal::NoPeer,
        Refusal::InvalidPeer,
        Refusal::RateLimited,
        Refusal::BadPayload,
        Refusal::Unavailable,
    ];

    /// The `reason` string of the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Empty => "empty",
            Refusal::TooLong => "too_long",
            Refusal::NoPeer => "no_peer",
            Refusal::InvalidPeer => "invalid_peer",
            Refusal::RateLimited => "rate_limited",
            Refusal::BadPayload => "bad_payload",
            Refusal::Unavailable => "unavailable",
        }
    }
}

/// A message that passed validation.
#[derive(Debug, PartialEq, Eq)]
pub struct Draft<'a> {
    /// The text, as sent.
    pub text: &'a str,
    /// The recipient.
    pub to: &'a str,
}

/// Checks a `chat message` payload from `user`, whose handshake named
/// `peer`; `max_bytes` bounds the text's UTF-8 length.
pub fn validate<'a>(
    payload: Option<&'a Value>,
    has_attachments: bool,
    user: &str,
    peer: Option<&'a str>,
    max_bytes: usize,
) -> Result<Draft<'a>, Refusal> {
    if has_attachments {
        return Err(Refusal::BadPayload);
    }
    let (text, to) = match payload {
        Some(Value::String(text)) => (text.as_str(), None),
        Some(Value::Object(fields)) => {
            let text = fields
                .get("text")
                .and_then(Value::as_str)
                .ok_or(Refusal::BadPayload)?;
            let to = match fields.get("to") {
                None | Some(Value::Null) => None,
                Some(Value::String(to)) => Some(to.as_str()),
                Some(_) => return Err(Refusal::InvalidPeer),
            };
            (text, to)
        }
        _ => return Err(Refusal::BadPayload),
    };
    if text.trim().is_empty() {
        return Err(Refusal::Empty);
    }
    if text.len() > max_bytes {
        return Err(Refusal::TooLong);
    }
    let to = to.or(peer).ok_or(Refusal::NoPeer)?;
    if !valid_user_name(to) || to == user {
        return Err(Refusal::InvalidPeer);
    }
    Ok(Draft { text, to })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(payload: Value, peer: Option<&str>) -> Result<(String, String), Refusal> {
        validate(Some(&payload), false, "Dummy-1", peer, 8)
            .map(|d| (d.text.to_owned(), d.to.to_owned()))
    }

    #[test]
    fn accepts_text_for_the_handshake_peer_or_an_explicit_one() {
        assert_eq!(
            check(json!("hi"), Some("Dummy-2")),
            Ok(("hi".into(), "Dummy-2".into()))
        );
        assert_eq!(
            check(json!({"text": "hi", "to": "Dummy-3"}), Some("Dummy-2")),
            Ok(("hi".into(), "Dummy-3".into()))
        );
        assert_eq!(
            check(json!("12345678"), Some("B")),
            Ok(("12345678".into(), "B".into()))
        );
    }

    #[test]
    fn gives_every_documented_reason() {
        assert_eq!(check(json!(" \n\t"), Some("B")), Err(Refusal::Empty));
        assert_eq!(check(json!({"text": ""}), Some("B")), Err(Refusal::Empty));
        assert_eq!(check(json!("123456789"), Some("B")), Err(Refusal::TooLong));
        assert_eq!(check(json!("ééééé"), Some("B")), Err(Refusal::TooLong));
        assert_eq!(check(json!("hi"), None), Err(Refusal::NoPeer));
        assert_eq!(
            check(json!({"text": "hi", "to": "bad name"}), None),
            Err(Refusal::InvalidPeer)
        );
        assert_eq!(
            check(json!({"text": "hi", "to": "Dummy-1"}), None),
            Err(Refusal::InvalidPeer)
        );
        assert_eq!(
            check(json!({"text": "hi", "to": 5}), None),
            Err(Refusal::InvalidPeer)
        );
        for bad in [
            json!(5),
            json!(["hi"]),
            json!(null),
            json!({}),
            json!({"text": 1}),
        ] {
            assert_eq!(
                check(bad.clone(), Some("B")),
                Err(Refusal::BadPayload),
                "{bad}"
            );
        }
        assert_eq!(
            validate(None, false, "A", Some("B"), 8),
            Err(Refusal::BadPayload)
        );
        let text = json!("hi");
        assert_eq!(
            validate(Some(&text), true, "A", Some("B"), 8),
            Err(Refusal::BadPayload)
        );
    }
}
