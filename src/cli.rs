//! The command line: parses arguments, runs the library, prints the JSON on stdout and
//! progress and hints on stderr, and turns outcomes into exit codes.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::arguments::{self, Secs};
use crate::batch;
use crate::bring_in::{self, Verb};
use crate::defaults;
use crate::demo;
use crate::discovery;
use crate::document::Document;
use crate::model::Limits;
use crate::model::recorded::Matching;
use crate::model::retry::RetryPolicy;
use crate::pipeline::{self, Cancel, Env, RunOptions, SpecInput};
use crate::plan;
use crate::progress;
use crate::prune;
use crate::result::TaskResult;
use crate::rollback::Which;
use crate::runs;
use crate::server::{self, Connection, ModelChoice};

/// Writes a text the command line composed to stderr, its line breaks kept (see
/// [`write_stderr`]).
macro_rules! say {
    ($($arg:tt)*) => {{
        crate::cli::write_stderr(&crate::escape::controls_keeping_lines(&format!($($arg)*)));
    }};
}

/// Writes one whole line to stderr (a progress line, `error: …`, `hint: …`): every control
/// character in it is escaped, a line break too, since a spec's test command or a server's
/// body may hold one and one line must stay one line.
fn say_line(line: &str) {
    write_stderr(&crate::escape::controls(line));
}

