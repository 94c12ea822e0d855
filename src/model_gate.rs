//! A batch's model-call gate: at most `jobs` model calls in flight across its tasks, so
//! the other tasks' own work (prepare, write, test, diff, commit, record) overlaps them.
//!
//! A run holds a permit only while it waits for a reply (the writer's and the
//! validator's calls), and gives it back as soon as the reply is in. Each task's first
//! call takes its turn by a ticket the batch gave it when the task started, so first
//! calls follow the order tasks started in (the plan's order among ready tasks), not
//! which run happened to prepare faster; later calls (repairs, reviews) queue first
//! come, first served (tokio's semaphore is fair). Once the batch stops (a failure under
//! `--fail-fast`, a signal), a run that has not yet made its first call gets no permit:
//! it ends without calling the model and is reported `skipped`, having written nothing.
//! A run already past its first call goes on as a running task always did.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::signal::Signal;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::cancel::Cancel;
use crate::error::{Error, Result};

/// A run's leave to make one model call; the call's slot is free again when dropped.
pub type Permit = OwnedSemaphorePermit;

/// The gate a batch shares with its tasks' runs.
#[derive(Debug)]
pub struct ModelGate {
    permits: Arc<Semaphore>,
    queue: Mutex<Queue>,
    /// Woken when the first ticket in line changes or the batch stops.
    turn: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    next: u64,
    /// Tickets of started tasks that have neither been let through nor ended.
    waiting: BTreeSet<u64>,
    /// Why runs that have not called the model yet must not: set once, kept.
    stopped: Option<String>,
}

/// One task's place in a batch's gate, carried by its run's options.
#[derive(Debug, Clone)]
pub struct Pass {
    pub gate: Arc<ModelGate>,
    pub ticket: u64,
}

impl ModelGate {
    /// A gate for `calls` model calls at once (at least 1).
    pub fn new(calls: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(calls.max(1))),
            queue: Mutex::new(Queue::default()),
            turn: Notify::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place in line for a task starting now, after every task started before it.
    pub fn pass(self: &Arc<Self>) -> Pass {
        let mut queue = self.queue();
        let ticket = queue.next;
        queue.next += 1;
        queue.waiting.insert(ticket);
        Pass {
            gate: Arc::clone(self),
            ticket,
        }
    }

    /// The task of `ticket` no longer waits (it was let through, or it ended without
    /// reaching the model): the next in line may go.
    pub fn retire(&self, ticket: u64) {
        if self.queue().waiting.remove(&ticket) {
            self.turn.notify_waiters();
        }
    }

    /// From now on a run's first call is refused, with `reason` as its summary. The first
    /// reason given stays.
    pub fn stop(&self, reason: String) {
        self.queue().stopped.get_or_insert(reason);
        self.turn.notify_waiters();
    }

    fn stop_reason(&self) -> Option<String> {
        self.queue().stopped.clone()
    }
}

impl Pass {
    /// The permit for the run's first model call, once the tasks started before it had
    /// theirs; or why the run must not make it (the batch stopped, or a signal came,
    /// while it waited).
    pub async fn first(&self, cancel: &Cancel) -> std::result::Result<Permit, String> {
        let granted = self.wait_first(cancel).await;
        self.gate.retire(self.ticket);
        let permit = granted?;
        match self.gate.stop_reason() {
            Some(reason) => Err(reason),
            None => Ok(permit),
        }
    }

    async fn wait_first(&self, cancel: &Cancel) -> std::result::Result<Permit, String> {
        let interrupted = |signal: Signal| {
            format!(
                "not run: the batch was interrupted by {} before this task reached the model",
                signal.as_str()
            )
        };
        loop {
            // Registered before the queue is read, so a change in between still wakes it.
            let changed = self.gate.turn.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(signal) = cancel.signal() {
                return Err(interrupted(signal));
            }
            {
                let queue = self.gate.queue();
                if let Some(reason) = &queue.stopped {
                    return Err(reason.clone());
                }
                if queue.waiting.first() == Some(&self.ticket) {
                    break;
                }
            }
            tokio::select! {
                biased;
                signal = cancel.cancelled() => return Err(interrupted(signal)),
                () = &mut changed => {}
            }
        }
        let permit = tokio::select! {
            biased;
            signal = cancel.cancelled() => return Err(interrupted(signal)),
            permit = Arc::clone(&self.gate.permits).acquire_owned() => permit,
        };
        // The semaphore is never closed: this cannot fail, but would be no call either.
        permit.map_err(|_| "not run: the batch's model gate closed".to_owned())
    }

    /// The permit for a later call of a run already under way (a repair, the validator's
    /// review): it finishes as a running task does, stopped only by a signal.
    pub async fn next(&self, cancel: &Cancel) -> Result<Permit> {
        let permit = cancel
            .or_cancel(Arc::clone(&self.gate.permits).acquire_owned())
            .await?;
        permit.map_err(|_| Error::Usage("the batch's model gate closed".to_owned()))
    }
}
