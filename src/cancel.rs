//! Stopping a run early: the signal that asked for it, and waiting for it beside work.

use nix::sys::signal::Signal;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// Tells a run to stop, with the signal that asked for it. The run stops at whatever it
/// is waiting for (the server, the model, the lock, the test): a test is stopped with
/// everything it started, the attempt's writes are undone, and the run ends with error
/// kind `interrupted`. Work that does not wait (a write, a restore) is finished first,
/// so the tree is never left half-written.
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<Option<Signal>>);

/// Sets the [`Cancel`] it was made with.
#[derive(Debug)]
pub struct Canceller(watch::Sender<Option<Signal>>);

impl Cancel {
    pub fn new() -> (Canceller, Self) {
        let (sender, receiver) = watch::channel(None);
        (Canceller(sender), Self(receiver))
    }

    /// For a run nothing stops.
    pub fn never() -> Self {
        Self::new().1
    }

    /// The signal, once the run was told to stop.
    pub fn signal(&self) -> Option<Signal> {
        *self.0.borrow()
    }

    /// Completes when the run is told to stop.
    pub async fn cancelled(&self) -> Signal {
        let mut receiver = self.0.clone();
        if let Ok(signal) = receiver.wait_for(Option::is_some).await
            && let Some(signal) = *signal
        {
            return signal;
        }
        // The canceller is gone without having stopped the run: nothing can stop it now.
        std::future::pending().await
    }

    /// `work`, unless the run is told to stop first; then `work` is dropped.
    pub(crate) async fn or_cancel<T>(&self, work: impl Future<Output = T>) -> Result<T> {
        tokio::select! {
            biased;
            signal = self.cancelled() => Err(Error::Interrupted(signal)),
            value = work => Ok(value),
        }
    }
}

impl Canceller {
    pub fn cancel(&self, signal: Signal) {
        self.0.send_replace(Some(signal));
    }
}

/// Test hook, left out of release builds: `PHASE:MARKER` makes the named phase (`extract`
/// or `diff`, both CPU-bound; `cleanup`, the undo after a signal; `climb` and
/// `fall_back`, an escalation or a fallback about to connect to its next server) create the file MARKER,
/// then keep working until `MARKER.sent` exists or, given `cancel`, the run is told to
/// stop: a test can signal the run while it is busy there.
pub const STALL_AT_ENV: &str = "EXECUTE_LOCAL_TASK_TEST_STALL_AT";

/// Where the [`STALL_AT_ENV`] hook holds a phase; nothing in release builds.
pub(crate) fn stall_point(phase: &str, cancel: Option<&Cancel>) {
    #[cfg(debug_assertions)]
    if let Ok(value) = std::env::var(STALL_AT_ENV)
        && let Some((at, marker)) = value.split_once(':')
        && at == phase
    {
        let _ = std::fs::write(marker, b"");
        let sent = std::path::PathBuf::from(format!("{marker}.sent"));
        while !sent.exists() && cancel.is_none_or(|cancel| cancel.signal().is_none()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (phase, cancel);
}
