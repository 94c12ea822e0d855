//! Runs the task's test command — `sh -c` in the repository root, in a session of its own
//! with stdin closed, under a hard time limit (and stopped when the run is interrupted),
//! with bounded output — and picks from that output the lines a repair prompt needs.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::result::TestReport;

/// Variables that would make git inside the test act on another repository, index or
/// configuration: a run started from a git hook inherits them. This is git's own list of
/// repository-local variables (`git rev-parse --local-env-vars`, which git clears before
/// it works in another repository), plus the ones only hooks and discovery use.
const GIT_REDIRECTS: &[&str] = &[
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_QUARANTINE_PATH",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
];

/// Credentials the test never gets: the tool's own keys for the model server, and the
/// well-known AI provider keys a supervising agent's environment holds. The test runs code
/// a model wrote, and a test (or whatever it starts) could send them anywhere. This is the
/// one list; the README's test-command section names the same variables.
pub const SECRETS: &[&str] = &[
    "LOCAL_TASK_API_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "MISTRAL_API_KEY",
    "GROQ_API_KEY",
    "OPENROUTER_API_KEY",
    "TOGETHER_API_KEY",
    "DEEPSEEK_API_KEY",
    "LITELLM_API_KEY",
];

/// Endpoint variables, withheld from the test only when they carry a password
/// (`http://user:pass@host`): without one they are an address a test may well need.
pub const ENDPOINT_VARIABLES: &[&str] = &["OPENAI_BASE_URL", "LOCAL_TASK_ENDPOINT", "OLLAMA_HOST"];

/// The variables a loaded configuration's profiles name in `api_key_env`: keys as much as
/// [`SECRETS`] are. Process-wide because tests are run from single runs, batches and the
/// MCP server alike, and a name once seen stays withheld: withholding more never hurts.
static KEY_VARIABLES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps the variable `name` (a profile's `api_key_env`) from every later test command.
pub fn withhold(name: &str) {
    let mut names = KEY_VARIABLES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !names.iter().any(|known| known == name) {
        names.push(name.to_owned());
    }
}

/// Whether the variable `name` with `value` is kept from the test.
fn withheld(name: &str, value: &std::ffi::OsStr) -> bool {
    GIT_REDIRECTS.contains(&name)
        || SECRETS.contains(&name)
        || KEY_VARIABLES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|known| known == name)
        || (ENDPOINT_VARIABLES.contains(&name) && has_userinfo(&value.to_string_lossy()))
}

/// Whether a URL (or `OLLAMA_HOST`'s scheme-less `host:port`) has a `user@` or
/// `user:pass@` part before its host.
fn has_userinfo(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    authority.contains('@')
}

/// Takes out of `command`'s environment what the test must not see or act on: the
/// credentials above and git's redirections to another repository.
fn clean_environment(command: &mut Command) {
    for (name, value) in std::env::vars_os() {
        if withheld(&name.to_string_lossy(), &value) {
            command.env_remove(name);
        }
    }
}

/// Set in the test's environment to a value unique to one test run. Every process the
/// test starts inherits it, so the ones that leave the test's session (`setsid`, daemons)
/// can still be found and killed.
pub const MARKER_VAR: &str = "EXECUTE_LOCAL_TASK_TEST_ID";

/// How long the test gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long the final SIGKILL sweep may keep finding processes (one that forks faster
/// than it is killed).
const SWEEP_LIMIT: Duration = Duration::from_secs(1);
/// How often to look again for the test's processes while they are going.
const POLL: Duration = Duration::from_millis(10);
/// How long to wait for the output pipes once everything found is dead: only a process
/// that left the session *and* cleared its environment can still hold them.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// The tests running in this process, each as its process group and marker, so the
/// process can kill them when it must end at once (a second signal, see [`kill_running`]).
static RUNNING: Mutex<Vec<(Option<Pid>, String)>> = Mutex::new(Vec::new());

