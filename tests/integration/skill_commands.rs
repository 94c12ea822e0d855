//! Every `execute-local-task …` command line the plugin's skill (`skills/delegate-local-task/`,
//! its references included) and slash commands (`commands/*.md`) tell the supervisor to
//! run, taken out of their code blocks and code spans, with their placeholders replaced
//! by real specs, run ids and batch ids from scripted runs, and run through the real
//! binary: none may be a usage error. (The MCP tools they name are checked against the
//! server's list in `mcp.rs`.)

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{MODEL, ModelServer, Run, Script, Test};

/// The repository this test suite belongs to (the plugin's files are at its root).
const SOURCE: &str = env!("CARGO_MANIFEST_DIR");

/// The skill's and the slash commands' files: their path and text.
pub fn doc_texts() -> Vec<(PathBuf, String)> {
    let mut paths = vec![PathBuf::from("skills/delegate-local-task/SKILL.md")];
    for dir in ["skills/delegate-local-task/references", "commands"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(Path::new(SOURCE).join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "md"))
            .map(|path| path.strip_prefix(SOURCE).unwrap().to_path_buf())
            .collect();
        found.sort();
        paths.extend(found);
    }
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(Path::new(SOURCE).join(&path)).unwrap();
            (path, text)
        })
        .collect()
}

/// The verbs a code span may name without the program's name, as in "`apply RUN_ID` or
/// `merge RUN_ID`".
const BARE_VERBS: &[&str] = &["apply", "merge", "discard", "rollback", "review"];

/// The command lines in `text`: the lines of fenced code blocks and the code spans (which
/// may wrap across lines) that start with `execute-local-task`, comments cut off; the
/// words after the program's name.
pub fn command_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut prose = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            prose.push('\n');
            continue;
        }
        if fenced {
            let line = line.trim().trim_start_matches("$ ");
            if let Some(rest) = line.strip_prefix("execute-local-task ") {
                lines.push(
                    rest.split(" #")
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                );
            }
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    for (index, span) in prose.split('`').enumerate() {
        if index % 2 == 0 {
            continue;
        }
        let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(rest) = span.strip_prefix("execute-local-task ") {
            lines.push(rest.to_owned());
        } else if BARE_VERBS
            .iter()
            .any(|verb| span.starts_with(&format!("{verb} ")))
        {
            lines.push(span);
        }
    }
    lines
}

/// One command line as the concrete commands it stands for: `a|b` (or `a\|b` in a
/// table) is each alternative, `[--json]` with and without the option.
fn expand(line: &str) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = vec![Vec::new()];
    for word in line.replace("\\|", "|").split_whitespace() {
        let choices: Vec<Option<String>> =
            match word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
                Some(optional) => vec![None, Some(optional.to_owned())],
                None => word.split('|').map(|w| Some(w.to_owned())).collect(),
            };
        commands = commands
            .into_iter()
            .flat_map(|command| {
                choices.iter().map(move |choice| {
                    let mut command = command.clone();
                    command.extend(choice.clone());
                    command
                })
            })
            .collect();
    }
    commands
}

/// The ids the commands' placeholders stand for.
struct Ids {
    in_place: String,
    branch: String,
    batch: String,
}

/// A placeholder's value; a word that is none is itself.
fn fill(word: &str, verb: Option<&str>, ids: &Ids) -> String {
    let run = match verb {
        // A branch run's id for the verbs that take one.
        Some("apply" | "merge" | "discard") => &ids.branch,
        _ => &ids.in_place,
    };
    match word {
        "<run_id>" | "RUN_ID" => run.clone(),
        "<batch_id>" | "BATCH_ID" => ids.batch.clone(),
        "SPEC" | "SPEC.json" => "task-specs/T-042.json".to_owned(),
        "DIR" | "DIR_OR_SPECS" => "task-specs/".to_owned(),
        "SHELL" => "bash".to_owned(),
        "<command>" => "check".to_owned(),
        "$ARGUMENTS" => String::new(),
        other => other.to_owned(),
    }
}

