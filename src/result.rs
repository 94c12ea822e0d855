//! The result JSON printed on stdout after every run: the contract the supervisor reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Bumped on any change that could break a reader of the result.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    pub schema_version: u32,
    /// Null only when the spec could not be read far enough to know it.
    pub task_id: Option<String>,
    /// Unique and sortable; names the backups that `rollback` restores.
    pub run_id: String,
    pub status: Status,
    /// One line a reviewer can act on.
    pub summary: String,
    pub files: Vec<FileChange>,
    /// Null when no test ran.
    pub test: Option<TestReport>,
    pub attempts: Vec<Attempt>,
    pub model: Option<ModelInfo>,
    pub usage: Usage,
    pub git: Option<GitInfo>,
    pub duration_ms: u64,
    /// Set when status is `error`.
    pub error: Option<ErrorInfo>,
    /// A `--branch` run's task branch, `local-task/<task_id>`; null when it made no commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The commit made on `branch` for a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The commit a `--branch` run started from (the repository's HEAD then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The exact commands to review the branch and bring it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<BranchCommands>,
    /// The tip of the branch `--force` replaced, kept reachable under
    /// `refs/local-task-replaced/<task_id>/<sha>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    /// A task worktree kept for inspection (`--branch --keep-failed`); `discard` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<String>,
    /// How carefully the supervisor should review this run, from the trust its task kind
    /// and model have earned; absent for a run that never started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewAdvice>,
    /// Local tokens spent and the supervisor tokens saved (gross and net), estimated; absent
    /// for a run that never started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savings: Option<crate::savings::Savings>,
    /// Things worth knowing about the run as a whole: its ledger record is missing, a task
    /// worktree lacked ignored paths of the main tree when its test failed; absent when
    /// there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// How well the task suits a local model (score, verdict, reasons, the profile
    /// routing would pick), read before any model call; null when the run stopped before
    /// its spec and context were read. A `keep` verdict does not stop the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triage: Option<crate::triage::Triage>,
    /// How the run's profile was picked (profile, model, endpoint, reason, the candidates
    /// passed over); absent when no profiles are configured or the run stopped before its
    /// spec was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<crate::route::Route>,
}

/// The commands a supervisor runs next on a branch run's result.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchCommands {
    /// `git diff <base>..local-task/<task_id>`
    pub review: String,
    /// The change into the working tree, uncommitted.
    pub apply: String,
    /// The commit into the current branch.
    pub merge: String,
    /// The branch deleted.
    pub discard: String,
}

impl TaskResult {
    /// A result that reports only its status and summary: no files, test, attempts, model,
    /// usage or repository, for the caller to fill in what the run got to.
    pub fn new(run_id: String, task_id: Option<String>, status: Status, summary: String) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            task_id,
            run_id,
            status,
            summary,
            files: Vec::new(),
            test: None,
            attempts: Vec::new(),
            model: None,
            usage: Usage::default(),
            git: None,
            duration_ms: 0,
            error: None,
            branch: None,
            commit: None,
            base: None,
            commands: None,
            replaced: None,
            worktree: None,
            review: None,
            savings: None,
            notes: Vec::new(),
            triage: None,
            route: None,
        }
    }

    /// The result of a run that ended with an error: status `error`, summarised by the
    /// error's message.
    pub fn error(run_id: String, task_id: Option<String>, error: ErrorInfo) -> Self {
        let summary = error.message.clone();
        Self {
            error: Some(error),
            ..Self::new(run_id, task_id, Status::Error, summary)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The code was written and its test passed (or there was no test).
    Success,
    /// The tool could not finish for a reason the supervisor can fix (e.g. a test command that cannot start).
    Failed,
    /// The local model could not do it within its attempts: the supervisor should do the task itself.
    Escalate,
    /// Bad input, an unusable model server, or an interruption: the run stopped, and the
    /// working tree is as it was unless the error says otherwise.
    Error,
    /// Batch runs only: the task was not run, because a task it depends on did not succeed
    /// or the batch stopped (`--fail-fast`, a signal) before it started; `summary` says why.
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileChange {
    pub path: String,
    pub action: FileAction,
    pub bytes: u64,
    pub lines_added: u64,
    pub lines_removed: u64,
    /// Where the previous bytes are kept, or null for a created file.
    pub backup: Option<String>,
    pub diff: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    Created,
    Modified,
    Unchanged,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestReport {
    pub command: String,
    /// Null when the command was killed or could not start.
    pub exit_code: Option<i32>,
    pub passed: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// The end of the combined output (head and tail with a marker when cut), ANSI codes removed.
    pub output_tail: String,
    /// Paths other than the run's outputs that the test created, modified or deleted, as
    /// git sees the working tree (ignored files are not scanned), sorted by path.
    #[serde(default)]
    pub changed_paths: Vec<PathChange>,
}

/// A path the test command changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathChange {
    pub path: String,
    pub change: PathChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathChangeKind {
    Created,
    Modified,
    Deleted,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    pub n: u32,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub usage: Usage,
    /// Wall time of this attempt's model call in milliseconds, its retries included; absent
    /// when the attempt never reached the model.
    #[serde(default)]
    pub model_ms: Option<u64>,
    /// Things worth knowing that did not stop the attempt (e.g. a block for a file not asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The validator checkpoint's verdict on this attempt's code and what it cost; absent
    /// when no validator ran (none configured, or the code never got that far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<crate::validator::ValidatorReport>,
    /// The profile that made this attempt; absent without profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The model asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    NoCode,
    GuardRefused,
    Truncated,
    TestFailed,
    /// The validator model rejected the code (`pass: false` or too little confidence)
    /// before it was written; its issues went back to the writer.
    ValidatorRejected,
    ModelError,
    /// The run stopped with status `error` during this attempt (its code could not be
    /// written or restored, or the run was interrupted); `error` says why.
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// True when any part was estimated from text length because the server sent no counts.
    pub estimated: bool,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.estimated |= other.estimated;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub provider: String,
    pub endpoint: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GitInfo {
    pub root: String,
    /// Null on a detached HEAD.
    pub branch: Option<String>,
    /// Null in a repository without commits.
    pub head: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorInfo {
    pub kind: String,
    pub message: String,
}

/// Whether a run needs the supervisor's review, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewAdvice {
    pub required: bool,
    /// The trust phase of the run's (task kind, model) pair.
    pub phase: Phase,
    /// One line: what the decision rests on.
    pub why: String,
}

/// How far a (task kind, model) pair has earned trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Every run is reviewed.
    Calibrate,
    /// A sample of runs is reviewed.
    Establish,
    /// Only runs that did not succeed, ran untested, or changed much are reviewed.
    Trust,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Calibrate => "calibrate",
            Self::Establish => "establish",
            Self::Trust => "trust",
        }
    }
}
