//! One task, end to end: spec → context → prompt → model → extract → guard → write → test,
//! with repairs while attempts remain, ending in a [`TaskResult`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::context;
use crate::error::{Error, Result};
use crate::extract::{self, ExtractError};
use crate::guard;
use crate::language;
use crate::lock;
use crate::model::{ChatReply, ChatRequest, Finish, Limits, Message};
use crate::prompt::{self, OutputView, RepairView, Templates};
use crate::repo::Repo;
use crate::result::{
    Attempt, ErrorInfo, FileAction, FileChange, ModelInfo, Outcome, SCHEMA_VERSION, Status,
    TaskResult, TestReport, Usage,
};
use crate::route::{self, ModelChoice, Route};
use crate::spec::{self, TaskSpec};
use crate::test_run;
use crate::write::{self, Journal};

/// Everything a run needs besides the spec file itself.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub spec_path: PathBuf,
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
    pub temperature: f32,
    pub max_tokens: Option<u32>,
    pub limits: Limits,
    pub lock_timeout: Duration,
}

impl RunOptions {
    pub fn new(spec_path: impl Into<PathBuf>) -> Self {
        Self {
            spec_path: spec_path.into(),
            repo_dir: None,
            model_flags: ModelChoice::default(),
            dry_run: false,
            no_test: false,
            force: false,
            keep_failed: false,
            max_attempts: None,
            template: None,
            max_context_bytes: context::DEFAULT_BUDGET_BYTES,
            temperature: 0.2,
            max_tokens: None,
            limits: Limits::default(),
            lock_timeout: Duration::from_secs(600),
        }
    }
}

/// What a run produced: a result, or for `--dry-run` the request it would send.
#[allow(clippy::large_enum_variant)] // One value a process: boxing buys nothing.
pub enum RunOutput {
    Result { result: TaskResult, exit_code: u8 },
    DryRun(serde_json::Value),
}

/// Human progress lines; the command line prints them on stderr.
pub type Progress<'a> = &'a dyn Fn(&str);

/// Runs one task. `route` replaces the server the options would choose (the demo's
/// recorded replies); `env` reads the environment.
pub async fn run(
    options: &RunOptions,
    route: Option<Route>,
    env: &dyn Fn(&str) -> Option<String>,
    progress: Progress<'_>,
) -> RunOutput {
    let started = Instant::now();
    let run_id = new_run_id();
    let mut state = RunState {
        run_id: run_id.clone(),
        started,
        task_id: None,
        git: None,
        model: None,
        attempts: Vec::new(),
    };
    match run_task(options, route, env, progress, &mut state).await {
        Ok(Finished::DryRun(request)) => RunOutput::DryRun(request),
        Ok(Finished::Done(result)) => {
            let exit_code = result.status.exit_code();
            RunOutput::Result { result, exit_code }
        }
        Err(error) => {
            let exit_code = error.exit_code();
            let task_id = state
                .task_id
                .clone()
                .or_else(|| spec::peek_task_id(&options.spec_path));
            let result = state.finish(
                task_id,
                Status::Error,
                error.to_string(),
                Vec::new(),
                None,
                Some(ErrorInfo {
                    kind: error.kind().to_owned(),
                    message: error.to_string(),
                }),
            );
            RunOutput::Result { result, exit_code }
        }
    }
}

struct RunState {
    run_id: String,
    started: Instant,
    task_id: Option<String>,
    git: Option<crate::result::GitInfo>,
    model: Option<ModelInfo>,
    attempts: Vec<Attempt>,
}

