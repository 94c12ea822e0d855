//! Every default a run starts from, in one place: the command line's `--help` shows these
//! values and the library's own defaults (`RunOptions::new`, `Limits::default`,
//! `RetryPolicy::default`) use them, so the two cannot drift apart.

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
/// Waiting for the response headers (a cold model may take long to load).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
/// A reply stream stalling between two chunks.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// One model call in all.
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

/// Runs `log` lists when not told.
pub const LOG_LIMIT: u32 = 20;
