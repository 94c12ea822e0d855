//! Snapshots of what the model sees (each template, a repair) and of a normalised result.

use serde_json::json;

use crate::harness::{Script, Test};

fn prompt_of(kind: &str) -> String {
    let run = Test::new()
        .file("src/util.py", "def double(x):\n    return x * 2\n")
        .file(
            "src/app.py",
            "from util import double\n\nprint(double(2))\n",
        )
        .spec(json!({
            "task_id": format!("snap-{kind}"),
            "description": "Make `double` accept a list and double every element.",
            "kind": kind,
            "output_file": "src/app.py",
            "context_files": ["src/util.py"],
            "constraints": ["Python 3.11, standard library only", "keep the public names"],
            "test_command": "python3 -m pytest -q",
        }))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    let request = &run.json()["requests"]["openai"]["request"];
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "===== {} =====\n{}",
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn prompt_code() {
    insta::assert_snapshot!(prompt_of("code"));
}

#[test]
fn prompt_test() {
    insta::assert_snapshot!(prompt_of("test"));
}

#[test]
fn prompt_refactor() {
    insta::assert_snapshot!(prompt_of("refactor"));
}

#[test]
fn prompt_doc() {
    insta::assert_snapshot!(prompt_of("doc"));
}

#[test]
fn prompt_for_several_new_files() {
    let run = Test::new()
        .spec(json!({"task_id": "multi", "description": "Add a tiny package.", "output_files": ["pkg/__init__.py", "pkg/core.py"]}))
        .arg("--dry-run")
        .run();
    run.assert_code(0);
    insta::assert_snapshot!(&run.dry_run_prompt());
}

fn repaired_run() -> crate::harness::Run {
    Test::new()
        .spec(json!({
            "task_id": "T-repair",
            "description": "Write greeting.txt saying hello.",
            "output_file": "greeting.txt",
            "constraints": ["lowercase only"],
            "test_command": "grep -qx hello greeting.txt || { echo \"expected 'hello', got '$(cat greeting.txt)'\"; exit 1; }",
        }))
        .script(Script::code("greeting.txt", "Hello\n"))
        .script(Script::code("greeting.txt", "hello\n"))
        .run()
}

#[test]
fn repair_prompt() {
    let run = repaired_run();
    run.assert_code(0);
    insta::assert_snapshot!(run.requests[1].last_user_message());
}

#[test]
fn normalised_result() {
    let run = repaired_run();
    run.assert_code(0);
    insta::assert_json_snapshot!(run.json(), {
        ".run_id" => "[run_id]",
        ".duration_ms" => "[ms]",
        ".test.duration_ms" => "[ms]",
        ".attempts[].model_ms" => "[ms]",
        ".git.root" => "[root]",
        ".git.head" => "[sha]",
        ".git.branch" => "[branch]",
        ".model.endpoint" => "[endpoint]",
        // The result's own size counts in the overhead: it varies with the paths.
        ".savings.overhead" => "[tokens]",
        ".savings.net" => "[tokens]",
    });
}

/// What a supervisor and a person see for a bad spec, all three streams at once.
#[test]
fn a_misspelled_field_exit_stderr_and_stdout() {
    let run = Test::new()
        .spec_text(r#"{"task_id": "T-9", "description": "d", "output_file": "a.py", "test_comand": "pytest"}"#)
        .run();
    let shown = format!(
        "exit: {}\n--- stderr ---\n{}--- stdout ---\n{}",
        run.code, run.stderr, run.stdout
    );
    insta::with_settings!({filters => vec![
        (r"/\S*/spec\.json", "[DIR]/spec.json"),
        (r#""run_id": "[^"]+""#, r#""run_id": "[run_id]""#),
        (r#""duration_ms": \d+"#, r#""duration_ms": "[ms]""#),
    ]}, {
        insta::assert_snapshot!(shown);
    });
}
