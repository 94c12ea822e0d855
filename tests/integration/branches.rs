//! Task branches (`--branch`): the run happens in a worktree of its own and a success is
//! committed on `local-task/<task_id>`, the user's tree, index and HEAD untouched; and
//! the verbs that bring a result in (`apply`, `merge`, `discard`, `runs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use execute_local_task::bring_in::BringInReport;
use execute_local_task::result::{Status, TaskResult};
use execute_local_task::runs::{BranchRecord, State};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::harness::{Layout, MODEL, ModelServer, Run, Script, Test, git, spec};

const BRANCH: &str = "local-task/T-001";

/// What git says in `dir`, trimmed; panics when git fails.
pub fn git_out(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn resolves(dir: &Path, rev: &str) -> bool {
    Command::new("git")
        .args(["rev-parse", "--verify", "--quiet", rev])
        .current_dir(dir)
        .output()
        .expect("run git")
        .status
        .success()
}

/// The user's side of the repository, byte for byte: `.git/index`, `.git/HEAD`, and
/// `git status --porcelain=v2` (read after the bytes, as it may refresh the index).
#[derive(Debug, PartialEq, Eq)]
pub struct GitState {
    index: Vec<u8>,
    head: Vec<u8>,
    status: String,
}

pub fn git_state(repo: &Path) -> GitState {
    // Wherever the layout keeps them (a linked worktree's are its own).
    let file = |name: &str| {
        let path = git_out(
            repo,
            &["rev-parse", "--path-format=absolute", "--git-path", name],
        );
        std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    };
    let index = file("index");
    let head = file("HEAD");
    let status = git_out(
        repo,
        &[
            "status",
            "--porcelain=v2",
            "--branch",
            "--untracked-files=all",
        ],
    );
    GitState {
        index,
        head,
        status,
    }
}

/// The task worktrees left on disk for the run's home (none once every run ended).
pub fn worktrees_left(home: &Path) -> Vec<PathBuf> {
    let root = home.join(".local/state/execute-local-task/worktrees");
    let mut left = Vec::new();
    for repo in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for entry in std::fs::read_dir(repo.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                left.push(entry.path());
            }
        }
    }
    left
}

/// Runs `test`, with the git state taken just before the binary starts.
pub fn run_keeping_state(test: Test) -> (Run, GitState) {
    let state = std::rc::Rc::new(std::cell::RefCell::new(None));
    let seen = std::rc::Rc::clone(&state);
    let run = test
        .before(move |repo| {
            // `git status` first: it may refresh the index, which the binary must not.
            git_out(repo, &["status"]);
            *seen.borrow_mut() = Some(git_state(repo));
        })
        .run();
    let before = state.borrow_mut().take().expect("the state before the run");
    (run, before)
}

