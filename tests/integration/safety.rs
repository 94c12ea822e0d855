//! Write safety end to end: hostile paths (from the spec's outputs, its context files and
//! the labels a model puts on blocks), rollback, the repository lock, dirty targets,
//! shrinking, and SIGKILL at every durable step of a write.
//!
//! Every scene has a sentinel directory next to the repository; a test that feeds hostile
//! paths checks that it and the repository are untouched.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use execute_local_task::result::{Outcome, Status, TaskResult};
use serde_json::{Value, json};

use crate::harness::{
    BIN, MODEL, ModelServer, Script, finish, hermetic_umask, init_and_commit, output,
};

use execute_local_task::write::CRASH_AT_ENV;

/// A repository with a sentinel directory beside it.
struct Scene {
    dir: tempfile::TempDir,
    repo: PathBuf,
    outside: PathBuf,
}

/// What a process left: exit code (None when killed by a signal) and its output.
struct Out {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn from(output: &Output) -> Self {
        Self {
            code: output.status.code(),
            signal: output.status.signal(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn result(&self) -> TaskResult {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not a result ({error}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}):\n{}", self.stdout))
    }

    /// The `error.kind` of a result or of a `rollback` error.
    fn error_kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Scene {
    /// A committed repository with a README, a `src/` directory and a file with a mode,
    /// and a sentinel directory outside it.
    fn new() -> Self {
        hermetic_umask();
        let dir = tempfile::tempdir().expect("a temp dir");
        let repo = dir.path().join("repo");
        let outside = dir.path().join("outside");
        fs::create_dir_all(repo.join("src")).unwrap();
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(repo.join("README.md"), "# project\n").unwrap();
        fs::write(repo.join("src/lib.py"), "X = 1\n").unwrap();
        fs::write(outside.join("secret.txt"), "TOP-SECRET-OUTSIDE\n").unwrap();
        fs::write(outside.join("sub/a.txt"), "outside a\n").unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        Self { dir, repo, outside }
    }

    fn file(&self, path: &str, content: &str) -> &Self {
        let path = self.repo.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        self
    }

    fn mode(&self, path: &str, mode: u32) -> &Self {
        fs::set_permissions(self.repo.join(path), fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    fn link(&self, target: impl AsRef<Path>, link: &str) -> &Self {
        let link = self.repo.join(link);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(target, link).unwrap();
        self
    }

    fn commit(&self) -> &Self {
        init_and_commit(&self.repo);
        self
    }

    fn git_dir(&self) -> PathBuf {
        self.repo.join(".git")
    }

    /// The binary in the repository, pointed at `server`, with a hermetic environment.
    fn command(&self, args: &[&str], server: &ModelServer, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(&self.repo)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"))
            .env("LANG", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("LOCAL_TASK_ENDPOINT", &server.url)
            .env("LOCAL_TASK_MODEL", MODEL)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    /// Writes `spec` beside the repository and starts a run of it against its own server.
    fn start(
        &self,
        name: &str,
        spec: &Value,
        script: Vec<Script>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Child, ModelServer) {
        let spec_path = self.dir.path().join(format!("{name}.json"));
        fs::write(&spec_path, serde_json::to_string_pretty(spec).unwrap()).unwrap();
        let server = ModelServer::start(script, vec![MODEL.to_owned()]);
        let mut all = vec![spec_path.to_str().unwrap()];
        all.extend(args);
        let child = self
            .command(&all, &server, env)
            .spawn()
            .expect("start the binary");
        (child, server)
    }

    fn run(&self, spec: &Value, script: Vec<Script>, args: &[&str]) -> (Out, ModelServer) {
        self.run_env(spec, script, args, &[])
    }

    fn run_env(
        &self,
        spec: &Value,
        script: Vec<Script>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Out, ModelServer) {
        let (child, server) = self.start("spec", spec, script, args, env);
        let output = finish(child);
        (Out::from(&output), server)
    }

    /// Runs a subcommand such as `rollback`.
    fn tool(&self, args: &[&str]) -> Out {
        self.tool_env(args, &[])
    }

    fn tool_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let server = ModelServer::start(Vec::new(), Vec::new());
        Out::from(&output(&mut self.command(args, &server, env)))
    }

    fn read(&self, path: &str) -> Option<String> {
        fs::read_to_string(self.repo.join(path)).ok()
    }
}

/// Everything under `root` but its `.git`, without following symlinks: files with their mode
/// and bytes, symlinks with their target, directories. Byte for byte, mode for mode.
fn state(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if dir == root && entry.file_name() == ".git" {
                continue;
            }
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let metadata = fs::symlink_metadata(&path).unwrap();
            let kind = metadata.file_type();
            let description = if kind.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if kind.is_file() {
                format!(
                    "file {:o} {:?}",
                    metadata.permissions().mode() & 0o7777,
                    String::from_utf8_lossy(&fs::read(&path).unwrap())
                )
            } else {
                "special".to_owned()
            };
            out.insert(relative, description);
        }
    }
    out
}

/// The repository and the sentinel directory, to compare before and after.
fn both(scene: &Scene) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    (state(&scene.repo), state(&scene.outside))
}

fn one_file_spec(output: &str, extra: &Value) -> Value {
    let mut spec =
        json!({"task_id": "T-safe", "description": "Do the task.", "output_file": output});
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    spec
}

// ---------------------------------------------------------------------------------------
// Hostile paths
// ---------------------------------------------------------------------------------------

/// Paths refused by their text alone.
fn lexical_corpus(outside: &Path) -> Vec<String> {
    let mut paths: Vec<String> = [
        "",
        ".",
        "/",
        "//x",
        "/etc/passwd",
        "/tmp/pwned.txt",
        "..",
        "../pwned.txt",
        "../outside/secret.txt",
        "a/../../pwned.txt",
        "src/../../outside/pwned.txt",
        "./.git/../pwned.txt",
        ".git",
        ".git/config",
        ".git/hooks/pre-commit",
        ".GiT/hooks/pre-commit",
        ".GIT/config",
        "src/.git/config",
        "sub/.Git/HEAD",
        ".git./config",
        ".git /config",
        ".git. . /config",
        ".g\u{200c}it/config",
        "\u{feff}.git/config",
        ".gi\u{200d}t/hooks/post-checkout",
        "GIT~1/config",
        "git~1/hooks/pre-commit",
        ".git::$INDEX_ALLOCATION/config",
        "src\\..\\..\\pwned.txt",
        "a\\b.txt",
        "a\0b.txt",
        "C:/pwned.txt",
        "c:pwned.txt",
        "~/pwned.txt",
        "~root/pwned.txt",
        "dir/",
        "src/.",
        "new\nline.txt",
        "esc\u{1b}[2J.txt",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    paths.push(outside.join("pwned.txt").display().to_string());
    paths.push(outside.join("secret.txt").display().to_string());
    paths
}

/// Builds symlinks and other traps in the repository; returns the paths that must be
/// refused because of them.
fn build_traps(scene: &Scene) -> Vec<String> {
    let outside = scene.outside.clone();
    let git = scene.git_dir();
    scene
        .link("..", "up")
        .link(&outside, "abs-out")
        .link("../outside", "rel-out")
        .link("../outside/sub", "rel-out-sub")
        .link("chain-2", "chain-1")
        .link("chain-3", "chain-2")
        .link("../outside", "chain-3")
        .link("../../outside", "src/deep-out")
        .link(".git", "g")
        .link(".git/hooks", "hooks")
        .link(&git, "abs-git")
        .link("../.git", "src/git-up")
        .link("src/git-up", "via-src")
        .link("README.md", "readme-link")
        .link("loop-2", "loop-1")
        .link("loop-1", "loop-2")
        .link("missing-dir", "dangling-dir")
        .link(".", "self");
    nix::unistd::mkfifo(
        &scene.repo.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    [
        "up/pwned.txt",
        "up/outside/secret.txt",
        "abs-out/pwned.txt",
        "abs-out/secret.txt",
        "rel-out/pwned.txt",
        "rel-out-sub/a.txt",
        "chain-1/pwned.txt",
        "chain-2/secret.txt",
        "src/deep-out/pwned.txt",
        "src/deep-out/sub/new/pwned.txt",
        "g/hooks/pre-commit",
        "g/config",
        "hooks/pre-commit",
        "abs-git/hooks/pre-commit",
        "src/git-up/config",
        "via-src/hooks/post-merge",
        "self/up/pwned.txt",
        "self/g/config",
        "README.md/pwned.txt",
        "readme-link/pwned.txt",
        "loop-1/pwned.txt",
        "src",
        "fifo",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect()
}

fn hostile_scene() -> (Scene, Vec<String>) {
    let scene = Scene::new();
    let mut corpus = lexical_corpus(&scene.outside);
    corpus.extend(build_traps(&scene));
    scene.commit();
    (scene, corpus)
}

#[test]
fn hostile_output_paths_are_refused_and_nothing_is_written() {
    let (scene, corpus) = hostile_scene();
    assert!(corpus.len() >= 60, "{}", corpus.len());
    let before = both(&scene);
    for path in &corpus {
        let (out, server) = scene.run(
            &one_file_spec(path, &json!({})),
            vec![Script::code(path, "pwned\n")],
            &[],
        );
        out.assert_code(2);
        let result = out.result();
        assert_eq!(result.status, Status::Error, "{path:?}");
        let kind = out.error_kind();
        assert!(kind == "spec" || kind == "unsafe_path", "{path:?}: {kind}");
        assert!(
            server.requests().is_empty(),
            "{path:?}: the model was called"
        );
        assert_eq!(both(&scene), before, "{path:?} changed something");
    }
    // A spec with several outputs is refused as a whole when one of them is hostile.
    for path in &corpus {
        let spec =
            json!({"task_id": "T-safe", "description": "d", "output_files": ["ok.txt", path]});
        let (out, server) = scene.run(&spec, vec![], &[]);
        out.assert_code(2);
        assert!(server.requests().is_empty(), "{path:?}");
        assert_eq!(both(&scene), before, "{path:?} changed something");
    }
}

#[test]
fn hostile_context_files_are_refused_and_nothing_is_read_or_written() {
    let (scene, mut corpus) = hostile_scene();
    // Reading follows a final symlink only while it stays inside.
    scene.link("../outside/secret.txt", "secret-link");
    scene.link(scene.outside.join("secret.txt"), "secret-abs-link");
    scene.link(".git/config", "config-link");
    corpus.extend(["secret-link", "secret-abs-link", "config-link"].map(str::to_owned));
    let before = both(&scene);
    for path in &corpus {
        let (out, server) = scene.run(
            &one_file_spec("ok.txt", &json!({"context_files": [path]})),
            vec![Script::code("ok.txt", "ok\n")],
            &[],
        );
        out.assert_code(2);
        let kind = out.error_kind();
        assert!(
            ["spec", "unsafe_path", "context"].contains(&kind.as_str()),
            "{path:?}: {kind}"
        );
        assert!(
            server.requests().is_empty(),
            "{path:?}: the model was called"
        );
        assert!(!out.stdout.contains("TOP-SECRET"), "{path:?}");
        assert_eq!(both(&scene), before, "{path:?} changed something");
    }
}

#[test]
fn globs_never_reach_through_symlinks() {
    let (scene, _) = hostile_scene();
    scene.link("../outside/secret.txt", "secret-link.txt");
    scene.file("notes.txt", "inside notes\n");
    let (out, server) = scene.run(
        &one_file_spec("ok.txt", &json!({"context_files": ["**/*.txt", "**/*.md"]})),
        vec![Script::code("ok.txt", "ok\n")],
        &["--force"],
    );
    out.assert_code(0);
    let prompt = server.requests()[0].last_user_message();
    assert!(prompt.contains("# project"), "{prompt}");
    assert!(prompt.contains("inside notes"), "{prompt}");
    assert!(!prompt.contains("TOP-SECRET"), "{prompt}");
    assert!(!prompt.contains("outside a"), "{prompt}");
}

#[test]
fn hostile_block_labels_in_a_reply_write_only_the_spec_outputs() {
    let (scene, corpus) = hostile_scene();
    let before = both(&scene);
    let hostile_blocks: String = corpus
        .iter()
        .filter(|p| !p.contains(['\n', '`', '\0']) && !p.trim().is_empty())
        .map(|p| format!("```text path={p}\npwned\n```\n"))
        .collect::<Vec<_>>()
        .concat();

    // Only hostile labels: the requested files have no block, nothing is written.
    let spec = json!({"task_id": "T-safe", "description": "d", "output_files": ["a.txt", "b.txt"], "max_attempts": 1});
    let (out, _) = scene.run(&spec, vec![Script::reply(&hostile_blocks)], &[]);
    out.assert_code(1);
    assert_eq!(out.result().attempts[0].outcome, Outcome::NoCode);
    assert_eq!(both(&scene), before);

    // Hostile labels around the real ones: only the spec's outputs are written.
    let reply = format!(
        "{hostile_blocks}```text path=a.txt\nA\n```\n```text path=b.txt\nB\n```\n{hostile_blocks}"
    );
    let (out, _) = scene.run(&spec, vec![Script::reply(&reply)], &[]);
    out.assert_code(0);
    let (repo, outside) = both(&scene);
    assert_eq!(outside, before.1, "the sentinel changed");
    let mut expected = before.0.clone();
    expected.insert("a.txt".to_owned(), "file 644 \"A\\n\"".to_owned());
    expected.insert("b.txt".to_owned(), "file 644 \"B\\n\"".to_owned());
    assert_eq!(repo, expected);
    assert!(
        out.result().attempts[0]
            .notes
            .iter()
            .any(|n| n.contains("a file the task did not ask for")),
        "{:?}",
        out.result().attempts[0].notes
    );

    // One hostile label in a single-file task: the block goes to the spec's output.
    scene.tool(&["rollback", "--last"]).assert_code(0);
    for label in [
        "../outside/pwned.txt",
        "/etc/passwd",
        ".git/hooks/pre-commit",
        "up/pwned.txt",
    ] {
        let (out, _) = scene.run(
            &one_file_spec("c.txt", &json!({})),
            vec![Script::reply(&format!(
                "```text path={label}\npwned\n```\n"
            ))],
            &[],
        );
        out.assert_code(0);
        assert_eq!(scene.read("c.txt").as_deref(), Some("pwned\n"), "{label}");
        assert_eq!(state(&scene.outside), before.1, "{label}");
        scene.tool(&["rollback", "--last"]).assert_code(0);
        assert_eq!(both(&scene), before, "{label}");
    }
}

#[test]
fn look_alikes_of_git_are_written_like_any_name() {
    let scene = Scene::new();
    scene.commit();
    for path in [
        ".g\u{0456}t/config",
        ".gitignore",
        ".github/workflows/ci.yml",
        "git/x.txt",
    ] {
        let (out, _) = scene.run(
            &one_file_spec(path, &json!({})),
            vec![Script::code(path, "ok\n")],
            &["--force"],
        );
        out.assert_code(0);
        assert_eq!(scene.read(path).as_deref(), Some("ok\n"), "{path}");
    }
}

#[test]
fn a_symlink_as_the_target_is_replaced_never_followed_and_rollback_restores_it() {
    let scene = Scene::new();
    scene
        .link("../outside/secret.txt", "secret-link.txt")
        .link("nowhere", "dangling.txt")
        .commit();
    let before = both(&scene);
    let spec = json!({"task_id": "T-safe", "description": "d",
        "output_files": ["secret-link.txt", "dangling.txt"]});
    let (out, server) = scene.run(
        &spec,
        vec![Script::reply(
            "```text path=secret-link.txt\nmine\n```\n```text path=dangling.txt\nalso mine\n```\n",
        )],
        &[],
    );
    out.assert_code(0);
    // The outside file was neither read into the prompt nor written.
    assert!(
        !server.requests()[0]
            .last_user_message()
            .contains("TOP-SECRET")
    );
    assert_eq!(state(&scene.outside), before.1);
    let meta = fs::symlink_metadata(scene.repo.join("secret-link.txt")).unwrap();
    assert!(meta.is_file());
    assert_eq!(scene.read("secret-link.txt").as_deref(), Some("mine\n"));
    assert_eq!(scene.read("dangling.txt").as_deref(), Some("also mine\n"));

    let undo = scene.tool(&["rollback", "--last"]);
    undo.assert_code(0);
    assert_eq!(both(&scene), before);
    assert_eq!(
        undo.json()["restored"],
        json!(["secret-link.txt", "dangling.txt"])
    );
}

#[test]
fn a_directory_swapped_for_an_escaping_symlink_after_the_run_stops_rollback() {
    let scene = Scene::new();
    scene.file("sub/keep.txt", "keep old\n").commit();
    let spec = json!({"task_id": "T-safe", "description": "d",
        "output_files": ["sub/keep.txt", "sub/new.txt"]});
    let (out, _) = scene.run(
        &spec,
        vec![Script::reply(
            "```text path=sub/keep.txt\nkeep new\n```\n```text path=sub/new.txt\nnew\n```\n",
        )],
        &[],
    );
    out.assert_code(0);
    // Someone replaces `sub` with a symlink to a directory outside holding the same names.
    fs::rename(scene.repo.join("sub"), scene.outside.join("moved-sub")).unwrap();
    scene.link("../outside/moved-sub", "sub");
    let outside_before = state(&scene.outside);
    for args in [
        &["rollback", "--last"][..],
        &["rollback", "--last", "--force"],
    ] {
        let undo = scene.tool(args);
        undo.assert_code(2);
        assert!(
            undo.error_message().contains("sub/keep.txt")
                || undo.error_message().contains("sub/new.txt"),
            "{}",
            undo.error_message()
        );
        assert_eq!(state(&scene.outside), outside_before, "{args:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Rollback
// ---------------------------------------------------------------------------------------

fn three_file_scene() -> (Scene, Value, Script) {
    let scene = Scene::new();
    scene
        .file("tool.sh", "#!/bin/sh\necho old tool\n")
        .mode("tool.sh", 0o755)
        .file("data.txt", "old data\n")
        .mode("data.txt", 0o640)
        .commit();
    let spec = json!({"task_id": "T-roll", "description": "d",
        "output_files": ["tool.sh", "data.txt", "new/nested/dir/made.txt"]});
    let reply = Script::reply(
        "```sh path=tool.sh\n#!/bin/sh\necho new tool\n```\n\
         ```text path=data.txt\nnew data\n```\n\
         ```text path=new/nested/dir/made.txt\nmade\n```\n",
    );
    (scene, spec, reply)
}

#[test]
fn rollback_restores_bytes_and_modes_and_removes_created_files_and_dirs() {
    let (scene, spec, reply) = three_file_scene();
    let before = both(&scene);
    let (out, _) = scene.run(&spec, vec![reply], &[]);
    out.assert_code(0);
    let run_id = out.result().run_id;
    let after = state(&scene.repo);
    assert_eq!(
        after["tool.sh"],
        "file 755 \"#!/bin/sh\\necho new tool\\n\""
    );
    assert_eq!(after["data.txt"], "file 640 \"new data\\n\"");
    assert_eq!(after["new/nested/dir/made.txt"], "file 644 \"made\\n\"");
    // Backups of bytes and mode live in the git directory, with a manifest.
    let run_dir = scene
        .git_dir()
        .join("execute-local-task/runs")
        .join(&run_id);
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(run_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"][0]["prior"]["mode"], json!(0o755));
    assert_eq!(
        manifest["created_dirs"],
        json!(["new", "new/nested", "new/nested/dir"])
    );
    let backup = manifest["files"][0]["prior"]["backup"].as_str().unwrap();
    assert_eq!(
        fs::read_to_string(run_dir.join(backup)).unwrap(),
        "#!/bin/sh\necho old tool\n"
    );

    let undo = scene.tool(&["rollback", "--last"]);
    undo.assert_code(0);
    assert_eq!(both(&scene), before);
    let report = undo.json();
    assert_eq!(report["run_id"], json!(run_id));
    assert_eq!(report["task_id"], json!("T-roll"));
    assert_eq!(report["restored"], json!(["tool.sh", "data.txt"]));
    assert_eq!(report["removed"], json!(["new/nested/dir/made.txt"]));
    assert_eq!(
        report["removed_dirs"],
        json!(["new/nested/dir", "new/nested", "new"])
    );
    assert!(undo.stderr.contains(&run_id), "{}", undo.stderr);

    // Undone once: by id it says so, and --last (still this run) has nothing to undo.
    let again = scene.tool(&["rollback", &run_id]);
    again.assert_code(2);
    assert_eq!(again.error_kind(), "rollback");
    assert!(again.error_message().contains("already rolled back"));
    assert!(again.error_message().contains(&run_id));
    let last = scene.tool(&["rollback", "--last"]);
    last.assert_code(0);
    let why = last.json()["nothing_to_undo"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("already rolled back"), "{}", last.stdout);
    assert_eq!(both(&scene), before);
}

#[test]
fn rollback_keeps_directories_that_hold_other_files() {
    let (scene, spec, reply) = three_file_scene();
    let (out, _) = scene.run(&spec, vec![reply], &[]);
    out.assert_code(0);
    fs::write(scene.repo.join("new/nested/mine.txt"), "not the run's\n").unwrap();
    let undo = scene.tool(&["rollback", "--last"]);
    undo.assert_code(0);
    assert_eq!(undo.json()["removed_dirs"], json!(["new/nested/dir"]));
    assert_eq!(
        scene.read("new/nested/mine.txt").as_deref(),
        Some("not the run's\n")
    );
}

#[test]
fn rollback_refuses_files_changed_since_the_run_unless_forced() {
    let (scene, spec, reply) = three_file_scene();
    let before = both(&scene);
    let (out, _) = scene.run(&spec, vec![reply], &[]);
    out.assert_code(0);
    let run_id = out.result().run_id;
    fs::write(scene.repo.join("data.txt"), "edited by hand\n").unwrap();
    fs::write(scene.repo.join("new/nested/dir/made.txt"), "edited too\n").unwrap();
    let edited = both(&scene);

    let undo = scene.tool(&["rollback", &run_id]);
    undo.assert_code(2);
    assert_eq!(undo.error_kind(), "rollback");
    let message = undo.error_message();
    assert!(message.contains(&run_id), "{message}");
    assert!(message.contains("`data.txt`"), "{message}");
    assert!(message.contains("`new/nested/dir/made.txt`"), "{message}");
    assert!(message.contains("--force"), "{message}");
    assert!(!message.contains("tool.sh"), "{message}");
    assert!(undo.stderr.contains("data.txt"), "{}", undo.stderr);
    assert_eq!(both(&scene), edited, "a refused rollback changed the tree");

    scene.tool(&["rollback", &run_id, "--force"]).assert_code(0);
    assert_eq!(both(&scene), before);
}

#[test]
fn rollback_of_an_unknown_run_names_it() {
    let scene = Scene::new();
    scene.commit();
    let undo = scene.tool(&["rollback", "20990101T000000000Z-beef"]);
    undo.assert_code(2);
    assert_eq!(undo.error_kind(), "rollback");
    assert!(
        undo.error_message().contains("20990101T000000000Z-beef"),
        "{}",
        undo.error_message()
    );
    let bad = scene.tool(&["rollback", "../../etc"]);
    bad.assert_code(2);
    assert!(
        bad.error_message().contains("not a run id"),
        "{}",
        bad.error_message()
    );
}

// ---------------------------------------------------------------------------------------
// Dirty targets and shrinking
// ---------------------------------------------------------------------------------------

#[test]
fn a_target_with_uncommitted_changes_is_not_overwritten_without_force() {
    let scene = Scene::new();
    scene.file("calc.py", "def f():\n    return 1\n").commit();
    scene.file("calc.py", "def f():\n    return 2  # my edit\n");
    scene.file("untracked.py", "mine = True\n");
    let before = both(&scene);
    for path in ["calc.py", "untracked.py"] {
        let (out, server) = scene.run(
            &one_file_spec(path, &json!({})),
            vec![Script::code(path, "def f():\n    return 3\n")],
            &[],
        );
        let message = assert_needs_force(&out, &server, path);
        assert!(message.contains("commit"), "{message}");
        assert_eq!(both(&scene), before);
    }

    let (out, _) = scene.run(
        &one_file_spec("calc.py", &json!({})),
        vec![Script::code("calc.py", "def f():\n    return 3\n")],
        &["--force"],
    );
    out.assert_code(0);
    let result = out.result();
    let backup = result.files[0].backup.as_deref().unwrap();
    assert_eq!(
        fs::read_to_string(backup).unwrap(),
        "def f():\n    return 2  # my edit\n"
    );
    scene.tool(&["rollback", "--last"]).assert_code(0);
    assert_eq!(both(&scene), before, "the uncommitted edit is back");
}

#[test]
fn shrinking_a_file_below_half_needs_allow_shrink() {
    let big: String = (0..20)
        .map(|i| format!("line number {i}\n"))
        .collect::<Vec<_>>()
        .concat();
    let scene = Scene::new();
    scene.file("big.txt", &big).commit();
    let before = both(&scene);
    let (out, _) = scene.run(
        &one_file_spec("big.txt", &json!({"max_attempts": 1})),
        vec![Script::code("big.txt", "tiny\n")],
        &[],
    );
    out.assert_code(1);
    let result = out.result();
    assert_eq!(result.status, Status::Escalate);
    assert_eq!(result.attempts[0].outcome, Outcome::GuardRefused);
    let error = result.attempts[0].error.clone().unwrap();
    assert!(error.contains("allow_shrink"), "{error}");
    assert!(error.contains("big.txt"), "{error}");
    assert_eq!(both(&scene), before);

    let (out, _) = scene.run(
        &one_file_spec("big.txt", &json!({"allow_shrink": true})),
        vec![Script::code("big.txt", "tiny\n")],
        &[],
    );
    out.assert_code(0);
    assert_eq!(scene.read("big.txt").as_deref(), Some("tiny\n"));
}

#[test]
fn a_test_command_that_reformats_its_target_is_an_edit_the_run_keeps() {
    let scene = Scene::new();
    scene.file("out.txt", "original\n").commit();
    let before = both(&scene);
    // Like `black x.py && pytest`: the test rewrites the file the run wrote. After a
    // failing test that is an editor's save as far as anyone can tell: kept, no repair.
    let spec = one_file_spec(
        "out.txt",
        &json!({"test_command": "echo formatted >> out.txt; grep -q good out.txt"}),
    );
    let (out, server) = scene.run(
        &spec,
        vec![
            Script::code("out.txt", "bad\n"),
            Script::code("out.txt", "good\n"),
        ],
        &[],
    );
    out.assert_code(2);
    assert_eq!(out.error_kind(), "conflict");
    assert_eq!(scene.read("out.txt").as_deref(), Some("bad\nformatted\n"));
    assert_eq!(server.requests().len(), 1);

    // After a passing test the reformatted file stays, as the run's result: rollback
    // undoes it as the run's own.
    scene.file("out.txt", "original\n");
    let (out, _) = scene.run(&spec, vec![Script::code("out.txt", "good\n")], &[]);
    out.assert_code(0);
    assert_eq!(scene.read("out.txt").as_deref(), Some("good\nformatted\n"));
    scene.tool(&["rollback", "--last"]).assert_code(0);
    assert_eq!(both(&scene), before);
}

// ---------------------------------------------------------------------------------------
// The repository lock
// ---------------------------------------------------------------------------------------

fn hold_lock(scene: &Scene) -> File {
    let dir = scene.git_dir().join("execute-local-task");
    fs::create_dir_all(&dir).unwrap();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .unwrap();
    file.lock().unwrap();
    file
}

/// Waits until `server` got a chat request: its run is past the model call and about to
/// take the lock. Polls a condition, not a clock.
fn wait_for_request(server: &ModelServer, child: &mut Child) {
    while server.requests().is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before calling the model"
        );
        std::thread::yield_now();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_held_lock_past_the_timeout_is_a_clear_error() {
    let scene = Scene::new();
    scene.commit();
    let before = both(&scene);
    let lock = hold_lock(&scene);
    let (out, _) = scene.run(
        &one_file_spec("a.txt", &json!({})),
        vec![Script::code("a.txt", "a\n")],
        &["--lock-timeout", "0"],
    );
    out.assert_code(2);
    assert_eq!(out.error_kind(), "lock");
    let message = out.error_message();
    assert!(
        message.contains("another execute-local-task run"),
        "{message}"
    );
    assert!(message.contains("--lock-timeout"), "{message}");
    assert!(message.contains("nothing was written"), "{message}");
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert_eq!(both(&scene), before);
    drop(lock);
}

#[test]
fn concurrent_runs_on_one_repository_are_serialised_and_both_land() {
    let scene = Scene::new();
    scene.commit();
    let lock = hold_lock(&scene);
    let (mut first, first_server) = scene.start(
        "first",
        &one_file_spec(
            "one.txt",
            &json!({"task_id": "T-one", "test_command": TRACED_TEST.replace("FILE", "one.txt")}),
        ),
        vec![Script::code("one.txt", "one\n")],
        &[],
        &[],
    );
    let (mut second, second_server) = scene.start(
        "second",
        &one_file_spec(
            "two.txt",
            &json!({"task_id": "T-two", "test_command": TRACED_TEST.replace("FILE", "two.txt")}),
        ),
        vec![Script::code("two.txt", "two\n")],
        &[],
        &[],
    );
    wait_for_request(&first_server, &mut first);
    wait_for_request(&second_server, &mut second);
    // Both have their reply and wait for the lock; neither has written.
    assert!(scene.read("one.txt").is_none() && scene.read("two.txt").is_none());
    drop(lock);
    for child in [first, second] {
        let out = Out::from(&finish(child));
        out.assert_code(0);
    }
    assert_eq!(scene.read("one.txt").as_deref(), Some("one\n"));
    assert_eq!(scene.read("two.txt").as_deref(), Some("two\n"));
    // The lock is held through each test: one test ends before the other starts.
    let trace = fs::read_to_string(scene.dir.path().join("trace")).unwrap();
    assert_eq!(trace, "start\nend\nstart\nend\n", "the tests overlapped");
}

/// A test command that marks its start and end in a trace beside the repository, taking a
/// moment in between (its own work, not a wait of the test's), so overlapping tests show.
const TRACED_TEST: &str =
    "echo start >> ../trace && sleep 0.3 && echo end >> ../trace && test -f FILE";

#[test]
fn rollback_last_undoes_the_newest_run() {
    let scene = Scene::new();
    scene.file("a.txt", "a0\n").file("b.txt", "b0\n").commit();
    for (id, path, text) in [("T-a", "a.txt", "a1\n"), ("T-b", "b.txt", "b1\n")] {
        let (out, _) = scene.run(
            &one_file_spec(path, &json!({"task_id": id})),
            vec![Script::code(path, text)],
            &["--force"],
        );
        out.assert_code(0);
    }
    scene.tool(&["rollback", "--last"]).assert_code(0);
    assert_eq!(
        scene.read("b.txt").as_deref(),
        Some("b0\n"),
        "the newest run is undone"
    );
    assert_eq!(
        scene.read("a.txt").as_deref(),
        Some("a1\n"),
        "the older run stays"
    );
}

#[test]
fn rollback_waits_for_the_repository_lock() {
    let scene = Scene::new();
    scene.file("a.txt", "a0\n").commit();
    let (out, _) = scene.run(
        &one_file_spec("a.txt", &json!({})),
        vec![Script::code("a.txt", "a1\n")],
        &[],
    );
    out.assert_code(0);
    let lock = hold_lock(&scene);
    let undo = scene.tool(&["rollback", "--last", "--lock-timeout", "0"]);
    undo.assert_code(2);
    assert_eq!(undo.error_kind(), "lock");
    assert_eq!(scene.read("a.txt").as_deref(), Some("a1\n"));
    drop(lock);
}

#[test]
fn two_runs_replacing_one_file_never_lose_an_update() {
    let scene = Scene::new();
    scene.file("shared.txt", "version 0\n").commit();
    let lock = hold_lock(&scene);
    let spec = |id: &str| one_file_spec("shared.txt", &json!({"task_id": id}));
    let (mut first, first_server) = scene.start(
        "first",
        &spec("T-one"),
        vec![Script::code("shared.txt", "version 1 from one\n")],
        &[],
        &[],
    );
    let (mut second, second_server) = scene.start(
        "second",
        &spec("T-two"),
        vec![Script::code("shared.txt", "version 1 from two\n")],
        &[],
        &[],
    );
    wait_for_request(&first_server, &mut first);
    wait_for_request(&second_server, &mut second);
    drop(lock);
    let outs: Vec<Out> = [first, second]
        .into_iter()
        .map(|child| Out::from(&finish(child)))
        .collect();
    let winners: Vec<&Out> = outs.iter().filter(|o| o.code == Some(0)).collect();
    let losers: Vec<&Out> = outs.iter().filter(|o| o.code != Some(0)).collect();
    assert_eq!(
        (winners.len(), losers.len()),
        (1, 1),
        "one run writes, one stops"
    );
    losers[0].assert_code(2);
    assert_eq!(losers[0].error_kind(), "conflict");
    assert!(
        losers[0].error_message().contains("`shared.txt` changed"),
        "{}",
        losers[0].error_message()
    );
    let winner = &winners[0].result().files[0];
    let content = scene.read("shared.txt").unwrap();
    assert!(
        winner.diff.contains(content.trim_end()),
        "the winner's bytes are there"
    );
}

// ---------------------------------------------------------------------------------------
// SIGKILL at every durable step
// ---------------------------------------------------------------------------------------

const OLD_TOOL: &str = "#!/bin/sh\necho old\n";
const NEW_TOOL_1: &str = "#!/bin/sh\necho first try\n";
const NEW_TOOL_2: &str = "#!/bin/sh\necho second try\n";
const NEW_MADE_1: &str = "made 1\n";
const NEW_MADE_2: &str = "made 2\n";

fn reply(tool: &str, made: &str) -> Script {
    Script::reply(&format!(
        "```sh path=tool.sh\n{tool}```\n```text path=new/deep/made.txt\n{made}```\n"
    ))
}

/// Runs the two-file task (one modified executable, one created file in a new directory)
/// with a kill at step `k`; `repair` adds a failing first attempt, so the kill can also
/// land while the tree is restored between attempts. True when the run got past step `k`.
fn kill_at(k: u32, repair: bool) -> bool {
    let scene = Scene::new();
    scene
        .file("tool.sh", OLD_TOOL)
        .mode("tool.sh", 0o755)
        .commit();
    let before = both(&scene);
    let mut spec = json!({"task_id": "T-kill", "description": "d",
        "output_files": ["tool.sh", "new/deep/made.txt"]});
    let mut script = vec![reply(NEW_TOOL_1, NEW_MADE_1)];
    if repair {
        spec["test_command"] = json!("grep -q second tool.sh");
        script.push(reply(NEW_TOOL_2, NEW_MADE_2));
    }
    let (out, _) = scene.run_env(&spec, script, &[], &[(CRASH_AT_ENV, &k.to_string())]);
    if out.code == Some(0) {
        return false;
    }
    assert_eq!(
        out.signal,
        Some(9),
        "step {k}: not killed\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );

    // Each target holds its old or a new content, whole; nothing else is in the tree.
    let tree = state(&scene.repo);
    let tool = &tree["tool.sh"];
    assert!(
        [OLD_TOOL, NEW_TOOL_1, NEW_TOOL_2]
            .iter()
            .any(|t| *tool == format!("file 755 {t:?}")),
        "step {k}: tool.sh is {tool}"
    );
    if let Some(made) = tree.get("new/deep/made.txt") {
        assert!(
            [NEW_MADE_1, NEW_MADE_2]
                .iter()
                .any(|t| *made == format!("file 644 {t:?}")),
            "step {k}: made.txt is {made}"
        );
    }
    let allowed = [
        "README.md",
        "src",
        "src/lib.py",
        "tool.sh",
        "new",
        "new/deep",
        "new/deep/made.txt",
    ];
    for path in tree.keys() {
        assert!(
            allowed.contains(&path.as_str()),
            "step {k}: stray `{path}` in the tree"
        );
    }
    assert_eq!(state(&scene.outside), before.1);

    // The backup, wherever the manifest names one, holds the old bytes.
    let runs = scene.git_dir().join("execute-local-task/runs");
    if let Ok(entries) = fs::read_dir(&runs) {
        for entry in entries.flatten() {
            let Ok(text) = fs::read_to_string(entry.path().join("manifest.json")) else {
                continue;
            };
            let manifest: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("step {k}: a torn manifest ({e}): {text}"));
            for file in manifest["files"].as_array().unwrap() {
                if let Some(backup) = file["prior"]["backup"].as_str() {
                    assert_eq!(
                        fs::read_to_string(entry.path().join(backup)).unwrap(),
                        OLD_TOOL,
                        "step {k}: the backup"
                    );
                }
            }
        }
    }

    // Rollback puts the tree back exactly, or there was nothing left to undo.
    let undo = scene.tool(&["rollback", "--last"]);
    match undo.code {
        Some(0) => {}
        Some(2) => assert!(
            undo.error_message().contains("no run"),
            "step {k}: {}",
            undo.error_message()
        ),
        _ => panic!("step {k}: rollback {:?}: {}", undo.code, undo.stderr),
    }
    assert_eq!(both(&scene), before, "step {k}: rollback left a difference");
    assert!(
        fs::read_dir(scene.git_dir().join("execute-local-task/tmp"))
            .map_or(true, |mut d| d.next().is_none()),
        "step {k}: rollback left temp files in the state directory"
    );
    true
}

fn kill_everywhere(repair: bool) -> u32 {
    let mut k = 1;
    while kill_at(k, repair) {
        k += 1;
        assert!(k < 200, "the run never finished");
    }
    eprintln!(
        "killed at each of {} durable steps (repair: {repair})",
        k - 1
    );
    k - 1
}

/// A run refused before any model call because `path` needs `--force`; its message.
fn assert_needs_force(out: &Out, server: &ModelServer, path: &str) -> String {
    out.assert_code(2);
    assert_eq!(out.error_kind(), "dirty_target", "{path}");
    let message = out.error_message();
    assert!(message.contains(&format!("`{path}`")), "{message}");
    assert!(message.contains("--force"), "{message}");
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert!(server.requests().is_empty(), "{path}: the model was called");
    message
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the crash hook, which release builds leave out: run in a debug build"
)]
fn sigkill_at_every_durable_step_of_a_write_keeps_every_invariant() {
    let steps = kill_everywhere(false);
    // Backup, manifests, two directories and two files: each step is a crash point.
    assert!(steps >= 19, "only {steps} crash points");
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the crash hook, which release builds leave out: run in a debug build"
)]
fn sigkill_at_every_durable_step_of_a_rollback_leaves_one_that_can_finish() {
    let mut k = 1;
    loop {
        let scene = Scene::new();
        scene
            .file("tool.sh", OLD_TOOL)
            .mode("tool.sh", 0o755)
            .commit();
        let before = both(&scene);
        let spec = json!({"task_id": "T-kill", "description": "d",
            "output_files": ["tool.sh", "new/deep/made.txt"]});
        let (out, _) = scene.run(&spec, vec![reply(NEW_TOOL_1, NEW_MADE_1)], &[]);
        out.assert_code(0);
        let undo = scene.tool_env(&["rollback", "--last"], &[(CRASH_AT_ENV, &k.to_string())]);
        if undo.code == Some(0) {
            assert_eq!(both(&scene), before);
            break;
        }
        assert_eq!(undo.signal, Some(9), "step {k}: {}", undo.stderr);
        let tool = &state(&scene.repo)["tool.sh"];
        assert!(
            [OLD_TOOL, NEW_TOOL_1]
                .iter()
                .any(|t| *tool == format!("file 755 {t:?}")),
            "step {k}: tool.sh is {tool}"
        );
        // Killed before its last manifest save it runs again; after, the run is done.
        let again = scene.tool(&["rollback", "--last"]);
        assert!(
            again.code == Some(0)
                || (again.code == Some(2) && again.error_message().contains("no run")),
            "step {k}: {}",
            again.stderr
        );
        assert_eq!(both(&scene), before, "step {k}: the second rollback");
        k += 1;
        assert!(k < 100, "rollback never finished");
    }
    eprintln!("killed rollback at each of {} durable steps", k - 1);
    assert!(k > 10, "only {} crash points in a rollback", k - 1);
}

#[test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the crash hook, which release builds leave out: run in a debug build"
)]
fn sigkill_at_every_durable_step_of_a_repair_keeps_every_invariant() {
    let steps = kill_everywhere(true);
    assert!(steps >= 40, "only {steps} crash points");
}

// ---------------------------------------------------------------------------------------
// Review fixes: dirty checks by real path, ignored targets, rollback of restored files,
// overlapping outputs, replaced symlinks, the umask, `demo --dir`
// ---------------------------------------------------------------------------------------

#[test]
fn an_uncommitted_edit_reached_through_a_symlinked_directory_needs_force() {
    let scene = Scene::new();
    scene
        .file("src/x.py", "x = 1\n")
        .link("src", "link")
        .commit();
    // Clean through the link: written as usual.
    let (out, _) = scene.run(
        &one_file_spec("link/x.py", &json!({})),
        vec![Script::code("link/x.py", "x = 2\n")],
        &[],
    );
    out.assert_code(0);
    scene.tool(&["rollback", "--last"]).assert_code(0);

    scene.file("src/x.py", "x = 'my uncommitted edit'\n");
    let before = both(&scene);
    let (out, server) = scene.run(
        &one_file_spec("link/x.py", &json!({})),
        vec![Script::code("link/x.py", "x = 3\n")],
        &[],
    );
    out.assert_code(2);
    assert_eq!(out.error_kind(), "dirty_target");
    assert!(
        out.error_message().contains("`link/x.py`"),
        "{}",
        out.error_message()
    );
    assert!(server.requests().is_empty(), "the model was called");
    assert_eq!(both(&scene), before);
}

#[test]
fn an_ignored_target_needs_force_and_is_backed_up_with_it() {
    let scene = Scene::new();
    scene
        .file(".gitignore", ".env\nbuild/\n")
        .file(".env", "API_KEY=secret\n")
        .file("build/out.js", "built\n")
        .commit();
    let before = both(&scene);
    for path in [".env", "build/out.js"] {
        let (out, server) = scene.run(
            &one_file_spec(path, &json!({})),
            vec![Script::code(path, "replaced\n")],
            &[],
        );
        let message = assert_needs_force(&out, &server, path);
        assert!(message.contains("ignored by git"), "{message}");
        assert_eq!(both(&scene), before);
    }
    let (out, _) = scene.run(
        &one_file_spec(".env", &json!({})),
        vec![Script::code(".env", "API_KEY=replaced\n")],
        &["--force"],
    );
    out.assert_code(0);
    let result = out.result();
    let backup = result.files[0].backup.as_deref().unwrap();
    assert_eq!(fs::read_to_string(backup).unwrap(), "API_KEY=secret\n");
    scene.tool(&["rollback", "--last"]).assert_code(0);
    assert_eq!(both(&scene), before);
}

/// A two-file run whose first attempt changed both files and failed its test (so both
/// were put back), and whose second attempt changed only `a.py` and passed.
fn run_that_put_b_back() -> (Scene, Out) {
    let scene = Scene::new();
    scene
        .file("a.py", "a = 0\n")
        .file("b.py", "b = 0\n")
        .commit();
    let spec = json!({"task_id": "T-two", "description": "d",
        "output_files": ["a.py", "b.py"], "test_command": "grep -q good a.py"});
    let (out, _) = scene.run(
        &spec,
        vec![
            Script::reply(
                "```python path=a.py\na = 1  # bad\n```\n```python path=b.py\nb = 1\n```\n",
            ),
            Script::reply(
                "```python path=a.py\na = 2  # good\n```\n```python path=b.py\nb = 0\n```\n",
            ),
        ],
        &[],
    );
    out.assert_code(0);
    (scene, out)
}

#[test]
fn rollback_leaves_alone_files_the_run_had_already_put_back() {
    let (scene, out) = run_that_put_b_back();
    let result = out.result();
    assert_eq!(result.attempts.len(), 2);
    let b = result.files.iter().find(|f| f.path == "b.py").unwrap();
    assert_eq!(serde_json::to_value(b.action).unwrap(), json!("unchanged"));
    assert_eq!(b.backup, None, "b.py was not written by this result");
    let a = result.files.iter().find(|f| f.path == "a.py").unwrap();
    assert!(a.backup.is_some());

    // The user takes the result, then edits b.py.
    scene.file("b.py", "b = 'mine'\n");
    let undo = scene.tool(&["rollback", &result.run_id]);
    undo.assert_code(0);
    assert_eq!(undo.json()["restored"], json!(["a.py"]));
    assert_eq!(scene.read("a.py").as_deref(), Some("a = 0\n"));
    assert_eq!(scene.read("b.py").as_deref(), Some("b = 'mine'\n"));
}

#[test]
fn rollback_with_force_never_restores_a_file_the_run_had_put_back() {
    let (scene, out) = run_that_put_b_back();
    let run_id = out.result().run_id;
    scene
        .file("a.py", "a = 'edited'\n")
        .file("b.py", "b = 'mine'\n");
    let undo = scene.tool(&["rollback", &run_id]);
    undo.assert_code(2);
    let message = undo.error_message();
    assert!(message.contains("`a.py`"), "{message}");
    assert!(!message.contains("b.py"), "{message}");
    scene.tool(&["rollback", &run_id, "--force"]).assert_code(0);
    assert_eq!(scene.read("a.py").as_deref(), Some("a = 0\n"));
    assert_eq!(scene.read("b.py").as_deref(), Some("b = 'mine'\n"));
}

#[test]
fn rollback_of_a_run_that_left_nothing_written_has_nothing_to_undo() {
    let scene = Scene::new();
    scene.file("a.py", "a = 0\n").commit();
    let (out, _) = scene.run(
        &one_file_spec("a.py", &json!({"test_command": "false"})),
        vec![
            Script::code("a.py", "a = 1\n"),
            Script::code("a.py", "a = 2\n"),
        ],
        &[],
    );
    out.assert_code(1);
    let result = out.result();
    assert_eq!(result.status, Status::Escalate);
    assert!(result.files.is_empty());
    scene.file("a.py", "a = 'edited since'\n");
    let before = both(&scene);
    for args in [
        &["rollback", result.run_id.as_str()][..],
        &["rollback", result.run_id.as_str(), "--force"],
    ] {
        let undo = scene.tool(args);
        undo.assert_code(2);
        assert_eq!(undo.error_kind(), "rollback");
        let message = undo.error_message();
        assert!(message.contains("nothing to undo"), "{message}");
        assert!(message.contains(&result.run_id), "{message}");
        assert_eq!(both(&scene), before, "{args:?}");
    }
}

#[test]
fn overlapping_outputs_are_refused_before_the_model_is_called() {
    let scene = Scene::new();
    scene
        .file("src/x.py", "x = 1\n")
        .link("src", "link")
        .commit();
    let before = both(&scene);
    for (outputs, field) in [
        (json!(["a", "a/b.py"]), "output_files[1]"),
        (json!(["a/b/c.py", "a/b"]), "output_files[1]"),
        (json!(["src/x.py", "link/x.py"]), "output_files[1]"),
        (json!(["link/new.py", "src/new.py"]), "output_files[1]"),
        (json!(["src/new", "link/new/y.py"]), "output_files[1]"),
    ] {
        let spec = json!({"task_id": "T-safe", "description": "d", "output_files": outputs});
        let (out, server) = scene.run(&spec, vec![], &[]);
        out.assert_code(2);
        assert_eq!(out.error_kind(), "spec", "{outputs}");
        let message = out.error_message();
        assert!(message.contains(field), "{outputs}: {message}");
        assert!(
            server.requests().is_empty(),
            "{outputs}: the model was called"
        );
        assert_eq!(both(&scene), before, "{outputs}");
    }
}

#[test]
fn a_replaced_symlink_is_reported_as_modified_with_a_note() {
    let scene = Scene::new();
    scene.link("README.md", "doc.md").commit();
    let (out, _) = scene.run(
        &one_file_spec("doc.md", &json!({})),
        vec![Script::code("doc.md", "# doc\n")],
        &[],
    );
    out.assert_code(0);
    let result = out.result();
    assert_eq!(
        serde_json::to_value(result.files[0].action).unwrap(),
        json!("modified")
    );
    let notes = result.attempts[0].notes.join("\n");
    assert!(notes.contains("symlink to `README.md`"), "{notes}");
    assert_eq!(scene.read("README.md").as_deref(), Some("# project\n"));
    scene.tool(&["rollback", "--last"]).assert_code(0);
    assert_eq!(
        fs::read_link(scene.repo.join("doc.md")).unwrap(),
        Path::new("README.md")
    );
}

#[test]
fn created_files_and_directories_honour_the_umask() {
    let scene = Scene::new();
    scene.commit();
    let spec_path = scene.dir.path().join("umask.json");
    fs::write(
        &spec_path,
        one_file_spec("made/new.txt", &json!({})).to_string(),
    )
    .unwrap();
    let server = ModelServer::start(
        vec![Script::code("made/new.txt", "new\n")],
        vec![MODEL.to_owned()],
    );
    let base = scene.command(&[spec_path.to_str().unwrap()], &server, &[]);
    // The binary started by a shell with a umask that takes group write and all of other.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 027 && exec \"$0\" \"$@\"")
        .arg(base.get_program())
        .args(base.get_args())
        .current_dir(&scene.repo)
        .env_clear();
    for (name, value) in base.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    let out = Out::from(&output(&mut command));
    out.assert_code(0);
    let after = state(&scene.repo);
    assert_eq!(after["made/new.txt"], "file 640 \"new\\n\"");
    assert_eq!(after["made"], "dir");
    let dir_mode = fs::metadata(scene.repo.join("made"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o750);
}

#[test]
fn demo_dir_never_clobbers_and_commits_only_its_own_files() {
    let scene = Scene::new();
    let base = scene.dir.path().join("demo-base");
    // An existing repo/ (with the user's files) or spec is refused, untouched.
    fs::create_dir_all(base.join("repo")).unwrap();
    fs::write(base.join("repo/mine.txt"), "mine\n").unwrap();
    let before = state(&base);
    let out = scene.tool(&["demo", "--dir", base.to_str().unwrap()]);
    out.assert_code(2);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert!(out.stderr.contains("repo"), "{}", out.stderr);
    assert_eq!(state(&base), before);
    assert!(!base.join("repo/.git").exists());

    fs::remove_dir_all(base.join("repo")).unwrap();
    fs::write(base.join("demo-spec.json"), "{\"mine\": true}\n").unwrap();
    let before = state(&base);
    let out = scene.tool(&["demo", "--dir", base.to_str().unwrap()]);
    out.assert_code(2);
    assert!(out.stderr.contains("demo-spec.json"), "{}", out.stderr);
    assert_eq!(state(&base), before);

    // A directory holding other things of the user's: they are neither touched nor committed.
    fs::remove_file(base.join("demo-spec.json")).unwrap();
    fs::write(base.join("notes.txt"), "my notes\n").unwrap();
    let out = scene.tool(&["demo", "--dir", base.to_str().unwrap()]);
    out.assert_code(0);
    assert_eq!(
        fs::read_to_string(base.join("notes.txt")).unwrap(),
        "my notes\n"
    );
    let git = git2::Repository::open(base.join("repo")).unwrap();
    let tree = git.head().unwrap().peel_to_tree().unwrap();
    let names: Vec<String> = tree
        .iter()
        .map(|entry| entry.name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["README.md", "test_slugify.sh"]);
}
