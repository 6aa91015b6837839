//! The arguments of an event or an acknowledgement, kept as the JSON text
//! the server sent and decoded only into what the caller asks for.
//!
//! A caller that needs one field deserializes into a small struct that
//! borrows from the text (`#[serde(borrow)] text: Cow<'a, str>`) and pays for
//! no JSON tree; one that wants everything asks for `Vec<serde_json::Value>`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, IntoDeserializer, SeqAccess, Visitor};

use super::ClientError;

/// The JSON array of an event's arguments (after its name) or of an
/// acknowledgement's, as received. The reader has checked that it is an
/// array of well-formed JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawArgs(Box<str>);

impl RawArgs {
    /// An acknowledgement's arguments: `json` is an array the reader checked.
    pub(super) fn from_array(json: &str) -> RawArgs {
        RawArgs(json.into())
    }

    /// An event's arguments from the rest of its array after the name (see
    /// [`crate::socketio::packet::EventParts::args_tail`]).
    pub(super) fn from_event_tail(tail: &str) -> RawArgs {
        let mut json = String::with_capacity(tail.len() + 1);
        json.push('[');
        json.push_str(tail);
        RawArgs(json.into_boxed_str())
    }

    /// The arguments as JSON text: an array.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// Decodes the whole argument array, e.g. into `Vec<serde_json::Value>`
    /// or a tuple.
    pub fn decode<'de, T: Deserialize<'de>>(&'de self) -> Result<T, ClientError> {
        serde_json::from_str(&self.0).map_err(ClientError::Arguments)
    }

    /// Decodes the first argument only, skipping the others without
    /// decoding them. No argument at all reads as JSON `null`, as
    /// socket.io-client hands `undefined` to a listener.
    pub fn first<'de, T: Deserialize<'de>>(&'de self) -> Result<T, ClientError> {
        self.decode::<First<T>>().map(|First(first)| first)
    }
}

/// The first element of a JSON array; the rest is checked and skipped.
struct First<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for FirstVisitor<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an argument array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let first = match seq.next_element()? {
                    Some(first) => first,
                    None => T::deserialize(().into_deserializer())?,
                };
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        deserializer.deserialize_seq(FirstVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    #[derive(Deserialize)]
    struct Verdict<'a> {
        ok: bool,
        #[serde(borrow)]
        reason: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    struct Said<'a> {
        #[serde(borrow)]
        text: Cow<'a, str>,
    }

    #[test]
    fn an_ack_gives_ok_and_reason() {
        let args = RawArgs::from_array(r#"[{"ok":false,"reason":"empty","extra":[1,{"a":2}]}, 3]"#);
        let answer: Verdict = args.first().unwrap();
        assert!(!answer.ok);
        assert_eq!(answer.reason.as_deref(), Some("empty"));
        let args = RawArgs::from_array(r#"[{"ok":true}]"#);
        let answer: Verdict = args.first().unwrap();
        assert!(answer.ok && answer.reason.is_none());
    }

    #[test]
    fn an_event_text_with_escapes_is_unescaped() {
        let args = RawArgs::from_event_tail(r#"{"id":1,"text":"say \"hi\"\n\u00e9"}]"#);
        let message: Said = args.first().unwrap();
        assert_eq!(message.text, "say \"hi\"\n\u{e9}");
        let plain = RawArgs::from_event_tail(r#"{"text":"t=1 s=2"}]"#);
        let message: Said = plain.first().unwrap();
        assert!(matches!(message.text, Cow::Borrowed("t=1 s=2")));
    }

    #[test]
    fn values_on_demand_and_null_when_absent() {
        let args = RawArgs::from_event_tail(r#"1, "two" ]"#);
        assert_eq!(args.json(), r#"[1, "two" ]"#);
        assert_eq!(
            args.decode::<Vec<Value>>().unwrap(),
            [json!(1), json!("two")]
        );
        let none = RawArgs::from_event_tail("]");
        assert_eq!(none.first::<Value>().unwrap(), Value::Null);
        assert_eq!(none.first::<Option<Verdict>>().unwrap().map(|a| a.ok), None);
    }

    #[test]
    fn a_payload_of_the_wrong_shape_is_an_error() {
        let args = RawArgs::from_array(r#"[{"ok":"yes"}]"#);
        let error = args.first::<Verdict>().err().expect("not a bool");
        assert!(matches!(error, ClientError::Arguments(_)), "{error}");
        assert!(RawArgs::from_array("[]").first::<Said>().is_err());
        assert!(RawArgs::from_array("[1").decode::<Vec<Value>>().is_err());
    }
}
