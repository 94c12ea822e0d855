//! Hardening of what a run says about the tree: outputs the test command rewrote, other
//! paths it changed, failures of the environment (not of the input), and control bytes
//! from specs and servers kept off the terminal.

use serde_json::json;

use execute_local_task::result::{FileAction, PathChangeKind, Status};

use crate::harness::{Script, Test, spec};

/// A formatter in the test command (`black x.py && pytest`) rewrites the output after the
/// run wrote it: the result describes the bytes in the tree, and `rollback` of the run
/// restores the original instead of refusing its own result.
#[test]
fn an_output_the_passing_test_rewrote_is_reported_as_the_tree_holds_it() {
    let run = Test::new()
        .file("out.py", "x=0\n")
        .spec(spec(
            "out.py",
            &json!({"test_command": "sed -i 's/=/ = /' out.py && grep -q 'x = 1' out.py"}),
        ))
        .script(Script::code("out.py", "x=1\n"))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success);
    let tree = run.read("out.py").expect("the output");
    assert_eq!(tree, "x = 1\n");
    let file = &result.files[0];
    assert_eq!(file.path, "out.py");
    assert_eq!(file.action, FileAction::Modified);
    assert_eq!(file.bytes, tree.len() as u64);
    assert_eq!((file.lines_added, file.lines_removed), (1, 1));
    assert!(file.diff.contains("\n+x = 1\n"), "{}", file.diff);
    assert!(file.diff.contains("\n-x=0\n"), "{}", file.diff);
    assert!(
        result.summary.contains("out.py (+1 -1)"),
        "{}",
        result.summary
    );

    let (code, stdout, stderr) = run.again(&["rollback", &result.run_id]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(run.read("out.py").as_deref(), Some("x=0\n"));
}

/// A created output the test rewrote is the run's too: `rollback` removes it.
#[test]
fn a_created_output_the_passing_test_rewrote_is_removed_by_rollback() {
    let run = Test::new()
        .spec(spec(
            "new.txt",
            &json!({"test_command": "printf 'formatted\\n' > new.txt"}),
        ))
        .script(Script::code("new.txt", "raw\n"))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.files[0].action, FileAction::Created);
    assert_eq!(result.files[0].bytes, "formatted\n".len() as u64);
    assert!(
        result.files[0].diff.contains("+formatted"),
        "{}",
        result.files[0].diff
    );
    let (code, stdout, stderr) = run.again(&["rollback", "--last"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(run.read("new.txt"), None);
}

/// A failing test's rewrite stays the user's: reported as a conflict, never destroyed.
#[test]
fn an_output_the_failing_test_rewrote_is_kept_and_reported_as_a_conflict() {
    let run = Test::new()
        .file("out.py", "x=0\n")
        .spec(spec(
            "out.py",
            &json!({"test_command": "sed -i 's/=/ = /' out.py; exit 1", "max_attempts": 1}),
        ))
        .script(Script::code("out.py", "x=1\n"))
        .run();
    run.assert_error(2, "conflict");
    assert_eq!(run.read("out.py").as_deref(), Some("x = 1\n"));
}

/// Paths other than the outputs that the test created, modified or deleted are listed
/// with the test; ignored files are not scanned, and a file already dirty before the run
/// counts only when the test changed it further.
#[test]
fn other_paths_the_test_changed_are_reported() {
    let run = Test::new()
        .file("tracked.txt", "one\n")
        .file("gone.txt", "bye\n")
        .file(".gitignore", "build/\n")
        .file("still.txt", "same\n")
        .uncommitted("dirty.txt", "mine\n")
        .uncommitted("dirty_too.txt", "mine\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command":
                "echo junk > junk.txt && echo two >> tracked.txt && rm gone.txt \
                 && mkdir -p build sub && echo o > build/o && echo n > sub/new.txt \
                 && echo more >> dirty_too.txt"}),
        ))
        .script(Script::code("out.txt", "out\n"))
        .run();
    run.assert_code(0);
    let test = run.result().test.expect("a test ran");
    let changed: Vec<(&str, PathChangeKind)> = test
        .changed_paths
        .iter()
        .map(|c| (c.path.as_str(), c.change))
        .collect();
    let expected = [
        ("dirty_too.txt", PathChangeKind::Modified),
        ("gone.txt", PathChangeKind::Deleted),
        ("junk.txt", PathChangeKind::Created),
        ("sub/new.txt", PathChangeKind::Created),
        ("tracked.txt", PathChangeKind::Modified),
    ];
    assert_eq!(changed, expected);
    let printed = run.json();
    assert!(
        printed["test"]["changed_paths"].is_array(),
        "{}",
        run.stdout
    );
}

