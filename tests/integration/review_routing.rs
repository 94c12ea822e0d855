//! Review of profiles, routing, fallback, escalation and the validator: the API-key rule
//! through every way a run reaches a server, and what a run says against what it did.

use serde_json::json;

use crate::harness::{ModelServer, Script, Test, spec};

const REPO_CONFIG: &str = ".execute-local-task/config.toml";
const USER_CONFIG: &str = ".config/execute-local-task/config.toml";
const REVIEWER: &str = "reviewer-model";

/// A validator profile without an endpoint reviews on the writer's server; when only the
/// repository named that server, no key may go there — not the writer's, nor the one the
/// validator profile would send to an endpoint of its own.
#[test]
fn a_validator_borrowing_a_repository_endpoint_sends_it_no_key() {
    let shared = ModelServer::start(
        vec![Script::code("greeting.txt", "hello\n")],
        vec!["test-model".to_owned(), REVIEWER.to_owned()],
    );
    shared.route(
        REVIEWER,
        vec![Script::reply(
            &json!({"pass": true, "issues": [], "confidence": 0.9}).to_string(),
        )],
    );
    let config = format!(
        "default_profile = \"writer\"\n\n[profiles.writer]\nprovider = \"openai\"\n\
         endpoint = \"{}/v1\"\nmodel = \"test-model\"\nvalidator = \"reviewer\"\n\n\
         [profiles.reviewer]\nrole = \"validator\"\nmodel = \"{REVIEWER}\"\n",
        shared.url
    );
    let run = Test::new()
        .file(REPO_CONFIG, config)
        .spec(spec(
            "greeting.txt",
            &json!({"test_command": "grep -qx hello greeting.txt"}),
        ))
        .env("LOCAL_TASK_API_KEY", "s3cret-key")
        .run();
    run.assert_code(0);
    let asked = shared.requests();
    assert_eq!(asked.len(), 2, "the writer and the reviewer asked");
    for request in &asked {
        assert!(
            !request.headers.contains_key("authorization"),
            "a key went to a repository's endpoint with {}: {:?}",
            request.body["model"],
            request.headers
        );
    }
}

/// The variable a profile's `api_key_env` names holds a key like `LOCAL_TASK_API_KEY`
/// does, so the test command — model-written code — must not see it either.
#[test]
fn a_profiles_key_variable_is_kept_from_the_test() {
    let server = ModelServer::start(
        vec![Script::code("greeting.txt", "hello\n")],
        vec!["test-model".to_owned()],
    );
    let config = format!(
        "[profiles.mine]\nprovider = \"openai\"\nendpoint = \"{}/v1\"\nmodel = \"test-model\"\n\
         api_key_env = \"MY_TEAM_KEY\"\n",
        server.url
    );
    let run = Test::new()
        .home_file(USER_CONFIG, config)
        .spec(spec(
            "greeting.txt",
            &json!({
                "profile": "mine",
                "test_command": "test -z \"$MY_TEAM_KEY\" && grep -qx hello greeting.txt",
            }),
        ))
        .env("MY_TEAM_KEY", "team-s3cret")
        .run();
    run.assert_code(0);
    assert_eq!(
        server.requests()[0].headers["authorization"],
        "Bearer team-s3cret",
        "the key went where the user's config said"
    );
}

