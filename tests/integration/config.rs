//! Configuration files, profiles and triage: every config error class, precedence, the
//! API-key rule, `config`, `config --check`, `check` and the `triage` of a run's result.

use execute_local_task::check::{CheckReport, ProfileProbe};
use execute_local_task::config::Config;
use execute_local_task::profile::Origin;
use execute_local_task::triage::Verdict;
use serde_json::json;

use crate::harness::{MODEL, Run, Script, Test, closed_port_url, spec};

const REPO_CONFIG: &str = ".execute-local-task/config.toml";
const USER_CONFIG: &str = ".config/execute-local-task/config.toml";

fn config_run(test: Test, args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    test.run_with(move |_| args)
}

/// The error document of `config` on a repository whose config is `text`.
fn config_error(text: &str) -> String {
    let run = config_run(Test::new().file(REPO_CONFIG, text), &["config", "--json"]);
    run.assert_code(2);
    let json = run.json();
    assert_eq!(json["status"], "error", "{}", run.stdout);
    assert_eq!(json["error"]["kind"], "config", "{}", run.stdout);
    let message = json["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with(&format!("{}", run.repo.join(REPO_CONFIG).display())),
        "the message names the file: {message}"
    );
    assert!(run.stderr.contains(&message), "{}", run.stderr);
    message
}

fn loaded(run: &Run) -> Config {
    run.assert_code(0);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not a config ({e}):\n{}", run.stdout))
}

#[test]
fn a_syntax_error_names_file_and_line() {
    let message = config_error("default_profile = \"a\"\n[profiles.a\nmodel = \"m\"\n");
    assert!(message.contains("config.toml:2: "), "{message}");
}

#[test]
fn an_unknown_key_names_its_line_key_and_the_nearest_known_one() {
    let message = config_error("[profiles.a]\nmodel = \"m\"\ncontext_windw = 4096\n");
    assert!(
        message.ends_with(
            "config.toml:3: key `profiles.a.context_windw`: unknown key `context_windw`; did you mean `context_window`?"
        ),
        "{message}"
    );
    let message = config_error("[triage]\nmax_line = 80\n");
    assert!(message.contains("did you mean `max_lines`?"), "{message}");
}

#[test]
fn a_wrong_type_names_line_and_key() {
    let message = config_error("[profiles.a]\nmodel = \"m\"\ntemperature = \"warm\"\n");
    assert!(
        message.contains("config.toml:3: key `profiles.a.temperature`: "),
        "{message}"
    );
    let message = config_error("[profiles.a]\nrole = \"judge\"\n");
    assert!(
        message.contains(":2: key `profiles.a.role`: ") && message.contains("validator"),
        "{message}"
    );
}

#[test]
fn a_reference_to_an_unknown_profile_is_refused() {
    let message = config_error("default_profile = \"smal\"\n[profiles.small]\nmodel = \"m\"\n");
    assert!(
        message.ends_with(
            "config.toml:1: key `default_profile`: unknown profile `smal`; did you mean `small`?"
        ),
        "{message}"
    );
    let message = config_error(
        "[profiles.small]\nmodel = \"m\"\nfallback = [\"lms\"]\n[profiles.large]\nmodel = \"l\"\n",
    );
    assert!(
        message.contains(":3: key `profiles.small.fallback`: unknown profile `lms`"),
        "{message}"
    );
    let message = config_error("[profiles.small]\nescalate_to = \"huge\"\n");
    assert!(
        message.contains(":2: key `profiles.small.escalate_to`: unknown profile `huge`"),
        "{message}"
    );
}

#[test]
fn an_escalation_cycle_is_refused() {
    let message = config_error(
        "[profiles.a]\nescalate_to = \"b\"\n[profiles.b]\nescalate_to = \"c\"\n[profiles.c]\nescalate_to = \"a\"\n",
    );
    assert!(
        message.contains("escalation cycle: a -> b -> c -> a"),
        "{message}"
    );
    assert!(
        message.contains("key `profiles.c.escalate_to`"),
        "{message}"
    );
}

#[test]
fn a_run_with_a_bad_config_is_refused_before_any_model_call() {
    let run = Test::new()
        .file(REPO_CONFIG, "[profiles.a]\nmodle = \"m\"\n")
        .spec(spec("out.py", &json!({})))
        .run();
    let error = run.assert_error(2, "config");
    assert!(
        error.message.contains("did you mean `model`?"),
        "{}",
        error.message
    );
    assert!(run.requests.is_empty());
    run.assert_unchanged();
}

