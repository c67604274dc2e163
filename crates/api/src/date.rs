//! REST datetimes: `Tue, 16 Sep 2014 17:01:15 +0000`, always UTC.
//!
//! The CLI parses `deployed_datetime`, `last_seen`, `start_date` and `end_date` with exactly
//! `"%a, %d %b %Y %H:%M:%S +0000"`; an ISO 8601 value makes `nodecluster ls` exit 3. So the
//! format is fixed here, English names and a literal `+0000`, and parsing accepts only it.
//! The events websocket uses ISO 8601 instead ([`format_iso_unix`]).

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

const FORMAT: &[FormatItem<'static>] = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] +0000"
);

/// A date that is not in the REST format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateError(pub String);

impl std::fmt::Display for DateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "'{}' is not a date like 'Tue, 16 Sep 2014 17:01:15 +0000'",
            self.0
        )
    }
}

impl std::error::Error for DateError {}

/// Formats an instant in UTC.
pub fn format(instant: OffsetDateTime) -> String {
    instant
        .to_offset(UtcOffset::UTC)
        .format(FORMAT)
        // The format has no component that can fail for a UTC date in years 0..=9999.
        .unwrap_or_else(|_| instant.unix_timestamp().to_string())
}

/// Formats seconds since the Unix epoch (how the store keeps times).
pub fn format_unix(seconds: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(instant) => format(instant),
        Err(_) => format(OffsetDateTime::UNIX_EPOCH),
    }
}

/// Parses the REST format back to an instant.
pub fn parse(text: &str) -> Result<OffsetDateTime, DateError> {
    PrimitiveDateTime::parse(text, FORMAT)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|_| DateError(text.to_owned()))
}

const ISO_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// The events websocket's datetime (§6): ISO 8601 in UTC, e.g. `2016-02-01T16:47:28Z`.
pub fn format_iso_unix(seconds: i64) -> String {
    let instant =
        OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    instant
        .format(ISO_FORMAT)
        // As for `format`: no component can fail for a UTC date in years 0..=9999.
        .unwrap_or_else(|_| seconds.to_string())
}

/// The current time as seconds since the epoch.
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_round_trips() {
        let instant = parse("Tue, 16 Sep 2014 17:01:15 +0000").expect("parse");
        assert_eq!(instant.unix_timestamp(), 1_410_886_875);
        assert_eq!(format(instant), "Tue, 16 Sep 2014 17:01:15 +0000");
        assert_eq!(
            format_unix(1_410_886_875),
            "Tue, 16 Sep 2014 17:01:15 +0000"
        );
    }

    #[test]
    fn single_digit_days_are_zero_padded_and_other_offsets_become_utc() {
        assert_eq!(format_unix(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        let plus_two = OffsetDateTime::from_unix_timestamp(0)
            .expect("epoch")
            .to_offset(UtcOffset::from_hms(2, 0, 0).expect("offset"));
        assert_eq!(format(plus_two), "Thu, 01 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn event_datetimes_are_iso_8601_utc() {
        assert_eq!(format_iso_unix(1_454_345_248), "2016-02-01T16:47:28Z");
        assert_eq!(format_iso_unix(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn iso_dates_are_refused() {
        let error = parse("2014-09-16T17:01:15Z").expect_err("iso");
        assert!(error.to_string().contains("2014-09-16T17:01:15Z"));
        assert!(parse("Tue, 16 Sep 2014 17:01:15 +0100").is_err());
    }

    #[test]
    fn every_month_and_weekday_is_english() {
        let mut seen = std::collections::BTreeSet::new();
        for day in 0..366 {
            let text = format_unix(1_420_070_400 + day * 86_400);
            seen.insert(text[8..11].to_owned());
            seen.insert(text[..3].to_owned());
            assert_eq!(
                parse(&text).expect("round trip").unix_timestamp(),
                1_420_070_400 + day * 86_400
            );
        }
        for name in [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun",
        ] {
            assert!(seen.contains(name), "{name}");
        }
    }
}
