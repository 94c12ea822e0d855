//! What the tool itself costs, next to a model's seconds: a whole run against a model
//! server that answers instantly, and the library stages that touch the most bytes.
//!
//! `cargo bench --bench overhead` prints the median and spread of each measurement.

#[path = "../tests/integration/harness.rs"]
mod harness;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use execute_local_task::worktree::{MainRepo, TaskWorktree};
use execute_local_task::{context, diff, extract};
use harness::{Script, Test, spec};
use serde_json::json;

fn main() {
    // `BENCH_BATCH_ONLY=1` measures the batch alone; `=in-place`, `=branches` or
    // `=worktrees` one part of it.
    if let Some(part) = std::env::var_os("BENCH_BATCH_ONLY") {
        let all = !["in-place", "branches", "worktrees"]
            .iter()
            .any(|p| part == *p);
        if all || part == "in-place" {
            batch_in_place(100, 4, Duration::ZERO, 3);
            batch_in_place(100, 4, Duration::from_millis(100), 3);
        }
        if all || part == "branches" {
            batch_on_branches(100, 4, Duration::from_millis(100), 3);
            batch_on_branches_large(20, 4, Duration::from_millis(100), 20_000);
        }
        if all || part == "worktrees" {
            worktree_cost(10, 20);
            worktree_cost(20_000, 5);
        }
        return;
    }
    whole_run("whole run, 1 new file, no test", &json!({}), 0, 30);
    whole_run(
        "whole run, 50 context files, modify, `true` test",
        &json!({"context_files": ["src/**/*.py"], "test_command": "true"}),
        50,
        30,
    );
    extraction();
    looping_extraction(1 << 20);
    looping_extraction(4 << 20);
    large_rewrite_diff(150_000);
    context_gathering();
    batch_in_place(100, 4, Duration::ZERO, 3);
    batch_in_place(100, 4, Duration::from_millis(100), 3);
    batch_on_branches(100, 4, Duration::from_millis(100), 3);
    worktree_cost(10, 20);
    worktree_cost(20_000, 5);
}

/// Wall time of `execute-local-task spec.json` as a supervisor runs it: process start,
/// spec, git, context, prompt, a loopback model call, extraction, backup, atomic write,
/// test, result JSON.
fn whole_run(name: &str, extra: &serde_json::Value, context_files: usize, runs: usize) {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut test = Test::new().file("src/out.py", "def f():\n    return 0\n".repeat(20));
        for i in 0..context_files {
            test = test.file(
                &format!("src/mod_{i}.py"),
                format!("def g{i}(x):\n    return x + {i}\n").repeat(30),
            );
        }
        let code = "def f():\n    return 1\n".repeat(20);
        let test = test
            .spec(spec("src/out.py", extra))
            .script(Script::code("src/out.py", &code));
        let run = test.run();
        samples.push(run.elapsed);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    report(name, &mut samples);
}

/// A batch of `tasks` independent specs, `--jobs slots`, against a server working on
/// `slots` replies at once, each taking `latency`: how close the batch comes to the ideal
/// `tasks × latency / slots`, the model's time alone.
fn batch_in_place(tasks: usize, slots: usize, latency: Duration, runs: usize) {
    batch(tasks, slots, latency, runs, false, 0);
}

/// The same batch with `--branch`: every task in a worktree of its own.
fn batch_on_branches(tasks: usize, slots: usize, latency: Duration, runs: usize) {
    batch(tasks, slots, latency, runs, true, 0);
}

/// The same on a repository of `files` more tracked files: what a task's worktree costs
/// when there is much to check out.
fn batch_on_branches_large(tasks: usize, slots: usize, latency: Duration, files: usize) {
    batch(tasks, slots, latency, 3, true, files);
}