/// Lists a test in [`RUNNING`] while it lives.
struct Listed(String);

impl Listed {
    fn new(group: Option<Pid>, marker: &str) -> Self {
        lock_running().push((group, marker.to_owned()));
        Self(marker.to_owned())
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock_running().retain(|(_, marker)| marker != &self.0);
    }
}

fn lock_running() -> std::sync::MutexGuard<'static, Vec<(Option<Pid>, String)>> {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SIGKILLs every running test's process group and marked processes, until none is left
/// or [`SWEEP_LIMIT`] passes: for a process about to exit without the usual stop (a
/// second signal during the test's grace), which would otherwise leave the test running
/// and writing into the tree after the tool has gone. Blocking, as it runs on the way out.
pub fn kill_running() {
    let running = lock_running().clone();
    let deadline = Instant::now() + SWEEP_LIMIT;
    loop {
        for (group, marker) in &running {
            signal_all(*group, marker, Signal::SIGKILL);
        }
        let left = running
            .iter()
            .any(|(_, marker)| !marked_processes(marker).is_empty());
        if !left || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// Bytes of output kept: the start, and the end, which usually holds the failure.
pub const HEAD_BYTES: usize = 4 * 1024;
pub const TAIL_BYTES: usize = 12 * 1024;

/// The test could not be started at all: the spec's command (or the machine) must be fixed.
#[derive(Debug, Clone)]
pub struct CannotStart {
    pub message: String,
    pub report: Option<TestReport>,
}

/// The program that starts `command`, when `sh` cannot find it: checked before the model
/// is called, so a typo in `test_command` does not cost a whole model call first.
///
/// Only a plain first word is checked. Shell syntax, variable assignments and paths
/// (which the task itself may be about to create) are left for the real run to judge.
pub async fn missing_program(command: &str, dir: &Path, outputs: &[String]) -> Option<String> {
    let mut words = command.split_whitespace();
    let word = words.next()?;
    let plain = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    // `name () { …; }` defines a function the command then runs: not a program.
    let defines_function = words.next().is_some_and(|next| next.starts_with('('));
    if !plain || defines_function || outputs.iter().any(|output| output == word) {
        return None;
    }
    let mut check = Command::new("sh");
    check
        .arg("-c")
        .arg(r#"command -v -- "$1" >/dev/null 2>&1"#)
        .arg("sh")
        .arg(word)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    clean_environment(&mut check);
    let status = tokio::time::timeout(Duration::from_secs(5), check.status())
        .await
        .ok()?
        .ok()?;
    // Only the check's own "no" counts; a check killed by a signal (Ctrl-C reaches the
    // whole process group) knows nothing.
    matches!(status.code(), Some(1 | 127)).then(|| word.to_owned())
}

/// Runs `command` until it ends, `timeout` passes, or `stop` completes (the run was
/// interrupted). In the last two cases the test and everything it started are stopped:
/// SIGTERM, a grace, then SIGKILL. The report's `timed_out` is only for the limit.
pub async fn run(
    command: &str,
    dir: &Path,
    timeout: Duration,
    stop: impl Future<Output = ()>,
) -> Result<TestReport, CannotStart> {
    let started = Instant::now();
    let id = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
    let marker = format!("{MARKER_VAR}={id}");
    let mut process = Command::new("sh");
    process
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env(MARKER_VAR, &id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    clean_environment(&mut process);
    // A session of its own (and so a process group of its own, with the shell's pid as its
    // id): the whole test can be signalled at once, and without a controlling terminal a
    // program that would prompt there (ssh, sudo, git credentials) fails at once instead
    // of stopping the test until its time limit.
    // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent.
    unsafe {
        process.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = process.spawn().map_err(|error| CannotStart {
        message: format!(
            "the test command `{}` could not start: cannot run `sh` in {}: {error}",
            crate::escape::controls(command),
            dir.display()
        ),
        report: None,
    })?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let _listed = Listed::new(group, &marker);

    let output = Arc::new(Mutex::new(BoundedOutput::default()));
    let readers = [
        child
            .stdout
            .take()
            .map(|pipe| tokio::spawn(read_into(pipe, Arc::clone(&output)))),
        child
            .stderr
            .take()
            .map(|pipe| tokio::spawn(read_into(pipe, Arc::clone(&output)))),
    ];

    // In a session of its own the test gets none of the signals sent to the tool (Ctrl-C,
    // a caller's SIGTERM): the tool passes them on through `stop`, ending it as at its limit.
    let ended = tokio::select! {
        biased;
        () = stop => Ended::Stopped,
        waited = tokio::time::timeout(timeout, child.wait()) => match waited {
            Ok(status) => Ended::Exited(status.ok()),
            Err(_) => Ended::TimedOut,
        },
    };
    let (status, timed_out) = match ended {
        Ended::Exited(status) => (status, false),
        Ended::TimedOut => (terminate(&mut child, group, &marker).await, true),
        Ended::Stopped => (terminate(&mut child, group, &marker).await, false),
    };
    // Whatever the test left running (a server, `sleep 1000 &`, a daemon that left the
    // session) goes too: it would hold the output pipes open and outlive the tool.
    kill_all(group, &marker).await;
    let status = match status {
        Some(status) => Some(status),
        None => child.wait().await.ok(),
    };
    let drain_end = tokio::time::Instant::now() + DRAIN_GRACE;
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout_at(drain_end, reader).await.is_err() {
            abort.abort();
        }
    }

    let exit_code = status.and_then(|status| status.code());
    let output_tail = output
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .render();
    let report = TestReport {
        command: command.to_owned(),
        exit_code,
        passed: !timed_out && exit_code == Some(0),
        timed_out,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        output_tail,
        changed_paths: Vec::new(),
    };
    match start_failure(&report) {
        Some(reason) => Err(CannotStart {
            message: format!(
                "the test command `{}` could not start ({reason}); fix test_command in the spec or install what it runs",
                crate::escape::controls(command)
            ),
            report: Some(report),
        }),
        None => Ok(report),
    }
}

/// How the wait for the test's shell ended.
enum Ended {
    Exited(Option<std::process::ExitStatus>),
    TimedOut,
    Stopped,
}

/// Asks the test to end (SIGTERM to its group and every marked process) and gives it
/// [`KILL_GRACE`] to do so; the shell's exit status, if it went in that time.
async fn terminate(
    child: &mut tokio::process::Child,
    group: Option<Pid>,
    marker: &str,
) -> Option<std::process::ExitStatus> {
    signal_all(group, marker, Signal::SIGTERM);
    // A stopped process acts on SIGTERM only once it runs again.
    signal_all(group, marker, Signal::SIGCONT);
    let grace_end = Instant::now() + KILL_GRACE;
    let status = tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    // The shell may go at once; what it started gets the same grace to shut down.
    while Instant::now() < grace_end && !marked_processes(marker).is_empty() {
        tokio::time::sleep(POLL).await;
    }
    status
}

/// Why the command could not start, when `sh` itself says so: exit 127 (not found) or 126
/// (not executable) together with the shell's own diagnostic, which `sh -c` prefixes with
/// `sh: `. A 126 or 127 without it comes from inside the test (a script calling a function
/// the new code should define, say) and is a test failure the model may repair.
fn start_failure(report: &TestReport) -> Option<String> {
    let code = report.exit_code.filter(|code| matches!(code, 126 | 127))?;
    if report.timed_out {
        return None;
    }
    let diagnostic = report.output_tail.lines().find(|line| {
        line.starts_with("sh: ")
            && [
                "not found",
                "No such file",
                "Permission denied",
                "cannot execute",
                "Exec format error",
            ]
            .iter()
            .any(|reason| line.contains(reason))
    })?;
    Some(format!("exit {code}: {}", diagnostic.trim()))
}

fn signal_all(group: Option<Pid>, marker: &str, signal: Signal) {
    if let Some(group) = group {
        // ESRCH just means the group is already gone.
        let _ = killpg(group, signal);
    }
    for pid in marked_processes(marker) {
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

/// SIGKILLs the test's process group and every process carrying its marker until none is
/// left, or [`SWEEP_LIMIT`] passes.
async fn kill_all(group: Option<Pid>, marker: &str) {
    let deadline = Instant::now() + SWEEP_LIMIT;
    loop {
        signal_all(group, marker, Signal::SIGKILL);
        if marked_processes(marker).is_empty() || Instant::now() >= deadline {
            return;
        }
        // Killed processes take a moment to exit; a forking one may have made new ones.
        tokio::time::sleep(POLL).await;
    }
}

/// The processes whose environment holds `marker` (`NAME=value`). A dead process whose
/// parent has not reaped it (state `Z`; in a container the init process may never reap)
/// has no readable environment any more, so it is rightly not listed.
#[cfg(target_os = "linux")]
fn marked_processes(marker: &str) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&byte| byte == 0)
                    .any(|entry| entry == marker.as_bytes())
            })
        })
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect()
}

