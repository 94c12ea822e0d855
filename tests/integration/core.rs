//! The core pipeline, end to end: one spec through every stage.

use execute_local_task::result::{FileAction, Outcome, Status};
use serde_json::json;

use crate::harness::{Script, Test, closed_port_url, spec};

#[test]
fn creates_a_file_and_passes_its_test() {
    let run = Test::new()
        .spec(spec(
            "src/add.py",
            &json!({"test_command": "grep -q 'def add' src/add.py"}),
        ))
        .script(Script::code(
            "src/add.py",
            "def add(a, b):\n    return a + b\n",
        ))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success);
    assert_eq!(result.task_id.as_deref(), Some("T-001"));
    assert_eq!(
        run.read("src/add.py").as_deref(),
        Some("def add(a, b):\n    return a + b\n")
    );
    let file = &result.files[0];
    assert_eq!(
        (file.path.as_str(), file.action),
        ("src/add.py", FileAction::Created)
    );
    assert_eq!(
        (file.lines_added, file.lines_removed, file.bytes),
        (2, 0, 32)
    );
    assert!(file.backup.is_none());
    assert!(file.diff.contains("+++ b/src/add.py"), "{}", file.diff);
    let test = result.test.expect("a test ran");
    assert!(test.passed && test.exit_code == Some(0) && !test.timed_out);
    assert_eq!(result.attempts.len(), 1);
    assert_eq!(result.attempts[0].outcome, Outcome::Ok);
    assert_eq!(
        (
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.usage.estimated
        ),
        (100, 50, false)
    );
    let model = result.model.expect("model info");
    assert_eq!(
        (model.provider.as_str(), model.name.as_str()),
        ("openai", "test-model")
    );

    let [request] = run.requests.as_slice() else {
        panic!("one request expected: {:?}", run.requests)
    };
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["stream_options"]["include_usage"], true);
    assert_eq!(request.body["model"], "test-model");
    let roles: Vec<String> = request
        .messages()
        .into_iter()
        .map(|(role, _)| role)
        .collect();
    assert_eq!(roles, ["system", "user"]);
}

#[test]
fn modifies_a_file_and_keeps_a_backup_of_its_old_bytes() {
    let old = "def add(a, b):\n    return a - b\n";
    let run = Test::new()
        .file("calc.py", old)
        .spec(spec("calc.py", &json!({})))
        .script(Script::code(
            "calc.py",
            "def add(a, b):\n    return a + b\n",
        ))
        .run();
    run.assert_code(0);
    let result = run.result();
    let file = &result.files[0];
    assert_eq!(file.action, FileAction::Modified);
    assert_eq!((file.lines_added, file.lines_removed), (1, 1));
    let backup = file.backup.as_deref().expect("a backup path");
    assert!(
        backup.contains("/.git/execute-local-task/runs/"),
        "{backup}"
    );
    assert_eq!(std::fs::read_to_string(backup).unwrap(), old);
    assert!(result.test.is_none());
    assert!(result.summary.contains("UNTESTED"), "{}", result.summary);
    // The current content is in the prompt so the model can change it.
    assert!(run.requests[0].last_user_message().contains("return a - b"));
}

#[test]
fn a_failing_test_is_repaired_with_its_output() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({"test_command": "grep -q good out.txt || { echo 'EXPECTED good IN out.txt'; exit 1; }"})))
        .script(Script::code("out.txt", "bad\n"))
        .script(Script::code("out.txt", "good\n"))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success);
    assert_eq!(run.read("out.txt").as_deref(), Some("good\n"));
    let outcomes: Vec<Outcome> = result.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, [Outcome::TestFailed, Outcome::Ok]);
    assert_eq!(result.usage.prompt_tokens, 200);
    assert_eq!(run.requests.len(), 2);
    let repair = &run.requests[1];
    let roles: Vec<String> = repair
        .messages()
        .into_iter()
        .map(|(role, _)| role)
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    let text = repair.last_user_message();
    assert!(text.contains("EXPECTED good IN out.txt"), "{text}");
    assert!(text.contains("exit code 1"), "{text}");
}