fn batch(tasks: usize, slots: usize, latency: Duration, runs: usize, branch: bool, files: usize) {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut test = Test::new().slots(slots, latency).before(move |repo| {
            if files > 0 {
                many_files(repo, files);
            }
        });
        let mut specs = Vec::new();
        for i in 0..tasks {
            let id = format!("T{i}");
            let path = format!("out/t{i}.txt");
            test = test.route(
                &format!("<<{id}>>"),
                vec![Script::code(&path, &format!("{i}\n"))],
            );
            specs.push((
                format!("{id}.json"),
                json!({"task_id": id, "description": format!("Task <<{id}>>."), "output_file": path})
                    .to_string(),
            ));
        }
        let jobs = slots.to_string();
        let run = test.run_with(move |spec_path| {
            let dir = spec_path.parent().expect("a parent").join("specs");
            std::fs::create_dir_all(&dir).expect("the spec directory");
            for (name, text) in &specs {
                std::fs::write(dir.join(name), text).expect("a spec");
            }
            let mut args = vec![
                dir.display().to_string(),
                "--jobs".to_owned(),
                jobs,
                "--summary-only".to_owned(),
                "-q".to_owned(),
            ];
            if branch {
                args.push("--branch".to_owned());
            }
            args
        });
        assert_eq!(run.code, 0, "{}", run.stderr);
        samples.push(run.elapsed);
    }
    let ideal =
        latency * u32::try_from(tasks).unwrap_or(u32::MAX) / u32::try_from(slots).unwrap_or(1);
    let name = format!(
        "batch{}, {tasks} independent specs, --jobs {slots}, {slots} slots of {} ms{}",
        if branch { " on branches" } else { " in place" },
        latency.as_millis(),
        if files > 0 {
            format!(", {files} tracked files")
        } else {
            String::new()
        }
    );
    report(&name, &mut samples);
    if latency.is_zero() {
        // A server that answers at once: what is left is the tool's own cost.
        return;
    }
    let median = samples[samples.len() / 2];
    let (slots_u32, tasks_u32) = (
        u32::try_from(slots).unwrap_or(1),
        u32::try_from(tasks).unwrap_or(1),
    );
    println!(
        "    ideal {:.2} s; the median is {:.0}% above it, {:.0} ms per task beyond the model's time in each of {slots} slots",
        ideal.as_secs_f64(),
        (median.as_secs_f64() / ideal.as_secs_f64() - 1.0) * 100.0,
        (median.as_secs_f64() - ideal.as_secs_f64()) * 1000.0 * f64::from(slots_u32)
            / f64::from(tasks_u32)
    );
}

/// Adds `files` small tracked files to the test repository, in one commit.
fn many_files(repo: &std::path::Path, files: usize) {
    for i in 0..files {
        let sub = repo.join("src").join(format!("d{}", i / 500));
        std::fs::create_dir_all(&sub).expect("a directory");
        std::fs::write(sub.join(format!("f{i}.txt")), format!("{i}\n")).expect("a file");
    }
    harness::git(repo, &["add", "-A"]);
    harness::git(repo, &["commit", "-qm", "many files"]);
}

fn extraction() {
    let body: String = (0..5000).fold(String::new(), |mut body, i| {
        let _ = writeln!(body, "    value_{i} = compute({i})");
        body
    });
    let reply = format!(
        "<think>{}</think>\nHere is the file.\n\n```python path=src/big.py\ndef big():\n{body}```\n\nAnd usage:\n```sh\npython src/big.py\n```\n",
        "reasoning ".repeat(2000)
    );
    let outputs = vec!["src/big.py".to_owned()];
    let mut samples = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        black_box(extract::extract(black_box(&reply), &outputs, "python").expect("extracts"));
        samples.push(started.elapsed());
    }
    report(
        &format!("extract a {} KB reply", reply.len() / 1024),
        &mut samples,
    );
}

/// A small model stuck in a loop repeats one small block until the reply-size cap (4 MiB
/// by default): thousands of blocks, which extraction must read in one pass.
fn looping_extraction(bytes: usize) {
    let block = "Here it is again:\n```python\ndef f():\n    return 1\n```\n";
    let reply = block.repeat(bytes / block.len());
    let outputs = vec!["src/f.py".to_owned()];
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        black_box(extract::extract(black_box(&reply), &outputs, "python").expect("extracts"));
        samples.push(started.elapsed());
    }
    report(
        &format!(
            "extract a {} KB looping reply ({} blocks)",
            reply.len() / 1024,
            bytes / block.len()
        ),
        &mut samples,
    );
}

/// The result's diff of a file rewritten almost line for line.
fn large_rewrite_diff(lines: usize) {
    let (mut old, mut new) = (String::new(), String::new());
    for i in 0..lines {
        let line = format!("value_{i} = compute({i})");
        let _ = writeln!(old, "{line}");
        let _ = writeln!(new, "{line} + 1");
    }
    let mut samples = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        black_box(diff::file_diff("big.py", Some(&old), &new));
        samples.push(started.elapsed());
    }
    report(
        &format!("diff a rewrite of {lines} changed lines"),
        &mut samples,
    );
}

