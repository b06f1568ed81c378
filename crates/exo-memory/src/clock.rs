//! Timestamps as the reference writes them, strictly increasing within the
//! process.
//!
//! The reference stores `created_at` and `updated_at` as ISO-8601 UTC text
//! with a `+00:00` offset (Python's `datetime.now(UTC).isoformat()`), and
//! orders history by that text. A worker saves several items within the same
//! millisecond, so two items could share a timestamp and come back in either
//! order. This clock never hands out the same microsecond twice in one
//! process: each reading is at least one microsecond after the previous one.
//! Items made in one process therefore sort by `created_at` in the order
//! they were made, on every backend.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// The last microsecond handed out by [`now_micros`].
static LAST_MICROS: AtomicI64 = AtomicI64::new(i64::MIN);

/// Microseconds since the Unix epoch, strictly increasing per process.
fn now_micros() -> i64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let mut last = LAST_MICROS.load(Ordering::Relaxed);
    loop {
        let next = wall.max(last.saturating_add(1));
        match LAST_MICROS.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, never equal to an
/// earlier reading of this process.
pub(crate) fn now_iso() -> String {
    format_micros(now_micros())
}

/// Formats microseconds since the Unix epoch as ISO-8601 UTC with six
/// fractional digits and a `+00:00` offset.
pub(crate) fn format_micros(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}+00:00",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{format_micros, now_iso};

    fn check(micros: i64, expected: &str) {
        assert_eq!(format_micros(micros), expected, "for {micros} µs");
    }

    #[test]
    fn formats_like_python_isoformat_with_microseconds() {
        check(0, "1970-01-01T00:00:00.000000+00:00");
        check(1, "1970-01-01T00:00:00.000001+00:00");
        check(-1, "1969-12-31T23:59:59.999999+00:00");
        check(951_782_400_000_000, "2000-02-29T00:00:00.000000+00:00");
        check(951_868_799_999_999, "2000-02-29T23:59:59.999999+00:00");
        check(1_709_210_096_123_456, "2024-02-29T12:34:56.123456+00:00");
        check(1_735_689_599_000_000, "2024-12-31T23:59:59.000000+00:00");
        check(4_102_444_800_000_000, "2100-01-01T00:00:00.000000+00:00");
        check(253_402_300_799_999_999, "9999-12-31T23:59:59.999999+00:00");
    }

    #[test]
    fn readings_strictly_increase_even_in_a_tight_loop() {
        let readings: Vec<String> = (0..10_000).map(|_| now_iso()).collect();
        for pair in readings.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
    }
}
