//! What the ledger records beyond a run's outcome: its triage, and for a branch run its
//! repository, branch, base and commit (the commit is made after the run is recorded);
//! and a batch's `apply`, `merge` and `discard` recorded against each of its runs.

use std::path::Path;

use execute_local_task::bring_in::BatchBringInReport;
use execute_local_task::ledger::LoggedRun;
use serde_json::json;

use crate::batch::{batch, fixture, lines, with_replies};
use crate::harness::{Run, Script, Test, spec};

/// One text column of run `run_id`'s row.
fn column(ledger: &Path, name: &str, run_id: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(ledger).expect("open the ledger");
    conn.query_row(
        &format!("SELECT {name} FROM runs WHERE run_id = ?1"),
        [run_id],
        |row| row.get(0),
    )
    .expect("query the ledger")
}

fn triage_of(ledger: &Path, run_id: &str) -> (Option<f64>, Option<String>) {
    let conn = rusqlite::Connection::open(ledger).expect("open the ledger");
    conn.query_row(
        "SELECT triage_score, triage_verdict FROM runs WHERE run_id = ?1",
        [run_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .expect("query the ledger")
}

/// `log --json`, each run read into its type.
fn log_json(run: &Run) -> Vec<LoggedRun> {
    let (code, stdout, stderr) = run.again(&["log", "--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}:\n{stdout}"))
}

/// A run in place records its triage, and no branch.
#[test]
fn a_run_in_place_records_its_triage_and_no_branch() {
    let run = Test::new()
        .spec(spec("src/add.py", &json!({"test_command": "true"})))
        .script(Script::code(
            "src/add.py",
            "def add(a, b):\n    return a + b\n",
        ))
        .run();
    run.assert_code(0);
    let result = run.result();
    let triage = result.triage.expect("the result's triage");
    let verdict = serde_json::to_value(triage.verdict).unwrap();
    let ledger = run.ledger_path();
    assert_eq!(
        triage_of(&ledger, &result.run_id),
        (
            Some(f64::from(triage.score)),
            verdict.as_str().map(str::to_owned)
        )
    );
    for name in ["branch", "base", "commit_id"] {
        assert_eq!(column(&ledger, name, &result.run_id), None, "{name}");
    }
    let [logged] = log_json(&run).try_into().expect("one run in the log");
    assert_eq!(logged.triage_score, Some(triage.score));
    assert_eq!(logged.triage_verdict.as_deref(), verdict.as_str());
    assert_eq!(logged.branch, None);
}

/// A branch run's row names the user's repository (not the task worktree it ran in), its
/// branch, base and the commit made after the run was recorded; a failed one has its
/// branch and base, and no commit.
#[test]
fn a_branch_run_records_its_repository_branch_base_and_commit() {
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "grep -q new out.txt"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .arg("--branch")
        .run();
    run.assert_code(0);
    let result = run.result();
    assert!(result.notes.is_empty(), "{:?}", result.notes);
    let ledger = run.ledger_path();
    let id = &result.run_id;
    assert_eq!(column(&ledger, "branch", id), result.branch);
    assert_eq!(column(&ledger, "base", id), result.base);
    assert_eq!(column(&ledger, "commit_id", id), result.commit);
    assert!(result.commit.is_some());
    let root = std::fs::canonicalize(&run.repo).unwrap();
    assert_eq!(
        column(&ledger, "repo_root", id).map(std::path::PathBuf::from),
        Some(root)
    );
    assert!(triage_of(&ledger, id).0.is_some());
    let [logged] = log_json(&run).try_into().expect("one run in the log");
    assert_eq!(
        (logged.branch, logged.base, logged.commit_id),
        (result.branch, result.base, result.commit)
    );

    let failed = Test::new()
        .file("out.txt", "old\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "grep -q fixed out.txt", "max_attempts": 1}),
        ))
        .script(Script::code("out.txt", "broken\n"))
        .arg("--branch")
        .run();
    failed.assert_code(1);
    let result = failed.result();
    let ledger = failed.ledger_path();
    assert_eq!(
        column(&ledger, "branch", &result.run_id).as_deref(),
        Some("local-task/T-001")
    );
    assert_eq!(column(&ledger, "base", &result.run_id), result.base);
    assert_eq!(column(&ledger, "commit_id", &result.run_id), None);
}

/// The kinds of the events recorded against `run_id`, in order.
fn events_of(ledger: &Path, run_id: &str) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(ledger).expect("open the ledger");
    let mut statement = conn
        .prepare("SELECT kind, coalesce(detail, '') FROM events WHERE run_id = ?1 ORDER BY id")
        .unwrap();
    statement
        .query_map([run_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn bring_in(run: &Run, verb: &str, batch_id: &str) -> BatchBringInReport {
    let (code, stdout, stderr) = run.again(&[verb, batch_id]);
    assert_eq!(code, 0, "{verb}: {stdout}\n{stderr}");
    assert!(!stderr.contains("note:"), "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}:\n{stdout}"))
}

/// `apply`, `merge` and `discard` of a batch record one event against each run they
/// touch, naming the batch, as the verbs on one run do.
#[test]
fn a_batchs_apply_merge_and_discard_are_recorded_against_each_run() {
    let specs: Vec<_> = fixture().into_iter().take(3).collect();
    let run = batch(with_replies(Test::new()), &specs, &["--branch"]);
    run.assert_code(0);
    let (results, summary) = lines(&run);
    let ledger = run.ledger_path();
    let report = bring_in(&run, "apply", &summary.batch_id);
    assert_eq!(report.runs.len(), 3);
    let (code, _, stderr) = run.again(&["rollback", report.rollback.as_deref().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    bring_in(&run, "merge", &summary.batch_id);
    bring_in(&run, "discard", &summary.batch_id);
    for result in &results {
        let events = events_of(&ledger, &result.run_id);
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(kinds, ["apply", "merge", "discard"], "{}", result.run_id);
        for (kind, detail) in &events {
            assert!(detail.contains(&summary.batch_id), "{kind}: {detail}");
        }
    }
}

/// A ledger that cannot take the branch's commit never costs the commit: the run
/// succeeds, its branch holds the commit, and its notes say the record is missing.
#[test]
fn a_ledger_that_cannot_be_written_never_costs_a_branch_runs_commit() {
    let scratch = tempfile::tempdir().unwrap();
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "grep -q new out.txt"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .env("LOCAL_TASK_LEDGER", scratch.path().to_str().unwrap())
        .arg("--branch")
        .run();
    run.assert_code(0);
    let result = run.result();
    let commit = result.commit.clone().expect("the commit");
    assert_eq!(
        crate::branches::git_out(&run.repo, &["rev-parse", "local-task/T-001"]),
        commit
    );
    assert!(
        result.notes.iter().any(|note| note
            .starts_with("the run's branch and commit are not recorded in the run ledger")),
        "{:?}",
        result.notes
    );
}