/// A reviewer whose server is down is not the writer's server failing: the run stops
/// (exit 3) without cooling the writer's server or handing the task to its fallback.
#[test]
fn a_down_validator_neither_cools_the_writer_nor_falls_back() {
    let writer = ModelServer::start(
        vec![Script::code("greeting.txt", "hello\n")],
        vec!["test-model".to_owned()],
    );
    let backup = ModelServer::start(
        vec![Script::code("greeting.txt", "hello\n")],
        vec!["test-model".to_owned()],
    );
    let config = format!(
        "default_profile = \"small\"\n\n[profiles.small]\nprovider = \"openai\"\n\
         endpoint = \"{}/v1\"\nmodel = \"test-model\"\nfallback = [\"backup\"]\n\
         validator = \"reviewer\"\n\n[profiles.backup]\nprovider = \"openai\"\n\
         endpoint = \"{}/v1\"\nmodel = \"test-model\"\nvalidator = \"reviewer\"\n\n\
         [profiles.reviewer]\nrole = \"validator\"\nprovider = \"openai\"\n\
         endpoint = \"{}\"\nmodel = \"{REVIEWER}\"\n",
        writer.url,
        backup.url,
        crate::harness::closed_port_url()
    );
    let run = Test::new()
        .file(REPO_CONFIG, config)
        .spec(spec(
            "greeting.txt",
            &json!({"test_command": "grep -qx hello greeting.txt"}),
        ))
        .arg("--retries")
        .arg("0")
        .run();
    run.assert_error(3, "connection_refused");
    assert_eq!(run.read("greeting.txt"), None);
    assert_eq!(writer.requests().len(), 1);
    assert_eq!(
        backup.requests().len(),
        0,
        "the writer's fallback was asked"
    );
    let cooldown = run
        .ledger_path()
        .parent()
        .map(|dir| dir.join("cooldown.json"))
        .and_then(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default();
    assert!(
        !cooldown.contains(&writer.url.replace("http://", "")),
        "the writer's server was cooled for the reviewer's fault: {cooldown}"
    );
}

/// A profile whose every server is down ends the run with exit 3 and a message naming
/// each profile tried and its server, not only the last URL.
#[test]
fn a_profile_whose_every_server_is_down_names_them_all() {
    let (first, second) = (
        crate::harness::closed_port_url(),
        crate::harness::closed_port_url(),
    );
    let config = format!(
        "[profiles.small]\nprovider = \"openai\"\nendpoint = \"{first}/v1\"\nmodel = \"m\"\n\
         fallback = [\"spare\"]\n\n[profiles.spare]\nprovider = \"openai\"\n\
         endpoint = \"{second}/v1\"\nmodel = \"m\"\n"
    );
    let run = Test::new()
        .file(REPO_CONFIG, config)
        .spec(spec("out.py", &json!({})))
        .args(&["--profile", "small", "--retries", "0"])
        .run();
    let error = run.assert_error(3, "connection_refused");
    for named in ["`small`", "`spare`", first.as_str(), second.as_str()] {
        assert!(
            error.message.contains(named),
            "{named} not in: {}",
            error.message
        );
    }
    assert!(run.stderr.contains("`spare`"), "{}", run.stderr);
}

/// A validator profile reviews; it never writes. Picking one to write — by `--profile`,
/// `LOCAL_TASK_PROFILE` or the spec's `profile` — is bad input (exit 2) naming where it
/// was picked, before any model call.
#[test]
fn a_validator_profile_picked_to_write_is_refused() {
    let server = ModelServer::start(
        vec![Script::code("out.py", "x = 1\n")],
        vec![REVIEWER.to_owned()],
    );
    let config = format!(
        "[profiles.writer]\nprovider = \"openai\"\nendpoint = \"{0}/v1\"\nmodel = \"{REVIEWER}\"\n\n\
         [profiles.reviewer]\nrole = \"validator\"\nprovider = \"openai\"\n\
         endpoint = \"{0}/v1\"\nmodel = \"{REVIEWER}\"\n",
        server.url
    );
    let picks: [(&str, Test); 3] = [
        (
            "--profile",
            Test::new()
                .args(&["--profile", "reviewer"])
                .spec(spec("out.py", &json!({}))),
        ),
        (
            "LOCAL_TASK_PROFILE",
            Test::new()
                .env("LOCAL_TASK_PROFILE", "reviewer")
                .spec(spec("out.py", &json!({}))),
        ),
        (
            "profile",
            Test::new().spec(spec("out.py", &json!({"profile": "reviewer"}))),
        ),
    ];
    for (named, test) in picks {
        let run = test.file(REPO_CONFIG, config.clone()).run();
        let error = run.assert_error(2, if named == "profile" { "spec" } else { "usage" });
        assert!(
            error.message.contains(named) && error.message.contains("validator"),
            "{named}: {}",
            error.message
        );
        assert_eq!(run.read("out.py"), None);
    }
    assert_eq!(server.requests().len(), 0);
}

/// Neither may a config hand a task to a validator profile to write: `default_profile`,
/// a `fallback` or an `escalate_to` naming one is refused with its file, line and key.
#[test]
fn a_config_handing_writing_to_a_validator_is_refused() {
    let reviewer = "[profiles.reviewer]\nrole = \"validator\"\nmodel = \"r\"\n";
    let cases = [
        (
            format!("default_profile = \"reviewer\"\n\n[profiles.w]\nmodel = \"m\"\n\n{reviewer}"),
            ":1: key `default_profile`",
        ),
        (
            format!("[profiles.w]\nmodel = \"m\"\nfallback = [\"reviewer\"]\n\n{reviewer}"),
            ":3: key `profiles.w.fallback`",
        ),
        (
            format!("[profiles.w]\nmodel = \"m\"\nescalate_to = \"reviewer\"\n\n{reviewer}"),
            ":3: key `profiles.w.escalate_to`",
        ),
    ];
    for (config, expected) in cases {
        let run = Test::new()
            .file(REPO_CONFIG, config)
            .spec(spec("out.py", &json!({})))
            .run();
        let error = run.assert_error(2, "config");
        assert!(
            error.message.contains(expected) && error.message.contains("validator profile"),
            "{expected}: {}",
            error.message
        );
    }
}

/// A profile `name` on the scripted server at `url` offering model `m`, with `extra` lines.
fn profile(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[profiles.{name}]\nprovider = \"openai\"\nendpoint = \"{url}/v1\"\nmodel = \"m\"\n{extra}\n"
    )
}

