//! Bringing a branch run's result in: `apply` (its change into the working tree,
//! uncommitted, backed up like a run so `rollback` undoes it), `merge` (its commit into
//! the current branch, fast-forward when possible) and `discard` (its branch and any
//! worktree left deleted). Each takes one run id, so a batch can call it per task.
//!
//! `apply` and `merge` check everything first and refuse with nothing changed: when the
//! working tree has changes to a file the run changed, or the change does not go in
//! cleanly, naming the files. A batch's `apply` is one write and its `merge` one move of
//! the current branch ([`crate::merging`]): all of the batch or nothing.

use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::git_cli::{self, git, nul_list};
use crate::lock;
use crate::merging;
use crate::repo::Repo;
use crate::runs::{self, BranchRecord, State, Which};
use crate::worktree::MainRepo;
use crate::write::Journal;

/// What `apply`, `merge` or `discard` did.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BringInReport {
    /// `applied`, `merged` or `discarded`.
    pub status: String,
    pub run_id: String,
    pub task_id: String,
    pub branch: String,
    /// The files the working tree got (apply, merge).
    pub files: Vec<String>,
    /// For `apply`: the run id `execute-local-task rollback` undoes it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<String>,
    /// For `merge`: HEAD afterwards, and whether it was a fast-forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_forward: Option<bool>,
    /// One line for a person.
    pub summary: String,
}

impl BringInReport {
    fn new(status: &str, record: &BranchRecord, summary: String) -> Self {
        Self {
            status: status.to_owned(),
            run_id: record.run_id.clone(),
            task_id: record.task_id.clone(),
            branch: record.branch.clone(),
            files: Vec::new(),
            rollback: None,
            head: None,
            fast_forward: None,
            summary,
        }
    }
}

/// The commit a record's change ends at: its branch's tip (it may have been amended),
/// else the commit the run made. Refuses a run with nothing to bring in.
fn change_tip(main: &MainRepo, record: &BranchRecord, verb: &str) -> Result<String> {
    if record.state == Some(State::Discarded) {
        return Err(Error::Usage(format!(
            "run {} was discarded; there is nothing to {verb}",
            record.run_id
        )));
    }
    let Some(commit) = &record.commit else {
        return Err(Error::Usage(format!(
            "run {} made no commit (it did not succeed); there is nothing to {verb}",
            record.run_id
        )));
    };
    git_cli::resolve(&main.root, &format!("refs/heads/{}", record.branch))?
        .or(git_cli::resolve(&main.root, commit)?)
        .ok_or_else(|| {
            Error::Usage(format!(
                "run {}: its branch {} and commit {commit} are gone; there is nothing to {verb}",
                record.run_id, record.branch
            ))
        })
}

/// The files among `paths` that the working tree has changes to (staged, unstaged or
/// untracked), as git names them.
fn dirty(root: &Path, paths: &[String]) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec![
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--",
    ];
    args.extend(paths.iter().map(String::as_str));
    Ok(nul_list(&git(root, &args)?)
        .into_iter()
        .filter_map(|entry| entry.get(3..).map(str::to_owned))
        .filter(|path| paths.contains(path))
        .collect())
}

