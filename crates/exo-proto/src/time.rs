//! Unix timestamps: the clock every crate reads, and the calendar text they
//! write.
//!
//! exo keeps time as Unix seconds (`f64`, as the reference's `time.time()`
//! writes them) on the wire, and as ISO-8601 UTC text where the reference
//! stores text. The only I/O here is reading the system clock in
//! [`now_seconds`]; everything else is arithmetic on a timestamp the caller
//! gives, and never panics.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now, as the reference writes timestamps. A clock set before
/// 1970 reads as 0.
pub fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// A moment as a UTC calendar date and time of day, to the second, in the
/// proleptic Gregorian calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// The year; 0 is 1 BC, and years before that are negative.
    pub year: i64,
    /// The month, 1 to 12.
    pub month: u32,
    /// The day of the month, 1 to 31.
    pub day: u32,
    /// The hour, 0 to 23.
    pub hour: u32,
    /// The minute, 0 to 59.
    pub minute: u32,
    /// The second, 0 to 59 (Unix time has no leap seconds).
    pub second: u32,
}

impl CivilTime {
    /// The UTC calendar time `seconds` after the Unix epoch (before it when
    /// negative).
    pub fn from_unix_seconds(seconds: i64) -> Self {
        let days = seconds.div_euclid(86_400);
        let second_of_day = seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        CivilTime {
            year,
            month,
            day,
            hour: second_of_day / 3600,
            minute: second_of_day % 3600 / 60,
            second: second_of_day % 60,
        }
    }
}

/// Microseconds since the Unix epoch as ISO-8601 UTC with six fractional
/// digits and a `+00:00` offset, `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`: the
/// text Python's `datetime.now(UTC).isoformat()` writes, which the
/// reference stores and orders by.
pub fn iso8601_micros(micros: i64) -> String {
    let CivilTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
    } = CivilTime::from_unix_seconds(micros.div_euclid(1_000_000));
    let fraction = micros.rem_euclid(1_000_000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{fraction:06}+00:00")
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{CivilTime, civil_from_days, iso8601_micros, now_seconds};

    #[test]
    fn days_to_dates() {
        let cases = [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (59, (1970, 3, 1)),
            (11_016, (2000, 2, 29)),
            (11_017, (2000, 3, 1)),
            (47_482, (2100, 1, 1)),
            (20_501, (2026, 2, 17)),
            (-719_468, (0, 3, 1)),
            (-719_469, (0, 2, 29)),
            (2_932_896, (9999, 12, 31)),
        ];
        for (days, expected) in cases {
            assert_eq!(civil_from_days(days), expected, "day {days}");
        }
    }

    #[test]
    fn seconds_to_civil_time() {
        let cases = [
            (0, (1970, 1, 1, 0, 0, 0)),
            (-1, (1969, 12, 31, 23, 59, 59)),
            (1_771_324_215, (2026, 2, 17, 10, 30, 15)),
            (951_782_400, (2000, 2, 29, 0, 0, 0)),
            (951_868_799, (2000, 2, 29, 23, 59, 59)),
        ];
        for (seconds, (year, month, day, hour, minute, second)) in cases {
            let expected = CivilTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
            };
            assert_eq!(
                CivilTime::from_unix_seconds(seconds),
                expected,
                "{seconds} s"
            );
        }
    }

    #[test]
    fn formats_like_python_isoformat_with_microseconds() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000+00:00"),
            (1, "1970-01-01T00:00:00.000001+00:00"),
            (-1, "1969-12-31T23:59:59.999999+00:00"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000+00:00"),
            (951_868_799_999_999, "2000-02-29T23:59:59.999999+00:00"),
            (1_709_210_096_123_456, "2024-02-29T12:34:56.123456+00:00"),
            (1_735_689_599_000_000, "2024-12-31T23:59:59.000000+00:00"),
            (4_102_444_800_000_000, "2100-01-01T00:00:00.000000+00:00"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999+00:00"),
        ];
        for (micros, expected) in cases {
            assert_eq!(iso8601_micros(micros), expected, "for {micros} µs");
        }
    }

    #[test]
    fn extremes_do_not_panic() {
        for micros in [i64::MIN, i64::MAX] {
            assert!(iso8601_micros(micros).ends_with("+00:00"));
        }
        for seconds in [i64::MIN, i64::MAX] {
            let time = CivilTime::from_unix_seconds(seconds);
            assert!((1..=12).contains(&time.month) && (1..=31).contains(&time.day));
        }
    }

    #[test]
    fn the_clock_reads_after_2020() {
        assert!(now_seconds() > 1_577_836_800.0);
    }
}
