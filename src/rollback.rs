//! `rollback`: undoes a run's writes byte for byte, and deletes the files it created.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lock;
use crate::repo::Repo;
use crate::write::{self, Journal};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackReport {
    pub run_id: String,
    pub task_id: String,
    /// Files put back to their previous bytes and mode.
    pub restored: Vec<String>,
    /// Files the run had created, now deleted.
    pub removed: Vec<String>,
    /// Directories the run had created, now deleted because they were empty.
    pub removed_dirs: Vec<String>,
}

/// Which run to undo.
pub enum Which<'a> {
    Id(&'a str),
    /// The newest run that wrote something and was not rolled back yet.
    Last,
}

pub async fn rollback(
    repo_dir: &Path,
    which: Which<'_>,
    force: bool,
    lock_timeout: Duration,
) -> Result<RollbackReport> {
    let repo = Repo::discover(repo_dir)?;
    let _lock = lock::acquire(&repo, lock_timeout).await?;
    // Under the lock no run is writing: temp files left now are a killed run's.
    write::clean_stale_temp_files(&repo);
    let run_id = match which {
        Which::Id(id) => id.to_owned(),
        Which::Last => last_run(&repo)?,
    };
    if !crate::spec::valid_task_id(&run_id) {
        return Err(Error::Rollback {
            run_id,
            message: "is not a run id (see the result's run_id)".to_owned(),
        });
    }
    let mut journal = Journal::open(&repo, &run_id)?;
    if journal.manifest().rolled_back {
        return Err(Error::Rollback {
            run_id,
            message: "was already rolled back".to_owned(),
        });
    }
    if !journal.has_writes() {
        // A run that did not succeed undid its own writes: restoring its backups now would
        // overwrite whatever the files hold since.
        return Err(Error::Rollback {
            run_id,
            message: "has nothing to undo: the run left no file changed (a run that does not succeed puts back what it wrote)".to_owned(),
        });
    }
    let changed = journal.changed_since_written();
    if !changed.is_empty() && !force {
        return Err(Error::Rollback {
            run_id,
            message: format!(
                "{} changed since the run wrote {}; rolling back would lose those changes (pass --force to restore anyway)",
                changed
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if changed.len() == 1 { "it" } else { "them" }
            ),
        });
    }
    let done = journal.roll_back()?;
    let mut restored = done.restored;
    let mut removed = done.removed;
    // In the order the run wrote them.
    restored.reverse();
    removed.reverse();
    Ok(RollbackReport {
        run_id,
        task_id: journal.manifest().task_id.clone(),
        restored,
        removed,
        removed_dirs: done.removed_dirs,
    })
}

fn last_run(repo: &Repo) -> Result<String> {
    let runs = repo.state_dir().join("runs");
    let mut ids: Vec<String> = std::fs::read_dir(&runs)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids.into_iter()
        .rev()
        .find(|id| Journal::open(repo, id).is_ok_and(|journal| journal.has_writes()))
        .ok_or_else(|| Error::Rollback {
            run_id: "--last".to_owned(),
            message: "no run of this repository has writes left to undo".to_owned(),
        })
}
