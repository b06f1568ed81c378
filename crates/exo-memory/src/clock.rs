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
//! they were made, on every backend. The text itself is
//! [`exo_proto::time::iso8601_micros`].

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
    exo_proto::time::iso8601_micros(now_micros())
}

#[cfg(test)]
mod tests {
    use super::now_iso;

    #[test]
    fn readings_strictly_increase_even_in_a_tight_loop() {
        let readings: Vec<String> = (0..10_000).map(|_| now_iso()).collect();
        for pair in readings.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
    }
}
