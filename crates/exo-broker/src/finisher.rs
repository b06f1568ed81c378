//! Final writes of one worker's slots, sent together ([`Finisher`]).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use exo_proto::StreamEvent;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::{
    error::{Error, Result},
    ops::finish::FinishBlock,
    session::{Claim, ClaimedTask, FinishOptions, Finished, Outcome, WorkerSession, only},
};

impl WorkerSession {
    /// A finisher: final writes of this worker's slots that end together
    /// share one round trip ([`Finisher::finish_then_claim`]).
    pub fn finisher(&self) -> Finisher {
        Finisher {
            inner: Arc::new(FinisherInner {
                session: self.clone(),
                concurrency_rules: self.broker().config().concurrency.to_json(),
                queue: Mutex::new(VecDeque::new()),
                calls: Arc::new(Semaphore::new(FINISH_CALLS)),
                last_call: AtomicUsize::new(0),
            }),
        }
    }
}

/// Final writes of one worker's slots, sent together: the attempts that
/// end while a call is under way share the next call (one round trip, one
/// script run, and the claim of the slots' next tasks once for all). The
/// slot whose write finds a call free sends it itself (a lone slot pays no
/// hand-over); one that finds none free waits for the next. Get one from
/// [`WorkerSession::finisher`]; clones share it.
#[derive(Debug, Clone)]
pub struct Finisher {
    inner: Arc<FinisherInner>,
}

#[derive(Debug)]
struct FinisherInner {
    session: WorkerSession,
    concurrency_rules: String,
    /// Final writes waiting for a call, oldest first.
    queue: Mutex<VecDeque<FinishRequest>>,
    /// The calls under way (at most `FINISH_CALLS`).
    calls: Arc<Semaphore>,
    /// How many writes the last call carried.
    last_call: AtomicUsize,
}

/// One slot's final write, waiting for its call.
#[derive(Debug)]
struct FinishRequest {
    block: FinishBlock,
    current_task_after: Option<String>,
    reply: oneshot::Sender<Result<(Finished, Claim)>>,
}

/// The most attempts one call ends.
const FINISH_BATCH: usize = 64;
/// Calls of one finisher under way at once. The writes that end while a
/// call runs go together in the next, which a second call sends before the
/// first has come back only once as many writes wait as the call under way
/// carries (and at least `SECOND_CALL_AT`): Redis then has the next group's
/// writes while the worker reads the last reply, and calls keep their size.
const FINISH_CALLS: usize = 2;
/// The fewest writes a second call carries (below it, a lone slot's
/// writes go one call at a time, as they pile up behind the call under
/// way).
const SECOND_CALL_AT: usize = 8;
/// The most times a slot about to send a call yields to the others while
/// they keep adding writes to it.
const GATHER_YIELDS: usize = 8;

impl Finisher {
    /// [`Claimer::finish_then_claim`](crate::Claimer::finish_then_claim),
    /// in a call shared with the other slots' final writes that are ready
    /// at the same time. Each attempt is fenced and answered on its own:
    /// one that meets an error (a key of the wrong type) does not fail the
    /// others, and a call Redis refuses as a whole is sent again one
    /// attempt at a time, so the error reaches only the attempt it belongs
    /// to.
    pub async fn finish_then_claim(
        &self,
        task: &ClaimedTask,
        outcome: Outcome<'_>,
        events: Vec<String>,
        terminal: &StreamEvent,
        options: FinishOptions,
        next: usize,
    ) -> Result<(Finished, Claim)> {
        let inner = &self.inner;
        let block = inner
            .session
            .block(task, outcome, events, terminal, &options, next);
        let (reply, answer) = oneshot::channel();
        inner.lock().push_back(FinishRequest {
            block,
            current_task_after: options.current_task_after,
            reply,
        });
        if inner.may_lead()
            && let Ok(call) = inner.calls.clone().try_acquire_owned()
        {
            // A call is free: this slot sends the waiting writes, its own
            // among them. It lets the slots that are ready to run go
            // first, as long as they keep adding writes: those woken with
            // it (by the reply of the last call) end now too, and their
            // writes share this call.
            let mut waiting = inner.lock().len();
            for _ in 0..GATHER_YIELDS {
                tokio::task::yield_now().await;
                let now = inner.lock().len();
                if now == waiting {
                    break;
                }
                waiting = now;
            }
            Leader {
                inner: inner.clone(),
                call: Some(call),
            }
            .send_one()
            .await;
        }
        // A call that carried this write and was dropped (its slot was
        // aborted) dropped the answer: the caller writes again.
        answer
            .await
            .map_err(|_| Error::unreachable("the call that carried this final write was dropped"))?
    }
}

