//! A batch's model-call gate: `--jobs N` bounds the model calls in flight, not the
//! tasks, so up to N more tasks prepare or finish meanwhile; first calls keep the order
//! the tasks started in; a task started but not yet at the model when the batch stops
//! (`--fail-fast`, a signal) ends `skipped`, with no model call, no write and no record.

use std::path::Path;

use execute_local_task::batch::BatchStatus;
use execute_local_task::result::{Status, TaskResult};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::batch::{batch, lines, task};
use crate::harness::{Script, Test};

/// Waits (bounded only so a broken build cannot hang the suite) until `ready` holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// How many runs have begun their journal in the repository at `repo`: a task's run
/// begins it before it prepares and asks.
fn runs_begun(repo: &Path) -> usize {
    std::fs::read_dir(repo.join(".git/execute-local-task/runs"))
        .map_or(0, |entries| entries.flatten().count())
}

/// Whether the batch's record says some task ended without success (a failed test
/// with one attempt ends `escalate`).
fn a_task_failed(repo: &Path) -> bool {
    std::fs::read_dir(repo.join(".git/execute-local-task/batches"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            std::fs::read_to_string(entry.path())
                .is_ok_and(|text| text.contains("\"status\": \"escalate\""))
        })
}

fn held(scratch: &Path, path: &str, release: &Path) -> Script {
    let Script::Chat(chat) = Script::code(path, "held\n") else {
        unreachable!("a code reply is a chat")
    };
    Script::Held {
        arrived: scratch.join(format!("arrived-{}", path.replace('/', "-"))),
        release: release.to_path_buf(),
        chat,
    }
}

fn outcome<'a>(results: &'a [TaskResult], id: &str) -> &'a TaskResult {
    results
        .iter()
        .find(|result| result.task_id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no result for {id}"))
}

/// `--jobs 2`: while two replies are held, a third task has begun its run (it prepares
/// meanwhile) but makes no third call; once they are let go it asks, and all succeed.
#[test]
fn jobs_bounds_the_model_calls_in_flight_while_more_tasks_prepare() {
    let scratch = tempfile::tempdir().unwrap();
    let release = scratch.path().join("release");
    let go = release.clone();
    let mut test = Test::new();
    let mut specs = Vec::new();
    for id in ["H1", "H2", "H3"] {
        let path = format!("{}.txt", id.to_lowercase());
        test = test.route(
            &format!("<<{id}>>"),
            vec![held(scratch.path(), &path, &release)],
        );
        specs.push((format!("{id}.json"), task(id, &path, &json!({}))));
    }
    let repo = test.repo_path();
    let test = test.during(move |running| {
        wait_until("two calls held and a third run begun", || {
            running.chat_requests() >= 2 && runs_begun(&repo) >= 3
        });
        assert_eq!(
            running.chat_requests(),
            2,
            "a third call while two are held"
        );
        std::fs::write(&go, "").unwrap();
    });
    let specs: Vec<(&str, serde_json::Value)> = specs
        .iter()
        .map(|(name, spec)| (name.as_str(), spec.clone()))
        .collect();
    let run = batch(test, &specs, &["--jobs", "2"]);
    run.assert_code(0);
    let (_, summary) = lines(&run);
    assert_eq!(summary.counts.success, 3, "{}", run.stdout);
    assert_eq!(run.max_in_flight, 2);
    assert_eq!(run.requests.len(), 3);
}

