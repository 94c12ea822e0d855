//! Extraction against a corpus of realistic model replies (`fixtures/replies/`), and end to
//! end through the binary: several files from one reply, unrequested blocks, elided code.
//!
//! Each corpus case is a directory holding `reply.md` (the reply, byte for byte),
//! `case.json` (the outputs asked for and the expected outcome: `ok`, `no_code`,
//! `truncated`, `missing` or `elision`; for `ok` the exact notes, for `missing` the files),
//! for `ok`, `expected/<output path>` with each file's exact content, and, when the reply
//! edits an existing file, `before/<output path>` with the file as it was before the run.

use std::path::{Path, PathBuf};

use execute_local_task::content;
use execute_local_task::extract::{self, ExtractError};
use execute_local_task::result::{Outcome, Status};
use serde::Deserialize;
use serde_json::json;

use crate::harness::{Test, spec};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case exercises (for people reading the corpus).
    #[allow(dead_code)]
    about: String,
    outputs: Vec<String>,
    outcome: String,
    #[serde(default)]
    notes: Vec<String>,
    #[serde(default)]
    missing: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/replies")
}

/// What the library makes of one case, as far as the case can tell: the outcome, and the
/// files and notes when it is `ok`.
fn run_case(dir: &Path) -> Result<(), String> {
    let text = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|error| format!("{name}: {error}"))
    };
    let case: Case =
        serde_json::from_str(&text("case.json")?).map_err(|error| format!("case.json: {error}"))?;
    let reply = text("reply.md")?;
    let language = execute_local_task::language::for_path(&case.outputs[0]);
    let before: Vec<(String, String)> = case
        .outputs
        .iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(dir.join("before").join(path)).ok()?;
            Some((path.clone(), text))
        })
        .collect();
    let before_of = |path: &str| {
        before
            .iter()
            .find(|(known, _)| known == path)
            .map(|(_, text)| text.as_str())
    };
    let (outcome, detail) =
        match extract::extract_against(&reply, &case.outputs, language, before_of) {
            Err(ExtractError::NoCode(reason)) => ("no_code", reason),
            Err(ExtractError::Truncated(reason)) => ("truncated", reason),
            Err(ExtractError::MissingFiles(files)) => {
                if case.outcome == "missing" && files != case.missing {
                    return Err(format!("missing {files:?}, expected {:?}", case.missing));
                }
                ("missing", format!("{files:?}"))
            }
            Ok(extracted) => {
                let elided = extracted.files.iter().find_map(|(path, code)| {
                    content::find_elision(path, code)
                        .or_else(|| {
                            before_of(path).and_then(|before| {
                                content::find_removed_definition(path, before, code)
                            })
                        })
                        .map(|line| (path, line))
                });
                if let Some((path, line)) = elided {
                    ("elision", format!("`{path}`: {line}"))
                } else {
                    if case.outcome == "ok" {
                        for (path, code) in &extracted.files {
                            let expected = text(&format!("expected/{path}"))?;
                            if *code != expected {
                                return Err(format!(
                                    "`{path}` differs\n--- expected\n{expected}--- got\n{code}---"
                                ));
                            }
                        }
                        if extracted.notes != case.notes {
                            return Err(format!(
                                "notes {:?}, expected {:?}",
                                extracted.notes, case.notes
                            ));
                        }
                    }
                    ("ok", format!("notes {:?}", extracted.notes))
                }
            }
        };
    if outcome == case.outcome {
        Ok(())
    } else {
        Err(format!(
            "outcome {outcome} ({detail}), expected {}",
            case.outcome
        ))
    }
}

