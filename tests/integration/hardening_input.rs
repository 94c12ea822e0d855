//! Input hardening: the repository root in every git layout, the test's environment,
//! `--record`'s destination, bounded reads of specs and cassettes, and spec validation.

use serde_json::json;

use crate::harness::{Layout, Script, Test, spec};

/// In every layout the output lands in the working tree, the test runs there, and nothing
/// appears beside the git directory.
#[test]
fn the_root_is_the_working_tree_in_every_git_layout() {
    for layout in [
        Layout::SeparateGitDir,
        Layout::SymlinkedGitDir,
        Layout::Submodule,
        Layout::LinkedWorktree,
    ] {
        let run = Test::new()
            .layout(layout)
            .spec(spec("out.py", &json!({"test_command": "pwd -P"})))
            .script(Script::code("out.py", "x = 1\n"))
            .run();
        run.assert_code(0);
        let result = run.result();
        let root = std::fs::canonicalize(&run.repo).unwrap();
        assert_eq!(run.read("out.py").as_deref(), Some("x = 1\n"), "{layout:?}");
        let test = result.test.expect("a test ran");
        assert_eq!(
            test.output_tail.trim(),
            root.display().to_string(),
            "{layout:?}"
        );
        assert_eq!(
            result.git.expect("git info").root,
            root.display().to_string(),
            "{layout:?}"
        );
        let git_dir =
            std::fs::canonicalize(git2::Repository::open(&run.repo).unwrap().path()).unwrap();
        let beside = git_dir.parent().unwrap().join("out.py");
        assert!(
            !beside.exists(),
            "{layout:?}: {} was written",
            beside.display()
        );
        // Backups and the journal stay in the repository's own git directory.
        assert!(
            git_dir.join("execute-local-task").is_dir(),
            "{layout:?}: no state in {}",
            git_dir.display()
        );
    }
}

/// Model-written code runs as the test: it must not be handed the tool's API keys.
#[test]
fn the_test_command_does_not_get_the_api_keys() {
    let run = Test::new()
        .env("LOCAL_TASK_API_KEY", "secret-local")
        .env("OPENAI_API_KEY", "secret-openai")
        .env("KEPT_VARIABLE", "kept")
        .spec(spec("out.py", &json!({"test_command": "env"})))
        .script(Script::code("out.py", "x = 1\n"))
        .run();
    run.assert_code(0);
    let output = run.result().test.expect("a test ran").output_tail;
    assert!(output.contains("KEPT_VARIABLE=kept"), "{output}");
    assert!(output.contains("PATH="), "{output}");
    assert!(!output.contains("API_KEY"), "{output}");
    assert!(!output.contains("secret"), "{output}");
}

/// A `--record` run refused before the model call, exit 2, with a message naming the file.
#[track_caller]
fn assert_record_refused(run: &crate::harness::Run, file: &str, reason: &str) {
    let error = run.assert_error(2, "usage");
    assert!(error.message.contains(file), "{}", error.message);
    assert!(error.message.contains(reason), "{}", error.message);
    assert!(run.requests.is_empty(), "the model was called");
    assert!(run.stderr.contains(reason), "{}", run.stderr);
}

#[test]
fn record_refuses_an_existing_file_that_is_not_a_cassette() {
    let run = Test::new()
        .uncommitted("notes.txt", "uncommitted work\n")
        .spec(spec("out.py", &json!({})))
        .script(Script::code("out.py", "x = 1\n"))
        .args(&["--record", "notes.txt"])
        .run();
    assert_record_refused(&run, "notes.txt", "not a cassette");
    assert_eq!(run.read("notes.txt").as_deref(), Some("uncommitted work\n"));
    run.assert_unchanged();
}

#[test]
fn record_refuses_the_spec_and_the_output_files() {
    let run = Test::new()
        .spec(spec("out.py", &json!({})))
        .script(Script::code("out.py", "x = 1\n"))
        .run_with(|spec| {
            let spec = spec.display().to_string();
            vec![spec.clone(), "--record".to_owned(), spec]
        });
    assert_record_refused(&run, "spec.json", "is the spec");
    let spec_text = std::fs::read_to_string(&run.spec_path).unwrap();
    assert!(spec_text.contains("\"task_id\""), "{spec_text}");

    // The output file, spelled another way, and before it exists.
    let run = Test::new()
        .file("src/keep.txt", "k\n")
        .spec(spec("src/out.py", &json!({})))
        .script(Script::code("src/out.py", "x = 1\n"))
        .args(&["--record", "./src/../src/out.py"])
        .run();
    assert_record_refused(&run, "out.py", "an output file of this run");
    run.assert_unchanged();
}

#[test]
fn record_checks_its_directory_before_the_model_call() {
    let run = Test::new()
        .spec(spec("out.py", &json!({})))
        .script(Script::code("out.py", "x = 1\n"))
        .args(&["--record", "no-such-dir/cassette.json"])
        .run();
    assert_record_refused(&run, "no-such-dir", "does not exist");
    run.assert_unchanged();
}

/// A FIFO nobody writes to, in the test's temporary directory.
fn fifo(dir: &std::path::Path) -> String {
    let path = dir.join("fifo");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    path.display().to_string()
}

