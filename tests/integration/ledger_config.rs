//! The ledger's settings from the config files, through the real binary: `[ledger] path`
//! moves the ledger (the user's config only), `[trust]` changes the phase a result
//! reports, `[targets]` changes what `stats` marks as met, and a wrong value names its
//! file, line and key.

use execute_local_task::result::{Phase, TaskResult};
use execute_local_task::review::ReviewReport;
use execute_local_task::stats::Stats;
use serde_json::json;

use crate::harness::{MODEL, ModelServer, Run, Script, Test, spec};

const REPO_CONFIG: &str = ".execute-local-task/config.toml";
const USER_CONFIG: &str = ".config/execute-local-task/config.toml";

fn successful(test: Test) -> Run {
    let run = test
        .spec(spec("src/add.py", &json!({"test_command": "true"})))
        .script(Script::code(
            "src/add.py",
            "def add(a, b):\n    return a + b\n",
        ))
        .run();
    run.assert_code(0);
    run
}

/// The error document of `config --json` run with `test`'s files.
fn config_error(test: Test) -> String {
    let run = test.run_with(|_| vec!["config".to_owned(), "--json".to_owned()]);
    run.assert_code(2);
    let json = run.json();
    assert_eq!(json["error"]["kind"], "config", "{}", run.stdout);
    json["error"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn the_user_config_moves_the_ledger_and_log_and_review_follow_it() {
    let run = successful(Test::new().home_file(USER_CONFIG, "[ledger]\npath = \"runs/l.db\"\n"));
    let moved = run.home().join(".config/execute-local-task/runs/l.db");
    assert!(moved.exists(), "no ledger at {}", moved.display());
    assert!(
        !run.ledger_path().exists(),
        "the default ledger was written"
    );
    assert!(run.result().notes.is_empty(), "{:?}", run.result().notes);

    let (code, stdout, stderr) = run.again(&["log", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&run.result().run_id), "{stdout}");
    let (code, stdout, stderr) = run.again(&["review", "--last", "good"]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let report: ReviewReport = serde_json::from_str(&stdout).expect("a review report");
    assert_eq!(report.run_id, run.result().run_id);

    // The variable still wins over the config.
    let elsewhere = run.home().join("env.db");
    let env = elsewhere.to_str().unwrap();
    let (code, stdout, _) = run.again_with(&["log", "--json"], &[("LOCAL_TASK_LEDGER", env)]);
    assert_eq!(code, 0);
    assert!(!stdout.contains(&run.result().run_id), "{stdout}");
}

#[test]
fn a_repository_config_may_not_move_the_ledger() {
    let message = config_error(Test::new().file(REPO_CONFIG, "\n[ledger]\npath = \"/tmp/x.db\"\n"));
    assert!(
        message.contains("config.toml:3: key `ledger.path`: only your own config"),
        "{message}"
    );
    // A run with it fails before anything is written.
    let run = Test::new()
        .file(REPO_CONFIG, "[ledger]\npath = \"/tmp/x.db\"\n")
        .spec(spec("src/add.py", &json!({})))
        .run();
    run.assert_code(2);
    assert!(!run.repo.join("src/add.py").exists());
    assert!(run.ledger_runs().is_empty());
}

#[test]
fn trust_thresholds_from_the_config_change_the_phase_a_result_reports() {
    let plain = successful(Test::new());
    assert_eq!(
        plain.result().review.expect("review").phase,
        Phase::Calibrate
    );
    let configured = successful(Test::new().file(REPO_CONFIG, "[trust]\ncalibrate_runs = 0\n"));
    let review = configured.result().review.expect("review");
    assert_eq!(review.phase, Phase::Establish, "{}", review.why);

    // One reviewed run is a calibration of one: the next run is past it.
    let first = successful(Test::new().file(REPO_CONFIG, "[trust]\ncalibrate_runs = 1\n"));
    assert_eq!(
        first.result().review.expect("review").phase,
        Phase::Calibrate
    );
    let (code, _, stderr) = first.again(&["review", "--last", "good"]);
    assert_eq!(code, 0, "{stderr}");
    let server = ModelServer::start(
        vec![Script::code(
            "src/add.py",
            "def add(a, b):\n    return b + a\n",
        )],
        vec![MODEL.to_owned()],
    );
    let url = format!("http://127.0.0.1:{}", server.port());
    let spec = first.spec_path.to_str().unwrap();
    let (code, stdout, stderr) = first.again_with(
        &[spec, "--force"],
        &[("LOCAL_TASK_ENDPOINT", &url), ("LOCAL_TASK_MODEL", MODEL)],
    );
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let second: TaskResult = serde_json::from_str(&stdout).expect("a result");
    let review = second.review.expect("review");
    assert_eq!(review.phase, Phase::Establish, "{}", review.why);
}

#[test]
fn targets_from_the_config_change_what_stats_marks_as_met() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({"test_command": "false"})))
        .script(Script::code("out.txt", "one\n"))
        .script(Script::code("out.txt", "two\n"))
        .run();
    run.assert_code(1);
    let delegation = |run: &Run| {
        let (code, stdout, stderr) = run.again(&["stats", "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let stats: Stats = serde_json::from_str(&stdout).expect("the stats JSON");
        let target = stats
            .targets
            .into_iter()
            .find(|t| t.name == "delegation_rate")
            .expect("a delegation target");
        (target.goal, target.met)
    };
    assert_eq!(delegation(&run), (0.7, false));
    let config = run.home().join(USER_CONFIG);
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "[targets]\ndelegation_rate = 0.0\n").unwrap();
    assert_eq!(delegation(&run), (0.0, true));
}

#[test]
fn a_wrong_type_or_range_names_file_line_and_key() {
    let message =
        config_error(Test::new().file(REPO_CONFIG, "[trust]\ncalibrate_runs = \"five\"\n"));
    assert!(
        message.contains("config.toml:2: key `trust.calibrate_runs`: "),
        "{message}"
    );
    let message = config_error(Test::new().file(REPO_CONFIG, "[trust]\ngood_percent = 120\n"));
    assert!(
        message.ends_with("config.toml:2: key `trust.good_percent`: must be between 0 and 100"),
        "{message}"
    );
    let message = config_error(Test::new().file(REPO_CONFIG, "\n[targets]\nsaved_share = 60\n"));
    assert!(
        message.contains("config.toml:3: key `targets.saved_share`: must be a share"),
        "{message}"
    );
    let message = config_error(Test::new().file(REPO_CONFIG, "[savings]\ncost_ratio = 0\n"));
    assert!(
        message.contains("key `savings.cost_ratio`: must be more than 0"),
        "{message}"
    );
    let message = config_error(Test::new().file(REPO_CONFIG, "[trust]\ncalibrate_run = 3\n"));
    assert!(
        message.contains("did you mean `calibrate_runs`?"),
        "{message}"
    );
}
