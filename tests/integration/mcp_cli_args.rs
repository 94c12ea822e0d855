//! The MCP tools that take the command line's own argument types (`rollback`, `apply`,
//! `merge`, `discard`, `models`, `check`, `stats`, `review`): a bad value is refused with the
//! message the command line gives for it, and `check` takes several paths as it does.

use serde_json::{Value, json};

use crate::harness::{Test, spec};
use crate::mcp::session;

/// The usage message of an error document (the CLI's stdout, or a tool error's content).
fn usage_message(document: &Value) -> String {
    assert_eq!(document["error"]["kind"], "usage", "{document}");
    document["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {document}"))
        .to_owned()
}

#[test]
fn mcp_tools_refuse_bad_values_as_the_command_line_does() {
    // Each call, and the command line that says the same thing (flags first: a tool puts
    // positional values after `--`, so a value starting with `-` stays a value).
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "rollback",
            json!({"run_id": "r1", "last": true}),
            vec!["rollback", "--last", "r1"],
        ),
        (
            "rollback",
            json!({"last": true, "lock_timeout": -1}),
            vec!["rollback", "--last", "--lock-timeout", "-1"],
        ),
        (
            "apply",
            json!({"last": true, "lock_timeout": "soon"}),
            vec!["apply", "--last", "--lock-timeout", "soon"],
        ),
        ("merge", json!({}), vec!["merge"]),
        (
            "discard",
            json!({"run_id": "r1", "last": true}),
            vec!["discard", "--last", "r1"],
        ),
        (
            "models",
            json!({"provider": "carrier-pigeon"}),
            vec!["models", "--provider", "carrier-pigeon"],
        ),
        (
            "check",
            json!({"validate_only": true}),
            vec!["check", "--validate-only"],
        ),
        (
            "stats",
            json!({"all_repos": true, "repo": "."}),
            vec!["stats", "--all-repos", "--repo", "."],
        ),
        (
            "review",
            json!({"last": true, "verdict": "good", "failure_mode": "typo"}),
            vec!["review", "--last", "--failure-mode", "typo", "good"],
        ),
        (
            "review",
            json!({"last": true, "verdict": "great"}),
            vec!["review", "--last", "great"],
        ),
        (
            "review",
            json!({"run_id": "r1", "last": true, "verdict": "good"}),
            vec!["review", "--last", "r1", "good"],
        ),
        ("review", json!({"run_id": "r1"}), vec!["review", "r1"]),
    ];
    let calls: Vec<(&str, Value)> = cases
        .iter()
        .map(|(tool, arguments, _)| (*tool, arguments.clone()))
        .collect();
    let (run, answers) = session(Test::new(), move |client| {
        calls
            .into_iter()
            .map(|(tool, arguments)| client.call_and_wait(tool, arguments))
            .collect::<Vec<_>>()
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    for ((tool, arguments, words), answer) in cases.iter().zip(&answers) {
        let (code, stdout, _) = run.again(words);
        assert_eq!(code, 2, "{words:?}: {stdout}");
        let cli = usage_message(&serde_json::from_str(&stdout).unwrap());
        assert!(
            answer.is_error,
            "{tool} {arguments}: {:?}",
            answer.structured_content
        );
        assert_eq!(
            usage_message(&answer.structured_content),
            format!("{tool}: {cli}"),
            "{tool} {arguments}"
        );
    }
}

#[test]
fn mcp_tools_take_only_what_their_schema_names() {
    let (run, answers) = session(Test::new(), |client| {
        vec![
            client.call_and_wait("stats", json!({"json": true})),
            client.call_and_wait("stats", json!({"html": "stats.html"})),
            client.call_and_wait("models", json!({"json": true})),
            client.call_and_wait("apply", json!({"run": "r1"})),
            client.call_and_wait("review", json!({"args": ["r1", "good"]})),
        ]
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (answer, name) in answers.iter().zip(["json", "html", "json", "run", "args"]) {
        assert!(answer.is_error, "{:?}", answer.structured_content);
        let message = usage_message(&answer.structured_content);
        assert!(
            message.ends_with(&format!("unknown argument `{name}`")),
            "{message}"
        );
    }
    assert!(
        !run.repo.join("stats.html").exists(),
        "a tool writes no page"
    );
}

#[test]
fn mcp_check_takes_several_paths_as_the_command_line_does() {
    let test = Test::new()
        .file(
            "specs/a.json",
            spec("a.txt", &json!({"task_id": "a"})).to_string(),
        )
        .file(
            "specs/b.json",
            spec("b.txt", &json!({"task_id": "b"})).to_string(),
        );
    let (run, (both, one)) = session(test, |client| {
        let both = client.call_and_wait(
            "check",
            json!({"paths": ["specs/a.json", "specs/b.json"], "validate_only": true}),
        );
        // The name the tool took before, one path.
        let one = client.call_and_wait(
            "check",
            json!({"path": "specs/a.json", "validate_only": true}),
        );
        (both, one)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!both.is_error, "{:?}", both.structured_content);
    let report: execute_local_task::check::CheckReport =
        serde_json::from_value(both.structured_content.clone()).unwrap();
    assert_eq!(report.status, "ok");
    assert_eq!(report.specs.len(), 2);
    let (code, stdout, _) =
        run.again(&["check", "--validate-only", "specs/a.json", "specs/b.json"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        both.structured_content,
        serde_json::from_str::<Value>(&stdout).unwrap(),
        "the JSON `check` prints"
    );
    assert!(!one.is_error, "{:?}", one.structured_content);
    let one: execute_local_task::check::CheckReport =
        serde_json::from_value(one.structured_content).unwrap();
    assert_eq!(one.specs.len(), 1);
}
