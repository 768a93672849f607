//! Times on the wire: RFC 3339 with an explicit offset. Output is always
//! Beijing time (+08:00), to the millisecond.
//!
//! RFC 3339 writes a year in exactly four digits, so an instant whose Beijing
//! time is past year 9999 (`9999-12-31T23:59:59Z` is one: 10000-01-01 in
//! Beijing) has no RFC 3339 form; chrono writes `+10000-…`, which no parser
//! reads. Times given to the daemon (the config, the admin API) are therefore
//! refused unless their Beijing time falls in [`MIN_ACCEPTED_YEAR_BEIJING`] to
//! [`MAX_ACCEPTED_YEAR_BEIJING`]; every other instant the daemon writes is the
//! clock's or a short step after it, so [`format_beijing`] always writes a
//! valid RFC 3339 time.

use chrono::{DateTime, Datelike, FixedOffset, SecondsFormat};

use crate::core::UnixMillis;

/// Beijing time, UTC+8. China has no daylight saving time.
pub const BEIJING_UTC_OFFSET_SECONDS: i32 = 8 * 3600;
/// First year (Beijing time) of a time the daemon accepts.
pub const MIN_ACCEPTED_YEAR_BEIJING: i32 = 2000;
/// Last year (Beijing time) of a time the daemon accepts: a century of
/// campaigns, and far inside what RFC 3339 can write.
pub const MAX_ACCEPTED_YEAR_BEIJING: i32 = 2099;

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(BEIJING_UTC_OFFSET_SECONDS).expect("valid offset")
}

/// Writes an instant as RFC 3339 in Beijing time, to the millisecond.
///
/// Valid RFC 3339 for every instant in Beijing years 0000 to 9999, which holds
/// every instant the daemon has: input times are checked by
/// [`check_accepted_time`], the rest are the clock's (a claim's time) or a
/// short step after it (a redemption code's expiry).
pub fn format_beijing(at: UnixMillis) -> String {
    match DateTime::from_timestamp_millis(at.0) {
        Some(utc) => utc
            .with_timezone(&beijing())
            .to_rfc3339_opts(SecondsFormat::Millis, false),
        // Only reachable for instants beyond year 262143, which no input or clock gives.
        None => "invalid-time".to_owned(),
    }
}

/// Parses an RFC 3339 timestamp that carries an offset (`Z` or `+08:00`), for
/// input: an instant outside the accepted years is refused
/// ([`check_accepted_time`]).
pub fn parse_rfc3339(text: &str) -> Result<UnixMillis, String> {
    let at = DateTime::parse_from_rfc3339(text)
        .map(|t| UnixMillis(t.timestamp_millis()))
        .map_err(|e| {
            format!("not an RFC 3339 time with an offset, such as 2026-12-01T10:00:00+08:00 ({e})")
        })?;
    check_accepted_time(at).map_err(|reason| format!("{text:?}: {reason}"))?;
    Ok(at)
}

/// Refuses an instant whose Beijing time is not in the years
/// [`MIN_ACCEPTED_YEAR_BEIJING`]..=[`MAX_ACCEPTED_YEAR_BEIJING`].
pub fn check_accepted_time(at: UnixMillis) -> Result<(), String> {
    let year = DateTime::from_timestamp_millis(at.0).map(|t| t.with_timezone(&beijing()).year());
    match year {
        Some(y) if (MIN_ACCEPTED_YEAR_BEIJING..=MAX_ACCEPTED_YEAR_BEIJING).contains(&y) => Ok(()),
        _ => Err(format!(
            "times must fall in the years {MIN_ACCEPTED_YEAR_BEIJING} to \
             {MAX_ACCEPTED_YEAR_BEIJING}, Beijing time"
        )),
    }
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

    /// "Never expires" written the usual way was accepted, then written back as
    /// `+10000-01-01T07:59:59.000+08:00`, which no RFC 3339 parser (this one included) reads.
    #[test]
    fn times_past_the_accepted_years_are_refused_on_input() {
        for text in [
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59-23:59",
            "2100-01-01T00:00:00+08:00",
            "2099-12-31T16:00:00Z",
            "2099-12-31T23:59:59-00:00",
            "1999-12-31T23:59:59.999+08:00",
            "1999-12-31T15:59:59Z",
            "0000-01-01T00:00:00+23:59",
            "1970-01-01T00:00:00Z",
        ] {
            let err = parse_rfc3339(text).expect_err(text);
            assert!(err.contains("2000 to 2099"), "{text}: {err}");
        }
        assert!(check_accepted_time(UnixMillis(i64::MAX)).is_err());
        assert!(check_accepted_time(UnixMillis(i64::MIN)).is_err());
    }

    /// Every accepted instant is written as an RFC 3339 time that reads back as itself.
    #[test]
    fn accepted_times_round_trip_through_the_wire_format() {
        for text in [
            "2000-01-01T00:00:00+08:00",
            "1999-12-31T16:00:00Z",
            "2099-12-31T23:59:59.999+08:00",
            "2099-12-31T15:59:59.999Z",
        ] {
            let at = parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let out = format_beijing(at);
            assert_eq!(parse_rfc3339(&out), Ok(at), "{text} written as {out}");
            assert!(out.ends_with("+08:00") && out.len() == 29, "{out}");
        }
    }
}
