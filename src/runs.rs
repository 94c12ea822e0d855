//! The record of each branch run, kept where the tool keeps its state (the shared git
//! directory's `execute-local-task/branches/<run_id>.json`), and the `runs` list built
//! from them: what `apply`, `merge` and `discard` need to find a run's branch, and what
//! became of it.

use std::fs;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::result::Status;
use crate::worktree::MainRepo;

/// What is known of one branch run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BranchRecord {
    pub run_id: String,
    pub task_id: String,
    pub status: Status,
    /// `local-task/<task_id>`.
    pub branch: String,
    /// The commit the worktree started from.
    pub base: String,
    /// The commit made for a success, else null.
    pub commit: Option<String>,
    /// A worktree kept for inspection (`--keep-failed`), until `discard`.
    #[serde(default)]
    pub worktree: Option<String>,
    /// What became of it since: null, `applied`, `merged` or `discarded`.
    #[serde(default)]
    pub state: Option<State>,
    /// The in-place run id of an `apply`, which `rollback` undoes.
    #[serde(default)]
    pub applied_as: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applied,
    Merged,
    Discarded,
}

/// Which run a verb is about.
pub enum Which<'a> {
    Id(&'a str),
    /// The newest branch run.
    Last,
}

fn path(main: &MainRepo, run_id: &str) -> PathBuf {
    main.records_dir().join(format!("{run_id}.json"))
}

/// Saves `record`, replacing the earlier one atomically (a reader never sees half).
pub fn save(main: &MainRepo, record: &BranchRecord) -> Result<()> {
    let dir = main.records_dir();
    fs::create_dir_all(&dir).map_err(|error| Error::io("create directory", &dir, error))?;
    let text = serde_json::to_string_pretty(record)
        .map_err(|error| Error::io("encode record", &dir, std::io::Error::other(error)))?;
    let mut temp = tempfile::NamedTempFile::new_in(&dir)
        .map_err(|error| Error::io("create temp file in", &dir, error))?;
    std::io::Write::write_all(&mut temp, text.as_bytes())
        .map_err(|error| Error::io("write", temp.path().to_path_buf(), error))?;
    let target = path(main, &record.run_id);
    temp.persist(&target)
        .map_err(|error| Error::io("save record", &target, error.error))?;
    Ok(())
}

/// The record of the run `which` names.
pub fn load(main: &MainRepo, which: &Which<'_>) -> Result<BranchRecord> {
    let run_id = match which {
        Which::Id(id) => {
            if !crate::spec::valid_task_id(id) {
                return Err(Error::Usage(format!("`{id}` is not a run id (see the result's run_id)")));
            }
            (*id).to_owned()
        }
        Which::Last => list(main)
            .into_iter()
            .next()
            .map(|record| record.run_id)
            .ok_or_else(|| Error::Usage("no branch run of this repository was recorded (run a task with --branch first)".to_owned()))?,
    };
    read(&path(main, &run_id)).ok_or_else(|| {
        Error::Usage(format!(
            "no branch run `{run_id}` in this repository (`execute-local-task runs` lists them)"
        ))
    })
}

fn read(path: &Path) -> Option<BranchRecord> {
    let text = crate::input_file::read_text(path, 1024 * 1024).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every branch run recorded, newest first (run ids sort by time).
pub fn list(main: &MainRepo) -> Vec<BranchRecord> {
    let mut records: Vec<BranchRecord> = fs::read_dir(main.records_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "json"))
                .filter_map(|entry| read(&entry.path()))
                .collect()
        })
        .unwrap_or_default();
    records.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    forget_rolled_back(main, &mut records);
    records
}

/// An `apply` that `rollback` undid is no longer applied: its record says so from then on.
fn forget_rolled_back(main: &MainRepo, records: &mut [BranchRecord]) {
    let Ok(repo) = crate::repo::Repo::discover(&main.root) else {
        return;
    };
    for record in records {
        let undone = record.state == Some(State::Applied)
            && record.applied_as.as_deref().is_some_and(|run_id| {
                crate::write::Journal::open(&repo, run_id)
                    .is_ok_and(|journal| journal.manifest().rolled_back)
            });
        if undone {
            record.state = None;
        }
    }
}

/// One line of `runs` for a person.
pub fn describe(record: &BranchRecord) -> String {
    let status = serde_json::to_value(record.status)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    let state = match record.state {
        Some(State::Applied) => "applied",
        Some(State::Merged) => "merged",
        Some(State::Discarded) => "discarded",
        None if record.commit.is_some() => "on its branch",
        None => "no commit",
    };
    format!(
        "{}  {}  {status}  {}  {state}",
        record.run_id, record.task_id, record.branch
    )
}
