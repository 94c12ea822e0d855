//! Every document the tool prints, built in one place with its exit code and its stderr
//! lines: a run's result, a dry run's request, a rollback or prune report, the models
//! survey, the ledger's `log`, a `review`'s record and `stats`, and the error document
//! of a command that failed before a run began. The command line prints these; a batch
//! runner or an MCP server returns the same values, so their JSON cannot drift apart.

use serde::Serialize;
use serde_json::Value;

use crate::batch::{BatchStatus, BatchSummary};
use crate::bring_in::BringInReport;
use crate::check::{CheckReport, ProfileProbe};
use crate::config::Config;
use crate::discovery::ServerReport;
use crate::error::Error;
use crate::hook::HookReport;
use crate::init::InitReport;
use crate::ledger::LoggedRun;
use crate::pipeline::RunOutput;
use crate::prune::PruneReport;
use crate::result::{ErrorInfo, Status, TaskResult};
use crate::review::ReviewReport;
use crate::rollback::{BatchRollbackReport, RollbackReport};
use crate::runs::BranchRecord;
use crate::stats::Stats;

/// One printed outcome: the JSON for stdout, the process's exit code, and the lines for a
/// human on stderr (each whole, e.g. `error: …` or `hint: …`).
#[derive(Debug, Clone)]
pub struct Document {
    pub json: Body,
    pub exit_code: u8,
    pub stderr: Vec<String>,
}

/// A document's JSON, kept typed so it prints with its fields in their declared order
/// (a `serde_json::Value` would sort them); `serde_json::to_value` gives the value.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // One document a call: boxing buys nothing.
pub enum Body {
    Result(TaskResult),
    Rollback(RollbackReport),
    Prune(PruneReport),
    Models(Vec<ServerReport>),
    BringIn(BringInReport),
    BatchBringIn(crate::bring_in::BatchBringInReport),
    Runs(Vec<BranchRecord>),
    Log(Vec<LoggedRun>),
    Review(ReviewReport),
    Stats(Stats),
    Batch(BatchSummary),
    BatchRollback(BatchRollbackReport),
    Check(CheckReport),
    Config(Box<Config>),
    Probes(Vec<ProfileProbe>),
    Init(InitReport),
    Hook(HookReport),
    /// A dry run's request, or an error before any run began.
    Value(Value),
}

impl Document {
    fn new(json: Body, exit_code: u8, stderr: Vec<String>) -> Self {
        Self {
            json,
            exit_code,
            stderr,
        }
    }

    /// A run's result, or for `--dry-run` the request it would send.
    pub fn run(output: RunOutput) -> Self {
        match output {
            RunOutput::DryRun(request) => Self::new(Body::Value(request), 0, Vec::new()),
            RunOutput::Result {
                result,
                exit_code,
                hint,
            } => {
                let mut stderr = vec![match (&result.status, &result.error) {
                    (Status::Error, Some(error)) => format!("error: {}", error.message),
                    _ => format!("execute-local-task: {}", result.summary),
                }];
                stderr.extend(hint.iter().map(|hint| format!("hint: {hint}")));
                stderr.extend(result.notes.iter().map(|note| format!("note: {note}")));
                Self::new(Body::Result(result), exit_code, stderr)
            }
        }
    }

    /// A command that failed before any run began (rollback, models, the demo's setup):
    /// the same `status` and `error` fields as a run's result, so `jq .status` reads both.
    pub fn error(error: &Error) -> Self {
        let json = serde_json::json!({
            "status": "error",
            "error": {"kind": error.kind(), "message": error.to_string()}
        });
        let mut stderr = vec![format!("error: {error}")];
        stderr.extend(error.hint().map(|hint| format!("hint: {hint}")));
        Self::new(Body::Value(json), error.exit_code(), stderr)
    }

