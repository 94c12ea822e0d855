//! Hardening of the model-server side: credentials in an endpoint never shown, numbers on
//! the command line checked, endpoints checked where they are resolved, `OLLAMA_HOST` read
//! like Ollama reads it, the first-byte limit covering the wait for the first token, and
//! `--total-timeout` bounding a whole call with its retries.

use execute_local_task::discovery::ServerReport;
use execute_local_task::model::recorded::Cassette;
use serde_json::json;

use crate::harness::{Chat, Script, Test, spec};

const SECRET: &str = "s3cret";

/// The scripted server's URL with a user and password, and the `/v1` path.
fn with_password(url: &str) -> String {
    format!(
        "{}/v1",
        url.replacen("http://", &format!("http://user:{SECRET}@"), 1)
    )
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the password:\n{text}");
}

/// The password reaches the server as basic auth, and nowhere else: not the result, not
/// the progress on stderr, not the cassette.
#[test]
fn a_password_in_the_endpoint_is_used_but_never_shown() {
    let cassette = tempfile::tempdir().unwrap();
    let cassette_path = cassette.path().join("run.json");
    let run = Test::new()
        .endpoint_from(with_password)
        .spec(spec("out.py", &json!({})))
        .script(Script::code("out.py", "x = 1\n"))
        .args(&["--record", cassette_path.to_str().unwrap()])
        .run();
    run.assert_code(0);
    let authorization = &run.requests[0].headers["authorization"];
    assert_eq!(authorization, "Basic dXNlcjpzM2NyZXQ=");
    let endpoint = run.result().model.expect("model info").endpoint;
    assert!(
        endpoint.starts_with("http://user:***@127.0.0.1:"),
        "{endpoint}"
    );
    assert!(endpoint.ends_with("/v1"), "{endpoint}");
    assert!(run.stderr.contains("http://user:***@"), "{}", run.stderr);
    assert_no_secret("stdout", &run.stdout);
    assert_no_secret("stderr", &run.stderr);
    let saved = std::fs::read_to_string(&cassette_path).unwrap();
    assert_no_secret("the cassette", &saved);
    let cassette = Cassette::load(&cassette_path).unwrap();
    assert!(saved.contains("user:***@"), "{saved}");
    assert_eq!(cassette.model(), Some("test-model"));
}

/// An error names the endpoint, masked, on stdout and stderr alike.
#[test]
fn a_password_in_the_endpoint_is_masked_in_errors() {
    let run = Test::new()
        .endpoint_from(with_password)
        .spec(spec("out.py", &json!({})))
        .script(Script::status(
            400,
            r#"{"error":{"message":"bad request"}}"#,
        ))
        .args(&["--retries", "0"])
        .run();
    let error = run.assert_error(3, "http_client_error");
    assert!(
        error.message.contains("http://user:***@"),
        "{}",
        error.message
    );
    assert_no_secret("stdout", &run.stdout);
    assert_no_secret("stderr", &run.stderr);
}

