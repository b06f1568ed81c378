//! Exponential backoff as a value: the waits between attempts at
//! something that failed, for every crate that retries.

use std::time::Duration;

/// Exponential backoff with a cap and optional jitter.
///
/// The wait before attempt `n` (counted from 0) is `base · multiplierⁿ`,
/// capped at `max`, then scaled by a factor the [`Jitter`] picks from a
/// caller's random sample. It is pure: [`Backoff::delay`] is the wait
/// without jitter, and [`Backoff::jittered`] takes the random sample as an
/// argument, so that the same sample always gives the same wait and tests
/// can list them.
///
/// ```
/// use std::time::Duration;
/// use exo_proto::{Backoff, Jitter};
///
/// let backoff = Backoff {
///     base: Duration::from_millis(100),
///     multiplier: 2,
///     max: Duration::from_secs(5),
///     jitter: Jitter::UpperHalf,
/// };
/// assert_eq!(backoff.delay(3), Duration::from_millis(800));
/// assert_eq!(backoff.delay(10), Duration::from_secs(5));
/// assert_eq!(backoff.jittered(3, 0.0), Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry (attempt 0).
    pub base: Duration,
    /// How much each attempt's wait grows over the previous one. 2 doubles
    /// it; 0 and 1 keep every wait at `base`.
    pub multiplier: u32,
    /// The longest wait before jitter.
    pub max: Duration,
    /// How the wait is spread so that many clients do not retry in step.
    pub jitter: Jitter,
}

/// How a [`Backoff`] spreads its waits: the factor a random sample in
/// `[0, 1]` scales the capped wait by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// No spread: every wait is exactly [`Backoff::delay`].
    None,
    /// A factor in `[0.5, 1]`: anywhere in the upper half of the wait, so
    /// clients drift apart without waiting much less than the backoff.
    UpperHalf,
    /// A factor in `[1 - f, 1 + f]` for the fraction `f` (0.2 is ±20 %). A
    /// fraction that is not above 0 means no spread.
    Proportional(f64),
}

