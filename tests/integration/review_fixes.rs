//! Defects a review of the hardening found: runs that stop before the model still mark
//! themselves for `rollback --last`, a second signal still stops the test, a conflict
//! names where the user's old bytes are, a signal during the diff reports a conflict, and
//! a summary never says it wrote a file it left alone.

use std::path::Path;
use std::time::{Duration, Instant};

use execute_local_task::cancel::STALL_AT_ENV;
use execute_local_task::result::TaskResult;
use execute_local_task::test_run::MARKER_VAR;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{Script, Test, git, spec};

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|error| panic!("not JSON ({error}):\n{stdout}"))
}

fn run_dirs(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.join(".git/execute-local-task/runs"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn wait_for(marker: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "never appeared: {}",
            marker.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A run that stops in a stage before the model (here a context file that does not
/// exist) is still the newest run: `rollback --last` undoes nothing of an older one, and
/// the run id in its result is one `rollback` knows.
#[test]
fn rollback_last_after_a_run_stopped_before_the_model_changes_nothing() {
    let run = Test::new()
        .spec(spec("mywc.py", &json!({"task_id": "T-1"})))
        .script(Script::code("mywc.py", "print(1)\n"))
        .run();
    run.assert_code(0);
    git(&run.repo, &["add", "-A"]);
    git(&run.repo, &["commit", "-qm", "T-1"]);
    let second = run.spec_path.with_file_name("two.json");
    let two = spec(
        "two.py",
        &json!({"task_id": "T-2", "context_files": ["nonexist.py"]}),
    );
    std::fs::write(&second, two.to_string()).unwrap();
    let (code, stdout, stderr) = run.again(&[second.to_str().unwrap()]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let result: TaskResult = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result.error.expect("an error").kind, "context");
    assert_eq!(run_dirs(&run.repo).last(), Some(&result.run_id));

    let (code, stdout, _) = run.again(&["rollback", "--last"]);
    assert_eq!(code, 0, "{stdout}");
    let report = json(&stdout);
    assert_eq!(report["run_id"], json!(result.run_id), "{report}");
    assert!(report["nothing_to_undo"].is_string(), "{report}");
    assert_eq!(report["removed"], json!([]), "{report}");
    assert_eq!(run.read("mywc.py").as_deref(), Some("print(1)\n"));

    let (code, stdout, _) = run.again(&["rollback", &result.run_id]);
    assert_eq!(code, 2, "{stdout}");
    assert!(!stdout.contains("no such run"), "{stdout}");

    // A dry run is not a run: it leaves no mark.
    let before = run_dirs(&run.repo);
    let (code, stdout, stderr) = run.again(&["--dry-run", run.spec_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(run_dirs(&run.repo), before);
}

/// The processes carrying the test marker of the tool with process id `tool`.
fn test_processes(tool: u32) -> Vec<u32> {
    let prefix = format!("{MARKER_VAR}={tool}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&byte| byte == 0)
                    .any(|entry| entry.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
}

/// Whether process `pid` still runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

/// A second Ctrl-C while the test is given its grace to stop ends the tool at once, and
/// still takes the test (which ignores SIGTERM) with it.
#[test]
fn a_second_signal_during_the_stop_grace_kills_the_test() {
    let scratch = tempfile::tempdir().unwrap();
    let (ready, termed) = (scratch.path().join("ready"), scratch.path().join("termed"));
    let (seen_ready, seen_termed) = (ready.clone(), termed.clone());
    let left = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let found = std::sync::Arc::clone(&left);
    // The shell notes the tool's SIGTERM and waits on; what it started ignores SIGTERM.
    let command = format!(
        "trap 'touch {termed}' TERM; (trap '' TERM; sleep 31; echo late >> out.txt) & \
         touch {ready}; wait $!; wait $!",
        termed = termed.display(),
        ready = ready.display()
    );
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec("out.txt", &json!({"test_command": command})))
        .script(Script::code("out.txt", "new\n"))
        .during(move |running| {
            wait_for(&seen_ready);
            running.signal(Signal::SIGINT);
            wait_for(&seen_termed);
            running.signal(Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(30);
            while alive(running.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let pids = test_processes(running.pid);
            for pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap()),
                    Signal::SIGKILL,
                );
            }
            *found.lock().unwrap() = pids;
        })
        .run();
    run.assert_code(130);
    let left = left.lock().unwrap().clone();
    assert!(left.is_empty(), "the test outlived the tool: {left:?}");
}

/// A conflict over a file that held uncommitted work names where that work is kept, and
/// `rollback` tells the truth about it: refused without `--force`, put back with it.
/// A `--force` run over uncommitted work whose failing test edits the output: the run
/// keeps the edit and reports a conflict.
fn conflict_over_uncommitted_work() -> crate::harness::Run {
    Test::new()
        .file("calc.py", "committed\n")
        .uncommitted("calc.py", "work\n")
        .arg("--force")
        .spec(spec(
            "calc.py",
            &json!({"test_command": "echo extra >> calc.py; exit 1", "max_attempts": 1}),
        ))
        .script(Script::code("calc.py", "new\n"))
        .run()
}

#[test]
fn a_conflict_names_the_backup_and_rollback_force_restores_it() {
    let run = conflict_over_uncommitted_work();
    let error = run.assert_error(2, "conflict");
    let result = run.result();
    assert!(result.files.is_empty());
    assert_eq!(run.read("calc.py").as_deref(), Some("new\nextra\n"));
    let backup = run
        .repo
        .join(".git/execute-local-task/runs")
        .join(&result.run_id)
        .join("files/0");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), "work\n");
    assert!(
        error.message.contains(&backup.display().to_string()),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .contains(&format!("rollback {} --force", result.run_id)),
        "{}",
        error.message
    );

    let (code, stdout, _) = run.again(&["rollback", &result.run_id]);
    assert_eq!(code, 2, "{stdout}");
    assert!(!stdout.contains("left no file changed"), "{stdout}");
    assert!(stdout.contains("`calc.py`"), "{stdout}");
    assert!(stdout.contains("files/0"), "{stdout}");
    assert_eq!(run.read("calc.py").as_deref(), Some("new\nextra\n"));

    let (code, stdout, _) = run.again(&["rollback", &result.run_id, "--force"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(json(&stdout)["restored"], json!(["calc.py"]));
    assert_eq!(run.read("calc.py").as_deref(), Some("work\n"));
}

/// `rollback --last` of such a run says where the old bytes are and changes nothing;
/// with `--force` it puts them back.
#[test]
fn rollback_last_of_a_conflict_names_the_backup_and_force_restores_it() {
    let run = conflict_over_uncommitted_work();
    run.assert_error(2, "conflict");
    let (code, stdout, _) = run.again(&["rollback", "--last"]);
    assert_eq!(code, 0, "{stdout}");
    let why = json(&stdout)["nothing_to_undo"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.contains("`calc.py` was edited after the run wrote it"),
        "{stdout}"
    );
    assert!(why.contains("files/0"), "{stdout}");
    assert_eq!(run.read("calc.py").as_deref(), Some("new\nextra\n"));

    let (code, stdout, _) = run.again(&["rollback", "--last", "--force"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(json(&stdout)["restored"], json!(["calc.py"]));
    assert_eq!(run.read("calc.py").as_deref(), Some("work\n"));
    // Done once: the run is rolled back now.
    let (code, stdout, _) = run.again(&["rollback", "--last", "--force"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("already rolled back"), "{stdout}");
}

/// An edit made while the result's diff is made, then a signal: the edit stays, and the
/// run reports a conflict like any other signal that meets an edit.
#[test]
fn a_signal_during_the_diff_after_an_edit_reports_a_conflict() {
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("stalled");
    let seen = marker.clone();
    let test = Test::new()
        .file("out.txt", "old\n")
        .spec(spec("out.txt", &json!({"test_command": "true"})))
        .script(Script::code("out.txt", "new\n"))
        .env(STALL_AT_ENV, &format!("diff:{}", marker.display()));
    let out = test.repo_path().join("out.txt");
    let run = test
        .during(move |running| {
            wait_for(&seen);
            let mut edited = std::fs::read_to_string(&out).unwrap();
            edited.push_str("mine\n");
            std::fs::write(&out, edited).unwrap();
            running.signal(Signal::SIGTERM);
        })
        .run();
    let error = run.assert_error(2, "conflict");
    assert!(
        error.message.starts_with("interrupted by SIGTERM; "),
        "{}",
        error.message
    );
    assert_eq!(run.read("out.txt").as_deref(), Some("new\nmine\n"));
}

/// A reply that holds exactly what the file holds writes nothing, and the summary says so.
#[test]
fn a_summary_never_says_it_wrote_a_file_it_left_alone() {
    let run = Test::new()
        .file("calc.py", "same\n")
        .spec(spec("calc.py", &json!({"test_command": "true"})))
        .script(Script::code("calc.py", "same\n"))
        .run();
    run.assert_code(0);
    let summary = run.result().summary;
    assert!(!summary.contains("wrote calc.py"), "{summary}");
    assert!(
        summary.contains("calc.py already held that code"),
        "{summary}"
    );
}