impl RunState {
    fn finish(
        &self,
        task_id: Option<String>,
        status: Status,
        summary: String,
        files: Vec<FileChange>,
        test: Option<TestReport>,
        error: Option<ErrorInfo>,
    ) -> TaskResult {
        let mut usage = Usage::default();
        for attempt in &self.attempts {
            usage.add(&attempt.usage);
        }
        TaskResult {
            schema_version: SCHEMA_VERSION,
            task_id,
            run_id: self.run_id.clone(),
            status,
            summary,
            files,
            test,
            attempts: self.attempts.clone(),
            model: self.model.clone(),
            usage,
            git: self.git.clone(),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error,
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Finished {
    Done(TaskResult),
    DryRun(serde_json::Value),
}

/// An output file as it was before the run.
struct Target {
    path: String,
    before: Option<String>,
}

/// Why an attempt did not succeed, in the words the repair prompt and the result use.
struct Failure {
    outcome: Outcome,
    repair: RepairView,
}

impl Failure {
    fn new(outcome: Outcome, problem: impl Into<String>) -> Self {
        Self {
            outcome,
            repair: RepairView {
                problem: problem.into(),
                ..RepairView::default()
            },
        }
    }

    fn with_details(mut self, details: impl Into<String>) -> Self {
        self.repair.details = details.into();
        self
    }
}

#[allow(clippy::too_many_lines)] // The stages in order are easier to follow in one place.
async fn run_task(
    options: &RunOptions,
    route: Option<Route>,
    env: &dyn Fn(&str) -> Option<String>,
    progress: Progress<'_>,
    state: &mut RunState,
) -> Result<Finished> {
    let spec = spec::load(&options.spec_path)?;
    state.task_id = Some(spec.task_id.clone());
    let repo = open_repo(options)?;
    state.git = Some(repo.info());
    let root = repo.root().to_path_buf();

    let targets = read_targets(&root, &spec)?;
    let context = context::gather(&root, &spec.context_files, options.max_context_bytes)?;
    let templates = Templates::load(&root, spec.kind, options.template.as_deref())?;
    let language = spec
        .language
        .clone()
        .unwrap_or_else(|| language::for_path(&spec.outputs[0]).to_owned());
    let first_messages =
        templates.task_messages(&spec, &output_views(&targets, &language), &context)?;
    let max_attempts = options
        .max_attempts
        .or(spec.max_attempts)
        .unwrap_or(spec::DEFAULT_MAX_ATTEMPTS)
        .clamp(1, spec::MAX_MAX_ATTEMPTS);
    let choice = ModelChoice::resolve(&options.model_flags, spec.model.as_deref(), env);

    if options.dry_run {
        return Ok(Finished::DryRun(dry_run_request(
            &spec,
            &choice,
            options,
            first_messages,
        )));
    }
    if !options.force {
        check_clean_targets(&repo, &targets)?;
    }

    let Route { client, model } = if let Some(route) = route {
        route
    } else {
        progress("connecting to the model server");
        route::connect(&choice, options.limits).await?
    };
    state.model = Some(ModelInfo {
        provider: client.provider().as_str().to_owned(),
        endpoint: client.endpoint(),
        name: model.clone(),
    });

    let mut journal = Journal::new(&repo, &state.run_id, &spec.task_id);
    // Only the latest failed exchange goes back to the model: local context windows are small.
    let mut last_exchange: Option<(String, Failure)> = None;
    let mut last_test: Option<TestReport> = None;
    for n in 1..=max_attempts {
        let mut messages = first_messages.clone();
        if let Some((reply, failure)) = &last_exchange {
            messages.push(Message::assistant(reply.clone()));
            messages.push(templates.repair_message(&spec, &failure.repair)?);
        }
        progress(&format!(
            "attempt {n}/{max_attempts}: asking {model} at {}",
            client.endpoint()
        ));
        let request = ChatRequest {
            model: model.clone(),
            messages,
            temperature: options.temperature,
            max_tokens: options.max_tokens,
        };
        let reply = match client.chat(&request).await {
            Ok(reply) => reply,
            Err(error) => {
                state.attempts.push(Attempt {
                    n,
                    outcome: Outcome::ModelError,
                    error: Some(error.to_string()),
                    usage: Usage::default(),
                    notes: Vec::new(),
                });
                return Err(error.into());
            }
        };
        let usage = reply.usage_for(&request);
        let mut attempt = Attempt {
            n,
            outcome: Outcome::Ok,
            error: None,
            usage,
            notes: Vec::new(),
        };

        let failure = match check_reply(&reply, &spec, &targets, &language, &mut attempt.notes) {
            Err(failure) => Some(failure),
            Ok(files) => {
                let _lock = lock::acquire(&repo, options.lock_timeout).await?;
                write::clean_stale_temp_files(&repo);
                let written = write_files(&mut journal, &files, &targets);
                if let Err(error) = written {
                    let _ = journal.restore();
                    return Err(error);
                }
                match run_test(&spec, options, &root, progress).await {
                    TestVerdict::Passed(test) | TestVerdict::NotRun(test) => {
                        state.attempts.push(attempt);
                        let changes = file_changes(&journal, &targets, &files);
                        let summary = success_summary(&changes, test.as_ref(), n, max_attempts);
                        return Ok(Finished::Done(state.finish(
                            Some(spec.task_id.clone()),
                            Status::Success,
                            summary,
                            changes,
                            test,
                            None,
                        )));
                    }
                    TestVerdict::CannotStart(message, test) => {
                        attempt.outcome = Outcome::TestFailed;
                        attempt.error = Some(message.clone());
                        state.attempts.push(attempt);
                        let kept = keep_or_restore(&mut journal, options.keep_failed)?;
                        let changes = if kept {
                            file_changes(&journal, &targets, &files)
                        } else {
                            Vec::new()
                        };
                        let summary = format!(
                            "failed: {message}{}",
                            if kept {
                                "; the untested files were kept (--keep-failed)"
                            } else {
                                "; the tree is unchanged"
                            }
                        );
                        return Ok(Finished::Done(state.finish(
                            Some(spec.task_id.clone()),
                            Status::Failed,
                            summary,
                            changes,
                            test,
                            None,
                        )));
                    }
                    TestVerdict::Failed(test) => {
                        let failure = test_failure(&test);
                        let last = n == max_attempts;
                        if last && options.keep_failed {
                            let changes = file_changes(&journal, &targets, &files);
                            attempt.outcome = failure.outcome;
                            attempt.error = Some(failure.repair.problem.clone());
                            state.attempts.push(attempt);
                            let summary = escalate_summary(&spec, &state.attempts, true);
                            return Ok(Finished::Done(state.finish(
                                Some(spec.task_id.clone()),
                                Status::Escalate,
                                summary,
                                changes,
                                Some(test),
                                None,
                            )));
                        }
                        // The next attempt (and the supervisor, after the last) must see
                        // the tree exactly as it was.
                        journal.restore()?;
                        last_test = Some(test);
                        Some(failure)
                    }
                }
            }
        };
        if let Some(failure) = failure {
            attempt.outcome = failure.outcome;
            attempt.error = Some(failure.repair.problem.clone());
            progress(&format!(
                "attempt {n}/{max_attempts}: {}",
                failure.repair.problem
            ));
            state.attempts.push(attempt);
            last_exchange = Some((reply.content, failure));
        }
    }

    let summary = escalate_summary(&spec, &state.attempts, false);
    Ok(Finished::Done(state.finish(
        Some(spec.task_id.clone()),
        Status::Escalate,
        summary,
        Vec::new(),
        last_test,
        None,
    )))
}

fn open_repo(options: &RunOptions) -> Result<Repo> {
    let start = match &options.repo_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|error| Error::io("read current directory", ".", error))?,
    };
    Repo::discover(&start)
}

/// The output files as they are now; refuses paths that resolve outside the repository.
fn read_targets(root: &Path, spec: &TaskSpec) -> Result<Vec<Target>> {
    spec.outputs
        .iter()
        .map(|path| {
            let location = guard::resolve_inside(root, path).map_err(|reason| Error::UnsafePath {
                path: path.clone(),
                reason,
            })?;
            let before = match std::fs::read(&location) {
                Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| Error::Context {
                    message: format!("output file `{path}` exists and is not UTF-8 text; it cannot be edited by a model"),
                })?),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                // A dangling symlink is replaced, not followed.
                Err(_) if std::fs::symlink_metadata(&location).is_ok() => None,
                Err(error) => return Err(Error::io("read output file", location, error)),
            };
            Ok(Target {
                path: path.clone(),
                before,
            })
        })
        .collect()
}

