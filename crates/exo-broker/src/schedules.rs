//! Cron schedules kept in Redis and fired by every worker, with no leader:
//! each tick becomes exactly one task, however many workers see it due and
//! whichever of them dies while firing it.
//!
//! A tick's task id is made from the schedule's name and the tick's time
//! (`sched.{name}.{unix seconds}`), and a submit of an existing id is a
//! no-op, so firing is: submit the tick's task, then move the schedule to
//! its next tick only if it is still at the tick that was read
//! (`schedule.lua`). Ticks missed while no worker ran (an outage) collapse
//! into one: the latest of them fires once, and the schedule goes on from
//! there.

use std::str::FromStr as _;

use chrono::{DateTime, TimeZone as _, Utc};
use croner::Cron;
use exo_proto::TaskPayload;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    broker::Broker,
    error::{Error, Result},
    ops::schedule::{ScheduleCall, ScheduleReply},
};

/// One schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// 1 to 64 letters, digits, `_`, `-` or `.`.
    pub name: String,
    /// A cron expression: five fields (minute to weekday) or six (seconds
    /// first), in UTC.
    pub cron: String,
    /// The task each tick submits (its `task_id` and `created_at` are made
    /// per tick; `metadata.schedule` says which schedule and tick).
    pub payload: TaskPayload,
    /// The queue its tasks go to; only that queue's workers fire it.
    #[serde(default)]
    pub queue: String,
    /// When it fires next (Unix seconds).
    pub next_at: f64,
    /// The last tick fired (Unix seconds).
    #[serde(default)]
    pub last_tick: Option<f64>,
    /// When it was added (Unix seconds).
    pub created_at: f64,
}

/// A tick this caller fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The schedule.
    pub schedule: String,
    /// The tick (Unix seconds).
    pub tick: f64,
    /// The tick's task.
    pub task_id: String,
    /// False when the task existed already (another worker fired the tick
    /// first).
    pub created: bool,
}

/// The schedule operations of a broker (see [`Broker::schedules`]).
#[derive(Debug, Clone)]
pub struct Schedules {
    broker: Broker,
}

/// Parses a cron expression (five or six fields).
pub fn parse_cron(expression: &str) -> Result<Cron> {
    Cron::from_str(expression).map_err(|error| Error::Refused {
        reason: format!("`{expression}` is not a cron expression: {error}"),
    })
}

fn at_ms(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX))
        .single()
        .unwrap_or_else(Utc::now)
}

fn seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp_millis() as f64 / 1000.0
}

fn ms(time: DateTime<Utc>) -> u64 {
    u64::try_from(time.timestamp_millis()).unwrap_or(0)
}

/// The tick's task id.
pub fn tick_task_id(name: &str, tick: f64) -> String {
    format!("sched.{name}.{}", tick.floor() as i64)
}

impl Schedules {
    pub(crate) fn new(broker: Broker) -> Self {
        Schedules { broker }
    }

    /// Adds a schedule, or replaces the one of that name. It first fires
    /// at the expression's next time.
    pub async fn put(&self, name: &str, cron: &str, mut payload: TaskPayload) -> Result<Schedule> {
        let parsed = parse_cron(cron)?;
        let now = Utc::now();
        let next = parsed
            .find_next_occurrence(&now, false)
            .map_err(|error| Error::Refused {
                reason: format!("`{cron}` never fires: {error}"),
            })?;
        payload.task_id = tick_task_id(name, seconds(next));
        payload.validate()?;
        payload.task_id = String::new();
        // Each tick is a task of its own: a template's key would make every
        // tick a repeat of the first.
        payload.idempotency_key = None;
        let limit = self.broker.config().max_payload_bytes;
        let size = payload.to_json().len();
        if limit > 0 && size + 256 > limit {
            return Err(Error::PayloadTooLarge { size, limit });
        }
        let schedule = Schedule {
            name: name.to_owned(),
            cron: cron.to_owned(),
            payload,
            queue: self.broker.keys().queue().to_owned(),
            next_at: seconds(next),
            last_tick: None,
            created_at: seconds(now),
        };
        self.broker
            .call(&ScheduleCall::Put {
                name,
                json: serde_json::to_string(&schedule).expect("a schedule is JSON"),
                next_ms: ms(next),
            })
            .await?;
        Ok(schedule)
    }

    /// Removes a schedule; false when there was none.
    pub async fn remove(&self, name: &str) -> Result<bool> {
        match self.broker.call(&ScheduleCall::Remove { name }).await? {
            ScheduleReply::Changed(changed) => Ok(changed),
            ScheduleReply::Due { .. } => Ok(false),
        }
    }

    /// Every schedule, by name. One that does not decode is left out.
    pub async fn list(&self) -> Result<Vec<Schedule>> {
        let mut schedules: Vec<Schedule> = self
            .broker
            .read_hash(&self.broker.keys().schedules())
            .await?
            .into_values()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        schedules.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(schedules)
    }