/// Without `/proc` only the process group can be signalled.
#[cfg(not(target_os = "linux"))]
fn marked_processes(_marker: &str) -> Vec<Pid> {
    Vec::new()
}

async fn read_into(mut pipe: impl AsyncRead + Unpin, output: Arc<Mutex<BoundedOutput>>) {
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n) = pipe.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(&buffer[..n]);
    }
}

/// Keeps the first [`HEAD_BYTES`] and the last [`TAIL_BYTES`] of a stream, whatever its size.
#[derive(Default)]
pub struct BoundedOutput {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: usize,
}

impl BoundedOutput {
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len();
        if self.head.len() < HEAD_BYTES {
            let take = bytes.len().min(HEAD_BYTES - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if bytes.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - TAIL_BYTES..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(TAIL_BYTES);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    /// The kept text, ANSI codes removed, with a marker where the middle was dropped.
    /// Around the cut only whole lines are kept, so no line (or character, or colour code)
    /// is shown in part.
    pub fn render(&self) -> String {
        let mut tail: Vec<u8> = self.tail.iter().copied().collect();
        if self.head.len() + tail.len() == self.total {
            let mut all = self.head.clone();
            all.append(&mut tail);
            return clean(&all);
        }
        let head = match self.head.iter().rposition(|&b| b == b'\n') {
            Some(end) => &self.head[..=end],
            None => &self.head[..],
        };
        let tail = match tail.iter().position(|&b| b == b'\n') {
            Some(start) if start + 1 < tail.len() => &tail[start + 1..],
            _ => &tail[..],
        };
        let omitted = self.total - head.len() - tail.len();
        let head = clean(head);
        let separator = if head.is_empty() || head.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        format!(
            "{head}{separator}[… {omitted} bytes of output omitted …]\n{}",
            clean(tail)
        )
    }
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&strip_ansi_escapes::strip(bytes)).into_owned()
}

/// Words that mark a line as being about a failure, in most languages' test tools
/// (pytest, unittest, cargo, go test, jest, mocha, rspec, junit, TAP, compilers).
const FAILURE_WORDS: &[&str] = &[
    "fail",
    "error",
    "assert",
    "panic",
    "exception",
    "traceback",
    "expected",
    "not ok",
    "fatal",
    "abort",
    "segmentation fault",
    "undefined",
    "not found",
];
/// Context kept around a failure line: a little before (the test's name), more after (the
/// traceback, the expected and actual values).
const BEFORE: usize = 2;
const AFTER: usize = 6;
/// The last lines always kept: the summary, or the failure of a tool that says nothing else.
const LAST_LINES: usize = 5;
/// Longest line shown; minified code or a data dump says nothing more after this.
const MAX_LINE: usize = 300;

/// The part of a test's output a repair needs, in at most `budget` bytes: the whole output
/// when it fits; otherwise the last lines and the lines that speak of a failure (an error,
/// a failed assertion, a panic, a traceback) with a little context, the first and last of
/// those before the ones in the middle, with a marker for each gap; when no line speaks of
/// a failure, as much of the end as fits. It knows no particular test tool: passing tests
/// rarely use these words, failing ones almost always do.
pub fn failure_excerpt(output: &str, budget: usize) -> String {
    let output = output.trim_end();
    if output.len() <= budget {
        return output.to_owned();
    }
    let lines: Vec<String> = output.lines().map(shorten).collect();
    let mut selection = Selection {
        keep: vec![false; lines.len()],
        left: budget,
        lines: &lines,
    };
    // The end first, within a third of the budget: the summary, or the last error.
    let mut end = lines.len();
    while end > 0
        && lines.len() - end < LAST_LINES
        && budget - selection.left < budget / 3
        && selection.take(end - 1..lines.len())
    {
        end -= 1;
    }
    // Then each failure with its context, from both ends inwards while they fit: a
    // compiler's first error is its most telling, a test tool details its failures last.
    let failures: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| {
            let lower = line.to_lowercase();
            FAILURE_WORDS.iter().any(|word| lower.contains(word))
        })
        .map(|(index, _)| index)
        .collect();
    let (front, back) = failures.split_at(failures.len().div_ceil(2));
    let mut back = back.iter().rev();
    for &index in front {
        for index in std::iter::once(index).chain(back.next().copied()) {
            selection.take(index.saturating_sub(BEFORE)..(index + AFTER + 1).min(lines.len()));
        }
    }
    // No failure words (a bare `diff`, a message in other words): the end is all there is
    // to go on, so it gets the rest of the budget. Otherwise the budget is a ceiling, not a
    // target: a local model's context is better spent on the code than on passing tests.
    while failures.is_empty() && end > 0 && selection.take(end - 1..lines.len()) {
        end -= 1;
    }