impl Jitter {
    /// The factor `sample` (clamped to `[0, 1]`) stands for; never negative.
    pub fn factor(&self, sample: f64) -> f64 {
        let sample = if sample.is_nan() {
            0.5
        } else {
            sample.clamp(0.0, 1.0)
        };
        match *self {
            Jitter::None => 1.0,
            Jitter::UpperHalf => 0.5 + 0.5 * sample,
            Jitter::Proportional(fraction) if fraction > 0.0 => {
                (1.0 - fraction + 2.0 * fraction * sample).max(0.0)
            }
            Jitter::Proportional(_) => 1.0,
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt` (0 is the first retry), without
    /// jitter: `base · multiplier^attempt`, capped at `max`. It never
    /// overflows: growth stops at the cap.
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut wait = self.base.min(self.max);
        if self.multiplier < 2 {
            return wait;
        }
        // Each step at least doubles the wait until it reaches the cap, so
        // this loop runs at most about a hundred times whatever `attempt` is.
        for _ in 0..attempt {
            if wait >= self.max || wait.is_zero() {
                break;
            }
            wait = wait.saturating_mul(self.multiplier).min(self.max);
        }
        wait
    }

    /// The wait before attempt `attempt` with jitter: [`Backoff::delay`]
    /// scaled by the factor `sample` (a uniform draw from `[0, 1]`) stands
    /// for. The same sample always gives the same wait.
    pub fn jittered(&self, attempt: u32, sample: f64) -> Duration {
        let wait = self.delay(attempt);
        let factor = self.jitter.factor(sample);
        if factor == 1.0 {
            return wait;
        }
        Duration::try_from_secs_f64(wait.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Backoff, Jitter};

    fn millis(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// The backoffs exo uses, by where they are used, with their waits for
    /// attempts 0 to 7 and the smallest and largest jittered wait.
    #[test]
    fn the_waits_of_each_backoff() {
        let cases: &[(&str, Backoff, [u64; 8], [(u32, u64, u64); 2])] = &[
            (
                "Redis reconnects",
                Backoff {
                    base: millis(100),
                    multiplier: 2,
                    max: millis(5_000),
                    jitter: Jitter::None,
                },
                [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000],
                [(0, 100, 100), (9, 5_000, 5_000)],
            ),
            (
                "worker loops",
                Backoff {
                    base: millis(100),
                    multiplier: 2,
                    max: millis(5_000),
                    jitter: Jitter::UpperHalf,
                },
                [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000],
                [(0, 50, 100), (6, 2_500, 5_000)],
            ),
            (
                "task retries",
                Backoff {
                    base: millis(1_000),
                    multiplier: 2,
                    max: millis(60_000),
                    jitter: Jitter::Proportional(0.2),
                },
                [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000],
                [(1, 1_600, 2_400), (7, 48_000, 72_000)],
            ),
            (
                "model calls",
                Backoff {
                    base: millis(500),
                    multiplier: 2,
                    max: millis(20_000),
                    jitter: Jitter::UpperHalf,
                },
                [500, 1_000, 2_000, 4_000, 8_000, 16_000, 20_000, 20_000],
                [(0, 250, 500), (5, 8_000, 16_000)],
            ),
            (
                "Temporal result polls",
                Backoff {
                    base: millis(200),
                    multiplier: 2,
                    max: millis(5_000),
                    jitter: Jitter::None,
                },
                [200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000],
                [(2, 800, 800), (5, 5_000, 5_000)],
            ),
            (
                "constant",
                Backoff {
                    base: millis(300),
                    multiplier: 1,
                    max: millis(5_000),
                    jitter: Jitter::Proportional(0.0),
                },
                [300; 8],
                [(0, 300, 300), (7, 300, 300)],
            ),
            (
                "base above the cap",
                Backoff {
                    base: millis(9_000),
                    multiplier: 3,
                    max: millis(5_000),
                    jitter: Jitter::None,
                },
                [5_000; 8],
                [(0, 5_000, 5_000), (7, 5_000, 5_000)],
            ),
        ];
        for (name, backoff, waits, spreads) in cases {
            let actual: Vec<u64> = (0..8)
                .map(|attempt| backoff.delay(attempt).as_millis() as u64)
                .collect();
            assert_eq!(actual, waits, "{name}");
            for (attempt, low, high) in spreads {
                let jittered = |sample: f64| backoff.jittered(*attempt, sample);
                assert_eq!(jittered(0.0), millis(*low), "{name}, attempt {attempt}");
                assert_eq!(jittered(1.0), millis(*high), "{name}, attempt {attempt}");
                let middle = jittered(0.5);
                assert!(
                    millis(*low) <= middle && middle <= millis(*high),
                    "{name}, attempt {attempt}: {middle:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_factors() {
        let cases = [
            (Jitter::None, 0.3, 1.0),
            (Jitter::UpperHalf, 0.0, 0.5),
            (Jitter::UpperHalf, 0.5, 0.75),
            (Jitter::UpperHalf, 1.0, 1.0),
            (Jitter::UpperHalf, -3.0, 0.5),
            (Jitter::UpperHalf, 7.0, 1.0),
            (Jitter::UpperHalf, f64::NAN, 0.75),
            (Jitter::Proportional(0.2), 0.0, 0.8),
            (Jitter::Proportional(0.2), 0.5, 1.0),
            (Jitter::Proportional(0.2), 1.0, 1.2),
            (Jitter::Proportional(1.5), 0.0, 0.0),
            (Jitter::Proportional(-0.2), 0.0, 1.0),
            (Jitter::Proportional(f64::NAN), 0.0, 1.0),
        ];
        for (jitter, sample, expected) in cases {
            let factor = jitter.factor(sample);
            assert!(
                (factor - expected).abs() < 1e-12,
                "{jitter:?} at {sample}: {factor}"
            );
        }
    }

    #[test]
    fn huge_attempts_and_durations_stay_in_range() {
        let backoff = Backoff {
            base: Duration::from_nanos(1),
            multiplier: 10,
            max: Duration::MAX,
            jitter: Jitter::Proportional(0.5),
        };
        assert_eq!(backoff.delay(u32::MAX), Duration::MAX);
        assert_eq!(backoff.jittered(u32::MAX, 1.0), Duration::MAX);
        assert_eq!(backoff.delay(3), Duration::from_nanos(1_000));
        let zero = Backoff {
            base: Duration::ZERO,
            ..backoff
        };
        assert_eq!(zero.jittered(u32::MAX, 1.0), Duration::ZERO);
    }
}
