//! Batch runs over a spec directory: ordering by `depends_on`, refusals before anything
//! runs, skipped dependents, real overlap with `--jobs`, the same tree as a serial run,
//! interruption, `rollback <BATCH_ID>` and `--only-failed`. Output is read as JSON Lines,
//! each line into its type.

use std::path::Path;

use execute_local_task::batch::{BatchStatus, BatchSummary};
use execute_local_task::bring_in::BatchBringInReport;
use execute_local_task::result::{ErrorInfo, Status, TaskResult};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::branches::{git_out, git_state};
use crate::harness::{MODEL, ModelServer, Run, Script, Test, snapshot};

/// A spec whose description carries `<<id>>`, the needle its replies are routed by.
pub(crate) fn task(id: &str, output: &str, extra: &Value) -> Value {
    let mut spec = json!({
        "task_id": id,
        "description": format!("Task <<{id}>>: write the file."),
        "output_file": output,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

/// Twelve specs: a chain (A1 → A2 → A3), a diamond (D1 → D2, D3 → D4), two tasks writing
/// one file (S1, S2), a failing task and its dependent (F1 → F2), and an independent one.
pub(crate) fn fixture() -> Vec<(&'static str, Value)> {
    vec![
        ("a1.json", task("A1", "out/a1.txt", &json!({}))),
        (
            "a2.json",
            task(
                "A2",
                "out/a2.txt",
                &json!({"depends_on": ["A1"], "context_files": ["out/a1.txt"], "test_command": "test -f out/a1.txt"}),
            ),
        ),
        (
            "a3.json",
            task(
                "A3",
                "out/a3.txt",
                &json!({"depends_on": ["A2"], "test_command": "test -f out/a1.txt && test -f out/a2.txt"}),
            ),
        ),
        ("diamond/d1.json", task("D1", "out/d1.txt", &json!({}))),
        (
            "diamond/d2.json",
            task("D2", "out/d2.txt", &json!({"depends_on": ["D1"]})),
        ),
        (
            "diamond/d3.json",
            task("D3", "out/d3.txt", &json!({"depends_on": ["D1"]})),
        ),
        (
            "diamond/d4.json",
            task(
                "D4",
                "out/d4.txt",
                &json!({"depends_on": ["D2", "D3"], "test_command": "test -f out/d2.txt && test -f out/d3.txt"}),
            ),
        ),
        (
            "f1.json",
            task(
                "F1",
                "out/f1.txt",
                &json!({"test_command": "grep -q fixed out/f1.txt", "max_attempts": 1}),
            ),
        ),
        (
            "f2.json",
            task("F2", "out/f2.txt", &json!({"depends_on": ["F1"]})),
        ),
        ("i1.json", task("I1", "out/i1.txt", &json!({}))),
        ("s1.json", task("S1", "shared.txt", &json!({}))),
        ("s2.json", task("S2", "shared.txt", &json!({}))),
    ]
}

/// The fixture's replies: each task writes its id; F1's code fails its test; S2 replaces
/// what S1 wrote.
pub(crate) fn with_replies(mut test: Test) -> Test {
    for (id, path) in [
        ("A1", "out/a1.txt"),
        ("A2", "out/a2.txt"),
        ("A3", "out/a3.txt"),
        ("D1", "out/d1.txt"),
        ("D2", "out/d2.txt"),
        ("D3", "out/d3.txt"),
        ("D4", "out/d4.txt"),
        ("F2", "out/f2.txt"),
        ("I1", "out/i1.txt"),
    ] {
        test = test.route(
            &format!("<<{id}>>"),
            vec![Script::code(path, &format!("{id}\n"))],
        );
    }
    test.route("<<F1>>", vec![Script::code("out/f1.txt", "broken\n")])
        .route("<<S1>>", vec![Script::code("shared.txt", "first\n")])
        .route("<<S2>>", vec![Script::code("shared.txt", "second\n")])
}

/// Runs the binary on a spec directory holding `specs` (outside the repository), then `args`.
pub(crate) fn batch(test: Test, specs: &[(&str, Value)], args: &[&str]) -> Run {
    let specs: Vec<(String, String)> = specs
        .iter()
        .map(|(name, spec)| ((*name).to_owned(), spec.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    test.run_with(move |spec_path| {
        let dir = spec_path.parent().unwrap().join("specs");
        for (name, text) in &specs {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        // Neither a hidden file nor a git-ignored one is a spec: both would fail to parse.
        std::fs::write(dir.join(".hidden.json"), "not json").unwrap();
        std::fs::write(dir.join(".gitignore"), "ignored.json\n").unwrap();
        std::fs::write(dir.join("ignored.json"), "not json").unwrap();
        std::fs::write(dir.join("notes.md"), "not a spec").unwrap();
        std::iter::once(dir.display().to_string())
            .chain(args)
            .collect()
    })
}

/// Stdout as JSON Lines: every task's result, then the summary.
pub(crate) fn lines(run: &Run) -> (Vec<TaskResult>, BatchSummary) {
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    for line in &lines {
        crate::harness::assert_matches_batch_schema(line);
    }
    let last = lines
        .pop()
        .unwrap_or_else(|| panic!("no output\nstderr:\n{}", run.stderr));
    let summary: BatchSummary = serde_json::from_str(last)
        .unwrap_or_else(|error| panic!("the last line is not a summary ({error}): {last}"));
    let results = lines
        .iter()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a result ({error}): {line}"))
        })
        .collect();
    (results, summary)
}

fn status_of<'a>(results: &'a [TaskResult], id: &str) -> &'a TaskResult {
    results
        .iter()
        .find(|result| result.task_id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no result for {id}"))
}

fn check_fixture_outcome(run: &Run) -> BatchSummary {
    run.assert_code(1);
    let (results, summary) = lines(run);
    assert_eq!(results.len(), 12, "{}", run.stdout);
    assert_eq!(summary.tasks.len(), 12);
    assert_eq!(summary.status, BatchStatus::Failed);
    assert_eq!(
        (
            summary.counts.success,
            summary.counts.escalate,
            summary.counts.skipped
        ),
        (10, 1, 1),
        "{}",
        run.stdout
    );
    assert_eq!(status_of(&results, "F1").status, Status::Escalate);
    let skipped = status_of(&results, "F2");
    assert_eq!(skipped.status, Status::Skipped);
    assert!(skipped.summary.contains("F1"), "{}", skipped.summary);
    assert!(skipped.attempts.is_empty());
    for (line, result) in summary.tasks.iter().zip(&results) {
        assert_eq!(
            line.task_id, result.task_id,
            "the summary lists tasks as they finished"
        );
        assert_eq!(line.status, result.status);
    }
    // Dependencies finish before their dependents; S1 before S2, which shares its file.
    let at = |id: &str| {
        results
            .iter()
            .position(|r| r.task_id.as_deref() == Some(id))
            .unwrap()
    };
    for (before, after) in [
        ("A1", "A2"),
        ("A2", "A3"),
        ("D1", "D2"),
        ("D1", "D3"),
        ("D2", "D4"),
        ("D3", "D4"),
        ("S1", "S2"),
    ] {
        assert!(
            at(before) < at(after),
            "{before} before {after}:\n{}",
            run.stdout
        );
    }
    assert_eq!(run.read("shared.txt").as_deref(), Some("second\n"));
    assert_eq!(run.read("out/d4.txt").as_deref(), Some("D4\n"));
    assert_eq!(run.read("out/f1.txt"), None, "a failed task leaves nothing");
    assert_eq!(run.read("out/f2.txt"), None);
    summary
}

pub(crate) fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    snapshot(root)
}

#[test]
fn a_directory_runs_in_dependency_order_and_a_failed_dependency_skips_its_dependent() {
    let run = batch(with_replies(Test::new()), &fixture(), &[]);
    check_fixture_outcome(&run);
    assert_eq!(run.max_in_flight, 1, "--jobs 1 asks one model at a time");
    assert_eq!(
        run.requests.len(),
        11,
        "every task but the skipped one asked once"
    );
}

#[test]
fn four_jobs_overlap_their_model_calls_and_leave_the_tree_of_a_serial_run() {
    let serial = batch(with_replies(Test::new()), &fixture(), &["--jobs", "1"]);
    check_fixture_outcome(&serial);
    // The server holds the first four requests until four are in flight: only a batch
    // that really runs four tasks at once gets past it.
    let parallel = batch(
        with_replies(Test::new()).gate(4),
        &fixture(),
        &["--jobs", "4"],
    );
    let summary = check_fixture_outcome(&parallel);
    assert_eq!(summary.jobs, 4);
    assert!(parallel.max_in_flight >= 4, "{}", parallel.max_in_flight);
    assert_eq!(tree(&serial.repo), tree(&parallel.repo));
}

#[test]
fn summary_only_prints_just_the_summary() {
    let run = batch(
        with_replies(Test::new()),
        &fixture(),
        &["--summary-only", "--jobs", "2"],
    );
    run.assert_code(1);
    let (results, summary) = lines(&run);
    assert!(results.is_empty(), "{}", run.stdout);
    assert_eq!(summary.counts.success, 10);
}

/// A fails before its model call (its test program does not exist); B, started behind
/// it (`--jobs 1` lets one more task prepare meanwhile), and C are skipped: no model is
/// called after the failure. (A's failure came from its test once; a task behind it now
/// asks while that test runs, see `batch_gate.rs`.)
#[test]
fn fail_fast_starts_no_task_after_the_first_failure() {
    let specs = vec![
        (
            "a.json",
            task(
                "A",
                "a.txt",
                &json!({"test_command": "no-such-test-program-here", "max_attempts": 1}),
            ),
        ),
        ("b.json", task("B", "b.txt", &json!({}))),
        ("c.json", task("C", "c.txt", &json!({}))),
    ];
    let test = Test::new()
        .route("<<A>>", vec![Script::code("a.txt", "a\n")])
        .route("<<B>>", vec![Script::code("b.txt", "b\n")]);
    let run = batch(test, &specs, &["--fail-fast"]);
    run.assert_code(1);
    let (results, summary) = lines(&run);
    assert_eq!(results.len(), 3);
    assert_eq!(summary.counts.skipped, 2);
    assert!(
        status_of(&results, "B").summary.contains("--fail-fast"),
        "{}",
        run.stdout
    );
    assert_eq!(run.requests.len(), 0, "no model call after the failure");
    run.assert_unchanged();
}

/// Bad input that stops the batch before it runs: exit 2, the spec files named, no model
/// call, nothing written.
fn refused(specs: &[(&str, Value)], names: &[&str]) {
    let run = batch(Test::new(), specs, &[]);
    run.assert_code(2);
    // The error document of a command that failed before any run began.
    let printed = run.json();
    assert_eq!(printed["status"], "error");
    let error: ErrorInfo = serde_json::from_value(printed["error"].clone()).unwrap();
    assert_eq!(error.kind, "batch");
    for name in names {
        assert!(error.message.contains(name), "{name}: {}", error.message);
    }
    assert!(run.requests.is_empty());
    run.assert_unchanged();
    assert!(
        !run.repo.join(".git/execute-local-task/batches").exists(),
        "a refused batch is not recorded"
    );
}

#[test]
fn a_cycle_is_refused_before_anything_runs() {
    refused(
        &[
            ("w.json", task("W", "w.txt", &json!({}))),
            ("x.json", task("X", "x.txt", &json!({"depends_on": ["Z"]}))),
            ("y.json", task("Y", "y.txt", &json!({"depends_on": ["X"]}))),
            ("z.json", task("Z", "z.txt", &json!({"depends_on": ["Y"]}))),
        ],
        &["x.json", "y.json", "z.json", "cycle"],
    );
}

#[test]
fn two_specs_with_one_id_are_refused() {
    refused(
        &[
            ("one.json", task("SAME", "one.txt", &json!({}))),
            ("two.json", task("SAME", "two.txt", &json!({}))),
        ],
        &["one.json", "two.json", "SAME"],
    );
}

#[test]
fn an_unknown_dependency_is_refused() {
    refused(
        &[(
            "one.json",
            task("ONE", "one.txt", &json!({"depends_on": ["NOPE"]})),
        )],
        &["one.json", "NOPE"],
    );
}

/// SIGTERM while a task tests: that task is stopped and undone, R (started behind it:
/// `--jobs 1` lets one more task prepare, and it asks while P tests) is stopped at the
/// model, the rest are not started, and every result and the summary are still printed.
/// (R was skipped once, when `--jobs 1` ran one task at a time; a started task that had
/// not reached the model is skipped, see `batch_gate.rs`.)
#[test]
fn an_interrupted_batch_prints_every_result_and_the_summary() {
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("testing");
    let seen = marker.clone();
    let specs = vec![
        (
            "p.json",
            task(
                "P",
                "p.txt",
                &json!({"test_command": format!("touch {}; exec sleep 77", marker.display())}),
            ),
        ),
        ("q.json", task("Q", "q.txt", &json!({"depends_on": ["P"]}))),
        ("r.json", task("R", "r.txt", &json!({}))),
        ("s.json", task("S", "s.txt", &json!({}))),
    ];
    let test = Test::new()
        .route("<<P>>", vec![Script::code("p.txt", "p\n")])
        .route("<<R>>", vec![Script::Hang])
        .during(move |running| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !seen.exists() || running.chat_requests() < 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the test never started"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            running.signal(Signal::SIGTERM);
        });
    let run = batch(test, &specs, &[]);
    run.assert_code(143);
    let (results, summary) = lines(&run);
    assert_eq!(results.len(), 4, "{}", run.stdout);
    let stopped = status_of(&results, "P");
    assert_eq!(stopped.status, Status::Error);
    assert_eq!(
        stopped.error.as_ref().map(|e| e.kind.as_str()),
        Some("interrupted")
    );
    assert_eq!(status_of(&results, "Q").status, Status::Skipped);
    assert_eq!(
        status_of(&results, "R")
            .error
            .as_ref()
            .map(|e| e.kind.as_str()),
        Some("interrupted")
    );
    assert_eq!(status_of(&results, "S").status, Status::Skipped);
    assert_eq!(summary.status, BatchStatus::Interrupted);
    assert_eq!(summary.interrupted_by.as_deref(), Some("SIGTERM"));
    run.assert_unchanged();
}

/// `--only-failed` runs the failed task and its skipped dependent again (the successes
/// count as met); `rollback <BATCH_ID>` of each batch, newest first, restores the tree.
#[test]
fn only_failed_reruns_what_did_not_succeed_and_rollback_undoes_a_batch() {
    let run = batch(with_replies(Test::new()), &fixture(), &["--jobs", "3"]);
    let first = check_fixture_outcome(&run);
    let server = ModelServer::start(Vec::new(), vec![MODEL.to_owned()]);
    server.route("<<F1>>", vec![Script::code("out/f1.txt", "fixed\n")]);
    server.route("<<F2>>", vec![Script::code("out/f2.txt", "F2\n")]);
    let env = [("LOCAL_TASK_ENDPOINT", server.url.as_str())];
    let (code, stdout, stderr) = run.again_with(&["--only-failed", &first.batch_id], &env);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    stdout
        .lines()
        .for_each(crate::harness::assert_matches_batch_schema);
    let again: BatchSummary = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let ids: Vec<_> = again
        .tasks
        .iter()
        .filter_map(|t| t.task_id.as_deref())
        .collect();
    assert_eq!(ids, ["F1", "F2"]);
    assert_eq!(run.read("out/f2.txt").as_deref(), Some("F2\n"));

    for batch_id in [&again.batch_id, &first.batch_id] {
        let (code, stdout, stderr) = run.again(&["rollback", batch_id]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let report: execute_local_task::rollback::BatchRollbackReport =
            serde_json::from_str(&stdout).unwrap();
        assert!(!report.runs.is_empty());
    }
    run.assert_unchanged();
}

/// The model call is made outside the repository lock: while one task's test holds the
/// lock, another task gets its reply, finds no code in it, and asks again. Were model
/// calls made under the lock, the second request could not come before the test ends,
/// and the test waits for it before it ends.
#[test]
fn a_task_asks_its_model_while_another_holds_the_lock_for_its_test() {
    let scratch = tempfile::tempdir().unwrap();
    let testing = scratch.path().join("testing");
    let release = scratch.path().join("release");
    let done_waiting = release.clone();
    let specs = vec![
        (
            "a.json",
            task(
                "A",
                "a.txt",
                &json!({"test_command": format!(
                    "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
                    testing.display(),
                    release.display()
                )}),
            ),
        ),
        ("b.json", task("B", "b.txt", &json!({"max_attempts": 2}))),
    ];
    let test = Test::new()
        .route("<<A>>", vec![Script::code("a.txt", "a\n")])
        .route(
            "<<B>>",
            vec![
                Script::After(testing, Box::new(Script::reply("No code, sorry."))),
                Script::code("b.txt", "b\n"),
            ],
        )
        .during(move |running| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while running.chat_requests() < 3 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "B did not ask again while A's test held the lock"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            std::fs::write(&done_waiting, "").unwrap();
        });
    let run = batch(test, &specs, &["--jobs", "2"]);
    run.assert_code(0);
    let (results, summary) = lines(&run);
    assert_eq!(summary.counts.success, 2, "{}", run.stdout);
    assert_eq!(status_of(&results, "B").attempts.len(), 2);
}

/// With no model server to reach, the batch exits 3, as a single run would.
#[test]
fn a_batch_whose_tasks_reach_no_model_server_exits_3() {
    let specs = vec![
        ("a.json", task("A", "a.txt", &json!({}))),
        ("b.json", task("B", "b.txt", &json!({}))),
    ];
    let test = Test::new().endpoint(&crate::harness::closed_port_url());
    let run = batch(test, &specs, &["--retries", "0", "--jobs", "2"]);
    run.assert_code(3);
    let (results, summary) = lines(&run);
    assert!(results.iter().all(|result| result.status == Status::Error));
    assert_eq!(summary.counts.error, 2);
}

/// `--glob` picks specs by path below the directory; every task succeeding is exit 0.
#[test]
fn glob_filters_the_specs_and_an_all_green_batch_exits_0() {
    let run = batch(
        with_replies(Test::new()),
        &fixture(),
        &["--glob", "a*.json"],
    );
    run.assert_code(0);
    let (results, summary) = lines(&run);
    let ids: Vec<_> = results
        .iter()
        .filter_map(|r| r.task_id.as_deref())
        .collect();
    assert_eq!(ids, ["A1", "A2", "A3"]);
    assert_eq!(summary.status, BatchStatus::Success);
}

/// A task may overwrite what an earlier task of its batch wrote, never the user's own
/// uncommitted changes: with `shared.txt` edited and not committed, both tasks writing it
/// are refused as a single run would be, and the edit stays.
#[test]
fn the_users_uncommitted_changes_are_refused_in_a_batch_too() {
    let specs = vec![
        ("s1.json", task("S1", "shared.txt", &json!({}))),
        ("s2.json", task("S2", "shared.txt", &json!({}))),
    ];
    let test = Test::new()
        .file("shared.txt", "committed\n")
        .uncommitted("shared.txt", "my edit\n");
    let run = batch(test, &specs, &[]);
    // The batch ran (each task refused itself): exit 1, each task's own code 2.
    run.assert_code(1);
    let (results, summary) = lines(&run);
    assert!(summary.tasks.iter().all(|task| task.exit_code == 2));
    for result in &results {
        assert_eq!(result.status, Status::Error);
        assert_eq!(
            result.error.as_ref().map(|e| e.kind.as_str()),
            Some("dirty_target")
        );
    }
    assert!(run.requests.is_empty());
    assert_eq!(run.read("shared.txt").as_deref(), Some("my edit\n"));
}

/// Several spec files given one by one run as a batch, in dependency order.
#[test]
fn several_spec_files_run_as_one_batch() {
    let test = Test::new()
        .route("<<X>>", vec![Script::code("x.txt", "x\n")])
        .route("<<Y>>", vec![Script::code("y.txt", "y\n")]);
    let run = test.run_with(|spec_path| {
        let dir = spec_path.parent().unwrap();
        let x = dir.join("x.json");
        let y = dir.join("y.json");
        std::fs::write(&x, task("X", "x.txt", &json!({})).to_string()).unwrap();
        std::fs::write(
            &y,
            task("Y", "y.txt", &json!({"depends_on": ["X"]})).to_string(),
        )
        .unwrap();
        vec![y.display().to_string(), x.display().to_string()]
    });
    run.assert_code(0);
    let (results, _) = lines(&run);
    let ids: Vec<_> = results
        .iter()
        .filter_map(|r| r.task_id.as_deref())
        .collect();
    assert_eq!(ids, ["X", "Y"]);
}

/// `--branch` on a batch: the chain and the diamond of the fixture, one commit each on
/// `local-task/<id>`, every dependent's commit descending from its dependencies' (D4's
/// test needs both D2's and D3's files: it runs on a merge of the two).
#[test]
fn a_batch_on_branches_commits_each_task_on_its_branch_from_its_dependencies() {
    let specs: Vec<_> = fixture().into_iter().take(7).collect();
    let test = with_replies(Test::new());
    let state = std::rc::Rc::new(std::cell::RefCell::new(None));
    let seen = std::rc::Rc::clone(&state);
    let test = test.before(move |repo| {
        git_out(repo, &["status"]);
        *seen.borrow_mut() = Some(git_state(repo));
    });
    let run = batch(test, &specs, &["--branch", "--jobs", "4"]);
    run.assert_code(0);
    let (results, summary) = lines(&run);
    assert_eq!(summary.counts.success, 7, "{}", run.stdout);
    let commit = |id: &str| {
        let result = status_of(&results, id);
        let branch = format!("local-task/{id}");
        assert_eq!(result.branch.as_deref(), Some(branch.as_str()));
        let commit = result.commit.clone().expect("a commit");
        assert_eq!(git_out(&run.repo, &["rev-parse", &branch]), commit);
        commit
    };
    for (older, newer) in [
        ("A1", "A2"),
        ("A2", "A3"),
        ("D1", "D2"),
        ("D1", "D3"),
        ("D2", "D4"),
        ("D3", "D4"),
    ] {
        git_out(
            &run.repo,
            &[
                "merge-base",
                "--is-ancestor",
                &commit(older),
                &commit(newer),
            ],
        );
    }
    let before = state.borrow_mut().take().expect("the state before the run");
    assert_eq!(git_state(&run.repo), before, "the user's side is untouched");
    assert_eq!(run.read("out/a1.txt"), None, "nothing is written in place");
    assert_eq!(
        git_out(&run.repo, &["worktree", "list", "--porcelain"])
            .matches("worktree ")
            .count(),
        1,
        "every task worktree is removed"
    );
}

/// Two dependencies whose commits change one file differently: their dependent is
/// skipped, naming the file, and nothing else changes.
#[test]
fn a_dependent_whose_dependencies_conflict_is_skipped_on_branches() {
    let specs = vec![
        ("b1.json", task("B1", "same.txt", &json!({}))),
        ("b2.json", task("B2", "same.txt", &json!({}))),
        (
            "b3.json",
            task("B3", "out/b3.txt", &json!({"depends_on": ["B1", "B2"]})),
        ),
    ];
    let test = Test::new()
        .route("<<B1>>", vec![Script::code("same.txt", "one\n")])
        .route("<<B2>>", vec![Script::code("same.txt", "two\n")])
        .route("<<B3>>", vec![Script::code("out/b3.txt", "B3\n")]);
    let run = batch(test, &specs, &["--branch", "--jobs", "2"]);
    run.assert_code(1);
    let (results, summary) = lines(&run);
    assert_eq!(
        (summary.counts.success, summary.counts.skipped),
        (2, 1),
        "{}",
        run.stdout
    );
    let skipped = status_of(&results, "B3");
    assert_eq!(skipped.status, Status::Skipped);
    assert!(
        skipped.summary.contains("conflict") && skipped.summary.contains("same.txt"),
        "{}",
        skipped.summary
    );
    assert!(!resolves(&run.repo, "local-task/B3"));
}

fn resolves(dir: &Path, rev: &str) -> bool {
    std::process::Command::new("git")
        .args(["rev-parse", "--verify", "--quiet", rev])
        .current_dir(dir)
        .output()
        .is_ok_and(|output| output.status.success())
}

fn bring_in(run: &Run, args: &[&str]) -> (i32, BatchBringInReport, String) {
    let (code, stdout, stderr) = run.again(args);
    let report = if code == 0 {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("not a batch report ({error}):\n{stdout}\n{stderr}"))
    } else {
        BatchBringInReport {
            status: String::new(),
            batch_id: String::new(),
            runs: Vec::new(),
            files: Vec::new(),
            rollback: None,
            summary: stdout.clone(),
        }
    };
    (code, report, stderr)
}

