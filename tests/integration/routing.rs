//! Runs that use profiles: the routing table, precedence against the command line,
//! fallback to another server, the cool-down a later run sees, escalation to a stronger
//! model, the bound on a task's model calls, and the API-key rule end to end.

use execute_local_task::check::CheckReport;
use execute_local_task::result::{Outcome, Status, TaskResult};
use serde_json::json;

use crate::harness::{ModelServer, Script, Test, closed_port_url, spec};

const REPO_CONFIG: &str = ".execute-local-task/config.toml";
const USER_CONFIG: &str = ".config/execute-local-task/config.toml";

/// A scripted OpenAI-compatible server offering `model`.
fn server(model: &str, script: Vec<Script>) -> ModelServer {
    ModelServer::start(script, vec![model.to_owned()])
}

fn result_of(stdout: &str) -> TaskResult {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a result ({e}):\n{stdout}"))
}

#[test]
fn the_routing_table_picks_by_kind_score_and_cost() {
    let config = r#"
default_profile = "small"

[profiles.small]
provider = "openai"
endpoint = "http://127.0.0.1:9/v1"
model = "small-model"
kinds = ["code", "test"]
min_score = 7
cost = 1

[profiles.large]
provider = "openai"
endpoint = "http://127.0.0.1:9/v1"
model = "large-model"
kinds = ["code", "test", "refactor"]
cost = 4

[profiles.docs]
provider = "openai"
endpoint = "http://127.0.0.1:9/v1"
model = "docs-model"
kinds = ["doc"]
cost = 0.5

[profiles.judge]
endpoint = "http://127.0.0.1:9/v1"
model = "judge-model"
role = "validator"
cost = 0
"#;
    let specs = [
        (
            "a-small-code",
            json!({"description": "Add a function that adds two numbers.", "test_command": "true"}),
        ),
        (
            "b-design-code",
            json!({"description": "Redesign the architecture and migrate the security layer across the codebase with a new protocol.", "test_command": "true"}),
        ),
        (
            "c-doc",
            json!({"kind": "doc", "output_file": "README.md", "description": "Describe the project."}),
        ),
        (
            "d-refactor",
            json!({"kind": "refactor", "description": "Rename things.", "test_command": "true"}),
        ),
        (
            "e-named",
            json!({"profile": "large", "description": "Add a function.", "test_command": "true"}),
        ),
    ];
    let mut test = Test::new().file(REPO_CONFIG, config);
    for (name, extra) in &specs {
        let mut spec = spec("out.py", extra);
        spec["task_id"] = json!(name.to_uppercase());
        test = test.file(&format!("specs/{name}.json"), spec.to_string());
    }
    let run = test.run_with(|_| vec!["check".into(), "specs".into()]);
    run.assert_code(0);
    let report: CheckReport = serde_json::from_str(&run.stdout).unwrap();
    let table: Vec<_> = report
        .specs
        .iter()
        .map(|s| json!({"task": s.task_id, "score": s.triage.as_ref().map(|t| t.score), "route": s.route}))
        .collect();
    for spec in &report.specs {
        let (triage, route) = (spec.triage.as_ref().unwrap(), spec.route.as_ref().unwrap());
        assert_eq!(triage.profile, route.profile, "check shows one pick");
    }
    insta::assert_json_snapshot!(table);
}

