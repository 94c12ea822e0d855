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

/// Triage: lines of output an atomic task stays under.
pub const TRIAGE_MAX_LINES: u32 = 50;
/// Triage: imports an atomic task's target has at most.
pub const TRIAGE_MAX_IMPORTS: u32 = 2;
/// Triage: output files an atomic task writes.
pub const TRIAGE_MAX_FILES: u32 = 1;
/// Triage: the share of the context window a prompt and its reply fill comfortably.
pub const TRIAGE_WINDOW_SHARE: f64 = 0.75;
/// Triage: a score at or above this is `delegate`.
pub const TRIAGE_DELEGATE_AT: u32 = 7;
/// Triage: a score at or above this (below `delegate`) is `delegate_with_care`.
pub const TRIAGE_CARE_AT: u32 = 4;
/// Triage: the context window assumed for a profile that does not give one (Ollama's
/// default is smaller, most coding models' larger); a task that cannot fit it is only
/// flagged, not refused, since the real window is unknown.
pub const ASSUMED_CONTEXT_WINDOW: u32 = 8192;
/// Triage: words in a description that mark design work rather than an atomic task.
pub const TRIAGE_DESIGN_WORDS: &[&str] = &[
    "architecture",
    "architect",
    "design",
    "migrate",
    "migration",
    "refactor across",
    "across the codebase",
    "security",
    "authentication",
    "authorization",
    "concurrency",
    "protocol",
];
/// Triage: words that mark a task that is not stateless.
pub const TRIAGE_STATE_WORDS: &[&str] = &[
    "global state",
    "singleton",
    "database",
    "session",
    "cache",
    "mutable state",
    "thread",
];
