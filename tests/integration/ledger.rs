//! The run ledger through the real binary: every started run is recorded (success,
//! repair, escalate, model error, interruption), dry runs and bad specs are not, a ledger
//! that cannot be written never fails a run, and many processes record at once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use execute_local_task::ledger::LoggedRun;
use execute_local_task::result::Status;
use execute_local_task::review::ReviewReport;
use serde_json::json;

use crate::harness::{
    BIN, BINARY_DEADLINE, MODEL, ModelServer, Script, Test, finish, init_and_commit, spec,
};

fn column(ledger: &Path, sql: &str, run_id: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(ledger).expect("open the ledger");
    conn.query_row(sql, [run_id], |row| row.get(0))
        .expect("query the ledger")
}

#[test]
fn a_successful_run_is_recorded_with_its_files_test_and_repository() {
    let run = Test::new()
        .spec(spec("src/add.py", &json!({"test_command": "true"})))
        .script(Script::code(
            "src/add.py",
            "def add(a, b):\n    return a + b\n",
        ))
        .run();
    run.assert_code(0);
    let result = run.result();
    let [logged] = run.ledger_runs().try_into().expect("one run recorded");
    assert_eq!(logged.run_id, result.run_id);
    assert_eq!(logged.status, "success");
    assert_eq!(logged.task_id.as_deref(), Some("T-001"));
    assert_eq!(logged.kind.as_deref(), Some("code"));
    assert_eq!(logged.model.as_deref(), Some(MODEL));
    assert_eq!(logged.attempts, 1);
    assert_eq!(logged.test_passed, Some(true));
    assert_eq!(
        (
            logged.files_changed,
            logged.lines_added,
            logged.lines_removed
        ),
        (1, 2, 0)
    );
    assert_eq!((logged.prompt_tokens, logged.completion_tokens), (100, 50));
    assert!(logged.batch_id.is_none());
    assert!(result.notes.is_empty(), "{:?}", result.notes);

    let ledger = run.ledger_path();
    let root = git2::Repository::open(&run.repo)
        .unwrap()
        .head()
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .id()
        .to_string();
    let repo_id = column(
        &ledger,
        "SELECT repo_id FROM runs WHERE run_id = ?1",
        &result.run_id,
    );
    assert_eq!(repo_id.as_deref(), Some(root.as_str()));
    let spec_text = std::fs::read(&run.spec_path).unwrap();
    let hash = git2::Oid::hash_object(git2::ObjectType::Blob, &spec_text).unwrap();
    let spec_hash = column(
        &ledger,
        "SELECT spec_hash FROM runs WHERE run_id = ?1",
        &result.run_id,
    );
    assert_eq!(spec_hash, Some(hash.to_string()));
    let path = column(
        &ledger,
        "SELECT path FROM files WHERE run_id = ?1",
        &result.run_id,
    );
    assert_eq!(path.as_deref(), Some("src/add.py"));
    let outcome = column(
        &ledger,
        "SELECT outcome FROM attempts WHERE run_id = ?1 AND n = 1",
        &result.run_id,
    );
    assert_eq!(outcome.as_deref(), Some("ok"));
}

#[test]
fn a_repaired_run_records_both_attempts() {
    let run = Test::new()
        .spec(spec(
            "out.txt",
            &json!({"test_command": "grep -q good out.txt"}),
        ))
        .script(Script::code("out.txt", "bad\n"))
        .script(Script::code("out.txt", "good\n"))
        .run();
    run.assert_code(0);
    let result = run.result();
    let [logged] = run.ledger_runs().try_into().expect("one run recorded");
    assert_eq!((logged.status.as_str(), logged.attempts), ("success", 2));
    let first = column(
        &run.ledger_path(),
        "SELECT outcome FROM attempts WHERE run_id = ?1 AND n = 1",
        &result.run_id,
    );
    assert_eq!(first.as_deref(), Some("test_failed"));
}