#[test]
fn every_reply_in_the_corpus_gives_its_expected_outcome() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read the corpus")
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 40,
        "the corpus has only {} replies",
        dirs.len()
    );
    // Every mismatch at once, not only the first.
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|dir| {
            run_case(dir).err().map(|error| {
                let name = dir.file_name().unwrap_or_default().to_string_lossy();
                format!("{name}: {error}")
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} corpus replies differ:\n\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_multi_file_reply_writes_every_file_and_reports_an_unrequested_block() {
    let run = Test::new()
        .spec(json!({
            "task_id": "T-multi",
            "description": "Add a version constant and its test.",
            "output_files": ["src/version.py", "tests/test_version.py"],
            "test_command": "grep -q VERSION src/version.py && grep -q test_version tests/test_version.py",
        }))
        .reply(
            "I wrote both files, plus a helper.\n\n\
             **src/version.py**\n```python\nVERSION = \"1.0\"\n```\n\n\
             ```python\n# tests/test_version.py\nfrom src.version import VERSION\n\n\ndef test_version():\n    assert VERSION\n```\n\n\
             ```python path=src/extra.py\nimport os\nos.remove('x')\n```\n",
        )
        .run();
    run.assert_code(0);
    assert_eq!(
        run.read("src/version.py").as_deref(),
        Some("VERSION = \"1.0\"\n")
    );
    assert_eq!(
        run.read("tests/test_version.py").as_deref(),
        Some("from src.version import VERSION\n\n\ndef test_version():\n    assert VERSION\n")
    );
    assert_eq!(
        run.read("src/extra.py"),
        None,
        "an unrequested block was written"
    );
    let result = run.result();
    assert_eq!(result.status, Status::Success);
    assert_eq!(
        result.attempts[0].notes,
        ["ignored a block for `src/extra.py`, a file the task did not ask for"]
    );
    let paths: Vec<&str> = result.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["src/version.py", "tests/test_version.py"]);
}

#[test]
fn a_missing_file_is_a_failed_attempt_naming_it() {
    let run = Test::new()
        .spec(json!({
            "task_id": "T-missing",
            "description": "Add two modules.",
            "output_files": ["src/a.py", "src/b.py"],
            "max_attempts": 1,
        }))
        .reply("```python path=src/a.py\nA = 1\n```\n")
        .run();
    run.assert_code(1);
    run.assert_unchanged();
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    assert_eq!(result.attempts[0].outcome, Outcome::NoCode);
    let error = result.attempts[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("`src/b.py`"), "{error}");
}

#[test]
fn an_elided_reply_is_refused_then_repaired() {
    let old = "def a():\n    return 1\n\n\ndef b():\n    return 2\n";
    let new = "def a():\n    return 1\n\n\ndef b():\n    return 3\n";
    let run = Test::new()
        .file("calc.py", old)
        .spec(spec(
            "calc.py",
            &json!({"test_command": "grep -q 'return 3' calc.py"}),
        ))
        .reply("```python\ndef a():\n    # ... (same as before)\n\n\ndef b():\n    return 3\n```\n")
        .reply(&format!("```python\n{new}```\n"))
        .run();
    run.assert_code(0);
    assert_eq!(run.read("calc.py").as_deref(), Some(new));
    let result = run.result();
    let outcomes: Vec<Outcome> = result.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, [Outcome::GuardRefused, Outcome::Ok]);
    let error = result.attempts[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("# ... (same as before)"), "{error}");
    // The repair prompt tells the model what was wrong.
    let repair = run.requests[1].last_user_message();
    assert!(repair.contains("# ... (same as before)"), "{repair}");
}

#[test]
fn a_reply_without_a_fence_is_used_when_it_is_only_code_and_says_so() {
    let run = Test::new()
        .spec(spec("double.py", &json!({})))
        .reply("def double(x):\n    return x * 2\n")
        .run();
    run.assert_code(0);
    assert_eq!(
        run.read("double.py").as_deref(),
        Some("def double(x):\n    return x * 2\n")
    );
    let result = run.result();
    assert_eq!(
        result.attempts[0].notes,
        ["the reply had no code fence; its whole text was taken as the code"]
    );
}

#[test]
fn a_reply_that_ends_inside_a_block_is_never_written() {
    let run = Test::new()
        .file("calc.py", "def add(a, b):\n    return a - b\n")
        .spec(spec("calc.py", &json!({"max_attempts": 1})))
        .reply("```python\ndef add(a, b):\n    return a +")
        .run();
    run.assert_code(1);
    run.assert_unchanged();
    let result = run.result();
    assert_eq!(result.attempts[0].outcome, Outcome::Truncated);
}

#[test]
fn a_file_whose_first_line_is_its_path_comment_keeps_it() {
    let old = "# tools/calc.py\n\ndef add(a, b):\n    return a - b\n";
    let new = "# tools/calc.py\n\ndef add(a, b):\n    return a + b\n";
    let run = Test::new()
        .file("tools/calc.py", old)
        .spec(spec("tools/calc.py", &json!({})))
        .reply(&format!("```python\n{new}```\n"))
        .run();
    run.assert_code(0);
    assert_eq!(run.read("tools/calc.py").as_deref(), Some(new));

    // A new file: the path comment labels the block and is not written.
    let run = Test::new()
        .spec(spec("tools/calc.py", &json!({})))
        .reply(&format!("```python\n{new}```\n"))
        .run();
    run.assert_code(0);
    assert_eq!(
        run.read("tools/calc.py").as_deref(),
        Some("def add(a, b):\n    return a + b\n")
    );
}

