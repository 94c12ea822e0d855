//! The test runner and the repair loop, as a supervisor relies on them: a test cannot hang
//! the tool or outlive it, its output is bounded, git variables do not reach it, every
//! attempt is tested alone, and a run that does not succeed says what is in the tree.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use execute_local_task::result::{FileAction, Outcome, Status};
use serde_json::json;

use crate::harness::{BINARY_DEADLINE, Chat, Script, Test, spec};

/// A process is dead when it is gone or a zombie (`Z`): in a container the init process
/// may never reap what it inherits.
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

fn pids(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_test_at_its_limit_is_killed_with_everything_it_started() {
    // Every process holds the output pipes open. Some obey SIGTERM, some ignore it, and
    // some left the session and so the process group.
    let script = r#"
echo $$ >> "$1"
sleep 1000 & echo $! >> "$1"
setsid sleep 1000 & echo $! >> "$1"
setsid sh -c 'trap "" TERM; exec sleep 1000' & echo $! >> "$1"
trap '' TERM
sleep 1000 & echo $! >> "$1"
echo started
sleep 1000
"#;
    // Either way the processes that ignore SIGTERM keep the test going for the grace (2 s)
    // until SIGKILL; the second time the test's own shell is one of them. A kill that never
    // comes leaves them holding the pipes past the harness's deadline.
    for prefix in ["", "trap '' TERM; "] {
        let scratch = tempfile::tempdir().unwrap();
        let pid_file = scratch.path().join("pids");
        let run = Test::new()
            .file("slow.sh", script)
            .spec(spec(
                "out.txt",
                &json!({
                    "test_command": format!("{prefix}sh slow.sh {}; exit 0", pid_file.display()),
                    "timeout_secs": 1,
                    "max_attempts": 1,
                }),
            ))
            .script(Script::code("out.txt", "x\n"))
            .run();
        run.assert_code(1);
        let result = run.result();
        assert_eq!(result.status, Status::Escalate);
        let test = result.test.expect("a test report");
        assert!(test.timed_out && !test.passed, "{test:?}");
        assert!(test.duration_ms >= 3000, "{prefix}: {test:?}");
        assert!(test.output_tail.contains("started"), "{test:?}");
        assert!(
            result.attempts[0]
                .error
                .as_deref()
                .unwrap()
                .contains("did not finish within its limit of 1 s"),
            "{:?}",
            result.attempts[0]
        );
        let pids = pids(&pid_file);
        assert_eq!(pids.len(), 5, "{pids:?}");
        let survivors: Vec<&String> = pids.iter().filter(|pid| alive(pid)).collect();
        assert!(
            survivors.is_empty(),
            "{prefix}: still running: {survivors:?}"
        );
        run.assert_unchanged();
    }
}

#[test]
fn a_test_at_its_limit_gets_sigterm_and_a_grace_to_clean_up() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("log");
    let run = Test::new()
        .spec(spec(
            "out.txt",
            &json!({
                "test_command": format!(
                    "(trap 'echo cleaned up > {}; exit 0' TERM; while :; do sleep 0.1; done) & wait",
                    log.display()
                ),
                "timeout_secs": 1,
                "max_attempts": 1,
            }),
        ))
        .script(Script::code("out.txt", "x\n"))
        .run();
    run.assert_code(1);
    assert!(run.result().test.expect("a test report").timed_out);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "cleaned up\n"
    );
}

#[test]
fn what_a_passing_test_leaves_running_is_killed_too() {
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("pids");
    // What it leaves holds the output pipes: a tool that waited for them to close would run
    // into the harness's deadline.
    let run = Test::new()
        .spec(spec(
            "out.txt",
            &json!({"test_command": format!(
                "sleep 1000 & echo $! >> {0}; setsid sleep 1000 & echo $! >> {0}; echo started",
                pid_file.display()
            )}),
        ))
        .script(Script::code("out.txt", "x\n"))
        .run();
    run.assert_code(0);
    let test = run.result().test.expect("a test report");
    assert!(test.passed && !test.timed_out, "{test:?}");
    let pids = pids(&pid_file);
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(
        pids.iter().all(|pid| !alive(pid)),
        "still running: {pids:?}"
    );
}