/// The one place the command line writes to stderr, reached only through [`say!`] and
/// [`say_line`], which escape control characters first: text from a spec or a server's
/// body must not recolour, retitle or clear the terminal it is shown on. Never panics:
/// a closed stderr (a caller that stopped reading, a hung-up terminal) must not stop a run
/// between its write and its test, nor keep the result JSON from stdout. `eprintln!`
/// panics on a failed write.
fn write_stderr(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

const AFTER_HELP: &str = "\
Examples:
  execute-local-task task-specs/T-042.json
  execute-local-task task-specs/T-042.json --branch --endpoint http://127.0.0.1:11434 --model qwen2.5-coder:7b
  execute-local-task task-specs/T-042.json --dry-run

Exit codes: 0 success; 1 the task ran but did not succeed (status failed or escalate);
2 bad input (command line, spec, config, repository, unsafe path), or the machine refused a read or
write (kind `environment`: disk full, permissions); 3 the model server could not be used;
130, 143, 129 interrupted by SIGINT, SIGTERM, SIGHUP (the test is stopped, the tree restored).
A batch: 0 every task succeeded; 1 any did not (status failed, escalate, error or skipped);
2 bad input before it ran; 3 no task could use its model server; 128+N on signal N.

Environment: LOCAL_TASK_ENDPOINT, LOCAL_TASK_MODEL, LOCAL_TASK_PROVIDER, LOCAL_TASK_API_KEY, LOCAL_TASK_PROFILE,
and the ecosystem's OPENAI_BASE_URL, OPENAI_API_KEY (sent only to OPENAI_BASE_URL), OLLAMA_HOST.
Precedence: flag > spec > LOCAL_TASK_* > ecosystem variables > the usual local ports.
LOCAL_TASK_LEDGER moves the run ledger (default $XDG_DATA_HOME/execute-local-task/ledger.db).";

#[derive(Parser, Debug)]
#[command(
    name = "execute-local-task",
    version,
    about = "Run one small coding task on a local model and write the result safely into a git repository.",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct PruneArgs {
    /// Keep at least this many of the newest runs.
    #[arg(long, value_name = "N", value_parser = arguments::runs, allow_negative_numbers = true)]
    keep: Option<usize>,
    /// Keep every run younger than this many days.
    #[arg(long, value_name = "DAYS", value_parser = arguments::days, allow_negative_numbers = true)]
    older_than: Option<u64>,
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// The repository (default: the one containing the current directory).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Seconds to wait for a run that is writing the same repository.
    #[arg(long, value_name = "SECS", default_value_t = defaults::LOCK_TIMEOUT.as_secs(), value_parser = arguments::lock_timeout, allow_negative_numbers = true)]
    lock_timeout: u64,
}

/// The arguments of `apply`, `merge` and `discard`; their MCP tools take the same.
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct BringInArgs {
    /// The `run_id` from the branch run's result JSON, or a batch's `batch_id` (every
    /// successful task of the batch, in dependency order; `discard`: every run of it).
    #[arg(required_unless_present = "last")]
    pub(crate) run_id: Option<String>,
    /// The newest branch run.
    #[arg(long, conflicts_with = "run_id")]
    pub(crate) last: bool,
    /// The repository (default: the one containing the current directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) repo: Option<PathBuf>,
    /// Seconds to wait for a run that is writing the same repository.
    #[arg(long, value_name = "SECS", default_value_t = defaults::LOCK_TIMEOUT.as_secs(), value_parser = arguments::lock_timeout, allow_negative_numbers = true)]
    pub(crate) lock_timeout: u64,
}

/// `rollback`'s arguments; the MCP server's `rollback` tool takes the same.
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct RollbackArgs {
    /// The `run_id` from the run's result JSON, or a batch's `batch_id` (every run of
    /// the batch, newest first).
    #[arg(required_unless_present = "last")]
    pub(crate) run_id: Option<String>,
    /// Undo the newest run (if it left nothing to undo, say so and change nothing).
    #[arg(long, conflicts_with = "run_id")]
    pub(crate) last: bool,
    /// Restore even files that changed since the run wrote them.
    #[arg(long)]
    pub(crate) force: bool,
    /// The repository (default: the one containing the current directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) repo: Option<PathBuf>,
    /// Seconds to wait for a run that is writing the same repository.
    #[arg(long, value_name = "SECS", default_value_t = defaults::LOCK_TIMEOUT.as_secs(), value_parser = arguments::lock_timeout, allow_negative_numbers = true)]
    pub(crate) lock_timeout: u64,
}

/// `models`' arguments; the MCP server's `models` tool takes the same (less `json`).
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct ModelsArgs {
    /// Probe only this server (default: the one a run would use, from the same
    /// variables, else every usual local port).
    #[arg(long, value_name = "URL")]
    pub(crate) endpoint: Option<String>,
    /// Protocol to probe for (default: `LOCAL_TASK_PROVIDER`, else both).
    #[arg(long, value_parser = server::PROVIDERS.to_vec())]
    pub(crate) provider: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    #[schemars(skip)]
    json: bool,
}

/// `review`'s arguments; the MCP server's `review` tool takes the same, with the
/// positional words named `run_id` and `verdict`.
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct ReviewArgs {
    /// The run's id, then the verdict (good, acceptable, poor); with --last only the verdict.
    #[arg(value_name = "RUN_ID|VERDICT", num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// Review the newest recorded run.
    #[arg(long)]
    last: bool,
    /// Why, in a sentence.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// What went wrong: `hallucination`, `incomplete`, `wrong-format`, `off-topic`,
    /// `broke-tests` or `other`.
    #[arg(long, value_enum)]
    #[schemars(with = "Option<String>")]
    failure_mode: Option<crate::review::FailureMode>,
}

/// `stats`' arguments; the MCP server's `stats` tool takes the same (less `json` and
/// `html`: a tool answers JSON and writes no files).
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct StatsArgs {
    /// Only runs started on or after this date (2026-12-01) or RFC 3339 time.
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Only this task kind.
    #[arg(long, value_name = "K")]
    kind: Option<String>,
    /// Only this model.
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// Count every repository's runs, not only this one's.
    #[arg(long, conflicts_with = "repo")]
    all_repos: bool,
    /// The repository (default: the one containing the current directory).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Print JSON (its schema: `schema stats`) instead of a table.
    #[arg(long)]
    #[schemars(skip)]
    json: bool,
    /// Also write the figures, with charts over time, as one self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    #[schemars(skip)]
    html: Option<PathBuf>,
}

impl StatsArgs {
    /// The ledger query these arguments ask for.
    pub(crate) fn request(&self) -> crate::stats::Request {
        crate::stats::Request {
            since: self.since.clone(),
            kind: self.kind.clone(),
            model: self.model.clone(),
            repo_dir: (!self.all_repos)
                .then(|| self.repo.clone().unwrap_or_else(|| PathBuf::from("."))),
        }
    }
}

/// `config`'s arguments; the MCP server's `config` tool takes the same (less `json`).
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct ConfigArgs {
    /// Also probe each profile's server and model (reachable, model present, context
    /// window known); exit 3 when one is not usable.
    #[arg(long)]
    check: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    #[schemars(skip)]
    json: bool,
    /// The profile to select (over `LOCAL_TASK_PROFILE`).
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// The repository (default: the one containing the current directory).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
}

/// `log`'s arguments; the MCP server's `log` tool takes the same (less `json`).
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct LogArgs {
    /// How many runs to list.
    #[arg(long, value_name = "N", default_value_t = defaults::LOG_LIMIT)]
    pub(crate) limit: u32,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    #[schemars(skip)]
    json: bool,
}

/// `export`'s arguments; the MCP server's `export` tool takes the same.
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct ExportArgs {
    /// The verdict of the runs to export.
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub(crate) reviewed: crate::review::Verdict,
    /// Only runs started on or after this date (2026-12-01) or RFC 3339 time.
    #[arg(long, value_name = "DATE")]
    pub(crate) since: Option<String>,
}

/// `check`'s arguments; the MCP server's `check` tool takes the same.
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct CheckArgs {
    /// Specs, or directories of specs (every `*.json` below, hidden and git-ignored files skipped, as a batch finds them).
    #[arg(value_name = "SPEC|DIR", required = true)]
    paths: Vec<PathBuf>,
    /// Only parse and validate the specs (for hooks): no repository, context or triage.
    #[arg(long)]
    validate_only: bool,
    /// The profile to triage for (over the spec's and `LOCAL_TASK_PROFILE`).
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// The repository (default: the one containing the current directory).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Undo a run's writes byte for byte and delete the files it created.
    #[command(
        after_help = "Examples:\n  execute-local-task rollback 20261120T221210529Z-0dbe\n  execute-local-task rollback --last --force"
    )]
    Rollback(RollbackArgs),
    /// Remove old runs' backups: those past the newest --keep runs and older than
    /// --older-than days (defaults: `LOCAL_TASK_KEEP_RUNS`, `LOCAL_TASK_KEEP_DAYS`, else
    /// 50 and 14).
    #[command(
        after_help = "Examples:\n  execute-local-task prune --dry-run\n  execute-local-task prune --keep 10 --older-than 7"
    )]
    Prune(PruneArgs),
    /// List reachable local model servers and their models.
    #[command(
        after_help = "Examples:\n  execute-local-task models\n  execute-local-task models --endpoint http://127.0.0.1:11434 --json"
    )]
    Models(ModelsArgs),
    /// Put a branch run's change (or every success of a batch, by its batch id) into the
    /// working tree as uncommitted changes (undone by `rollback`); refuses, changing
    /// nothing, when the tree has changes to the same files.
    #[command(
        after_help = "Examples:\n  execute-local-task apply 20261201T232209700Z-5d12f18f\n  execute-local-task apply --last"
    )]
    Apply(BringInArgs),
    /// Merge a branch run's commit (or a batch's, by its batch id) into the current branch
    /// (fast-forward when possible); refuses on conflict with nothing changed.
    #[command(
        after_help = "Examples:\n  execute-local-task merge 20261201T232209700Z-5d12f18f\n  execute-local-task merge --last"
    )]
    Merge(BringInArgs),
    /// Delete a branch run's branch and any worktree it left (or a whole batch's).
    #[command(
        after_help = "Examples:\n  execute-local-task discard 20261201T232209700Z-5d12f18f\n  execute-local-task discard --last"
    )]
    Discard(BringInArgs),
    /// List recent branch runs, newest first: id, task, status, branch, what became of it.
    #[command(
        after_help = "Examples:\n  execute-local-task runs\n  execute-local-task runs --json | jq '.[0].run_id'"
    )]
    Runs {
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
        /// The repository (default: the one containing the current directory).
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
    },
    /// List recent runs from the run ledger, newest first.
    #[command(
        after_help = "Examples:\n  execute-local-task log\n  execute-local-task log --limit 5 --json"
    )]
    Log(LogArgs),
    /// Record your verdict on a run: `review RUN_ID good` or `review --last poor`. A later
    /// verdict replaces the earlier one; the history is kept.
    #[command(
        after_help = "Examples:\n  execute-local-task review --last good\n  execute-local-task review 20261201T101500000Z-3f9a1c2e poor --reason \"ignored the constraint\" --failure-mode off-topic"
    )]
    Review(ReviewArgs),
    /// Figures from the run ledger per task kind and model, against your targets.
    #[command(
        after_help = "Examples:\n  execute-local-task stats\n  execute-local-task stats --since 2026-11-01 --kind code --json\n  execute-local-task stats --all-repos --html stats.html"
    )]
    Stats(StatsArgs),
    /// Write reviewed runs as chat-format JSON Lines (the messages sent, then the accepted
    /// code as the assistant's reply), for fine-tuning.
    #[command(
        after_help = "Examples:\n  execute-local-task export --reviewed good > accepted.jsonl\n  execute-local-task export --reviewed good --since 2026-11-01"
    )]
    Export(ExportArgs),
    /// Print a JSON Schema generated from the tool's own types.
    #[command(
        after_help = "Examples:\n  execute-local-task schema spec > task-spec.schema.json\n  execute-local-task schema result\n  execute-local-task schema config > config.schema.json"
    )]
    Schema {
        #[arg(value_enum)]
        which: SchemaKind,
    },
    /// Serve the Model Context Protocol on stdin and stdout: the tools `run_task`,
    /// `run_batch`, `get_run`, `rollback`, `apply`, `merge`, `discard`, `models`, `check`,
    /// `config`, `review`, `log`, `stats` and `export`, whose results are the JSON these
    /// commands print.
    #[command(
        after_help = "Examples:\n  claude mcp add execute-local-task -- execute-local-task mcp\n  execute-local-task mcp    # in a repository: a client speaks JSON-RPC lines on stdin"
    )]
    Mcp,
    /// Print the effective configuration (repository and user `config.toml`, environment,
    /// flags, defaults) with where each value came from.
    #[command(
        after_help = "Examples:\n  execute-local-task config\n  execute-local-task config --json\n  execute-local-task config --check --profile small"
    )]
    Config(ConfigArgs),
    /// Triage task specs without calling a model: a score 0-10 with reasons, a verdict
    /// (`delegate`, `delegate_with_care`, `keep`) and the profile routing would pick. JSON
    /// on stdout; exit 0 when every spec can run, 2 otherwise.
    #[command(
        after_help = "Examples:\n  execute-local-task check task-specs/T-042.json\n  execute-local-task check task-specs/\n  execute-local-task check --validate-only task-specs/*.json"
    )]
    Check(CheckArgs),
    /// Run the whole pipeline on a bundled example with recorded model replies.
    #[command(
        after_help = "Examples:\n  execute-local-task demo\n  execute-local-task demo --dir /tmp/demo"
    )]
    Demo {
        /// Build the example here instead of a temporary directory (kept afterwards).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    #[command(flatten)]
    Integration(Integration),
}