#[test]
fn a_profile_gives_the_server_model_and_sampling_and_the_command_line_beats_it() {
    let chosen = server("profile-model", vec![Script::code("out.py", "x = 1\n")]);
    let config = format!(
        "default_profile = \"small\"\n[profiles.small]\nprovider = \"openai\"\nendpoint = \"{}/v1\"\nmodel = \"profile-model\"\ntemperature = 0.7\nmax_tokens = 900\n",
        chosen.url
    );
    let run = Test::new()
        .file(REPO_CONFIG, &config)
        .spec(spec("out.py", &json!({})))
        .run();
    run.assert_code(0);
    assert!(
        run.requests.is_empty(),
        "the environment's server is not asked"
    );
    let requests = chosen.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["model"], "profile-model");
    assert_eq!(requests[0].body["temperature"], 0.7);
    assert_eq!(requests[0].body["max_tokens"], 900);
    let result = run.result();
    let route = result.route.expect("a route");
    assert_eq!(route.profile.as_deref(), Some("small"));
    assert_eq!(route.model.as_deref(), Some("profile-model"));
    assert_eq!(route.endpoint, Some(format!("{}/v1", chosen.url)));
    assert_eq!(result.attempts[0].profile.as_deref(), Some("small"));
    assert_eq!(result.attempts[0].model.as_deref(), Some("profile-model"));

    // The dry run shows the same route and the request the profile makes.
    let run = Test::new()
        .file(REPO_CONFIG, &config)
        .spec(spec("out.py", &json!({})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let printed = run.json();
    assert_eq!(printed["route"]["profile"], "small");
    assert_eq!(printed["route"]["model"], "profile-model");
    assert_eq!(printed["request"]["temperature"], 0.7);
    assert_eq!(chosen.requests().len(), 1, "a dry run calls no model");

    // --temperature beats the profile's; --model pins the run: no profile at all.
    let run = Test::new()
        .file(REPO_CONFIG, &config)
        .spec(spec("out.py", &json!({})))
        .reply("```\nx = 1\n```\n")
        .args(&["--model", "test-model", "--temperature", "0.3"])
        .run();
    run.assert_code(0);
    assert_eq!(
        chosen.requests().len(),
        1,
        "the profile's server is not asked"
    );
    assert_eq!(run.requests[0].body["temperature"], 0.3);
    let route = run.result().route.expect("a route");
    assert_eq!(route.profile, None);
    assert_eq!(route.reason, "pinned by the command line (--model)");
}

#[test]
fn without_a_config_a_run_has_no_route_and_its_attempts_name_no_profile() {
    let run = Test::new()
        .spec(spec("out.py", &json!({})))
        .reply("```\nx = 1\n```\n")
        .run();
    run.assert_code(0);
    let result = run.result();
    assert!(result.route.is_none());
    assert_eq!(result.attempts[0].profile, None);
    assert_eq!(result.attempts[0].model.as_deref(), Some("test-model"));
    assert!(!run.stdout.contains("\"route\""));
}

/// A config whose default profile's server is down, with a working fallback.
fn fallback_config(backup: &ModelServer) -> String {
    format!(
        r#"default_profile = "small"
[profiles.small]
provider = "openai"
endpoint = "{}/v1"
model = "small-model"
cost = 1
fallback = ["backup"]
[profiles.backup]
provider = "openai"
endpoint = "{}/v1"
model = "backup-model"
cost = 2
"#,
        closed_port_url(),
        backup.url
    )
}

#[test]
fn a_dead_server_falls_back_and_a_later_run_skips_it_while_it_cools_down() {
    let backup = server(
        "backup-model",
        vec![
            Script::code("out.py", "x = 1\n"),
            Script::code("out.py", "x = 2\n"),
        ],
    );
    let run = Test::new()
        .file(REPO_CONFIG, fallback_config(&backup))
        .spec(spec("out.py", &json!({})))
        .args(&["--retries", "0"])
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success, "{}", result.summary);
    let route = result.route.as_ref().unwrap();
    assert_eq!(route.profile.as_deref(), Some("small"));
    let failed = &result.attempts[0];
    assert_eq!(
        (failed.profile.as_deref(), failed.outcome),
        (Some("small"), Outcome::ModelError)
    );
    let attempt = &result.attempts[1];
    assert_eq!(attempt.profile.as_deref(), Some("backup"));
    assert_eq!(attempt.model.as_deref(), Some("backup-model"));
    assert!(
        attempt
            .notes
            .iter()
            .any(|n| n.starts_with("profile `small` failed")),
        "{:?}",
        attempt.notes
    );
    assert_eq!(backup.requests().len(), 1);

    // The next run, on the same machine (the same home), does not try the dead server.
    std::fs::write(run.repo.join("out.py"), "").unwrap();
    crate::harness::git(&run.repo, &["add", "-A"]);
    crate::harness::git(&run.repo, &["commit", "-qm", "next"]);
    let spec_path = run.spec_path.display().to_string();
    let (code, stdout, stderr) = run.again(&[&spec_path, "--retries", "0"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let second = result_of(&stdout);
    let route = second.route.unwrap();
    assert_eq!(route.profile.as_deref(), Some("backup"));
    assert_eq!(route.candidates.len(), 1);
    assert_eq!(route.candidates[0].profile, "small");
    assert!(
        route.candidates[0].why_not.contains("cools down"),
        "{}",
        route.candidates[0].why_not
    );
    assert!(
        second.attempts[0].notes.is_empty(),
        "{:?}",
        second.attempts[0].notes
    );
    assert_eq!(backup.requests().len(), 2);

    // Picked by name, a cooling profile gives way to its fallback (a dry run: no call).
    let (code, stdout, stderr) =
        run.again(&[&spec_path, "--profile", "small", "--dry-run", "--force"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["route"]["profile"], "backup");
    assert_eq!(
        printed["route"]["reason"],
        "fallback of `small` (picked by flag --profile), whose server cools down"
    );
    assert_eq!(printed["route"]["candidates"][0]["profile"], "small");
}

/// Small fails its test, climbs to large: a config and spec for the ladder.
fn ladder_config(small: &ModelServer, large: &ModelServer, extra: &str) -> String {
    format!(
        r#"default_profile = "small"
{extra}
[profiles.small]
provider = "openai"
endpoint = "{}/v1"
model = "small-model"
escalate_to = "large"
[profiles.large]
provider = "openai"
endpoint = "{}/v1"
model = "large-model"
kinds = ["refactor"]
"#,
        small.url, large.url
    )
}

fn ladder_spec() -> serde_json::Value {
    spec(
        "out.txt",
        &json!({"test_command": "grep -qx good out.txt || { echo 'WANTED good'; exit 1; }", "max_attempts": 1}),
    )
}

#[test]
fn failed_attempts_climb_to_the_stronger_profile_with_the_failure_as_repair_input() {
    let small = server("small-model", vec![Script::code("out.txt", "bad\n")]);
    let large = server("large-model", vec![Script::code("out.txt", "good\n")]);
    let run = Test::new()
        .file(REPO_CONFIG, ladder_config(&small, &large, ""))
        .spec(ladder_spec())
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success, "{}", result.summary);
    let made: Vec<_> = result
        .attempts
        .iter()
        .map(|a| (a.profile.as_deref(), a.model.as_deref(), a.outcome))
        .collect();
    assert_eq!(
        made,
        [
            (Some("small"), Some("small-model"), Outcome::TestFailed),
            (Some("large"), Some("large-model"), Outcome::Ok)
        ]
    );
    assert!(result.attempts[1].notes[0].starts_with("escalated from profile `small`"));
    assert_eq!(result.model.unwrap().name, "large-model");
    let asked = large.requests();
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].last_user_message().contains("WANTED good"),
        "the test output carries over: {}",
        asked[0].last_user_message()
    );
    assert!(
        asked[0]
            .messages()
            .iter()
            .any(|(role, text)| role == "assistant" && text.contains("bad"))
    );

    // The ledger records the route and each attempt's own profile and model.
    let db = rusqlite::Connection::open(run.ledger_path()).unwrap();
    let (profile, reason): (String, String) = db
        .query_row("SELECT profile, route_reason FROM runs", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (profile.as_str(), reason.as_str()),
        ("small", "default_profile, fits kind `code` at score 10")
    );
    let mut attempts = db
        .prepare("SELECT profile, model FROM attempts ORDER BY n")
        .unwrap();
    let attempts: Vec<(String, String)> = attempts
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        attempts,
        [
            ("small".to_owned(), "small-model".to_owned()),
            ("large".to_owned(), "large-model".to_owned())
        ]
    );
}

