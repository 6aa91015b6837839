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
    /// Local wall-clock time of acceptance, as [`format_time`] writes it.
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

/// `DD/MM/YYYY, h:mm:ss am|pm` in the server's local time zone (TZ, UTC when
/// unset), the seed's `toLocaleString("en-GB")`-style stamp.
pub fn format_time(ts_micros: u64) -> String {
    use chrono::format::{Item, StrftimeItems};
    // Parsed once: the format string is the same for every message.
    static FORMAT: std::sync::OnceLock<Vec<Item<'static>>> = std::sync::OnceLock::new();
    let format = FORMAT.get_or_init(|| StrftimeItems::new("%d/%m/%Y, %-I:%M:%S %P").collect());
    let use_tz = tz_is_set();
    let secs = (ts_micros / 1_000_000) as i64;
    let Some(utc) = chrono::DateTime::from_timestamp(secs, 0) else {
        return String::new();
    };
    let items = format.iter();
    if use_tz {
        utc.with_timezone(&chrono::Local)
            .format_with_items(items)
            .to_string()
    } else {
        utc.format_with_items(items).to_string()
    }
}

/// The server's UTC offset at `time_us`, in seconds: that of TZ's zone
/// when TZ is set, else 0 (the contract's `time` is UTC when TZ is unset).
pub fn utc_offset_at(time_us: u64) -> i32 {
    use chrono::Offset;
    if !tz_is_set() {
        return 0;
    }
    let secs = i64::try_from(time_us / 1_000_000).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|utc| {
            utc.with_timezone(&chrono::Local)
                .offset()
                .fix()
                .local_minus_utc()
        })
        .unwrap_or(0)
}

// chrono's Local falls back to /etc/localtime; the contract says UTC when
// TZ is unset, so only a set TZ selects local time.
fn tz_is_set() -> bool {
    static USE_TZ: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE_TZ.get_or_init(|| std::env::var_os("TZ").is_some_and(|tz| !tz.is_empty()))
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

    #[test]
    fn formats_time_on_a_twelve_hour_clock() {
        // With TZ unset the stamp is UTC whatever /etc/localtime says.
        if std::env::var("TZ")
            .map(|tz| tz == "UTC" || tz.is_empty())
            .unwrap_or(true)
        {
            assert_eq!(format_time(1_766_889_946_123_456), "28/12/2025, 2:45:46 am");
            assert_eq!(
                format_time(1_766_880_000_000_000),
                "28/12/2025, 12:00:00 am"
            );
            assert_eq!(format_time(1_766_926_800_000_000), "28/12/2025, 1:00:00 pm");
        }
    }
}
