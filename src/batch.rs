//! A batch run: the tasks of a [`Plan`] run as library calls, `jobs` model calls at once, each
//! when the tasks it depends on have succeeded; its record in the git directory, and the
//! summary the command line prints after every task's result.
//!
//! `jobs` bounds the model calls in flight, not the tasks: the batch's [`ModelGate`]
//! lets `jobs` calls through at once, and up to `jobs` more tasks run meanwhile, so one
//! task's own work (prepare, write, test, diff, commit, record) overlaps other tasks'
//! model calls. First calls take their turn in the order the tasks started.
//!
//! Each task is one call of a [`Runner`]. In place every task's model calls overlap with
//! the others', while its write, test and restore run under the repository lock
//! (`transaction.rs`), one task at a time; tasks that share a file keep the plan's order,
//! so the tree ends as a serial run leaves it. On branches ([`on_branches`]) every task
//! runs in its own worktree, tests included, and starts from the commits of the tasks it
//! depends on (merged when there are several; a conflict skips it). A task whose dependency did
//! not succeed is `skipped`; `--fail-fast` and a signal stop new tasks from starting, and
//! started ones that have not yet reached the model (they end `skipped`, leaving no run);
//! a signal stops the running ones (their attempts undone). Every task gets a result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::model_gate::ModelGate;
use crate::options::RunOptions;
use crate::pipeline::{self, Env, RunOutput, SpecInput};
use crate::plan::{Plan, Task};
use crate::repo::{Repo, TargetStatus};
use crate::result::{ErrorInfo, Status, TaskResult, Usage};
use crate::server::Connected;
use crate::worktree_slots::WorktreeSlots;

/// Progress lines of one task, shared with its run.
pub type TaskProgress = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs one task of a batch and gives its output: the seam where a branch run takes the
/// in-place run's place. The strings are the commits of the task's dependencies (those
/// that made one: runs on branches).
pub type RunTask = Arc<
    dyn Fn(SpecInput, RunOptions, Vec<String>, TaskProgress) -> BoxFuture<'static, RunOutput>
        + Send
        + Sync,
>;

/// Ends what a runner kept across tasks, once the batch is over; gives warnings to show.
pub type Close = Arc<dyn Fn() -> BoxFuture<'static, Vec<String>> + Send + Sync>;

/// Whether tasks may run ahead of the model calls now (see [`Runner::ahead`]).
pub type Ahead = Arc<dyn Fn() -> bool + Send + Sync>;

/// How a batch runs each task, and what it cleans up at its end.
#[derive(Clone)]
pub struct Runner {
    pub run: RunTask,
    pub close: Option<Close>,
    /// Whether up to `jobs` more tasks may start beside the `jobs` at the model; `None`:
    /// always. On branches, only while worktrees are cheap to make.
    pub ahead: Option<Ahead>,
}

impl Runner {
    /// A runner that keeps nothing across tasks.
    pub fn new(run: RunTask) -> Self {
        Self {
            run,
            close: None,
            ahead: None,
        }
    }
}

/// The in-place runner: the library's run, in the working tree.
pub fn in_place(env: Env) -> Runner {
    Runner::new(Arc::new(move |spec, options, _, progress| {
        let env = Arc::clone(&env);
        Box::pin(async move { pipeline::run(&spec, &options, None, &env, &*progress).await })
    }))
}

/// The branch runner: each task a branch run in a worktree of its own while it runs, from
/// HEAD, or from its dependencies' commits (merged into a commit on no branch when there
/// are several). When they do not merge the task is `skipped`, saying which files
/// conflict. A worktree is reused by the next task, reset to its base, and all are
/// removed when the batch ends ([`WorktreeSlots`]).
pub fn on_branches(env: Env) -> Runner {
    on_branches_with(env, Arc::new(|_| None))
}

/// Gives the server a task's run uses; `None`: the one its options and environment name.
pub type ServerFor = Arc<dyn Fn(&SpecInput) -> Option<Connected> + Send + Sync>;

