//! What makes a batch fast without changing what it does: on branches one worktree per
//! running task, reused (reset to the next task's base) instead of made and removed per
//! task; model calls capped at `--jobs` while more tasks prepare; and git's worktree
//! commands serialised between processes as well as within one. Speed itself is the
//! benchmark's (`BENCH_BATCH_ONLY=1 cargo bench --bench overhead`), never a test's.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use execute_local_task::cancel::STALL_AT_ENV;
use execute_local_task::result::{Status, TaskResult};
use serde_json::json;

use crate::batch::{batch, lines, task};
use crate::branches::{git_out, git_state, worktrees_left};
use crate::harness::{self, MODEL, ModelServer, Script, Test, spec};

/// The worktree paths each task's progress names, in the order they were printed.
fn worktrees_named(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|line| line.split("running in a task worktree at ").nth(1))
        .filter_map(|rest| rest.split(" (from ").next())
        .map(str::to_owned)
        .collect()
}

fn worktrees_registered(repo: &Path) -> usize {
    git_out(repo, &["worktree", "list", "--porcelain"])
        .matches("worktree ")
        .count()
}

/// Five tasks, `--jobs 1`, on branches: the worktrees are reused (one per running task), each task gets
/// its own commit on its own branch holding only its file, and the worktree is gone at
/// the end.
#[test]
fn a_batch_on_branches_reuses_one_worktree_per_running_task() {
    let mut test = Test::new();
    let mut specs = Vec::new();
    let spec_names: Vec<String> = (0..5).map(|i| format!("t{i}.json")).collect();
    for (i, name) in spec_names.iter().enumerate() {
        let (id, path) = (format!("T{i}"), format!("out/t{i}.txt"));
        test = test.route(&format!("<<{id}>>"), vec![Script::code(&path, "x\n")]);
        specs.push((name.as_str(), task(&id, &path, &json!({}))));
    }
    let state = std::rc::Rc::new(std::cell::RefCell::new(None));
    let seen = std::rc::Rc::clone(&state);
    let test = test.before(move |repo| {
        git_out(repo, &["status"]);
        *seen.borrow_mut() = Some(git_state(repo));
    });
    let run = batch(test, &specs, &["--branch", "--jobs", "1"]);
    run.assert_code(0);
    let (results, summary) = lines(&run);
    assert_eq!(summary.counts.success, 5, "{}", run.stdout);
    let named = worktrees_named(&run.stderr);
    assert_eq!(named.len(), 5, "{}", run.stderr);
    let distinct: std::collections::BTreeSet<_> = named.iter().collect();
    // `--jobs 1`: one task at the model and one more preparing or finishing, so two
    // worktrees at most, each reused.
    assert!(
        distinct.len() <= 2,
        "one worktree per running task: {named:#?}"
    );
    for result in &results {
        let branch = result.branch.clone().expect("a branch");
        let files = git_out(&run.repo, &["ls-tree", "-r", "--name-only", &branch, "out"]);
        let id = result.task_id.clone().unwrap_or_default();
        assert_eq!(
            files,
            format!("out/{}.txt", id.to_lowercase()),
            "{id}'s commit holds its own output and no other task's"
        );
    }
    let before = state.borrow_mut().take().expect("the state before the run");
    assert_eq!(git_state(&run.repo), before, "the user's side is untouched");
    assert!(worktrees_left(run.home()).is_empty());
    assert_eq!(worktrees_registered(&run.repo), 1, "every worktree removed");
}