fn context_gathering() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical");
    for i in 0..200 {
        let path = root.join(format!("src/pkg{}/mod_{i}.rs", i % 10));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            format!("pub fn f{i}() -> u32 {{ {i} }}\n").repeat(10),
        )
        .unwrap();
    }
    let bounds = execute_local_task::guard::Bounds::new(root.clone(), root.join(".git"));
    let patterns = vec!["src/**/*.rs".to_owned()];
    let mut samples = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        black_box(context::gather(&bounds, &patterns, &[], 10_000_000).expect("gathers"));
        samples.push(started.elapsed());
    }
    report("gather 200 context files by glob", &mut samples);
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    let p90 = samples[samples.len() * 9 / 10];
    println!(
        "{name:<55} median {:>8.2} ms   min {:>8.2} ms   p90 {:>8.2} ms   ({} runs)",
        ms(median),
        ms(samples[0]),
        ms(p90),
        samples.len()
    );
}

/// What a task worktree costs on a repository of `files` tracked files: `git worktree add
/// --detach` and `git worktree remove`, as a branch run makes and removes one.
fn worktree_cost(files: usize, runs: usize) {
    let Ok(dir) = tempfile::tempdir() else {
        println!("worktree cost: no temporary directory");
        return;
    };
    let repo = dir.path().join("repo");
    let git = |cwd: &std::path::Path, args: &[&str]| {
        std::process::Command::new("git")
            .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
            .args(args)
            .current_dir(cwd)
            .output()
            .is_ok_and(|output| output.status.success())
    };
    let made = std::fs::create_dir_all(repo.join("src")).is_ok()
        && (0..files).all(|i| {
            let sub = repo.join("src").join(format!("d{}", i / 500));
            std::fs::create_dir_all(&sub).is_ok()
                && std::fs::write(sub.join(format!("f{i}.txt")), format!("{i}\n")).is_ok()
        })
        && git(&repo, &["init", "-q"])
        && git(&repo, &["add", "-A"])
        && git(&repo, &["commit", "-qm", "files"]);
    if !made {
        println!("worktree cost: the repository of {files} files could not be made");
        return;
    }
    let (mut create, mut remove) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for run in 0..runs {
        let path = dir.path().join(format!("wt{run}"));
        let path_text = path.display().to_string();
        let started = Instant::now();
        let added = git(
            &repo,
            &["worktree", "add", "--detach", "-q", &path_text, "HEAD"],
        );
        create.push(started.elapsed());
        let started = Instant::now();
        let removed = git(&repo, &["worktree", "remove", "--force", &path_text]);
        remove.push(started.elapsed());
        if !(added && removed) {
            println!("worktree cost: git worktree add/remove failed");
            return;
        }
    }
    report(
        &format!("task worktree, {files} tracked files: create"),
        &mut create,
    );
    report(
        &format!("task worktree, {files} tracked files: remove"),
        &mut remove,
    );
    worktree_reset_cost(&repo, dir.path(), files, runs * 4);
}

/// What a batch on branches pays per task instead: its slot's worktree reset to the next
/// task's base ([`TaskWorktree::reset`]) after a task wrote, committed and left an
/// untracked file and an ignored build directory in it.
fn worktree_reset_cost(repo: &std::path::Path, dir: &std::path::Path, files: usize, runs: usize) {
    let git = |cwd: &std::path::Path, args: &[&str]| {
        std::process::Command::new("git")
            .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
            .args(args)
            .current_dir(cwd)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let (Ok(main), Some(base)) = (MainRepo::discover(repo), git(repo, &["rev-parse", "HEAD"]))
    else {
        println!("worktree reset: the repository cannot be read");
        return;
    };
    let Ok(mut worktree) = TaskWorktree::create(&main, &dir.join("slots"), "slot", &base) else {
        println!("worktree reset: no worktree");
        return;
    };
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let path = worktree.path.clone();
        let task = std::fs::create_dir_all(path.join("out/build")).is_ok()
            && std::fs::write(path.join("src/d0/f0.txt"), format!("changed {run}\n")).is_ok()
            && std::fs::write(path.join(format!("out/t{run}.txt")), "new\n").is_ok()
            && std::fs::write(path.join("out/build/x"), "built\n").is_ok()
            && git(&path, &["add", "src/d0/f0.txt", &format!("out/t{run}.txt")]).is_some()
            && git(&path, &["commit", "-qm", "task"]).is_some()
            && std::fs::write(path.join("untracked.txt"), "left\n").is_ok();
        if !task {
            println!("worktree reset: the task's changes could not be made");
            return;
        }
        let started = Instant::now();
        if worktree.reset(&base).is_err() {
            println!("worktree reset failed");
            return;
        }
        samples.push(started.elapsed());
    }
    let _ = worktree.remove();
    report(
        &format!("task worktree, {files} tracked files: reset (reused)"),
        &mut samples,
    );
}