/// `apply <BATCH_ID>` puts every success of a chain and a diamond into the tree,
/// uncommitted, in dependency order; one `rollback` undoes it; `discard` then deletes
/// every branch.
#[test]
fn apply_brings_a_batch_in_uncommitted_and_rollback_and_discard_undo_it() {
    let specs: Vec<_> = fixture().into_iter().take(7).collect();
    let run = batch(
        with_replies(Test::new()),
        &specs,
        &["--branch", "--jobs", "3"],
    );
    run.assert_code(0);
    let (_, summary) = lines(&run);
    let head = git_out(&run.repo, &["rev-parse", "HEAD"]);
    let (code, report, stderr) = bring_in(&run, &["apply", &summary.batch_id]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report.status, "applied");
    assert_eq!(report.runs.len(), 7);
    let order: Vec<&str> = report.runs.iter().map(|r| r.task_id.as_str()).collect();
    let at = |id: &str| order.iter().position(|t| *t == id).unwrap();
    assert!(at("A1") < at("A2") && at("A2") < at("A3") && at("D3") < at("D4"));
    for id in ["a1", "a2", "a3", "d1", "d2", "d3", "d4"] {
        let expected = format!("{}\n", id.to_uppercase());
        assert_eq!(run.read(&format!("out/{id}.txt")), Some(expected));
    }
    assert_eq!(
        git_out(&run.repo, &["rev-parse", "HEAD"]),
        head,
        "nothing committed"
    );
    let rollback = report.rollback.expect("a rollback id");
    let (code, _, stderr) = run.again(&["rollback", &rollback]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(run.read("out/a1.txt"), None);
    assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "");
    let (code, report, stderr) = bring_in(&run, &["discard", &summary.batch_id]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report.runs.len(), 7);
    assert_eq!(
        git_out(&run.repo, &["branch", "--list", "local-task/*"]),
        ""
    );
}