#[test]
fn two_failed_tests_escalate_and_leave_the_tree_as_it_was() {
    let run = Test::new()
        .file("out.txt", "original\n")
        .spec(spec("out.txt", &json!({"test_command": "false"})))
        .script(Script::code("out.txt", "first try\n"))
        .script(Script::code("out.txt", "second try\n"))
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    assert!(result.files.is_empty());
    assert!(
        result.summary.starts_with("escalate:"),
        "{}",
        result.summary
    );
    let outcomes: Vec<Outcome> = result.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, [Outcome::TestFailed, Outcome::TestFailed]);
    assert!(!result.test.expect("the last test").passed);
    run.assert_unchanged();
}

#[test]
fn a_reply_without_code_is_a_failed_attempt() {
    let run = Test::new()
        .spec(spec("a.py", &json!({"max_attempts": 1})))
        .reply("I would need to know more about your project before I can write this file.")
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    assert_eq!(result.attempts[0].outcome, Outcome::NoCode);
    assert!(
        result.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no fenced code block")
    );
    run.assert_unchanged();
}

#[test]
fn spec_errors_exit_2_name_the_file_and_field_and_call_nothing() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"task_id": "T-1", "description": "d", "output_file": "a.py", "contex_files": []}"#,
            "did you mean `context_files`",
        ),
        (
            r#"{"task_id": "T 1", "description": "d", "output_file": "a.py"}"#,
            "field `task_id`",
        ),
        (
            r#"{"task_id": "T-1", "output_file": "a.py"}"#,
            "field `description`: is required",
        ),
        (
            r#"{"task_id": "T-1", "description": "d"}"#,
            "field `output_file`",
        ),
        (
            r#"{"task_id": "T-1", "description": "d", "output_file": "../outside.py"}"#,
            "field `output_file`: unsafe path",
        ),
        (
            r#"{"task_id": "T-1", "description": "d", "output_file": "/tmp/abs.py"}"#,
            "is absolute",
        ),
        (
            r#"{"task_id": "T-1", "description": "d", "output_file": ".git/hooks/pre-commit"}"#,
            "inside `.git`",
        ),
        (
            r#"{"task_id": "T-1", "description": "d", "output_file": "a.py", "max_attempts": "two"}"#,
            "field `max_attempts`",
        ),
        (
            r#"{"task_id": "T-1", "description": "d", "output_file": "a.py", "context_files": ["missing.py"]}"#,
            "`missing.py` does not exist",
        ),
        (
            r#"{"task_id": "T-1", "description": "d", "output_file": "a.py",}"#,
            "not valid JSON at line 1",
        ),
        ("[]", "a spec is a JSON object"),
    ];
    for (text, expected) in cases {
        let run = Test::new().spec_text(text).reply("```\nx\n```").run();
        run.assert_code(2);
        let result = run.result();
        assert_eq!(result.status, Status::Error, "{text}");
        let error = result.error.expect("an error");
        assert!(
            error.message.contains(expected),
            "{text}: {}",
            error.message
        );
        assert!(run.stderr.contains(expected), "{text}: {}", run.stderr);
        if !text.contains("missing.py") {
            assert!(
                error.message.contains("spec.json"),
                "{text}: {}",
                error.message
            );
        }
        assert!(run.requests.is_empty(), "{text}: the model was called");
        run.assert_unchanged();
    }
}

#[test]
fn an_unreachable_server_exits_3_and_writes_nothing() {
    let run = Test::new()
        .spec(spec("a.py", &json!({})))
        .endpoint(&closed_port_url())
        .run();
    run.assert_error(3, "connection_refused");
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
    run.assert_unchanged();
}

#[test]
fn outside_a_git_repository_is_a_clear_error() {
    let run = Test::new()
        .no_git()
        .spec(spec("a.py", &json!({})))
        .reply("```\nx\n```")
        .run();
    let error = run.assert_error(2, "repo");
    assert!(
        error.message.contains("not inside a git repository"),
        "{}",
        error.message
    );
    assert!(run.requests.is_empty());
}