#[test]
fn a_task_makes_at_most_max_calls_model_calls_and_escalates_when_the_ladder_ends() {
    let small = server(
        "small-model",
        vec![
            Script::code("out.txt", "bad\n"),
            Script::code("out.txt", "bad\n"),
        ],
    );
    let large = server("large-model", vec![Script::code("out.txt", "good\n")]);
    let mut spec = ladder_spec();
    spec["max_attempts"] = json!(2);
    let run = Test::new()
        .file(
            REPO_CONFIG,
            ladder_config(&small, &large, "[routing]\nmax_calls = 2\n"),
        )
        .spec(spec)
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate, "{}", result.summary);
    assert_eq!(result.attempts.len(), 2);
    assert!(large.requests().is_empty(), "the bound stops the climb");
    assert!(
        result.notes.iter().any(|n| n.contains("routing.max_calls")),
        "{:?}",
        result.notes
    );

    // Without the bound the same ladder ends at large, and only then escalates.
    let small = server("small-model", vec![Script::code("out.txt", "bad\n")]);
    let large = server("large-model", vec![Script::code("out.txt", "worse\n")]);
    let run = Test::new()
        .file(REPO_CONFIG, ladder_config(&small, &large, ""))
        .spec(ladder_spec())
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    assert_eq!(result.attempts.len(), 2);
    assert_eq!(large.requests().len(), 1);
}

