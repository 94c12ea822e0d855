//! A batch's progress on stderr: on a terminal a live display (a bar of finished tasks and
//! the latest line of the running ones), otherwise one plain line an event, which a log or
//! a supervising agent reads as it comes.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::result::TaskResult;

pub struct Display {
    bar: Option<ProgressBar>,
    quiet: bool,
    total: usize,
    done: AtomicUsize,
    /// The latest line of each running task, shown beside the bar.
    running: Mutex<Vec<(String, String)>>,
}

impl Display {
    /// A live display when stderr is a terminal and not `quiet`.
    pub fn new(total: usize, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(u64::try_from(total).unwrap_or(u64::MAX));
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} [{pos}/{len}] {elapsed} {wide_msg}")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            quiet,
            total,
            done: AtomicUsize::new(0),
            running: Mutex::new(Vec::new()),
        }
    }

    pub fn started(&self, task_id: &str) {
        if let Some(bar) = &self.bar {
            self.update(task_id, Some("starting"));
            bar.tick();
        } else {
            self.plain(&format!("{task_id}: started"));
        }
    }

    pub fn line(&self, task_id: &str, line: &str) {
        if self.bar.is_some() {
            self.update(task_id, Some(line));
        } else {
            self.plain(&format!("{task_id}: {line}"));
        }
    }

    pub fn finished(&self, result: &TaskResult) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let task_id = result.task_id.as_deref().unwrap_or("(no task id)");
        let status = serde_json::to_value(result.status)
            .ok()
            .and_then(|status| status.as_str().map(str::to_owned))
            .unwrap_or_default();
        // Most summaries begin with their status already ("escalate: …").
        let line = if result.summary.starts_with(&status) {
            format!("[{n}/{}] {task_id} {}", self.total, result.summary)
        } else {
            format!(
                "[{n}/{}] {task_id} {status}: {}",
                self.total, result.summary
            )
        };
        if let Some(bar) = &self.bar {
            self.update(task_id, None);
            bar.println(format!("execute-local-task: {line}"));
            bar.inc(1);
        } else {
            self.plain(&line);
        }
    }

    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("execute-local-task: {line}")),
            None => self.plain(line),
        }
    }

    /// Runs `write` (a result line on stdout) with the live display hidden, so a terminal
    /// showing both gets whole lines.
    pub fn suspend<R>(&self, write: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// Removes the live display before the summary's lines.
    pub fn close(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Sets (or with None removes) a running task's line and redraws the message.
    fn update(&self, task_id: &str, line: Option<&str>) {
        let Some(bar) = &self.bar else { return };
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        running.retain(|(id, _)| id != task_id);
        if let Some(line) = line {
            running.push((task_id.to_owned(), line.to_owned()));
        }
        let message = running
            .iter()
            .map(|(id, line)| format!("{id}: {line}"))
            .collect::<Vec<_>>()
            .join(" | ");
        bar.set_message(message);
    }

    /// One line, never panicking: a closed stderr must not stop a batch.
    fn plain(&self, line: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "execute-local-task: {line}");
        }
    }
}
