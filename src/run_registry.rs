//! The runs in flight inside the MCP server: each started as its own task, found again by
//! its run id, waited on for a while by any number of calls, told to stop, and all
//! stopped together when the server ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cancel::{Cancel, Canceller};
use crate::document::Document;

/// One run the server started.
#[derive(Debug)]
pub struct Run {
    /// The run's id once its journal exists (or its result's, for a run that ended first).
    id: watch::Receiver<Option<String>>,
    /// The finished document.
    done: watch::Receiver<Option<Arc<Document>>>,
    /// Every progress line so far, in order.
    lines: watch::Receiver<Vec<String>>,
    canceller: Canceller,
}

/// What a wait on a run found.
#[derive(Debug)]
pub enum Waited {
    Done(Arc<Document>),
    /// Still running under this id.
    Running(String),
}

/// What a started run's work is told: where to send its id, its progress, and its end.
pub struct Feed {
    pub id: Arc<watch::Sender<Option<String>>>,
    pub cancel: Cancel,
    lines: watch::Sender<Vec<String>>,
    done: watch::Sender<Option<Arc<Document>>>,
}

impl Feed {
    /// Records one progress line for every waiter to forward.
    pub fn progress(&self, line: &str) {
        self.lines.send_modify(|lines| lines.push(line.to_owned()));
    }

    /// Records the finished document, and its run id (a batch's `batch_id`) if the run
    /// never reported one.
    pub fn finish(&self, document: Document) {
        if self.id.borrow().is_none() {
            self.id.send_replace(self.id_of(&document));
        }
        self.done.send_replace(Some(Arc::new(document)));
    }

    /// The run's id: the one it reported, else its finished document's `run_id` (a
    /// batch's `batch_id`).
    pub fn id_of(&self, document: &Document) -> Option<String> {
        if let Some(id) = self.id.borrow().clone() {
            return Some(id);
        }
        serde_json::to_value(&document.json).ok().and_then(|json| {
            let id = json.get("run_id").or_else(|| json.get("batch_id"))?;
            id.as_str().map(str::to_owned)
        })
    }
}

/// The server's runs, by id, and the tasks that carry them.
#[derive(Debug, Default)]
pub struct Registry {
    runs: Mutex<HashMap<String, Arc<Run>>>,
    tasks: Mutex<Vec<(Arc<Run>, JoinHandle<()>)>>,
}

impl Registry {
    /// Starts `work` on its own task with a fresh [`Feed`]; the run is found by id once
    /// its id is known.
    pub fn start<W, F>(self: &Arc<Self>, work: W) -> Arc<Run>
    where
        W: FnOnce(Feed) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let (id_sender, id) = watch::channel(None);
        let (done_sender, done) = watch::channel(None);
        let (lines_sender, lines) = watch::channel(Vec::new());
        let (canceller, cancel) = Cancel::new();
        let run = Arc::new(Run {
            id,
            done,
            lines,
            canceller,
        });
        let feed = Feed {
            id: Arc::new(id_sender),
            cancel,
            lines: lines_sender,
            done: done_sender,
        };
        let task = tokio::spawn(work(feed));
        // Registered under its id as soon as it has one, so `get_run` finds it even
        // before the call that started it returns.
        let registry = Arc::clone(self);
        let mut id_watch = run.id.clone();
        let registered = Arc::clone(&run);
        tokio::spawn(async move {
            if let Ok(id) = id_watch.wait_for(Option::is_some).await
                && let Some(id) = id.clone()
            {
                registry.lock_runs().insert(id, registered);
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Arc::clone(&run), task));
        run
    }

    fn lock_runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Run>>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn find(&self, id: &str) -> Option<Arc<Run>> {
        self.lock_runs().get(id).cloned()
    }

    /// Tells every run still going to stop, as SIGTERM would.
    pub fn stop_running(&self) {
        for (run, _) in &*self.tasks.lock().unwrap_or_else(PoisonError::into_inner) {
            run.stop();
        }
    }

    /// Stops every run still going, as SIGTERM would, and waits until each has undone
    /// its attempt and ended.
    pub async fn stop_all(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for (run, _) in &tasks {
            run.stop();
        }
        for (_, task) in tasks {
            let _ = task.await;
        }
    }
}

impl Run {
    /// Tells the run to stop the way SIGTERM does: the attempt is undone, the document
    /// says `interrupted`.
    pub fn stop(&self) {
        if self.done.borrow().is_none() {
            self.canceller.cancel(Signal::SIGTERM);
        }
    }

    /// The progress lines from index `from` on.
    pub fn lines_from(&self, from: usize) -> Vec<String> {
        self.lines.borrow().iter().skip(from).cloned().collect()
    }

    /// Completes when a progress line arrives after the first `seen`.
    pub async fn more_lines(&self, seen: usize) {
        let mut lines = self.lines.clone();
        if lines.wait_for(|lines| lines.len() > seen).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The document once the run ends.
    pub async fn finished(&self) -> Arc<Document> {
        let mut done = self.done.clone();
        if let Ok(document) = done.wait_for(Option::is_some).await
            && let Some(document) = document.clone()
        {
            return document;
        }
        // The task ended without a document only if it panicked; it never comes now.
        std::future::pending().await
    }

    /// Waits up to `wait` for the run to end; past it, still waits for the run's id (a
    /// run waiting for another's repository lock has none yet), so the answer always
    /// names the id that `get_run`, `rollback` and the result use.
    pub async fn wait(&self, wait: Duration) -> Waited {
        if let Ok(document) = tokio::time::timeout(wait, self.finished()).await {
            return Waited::Done(document);
        }
        let mut id = self.id.clone();
        tokio::select! {
            biased;
            document = self.finished() => Waited::Done(document),
            Ok(id) = id.wait_for(Option::is_some) => Waited::Running(id.clone().unwrap_or_default()),
        }
    }
}