    /// A bad command line, as a whole result with status `error`. The stderr lines are the
    /// caller's: the command line prints its own usage text.
    pub fn usage(message: &str) -> Self {
        let error = Error::Usage(message.to_owned());
        let result = TaskResult::error(
            crate::write::new_run_id(),
            None,
            ErrorInfo {
                kind: error.kind().to_owned(),
                message: error.to_string(),
            },
        );
        Self::new(Body::Result(result), error.exit_code(), Vec::new())
    }

    /// A run the MCP server still carries on, by the id `get_run` and `rollback` take.
    pub fn running(run_id: &str) -> Self {
        let json = serde_json::json!({"status": "running", "run_id": run_id});
        Self::new(Body::Value(json), 0, Vec::new())
    }

    /// What `rollback` undid.
    pub fn rollback(report: &RollbackReport) -> Self {
        let line = format!("execute-local-task: {}", report.describe());
        Self::new(Body::Rollback(report.clone()), 0, vec![line])
    }

    /// What `prune` removed, or with `--dry-run` would remove.
    pub fn prune(report: &PruneReport) -> Self {
        Self::new(Body::Prune(report.clone()), 0, Vec::new())
    }

    /// What `apply`, `merge` or `discard` did.
    pub fn bring_in(report: &BringInReport) -> Self {
        let line = format!("execute-local-task: {}", report.summary);
        Self::new(Body::BringIn(report.clone()), 0, vec![line])
    }

    /// What `apply`, `merge` or `discard <BATCH_ID>` did.
    pub fn batch_bring_in(report: &crate::bring_in::BatchBringInReport) -> Self {
        let line = format!("execute-local-task: {}", report.summary);
        Self::new(Body::BatchBringIn(report.clone()), 0, vec![line])
    }

    /// The branch runs `runs` lists, newest first.
    pub fn runs(records: &[BranchRecord]) -> Self {
        Self::new(Body::Runs(records.to_vec()), 0, Vec::new())
    }

    /// The runs `log --json` lists, newest first.
    pub fn log(runs: Vec<LoggedRun>) -> Self {
        Self::new(Body::Log(runs), 0, Vec::new())
    }

    /// The figures `stats --json` reports.
    pub fn stats(stats: Stats) -> Self {
        Self::new(Body::Stats(stats), 0, Vec::new())
    }

    /// The verdict `review` recorded.
    pub fn review(report: &ReviewReport) -> Self {
        let line = format!("execute-local-task: {}", report.describe());
        Self::new(Body::Review(report.clone()), 0, vec![line])
    }

    /// The servers `models` probed; exit 3 when none answered.
    pub fn models(reports: &[ServerReport]) -> Self {
        let any = reports.iter().any(|r| r.reachable);
        let mut stderr = Vec::new();
        if !any {
            stderr.push("hint: no model server answered; start Ollama (`ollama serve`) or LM Studio's server, or pass --endpoint URL".to_owned());
        } else if reports.iter().any(|r| r.reachable && r.models.len() > 1) {
            stderr.push("hint: choose a model with --model NAME (or LOCAL_TASK_MODEL)".to_owned());
        }
        Self::new(
            Body::Models(reports.to_vec()),
            if any { 0 } else { 3 },
            stderr,
        )
    }