fn again_ok(run: &Run, args: &[&str]) -> String {
    let (code, stdout, stderr) = run.again(args);
    assert_eq!(code, 0, "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

fn report(stdout: &str) -> BringInReport {
    serde_json::from_str(stdout).unwrap_or_else(|error| panic!("{error}:\n{stdout}"))
}

fn branch_success() -> (Run, TaskResult) {
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "grep -q new out.txt"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .arg("--branch")
        .run();
    run.assert_code(0);
    let result = run.result();
    (run, result)
}

#[test]
fn a_branch_run_commits_on_its_branch_and_leaves_the_tree_index_and_head_alone() {
    let (run, before) = run_keeping_state(
        Test::new()
            .file("out.txt", "old\n")
            .uncommitted("README.md", "# work in progress\n")
            .uncommitted("scratch.txt", "untracked\n")
            .spec(spec(
                "out.txt",
                &json!({"test_command": "grep -q new out.txt"}),
            ))
            .script(Script::code("out.txt", "new\n"))
            .arg("--branch"),
    );
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success);
    // Byte for byte: the files, the index, HEAD and what git status says.
    run.assert_unchanged();
    assert_eq!(git_state(&run.repo), before);

    let base = git_out(&run.repo, &["rev-parse", "HEAD"]);
    let commit = result.commit.clone().expect("a commit");
    assert_eq!(result.branch.as_deref(), Some(BRANCH));
    assert_eq!(result.base.as_deref(), Some(base.as_str()));
    assert_eq!(git_out(&run.repo, &["rev-parse", BRANCH]), commit);
    assert_eq!(
        git_out(
            &run.repo,
            &["rev-list", "--count", &format!("{base}..{BRANCH}")]
        ),
        "1"
    );
    assert_eq!(
        git_out(&run.repo, &["show", &format!("{BRANCH}:out.txt")]),
        "new"
    );
    let commands = result.commands.clone().expect("the commands");
    assert_eq!(commands.review, format!("git diff {base}..{BRANCH}"));
    assert_eq!(
        commands.apply,
        format!("execute-local-task apply {}", result.run_id)
    );
    assert_eq!(
        commands.merge,
        format!("execute-local-task merge {}", result.run_id)
    );

    let message = git_out(&run.repo, &["log", "-1", "--format=%B", BRANCH]);
    assert!(message.starts_with("Do the task.\n\n"), "{message}");
    for trailer in [
        "Task-Id: T-001".to_owned(),
        format!("Run-Id: {}", result.run_id),
        format!("Model: {MODEL}"),
        "Attempts: 1".to_owned(),
        "Test: passed (grep -q new out.txt)".to_owned(),
    ] {
        assert!(message.contains(&trailer), "{trailer} missing:\n{message}");
    }
    // Only the task's file is in the commit.
    assert_eq!(
        git_out(&run.repo, &["diff", "--name-only", &base, BRANCH]),
        "out.txt"
    );
    // The worktree is gone, and git forgot it; the branch stays.
    assert!(worktrees_left(run.home()).is_empty());
    assert_eq!(
        git_out(&run.repo, &["worktree", "list", "--porcelain"])
            .matches("worktree ")
            .count(),
        1
    );
}

/// Without a configured identity the commit is still made, by the tool's own.
#[test]
fn a_branch_run_commits_without_a_configured_identity() {
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "new\n"))
        .arg("--branch")
        // The harness names a test identity in these; none of them is set here.
        .env("GIT_AUTHOR_NAME", "")
        .env("GIT_COMMITTER_NAME", "")
        .env("GIT_AUTHOR_EMAIL", "")
        .env("GIT_COMMITTER_EMAIL", "")
        .run();
    run.assert_code(0);
    let author = git_out(&run.repo, &["log", "-1", "--format=%an <%ae>", BRANCH]);
    assert_eq!(author, "execute-local-task <execute-local-task@localhost>");
}

#[test]
fn a_failed_branch_run_leaves_no_commit_and_no_branch() {
    let (run, before) = run_keeping_state(
        Test::new()
            .file("out.txt", "old\n")
            .spec(spec("out.txt", &json!({"test_command": "false"})))
            .script(Script::code("out.txt", "new\n"))
            .args(&["--branch", "--max-attempts", "1"]),
    );
    run.assert_code(1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate);
    assert!(result.branch.is_none() && result.commit.is_none());
    assert!(!resolves(&run.repo, &format!("refs/heads/{BRANCH}")));
    run.assert_unchanged();
    assert_eq!(git_state(&run.repo), before);
    assert!(worktrees_left(run.home()).is_empty());
}

#[test]
fn an_existing_task_branch_is_refused_without_force() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "new\n"))
        .before(|repo| git(repo, &["branch", BRANCH]))
        .arg("--branch")
        .run();
    let error = run.assert_error(2, "branch_exists");
    assert!(error.message.contains(BRANCH), "{}", error.message);
    assert!(run.requests.is_empty(), "no model call for a refused run");
    assert!(worktrees_left(run.home()).is_empty());
}

#[test]
fn force_replaces_the_task_branch_and_keeps_its_old_tip_reachable() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "new\n"))
        .before(|repo| git(repo, &["branch", BRANCH]))
        .args(&["--branch", "--force"])
        .run();
    run.assert_code(0);
    let result = run.result();
    let old = git_out(&run.repo, &["rev-parse", "HEAD"]);
    assert_eq!(result.replaced.as_deref(), Some(old.as_str()));
    assert_eq!(
        git_out(
            &run.repo,
            &[
                "rev-parse",
                &format!("refs/local-task-replaced/T-001/{old}")
            ]
        ),
        old
    );
    assert_eq!(
        git_out(&run.repo, &["rev-parse", BRANCH]),
        result.commit.expect("a commit")
    );
}

