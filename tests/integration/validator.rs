//! The validator checkpoint: a second model reviews each attempt's code before it is
//! written, in the server's structured-output mode; its rejection's issues go back to the
//! writer; its verdict and tokens are on the attempt; its call never runs under the
//! repository lock.

use execute_local_task::result::{Outcome, Status};
use serde_json::{Value, json};

use crate::harness::{MODEL, ModelServer, Request, Run, Script, Test, spec};

const CONFIG: &str = ".execute-local-task/config.toml";
const REVIEWER: &str = "reviewer-model";

/// A writer profile routing picks, reviewed by the `reviewer` profile on the same server.
fn config(extra: &str) -> String {
    format!(
        "default_profile = \"writer\"\n\n[profiles.writer]\nvalidator = \"reviewer\"\n\n\
         [profiles.reviewer]\nrole = \"validator\"\nmodel = \"{REVIEWER}\"\n{extra}"
    )
}

fn verdict(pass: bool, issues: &[&str], confidence: f64) -> Script {
    Script::reply(&json!({"pass": pass, "issues": issues, "confidence": confidence}).to_string())
}

/// A task whose test wants `hello` in `greeting.txt`, with a constraint for the reviewer.
fn task(config: &str) -> Test {
    Test::new()
        .file(CONFIG, config)
        .models(&[MODEL, REVIEWER])
        .spec(spec(
            "greeting.txt",
            &json!({
                "description": "Write greeting.txt saying hello.",
                "constraints": ["lowercase only"],
                "test_command": "grep -qx hello greeting.txt",
            }),
        ))
}

/// The chat requests for `model`, in order.
fn requests_for<'a>(run: &'a Run, model: &str) -> Vec<&'a Request> {
    run.requests
        .iter()
        .filter(|request| request.body["model"] == model)
        .collect()
}

fn required(schema: &Value) -> &Value {
    &schema["required"]
}

#[test]
fn a_passing_verdict_lets_the_code_be_written_and_is_reported_on_its_attempt() {
    let run = task(&config(""))
        .script(Script::code("greeting.txt", "hello\n"))
        .route(REVIEWER, vec![verdict(true, &[], 0.9)])
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success, "{}", result.summary);
    assert_eq!(run.read("greeting.txt").as_deref(), Some("hello\n"));
    let report = result.attempts[0].validator.as_ref().expect("a verdict");
    assert_eq!(report.profile, "reviewer");
    assert_eq!(report.model, REVIEWER);
    assert_eq!(report.pass, Some(true));
    assert_eq!(report.confidence, Some(0.9));
    assert!(!report.rejected);
    assert!(report.issues.is_empty());
    assert_eq!(
        (report.usage.prompt_tokens, report.usage.completion_tokens),
        (100, 50)
    );
    // The run's tokens are the writer's and the validator's.
    assert_eq!(result.usage.prompt_tokens, 200);

    // The writer first, then the review, of the code and the task with its constraints.
    let order: Vec<&Value> = run.requests.iter().map(|r| &r.body["model"]).collect();
    assert_eq!(order, [&json!(MODEL), &json!(REVIEWER)]);
    let review = requests_for(&run, REVIEWER)[0];
    let prompt = review.last_user_message();
    for part in [
        "Write greeting.txt saying hello.",
        "- lowercase only",
        "hello",
    ] {
        assert!(prompt.contains(part), "`{part}` not in:\n{prompt}");
    }
    // OpenAI-compatible servers get the schema as `response_format`.
    let format = &review.body["response_format"];
    assert_eq!(format["type"], "json_schema", "{}", review.body);
    assert_eq!(format["json_schema"]["name"], "verdict");
    assert_eq!(
        required(&format["json_schema"]["schema"]),
        &json!(["pass", "issues", "confidence"])
    );
    assert!(review.body.get("format").is_none());
    let writer = requests_for(&run, MODEL)[0];
    assert!(
        writer.body.get("response_format").is_none(),
        "{}",
        writer.body
    );
}

#[test]
fn ollama_gets_the_schema_as_format() {
    let run = task(&config(""))
        .ollama()
        .script(Script::code("greeting.txt", "hello\n"))
        .route(REVIEWER, vec![verdict(true, &[], 1.0)])
        .run();
    run.assert_code(0);
    let review = requests_for(&run, REVIEWER)[0];
    assert_eq!(
        required(&review.body["format"]),
        &json!(["pass", "issues", "confidence"]),
        "{}",
        review.body
    );
    assert_eq!(review.body["format"]["properties"]["issues"]["maxItems"], 3);
    assert!(review.body.get("response_format").is_none());
    let writer = requests_for(&run, MODEL)[0];
    assert!(writer.body.get("format").is_none(), "{}", writer.body);
    let result = run.result();
    assert_eq!(
        result.attempts[0].validator.as_ref().unwrap().pass,
        Some(true)
    );
}