/// Two tasks of one batch adding one file differently: `apply` and `merge` of the batch
/// refuse, naming the file, with nothing changed; `merge` of a clean batch keeps the
/// commits.
#[test]
fn apply_and_merge_of_a_batch_refuse_a_conflict_with_nothing_changed() {
    let specs = vec![
        ("b1.json", task("B1", "same.txt", &json!({}))),
        ("b2.json", task("B2", "same.txt", &json!({}))),
    ];
    let test = Test::new()
        .route("<<B1>>", vec![Script::code("same.txt", "one\n")])
        .route("<<B2>>", vec![Script::code("same.txt", "two\n")]);
    let run = batch(test, &specs, &["--branch", "--jobs", "2"]);
    run.assert_code(0);
    let (_, summary) = lines(&run);
    let before = tree(&run.repo);
    let head = git_out(&run.repo, &["rev-parse", "HEAD"]);
    for verb in ["apply", "merge"] {
        let (code, report, stderr) = bring_in(&run, &[verb, &summary.batch_id]);
        assert_eq!(code, 2, "{verb}: {stderr}");
        let printed: Value = serde_json::from_str(&report.summary).unwrap();
        assert_eq!(printed["error"]["kind"], "refused", "{verb}");
        assert!(
            report.summary.contains("same.txt"),
            "{verb}: {}",
            report.summary
        );
        assert_eq!(tree(&run.repo), before, "{verb} changed nothing");
        assert_eq!(git_out(&run.repo, &["rev-parse", "HEAD"]), head);
    }
}

