//! One task, end to end: spec → context → prompt → model → extract → guard → write → test,
//! with repairs while attempts remain, ending in a [`TaskResult`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::watch;

use crate::context;
use crate::error::{Error, Result};
use crate::extract::{self, ExtractError};
use crate::guard;
use crate::language;
use crate::lock;
use crate::model::{ChatReply, ChatRequest, Finish, Limits, Message};
use crate::prompt::{self, OutputView, RepairView, Templates};
use crate::repo::{Repo, TargetStatus};
use crate::result::{
    Attempt, ErrorInfo, FileAction, FileChange, ModelInfo, Outcome, Status, TaskResult, TestReport,
    Usage,
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
    pub temperature: f64,
    pub max_tokens: Option<u32>,
    pub limits: Limits,
    /// Retries, `--record` and `--replay`.
    pub connection: route::Connection,
    pub lock_timeout: Duration,
    /// Stops the run early (the command line sets it on a signal).
    pub cancel: Cancel,
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
            connection: route::Connection::default(),
            lock_timeout: Duration::from_secs(600),
            cancel: Cancel::never(),
        }
    }
}

/// Tells a run to stop, with the signal that asked for it. The run stops at whatever it
/// is waiting for (the server, the model, the lock, the test): a test is stopped with
/// everything it started, the attempt's writes are undone, and the run ends with error
/// kind `interrupted`. Work that does not wait (a write, a restore) is finished first,
/// so the tree is never left half-written.
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<Option<Signal>>);

/// Sets the [`Cancel`] it was made with.
#[derive(Debug)]
pub struct Canceller(watch::Sender<Option<Signal>>);

impl Cancel {
    pub fn new() -> (Canceller, Self) {
        let (sender, receiver) = watch::channel(None);
        (Canceller(sender), Self(receiver))
    }

    /// For a run nothing stops.
    pub fn never() -> Self {
        Self::new().1
    }

    /// The signal, once the run was told to stop.
    pub fn signal(&self) -> Option<Signal> {
        *self.0.borrow()
    }

    /// Completes when the run is told to stop.
    pub async fn cancelled(&self) -> Signal {
        let mut receiver = self.0.clone();
        if let Ok(signal) = receiver.wait_for(Option::is_some).await
            && let Some(signal) = *signal
        {
            return signal;
        }
        // The canceller is gone without having stopped the run: nothing can stop it now.
        std::future::pending().await
    }

    /// `work`, unless the run is told to stop first; then `work` is dropped.
    async fn or_cancel<T>(&self, work: impl Future<Output = T>) -> Result<T> {
        tokio::select! {
            biased;
            signal = self.cancelled() => Err(Error::Interrupted(signal)),
            value = work => Ok(value),
        }
    }
}

impl Canceller {
    pub fn cancel(&self, signal: Signal) {
        self.0.send_replace(Some(signal));
    }
}