#[test]
fn an_api_key_goes_only_to_an_endpoint_the_user_named() {
    let profile = |name: &str, url: &str| {
        format!(
            "[profiles.{name}]\nprovider = \"openai\"\nendpoint = \"{url}/v1\"\nmodel = \"test-model\"\n"
        )
    };
    let repos = server("test-model", vec![Script::code("out.py", "x = 1\n")]);
    let run = Test::new()
        .file(REPO_CONFIG, profile("shared", &repos.url))
        .spec(spec("out.py", &json!({"profile": "shared"})))
        .env("LOCAL_TASK_API_KEY", "s3cret-key")
        .run();
    run.assert_code(0);
    let asked = repos.requests();
    assert_eq!(asked.len(), 1);
    assert!(
        !asked[0].headers.contains_key("authorization"),
        "a key went to a repository's endpoint: {:?}",
        asked[0].headers
    );

    let users = server("test-model", vec![Script::code("out.py", "x = 1\n")]);
    let run = Test::new()
        .home_file(USER_CONFIG, profile("mine", &users.url))
        .spec(spec("out.py", &json!({"profile": "mine"})))
        .env("LOCAL_TASK_API_KEY", "s3cret-key")
        .run();
    run.assert_code(0);
    let asked = users.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].headers["authorization"], "Bearer s3cret-key");
}

