//! The message object clients receive, field for field as documented.

use serde::Serialize;

use crate::store::StoredMessage;

/// A stored message as it goes on the wire: `roomId, id, from, text, to,
/// time, __v` in that order, then the `ts` cursor (left out of exports).
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    /// The DM room, `dm:<first>_<second>`.
    #[serde(rename = "roomId")]
    pub room_id: &'a str,
    /// Socket id of the connection that sent it.
    pub id: &'a str,
    /// The sender.
    pub from: &'a str,
    /// The text.
    pub text: &'a str,
    /// The recipient.
    pub to: &'a str,
    /// Local wall-clock time of acceptance, as
    /// [`format_time`](crate::store::format_time) writes it.
    pub time: &'a str,
    /// Document version of the seed's schema; always 0.
    #[serde(rename = "__v")]
    pub version: u8,
    /// Microseconds since the epoch: unique, increasing within the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
}

impl<'a> MessageView<'a> {
    /// The wire form of a stored message, `ts` included.
    pub fn of(message: &'a StoredMessage) -> Self {
        MessageView {
            room_id: &message.room,
            id: &message.id,
            from: &message.from,
            text: &message.text,
            to: &message.to,
            time: &message.time,
            version: 0,
            ts: Some(message.ts),
        }
    }

    /// The export form of a stored message: the documented fields, no `ts`.
    pub fn export(message: &'a StoredMessage) -> Self {
        MessageView {
            ts: None,
            ..MessageView::of(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_the_documented_order() {
        let view = MessageView {
            room_id: "dm:Dummy-1_Dummy-2",
            id: "sid",
            from: "Dummy-1",
            text: "hi",
            to: "Dummy-2",
            time: "28/12/2025, 2:45:46 am",
            version: 0,
            ts: Some(7),
        };
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"roomId":"dm:Dummy-1_Dummy-2","id":"sid","from":"Dummy-1","text":"hi","to":"Dummy-2","time":"28/12/2025, 2:45:46 am","__v":0,"ts":7}"#
        );
        let export = MessageView { ts: None, ..view };
        assert!(!serde_json::to_string(&export).unwrap().contains("ts"));
    }
}
