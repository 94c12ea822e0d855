//! Recording a finished run in the ledger: what of a run goes into its record, the
//! repository's stable identity, and the note a result carries when its record is
//! missing. Every run the library finishes comes through here (the command line, a batch's
//! tasks, later the MCP server), dry runs and runs that never started excepted.
//!
//! A ledger that cannot be opened or written never fails a run nor changes what it did:
//! the run's code is already written and tested when it is recorded, and the result then
//! says in `notes` that its record is missing and why.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::blocking::off_thread;
use crate::error::{Error, Result};
use crate::ledger::{self, AttemptRecord, FileRecord, Ledger, RunRecord};
use crate::pipeline::{Env, Prepared, RunOptions, RunOutput, SpecInput};
use crate::result::{Phase, ReviewAdvice, Status, TaskResult};
use crate::savings::{self, Savings};
use crate::trust::{self, RunFacts, Thresholds};

/// What a record needs of a run that its result does not say, taken when it started.
pub(crate) struct Facts {
    spec: SpecInput,
    kind: String,
    batch_id: Option<String>,
    root: PathBuf,
    state_dir: PathBuf,
    /// The first request's messages and the outputs' fence language, for `export`.
    messages: Vec<crate::model::Message>,
    language: String,
    /// The ledger's place and numbers from the configuration the run loaded at prepare.
    /// Boxed: the run's future carries these facts, and must stay small.
    settings: Box<crate::config::LedgerSettings>,
}

impl Facts {
    pub(crate) fn of(prepared: &Prepared, spec: &SpecInput, options: &RunOptions) -> Self {
        Self {
            spec: spec.clone(),
            kind: prepared.spec.kind.as_str().to_owned(),
            batch_id: options.batch_id.clone(),
            root: prepared.repo.root().to_path_buf(),
            state_dir: prepared.repo.state_dir(),
            messages: prepared.first_messages.clone(),
            language: prepared.language.clone(),
            settings: Box::new(prepared.config.ledger_settings()),
        }
    }
}

/// Records the run `output` reports, and says on its result whether it needs review; notes
/// on its result when it could not be recorded.
pub(crate) async fn finish(output: &mut RunOutput, facts: Facts, env: &Env) {
    let RunOutput::Result { result, .. } = output else {
        return;
    };
    let snapshot = result.clone();
    let env = std::sync::Arc::clone(env);
    // The run's code is written already: even a panic while recording must leave the
    // process to print its result.
    let recorded = off_thread(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            record(&snapshot, &facts, &*env)
        }))
    })
    .await;
    let Ok((review, savings, recorded)) = recorded else {
        result.notes.push(
            "this run is not recorded in the run ledger (recording it failed unexpectedly); `log`, `review` and the trust lifecycle will not know it".to_owned(),
        );
        return;
    };
    result.review = Some(review);
    result.savings = Some(savings);
    if let Err(error) = recorded {
        result.notes.push(format!(
            "this run is not recorded in the run ledger ({error}); `log`, `review` and the trust lifecycle will not know it"
        ));
    }
}

fn record(
    result: &TaskResult,
    facts: &Facts,
    env: &dyn Fn(&str) -> Option<String>,
) -> (ReviewAdvice, Savings, Result<()>) {
    let spec = spec_bytes(&facts.spec);
    let savings = savings::estimate(
        result,
        spec.as_ref().map_or(0, |b| b.len() as u64),
        &facts.settings,
    );
    let unknown = || ReviewAdvice {
        required: true,
        phase: Phase::Calibrate,
        why: "the run ledger could not be read, so there is no record to go by: review the run"
            .to_owned(),
    };
    let mut ledger = match Ledger::open_configured(env, &facts.settings) {
        Ok(ledger) => ledger,
        Err(error) => return (unknown(), savings, Err(error)),
    };
    let mut run = run_record(result, facts);
    run.spec_hash = spec.as_deref().and_then(spec_hash);
    run.saved_gross = Some(savings.gross);
    run.saved_net = Some(savings.net);
    let review = match advice(&mut ledger, result, &run, &facts.settings.trust) {
        Ok(review) => review,
        Err(error) => return (unknown(), savings, Err(error)),
    };
    run.review_required = Some(review.required);
    run.review_phase = Some(review.phase.as_str().to_owned());
    let recorded = ledger.record(&run);
    (review, savings, recorded)
}