    /// A batch's summary, printed after its tasks' results. Exit 0 when every task
    /// succeeded; 3 when none did and every task that ran could not use its model server;
    /// 128+N when signal N stopped it; else 1.
    pub fn batch(summary: &BatchSummary) -> Self {
        let counts = &summary.counts;
        let ran: Vec<_> = summary
            .tasks
            .iter()
            .filter(|task| task.status != Status::Skipped)
            .collect();
        let signal = summary
            .interrupted_by
            .as_deref()
            .and_then(|name| name.parse::<nix::sys::signal::Signal>().ok());
        let exit_code = match (summary.status, signal) {
            (BatchStatus::Interrupted, Some(signal)) => {
                u8::try_from(128 + signal as i32).unwrap_or(u8::MAX)
            }
            (BatchStatus::Success, _) => 0,
            _ if counts.success == 0 && !ran.is_empty() && ran.iter().all(|t| t.exit_code == 3) => {
                3
            }
            _ => 1,
        };
        let mut stderr = vec![format!(
            "execute-local-task: batch {}: {} task(s): {} success, {} failed, {} escalate, {} error, {} skipped ({:.1} s, --jobs {})",
            summary.batch_id,
            summary.tasks.len(),
            counts.success,
            counts.failed,
            counts.escalate,
            counts.error,
            counts.skipped,
            std::time::Duration::from_millis(summary.duration_ms).as_secs_f64(),
            summary.jobs,
        )];
        if let Some(signal) = &summary.interrupted_by {
            stderr.push(format!("execute-local-task: the batch was interrupted by {signal}: running tasks were stopped and their attempts undone"));
        }
        if counts.success > 0 {
            stderr.push(format!(
                "hint: `execute-local-task rollback {}` undoes every write of this batch",
                summary.batch_id
            ));
        }
        if summary.status == BatchStatus::Failed {
            stderr.push(format!(
                "hint: `execute-local-task --only-failed {}` runs again the tasks that did not succeed",
                summary.batch_id
            ));
        }
        Self::new(Body::Batch(summary.clone()), exit_code, stderr)
    }

    /// What `rollback <BATCH_ID>` undid.
    pub fn batch_rollback(report: &BatchRollbackReport) -> Self {
        let line = format!(
            "execute-local-task: rolled back batch {}: {} run(s) undone, newest first",
            report.batch_id,
            report.runs.len()
        );
        Self::new(Body::BatchRollback(report.clone()), 0, vec![line])
    }

    /// `check`'s report: exit 0 when every spec can run, else 2, naming the specs that
    /// cannot.
    pub fn check(report: &CheckReport) -> Self {
        let stderr: Vec<String> = report
            .failing()
            .map(|spec| {
                let why = spec.error.as_ref().map_or_else(
                    || "does not fit its profile's context window".to_owned(),
                    |error| error.message.clone(),
                );
                // A spec error names its file already.
                let path = spec.spec.display().to_string();
                if why.starts_with(&path) {
                    format!("error: {why}")
                } else {
                    format!("error: {path}: {why}")
                }
            })
            .collect();
        let code = if stderr.is_empty() { 0 } else { 2 };
        Self::new(Body::Check(report.clone()), code, stderr)
    }

    /// The effective configuration with each value's source.
    pub fn config(config: &Config) -> Self {
        Self::new(Body::Config(Box::new(config.clone())), 0, Vec::new())
    }

    /// `config --check`: exit 3 when a profile's server or model could not be found.
    pub fn probes(probes: &[ProfileProbe]) -> Self {
        let stderr: Vec<String> = probes
            .iter()
            .filter_map(|p| Some(format!("error: profile `{}`: {}", p.profile, p.problem()?)))
            .collect();
        let code = if stderr.is_empty() { 0 } else { 3 };
        Self::new(Body::Probes(probes.to_vec()), code, stderr)
    }

    /// What `init` wrote, or with `--dry-run` would write.
    pub fn init(report: &InitReport) -> Self {
        let kept: Vec<&str> = report
            .files
            .iter()
            .filter(|f| f.action == "exists")
            .map(|f| f.path.as_str())
            .collect();
        let mut stderr = Vec::new();
        if !kept.is_empty() {
            stderr.push(format!(
                "execute-local-task: kept as they are: {} (`init --force` replaces them)",
                kept.join(", ")
            ));
        }
        Self::new(Body::Init(report.clone()), 0, stderr)
    }

    /// What `hook install` or `hook uninstall` did.
    pub fn hook(report: &HookReport) -> Self {
        let line = format!(
            "execute-local-task: pre-commit hook {}: {}",
            report.action,
            report.path.display()
        );
        Self::new(Body::Hook(report.clone()), 0, vec![line])
    }
}
