//! One task, end to end, in the README's order: spec → validate → context → prompt
//! ([`prepare`]) → model → extract → guard (`reply.rs`) → write → test
//! (`transaction.rs`) → repair (`repair.rs`) → result (`summary.rs`).

use std::sync::Arc;
use std::time::Instant;

use crate::blocking::off_thread;
use crate::cancel::stall_point;
use crate::error::{Error, Result};
use crate::ladder::Ladder;
use crate::lock;
use crate::model::{ChatReply, ChatRequest, Message};
use crate::prune;
use crate::repair::{reply_turn, test_failure, written_turn};
use crate::reply::{Failure, check_reply, one_line};
use crate::result::{
    Attempt, ErrorInfo, FileChange, ModelInfo, Outcome, Status, TaskResult, TestReport, Usage,
};
use crate::server::Connected;
use crate::summary::{escalate_summary, file_changes, replaced_link_notes, success_summary};
use crate::test_run;
use crate::transaction::{TestVerdict, Tested, leave_tree, write_and_test};
use crate::validator::{self, Review};
use crate::write::Journal;

pub use crate::cancel::{Cancel, Canceller};
pub use crate::options::RunOptions;
pub use crate::prepare::{Opened, Prepared, SpecInput, Unprepared, prepare};

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

/// Human progress lines; the command line prints them on stderr. `Send + Sync`, so runs
/// can share one across threads.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Reads the environment (a variable's value by name). Shared, so the stages before the
/// model can read it off the async threads.
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Runs one task. `server` replaces the server the options would choose (the demo's
/// recorded replies); `env` reads the environment.
pub async fn run(
    spec: &SpecInput,
    options: &RunOptions,
    server: Option<Connected>,
    env: &Env,
    progress: Progress<'_>,
) -> RunOutput {
    let mut state = RunState {
        run_id: crate::write::new_run_id(),
        started: Instant::now(),
        task_id: None,
        git: None,
        model: None,
        attempts: Vec::new(),
        unrestored: None,
        facts: None,
        triage: None,
        route: None,
        notes: Vec::new(),
    };
    let opened = {
        let (spec, options) = (spec.clone(), options.clone());
        off_thread(move || crate::prepare::open(&spec, &options))
    };
    let finished = match options.cancel.or_cancel(opened).await {
        Err(error) => {
            state.task_id = spec.peek_task_id();
            Err(error)
        }
        Ok(Err(unprepared)) => {
            state.task_id = unprepared.task_id;
            Err(unprepared.error)
        }
        Ok(Ok(opened)) => {
            state.task_id = Some(opened.spec.task_id.clone());
            // Boxed: the attempts are a large future, and callers hold many runs' at once.
            Box::pin(run_opened(
                opened, spec, options, server, env, progress, &mut state,
            ))
            .await
        }
    };
    if let Ok(Finished::NotRun(reason)) = finished {
        // Stopped at a batch's gate before its first model call: it wrote nothing and
        // left no journal, so it is reported and recorded like a task never started.
        let result = TaskResult::new(state.run_id, state.task_id, Status::Skipped, reason);
        return RunOutput::Result {
            result,
            exit_code: 1,
            hint: None,
        };
    }
    let facts = state.facts.take();
    let mut output = state.output(finished);
    if let Some(facts) = facts {
        crate::record::finish(&mut output, facts, env).await;
    }
    output
}

/// What the result reports of a run so far, whatever ends it.
struct RunState {
    run_id: String,
    started: Instant,
    task_id: Option<String>,
    git: Option<crate::result::GitInfo>,
    model: Option<ModelInfo>,
    attempts: Vec<Attempt>,
    /// The attempt whose code an error left in the tree, when undoing it failed too.
    unrestored: Option<u32>,
    /// What the run's ledger record needs, once it has started (dry runs never do).
    facts: Option<crate::record::Facts>,
    triage: Option<crate::triage::Triage>,
    route: Option<crate::route::Route>,
    /// Notes on the run as a whole (the bound on model calls reached).
    notes: Vec<String>,
}

impl RunState {
    /// The run's output once it ended, with a result or an error.
    fn output(self, finished: Result<Finished>) -> RunOutput {
        match finished {
            Ok(Finished::DryRun(request)) => RunOutput::DryRun(request),
            // `run` reports a run stopped at the gate before it gets here.
            Ok(Finished::NotRun(reason)) => {
                let result = TaskResult::new(self.run_id, self.task_id, Status::Skipped, reason);
                RunOutput::Result {
                    result,
                    exit_code: 1,
                    hint: None,
                }
            }
            Ok(Finished::Done(result)) => {
                // A run that finished, and so has no error to take a code from: it
                // succeeded, or ran and did not (failed, escalate).
                let exit_code = u8::from(result.status != Status::Success);
                RunOutput::Result {
                    result,
                    exit_code,
                    hint: None,
                }
            }
            Err(error) => {
                let mut message = error.to_string();
                if let Some(n) = self.unrestored {
                    message = format!(
                        "{message}; the working tree may still hold attempt {n}'s code: undo it with `execute-local-task rollback {}`",
                        self.run_id
                    );
                }
                let result = self.fail(ErrorInfo {
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

    /// Records how an attempt ended: every attempt, whatever ended it, goes through here.
    fn settle(&mut self, mut attempt: Attempt, outcome: Outcome, error: Option<String>) {
        attempt.outcome = outcome;
        attempt.error = error;
        self.attempts.push(attempt);
    }

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
            // The validator's tokens are the run's local tokens too.
            if let Some(validator) = &attempt.validator {
                usage.add(&validator.usage);
            }
        }
        TaskResult {
            attempts: self.attempts.clone(),
            model: self.model.clone(),
            usage,
            git: self.git.clone(),
            triage: self.triage.clone(),
            route: self.route.clone(),
            notes: self.notes.clone(),
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ..result
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Finished {
    Done(TaskResult),
    DryRun(serde_json::Value),
    /// A batch stopped before this run's first model call (the reason, for its summary).
    NotRun(String),
}

/// The stages after the repository was found: the run records itself, then prepares.
async fn run_opened(
    opened: Opened,
    spec: &SpecInput,
    options: &RunOptions,
    server: Option<Connected>,
    env: &Env,
    progress: Progress<'_>,
    state: &mut RunState,
) -> Result<Finished> {
    // The run's mark, before any later stage can fail: `rollback --last` means this run
    // now (even one a dirty target or a missing context file stops), and the result's run
    // id is one `rollback` knows. A dry run is not a run and leaves no mark.
    let journal = if options.dry_run {
        None
    } else {
        let journal = Journal::begin(&opened.repo, &opened.spec.task_id)?;
        journal.run_id().clone_into(&mut state.run_id);
        if let Some(sink) = &options.run_id_sink {
            sink.send_replace(Some(state.run_id.clone()));
        }
        Some(journal)
    };
    let prepared = {
        let (options, env) = (options.clone(), Arc::clone(env));
        off_thread(move || opened.prepare(&options, &*env))
    };
    let prepared = match options.cancel.or_cancel(prepared).await? {
        Ok(prepared) => prepared,
        Err(unprepared) => {
            state.git = unprepared.git;
            return Err(unprepared.error);
        }
    };
    state.git = Some(prepared.git.clone());
    state.triage = Some(prepared.triage.clone());
    state.route.clone_from(&prepared.route);
    let Some(journal) = journal else {
        return Ok(Finished::DryRun(prepared.dry_run(options)));
    };
    state.facts = Some(crate::record::Facts::of(&prepared, spec, options));
    Box::pin(run_prepared(
        prepared, journal, options, server, env, progress, state,
    ))
    .await
}

/// The stages from the model on, for a prepared run.
async fn run_prepared(
    prepared: Prepared,
    journal: Journal,
    options: &RunOptions,
    server: Option<Connected>,
    env: &Env,
    progress: Progress<'_>,
    state: &mut RunState,
) -> Result<Finished> {
    prune::at_start(&prepared.repo, &**env);
    if let Some(result) = missing_test_program(&prepared, options, state).await? {
        return Ok(Finished::Done(result));
    }
    let ladder = Ladder::start(&prepared, options, server, env, progress).await?;
    for note in &ladder.server().notes {
        progress(note);
    }
    state.model = Some(ladder.model_info());
    // In a batch, the first call waits its turn here; a batch that stopped meanwhile
    // ends the run before it has written anything, and its journal goes with it.
    let first_permit = match &options.model_gate {
        None => None,
        Some(pass) => match pass.first(&options.cancel).await {
            Ok(permit) => Some(permit),
            Err(reason) => {
                journal.discard();
                return Ok(Finished::NotRun(reason));
            }
        },
    };
    Box::pin(
        Attempts {
            first_permit,
            prepared,
            options,
            progress,
            ladder,
            journal,
            state,
            last_exchange: None,
            last_tested: None,
            cannot_start: None,
        }
        .run(),
    )
    .await
}

/// A typo in the test command should not cost a whole model call first: the result of a
/// run whose test program is not found.
async fn missing_test_program(
    prepared: &Prepared,
    options: &RunOptions,
    state: &RunState,
) -> Result<Option<TaskResult>> {
    let Some(command) = prepared
        .spec
        .test_command
        .as_deref()
        .filter(|_| !options.no_test)
    else {
        return Ok(None);
    };
    let missing = options
        .cancel
        .or_cancel(test_run::missing_program(
            command,
            prepared.repo.root(),
            &prepared.spec.outputs,
        ))
        .await?;
    Ok(missing.map(|program| {
        state.finish(
            Status::Failed,
            format!(
                "failed: the test command `{command}` could not start: `{program}` is not found; \
                 fix test_command in the spec or install `{program}` (the model was not called)"
            ),
            Vec::new(),
            None,
        )
    }))
}

/// The attempt loop: what each attempt reads, and what one leaves for the next.
struct Attempts<'a> {
    prepared: Prepared,
    options: &'a RunOptions,
    progress: Progress<'a>,
    /// Which server each call goes to: fallback and escalation live there.
    ladder: Ladder,
    journal: Journal,
    state: &'a mut RunState,
    /// Only the latest failed attempt goes back to the model, as its own turn (see
    /// `written_turn`) followed by what went wrong: local context windows are small.
    last_exchange: Option<(String, Failure)>,
    /// The last attempt whose code was written and tested: the test the result reports,
    /// and what `--keep-failed` leaves in the tree.
    last_tested: Option<Tested>,
    /// Set when the test command cannot start: no later attempt could pass it.
    cannot_start: Option<String>,
    /// A batch's leave for the first model call, taken before the attempts began.
    first_permit: Option<crate::model_gate::Permit>,
}

/// A checked reply: the files to write or why it cannot be used, and the notes on it.
type Checked = (
    std::result::Result<Vec<(String, String)>, Failure>,
    Vec<String>,
);

/// What an attempt leads to.
#[allow(clippy::large_enum_variant)]
enum Next {
    Done(TaskResult),
    Repair,
    Stop,
    /// The writer's model call failed: only this error can be its server's fault, for a
    /// fallback or the ladder's end to take; a validator's failure is not the writer's.
    WriterFailed(Error),
}

impl Attempts<'_> {
    /// Attempts until one succeeds: `max_attempts` on each rung of the ladder, a failed
    /// server's call handed to its fallback, and at most `routing.max_calls` in all.
    async fn run(mut self) -> Result<Finished> {
        let (mut n, mut on_rung) = (0, 0);
        loop {
            if on_rung >= self.prepared.max_attempts {
                if self.cannot_start.is_some() {
                    break;
                }
                match self.ladder.climb(on_rung, self.progress).await? {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(why) => {
                        self.state.notes.push(why);
                        break;
                    }
                }
                self.state.model = Some(self.ladder.model_info());
                on_rung = 0;
            }
            if let Err(why) = self.ladder.call() {
                (self.progress)(&why);
                self.state.notes.push(why);
                break;
            }
            n += 1;
            match self.attempt(n).await {
                Ok(Next::Done(result)) => return Ok(Finished::Done(result)),
                Ok(Next::Stop) => break,
                Ok(Next::Repair) => on_rung += 1,
                Err(error) => return Err(error),
                Ok(Next::WriterFailed(error)) => {
                    if self.ladder.fall_back(&error, self.progress).await? {
                        self.state.model = Some(self.ladder.model_info());
                        continue;
                    }
                    let Some(why) = self.ladder.ends_climb(&error) else {
                        return Err(self.ladder.explain(error));
                    };
                    (self.progress)(&why);
                    self.state.notes.push(why);
                    break;
                }
            }
        }
        self.give_up().await.map(Finished::Done)
    }

    /// Model → extract → guard → write → test, for attempt `n`.
    async fn attempt(&mut self, n: u32) -> Result<Next> {
        let request = self.request(n)?;
        let (reply, model_ms) = match self.ask(n, &request).await {
            Ok(answer) => answer,
            Err(error) => return Ok(Next::WriterFailed(error)),
        };
        // How the model was chosen is said once, with the first attempt; a fallback or a
        // climb with the first attempt after it.
        let chosen = if n == 1 {
            self.ladder.server().notes.clone()
        } else {
            Vec::new()
        };
        let mut attempt = self.new_attempt(n, &request, model_ms, chosen);
        attempt.usage = reply.usage_for(&request);
        attempt.notes.extend(reply.notes.iter().cloned());
        let (reply, checked) = match self.check(reply).await {
            Ok(checked) => checked,
            Err(error) => return Err(self.interrupted(attempt, error)),
        };
        attempt.notes.extend(checked.1);
        let files = match checked.0 {
            Ok(files) => files,
            Err(failure) => {
                let turn = reply_turn(&reply.content, failure.outcome == Outcome::Truncated);
                return Ok(self.repair(attempt, turn, failure));
            }
        };
        let mut attempt = match self.validate(attempt, &files).await? {
            Ok(attempt) => attempt,
            Err(rejected) => return Ok(rejected),
        };
        let Prepared {
            spec,
            targets,
            language,
            ..
        } = &self.prepared;
        let verdict = write_and_test(
            &self.prepared.repo,
            &mut self.journal,
            &files,
            targets,
            spec,
            self.options,
            self.progress,
        )
        .await;
        match verdict {
            Err(error) => {
                // The attempt's reply and usage belong in the result all the same.
                self.state
                    .settle(attempt, Outcome::Error, Some(one_line(&error.to_string())));
                if self.journal.has_writes() {
                    self.state.unrestored = Some(n);
                }
                Err(error)
            }
            // The files as the tree holds them: the test may have rewritten them.
            Ok(TestVerdict::Passed(test, files)) => {
                attempt.notes.extend(replaced_link_notes(targets, &files));
                let changes = match self.changes(n, files).await {
                    Ok(changes) => changes,
                    Err(error) => return Err(self.interrupted(attempt, error)),
                };
                // A climbed ladder makes more calls than one rung's `max_attempts`.
                let summary = success_summary(
                    &changes,
                    test.as_ref(),
                    n,
                    self.prepared.max_attempts.max(n),
                );
                self.state.settle(attempt, Outcome::Ok, None);
                Ok(Next::Done(self.state.finish(
                    Status::Success,
                    summary,
                    changes,
                    test,
                )))
            }
            Ok(TestVerdict::CannotStart(message, test)) => {
                // No attempt can pass a test that cannot run: stop here.
                self.state
                    .settle(attempt, Outcome::TestFailed, Some(message.clone()));
                self.last_tested = Some(Tested { n, files, test });
                self.cannot_start = Some(message);
                Ok(Next::Stop)
            }
            Ok(TestVerdict::Failed(test)) => {
                let failure = test_failure(&test, spec.timeout_secs);
                let turn = written_turn(&files, targets, language);
                self.last_tested = Some(Tested {
                    n,
                    files,
                    test: Some(test),
                });
                Ok(self.repair(attempt, turn, failure))
            }
        }
    }

    /// The validator checkpoint ([`validator`]), between the guards and the write: a second
    /// model reviews the code before it is written, so its call never runs under the
    /// repository lock `write_and_test` takes. The attempt to go on with (its verdict on
    /// it), or what a rejection leads to.
    async fn validate(
        &mut self,
        mut attempt: Attempt,
        files: &[(String, String)],
    ) -> Result<std::result::Result<Attempt, Next>> {
        // Boxed: connecting is a large future, and callers hold many runs' at once.
        let review = Box::pin(validator::review(
            &self.prepared,
            self.options,
            self.progress,
            files,
        ));
        match review.await {
            Ok(Review::Pass(report)) => {
                attempt.validator = report;
                Ok(Ok(attempt))
            }
            Ok(Review::Reject(report, failure)) => {
                attempt.validator = Some(*report);
                let Prepared {
                    targets, language, ..
                } = &self.prepared;
                let turn = written_turn(files, targets, language);
                Ok(Err(self.repair(attempt, turn, failure)))
            }
            Err(error) => Err(self.interrupted(attempt, error)),
        }
    }

    /// Extraction and guards, off the async threads: a reply of megabytes takes a while,
    /// and a signal meanwhile must still stop the run at once.
    async fn check(&self, reply: ChatReply) -> Result<(ChatReply, Checked)> {
        let (spec, targets) = (
            Arc::clone(&self.prepared.spec),
            Arc::clone(&self.prepared.targets),
        );
        let language = self.prepared.language.clone();
        let cancel = self.options.cancel.clone();
        let work = off_thread(move || {
            stall_point("extract", Some(&cancel));
            let mut notes = Vec::new();
            let files = check_reply(&reply, &spec, &targets, &language, &mut notes);
            (reply, (files, notes))
        });
        self.options.cancel.or_cancel(work).await
    }

    /// The result's file changes and diffs, off the async threads. The diff reads a copy of
    /// the journal from disk; the run keeps its own (which holds the run directory's lock),
    /// so a signal during a long diff still undoes the attempt's code, as an interrupted
    /// run keeps none.
    async fn changes(&mut self, n: u32, files: Vec<(String, String)>) -> Result<Vec<FileChange>> {
        // Without a copy the diff is made here, as nothing could undo the code a signal
        // meanwhile would leave.
        let Ok(copy) = Journal::open(&self.prepared.repo, &self.state.run_id) else {
            return Ok(file_changes(&self.journal, &self.prepared.targets, &files));
        };
        let targets = Arc::clone(&self.prepared.targets);
        let cancel = self.options.cancel.clone();
        let diff = off_thread(move || {
            stall_point("diff", Some(&cancel));
            file_changes(&copy, &targets, &files)
        });
        match self.options.cancel.or_cancel(diff).await {
            Ok(changes) => Ok(changes),
            Err(error) => Err(self.undo_passed(n, error).await),
        }
    }

    /// Undoes attempt `n`'s tested code when `error` (a signal) ends the run before its
    /// result: under the repository lock, as every write and restore is. A file changed
    /// since the run wrote it is kept and reported as a conflict, as on the test's signal
    /// path; should the undo fail, the result says the tree may hold the attempt's code.
    async fn undo_passed(&mut self, n: u32, error: Error) -> Error {
        let restored = match lock::acquire(&self.prepared.repo, self.options.lock_timeout).await {
            Ok(_lock) => self.journal.restore(),
            Err(lock_error) => Err(lock_error),
        };
        if let Ok(restored) = restored {
            let why = matches!(error, Error::Interrupted(_)).then(|| error.to_string());
            return restored.conflict(why.as_deref()).unwrap_or(error);
        }
        if self.journal.has_writes() {
            self.state.unrestored = Some(n);
        }
        error
    }

    /// Records attempt `attempt` as ended by `error` (a signal, mostly), and gives the error.
    fn interrupted(&mut self, attempt: Attempt, error: Error) -> Error {
        self.state
            .settle(attempt, Outcome::Error, Some(one_line(&error.to_string())));
        error
    }

    /// Attempt `n`'s request: the task, and after a failed attempt that attempt's turn and
    /// what went wrong.
    fn request(&self, n: u32) -> Result<ChatRequest> {
        let mut messages = self.prepared.first_messages.clone();
        if let Some((turn, failure)) = &self.last_exchange {
            messages.push(Message::assistant(turn.clone()));
            messages.push(
                self.prepared
                    .templates
                    .repair_message(&self.prepared.spec, &failure.repair)?,
            );
        }
        let server = self.ladder.server();
        (self.progress)(&format!(
            "attempt {n}/{}: asking {} at {}",
            self.prepared.max_attempts,
            server.model,
            server.client.endpoint()
        ));
        let (temperature, max_tokens) = self.ladder.sampling();
        Ok(ChatRequest {
            model: server.model.clone(),
            messages,
            temperature,
            max_tokens,
            schema: None,
        })
    }

    /// The model's reply and the wall time of the call in milliseconds (its retries
    /// included); a call that failed is an attempt of its own.
    async fn ask(&mut self, n: u32, request: &ChatRequest) -> Result<(ChatReply, u64)> {
        // Held for the call only: the run's write and test leave the slot to others.
        let _permit = match (self.first_permit.take(), &self.options.model_gate) {
            (Some(permit), _) => Some(permit),
            (None, Some(pass)) => Some(pass.next(&self.options.cancel).await?),
            (None, None) => None,
        };
        let started = std::time::Instant::now();
        let reply = self
            .options
            .cancel
            .or_cancel(self.ladder.server().client.chat(request))
            .await
            .and_then(|reply| reply.map_err(Error::from));
        let model_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // A pool's reply names the member that answered: the result names it too.
        if let Ok(ChatReply {
            served_by: Some(member),
            ..
        }) = &reply
            && let Some(model) = &mut self.state.model
        {
            model.endpoint.clone_from(member);
        }
        if let Err(error) = &reply {
            let outcome = if matches!(error, Error::Model(_)) {
                Outcome::ModelError
            } else {
                Outcome::Error
            };
            let mut attempt = self.new_attempt(n, request, model_ms, Vec::new());
            attempt.outcome = outcome;
            self.state.settle(attempt, outcome, Some(error.to_string()));
        }
        reply.map(|reply| (reply, model_ms))
    }

    /// Attempt `n` as its model call left it: `notes` first, then what the ladder has to
    /// say (a fallback, a climb); the profile and model that made it.
    fn new_attempt(
        &mut self,
        n: u32,
        request: &ChatRequest,
        model_ms: u64,
        notes: Vec<String>,
    ) -> Attempt {
        Attempt {
            n,
            outcome: Outcome::Ok,
            error: None,
            usage: Usage::default(),
            model_ms: Some(model_ms),
            notes: notes.into_iter().chain(self.ladder.take_notes()).collect(),
            validator: None,
            profile: self.ladder.profile().map(str::to_owned),
            model: Some(request.model.clone()),
        }
    }

    /// Ends a failed attempt: its turn and failure go back to the model next.
    fn repair(&mut self, attempt: Attempt, turn: String, failure: Failure) -> Next {
        (self.progress)(&format!(
            "attempt {}/{}: {}",
            attempt.n, self.prepared.max_attempts, failure.repair.problem
        ));
        self.state.settle(
            attempt,
            failure.outcome,
            Some(failure.repair.problem.clone()),
        );
        self.last_exchange = Some((turn, failure));
        Next::Repair
    }

    /// The result of a run whose attempts all failed, or whose test cannot start.
    async fn give_up(mut self) -> Result<TaskResult> {
        let (status, what) = match self.cannot_start.take() {
            Some(message) => (Status::Failed, format!("failed: {message}")),
            None => (
                Status::Escalate,
                escalate_summary(
                    &self.prepared.spec,
                    &self.state.attempts,
                    self.options.max_tokens,
                ),
            ),
        };
        let left = leave_tree(
            &self.prepared.repo,
            &mut self.journal,
            &self.prepared.targets,
            self.last_tested.as_ref(),
            self.options,
            &self.state.run_id,
        )
        .await;
        if left.is_err() && self.journal.has_writes() {
            self.state.unrestored = self.last_tested.as_ref().map(|tested| tested.n);
        }
        let (changes, tree) = left?;
        Ok(self.state.finish(
            status,
            format!("{what}; {tree}"),
            changes,
            self.last_tested.and_then(|tested| tested.test),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Several runs can share a multi-thread runtime only if a run can move between its
    /// threads: this fails to compile when something the run holds across an `.await` is
    /// not `Send`.
    #[test]
    fn the_run_future_is_send() {
        let spec = SpecInput::File("spec.json".into());
        let options = RunOptions::new();
        let env: Env = Arc::new(|_: &str| None);
        let progress = |_: &str| {};
        let future = run(&spec, &options, None, &env, &progress);
        assert_send(&future);
    }

    /// Two runs at once in one process, on a runtime whose threads they may move between:
    /// each sees only its own repository, server and result (the demo's, on recorded
    /// replies: the first fails its test, the repair passes).
    #[test]
    fn two_runs_execute_concurrently_in_one_process() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let temp = tempfile::tempdir().expect("a temporary directory");
        let setups: Vec<_> = ["one", "two"]
            .iter()
            .map(|name| crate::demo::prepare(&temp.path().join(name)).expect("the demo"))
            .collect();
        let results = runtime.block_on(async {
            let runs = setups.iter().map(|setup| {
                let spec = SpecInput::File(setup.spec_path.clone());
                let options = RunOptions {
                    repo_dir: Some(setup.repo_dir.clone()),
                    ..RunOptions::new()
                };
                tokio::spawn(async move {
                    let env: Env = Arc::new(|_: &str| None);
                    let progress = |_: &str| {};
                    let server = crate::demo::recorded_server();
                    run(&spec, &options, Some(server), &env, &progress).await
                })
            });
            futures_util::future::join_all(runs).await
        });
        for (setup, output) in setups.iter().zip(results) {
            let Ok(RunOutput::Result { result, .. }) = output else {
                panic!("the run did not give a result");
            };
            assert_eq!(result.status, Status::Success, "{}", result.summary);
            assert_eq!(result.attempts.len(), 2);
            let written = setup.repo_dir.join("slugify.sh");
            assert!(written.exists(), "{}", written.display());
        }
    }
}
