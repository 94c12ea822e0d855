//! `prune`: the retention of runs' backups. A run's journal is kept while it is among the
//! newest runs or young; older ones are removed, by `prune` and at the start of every run,
//! and never while their run is still running.
//!
//! Age is read from the run id, which starts with the run's UTC start time and so sorts by
//! it (see [`crate::write::new_run_id`]): no file's time is trusted, and a directory whose
//! name is not such an id sorts as the youngest and is never removed.

use std::fs::{self, File, TryLockError};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lock;
use crate::repo::Repo;

/// The variable that changes [`Retention::keep`] (until a config file does).
pub const KEEP_RUNS_ENV: &str = "LOCAL_TASK_KEEP_RUNS";
/// The variable that changes [`Retention::older_than_days`].
pub const KEEP_DAYS_ENV: &str = "LOCAL_TASK_KEEP_DAYS";

/// Which runs' backups stay: a run is removed only when it is not among the newest `keep`
/// runs *and* is older than `older_than_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep: usize,
    pub older_than_days: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: crate::defaults::KEEP_RUNS,
            older_than_days: crate::defaults::KEEP_DAYS,
        }
    }
}

impl Retention {
    /// The defaults, changed by [`KEEP_RUNS_ENV`] and [`KEEP_DAYS_ENV`] where they are set.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |name: &str| -> Result<Option<u64>> {
            env(name)
                .map(|value| {
                    value.trim().parse::<u64>().map_err(|_| {
                        Error::Usage(format!(
                            "{name}=`{value}` is not a whole number of {}",
                            if name == KEEP_RUNS_ENV {
                                "runs"
                            } else {
                                "days"
                            }
                        ))
                    })
                })
                .transpose()
        };
        let defaults = Self::default();
        Ok(Self {
            keep: number(KEEP_RUNS_ENV)?
                .map_or(defaults.keep, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            older_than_days: number(KEEP_DAYS_ENV)?.unwrap_or(defaults.older_than_days),
        })
    }
}

impl Retention {
    /// These limits, with those the command line gives instead.
    #[must_use]
    pub fn overridden(self, keep: Option<usize>, older_than_days: Option<u64>) -> Self {
        Self {
            keep: keep.unwrap_or(self.keep),
            older_than_days: older_than_days.unwrap_or(self.older_than_days),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneReport {
    /// True when nothing was removed: `pruned` lists what would have been.
    pub dry_run: bool,
    pub keep: usize,
    pub older_than_days: u64,
    /// The runs removed, oldest first.
    pub pruned: Vec<String>,
    /// Runs past the retention that are still running, left alone.
    pub running: Vec<String>,
    /// How many runs remain.
    pub remaining: usize,
}

/// `execute-local-task prune`: under the repository lock (no run is writing and no
/// rollback is reading backups), removes the runs past `retention`.
pub async fn prune(
    repo_dir: &Path,
    retention: Retention,
    dry_run: bool,
    lock_timeout: Duration,
) -> Result<PruneReport> {
    let repo = Repo::discover(repo_dir)?;
    let _lock = lock::acquire(&repo, lock_timeout).await?;
    prune_runs(&repo, retention, dry_run)
}

/// The pruning at the start of a run: only when there are more runs than `keep`, and only
/// when the repository lock is free at once (a run never waits to prune). Best effort: a
/// run is not the place to fail for old backups.
pub fn at_start(repo: &Repo, env: &dyn Fn(&str) -> Option<String>) {
    let Ok(retention) = Retention::from_env(env) else {
        return;
    };
    let over = fs::read_dir(repo.state_dir().join("runs"))
        .is_ok_and(|entries| entries.count() > retention.keep);
    if !over {
        return;
    }
    if let Ok(Some(_lock)) = lock::try_acquire(repo) {
        let _ = prune_runs(repo, retention, false);
    }
}

fn prune_runs(repo: &Repo, retention: Retention, dry_run: bool) -> Result<PruneReport> {
    let state = repo.state_dir();
    let runs = state.join("runs");
    let trash = state.join("trash");
    // What a prune killed while removing left behind.
    let _ = fs::remove_dir_all(&trash);
    let ids = run_ids(&runs)?;
    let cutoff = stamp_days_ago(retention.older_than_days);
    let mut report = PruneReport {
        dry_run,
        keep: retention.keep,
        older_than_days: retention.older_than_days,
        pruned: Vec::new(),
        running: Vec::new(),
        remaining: ids.len(),
    };
    let past_count = ids.len().saturating_sub(retention.keep);
    for id in ids.iter().take(past_count) {
        if id.as_str() >= cutoff.as_str() {
            // Sorted oldest first: every later run is younger still.
            break;
        }
        let dir = runs.join(id);
        let Some(_held) = hold_if_finished(&dir)? else {
            report.running.push(id.clone());
            continue;
        };
        if !dry_run {
            remove_run(&dir, &trash.join(id))?;
        }
        report.pruned.push(id.clone());
    }
    report.remaining -= report.pruned.len();
    Ok(report)
}

/// The names in `runs`, sorted: oldest first.
fn run_ids(runs: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(runs) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io("read directory", runs, error)),
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The run directory locked by this process, or None while its run holds the lock (it is
/// still running). Held until the directory is moved away, so a run cannot start using it
/// meanwhile.
fn hold_if_finished(dir: &Path) -> Result<Option<File>> {
    let file = File::open(dir).map_err(|error| Error::io("open directory", dir, error))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(error)) => Err(Error::io("lock", dir, error)),
    }
}

/// Moves the run out of `runs` in one rename, then deletes it: a crash midway leaves a
/// whole run or none, never a manifest whose backups are half gone.
fn remove_run(dir: &Path, trashed: &Path) -> Result<()> {
    if let Some(parent) = trashed.parent() {
        fs::create_dir_all(parent).map_err(|error| Error::io("create directory", parent, error))?;
    }
    fs::rename(dir, trashed).map_err(|error| Error::io("move away", dir, error))?;
    fs::remove_dir_all(trashed).map_err(|error| Error::io("remove", trashed, error))
}

/// The run-id prefix of the time `days` ago: ids that sort before it are older.
fn stamp_days_ago(days: u64) -> String {
    let days = i64::try_from(days).unwrap_or(i64::MAX);
    let then = time::OffsetDateTime::now_utc()
        .checked_sub(time::Duration::days(days))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    crate::write::run_id_stamp(then)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_changes_the_defaults_and_bad_values_are_named() {
        let env = |name: &str| (name == KEEP_RUNS_ENV).then(|| "3".to_owned());
        assert_eq!(
            Retention::from_env(&env).unwrap(),
            Retention {
                keep: 3,
                older_than_days: 14
            }
        );
        let bad = |name: &str| (name == KEEP_DAYS_ENV).then(|| "two".to_owned());
        let error = Retention::from_env(&bad).unwrap_err();
        assert!(error.to_string().contains(KEEP_DAYS_ENV), "{error}");
    }

    #[test]
    fn the_cutoff_sorts_between_old_and_new_ids() {
        let cutoff = stamp_days_ago(14);
        assert!("20200101T000000000Z-0001" < cutoff.as_str());
        assert!(crate::write::new_run_id().as_str() > cutoff.as_str());
    }
}