#[test]
fn a_process_the_tool_cannot_find_does_not_hold_it() {
    // Leaving the session and clearing the environment hides a process from the tool;
    // it holds the output pipes, and the tool still returns about a second later (a tool
    // that waited for them to close would run into the harness's deadline).
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("pids");
    let run = Test::new()
        .spec(spec(
            "out.txt",
            // The shell waits until the process is hidden: it writes its pid only then.
            &json!({"test_command": format!(
                "env -i setsid sh -c 'echo $$ > {0}; exec sleep 1000' & \
                 until [ -s {0} ]; do sleep 0.01; done; echo started",
                pid_file.display()
            )}),
        ))
        .script(Script::code("out.txt", "x\n"))
        .run();
    for pid in pids(&pid_file) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
    }
    run.assert_code(0);
    let test = run.result().test.expect("a test report");
    assert!(
        test.passed && test.output_tail.contains("started"),
        "{test:?}"
    );
    assert!(
        test.duration_ms >= 1000,
        "the pipes were not held: {test:?}"
    );
}

#[test]
fn megabytes_of_output_are_bounded_and_keep_their_end() {
    let test_command = "i=0; while [ $i -lt 3 ]; do seq 1 200000; i=$((i+1)); done; \
         yes 'warning: something noisy on stderr' | head -n 50000 >&2; \
         printf '\\033[31mFAILED\\033[0m test_total: expected 3, got 4\\n'; exit 1";
    let run = Test::new()
        .spec(spec("out.txt", &json!({"test_command": test_command})))
        .script(Script::code("out.txt", "first\n"))
        .script(Script::code("out.txt", "second\n"))
        .run();
    run.assert_code(1);
    let result = run.result();
    let test = result.test.expect("a test report");
    assert!(
        test.output_tail.len() < 20 * 1024,
        "{} bytes",
        test.output_tail.len()
    );
    assert!(
        test.output_tail.starts_with("1\n2\n3\n"),
        "{}",
        &test.output_tail[..50]
    );
    assert!(
        test.output_tail
            .ends_with("FAILED test_total: expected 3, got 4\n"),
        "{}",
        &test.output_tail[test.output_tail.len() - 200..]
    );
    assert!(test.output_tail.contains("bytes of output omitted"));
    assert!(!test.output_tail.contains('\x1b'));
    // The repair prompt gets a smaller part: the failure line, not pages of output.
    let repair = run.requests[1].last_user_message();
    assert!(repair.len() < 6 * 1024, "{} bytes:\n{repair}", repair.len());
    assert!(
        repair.contains("FAILED test_total: expected 3, got 4"),
        "{repair}"
    );
}

#[test]
fn a_test_command_that_cannot_start_is_failed_without_a_repair() {
    // A missing program is found before the model is called; a script that cannot run
    // only when the runner tries it.
    for (command, expected, requests) in [
        ("no-such-test-runner --quick", "not found", 0),
        ("./check.sh", "Permission denied", 1),
    ] {
        let run = Test::new()
            .file("check.sh", "#!/bin/sh\nexit 0\n")
            .spec(spec("out.txt", &json!({"test_command": command})))
            .script(Script::code("out.txt", "x\n"))
            .script(Script::code("out.txt", "y\n"))
            .run();
        run.assert_code(1);
        let result = run.result();
        assert_eq!(result.status, Status::Failed, "{command}");
        assert!(
            result.summary.contains("could not start")
                && result.summary.contains(expected)
                && result.summary.contains(command),
            "{command}: {}",
            result.summary
        );
        assert!(
            result.summary.contains("fix test_command"),
            "{}",
            result.summary
        );
        assert_eq!(
            run.requests.len(),
            requests,
            "{command}: a test that cannot run was repaired"
        );
        run.assert_unchanged();
    }
}

#[test]
fn keep_failed_keeps_code_whose_test_could_not_start() {
    let run = Test::new()
        .file("check.sh", "#!/bin/sh\nexit 0\n")
        .spec(spec("out.txt", &json!({"test_command": "./check.sh"})))
        .arg("--keep-failed")
        .script(Script::code("out.txt", "x\n"))
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Failed);
    assert_eq!(run.read("out.txt").as_deref(), Some("x\n"));
    assert_eq!(result.files.len(), 1);
    assert!(
        result
            .summary
            .starts_with("failed: the test command `./check.sh` could not start")
            && result
                .summary
                .contains("the working tree holds attempt 1's failed code"),
        "{}",
        result.summary
    );
}

