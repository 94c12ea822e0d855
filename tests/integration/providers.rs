//! Local model servers: Ollama's native API and the OpenAI-compatible one, provider
//! detection, discovery, `models`, every fault class, retries, truncation, usage, and
//! record/replay.

use std::path::Path;
use std::time::Duration;

use execute_local_task::result::{Outcome, Status};
use serde_json::{Value, json};

use crate::harness::{Protocol, Run, Script, Test, closed_port_url, spec, unresponsive_url};

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn protocol_test(protocol: Protocol) -> Test {
    match protocol {
        Protocol::OpenAi => Test::new(),
        Protocol::Ollama => Test::new().ollama(),
    }
}

/// A stream of content pieces without an end, in the protocol's framing.
fn partial_stream(protocol: Protocol, pieces: &[&str]) -> String {
    pieces
        .iter()
        .map(|piece| match protocol {
            Protocol::OpenAi => format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
            ),
            Protocol::Ollama => format!(
                "{}\n",
                json!({"message": {"role": "assistant", "content": piece}, "done": false})
            ),
        })
        .collect()
}

/// Asserts the documented shape of a model fault: status error, the kind, exit 3, the
/// fault in the last attempt, nothing written.
#[track_caller]
fn assert_fault(run: &Run, kind: &str) -> String {
    run.assert_code(3);
    let result = run.result();
    assert_eq!(result.status, Status::Error, "{}", run.stdout);
    let error = result.error.expect("an error");
    assert_eq!(
        error.kind, kind,
        "{}\nstderr:\n{}",
        error.message, run.stderr
    );
    assert!(result.files.is_empty());
    run.assert_unchanged();
    assert!(run.stderr.contains(&error.message), "{}", run.stderr);
    error.message
}

// ---------------------------------------------------------------------------------------
// Ollama's native API
// ---------------------------------------------------------------------------------------