/// Whether `result` needs review, from the record of its (kind, model) pair: in this
/// repository, or in all when this one has too few reviewed runs of the pair to go by.
fn advice(
    ledger: &mut Ledger,
    result: &TaskResult,
    run: &RunRecord,
    t: &Thresholds,
) -> Result<ReviewAdvice> {
    let kind = run.kind.clone().unwrap_or_default();
    let model = run.model.clone().unwrap_or_default();
    let (standing, scope) = trust::pair_standing(ledger, &kind, &model, Some(&run.repo_id), t)?;
    let facts = RunFacts {
        run_id: &result.run_id,
        succeeded: result.status == Status::Success,
        tested: result.test.is_some(),
        changed_lines: result
            .files
            .iter()
            .map(|f| f.lines_added + f.lines_removed)
            .sum(),
    };
    let model = if model.is_empty() { "no model" } else { &model };
    Ok(trust::advise(
        &standing,
        &facts,
        t,
        &format!("{kind} by {model}"),
        &scope,
    ))
}

/// The ledger's row for `result`.
fn run_record(result: &TaskResult, facts: &Facts) -> RunRecord {
    let ended = time::OffsetDateTime::now_utc();
    let duration = time::Duration::milliseconds(i64::try_from(result.duration_ms).unwrap_or(0));
    let model = result.model.as_ref();
    RunRecord {
        run_id: result.run_id.clone(),
        batch_id: facts.batch_id.clone(),
        repo_root: facts.root.display().to_string(),
        repo_id: identity(&facts.root, &facts.state_dir),
        task_id: result.task_id.clone(),
        kind: Some(facts.kind.clone()),
        spec_hash: None,
        // The profile routing picked and why (null without profiles).
        profile: result.route.as_ref().and_then(|r| r.profile.clone()),
        route_reason: result.route.as_ref().map(|r| r.reason.clone()),
        provider: model.map(|m| m.provider.clone()),
        model: model.map(|m| m.name.clone()),
        endpoint: model.map(|m| redact(&m.endpoint)),
        status: status_name(result.status).to_owned(),
        error_kind: result.error.as_ref().map(|e| e.kind.clone()),
        error_message: result.error.as_ref().map(|e| e.message.clone()),
        summary: result.summary.clone(),
        test_command: result.test.as_ref().map(|t| t.command.clone()),
        test_passed: result.test.as_ref().map(|t| t.passed),
        test_ms: result.test.as_ref().map(|t| t.duration_ms),
        prompt_tokens: result.usage.prompt_tokens,
        completion_tokens: result.usage.completion_tokens,
        tokens_estimated: result.usage.estimated,
        branch: None,
        review_required: None,
        review_phase: None,
        saved_gross: None,
        saved_net: None,
        exchange: (result.status == Status::Success)
            .then(|| exchange(result, facts))
            .flatten(),
        triage_score: result.triage.as_ref().map(|t| t.score),
        triage_verdict: result.triage.as_ref().map(|t| serde_name(&t.verdict)),
        started_at: ledger::timestamp(ended - duration),
        ended_at: ledger::timestamp(ended),
        duration_ms: result.duration_ms,
        attempts: result
            .attempts
            .iter()
            .map(|attempt| AttemptRecord {
                n: attempt.n,
                outcome: serde_name(&attempt.outcome),
                error: attempt.error.clone(),
                profile: attempt.profile.clone(),
                model: attempt
                    .model
                    .clone()
                    .or_else(|| model.map(|m| m.name.clone())),
                prompt_tokens: attempt.usage.prompt_tokens,
                completion_tokens: attempt.usage.completion_tokens,
                model_ms: attempt.model_ms,
            })
            .collect(),
        files: result
            .files
            .iter()
            .map(|file| FileRecord {
                path: file.path.clone(),
                action: serde_name(&file.action),
                bytes: file.bytes,
                lines_added: file.lines_added,
                lines_removed: file.lines_removed,
            })
            .collect(),
    }
}

