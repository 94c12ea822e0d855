//! The integrations: `init`, `check --validate-only`, `hook install|uninstall`,
//! `completions`, the JSON Schemas against the documents the tool prints, and — with the
//! real clients, when installed (`.ci/run` installs them) — the Claude Code plugin
//! (`claude plugin validate`) and the pre-commit hook (`pre-commit try-repo`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use execute_local_task::check::CheckReport;
use execute_local_task::hook::HookReport;
use execute_local_task::init::InitReport;
use serde_json::{Value, json};

use crate::harness::{BIN, Test, git, init_and_commit, output, snapshot};

/// The repository this test suite belongs to (the plugin's files are at its root).
const SOURCE: &str = env!("CARGO_MANIFEST_DIR");

/// Runs the binary in `dir` with a hermetic environment (no model server variables).
fn bin(dir: &Path, args: &[&str]) -> std::process::Output {
    output(
        Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.join(".home-unused"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            // A port nothing listens on: discovery finds no server, quickly.
            .env("LOCAL_TASK_DISCOVERY_PORTS", "1"),
    )
}

fn stdout_json<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> T {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not the expected document ({error}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A fresh git repository with one commit.
fn scratch_repo() -> tempfile::TempDir {
    crate::harness::hermetic_umask();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("README.md"), "# project\n").unwrap();
    init_and_commit(dir.path());
    dir
}

fn actions(report: &InitReport) -> BTreeMap<String, String> {
    report
        .files
        .iter()
        .map(|f| (f.path.clone(), f.action.clone()))
        .collect()
}

#[test]
fn init_writes_config_with_the_discovered_server_example_skill_commands_and_mcp_entry() {
    let run = Test::new()
        .discovery(&[])
        .run_with(|_| vec!["init".to_owned()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: InitReport = serde_json::from_str(&run.stdout).unwrap();
    assert!(!report.dry_run);
    assert!(
        actions(&report).values().all(|a| a == "created"),
        "{:?}",
        report.files
    );
    assert_eq!(report.servers_found.len(), 1, "{report:?}");

    // The config is TOML with the scripted server as the default profile.
    let config = std::fs::read_to_string(run.repo.join(".execute-local-task/config.toml")).unwrap();
    let parsed: toml::Table = toml::from_str(&config).unwrap();
    let default = parsed["default_profile"].as_str().unwrap();
    let profile = &parsed["profiles"][default];
    assert_eq!(profile["provider"].as_str(), Some("openai"));
    assert_eq!(profile["model"].as_str(), Some(crate::harness::MODEL));
    assert!(
        profile["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert!(
        config.lines().filter(|l| l.starts_with('#')).count() >= 4,
        "{config}"
    );

    // The skill and commands are the plugin's own files, byte for byte.
    for (path, source) in [
        (
            ".claude/skills/delegate-local-task/SKILL.md",
            "skills/delegate-local-task/SKILL.md",
        ),
        (".claude/commands/delegate.md", "commands/delegate.md"),
        (".claude/commands/review-run.md", "commands/review-run.md"),
    ] {
        assert_eq!(
            std::fs::read(run.repo.join(path)).unwrap(),
            std::fs::read(Path::new(SOURCE).join(source)).unwrap(),
            "{path}"
        );
    }
    let mcp: Value =
        serde_json::from_slice(&std::fs::read(run.repo.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(
        mcp["mcpServers"]["execute-local-task"],
        json!({"command": "execute-local-task", "args": ["mcp"]})
    );

    // The example spec is valid.
    let check = bin(&run.repo, &["check", "--validate-only", "task-specs"]);
    assert_eq!(check.status.code(), Some(0));
    let checked: CheckReport = stdout_json(&check);
    assert_eq!(checked.specs.len(), 1);

    // A second init changes nothing and says so.
    let before = snapshot(&run.repo);
    let again = bin(&run.repo, &["init"]);
    assert_eq!(again.status.code(), Some(0));
    let report: InitReport = stdout_json(&again);
    assert!(
        report.files.iter().all(|f| f.action == "unchanged"
            || (f.path.ends_with("config.toml") && f.action == "exists")),
        "{:?}",
        report.files
    );
    assert_eq!(snapshot(&run.repo), before);
}

#[test]
fn init_keeps_existing_files_merges_mcp_json_and_force_replaces() {
    let repo = scratch_repo();
    let root = repo.path();
    let mine = "# my own notes on specs\n";
    std::fs::create_dir_all(root.join("task-specs")).unwrap();
    std::fs::write(root.join("task-specs/README.md"), mine).unwrap();
    let other =
        json!({"mcpServers": {"other": {"command": "other-server", "args": ["--x"]}}, "extra": 1});
    std::fs::write(root.join(".mcp.json"), other.to_string()).unwrap();

    // --dry-run lists and writes nothing.
    let before = snapshot(root);
    let dry = bin(root, &["init", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0));
    let report: InitReport = stdout_json(&dry);
    assert!(report.dry_run);
    assert_eq!(actions(&report)["task-specs/README.md"], "exists");
    assert_eq!(actions(&report)[".mcp.json"], "merged");
    assert_eq!(snapshot(root), before, "a dry run wrote something");

    let out = bin(root, &["init"]);
    assert_eq!(out.status.code(), Some(0));
    let report: InitReport = stdout_json(&out);
    assert_eq!(actions(&report)["task-specs/README.md"], "exists");
    assert_eq!(actions(&report)["task-specs/example.json"], "created");
    assert_eq!(actions(&report)[".mcp.json"], "merged");
    assert!(String::from_utf8_lossy(&out.stderr).contains("task-specs/README.md"));
    assert_eq!(
        std::fs::read_to_string(root.join("task-specs/README.md")).unwrap(),
        mine
    );
    let mcp: Value =
        serde_json::from_slice(&std::fs::read(root.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(mcp["mcpServers"]["other"], other["mcpServers"]["other"]);
    assert_eq!(mcp["extra"], 1);
    assert_eq!(
        mcp["mcpServers"]["execute-local-task"]["args"],
        json!(["mcp"])
    );

    let forced = bin(root, &["init", "--force"]);
    let report: InitReport = stdout_json(&forced);
    assert_eq!(actions(&report)["task-specs/README.md"], "replaced");
    assert_ne!(
        std::fs::read_to_string(root.join("task-specs/README.md")).unwrap(),
        mine
    );
}

#[test]
fn init_refuses_a_mcp_json_that_is_not_json_and_writes_nothing_through_a_symlink_out() {
    let repo = scratch_repo();
    let root = repo.path();
    std::fs::write(root.join(".mcp.json"), "{not json").unwrap();
    let out = bin(root, &["init"]);
    assert_eq!(out.status.code(), Some(2));
    let error: Value = stdout_json(&out);
    assert_eq!(error["error"]["kind"], "usage");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains(".mcp.json")
    );
    assert_eq!(
        std::fs::read_to_string(root.join(".mcp.json")).unwrap(),
        "{not json"
    );

    // `.claude` pointing outside the repository: nothing lands there.
    let outside = tempfile::tempdir().unwrap();
    std::fs::remove_file(root.join(".mcp.json")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join(".claude")).unwrap();
    let out = bin(root, &["init"]);
    assert_eq!(out.status.code(), Some(2));
    let error: Value = stdout_json(&out);
    assert_eq!(error["error"]["kind"], "unsafe_path");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn check_validate_only_reports_each_spec_and_exits_2_on_a_bad_one() {
    let repo = scratch_repo();
    let root = repo.path();
    std::fs::create_dir_all(root.join("specs")).unwrap();
    std::fs::copy(
        Path::new(SOURCE).join("task-specs/example.json"),
        root.join("specs/good.json"),
    )
    .unwrap();
    std::fs::write(
        root.join("specs/bad.json"),
        r#"{"task_id": "bad", "descripton": "x", "output_file": "a.py"}"#,
    )
    .unwrap();
    let out = bin(root, &["check", "--validate-only", "specs"]);
    assert_eq!(out.status.code(), Some(2));
    let report: CheckReport = stdout_json(&out);
    assert_eq!(report.status, "error");
    let bad = report.specs.iter().find(|s| !s.valid).unwrap();
    assert!(bad.spec.ends_with("bad.json"));
    assert!(
        bad.error.as_ref().unwrap().message.contains("descripton"),
        "{bad:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));

    let out = bin(root, &["check", "--validate-only", "specs/good.json"]);
    assert_eq!(out.status.code(), Some(0));
    let out = bin(root, &["check", "--validate-only", "missing.json"]);
    assert_eq!(out.status.code(), Some(2));
}

fn hook_file(root: &Path) -> PathBuf {
    root.join(".git/hooks/pre-commit")
}

/// `git commit` in `root` with the binary reachable for the hook.
fn commit(root: &Path, message: &str) -> std::process::Output {
    output(
        Command::new("git")
            .args(["commit", "-q", "-m", message])
            .current_dir(root)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
            .env("EXECUTE_LOCAL_TASK", BIN),
    )
}

#[test]
fn hook_install_validates_staged_specs_and_uninstall_removes_only_its_own() {
    let repo = scratch_repo();
    let root = repo.path();
    let out = bin(root, &["hook", "install"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: HookReport = stdout_json(&out);
    assert_eq!(report.action, "installed");
    assert_eq!(report.path, std::fs::canonicalize(hook_file(root)).unwrap());
    let mode = std::fs::metadata(hook_file(root))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
    let again: HookReport = stdout_json(&bin(root, &["hook", "install"]));
    assert_eq!(again.action, "unchanged");

    // A bad spec stops the commit; a good one (in a subdirectory) goes in.
    std::fs::create_dir_all(root.join("task-specs/sub")).unwrap();
    std::fs::write(root.join("task-specs/bad.json"), r#"{"task_id": "x"}"#).unwrap();
    git(root, &["add", "-A"]);
    let refused = commit(root, "bad spec");
    assert_ne!(refused.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bad.json"));
    std::fs::remove_file(root.join("task-specs/bad.json")).unwrap();
    std::fs::copy(
        Path::new(SOURCE).join("task-specs/example.json"),
        root.join("task-specs/sub/good.json"),
    )
    .unwrap();
    git(root, &["add", "-A"]);
    let accepted = commit(root, "good spec");
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );

    let removed: HookReport = stdout_json(&bin(root, &["hook", "uninstall"]));
    assert_eq!(removed.action, "removed");
    assert!(!hook_file(root).exists());
    let absent: HookReport = stdout_json(&bin(root, &["hook", "uninstall"]));
    assert_eq!(absent.action, "absent");
}

#[test]
fn hook_install_and_uninstall_refuse_a_foreign_hook_and_honour_core_hooks_path() {
    let repo = scratch_repo();
    let root = repo.path();
    let foreign = "#!/bin/sh\necho someone else's hook\n";
    std::fs::write(hook_file(root), foreign).unwrap();
    for verb in ["install", "uninstall"] {
        let out = bin(root, &["hook", verb]);
        assert_eq!(out.status.code(), Some(2), "{verb}");
        let error: Value = stdout_json(&out);
        assert_eq!(error["error"]["kind"], "refused", "{verb}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("pre-commit")
        );
        assert_eq!(std::fs::read_to_string(hook_file(root)).unwrap(), foreign);
    }

    git(root, &["config", "core.hooksPath", "my-hooks"]);
    let out = bin(root, &["hook", "install"]);
    assert_eq!(out.status.code(), Some(0));
    let report: HookReport = stdout_json(&out);
    assert!(report.path.ends_with("my-hooks/pre-commit"), "{report:?}");
    assert!(root.join("my-hooks/pre-commit").is_file());
    assert_eq!(std::fs::read_to_string(hook_file(root)).unwrap(), foreign);
}

#[test]
fn completions_generate_for_every_shell() {
    let repo = scratch_repo();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = bin(repo.path(), &["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("execute-local-task"), "{shell}");
        assert!(
            text.contains("rollback") && text.contains("init"),
            "{shell}"
        );
    }
    let out = bin(repo.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Every subcommand's `--help` shows an example of its use: each one `--help` lists.
#[test]
fn every_subcommand_help_has_an_example() {
    let repo = scratch_repo();
    let top = bin(repo.path(), &["--help"]);
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    assert!(top.contains("Examples:"));
    let commands = top
        .split("Commands:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a Commands list");
    // A command's line starts two spaces in; its description's next lines, further.
    let names: Vec<&str> = commands
        .lines()
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(names.len() >= 19, "{names:?}");
    for name in names {
        let out = bin(repo.path(), &[name, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{name}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:") && text.contains(&format!("execute-local-task {name}")),
            "{name}: {text}"
        );
    }
}

fn compiled(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).expect("the schema compiles")
}

fn schema(which: &str) -> Value {
    let repo = scratch_repo();
    let out = bin(repo.path(), &["schema", which]);
    assert_eq!(out.status.code(), Some(0));
    stdout_json(&out)
}

/// Every spec in the repository (examples, the demo's, the plugin's) and a bad one,
/// against `schema spec`.
#[test]
fn every_example_spec_in_the_repository_validates_against_the_spec_schema() {
    let validator = compiled(&schema("spec"));
    let mut specs = Vec::new();
    for dir in [
        "task-specs",
        "fixtures/demo",
        "skills/delegate-local-task/references",
    ] {
        for entry in std::fs::read_dir(Path::new(SOURCE).join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if path.extension().is_some_and(|e| e == "json") && text.contains("\"task_id\"") {
                specs.push(path);
            }
        }
    }
    assert!(specs.len() >= 2, "{specs:?}");
    for path in &specs {
        let value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
    let bad =
        json!({"task_id": "x", "description": "d", "output_file": "a", "output_files": ["b"]});
    assert!(
        !validator.is_valid(&bad),
        "both output fields must not validate"
    );
}

/// Results the suite's own runs print — a success, an escalation, an error before any
/// run, a usage error, a branch run — against `schema result`.
#[test]
fn results_the_binary_prints_validate_against_the_result_schema() {
    let validator = compiled(&schema("result"));
    let spec = json!({"task_id": "T-1", "description": "write a", "output_file": "a.py", "test_command": "true"});
    let runs = [
        Test::new().spec(&spec).reply("```python\nx = 1\n```").run(),
        Test::new()
            .spec(json!({"task_id": "T-2", "description": "d", "output_file": "a.py", "test_command": "false", "max_attempts": 1}))
            .reply("```python\nx = 1\n```")
            .run(),
        Test::new().spec(json!({"task_id": "T-3"})).run(),
        Test::new().spec(&spec).arg("--max-attempts").arg("9").run(),
        Test::new().spec(&spec).reply("```python\nx = 1\n```").arg("--branch").run(),
    ];
    for run in &runs {
        let value = run.json();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{}", run.stdout);
    }
}

/// Where `.ci/run` installs the real clients.
fn client(relative: &str) -> PathBuf {
    Path::new(SOURCE)
        .join(".integration-clients")
        .join(relative)
}

#[test]
#[cfg_attr(
    not(integration_clients),
    ignore = "needs the Claude Code CLI in .integration-clients/ (`.ci/run` installs it)"
)]
fn claude_plugin_validate_accepts_the_plugin_and_the_marketplace() {
    let claude = client("npm/bin/claude");
    let home = tempfile::tempdir().unwrap();
    for path in [".", ".claude-plugin/plugin.json"] {
        let out = output(
            Command::new(&claude)
                .args(["plugin", "validate", "--strict", path])
                .current_dir(SOURCE)
                .env("HOME", home.path())
                .env("DISABLE_AUTOUPDATER", "1"),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "claude plugin validate {path}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `pre-commit try-repo` builds the hook from this repository (`language: rust`: pre-commit
/// runs `cargo install` on a clone of it) and runs it on a good and a bad spec.
#[test]
#[cfg_attr(
    not(integration_clients),
    ignore = "needs the pre-commit framework in .integration-clients/ (`.ci/run` installs it)"
)]
fn pre_commit_try_repo_runs_the_validate_hook_on_good_and_bad_specs() {
    let pre_commit = client("venv/bin/pre-commit");
    let repo = scratch_repo();
    let root = repo.path();
    std::fs::create_dir_all(root.join("task-specs")).unwrap();
    std::fs::copy(
        Path::new(SOURCE).join("task-specs/example.json"),
        root.join("task-specs/good.json"),
    )
    .unwrap();
    std::fs::write(
        root.join("task-specs/bad.json"),
        r#"{"task_id": "bad", "descripton": "x"}"#,
    )
    .unwrap();
    git(root, &["add", "-A"]);
    let home = tempfile::tempdir().unwrap();
    // A target directory kept between runs, and a quick profile: pre-commit's
    // `cargo install` otherwise builds the whole tool with LTO from nothing each time.
    let target = Path::new(SOURCE).join("target/pre-commit-install");
    // No deadline: the first call builds the tool.
    let try_repo = |file: &str| {
        Command::new(&pre_commit)
            .args(["try-repo", SOURCE, "validate-task-specs", "--files", file])
            .current_dir(root)
            .env("PRE_COMMIT_HOME", home.path())
            .env("CARGO_TARGET_DIR", &target)
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("run pre-commit")
    };
    let good = try_repo("task-specs/good.json");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(good.status.code(), Some(0), "{said}");
    assert!(said.contains("Passed"), "{said}");
    let bad = try_repo("task-specs/bad.json");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(bad.status.code(), Some(1), "{said}");
    assert!(
        said.contains("Failed") && said.contains("descripton"),
        "{said}"
    );
}