#[test]
fn worktreeinclude_files_and_linked_directories_reach_the_test() {
    let run = Test::new()
        .file(".gitignore", "node_modules/\n.env\n")
        .file(".worktreeinclude", ".env\n")
        .file("out.txt", "old\n")
        .uncommitted(".env", "KEY=1\n")
        .uncommitted("node_modules/lib.js", "module\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "grep -q KEY=1 .env && test -f node_modules/lib.js && grep -q new out.txt"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .args(&["--branch", "--link", "node_modules"])
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success, "{:?}", result.notes);
    // Neither the copied nor the linked files are committed: only the task's.
    assert_eq!(
        git_out(&run.repo, &["ls-tree", "-r", "--name-only", BRANCH]),
        ".gitignore\n.worktreeinclude\nREADME.md\nout.txt"
    );
    // The main tree's directory is still there once the link is gone.
    assert_eq!(run.read("node_modules/lib.js").as_deref(), Some("module\n"));
    run.assert_unchanged();
}

#[test]
fn the_link_variable_names_directories_to_link() {
    let run = Test::new()
        .file(".gitignore", "node_modules/\n")
        .uncommitted("node_modules/lib.js", "module\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "test -f node_modules/lib.js"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .env("LOCAL_TASK_LINK", "node_modules")
        .arg("--branch")
        .run();
    run.assert_code(0);
}

/// A test that fails because the worktree lacks an ignored directory says so: it must
/// not look like the model's failure.
#[test]
fn a_test_failing_for_a_missing_ignored_directory_names_it() {
    let run = Test::new()
        .file(".gitignore", "node_modules/\n")
        .uncommitted("node_modules/lib.js", "module\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "test -f node_modules/lib.js"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .args(&["--branch", "--max-attempts", "1"])
        .run();
    run.assert_code(1);
    let result = run.result();
    let note = result
        .notes
        .iter()
        .find(|note| note.contains("`node_modules/`"))
        .unwrap_or_else(|| panic!("no note names node_modules/: {:?}", result.notes));
    assert!(note.contains("--link"), "{note}");
    assert!(
        result.summary.contains("lacked ignored paths"),
        "{}",
        result.summary
    );
}

#[test]
fn apply_brings_the_change_in_uncommitted_and_rollback_undoes_it() {
    let (run, result) = branch_success();
    let applied = report(&again_ok(&run, &["apply", &result.run_id]));
    assert_eq!(applied.status, "applied");
    assert_eq!(applied.files, vec!["out.txt".to_owned()]);
    assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
    // Uncommitted: HEAD did not move, and git shows the change.
    assert_eq!(
        git_out(&run.repo, &["rev-parse", "HEAD"]),
        result.base.clone().unwrap()
    );
    assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "M out.txt");

    let records: Vec<BranchRecord> =
        serde_json::from_str(&again_ok(&run, &["runs", "--json"])).expect("runs JSON");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].run_id, result.run_id);
    assert_eq!(records[0].state, Some(State::Applied));
    assert_eq!(records[0].branch, BRANCH);

    let undo = applied.rollback.expect("a run id to roll back");
    again_ok(&run, &["rollback", &undo]);
    assert_eq!(run.read("out.txt").as_deref(), Some("old\n"));
    // Undone, so no longer applied.
    let records: Vec<BranchRecord> =
        serde_json::from_str(&again_ok(&run, &["runs", "--json"])).expect("runs JSON");
    assert_eq!(records[0].state, None);
}

#[test]
fn merge_fast_forwards_and_discard_deletes_the_branch() {
    let (run, result) = branch_success();
    let merged = report(&again_ok(&run, &["merge", "--last"]));
    assert_eq!(merged.fast_forward, Some(true));
    let commit = result.commit.clone().unwrap();
    assert_eq!(git_out(&run.repo, &["rev-parse", "HEAD"]), commit);
    assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
    assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "");

    let discarded = report(&again_ok(&run, &["discard", &result.run_id]));
    assert_eq!(discarded.status, "discarded");
    assert!(!resolves(&run.repo, &format!("refs/heads/{BRANCH}")));
    let listed = again_ok(&run, &["runs"]);
    assert!(
        listed.contains(&result.run_id) && listed.contains("discarded"),
        "{listed}"
    );
}