/// `--fail-fast`: A fails its test while H1 and H2 are at the model and W, started after
/// them, waits its turn: H1 and H2 finish, W makes no call and is `skipped` saying why,
/// leaving no run behind; nothing more is asked after the failure.
#[test]
fn fail_fast_stops_a_started_task_before_its_model_call() {
    let scratch = tempfile::tempdir().unwrap();
    let (testing, fail, release) = (
        scratch.path().join("testing"),
        scratch.path().join("fail"),
        scratch.path().join("release"),
    );
    let specs = vec![
        (
            "a.json",
            task(
                "A",
                "a.txt",
                &json!({"max_attempts": 1, "test_command": format!(
                    "touch {}; while [ ! -e {} ]; do sleep 0.05; done; exit 1",
                    testing.display(),
                    fail.display()
                )}),
            ),
        ),
        ("h1.json", task("H1", "h1.txt", &json!({}))),
        ("h2.json", task("H2", "h2.txt", &json!({}))),
        ("w.json", task("W", "w.txt", &json!({}))),
    ];
    let test = Test::new()
        .route("<<A>>", vec![Script::code("a.txt", "a\n")])
        .route("<<H1>>", vec![held(scratch.path(), "h1.txt", &release)])
        .route("<<H2>>", vec![held(scratch.path(), "h2.txt", &release)])
        .route("<<W>>", vec![Script::code("w.txt", "w\n")]);
    let repo = test.repo_path();
    let seen = (testing.clone(), fail.clone(), release.clone());
    let test = test.during(move |running| {
        let (testing, fail, release) = seen;
        wait_until("A testing, H1 and H2 at the model", || {
            testing.exists() && running.chat_requests() >= 3
        });
        std::fs::write(&fail, "").unwrap();
        wait_until("A's failure recorded", || a_task_failed(&repo));
        std::fs::write(&release, "").unwrap();
    });
    let run = batch(test, &specs, &["--jobs", "2", "--fail-fast"]);
    run.assert_code(1);
    let (results, summary) = lines(&run);
    assert_eq!(
        outcome(&results, "A").status,
        Status::Escalate,
        "{}",
        run.stdout
    );
    assert_eq!(outcome(&results, "H1").status, Status::Success);
    assert_eq!(outcome(&results, "H2").status, Status::Success);
    let skipped = outcome(&results, "W");
    assert_eq!(skipped.status, Status::Skipped);
    assert!(
        skipped.summary.contains("--fail-fast"),
        "{}",
        skipped.summary
    );
    assert_eq!(summary.counts.skipped, 1);
    assert_eq!(run.requests.len(), 3, "no call after the failure");
    assert!(run.read("w.txt").is_none());
    assert_eq!(runs_begun(&run.repo), 3, "W left no run behind");
    let logged: Vec<_> = run
        .ledger_runs()
        .into_iter()
        .filter_map(|logged| logged.task_id)
        .collect();
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert!(!logged.iter().any(|id| id == "W"), "{logged:?}");
}

/// A signal while two calls hang and a third task waits its turn: the two are
/// interrupted, the third is `skipped` without a call and leaves no run, and a dependent
/// is skipped; nothing is written.
#[test]
fn an_interrupt_skips_a_started_task_that_had_not_reached_the_model() {
    let specs = vec![
        ("h1.json", task("H1", "h1.txt", &json!({}))),
        ("h2.json", task("H2", "h2.txt", &json!({}))),
        ("h3.json", task("H3", "h3.txt", &json!({}))),
        ("q.json", task("Q", "q.txt", &json!({"depends_on": ["H1"]}))),
    ];
    let test = Test::new()
        .route("<<H1>>", vec![Script::Hang])
        .route("<<H2>>", vec![Script::Hang])
        .route("<<H3>>", vec![Script::Hang]);
    let repo = test.repo_path();
    let test = test.during(move |running| {
        wait_until("two calls hanging and a third run begun", || {
            running.chat_requests() >= 2 && runs_begun(&repo) >= 3
        });
        running.signal(Signal::SIGTERM);
    });
    let run = batch(test, &specs, &["--jobs", "2"]);
    run.assert_code(143);
    let (results, summary) = lines(&run);
    assert_eq!(summary.status, BatchStatus::Interrupted);
    for id in ["H1", "H2"] {
        let stopped = outcome(&results, id);
        assert_eq!(
            stopped.error.as_ref().map(|e| e.kind.as_str()),
            Some("interrupted"),
            "{}",
            run.stdout
        );
    }
    let waiting = outcome(&results, "H3");
    assert_eq!(waiting.status, Status::Skipped, "{}", run.stdout);
    assert!(
        waiting
            .summary
            .contains("before this task reached the model"),
        "{}",
        waiting.summary
    );
    assert_eq!(outcome(&results, "Q").status, Status::Skipped);
    assert_eq!(run.requests.len(), 2);
    assert_eq!(runs_begun(&run.repo), 2, "H3 left no run behind");
    assert!(
        !run.ledger_runs()
            .iter()
            .any(|logged| logged.task_id.as_deref() == Some("H3")),
        "H3 is not in the ledger"
    );
    run.assert_unchanged();
}