#[test]
fn a_password_in_the_endpoint_is_masked_in_a_dry_run() {
    let run = Test::new()
        .endpoint_from(with_password)
        .spec(spec("out.py", &json!({})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let printed = run.json();
    let endpoint = printed["endpoint"].as_str().unwrap_or_default();
    assert!(endpoint.starts_with("http://user:***@"), "{}", run.stdout);
    assert_no_secret("stdout", &run.stdout);
    assert_no_secret("stderr", &run.stderr);
}

#[test]
fn a_password_in_the_endpoint_is_masked_by_models() {
    let run = Test::new()
        .endpoint_from(with_password)
        .run_with(|_| vec!["models".to_owned(), "--json".to_owned()]);
    run.assert_code(0);
    let reports: Vec<ServerReport> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(reports.len(), 1, "{}", run.stdout);
    assert!(reports[0].reachable, "{:?}", reports[0].error);
    assert!(
        reports[0].endpoint.starts_with("http://user:***@"),
        "{}",
        reports[0].endpoint
    );
    assert_no_secret("stdout", &run.stdout);
    assert_no_secret("stderr", &run.stderr);
}

/// Numbers out of range are usage errors naming the flag and the range, before anything
/// is called; a negative number gets that message too, not "unexpected argument".
#[test]
fn numbers_on_the_command_line_are_checked() {
    for (flag, value, range) in [
        ("--temperature", "nan", "from 0 to 2"),
        ("--temperature", "-1", "from 0 to 2"),
        ("--temperature", "1e308", "from 0 to 2"),
        ("--max-tokens", "0", "from 1 to"),
        ("--max-tokens", "-3", "from 1 to"),
        ("--idle-timeout", "-1", "at most 86400"),
        ("--total-timeout", "1e308", "at most 86400"),
        ("--retries", "-1", "from 0 to 100"),
        ("--retry-max-wait", "-2", "from 0 to 3600"),
        ("--max-reply-bytes", "0", "from 1 to"),
    ] {
        let run = Test::new()
            .spec(spec("out.py", &json!({})))
            .args(&[flag, value])
            .run();
        let error = run.assert_error(2, "usage");
        assert!(
            error.message.contains(flag),
            "{flag} {value}: {}",
            error.message
        );
        assert!(
            error.message.contains(range),
            "{flag} {value}: {}",
            error.message
        );
        assert!(
            run.requests.is_empty(),
            "{flag} {value}: the model was called"
        );
    }
    let run = Test::new().run_with(|_| ["prune", "--older-than", "-1"].map(str::to_owned).to_vec());
    let error = run.assert_error(2, "usage");
    assert!(error.message.contains("--older-than"), "{}", error.message);
    assert!(
        error.message.contains("from 0 to 36500"),
        "{}",
        error.message
    );
}

/// An endpoint the tool cannot speak to is bad input (exit 2) naming where it came from.
#[test]
fn an_endpoint_of_another_scheme_or_malformed_is_a_usage_error() {
    let cases: [(&str, &str, &str); 6] = [
        ("LOCAL_TASK_ENDPOINT", "ftp://box/v1", "scheme `ftp`"),
        ("LOCAL_TASK_ENDPOINT", "http//box", "is not a URL"),
        ("LOCAL_TASK_ENDPOINT", "http://", "is not a URL"),
        ("OPENAI_BASE_URL", "file:///tmp/sock", "scheme `file`"),
        ("OLLAMA_HOST", "box:port", "is not a URL"),
        ("OLLAMA_HOST", "box /v1", "space"),
    ];
    for (variable, value, why) in cases {
        let run = Test::new()
            .server_url_in(variable)
            .endpoint(value)
            .spec(spec("out.py", &json!({})))
            .run();
        let error = run.assert_error(2, "usage");
        assert!(
            error
                .message
                .starts_with(&format!("{variable} is `{value}`")),
            "{}",
            error.message
        );
        assert!(error.message.contains(why), "{}", error.message);
        assert!(run.requests.is_empty());
    }
    let run = Test::new()
        .spec(spec("out.py", &json!({})))
        .args(&["--endpoint", "ftp://box"])
        .run();
    let error = run.assert_error(2, "usage");
    assert!(
        error.message.starts_with("--endpoint is `ftp://box`"),
        "{}",
        error.message
    );

    // `models` checks the same way.
    let run = Test::new()
        .endpoint("file:///tmp/sock")
        .run_with(|_| vec!["models".to_owned(), "--json".to_owned()]);
    run.assert_code(2);
    let printed = run.json();
    assert_eq!(printed["error"]["kind"], "usage", "{}", run.stdout);
}

/// Only the unspecified address means this machine: `10.0.0.0` stays `10.0.0.0`.
#[test]
fn ollama_host_keeps_an_address_that_merely_contains_zeros() {
    for (host, endpoint) in [
        ("10.0.0.0", "http://10.0.0.0:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("[::]:8080", "http://[::1]:8080"),
    ] {
        let run = Test::new()
            .server_url_in("OLLAMA_HOST")
            .endpoint(host)
            .spec(spec("out.py", &json!({})))
            .args(&["--provider", "ollama", "--dry-run"])
            .run();
        run.assert_code(0);
        assert_eq!(run.json()["endpoint"], endpoint, "{host}");
    }
}

fn chat(text: &str) -> Chat {
    Chat {
        text: text.to_owned(),
        finish_reason: Some("stop".to_owned()),
        usage: Some((100, 50)),
        chunk: 7,
        done: true,
    }
}

/// Headers at once and the first token a while later: the wait is the first-byte limit's,
/// not the idle limit's, on both protocols.
#[test]
fn the_wait_for_the_first_token_is_the_first_byte_limits() {
    for ollama in [false, true] {
        let mut test = Test::new();
        if ollama {
            test = test.ollama().args(&["--provider", "ollama"]);
        }
        let run = test
            .spec(spec("out.py", &json!({})))
            .script(Script::Prefill {
                wait_ms: 800,
                chat: chat("```\nx = 1\n```\n"),
            })
            .args(&["--idle-timeout", "0.2", "--first-byte-timeout", "60"])
            .args(&["--retries", "0"])
            .run();
        run.assert_code(0);
        assert_eq!(
            run.read("out.py").as_deref(),
            Some("x = 1\n"),
            "ollama: {ollama}"
        );
    }
}

/// ... and a first token that does not come in time is a `first_byte_timeout`, even though
/// the headers came at once.
#[test]
fn a_first_token_that_never_comes_is_a_first_byte_timeout() {
    for ollama in [false, true] {
        let mut test = Test::new();
        if ollama {
            test = test.ollama().args(&["--provider", "ollama"]);
        }
        let run = test
            .spec(spec("out.py", &json!({})))
            .script(Script::Stall(String::new()))
            .args(&["--idle-timeout", "30", "--first-byte-timeout", "0.3"])
            .args(&["--retries", "0"])
            .run();
        let error = run.assert_error(3, "first_byte_timeout");
        assert!(error.message.contains("0.3 s"), "{}", error.message);
    }
}

/// `--total-timeout` is one deadline for the call with its retries and their waits: a
/// server that asks to come back forever is given up on when the deadline passes.
#[test]
fn the_total_timeout_covers_the_retries() {
    let mut test = Test::new().spec(spec("out.py", &json!({})));
    for _ in 0..12 {
        test = test.script(Script::status_with(
            503,
            r#"{"error":"loading"}"#,
            &[("Retry-After", "1")],
        ));
    }
    let run = test
        .args(&["--total-timeout", "2", "--retries", "10"])
        .run();
    let error = run.assert_error(3, "total_timeout");
    assert!(error.message.contains("within 2 s ("), "{}", error.message);
    assert!(
        error.message.contains("the last: unavailable"),
        "{}",
        error.message
    );
    assert!(
        run.requests.len() < 11,
        "{} requests: every retry was made",
        run.requests.len()
    );
}
