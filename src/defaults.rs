//! Every default a run starts from, in one place: the command line's `--help` shows these
//! values and the library's own defaults (`RunOptions::new`, `Limits::default`,
//! `RetryPolicy::default`, `Retention::default`) use them, so the two cannot drift apart.

use std::time::Duration;

/// Sampling temperature sent to the model.
pub const TEMPERATURE: f64 = 0.2;
/// Cap on the bytes of all context files together.
pub const CONTEXT_BUDGET_BYTES: usize = 100_000;
/// Model attempts including repairs, when neither the command line nor the spec says.
pub const MAX_ATTEMPTS: u32 = 2;
/// The most model attempts a run may make.
pub const MAX_MAX_ATTEMPTS: u32 = 5;
/// Seconds the spec's test command may run.
pub const TEST_TIMEOUT_SECS: u64 = 300;

/// Waiting for the connection to the model server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From sending a request until the model's first generated text (a cold model may take
/// long to load, and a long prompt long to read).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
/// A reply stream stalling between two chunks, once the model is generating.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// One model call in all, its retries and their waits included.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(1800);
/// A reply longer than this is cut off and reported.
pub const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// Retries of a transient model-server fault.
pub const RETRIES: u32 = 2;
/// The first retry's backoff in milliseconds; it doubles each retry.
pub const RETRY_BASE_MS: u64 = 1000;
/// The longest wait before a retry.
pub const RETRY_MAX_WAIT: Duration = Duration::from_secs(30);

/// How long a run or a rollback waits for the repository's lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// `prune` keeps at least this many of the newest runs' backups.
pub const KEEP_RUNS: usize = 50;
/// `prune` keeps every run's backups younger than this many days.
pub const KEEP_DAYS: u64 = 14;
