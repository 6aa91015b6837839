//! The rules a `chat message` must pass before it is stored.

use serde_json::Value;

use super::names::valid_user_name;
use crate::refusal::RefusalReason;

/// A message that passed validation.
#[derive(Debug, PartialEq, Eq)]
pub struct Draft<'a> {
    /// The text, as sent.
    pub text: &'a str,
    /// The recipient.
    pub to: &'a str,
    /// The client's id for exactly-once send.
    pub cid: Option<&'a str>,
}

/// Longest `cid`, in characters.
pub const CID_MAX: usize = 64;

/// True for a well-formed `cid`: 1–64 characters of `A–Z a–z 0–9 . _ : -`.
pub fn valid_cid(cid: &str) -> bool {
    (1..=CID_MAX).contains(&cid.len())
        && cid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Checks a `chat message` payload from `user`, whose handshake named
/// `peer`; `max_bytes` bounds the text's UTF-8 length.
pub fn validate<'a>(
    payload: Option<&'a Value>,
    has_attachments: bool,
    user: &str,
    peer: Option<&'a str>,
    max_bytes: usize,
) -> Result<Draft<'a>, RefusalReason> {
    if has_attachments {
        return Err(RefusalReason::BadPayload);
    }
    let (text, to, cid) = match payload {
        Some(Value::String(text)) => (text.as_str(), None, None),
        Some(Value::Object(fields)) => {
            let text = fields
                .get("text")
                .and_then(Value::as_str)
                .ok_or(RefusalReason::BadPayload)?;
            let to = match fields.get("to") {
                None | Some(Value::Null) => None,
                Some(Value::String(to)) => Some(to.as_str()),
                Some(_) => return Err(RefusalReason::InvalidPeer),
            };
            let cid = match fields.get("cid") {
                None | Some(Value::Null) => None,
                Some(Value::String(cid)) if valid_cid(cid) => Some(cid.as_str()),
                Some(_) => return Err(RefusalReason::BadPayload),
            };
            (text, to, cid)
        }
        _ => return Err(RefusalReason::BadPayload),
    };
    if text.trim().is_empty() {
        return Err(RefusalReason::Empty);
    }
    if text.len() > max_bytes {
        return Err(RefusalReason::TooLong);
    }
    let to = to.or(peer).ok_or(RefusalReason::NoPeer)?;
    if !valid_user_name(to) || to == user {
        return Err(RefusalReason::InvalidPeer);
    }
    Ok(Draft { text, to, cid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(payload: Value, peer: Option<&str>) -> Result<(String, String), RefusalReason> {
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
    fn takes_a_well_formed_cid_and_refuses_a_malformed_one() {
        let ok = json!({"text": "hi", "cid": "web:1.a_b-C"});
        let draft = validate(Some(&ok), false, "A", Some("B"), 8).unwrap();
        assert_eq!(draft.cid, Some("web:1.a_b-C"));
        let longest = "x".repeat(CID_MAX);
        let ok = json!({"text": "hi", "cid": longest});
        assert!(validate(Some(&ok), false, "A", Some("B"), 8).is_ok());
        for bad in [
            json!(""),
            json!("a b"),
            json!("é"),
            json!("x".repeat(CID_MAX + 1)),
            json!(5),
            json!(["a"]),
        ] {
            let payload = json!({"text": "hi", "cid": bad});
            assert_eq!(
                validate(Some(&payload), false, "A", Some("B"), 8),
                Err(RefusalReason::BadPayload),
                "{bad}"
            );
        }
        let null = json!({"text": "hi", "cid": null});
        assert_eq!(
            validate(Some(&null), false, "A", Some("B"), 8).unwrap().cid,
            None
        );
    }

    #[test]
    fn gives_every_documented_reason() {
        assert_eq!(check(json!(" \n\t"), Some("B")), Err(RefusalReason::Empty));
        assert_eq!(
            check(json!({"text": ""}), Some("B")),
            Err(RefusalReason::Empty)
        );
        assert_eq!(
            check(json!("123456789"), Some("B")),
            Err(RefusalReason::TooLong)
        );
        assert_eq!(
            check(json!("ééééé"), Some("B")),
            Err(RefusalReason::TooLong)
        );
        assert_eq!(check(json!("hi"), None), Err(RefusalReason::NoPeer));
        assert_eq!(
            check(json!({"text": "hi", "to": "bad name"}), None),
            Err(RefusalReason::InvalidPeer)
        );
        assert_eq!(
            check(json!({"text": "hi", "to": "Dummy-1"}), None),
            Err(RefusalReason::InvalidPeer)
        );
        assert_eq!(
            check(json!({"text": "hi", "to": 5}), None),
            Err(RefusalReason::InvalidPeer)
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
                Err(RefusalReason::BadPayload),
                "{bad}"
            );
        }
        assert_eq!(
            validate(None, false, "A", Some("B"), 8),
            Err(RefusalReason::BadPayload)
        );
        let text = json!("hi");
        assert_eq!(
            validate(Some(&text), true, "A", Some("B"), 8),
            Err(RefusalReason::BadPayload)
        );
    }
}