#[test]
fn exit_127_from_inside_the_test_is_a_failure_to_repair() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({"test_command": "exit 127"})))
        .script(Script::code("out.txt", "x\n"))
        .script(Script::code("out.txt", "y\n"))
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    assert_eq!(run.requests.len(), 2);
}

#[test]
fn git_variables_do_not_reach_the_test() {
    let run = Test::new()
        .spec(spec(
            "out.txt",
            &json!({"test_command": "env; echo top=$(git rev-parse --show-toplevel)"}),
        ))
        .env("GIT_DIR", "/nonexistent/elsewhere.git")
        .env("GIT_WORK_TREE", "/nonexistent/tree")
        .env("GIT_INDEX_FILE", "/nonexistent/index")
        .env("GIT_OBJECT_DIRECTORY", "/nonexistent/objects")
        .env("GIT_COMMON_DIR", "/nonexistent/common")
        .env("GIT_CONFIG_PARAMETERS", "'core.bare'='true'")
        .script(Script::code("out.txt", "x\n"))
        .run();
    run.assert_code(0);
    let output = run.result().test.expect("a test report").output_tail;
    for name in [
        "GIT_DIR=",
        "GIT_WORK_TREE=",
        "GIT_INDEX_FILE=",
        "GIT_OBJECT_DIRECTORY=",
        "GIT_COMMON_DIR=",
        "GIT_CONFIG_PARAMETERS=",
    ] {
        assert!(!output.contains(name), "{name} reached the test:\n{output}");
    }
    // Only the redirecting ones go: the rest of the environment is inherited.
    assert!(output.contains("GIT_AUTHOR_NAME=Test"), "{output}");
    let root = std::fs::canonicalize(&run.repo).unwrap();
    assert!(
        output.contains(&format!("top={}", root.display())),
        "{output}"
    );
}

#[test]
fn a_repair_shows_the_tested_code_once_the_failure_lines_and_the_constraints() {
    let test_command = "grep -qx hello greeting.txt && exit 0; \
         for i in $(seq 1 400); do echo \"test_case_$i ... ok\"; done; \
         echo 'test_greeting ... FAILED'; echo \"AssertionError: expected 'hello', got '$(cat greeting.txt)'\"; \
         for i in $(seq 401 800); do echo \"test_case_$i ... ok\"; done; \
         echo 'FAILED (failures=1)'; exit 1";
    let run = Test::new()
        .spec(json!({
            "task_id": "T-repair",
            "description": "Write greeting.txt saying hello.",
            "output_file": "greeting.txt",
            "constraints": ["lowercase only", "one line"],
            "test_command": test_command,
        }))
        .reply("<think>The user wants a greeting.</think>Sure, here it is:\n\n```text path=greeting.txt\nHello there\n```\nThis greets politely.")
        .script(Script::code("greeting.txt", "hello\n"))
        .run();
    run.assert_code(0);
    let repair = &run.requests[1];
    let messages = repair.messages();
    let roles: Vec<&str> = messages.iter().map(|(role, _)| role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    // The model's turn is the file exactly as written and tested: no prose, no thinking.
    assert_eq!(messages[2].1, "``` path=greeting.txt\nHello there\n```");
    let text = &messages[3].1;
    assert!(
        text.lines().next().unwrap().contains("failed (exit 1)"),
        "{text}"
    );
    assert!(text.contains("test_greeting ... FAILED"), "{text}");
    assert!(
        text.contains("AssertionError: expected 'hello', got 'Hello there'"),
        "{text}"
    );
    assert!(text.contains("FAILED (failures=1)"), "{text}");
    assert!(text.contains("- lowercase only\n- one line"), "{text}");
    assert!(
        text.matches("... ok").count() < 20,
        "pages of passing output:\n{text}"
    );
    assert!(
        !text.contains("Hello there\n"),
        "the code was sent twice:\n{text}"
    );
    let whole: usize = messages.iter().map(|(_, m)| m.len()).sum();
    assert!(whole < 8 * 1024, "{whole} bytes");
}

#[test]
fn a_reply_without_usable_code_goes_back_as_it_was_said() {
    let run = Test::new()
        .spec(spec("a.txt", &json!({"max_attempts": 3})))
        .reply("<think>hmm</think>I cannot write this file without more information.")
        .script(Script::Chat(Chat {
            text: format!("```text path=a.txt\n{}", "word ".repeat(2000)),
            finish_reason: Some("length".to_owned()),
            usage: Some((100, 50)),
            chunk: 500,
            done: true,
        }))
        .script(Script::code("a.txt", "done\n"))
        .run();
    run.assert_code(0);
    let outcomes: Vec<Outcome> = run.result().attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, [Outcome::NoCode, Outcome::Truncated, Outcome::Ok]);
    let second = run.requests[1].messages();
    assert_eq!(
        second[2].1,
        "I cannot write this file without more information."
    );
    assert!(
        second[3].1.contains("no fenced code block"),
        "{}",
        second[3].1
    );
    // A cut-off reply comes back only in part, and the previous exchange is not kept.
    let third = run.requests[2].messages();
    assert_eq!(third.len(), 4);
    assert!(third[2].1.len() < 1200, "{} bytes", third[2].1.len());
    assert!(third[2].1.ends_with("cut off …]"), "{}", third[2].1);
    assert!(third[3].1.contains("token limit"), "{}", third[3].1);
}