fn output_views(targets: &[Target], language: &str) -> Vec<OutputView> {
    targets
        .iter()
        .map(|target| {
            let own_language = language::for_path(&target.path);
            let body = target.before.as_deref().unwrap_or_default();
            OutputView {
                path: target.path.clone(),
                language: if targets.len() == 1 || own_language.is_empty() {
                    language.to_owned()
                } else {
                    own_language.to_owned()
                },
                exists: target.before.is_some(),
                body: body.strip_suffix('\n').unwrap_or(body).to_owned(),
                fence: prompt::fence_for(body),
            }
        })
        .collect()
}

fn check_clean_targets(repo: &Repo, targets: &[Target]) -> Result<()> {
    for target in targets.iter().filter(|t| t.before.is_some()) {
        if repo.has_uncommitted_changes(&target.path)? {
            return Err(Error::Usage(format!(
                "`{}` has uncommitted changes; commit or stash them first, or pass --force to overwrite (its bytes are backed up either way)",
                target.path
            )));
        }
    }
    Ok(())
}

fn dry_run_request(
    spec: &TaskSpec,
    choice: &ModelChoice,
    options: &RunOptions,
    messages: Vec<Message>,
) -> serde_json::Value {
    let request = ChatRequest {
        model: choice
            .model
            .clone()
            .unwrap_or_else(|| "(the server's only model)".to_owned()),
        messages,
        temperature: options.temperature,
        max_tokens: options.max_tokens,
    };
    json!({
        "dry_run": true,
        "task_id": spec.task_id,
        "endpoint": choice.endpoint.as_deref().map(route::openai_base),
        "request": crate::model::openai::request_body(&request),
    })
}