impl FinisherInner {
    fn lock(&self) -> MutexGuard<'_, VecDeque<FinishRequest>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a slot that just queued its write sends a call: when none
    /// is under way, or when a whole group waits behind the one under way
    /// (see `FINISH_CALLS`). A slot that does not lead is served by the
    /// call under way, whose sender looks for waiting writes once it
    /// returns.
    fn may_lead(&self) -> bool {
        let under_way = FINISH_CALLS - self.calls.available_permits();
        if under_way == 0 {
            return true;
        }
        let group = self.last_call.load(Ordering::Relaxed).max(SECOND_CALL_AT);
        self.lock().len() >= group
    }

    /// The oldest waiting writes, up to `FINISH_BATCH`.
    fn take(&self) -> Vec<FinishRequest> {
        let mut queue = self.lock();
        let count = queue.len().min(FINISH_BATCH);
        self.last_call.store(count, Ordering::Relaxed);
        queue.drain(..count).collect()
    }
}

/// The right to send one call. Whoever holds it last while writes still
/// wait (a slot that sent its call, or one dropped mid-call) hands it to a
/// task that sends them, so no write is left waiting.
struct Leader {
    inner: Arc<FinisherInner>,
    call: Option<OwnedSemaphorePermit>,
}

impl Leader {
    /// Sends the waiting writes (up to `FINISH_BATCH`) in one call.
    async fn send_one(&mut self) {
        let batch = self.inner.take();
        if !batch.is_empty() {
            let inner = &self.inner;
            finish_together(&inner.session, batch, &inner.concurrency_rules).await;
        }
    }

    /// Sends calls until no write waits.
    async fn send_all(mut self) {
        while !self.inner.lock().is_empty() {
            self.send_one().await;
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        if self.inner.lock().is_empty() {
            drop(call);
            // A write queued after the look above found no call free (this
            // one was still held): take the call back for it.
            if self.inner.lock().is_empty() {
                return;
            }
            match self.inner.calls.clone().try_acquire_owned() {
                Ok(call) => self.call = Some(call),
                // Another slot took it, and sends that write.
                Err(_) => return,
            }
        }
        let next = Leader {
            inner: self.inner.clone(),
            call: self.call.take(),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(next.send_all());
        }
    }
}

/// One call for `batch`, each answer to its slot.
async fn finish_together(session: &WorkerSession, batch: Vec<FinishRequest>, rules: &str) {
    let current = batch
        .iter()
        .rev()
        .find_map(|request| request.current_task_after.clone());
    let (blocks, waiters): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|request| (request.block, (request.reply, request.current_task_after)))
        .unzip();
    let alone = blocks.len() == 1;
    match session
        .finish_blocks(&blocks, current.as_deref(), rules)
        .await
    {
        Ok((finished, claims)) => {
            let mut unclaimed = Vec::new();
            for (((reply, _), finished), claim) in waiters.into_iter().zip(finished).zip(claims) {
                // A slot that stopped waiting (a forced shutdown) hands
                // back what was claimed for it.
                if let Err(Ok((_, claim))) = reply.send(finished.map(|finished| (finished, claim)))
                {
                    unclaimed.extend(claim.tasks.into_iter().map(|task| task.lease));
                }
            }
            if !unclaimed.is_empty() {
                let _ = session.release(&unclaimed).await;
            }
        }
        Err(error) if !alone && !error.is_transient() => {
            // Redis refused the call as a whole, maybe for one attempt's
            // arguments: each goes alone, so the error reaches its own.
            for ((reply, current), block) in waiters.into_iter().zip(blocks) {
                let result = session
                    .finish_blocks(std::slice::from_ref(&block), current.as_deref(), rules)
                    .await
                    .and_then(only);
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            for (reply, _) in waiters {
                let _ = reply.send(Err(error.copy()));
            }
        }
    }
}