#[test]
fn a_discarded_failed_run_removes_the_worktree_it_kept() {
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec("out.txt", &json!({"test_command": "false"})))
        .script(Script::code("out.txt", "new\n"))
        .args(&["--branch", "--max-attempts", "1", "--keep-failed"])
        .run();
    run.assert_code(1);
    let result = run.result();
    let kept = PathBuf::from(result.worktree.clone().expect("a kept worktree"));
    assert_eq!(
        std::fs::read_to_string(kept.join("out.txt")).unwrap(),
        "new\n"
    );
    report(&again_ok(&run, &["discard", &result.run_id]));
    assert!(!kept.exists());
    assert!(worktrees_left(run.home()).is_empty());
}

#[test]
fn apply_and_merge_refuse_a_tree_with_changes_to_the_same_file() {
    let (run, result) = branch_success();
    std::fs::write(run.repo.join("out.txt"), "mine\n").unwrap();
    for verb in ["apply", "merge"] {
        let (code, stdout, _) = run.again(&[verb, &result.run_id]);
        assert_eq!(code, 2, "{verb}: {stdout}");
        let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(printed["error"]["kind"], "refused", "{verb}");
        assert!(
            printed["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`out.txt`"),
            "{verb}: {stdout}"
        );
        assert_eq!(run.read("out.txt").as_deref(), Some("mine\n"), "{verb}");
    }
    assert_eq!(
        git_out(&run.repo, &["rev-parse", "HEAD"]),
        result.base.unwrap()
    );
}

#[test]
fn apply_and_merge_refuse_a_conflicting_commit_with_nothing_changed() {
    let (run, result) = branch_success();
    std::fs::write(run.repo.join("out.txt"), "theirs\n").unwrap();
    git(&run.repo, &["commit", "-q", "-am", "a change of our own"]);
    let head = git_out(&run.repo, &["rev-parse", "HEAD"]);
    for verb in ["apply", "merge"] {
        let (code, stdout, _) = run.again(&[verb, &result.run_id]);
        assert_eq!(code, 2, "{verb}: {stdout}");
        let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(printed["error"]["kind"], "refused", "{verb}");
        assert!(
            printed["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`out.txt`"),
            "{verb}: {stdout}"
        );
        assert_eq!(run.read("out.txt").as_deref(), Some("theirs\n"), "{verb}");
        assert_eq!(git_out(&run.repo, &["rev-parse", "HEAD"]), head, "{verb}");
        assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "", "{verb}");
    }
}

/// A branch run killed (SIGKILL, no cleanup) while the server holds the reply leaves its
/// worktree; the next branch run finds it and removes it.
#[test]
fn a_killed_branch_runs_worktree_is_removed_by_the_next_run() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::Hang)
        .arg("--branch")
        .during(|running| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while running.chat_requests() == 0 {
                assert!(Instant::now() < deadline, "the run never asked the model");
                std::thread::sleep(Duration::from_millis(10));
            }
            running.signal(Signal::SIGKILL);
        })
        .run();
    assert_eq!(run.code, -1, "killed");
    let left = worktrees_left(run.home());
    assert_eq!(left.len(), 1, "the killed run's worktree");

    let server = ModelServer::start(
        vec![Script::code("out.txt", "new\n")],
        vec![MODEL.to_owned()],
    );
    let url = format!("http://127.0.0.1:{}", server.port());
    let spec_path = run.spec_path.display().to_string();
    let stdout = again_ok(
        &run,
        &[&spec_path, "--branch", "--endpoint", &url, "--model", MODEL],
    );
    let result: TaskResult = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result.status, Status::Success);
    assert!(
        result
            .notes
            .iter()
            .any(|note| note.contains("interrupted run")),
        "{:?}",
        result.notes
    );
    assert!(worktrees_left(run.home()).is_empty());
    assert!(!left[0].exists());
    assert_eq!(
        git_out(&run.repo, &["worktree", "list", "--porcelain"])
            .matches("worktree ")
            .count(),
        1
    );
}