/// The integration subcommands (`init`, `check`, `hook`, `completions`), kept apart from
/// the run's so they merge as one block.
#[derive(Subcommand, Debug)]
enum Integration {
    /// Set a repository up: the config with the local servers found, `task-specs/` with an
    /// example, the Claude Code skill and commands under `.claude/`, and the MCP server in
    /// `.mcp.json`. Existing files are kept (`--force` replaces them).
    #[command(
        after_help = "Examples:\n  execute-local-task init --dry-run\n  execute-local-task init\n  execute-local-task init --repo ../other --force"
    )]
    Init {
        /// Replace files that exist (and the MCP entry, if it differs).
        #[arg(long)]
        force: bool,
        /// List what would be written, and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The repository (default: the one containing the current directory).
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
    },
    /// Install or remove a git `pre-commit` hook that validates changed task specs.
    #[command(
        after_help = "Examples:\n  execute-local-task hook install\n  execute-local-task hook uninstall --repo ../other"
    )]
    Hook {
        #[arg(value_enum)]
        action: HookAction,
        /// The repository (default: the one containing the current directory).
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  execute-local-task completions bash > ~/.local/share/bash-completion/completions/execute-local-task\n  execute-local-task completions zsh > ~/.zfunc/_execute-local-task\n  execute-local-task completions fish > ~/.config/fish/completions/execute-local-task.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum HookAction {
    Install,
    Uninstall,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum SchemaKind {
    Spec,
    Result,
    /// A line of a batch's output: a task's result or the summary.
    Batch,
    /// The config file (`config.toml`).
    Config,
    Stats,
}

/// The run options; the MCP server's `run_task` takes the same (its input schema is
/// this type's, its values go through these parsers).
#[derive(Args, Debug, schemars::JsonSchema)]
pub(crate) struct RunArgs {
    /// The task spec (JSON) to run; a directory, or several specs, runs a batch: every
    /// `*.json` below it, ordered by `depends_on`.
    #[arg(value_name = "SPEC|DIR")]
    specs: Vec<PathBuf>,
    /// Model server URL, e.g. <http://127.0.0.1:1234/v1> (LM Studio) or <http://127.0.0.1:11434> (Ollama).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Protocol to speak: `ollama` is Ollama's native API; `auto` probes the server.
    #[arg(long, value_parser = server::PROVIDERS.to_vec())]
    provider: Option<String>,
    /// Model name (default: the spec's, `LOCAL_TASK_MODEL`, or the server's only model).
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// The repository to work in (default: the one containing the current directory).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Print the exact request that would be sent; call nothing, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not run the test command.
    #[arg(long)]
    no_test: bool,
    /// Overwrite output files that have uncommitted changes (they are backed up either way);
    /// with --branch, replace an existing task branch (its old tip is kept reachable).
    #[arg(long)]
    force: bool,
    /// Run in a task worktree and commit a success on branch `local-task/<task_id>`; the
    /// working tree, index and HEAD are not touched (default: the config's `[run] branch`).
    #[arg(long)]
    branch: bool,
    /// Run in place even when the config's `[run] branch` says to run on a branch.
    #[arg(long, conflicts_with = "branch")]
    no_branch: bool,
    /// On a task branch: an ignored directory of the main tree (`node_modules`, `.venv`,
    /// `target`) to link into the task worktree rather than copy; repeatable (also
    /// `LOCAL_TASK_LINK`, colon-separated, and the config's `[run] link`).
    #[arg(long, value_name = "DIR", conflicts_with = "no_branch")]
    link: Vec<PathBuf>,
    /// Leave the last failed attempt's files in the tree for inspection.
    #[arg(long)]
    keep_failed: bool,
    /// The configured profile to run with (over the spec's `profile` and
    /// `LOCAL_TASK_PROFILE`); --endpoint or --model pin the run and no profile is used.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Have the configured validator profile PROFILE (`role = "validator"`) review each
    /// attempt's code before it is written (over the profile's `validator`).
    #[arg(long, value_name = "PROFILE")]
    validate: Option<String>,
    /// Model attempts including repairs, 1 to 5 (overrides the spec; default 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=5), allow_negative_numbers = true)]
    max_attempts: Option<u32>,
    /// A prompt template that replaces the task kind's template for this run.
    #[arg(long, value_name = "FILE")]
    template: Option<PathBuf>,
    /// Cap on the bytes of all context files together.
    #[arg(long, value_name = "BYTES", default_value_t = defaults::CONTEXT_BUDGET_BYTES, value_parser = arguments::bytes, allow_negative_numbers = true)]
    max_context_bytes: usize,
    /// Sampling temperature sent to the model, 0 to 2 (default: the profile's, else 0.2).
    #[arg(long, value_parser = arguments::temperature, allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// Cap on the reply's tokens, at least 1 (default: the server's).
    #[arg(long, value_name = "N", value_parser = arguments::max_tokens, allow_negative_numbers = true)]
    max_tokens: Option<u32>,
    /// Seconds to wait for the connection to the model server (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = Secs(defaults::CONNECT_TIMEOUT), value_parser = arguments::timeout, allow_negative_numbers = true)]
    #[schemars(with = "f64")]
    connect_timeout: Secs,
    /// Seconds from sending a request until the model's first generated text (a model may
    /// be loading, or reading a long prompt).
    #[arg(long, value_name = "SECS", default_value_t = Secs(defaults::FIRST_BYTE_TIMEOUT), value_parser = arguments::timeout, allow_negative_numbers = true)]
    #[schemars(with = "f64")]
    first_byte_timeout: Secs,
    /// Seconds a reply stream may stall between two chunks, once the model is generating.
    #[arg(long, value_name = "SECS", default_value_t = Secs(defaults::IDLE_TIMEOUT), value_parser = arguments::timeout, allow_negative_numbers = true)]
    #[schemars(with = "f64")]
    idle_timeout: Secs,
    /// Seconds one model call may take in all, its retries and their waits included.
    #[arg(long, value_name = "SECS", default_value_t = Secs(defaults::TOTAL_TIMEOUT), value_parser = arguments::timeout, allow_negative_numbers = true)]
    #[schemars(with = "f64")]
    total_timeout: Secs,
    /// A reply longer than this many bytes is cut off and reported (`reply_too_large`).
    #[arg(long, value_name = "BYTES", default_value_t = defaults::MAX_REPLY_BYTES, value_parser = arguments::bytes, allow_negative_numbers = true)]
    max_reply_bytes: usize,
    /// Retries of a transient model-server fault (reset, 429, 500, 503, a cut stream).
    #[arg(long, value_name = "N", default_value_t = defaults::RETRIES, value_parser = arguments::retries, allow_negative_numbers = true)]
    retries: u32,
    /// The first retry's backoff in milliseconds; it doubles each retry, with jitter.
    #[arg(long, value_name = "MS", default_value_t = defaults::RETRY_BASE_MS, value_parser = arguments::retry_base_ms, allow_negative_numbers = true)]
    retry_base_ms: u64,
    /// The longest wait before a retry, also capping a server's Retry-After.
    #[arg(long, value_name = "SECS", default_value_t = Secs(defaults::RETRY_MAX_WAIT), value_parser = arguments::retry_wait, allow_negative_numbers = true)]
    #[schemars(with = "f64")]
    retry_max_wait: Secs,
    /// Save every model request and reply of this run to a cassette file.
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    record: Option<PathBuf>,
    /// Serve model replies from a cassette instead of a server; a request that differs
    /// from the recorded one is an error (exit 3, kind `replay`).
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// How `--replay` matches requests: `strict` (default) or `sequential` (replies in
    /// order, requests not compared).
    #[arg(long, value_name = "MODE", value_parser = ["strict", "sequential"], default_value = "strict", requires = "replay")]
    replay_match: String,
    /// Seconds to wait for another run that is writing the same repository.
    #[arg(long, value_name = "SECS", default_value_t = defaults::LOCK_TIMEOUT.as_secs(), value_parser = arguments::lock_timeout, allow_negative_numbers = true)]
    lock_timeout: u64,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Batch: N model calls at once; up to N more tasks prepare or finish meanwhile
    /// (writes and tests take turns).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// Batch: start no task after the first that did not succeed.
    #[arg(long)]
    fail_fast: bool,
    /// Batch: print only the summary, not each task's result.
    #[arg(long)]
    summary_only: bool,
    /// Batch: run only the specs below DIR whose path (or file name) matches this glob.
    #[arg(long, value_name = "PATTERN")]
    glob: Option<String>,
    /// Batch: run again the tasks of batch `BATCH_ID` that did not succeed.
    #[arg(long, value_name = "BATCH_ID", conflicts_with = "specs")]
    only_failed: Option<String>,
}

impl RunArgs {
    /// The run options of a command line given as its words after the program's name
    /// (`--model=NAME`, `--no-test`, …), checked as the command line checks them; the
    /// error is clap's message.
    pub(crate) fn parse_options(words: &[String]) -> Result<RunOptions, String> {
        let argv = std::iter::once("execute-local-task".to_owned()).chain(words.iter().cloned());
        match Cli::try_parse_from(argv) {
            Ok(Cli { command: None, run }) => Ok(run.options()),
            Ok(_) => Err("a subcommand is not a run option".to_owned()),
            Err(error) => Err(error
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned()),
        }
    }

    /// True when `name` is a run option's long name that takes a value.
    pub(crate) fn takes_value(name: &str) -> Option<bool> {
        Cli::command()
            .get_arguments()
            .find(|arg| arg.get_long() == Some(name))
            .map(|arg| arg.get_action().takes_values())
    }

    fn options(&self) -> RunOptions {
        RunOptions {
            repo_dir: self.repo.clone(),
            model_flags: ModelChoice {
                endpoint: self.endpoint.clone(),
                provider: self.provider.clone(),
                model: self.model.clone(),
                ..ModelChoice::default()
            },
            dry_run: self.dry_run,
            no_test: self.no_test,
            force: self.force,
            branch: self.branch,
            no_branch: self.no_branch,
            links: self.link.clone(),
            keep_failed: self.keep_failed,
            max_attempts: self.max_attempts,
            template: self.template.clone(),
            max_context_bytes: self.max_context_bytes,
            temperature: self.temperature.unwrap_or(defaults::TEMPERATURE),
            temperature_pinned: self.temperature.is_some(),
            max_tokens: self.max_tokens,
            limits: Limits {
                connect: self.connect_timeout.0,
                first_byte: self.first_byte_timeout.0,
                idle: self.idle_timeout.0,
                total: self.total_timeout.0,
                max_reply_bytes: self.max_reply_bytes,
            },
            connection: Connection {
                retry: RetryPolicy {
                    retries: self.retries,
                    base: Duration::from_millis(self.retry_base_ms),
                    max_wait: self.retry_max_wait.0,
                },
                record: self.record.clone(),
                replay: self.replay.clone(),
                replay_matching: if self.replay_match == "sequential" {
                    Matching::Sequential
                } else {
                    Matching::Strict
                },
            },
            lock_timeout: Duration::from_secs(self.lock_timeout),
            profile: self.profile.clone(),
            validate: self.validate.clone(),
            ..RunOptions::new()
        }
    }
}

impl RunArgs {
    /// A directory, several specs, or `--only-failed`: a batch.
    fn is_batch(&self) -> bool {
        self.only_failed.is_some()
            || self.specs.len() > 1
            || self.specs.first().is_some_and(|spec| spec.is_dir())
    }
}

/// A batch: each task's result as one JSON line as it finishes (unless --summary-only),
/// then the summary line; progress on stderr.
async fn run_batch(args: &RunArgs, env: &Env) -> u8 {
    if args.dry_run || args.record.is_some() || args.replay.is_some() {
        let message =
            "a batch takes neither --dry-run, --record nor --replay; give one spec for those";
        say!("error: {message}");
        let document = Document::usage(message);
        print_json(&document.json);
        return document.exit_code;
    }
    let plan = match batch_plan(args) {
        Ok(plan) => plan,
        Err(error) => return print(&Document::error(&error)),
    };
    let display = Arc::new(progress::Display::new(plan.tasks.len(), args.quiet));
    let (shown, summary_only) = (Arc::clone(&display), args.summary_only);
    let observe: batch::Observer = Arc::new(move |event| match event {
        batch::Event::Started { task_id } => shown.started(task_id),
        batch::Event::Line { task_id, line } => shown.line(task_id, line),
        batch::Event::Finished { outcome } => {
            if !summary_only {
                shown.suspend(|| print_line(&outcome.result));
            }
            shown.finished(&outcome.result);
        }
        batch::Event::Note(line) => shown.note(line),
    });
    let options = match crate::run_defaults::settle(args.options(), env).await {
        Ok(options) => RunOptions {
            cancel: stop_on_signals(),
            ..options
        },
        Err(error) => return print(&Document::error(&error)),
    };
    let how = batch::BatchOptions {
        jobs: usize::from(args.jobs),
        fail_fast: args.fail_fast,
    };
    let runner = if options.branch {
        batch::on_branches(Arc::clone(env))
    } else {
        batch::in_place(Arc::clone(env))
    };
    let outcome = batch::run(plan, &options, how, runner, observe).await;
    display.close();
    match outcome {
        Ok(outcome) => {
            let document = Document::batch(&outcome.summary());
            print_line(&document.json);
            print_stderr(&document)
        }
        Err(error) => print(&Document::error(&error)),
    }
}

/// The batch's specs in order: those found from the command line, or with `--only-failed`
/// those of the earlier batch that did not succeed (its successes count as met dependencies).
fn batch_plan(args: &RunArgs) -> crate::error::Result<plan::Plan> {
    let Some(batch_id) = &args.only_failed else {
        let paths = plan::find_specs(&args.specs, args.glob.as_deref())?;
        return plan::plan(&paths, &std::collections::BTreeSet::new());
    };
    batch::plan_again(args.repo.as_deref().unwrap_or(Path::new(".")), batch_id)
}

/// The whole program: parse, run, print, exit.
pub fn run() -> ExitCode {
    // First, while the process has a single thread: reading the umask briefly sets it.
    crate::write::capture_umask();
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli)
            if cli.command.is_none()
                && cli
                    .run
                    .specs
                    .first()
                    .is_some_and(|spec| is_subcommand(spec)) =>
        {
            let name = cli.run.specs.first().cloned().unwrap_or_default();
            return usage_error(&misplaced_message(&name.to_string_lossy()));
        }
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            if let Some(name) = misplaced_subcommand(&args) {
                return usage_error(&misplaced_message(&name));
            }
            let _ = error.print();
            let document = Document::usage(&clap_message(&error));
            print_json(&document.json);
            return ExitCode::from(document.exit_code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            say!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // A run stopped by a signal may leave CPU-bound work (a long diff) on a blocking
    // thread; it only reads, so the process ends now instead of waiting for it.
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// True for a spec path that is really a subcommand's name, e.g. `rollback` in
/// `execute-local-task -q rollback ID`: once a run option is given, clap no longer looks
/// for subcommands. A file of that name is still a spec.
fn is_subcommand(path: &std::path::Path) -> bool {
    let Some(name) = path.to_str() else {
        return false;
    };
    !path.exists()
        && Cli::command()
            .get_subcommands()
            .any(|command| command.get_name() == name)
}

/// The subcommand named after a leading run option, for a command line clap rejected
/// (`-q rollback ID` fails on `ID`, as the spec was already `rollback`). Only the word in
/// the spec's place counts: `--model demo` names a model, not the `demo` subcommand.
fn misplaced_subcommand(args: &[OsString]) -> Option<String> {
    if !args.get(1)?.to_str()?.starts_with('-') {
        return None;
    }
    let command = Cli::command();
    let takes_value = |flag: &str| {
        command.get_arguments().any(|arg| {
            arg.get_action().takes_values()
                && (arg
                    .get_long()
                    .is_some_and(|long| flag == format!("--{long}"))
                    || arg
                        .get_short()
                        .is_some_and(|short| flag == format!("-{short}")))
        })
    };
    let mut value_next = false;
    for arg in args.iter().skip(1) {
        let text = arg.to_str()?;
        if value_next {
            value_next = false;
        } else if text.starts_with('-') {
            value_next = !text.contains('=') && takes_value(text);
        } else {
            return is_subcommand(std::path::Path::new(text)).then(|| text.to_owned());
        }
    }
    None
}

fn misplaced_message(name: &str) -> String {
    format!(
        "`{name}` is a subcommand, and the options before it are a run's: put options after the subcommand (`execute-local-task {name} [OPTIONS]`); `execute-local-task {name} --help` lists them"
    )
}

/// A command-line mistake found after clap: stderr and the result JSON, exit 2.
/// What the JSON says of a command line clap refused: which argument, which values are
/// possible, without the usage block (stderr gets the whole text). The MCP tools that take
/// the command line's types say the same.
pub(crate) fn clap_message(error: &clap::Error) -> String {
    error
        .render()
        .to_string()
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned()
}

fn usage_error(message: &str) -> ExitCode {
    ExitCode::from(usage_code(message))
}

/// [`usage_error`]'s exit code, for a subcommand.
fn usage_code(message: &str) -> u8 {
    say!("error: {message}\n\nFor more information, try '--help'.");
    let document = Document::usage(message);
    print_json(&document.json);
    document.exit_code
}

/// One spec: its result, in place or on its branch.
async fn run_one(args: &RunArgs, env: &Env) -> u8 {
    let Some(spec) = args.specs.first().cloned() else {
        say!(
            "error: no task spec given\n\nUsage: execute-local-task [OPTIONS] <SPEC>\n       execute-local-task demo    (see it work first)\n\nFor more information, try '--help'."
        );
        let document = Document::usage("no task spec given");
        print_json(&document.json);
        return document.exit_code;
    };
    let quiet = args.quiet;
    let progress = move |line: &str| {
        if !quiet {
            say_line(&format!("execute-local-task: {line}"));
        }
    };
    let options = match crate::run_defaults::settle(args.options(), env).await {
        Ok(options) => RunOptions {
            cancel: stop_on_signals(),
            ..options
        },
        Err(error) => return print(&Document::error(&error)),
    };
    let spec = SpecInput::File(spec);
    let output = if options.branch {
        crate::branch::run(&spec, &options, None, env, &progress).await
    } else {
        pipeline::run(&spec, &options, None, env, &progress).await
    };
    print(&Document::run(output))
}

async fn dispatch(cli: Cli) -> u8 {
    let env: Env = Arc::new(|name: &str| std::env::var(name).ok());
    match cli.command {
        None if cli.run.is_batch() => run_batch(&cli.run, &env).await,
        None => run_one(&cli.run, &env).await,
        Some(Command::Rollback(RollbackArgs {
            run_id,
            last,
            force,
            repo,
            lock_timeout,
        })) => {
            let dir = repo.unwrap_or_else(|| PathBuf::from("."));
            let wait = Duration::from_secs(lock_timeout);
            if let Some(batch_id) = run_id.as_deref().filter(|id| batch::valid_batch_id(id)) {
                return print(&run_batch_rollback(&dir, batch_id, force, wait, &env).await);
            }
            let which = match run_id.as_deref() {
                Some(id) if !last => Which::Id(id),
                _ => Which::Last,
            };
            print(&run_rollback(&dir, which, force, lock_timeout, &env).await)
        }
        Some(Command::Prune(args)) => run_prune(args, &env).await,
        Some(Command::Apply(args)) => bring_in(Verb::Apply, args, &env).await,
        Some(Command::Merge(args)) => bring_in(Verb::Merge, args, &env).await,
        Some(Command::Discard(args)) => bring_in(Verb::Discard, args, &env).await,
        Some(Command::Runs { json, repo }) => list_runs(json, repo),
        Some(Command::Models(args)) => run_models(&args, &env).await,
        Some(Command::Schema { which }) => print_schema(which),
        Some(Command::Demo { dir }) => run_demo(dir, &env).await,
        Some(Command::Log(args)) => run_log(args.limit, args.json, &env),
        Some(Command::Stats(args)) => run_stats(&args, &env),
        Some(Command::Export(args)) => run_export(args.reviewed, args.since.as_deref(), &env),
        Some(Command::Review(args)) => match review_document(args, &env) {
            Ok(document) => print(&document),
            Err(message) => usage_code(&message),
        },
        Some(Command::Mcp) => crate::mcp::serve(env).await,
        Some(Command::Config(args)) => show_config(args, &env).await,
        Some(Command::Check(args)) => run_check(args, &env).await,
        Some(Command::Integration(command)) => integration(command, &env).await,
    }
}

async fn integration(command: Integration, env: &Env) -> u8 {
    match command {
        Integration::Init {
            force,
            dry_run,
            repo,
        } => {
            let dir = repo.unwrap_or_else(|| PathBuf::from("."));
            let ports = discovery::discovery_ports(env(discovery::PORTS_VARIABLE).as_deref());
            let servers = discovery::survey(None, None, None, &ports).await;
            print(&match crate::init::init(&dir, &servers, force, dry_run) {
                Ok(report) => Document::init(&report),
                Err(error) => Document::error(&error),
            })
        }
        Integration::Hook { action, repo } => {
            let dir = repo.unwrap_or_else(|| PathBuf::from("."));
            let outcome = match action {
                HookAction::Install => crate::hook::install(&dir),
                HookAction::Uninstall => crate::hook::uninstall(&dir),
            };
            print(&match outcome {
                Ok(report) => Document::hook(&report),
                Err(error) => Document::error(&error),
            })
        }
        Integration::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(
                shell,
                &mut command,
                "execute-local-task",
                &mut std::io::stdout(),
            );
            0
        }
    }
}

/// `models`: what discovery sees, as a table or JSON.
async fn run_models(args: &ModelsArgs, env: &Env) -> u8 {
    let reports = match model_reports(args, env).await {
        Ok(reports) => reports,
        Err(document) => return print(&document),
    };
    let document = Document::models(&reports);
    if args.json {
        print(&document)
    } else {
        print_model_table(&reports);
        print_stderr(&document)
    }
}

/// What `models` (and the MCP `models` tool) reports, or the error document.
pub(crate) async fn model_reports(
    args: &ModelsArgs,
    env: &Env,
) -> Result<Vec<discovery::ServerReport>, Document> {
    // The same resolution as a run (minus the spec), so `models` probes the server
    // a run would use, with the key a run would send.
    let flags = ModelChoice {
        endpoint: args.endpoint.clone().filter(|e| !e.trim().is_empty()),
        provider: args.provider.clone(),
        ..ModelChoice::default()
    };
    let choice = ModelChoice::resolve(&flags, None, &**env).map_err(|e| Document::error(&e))?;
    // A pool's members are each probed, in order.
    let mut reports = Vec::new();
    let endpoints = if choice.pool.is_empty() {
        vec![choice.endpoint.clone()]
    } else {
        choice.endpoints().into_iter().map(Some).collect()
    };
    for endpoint in endpoints {
        reports.extend(
            discovery::survey(
                endpoint.as_deref(),
                choice.provider.as_deref(),
                choice.api_key.clone(),
                &choice.ports,
            )
            .await,
        );
    }
    Ok(reports)
}

/// `check`: the stages before the model read files, so they run off the async thread.
async fn run_check(args: CheckArgs, env: &Env) -> u8 {
    print(&check_document(args, env).await)
}

/// `check`'s document, for the command line and the MCP `check` tool alike.
pub(crate) async fn check_document(args: CheckArgs, env: &Env) -> Document {
    let CheckArgs {
        paths,
        validate_only,
        profile,
        repo,
    } = args;
    let options = RunOptions {
        repo_dir: repo,
        profile,
        ..RunOptions::new()
    };
    let env = Arc::clone(env);
    let checked = tokio::task::spawn_blocking(move || {
        crate::check::check(&paths, &options, validate_only, &*env)
    })
    .await;
    match checked {
        Ok(Ok(report)) => Document::check(&report),
        Ok(Err(error)) => Document::error(&error),
        Err(error) => Document::error(&crate::error::Error::Usage(format!(
            "check stopped: {error}"
        ))),
    }
}

fn print_schema(which: SchemaKind) -> u8 {
    let schema = match which {
        SchemaKind::Spec => crate::spec::json_schema(),
        SchemaKind::Result => serde_json::json!(schemars::schema_for!(TaskResult)),
        SchemaKind::Batch => crate::batch::line_schema(),
        SchemaKind::Config => crate::config_schema::json_schema(),
        SchemaKind::Stats => serde_json::json!(schemars::schema_for!(crate::stats::Stats)),
    };
    print_json(&schema);
    0
}

async fn bring_in(verb: Verb, args: BringInArgs, env: &Env) -> u8 {
    let dir = args.repo.unwrap_or_else(|| PathBuf::from("."));
    let id = args.run_id.as_deref().filter(|_| !args.last);
    let wait = Duration::from_secs(args.lock_timeout);
    print(&bring_in::perform(verb, &dir, id, wait, &**env).await)
}

fn list_runs(json: bool, repo: Option<PathBuf>) -> u8 {
    let dir = repo.unwrap_or_else(|| PathBuf::from("."));
    let records = match crate::worktree::MainRepo::discover(&dir) {
        Ok(main) => runs::list(&main),
        Err(error) => return print(&Document::error(&error)),
    };
    if json {
        return print(&Document::runs(&records));
    }
    if records.is_empty() {
        say!("execute-local-task: no branch runs recorded in this repository");
    }
    let mut stdout = std::io::stdout().lock();
    for record in &records {
        let _ = writeln!(stdout, "{}", runs::describe(record));
    }
    0
}

/// Undoes every run of a batch, and records that against each in the ledger.
async fn run_batch_rollback(
    dir: &std::path::Path,
    batch_id: &str,
    force: bool,
    wait: Duration,
    env: &Env,
) -> Document {
    let (report, missing) = crate::record::rollback_batch(dir, batch_id, force, wait, &**env).await;
    let mut document = match report {
        Ok(report) => Document::batch_rollback(&report),
        Err(error) => Document::error(&error),
    };
    document
        .stderr
        .extend(missing.into_iter().map(|m| format!("note: {m}")));
    document
}

/// Undoes a run, and records that against it in the ledger.
async fn run_rollback(
    dir: &std::path::Path,
    which: Which<'_>,
    force: bool,
    lock_timeout: u64,
    env: &Env,
) -> Document {
    let wait = Duration::from_secs(lock_timeout);
    match crate::record::rollback(dir, which, force, wait, &**env).await {
        Ok((report, missing)) => {
            let mut document = Document::rollback(&report);
            document
                .stderr
                .extend(missing.map(|m| format!("note: {m}")));
            document
        }
        Err(error) => Document::error(&error),
    }
}

fn run_log(limit: u32, json: bool, env: &Env) -> u8 {
    let runs = crate::ledger::Ledger::open_default(&**env).and_then(|mut l| l.recent(limit));
    match runs {
        Ok(runs) if !json => {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout (e.g. `| head`) is not worth a panic.
            let _ = stdout.write_all(crate::log::table(&runs).as_bytes());
            0
        }
        Ok(runs) => print(&Document::log(runs)),
        Err(error) => print(&Document::error(&error)),
    }
}

fn run_export(reviewed: crate::review::Verdict, since: Option<&str>, env: &Env) -> u8 {
    match crate::export::export(&**env, reviewed, since) {
        Ok(lines) => {
            let mut stdout = std::io::stdout().lock();
            for line in &lines {
                // A closed stdout (e.g. `| head`) is not worth a panic.
                let _ = writeln!(stdout, "{line}");
            }
            say!("execute-local-task: exported {} run(s)", lines.len());
            0
        }
        Err(error) => print(&Document::error(&error)),
    }
}

fn run_stats(args: &StatsArgs, env: &Env) -> u8 {
    let figures =
        crate::stats::stats_and_rows(&**env, &args.request()).and_then(|(stats, rows)| {
            if let Some(path) = &args.html {
                let page = crate::stats_page::page(&stats, &rows);
                std::fs::write(path, page)
                    .map_err(|e| crate::error::Error::io("write", path, e))?;
            }
            Ok(stats)
        });
    match figures {
        Ok(stats) if !args.json => {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout (e.g. `| head`) is not worth a panic.
            let _ = stdout.write_all(crate::stats::table(&stats).as_bytes());
            0
        }
        Ok(stats) => print(&Document::stats(stats)),
        Err(error) => print(&Document::error(&error)),
    }
}

/// `review [RUN_ID] VERDICT`: the run id is required unless `--last` is given. The
/// document, or the usage message for words that do not fit.
pub(crate) fn review_document(args: ReviewArgs, env: &Env) -> Result<Document, String> {
    use crate::review::{Verdict, Which};
    let (which, verdict) = match (args.last, args.args.as_slice()) {
        (true, [verdict]) => (Which::Last, verdict),
        (false, [run_id, verdict]) => (Which::Id(run_id), verdict),
        (true, _) => {
            return Err("with --last give only the verdict: `review --last good`".to_owned());
        }
        (false, _) => {
            return Err(
                "give the run id and the verdict (`review RUN_ID good`), or `review --last good`"
                    .to_owned(),
            );
        }
    };
    let Ok(verdict) = Verdict::from_str(verdict, true) else {
        return Err(format!(
            "`{verdict}` is not a verdict: use good, acceptable or poor"
        ));
    };
    Ok(
        match crate::review::review(&**env, which, verdict, args.reason, args.failure_mode) {
            Ok(report) => Document::review(&report),
            Err(error) => Document::error(&error),
        },
    )
}

async fn run_demo(dir: Option<PathBuf>, env: &Env) -> u8 {
    // The temporary directory lives until the end of the demo; --dir keeps the example.
    let temp = match dir {
        Some(_) => None,
        None => match tempfile::Builder::new()
            .prefix("execute-local-task-demo-")
            .tempdir()
        {
            Ok(temp) => Some(temp),
            Err(error) => {
                say!("error: cannot create a temporary directory: {error}");
                return 2;
            }
        },
    };
    let base = dir.unwrap_or_else(|| {
        temp.as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default()
    });
    let setup = match demo::prepare(&base) {
        Ok(setup) => setup,
        Err(error) => return print(&Document::error(&error)),
    };
    let kept = if temp.is_some() {
        " (deleted when the demo ends; `demo --dir DIR` keeps it)"
    } else {
        ""
    };
    say!(
        "execute-local-task demo: a scratch repository at {}{kept} and the spec {}\n\
         The model's replies are RECORDED (no model server is used): the first has a bug the test catches, the second repairs it.\n",
        setup.repo_dir.display(),
        setup.spec_path.display()
    );
    let options = RunOptions {
        repo_dir: Some(setup.repo_dir.clone()),
        cancel: stop_on_signals(),
        ..RunOptions::new()
    };
    let progress = |line: &str| say_line(&format!("execute-local-task: {line}"));
    let output = pipeline::run(
        &SpecInput::File(setup.spec_path.clone()),
        &options,
        Some(demo::recorded_server()),
        env,
        &progress,
    )
    .await;
    let code = print(&Document::run(output));
    let batch_code = demo_batch(&base, &setup.repo_dir, env).await;
    say!(
        "\nThat was the whole pipeline on recorded replies. To run it on your own model:\n  \
         Ollama:    ollama pull qwen2.5-coder:7b && execute-local-task SPEC.json --endpoint http://127.0.0.1:11434 --model qwen2.5-coder:7b\n  \
         LM Studio: start its server (port 1234) and run: execute-local-task SPEC.json --endpoint http://127.0.0.1:1234/v1\n\
         (`execute-local-task models` lists what it can reach; --dir DIR keeps the demo repository.)"
    );
    code.max(batch_code)
}

/// The demo's batch: a directory of two specs, one depending on the other, run on
/// branches on recorded replies, then applied. Shown on stderr: stdout keeps the one
/// result document of the demo's run.
async fn demo_batch(base: &Path, repo: &Path, env: &Env) -> u8 {
    let fail = |error: &crate::error::Error| {
        say!("error: {error}");
        Document::error(error).exit_code
    };
    let specs = match demo::prepare_batch(base) {
        Ok(specs) => specs,
        Err(error) => return fail(&error),
    };
    say!(
        "\nNow a batch: the specs in {} (demo-shout depends on demo-greet), each on its own task branch, then applied:\n  execute-local-task {} --branch --repo {} && execute-local-task apply <BATCH_ID>",
        specs.display(),
        specs.display(),
        repo.display()
    );
    let plan = match plan::find_specs(&[specs], None)
        .and_then(|paths| plan::plan(&paths, &std::collections::BTreeSet::new()))
    {
        Ok(plan) => plan,
        Err(error) => return fail(&error),
    };
    let observe: batch::Observer = Arc::new(|event| match event {
        batch::Event::Started { .. } => {}
        batch::Event::Line { line, .. } | batch::Event::Note(line) => {
            say_line(&format!("execute-local-task: {line}"));
        }
        batch::Event::Finished { outcome } => say_line(&format!(
            "execute-local-task: [{}] {}",
            outcome.result.task_id.as_deref().unwrap_or("?"),
            outcome.result.summary
        )),
    });
    let options = RunOptions {
        repo_dir: Some(repo.to_path_buf()),
        branch: true,
        cancel: stop_on_signals(),
        ..RunOptions::new()
    };
    let how = batch::BatchOptions {
        jobs: 2,
        fail_fast: false,
    };
    let runner = batch::on_branches_with(Arc::clone(env), Arc::new(demo::batch_server));
    let outcome = match batch::run(plan, &options, how, runner, observe).await {
        Ok(outcome) => outcome,
        Err(error) => return fail(&error),
    };
    let summary = Document::batch(&outcome.summary());
    // Its hints speak of undoing in-place writes; the batch wrote only on branches.
    for line in summary
        .stderr
        .iter()
        .filter(|line| !line.starts_with("hint:"))
    {
        say_line(line);
    }
    if summary.exit_code != 0 {
        return summary.exit_code;
    }
    // Through the verb's one entry, so the demo's apply is recorded like any other.
    let applied = bring_in::perform(
        bring_in::Verb::Apply,
        repo,
        Some(&outcome.batch_id),
        defaults::LOCK_TIMEOUT,
        &**env,
    )
    .await;
    for line in &applied.stderr {
        say_line(line);
    }
    applied.exit_code
}

/// The configuration for the repository at `repo` (the current directory's when `None`;
/// outside a repository only the user's file is read).
fn load_config(
    repo: Option<&Path>,
    profile: Option<&str>,
    env: &Env,
) -> crate::error::Result<crate::config::Config> {
    let root = crate::repo::Repo::discover(repo.unwrap_or(Path::new(".")))
        .ok()
        .map(|repo| repo.root().to_path_buf());
    crate::config::Config::load(root.as_deref(), profile, &**env)
}

/// What `config` prints as JSON (with `--check`, the probes): the MCP server's `config`.
pub(crate) async fn config_document(args: &ConfigArgs, env: &Env) -> Document {
    match load_config(args.repo.as_deref(), args.profile.as_deref(), env) {
        Ok(config) if args.check => Document::probes(&crate::check::probe(&config, &**env).await),
        Ok(config) => Document::config(&config),
        Err(error) => Document::error(&error),
    }
}

/// `config` and `config --check`. Outside a repository only the user's file is read.
async fn show_config(args: ConfigArgs, env: &Env) -> u8 {
    let ConfigArgs {
        check,
        json,
        profile,
        repo,
    } = args;
    let config = match load_config(repo.as_deref(), profile.as_deref(), env) {
        Ok(config) => config,
        Err(error) => return print(&Document::error(&error)),
    };
    if check {
        let probes = crate::check::probe(&config, &**env).await;
        let document = Document::probes(&probes);
        if json {
            return print(&document);
        }
        let mut stdout = std::io::stdout().lock();
        for line in crate::config::probe_table(&probes) {
            let _ = writeln!(stdout, "{line}");
        }
        return print_stderr(&document);
    }
    let document = Document::config(&config);
    if json {
        return print(&document);
    }
    let mut stdout = std::io::stdout().lock();
    for line in config.table() {
        let _ = writeln!(stdout, "{line}");
    }
    print_stderr(&document)
}

/// The `models` table on stdout: a human's, not JSON, so what a server named (its
/// version, its models, its error) is escaped as stderr is.
fn print_model_table(reports: &[discovery::ServerReport]) {
    let mut lines = Vec::new();
    for report in reports {
        if report.reachable {
            let version = report
                .version
                .as_deref()
                .map_or_else(String::new, |v| format!(" {v}"));
            lines.push(format!(
                "{}  {}{version} ({} API)  {} model(s)",
                report.endpoint,
                report.kind,
                report.provider.as_deref().unwrap_or("?"),
                report.models.len()
            ));
            lines.extend(report.models.iter().map(|model| format!("    {model}")));
        } else {
            lines.push(format!(
                "{}  {}  not reachable ({})",
                report.endpoint,
                report.kind,
                report.error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        // A closed stdout (e.g. `| head`) is not worth a panic.
        if writeln!(stdout, "{}", crate::escape::controls(&line)).is_err() {
            break;
        }
    }
}

async fn run_prune(args: PruneArgs, env: &Env) -> u8 {
    let dir = args.repo.unwrap_or_else(|| PathBuf::from("."));
    let retention = prune::Retention::from_env(&**env)
        .map(|retention| retention.overridden(args.keep, args.older_than));
    let outcome = match retention {
        Ok(retention) => {
            let wait = Duration::from_secs(args.lock_timeout);
            prune::prune(&dir, retention, args.dry_run, wait).await
        }
        Err(error) => Err(error),
    };
    print(&match outcome {
        Ok(report) => Document::prune(&report),
        Err(error) => Document::error(&error),
    })
}

/// A [`Cancel`] that SIGINT (Ctrl-C), SIGTERM (a caller's timeout) and SIGHUP (a closed
/// terminal) set; a second such signal ends the process at once. Without it such a
/// signal would kill the tool at once and leave the
/// test running (in its own session it gets none of them), the attempt's code in the
/// tree, and no JSON; with it the run stops, cleans up, and reports `interrupted`.
/// A signal that cannot be listened for keeps its default action.
fn stop_on_signals() -> Cancel {
    use tokio::signal::unix::{SignalKind, signal};
    let (canceller, cancel) = Cancel::new();
    // Registered here, before the run starts, so no signal falls between.
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    let mut hangup = signal(SignalKind::hangup()).ok();
    tokio::spawn(async move {
        canceller.cancel(next(&mut interrupt, &mut terminate, &mut hangup).await);
        // The listeners stay installed, so without this a second Ctrl-C from a user whose
        // run is slow to clean up would be swallowed: it ends the tool at once instead.
        let again = next(&mut interrupt, &mut terminate, &mut hangup).await;
        say!(
            "error: {} again: stopping at once; `execute-local-task rollback --last` undoes what the run left",
            again.as_str()
        );
        // The test may be in its grace after the first signal's SIGTERM: it goes too.
        crate::test_run::kill_running();
        std::process::exit(128 + again as i32);
    });
    cancel
}

/// The next of the three signals to arrive.
async fn next(
    interrupt: &mut Option<tokio::signal::unix::Signal>,
    terminate: &mut Option<tokio::signal::unix::Signal>,
    hangup: &mut Option<tokio::signal::unix::Signal>,
) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal;
    tokio::select! {
        () = received(interrupt.as_mut()) => Signal::SIGINT,
        () = received(terminate.as_mut()) => Signal::SIGTERM,
        () = received(hangup.as_mut()) => Signal::SIGHUP,
    }
}

/// Completes when `listener` gets its signal; never without a listener.
async fn received(listener: Option<&mut tokio::signal::unix::Signal>) {
    if let Some(listener) = listener
        && listener.recv().await.is_some()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// Prints a document: its JSON on stdout first (it is what the caller acts on), then its
/// lines on stderr; returns its exit code.
fn print(document: &Document) -> u8 {
    print_json(&document.json);
    print_stderr(document)
}

fn print_stderr(document: &Document) -> u8 {
    for line in &document.stderr {
        say_line(line);
    }
    document.exit_code
}

/// One JSON Lines line on stdout.
fn print_line(value: &impl serde::Serialize) {
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, value)
        .and_then(|()| writeln!(stdout).map_err(serde_json::Error::io));
    drop(written);
}

fn print_json(value: &impl serde::Serialize) {
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut stdout, value)
        .and_then(|()| writeln!(stdout).map_err(serde_json::Error::io));
    // A closed stdout (e.g. `| head`) is not worth a panic.
    drop(written);
}