/// Extraction and guards: the files to write, or why the reply cannot be used.
fn check_reply(
    reply: &ChatReply,
    spec: &TaskSpec,
    targets: &[Target],
    language: &str,
    notes: &mut Vec<String>,
) -> std::result::Result<Vec<(String, String)>, Failure> {
    if reply.finish == Finish::Length {
        return Err(Failure::new(
            Outcome::Truncated,
            "the reply was cut off by the server's token limit before it ended",
        )
        .with_details(
            "Give a complete but shorter answer: only the requested files, no explanations.",
        ));
    }
    let extracted =
        extract::extract(&reply.content, &spec.outputs, language).map_err(|error| match error {
            ExtractError::Truncated(reason) => Failure::new(Outcome::Truncated, reason),
            ExtractError::NoCode(reason) => Failure::new(Outcome::NoCode, reason),
            missing @ ExtractError::MissingFiles(_) => {
                Failure::new(Outcome::NoCode, missing.to_string())
            }
        })?;
    notes.extend(extracted.notes);
    for (path, code) in &extracted.files {
        if let Some(line) = guard::find_elision(path, code) {
            return Err(Failure::new(
                Outcome::GuardRefused,
                format!("the code for `{path}` leaves code out (`{line}`)"),
            )
            .with_details(
                "Write out every line of the file; placeholders for omitted code are rejected.",
            ));
        }
        if !spec.allow_shrink {
            let before = targets
                .iter()
                .find(|t| &t.path == path)
                .and_then(|t| t.before.as_ref());
            if let Some(before) = before {
                guard::check_shrink(path, before.len(), code.len())
                    .map_err(|reason| Failure::new(Outcome::GuardRefused, reason))?;
            }
        }
    }
    Ok(extracted.files)
}

fn write_files(
    journal: &mut Journal,
    files: &[(String, String)],
    targets: &[Target],
) -> Result<()> {
    for (path, code) in files {
        let unchanged = targets
            .iter()
            .any(|t| &t.path == path && t.before.as_deref() == Some(code.as_str()));
        if !unchanged {
            journal.write(path, code.as_bytes())?;
        }
    }
    Ok(())
}

enum TestVerdict {
    Passed(Option<TestReport>),
    NotRun(Option<TestReport>),
    Failed(TestReport),
    CannotStart(String, Option<TestReport>),
}

