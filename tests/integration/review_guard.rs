//! Hardening found by review: the tool's own credentials out of the test's reach, git
//! directories anywhere in the tree refused for reads and writes (and skipped by globs),
//! and an unreadable `--template` reported as a template error.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::{Script, Test, git, spec};

/// The working tree the builder lays out beside the spec.
fn repo_beside(spec: &Path) -> PathBuf {
    spec.parent()
        .expect("the spec has a directory")
        .join("repo")
}

/// `git init --separate-git-dir=ngd sub` inside the repository: `ngd/` is a git directory
/// with an ordinary name, `sub/.git` a file naming it.
fn nested_git_dir(repo: &Path) {
    let gitdir = repo.join("ngd");
    git(
        repo,
        &[
            "init",
            "-q",
            &format!("--separate-git-dir={}", gitdir.display()),
            "sub",
        ],
    );
    assert!(gitdir.join("HEAD").is_file(), "no nested git directory");
}

/// Model-written code runs as the test: reading the tool's environment through `/proc`
/// must fail. Tool and test run without any capability (`setpriv --bounding-set=-all`),
/// as an ordinary user does: root's capabilities would let it read any process anyway,
/// which the README states as the limit.
#[test]
fn the_test_cannot_read_the_tools_environment_through_proc() {
    let command = "cat /proc/$PPID/comm; cat /proc/$PPID/environ | tr '\\0' '\\n'; true";
    let run = Test::new()
        .wrapped_in(&["setpriv", "--bounding-set=-all", "--"])
        .env("LOCAL_TASK_API_KEY", "sk-x-review")
        .spec(spec("out.py", &json!({"test_command": command})))
        .script(Script::code("out.py", "x = 1\n"))
        .run();
    run.assert_code(0);
    let output = run.result().test.expect("a test ran").output_tail;
    // The parent read is the tool itself (its name, cut to 15 bytes by the kernel).
    assert!(output.contains("execute-local"), "{output}");
    assert!(output.contains("Permission denied"), "{output}");
    assert!(!output.contains("sk-x-review"), "{output}");
    assert!(!output.contains("LOCAL_TASK_ENDPOINT="), "{output}");
}

/// Provider keys from a supervisor's environment, and endpoint variables carrying a
/// password, are not handed to the test; an endpoint without one is.
#[test]
fn the_test_gets_no_provider_keys_nor_endpoints_with_passwords() {
    let mut test = Test::new();
    for name in [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "MISTRAL_API_KEY",
        "GROQ_API_KEY",
        "OPENROUTER_API_KEY",
        "TOGETHER_API_KEY",
        "DEEPSEEK_API_KEY",
        "LITELLM_API_KEY",
    ] {
        test = test.env(name, &format!("secret-{}", name.to_lowercase()));
    }
    let run = test
        .env("OPENAI_BASE_URL", "http://user:secret-pass@127.0.0.1:9/v1")
        .env("OLLAMA_HOST", "127.0.0.1:11434")
        .spec(spec("out.py", &json!({"test_command": "env"})))
        .script(Script::code("out.py", "x = 1\n"))
        .run();
    run.assert_code(0);
    let output = run.result().test.expect("a test ran").output_tail;
    assert!(!output.contains("secret"), "{output}");
    assert!(!output.contains("OPENAI_BASE_URL"), "{output}");
    assert!(output.contains("OLLAMA_HOST=127.0.0.1:11434"), "{output}");
}

/// Writing into a git directory with an ordinary name (a nested repository made with
/// `--separate-git-dir`) is refused: a hook there would run on the user's next commit.
#[test]
fn a_nested_git_directory_is_not_written() {
    for (output, force) in [("ngd/hooks/post-commit", false), ("ngd/config", true)] {
        let test = Test::new()
            .spec(spec(output, &json!({})))
            .script(Script::code(output, "#!/bin/sh\necho owned\n"));
        let mut repo = PathBuf::new();
        let run = test.run_with(|spec_path| {
            repo = repo_beside(spec_path);
            nested_git_dir(&repo);
            let mut args = vec![spec_path.display().to_string()];
            if force {
                args.push("--force".to_owned());
            }
            args
        });
        let error = run.assert_error(2, "unsafe_path");
        assert!(error.message.contains("git directory"), "{}", error.message);
        assert!(
            !repo.join("ngd/hooks/post-commit").exists(),
            "{output}: the hook was created"
        );
        let config = std::fs::read_to_string(repo.join("ngd/config")).unwrap_or_default();
        assert!(
            !config.contains("owned"),
            "{output}: the config was written"
        );
    }
}

/// Naming a file in a nested git directory as context is refused: its config and hooks
/// are not the project's code.
#[test]
fn a_nested_git_directory_is_not_read_as_context() {
    let run = Test::new()
        .spec(spec("out.py", &json!({"context_files": ["ngd/config"]})))
        .script(Script::code("out.py", "x = 1\n"))
        .run_with(|spec_path| {
            nested_git_dir(&repo_beside(spec_path));
            vec![spec_path.display().to_string()]
        });
    let error = run.assert_error(2, "unsafe_path");
    assert!(error.message.contains("ngd/config"), "{}", error.message);
    assert!(run.requests.is_empty(), "the model was called");
}

/// A glob over the whole tree skips a git directory inside it instead of failing the run.
#[test]
fn a_glob_skips_a_nested_git_directory() {
    let run = Test::new()
        .file("lib.py", "def f():\n    return 1\n")
        .spec(spec("out.py", &json!({"context_files": ["**/*"]})))
        .script(Script::code("out.py", "x = 1\n"))
        .run_with(|spec_path| {
            let repo = repo_beside(spec_path);
            nested_git_dir(&repo);
            // A commit in the nested repository leaves COMMIT_EDITMSG in its git directory.
            std::fs::write(repo.join("sub/a.txt"), "a\n").unwrap();
            git(&repo.join("sub"), &["add", "a.txt"]);
            git(&repo.join("sub"), &["commit", "-q", "-m", "nested"]);
            vec![spec_path.display().to_string()]
        });
    run.assert_code(0);
    let prompt = run.requests[0].last_user_message();
    assert!(prompt.contains("def f()"), "{prompt}");
    assert!(prompt.contains("sub/a.txt"), "{prompt}");
    assert!(!prompt.contains("ngd/"), "{prompt}");
}

/// A `--template` that cannot be read is a template error naming the file, like one that
/// does not parse.
#[test]
fn an_unreadable_template_is_a_template_error() {
    for make in ["fifo", "missing"] {
        let mut path = PathBuf::new();
        let run = Test::new()
            .spec(spec("out.py", &json!({})))
            .script(Script::code("out.py", "x = 1\n"))
            .run_with(|spec_path| {
                path = spec_path.with_file_name("template.md");
                if make == "fifo" {
                    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
                }
                vec![
                    spec_path.display().to_string(),
                    "--template".to_owned(),
                    path.display().to_string(),
                ]
            });
        let error = run.assert_error(2, "template");
        assert!(
            error.message.contains(&path.display().to_string()),
            "{make}: {}",
            error.message
        );
        assert!(run.requests.is_empty(), "{make}: the model was called");
    }
}