#[test]
fn dry_run_prints_the_request_and_sends_nothing() {
    let run = Test::new()
        .file("lib.py", "X = 1\n")
        .spec(spec("a.py", &json!({"context_files": ["lib.py"]})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let printed = run.json();
    assert_eq!(printed["dry_run"], true);
    assert_eq!(
        printed["requests"]["openai"]["request"]["model"],
        "test-model"
    );
    assert_eq!(printed["requests"]["openai"]["request"]["stream"], true);
    assert_eq!(
        printed["requests"]["openai"]["request"]["temperature"],
        json!(0.2)
    );
    assert_eq!(printed["status"], "dry_run");
    assert!(run.dry_run_prompt().contains("X = 1"));
    assert!(run.requests.is_empty());
    run.assert_unchanged();
}

#[test]
fn several_models_and_none_chosen_lists_them() {
    let run = Test::new()
        .spec(spec("a.py", &json!({})))
        .models(&["alpha", "beta"])
        .env("LOCAL_TASK_MODEL", "")
        .run();
    let error = run.assert_error(3, "no_model");
    assert!(error.message.contains("alpha, beta"), "{}", error.message);
}

#[test]
fn the_only_model_of_a_server_is_used_when_none_is_named() {
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .models(&["only-one"])
        .env("LOCAL_TASK_MODEL", "")
        .script(Script::code("a.txt", "x\n"))
        .run();
    run.assert_code(0);
    assert_eq!(run.requests[0].body["model"], "only-one");
}

#[test]
fn rollback_restores_bytes_and_removes_created_files() {
    let run = Test::new()
        .file("keep.txt", "old\n")
        .spec(json!({"task_id": "T-2", "description": "d", "output_files": ["keep.txt", "new/dir/made.txt"]}))
        .reply("```text path=keep.txt\nnew content here\n```\n```text path=new/dir/made.txt\nmade\n```\n")
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(run.read("new/dir/made.txt").as_deref(), Some("made\n"));
    let (code, stdout, stderr) = run.again(&["rollback", &result.run_id]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    run.assert_unchanged();
    assert!(
        !run.repo.join("new").exists(),
        "created directories are removed"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["restored"], json!(["keep.txt"]));
    assert_eq!(report["removed"], json!(["new/dir/made.txt"]));
    let (code, _, stderr) = run.again(&["rollback", &result.run_id]);
    assert_eq!(code, 2);
    assert!(stderr.contains("already rolled back"), "{stderr}");
}

#[test]
fn demo_runs_the_pipeline_with_a_repair() {
    let run = Test::new().run_with(|_| vec!["demo".to_owned()]);
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success);
    assert_eq!(result.attempts.len(), 2);
    assert!(run.stderr.contains("RECORDED"), "{}", run.stderr);
    assert!(run.stderr.contains("Ollama"), "{}", run.stderr);
}

#[test]
fn schemas_are_json_schemas() {
    for which in ["spec", "result"] {
        let run = Test::new().run_with(|_| vec!["schema".to_owned(), which.to_owned()]);
        run.assert_code(0);
        let schema = run.json();
        assert!(
            schema["$schema"]
                .as_str()
                .unwrap()
                .contains("json-schema.org"),
            "{which}"
        );
        assert!(schema["properties"]["task_id"].is_object(), "{which}");
        if which == "spec" {
            assert_eq!(schema["oneOf"][0]["required"], json!(["output_file"]));
        }
    }
}

#[test]
fn usage_is_estimated_and_flagged_when_the_server_sends_none() {
    let Script::Chat(mut chat) = Script::code("a.txt", "hello\n") else {
        unreachable!()
    };
    chat.usage = None;
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .script(Script::Chat(chat))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert!(result.usage.estimated);
    assert!(result.attempts[0].usage.estimated);
    assert!(result.usage.prompt_tokens > 100, "{:?}", result.usage);
    assert!(result.usage.completion_tokens > 0);
}

#[test]
fn a_repository_template_overrides_the_built_in_one() {
    let run = Test::new()
        .file(
            ".execute-local-task/prompts/code.md",
            "CUSTOM for {{ task_id }}: {{ description }}\n",
        )
        .spec(spec("a.py", &json!({})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let user = run.dry_run_prompt();
    assert_eq!(user, "CUSTOM for T-001: Do the task.\n");
}

#[test]
fn a_symlinked_template_override_cannot_read_outside_the_repository() {
    let test = Test::new().spec(spec("a.py", &json!({}))).arg("--dry-run");
    let outside = test.repo_path().parent().unwrap().join("secret.md");
    std::fs::write(&outside, "SECRET {{ task_id }}\n").unwrap();
    let prompts = test.repo_path().join(".execute-local-task/prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::os::unix::fs::symlink(&outside, prompts.join("code.md")).unwrap();
    let run = test.run();
    let error = run.assert_error(2, "unsafe_path");
    assert!(error.message.contains("code.md"), "{}", error.message);
    assert!(!run.stdout.contains("SECRET"));
}

#[test]
fn a_template_flag_replaces_the_kind_template_and_errors_name_it() {
    let test = Test::new();
    let template = test.repo_path().parent().unwrap().join("mine.md");
    std::fs::write(&template, "MINE {{ outputs[0].path }}\n").unwrap();
    let run = test
        .spec(spec("a.py", &json!({})))
        .args(&["--dry-run", "--template", template.to_str().unwrap()])
        .run();
    run.assert_code(0);
    assert_eq!(
        run.dry_run_prompt(),
        "MINE a.py
"
    );

    let test = Test::new();
    let broken = test.repo_path().parent().unwrap().join("broken.md");
    std::fs::write(&broken, "{% if %}\n").unwrap();
    let run = test
        .spec(spec("a.py", &json!({})))
        .args(&["--template", broken.to_str().unwrap()])
        .run();
    let error = run.assert_error(2, "template");
    assert!(error.message.contains("broken.md"), "{}", error.message);
}

#[test]
fn context_globs_are_expanded_and_bad_context_is_a_clear_error() {
    let run = Test::new()
        .file("src/a.rs", "fn a() {}\n")
        .file("src/b/c.rs", "fn c() {}\n")
        .file("src/skip.txt", "not rust\n")
        .spec(spec("src/d.rs", &json!({"context_files": ["src/**/*.rs"]})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let user = run.dry_run_prompt();
    assert!(user.contains("src/a.rs\n```rust\nfn a() {}\n```"), "{user}");
    assert!(user.contains("fn c() {}"), "{user}");
    assert!(!user.contains("not rust"), "{user}");

    for (files, pattern, budget, expected) in [
        (
            vec![("logo.png", b"\x89PNG\0\0".to_vec())],
            "logo.png",
            "100000",
            "is binary",
        ),
        (
            vec![("big.txt", vec![b'x'; 2000])],
            "big.txt",
            "1000",
            "over the budget of 1000 bytes",
        ),
        (vec![], "src/*.go", "100000", "matches no file"),
    ] {
        let mut test = Test::new();
        for (path, bytes) in files {
            test = test.file(path, bytes);
        }
        let run = test
            .spec(spec("out.txt", &json!({"context_files": [pattern]})))
            .args(&["--max-context-bytes", budget])
            .reply("```\nx\n```")
            .run();
        let error = run.assert_error(2, "context");
        assert!(
            error.message.contains(expected),
            "{pattern}: {}",
            error.message
        );
        assert!(run.requests.is_empty());
        run.assert_unchanged();
    }
}

#[test]
fn command_line_errors_still_print_a_result() {
    let run = Test::new().run_with(|_| {
        vec![
            "--max-attempts".to_owned(),
            "9".to_owned(),
            "spec.json".to_owned(),
        ]
    });
    run.assert_code(2);
    let result = run.result();
    assert_eq!(result.status, Status::Error);
    let error = result.error.unwrap();
    assert_eq!(error.kind, "usage");
    assert!(
        error.message.contains("'9' for '--max-attempts"),
        "{}",
        error.message
    );
    assert!(run.stderr.contains("--max-attempts"), "{}", run.stderr);

    let run = Test::new().run_with(|_| vec!["schema".to_owned()]);
    let error = run.assert_error(2, "usage");
    assert!(error.message.contains("<WHICH>"), "{}", error.message);
    let run = Test::new().run_with(|_| {
        vec![
            "--provider".to_owned(),
            "lmstudio".to_owned(),
            "s.json".to_owned(),
        ]
    });
    let error = run.assert_error(2, "usage");
    assert!(
        error
            .message
            .contains("possible values: auto, openai, ollama"),
        "{}",
        error.message
    );

    let run = Test::new().run_with(|_| Vec::new());
    run.assert_code(2);
    assert!(run.stderr.contains("no task spec given"), "{}", run.stderr);
}

#[test]
fn an_output_file_matched_by_a_context_glob_is_shown_once() {
    let run = Test::new()
        .file(
            "src/slug.py",
            "def slug(text):\n    return text  # ORIGINAL\n",
        )
        .file("src/util.py", "X = 1\n")
        .spec(spec("src/slug.py", &json!({"context_files": ["src/*.py"]})))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let user = run.dry_run_prompt();
    assert_eq!(user.matches("# ORIGINAL").count(), 1, "{user}");
    assert!(user.contains("X = 1"), "{user}");
}

#[test]
fn a_dry_run_refuses_what_the_real_run_would_refuse() {
    let run = Test::new()
        .file("a.py", "X = 1\n")
        .uncommitted("a.py", "X = 2  # work in progress\n")
        .spec(spec("a.py", &json!({})))
        .arg("--dry-run")
        .run();
    run.assert_error(2, "dirty_target");
    run.assert_unchanged();
}

#[test]
fn replies_cut_short_under_a_token_cap_say_to_raise_it() {
    let cut = || {
        Script::chat("```\npart", |chat| {
            chat.finish_reason = Some("length".to_owned());
        })
    };
    let run = Test::new()
        .spec(spec("a.txt", &json!({})))
        .args(&["--max-tokens", "3"])
        .script(cut())
        .script(cut())
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(run.requests[0].body["max_tokens"], 3);
    assert!(
        result.summary.contains("--max-tokens 3 is too low"),
        "{}",
        result.summary
    );
    run.assert_unchanged();
}

#[test]
fn a_crlf_file_keeps_its_line_ends() {
    let run = Test::new()
        .file("win.txt", "one\r\ntwo\r\nthree\r\n")
        .spec(spec("win.txt", &json!({})))
        .script(Script::code("win.txt", "one\ntwo\nTHREE\n"))
        .run();
    run.assert_code(0);
    assert_eq!(
        run.read("win.txt").as_deref(),
        Some("one\r\ntwo\r\nTHREE\r\n")
    );
    let file = &run.result().files[0];
    assert_eq!((file.lines_added, file.lines_removed), (1, 1));
}

#[test]
fn a_closed_stderr_neither_stops_the_run_nor_the_json() {
    // Progress goes to stderr between the write and the test: a failed write there must
    // not leave untested code in the tree, nor the caller without its result.
    let run = Test::new()
        .file("calc.py", "X = 0\n")
        .spec(spec(
            "calc.py",
            &json!({"test_command": "grep -q 'X = 1' calc.py"}),
        ))
        .script(Script::code("calc.py", "X = 1\n"))
        .closed_stderr()
        .run();
    run.assert_code(0);
    let result = run.result();
    assert!(result.test.expect("the test ran").passed);
    assert_eq!(run.read("calc.py").as_deref(), Some("X = 1\n"));
}

#[test]
fn a_test_command_that_defines_a_function_is_not_mistaken_for_a_missing_program() {
    let run = Test::new()
        .spec(spec(
            "a.txt",
            &json!({"test_command": "check () { grep -q x a.txt; }; check"}),
        ))
        .script(Script::code("a.txt", "x\n"))
        .run();
    run.assert_code(0);
    assert_eq!(run.requests.len(), 1);
    assert!(run.result().test.unwrap().passed);
}

#[test]
fn an_option_value_that_names_a_subcommand_is_only_a_value() {
    let run = Test::new().run_with(|_| {
        ["--max-attempts", "9", "--model", "demo", "spec.json"]
            .map(str::to_owned)
            .to_vec()
    });
    let error = run.assert_error(2, "usage");
    assert!(
        error.message.contains("--max-attempts"),
        "{}",
        error.message
    );

    let run = Test::new().run_with(|_| ["-q", "rollback", "X"].map(str::to_owned).to_vec());
    let error = run.assert_error(2, "usage");
    assert!(
        error.message.contains("`rollback` is a subcommand"),
        "{}",
        error.message
    );
}