fn quoted(files: &[String]) -> String {
    files
        .iter()
        .map(|file| format!("`{file}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn refuse_dirty(files: Vec<String>) -> Error {
    Error::BringIn {
        message: format!(
            "the working tree has changes to {}, which the task changed too; commit or stash them first. Nothing was changed",
            quoted(&files)
        ),
        files,
    }
}

/// `apply`: the run's change into the working tree as uncommitted changes.
pub async fn apply(dir: &Path, which: Which<'_>, lock_timeout: Duration) -> Result<BringInReport> {
    let main = MainRepo::discover(dir)?;
    let mut record = runs::load(&main, &which)?;
    let tip = change_tip(&main, &record, "apply")?;
    let repo = Repo::discover(&main.root)?;
    let _lock = lock::acquire(&repo, lock_timeout).await?;
    let files = new_contents(&main, &record.base, &tip)?;
    let paths: Vec<String> = files.iter().map(|(path, _)| path.clone()).collect();
    let changed = dirty(&main.root, &paths)?;
    if !changed.is_empty() {
        return Err(refuse_dirty(changed));
    }
    let mut journal = Journal::begin(&repo, &record.task_id)?;
    for (path, bytes) in &files {
        let current = read_existing(&main.root.join(path))?;
        if let Err(error) = journal.write(path, bytes, current.as_deref()) {
            // Nothing half-applied: what was written goes back.
            let _ = journal.restore();
            return Err(error);
        }
    }
    record.state = Some(State::Applied);
    record.applied_as = Some(journal.run_id().to_owned());
    runs::save(&main, &record)?;
    let mut report = BringInReport::new(
        "applied",
        &record,
        format!(
            "applied {} ({}) to the working tree: {} file(s), uncommitted; `execute-local-task rollback {}` undoes it",
            record.run_id,
            record.branch,
            paths.len(),
            journal.run_id()
        ),
    );
    report.files = paths;
    report.rollback = Some(journal.run_id().to_owned());
    Ok(report)
}

fn read_existing(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(Error::io("read", path, error)),
    }
}

/// Each file the change from `base` to `tip` touches, with its bytes once the change is
/// applied to HEAD. A file whose part of the change does not apply to HEAD is refused,
/// and so is a deletion (a task only writes files; `merge` brings in anything else).
fn new_contents(main: &MainRepo, base: &str, tip: &str) -> Result<Vec<(String, Vec<u8>)>> {
    changes_onto(main, &[(base.to_owned(), tip.to_owned())])
}

/// Like [`new_contents`] for several changes applied one after the other, each onto HEAD
/// with the earlier ones applied (a batch's tasks in dependency order): every file any of
/// them touches, with its final bytes.
fn changes_onto(main: &MainRepo, changes: &[(String, String)]) -> Result<Vec<(String, Vec<u8>)>> {
    let failed = |message: String| Error::Repo {
        path: main.root.clone(),
        message,
    };
    let git = git2::Repository::open(&main.root)
        .or_else(|_| git2::Repository::discover(&main.root))
        .map_err(|error| failed(format!("cannot open the repository: {}", error.message())))?;
    let head = git
        .revparse_single("HEAD")
        .and_then(|object| object.peel_to_tree())
        .map_err(|error| failed(format!("cannot read `HEAD`: {}", error.message())))?;
    let mut onto = head.id();
    let mut all: Vec<String> = Vec::new();
    for (base, tip) in changes {
        let tree = git
            .find_tree(onto)
            .map_err(|error| failed(format!("cannot read a tree: {}", error.message())))?;
        let (paths, mut index) = apply_change(main, &git, base, tip, &tree)?;
        onto = index
            .write_tree_to(&git)
            .map_err(|error| failed(format!("cannot write a tree: {}", error.message())))?;
        for path in paths {
            if !all.contains(&path) {
                all.push(path);
            }
        }
    }
    let tree = git
        .find_tree(onto)
        .map_err(|error| failed(format!("cannot read a tree: {}", error.message())))?;
    all.into_iter()
        .map(|path| {
            let entry = tree
                .get_path(Path::new(&path))
                .map_err(|_| failed(format!("`{path}` is missing from the applied change")))?;
            let blob = git
                .find_blob(entry.id())
                .map_err(|error| failed(format!("cannot read `{path}`: {}", error.message())))?;
            Ok((path, blob.content().to_vec()))
        })
        .collect()
}

/// The change from `base` to `tip` applied to `onto`: the paths it writes, and the index
/// it gives. Refuses a deletion, and a file whose part does not apply, naming the files.
fn apply_change(
    main: &MainRepo,
    git: &git2::Repository,
    base: &str,
    tip: &str,
    onto: &git2::Tree<'_>,
) -> Result<(Vec<String>, git2::Index)> {
    let failed = |message: String| Error::Repo {
        path: main.root.clone(),
        message,
    };
    let tree = |rev: &str| {
        git.revparse_single(rev)
            .and_then(|object| object.peel_to_tree())
            .map_err(|error| failed(format!("cannot read `{rev}`: {}", error.message())))
    };
    let (base_tree, tip_tree, head_tree) = (tree(base)?, tree(tip)?, onto);
    let diff = git
        .diff_tree_to_tree(Some(&base_tree), Some(&tip_tree), None)
        .map_err(|error| failed(format!("cannot diff the task branch: {}", error.message())))?;
    let mut paths = Vec::new();
    let mut deleted = Vec::new();
    // A file the change adds that is already there with other bytes: applying the patch
    // would silently replace them (git2 applies an addition over an existing file).
    let mut clashing = Vec::new();
    for delta in diff.deltas() {
        let path = delta
            .new_file()
            .path()
            .or_else(|| delta.old_file().path())
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default();
        if delta.status() == git2::Delta::Deleted {
            deleted.push(path);
        } else {
            if delta.status() == git2::Delta::Added
                && head_tree
                    .get_path(Path::new(&path))
                    .is_ok_and(|entry| entry.id() != delta.new_file().id())
            {
                clashing.push(path.clone());
            }
            paths.push(path);
        }
    }
    if !deleted.is_empty() {
        return Err(Error::BringIn {
            message: format!(
                "the task branch deletes {}; `apply` only writes files, use `execute-local-task merge`. Nothing was changed",
                quoted(&deleted)
            ),
            files: deleted,
        });
    }
    let conflicted: Vec<String> = paths
        .iter()
        .filter(|path| {
            if clashing.contains(path) {
                return true;
            }
            let mut options = git2::ApplyOptions::new();
            options.delta_callback(|delta| {
                delta
                    .and_then(|delta| delta.new_file().path().map(Path::to_path_buf))
                    .is_some_and(|candidate| candidate == Path::new(path.as_str()))
            });
            git.apply_to_tree(head_tree, &diff, Some(&mut options))
                .is_err()
        })
        .cloned()
        .collect();
    if !conflicted.is_empty() {
        return Err(Error::BringIn {
            message: format!(
                "the task's change to {} does not apply cleanly to HEAD (the files changed since the task's base); use `execute-local-task merge` or do it by hand. Nothing was changed",
                quoted(&conflicted)
            ),
            files: conflicted,
        });
    }
    let index = git
        .apply_to_tree(head_tree, &diff, None)
        .map_err(|error| failed(format!("cannot apply the task branch: {}", error.message())))?;
    Ok((paths, index))
}

/// `merge`: the run's commit into the current branch, fast-forward when possible.
pub async fn merge(dir: &Path, which: Which<'_>, lock_timeout: Duration) -> Result<BringInReport> {
    let main = MainRepo::discover(dir)?;
    let record = runs::load(&main, &which)?;
    let tip = change_tip(&main, &record, "merge")?;
    let repo = Repo::discover(&main.root)?;
    let _lock = lock::acquire(&repo, lock_timeout).await?;
    let reflog = format!("execute-local-task: merge {}", record.branch);
    let (mut reports, _) = merge_all(&main, vec![(record, tip)], &reflog)?;
    reports
        .pop()
        .ok_or_else(|| Error::Usage("nothing to merge".to_owned()))
}

/// Merges each record's tip, in order, into the current branch at once
/// ([`crate::merging`]): checked whole (conflicts, the working tree's changes to the
/// files it brings) before anything changes. Each run's report, and every file.
fn merge_all(
    main: &MainRepo,
    records: Vec<(BranchRecord, String)>,
    reflog: &str,
) -> Result<(Vec<BringInReport>, Vec<String>)> {
    let root = &main.root;
    let branches: Vec<merging::Branch<'_>> = records
        .iter()
        .map(|(record, tip)| merging::Branch {
            name: &record.branch,
            run_id: &record.run_id,
            tip,
        })
        .collect();
    let built = merging::build(root, &branches)?;
    let changed = dirty(root, &built.files)?;
    if !changed.is_empty() {
        return Err(refuse_dirty(changed));
    }
    merging::land(root, &built, reflog)?;
    let mut reports = Vec::new();
    let mut before = built.old.clone();
    for ((mut record, tip), step) in records.into_iter().zip(&built.steps) {
        let Some(fast_forward) = step.fast_forward else {
            reports.push(BringInReport::new(
                "merged",
                &record,
                format!(
                    "HEAD already contains {} ({})",
                    record.branch,
                    crate::branch::short(&tip)
                ),
            ));
            continue;
        };
        record.state = Some(State::Merged);
        runs::save(main, &record)?;
        let mut report = BringInReport::new(
            "merged",
            &record,
            format!(
                "merged {} into HEAD ({}){}",
                record.branch,
                crate::branch::short(&step.head),
                if fast_forward {
                    " as a fast-forward"
                } else {
                    " with a merge commit"
                }
            ),
        );
        report.files = nul_list(&git(
            root,
            &["diff", "--name-only", "-z", &before, &step.head],
        )?);
        report.head = Some(step.head.clone());
        report.fast_forward = Some(fast_forward);
        reports.push(report);
        step.head.clone_into(&mut before);
    }
    Ok((reports, built.files))
}

/// `discard`: deletes the run's branch (when it still points at the run's commit) and
/// any worktree the run left.
pub fn discard(dir: &Path, which: &Which<'_>) -> Result<BringInReport> {
    let main = MainRepo::discover(dir)?;
    let mut record = runs::load(&main, which)?;
    let reference = format!("refs/heads/{}", record.branch);
    let tip = git_cli::resolve(&main.root, &reference)?;
    let mut done = Vec::new();
    if let (Some(tip), Some(commit)) = (&tip, &record.commit) {
        if tip != commit {
            return Err(Error::BringIn {
                files: Vec::new(),
                message: format!(
                    "{} has moved on from the run's commit {} (to {}); it was not deleted — delete it with `git branch -D {}` if you mean to",
                    record.branch,
                    crate::branch::short(commit),
                    crate::branch::short(tip),
                    record.branch
                ),
            });
        }
        git(&main.root, &["update-ref", "-d", &reference, tip])?;
        done.push(format!(
            "deleted {} (was {})",
            record.branch,
            crate::branch::short(tip)
        ));
    }
    if let Some(path) = record.worktree.take() {
        crate::worktree::remove_kept(&main, Path::new(&path))?;
        done.push(format!("removed the worktree {path}"));
    }
    record.state = Some(State::Discarded);
    runs::save(&main, &record)?;
    let summary = if done.is_empty() {
        format!(
            "run {} left no branch or worktree; nothing to delete",
            record.run_id
        )
    } else {
        done.join("; ")
    };
    Ok(BringInReport::new("discarded", &record, summary))
}

/// What `apply`, `merge` or `discard <BATCH_ID>` did: each run's report, in dependency
/// order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBringInReport {
    /// `applied`, `merged` or `discarded`.
    pub status: String,
    pub batch_id: String,
    pub runs: Vec<BringInReport>,
    /// Every file the working tree got (apply, merge).
    pub files: Vec<String>,
    /// For `apply`: the one run id `execute-local-task rollback` undoes the whole of it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<String>,
    /// One line for a person.
    pub summary: String,
}