#[test]
fn the_repository_wins_per_key_and_the_command_line_beats_the_environment() {
    let test = || {
        Test::new()
            .file(
                REPO_CONFIG,
                "default_profile = \"small\"\n[profiles.small]\nmodel = \"repo-model\"\n[profiles.large]\nmodel = \"big\"\n",
            )
            .home_file(
                USER_CONFIG,
                "default_profile = \"large\"\n[profiles.small]\nmodel = \"user-model\"\ntemperature = 0.1\n[profiles.mine]\nmodel = \"m\"\n",
            )
    };
    let config = loaded(&config_run(test(), &["config", "--json"]));
    assert!(config.files.iter().all(|f| f.found));
    let small = &config.profiles["small"];
    let model = small.model.as_ref().unwrap();
    assert_eq!(
        (model.value.as_str(), model.source, model.line),
        ("repo-model", Origin::Repository, Some(3))
    );
    let temperature = small.temperature.as_ref().unwrap();
    assert_eq!((temperature.value, temperature.source), (0.1, Origin::User));
    assert!(config.profiles.contains_key("mine"));
    assert_eq!(config.default_profile.unwrap().value, "small");
    assert_eq!(config.triage.max_lines.value, 50);
    assert_eq!(config.triage.max_lines.source, Origin::Default);
    assert!(config.selected.is_none());

    let run = config_run(
        test().env("LOCAL_TASK_PROFILE", "large"),
        &["config", "--json"],
    );
    let selected = loaded(&run).selected.unwrap();
    assert_eq!(
        (selected.value.as_str(), selected.source),
        ("large", Origin::Environment)
    );
    let run = config_run(
        test().env("LOCAL_TASK_PROFILE", "large"),
        &["config", "--json", "--profile", "mine"],
    );
    let selected = loaded(&run).selected.unwrap();
    assert_eq!(
        (selected.value.as_str(), selected.source),
        ("mine", Origin::Flag)
    );

    let run = config_run(test(), &["config", "--json", "--profile", "nope"]);
    run.assert_code(2);
    assert!(
        run.stdout.contains("unknown profile `nope`"),
        "{}",
        run.stdout
    );

    let table = config_run(test(), &["config"]);
    table.assert_code(0);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("profiles.small.model")
                && l.contains("\"repo-model\"")
                && l.ends_with("config.toml:3")),
        "{}",
        table.stdout
    );
}

#[test]
fn no_key_goes_to_an_endpoint_only_the_repository_named() {
    let collector = closed_port_url();
    let repo = format!("[profiles.team]\nendpoint = \"{collector}\"\nmodel = \"m\"\n");
    let config = loaded(&config_run(
        Test::new().file(REPO_CONFIG, &repo),
        &["config", "--json"],
    ));
    assert!(!config.profiles["team"].key.allowed);

    // The repository overriding the endpoint of the user's own profile, which names a key.
    let user =
        "[profiles.team]\nendpoint = \"http://127.0.0.1:9/v1\"\napi_key_env = \"TEAM_KEY\"\n";
    let run = config_run(
        Test::new()
            .file(REPO_CONFIG, &repo)
            .home_file(USER_CONFIG, user)
            .env("TEAM_KEY", "secret")
            .env("LOCAL_TASK_API_KEY", "secret"),
        &["config", "--check", "--json"],
    );
    run.assert_code(3);
    let probes: Vec<ProfileProbe> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(probes[0].endpoint.as_deref(), Some(collector.as_str()));
    assert!(!probes[0].key_sent, "{}", run.stdout);
    assert!(!run.stdout.contains("secret"));

    // Named by the user too: the key may go there.
    let user = format!(
        "[profiles.team]\napi_key_env = \"TEAM_KEY\"\n[profiles.mine]\nendpoint = \"{collector}/\"\n"
    );
    let run = config_run(
        Test::new()
            .file(REPO_CONFIG, &repo)
            .home_file(USER_CONFIG, &user)
            .env("TEAM_KEY", "secret"),
        &["config", "--check", "--json"],
    );
    let probes: Vec<ProfileProbe> = serde_json::from_str(&run.stdout).unwrap();
    let team = probes.iter().find(|p| p.profile == "team").unwrap();
    assert!(team.key_sent, "{}", run.stdout);

    // A repository may not choose the variable a key is read from.
    let message = config_error("[profiles.a]\napi_key_env = \"AWS_SECRET_ACCESS_KEY\"\n");
    assert!(
        message.contains(":2: key `profiles.a.api_key_env`: only your own config"),
        "{message}"
    );
}

#[test]
fn config_check_probes_each_profiles_server_and_model() {
    // Without an endpoint a profile uses the run's (LOCAL_TASK_ENDPOINT: the scripted server).
    let run = config_run(
        Test::new().file(
            REPO_CONFIG,
            format!("[profiles.here]\nmodel = \"{MODEL}\"\ncontext_window = 8192\n[profiles.missing]\nmodel = \"other\"\n"),
        ),
        &["config", "--check", "--json"],
    );
    run.assert_code(3);
    let probes: Vec<ProfileProbe> = serde_json::from_str(&run.stdout).unwrap();
    let here = &probes[0];
    assert!(here.reachable && here.model_present == Some(true) && here.context_window_known);
    let missing = &probes[1];
    assert_eq!(
        (missing.reachable, missing.model_present),
        (true, Some(false))
    );
    assert!(
        run.stderr
            .contains("profile `missing`: the server does not list model `other`"),
        "{}",
        run.stderr
    );
}

