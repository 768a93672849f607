//! Times on the wire: RFC 3339 with an explicit offset. Output is always
//! Beijing time (+08:00), to the millisecond.

use chrono::{DateTime, FixedOffset, SecondsFormat};

use crate::core::UnixMillis;

/// Beijing time, UTC+8. China has no daylight saving time.
pub const BEIJING_UTC_OFFSET_SECONDS: i32 = 8 * 3600;

pub fn format_beijing(at: UnixMillis) -> String {
    let offset = FixedOffset::east_opt(BEIJING_UTC_OFFSET_SECONDS).expect("valid offset");
    match DateTime::from_timestamp_millis(at.0) {
        Some(utc) => utc
            .with_timezone(&offset)
            .to_rfc3339_opts(SecondsFormat::Millis, false),
        // Only reachable for instants beyond year 262143; those are rejected on input.
        None => "invalid-time".to_owned(),
    }
}

/// Parses an RFC 3339 timestamp that carries an offset (`Z` or `+08:00`).
pub fn parse_rfc3339(text: &str) -> Result<UnixMillis, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| UnixMillis(t.timestamp_millis()))
        .map_err(|e| {
            format!("not an RFC 3339 time with an offset, such as 2026-12-01T10:00:00+08:00 ({e})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_round_trip() {
        let t = parse_rfc3339("2026-12-01T10:00:00+08:00").expect("parses");
        assert_eq!(t, parse_rfc3339("2026-12-01T02:00:00Z").expect("parses"));
        assert_eq!(format_beijing(t), "2026-12-01T10:00:00.000+08:00");
        assert!(
            parse_rfc3339("2026-12-01T10:00:00").is_err(),
            "offset is required"
        );
        assert!(parse_rfc3339("tomorrow").is_err());
    }
}