/// The branch runs of batch `batch_id`, in the order they finished (a task finishes after
/// the tasks it depends on, so this is a dependency order); with `successes`, only those
/// that succeeded.
fn batch_runs(main: &MainRepo, batch_id: &str, successes: bool) -> Result<Vec<BranchRecord>> {
    let repo = Repo::discover(&main.root)?;
    let record = crate::batch::BatchRecord::load(&repo, batch_id)?;
    let records: Vec<BranchRecord> = record
        .tasks
        .iter()
        .filter(|task| !successes || task.status == Some(crate::result::Status::Success))
        .filter_map(|task| task.run_id.as_deref())
        .filter_map(|run_id| runs::load(main, &Which::Id(run_id)).ok())
        .collect();
    if records.is_empty() {
        return Err(Error::Usage(format!(
            "batch {batch_id} has no {}branch run to bring in (was it run with --branch?)",
            if successes { "successful " } else { "" }
        )));
    }
    Ok(records)
}

/// `apply <BATCH_ID>`: every successful task's change, in dependency order, into the
/// working tree as uncommitted changes, as one write `rollback` undoes. Checked whole
/// first: when any change does not go in cleanly nothing is written.
pub async fn apply_batch(
    dir: &Path,
    batch_id: &str,
    lock_timeout: Duration,
) -> Result<BatchBringInReport> {
    let main = MainRepo::discover(dir)?;
    let mut records = batch_runs(&main, batch_id, true)?;
    let mut steps = Vec::new();
    for record in &records {
        steps.push((record.base.clone(), change_tip(&main, record, "apply")?));
    }
    let repo = Repo::discover(&main.root)?;
    let _lock = lock::acquire(&repo, lock_timeout).await?;
    let files = changes_onto(&main, &steps)?;
    let paths: Vec<String> = files.iter().map(|(path, _)| path.clone()).collect();
    let changed = dirty(&main.root, &paths)?;
    if !changed.is_empty() {
        return Err(refuse_dirty(changed));
    }
    let mut journal = Journal::begin(&repo, batch_id)?;
    for (path, bytes) in &files {
        let current = read_existing(&main.root.join(path))?;
        if let Err(error) = journal.write(path, bytes, current.as_deref()) {
            let _ = journal.restore();
            return Err(error);
        }
    }
    let rollback = journal.run_id().to_owned();
    let mut reports = Vec::new();
    for record in &mut records {
        record.state = Some(State::Applied);
        record.applied_as = Some(rollback.clone());
        runs::save(&main, record)?;
        reports.push(BringInReport::new(
            "applied",
            record,
            format!("applied {} ({})", record.run_id, record.branch),
        ));
    }
    Ok(BatchBringInReport {
        status: "applied".to_owned(),
        batch_id: batch_id.to_owned(),
        summary: format!(
            "applied batch {batch_id} to the working tree: {} task(s), {} file(s), uncommitted; `execute-local-task rollback {rollback}` undoes it",
            reports.len(),
            paths.len()
        ),
        runs: reports,
        files: paths,
        rollback: Some(rollback),
    })
}