/// The specs of the triage table: name, spec fields, files in the repository.
fn triage_table() -> Test {
    let long_file: String = (0..200)
        .map(|i| format!("x{i} = {i}\n"))
        .collect::<Vec<_>>()
        .concat();
    let imports = "import os\nimport sys\nimport json\nfrom a import b\n\ndef f():\n    pass\n";
    let huge_context: String = "# a very long context line that fills the window\n".repeat(400);
    Test::new()
        .file(
            REPO_CONFIG,
            "default_profile = \"small\"\n[profiles.small]\nmodel = \"m\"\ncontext_window = 16384\nkinds = [\"code\", \"test\"]\n[profiles.tiny]\nmodel = \"t\"\ncontext_window = 2048\n[profiles.writer-doc]\nmodel = \"d\"\nkinds = [\"doc\"]\ncost = 0.5\n",
        )
        .file("big.py", &long_file)
        .file("imports.py", imports)
        .file("huge.txt", &huge_context)
        .file("specs/a-atomic.json", json!({"task_id": "atomic", "description": "Add `double(x)` returning 2 * x.", "output_file": "new.py", "test_command": "true"}).to_string())
        .file("specs/b-untested.json", json!({"task_id": "untested", "description": "Add `double(x)` returning 2 * x.", "output_file": "new.py"}).to_string())
        .file("specs/c-design.json", json!({"task_id": "design", "description": "Design the architecture to migrate the session cache to a database.", "output_file": "new.py"}).to_string())
        .file("specs/d-large.json", json!({"task_id": "large", "description": "Rename x1 to y1.", "output_file": "big.py", "test_command": "true"}).to_string())
        .file("specs/e-files.json", json!({"task_id": "files", "description": "Split helpers.", "output_files": ["a.py", "b.py", "c.py"], "test_command": "true"}).to_string())
        .file("specs/f-imports.json", json!({"task_id": "imports", "description": "Make f return 1.", "output_file": "imports.py", "test_command": "true"}).to_string())
        .file("specs/g-doc.json", json!({"task_id": "doc", "kind": "doc", "description": "Document f.", "output_file": "NOTES.md", "test_command": "true"}).to_string())
        .file("specs/h-window.json", json!({"task_id": "window", "profile": "tiny", "description": "Summarise the context.", "output_file": "new.py", "context_files": ["huge.txt"], "test_command": "true"}).to_string())
}

#[test]
fn triage_scores_a_table_of_specs_and_refuses_one_that_cannot_fit() {
    let run = config_run(triage_table(), &["check", "specs"]);
    run.assert_code(2);
    let report: CheckReport = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report.status, "error");
    let rows: Vec<String> = report
        .specs
        .iter()
        .map(|spec| {
            let triage = spec.triage.as_ref().expect("a triage");
            let factors: Vec<String> = triage
                .reasons
                .iter()
                .map(|r| format!("{}{}", r.factor, r.points))
                .collect();
            format!(
                "{:9} score {:2} {:18} profile {:10} can_run {:5} [{}]",
                spec.task_id.as_deref().unwrap_or("?"),
                triage.score,
                format!("{:?}", triage.verdict),
                triage.profile.as_deref().unwrap_or("-"),
                spec.can_run,
                factors.join(" ")
            )
        })
        .collect();
    insta::assert_snapshot!(rows.join("\n"));
    assert!(
        run.stderr
            .contains("h-window.json: does not fit its profile's context window"),
        "{}",
        run.stderr
    );
    let window = report.specs.last().unwrap().triage.as_ref().unwrap();
    assert_eq!(window.verdict, Verdict::Keep);
    assert!(!window.estimate.fits && window.estimate.window == 2048);
}