    /// Fires every schedule that is due: its tick's task is submitted and
    /// the schedule moves to its next tick. Safe to call from every worker
    /// at once. Returns the ticks this call fired (or found fired).
    pub async fn fire_due(&self) -> Result<Vec<Fired>> {
        let ScheduleReply::Due { now_ms, schedules } =
            self.broker.call(&ScheduleCall::Due { limit: 100 }).await?
        else {
            return Ok(Vec::new());
        };
        let now = at_ms(now_ms);
        let client = self.broker.client();
        let own_queue = self.broker.keys().queue();
        let mut fired = Vec::new();
        for due in schedules {
            let Ok(mut schedule) = serde_json::from_str::<Schedule>(&due.json) else {
                tracing::warn!(
                    schedule = due.name,
                    "a schedule that does not decode; parked for a minute"
                );
                self.park(&due.name, due.json.clone(), due.due_ms, now_ms)
                    .await?;
                continue;
            };
            if !schedule.queue.is_empty() && schedule.queue != own_queue {
                continue;
            }
            let cron = match parse_cron(&schedule.cron) {
                Ok(cron) => cron,
                Err(error) => {
                    tracing::warn!(schedule = due.name, %error, "a schedule with a bad cron expression; parked for a minute");
                    self.park(&due.name, due.json.clone(), due.due_ms, now_ms)
                        .await?;
                    continue;
                }
            };
            // Missed ticks collapse into the latest one.
            let read = at_ms(due.due_ms);
            let tick = match cron.find_previous_occurrence(&now, true) {
                Ok(latest) if latest > read => latest,
                _ => read,
            };
            let Ok(next) = cron.find_next_occurrence(&now, false) else {
                tracing::warn!(
                    schedule = due.name,
                    "a schedule that never fires again; parked for a minute"
                );
                self.park(&due.name, due.json.clone(), due.due_ms, now_ms)
                    .await?;
                continue;
            };
            let mut payload = schedule.payload.clone();
            payload.task_id = tick_task_id(&schedule.name, seconds(tick));
            payload.created_at = 0.0;
            payload.metadata.insert(
                "schedule".to_owned(),
                json!({"name": schedule.name, "tick": seconds(tick)}),
            );
            let handle = match client.submit(payload).await {
                Ok(handle) => Some(handle),
                // A tick that can never be submitted is skipped, so it does
                // not hold the schedule (or the others) back.
                Err(
                    error
                    @ (Error::PayloadTooLarge { .. } | Error::Wire(_) | Error::Refused { .. }),
                ) => {
                    tracing::warn!(schedule = schedule.name, %error, "the tick's task cannot be submitted; tick skipped");
                    None
                }
                Err(error) => return Err(error),
            };
            schedule.last_tick = Some(seconds(tick));
            schedule.next_at = seconds(next);
            self.broker
                .call(&ScheduleCall::Advance {
                    name: &schedule.name,
                    json: serde_json::to_string(&schedule).expect("a schedule is JSON"),
                    next_ms: ms(next),
                    read_ms: due.due_ms,
                })
                .await?;
            if let Some(handle) = handle {
                fired.push(Fired {
                    schedule: schedule.name.clone(),
                    tick: seconds(tick),
                    task_id: handle.task_id().to_owned(),
                    created: handle.submitted() == crate::client::Submitted::Created,
                });
            }
        }
        Ok(fired)
    }

    /// Moves a schedule that cannot fire a minute ahead, as it is, so it
    /// neither blocks the others nor is retried every second.
    async fn park(&self, name: &str, json: String, read_ms: u64, now_ms: u64) -> Result<()> {
        self.broker
            .call(&ScheduleCall::Advance {
                name,
                json,
                next_ms: now_ms + 60_000,
                read_ms,
            })
            .await?;
        Ok(())
    }
}

/// The schedule as JSON for listings.
pub fn schedule_json(schedule: &Schedule) -> Value {
    json!({
        "name": schedule.name,
        "cron": schedule.cron,
        "queue": schedule.queue,
        "next_at": schedule.next_at,
        "last_tick": schedule.last_tick,
        "created_at": schedule.created_at,
        "agent_name": schedule.payload.agent_spec().map(|spec| spec.name()).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_and_tick_ids() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(
            parse_cron("*/2 * * * * *").is_ok(),
            "six fields: seconds first"
        );
        assert!(parse_cron("every minute").is_err());
        assert_eq!(
            tick_task_id("nightly", 1_800_000_000.0),
            "sched.nightly.1800000000"
        );
        let cron = parse_cron("0 * * * *").unwrap();
        let at = at_ms(1_800_000_123_000);
        let next = cron.find_next_occurrence(&at, false).unwrap();
        assert_eq!(next.timestamp() % 3600, 0);
        assert!(next > at);
        let previous = cron.find_previous_occurrence(&at, true).unwrap();
        assert!(previous <= at && at.timestamp() - previous.timestamp() < 3600);
    }
}