/// `merge <BATCH_ID>`: every successful task's commit into the current branch, in
/// dependency order, keeping the commits, all or nothing: the whole merge is built first
/// and the branch moves once ([`crate::merging`]); when any task's commits conflict, or the
/// working tree has changes to a file any of them brings, nothing is merged.
pub async fn merge_batch(
    dir: &Path,
    batch_id: &str,
    lock_timeout: Duration,
) -> Result<BatchBringInReport> {
    let main = MainRepo::discover(dir)?;
    let mut records = Vec::new();
    for record in batch_runs(&main, batch_id, true)? {
        let tip = change_tip(&main, &record, "merge")?;
        records.push((record, tip));
    }
    let repo = Repo::discover(&main.root)?;
    let _lock = lock::acquire(&repo, lock_timeout).await?;
    let reflog = format!("execute-local-task: merge batch {batch_id}");
    let (reports, files) = merge_all(&main, records, &reflog).map_err(|error| match error {
        Error::BringIn { files, message } => Error::BringIn {
            message: format!("batch {batch_id}: {message}"),
            files,
        },
        other => other,
    })?;
    Ok(BatchBringInReport {
        status: "merged".to_owned(),
        batch_id: batch_id.to_owned(),
        summary: format!(
            "merged batch {batch_id} into HEAD: {} task branch(es), {} file(s)",
            reports.len(),
            files.len()
        ),
        runs: reports,
        files,
        rollback: None,
    })
}