/// Runs a task (its test wants `good` in `out.txt`) under `config`, held at the test hook
/// `phase` and sent SIGTERM there: the run must stop as a signal stops it anywhere (exit
/// 143, `interrupted`, the tree as it was), and `next` must never be asked.
fn sigterm_at(phase: &str, config: &str, next: &ModelServer) {
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join(phase);
    let seen = marker.clone();
    let run = Test::new()
        .file(
            REPO_CONFIG,
            format!("default_profile = \"small\"\n{config}"),
        )
        .file("out.txt", "old\n")
        .spec(spec(
            "out.txt",
            &json!({"max_attempts": 1, "test_command": "grep -qx good out.txt"}),
        ))
        .args(&["--retries", "0"])
        .env(
            execute_local_task::cancel::STALL_AT_ENV,
            &format!("{phase}:{}", marker.display()),
        )
        .during(move |running| {
            crate::harness::wait_for_file(&seen);
            running.signal(nix::sys::signal::Signal::SIGTERM);
        })
        .run();
    run.assert_error(143, "interrupted");
    assert_eq!(next.requests().len(), 0, "{phase}");
    run.assert_unchanged();
}

/// A signal while the task climbs to its `escalate_to` is an interrupted run, not the
/// ladder's end (`escalate`, exit 1).
#[test]
fn a_signal_during_a_climb_is_an_interruption_not_an_escalation() {
    let model = || vec!["m".to_owned()];
    let small = ModelServer::start(vec![Script::code("out.txt", "worse\n")], model());
    let large = ModelServer::start(vec![Script::code("out.txt", "good\n")], model());
    let config =
        profile("small", &small.url, "escalate_to = \"large\"") + &profile("large", &large.url, "");
    sigterm_at("climb", &config, &large);
}

/// A signal while the task falls back to another profile's server is an interrupted run,
/// not the failed server's error (exit 3).
#[test]
fn a_signal_during_a_fallback_is_an_interruption_not_a_server_error() {
    let spare = ModelServer::start(
        vec![Script::code("out.txt", "good\n")],
        vec!["m".to_owned()],
    );
    let closed = crate::harness::closed_port_url();
    let config =
        profile("small", &closed, "fallback = [\"spare\"]") + &profile("spare", &spare.url, "");
    sigterm_at("fall_back", &config, &spare);
}