    let mut excerpt = String::new();
    let mut skipped = 0;
    for (line, kept) in lines.iter().zip(&selection.keep) {
        if *kept {
            if skipped > 0 {
                excerpt.push_str(&gap(skipped));
                skipped = 0;
            }
            excerpt.push_str(line);
            excerpt.push('\n');
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        excerpt.push_str(&gap(skipped));
    }
    excerpt.trim_end().to_owned()
}

/// Lines chosen for an excerpt and the bytes still free.
struct Selection<'a> {
    lines: &'a [String],
    keep: Vec<bool>,
    left: usize,
}

impl Selection<'_> {
    /// Keeps `range` if what it adds fits, counting a gap marker for each new region.
    fn take(&mut self, range: std::ops::Range<usize>) -> bool {
        let lines: usize = range
            .clone()
            .filter(|&i| !self.keep[i])
            .map(|i| self.lines[i].len() + 1)
            .sum();
        let new_region = range.start > 0 && !self.keep[range.start - 1];
        let cost = lines + if new_region { GAP_COST } else { 0 };
        if cost > self.left {
            return false;
        }
        self.left -= cost;
        self.keep[range].fill(true);
        true
    }
}

/// Room a gap marker may take: `[… 123456 lines …]` and its newline, with some slack.
const GAP_COST: usize = 32;

