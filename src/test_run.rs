//! Runs the task's test command: `sh -c` in the repository root, its own process group,
//! a hard time limit, and bounded output.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::result::TestReport;

/// Variables that would make git inside the test act on another repository or index:
/// a run started from a git hook inherits them.
const GIT_REDIRECTS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    "GIT_PREFIX",
    "GIT_QUARANTINE_PATH",
];

/// How long the test gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for output pipes after the process group is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Bytes of output kept: the start, and the end, which usually holds the failure.
pub const HEAD_BYTES: usize = 4 * 1024;
pub const TAIL_BYTES: usize = 12 * 1024;

/// The test could not be started at all: the spec's command must be fixed.
#[derive(Debug, Clone)]
pub struct CannotStart {
    pub message: String,
    pub report: Option<TestReport>,
}

pub async fn run(command: &str, dir: &Path, timeout: Duration) -> Result<TestReport, CannotStart> {
    let started = Instant::now();
    let mut process = Command::new("sh");
    process
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in GIT_REDIRECTS {
        process.env_remove(name);
    }
    let mut child = process.spawn().map_err(|error| CannotStart {
        message: format!(
            "cannot start `sh -c {command:?}` in {}: {error}",
            dir.display()
        ),
        report: None,
    })?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);

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

    let (status, timed_out) = if let Ok(status) = tokio::time::timeout(timeout, child.wait()).await
    {
        (status.ok(), false)
    } else {
        signal_group(group, Signal::SIGTERM);
        let status = if let Ok(status) = tokio::time::timeout(KILL_GRACE, child.wait()).await {
            status.ok()
        } else {
            signal_group(group, Signal::SIGKILL);
            child.wait().await.ok()
        };
        (status, true)
    };
    // Whatever the test left running (a server, `sleep 1000 &`) goes too; it would
    // otherwise hold the output pipes open and outlive the tool.
    signal_group(group, Signal::SIGKILL);
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, reader).await.is_err() {
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
    };
    match exit_code {
        // `sh` says 127 for a command it cannot find and 126 for one it cannot execute.
        Some(code @ (126 | 127)) if !timed_out => Err(CannotStart {
            message: format!(
                "the test command `{command}` could not start (exit {code}: {}); fix test_command in the spec",
                if code == 127 {
                    "command not found"
                } else {
                    "not executable"
                }
            ),
            report: Some(report),
        }),
        _ => Ok(report),
    }
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        // ESRCH just means the group is already gone.
        let _ = killpg(group, signal);
    }
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
    pub fn render(&self) -> String {
        let kept = self.head.len() + self.tail.len();
        let head = clean(&self.head);
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let tail = clean(&tail);
        if kept < self.total {
            format!(
                "{head}\n[… {} bytes of output omitted …]\n{tail}",
                self.total - kept
            )
        } else {
            head + &tail
        }
    }
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&strip_ansi_escapes::strip(bytes)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_output_keeps_head_and_tail() {
        let mut output = BoundedOutput::default();
        for i in 0..10_000 {
            output.push(format!("line {i}\n").as_bytes());
        }
        let text = output.render();
        assert!(text.starts_with("line 0\n"));
        assert!(text.ends_with("line 9999\n"));
        assert!(text.contains("bytes of output omitted"));
        assert!(text.len() < HEAD_BYTES + TAIL_BYTES + 100);
    }

    #[test]
    fn small_output_is_whole_and_without_colour() {
        let mut output = BoundedOutput::default();
        output.push(b"\x1b[31mFAIL\x1b[0m test_a\n");
        assert_eq!(output.render(), "FAIL test_a\n");
    }
}
