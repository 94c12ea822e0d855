//! A run's journal over time: restores that keep a user's edit, `rollback --last` and the
//! newest run, run ids of runs started together, and pruning old runs' backups.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{BIN, MODEL, ModelServer, Script, Test, finish, output, spec};

/// The binary in `repo` with a hermetic environment, pointed at `server` when given.
fn command(repo: &Path, server: Option<&ModelServer>, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(repo)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", repo.parent().unwrap().join("home"))
        .env("LANG", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("LOCAL_TASK_MODEL", MODEL)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(server) = server {
        command.env("LOCAL_TASK_ENDPOINT", &server.url);
    }
    command
}

/// Exit code and stdout as JSON.
fn json_of(output: &std::process::Output) -> (i32, Value) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), value)
}

/// Runs a second task in the repository of an earlier run.
fn run_task(repo: &Path, name: &str, spec: &Value, script: Vec<Script>) -> (i32, Value) {
    let spec_path = repo.parent().unwrap().join(format!("{name}.json"));
    fs::write(&spec_path, spec.to_string()).unwrap();
    let server = ModelServer::start(script, vec![MODEL.to_owned()]);
    json_of(&output(&mut command(
        repo,
        Some(&server),
        &[spec_path.to_str().unwrap()],
    )))
}

fn tool(repo: &Path, args: &[&str]) -> (i32, Value) {
    json_of(&output(&mut command(repo, None, args)))
}

/// Commits everything in the working tree on top of HEAD.
fn commit_all(repo: &Path) {
    let git = git2::Repository::open(repo).unwrap();
    let mut index = git.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = git.find_tree(index.write_tree().unwrap()).unwrap();
    let parent = git.head().unwrap().peel_to_commit().unwrap();
    let signature = git2::Signature::now("Test", "test@example.invalid").unwrap();
    git.commit(
        Some("HEAD"),
        &signature,
        &signature,
        "next",
        &tree,
        &[&parent],
    )
    .unwrap();
}

fn runs_dir(repo: &Path) -> PathBuf {
    repo.join(".git/execute-local-task/runs")
}