#[test]
fn merge_of_a_batch_keeps_every_tasks_commit() {
    let specs: Vec<_> = fixture().into_iter().take(3).collect();
    let run = batch(with_replies(Test::new()), &specs, &["--branch"]);
    run.assert_code(0);
    let (results, summary) = lines(&run);
    let (code, report, stderr) = bring_in(&run, &["merge", &summary.batch_id]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report.status, "merged");
    for result in &results {
        let commit = result.commit.clone().expect("a commit");
        git_out(&run.repo, &["merge-base", "--is-ancestor", &commit, "HEAD"]);
    }
    assert_eq!(run.read("out/a3.txt").as_deref(), Some("A3\n"));
    assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "");
}

/// `demo` still prints its run's result, and then shows a batch with a dependency run on
/// branches on recorded replies and applied.
#[test]
fn demo_shows_a_batch_on_branches_then_applied() {
    let run = Test::new().run_with(|_| vec!["demo".to_owned()]);
    run.assert_code(0);
    assert_eq!(run.result().status, Status::Success);
    for said in [
        "committed on local-task/demo-greet",
        "committed on local-task/demo-shout",
        "2 task(s): 2 success",
        "applied batch batch-",
    ] {
        assert!(run.stderr.contains(said), "{said}:\n{}", run.stderr);
    }
    let greet = run.stderr.find("demo-greet]").unwrap();
    assert!(greet < run.stderr.find("demo-shout]").unwrap());
}

/// Forty independent tasks on branches, four at a time: each one's worktree is made,
/// pruned around and removed while others are (git's worktree commands are not safe to
/// run at once; every task used to risk `could not open .git/worktrees/…`).
#[test]
fn many_tasks_on_branches_at_once_all_get_their_worktree() {
    let mut test = Test::new();
    let mut specs = Vec::new();
    let names: Vec<String> = (0..40).map(|i| format!("t{i}.json")).collect();
    for (i, name) in names.iter().enumerate() {
        let (id, path) = (format!("T{i}"), format!("out/t{i}.txt"));
        test = test.route(&format!("<<{id}>>"), vec![Script::code(&path, "x\n")]);
        specs.push((name.as_str(), task(&id, &path, &json!({}))));
    }
    let run = batch(test, &specs, &["--branch", "--jobs", "4"]);
    let (results, summary) = lines(&run);
    let bad: Vec<&str> = results
        .iter()
        .filter(|result| result.status != Status::Success)
        .map(|result| result.summary.as_str())
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(summary.counts.success, 40);
}
