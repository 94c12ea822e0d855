//! What a run may be told besides its spec: the repository, model choices, limits, and
//! the flags of the command line, with the defaults of [`crate::defaults`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cancel::Cancel;
use crate::defaults;
use crate::model::Limits;
use crate::model_gate::Pass;
use crate::server::{self, ModelChoice};

/// Everything a run needs besides its spec.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The repository to work in; the one containing the current directory when absent.
    pub repo_dir: Option<PathBuf>,
    /// Model choices from the command line (the spec and environment fill the rest).
    pub model_flags: ModelChoice,
    pub dry_run: bool,
    pub no_test: bool,
    /// Overwrite targets that have uncommitted changes.
    pub force: bool,
    /// Leave the last failed attempt's files in the tree.
    pub keep_failed: bool,
    pub max_attempts: Option<u32>,
    /// Replaces the kind template for this run.
    pub template: Option<PathBuf>,
    pub max_context_bytes: usize,
    pub temperature: f64,
    /// `temperature` was given on the command line: a profile's does not replace it.
    pub temperature_pinned: bool,
    pub max_tokens: Option<u32>,
    pub limits: Limits,
    /// Retries, `--record` and `--replay`.
    pub connection: server::Connection,
    pub lock_timeout: Duration,
    /// The batch this run is a task of, for its ledger record.
    pub batch_id: Option<String>,
    /// Stops the run early (the command line sets it on a signal).
    pub cancel: Cancel,
    /// Run in a task worktree and commit a success on `local-task/<task_id>`
    /// ([`crate::branch`]); `force` then replaces an existing branch. `--branch`, or the
    /// configuration's `[run] branch` once [`crate::run_defaults::settle`] applied it.
    pub branch: bool,
    /// `--no-branch`: in place, whatever the configuration's `[run] branch` says.
    pub no_branch: bool,
    /// Ignored directories of the main tree to link into a task worktree: the config's
    /// `[run] link` then `--link`'s once [`crate::run_defaults::settle`] applied it, with
    /// `LOCAL_TASK_LINK`'s (colon-separated) added by the branch run.
    pub links: Vec<PathBuf>,
    /// Told the run's id as soon as the run has one (its journal exists, before the
    /// model is asked): a caller that hands the id out while the run goes on, such as
    /// the MCP server, gives out the id that `rollback` and the result will use.
    pub run_id_sink: Option<Arc<watch::Sender<Option<String>>>>,
    /// The profile `--profile` picked (over `LOCAL_TASK_PROFILE` and the config).
    pub profile: Option<String>,
    /// The validator profile `--validate` names (over the routed profile's `validator`).
    pub validate: Option<String>,
    /// This task's place at its batch's bound on model calls in flight; `None` for a run
    /// alone.
    pub model_gate: Option<Pass>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl RunOptions {
    pub fn new() -> Self {
        Self {
            repo_dir: None,
            model_flags: ModelChoice::default(),
            dry_run: false,
            no_test: false,
            force: false,
            keep_failed: false,
            max_attempts: None,
            template: None,
            max_context_bytes: defaults::CONTEXT_BUDGET_BYTES,
            temperature: defaults::TEMPERATURE,
            temperature_pinned: false,
            max_tokens: None,
            limits: Limits::default(),
            connection: server::Connection::default(),
            lock_timeout: defaults::LOCK_TIMEOUT,
            batch_id: None,
            cancel: Cancel::never(),
            branch: false,
            no_branch: false,
            links: Vec::new(),
            run_id_sink: None,
            profile: None,
            validate: None,
            model_gate: None,
        }
    }
}