/// A word that is still a placeholder after [`fill`]: the test does not know it.
fn is_placeholder(word: &str) -> bool {
    word.starts_with('<')
        || word.starts_with('$')
        || (word.len() > 1 && word.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

/// A spec writing `output` with a test that passes.
fn spec_text(task_id: &str, output: &str) -> String {
    json!({
        "task_id": task_id,
        "description": format!("Write {output}."),
        "output_file": output,
        "test_command": "true",
    })
    .to_string()
}

fn stdout_json(stdout: &str) -> Option<Value> {
    serde_json::from_str(stdout).ok().or_else(|| {
        stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
    })
}

/// Runs `args` in the repository of `run` against `server`.
fn again(run: &Run, server: &ModelServer, args: &[&str]) -> (i32, String, String) {
    run.again_with(
        args,
        &[
            ("LOCAL_TASK_ENDPOINT", server.url.as_str()),
            ("LOCAL_TASK_MODEL", MODEL),
            ("LOCAL_TASK_DISCOVERY_PORTS", "1"),
        ],
    )
}

/// The id a run or batch printed.
fn id_in(stdout: &str, field: &str) -> String {
    let printed = stdout_json(stdout).unwrap_or_else(|| panic!("not JSON: {stdout}"));
    printed[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {stdout}"))
        .to_owned()
}

#[test]
fn every_command_line_in_the_skill_and_slash_commands_runs_without_a_usage_error() {
    let setup = spec_text("S-1", "s1.txt");
    let run = Test::new()
        .file("task-specs/T-042.json", spec_text("T-042", "t042.txt"))
        .file("task-specs/T-043.json", spec_text("T-043", "t043.txt"))
        .file(
            "task-specs/example.json",
            spec_text("example", "example.txt"),
        )
        .file("setup/S-2.json", spec_text("S-2", "s2.txt"))
        .file("setup-batch/S-3.json", spec_text("S-3", "s3.txt"))
        .file("setup-batch/S-4.json", spec_text("S-4", "s4.txt"))
        .spec_text(&setup)
        .reply("```\nS-1\n```\n")
        .run();
    run.assert_code(0);
    let server = ModelServer::start(
        (0..100)
            .map(|_| Script::reply("```\ndone\n```\n"))
            .collect(),
        vec![MODEL.to_owned()],
    );
    let (code, branch, stderr) = again(&run, &server, &["setup/S-2.json", "--branch"]);
    assert_eq!(code, 0, "{branch}\n{stderr}");
    let (code, batch, stderr) = again(&run, &server, &["setup-batch", "--branch"]);
    assert_eq!(code, 0, "{batch}\n{stderr}");
    let ids = Ids {
        in_place: run.result().run_id,
        branch: id_in(&branch, "run_id"),
        batch: id_in(&batch, "batch_id"),
    };

    let mut ran = Vec::new();
    for (path, text) in doc_texts() {
        for line in command_lines(&text) {
            for command in expand(&line) {
                let verb = command.first().map(String::as_str);
                let args: Vec<String> = command
                    .iter()
                    .map(|word| fill(word, verb, &ids))
                    .filter(|word| !word.is_empty())
                    .collect();
                if let Some(unknown) = args.iter().find(|word| is_placeholder(word)) {
                    panic!(
                        "{}: `execute-local-task {line}`: the test knows no value for `{unknown}`",
                        path.display()
                    );
                }
                let words: Vec<&str> = args.iter().map(String::as_str).collect();
                let (code, stdout, stderr) = again(&run, &server, &words);
                // Clap's errors, and the command line's own after it, end so; a refusal
                // the command makes of what it was given (a run already discarded) does not.
                let usage = code == 2 && stderr.contains("For more information, try");
                assert!(
                    !usage,
                    "{}: `execute-local-task {}` is a usage error:\n{stdout}\n{stderr}",
                    path.display(),
                    words.join(" ")
                );
                ran.push(words.join(" "));
            }
        }
    }
    // The ones the way of working rests on were found and run.
    for needed in [
        "check --validate-only task-specs/T-042.json",
        "task-specs/T-042.json --dry-run",
        "task-specs/T-042.json --branch",
        "task-specs/ --branch --jobs 2",
        &format!("apply {}", ids.batch),
        &format!("merge {}", ids.branch),
        &format!("rollback {}", ids.in_place),
        &format!("review {} good", ids.in_place),
        "runs --json",
        "log",
        "stats",
        "models",
    ] {
        assert!(
            ran.iter().any(|line| line == needed),
            "`{needed}` not among {ran:#?}"
        );
    }
}

#[test]
fn command_lines_are_found_in_blocks_and_wrapped_spans_and_expanded() {
    let text = "Run `execute-local-task review <run_id>\n  good|acceptable|poor` or `merge RUN_ID`.\n\n```sh\nexecute-local-task models   # servers\n```\n| `execute-local-task runs [--json]` |\n";
    let lines = command_lines(text);
    assert_eq!(
        lines,
        [
            "models",
            "review <run_id> good|acceptable|poor",
            "merge RUN_ID",
            "runs [--json]"
        ]
    );
    assert_eq!(expand(&lines[1]).len(), 3);
    assert_eq!(
        expand("runs [--json]"),
        [
            vec!["runs".to_owned()],
            vec!["runs".to_owned(), "--json".to_owned()]
        ]
    );
    assert_eq!(expand("apply\\|merge X").len(), 2);
}