fn gap(lines: usize) -> String {
    format!("[… {lines} lines …]\n")
}

fn shorten(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_owned();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [… line cut …]", &line[..end])
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn credentials_are_withheld_and_plain_endpoints_kept() {
        let value = std::ffi::OsStr::new;
        for name in SECRETS.iter().chain(["GIT_DIR", "GIT_INDEX_FILE"].iter()) {
            assert!(withheld(name, value("x")), "{name} was kept");
        }
        for url in [
            "http://user:pass@127.0.0.1:8080/v1",
            "https://token@host/v1",
            "user:pass@127.0.0.1:11434",
        ] {
            for name in ENDPOINT_VARIABLES {
                assert!(withheld(name, value(url)), "{name}={url} was kept");
            }
        }
        for url in [
            "http://127.0.0.1:8080/v1",
            "127.0.0.1:11434",
            "http://host/v1?q=a@b",
            "http://host/path/a@b",
        ] {
            for name in ENDPOINT_VARIABLES {
                assert!(!withheld(name, value(url)), "{name}={url} was withheld");
            }
        }
        assert!(!withheld("PATH", value("user@host")));
    }

    #[test]
    fn bounded_output_keeps_head_and_tail_in_whole_lines() {
        let mut output = BoundedOutput::default();
        for i in 0..10_000 {
            output.push(format!("line {i}\n").as_bytes());
        }
        let text = output.render();
        assert!(text.starts_with("line 0\n"));
        assert!(text.ends_with("line 9999\n"));
        assert!(text.contains("bytes of output omitted"));
        assert!(text.len() < HEAD_BYTES + TAIL_BYTES + 100);
        for line in text.lines() {
            assert!(
                line.starts_with("line ") || line.contains("omitted"),
                "{line:?}"
            );
        }
        let omitted: usize = text
            .lines()
            .find(|l| l.contains("omitted"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap();
        let shown = text.len() - text.lines().find(|l| l.contains("omitted")).unwrap().len() - 1;
        assert_eq!(omitted + shown, output.total);
    }

    #[test]
    fn small_output_is_whole_and_without_colour() {
        let mut output = BoundedOutput::default();
        output.push(b"\x1b[31mFA");
        output.push(b"IL\x1b[0m test_a\n");
        assert_eq!(output.render(), "FAIL test_a\n");
    }

    fn report(exit_code: Option<i32>, output: &str) -> TestReport {
        TestReport {
            command: "x".to_owned(),
            exit_code,
            passed: false,
            timed_out: false,
            duration_ms: 0,
            output_tail: output.to_owned(),
            changed_paths: Vec::new(),
        }
    }

    #[test]
    fn only_the_shells_own_diagnostic_means_cannot_start() {
        let cases = [
            (Some(127), "sh: 1: pytest: not found\n", true),
            (Some(127), "sh: line 1: pytest: command not found\n", true),
            (Some(126), "sh: 1: ./run.sh: Permission denied\n", true),
            // From inside the test: the model's code may be at fault.
            (Some(127), "./run.sh: 3: my_function: not found\n", false),
            (Some(127), "bash: my_function: command not found\n", false),
            (Some(127), "", false),
            (Some(1), "sh: 1: pytest: not found\n", false),
            (None, "sh: 1: pytest: not found\n", false),
        ];
        for (code, output, expected) in cases {
            assert_eq!(
                start_failure(&report(code, output)).is_some(),
                expected,
                "{code:?} {output:?}"
            );
        }
    }

    fn noisy_output() -> String {
        let mut output = String::from("============ test session starts ============\n");
        for i in 0..300 {
            writeln!(output, "tests/test_mod.py::test_case_{i} PASSED").unwrap();
        }
        output.push_str("tests/test_mod.py::test_total FAILED\n");
        for i in 300..600 {
            writeln!(output, "tests/test_mod.py::test_case_{i} PASSED").unwrap();
        }
        output.push_str(
            "================ FAILURES ================\n\
             ________________ test_total ________________\n\
             \n\
             \x20   def test_total():\n\
             >       assert total([1, 2]) == 3\n\
             E       assert 4 == 3\n\
             E        +  where 4 = total([1, 2])\n\
             \n\
             tests/test_mod.py:12: AssertionError\n\
             ========== short test summary info ==========\n\
             FAILED tests/test_mod.py::test_total - assert 4 == 3\n\
             ========== 1 failed, 600 passed in 0.52s ==========\n",
        );
        output
    }

    #[test]
    fn an_excerpt_keeps_failures_and_the_end_within_budget() {
        let output = noisy_output();
        let excerpt = failure_excerpt(&output, 2000);
        assert!(excerpt.len() <= 2000, "{} bytes", excerpt.len());
        for needed in [
            "test_total FAILED",
            "E       assert 4 == 3",
            "+  where 4 = total([1, 2])",
            "tests/test_mod.py:12: AssertionError",
            "1 failed, 600 passed",
        ] {
            assert!(excerpt.contains(needed), "{needed} missing:\n{excerpt}");
        }
        assert!(excerpt.contains(" lines …]"), "{excerpt}");
        let passing = excerpt.matches("PASSED").count();
        assert!(passing <= 15, "{passing} of 600 passing lines:\n{excerpt}");
    }

    #[test]
    fn an_excerpt_of_many_failures_keeps_the_first_and_the_last() {
        let mut output = String::new();
        for i in 0..500 {
            writeln!(output, "case {i}\nerror: case {i} went wrong").unwrap();
        }
        output.push_str("summary: 500 errors\n");
        let excerpt = failure_excerpt(&output, 1500);
        assert!(excerpt.len() <= 1500, "{} bytes", excerpt.len());
        assert!(excerpt.contains("error: case 0 went wrong"), "{excerpt}");
        assert!(excerpt.contains("error: case 499 went wrong"), "{excerpt}");
        assert!(!excerpt.contains("error: case 250 went wrong"), "{excerpt}");
        assert!(excerpt.ends_with("summary: 500 errors"), "{excerpt}");
    }

    #[test]
    fn an_excerpt_is_not_starved_by_early_noise() {
        let mut output = String::new();
        for i in 0..200 {
            writeln!(output, "debug: retrying connection, error count {i}").unwrap();
        }
        for i in 0..100 {
            writeln!(output, "test_{i} ... ok").unwrap();
        }
        output.push_str("thread 'parse' panicked at src/lib.rs:9:5:\nleft: 3\nright: 4\n");
        for i in 100..110 {
            writeln!(output, "test_{i} ... ok").unwrap();
        }
        output.push_str("test result: FAILED. 109 passed; 1 failed\n");
        let excerpt = failure_excerpt(&output, 1500);
        assert!(excerpt.len() <= 1500, "{} bytes", excerpt.len());
        for needed in [
            "panicked at src/lib.rs:9:5",
            "left: 3",
            "right: 4",
            "1 failed",
        ] {
            assert!(excerpt.contains(needed), "{needed} missing:\n{excerpt}");
        }
    }

    #[test]
    fn an_excerpt_without_failure_words_is_the_end() {
        let output = (0..2000).fold(String::new(), |mut output, i| {
            writeln!(output, "step {i}").unwrap();
            output
        });
        let excerpt = failure_excerpt(&output, 500);
        assert!(excerpt.len() <= 500, "{} bytes", excerpt.len());
        assert!(excerpt.starts_with("[… "), "{excerpt}");
        assert!(excerpt.ends_with("step 1999"), "{excerpt}");
    }

    #[test]
    fn an_excerpt_of_short_output_is_the_output() {
        assert_eq!(failure_excerpt("ok\nFAIL x\n\n", 100), "ok\nFAIL x");
    }

    #[test]
    fn an_excerpt_cuts_huge_lines() {
        let output = format!("{}\nError: boom\n", "x".repeat(1_000_000));
        let excerpt = failure_excerpt(&output, 1000);
        assert!(excerpt.len() <= 1000, "{} bytes", excerpt.len());
        assert!(excerpt.contains("Error: boom"), "{excerpt}");
    }
}