#[test]
fn each_test_sees_exactly_one_attempts_code() {
    let scratch = tempfile::tempdir().unwrap();
    let seen = scratch.path().join("seen");
    let run = Test::new()
        .file("b.txt", "original\n")
        .spec(json!({
            "task_id": "T-seen",
            "description": "d",
            "output_files": ["new/a.txt", "b.txt"],
            "max_attempts": 3,
            "test_command": format!(
                "{{ echo ---; ls new 2>&1; cat new/a.txt b.txt; }} >> {}; grep -q three new/a.txt",
                seen.display()
            ),
        }))
        .reply("```text path=new/a.txt\none\n```\n```text path=b.txt\nchanged by one\n```\n")
        // The second attempt leaves b.txt as it was: its test must see the original bytes.
        .reply("```text path=new/a.txt\ntwo\n```\n```text path=b.txt\noriginal\n```\n")
        .reply("```text path=new/a.txt\nthree\n```\n```text path=b.txt\noriginal\n```\n")
        .run();
    run.assert_code(0);
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "---\na.txt\none\nchanged by one\n---\na.txt\ntwo\noriginal\n---\na.txt\nthree\noriginal\n"
    );
    let result = run.result();
    let actions: Vec<(&str, FileAction)> = result
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("new/a.txt", FileAction::Created),
            ("b.txt", FileAction::Unchanged)
        ]
    );
}

#[test]
fn escalating_after_the_last_attempt_leaves_the_tree_clean_and_says_what_failed() {
    let run = Test::new()
        .file("b.txt", "original\n")
        .spec(json!({
            "task_id": "T-esc",
            "description": "d",
            "output_files": ["new/dir/a.txt", "b.txt"],
            "test_command": "echo 'assertion failed: a == b'; exit 3",
        }))
        .arg("--max-attempts")
        .arg("3")
        .reply("Let me think about it.")
        .reply("```text path=new/dir/a.txt\none\n```\n```text path=b.txt\nchanged\n```\n")
        .reply("```text path=new/dir/a.txt\ntwo\n```\n```text path=b.txt\nchanged again\n```\n")
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    let outcomes: Vec<Outcome> = result.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::NoCode, Outcome::TestFailed, Outcome::TestFailed]
    );
    assert!(result.files.is_empty());
    let summary = &result.summary;
    for needed in [
        "escalate:",
        "3 attempts (no_code, test_failed, test_failed)",
        "failed (exit 3)",
        "the working tree is unchanged",
    ] {
        assert!(summary.contains(needed), "{needed}: {summary}");
    }
    assert!(!summary.contains('\n'), "{summary}");
    run.assert_unchanged();
    assert!(!run.repo.join("new").exists());
}