#[test]
fn ollama_is_detected_and_spoken_natively_with_a_sized_context_window() {
    let context = "# helpers\n".repeat(4000); // 40 kB: far past Ollama's default window
    let run = Test::new()
        .ollama()
        .file("helpers.py", &context)
        .spec(spec(
            "src/add.py",
            &json!({"context_files": ["helpers.py"], "test_command": "grep -q 'def add' src/add.py"}),
        ))
        .script(Script::code("src/add.py", "def add(a, b):\n    return a + b\n"))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success);
    assert_eq!(
        run.read("src/add.py").as_deref(),
        Some("def add(a, b):\n    return a + b\n")
    );
    let model = result.model.expect("model info");
    assert_eq!(model.provider, "ollama");
    assert!(!model.endpoint.ends_with("/v1"), "{}", model.endpoint);
    // Ollama's own counts.
    assert_eq!(
        (
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.usage.estimated
        ),
        (100, 50, false)
    );

    let [request] = run.requests.as_slice() else {
        panic!("one request expected: {:?}", run.requests)
    };
    assert_eq!(request.path, "/api/chat");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["model"], "test-model");
    let options = &request.body["options"];
    assert!((options["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    let prompt_bytes: usize = request.messages().iter().map(|(_, text)| text.len()).sum();
    let num_ctx = options["num_ctx"].as_u64().expect("num_ctx is always sent");
    // Room for the whole prompt at a dense three bytes a token, plus a reply.
    assert!(
        num_ctx >= (prompt_bytes as u64) / 3 + 4096,
        "num_ctx {num_ctx} for a {prompt_bytes}-byte prompt"
    );
    assert!(num_ctx > 2048 * 4, "{num_ctx}");
}

#[test]
fn ollama_reply_budget_follows_max_tokens() {
    let run = Test::new()
        .ollama()
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .args(&["--max-tokens", "10000", "--temperature", "0"])
        .run();
    run.assert_code(0);
    let options = &run.requests[0].body["options"];
    assert_eq!(options["num_predict"], 10000);
    assert_eq!(options["temperature"], 0.0);
    assert!(options["num_ctx"].as_u64().unwrap() >= 10000);
}

#[test]
fn ollama_without_a_named_model_uses_its_only_model_and_lists_several() {
    let run = Test::new()
        .ollama()
        .models(&["qwen2.5-coder:7b"])
        .env("LOCAL_TASK_MODEL", "")
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .run();
    run.assert_code(0);
    assert_eq!(run.requests[0].body["model"], "qwen2.5-coder:7b");

    let run = Test::new()
        .ollama()
        .models(&["qwen2.5-coder:7b", "llama3.2:3b"])
        .env("LOCAL_TASK_MODEL", "")
        .spec(spec("a.txt", &json!({})))
        .run();
    let message = assert_fault(&run, "no_model");
    assert!(
        message.contains("qwen2.5-coder:7b, llama3.2:3b"),
        "{message}"
    );
    assert!(message.contains("--model"), "{message}");
    assert!(run.requests.is_empty());
}

#[test]
fn ollama_host_selects_the_native_api() {
    let run = Test::new()
        .ollama()
        .server_url_in("OLLAMA_HOST")
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .run();
    run.assert_code(0);
    assert_eq!(run.requests[0].path, "/api/chat");
    assert_eq!(run.result().model.unwrap().provider, "ollama");
}

#[test]
fn the_provider_flag_overrides_detection() {
    // Ollama also serves the OpenAI-compatible API under /v1.
    let run = Test::new()
        .ollama()
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .args(&["--provider", "openai"])
        .run();
    run.assert_code(0);
    assert_eq!(run.requests[0].path, "/v1/chat/completions");
    assert_eq!(run.result().model.unwrap().provider, "openai");

    // A `/v1` endpoint with --provider ollama still goes to the native API.
    let run = Test::new()
        .ollama()
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .args(&["--provider", "ollama"])
        .run();
    run.assert_code(0);
    assert_eq!(run.requests[0].path, "/api/chat");
}

#[test]
fn dry_run_shows_the_native_request() {
    let run = Test::new()
        .ollama()
        .spec(spec("a.txt", &json!({})))
        .args(&["--dry-run", "--provider", "ollama"])
        .run();
    run.assert_code(0);
    let printed = run.json();
    assert_eq!(printed["provider"], "ollama");
    assert!(printed["request"]["options"]["num_ctx"].as_u64().unwrap() >= 4096);
    assert!(run.requests.is_empty());
}

#[test]
fn dry_run_with_a_bare_endpoint_shows_both_candidates_and_probes_nothing() {
    // A real run would probe this server (it is Ollama) and speak the native API; a dry
    // run calls nothing, so it shows both requests the probe could lead to.
    let run = Test::new()
        .ollama()
        .spec(spec("a.txt", &json!({})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    assert!(run.requests.is_empty());
    let printed = run.json();
    assert_eq!(printed["provider"], "auto (not probed)");
    assert!(printed.get("request").is_none(), "{printed}");
    let openai = &printed["requests"]["openai"];
    let ollama = &printed["requests"]["ollama"];
    assert!(
        openai["url"]
            .as_str()
            .unwrap()
            .ends_with("/v1/chat/completions")
    );
    assert_eq!(openai["request"]["stream"], true);
    assert!(ollama["url"].as_str().unwrap().ends_with("/api/chat"));
    assert!(ollama["request"]["options"]["num_ctx"].as_u64().unwrap() >= 4096);
    assert_eq!(openai["request"]["messages"], ollama["request"]["messages"]);

    // No endpoint at all: discovery decides, and the note names the ports it probes.
    let run = Test::new()
        .discovery(&[])
        .spec(spec("a.txt", &json!({})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    assert!(run.requests.is_empty());
    let printed = run.json();
    assert_eq!(printed["provider"], "auto (not probed)");
    assert_eq!(printed["requests"]["ollama"]["url"], Value::Null);
    assert!(
        printed["note"].as_str().unwrap().contains("local ports"),
        "{printed}"
    );
}

#[test]
fn dry_run_with_a_known_protocol_shows_the_one_request_and_url() {
    // An API path names the OpenAI-compatible protocol: no probe would happen. The key is
    // named by its source, never shown.
    let run = Test::new()
        .endpoint("http://127.0.0.1:9/v1")
        .env("LOCAL_TASK_API_KEY", "sekrit-key-123")
        .spec(spec("a.txt", &json!({})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let printed = run.json();
    assert_eq!(printed["provider"], "openai");
    assert_eq!(printed["url"], "http://127.0.0.1:9/v1/chat/completions");
    assert_eq!(printed["authorization"], "Bearer <LOCAL_TASK_API_KEY>");
    assert_eq!(printed["request"]["stream"], true);
    assert!(printed.get("requests").is_none(), "{printed}");
    assert!(!run.stdout.contains("sekrit"), "{}", run.stdout);

    // The provider from the environment settles it too.
    let run = Test::new()
        .env("LOCAL_TASK_PROVIDER", "ollama")
        .spec(spec("a.txt", &json!({})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let printed = run.json();
    assert_eq!(printed["provider"], "ollama");
    assert!(printed["url"].as_str().unwrap().ends_with("/api/chat"));
    assert_eq!(printed["authorization"], Value::Null);
    assert!(run.requests.is_empty());
}

#[test]
fn a_bad_provider_variable_is_bad_input_for_runs_and_models() {
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .env("LOCAL_TASK_PROVIDER", "olama")
        .run();
    let error = run.assert_error(2, "usage");
    assert!(
        error.message.contains("LOCAL_TASK_PROVIDER"),
        "{}",
        error.message
    );
    assert!(error.message.contains("`olama`"), "{}", error.message);
    assert!(
        error.message.contains("auto, openai, ollama"),
        "{}",
        error.message
    );
    assert!(run.requests.is_empty());
    run.assert_unchanged();

    // `models` reports it the same way (not through clap's wording for a flag).
    let run = Test::new()
        .env("LOCAL_TASK_PROVIDER", "olama")
        .run_with(|_| vec!["models".to_owned(), "--json".to_owned()]);
    run.assert_code(2);
    let printed = run.json();
    assert_eq!(printed["error"]["kind"], "usage");
    assert_eq!(printed["error"]["message"], error.message.as_str());
    assert!(run.requests.is_empty());
}

#[test]
fn openai_api_key_goes_only_to_the_openai_base_url_server() {
    let authorizations = |run: &Run| {
        run.requests
            .iter()
            .map(|r| r.headers.get("authorization").cloned())
            .collect::<Vec<_>>()
    };
    // The endpoint is LOCAL_TASK_ENDPOINT: the hosted service's key stays home.
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .env("OPENAI_API_KEY", "sk-hosted")
        .run();
    run.assert_code(0);
    assert!(authorizations(&run).iter().all(Option::is_none));

    // The same through OLLAMA_HOST.
    let run = Test::new()
        .ollama()
        .server_url_in("OLLAMA_HOST")
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .env("OPENAI_API_KEY", "sk-hosted")
        .args(&["--provider", "openai"])
        .run();
    run.assert_code(0);
    assert!(authorizations(&run).iter().all(Option::is_none));

    // The endpoint is OPENAI_BASE_URL: its key goes with it.
    let run = Test::new()
        .server_url_in("OPENAI_BASE_URL")
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .env("OPENAI_API_KEY", "sk-hosted")
        .run();
    run.assert_code(0);
    let sent = authorizations(&run);
    assert!(!sent.is_empty());
    assert!(
        sent.iter()
            .all(|a| a.as_deref() == Some("Bearer sk-hosted")),
        "{sent:?}"
    );

    // LOCAL_TASK_API_KEY goes to whatever endpoint is used.
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(Script::code("a.txt", "x\n"))
        .env("LOCAL_TASK_API_KEY", "local-key")
        .env("OPENAI_API_KEY", "sk-hosted")
        .run();
    run.assert_code(0);
    let sent = authorizations(&run);
    assert!(
        sent.iter()
            .any(|a| a.as_deref() == Some("Bearer local-key")),
        "{sent:?}"
    );
    assert!(
        !sent
            .iter()
            .any(|a| a.as_deref() == Some("Bearer sk-hosted"))
    );
}

// ---------------------------------------------------------------------------------------
// Truncation and usage, both protocols
// ---------------------------------------------------------------------------------------

#[test]
fn a_reply_cut_by_the_token_limit_is_never_written_and_is_repaired() {
    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        let cut = Script::chat("```\ndef add(a, b):\n    return a +", |chat| {
            chat.finish_reason = Some("length".to_owned());
        });
        let run = protocol_test(protocol)
            .spec(spec("add.py", &json!({})))
            .script(cut.clone())
            .script(Script::code("add.py", "def add(a, b):\n    return a + b\n"))
            .run();
        run.assert_code(0);
        let result = run.result();
        let outcomes: Vec<Outcome> = result.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, [Outcome::Truncated, Outcome::Ok], "{protocol:?}");
        assert!(
            result.attempts[0]
                .error
                .as_deref()
                .unwrap()
                .contains("cut off"),
            "{protocol:?}"
        );
        let repair = run.requests[1].last_user_message();
        assert!(
            repair.contains("complete") && repair.contains("shorter"),
            "{protocol:?}: {repair}"
        );
        assert_eq!(
            run.read("add.py").as_deref(),
            Some("def add(a, b):\n    return a + b\n")
        );

        // With no attempt left, the cut reply is not written at all.
        let run = protocol_test(protocol)
            .spec(spec("add.py", &json!({"max_attempts": 1})))
            .script(cut)
            .run();
        run.assert_code(1);
        let result = run.result();
        assert_eq!(result.status, Status::Escalate);
        assert_eq!(result.attempts[0].outcome, Outcome::Truncated);
        run.assert_unchanged();
    }
}

#[test]
fn usage_is_estimated_and_flagged_when_the_server_sends_no_counts() {
    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        // llama-cpp-python never sends usage in a stream.
        let run = protocol_test(protocol)
            .spec(spec(
                "out.txt",
                &json!({"test_command": "grep -q good out.txt"}),
            ))
            .script(Script::chat("```\nbad\n```\n", |chat| chat.usage = None))
            .script(Script::code("out.txt", "good\n"))
            .run();
        run.assert_code(0);
        let result = run.result();
        let first = &result.attempts[0].usage;
        assert!(first.estimated, "{protocol:?}");
        assert!(first.prompt_tokens > 0 && first.completion_tokens > 0);
        let second = &result.attempts[1].usage;
        assert!(!second.estimated);
        assert_eq!((second.prompt_tokens, second.completion_tokens), (100, 50));
        assert!(
            result.usage.estimated,
            "a total with an estimate is flagged"
        );
        assert_eq!(
            result.usage.prompt_tokens,
            first.prompt_tokens + second.prompt_tokens
        );
        assert_eq!(
            result.usage.completion_tokens,
            first.completion_tokens + second.completion_tokens
        );
    }
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

/// One model call that meets `script`, with retries off.
fn faulty(protocol: Protocol, script: Script, args: &[&str]) -> Run {
    protocol_test(protocol)
        .file("keep.txt", "old\n")
        .spec(spec("keep.txt", &json!({})))
        .script(script)
        .args(&["--retries", "0"])
        .args(args)
        .run()
}

#[test]
fn connection_faults_name_their_class() {
    let run = Test::new()
        .spec(spec("a.py", &json!({})))
        .endpoint(&closed_port_url())
        .run();
    assert_fault(&run, "connection_refused");

    let run = Test::new()
        .spec(spec("a.py", &json!({})))
        .endpoint("http://no-such-host.invalid:11434/v1")
        .run();
    let message = assert_fault(&run, "dns");
    assert!(message.contains("no-such-host.invalid"), "{message}");

    let unresponsive = unresponsive_url();
    let run = Test::new()
        .spec(spec("a.py", &json!({})))
        .endpoint(&format!("{}/v1", unresponsive.url))
        .args(&["--connect-timeout", "0.2"])
        .run();
    assert_fault(&run, "connect_timeout");
    // It waited for the connection (a refusal would be another class), and the configured
    // limit ended the wait: without it the system gives up after about two minutes, past
    // the harness's deadline.
    assert!(
        run.elapsed >= Duration::from_millis(200),
        "{:?}",
        run.elapsed
    );

    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        let run = faulty(protocol, Script::Reset, &[]);
        assert_fault(&run, "connection_reset");
    }
}

#[test]
fn timeouts_name_which_limit_was_hit() {
    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        let run = faulty(protocol, Script::Hang, &["--first-byte-timeout", "0.2"]);
        let message = assert_fault(&run, "first_byte_timeout");
        assert!(message.contains("0.2 s"), "{message}");

        let stalled = Script::Stall(partial_stream(protocol, &["```\n", "half"]));
        let run = faulty(protocol, stalled, &["--idle-timeout", "0.2"]);
        let message = assert_fault(&run, "idle_timeout");
        assert!(message.contains("stalled"), "{message}");

        let drip = Script::Drip {
            piece: "x".to_owned(),
            every_ms: 20,
        };
        let run = faulty(
            protocol,
            drip,
            &["--total-timeout", "0.3", "--idle-timeout", "5"],
        );
        assert_fault(&run, "total_timeout");
    }
}

#[test]
fn a_reply_that_never_ends_is_cut_at_the_size_cap() {
    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        let drip = Script::Drip {
            piece: "y".repeat(200),
            every_ms: 1,
        };
        let run = faulty(protocol, drip, &["--max-reply-bytes", "5000"]);
        let message = assert_fault(&run, "reply_too_large");
        assert!(message.contains("5000 bytes"), "{message}");

        // One line that never ends.
        let endless = match protocol {
            Protocol::OpenAi => format!(
                "data: {{\"choices\": [{{\"delta\": {{\"content\": \"{}",
                "z".repeat(20_000)
            ),
            Protocol::Ollama => format!("{{\"message\": {{\"content\": \"{}", "z".repeat(20_000)),
        };
        let run = faulty(
            protocol,
            Script::Stall(endless),
            &["--max-reply-bytes", "5000"],
        );
        assert_fault(&run, "reply_too_large");
    }
}

#[test]
fn a_reply_without_streaming_is_read_under_the_size_cap() {
    // Some servers ignore `stream: true` and answer one JSON document: it is accepted...
    let whole = |text: &str| {
        json!({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
            .to_string()
    };
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(Script::status(200, &whole("```\nx\n```\n")))
        .run();
    run.assert_code(0);
    assert_eq!(run.read("a.txt").as_deref(), Some("x\n"));

    // ...but read under the same cap as a stream.
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(Script::status(200, &whole(&"x".repeat(100_000))))
        .args(&["--max-reply-bytes", "10000", "--retries", "0"])
        .run();
    let message = assert_fault(&run, "reply_too_large");
    assert!(message.contains("10000"), "{message}");

    // The model list too.
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .env("LOCAL_TASK_MODEL", "")
        .args(&["--provider", "openai", "--max-reply-bytes", "16"])
        .run();
    let message = assert_fault(&run, "reply_too_large");
    assert!(message.contains("/v1/models"), "{message}");
}

#[test]
fn broken_streams_name_their_class() {
    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        // Content, then the connection closes without a finish.
        let cut = Script::Body(partial_stream(protocol, &["```\n", "def half("]));
        let message = assert_fault(&faulty(protocol, cut, &[]), "stream_cut");
        assert!(message.contains("bytes"), "{message}");

        let malformed = match protocol {
            Protocol::OpenAi => "data: {\"choices\": [{\"delta\": {\"content\": \"a\"\n\n",
            Protocol::Ollama => "{\"message\": {\"content\": \"a\"}, \"done\": fal\n",
        };
        let bad = Script::Body(format!(
            "{}{malformed}",
            partial_stream(protocol, &["```\n"])
        ));
        let message = assert_fault(&faulty(protocol, bad, &[]), "malformed_stream");
        assert!(message.contains("not JSON"), "{message}");
    }
    // Ollama reports failures mid-stream as an `error` line.
    let run = faulty(
        Protocol::Ollama,
        Script::Body(format!(
            "{}{}\n",
            partial_stream(Protocol::Ollama, &["```\n"]),
            json!({"error": "an error was encountered while running the model: unexpected EOF"})
        )),
        &[],
    );
    let message = assert_fault(&run, "http_server_error");
    assert!(message.contains("unexpected EOF"), "{message}");
}

#[test]
fn http_errors_show_the_servers_own_words() {
    let cases: &[(Protocol, u16, &str, &str, &str)] = &[
        // Ollama, model not pulled.
        (
            Protocol::Ollama,
            404,
            r#"{"error":"model \"qwen9:7b\" not found, try pulling it first"}"#,
            "model_not_found",
            "try pulling it first",
        ),
        // vLLM, wrong model name.
        (
            Protocol::OpenAi,
            404,
            r#"{"object":"error","message":"The model `gpt-4` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
            "model_not_found",
            "The model `gpt-4` does not exist.",
        ),
        // llama-cpp-python, prompt over the window.
        (
            Protocol::OpenAi,
            400,
            r#"{"error":{"message":"This model's maximum context length is 256 tokens. However, you requested 1327 tokens (1071 in the messages, 256 in the completion). Please reduce the length of the messages or completion.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            "context_too_long",
            "maximum context length is 256 tokens",
        ),
        // llama.cpp server, prompt over the window.
        (
            Protocol::OpenAi,
            400,
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#,
            "context_too_long",
            "exceeds the available context size",
        ),
        // LM Studio with nothing loaded.
        (
            Protocol::OpenAi,
            400,
            r#"{"error":"No models loaded. Please load a model in the developer page or use the `lms load` command."}"#,
            "model_not_loaded",
            "No models loaded",
        ),
        (
            Protocol::OpenAi,
            400,
            r#"{"error":{"message":"temperature must be a number","type":"invalid_request_error"}}"#,
            "http_client_error",
            "temperature must be a number",
        ),
        (
            Protocol::Ollama,
            500,
            r#"{"error":"llama runner process has terminated: signal: killed"}"#,
            "http_server_error",
            "llama runner process has terminated",
        ),
        (
            Protocol::OpenAi,
            503,
            r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#,
            "unavailable",
            "Loading model",
        ),
        (
            Protocol::OpenAi,
            429,
            r#"{"error":{"message":"Too many requests","type":"rate_limit_error"}}"#,
            "rate_limited",
            "Too many requests",
        ),
    ];
    for (protocol, code, body, kind, words) in cases {
        let run = faulty(*protocol, Script::status(*code, body), &[]);
        let message = assert_fault(&run, kind);
        assert!(message.contains(words), "{kind}: {message}");
        assert!(message.contains(&format!("HTTP {code}")), "{message}");
        let result = run.result();
        assert_eq!(
            result.attempts.last().map(|a| a.outcome),
            Some(Outcome::ModelError)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

#[test]
fn transient_faults_are_retried_until_the_reply_comes() {
    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        let run = protocol_test(protocol)
            .spec(spec("a.txt", &json!({})))
            .script(Script::status(500, r#"{"error":"boom"}"#))
            .script(Script::status_with(
                503,
                r#"{"error":"busy"}"#,
                &[("Retry-After", "1")],
            ))
            // Asking for ten minutes: a wait past the cap runs into the harness's deadline.
            .script(Script::status_with(
                429,
                r#"{"error":"slow down"}"#,
                &[("Retry-After", "600")],
            ))
            .script(Script::Reset)
            .script(Script::code("a.txt", "done\n"))
            .args(&[
                "--retries",
                "4",
                "--retry-base-ms",
                "1",
                "--retry-max-wait",
                "0.05",
            ])
            .run();
        run.assert_code(0);
        assert_eq!(run.read("a.txt").as_deref(), Some("done\n"));
        assert_eq!(run.requests.len(), 5, "{protocol:?}");
        let result = run.result();
        assert_eq!(result.attempts.len(), 1, "retries are inside one attempt");
        let notes = &result.attempts[0].notes;
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes[0].contains("http_server_error") && notes[0].contains("boom"));
        // Retry-After is honoured, up to the configured cap.
        assert!(
            notes[1].contains("Retry-After 1 s") && notes[1].contains("waited 0.05 s"),
            "{notes:?}"
        );
        assert!(notes[2].contains("rate_limited") && notes[2].contains("Retry-After 600 s"));
        assert!(notes[3].contains("connection_reset"), "{notes:?}");
        // Every wait, Retry-After or backoff, within the cap the flag set.
        assert!(waits(notes).iter().all(|&wait| wait <= 0.05), "{notes:?}");
    }
}

/// The waits the retry notes report (`...; waited 0.05 s ...`), in seconds.
fn waits(notes: &[String]) -> Vec<f64> {
    notes
        .iter()
        .map(|note| {
            let (_, after) = note.split_once("waited ").expect("a wait in every note");
            let seconds = after.split_once(" s").map_or(after, |(number, _)| number);
            seconds
                .parse()
                .unwrap_or_else(|_| panic!("a wait in {note}"))
        })
        .collect()
}

#[test]
fn retries_are_bounded_and_permanent_faults_are_not_retried() {
    let busy = || Script::status(503, r#"{"error":"busy"}"#);
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(busy())
        .script(busy())
        .script(busy())
        .script(Script::code("a.txt", "never\n"))
        .args(&["--retries", "2", "--retry-base-ms", "1"])
        .run();
    let message = assert_fault(&run, "unavailable");
    assert!(message.contains("after 3 tries"), "{message}");
    assert_eq!(run.requests.len(), 3);

    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(Script::status(404, r#"{"error":"model \"x\" not found"}"#))
        .script(Script::code("a.txt", "never\n"))
        .args(&["--retries", "3", "--retry-base-ms", "1"])
        .run();
    assert_fault(&run, "model_not_found");
    assert_eq!(run.requests.len(), 1, "a missing model is not retried");
}

#[test]
fn an_interrupted_stream_is_retried_and_never_written() {
    // `[DONE]` without a finish reason: llama-cpp-python's server ends a stream so when
    // another request interrupts it. The partial text must not reach the disk.
    let interrupted = || {
        Script::chat("```\npartial", |chat| {
            chat.finish_reason = None;
        })
    };
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(interrupted())
        .script(Script::code("a.txt", "whole\n"))
        .args(&["--retry-base-ms", "1"])
        .run();
    run.assert_code(0);
    assert_eq!(run.read("a.txt").as_deref(), Some("whole\n"));
    assert!(run.result().attempts[0].notes[0].contains("stream_cut"));

    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(interrupted())
        .script(interrupted())
        .script(interrupted())
        .args(&["--retry-base-ms", "1"])
        .run();
    let message = assert_fault(&run, "stream_cut");
    assert!(message.contains("interrupted"), "{message}");
    assert!(
        run.stderr.contains("--interrupt_requests False"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_named_model_is_checked_against_the_servers_list() {
    // Several models: the name must be one of them.
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .models(&["alpha", "beta"])
        .args(&["--model", "gamma"])
        .script(Script::code("a.txt", "x\n"))
        .run();
    let message = assert_fault(&run, "model_not_found");
    assert!(
        message.contains("no model `gamma`") && message.contains("alpha, beta"),
        "{message}"
    );
    assert!(
        run.requests.is_empty(),
        "nothing is asked of a model that is not there"
    );

    // One model (a llama.cpp server answers with it whatever the name): it is used, and
    // the result names it rather than the name that was asked for.
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .models(&["served.gguf"])
        .args(&["--model", "asked-for"])
        .script(Script::code("a.txt", "x\n"))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.model.unwrap().name, "served.gguf");
    assert_eq!(run.requests[0].body["model"], "served.gguf");
    assert!(
        result.attempts[0].notes[0].contains("no model `asked-for`"),
        "{:?}",
        result.attempts[0].notes
    );

    // On Ollama the name picks the model: a missing one is never swapped for another.
    let run = protocol_test(Protocol::Ollama)
        .spec(spec("a.txt", &json!({})))
        .models(&["served:latest"])
        .args(&["--model", "asked-for"])
        .script(Script::code("a.txt", "x\n"))
        .run();
    let message = assert_fault(&run, "model_not_found");
    assert!(message.contains("no model `asked-for`"), "{message}");
    assert!(
        run.stderr.contains("ollama pull asked-for"),
        "{}",
        run.stderr
    );

    // Ollama's implicit `:latest` tag matches.
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .models(&["qwen:latest", "llama:latest"])
        .args(&["--model", "qwen"])
        .script(Script::code("a.txt", "x\n"))
        .run();
    run.assert_code(0);
}

// ---------------------------------------------------------------------------------------
// Discovery and `models`
// ---------------------------------------------------------------------------------------

#[test]
fn discovery_finds_a_server_when_no_endpoint_is_given() {
    let closed = port_of(&closed_port_url());
    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        let run = protocol_test(protocol)
            .discovery(&[closed])
            .spec(spec("a.txt", &json!({})))
            .script(Script::code("a.txt", "x\n"))
            .run();
        run.assert_code(0);
        let model = run.result().model.unwrap();
        assert_eq!(
            model.provider,
            match protocol {
                Protocol::OpenAi => "openai",
                Protocol::Ollama => "ollama",
            }
        );
        assert!(
            model.endpoint.starts_with("http://127.0.0.1:"),
            "{}",
            model.endpoint
        );
    }

    let run = Test::new()
        .discovery(&[])
        .env(
            "LOCAL_TASK_DISCOVERY_PORTS",
            &format!("{closed},{}", port_of(&closed_port_url())),
        )
        .spec(spec("a.txt", &json!({})))
        .run();
    let message = assert_fault(&run, "no_server");
    assert!(message.contains(&closed.to_string()), "{message}");
}

#[test]
fn models_lists_servers_their_kind_and_models_and_closed_ports() {
    let closed = [
        port_of(&closed_port_url()),
        port_of(&closed_port_url()),
        port_of(&closed_port_url()),
    ];
    let run = Test::new()
        .ollama()
        .models(&["qwen2.5-coder:7b", "llama3.2:3b"])
        .discovery(&closed)
        .run_with(|_| vec!["models".to_owned(), "--json".to_owned()]);
    run.assert_code(0);
    let reports = run.json();
    let reports = reports.as_array().expect("a list of servers");
    assert_eq!(reports.len(), 4);
    assert_eq!(reports[0]["reachable"], true);
    assert_eq!(reports[0]["kind"], "Ollama");
    assert_eq!(reports[0]["provider"], "ollama");
    assert_eq!(reports[0]["version"], "0.6.0");
    assert_eq!(
        reports[0]["models"],
        json!(["qwen2.5-coder:7b", "llama3.2:3b"])
    );
    for report in &reports[1..] {
        assert_eq!(report["reachable"], false);
        assert!(
            report["error"]
                .as_str()
                .unwrap()
                .contains("connection_refused"),
            "{report}"
        );
    }

    // The table names the same things.
    let run = Test::new()
        .models(&["only-model"])
        .discovery(&closed[..1])
        .run_with(|_| vec!["models".to_owned()]);
    run.assert_code(0);
    assert!(run.stdout.contains("only-model"), "{}", run.stdout);
    assert!(run.stdout.contains("openai API"), "{}", run.stdout);
    assert!(run.stdout.contains("not reachable"), "{}", run.stdout);

    // Nothing listening anywhere: exit 3 with a hint (a probe that hangs instead runs into
    // the harness's deadline).
    let list = closed.map(|p| p.to_string()).join(",");
    let run = Test::new()
        .discovery(&[])
        .env("LOCAL_TASK_DISCOVERY_PORTS", &list)
        .run_with(|_| vec!["models".to_owned(), "--json".to_owned()]);
    run.assert_code(3);
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
}

#[test]
fn models_probes_a_named_endpoint() {
    let run = Test::new()
        .models(&["a", "b"])
        .run_with(|_| vec!["models".to_owned(), "--json".to_owned()]);
    run.assert_code(0);
    let reports = run.json();
    assert_eq!(reports[0]["provider"], "openai");
    assert!(reports[0]["endpoint"].as_str().unwrap().ends_with("/v1"));
    assert_eq!(reports[0]["models"], json!(["a", "b"]));
}

#[test]
fn models_probes_the_server_a_run_would_use() {
    // OLLAMA_HOST names the server; discovery's ports have nothing. A run would use
    // OLLAMA_HOST, so `models` must too.
    let closed = port_of(&closed_port_url()).to_string();
    let run = Test::new()
        .ollama()
        .server_url_in("OLLAMA_HOST")
        .env("LOCAL_TASK_DISCOVERY_PORTS", &closed)
        .run_with(|_| vec!["models".to_owned(), "--json".to_owned()]);
    run.assert_code(0);
    let reports = run.json();
    let reports = reports.as_array().expect("a list of servers");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["reachable"], true);
    assert_eq!(reports[0]["provider"], "ollama");
}

#[test]
fn rollback_takes_a_lock_timeout_and_options_before_a_subcommand_are_named() {
    let run = Test::new().run_with(|_| {
        ["rollback", "--lock-timeout", "5", "--last"]
            .map(str::to_owned)
            .to_vec()
    });
    run.assert_code(2);
    assert_eq!(run.json()["error"]["kind"], "rollback", "{}", run.stdout);

    // A run option before the subcommand: a clear usage error, not a spec called
    // `rollback`.
    for args in [
        &["-q", "rollback", "20261120T221210529Z-0dbe"][..],
        &["--quiet", "models"][..],
    ] {
        let run = Test::new().run_with(|_| args.iter().map(|a| (*a).to_owned()).collect());
        let error = run.assert_error(2, "usage");
        assert!(
            error.message.contains("is a subcommand") && error.message.contains(args[1]),
            "{}",
            error.message
        );
        assert!(run.stderr.contains("is a subcommand"), "{}", run.stderr);
    }
}

// ---------------------------------------------------------------------------------------
// Record and replay
// ---------------------------------------------------------------------------------------

const TEST_COMMAND: &str = "grep -q good out.txt || { echo 'EXPECTED good'; exit 1; }";

fn record_then_copy(protocol: Protocol, cassette: &Path) -> Run {
    let run = protocol_test(protocol)
        .spec(spec("out.txt", &json!({"test_command": TEST_COMMAND})))
        .script(Script::code("out.txt", "bad\n"))
        .script(Script::chat("```\ngood\n```\n", |chat| chat.usage = None))
        .run_with(|spec| {
            vec![
                spec.display().to_string(),
                "--record".to_owned(),
                spec.with_file_name("cassette.json").display().to_string(),
            ]
        });
    run.assert_code(0);
    let recorded = run.spec_path.with_file_name("cassette.json");
    std::fs::copy(&recorded, cassette).expect("the cassette was written");
    run
}

fn replay(description: &str, cassette: &Path, extra: &[&str]) -> Run {
    Test::new()
        .spec(json!({"task_id": "T-001", "description": description,
            "output_file": "out.txt", "test_command": TEST_COMMAND}))
        .arg("--replay")
        .arg(cassette.to_str().unwrap())
        .args(extra)
        .run()
}

#[test]
fn a_recorded_run_replays_to_the_same_result_without_a_server() {
    for protocol in [Protocol::OpenAi, Protocol::Ollama] {
        let keep = tempfile::tempdir().unwrap();
        let cassette = keep.path().join("cassette.json");
        let recorded = record_then_copy(protocol, &cassette);
        let text: Value =
            serde_json::from_str(&std::fs::read_to_string(&cassette).unwrap()).unwrap();
        assert_eq!(text["format"], "execute-local-task cassette");
        assert_eq!(text["exchanges"].as_array().unwrap().len(), 2);
        assert_eq!(text["exchanges"][0]["request"]["model"], "test-model");

        let replayed = replay("Do the task.", &cassette, &[]);
        replayed.assert_code(0);
        assert!(replayed.requests.is_empty(), "no server was asked");
        let (a, b) = (recorded.result(), replayed.result());
        assert_eq!(a.status, b.status);
        assert_eq!(a.summary, b.summary);
        assert_eq!(a.usage, b.usage);
        let outcomes = |r: &execute_local_task::result::TaskResult| {
            r.attempts
                .iter()
                .map(|a| (a.outcome, a.error.clone(), a.usage.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(outcomes(&a), outcomes(&b));
        assert_eq!(a.files.len(), b.files.len());
        assert_eq!(a.files[0].diff, b.files[0].diff);
        assert_eq!(replayed.read("out.txt").as_deref(), Some("good\n"));
        assert_eq!(b.model.unwrap().provider, "recorded");
    }
}

#[test]
fn replay_fails_loudly_when_the_request_changed() {
    let keep = tempfile::tempdir().unwrap();
    let cassette = keep.path().join("cassette.json");
    record_then_copy(Protocol::OpenAi, &cassette);

    let run = replay("Do another task.", &cassette, &[]);
    let message = assert_fault(&run, "replay");
    assert!(message.contains("request 1 does not match"), "{message}");
    assert!(message.contains("(user) differs"), "{message}");
    assert!(message.contains("now \"another task"), "{message}");
    assert!(run.requests.is_empty());

    // Sequential matching serves the replies in order whatever was asked.
    let run = replay(
        "Do another task.",
        &cassette,
        &["--replay-match", "sequential"],
    );
    run.assert_code(0);
    assert_eq!(run.read("out.txt").as_deref(), Some("good\n"));

    // A run that asks for more than was recorded.
    let run = Test::new()
        .spec(spec(
            "out.txt",
            &json!({"test_command": "false", "max_attempts": 3}),
        ))
        .args(&[
            "--replay",
            cassette.to_str().unwrap(),
            "--replay-match",
            "sequential",
        ])
        .run();
    let message = assert_fault(&run, "replay");
    assert!(message.contains("no recorded reply"), "{message}");

    let missing = keep.path().join("missing.json");
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .args(&["--replay", missing.to_str().unwrap()])
        .run();
    assert_fault(&run, "replay");
}

#[test]
fn faults_are_recorded_and_replayed_too() {
    let keep = tempfile::tempdir().unwrap();
    let cassette = keep.path().join("cassette.json");
    let cassette_arg = cassette.to_str().unwrap().to_owned();
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(Script::status(404, r#"{"error":"model \"x\" not found"}"#))
        .args(&["--record", &cassette_arg])
        .run();
    assert_fault(&run, "model_not_found");
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .args(&["--replay", &cassette_arg])
        .run();
    let message = assert_fault(&run, "model_not_found");
    assert!(message.contains("(recorded)"), "{message}");

    // A transient fault replays once, as recorded, without being retried again.
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(Script::status(503, r#"{"error":"busy"}"#))
        .args(&["--record", &cassette_arg, "--retries", "0"])
        .run();
    assert_fault(&run, "unavailable");
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .args(&[
            "--replay",
            &cassette_arg,
            "--retries",
            "2",
            "--retry-base-ms",
            "5000",
        ])
        .run();
    let message = assert_fault(&run, "unavailable");
    // A retry would have replayed the recorded fault again and said how many tries it took.
    assert!(!message.contains("tries"), "{message}");
}

#[test]
fn the_ollama_provider_against_another_server_says_which_flag_fits() {
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .args(&["--provider", "ollama"])
        .script(Script::code("a.txt", "x\n"))
        .run();
    assert_fault(&run, "http_client_error");
    assert!(run.stderr.contains("--provider openai"), "{}", run.stderr);
}

#[test]
fn only_the_first_choice_of_a_stream_is_the_reply() {
    // A server answering with n > 1 choices interleaves their deltas; the second choice's
    // text was appended to the code.
    let delta = |index: u64, text: &str, finish: Option<&str>| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]})
        )
    };
    let body = [
        delta(0, "```\nnew\n", None),
        delta(1, "other choice\n", None),
        format!(
            "data: {}\n\n",
            json!({"choices": [
                {"index": 1, "delta": {"content": "more\n"}, "finish_reason": "stop"},
                {"index": 0, "delta": {"content": "```\n"}, "finish_reason": null},
            ]})
        ),
        delta(0, "", Some("stop")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let run = faulty(Protocol::OpenAi, Script::Body(body), &[]);
    run.assert_code(0);
    assert_eq!(run.read("keep.txt").as_deref(), Some("new\n"));
}

#[test]
fn an_sse_error_event_reports_the_servers_message() {
    for data in [
        json!({"message": "the model ran out of memory", "type": "server_error"}).to_string(),
        json!({"error": {"message": "the model ran out of memory"}}).to_string(),
        "the model ran out of memory".to_owned(),
    ] {
        let body = format!(
            "{}event: error\ndata: {data}\n\n",
            partial_stream(Protocol::OpenAi, &["```\n"])
        );
        let run = faulty(Protocol::OpenAi, Script::Body(body), &[]);
        let message = assert_fault(&run, "http_server_error");
        assert!(message.contains("the model ran out of memory"), "{message}");
    }
}