#[test]
fn a_rejection_is_not_written_and_its_issues_go_back_to_the_writer() {
    let issue = "the greeting must be lowercase: write `hello`, not `Hello`";
    let run = task(&config(""))
        .script(Script::code("greeting.txt", "Hello\n"))
        .script(Script::code("greeting.txt", "hello\n"))
        .route(
            REVIEWER,
            vec![verdict(false, &[issue], 0.95), verdict(true, &[], 0.9)],
        )
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success, "{}", result.summary);
    assert_eq!(result.attempts.len(), 2);
    let first = &result.attempts[0];
    assert_eq!(first.outcome, Outcome::ValidatorRejected);
    assert!(first.error.as_deref().unwrap().contains(issue), "{first:?}");
    let report = first.validator.as_ref().unwrap();
    assert!(report.rejected);
    assert_eq!(report.pass, Some(false));
    assert_eq!(report.issues, [issue]);
    assert_eq!(result.attempts[1].outcome, Outcome::Ok);

    let writer = requests_for(&run, MODEL);
    assert_eq!(writer.len(), 2);
    let repair = writer[1].last_user_message();
    assert!(
        repair.contains(issue),
        "the issue is not the repair input:\n{repair}"
    );
    let turns = writer[1].messages();
    assert!(
        turns
            .iter()
            .any(|(role, text)| role == "assistant" && text.contains("Hello")),
        "the rejected code is not the writer's own turn: {turns:?}"
    );
    // The test ran once, on the second attempt's code.
    assert!(result.test.as_ref().unwrap().passed);
    assert_eq!(run.read("greeting.txt").as_deref(), Some("hello\n"));
}

#[test]
fn a_malformed_verdict_is_asked_for_once_more() {
    let run = task(&config(""))
        .script(Script::code("greeting.txt", "hello\n"))
        .route(
            REVIEWER,
            vec![Script::reply("Looks good to me!"), verdict(true, &[], 0.8)],
        )
        .run();
    run.assert_code(0);
    let result = run.result();
    let report = result.attempts[0].validator.as_ref().unwrap();
    assert_eq!(report.pass, Some(true));
    assert!(report.notes[0].contains("malformed"), "{:?}", report.notes);
    // Both calls' tokens.
    assert_eq!(report.usage.prompt_tokens, 200);
    let reviews = requests_for(&run, REVIEWER);
    assert_eq!(reviews.len(), 2);
    assert!(
        reviews[1]
            .messages()
            .iter()
            .any(|(role, text)| role == "assistant" && text == "Looks good to me!")
    );
    assert!(
        reviews[1]
            .last_user_message()
            .contains("not a valid verdict"),
        "{}",
        reviews[1].last_user_message()
    );
    assert!(reviews[1].body["response_format"].is_object());
}

#[test]
fn two_malformed_verdicts_let_the_code_go_on_unvalidated() {
    let run = task(&config(""))
        .script(Script::code("greeting.txt", "hello\n"))
        .route(
            REVIEWER,
            vec![
                Script::reply("fine"),
                Script::reply(r#"{"pass": "yes", "issues": [], "confidence": 1}"#),
            ],
        )
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success);
    let report = result.attempts[0].validator.as_ref().unwrap();
    assert_eq!((report.pass, report.confidence), (None, None));
    assert!(!report.rejected);
    assert!(
        report.notes.iter().any(|n| n.contains("unvalidated")),
        "{:?}",
        report.notes
    );
    assert_eq!(requests_for(&run, REVIEWER).len(), 2);
}

#[test]
fn a_verdict_under_the_confidence_threshold_fails_the_attempt() {
    let run = task(&config("\n[validator]\nmin_confidence = 0.8\n"))
        .script(Script::code("greeting.txt", "hello\n"))
        .route(REVIEWER, vec![verdict(true, &[], 0.6)])
        .args(&["--max-attempts", "1"])
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    assert_eq!(result.attempts[0].outcome, Outcome::ValidatorRejected);
    assert!(
        result.summary.contains("not confident"),
        "{}",
        result.summary
    );
    assert!(result.test.is_none());
    assert_eq!(run.read("greeting.txt"), None, "rejected code was written");
}

/// `--validate` names a validator profile with its own server; that server's handler
/// fails the call if the repository lock is held when it comes.
#[test]
fn validate_names_a_profile_on_its_own_server_and_never_runs_under_the_lock() {
    let test = Test::new();
    let lock = test.lock_path();
    let reviewer = ModelServer::start(
        vec![Script::Unlocked(lock, Box::new(verdict(true, &[], 0.9)))],
        vec![REVIEWER.to_owned()],
    );
    let config = format!(
        "[profiles.reviewer]\nrole = \"validator\"\nprovider = \"openai\"\nendpoint = \"{}\"\nmodel = \"{REVIEWER}\"\n",
        reviewer.url
    );
    let run = test
        .file(CONFIG, config)
        .spec(spec(
            "greeting.txt",
            &json!({"test_command": "grep -qx hello greeting.txt"}),
        ))
        .script(Script::code("greeting.txt", "hello\n"))
        .args(&["--validate", "reviewer"])
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(
        result.attempts[0].validator.as_ref().unwrap().pass,
        Some(true)
    );
    assert_eq!(reviewer.requests().len(), 1);
    assert_eq!(
        run.requests.len(),
        1,
        "only the writer asked the run's server"
    );
}