/// A task whose test dirtied the worktree (a tracked file changed, an untracked file,
/// an ignored build directory) and failed: the next task in the same worktree starts
/// from a tree exactly like a fresh one of its base, and `.worktreeinclude` copies are
/// brought again.
#[test]
fn a_task_after_a_failed_task_in_the_same_worktree_starts_from_a_clean_tree() {
    let dirty = "echo dirty >> keep.txt; touch junk.txt; mkdir -p build; touch build/x; \
                 echo changed > config.local; exit 1";
    let clean = "test \"$(cat keep.txt)\" = original && test ! -e junk.txt && test ! -e build \
                 && test ! -e out/a.txt && test \"$(cat config.local)\" = local";
    let specs = vec![
        (
            "a.json",
            task(
                "A",
                "out/a.txt",
                &json!({"test_command": dirty, "max_attempts": 1}),
            ),
        ),
        (
            "b.json",
            // Its context glob covers A's output, so it runs after A, in A's worktree.
            task(
                "B",
                "out/b.txt",
                &json!({"test_command": clean, "context_files": ["*.txt"]}),
            ),
        ),
    ];
    let test = Test::new()
        .file("keep.txt", "original\n")
        .file(".gitignore", "build/\nconfig.local\n")
        .file(".worktreeinclude", "config.local\n")
        .uncommitted("config.local", "local\n")
        .route("<<A>>", vec![Script::code("out/a.txt", "a\n")])
        .route("<<B>>", vec![Script::code("out/b.txt", "b\n")]);
    let run = batch(test, &specs, &["--branch", "--jobs", "1"]);
    let (results, summary) = lines(&run);
    let status = |id: &str| {
        results
            .iter()
            .find(|result| result.task_id.as_deref() == Some(id))
            .map(|result| (result.status, result.summary.clone()))
    };
    assert_eq!(
        status("A").map(|s| s.0),
        Some(Status::Escalate),
        "{}",
        run.stdout
    );
    assert_eq!(
        status("B").map(|s| s.0),
        Some(Status::Success),
        "{:?}",
        status("B")
    );
    assert_eq!(summary.counts.success, 1);
    let named = worktrees_named(&run.stderr);
    assert_eq!(named.len(), 2, "{}", run.stderr);
    assert_eq!(named[0], named[1], "B ran in A's worktree");
    assert_eq!(
        git_out(&run.repo, &["show", "local-task/B:keep.txt"]),
        "original"
    );
    assert!(worktrees_left(run.home()).is_empty());
    assert_eq!(worktrees_registered(&run.repo), 1);
}

/// Two processes making branch runs on one repository at the same moment: while one
/// holds git's worktree commands (held there by the debug-only stall hook), the other
/// finds them taken and waits its turn, and both runs succeed.
#[test]
fn two_processes_on_branches_at_once_take_turns_at_git_worktree_commands() {
    let scratch = tempfile::tempdir().unwrap();
    let held = scratch.path().join("first-holds");
    let waited = scratch.path().join("second-waited");
    // The second process only marks that it found the lock taken; it never stalls.
    std::fs::write(waited.with_extension("sent"), b"").unwrap();
    let second_server = ModelServer::start(
        vec![Script::code("second.txt", "second\n")],
        vec![MODEL.to_owned()],
    );
    let second_spec = scratch.path().join("second.json");
    std::fs::write(
        &second_spec,
        serde_json::to_string(&json!({
            "task_id": "T-002", "description": "Do the second task.", "output_file": "second.txt"
        }))
        .unwrap(),
    )
    .unwrap();
    let test = Test::new()
        .spec(spec("first.txt", &json!({})))
        .script(Script::code("first.txt", "first\n"))
        .arg("--branch")
        .env(STALL_AT_ENV, &format!("worktree-admin:{}", held.display()));
    let (repo, home) = (test.repo_path(), test.home_path());
    let url = format!("http://127.0.0.1:{}", second_server.port());
    let (marker, spec_path) = (waited.clone(), second_spec.clone());
    let second = std::rc::Rc::new(std::cell::RefCell::new(None));
    let output = std::rc::Rc::clone(&second);
    let run = test
        .during(move |_| {
            // Bounded only so that a binary without the hook fails instead of hanging.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !held.exists() {
                assert!(
                    Instant::now() < deadline,
                    "the first run never held the lock"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut child = harness::command_in(&repo, &home)
                .args([
                    spec_path.display().to_string().as_str(),
                    "--branch",
                    "--endpoint",
                    &url,
                    "--model",
                    MODEL,
                ])
                .env(
                    STALL_AT_ENV,
                    format!("worktree-admin-busy:{}", marker.display()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the second process");
            // Either the second process finds the lock taken, or it ran to its end past
            // the first one's held worktree commands: the failure this test is for.
            while !marker.exists() && child.try_wait().expect("the second process").is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let found_taken = marker.exists();
            std::fs::write(held.with_extension("sent"), b"").unwrap();
            *output.borrow_mut() = Some((found_taken, harness::finish(child)));
        })
        .run();
    let (found_taken, second) = second.borrow_mut().take().expect("the second run");
    assert!(
        found_taken,
        "the second process ran git's worktree commands while the first held them"
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.result().status, Status::Success);
    let stdout = String::from_utf8_lossy(&second.stdout);
    let result: TaskResult = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {stdout}\n{}",
            String::from_utf8_lossy(&second.stderr)
        )
    });
    assert_eq!(result.status, Status::Success, "{}", result.summary);
    assert!(worktrees_left(run.home()).is_empty());
    assert_eq!(worktrees_registered(&run.repo), 1);
}
