//! Parsing of the human-friendly durations and points in time that operator
//! commands take (`--ttl 12h`, `--before 30d`).

use std::time::Duration;

/// What [`parse_duration`] accepts, for error messages.
const DURATION_FORMS: &str =
    "a number with a unit s, m, h, d or w (30s, 15m, 12h, 30d, 2w), or several (1h30m)";

/// Parses a duration such as `30s`, `15m`, `12h`, `30d`, `2w` or `1h30m`.
///
/// A bare number is refused: `30` could mean seconds or days.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = |why: &str| format!("invalid duration {s:?}: {why}; expected {DURATION_FORMS}");
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("a unit must follow a number"));
        }
        let (number, tail) = rest.split_at(digits);
        let mut chars = tail.chars();
        let unit_secs = match chars.next() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 60 * 60,
            Some('d') => 24 * 60 * 60,
            Some('w') => 7 * 24 * 60 * 60,
            Some(c) => return Err(bad(&format!("unknown unit {c:?}"))),
            None => return Err(bad("the number has no unit")),
        };
        let secs = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_secs))
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| bad("it is too large"))?;
        total = secs;
        rest = chars.as_str();
    }
    Ok(Duration::from_secs(total))
}

/// Writes a duration the way [`parse_duration`] reads it, in its largest
/// exact unit: `30d`, `36h`, `90s`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let unit = [(86_400, 'd'), (3_600, 'h'), (60, 'm')]
        .into_iter()
        .find(|(unit, _)| secs > 0 && secs.is_multiple_of(*unit));
    match unit {
        Some((unit, name)) => format!("{}{name}", secs / unit),
        None => format!("{secs}s"),
    }
}

/// Parses a point in time given on the command line, as Unix microseconds
/// (the unit of a message's `ts`).
///
/// Accepts an RFC 3339 timestamp (`2025-12-28T02:45:46Z`), a duration meaning
/// "that long before `now_us`" (`30d`), or a raw integer taken as a message
/// `ts` in microseconds.
pub fn parse_time_arg(s: &str, now_us: u64) -> Result<u64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map_err(|_| format!("invalid time {s:?}: the microsecond timestamp is too large"));
    }
    if let Ok(ago) = parse_duration(s) {
        let ago_us = u64::try_from(ago.as_micros()).unwrap_or(u64::MAX);
        return Ok(now_us.saturating_sub(ago_us));
    }
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => u64::try_from(t.timestamp_micros())
            .map_err(|_| format!("invalid time {s:?}: it is before 1970")),
        Err(_) => Err(format!(
            "invalid time {s:?}: expected an RFC 3339 timestamp (2025-12-28T02:45:46Z), \
             a duration meaning that long ago ({DURATION_FORMS}), \
             or a message ts in microseconds since the Unix epoch"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_in_the_largest_exact_unit() {
        for (text, secs) in [
            ("30d", 30 * 86_400),
            ("36h", 36 * 3_600),
            ("90s", 90),
            ("0s", 0),
        ] {
            assert_eq!(format_duration(Duration::from_secs(secs)), text);
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn single_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn combinations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d2h3m4s"), Ok(Duration::from_secs(93_784)));
    }

    #[test]
    fn refusals_say_what_is_accepted() {
        for bad in [
            "",
            "30",
            "h",
            "1x",
            "1h30",
            "-1s",
            "1.5h",
            "99999999999999999999s",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("12h"), "{bad:?}: {err}");
        }
        assert!(parse_duration(&format!("{}w", u64::MAX / 1000)).is_err());
    }

    #[test]
    fn time_as_microseconds() {
        assert_eq!(
            parse_time_arg("1766889946123456", 0),
            Ok(1_766_889_946_123_456)
        );
    }

    #[test]
    fn time_as_duration_ago() {
        let now = 10_000_000_000;
        assert_eq!(parse_time_arg("1h", now), Ok(now - 3_600_000_000));
        assert_eq!(parse_time_arg("1000w", now), Ok(0));
    }

    #[test]
    fn time_as_rfc3339() {
        assert_eq!(
            parse_time_arg("2025-12-28T02:45:46.123456Z", 0),
            Ok(1_766_889_946_123_456)
        );
        assert_eq!(
            parse_time_arg("2025-12-28T03:45:46+01:00", 0),
            Ok(1_766_889_946_000_000)
        );
        assert!(parse_time_arg("1969-12-31T23:59:59Z", 0).is_err());
    }

    #[test]
    fn time_refusal_lists_forms() {
        let err = parse_time_arg("yesterday", 0).unwrap_err();
        assert!(
            err.contains("RFC 3339") && err.contains("microseconds"),
            "{err}"
        );
    }
}