#[test]
fn validate_refuses_what_cannot_review() {
    let run = task(&config("")).args(&["--validate", "writer"]).run();
    let error = run.assert_error(2, "usage");
    assert!(
        error.message.contains("`writer` is a writer profile"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("validator profiles: reviewer"),
        "{}",
        error.message
    );
    assert!(run.requests.is_empty(), "a model was called");
    let run = task(&config("")).args(&["--validate", "nobody"]).run();
    let error = run.assert_error(2, "usage");
    assert!(
        error
            .message
            .contains("`nobody` is not a configured profile"),
        "{}",
        error.message
    );
    // A cassette holds the writer's exchanges only: no review to replay.
    let run = task(&config(""))
        .args(&["--validate", "reviewer", "--replay", "cassette.json"])
        .run();
    let error = run.assert_error(2, "usage");
    assert!(
        error.message.contains("--record or --replay"),
        "{}",
        error.message
    );
}

#[test]
fn a_profile_validator_must_name_a_validator_profile() {
    let cases = [
        (
            "[profiles.writer]\nvalidator = \"reviewr\"\n[profiles.reviewer]\nrole = \"validator\"\n",
            ":2: key `profiles.writer.validator`: unknown profile `reviewr`; did you mean `reviewer`?",
        ),
        (
            "[profiles.writer]\nvalidator = \"other\"\n[profiles.other]\nmodel = \"m\"\n",
            ":2: key `profiles.writer.validator`: profile `other` is a writer",
        ),
        (
            "[profiles.reviewer]\nrole = \"validator\"\nvalidator = \"reviewer\"\n",
            ":3: key `profiles.reviewer.validator`: a validator profile does not have a validator",
        ),
        (
            "[validator]\nmin_confidence = 1.5\n",
            ":2: key `validator.min_confidence`: must be a share between 0 and 1",
        ),
    ];
    for (text, expected) in cases {
        let run = Test::new()
            .file(CONFIG, text)
            .run_with(|_| vec!["config".to_owned(), "--json".to_owned()]);
        run.assert_code(2);
        let message = run.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(expected), "{expected}\nnot in: {message}");
    }
}

/// A batch gives `--validate` to every task: each task's code is reviewed.
#[test]
fn a_batch_has_every_task_reviewed() {
    let config = format!("[profiles.reviewer]\nrole = \"validator\"\nmodel = \"{REVIEWER}\"\n");
    // The reviewer's route first: its requests carry the tasks' words too.
    let run = Test::new()
        .file(CONFIG, config)
        .models(&[MODEL, REVIEWER])
        .route(
            REVIEWER,
            vec![verdict(true, &[], 0.9), verdict(true, &[], 0.9)],
        )
        .route("<<A>>", vec![Script::code("a.txt", "a\n")])
        .route("<<B>>", vec![Script::code("b.txt", "b\n")])
        .run_with(|spec_path| {
            let dir = spec_path.parent().unwrap().join("specs");
            std::fs::create_dir_all(&dir).unwrap();
            for (id, output) in [("A", "a.txt"), ("B", "b.txt")] {
                let spec = json!({"task_id": id, "description": format!("Task <<{id}>>."), "output_file": output});
                std::fs::write(dir.join(format!("{id}.json")), spec.to_string()).unwrap();
            }
            ["--validate", "reviewer", "--jobs", "2"]
                .into_iter()
                .map(str::to_owned)
                .chain([dir.display().to_string()])
                .collect()
        });
    run.assert_code(0);
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.pop(); // the summary
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    for line in lines {
        let result: execute_local_task::result::TaskResult = serde_json::from_str(line).unwrap();
        assert_eq!(result.status, Status::Success, "{}", result.summary);
        let report = result.attempts[0].validator.as_ref().expect("a review");
        assert_eq!(report.pass, Some(true));
    }
    assert_eq!(requests_for(&run, REVIEWER).len(), 2);
    assert_eq!(run.read("a.txt").as_deref(), Some("a\n"));
}

/// A reviewer whose server cannot be used stops the run as the writer's would: nothing
/// is written, exit 3.
#[test]
fn an_unreachable_validator_stops_the_run_before_anything_is_written() {
    let config = format!(
        "[profiles.reviewer]\nrole = \"validator\"\nprovider = \"openai\"\nendpoint = \"{}\"\nmodel = \"{REVIEWER}\"\n",
        crate::harness::closed_port_url()
    );
    let run = task(&config)
        .script(Script::code("greeting.txt", "hello\n"))
        .args(&["--validate", "reviewer"])
        .run();
    run.assert_error(3, "connection_refused");
    let result = run.result();
    assert_eq!(result.attempts.len(), 1);
    assert_eq!(result.attempts[0].outcome, Outcome::Error);
    assert_eq!(run.read("greeting.txt"), None);
}
