//! Queue samples for the dashboard's throughput chart: every interval, the
//! gateway reads the fleet's task counters and the queue's numbers and keeps
//! the last 15 minutes in memory.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use exo_broker::Broker;
use serde::Serialize;
use utoipa::ToSchema;

/// How far back the samples go.
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Sample {
    /// When (Unix seconds).
    pub at: f64,
    /// Tasks finished (completed or failed) per second since the previous
    /// sample, from the workers' counters.
    pub finished_per_second: f64,
    /// Tasks waiting to start.
    pub depth: u64,
    /// Tasks claimed and not yet finished.
    pub pending: u64,
    /// Entries in the dead-letter stream.
    pub dead_letter: u64,
}

/// The samples, shared between the sampler and the handlers.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl History {
    /// The samples, oldest first.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|samples| samples.iter().copied().collect())
            .unwrap_or_default()
    }

    fn push(&self, sample: Sample, capacity: usize) {
        if let Ok(mut samples) = self.samples.lock() {
            samples.push_back(sample);
            while samples.len() > capacity {
                samples.pop_front();
            }
        }
    }

    /// Samples every `interval` until the task is aborted.
    pub(crate) async fn run(self, broker: Broker, interval: Duration) {
        let capacity = (WINDOW.as_secs_f64() / interval.as_secs_f64().max(0.1)).ceil() as usize + 1;
        let mut previous: Option<(f64, u64)> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let admin = broker.admin();
            let (fleet, stats) = match tokio::try_join!(admin.fleet(), admin.queue_stats()) {
                Ok(read) => read,
                Err(error) => {
                    tracing::debug!(%error, "queue sample skipped");
                    continue;
                }
            };
            let now = exo_proto::time::now_seconds();
            let finished: u64 = fleet
                .iter()
                .filter_map(|entry| entry.health.as_ref())
                .map(|health| health.tasks_processed + health.tasks_failed)
                .sum();
            let rate = match previous {
                // Workers that left take their counters with them: a drop
                // is not negative throughput.
                Some((at, before)) if now > at => {
                    finished.saturating_sub(before) as f64 / (now - at)
                }
                _ => 0.0,
            };
            previous = Some((now, finished));
            self.push(
                Sample {
                    at: now,
                    finished_per_second: rate,
                    depth: stats.depth(),
                    pending: stats.pending,
                    dead_letter: stats.dead_letter,
                },
                capacity,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_window_only() {
        let history = History::default();
        for at in 0..10 {
            history.push(
                Sample {
                    at: f64::from(at),
                    finished_per_second: 0.0,
                    depth: 0,
                    pending: 0,
                    dead_letter: 0,
                },
                4,
            );
        }
        let kept: Vec<f64> = history.samples().iter().map(|sample| sample.at).collect();
        assert_eq!(kept, [6.0, 7.0, 8.0, 9.0]);
    }
}