#[test]
fn keep_failed_leaves_the_last_tested_code_and_says_so() {
    let run = Test::new()
        .file("b.txt", "original\n")
        .spec(json!({
            "task_id": "T-keep",
            "description": "d",
            "output_files": ["a.txt", "b.txt"],
            "test_command": "false",
        }))
        .arg("--keep-failed")
        .reply("```text path=a.txt\nkept\n```\n```text path=b.txt\nkept too\n```\n")
        .reply("I give up.")
        .run();
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    assert_eq!(run.read("a.txt").as_deref(), Some("kept\n"));
    assert_eq!(run.read("b.txt").as_deref(), Some("kept too\n"));
    let actions: Vec<(&str, FileAction)> = result
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("a.txt", FileAction::Created),
            ("b.txt", FileAction::Modified)
        ]
    );
    let summary = &result.summary;
    assert!(
        summary.contains("the working tree holds attempt 1's failed code (--keep-failed)"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("execute-local-task rollback {}", result.run_id)),
        "{summary}"
    );
    assert_eq!(result.test.expect("attempt 1's test").exit_code, Some(1));
    let (code, stdout, stderr) = run.again(&["rollback", &result.run_id]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    run.assert_unchanged();
}

#[test]
fn keep_failed_with_nothing_to_keep_says_the_tree_is_unchanged() {
    let run = Test::new()
        .spec(spec("a.txt", &json!({"max_attempts": 1})))
        .arg("--keep-failed")
        .reply("No.")
        .run();
    run.assert_code(1);
    let result = run.result();
    assert!(result.files.is_empty());
    assert!(
        result.summary.contains(
            "no attempt produced code to keep (--keep-failed); the working tree is unchanged"
        ),
        "{}",
        result.summary
    );
    run.assert_unchanged();
}

#[test]
fn max_attempts_comes_from_the_flag_then_the_spec_then_the_default() {
    for (from_spec, flag, expected) in [
        (Some(1), Some("3"), 3),
        (Some(3), None, 3),
        (Some(3), Some("1"), 1),
        (None, None, 2),
    ] {
        let mut test = Test::new();
        let extra = from_spec.map_or_else(|| json!({}), |n| json!({"max_attempts": n}));
        test = test.spec(spec("a.txt", &extra));
        if let Some(flag) = flag {
            test = test.args(&["--max-attempts", flag]);
        }
        for _ in 0..5 {
            test = test.reply("no code here");
        }
        let run = test.run();
        run.assert_code(1);
        assert_eq!(
            run.result().attempts.len(),
            expected,
            "spec {from_spec:?}, flag {flag:?}"
        );
        assert_eq!(run.requests.len(), expected);
    }
}

#[test]
fn no_test_gives_a_null_test_and_an_untested_summary() {
    let run = Test::new()
        .spec(spec("a.txt", &json!({"test_command": "false"})))
        .arg("--no-test")
        .script(Script::code("a.txt", "x\n"))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert!(result.test.is_none());
    assert!(run.json()["test"].is_null());
    assert!(result.summary.contains("UNTESTED"), "{}", result.summary);
}

/// Waits until `file` holds a line `ready`; the pids written before it. Bounded by the
/// harness's deadline for a whole run, which a loaded machine does not reach.
fn wait_until_ready(file: &Path) -> Vec<String> {
    let deadline = Instant::now() + BINARY_DEADLINE;
    loop {
        let pids = pids(file);
        if pids.last().is_some_and(|last| last == "ready") {
            return pids[..pids.len() - 1].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "the test never started: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_signal_during_the_test_stops_it_undoes_the_attempt_and_says_interrupted() {
    use nix::sys::signal::Signal;
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("pids");
    let ready = pid_file.clone();
    let started = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&started);
    // The test's shell, and a process that left its session: neither gets the tool's
    // signal from the kernel, and both outlive a tool that dies of it. A tool that let the
    // test run on would run into the harness's deadline.
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": format!(
                "echo $$ >> {0}; setsid sleep 1000 & echo $! >> {0}; echo ready >> {0}; exec sleep 1000",
                pid_file.display()
            )}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .during(move |running| {
            *seen.lock().unwrap() = wait_until_ready(&ready);
            running.signal(Signal::SIGTERM);
        })
        .run();
    let error = run.assert_error(143, "interrupted");
    assert!(error.message.contains("SIGTERM"), "{}", error.message);
    let result = run.result();
    assert!(result.files.is_empty(), "{:?}", result.files);
    assert_eq!(result.attempts.len(), 1);
    assert_eq!(result.attempts[0].outcome, Outcome::Error);
    assert_eq!(result.attempts[0].usage.prompt_tokens, 100);
    run.assert_unchanged();
    let pids = started.lock().unwrap().clone();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let survivors: Vec<&String> = pids.iter().filter(|pid| alive(pid)).collect();
    assert!(survivors.is_empty(), "still running: {survivors:?}");
}

