//! A run on its own task branch (`--branch`): the task runs in a worktree made for it
//! from HEAD ([`crate::worktree`]; in a batch, one reused from the task before it,
//! reset: [`crate::worktree_slots`]), through the same pipeline as a run in place, and a
//! success is committed on `local-task/<task_id>` with the run's facts as trailers. The
//! user's working tree, index, HEAD and current branch are never touched: the worktree
//! is detached at the base commit and the branch is made only at the end, by a
//! compare-and-swap on the ref, so a run that does not succeed leaves no branch at all.
//!
//! The commit's author is the user's `user.name`/`user.email` when both are configured
//! (or `GIT_AUTHOR_*` says so), else `execute-local-task <execute-local-task@localhost>`,
//! so a repository with no identity configured still gets its commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blocking::off_thread;
use crate::error::{Error, Result};
use crate::git_cli::{self, git};
use crate::pipeline::{self, Env, Progress, RunOptions, RunOutput, SpecInput};
use crate::result::{BranchCommands, ErrorInfo, GitInfo, Status, TaskResult};
use crate::runs::{self, BranchRecord};
use crate::server::Connected;
use crate::spec::{self, TaskSpec};
use crate::worktree::{MainRepo, TaskWorktree};
use crate::worktree_slots::WorktreeSlots;

/// The old value `git update-ref` takes to mean "the ref must not exist".
const ABSENT: &str = "0000000000000000000000000000000000000000";

/// Everything made before the pipeline runs in the worktree.
struct Setup {
    main: MainRepo,
    task: TaskSpec,
    branch: String,
    base: String,
    /// The tip of an existing branch `--force` replaces.
    replaced: Option<String>,
    worktree: TaskWorktree,
    /// Where the worktree goes back when the run ends; None: it is removed.
    slots: Option<Arc<WorktreeSlots>>,
    notes: Vec<String>,
}

/// Runs one task on its branch, from HEAD. A dry run writes nothing, so it runs in place.
pub async fn run(
    spec: &SpecInput,
    options: &RunOptions,
    server: Option<Connected>,
    env: &Env,
    progress: Progress<'_>,
) -> RunOutput {
    run_from(None, spec, options, server, env, progress).await
}

/// Like [`run`], with the worktree made from `base` (a commit or ref) instead of HEAD:
/// for a caller that runs tasks in order, such as a batch starting a dependent task from
/// the commit of the task it depends on.
pub async fn run_from(
    base: Option<String>,
    spec: &SpecInput,
    options: &RunOptions,
    server: Option<Connected>,
    env: &Env,
    progress: Progress<'_>,
) -> RunOutput {
    run_in(None, base, spec, options, server, env, progress).await
}

/// Like [`run_from`], in a worktree taken from `slots` (reset to the base) and given
/// back to it when the run ends, instead of one made and removed for this run: for a
/// batch, whose next task reuses it.
pub async fn run_in(
    slots: Option<Arc<WorktreeSlots>>,
    base: Option<String>,
    spec: &SpecInput,
    options: &RunOptions,
    server: Option<Connected>,
    env: &Env,
    progress: Progress<'_>,
) -> RunOutput {
    if options.dry_run {
        return pipeline::run(spec, options, server, env, progress).await;
    }
    let setup = {
        let (spec, options, env) = (spec.clone(), options.clone(), Arc::clone(env));
        off_thread(move || set_up(slots, base.as_deref(), &spec, &options, &*env)).await
    };
    let setup = match setup {
        Ok(setup) => setup,
        Err((task_id, error)) => return error_output(task_id, &error),
    };
    for note in &setup.notes {
        progress(note);
    }
    progress(&format!(
        "running in a task worktree at {} (from {})",
        setup.worktree.path.display(),
        short(&setup.base)
    ));
    let in_worktree = RunOptions {
        repo_dir: Some(setup.worktree.path.clone()),
        branch: false,
        ..options.clone()
    };
    let output = Box::pin(pipeline::run(spec, &in_worktree, server, env, progress)).await;
    let keep_failed = options.keep_failed;
    let env = Arc::clone(env);
    off_thread(move || finish(setup, output, keep_failed, &*env)).await
}

