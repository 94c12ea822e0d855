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
/// How long a pool member that failed is tried only after the others (in this process).
pub const POOL_SET_ASIDE: Duration = Duration::from_secs(30);

/// How long a run or a rollback waits for the repository's lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// `prune` keeps at least this many of the newest runs' backups.
pub const KEEP_RUNS: usize = 50;
/// `prune` keeps every run's backups younger than this many days.
pub const KEEP_DAYS: u64 = 14;

/// Runs `log` lists when not told.
pub const LOG_LIMIT: u32 = 20;
/// Finished results the MCP server keeps per repository for `get_run` after a restart
/// (the newest; older ones are removed as new ones are kept).
pub const MCP_RESULTS_KEPT: usize = 200;

/// Trust lifecycle: reviewed runs of a (kind, model) pair in `calibrate`, where every run
/// is reviewed.
pub const TRUST_CALIBRATE_RUNS: usize = 5;
/// Trust lifecycle: reviewed runs before a pair may leave `establish` for `trust`…
pub const TRUST_ESTABLISH_RUNS: usize = 20;
/// …with at least this percentage of them good or acceptable.
pub const TRUST_GOOD_PERCENT: usize = 80;
/// The percentage of runs `establish` samples for review.
pub const TRUST_SAMPLE_PERCENT: u64 = 15;
/// This many `poor` verdicts among the last [`TRUST_RELAPSE_WINDOW`] send a pair back to
/// `calibrate`.
pub const TRUST_RELAPSE_POOR: usize = 2;
pub const TRUST_RELAPSE_WINDOW: usize = 10;
/// In `trust`, a run that added and removed more lines than this is still reviewed.
pub const TRUST_MAX_CHANGED_LINES: u64 = 200;
/// A repository with fewer reviewed runs of a pair than this judges the pair by its record
/// in all repositories.
pub const TRUST_REPOSITORY_RUNS: usize = 5;

/// Savings: what one token the supervisor writes costs, in tokens it reads (the usual
/// output/input price ratio of hosted models).
pub const SAVINGS_COST_RATIO: u64 = 5;
/// Savings: bytes of text per token, for estimating tokens from sizes.
pub const SAVINGS_BYTES_PER_TOKEN: u64 = 4;

/// The user's targets `stats` reports against: the share of runs that did not escalate…
pub const TARGET_DELEGATION_RATE: f64 = 0.7;
/// …of runs that succeeded at their first attempt…
pub const TARGET_FIRST_PASS_RATE: f64 = 0.8;
/// …and of the gross supervisor tokens saved that remain after the overhead (net / gross).
pub const TARGET_SAVED_SHARE: f64 = 0.6;

/// Validator checkpoint: a verdict less confident than this fails the attempt, even one
/// that passes the code (a reviewer unsure of its own approval has not approved).
pub const VALIDATOR_MIN_CONFIDENCE: f64 = 0.5;
/// Validator checkpoint: the reviewer's sampling temperature when its profile gives none
/// (a verdict should not depend on the dice).
pub const VALIDATOR_TEMPERATURE: f64 = 0.0;

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

/// Routing: runs of a profile for a task kind the ledger must hold before its success
/// rate moves the route.
pub const ROUTE_MIN_RUNS: u32 = 5;
/// Routing: a profile whose record for a kind is below this share of successes is passed
/// over for that kind.
pub const ROUTE_MIN_SUCCESS_RATE: f64 = 0.5;
/// Model calls one task may make in all: every rung of the escalation ladder and every
/// fallback call together (`max_attempts` bounds each rung).
pub const MAX_CALLS: u32 = 6;
/// Seconds a model server that failed is passed over by every run on the machine.
pub const COOLDOWN_SECS: u32 = 120;

/// A batch on branches runs tasks ahead of its model calls (each in a worktree of its
/// own) only while making a worktree took at most this: on a large repository the extra
/// worktrees cost more than running ahead saves.
pub const RUN_AHEAD_WORKTREE_BUDGET: std::time::Duration = std::time::Duration::from_millis(200);