/// A test that changes nothing but the outputs lists no other paths.
#[test]
fn a_test_that_changes_nothing_else_lists_no_paths() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({"test_command": "cat out.txt"})))
        .script(Script::code("out.txt", "out\n"))
        .run();
    run.assert_code(0);
    assert!(run.result().test.expect("a test").changed_paths.is_empty());
}

/// The tool's state directory cannot be made (a regular file stands where it must go,
/// which fails the same way as root): an `environment` error whose hint says what to
/// check, not the spec.
#[test]
fn a_state_directory_that_cannot_be_made_is_an_environment_error() {
    let run = Test::new()
        .uncommitted(".git/execute-local-task", "not a directory\n")
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "out\n"))
        .run();
    let error = run.assert_error(2, "environment");
    assert!(
        error.message.contains("execute-local-task"),
        "{}",
        error.message
    );
    let hint = run
        .stderr
        .lines()
        .find(|line| line.starts_with("hint: "))
        .unwrap_or_else(|| panic!("no hint:\n{}", run.stderr));
    assert!(hint.contains("permissions"), "{hint}");
    assert!(hint.contains("free space"), "{hint}");
    assert!(!hint.contains("spec"), "{hint}");
    assert_eq!(run.read("out.txt"), None);
}

/// An escape sequence in a spec's description and test command reaches the result JSON
/// exactly, and stderr only escaped.
#[test]
fn control_bytes_from_a_spec_never_reach_stderr_raw() {
    let command = "echo \u{1b}[31mred\u{7}";
    let run = Test::new()
        .spec(spec(
            "out.txt",
            &json!({
                "description": "Write \u{1b}[31mred\u{1b}[0m text\r\u{9b}2J.",
                "test_command": command,
            }),
        ))
        .script(Script::code("out.txt", "out\n"))
        .run();
    run.assert_code(0);
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
    assert!(!run.stderr.contains('\u{7}'), "{:?}", run.stderr);
    assert!(run.stderr.contains(r"\u{1b}[31mred"), "{:?}", run.stderr);
    let test = run.result().test.expect("a test");
    assert_eq!(test.command, command, "the JSON holds the command exactly");
    assert!(run.stdout.contains(r"\u001b[31mred"), "{}", run.stdout);
}

/// A server's error body with an escape sequence: stderr shows it escaped.
#[test]
fn control_bytes_from_a_server_body_never_reach_stderr_raw() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::status(
            400,
            "{\"error\":{\"message\":\"bad \u{1b}]0;pwned\u{7} \u{1b}[2J model\"}}",
        ))
        .args(&["--retries", "0"])
        .run();
    run.assert_code(3);
    assert!(run.stderr.contains("error: "), "{}", run.stderr);
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
    assert!(!run.stderr.contains('\u{7}'), "{:?}", run.stderr);
}

/// The `models` table is for a human: a model name a server sent with an escape sequence
/// is shown escaped, while `--json` keeps it exactly.
#[test]
fn control_bytes_in_a_servers_model_names_never_reach_the_table_raw() {
    let name = "evil\u{1b}]0;title\u{7}model";
    let run = Test::new()
        .models(&[name, "plain"])
        .run_with(|_| vec!["models".to_owned()]);
    run.assert_code(0);
    assert!(!run.stdout.contains('\u{1b}'), "{:?}", run.stdout);
    assert!(!run.stdout.contains('\u{7}'), "{:?}", run.stdout);
    assert!(
        run.stdout.contains(r"evil\u{1b}]0;title\u{7}model"),
        "{}",
        run.stdout
    );
    let run = Test::new()
        .models(&[name, "plain"])
        .run_with(|_| vec!["models".to_owned(), "--json".to_owned()]);
    run.assert_code(0);
    assert_eq!(run.json()[0]["models"][0], name, "{}", run.stdout);
}