/// A successful run's first request and its accepted code, as the reply the prompt asks
/// for (a fence with the language and path per file), read back from the tree.
fn exchange(result: &TaskResult, facts: &Facts) -> Option<(String, String)> {
    let messages = serde_json::to_string(&facts.messages).ok()?;
    let mut reply = String::new();
    for file in &result.files {
        let content = std::fs::read_to_string(facts.root.join(&file.path)).ok()?;
        let fence = "`".repeat(longest_backtick_run(&content).max(2) + 1);
        let newline = if content.ends_with('\n') { "" } else { "\n" };
        let _ = writeln!(
            reply,
            "{fence}{} path={}\n{content}{newline}{fence}",
            facts.language, file.path
        );
    }
    Some((messages, reply))
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Success => "success",
        Status::Failed => "failed",
        Status::Escalate => "escalate",
        Status::Error => "error",
        Status::Skipped => "skipped",
    }
}

/// A unit enum's name as the result JSON spells it.
fn serde_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The spec's text, as the supervisor wrote it.
fn spec_bytes(spec: &SpecInput) -> Option<Vec<u8>> {
    match spec {
        SpecInput::File(path) => std::fs::read(path).ok(),
        SpecInput::Text { text, .. } => Some(text.clone().into_bytes()),
    }
}

/// The git blob id of the spec's text: the same spec gives the same hash on every machine.
fn spec_hash(bytes: &[u8]) -> Option<String> {
    git2::Oid::hash_object(git2::ObjectType::Blob, bytes)
        .ok()
        .map(|oid| oid.to_string())
}

/// The endpoint without the password a URL may carry: the ledger is a plain file others
/// may read.
pub fn redact(endpoint: &str) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("redacted"));
            url.to_string()
        }
        // No password, or not a URL at all (a cassette's path).
        _ => endpoint.to_owned(),
    }
}

/// A repository's identity that stays the same wherever it is cloned or moved: its root
/// commit (the hash of the sorted root commits when history has several), else its path
/// for a repository without commits. Walking the history is done once and kept in the
/// tool's state directory, since root commits never change.
pub(crate) fn identity(root: &Path, state_dir: &Path) -> String {
    let cache = state_dir.join("repo-identity");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        let text = text.trim();
        if !text.is_empty() {
            return text.to_owned();
        }
    }
    let Some(id) = root_commits(root) else {
        return format!("path:{}", root.display());
    };
    // Renamed into place, so a concurrent run never reads half an id; a failure only
    // costs the next run the walk.
    if let Ok(mut temp) = tempfile::NamedTempFile::new_in(state_dir) {
        use std::io::Write as _;
        if temp.write_all(id.as_bytes()).is_ok() {
            let _ = temp.persist(&cache);
        }
    }
    id
}

fn root_commits(root: &Path) -> Option<String> {
    let repo = git2::Repository::open(root).ok()?;
    let mut walk = repo.revwalk().ok()?;
    walk.push_head().ok()?;
    let mut roots: Vec<String> = walk
        .filter_map(std::result::Result::ok)
        .filter(|oid| {
            repo.find_commit(*oid)
                .is_ok_and(|commit| commit.parent_count() == 0)
        })
        .map(|oid| oid.to_string())
        .collect();
    roots.sort();
    match roots.len() {
        0 => None,
        1 => roots.pop(),
        _ => git2::Oid::hash_object(git2::ObjectType::Blob, roots.join("\n").as_bytes())
            .ok()
            .map(|oid| oid.to_string()),
    }
}