/// [`on_branches`] with each task's server chosen by `server` (the demo's recorded replies).
pub fn on_branches_with(env: Env, server: ServerFor) -> Runner {
    let slots = Arc::new(WorktreeSlots::new());
    let closing = Arc::clone(&slots);
    let measured = Arc::clone(&slots);
    let ahead: Ahead = Arc::new(move || measured.cheap_to_add());
    let close: Close = Arc::new(move || {
        let slots = Arc::clone(&closing);
        Box::pin(crate::blocking::off_thread(move || slots.close()))
    });
    let run: RunTask = Arc::new(move |spec, options, needs, progress| {
        let env = Arc::clone(&env);
        let connected = server(&spec);
        let slots = Arc::clone(&slots);
        Box::pin(async move {
            let dir = options
                .repo_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("."));
            let base =
                match crate::blocking::off_thread(move || crate::branch::base_of(&dir, &needs))
                    .await
                {
                    Ok(base) => base,
                    Err(conflict) => {
                        let result = TaskResult::new(
                            crate::write::new_run_id(),
                            spec.peek_task_id(),
                            Status::Skipped,
                            format!("skipped: {}", conflict.message),
                        );
                        return RunOutput::Result {
                            result,
                            exit_code: 1,
                            hint: None,
                        };
                    }
                };
            crate::branch::run_in(
                Some(slots),
                base,
                &spec,
                &options,
                connected,
                &env,
                &*progress,
            )
            .await
        })
    });
    Runner {
        run,
        close: Some(close),
        ahead: Some(ahead),
    }
}

/// What a batch tells its watcher while it runs.
pub enum Event<'a> {
    Started {
        task_id: &'a str,
    },
    /// A progress line of a running task.
    Line {
        task_id: &'a str,
        line: &'a str,
    },
    /// A task ended (or was skipped): its result, as printed.
    Finished {
        outcome: &'a TaskOutcome,
    },
    /// Something worth a line on stderr that stops nothing (the record could not be saved).
    Note(&'a str),
}

pub type Observer = Arc<dyn Fn(Event<'_>) + Send + Sync>;

/// How a batch runs besides each task's options.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Model calls at once, at least 1; up to as many more tasks prepare or finish meanwhile.
    pub jobs: usize,
    /// Start no task after the first that did not succeed.
    pub fail_fast: bool,
}

/// One task's end: its result as printed, and the exit code a run of it alone would have.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    pub spec: PathBuf,
    pub result: TaskResult,
    pub exit_code: u8,
    pub hint: Option<String>,
}

/// A finished batch: every task's outcome in the order they finished.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    pub batch_id: String,
    pub outcomes: Vec<TaskOutcome>,
    pub jobs: usize,
    pub duration: Duration,
    /// The signal that stopped the batch.
    pub interrupted: Option<Signal>,
}

/// The summary line printed after the tasks' results.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSummary {
    pub schema_version: u32,
    pub batch_id: String,
    /// `success` when every task succeeded, `interrupted` when a signal stopped the batch,
    /// else `failed`.
    pub status: BatchStatus,
    pub counts: Counts,
    /// Tokens of every task together.
    pub usage: Usage,
    pub duration_ms: u64,
    pub jobs: usize,
    /// The signal that stopped the batch, e.g. `SIGTERM`.
    pub interrupted_by: Option<String>,
    /// Every task in the order it finished.
    pub tasks: Vec<TaskLine>,
}

/// The JSON Schema of one line a batch prints (`schema batch`): a task's result as it
/// finishes, or the summary that ends the batch.
pub fn line_schema() -> serde_json::Value {
    let mut generator = schemars::r#gen::SchemaSettings::draft07().into_generator();
    let result = generator.subschema_for::<TaskResult>();
    let summary = generator.subschema_for::<BatchSummary>();
    let mut root = schemars::schema::SchemaObject::default();
    root.metadata().title = Some("execute-local-task batch line".to_owned());
    root.metadata().description = Some(
        "One line of a batch's JSON Lines output: a task's result, or the batch summary (the last line).".to_owned(),
    );
    root.subschemas().any_of = Some(vec![result, summary]);
    let mut schema = generator.into_root_schema_for::<()>();
    schema.schema = root;
    serde_json::json!(schema)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Success,
    Failed,
    Interrupted,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub success: usize,
    pub failed: usize,
    pub escalate: usize,
    pub error: usize,
    pub skipped: usize,
}