/// However the repository is laid out (its `.git` a file, a symlink, a submodule's, a
/// linked worktree's), the branch is made and the user's side is left as it was.
#[test]
fn a_branch_run_leaves_every_layout_alone() {
    for layout in [
        Layout::SeparateGitDir,
        Layout::SymlinkedGitDir,
        Layout::Submodule,
        Layout::LinkedWorktree,
    ] {
        let (run, before) = run_keeping_state(
            Test::new()
                .layout(layout)
                .file("out.txt", "old\n")
                .uncommitted("README.md", "# work in progress\n")
                .spec(spec(
                    "out.txt",
                    &json!({"test_command": "grep -q new out.txt"}),
                ))
                .script(Script::code("out.txt", "new\n"))
                .arg("--branch"),
        );
        run.assert_code(0);
        run.assert_unchanged();
        assert_eq!(git_state(&run.repo), before, "{layout:?}");
        let result = run.result();
        assert_eq!(
            git_out(&run.repo, &["rev-parse", BRANCH]),
            result.commit.expect("a commit"),
            "{layout:?}"
        );
        assert_eq!(
            git_out(&run.repo, &["show", &format!("{BRANCH}:out.txt")]),
            "new",
            "{layout:?}"
        );
        assert!(worktrees_left(run.home()).is_empty(), "{layout:?}");
    }
}

/// SIGTERM during a branch run stops it like a run in place, and the worktree goes with
/// it: no branch, no worktree, the tree as it was.
#[test]
fn an_interrupted_branch_run_leaves_no_branch_and_no_worktree() {
    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .script(Script::Hang)
        .arg("--branch")
        .during(|running| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while running.chat_requests() == 0 {
                assert!(Instant::now() < deadline, "the run never asked the model");
                std::thread::sleep(Duration::from_millis(10));
            }
            running.signal(Signal::SIGTERM);
        })
        .run();
    run.assert_error(143, "interrupted");
    assert!(!resolves(&run.repo, &format!("refs/heads/{BRANCH}")));
    assert!(worktrees_left(run.home()).is_empty());
    run.assert_unchanged();
}

#[test]
fn a_branch_run_outside_a_repository_or_without_a_commit_is_refused() {
    let run = Test::new()
        .no_git()
        .spec(spec("out.txt", &json!({})))
        .arg("--branch")
        .run();
    run.assert_error(2, "repo");

    let run = Test::new()
        .spec(spec("out.txt", &json!({})))
        .before(|repo| git(repo, &["update-ref", "-d", "HEAD"]))
        .arg("--branch")
        .run();
    let error = run.assert_error(2, "repo");
    assert!(error.message.contains("no commit"), "{}", error.message);
    assert!(run.requests.is_empty());
}

#[test]
fn the_verbs_refuse_an_unknown_run_and_runs_lists_none() {
    let run = Test::new().run_with(|_| vec!["runs".to_owned(), "--json".to_owned()]);
    run.assert_code(0);
    let records: Vec<BranchRecord> = serde_json::from_str(&run.stdout).expect("runs JSON");
    assert!(records.is_empty());
    for verb in ["apply", "merge", "discard"] {
        let (code, stdout, _) = run.again(&[verb, "20200101T000000000Z-0000"]);
        assert_eq!(code, 2, "{verb}: {stdout}");
        let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(printed["error"]["kind"], "usage", "{verb}");
        let (code, _, _) = run.again(&[verb, "--last"]);
        assert_eq!(code, 2, "{verb} --last");
    }
}

