//! `[run] branch` and `[run] link`: the configuration's default for `--branch` (the
//! repository's or the user's file, shown with its source by `config`), beaten by
//! `--branch`/`--no-branch` on the command line, and followed by a batch; the
//! directories it names are linked into a task worktree.

use execute_local_task::config::Config;
use execute_local_task::profile::Origin;
use execute_local_task::result::Status;
use serde_json::json;

use crate::batch::{batch, fixture, lines, with_replies};
use crate::harness::{Run, Script, Test, spec};

const REPO_CONFIG: &str = ".execute-local-task/config.toml";
const USER_CONFIG: &str = ".config/execute-local-task/config.toml";
const BRANCH: &str = "local-task/T-001";

/// A task replacing `old` with `new` in `out.txt`, with `setup` and `args`.
fn task(setup: impl FnOnce(Test) -> Test, args: &[&str]) -> Run {
    setup(
        Test::new()
            .file("out.txt", "old\n")
            .spec(spec(
                "out.txt",
                &json!({"test_command": "grep -q new out.txt"}),
            ))
            .script(Script::code("out.txt", "new\n")),
    )
    .args(args)
    .run()
}

fn on_branch(run: &Run) {
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.branch.as_deref(), Some(BRANCH), "{}", run.stdout);
    assert_eq!(
        run.read("out.txt").as_deref(),
        Some("old\n"),
        "the tree is untouched"
    );
}

fn in_place(run: &Run) {
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.branch, None, "{}", run.stdout);
    assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
}

#[test]
fn the_repositorys_config_runs_a_task_on_its_branch_and_no_branch_beats_it() {
    let config = |test: Test| test.file(REPO_CONFIG, "[run]\nbranch = true\n");
    on_branch(&task(config, &[]));
    in_place(&task(config, &["--no-branch"]));
}

#[test]
fn the_users_config_runs_a_task_on_its_branch_and_the_repositorys_wins() {
    let user = |test: Test| test.home_file(USER_CONFIG, "[run]\nbranch = true\n");
    on_branch(&task(user, &[]));
    let both = |test: Test| user(test).file(REPO_CONFIG, "[run]\nbranch = false\n");
    in_place(&task(both, &[]));
    on_branch(&task(both, &["--branch"]));
}

/// `config` shows the key, its value and the file and line it came from.
#[test]
fn config_shows_the_run_defaults_with_their_sources() {
    let run = Test::new()
        .file(
            REPO_CONFIG,
            "[run]\nbranch = true\nlink = [\"node_modules\"]\n",
        )
        .run_with(|_| vec!["config".to_owned(), "--json".to_owned()]);
    run.assert_code(0);
    let config: Config = serde_json::from_str(&run.stdout).expect("the configuration");
    let branch = &config.run.branch;
    assert_eq!(
        (branch.value, branch.source, branch.line),
        (true, Origin::Repository, Some(2))
    );
    assert_eq!(
        config.run.link.value,
        [std::path::PathBuf::from("node_modules")]
    );

    let table = Test::new()
        .file(REPO_CONFIG, "[run]\nbranch = true\n")
        .run_with(|_| vec!["config".to_owned()]);
    table.assert_code(0);
    let line = table
        .stdout
        .lines()
        .find(|line| line.starts_with("run.branch "))
        .unwrap_or_else(|| panic!("no run.branch row:\n{}", table.stdout));
    assert!(
        line.contains("true") && line.contains("config.toml:2"),
        "{line}"
    );
    assert!(table.stdout.contains("run.link "), "{}", table.stdout);
}

/// The directories `[run] link` names reach the test in the task worktree.
#[test]
fn the_config_names_directories_to_link() {
    let run = Test::new()
        .file(
            REPO_CONFIG,
            "[run]\nbranch = true\nlink = [\"node_modules\"]\n",
        )
        .file(".gitignore", "node_modules/\n")
        .uncommitted("node_modules/lib.js", "module\n")
        .spec(spec(
            "out.txt",
            &json!({"test_command": "test -f node_modules/lib.js && grep -q new out.txt"}),
        ))
        .script(Script::code("out.txt", "new\n"))
        .run();
    run.assert_code(0);
    let result = run.result();
    assert_eq!(result.status, Status::Success, "{:?}", result.notes);
    assert_eq!(result.branch.as_deref(), Some(BRANCH));
}

/// `--link` for a run that stays in place is bad input, named; with `--no-branch` it is
/// refused by the command line's own parser.
#[test]
fn link_without_a_branch_run_is_bad_input() {
    let run = task(|test| test, &["--link", "node_modules"]);
    run.assert_code(2);
    let json = run.json();
    assert_eq!(json["error"]["kind"], "usage", "{}", run.stdout);
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--link")),
        "{}",
        run.stdout
    );
    run.assert_unchanged();
    let run = task(|test| test, &["--no-branch", "--link", "node_modules"]);
    run.assert_code(2);
    assert!(run.stderr.contains("--no-branch"), "{}", run.stderr);
}

/// A batch follows the configuration too: every task on its branch.
#[test]
fn a_batch_follows_the_configs_branch_default() {
    let specs: Vec<_> = fixture().into_iter().take(2).collect();
    let test = with_replies(Test::new()).file(REPO_CONFIG, "[run]\nbranch = true\n");
    let run = batch(test, &specs, &[]);
    run.assert_code(0);
    let (results, _) = lines(&run);
    for result in &results {
        let id = result.task_id.as_deref().unwrap_or_default();
        assert_eq!(
            result.branch.as_deref(),
            Some(format!("local-task/{id}").as_str())
        );
    }
    assert_eq!(run.read("out/a1.txt"), None, "nothing is written in place");
}