/// One task in the summary.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskLine {
    pub task_id: Option<String>,
    pub spec: String,
    pub status: Status,
    /// Null for a skipped task: it never ran.
    pub run_id: Option<String>,
    /// The exit code a run of this task alone would have had.
    pub exit_code: u8,
    pub summary: String,
}

impl BatchOutcome {
    pub fn summary(&self) -> BatchSummary {
        let mut counts = Counts::default();
        let mut usage = Usage::default();
        for outcome in &self.outcomes {
            usage.add(&outcome.result.usage);
            *match outcome.result.status {
                Status::Success => &mut counts.success,
                Status::Failed => &mut counts.failed,
                Status::Escalate => &mut counts.escalate,
                Status::Error => &mut counts.error,
                Status::Skipped => &mut counts.skipped,
            } += 1;
        }
        let status = if self.interrupted.is_some() {
            BatchStatus::Interrupted
        } else if counts.success == self.outcomes.len() {
            BatchStatus::Success
        } else {
            BatchStatus::Failed
        };
        BatchSummary {
            schema_version: crate::result::SCHEMA_VERSION,
            batch_id: self.batch_id.clone(),
            status,
            counts,
            usage,
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            jobs: self.jobs,
            interrupted_by: self.interrupted.map(|signal| signal.as_str().to_owned()),
            tasks: self
                .outcomes
                .iter()
                .map(|outcome| TaskLine {
                    task_id: outcome.result.task_id.clone(),
                    spec: outcome.spec.display().to_string(),
                    status: outcome.result.status,
                    run_id: (outcome.result.status != Status::Skipped)
                        .then(|| outcome.result.run_id.clone()),
                    exit_code: outcome.exit_code,
                    summary: outcome.result.summary.clone(),
                })
                .collect(),
        }
    }
}

/// A batch's record in the git directory (`execute-local-task/batches/<batch_id>.json`),
/// saved as each task ends: what `rollback <BATCH_ID>` and `--only-failed` read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRecord {
    pub version: u32,
    pub batch_id: String,
    /// Finished tasks in the order they finished, then those not finished in plan order.
    pub tasks: Vec<RecordedTask>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedTask {
    pub task_id: String,
    /// The spec file, absolute.
    pub spec: PathBuf,
    /// Null while the task has not run, and for a skipped task.
    pub run_id: Option<String>,
    /// Null while the task has not finished.
    pub status: Option<Status>,
}

impl BatchRecord {
    fn path(repo: &Repo, batch_id: &str) -> PathBuf {
        repo.state_dir()
            .join("batches")
            .join(format!("{batch_id}.json"))
    }

    /// The record of batch `batch_id` of the repository at `repo`.
    pub fn load(repo: &Repo, batch_id: &str) -> Result<Self> {
        let not_found = |message: String| Error::Batch {
            paths: vec![Self::path(repo, batch_id)],
            message: format!("{batch_id} {message}"),
        };
        if !valid_batch_id(batch_id) {
            return Err(not_found(
                "is not a batch id (see the batch summary's batch_id)".to_owned(),
            ));
        }
        let path = Self::path(repo, batch_id);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            not_found(format!(
                "no record of this batch in this repository ({}: {error})",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|error| {
            not_found(format!(
                "its record {} is unreadable: {error}",
                path.display()
            ))
        })
    }

    /// Saved whole or not at all: a new file renamed over the old.
    fn save(&self, repo: &Repo) -> Result<()> {
        let path = Self::path(repo, &self.batch_id);
        let dir = path.parent().unwrap_or(&path).to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|error| Error::io("create directory", &dir, error))?;
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        let temp = dir.join(format!(".{}.tmp", self.batch_id));
        std::fs::write(&temp, text).map_err(|error| Error::io("write", &temp, error))?;
        std::fs::rename(&temp, &path).map_err(|error| Error::io("rename", &path, error))
    }
}

