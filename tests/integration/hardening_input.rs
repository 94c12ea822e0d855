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