#[test]
fn a_batch_pays_for_a_dead_server_once() {
    let backup = server(
        "backup-model",
        vec![
            Script::code("a.py", "a = 1\n"),
            Script::code("b.py", "b = 1\n"),
        ],
    );
    let specs = [
        (
            "a.json",
            json!({"task_id": "A", "description": "Write a.", "output_file": "a.py"}),
        ),
        (
            "b.json",
            json!({"task_id": "B", "description": "Write b.", "output_file": "b.py", "depends_on": ["A"]}),
        ),
    ];
    let run = Test::new()
        .file(REPO_CONFIG, fallback_config(&backup))
        .run_with(move |spec_path| {
            let dir = spec_path.parent().unwrap().join("specs");
            std::fs::create_dir_all(&dir).unwrap();
            for (name, spec) in &specs {
                std::fs::write(dir.join(name), spec.to_string()).unwrap();
            }
            vec![
                dir.display().to_string(),
                "--jobs".into(),
                "1".into(),
                "--retries".into(),
                "0".into(),
            ]
        });
    run.assert_code(0);
    // JSON Lines: every task's result, then the batch's summary.
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.pop();
    let results: Vec<TaskResult> = lines.into_iter().map(result_of).collect();
    let of = |id: &str| {
        results
            .iter()
            .find(|r| r.task_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no result for {id}:\n{}", run.stdout))
    };
    let (a, b) = (of("A"), of("B"));
    assert_eq!(a.attempts.len(), 2, "A met the dead server and fell back");
    assert_eq!(a.attempts[0].outcome, Outcome::ModelError);
    assert_eq!(b.attempts.len(), 1, "B did not try it");
    let route = b.route.as_ref().unwrap();
    assert_eq!(route.profile.as_deref(), Some("backup"));
    assert!(route.candidates[0].why_not.contains("cools down"));
}

#[test]
fn a_profile_whose_record_for_the_kind_is_poor_is_passed_over() {
    let small = server("small-model", vec![Script::code("out.txt", "bad\n")]);
    let large = server(
        "large-model",
        vec![
            Script::code("out.txt", "good\n"),
            Script::code("out.txt", "good\n"),
        ],
    );
    let config = format!(
        r#"default_profile = "small"
[routing]
min_runs = 1
min_success_rate = 0.5
[profiles.small]
provider = "openai"
endpoint = "{}/v1"
model = "small-model"
[profiles.large]
provider = "openai"
endpoint = "{}/v1"
model = "large-model"
cost = 4
"#,
        small.url, large.url
    );
    let run = Test::new()
        .file(REPO_CONFIG, config)
        .spec(ladder_spec())
        .run();
    run.assert_code(1);
    assert_eq!(
        run.result().route.unwrap().profile.as_deref(),
        Some("small")
    );

    // The ledger now holds small's failed `code` run: the next route passes it over.
    let spec_path = run.spec_path.display().to_string();
    let (code, stdout, stderr) = run.again(&[&spec_path]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let route = result_of(&stdout).route.unwrap();
    assert_eq!(route.profile.as_deref(), Some("large"));
    assert_eq!(
        route.candidates[0].why_not,
        "succeeded in 0 of its 1 `code` runs (0%), below routing.min_success_rate 50%"
    );
    assert_eq!(small.requests().len(), 1);
}

#[test]
fn a_rung_that_cannot_be_reached_ends_the_ladder_with_a_note() {
    let small = server("small-model", vec![Script::code("out.txt", "bad\n")]);
    let config = format!(
        "default_profile = \"small\"\n[profiles.small]\nprovider = \"openai\"\nendpoint = \"{}/v1\"\nmodel = \"small-model\"\nescalate_to = \"large\"\n[profiles.large]\nprovider = \"openai\"\nendpoint = \"{}\"\nkinds = [\"refactor\"]\n",
        small.url,
        closed_port_url()
    );
    let run = Test::new()
        .file(REPO_CONFIG, config)
        .spec(ladder_spec())
        .args(&["--retries", "0"])
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate, "{}", result.summary);
    let made: Vec<_> = result
        .attempts
        .iter()
        .map(|a| (a.profile.as_deref(), a.outcome))
        .collect();
    assert_eq!(
        made,
        [
            (Some("small"), Outcome::TestFailed),
            (Some("large"), Outcome::ModelError)
        ]
    );
    run.assert_unchanged();
    assert!(
        result
            .notes
            .iter()
            .any(|n| n.starts_with("could not escalate from profile `small` to profile `large`")),
        "{:?}",
        result.notes
    );
}

#[test]
fn a_failing_fallback_hands_on_to_the_next_of_the_same_list() {
    let backup = server("backup-model", vec![Script::code("out.py", "x = 1\n")]);
    let config = format!(
        r#"default_profile = "small"
[profiles.small]
provider = "openai"
endpoint = "{}/v1"
model = "small-model"
fallback = ["second", "backup"]
[profiles.second]
provider = "openai"
endpoint = "{}/v1"
model = "second-model"
[profiles.backup]
provider = "openai"
endpoint = "{}/v1"
model = "backup-model"
"#,
        closed_port_url(),
        closed_port_url(),
        backup.url
    );
    let run = Test::new()
        .file(REPO_CONFIG, config)
        .spec(spec("out.py", &json!({})))
        .args(&["--retries", "0"])
        .run();
    run.assert_code(0);
    let made: Vec<_> = run
        .result()
        .attempts
        .iter()
        .map(|a| (a.profile.clone().unwrap_or_default(), a.outcome))
        .collect();
    assert_eq!(
        made,
        [
            ("small".to_owned(), Outcome::ModelError),
            ("second".to_owned(), Outcome::ModelError),
            ("backup".to_owned(), Outcome::Ok)
        ]
    );
}

#[test]
fn a_fallback_standing_in_climbs_where_its_profile_would() {
    let lms = server("lms-model", vec![Script::code("out.txt", "bad\n")]);
    let large = server("large-model", vec![Script::code("out.txt", "good\n")]);
    let config = format!(
        r#"default_profile = "small"
[profiles.small]
provider = "openai"
endpoint = "{}/v1"
model = "small-model"
fallback = ["lms"]
escalate_to = "large"
[profiles.lms]
provider = "openai"
endpoint = "{}/v1"
model = "lms-model"
[profiles.large]
provider = "openai"
endpoint = "{}/v1"
model = "large-model"
kinds = ["refactor"]
"#,
        closed_port_url(),
        lms.url,
        large.url
    );
    let run = Test::new()
        .file(REPO_CONFIG, config)
        .spec(ladder_spec())
        .args(&["--retries", "0"])
        .run();
    run.assert_code(0);
    let made: Vec<_> = run
        .result()
        .attempts
        .iter()
        .map(|a| (a.profile.clone().unwrap_or_default(), a.outcome))
        .collect();
    assert_eq!(
        made,
        [
            ("small".to_owned(), Outcome::ModelError),
            ("lms".to_owned(), Outcome::TestFailed),
            ("large".to_owned(), Outcome::Ok)
        ]
    );
}

#[test]
fn routing_settings_out_of_range_are_refused_naming_their_line() {
    for (text, expected) in [
        (
            "[profiles.a]\nmin_score = 8\nmax_score = 5\n",
            ":3: key `profiles.a.max_score`: is below min_score (8): no task could fit",
        ),
        (
            "[profiles.a]\nmin_score = 11\n",
            ":2: key `profiles.a.min_score`: must be a score from 0 to 10",
        ),
        (
            "[routing]\nmax_calls = 0\n",
            ":2: key `routing.max_calls`: must be more than 0",
        ),
        (
            "[routing]\nmin_success_rate = 1.5\n",
            ":2: key `routing.min_success_rate`: must be a share between 0 and 1 (0.6 is 60%)",
        ),
    ] {
        let run = Test::new()
            .file(REPO_CONFIG, text)
            .run_with(|_| vec!["config".into(), "--json".into()]);
        run.assert_code(2);
        let message = run.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.ends_with(expected), "{message}");
    }
}
