//! Wall-clock time as chatd stamps and shows it: Unix microseconds, the
//! local UTC offset at an instant, and the message `time` string.
//!
//! The store formats `time` when it applies a message, from the accepting
//! node's clock reading and UTC offset carried in the change, so every node
//! of a cluster writes the same string for the same message.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, Offset, TimeZone};

/// The `time` layout: `DD/MM/YYYY, h:mm:ss am|pm` (the seed's
/// `toLocaleString("en-GB")` style).
const TIME_FORMAT: &str = "%d/%m/%Y, %-I:%M:%S %P";

/// The current time in Unix microseconds (0 for a clock before 1970 or past
/// year 586,000: the store then falls back to the room's last ts + 1).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_micros()).ok())
        .unwrap_or(0)
}

/// This host's UTC offset in seconds at `time_us`: the zone TZ names, or
/// UTC when TZ is unset or empty (the contract says so, whatever
/// /etc/localtime holds).
pub fn utc_offset_s(time_us: u64) -> i32 {
    static USE_TZ: OnceLock<bool> = OnceLock::new();
    let use_tz = *USE_TZ.get_or_init(|| std::env::var_os("TZ").is_some_and(|tz| !tz.is_empty()));
    if !use_tz {
        return 0;
    }
    match DateTime::from_timestamp(secs(time_us), 0) {
        Some(utc) => Local
            .offset_from_utc_datetime(&utc.naive_utc())
            .fix()
            .local_minus_utc(),
        None => 0,
    }
}

/// The `time` string of a message accepted at `time_us` where the clock
/// was `utc_offset_s` ahead of UTC: `28/12/2025, 2:45:46 am`. Empty for an
/// instant or offset chrono cannot represent (past year 262,000, or an
/// offset of a day or more).
pub fn format_time(time_us: u64, utc_offset_s: i32) -> String {
    // Messages read or applied together mostly share their second: the
    // last string is kept per thread.
    thread_local! {
        static LAST: RefCell<Option<((u64, i32), String)>> = const { RefCell::new(None) };
    }
    let key = (time_us / 1_000_000, utc_offset_s);
    LAST.with_borrow_mut(|last| match last {
        Some((at, time)) if *at == key => time.clone(),
        _ => {
            let time = format_uncached(time_us, utc_offset_s);
            *last = Some((key, time.clone()));
            time
        }
    })
}

fn format_uncached(time_us: u64, utc_offset_s: i32) -> String {
    // Parsed once: the layout is the same for every message.
    static ITEMS: OnceLock<Vec<Item<'static>>> = OnceLock::new();
    let items = ITEMS.get_or_init(|| StrftimeItems::new(TIME_FORMAT).collect());
    let (Some(utc), Some(offset)) = (
        DateTime::from_timestamp(secs(time_us), 0),
        FixedOffset::east_opt(utc_offset_s),
    ) else {
        return String::new();
    };
    utc.with_timezone(&offset)
        .format_with_items(items.iter())
        .to_string()
}

/// The UTC offset under which `format_time(time_us, offset)` gives exactly
/// `time`, if there is one: how a stored `time` string (schema 2 kept the
/// string) becomes an offset again.
pub fn offset_of(time_us: u64, time: &str) -> Option<i32> {
    let local = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
    let offset = local.and_utc().timestamp().checked_sub(secs(time_us))?;
    let offset = i32::try_from(offset).ok()?;
    (format_time(time_us, offset) == time).then_some(offset)
}

fn secs(time_us: u64) -> i64 {
    // Below i64::MAX for every u64 of microseconds.
    (time_us / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_766_889_946_123_456;

    #[test]
    fn formats_on_a_twelve_hour_clock_in_the_given_offset() {
        assert_eq!(format_time(T, 0), "28/12/2025, 2:45:46 am");
        assert_eq!(
            format_time(1_766_880_000_000_000, 0),
            "28/12/2025, 12:00:00 am"
        );
        assert_eq!(
            format_time(1_766_926_800_000_000, 0),
            "28/12/2025, 1:00:00 pm"
        );
        assert_eq!(format_time(T, 5 * 3600 + 1800), "28/12/2025, 8:15:46 am");
        assert_eq!(format_time(T, -8 * 3600), "27/12/2025, 6:45:46 pm");
        assert_eq!(format_time(0, 0), "01/01/1970, 12:00:00 am");
        // Out of chrono's range: empty rather than a panic.
        assert_eq!(format_time(u64::MAX, 0), "");
        assert_eq!(format_time(T, 86_400), "");
    }

    #[test]
    fn offset_of_inverts_format_time_exactly() {
        for offset in [0, 3600, -8 * 3600, 5 * 3600 + 1800, 13 * 3600 + 2700, -1] {
            let time = format_time(T, offset);
            assert_eq!(offset_of(T, &time), Some(offset), "{time}");
        }
        // Not a time, a time of another day, a padded hour: no offset
        // reproduces them byte for byte.
        assert_eq!(offset_of(T, "t"), None);
        assert_eq!(offset_of(T, "28/12/2025, 02:45:46 am"), None);
        assert_eq!(offset_of(T, "28/12/2024, 2:45:46 am"), None);
        assert_eq!(offset_of(T, ""), None);
    }

    #[test]
    fn offset_is_utc_without_tz() {
        if std::env::var("TZ").map(|tz| tz.is_empty()).unwrap_or(true) {
            assert_eq!(utc_offset_s(T), 0);
        }
        assert!(now_us() > T);
    }
}
