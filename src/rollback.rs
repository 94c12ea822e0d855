//! `rollback`: undoes a run's writes byte for byte, and deletes the files it created.
//! `--last` is the newest run, even one that left nothing to undo (then nothing changes).
//! A file the run's own restore kept as edited is named with the backup of its bytes from
//! before the run, and put back only with `--force`.
//! A batch id undoes every run of the batch, newest first.

use std::path::{Path, PathBuf};
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
    /// Files changed while the rollback ran (after its check), left as they were.
    #[serde(default)]
    pub kept: Vec<String>,
    /// Set, saying why, when `--last` found the newest run with nothing to undo: nothing
    /// was changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nothing_to_undo: Option<String>,
}

impl RollbackReport {
    /// One line for a person: what was undone, or why nothing was.
    pub fn describe(&self) -> String {
        match &self.nothing_to_undo {
            Some(why) => why.clone(),
            None => format!(
                "rolled back {} ({}): {} restored, {} removed",
                self.run_id,
                self.task_id,
                self.restored.len(),
                self.removed.len()
            ),
        }
    }
}

/// Which run to undo.
pub enum Which<'a> {
    Id(&'a str),
    /// The newest run, whatever it left.
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
    let last = matches!(which, Which::Last);
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
    let dir = repo.state_dir().join("runs").join(&run_id);
    if dir.is_dir() && !dir.join("manifest.json").exists() {
        // Its directory is made before its manifest, and the manifest before any write:
        // a run killed between the two wrote nothing.
        let why = "was stopped before it wrote anything";
        if last {
            return Ok(nothing_to_undo(run_id, String::new(), why));
        }
        return Err(Error::Rollback {
            run_id,
            message: format!("has nothing to undo: the run {why}"),
        });
    }
    let mut journal = Journal::open(&repo, &run_id)?;
    // Files a restore left as someone changed them: the run's old bytes are only in the
    // backup, and only `--force` puts them back over the change.
    let kept = journal.kept_files();
    let forced_kept = force && !kept.is_empty();
    if last && !journal.has_writes() && !forced_kept {
        // `--last` never reaches back past the newest run to one the user did not mean.
        let why = if journal.manifest().rolled_back {
            "was already rolled back".to_owned()
        } else if kept.is_empty() {
            "left no file changed (it wrote nothing, or put back what it wrote)".to_owned()
        } else {
            format!("left nothing of its own to undo: {}", describe_kept(&kept))
        };
        return Ok(nothing_to_undo(
            run_id,
            journal.manifest().task_id.clone(),
            &why,
        ));
    }
    if journal.manifest().rolled_back {
        return Err(Error::Rollback {
            run_id,
            message: "was already rolled back".to_owned(),
        });
    }
    if !journal.has_writes() && !forced_kept {
        // A run that did not succeed undid its own writes: restoring its backups now would
        // overwrite whatever the files hold since.
        let message = if kept.is_empty() {
            "has nothing to undo: the run left no file changed (a run that does not succeed puts back what it wrote)".to_owned()
        } else {
            format!(
                "has nothing to undo without --force: {}",
                describe_kept(&kept)
            )
        };
        return Err(Error::Rollback { run_id, message });
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
    let done = journal.roll_back(force)?;
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
        kept: done.kept,
        nothing_to_undo: None,
    })
}

/// What became of the files a restore kept as changed, and how to get their old bytes.
fn describe_kept(kept: &[(String, Option<PathBuf>)]) -> String {
    let files = kept
        .iter()
        .map(|(path, backup)| {
            let before = match backup {
                Some(backup) => {
                    format!("its bytes from before the run are at {}", backup.display())
                }
                None => "it did not exist before the run".to_owned(),
            };
            format!("`{path}` was edited after the run wrote it and was left as edited; {before}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!("{files} (`--force` puts back what was there before the run, discarding the edit)")
}

fn nothing_to_undo(run_id: String, task_id: String, why: &str) -> RollbackReport {
    RollbackReport {
        nothing_to_undo: Some(format!(
            "the newest run, {run_id}, {why}; nothing was changed"
        )),
        run_id,
        task_id,
        restored: Vec::new(),
        removed: Vec::new(),
        removed_dirs: Vec::new(),
        kept: Vec::new(),
    }
}

fn last_run(repo: &Repo) -> Result<String> {
    let runs = repo.state_dir().join("runs");
    let ids: Vec<String> = std::fs::read_dir(&runs)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.into_iter().max().ok_or_else(|| Error::Rollback {
        run_id: "--last".to_owned(),
        message: "no run of this repository was recorded".to_owned(),
    })
}

/// What `rollback <BATCH_ID>` undid: each run that had writes, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRollbackReport {
    pub batch_id: String,
    pub runs: Vec<RollbackReport>,
    /// Runs of the batch that left nothing to undo (they did not succeed, or were rolled
    /// back before).
    pub nothing_to_undo: Vec<String>,
}

/// Undoes every in-place write of a batch, the newest run first, so each run finds its
/// files as it left them. Stops at the first run that cannot be undone (a file changed
/// since, without `force`): the runs already undone stay undone and the error names it.
/// `undone` hears of each run as soon as it is undone (to record it), the runs undone
/// before a stop included.
pub async fn rollback_batch(
    repo_dir: &Path,
    batch_id: &str,
    force: bool,
    lock_timeout: Duration,
    undone: &mut (dyn FnMut(&RollbackReport) + Send),
) -> Result<BatchRollbackReport> {
    let repo = Repo::discover(repo_dir)?;
    let record = crate::batch::BatchRecord::load(&repo, batch_id)?;
    let mut report = BatchRollbackReport {
        batch_id: batch_id.to_owned(),
        runs: Vec::new(),
        nothing_to_undo: Vec::new(),
    };
    for run_id in record
        .tasks
        .iter()
        .rev()
        .filter_map(|task| task.run_id.as_deref())
    {
        let has_writes = Journal::open(&repo, run_id).is_ok_and(|journal| journal.has_writes());
        if !has_writes {
            report.nothing_to_undo.push(run_id.to_owned());
            continue;
        }
        match rollback(repo_dir, Which::Id(run_id), force, lock_timeout).await {
            Ok(run) => {
                undone(&run);
                report.runs.push(run);
            }
            Err(error) => {
                let undone: Vec<&str> = report.runs.iter().map(|r| r.run_id.as_str()).collect();
                return Err(Error::Rollback {
                    run_id: batch_id.to_owned(),
                    message: format!(
                        "stopped at run {run_id}: {error}; {}",
                        if undone.is_empty() {
                            "nothing was undone".to_owned()
                        } else {
                            format!("already undone: {}", undone.join(", "))
                        }
                    ),
                });
            }
        }
    }
    Ok(report)
}