/// The plan of `--only-failed BATCH_ID`: the tasks of that batch (of the repository at
/// `repo_dir`) that did not succeed; its successes count as met dependencies.
pub fn plan_again(repo_dir: &Path, batch_id: &str) -> Result<Plan> {
    let repo = Repo::discover(repo_dir)?;
    let record = BatchRecord::load(&repo, batch_id)?;
    let (done, again): (Vec<_>, Vec<_>) = record
        .tasks
        .into_iter()
        .partition(|task| task.status == Some(Status::Success));
    if again.is_empty() {
        return Err(Error::Batch {
            paths: Vec::new(),
            message: format!("every task of {batch_id} succeeded: there is nothing to run again"),
        });
    }
    let paths: Vec<PathBuf> = again.into_iter().map(|task| task.spec).collect();
    crate::plan::plan(&paths, &done.into_iter().map(|task| task.task_id).collect())
}

/// A new batch id: `batch-` and a run id's form, so batches sort by start like runs.
pub fn new_batch_id() -> String {
    format!("batch-{}", crate::write::new_run_id())
}

/// Whether `id` has a batch id's form (and so is safe as a file name).
pub fn valid_batch_id(id: &str) -> bool {
    id.strip_prefix("batch-").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Runs `plan`: every task once, or skipped. Fails, running nothing, only when the
/// repository cannot be opened.
pub async fn run(
    plan: Plan,
    options: &RunOptions,
    batch: BatchOptions,
    runner: Runner,
    observe: Observer,
) -> Result<BatchOutcome> {
    let repo = match &options.repo_dir {
        Some(dir) => Repo::discover(dir)?,
        None => Repo::discover(
            &std::env::current_dir()
                .map_err(|error| Error::io("read current directory", ".", error))?,
        )?,
    };
    // On branches every task writes a fresh worktree: `--force` keeps its one meaning there
    // (replace an existing task branch), never given to a task by the plan.
    let overwrite = if options.branch {
        vec![options.force; plan.tasks.len()]
    } else {
        overwrites_own_writes(&plan, &repo, options.force)
    };
    let batch_id = new_batch_id();
    // A caller that gives out the id while the batch runs (the MCP server) learns it now;
    // the tasks' own run ids are not the batch's.
    if let Some(sink) = &options.run_id_sink {
        sink.send_replace(Some(batch_id.clone()));
    }
    let started = Instant::now();
    let absolute = plan
        .tasks
        .iter()
        .map(|task| std::fs::canonicalize(&task.path).unwrap_or_else(|_| task.path.clone()))
        .collect();
    let gate = Arc::new(ModelGate::new(batch.jobs));
    let count = plan.tasks.len();
    let mut scheduler = Scheduler {
        waiting: vec![State::Waiting; plan.tasks.len()],
        commits: vec![None; plan.tasks.len()],
        absolute,
        plan,
        options: RunOptions {
            batch_id: Some(batch_id.clone()),
            run_id_sink: None,
            ..options.clone()
        },
        gate,
        tickets: vec![None; count],
        batch,
        runner,
        observe,
        repo,
        overwrite,
        outcomes: Vec::new(),
        finished: Vec::new(),
        running: JoinSet::new(),
        running_ids: HashMap::new(),
        stop: None,
        batch_id,
    };
    scheduler.save_record();
    scheduler.run().await;
    if let Some(close) = &scheduler.runner.close {
        for warning in close().await {
            (scheduler.observe)(Event::Note(&warning));
        }
    }
    Ok(BatchOutcome {
        batch_id: scheduler.batch_id,
        outcomes: scheduler.outcomes,
        jobs: batch.jobs,
        duration: started.elapsed(),
        interrupted: options.cancel.signal(),
    })
}

/// Whether each task may overwrite files with uncommitted changes: with `--force`, or when
/// an earlier task of the batch writes one of its files and none of them had uncommitted
/// changes when the batch began. The batch's own writes are backed up by its runs and
/// undone by `rollback`; the user's uncommitted work is still refused as in a single run.
fn overwrites_own_writes(plan: &Plan, repo: &Repo, force: bool) -> Vec<bool> {
    let dirty = |path: &String| {
        let real = Path::new(path);
        repo.root().join(real).symlink_metadata().is_ok()
            && !matches!(repo.target_status(real), Ok(TargetStatus::Clean))
    };
    plan.tasks
        .iter()
        .enumerate()
        .map(|(index, task)| {
            force
                || (plan.tasks[..index].iter().any(|earlier| {
                    task.spec
                        .outputs
                        .iter()
                        .any(|p| earlier.spec.outputs.contains(p))
                }) && !task.spec.outputs.iter().any(dirty))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done(Status),
}

struct Scheduler {
    plan: Plan,
    options: RunOptions,
    batch: BatchOptions,
    runner: Runner,
    observe: Observer,
    repo: Repo,
    overwrite: Vec<bool>,
    /// Each spec's absolute path, for the record.
    absolute: Vec<PathBuf>,
    waiting: Vec<State>,
    /// The commit each task that succeeded on its branch made.
    commits: Vec<Option<String>>,
    outcomes: Vec<TaskOutcome>,
    /// Plan indices in the order their tasks finished.
    finished: Vec<usize>,
    running: JoinSet<(usize, RunOutput)>,
    running_ids: HashMap<tokio::task::Id, usize>,
    /// Why no further task starts (`--fail-fast`, a signal).
    stop: Option<String>,
    /// `jobs` model calls at once, shared by the tasks' runs.
    gate: Arc<ModelGate>,
    /// Each started task's place at the gate, retired when it ends.
    tickets: Vec<Option<u64>>,
    batch_id: String,
}

impl Scheduler {
    async fn run(&mut self) {
        loop {
            self.start_what_is_ready();
            let Some(joined) = self.running.join_next().await else {
                break;
            };
            let (index, output) = match joined {
                Ok(done) => done,
                Err(error) => {
                    // A run that panicked: its task still gets a result.
                    let Some(&index) = self.running_ids.get(&error.id()) else {
                        continue;
                    };
                    let output = RunOutput::Result {
                        result: TaskResult::error(
                            crate::write::new_run_id(),
                            Some(self.plan.tasks[index].spec.task_id.clone()),
                            ErrorInfo {
                                kind: "internal".to_owned(),
                                message: format!("the task's run ended abnormally: {error}"),
                            },
                        ),
                        exit_code: 1,
                        hint: None,
                    };
                    (index, output)
                }
            };
            self.finish(index, output);
        }
    }

    /// Skips what can no longer run and starts what can, in plan order, up to `jobs`.
    fn start_what_is_ready(&mut self) {
        if self.stop.is_none()
            && let Some(signal) = self.options.cancel.signal()
        {
            self.stop = Some(format!(
                "not run: the batch was interrupted by {} before this task started",
                signal.as_str()
            ));
        }
        for index in 0..self.plan.tasks.len() {
            if self.waiting[index] != State::Waiting {
                continue;
            }
            if let Some(reason) = self.stop.clone() {
                self.skip(index, reason);
                continue;
            }
            let task = &self.plan.tasks[index];
            if let Some(&need) = task.needs.iter().find(|&&need| {
                matches!(self.waiting[need], State::Done(status) if status != Status::Success)
            }) {
                let reason = format!(
                    "skipped: it depends on {}, which {}",
                    self.plan.tasks[need].spec.task_id,
                    match self.waiting[need] {
                        State::Done(Status::Skipped) => "was skipped",
                        State::Done(Status::Escalate) => "the model could not do (escalate)",
                        State::Done(Status::Failed) => "failed",
                        _ => "ended with an error",
                    }
                );
                self.skip(index, reason);
                continue;
            }
            let ready = task
                .needs
                .iter()
                .all(|&need| self.waiting[need] == State::Done(Status::Success))
                && task
                    .after
                    .iter()
                    .all(|&earlier| matches!(self.waiting[earlier], State::Done(_)));
            // Up to `jobs` tasks at the model and as many more preparing or finishing.
            let ahead = self.runner.ahead.as_ref().is_none_or(|ahead| ahead());
            let limit = self.batch.jobs.saturating_mul(if ahead { 2 } else { 1 });
            if ready && self.running.len() < limit {
                self.start(index);
            }
        }
    }

    fn start(&mut self, index: usize) {
        let task: &Task = &self.plan.tasks[index];
        let task_id = task.spec.task_id.clone();
        let spec = SpecInput::Text {
            label: task.path.display().to_string(),
            text: task.text.clone(),
        };
        let pass = self.gate.pass();
        self.tickets[index] = Some(pass.ticket);
        let options = RunOptions {
            force: self.overwrite[index],
            model_gate: Some(pass),
            ..self.options.clone()
        };
        let observe = Arc::clone(&self.observe);
        let id = task_id.clone();
        let progress: TaskProgress = Arc::new(move |line: &str| {
            observe(Event::Line { task_id: &id, line });
        });
        let needs = task
            .needs
            .iter()
            .filter_map(|&need| self.commits[need].clone())
            .collect();
        (self.observe)(Event::Started { task_id: &task_id });
        let run = (self.runner.run)(spec, options, needs, progress);
        let handle = self.running.spawn(async move { (index, run.await) });
        self.running_ids.insert(handle.id(), index);
        self.waiting[index] = State::Running;
    }

    fn skip(&mut self, index: usize, reason: String) {
        let result = TaskResult::new(
            crate::write::new_run_id(),
            Some(self.plan.tasks[index].spec.task_id.clone()),
            Status::Skipped,
            reason,
        );
        self.finish(
            index,
            RunOutput::Result {
                result,
                exit_code: 1,
                hint: None,
            },
        );
    }

    fn finish(&mut self, index: usize, output: RunOutput) {
        let task = &self.plan.tasks[index];
        let (result, exit_code, hint) = match output {
            RunOutput::Result {
                result,
                exit_code,
                hint,
            } => (result, exit_code, hint),
            RunOutput::DryRun(_) => (
                TaskResult::error(
                    crate::write::new_run_id(),
                    Some(task.spec.task_id.clone()),
                    ErrorInfo {
                        kind: "usage".to_owned(),
                        message: "a batch does not take --dry-run".to_owned(),
                    },
                ),
                2,
                None,
            ),
        };
        let status = result.status;
        if self.batch.fail_fast && status != Status::Success && self.stop.is_none() {
            let reason = format!(
                "not run: --fail-fast stopped the batch after {} did not succeed ({})",
                task.spec.task_id,
                status_word(status)
            );
            // Started tasks that have not reached the model yet stop there too.
            self.gate.stop(reason.clone());
            self.stop = Some(reason);
        }
        if let Some(ticket) = self.tickets[index] {
            // A run that ended before its first model call must not hold up the line;
            // after a `--fail-fast` stop, so the next in line sees it.
            self.gate.retire(ticket);
        }
        let outcome = TaskOutcome {
            spec: task.path.clone(),
            result,
            exit_code,
            hint,
        };
        self.waiting[index] = State::Done(status);
        self.commits[index].clone_from(&outcome.result.commit);
        self.finished.push(index);
        (self.observe)(Event::Finished { outcome: &outcome });
        self.outcomes.push(outcome);
        self.save_record();
    }

    /// The record as it stands; failing to save it stops no task (it costs `rollback` of
    /// the batch by id, never the code: each run keeps its own journal).
    fn save_record(&self) {
        let finished = self
            .finished
            .iter()
            .zip(&self.outcomes)
            .map(|(&index, outcome)| RecordedTask {
                task_id: self.plan.tasks[index].spec.task_id.clone(),
                spec: self.absolute[index].clone(),
                run_id: (outcome.result.status != Status::Skipped)
                    .then(|| outcome.result.run_id.clone()),
                status: Some(outcome.result.status),
            });
        let unfinished = (0..self.plan.tasks.len())
            .filter(|index| !self.finished.contains(index))
            .map(|index| RecordedTask {
                task_id: self.plan.tasks[index].spec.task_id.clone(),
                spec: self.absolute[index].clone(),
                run_id: None,
                status: None,
            });
        let record = BatchRecord {
            version: 1,
            batch_id: self.batch_id.clone(),
            tasks: finished.chain(unfinished).collect(),
        };
        if let Err(error) = record.save(&self.repo) {
            (self.observe)(Event::Note(&format!(
                "warning: the batch's record could not be saved ({error}); each task's run can still be rolled back by its run_id"
            )));
        }
    }
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Success => "success",
        Status::Failed => "failed",
        Status::Escalate => "escalate",
        Status::Error => "error",
        Status::Skipped => "skipped",
    }
}
