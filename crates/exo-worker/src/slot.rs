//! One slot: runs its tasks one after another. A task's final write goes
//! out while the slot runs its next task, and after a short task the write
//! claims tasks ahead (the lookahead), so that the slot has its next task
//! in hand when the write lands. A task held ahead is handed back to the
//! queue when the task before it runs long.

use std::{collections::VecDeque, sync::Arc};

use exo_broker::Lease;
use exo_observability::record::{self, TaskLabels};
use tokio::task::{JoinError, JoinSet};

use crate::{
    attempt::{Held, run_attempt, write_attempt},
    execute::Executor,
    hooks::TaskHooks,
    state::Shared,
};

/// A slot's tasks: those in hand, and the final writes under way with the
/// tasks they claim for it.
struct Slot {
    shared: Arc<Shared>,
    held: VecDeque<Held>,
    /// Final writes under way; each gives back how many tasks it asked
    /// for and the tasks it claimed.
    writes: JoinSet<(usize, Vec<Held>)>,
    /// Tasks asked for by the writes under way.
    coming: usize,
    /// The task the slot runs started a while ago: what writes bring now is
    /// handed back at once.
    long: bool,
    /// Hand-backs under way; the slot ends after them (a drain waits).
    returns: JoinSet<()>,
    /// This slot's share of the worker's tasks ahead (`Slots::ahead`).
    counted: usize,
}

/// Runs `first`, then the tasks its final writes claim, until none come.
pub(crate) async fn run_slot(
    shared: Arc<Shared>,
    executor: Arc<dyn Executor>,
    hooks: Arc<dyn TaskHooks>,
    first: Held,
) {
    let mut slot = Slot {
        shared,
        held: VecDeque::from([first]),
        writes: JoinSet::new(),
        coming: 0,
        long: false,
        returns: JoinSet::new(),
        counted: 0,
    };
    let shared = slot.shared.clone();
    loop {
        while let Some(landed) = slot.writes.try_join_next() {
            slot.landed(landed);
        }
        while slot.returns.try_join_next().is_some() {}
        let Some(held) = slot.held.pop_front() else {
            match slot.writes.join_next().await {
                Some(landed) => {
                    slot.landed(landed);
                    continue;
                }
                None => break,
            }
        };
        if shared.shutdown.is_cancelled() {
            // A drain finishes what runs and starts nothing new.
            slot.held.push_front(held);
            slot.hand_back();
            continue;
        }
        slot.count_ahead();
        record::task_started(
            TaskLabels::new(shared.config.broker.keys.queue(), &shared.worker_id),
            held.task.payload.created_at,
            exo_proto::time::now_seconds(),
        );
        slot.long = false;
        let ended = if slot.held.is_empty() && slot.coming == 0 {
            run_attempt(&shared, &executor, held).await
        } else {
            // Tasks held ahead wait for this one: if it runs long, they go
            // back to the queue for another slot or worker.
            let run = run_attempt(&shared, &executor, held);
            tokio::pin!(run);
            let wait = tokio::time::sleep(shared.config.lookahead_window);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    ended = &mut run => break ended,
                    () = &mut wait, if !slot.long => {
                        slot.long = true;
                        slot.hand_back();
                    }
                    Some(landed) = slot.writes.join_next(), if !slot.writes.is_empty() => {
                        slot.landed(landed);
                    }
                }
            }
        };
        let Some(ended) = ended else {
            continue;
        };
        // The slot wants its next task in hand when this write lands, and,
        // after a short task, what the other slots leave of the worker's
        // `lookahead`.
        let short = ended.ran_for < shared.config.lookahead_window;
        let ahead = if short {
            let others = shared.slots.ahead().saturating_sub(slot.counted);
            shared.config.lookahead.saturating_sub(others)
        } else {
            0
        };
        let next = (1 + ahead).saturating_sub(slot.held.len() + slot.coming);
        slot.coming += next;
        slot.count_ahead();
        let write = write_attempt(shared.clone(), hooks.clone(), ended, next);
        if slot.held.is_empty() && slot.writes.is_empty() {
            // Nothing to run meanwhile: the slot waits for its write itself.
            let claimed = write.await;
            slot.landed(Ok((next, claimed)));
        } else {
            slot.writes.spawn(async move { (next, write.await) });
        }
    }
    slot.count_ahead();
    while slot.returns.join_next().await.is_some() {}
}

impl Slot {
    /// Brings this slot's share of `Slots::ahead` up to date: what it holds
    /// or has coming beyond its next task.
    fn count_ahead(&mut self) {
        let now = (self.held.len() + self.coming).saturating_sub(1);
        self.shared.slots.count_ahead(self.counted, now);
        self.counted = now;
    }

    /// A final write landed with the tasks it claimed.
    fn landed(&mut self, landed: Result<(usize, Vec<Held>), JoinError>) {
        match landed {
            Ok((asked, claimed)) => {
                self.coming = self.coming.saturating_sub(asked);
                self.held.extend(claimed);
                if self.long {
                    self.hand_back();
                }
                self.count_ahead();
            }
            // A write panicked: what it claimed is orphaned, and the
            // heartbeat hands it back.
            Err(error) => {
                tracing::error!(%error, "a final write panicked");
                self.coming = 0;
                self.count_ahead();
            }
        }
    }

    /// Hands the tasks held ahead back to the queue (each on a new attempt,
    /// without charging a retry), and forgets them once that landed.
    fn hand_back(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held: Vec<Held> = self.held.drain(..).collect();
        self.count_ahead();
        let shared = self.shared.clone();
        self.returns.spawn(async move {
            let leases: Vec<Lease> = held.iter().map(|held| held.task.lease.clone()).collect();
            match shared.session.release(&leases).await {
                Ok(count) => {
                    record::tasks_handed_back(
                        TaskLabels::new(shared.config.broker.keys.queue(), &shared.worker_id),
                        count,
                    );
                    tracing::debug!(count, "handed back tasks held ahead");
                }
                // Still registered until here, so their leases were renewed;
                // once forgotten, the heartbeat hands them back as orphans.
                Err(error) => {
                    tracing::warn!(%error, "could not hand back tasks held ahead; the heartbeat will")
                }
            }
            for held in &held {
                shared.registry.unregister(&held.running);
            }
        });
    }
}