/// The task, its branch and base, and its worktree with what it needs brought along.
fn set_up(
    slots: Option<Arc<WorktreeSlots>>,
    base: Option<&str>,
    input: &SpecInput,
    options: &RunOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Setup, (Option<String>, Error)> {
    let task = match input {
        SpecInput::File(path) => spec::load(path),
        SpecInput::Text { label, text } => spec::parse(Path::new(label), text),
    }
    .map_err(|error| (input.peek_task_id(), error))?;
    let task_id = Some(task.task_id.clone());
    let fail = |error| (task_id.clone(), error);
    let dir = options
        .repo_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    let main = MainRepo::discover(&dir).map_err(fail)?;
    let base = git_cli::resolve(&main.root, base.unwrap_or("HEAD"))
        .map_err(fail)?
        .ok_or_else(|| {
            fail(Error::Repo {
                path: main.root.clone(),
                message: match base {
                    None => "has no commit yet: a task branch starts from HEAD".to_owned(),
                    Some(base) => format!("`{base}` names no commit to start the task branch from"),
                },
            })
        })?;
    let branch = format!("local-task/{}", task.task_id);
    let replaced = git_cli::resolve(&main.root, &format!("refs/heads/{branch}")).map_err(fail)?;
    if let Some(tip) = &replaced
        && !options.force
    {
        return Err(fail(Error::BranchExists {
            branch,
            tip: tip.clone(),
        }));
    }
    let home = main.worktrees_dir(env);
    let id = crate::write::new_run_id();
    let (mut worktree, mut notes) = if let Some(slots) = &slots {
        slots.take(&main, &home, &id, &base).map_err(fail)?
    } else {
        let mut notes = Vec::new();
        let stale = crate::worktree::prune_stale(&main, &home);
        if !stale.is_empty() {
            notes.push(format!(
                "removed {} task worktree(s) an interrupted run left",
                stale.len()
            ));
        }
        let worktree = TaskWorktree::create(&main, &home, &id, &base).map_err(fail)?;
        (worktree, notes)
    };
    let mut links = options.links.clone();
    links.extend(
        env("LOCAL_TASK_LINK")
            .unwrap_or_default()
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from),
    );
    let brought = worktree.link(&links).and_then(|mut notes| {
        notes.extend(worktree.bring_included()?);
        Ok(notes)
    });
    match brought {
        Ok(more) => notes.extend(more),
        Err(error) => {
            let _ = worktree.remove();
            return Err(fail(error));
        }
    }
    Ok(Setup {
        main,
        task,
        branch,
        base,
        replaced,
        worktree,
        slots,
        notes,
    })
}

/// The result of an error before the pipeline ran: nothing was made.
fn error_output(task_id: Option<String>, error: &Error) -> RunOutput {
    let result = TaskResult::error(
        crate::write::new_run_id(),
        task_id,
        ErrorInfo {
            kind: error.kind().to_owned(),
            message: error.to_string(),
        },
    );
    RunOutput::Result {
        result,
        exit_code: error.exit_code(),
        hint: error.hint(),
    }
}

/// A run that did not succeed: why its test may have failed, and its worktree kept for
/// `--keep-failed` or given back.
fn leave_failed(
    worktree: TaskWorktree,
    slots: Option<&WorktreeSlots>,
    keep_failed: bool,
    result: &mut TaskResult,
) {
    explain_test_failure(&worktree, result);
    if !keep_failed {
        release(worktree, slots, result);
        return;
    }
    match worktree.keep() {
        Ok(path) => {
            result.notes.push(format!(
                "the last attempt's files are kept in the task worktree {}; `execute-local-task discard {}` removes it",
                path.display(),
                result.run_id
            ));
            result.worktree = Some(path.display().to_string());
        }
        Err(error) => result
            .notes
            .push(format!("cannot keep the task worktree: {error}")),
    }
}