/// Undoes a run ([`crate::rollback::rollback`]) and records that against it; the note
/// says when the record is missing (the rollback is done either way).
pub async fn rollback(
    dir: &Path,
    which: crate::rollback::Which<'_>,
    force: bool,
    lock_timeout: std::time::Duration,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(crate::rollback::RollbackReport, Option<String>)> {
    let report = crate::rollback::rollback(dir, which, force, lock_timeout).await?;
    let missing = if report.nothing_to_undo.is_none() {
        event(&report.run_id, "rollback", Some(&report.describe()), env)
    } else {
        None
    };
    Ok((report, missing))
}

/// Undoes every run of batch `batch_id` ([`crate::rollback::rollback_batch`]) and records
/// each run's rollback against it, with the batch's id; the notes say which records are
/// missing (the rollback is done either way, and so are the records of runs undone before
/// a stop).
pub async fn rollback_batch(
    dir: &Path,
    batch_id: &str,
    force: bool,
    lock_timeout: std::time::Duration,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> (Result<crate::rollback::BatchRollbackReport>, Vec<String>) {
    let mut missing = Vec::new();
    let report = crate::rollback::rollback_batch(dir, batch_id, force, lock_timeout, &mut |run| {
        let detail = format!("batch {batch_id}: {}", run.describe());
        missing.extend(event(&run.run_id, "rollback", Some(&detail), env));
    })
    .await;
    (report, missing)
}

/// Records an `apply`, `merge` or `discard` of a branch run against that run; what went
/// wrong otherwise, for a note (the action is done either way).
pub fn bring_in(
    report: &crate::bring_in::BringInReport,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    event(&report.run_id, verb_of(report), Some(&report.summary), env)
}

/// Records where branch run `record` is (its repository, branch, base and commit) on its
/// ledger row, once the commit is made; what went wrong otherwise, for a note (the
/// commit is made either way).
pub(crate) fn branch(
    root: &Path,
    record: &crate::runs::BranchRecord,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let root = root.display().to_string();
    let place = ledger::BranchPlace {
        repo_root: &root,
        branch: &record.branch,
        base: &record.base,
        commit: record.commit.as_deref(),
    };
    // The repository's config cannot move the ledger, but it is read to find the user's.
    let recorded = crate::config::ledger_settings(Some(Path::new(&root)), env)
        .and_then(|settings| Ledger::open_configured(env, &settings))
        .and_then(|mut ledger| ledger.set_branch(&record.run_id, &place));
    recorded.err().map(|error| {
        format!(
            "the run's branch and commit are not recorded in the run ledger ({error}); `git branch` and `execute-local-task runs` still show them"
        )
    })
}

/// Records one run's part of an `apply`, `merge` or `discard` of batch `batch_id` against
/// that run, naming the batch; what went wrong otherwise, for a note.
pub fn bring_in_batch(
    batch_id: &str,
    report: &crate::bring_in::BringInReport,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let detail = format!("batch {batch_id}: {}", report.summary);
    event(&report.run_id, verb_of(report), Some(&detail), env)
}

/// The event a report's status records: `apply`, `merge` or `discard`.
fn verb_of(report: &crate::bring_in::BringInReport) -> &'static str {
    match report.status.as_str() {
        "applied" => "apply",
        "merged" => "merge",
        _ => "discard",
    }
}

/// Records `kind` (e.g. `rollback`) against run `run_id`; what went wrong otherwise, for
/// a note. The action itself is done either way.
pub fn event(
    run_id: &str,
    kind: &str,
    detail: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let recorded: Result<()> =
        Ledger::open_default(env).and_then(|mut ledger| ledger.event(run_id, kind, detail));
    recorded.err().map(|error: Error| {
        format!("the {kind} of {run_id} is not recorded in the run ledger ({error})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch's task goes through the library's one run, as the command line's does: it
    /// is recorded with its batch id, and its result carries `review` and `savings`.
    #[test]
    fn a_run_the_library_makes_for_a_batch_is_recorded_with_its_batch_id() {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let setup = crate::demo::prepare(&temp.path().join("demo")).expect("the demo");
        let ledger = temp.path().join("ledger.db");
        let env: Env = {
            let ledger = ledger.display().to_string();
            std::sync::Arc::new(move |name: &str| {
                (name == "LOCAL_TASK_LEDGER").then(|| ledger.clone())
            })
        };
        let options = RunOptions {
            repo_dir: Some(setup.repo_dir.clone()),
            batch_id: Some("B-1".to_owned()),
            ..RunOptions::new()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let output = runtime.block_on(crate::pipeline::run(
            &SpecInput::File(setup.spec_path.clone()),
            &options,
            Some(crate::demo::recorded_server()),
            &env,
            &|_: &str| {},
        ));
        let RunOutput::Result { result, .. } = output else {
            panic!("the run did not give a result");
        };
        assert!(result.review.is_some() && result.savings.is_some());
        assert!(result.notes.is_empty(), "{:?}", result.notes);
        let runs = Ledger::open(&ledger)
            .expect("the ledger")
            .recent(10)
            .expect("its runs");
        let [run] = runs.as_slice() else {
            panic!("one run expected: {runs:?}");
        };
        assert_eq!(run.run_id, result.run_id);
        assert_eq!(run.batch_id.as_deref(), Some("B-1"));
    }

    #[test]
    fn a_password_in_the_endpoint_is_not_recorded() {
        assert_eq!(
            redact("http://user:s3cret@host:8080/v1"),
            "http://user:redacted@host:8080/v1"
        );
        assert_eq!(redact("http://127.0.0.1:11434"), "http://127.0.0.1:11434");
        assert_eq!(redact("cassette.json"), "cassette.json");
    }
}