/// `discard <BATCH_ID>`: every branch and worktree the batch's runs left. A run whose
/// branch moved on is kept and named; the others are still discarded, each told to
/// `discarded` as it is (so it is recorded even when another is kept).
pub fn discard_batch(
    dir: &Path,
    batch_id: &str,
    discarded: &mut dyn FnMut(&BringInReport),
) -> Result<BatchBringInReport> {
    let main = MainRepo::discover(dir)?;
    let records = batch_runs(&main, batch_id, false)?;
    let mut reports = Vec::new();
    let mut kept = Vec::new();
    for record in &records {
        match discard(dir, &Which::Id(&record.run_id)) {
            Ok(report) => {
                discarded(&report);
                reports.push(report);
            }
            Err(error) => kept.push(format!("{}: {error}", record.run_id)),
        }
    }
    if !kept.is_empty() {
        return Err(Error::BringIn {
            files: Vec::new(),
            message: format!(
                "discarded {} run(s) of batch {batch_id}, but not {}",
                reports.len(),
                kept.join("; ")
            ),
        });
    }
    Ok(BatchBringInReport {
        status: "discarded".to_owned(),
        batch_id: batch_id.to_owned(),
        summary: format!(
            "discarded batch {batch_id}: {} run(s)' branches and worktrees deleted",
            reports.len()
        ),
        runs: reports,
        files: Vec::new(),
        rollback: None,
    })
}