/// Commits a success on the branch, removes (or keeps) the worktree, records the run and
/// says all of it in the result.
fn finish(
    setup: Setup,
    output: RunOutput,
    keep_failed: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> RunOutput {
    let RunOutput::Result {
        mut result,
        mut exit_code,
        mut hint,
    } = output
    else {
        return output;
    };
    if result.status == Status::Skipped {
        // Stopped at a batch's gate before its first model call: no branch was made and
        // nothing ran, so there is no run to record; the worktree goes back.
        release(setup.worktree, setup.slots.as_deref(), &mut result);
        return RunOutput::Result {
            result,
            exit_code,
            hint,
        };
    }
    describe_setting(&setup, &mut result);
    let Setup {
        main,
        task,
        branch,
        base,
        replaced,
        worktree,
        slots,
        ..
    } = setup;
    if result.status == Status::Success {
        match commit(
            &main,
            &worktree.path,
            &task,
            &branch,
            replaced.as_deref(),
            &result,
        ) {
            Ok(commit) => {
                result.summary = format!(
                    "{} — committed on {branch} as {}",
                    result.summary,
                    short(&commit)
                );
                result.commands = Some(commands(&base, &branch, &result.run_id));
                result.branch = Some(branch.clone());
                result.commit = Some(commit);
                result.replaced = replaced;
                release(worktree, slots.as_deref(), &mut result);
            }
            Err(error) => {
                // The code is only in the worktree now: keep it, and say where.
                let kept = worktree.keep().map(|path| path.display().to_string());
                let place = kept.as_deref().unwrap_or("the task worktree");
                result.status = Status::Error;
                result.summary = format!("{error}; the task's files are kept in {place}");
                result.error = Some(ErrorInfo {
                    kind: error.kind().to_owned(),
                    message: result.summary.clone(),
                });
                result.worktree = kept.ok();
                exit_code = error.exit_code();
                hint = Some(format!(
                    "review the kept worktree, then `execute-local-task discard {}` removes it",
                    result.run_id
                ));
            }
        }
    } else {
        leave_failed(worktree, slots.as_deref(), keep_failed, &mut result);
    }
    let record = BranchRecord {
        run_id: result.run_id.clone(),
        task_id: task.task_id.clone(),
        status: result.status,
        branch,
        base,
        commit: result.commit.clone(),
        worktree: result.worktree.clone(),
        state: None,
        applied_as: None,
    };
    if let Err(error) = runs::save(&main, &record) {
        // The commit is made whatever happens to its record: `git branch` still shows it.
        result.notes.push(format!(
            "the run could not be recorded for `runs` and `apply`: {error}"
        ));
    }
    result
        .notes
        .extend(crate::record::branch(&main.root, &record, env));
    RunOutput::Result {
        result,
        exit_code,
        hint,
    }
}

/// The result speaks of the user's repository, not the worktree that is gone: its root,
/// its branch, the base; backups inside the worktree go with it (the base commit holds
/// the previous bytes).
fn describe_setting(setup: &Setup, result: &mut TaskResult) {
    let current = git(&setup.main.root, &["symbolic-ref", "--short", "-q", "HEAD"])
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    result.git = Some(GitInfo {
        root: setup.main.root.display().to_string(),
        branch: current,
        head: Some(setup.base.clone()),
    });
    result.base = Some(setup.base.clone());
    for file in &mut result.files {
        file.backup = None;
    }
    let mut notes = setup.notes.clone();
    notes.append(&mut result.notes);
    result.notes = notes;
}

/// When the test failed, the ignored paths of the main tree that the worktree lacked:
/// a test that needed `node_modules/` must not look like the model's failure.
fn explain_test_failure(worktree: &TaskWorktree, result: &mut TaskResult) {
    let failed = result.test.as_ref().is_some_and(|test| !test.passed);
    if !failed {
        return;
    }
    let Ok(missing) = worktree.missing_ignored() else {
        return;
    };
    if missing.is_empty() {
        return;
    }
    let shown: Vec<String> = missing.iter().take(20).map(|p| format!("`{p}`")).collect();
    let more = missing.len().saturating_sub(shown.len());
    let note = format!(
        "the test ran in a fresh worktree of HEAD, which lacks these paths git ignores in the main tree: {}{}; if the test needs them, name them in .worktreeinclude (copied) or pass --link DIR (linked)",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    result.summary = format!(
        "{} (the task worktree lacked ignored paths of the main tree; see notes)",
        result.summary
    );
    result.notes.push(note);
}

/// The worktree of a run that ended: back to `slots` for the next task, else removed.
fn release(worktree: TaskWorktree, slots: Option<&WorktreeSlots>, result: &mut TaskResult) {
    if let Some(slots) = slots {
        slots.give_back(worktree);
        return;
    }
    let path = worktree.path.clone();
    if let Err(error) = worktree.remove() {
        result.notes.push(format!(
            "the task worktree {} could not be removed ({error}); the next branch run removes it",
            path.display()
        ));
    }
}

/// Commits the result's files in the worktree and makes the branch point at the commit,
/// only if it is still where the run found it (absent, or the tip `--force` replaces).
fn commit(
    main: &MainRepo,
    worktree: &Path,
    task: &TaskSpec,
    branch: &str,
    replaced: Option<&str>,
    result: &TaskResult,
) -> Result<String> {
    let mut add = vec!["add", "--"];
    add.extend(result.files.iter().map(|file| file.path.as_str()));
    if add.len() > 2 {
        git(worktree, &add)?;
    }
    let (subject, body) = message(task);
    let trailers = trailers(task, result);
    let mut args = git_cli::identity_args(worktree);
    // No automatic maintenance after each task's commit: it is a process of its own per
    // commit, a cost every task of a batch would pay; the user's own next git command
    // that checks does it.
    args.extend([
        "-c",
        "maintenance.auto=false",
        "-c",
        "gc.auto=0",
        "commit",
        "--quiet",
        "--no-verify",
        "--allow-empty",
        "-m",
        &subject,
    ]);
    if let Some(body) = &body {
        args.extend(["-m", body]);
    }
    args.extend(["-m", &trailers]);
    git(worktree, &args)?;
    let commit = git(worktree, &["rev-parse", "HEAD"])?.trim().to_owned();
    if let Some(old) = replaced {
        // Kept reachable before the branch moves off it: nothing `--force` replaces is lost.
        let keep = format!("refs/local-task-replaced/{}/{old}", task.task_id);
        git(&main.root, &["update-ref", &keep, old])?;
    }
    let reflog = format!(
        "execute-local-task: task {} run {}",
        task.task_id, result.run_id
    );
    let reference = format!("refs/heads/{branch}");
    let moved = git_cli::try_git(
        &main.root,
        &[
            "update-ref",
            "-m",
            &reflog,
            &reference,
            &commit,
            replaced.unwrap_or(ABSENT),
        ],
    )?;
    if !moved.ok {
        return Err(match git_cli::resolve(&main.root, &reference)? {
            Some(tip) => Error::BranchExists {
                branch: branch.to_owned(),
                tip,
            },
            None => git_cli::failed(&main.root, &["update-ref", &reference], &moved.stderr),
        });
    }
    Ok(commit)
}

/// The commit's subject (the description's first line, at most 72 characters) and body
/// (the whole description when the subject does not hold it).
fn message(task: &TaskSpec) -> (String, Option<String>) {
    let description = task.description.trim();
    let first = description.lines().next().unwrap_or_default().trim();
    let subject: String = if first.chars().count() > 72 {
        first.chars().take(71).chain(std::iter::once('…')).collect()
    } else if first.is_empty() {
        format!("Task {}", task.task_id)
    } else {
        first.to_owned()
    };
    let body = (subject != description).then(|| description.to_owned());
    (subject, body)
}

/// The run's facts, as git trailers.
fn trailers(task: &TaskSpec, result: &TaskResult) -> String {
    let model = result
        .model
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |model| model.name.clone());
    let test = match &result.test {
        Some(test) if test.passed => format!("passed ({})", one_line(&test.command)),
        Some(test) => format!("failed ({})", one_line(&test.command)),
        None => "not run".to_owned(),
    };
    format!(
        "Task-Id: {}\nRun-Id: {}\nModel: {}\nAttempts: {}\nTest: {test}",
        task.task_id,
        result.run_id,
        one_line(&model),
        result.attempts.len()
    )
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn commands(base: &str, branch: &str, run_id: &str) -> BranchCommands {
    BranchCommands {
        review: format!("git diff {base}..{branch}"),
        apply: format!("execute-local-task apply {run_id}"),
        merge: format!("execute-local-task merge {run_id}"),
        discard: format!("execute-local-task discard {run_id}"),
    }
}

/// A commit's abbreviation for a person.
pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Why a dependent task cannot start: the commits of its dependencies do not merge.
#[derive(Debug)]
pub struct BaseConflict {
    pub message: String,
}

/// The commit a batch task with dependencies starts from: none (HEAD) for no dependency,
/// the dependency's commit for one, and for several a merge of them written with
/// `git merge-tree --write-tree` into commits on no branch (the user's tree, index and
/// refs are not touched; the commits stay reachable from the task's own commit).
pub fn base_of(
    dir: &Path,
    commits: &[String],
) -> std::result::Result<Option<String>, BaseConflict> {
    let fail = |error: Error| BaseConflict {
        message: format!("the base of its dependencies could not be made: {error}"),
    };
    let Some((first, rest)) = commits.split_first() else {
        return Ok(None);
    };
    let main = MainRepo::discover(dir).map_err(fail)?;
    let ancestor = |older: &str, newer: &str| {
        git_cli::try_git(&main.root, &["merge-base", "--is-ancestor", older, newer])
            .is_ok_and(|output| output.ok)
    };
    let mut base = first.clone();
    for next in rest {
        if ancestor(next, &base) {
            continue;
        }
        if ancestor(&base, next) {
            base.clone_from(next);
            continue;
        }
        let merged = git_cli::try_git(
            &main.root,
            &["merge-tree", "--write-tree", "--name-only", &base, next],
        )
        .map_err(fail)?;
        let mut lines = merged.stdout.lines();
        let tree = lines.next().unwrap_or_default().trim().to_owned();
        if !merged.ok && tree.is_empty() {
            return Err(fail(git_cli::failed(
                &main.root,
                &["merge-tree", "--write-tree", &base, next],
                &merged.stderr,
            )));
        }
        if !merged.ok {
            let files: Vec<&str> = lines
                .take_while(|line| !line.is_empty())
                .map(str::trim)
                .collect();
            return Err(BaseConflict {
                message: format!(
                    "the commits of its dependencies conflict ({} and {} both change {})",
                    short(&base),
                    short(next),
                    if files.is_empty() {
                        "the same lines".to_owned()
                    } else {
                        files.join(", ")
                    }
                ),
            });
        }
        let mut args = git_cli::identity_args(&main.root);
        let subject = format!(
            "execute-local-task: base merging {} and {}",
            short(&base),
            short(next)
        );
        args.extend([
            "commit-tree",
            &tree,
            "-p",
            &base,
            "-p",
            next,
            "-m",
            &subject,
        ]);
        git(&main.root, &args)
            .map_err(fail)?
            .trim()
            .clone_into(&mut base);
    }
    Ok(Some(base))
}