#[test]
fn an_escalated_run_is_recorded() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({"test_command": "false"})))
        .script(Script::code("out.txt", "one\n"))
        .script(Script::code("out.txt", "two\n"))
        .run();
    run.assert_code(1);
    let [logged] = run.ledger_runs().try_into().expect("one run recorded");
    assert_eq!(logged.run_id, run.result().run_id);
    assert_eq!((logged.status.as_str(), logged.attempts), ("escalate", 2));
    assert_eq!(logged.test_passed, Some(false));
}

#[test]
fn a_run_ended_by_the_model_server_is_recorded_with_its_error() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::status(
            400,
            r#"{"error":{"message":"bad request"}}"#,
        ))
        .run();
    run.assert_code(3);
    let result = run.result();
    let [logged] = run.ledger_runs().try_into().expect("one run recorded");
    assert_eq!(logged.status, "error");
    assert_eq!(logged.error_kind, result.error.map(|e| e.kind));
}

#[test]
fn an_interrupted_run_is_recorded() {
    use nix::sys::signal::Signal;
    let run = Test::new()
        .spec(spec("out.txt", &json!({"test_command": "true"})))
        .script(Script::Hang)
        .args(&["--first-byte-timeout", "600"])
        .during(|running| {
            let deadline = Instant::now() + BINARY_DEADLINE;
            while running.chat_requests() == 0 {
                assert!(Instant::now() < deadline, "the model was never called");
                std::thread::sleep(Duration::from_millis(10));
            }
            running.signal(Signal::SIGTERM);
        })
        .run();
    run.assert_error(143, "interrupted");
    let [logged] = run.ledger_runs().try_into().expect("one run recorded");
    assert_eq!(logged.run_id, run.result().run_id);
    assert_eq!(logged.error_kind.as_deref(), Some("interrupted"));
}

#[test]
fn dry_runs_and_runs_that_never_started_are_not_recorded() {
    let dry = Test::new()
        .spec(spec("out.txt", &json!({})))
        .arg("--dry-run")
        .run();
    dry.assert_code(0);
    assert!(dry.ledger_runs().is_empty());
    let bad = Test::new()
        .spec_text(r#"{"task_id": "T-1", "description": "d"}"#)
        .run();
    bad.assert_code(2);
    assert!(bad.ledger_runs().is_empty());
}

/// The ledger never costs a user their code: a ledger path that is a directory, or a
/// file that is not a database, leaves the run as it would be, with a note saying so.
#[test]
fn a_ledger_that_cannot_be_written_never_fails_a_run() {
    let scratch = tempfile::tempdir().unwrap();
    let garbage = scratch.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a_u8; 8192]).unwrap();
    for ledger in [scratch.path().to_path_buf(), garbage] {
        let run = Test::new()
            .spec(spec(
                "out.txt",
                &json!({"test_command": "grep -q new out.txt"}),
            ))
            .script(Script::code("out.txt", "new\n"))
            .env("LOCAL_TASK_LEDGER", ledger.to_str().unwrap())
            .run();
        run.assert_code(0);
        let result = run.result();
        assert_eq!(result.status, Status::Success);
        assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
        let [note] = result.notes.as_slice() else {
            panic!("one note expected: {:?}", result.notes);
        };
        assert!(note.contains("not recorded in the run ledger"), "{note}");
        let advice = result.review.expect("a review field all the same");
        assert!(advice.required, "{}", advice.why);
        assert!(note.contains(ledger.to_str().unwrap()), "{note}");
        assert!(
            run.stderr.contains("note: this run is not recorded"),
            "{}",
            run.stderr
        );
    }
}