/// `calc.py` had `add` and `mul`; the reply keeps `add`, adds `sub`, and puts one comment
/// where `mul` was, in each of the wordings small models use.
#[test]
fn a_comment_standing_for_an_existing_definition_is_refused_in_every_wording() {
    let before = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n";
    let sub = "def sub(a, b):\n    return a - b\n";
    let outputs = ["calc.py".to_owned()];
    let mut accepted = Vec::new();
    for comment in [
        "# ... snip ...",
        "# [unchanged]",
        "# same as above",
        "# (the remaining functions are identical)",
        "# mul() is the same as in your file",
        "# code for mul remains identical to the original",
        "# (mul not shown)",
        "# mul stays",
        "# mul: see original",
        "# <mul from before>",
        "# other helpers stay as they were",
        "# ⋯ unchanged ⋯",
        "# --- unchanged ---",
        "# etc.",
        "pass  # rest of the code",
    ] {
        // Where `mul` stood, and after the new code.
        for code in [
            format!("def add(a, b):\n    return a + b\n\n\n{comment}\n\n\n{sub}"),
            format!("def add(a, b):\n    return a + b\n\n\n{sub}\n\n{comment}\n"),
        ] {
            let reply = format!("```python\n{code}```\n");
            let extracted = extract::extract_against(&reply, &outputs, "python", |_| Some(before))
                .expect("extracts");
            let (path, code) = &extracted.files[0];
            let refused = content::find_elision(path, code)
                .or_else(|| content::find_removed_definition(path, before, code));
            if refused.is_none() {
                accepted.push(code.clone());
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "{} elided replies accepted:\n\n{}",
        accepted.len(),
        accepted.join("\n----\n")
    );
    // The definition really removed, with nothing standing for it, is a deletion.
    let code = format!("def add(a, b):\n    return a + b\n\n\n{sub}");
    assert_eq!(
        content::find_removed_definition("calc.py", before, &code),
        None
    );
}

#[test]
fn a_definition_replaced_by_a_comment_is_refused_naming_it() {
    let before = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n";
    let run = Test::new()
        .file("calc.py", before)
        .spec(spec("calc.py", &json!({"max_attempts": 1})))
        .reply("```python\ndef add(a, b):\n    return a + b\n\n\n# mul stays\n\n\ndef sub(a, b):\n    return a - b\n```\n")
        .run();
    run.assert_code(1);
    run.assert_unchanged();
    let result = run.result();
    assert_eq!(result.attempts[0].outcome, Outcome::GuardRefused);
    let error = result.attempts[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("`mul` was in the file and is gone") && error.contains("`# mul stays`"),
        "{error}"
    );
}

#[test]
fn an_echoed_original_loses_to_the_update_and_is_noted() {
    let before = "def add(a, b):\n    # Adds two numbers, with a long comment that the update drops.\n    return a - b\n";
    let new = "def add(a, b):\n    return a + b\n";
    let run = Test::new()
        .file("calc.py", before)
        .spec(spec(
            "calc.py",
            &json!({"test_command": "grep -q 'a + b' calc.py", "allow_shrink": true}),
        ))
        .reply(&format!(
            "Here is the updated version:\n\n```python\n{new}```\n\nFor reference, the original was:\n\n```python\n{before}```\n"
        ))
        .run();
    run.assert_code(0);
    assert_eq!(run.read("calc.py").as_deref(), Some(new));
    let result = run.result();
    assert_eq!(
        result.attempts[0].notes,
        [
            "2 blocks could be `calc.py`; used block 1, ignored block 2 (introduced as the file as it was)"
        ]
    );
}

#[test]
fn a_block_cut_by_a_fence_inside_a_string_is_never_written() {
    let run = Test::new()
        .spec(spec("mywc.py", &json!({"max_attempts": 1})))
        .reply("```python\nHELP = \"\"\"\nUsage:\n```\nmywc [FILE]\n```\n\"\"\"\n\n\ndef count(text):\n    return len(text.split())\n```\n")
        .run();
    run.assert_code(1);
    assert_eq!(run.read("mywc.py"), None);
    let result = run.result();
    assert_eq!(result.attempts[0].outcome, Outcome::Truncated);
    let error = result.attempts[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("`mywc.py` ends inside a string") && error.contains("longer fence"),
        "{error}"
    );
}