#[test]
fn a_signal_while_the_model_thinks_ends_the_run_at_once() {
    use nix::sys::signal::Signal;
    for (signal, code) in [(Signal::SIGINT, 130), (Signal::SIGHUP, 129)] {
        let run = Test::new()
            .spec(spec("out.txt", &json!({"test_command": "true"})))
            .script(Script::Hang)
            // A run that waited for the model instead would run into the harness's deadline.
            .args(&["--first-byte-timeout", "600"])
            .during(move |running| {
                let deadline = Instant::now() + BINARY_DEADLINE;
                while running.chat_requests() == 0 {
                    assert!(Instant::now() < deadline, "the model was never called");
                    std::thread::sleep(Duration::from_millis(10));
                }
                running.signal(signal);
            })
            .run();
        let error = run.assert_error(code, "interrupted");
        assert!(error.message.contains(signal.as_str()), "{}", error.message);
        let result = run.result();
        assert_eq!(result.attempts.len(), 1);
        assert_eq!(result.attempts[0].outcome, Outcome::Error);
        run.assert_unchanged();
    }
}

#[test]
fn an_attempt_that_cannot_be_written_is_still_reported() {
    // Attempt 1 leaves `b.txt` as it was, so its test can change it behind the run's
    // back; attempt 2 then finds `b.txt` changed and must not overwrite it.
    let both =
        |a: &str, b: &str| format!("```text path=a.txt\n{a}```\n\n```text path=b.txt\n{b}```\n");
    let run = Test::new()
        .file("a.txt", "A\n")
        .file("b.txt", "B\n")
        .spec(json!({
            "task_id": "T-001",
            "description": "d",
            "output_files": ["a.txt", "b.txt"],
            "test_command": "echo changed > b.txt; exit 1",
        }))
        .reply(&both("A1\n", "B\n"))
        .reply(&both("A2\n", "B2\n"))
        .run();
    run.assert_error(2, "conflict");
    let result = run.result();
    let outcomes: Vec<Outcome> = result.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, [Outcome::TestFailed, Outcome::Error]);
    let second = &result.attempts[1];
    assert!(
        second
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("b.txt"),
        "{second:?}"
    );
    assert_eq!(second.usage.completion_tokens, 50);
    assert_eq!(result.usage.completion_tokens, 100);
    assert_eq!(run.read("a.txt").as_deref(), Some("A\n"));
    assert_eq!(run.read("b.txt").as_deref(), Some("changed\n"));
}

#[test]
fn a_failed_undo_says_the_tree_holds_code_and_how_to_remove_it() {
    // The test damages the run's backup, so the attempt cannot be undone from it.
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "for f in .git/execute-local-task/runs/*/files/*; do echo damaged > \"$f\"; done; exit 1"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .run();
    let error = run.assert_error(2, "rollback");
    let result = run.result();
    let rollback = format!("execute-local-task rollback {}", result.run_id);
    for text in [&error.message, &result.summary] {
        assert!(
            text.contains("may still hold attempt 1's code") && text.contains(&rollback),
            "{text}"
        );
    }
    assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
    assert_eq!(result.attempts[0].outcome, Outcome::Error);
}

#[test]
fn a_reply_that_did_not_stop_naturally_is_never_written() {
    for reason in ["content_filter", "abort"] {
        let run = Test::new()
            .spec(spec("out.txt", &json!({"max_attempts": 1})))
            .script(Script::chat("```text path=out.txt\nx\n```\n", |chat| {
                chat.finish_reason = Some(reason.to_owned());
            }))
            .run();
        run.assert_code(1);
        let result = run.result();
        assert_eq!(result.status, Status::Escalate);
        assert_eq!(result.attempts[0].outcome, Outcome::Truncated);
        let message = result.attempts[0].error.clone().unwrap_or_default();
        assert!(message.contains(reason), "{message}");
        run.assert_unchanged();
    }
}