#[test]
fn check_names_a_bad_spec_in_a_directory_and_validate_only_reads_only_specs() {
    let make = || {
        Test::new()
            .file("specs/good.json", json!({"task_id": "good", "description": "d", "output_file": "a.py", "test_command": "true"}).to_string())
            .file("specs/nested/ctx.json", json!({"task_id": "ctx", "description": "d", "output_file": "b.py", "context_files": ["missing.py"]}).to_string())
    };
    let run = config_run(make(), &["check", "specs", "--validate-only"]);
    run.assert_code(0);
    let report: CheckReport = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report.specs.len(), 2);
    assert!(report.specs.iter().all(|s| s.valid && s.triage.is_none()));

    // The full check reads the context too: the missing file is found.
    let run = config_run(make(), &["check", "specs"]);
    run.assert_code(2);
    let report: CheckReport = serde_json::from_str(&run.stdout).unwrap();
    let ctx = report
        .specs
        .iter()
        .find(|s| s.task_id.as_deref() == Some("ctx"))
        .unwrap();
    assert_eq!(ctx.error.as_ref().unwrap().kind, "context");
    assert!(
        run.stderr.contains("nested/ctx.json: context: "),
        "{}",
        run.stderr
    );

    let run = config_run(
        make().file(
            "specs/bad.json",
            r#"{"task_id": "bad", "descripton": "d", "output_file": "c.py"}"#,
        ),
        &["check", "specs", "--validate-only"],
    );
    run.assert_code(2);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("error: specs/bad.json: field `descripton`")),
        "the spec is named once: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean `description`?"),
        "{}",
        run.stderr
    );
    let report: CheckReport = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report.specs.iter().filter(|s| !s.valid).count(), 1);
}

#[test]
fn every_run_carries_its_triage_and_keep_does_not_block_it() {
    let run = Test::new()
        .spec(spec(
            "out.py",
            &json!({"description": "Design the security architecture of the session layer."}),
        ))
        .script(Script::code("out.py", "x = 1\n"))
        .run();
    run.assert_code(0);
    let triage = run.result().triage.expect("the result carries its triage");
    assert_eq!(triage.verdict, Verdict::Keep, "{triage:?}");
    assert!(triage.reasons.iter().any(|r| r.factor == "design"));
    assert_eq!(triage.profile, None);
    assert_eq!(run.read("out.py").as_deref(), Some("x = 1\n"));
}

#[test]
fn a_spec_naming_an_unknown_profile_cannot_run_and_the_flag_overrides_the_spec() {
    let make = || {
        Test::new()
            .file(REPO_CONFIG, "[profiles.small]\nmodel = \"m\"\n[profiles.large]\nmodel = \"l\"\n")
            .file("specs/a.json", json!({"task_id": "a", "description": "d", "output_file": "a.py", "profile": "smal", "test_command": "true"}).to_string())
            .file("specs/b.json", json!({"task_id": "b", "description": "d", "output_file": "b.py", "profile": "small", "test_command": "true"}).to_string())
    };
    let run = config_run(make(), &["check", "specs"]);
    run.assert_code(2);
    let report: CheckReport = serde_json::from_str(&run.stdout).unwrap();
    let error = report.specs[0].error.as_ref().unwrap();
    assert_eq!(error.kind, "spec");
    assert!(
        error
            .message
            .contains("field `profile`: unknown profile `smal`"),
        "{}",
        error.message
    );
    let triage = report.specs[1].triage.as_ref().unwrap();
    assert_eq!(triage.profile.as_deref(), Some("small"));

    let run = config_run(make(), &["check", "specs/b.json", "--profile", "large"]);
    run.assert_code(0);
    let report: CheckReport = serde_json::from_str(&run.stdout).unwrap();
    let triage = report.specs[0].triage.as_ref().unwrap();
    assert_eq!(triage.profile.as_deref(), Some("large"));
    assert_eq!(
        triage.profile_reason.as_deref(),
        Some("picked by flag --profile")
    );
}

#[test]
fn a_run_with_an_unknown_profile_is_refused_before_any_model_call() {
    let run = Test::new()
        .spec(spec("out.py", &json!({})))
        .args(&["--profile", "nope"])
        .run();
    let error = run.assert_error(2, "usage");
    assert!(
        error
            .message
            .starts_with("flag --profile: unknown profile `nope`"),
        "{}",
        error.message
    );
    assert!(run.requests.is_empty());
    run.assert_unchanged();
}

#[test]
fn a_repository_config_that_is_a_symlink_out_of_the_repository_is_refused() {
    let run = config_run(
        Test::new()
            .home_file("outside.toml", "[profiles.mine]\nmodel = \"m\"\n")
            .before(|repo| {
                let outside = repo.parent().unwrap().join("home/outside.toml");
                std::fs::create_dir_all(repo.join(".execute-local-task")).unwrap();
                std::os::unix::fs::symlink(outside, repo.join(REPO_CONFIG)).unwrap();
            }),
        &["config", "--json"],
    );
    run.assert_code(2);
    let json = run.json();
    assert_eq!(json["error"]["kind"], "config", "{}", run.stdout);
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("leads outside the repository"),
        "{message}"
    );
}

#[test]
fn a_dry_run_shows_the_triage_too() {
    let run = Test::new()
        .spec(spec("out.py", &json!({"test_command": "true"})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let triage: execute_local_task::triage::Triage =
        serde_json::from_value(run.json()["triage"].clone()).expect("a triage");
    assert_eq!((triage.score, triage.verdict), (10, Verdict::Delegate));
}