async fn run_test(
    spec: &TaskSpec,
    options: &RunOptions,
    root: &Path,
    progress: Progress<'_>,
) -> TestVerdict {
    let Some(command) = spec.test_command.as_deref().filter(|_| !options.no_test) else {
        return TestVerdict::NotRun(None);
    };
    progress(&format!("testing: {command}"));
    match test_run::run(command, root, Duration::from_secs(spec.timeout_secs)).await {
        Ok(report) if report.passed => TestVerdict::Passed(Some(report)),
        Ok(report) => TestVerdict::Failed(report),
        Err(cannot_start) => TestVerdict::CannotStart(cannot_start.message, cannot_start.report),
    }
}

fn test_failure(test: &TestReport) -> Failure {
    let problem = if test.timed_out {
        format!(
            "the test `{}` did not finish within its time limit",
            test.command
        )
    } else {
        format!(
            "the test `{}` failed (exit {})",
            test.command,
            test.exit_code
                .map_or_else(|| "by signal".to_owned(), |c| c.to_string())
        )
    };
    Failure {
        outcome: Outcome::TestFailed,
        repair: RepairView {
            problem,
            details: test.output_tail.clone(),
            test_command: Some(test.command.clone()),
            exit_code: test.exit_code,
            timed_out: test.timed_out,
        },
    }
}

/// Restores the tree unless the user asked to keep a failed attempt; true when kept.
fn keep_or_restore(journal: &mut Journal, keep: bool) -> Result<bool> {
    if !keep {
        journal.restore()?;
    }
    Ok(keep)
}

fn file_changes(
    journal: &Journal,
    targets: &[Target],
    files: &[(String, String)],
) -> Vec<FileChange> {
    files
        .iter()
        .map(|(path, code)| {
            let before = targets
                .iter()
                .find(|t| &t.path == path)
                .and_then(|t| t.before.as_deref());
            let action = match before {
                None => FileAction::Created,
                Some(old) if old == code => FileAction::Unchanged,
                Some(_) => FileAction::Modified,
            };
            let diff = similar::TextDiff::from_lines(before.unwrap_or_default(), code.as_str());
            let (mut added, mut removed) = (0, 0);
            for change in diff.iter_all_changes() {
                match change.tag() {
                    similar::ChangeTag::Insert => added += 1,
                    similar::ChangeTag::Delete => removed += 1,
                    similar::ChangeTag::Equal => {}
                }
            }
            let old_header = if before.is_some() {
                format!("a/{path}")
            } else {
                "/dev/null".to_owned()
            };
            FileChange {
                path: path.clone(),
                action,
                bytes: code.len() as u64,
                lines_added: added,
                lines_removed: removed,
                backup: journal.backup_path(path).map(|p| p.display().to_string()),
                diff: diff
                    .unified_diff()
                    .context_radius(3)
                    .header(&old_header, &format!("b/{path}"))
                    .to_string(),
            }
        })
        .collect()
}

fn success_summary(changes: &[FileChange], test: Option<&TestReport>, n: u32, max: u32) -> String {
    let files = changes
        .iter()
        .map(|c| match c.action {
            FileAction::Unchanged => format!("{} (unchanged)", c.path),
            _ => format!("{} (+{} -{})", c.path, c.lines_added, c.lines_removed),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let verdict = match test {
        Some(test) => format!("test `{}` passed", test.command),
        None => "UNTESTED: no test command ran, review the code carefully".to_owned(),
    };
    format!("wrote {files}; {verdict} (attempt {n} of {max})")
}

fn escalate_summary(spec: &TaskSpec, attempts: &[Attempt], kept: bool) -> String {
    let last = attempts
        .last()
        .and_then(|a| a.error.clone())
        .unwrap_or_default();
    format!(
        "escalate: the local model did not complete {} in {} attempt{}; last: {last}; {}",
        spec.task_id,
        attempts.len(),
        if attempts.len() == 1 { "" } else { "s" },
        if kept {
            "the failed attempt's files were kept (--keep-failed)"
        } else {
            "the tree is unchanged"
        }
    )
}

/// `20261120T220512123Z-3f9a`: sorts by time, unique across concurrent runs.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second][subsecond digits:3]Z"
    );
    let stamp = now
        .format(&format)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    format!("{stamp}-{:04x}", fastrand::u16(..))
}