fn run_dirs(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(runs_dir(repo))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A test command that stands in for an editor saving `path` while the test runs.
fn editing_test(path: &str) -> Value {
    json!({"test_command": format!("printf 'user' > {path}; exit 1"), "max_attempts": 1})
}

#[test]
fn an_edit_made_during_a_failing_test_is_kept_and_named() {
    let run = Test::new()
        .file("out.py", "old\n")
        .spec(spec("out.py", &editing_test("out.py")))
        .script(Script::code("out.py", "new\n"))
        .run();
    let error = run.assert_error(2, "conflict");
    assert_eq!(run.read("out.py").as_deref(), Some("user"));
    assert!(error.message.contains("`out.py`"), "{}", error.message);
    assert!(!error.message.contains("unchanged"), "{}", error.message);
    // The file is the user's now: undoing the run leaves it too.
    let (code, report) = tool(&run.repo, &["rollback", "--last"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(run.read("out.py").as_deref(), Some("user"));
}

#[test]
fn a_created_file_the_user_edits_during_the_test_is_not_deleted() {
    let run = Test::new()
        .spec(spec("made.py", &editing_test("made.py")))
        .script(Script::code("made.py", "new\n"))
        .run();
    let error = run.assert_error(2, "conflict");
    assert_eq!(run.read("made.py").as_deref(), Some("user"));
    assert!(error.message.contains("`made.py`"), "{}", error.message);
    let (code, _) = tool(&run.repo, &["rollback", "--last"]);
    assert_eq!(code, 0);
    assert_eq!(run.read("made.py").as_deref(), Some("user"));
}

#[test]
fn a_repair_never_writes_over_an_edit_made_after_the_last_write() {
    let mut extra = editing_test("out.py");
    extra["max_attempts"] = json!(3);
    let run = Test::new()
        .file("out.py", "old\n")
        .spec(spec("out.py", &extra))
        .script(Script::code("out.py", "new\n"))
        .script(Script::code("out.py", "newer\n"))
        .script(Script::code("out.py", "newest\n"))
        .run();
    run.assert_error(2, "conflict");
    assert_eq!(run.read("out.py").as_deref(), Some("user"));
    // The run stops at the conflict: no model call is spent on code it cannot write.
    assert_eq!(run.requests.len(), 1);
}

#[test]
fn a_signal_after_an_edit_during_the_test_keeps_the_edit() {
    use nix::sys::signal::Signal;
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("edited");
    let seen = marker.clone();
    let run = Test::new()
        .file("out.py", "old\n")
        .spec(spec(
            "out.py",
            &json!({"test_command": format!(
                "printf 'user' > out.py; touch {}; exec sleep 77",
                marker.display()
            )}),
        ))
        .script(Script::code("out.py", "new\n"))
        .during(move |running| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !seen.exists() {
                assert!(Instant::now() < deadline, "the test never edited the file");
                std::thread::sleep(Duration::from_millis(10));
            }
            running.signal(Signal::SIGTERM);
        })
        .run();
    let error = run.assert_error(2, "conflict");
    assert!(error.message.contains("SIGTERM"), "{}", error.message);
    assert!(error.message.contains("`out.py`"), "{}", error.message);
    assert_eq!(run.read("out.py").as_deref(), Some("user"));
}

/// T-1 creates `one.txt` and is committed; a second run is then ended by `second`.
fn last_after(second: impl FnOnce(&Path)) {
    let run = Test::new()
        .spec(spec("one.txt", &json!({})))
        .script(Script::code("one.txt", "one\n"))
        .run();
    run.assert_code(0);
    commit_all(&run.repo);
    second(&run.repo);
    let newest = run_dirs(&run.repo).pop().unwrap();
    assert_ne!(newest, run.result().run_id, "the second run left no mark");
    let (code, report) = tool(&run.repo, &["rollback", "--last"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["run_id"], json!(newest));
    assert!(
        report["nothing_to_undo"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{report}"
    );
    assert_eq!(report["removed"], json!([]));
    assert_eq!(run.read("one.txt").as_deref(), Some("one\n"));
}

#[test]
fn rollback_last_after_a_run_that_wrote_nothing_changes_nothing() {
    last_after(|repo| {
        let spec = json!({"task_id": "T-2", "description": "d", "output_file": "two.txt",
                          "max_attempts": 1});
        let (code, result) = run_task(repo, "two", &spec, vec![Script::reply("No code.")]);
        assert_eq!(code, 1, "{result}");
        assert_eq!(result["status"], json!("escalate"));
    });
}

#[test]
fn rollback_last_after_a_run_killed_before_writing_changes_nothing() {
    last_after(|repo| {
        let spec_path = repo.parent().unwrap().join("two.json");
        let spec = json!({"task_id": "T-2", "description": "d", "output_file": "two.txt"});
        fs::write(&spec_path, spec.to_string()).unwrap();
        let server = ModelServer::start(vec![Script::Hang], vec![MODEL.to_owned()]);
        let child = command(repo, Some(&server), &[spec_path.to_str().unwrap()])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.requests().is_empty() {
            assert!(Instant::now() < deadline, "the model was never called");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        finish(child);
    });
}

#[test]
fn rollback_last_after_a_run_killed_as_it_recorded_itself_changes_nothing() {
    last_after(|repo| {
        let spec_path = repo.parent().unwrap().join("two.json");
        let spec = json!({"task_id": "T-2", "description": "d", "output_file": "two.txt"});
        fs::write(&spec_path, spec.to_string()).unwrap();
        // The first durable step of a run is its empty manifest's temp file: killed there,
        // the run's directory has no manifest yet.
        let killed = output(
            command(repo, None, &[spec_path.to_str().unwrap()])
                .env("EXECUTE_LOCAL_TASK_TEST_CRASH_AT", "1"),
        );
        assert_eq!(killed.status.code(), None, "not killed");
        let newest = run_dirs(repo).pop().unwrap();
        assert!(!runs_dir(repo).join(&newest).join("manifest.json").exists());
        let (code, report) = tool(repo, &["rollback", &newest]);
        assert_eq!(code, 2, "{report}");
        assert!(
            report["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("stopped before it wrote")),
            "{report}"
        );
    });
}

#[test]
fn runs_started_together_get_distinct_ids_and_directories() {
    let run = Test::new().run_with(|_| vec!["--version".to_owned()]);
    let repo = run.repo.clone();
    let server = ModelServer::start(
        (0..8).map(|_| Script::reply("```text\nx\n```\n")).collect(),
        vec![MODEL.to_owned()],
    );
    let children: Vec<_> = (0..8)
        .map(|n| {
            let spec_path = repo.parent().unwrap().join(format!("s{n}.json"));
            let spec = json!({"task_id": format!("T-{n}"), "description": "d",
                              "output_file": format!("o{n}.txt")});
            fs::write(&spec_path, spec.to_string()).unwrap();
            command(&repo, Some(&server), &[spec_path.to_str().unwrap()])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids: Vec<String> = children
        .into_iter()
        .map(|child| {
            let (_, result) = json_of(&finish(child));
            assert_ne!(result["status"], json!("error"), "{result}");
            result["run_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "{ids:?}");
    assert_eq!(run_dirs(&repo), ids);
}

/// A recorded run with a manifest that wrote nothing.
fn fake_run(repo: &Path, id: &str) {
    let dir = runs_dir(repo).join(id);
    fs::create_dir_all(dir.join("files")).unwrap();
    fs::write(dir.join("files/0"), "backup\n").unwrap();
    fs::write(
        dir.join("manifest.json"),
        json!({"version": 1, "run_id": id, "task_id": "T", "files": [], "created_dirs": []})
            .to_string(),
    )
    .unwrap();
}

const OLD: [&str; 3] = [
    "20200101T000000000Z-0001",
    "20200102T000000000Z-0002",
    "20200103T000000000Z-0003",
];

#[test]
fn prune_removes_old_runs_beyond_the_newest_kept_and_skips_a_running_one() {
    let run = Test::new().run_with(|_| vec!["--version".to_owned()]);
    let repo = &run.repo;
    for id in OLD {
        fake_run(repo, id);
    }
    let (code, report) = tool(repo, &["prune", "--keep", "1", "--dry-run"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["dry_run"], json!(true));
    assert_eq!(report["pruned"], json!([OLD[0], OLD[1]]));
    assert_eq!(run_dirs(repo).len(), 3, "a dry run removes nothing");

    // A run still holding its directory's lock is never pruned.
    let held = fs::File::open(runs_dir(repo).join(OLD[0])).unwrap();
    held.lock().unwrap();
    let (code, report) = tool(repo, &["prune", "--keep", "1"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["pruned"], json!([OLD[1]]));
    assert_eq!(report["running"], json!([OLD[0]]));
    assert_eq!(run_dirs(repo), [OLD[0], OLD[2]]);
    drop(held);

    // Younger than --older-than: kept whatever the count.
    let (_, report) = tool(repo, &["prune", "--keep", "0", "--older-than", "36500"]);
    assert_eq!(report["pruned"], json!([]));
    assert_eq!(run_dirs(repo), [OLD[0], OLD[2]]);
}

#[test]
fn a_run_prunes_old_runs_over_the_limits_at_its_start() {
    let run = Test::new().run_with(|_| vec!["--version".to_owned()]);
    for id in OLD {
        fake_run(&run.repo, id);
    }
    let spec = json!({"task_id": "T-2", "description": "d", "output_file": "two.txt"});
    let spec_path = run.repo.parent().unwrap().join("two.json");
    fs::write(&spec_path, spec.to_string()).unwrap();
    let server = ModelServer::start(
        vec![Script::code("two.txt", "two\n")],
        vec![MODEL.to_owned()],
    );
    let (code, result) = json_of(&output(
        command(&run.repo, Some(&server), &[spec_path.to_str().unwrap()])
            .env("LOCAL_TASK_KEEP_RUNS", "1"),
    ));
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["status"], json!("success"));
    assert_eq!(run_dirs(&run.repo), [result["run_id"].as_str().unwrap()]);
}