#[test]
fn a_spec_that_is_a_fifo_or_a_device_is_refused_at_once() {
    for device in [None, Some("/dev/zero")] {
        let run = Test::new().run_with(|spec| {
            let path = device.map_or_else(|| fifo(spec.parent().unwrap()), str::to_owned);
            vec![path]
        });
        let error = run.assert_error(2, "spec");
        let kind = if device.is_some() {
            "a device"
        } else {
            "a FIFO"
        };
        assert!(
            error
                .message
                .contains(&format!("is {kind}, not a regular file")),
            "{}",
            error.message
        );
        assert!(
            error.message.contains(device.unwrap_or("fifo")),
            "{}",
            error.message
        );
    }
}

#[test]
fn a_replay_file_that_is_a_fifo_or_a_device_is_refused_at_once() {
    for device in [None, Some("/dev/zero")] {
        let run = Test::new()
            .spec(spec("out.py", &json!({})))
            .run_with(|spec| {
                let path = device.map_or_else(|| fifo(spec.parent().unwrap()), str::to_owned);
                vec![spec.display().to_string(), "--replay".to_owned(), path]
            });
        let error = run.assert_error(2, "usage");
        let kind = if device.is_some() {
            "a device"
        } else {
            "a FIFO"
        };
        assert!(
            error
                .message
                .contains(&format!("is {kind}, not a regular file")),
            "{}",
            error.message
        );
        assert!(
            error.message.contains(device.unwrap_or("fifo")),
            "{}",
            error.message
        );
        run.assert_unchanged();
    }
}

#[test]
fn a_spec_larger_than_the_limit_is_refused() {
    let big = format!(
        r#"{{"task_id":"T-001","description":"{}","output_file":"x.py"}}"#,
        "d".repeat(1 << 20)
    );
    let run = Test::new().spec_text(&big).run();
    let error = run.assert_error(2, "spec");
    assert!(
        error.message.contains("is larger than the limit of 1 MiB"),
        "{}",
        error.message
    );
}

#[test]
fn a_spec_key_given_twice_is_refused() {
    let run = Test::new()
        .spec_text(
            r#"{"task_id": "T-001", "description": "d", "output_file": "a.py", "output_file": "b.py"}"#,
        )
        .run();
    let error = run.assert_error(2, "spec");
    assert!(
        error
            .message
            .contains("field `output_file`: is given twice"),
        "{}",
        error.message
    );
    assert!(run.requests.is_empty());
    run.assert_unchanged();
}

/// An escape sequence in a spec reaches messages escaped, never raw.
#[test]
fn spec_text_in_messages_has_its_control_characters_escaped() {
    let run = Test::new()
        .spec_text(
            r#"{"task_id": "\u001b]0;owned\u0007T", "description": "d", "output_file": "a.py"}"#,
        )
        .run();
    let error = run.assert_error(2, "spec");
    assert!(
        error
            .message
            .contains(r"`\u{1b}]0;owned\u{7}T` is not a valid task id"),
        "{}",
        error.message
    );
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
    assert!(!run.stdout.contains('\u{1b}'), "{}", run.stdout);
}

#[test]
fn an_ollama_stall_names_its_limit_once_in_seconds() {
    let line = json!({"message": {"role": "assistant", "content": "half"}, "done": false});
    let run = Test::new()
        .ollama()
        .spec(spec("out.py", &json!({})))
        .script(Script::Stall(format!("{line}\n")))
        .args(&["--retries", "0", "--idle-timeout", "0.2"])
        .run();
    let error = run.assert_error(3, "idle_timeout");
    assert!(
        error
            .message
            .ends_with("/api/chat: the stream stalled for 0.2 s after 4 bytes"),
        "{}",
        error.message
    );
}

/// Template errors name the file the user wrote, never an internal name.
#[test]
fn template_errors_name_the_users_file() {
    for text in ["{% if %}\n", "{{ no_such_variable.x }}\n"] {
        let test = Test::new();
        let broken = test.repo_path().parent().unwrap().join("broken.md");
        std::fs::write(&broken, text).unwrap();
        let run = test
            .spec(spec("a.py", &json!({})))
            .args(&["--template", broken.to_str().unwrap()])
            .run();
        let error = run.assert_error(2, "template");
        let named = format!("template {}: ", broken.display());
        assert!(error.message.starts_with(&named), "{}", error.message);
        assert!(!error.message.contains("override.md"), "{}", error.message);
        assert!(error.message.contains("line 1"), "{}", error.message);
    }
    for text in ["{% if %}\n", "{{ no_such_variable.x }}\n"] {
        let run = Test::new()
            .file(".execute-local-task/prompts/code.md", text)
            .spec(spec("a.py", &json!({})))
            .run();
        let error = run.assert_error(2, "template");
        assert!(
            error
                .message
                .contains("/.execute-local-task/prompts/code.md: "),
            "{}",
            error.message
        );
        assert!(!error.message.contains("(in code.md"), "{}", error.message);
    }
}

/// The test command is spec text too: a message about it that cannot start has it escaped.
#[test]
fn a_test_command_that_cannot_start_is_named_escaped() {
    let run = Test::new()
        .spec(spec(
            "out.py",
            &json!({"test_command": "./no-such-program \u{1b}[2J"}),
        ))
        .script(Script::code("out.py", "x = 1\n"))
        .run();
    run.assert_code(1);
    let summary = run.result().summary;
    assert!(
        summary.contains(r"the test command `./no-such-program \u{1b}[2J` could not start"),
        "{summary}"
    );
}