/// The library call a batch makes for a dependent task: the branch starts from the
/// commit it is given, not from HEAD.
#[test]
fn a_library_caller_starts_a_task_branch_from_a_given_commit() {
    use std::sync::Arc;

    use execute_local_task::model::recorded::Replayer;
    use execute_local_task::model::{Backend, ChatReply, Client, Finish};
    use execute_local_task::pipeline::{Env, RunOptions, RunOutput, SpecInput};
    use execute_local_task::server::Connected;

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("out.txt"), "first\n").unwrap();
    crate::harness::init_and_commit(&repo);
    let first = git_out(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("out.txt"), "second\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "second"]);
    let spec = SpecInput::Text {
        label: "<test>".to_owned(),
        text: spec("out.txt", &json!({})).to_string(),
    };
    let server = Connected {
        client: Client::new(Backend::Recorded(Replayer::sequential(
            "test replies",
            vec![ChatReply {
                content: "```\nnew\n```\n".to_owned(),
                finish: Finish::Stop,
                usage: None,
                notes: Vec::new(),
                served_by: None,
            }],
        ))),
        model: MODEL.to_owned(),
        notes: Vec::new(),
    };
    let home = dir.path().join("home");
    let env: Env = Arc::new(move |name: &str| (name == "HOME").then(|| home.display().to_string()));
    let options = RunOptions {
        repo_dir: Some(repo.clone()),
        branch: true,
        ..RunOptions::new()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let output = runtime.block_on(execute_local_task::branch::run_from(
        Some(first.clone()),
        &spec,
        &options,
        Some(server),
        &env,
        &|_: &str| {},
    ));
    let RunOutput::Result { result, .. } = output else {
        panic!("a result");
    };
    assert_eq!(result.status, Status::Success, "{}", result.summary);
    assert_eq!(result.base.as_deref(), Some(first.as_str()));
    assert_eq!(git_out(&repo, &["rev-parse", &format!("{BRANCH}^")]), first);
    assert_eq!(
        std::fs::read_to_string(repo.join("out.txt")).unwrap(),
        "second\n"
    );
}

#[test]
fn merge_makes_a_merge_commit_when_the_branch_cannot_fast_forward() {
    let (run, result) = branch_success();
    std::fs::write(run.repo.join("README.md"), "# ours\n").unwrap();
    git(&run.repo, &["commit", "-q", "-am", "a change of our own"]);
    let ours = git_out(&run.repo, &["rev-parse", "HEAD"]);
    let merged = report(&again_ok(&run, &["merge", &result.run_id]));
    assert_eq!(merged.fast_forward, Some(false));
    let head = git_out(&run.repo, &["rev-parse", "HEAD"]);
    assert_eq!(merged.head.as_deref(), Some(head.as_str()));
    assert_eq!(
        git_out(&run.repo, &["rev-parse", "HEAD^1", "HEAD^2"]),
        format!("{ours}\n{}", result.commit.unwrap())
    );
    assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
    assert_eq!(run.read("README.md").as_deref(), Some("# ours\n"));
    assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "");
}

/// A branch someone committed on is not the run's alone any more: `discard` keeps it.
#[test]
fn discard_keeps_a_branch_that_moved_on() {
    let (run, result) = branch_success();
    git(&run.repo, &["checkout", "-q", BRANCH]);
    std::fs::write(run.repo.join("out.txt"), "edited\n").unwrap();
    git(
        &run.repo,
        &["commit", "-q", "-am", "an edit on the task branch"],
    );
    let tip = git_out(&run.repo, &["rev-parse", "HEAD"]);
    git(&run.repo, &["checkout", "-q", "-"]);
    let (code, stdout, _) = run.again(&["discard", &result.run_id]);
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(git_out(&run.repo, &["rev-parse", BRANCH]), tip);
}

/// A test program that lives in an ignored directory the worktree lacks cannot even
/// start there: the result names the directory too.
#[test]
fn a_test_program_missing_from_the_worktree_names_the_ignored_directory() {
    let run = Test::new()
        .file(".gitignore", "node_modules/\n")
        .uncommitted("node_modules/.bin/check", "#!/bin/sh\nexit 0\n")
        .before(|repo| {
            use std::os::unix::fs::PermissionsExt as _;
            let tool = repo.join("node_modules/.bin/check");
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        })
        .spec(spec(
            "out.txt",
            &json!({"test_command": "node_modules/.bin/check"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .args(&["--branch", "--max-attempts", "1"])
        .run();
    run.assert_code(1);
    let result = run.result();
    assert!(
        result
            .notes
            .iter()
            .any(|note| note.contains("`node_modules/`")),
        "{}\n{:?}",
        result.summary,
        result.notes
    );
}

/// A run that adds a file HEAD has since got with other bytes: `apply` refuses, naming
/// it, instead of replacing the committed file with the task's.
#[test]
fn apply_refuses_a_new_file_that_head_has_since_added() {
    let run = Test::new()
        .spec(spec("new.txt", &json!({})))
        .script(Script::code("new.txt", "task\n"))
        .arg("--branch")
        .run();
    run.assert_code(0);
    let result = run.result();
    std::fs::write(run.repo.join("new.txt"), "ours\n").unwrap();
    git(&run.repo, &["add", "new.txt"]);
    git(&run.repo, &["commit", "-q", "-m", "our own new.txt"]);
    let (code, stdout, _) = run.again(&["apply", &result.run_id]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("`new.txt`"), "{stdout}");
    assert_eq!(run.read("new.txt").as_deref(), Some("ours\n"));
    assert_eq!(git_out(&run.repo, &["status", "--porcelain"]), "");
}