/// What a run produced: a result, or for `--dry-run` the request it would send.
#[allow(clippy::large_enum_variant)] // One value a process: boxing buys nothing.
pub enum RunOutput {
    Result {
        result: TaskResult,
        exit_code: u8,
        /// What the user can do about an error, for stderr.
        hint: Option<String>,
    },
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
        unrestored: None,
    };
    match run_task(options, route, env, progress, &mut state).await {
        Ok(Finished::DryRun(request)) => RunOutput::DryRun(request),
        Ok(Finished::Done(result)) => {
            // A run that finished, and so has no error to take a code from: it succeeded,
            // or ran and did not (failed, escalate).
            let exit_code = u8::from(result.status != Status::Success);
            RunOutput::Result {
                result,
                exit_code,
                hint: None,
            }
        }
        Err(error) => {
            if state.task_id.is_none() {
                state.task_id = spec::peek_task_id(&options.spec_path);
            }
            let mut message = error.to_string();
            if let Some(n) = state.unrestored {
                message = format!(
                    "{message}; the working tree may still hold attempt {n}'s code: undo it with `execute-local-task rollback {}`",
                    state.run_id
                );
            }
            let result = state.fail(ErrorInfo {
                kind: error.kind().to_owned(),
                message,
            });
            RunOutput::Result {
                result,
                exit_code: error.exit_code(),
                hint: error.hint(),
            }
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
    /// The attempt whose code an error left in the tree, when undoing it failed too.
    unrestored: Option<u32>,
}

impl RunState {
    /// The result of a run that finished, with or without success.
    fn finish(
        &self,
        status: Status,
        summary: String,
        files: Vec<FileChange>,
        test: Option<TestReport>,
    ) -> TaskResult {
        self.complete(TaskResult {
            files,
            test,
            ..TaskResult::new(self.run_id.clone(), self.task_id.clone(), status, summary)
        })
    }

    /// The result of a run that ended with an error.
    fn fail(&self, error: ErrorInfo) -> TaskResult {
        self.complete(TaskResult::error(
            self.run_id.clone(),
            self.task_id.clone(),
            error,
        ))
    }

    /// `result` with what every result reports of the run so far.
    fn complete(&self, result: TaskResult) -> TaskResult {
        let mut usage = Usage::default();
        for attempt in &self.attempts {
            usage.add(&attempt.usage);
        }
        TaskResult {
            attempts: self.attempts.clone(),
            model: self.model.clone(),
            usage,
            git: self.git.clone(),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ..result
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
    /// Something (a file or a symlink) stands at the path.
    exists: bool,
    before: Option<String>,
    /// The path relative to the root with every directory symlink resolved: what git
    /// knows the file by, and what tells two names of one file apart.
    real: PathBuf,
    /// The target of the symlink standing at the path, which the run replaces.
    link: Option<String>,
}

/// The text `path` held before the run, when it is a target that was a file.
fn before_of<'a>(targets: &'a [Target], path: &str) -> Option<&'a str> {
    targets
        .iter()
        .find(|target| target.path == path)
        .and_then(|target| target.before.as_deref())
}

/// Why an attempt did not succeed, in the words the repair prompt and the result use.
struct Failure {
    outcome: Outcome,
    repair: RepairView,
}

impl Failure {
    fn new(outcome: Outcome, problem: impl AsRef<str>) -> Self {
        Self {
            outcome,
            repair: RepairView {
                problem: one_line(problem.as_ref()),
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

    let bounds = repo.bounds();
    let targets = read_targets(&bounds, &spec)?;
    let context = context::gather(
        &bounds,
        &spec.context_files,
        &spec.outputs,
        options.max_context_bytes,
    )?;
    let templates = Templates::load(&bounds, spec.kind, options.template.as_deref())?;
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
    let choice = ModelChoice::resolve(&options.model_flags, spec.model.as_deref(), env)?;

    // Before the dry run too: it should refuse what the real run would refuse.
    if !options.force {
        check_clean_targets(&repo, &targets)?;
    }
    if options.dry_run {
        return Ok(Finished::DryRun(dry_run_request(
            &spec,
            &choice,
            options,
            first_messages,
        )));
    }
    // A typo in the test command should not cost a whole model call first.
    let missing = match spec.test_command.as_deref().filter(|_| !options.no_test) {
        Some(command) => options
            .cancel
            .or_cancel(test_run::missing_program(
                command,
                repo.root(),
                &spec.outputs,
            ))
            .await?
            .map(|program| (command, program)),
        None => None,
    };
    if let Some((command, program)) = missing {
        return Ok(Finished::Done(state.finish(
            Status::Failed,
            format!(
                "failed: the test command `{command}` could not start: `{program}` is not found; \
                 fix test_command in the spec or install `{program}` (the model was not called)"
            ),
            Vec::new(),
            None,
        )));
    }

    let Route {
        client,
        model,
        notes: route_notes,
    } = if let Some(route) = route {
        route
    } else {
        progress("connecting to the model server");
        options
            .cancel
            .or_cancel(route::connect(&choice, options.limits, &options.connection))
            .await??
    };
    for note in &route_notes {
        progress(note);
    }
    state.model = Some(ModelInfo {
        provider: client.provider().as_str().to_owned(),
        endpoint: client.endpoint(),
        name: model.clone(),
    });

    let mut journal = Journal::new(&repo, &state.run_id, &spec.task_id);
    // Only the latest failed attempt goes back to the model, as its own turn (see
    // `written_turn`) followed by what went wrong: local context windows are small.
    let mut last_exchange: Option<(String, Failure)> = None;
    // The last attempt whose code was written and tested: the test the result reports, and
    // what `--keep-failed` leaves in the tree.
    let mut last_tested: Option<Tested> = None;
    let mut cannot_start: Option<String> = None;
    for n in 1..=max_attempts {
        let mut messages = first_messages.clone();
        if let Some((turn, failure)) = &last_exchange {
            messages.push(Message::assistant(turn.clone()));
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
        let reply = match options
            .cancel
            .or_cancel(client.chat(&request))
            .await
            .and_then(|reply| reply.map_err(Error::from))
        {
            Ok(reply) => reply,
            Err(error) => {
                state.attempts.push(Attempt {
                    n,
                    outcome: if matches!(error, Error::Model(_)) {
                        Outcome::ModelError
                    } else {
                        Outcome::Error
                    },
                    error: Some(error.to_string()),
                    usage: Usage::default(),
                    notes: Vec::new(),
                });
                return Err(error);
            }
        };
        let usage = reply.usage_for(&request);
        let mut attempt = Attempt {
            n,
            outcome: Outcome::Ok,
            error: None,
            usage,
            // How the model was chosen is said once, with the first attempt.
            notes: if n == 1 {
                route_notes.clone()
            } else {
                Vec::new()
            }
            .into_iter()
            .chain(reply.notes.iter().cloned())
            .collect(),
        };

        let (failure, turn) =
            match check_reply(&reply, &spec, &targets, &language, &mut attempt.notes) {
                Err(failure) => {
                    let turn = reply_turn(&reply.content, failure.outcome == Outcome::Truncated);
                    (failure, turn)
                }
                Ok(files) => {
                    let verdict = write_and_test(
                        &repo,
                        &mut journal,
                        &files,
                        &targets,
                        &spec,
                        options,
                        progress,
                    )
                    .await;
                    match verdict {
                        Err(error) => {
                            // The attempt's reply and usage belong in the result all the same.
                            attempt.outcome = Outcome::Error;
                            attempt.error = Some(one_line(&error.to_string()));
                            state.attempts.push(attempt);
                            if journal.has_writes() {
                                state.unrestored = Some(n);
                            }
                            return Err(error);
                        }
                        Ok(TestVerdict::Passed(test)) => {
                            attempt.notes.extend(replaced_link_notes(&targets, &files));
                            state.attempts.push(attempt);
                            let changes = file_changes(&journal, &targets, &files);
                            let summary = success_summary(&changes, test.as_ref(), n, max_attempts);
                            return Ok(Finished::Done(state.finish(
                                Status::Success,
                                summary,
                                changes,
                                test,
                            )));
                        }
                        Ok(TestVerdict::CannotStart(message, test)) => {
                            // No attempt can pass a test that cannot run: stop here.
                            attempt.outcome = Outcome::TestFailed;
                            attempt.error = Some(message.clone());
                            state.attempts.push(attempt);
                            last_tested = Some(Tested { n, files, test });
                            cannot_start = Some(message);
                            break;
                        }
                        Ok(TestVerdict::Failed(test)) => {
                            let failure = test_failure(&test, spec.timeout_secs);
                            let turn = written_turn(&files, &targets, &language);
                            last_tested = Some(Tested {
                                n,
                                files,
                                test: Some(test),
                            });
                            (failure, turn)
                        }
                    }
                }
            };
        attempt.outcome = failure.outcome;
        attempt.error = Some(failure.repair.problem.clone());
        progress(&format!(
            "attempt {n}/{max_attempts}: {}",
            failure.repair.problem
        ));
        state.attempts.push(attempt);
        last_exchange = Some((turn, failure));
    }

    let (status, what) = match cannot_start {
        Some(message) => (Status::Failed, format!("failed: {message}")),
        None => (
            Status::Escalate,
            escalate_summary(&spec, &state.attempts, options.max_tokens),
        ),
    };
    let left = leave_tree(
        &repo,
        &mut journal,
        &targets,
        last_tested.as_ref(),
        options,
        &state.run_id,
    )
    .await;
    if left.is_err() && journal.has_writes() {
        state.unrestored = last_tested.as_ref().map(|tested| tested.n);
    }
    let (changes, tree) = left?;
    Ok(Finished::Done(state.finish(
        status,
        format!("{what}; {tree}"),
        changes,
        last_tested.and_then(|tested| tested.test),
    )))
}

/// An attempt whose code was written and tested.
struct Tested {
    n: u32,
    files: Vec<(String, String)>,
    /// None when the test command could not even be spawned.
    test: Option<TestReport>,
}

fn open_repo(options: &RunOptions) -> Result<Repo> {
    let start = match &options.repo_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|error| Error::io("read current directory", ".", error))?,
    };
    Repo::discover(&start)
}

/// The output files as they are now; refuses paths that resolve outside the repository,
/// and two outputs that are one file (or a file and a directory holding another) through
/// a symlink, before any model call.
fn read_targets(bounds: &guard::Bounds, spec: &TaskSpec) -> Result<Vec<Target>> {
    let targets = spec
        .outputs
        .iter()
        .map(|path| {
            let unsafe_path = |reason: String| Error::UnsafePath {
                path: path.clone(),
                reason,
            };
            let location = bounds.locate_target(path).map_err(unsafe_path)?;
            // A symlink there is replaced, never followed: it reads as no previous text.
            let before = match bounds.read(path, false) {
                Ok(Some(bytes)) => Some(String::from_utf8(bytes).map_err(|_| Error::Context {
                    message: format!("output file `{path}` exists and is not UTF-8 text; it cannot be edited by a model"),
                })?),
                Ok(None) => None,
                Err(guard::ReadError::Unsafe(reason)) => return Err(unsafe_path(reason)),
                Err(guard::ReadError::Directory) => {
                    return Err(unsafe_path("the path is an existing directory".to_owned()));
                }
                Err(guard::ReadError::Io(error)) => {
                    return Err(Error::io(
                        "read output file",
                        bounds.root().join(location.parent()).join(&location.name),
                        error,
                    ));
                }
            };
            let real = location.parent().join(&location.name);
            let link = if location.existing == guard::Existing::Symlink {
                let shown = bounds.root().join(&real);
                let target = std::fs::read_link(&shown)
                    .map_err(|error| Error::io("read symlink", &shown, error))?;
                Some(target.to_string_lossy().into_owned())
            } else {
                None
            };
            Ok(Target {
                path: path.clone(),
                exists: location.existing != guard::Existing::Nothing,
                before,
                real,
                link,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for (index, target) in targets.iter().enumerate() {
        for other in &targets[..index] {
            let same = target.real == other.real;
            if same || target.real.starts_with(&other.real) || other.real.starts_with(&target.real)
            {
                return Err(Error::spec(
                    &spec.source,
                    Some(&format!("output_files[{index}]")),
                    format!(
                        "`{}` and `{}` {} (through a symlink); list each file once",
                        target.path,
                        other.path,
                        if same {
                            "are the same file"
                        } else {
                            "are a file and a directory holding the other"
                        }
                    ),
                ));
            }
        }
    }
    Ok(targets)
}

fn output_views(targets: &[Target], language: &str) -> Vec<OutputView> {
    targets
        .iter()
        .map(|target| {
            let body = target.before.as_deref().unwrap_or_default();
            OutputView {
                path: target.path.clone(),
                language: fence_language(&target.path, language, targets.len()),
                exists: target.before.is_some(),
                body: body.strip_suffix('\n').unwrap_or(body).to_owned(),
                fence: prompt::fence_for(body),
            }
        })
        .collect()
}

/// The fence language for one output: the task's language, or with several outputs each
/// file's own when its extension tells.
fn fence_language(path: &str, language: &str, outputs: usize) -> String {
    let own = language::for_path(path);
    if outputs == 1 || own.is_empty() {
        language.to_owned()
    } else {
        own.to_owned()
    }
}

fn check_clean_targets(repo: &Repo, targets: &[Target]) -> Result<()> {
    for target in targets.iter().filter(|t| t.exists) {
        let ignored = match repo.target_status(&target.real)? {
            TargetStatus::Clean => continue,
            TargetStatus::Uncommitted => false,
            TargetStatus::Ignored => true,
        };
        return Err(Error::DirtyTarget {
            path: target.path.clone(),
            ignored,
        });
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
    let mut printed = json!({"status": "dry_run", "dry_run": true, "task_id": spec.task_id});
    if let (Some(printed), serde_json::Value::Object(target)) =
        (printed.as_object_mut(), route::dry_run(choice, &request))
    {
        printed.extend(target);
    }
    printed
}

/// Extraction and guards: the files to write, or why the reply cannot be used.
fn check_reply(
    reply: &ChatReply,
    spec: &TaskSpec,
    targets: &[Target],
    language: &str,
    notes: &mut Vec<String>,
) -> std::result::Result<Vec<(String, String)>, Failure> {
    match &reply.finish {
        Finish::Stop => {}
        Finish::Length => {
            return Err(Failure::new(
                Outcome::Truncated,
                "the reply was cut off by the server's token limit before it ended",
            )
            .with_details(
                "Give a complete but shorter answer: only the requested files, no explanations.",
            ));
        }
        // A content filter, an aborted request, a tool call: the reply did not end
        // naturally, so even balanced fences may hold a partial file.
        Finish::Other(reason) => {
            return Err(Failure::new(
                Outcome::Truncated,
                format!(
                    "the reply ended with finish reason `{reason}` instead of a natural stop, so it may be incomplete"
                ),
            )
            .with_details("Give the complete answer: only the requested files, no explanations."));
        }
    }
    let mut extracted =
        extract::extract(&reply.content, &spec.outputs, language).map_err(|error| match error {
            ExtractError::Truncated(reason) => Failure::new(Outcome::Truncated, reason),
            ExtractError::NoCode(reason) => Failure::new(Outcome::NoCode, reason),
            missing @ ExtractError::MissingFiles(_) => {
                Failure::new(Outcome::NoCode, missing.to_string())
            }
        })?;
    extracted.keep_own_path_comments(|path| before_of(targets, path));
    notes.extend(extracted.notes);
    // Replies come with LF line ends; a file written with CRLF throughout keeps them, so
    // its diff shows the real changes instead of every line.
    let files: Vec<(String, String)> = extracted
        .files
        .into_iter()
        .map(|(path, code)| {
            let crlf = before_of(targets, &path).is_some_and(|before| {
                before.contains('\n')
                    && before.matches("\r\n").count() == before.matches('\n').count()
            });
            let code = if crlf && !code.contains('\r') {
                code.replace('\n', "\r\n")
            } else {
                code
            };
            (path, code)
        })
        .collect();
    for (path, code) in &files {
        if let Some(line) = crate::content::find_elision(path, code) {
            return Err(Failure::new(
                Outcome::GuardRefused,
                format!("the code for `{path}` leaves code out (`{line}`)"),
            )
            .with_details(
                "Write out every line of the file; placeholders for omitted code are rejected.",
            ));
        }
        if !spec.allow_shrink
            && let Some(before) = before_of(targets, path)
        {
            crate::content::check_shrink(path, before.len(), code.len())
                .map_err(|reason| Failure::new(Outcome::GuardRefused, reason))?;
        }
    }
    Ok(files)
}

fn write_files(
    journal: &mut Journal,
    files: &[(String, String)],
    targets: &[Target],
) -> Result<()> {
    for (path, code) in files {
        let before = before_of(targets, path);
        if before != Some(code.as_str()) {
            journal.write(path, code.as_bytes(), before.map(str::as_bytes))?;
        }
    }
    Ok(())
}

enum TestVerdict {
    /// The test passed, or none ran (None).
    Passed(Option<TestReport>),
    Failed(TestReport),
    CannotStart(String, Option<TestReport>),
}

/// Writes one attempt's files under the repository lock and tests them. Unless the test
/// passed, the files are undone at once, so the next attempt's test sees exactly its own
/// code, and the supervisor after the last attempt sees the tree as it was.
async fn write_and_test(
    repo: &Repo,
    journal: &mut Journal,
    files: &[(String, String)],
    targets: &[Target],
    spec: &TaskSpec,
    options: &RunOptions,
    progress: Progress<'_>,
) -> Result<TestVerdict> {
    let _lock = options
        .cancel
        .or_cancel(lock::acquire(repo, options.lock_timeout))
        .await??;
    write::clean_stale_temp_files(repo);
    // From the first write until the verdict, anything that ends this early (an error, a
    // panic unwinding, the future dropped) undoes the writes: untested code never stays.
    // Should the undo fail too, the journal still has writes, and the caller's error says
    // the tree may hold code.
    let mut undo = UndoUnlessSettled {
        journal,
        settled: false,
    };
    write_files(undo.journal, files, targets)?;
    let verdict = run_test(spec, options, repo.root(), progress).await;
    // An interrupted run reports no success, so even code that passed is undone.
    let interrupted = options.cancel.signal();
    let keep = interrupted.is_none() && matches!(verdict, TestVerdict::Passed(_));
    undo.settled = true;
    if !keep {
        undo.journal.restore()?;
    }
    match interrupted {
        Some(signal) => Err(Error::Interrupted(signal)),
        None => Ok(verdict),
    }
}

/// Restores the journal when dropped before the attempt's verdict settled what stays.
struct UndoUnlessSettled<'a> {
    journal: &'a mut Journal,
    settled: bool,
}

impl Drop for UndoUnlessSettled<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.journal.restore();
        }
    }
}

async fn run_test(
    spec: &TaskSpec,
    options: &RunOptions,
    root: &Path,
    progress: Progress<'_>,
) -> TestVerdict {
    let Some(command) = spec.test_command.as_deref().filter(|_| !options.no_test) else {
        return TestVerdict::Passed(None);
    };
    progress(&format!("testing: {command}"));
    let stop = async {
        options.cancel.cancelled().await;
    };
    match test_run::run(command, root, Duration::from_secs(spec.timeout_secs), stop).await {
        Ok(report) if report.passed => TestVerdict::Passed(Some(report)),
        Ok(report) => TestVerdict::Failed(report),
        Err(cannot_start) => TestVerdict::CannotStart(cannot_start.message, cannot_start.report),
    }
}

/// Bytes of test output a repair prompt gets: the failure lines and the end (see
/// [`test_run::failure_excerpt`]), about a thousand tokens.
const REPAIR_OUTPUT_BYTES: usize = 4 * 1024;

fn test_failure(test: &TestReport, timeout_secs: u64) -> Failure {
    let problem = if test.timed_out {
        format!(
            "the test `{}` did not finish within its limit of {timeout_secs} s and was stopped",
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
    let mut failure = Failure::new(Outcome::TestFailed, problem);
    failure.repair = RepairView {
        details: test_run::failure_excerpt(&test.output_tail, REPAIR_OUTPUT_BYTES),
        test_command: Some(test.command.clone()),
        exit_code: test.exit_code,
        timed_out: test.timed_out,
        ..failure.repair
    };
    failure
}

/// The previous attempt as the model's own turn in a repair conversation, when its code was
/// written and tested.
///
/// The model must see the code that failed, and the conversation already holds its reply:
/// sending that reply and the written files too would put the code in the prompt twice,
/// and local context windows are small. So the turn is the files exactly as written — the
/// bytes the test output is about, without the prose or thinking around them — and the
/// repair message refers to them instead of repeating them.
fn written_turn(files: &[(String, String)], targets: &[Target], language: &str) -> String {
    files
        .iter()
        .map(|(path, code)| {
            let fence = prompt::fence_for(code);
            let language = fence_language(path, language, targets.len());
            let code = code.strip_suffix('\n').unwrap_or(code);
            format!("{fence}{language} path={path}\n{code}\n{fence}")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Bytes of a cut-off reply kept in the repair conversation.
const TRUNCATED_TURN_BYTES: usize = 1024;

/// The previous attempt as the model's own turn when no code was written: the reply without
/// its thinking (prose without a block, or code a guard refused, which the model needs to
/// see to fix). A reply the server cut off keeps only its start: one that filled the token
/// limit would crowd the context the next reply needs.
fn reply_turn(reply: &str, truncated: bool) -> String {
    let reply = extract::strip_thinking(reply);
    let reply = reply.trim();
    if reply.is_empty() {
        // Some chat templates refuse an empty turn; a reply of only thinking says nothing.
        return "(no answer)".to_owned();
    }
    if !truncated || reply.len() <= TRUNCATED_TURN_BYTES {
        return reply.to_owned();
    }
    let mut end = TRUNCATED_TURN_BYTES;
    while !reply.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[… the rest of this reply was cut off …]",
        &reply[..end]
    )
}

/// Collapses a message onto one line: an attempt's error and a repair's first line are one
/// line each, whatever the command or the reply held.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a run that did not succeed leaves in the tree, and the summary's words for it.
/// Every failed attempt was undone when it failed, so the tree holds its original bytes;
/// with `--keep-failed` the last tested attempt's files are written again for inspection,
/// listed in the result, and undone by `rollback`.
async fn leave_tree(
    repo: &Repo,
    journal: &mut Journal,
    targets: &[Target],
    tested: Option<&Tested>,
    options: &RunOptions,
    run_id: &str,
) -> Result<(Vec<FileChange>, String)> {
    if !options.keep_failed {
        return Ok((Vec::new(), "the working tree is unchanged".to_owned()));
    }
    let Some(tested) = tested else {
        return Ok((
            Vec::new(),
            "no attempt produced code to keep (--keep-failed); the working tree is unchanged"
                .to_owned(),
        ));
    };
    let _lock = options
        .cancel
        .or_cancel(lock::acquire(repo, options.lock_timeout))
        .await??;
    if let Err(error) = write_files(journal, &tested.files, targets) {
        // As in `write_and_test`: a failed undo shows in the journal and the error says so.
        let _ = journal.restore();
        return Err(error);
    }
    let changes = file_changes(journal, targets, &tested.files);
    let tree = format!(
        "the working tree holds attempt {}'s failed code (--keep-failed): {}; undo it with `execute-local-task rollback {run_id}`",
        tested.n,
        describe_changes(&changes)
    );
    Ok((changes, tree))
}

fn file_changes(
    journal: &Journal,
    targets: &[Target],
    files: &[(String, String)],
) -> Vec<FileChange> {
    files
        .iter()
        .map(|(path, code)| {
            let target = targets.iter().find(|t| &t.path == path);
            let before = before_of(targets, path);
            let action = match before {
                // A symlink stood there: the run replaced it (see `replaced_link_notes`).
                None if target.is_some_and(|t| t.link.is_some()) => FileAction::Modified,
                None => FileAction::Created,
                Some(old) if old == code => FileAction::Unchanged,
                Some(_) => FileAction::Modified,
            };
            let diff = crate::diff::file_diff(path, before, code);
            FileChange {
                path: path.clone(),
                action,
                bytes: code.len() as u64,
                lines_added: diff.added,
                lines_removed: diff.removed,
                backup: journal
                    .written_backup_path(path)
                    .map(|p| p.display().to_string()),
                diff: diff.unified,
            }
        })
        .collect()
}

/// Notes for the outputs that were symlinks: the result says the link was replaced (its
/// backup is null because a link has no bytes; `rollback` puts the link back).
fn replaced_link_notes(targets: &[Target], files: &[(String, String)]) -> Vec<String> {
    targets
        .iter()
        .filter(|t| files.iter().any(|(path, _)| path == &t.path))
        .filter_map(|t| {
            t.link.as_ref().map(|link| {
                format!(
                    "`{}` was a symlink to `{link}`; it was replaced by a regular file, not written through (`rollback` restores the symlink)",
                    t.path
                )
            })
        })
        .collect()
}

fn success_summary(changes: &[FileChange], test: Option<&TestReport>, n: u32, max: u32) -> String {
    let verdict = match test {
        Some(test) => format!("test `{}` passed", test.command),
        None => "UNTESTED: no test command ran, review the code carefully".to_owned(),
    };
    format!(
        "wrote {}; {verdict} (attempt {n} of {max})",
        describe_changes(changes)
    )
}

fn describe_changes(changes: &[FileChange]) -> String {
    changes
        .iter()
        .map(|c| match c.action {
            FileAction::Unchanged => format!("{} (unchanged)", c.path),
            _ => format!("{} (+{} -{})", c.path, c.lines_added, c.lines_removed),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What was tried and what failed last, for a supervisor deciding to do the task itself.
fn escalate_summary(spec: &TaskSpec, attempts: &[Attempt], max_tokens: Option<u32>) -> String {
    let outcomes = attempts
        .iter()
        .map(|a| outcome_name(a.outcome))
        .collect::<Vec<_>>()
        .join(", ");
    let last = attempts
        .last()
        .and_then(|a| a.error.clone())
        .unwrap_or_default();
    // Replies cut short under a --max-tokens cap will be cut again: say what to change.
    let advice = match max_tokens {
        Some(cap) if attempts.iter().all(|a| a.outcome == Outcome::Truncated) => {
            format!("; every reply was cut short: --max-tokens {cap} is too low for this task")
        }
        _ => String::new(),
    };
    format!(
        "escalate: the local model did not complete {} in {} attempt{} ({outcomes}); last: {last}{advice}",
        spec.task_id,
        attempts.len(),
        if attempts.len() == 1 { "" } else { "s" },
    )
}

/// The outcome as the result JSON spells it.
fn outcome_name(outcome: Outcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_turn_is_the_files_as_written() {
        let targets = [
            Target {
                path: "a.py".to_owned(),
                exists: false,
                before: None,
                real: PathBuf::from("a.py"),
                link: None,
            },
            Target {
                path: "README.md".to_owned(),
                exists: true,
                before: Some("old\n".to_owned()),
                real: PathBuf::from("README.md"),
                link: None,
            },
        ];
        let files = [
            ("a.py".to_owned(), "x = 1\n".to_owned()),
            ("README.md".to_owned(), "```sh\nrun\n```\n".to_owned()),
        ];
        assert_eq!(
            written_turn(&files, &targets, "python"),
            "```python path=a.py\nx = 1\n```\n\n````markdown path=README.md\n```sh\nrun\n```\n````"
        );
    }

    #[test]
    fn a_reply_turn_drops_thinking_and_most_of_a_cut_off_reply() {
        assert_eq!(
            reply_turn("<think>long musing</think>\nI need more details.", false),
            "I need more details."
        );
        assert_eq!(reply_turn("<think>never finished", true), "(no answer)");
        let cut = reply_turn(&"é".repeat(5000), true);
        assert!(cut.len() < TRUNCATED_TURN_BYTES + 60, "{}", cut.len());
        assert!(cut.ends_with("cut off …]"), "{cut}");
        let long = "word ".repeat(5000);
        assert_eq!(reply_turn(&long, false), long.trim());
    }

    #[test]
    fn problems_are_one_line() {
        let failure = Failure::new(Outcome::TestFailed, "the test `a &&\n  b` failed");
        assert_eq!(failure.repair.problem, "the test `a && b` failed");
    }
}