/// Eight processes recording into one ledger at once (each in its own repository, so no
/// repository lock orders them, and released together from their tests): eight rows,
/// each with its own run's content.
#[test]
fn many_processes_record_into_one_ledger_at_once() {
    const RUNS: usize = 8;
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().join("shared/ledger.db");
    let server = ModelServer::start(
        (0..RUNS)
            .map(|_| Script::code("out.txt", "new\n"))
            .collect(),
        vec![MODEL.to_owned()],
    );
    let children: Vec<_> = (0..RUNS)
        .map(|n| {
            let dir = scratch.path().join(format!("r{n}"));
            let repo = dir.join("repo");
            std::fs::create_dir_all(&repo).unwrap();
            std::fs::write(repo.join("README.md"), "# r\n").unwrap();
            init_and_commit(&repo);
            let spec_path = dir.join("spec.json");
            // Each test says it is ready, then waits for all: the eight runs then record
            // in the same instant.
            let gate = scratch.path().display();
            let test_command =
                format!("touch {gate}/ready-{n} && while [ ! -e {gate}/go ]; do sleep 0.01; done");
            let task = spec(
                "out.txt",
                &json!({"task_id": format!("T-{n}"), "test_command": test_command}),
            );
            std::fs::write(&spec_path, task.to_string()).unwrap();
            Command::new(BIN)
                .arg(&spec_path)
                .current_dir(&repo)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", dir.join("home"))
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("LOCAL_TASK_MODEL", MODEL)
                .env("LOCAL_TASK_ENDPOINT", &server.url)
                .env("LOCAL_TASK_LEDGER", &ledger)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the binary")
        })
        .collect();
    let deadline = Instant::now() + BINARY_DEADLINE;
    while (0..RUNS).any(|n| !scratch.path().join(format!("ready-{n}")).exists()) {
        assert!(
            Instant::now() < deadline,
            "the runs never all reached their tests"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(scratch.path().join("go"), "").unwrap();
    let mut expected = Vec::new();
    for child in children {
        let output = finish(child);
        let result: execute_local_task::result::TaskResult =
            serde_json::from_slice(&output.stdout).expect("a result");
        assert_eq!(result.status, Status::Success, "{}", result.summary);
        assert!(result.notes.is_empty(), "{:?}", result.notes);
        expected.push((result.run_id, result.task_id.unwrap_or_default()));
    }
    let mut recorded: Vec<_> = execute_local_task::ledger::Ledger::open(&ledger)
        .unwrap()
        .recent(100)
        .unwrap()
        .into_iter()
        .map(|run| {
            assert_eq!((run.status.as_str(), run.files_changed), ("success", 1));
            (run.run_id, run.task_id.unwrap_or_default())
        })
        .collect();
    recorded.sort();
    expected.sort();
    assert_eq!(recorded, expected);
}

#[test]
fn log_lists_recent_runs_newest_first_as_json_and_as_a_table() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "one\n"))
        .run();
    run.assert_code(0);
    let first = run.result().run_id;
    let (code, _, stderr) = run.again(&["rollback", "--last"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run.again(&[run.spec_path.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code, 0, "{stderr}:\n{stdout}");

    let (code, stdout, stderr) = run.again(&["log", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let logged: Vec<LoggedRun> = serde_json::from_str(&stdout).expect("a JSON array of runs");
    let ids: Vec<&str> = logged.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, [first.as_str()], "the dry run is not listed");
    let events = column(
        &run.ledger_path(),
        "SELECT group_concat(kind) FROM events WHERE run_id = ?1",
        &first,
    );
    assert_eq!(events.as_deref(), Some("rollback"));

    let (code, table, _) = run.again(&["log"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("RUN ID"), "{table}");
    assert!(lines[1].starts_with(&first), "{table}");
    assert!(
        lines.iter().all(|line| line.chars().count() <= 80),
        "{table}"
    );
}

#[test]
fn log_lists_the_newest_first_and_stops_at_its_limit() {
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().join("ledger.db");
    let mut ids = Vec::new();
    for n in 0..3 {
        let run = Test::new()
            .spec(spec("out.txt", &json!({"task_id": format!("T-{n}")})))
            .script(Script::code("out.txt", "x\n"))
            .env("LOCAL_TASK_LEDGER", ledger.to_str().unwrap())
            .run();
        run.assert_code(0);
        ids.push(run.result().run_id);
    }
    let output = crate::harness::output(
        Command::new(BIN)
            .args(["log", "--json", "--limit", "2"])
            .env_clear()
            .env("LOCAL_TASK_LEDGER", &ledger),
    );
    let logged: Vec<LoggedRun> = serde_json::from_slice(&output.stdout).expect("a JSON array");
    let listed: Vec<&str> = logged.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
}

#[test]
fn a_later_verdict_replaces_the_earlier_and_the_history_is_kept() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "one\n"))
        .run();
    run.assert_code(0);
    let run_id = run.result().run_id;
    let (code, stdout, stderr) = run.again(&[
        "review",
        &run_id,
        "poor",
        "--reason",
        "misses the edge case",
        "--failure-mode",
        "incomplete",
    ]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let first: ReviewReport = serde_json::from_str(&stdout).expect("a review report");
    assert_eq!(
        (first.verdict.as_str(), first.replaced.as_deref()),
        ("poor", None)
    );
    assert_eq!(first.failure_mode.as_deref(), Some("incomplete"));
    assert_eq!(first.reason.as_deref(), Some("misses the edge case"));

    let (code, stdout, stderr) = run.again(&["review", "--last", "good"]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let second: ReviewReport = serde_json::from_str(&stdout).expect("a review report");
    assert_eq!(second.run_id, run_id);
    assert_eq!(second.replaced.as_deref(), Some("poor"));
    let verdicts: Vec<&str> = second.history.iter().map(|e| e.verdict.as_str()).collect();
    assert_eq!(verdicts, ["poor", "good"]);
    let [logged] = run.ledger_runs().try_into().expect("one run");
    assert_eq!(logged.verdict.as_deref(), Some("good"));
}

#[test]
fn a_review_of_an_unknown_run_or_verdict_is_bad_input() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "one\n"))
        .run();
    run.assert_code(0);
    let (code, stdout, stderr) = run.again(&["review", "20200101T000000000Z-deadbeef", "good"]);
    assert_eq!(code, 2, "{stdout}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["error"]["kind"], "unknown_run");
    assert!(
        stderr.contains("no run `20200101T000000000Z-deadbeef`"),
        "{stderr}"
    );
    let run_id = run.result().run_id;
    let (code, _, stderr) = run.again(&["review", &run_id, "great"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("`great` is not a verdict"), "{stderr}");
    let (code, _, _) = run.again(&["review", &run_id]);
    assert_eq!(code, 2);
    let (code, _, stderr) = run.again(&["review", &run_id, "poor", "--failure-mode", "lazy"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(run.ledger_runs()[0].verdict.is_none());
}

/// The binary with only a ledger to go by (`log`, `review`).
fn ledger_tool(ledger: &Path, args: &[&str]) -> (i32, String) {
    let output = crate::harness::output(
        Command::new(BIN)
            .args(args)
            .env_clear()
            .env("LOCAL_TASK_LEDGER", ledger),
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// One successful, tested run recorded in `ledger`; `other` makes its repository a
/// different one (another root commit).
fn trusted_run(ledger: &Path, other: bool) -> execute_local_task::result::TaskResult {
    let mut test = Test::new()
        .spec(spec("out.txt", &json!({"test_command": "true"})))
        .script(Script::code("out.txt", "x\n"))
        .env("LOCAL_TASK_LEDGER", ledger.to_str().unwrap());
    if other {
        test = test.file("other.txt", "another repository\n");
    }
    let run = test.run();
    run.assert_code(0);
    run.result()
}

/// calibrate → establish (here and through other repositories' record) → back to
/// calibrate on two poor verdicts; every result says so in `review`. The test
/// repositories share their one commit, so runs in repositories built alike count as
/// the same repository.
#[test]
fn the_review_a_result_asks_for_follows_the_pairs_record() {
    use execute_local_task::result::Phase;
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().join("ledger.db");
    let review = |run_id: &str, verdict: &str| {
        let (code, stdout) = ledger_tool(&ledger, &["review", run_id, verdict]);
        assert_eq!(code, 0, "{stdout}");
    };
    for n in 0..5 {
        let result = trusted_run(&ledger, false);
        let advice = result.review.expect("a review field");
        assert_eq!(
            (advice.phase, advice.required),
            (Phase::Calibrate, true),
            "run {n}"
        );
        review(&result.run_id, "good");
    }
    let here = trusted_run(&ledger, false).review.unwrap();
    assert_eq!(here.phase, Phase::Establish, "{}", here.why);
    assert!(here.why.contains("in this repository"), "{}", here.why);
    assert!(here.why.contains("5 reviewed, 5 good"), "{}", here.why);

    let elsewhere = trusted_run(&ledger, true).review.unwrap();
    assert_eq!(elsewhere.phase, Phase::Establish, "{}", elsewhere.why);
    assert!(
        elsewhere.why.contains("across all repositories"),
        "{}",
        elsewhere.why
    );

    for _ in 0..2 {
        let result = trusted_run(&ledger, false);
        review(&result.run_id, "poor");
    }
    let back = trusted_run(&ledger, false).review.unwrap();
    assert_eq!((back.phase, back.required), (Phase::Calibrate, true));
    assert!(back.why.contains("back to calibrate"), "{}", back.why);
    let (_, stdout) = ledger_tool(&ledger, &["log", "--json"]);
    let logged: Vec<LoggedRun> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(logged[0].review_required, Some(true));
}

/// Savings through the binary: a successful run saves its code's tokens weighted by the
/// cost ratio, less its overhead; an escalated one saves nothing. Both are recorded.
#[test]
fn savings_are_reported_and_recorded() {
    let code = "def add(a, b):\n    return a + b\n";
    let run = Test::new()
        .spec(spec("src/add.py", &json!({"test_command": "true"})))
        .script(Script::code("src/add.py", code))
        .run();
    run.assert_code(0);
    let result = run.result();
    let savings = result.savings.clone().expect("savings");
    // 30 bytes of added lines without their newlines: 8 tokens, 40 weighted.
    assert_eq!((savings.code_tokens, savings.gross), (8, 40));
    assert_eq!(savings.local_tokens, 150);
    let spec_bytes = std::fs::read(&run.spec_path).unwrap().len() as u64;
    assert!(savings.overhead > spec_bytes.div_ceil(4) * 5, "{savings:?}");
    assert_eq!(
        savings.net,
        40 - i64::try_from(savings.overhead).unwrap(),
        "{savings:?}"
    );
    let net = column(
        &run.ledger_path(),
        "SELECT CAST(saved_net AS TEXT) FROM runs WHERE run_id = ?1",
        &result.run_id,
    );
    assert_eq!(net, Some(savings.net.to_string()));

    let escalated = Test::new()
        .spec(spec("out.txt", &json!({"test_command": "false"})))
        .script(Script::code("out.txt", "one\n"))
        .script(Script::code("out.txt", "two\n"))
        .run();
    escalated.assert_code(1);
    let savings = escalated.result().savings.expect("savings");
    assert_eq!((savings.code_tokens, savings.gross), (0, 0));
    assert_eq!(savings.net, -i64::try_from(savings.overhead).unwrap());
}

/// `stats` in `repo` with only `ledger` to go by: exit code, stdout, stderr.
fn stats_in(repo: &Path, ledger: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command
        .arg("stats")
        .args(extra)
        .current_dir(repo)
        .env_clear()
        .env("LOCAL_TASK_LEDGER", ledger);
    let output = crate::harness::output(&mut command);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Three runs in one repository, whose figures are counted by hand: a first-pass success
/// (reviewed good), a success after a repair (reviewed poor, it broke the tests), an
/// escalation. Gives the first run (its repository is theirs).
fn three_reviewed_runs(ledger: &Path) -> crate::harness::Run {
    let run_with = |test_command: &str, replies: &[&str]| {
        let mut test = Test::new()
            .spec(spec("out.txt", &json!({"test_command": test_command})))
            .env("LOCAL_TASK_LEDGER", ledger.to_str().unwrap());
        for reply in replies {
            test = test.script(Script::code("out.txt", reply));
        }
        test.run()
    };
    let first = run_with("grep -q good out.txt", &["good\n"]);
    let repaired = run_with("grep -q good out.txt", &["bad\n", "good\n"]);
    let escalated = run_with("false", &["one\n", "two\n"]);
    escalated.assert_code(1);
    for (run, verdict, more) in [
        (&first, "good", vec![]),
        (&repaired, "poor", vec!["--failure-mode", "broke-tests"]),
    ] {
        let run_id = run.result().run_id;
        let mut args = vec!["review", run_id.as_str(), verdict];
        args.extend(more);
        assert_eq!(ledger_tool(ledger, &args).0, 0);
    }
    first
}

#[test]
fn stats_reports_the_figures_of_the_recorded_runs() {
    use execute_local_task::result::Phase;
    use execute_local_task::stats::Stats;
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().join("ledger.db");
    let first = three_reviewed_runs(&ledger);
    let (code, stdout, stderr) = stats_in(&first.repo, &ledger, &["--json"]);
    assert_eq!(code, 0, "{stderr}");
    let stats: Stats = serde_json::from_str(&stdout).expect("the stats JSON");
    let [pair] = stats.pairs.as_slice() else {
        panic!("one pair: {stdout}");
    };
    assert_eq!((pair.kind.as_str(), pair.model.as_str()), ("code", MODEL));
    assert_eq!(pair.runs, 3);
    let third = 1.0 / 3.0;
    assert!((pair.delegation_rate.unwrap() - 2.0 * third).abs() < 1e-9);
    assert!((pair.first_pass_rate.unwrap() - third).abs() < 1e-9);
    assert_eq!(
        (pair.first_pass, pair.after_repair, pair.escalations),
        (1, 1, 1)
    );
    assert_eq!((pair.good, pair.acceptable, pair.poor), (1, 0, 1));
    assert_eq!(pair.phase, Some(Phase::Calibrate));
    assert_eq!(pair.local_tokens, 5 * 150);
    let met: Vec<(&str, bool)> = stats
        .targets
        .iter()
        .map(|t| (t.name.as_str(), t.met))
        .collect();
    assert_eq!(
        met,
        [
            ("delegation_rate", false),
            ("first_pass_rate", false),
            ("saved_share", false),
            ("regressions", false)
        ]
    );

    let (code, table, _) = stats_in(&first.repo, &ledger, &[]);
    assert_eq!(code, 0);
    assert!(
        table.lines().all(|line| line.chars().count() <= 80),
        "{table}"
    );
    assert!(table.contains("target first-pass success"), "{table}");
    let (_, stdout, _) = stats_in(&first.repo, &ledger, &["--json", "--since", "2999-01-01"]);
    let later: Stats = serde_json::from_str(&stdout).unwrap();
    assert_eq!(later.total.runs, 0);
    let (code, _, stderr) = stats_in(&first.repo, &ledger, &["--since", "yesterday"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--since `yesterday`"), "{stderr}");
}

/// The page opened as a reader would: its table's numbers, and its embedded figures the
/// same as `--json`'s.
#[test]
fn stats_html_writes_a_page_with_the_same_figures() {
    use execute_local_task::stats::Stats;
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().join("ledger.db");
    let first = three_reviewed_runs(&ledger);
    let page_path = scratch.path().join("stats.html");
    let (code, stdout, stderr) = stats_in(
        &first.repo,
        &ledger,
        &["--json", "--html", page_path.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    let printed: Stats = serde_json::from_str(&stdout).unwrap();
    let page = std::fs::read_to_string(&page_path).expect("the page was written");
    let embedded = page
        .split("id=\"stats\">")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .expect("the embedded figures")
        .replace("<\\/", "</");
    let embedded: Stats = serde_json::from_str(&embedded).expect("figures JSON");
    assert_eq!(embedded, printed);
    let pair_row = page
        .lines()
        .find(|line| line.starts_with(&format!("<tr data-pair=\"code {MODEL}\">")))
        .unwrap_or_else(|| panic!("no row for the pair:\n{page}"));
    for cell in [
        "<td class=\"runs\">3</td>",
        "<td class=\"delegation_rate\">67%</td>",
        "<td class=\"first_pass_rate\">33%</td>",
        "<td class=\"escalations\">1</td>",
        "<td class=\"verdicts\">1/0/1</td>",
        "<td class=\"local_tokens\">750</td>",
    ] {
        assert!(pair_row.contains(cell), "{cell} in {pair_row}");
    }
    assert!(
        page.contains("<tr data-target=\"regressions\"><td>regressions</td><td>0</td><td class=\"now\">1</td><td class=\"unmet\">not met</td></tr>"),
        "{page}"
    );
    assert!(
        page.contains("<svg") && !page.contains("<script src"),
        "{page}"
    );
}

/// `export --reviewed good`: each good run as one chat line, the messages the model was
/// sent followed by the accepted code; runs with another verdict, or none, are left out.
#[test]
fn export_writes_good_runs_as_chat_lines_that_round_trip() {
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().join("ledger.db");
    let run_one = |code: &str| {
        let run = Test::new()
            .spec(spec("src/add.py", &json!({"test_command": "true"})))
            .script(Script::code("src/add.py", code))
            .env("LOCAL_TASK_LEDGER", ledger.to_str().unwrap())
            .run();
        run.assert_code(0);
        run
    };
    let good = run_one("def add(a, b):\n    return a + b\n");
    let poor = run_one("def add(a, b):\n    return a - b\n");
    let _unreviewed = run_one("def add(a, b):\n    return b + a\n");
    for (run, verdict) in [(&good, "good"), (&poor, "poor")] {
        let run_id = run.result().run_id;
        assert_eq!(ledger_tool(&ledger, &["review", &run_id, verdict]).0, 0);
    }
    let (code, stdout) = ledger_tool(&ledger, &["export", "--reviewed", "good"]);
    assert_eq!(code, 0, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let [line] = lines.as_slice() else {
        panic!("one line expected:\n{stdout}");
    };
    let exported: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    let messages = exported["messages"].as_array().expect("messages");
    let (last, sent) = messages.split_last().expect("an assistant message");
    let sent: Vec<(String, String)> = sent
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(sent, good.requests[0].messages());
    assert_eq!(last["role"], "assistant");
    assert_eq!(
        last["content"],
        "```python path=src/add.py\ndef add(a, b):\n    return a + b\n```\n"
    );
    let (_, later) = ledger_tool(
        &ledger,
        &["export", "--reviewed", "good", "--since", "2999-01-01"],
    );
    assert!(later.is_empty(), "{later}");
}

/// Each attempt's model call is timed, its wait for the first token included: a reply the
/// server holds back takes at least that long (a lower bound only), in the result and in
/// the ledger, and `stats` reports the median.
#[test]
fn each_attempts_model_time_is_reported_and_recorded() {
    let hold = 300;
    let Script::Chat(chat) = Script::code("out.txt", "one\n") else {
        unreachable!("a code reply is a chat");
    };
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::Prefill {
            wait_ms: hold,
            chat,
        })
        .run();
    run.assert_code(0);
    let result = run.result();
    let model_ms = result.attempts[0]
        .model_ms
        .expect("the attempt's model time");
    assert!(model_ms >= hold, "{model_ms} ms < the {hold} ms hold");
    let recorded = column(
        &run.ledger_path(),
        "SELECT CAST(model_ms AS TEXT) FROM attempts WHERE run_id = ?1 AND n = 1",
        &result.run_id,
    );
    assert_eq!(recorded, Some(model_ms.to_string()));
    let (code, stdout, stderr) = stats_in(&run.repo, &run.ledger_path(), &["--json"]);
    assert_eq!(code, 0, "{stderr}");
    let stats: execute_local_task::stats::Stats =
        serde_json::from_str(&stdout).expect("stats as JSON");
    assert_eq!(stats.total.median_model_ms, Some(model_ms));
}

fn events_of(ledger: &Path, run_id: &str) -> Option<String> {
    column(
        ledger,
        "SELECT group_concat(kind, ',') FROM (SELECT kind FROM events WHERE run_id = ?1 ORDER BY id)",
        run_id,
    )
}

fn branch_success() -> crate::harness::Run {
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
    run
}

/// `apply`, `merge` and `discard` of a branch run are recorded against that run, in order.
#[test]
fn apply_merge_and_discard_are_recorded_against_their_branch_run() {
    let run = branch_success();
    let run_id = run.result().run_id;
    let (code, stdout, stderr) = run.again(&["apply", &run_id]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        events_of(&run.ledger_path(), &run_id).as_deref(),
        Some("apply")
    );

    let run = branch_success();
    let run_id = run.result().run_id;
    for verb in ["merge", "discard"] {
        let (code, stdout, stderr) = run.again(&[verb, &run_id]);
        assert_eq!(code, 0, "{verb}: {stdout}\n{stderr}");
        assert!(!stderr.contains("note:"), "{stderr}");
    }
    assert_eq!(
        events_of(&run.ledger_path(), &run_id).as_deref(),
        Some("merge,discard")
    );
    let detail = column(
        &run.ledger_path(),
        "SELECT detail FROM events WHERE run_id = ?1 AND kind = 'merge'",
        &run_id,
    );
    assert!(detail.is_some_and(|d| !d.is_empty()));
}

/// A ledger that cannot be written never fails `discard`: it is done, and a note says its
/// record is missing.
#[test]
fn a_ledger_that_cannot_be_written_never_fails_a_verb() {
    let run = branch_success();
    let run_id = run.result().run_id;
    let scratch = tempfile::tempdir().unwrap();
    let ledger = scratch.path().to_str().unwrap();
    let (code, stdout, stderr) =
        run.again_with(&["discard", &run_id], &[("LOCAL_TASK_LEDGER", ledger)]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: execute_local_task::bring_in::BringInReport =
        serde_json::from_str(&stdout).expect("a discard report");
    assert_eq!(report.status, "discarded");
    assert!(
        stderr.contains(&format!(
            "note: the discard of {run_id} is not recorded in the run ledger"
        )),
        "{stderr}"
    );
}

/// A batch through the real binary: every task has a row with the batch's id, and
/// `rollback <BATCH_ID>` records a rollback against each of its runs.
#[test]
fn a_batchs_runs_are_recorded_with_its_id_and_its_rollback_against_each() {
    let run = Test::new()
        .route("<<B1>>", vec![Script::code("b1.txt", "one\n")])
        .route("<<B2>>", vec![Script::code("b2.txt", "two\n")])
        .run_with(|spec_path| {
            let dir = spec_path.parent().unwrap().join("specs");
            std::fs::create_dir_all(&dir).unwrap();
            for (id, output) in [("B1", "b1.txt"), ("B2", "b2.txt")] {
                let spec = json!({
                    "task_id": id,
                    "description": format!("Task <<{id}>>: write the file."),
                    "output_file": output,
                });
                std::fs::write(dir.join(format!("{id}.json")), spec.to_string()).unwrap();
            }
            vec![dir.display().to_string()]
        });
    run.assert_code(0);
    run.stdout
        .lines()
        .for_each(crate::harness::assert_matches_batch_schema);
    let summary: execute_local_task::batch::BatchSummary =
        serde_json::from_str(run.stdout.lines().last().expect("a summary line"))
            .expect("the batch summary");
    let logged = run.ledger_runs();
    assert_eq!(logged.len(), 2, "{logged:?}");
    let mut tasks: Vec<&str> = logged
        .iter()
        .map(|r| {
            assert_eq!(r.batch_id.as_deref(), Some(summary.batch_id.as_str()));
            assert_eq!(r.status, "success");
            r.task_id.as_deref().unwrap_or_default()
        })
        .collect();
    tasks.sort_unstable();
    assert_eq!(tasks, ["B1", "B2"]);

    let (code, stdout, stderr) = run.again(&["rollback", &summary.batch_id]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(!stderr.contains("note:"), "{stderr}");
    for logged in &logged {
        assert_eq!(
            events_of(&run.ledger_path(), &logged.run_id).as_deref(),
            Some("rollback"),
            "{}",
            logged.run_id
        );
        let detail = column(
            &run.ledger_path(),
            "SELECT detail FROM events WHERE run_id = ?1",
            &logged.run_id,
        )
        .unwrap_or_default();
        assert!(detail.contains(&summary.batch_id), "{detail}");
    }
    run.assert_unchanged();
}
