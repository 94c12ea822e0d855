//! Task worktrees reused across the tasks of a batch on branches: a task takes a free
//! one, reset to its base ([`TaskWorktree::reset`]), and gives it back when its run
//! ends, so a batch makes one worktree per task running at once instead of one per task.
//! Making a worktree writes every tracked file and removing it deletes them (seconds on
//! a repository of 20,000 files); a reset touches only what the last task changed, after
//! git has compared the tree with its index.
//!
//! The worktrees are removed when the batch ends ([`WorktreeSlots::close`]); each holds
//! its lock while the process lives, so those of a killed batch are removed by the next
//! branch run, like any run's.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::worktree::{MainRepo, TaskWorktree, prune_stale};

#[derive(Default)]
pub struct WorktreeSlots {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    free: Vec<TaskWorktree>,
    /// Whether the worktrees a killed run left were looked for: once a batch is enough.
    pruned: bool,
    /// The longest that making one worktree took, once one was made.
    slowest_create: Option<Duration>,
}

impl WorktreeSlots {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A worktree of `base` for one task: a free one reset, else a new one in `home`
    /// named `id`. Returns notes on what was done besides (stale worktrees removed).
    pub fn take(
        &self,
        main: &MainRepo,
        home: &Path,
        id: &str,
        base: &str,
    ) -> Result<(TaskWorktree, Vec<String>)> {
        let (reused, prune) = {
            let mut state = self.state();
            let index = state.free.iter().position(|worktree| worktree.of(main));
            let prune = !std::mem::replace(&mut state.pruned, true);
            (index.map(|index| state.free.swap_remove(index)), prune)
        };
        if let Some(mut worktree) = reused {
            match worktree.reset(base) {
                Ok(()) => return Ok((worktree, Vec::new())),
                // A worktree that cannot be reset is replaced by a new one.
                Err(_) => {
                    let _ = worktree.remove();
                }
            }
        }
        let mut notes = Vec::new();
        if prune {
            let stale = prune_stale(main, home);
            if !stale.is_empty() {
                notes.push(format!(
                    "removed {} task worktree(s) an interrupted run left",
                    stale.len()
                ));
            }
        }
        let started = Instant::now();
        let worktree = TaskWorktree::create(main, home, id, base)?;
        let took = started.elapsed();
        let mut state = self.state();
        state.slowest_create = Some(
            state
                .slowest_create
                .map_or(took, |slowest| slowest.max(took)),
        );
        Ok((worktree, notes))
    }

    /// Whether one more worktree is cheap enough for a task to run ahead in: known only
    /// once one was made, and within [`crate::defaults::RUN_AHEAD_WORKTREE_BUDGET`].
    pub fn cheap_to_add(&self) -> bool {
        self.state()
            .slowest_create
            .is_some_and(|took| took <= crate::defaults::RUN_AHEAD_WORKTREE_BUDGET)
    }

    /// Takes back a worktree whose task ended, for the next task.
    pub fn give_back(&self, worktree: TaskWorktree) {
        self.state().free.push(worktree);
    }

    /// Removes every worktree given back; returns what could not be removed, for a
    /// warning (the next branch run removes those).
    pub fn close(&self) -> Vec<String> {
        let free = std::mem::take(&mut self.state().free);
        free.into_iter()
            .filter_map(|worktree| {
                let path = worktree.path.clone();
                worktree.remove().err().map(|error| {
                    format!(
                        "the task worktree {} could not be removed ({error}); the next branch run removes it",
                        path.display()
                    )
                })
            })
            .collect()
    }
}