/// The verb a supervisor brings a branch run (or a batch's runs) in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Apply,
    Merge,
    Discard,
}

/// `apply`, `merge` or `discard` of a run id, a batch id (told apart by its shape) or,
/// with no id, the newest branch run — as the one document the command line prints and
/// the MCP server answers, so the two cannot drift apart. A verb is recorded in the run
/// ledger against each run it touched (a batch's too, naming the batch); a ledger that
/// cannot be written is a note, never a failure of the verb.
pub async fn perform(
    verb: Verb,
    dir: &Path,
    id: Option<&str>,
    lock_timeout: Duration,
    env: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) -> crate::document::Document {
    use crate::document::Document;
    if let Some(batch_id) = id.filter(|id| crate::batch::valid_batch_id(id)) {
        let mut missing = Vec::new();
        let mut record = |report: &BringInReport| {
            missing.extend(crate::record::bring_in_batch(batch_id, report, env));
        };
        let outcome = match verb {
            Verb::Apply => apply_batch(dir, batch_id, lock_timeout).await,
            Verb::Merge => merge_batch(dir, batch_id, lock_timeout).await,
            Verb::Discard => discard_batch(dir, batch_id, &mut record),
        };
        if verb != Verb::Discard
            && let Ok(report) = &outcome
        {
            report.runs.iter().for_each(&mut record);
        }
        let mut document = match outcome {
            Ok(report) => Document::batch_bring_in(&report),
            Err(error) => Document::error(&error),
        };
        document
            .stderr
            .extend(missing.iter().map(|m| format!("note: {m}")));
        return document;
    }
    let which = id.map_or(Which::Last, Which::Id);
    let outcome = match verb {
        Verb::Apply => apply(dir, which, lock_timeout).await,
        Verb::Merge => merge(dir, which, lock_timeout).await,
        Verb::Discard => discard(dir, &which),
    };
    match outcome {
        Ok(report) => {
            let missing = crate::record::bring_in(&report, env);
            let mut document = Document::bring_in(&report);
            document
                .stderr
                .extend(missing.map(|m| format!("note: {m}")));
            document
        }
        Err(error) => Document::error(&error),
    }
}
