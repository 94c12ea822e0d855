//! Blocking work (reading files and git, extraction, the diff) runs off the async threads:
//! several runs can then share one runtime, and a signal is seen while the work runs.

/// Runs `work` on the runtime's blocking threads and waits for it.
pub(crate) async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only a runtime shutting down cancels blocking work, and then nothing waits here.
        Err(_) => std::future::pending().await,
    }
}
