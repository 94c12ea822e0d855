//! The run ledger: one `SQLite` database per user holding every run of every repository,
//! its attempts, files, events (rollback, apply, merge, discard) and review verdicts.
//! This module owns where the database lives, its schema and migrations, and every read
//! and write; what a run records is assembled in `record.rs`.
//!
//! Many processes write at once (a batch, several supervisors): the database is in WAL
//! mode, every connection waits on a busy database (`busy_timeout`), every write is one
//! `BEGIN IMMEDIATE` transaction (a deferred one that upgrades to a writer can fail at
//! once with "database is locked" whatever the timeout), and a write that still finds the
//! database busy is retried. What remains: a ledger on a network file system, where
//! `SQLite`'s locking may not hold, is not supported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension as _, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file name under the data directory.
const FILE_NAME: &str = "ledger.db";
/// How long one statement waits for another process's write before it is retried.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a write that found the database busy past [`BUSY_TIMEOUT`].
const BUSY_RETRIES: u32 = 6;

/// The schema, one migration a step, applied in order in one transaction each; the
/// database's `PRAGMA user_version` is the number applied. Never edit a published step:
/// add one. Columns for what later features fill (profile, route, triage, branch, commit,
/// savings) are here from the start and nullable, so they need no migration.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE runs (
    run_id            TEXT PRIMARY KEY,
    batch_id          TEXT,
    repo_root         TEXT NOT NULL,
    repo_id           TEXT NOT NULL,
    task_id           TEXT,
    kind              TEXT,
    spec_hash         TEXT,
    profile           TEXT,
    provider          TEXT,
    model             TEXT,
    endpoint          TEXT,
    route_reason      TEXT,
    triage_score      REAL,
    triage_verdict    TEXT,
    status            TEXT NOT NULL,
    error_kind        TEXT,
    error_message     TEXT,
    summary           TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    test_command      TEXT,
    test_passed       INTEGER,
    test_ms           INTEGER,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    tokens_estimated  INTEGER NOT NULL,
    files_changed     INTEGER NOT NULL,
    lines_added       INTEGER NOT NULL,
    lines_removed     INTEGER NOT NULL,
    branch            TEXT,
    base              TEXT,
    commit_id         TEXT,
    review_required   INTEGER,
    review_phase      TEXT,
    saved_gross       INTEGER,
    saved_net         INTEGER,
    started_at        TEXT NOT NULL,
    ended_at          TEXT NOT NULL,
    duration_ms       INTEGER NOT NULL
);
CREATE INDEX runs_by_start ON runs (started_at);
CREATE INDEX runs_by_pair ON runs (kind, model);
CREATE TABLE attempts (
    run_id            TEXT NOT NULL,
    n                 INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    error             TEXT,
    profile           TEXT,
    model             TEXT,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model_ms          INTEGER,
    PRIMARY KEY (run_id, n)
);
CREATE TABLE files (
    run_id        TEXT NOT NULL,
    path          TEXT NOT NULL,
    action        TEXT NOT NULL,
    bytes         INTEGER NOT NULL,
    lines_added   INTEGER NOT NULL,
    lines_removed INTEGER NOT NULL,
    PRIMARY KEY (run_id, path)
);
CREATE TABLE events (
    id     INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    kind   TEXT NOT NULL,
    at     TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX events_by_run ON events (run_id);
CREATE TABLE reviews (
    id           INTEGER PRIMARY KEY,
    run_id       TEXT NOT NULL,
    verdict      TEXT NOT NULL,
    reason       TEXT,
    failure_mode TEXT,
    at           TEXT NOT NULL
);
CREATE INDEX reviews_by_run ON reviews (run_id);
CREATE VIEW current_reviews AS
    SELECT * FROM reviews AS r
    WHERE r.id = (SELECT max(id) FROM reviews WHERE run_id = r.run_id);
",
    r"
CREATE TABLE exchanges (
    run_id   TEXT PRIMARY KEY,
    messages TEXT NOT NULL,
    reply    TEXT NOT NULL
);
",
];

/// The schema version this build writes.
pub fn schema_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Where the ledger lives: `LOCAL_TASK_LEDGER`, else `$XDG_DATA_HOME/execute-local-task/
/// ledger.db`, else `~/.local/share/execute-local-task/ledger.db`.
pub fn locate(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf> {
    locate_configured(env, None)
}

/// As [`locate`], with the user config's `[ledger] path` between the variable and the
/// XDG default.
pub fn locate_configured(
    env: &dyn Fn(&str) -> Option<String>,
    configured: Option<&Path>,
) -> Result<PathBuf> {
    let set = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    if let Some(path) = set("LOCAL_TASK_LEDGER") {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = configured {
        return Ok(path.to_path_buf());
    }
    // The XDG spec ignores a relative value.
    let data = set("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| set("HOME").map(|home| Path::new(&home).join(".local/share")))
        .ok_or_else(|| Error::Ledger {
            path: PathBuf::from(FILE_NAME),
            message: "neither LOCAL_TASK_LEDGER, XDG_DATA_HOME nor HOME is set".to_owned(),
        })?;
    Ok(data.join("execute-local-task").join(FILE_NAME))
}

/// One run as recorded: the `runs` row with its attempts and files.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub run_id: String,
    pub batch_id: Option<String>,
    pub repo_root: String,
    pub repo_id: String,
    pub task_id: Option<String>,
    pub kind: Option<String>,
    pub spec_hash: Option<String>,
    pub profile: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub endpoint: Option<String>,
    /// Why routing picked `profile`.
    pub route_reason: Option<String>,
    pub status: String,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub summary: String,
    pub test_command: Option<String>,
    pub test_passed: Option<bool>,
    pub test_ms: Option<u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub tokens_estimated: bool,
    pub branch: Option<String>,
    pub review_required: Option<bool>,
    pub review_phase: Option<String>,
    pub saved_gross: Option<u64>,
    pub saved_net: Option<i64>,
    pub started_at: String,
    pub ended_at: String,
    pub duration_ms: u64,
    pub attempts: Vec<AttemptRecord>,
    pub files: Vec<FileRecord>,
    /// A successful run's first request (JSON array of `{role, content}`) and its accepted
    /// code as a reply, for `export`.
    pub exchange: Option<(String, String)>,
    /// The run's triage, as its result reports it.
    pub triage_score: Option<u32>,
    pub triage_verdict: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AttemptRecord {
    pub n: u32,
    pub outcome: String,
    pub error: Option<String>,
    /// The profile that made the attempt (null without profiles).
    pub profile: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub model_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct FileRecord {
    pub path: String,
    pub action: String,
    pub bytes: u64,
    pub lines_added: u64,
    pub lines_removed: u64,
}

/// A run as `log` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggedRun {
    pub run_id: String,
    pub batch_id: Option<String>,
    pub repo_root: String,
    pub task_id: Option<String>,
    pub kind: Option<String>,
    pub model: Option<String>,
    pub status: String,
    pub error_kind: Option<String>,
    pub attempts: u32,
    /// Null when no test ran.
    pub test_passed: Option<bool>,
    pub files_changed: u32,
    pub lines_added: u64,
    pub lines_removed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub started_at: String,
    pub duration_ms: u64,
    /// The current verdict, null when the run has none.
    pub verdict: Option<String>,
    pub review_required: Option<bool>,
    /// The triage score (0–10) and verdict, null for a run recorded before triage was.
    pub triage_score: Option<u32>,
    pub triage_verdict: Option<String>,
    /// A branch run's task branch, the commit it started from and the commit it made
    /// (null for a run in place, and the commit for one that did not succeed).
    pub branch: Option<String>,
    pub base: Option<String>,
    pub commit_id: Option<String>,
}

/// Where a branch run's work is, for [`Ledger::set_branch`].
#[derive(Debug, Clone, Copy)]
pub struct BranchPlace<'a> {
    pub repo_root: &'a str,
    pub branch: &'a str,
    pub base: &'a str,
    pub commit: Option<&'a str>,
}

/// One verdict of a run's review history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewEntry {
    pub verdict: String,
    pub reason: Option<String>,
    pub failure_mode: Option<String>,
    pub at: String,
}

/// A pair's reviewed run, for the trust lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub run_id: String,
    pub verdict: String,
}

/// An open ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`, and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |message: String| Error::Ledger {
            path: path.to_path_buf(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|error| fail(format!("cannot create its directory: {error}")))?;
        }
        let conn = Connection::open(path).map_err(|error| fail(error.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|error| fail(error.to_string()))?;
        let mut ledger = Self {
            conn,
            path: path.to_path_buf(),
        };
        ledger.retry(|conn| {
            // WAL: readers never block the writer, and writers queue instead of failing.
            conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
                row.get::<_, String>(0)
            })
            .map(drop)
        })?;
        ledger.migrate()?;
        Ok(ledger)
    }

    /// Opens the ledger where `LOCAL_TASK_LEDGER`, else the configuration of the working
    /// directory's repository and the user, else the default says.
    pub fn open_default(env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        Self::open_configured(env, &crate::config::ledger_settings(None, env)?)
    }

    /// Opens the ledger where `LOCAL_TASK_LEDGER`, else `settings`' path, else the default
    /// says: for a run, which loaded its configuration already.
    pub fn open_configured(
        env: &dyn Fn(&str) -> Option<String>,
        settings: &crate::config::LedgerSettings,
    ) -> Result<Self> {
        Self::open(&locate_configured(env, settings.path.as_deref())?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, error: &rusqlite::Error) -> Error {
        Error::Ledger {
            path: self.path.clone(),
            message: error.to_string(),
        }
    }

    /// Runs `work` until it does not find the database busy, a few times.
    fn retry<T>(
        &mut self,
        mut work: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut tries = 0;
        loop {
            match work(&mut self.conn) {
                Err(error) if is_busy(&error) && tries < BUSY_RETRIES => {
                    tries += 1;
                    // Spread the retries of processes that collided.
                    std::thread::sleep(Duration::from_millis(fastrand::u64(10..100)));
                }
                other => return other.map_err(|error| self.error(&error)),
            }
        }
    }

    /// Applies the migrations this database has not had yet.
    fn migrate(&mut self) -> Result<()> {
        let known = schema_version();
        let path = self.path.clone();
        let newer = self.retry(|conn| {
            let tx = Transaction::new(conn, rusqlite::TransactionBehavior::Immediate)?;
            let version: u32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if version > known {
                return Ok(Some(version));
            }
            for (n, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.execute_batch(step)?;
                tx.pragma_update(None, "user_version", n + 1)?;
            }
            tx.commit()?;
            Ok(None)
        })?;
        match newer {
            Some(version) => Err(Error::Ledger {
                path,
                message: format!(
                    "its schema version {version} is newer than this tool's {known}: upgrade execute-local-task"
                ),
            }),
            None => Ok(()),
        }
    }

    /// Records a run, its attempts and files, in one transaction.
    pub fn record(&mut self, run: &RunRecord) -> Result<()> {
        self.retry(|conn| {
            let tx = Transaction::new(conn, rusqlite::TransactionBehavior::Immediate)?;
            insert_run(&tx, run)?;
            tx.commit()
        })
    }

    /// Records `kind` (rollback, apply, merge, discard) against run `run_id`.
    pub fn event(&mut self, run_id: &str, kind: &str, detail: Option<&str>) -> Result<()> {
        let at = now();
        self.retry(|conn| {
            conn.execute(
                "INSERT INTO events (run_id, kind, at, detail) VALUES (?1, ?2, ?3, ?4)",
                params![run_id, kind, at, detail],
            )
            .map(drop)
        })
    }

    /// Records where branch run `run_id` is: its repository (the main tree's root, not the
    /// task worktree's it ran in), task branch, base commit and the commit it made. The
    /// commit is made after the run is recorded, so this comes after [`Self::record`];
    /// false when the ledger has no such run (one that never started).
    pub fn set_branch(&mut self, run_id: &str, place: &BranchPlace<'_>) -> Result<bool> {
        self.retry(|conn| {
            conn.execute(
                "UPDATE runs SET repo_root = ?2, branch = ?3, base = ?4, commit_id = ?5
                 WHERE run_id = ?1",
                params![
                    run_id,
                    place.repo_root,
                    place.branch,
                    place.base,
                    place.commit
                ],
            )
            .map(|changed| changed > 0)
        })
    }

    /// The newest `limit` runs, newest first.
    pub fn recent(&mut self, limit: u32) -> Result<Vec<LoggedRun>> {
        self.retry(|conn| {
            let mut statement = conn.prepare(&format!(
                "{LOGGED} ORDER BY runs.started_at DESC, runs.run_id DESC LIMIT ?1"
            ))?;
            statement
                .query_map([limit], logged_run)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    }

    /// The run `run_id`, if the ledger has it.
    pub fn run(&mut self, run_id: &str) -> Result<Option<LoggedRun>> {
        self.retry(|conn| {
            conn.query_row(
                &format!("{LOGGED} WHERE runs.run_id = ?1"),
                [run_id],
                logged_run,
            )
            .optional()
        })
    }

    /// The kind, model and repository of run `run_id`, for the trust lifecycle.
    pub fn pair_of(&mut self, run_id: &str) -> Result<Option<(String, String, String)>> {
        self.retry(|conn| {
            conn.query_row(
                "SELECT coalesce(kind, ''), coalesce(model, ''), repo_id FROM runs WHERE run_id = ?1",
                [run_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
        })
    }

    /// The record of `profile` for tasks of `kind`: the runs it made an attempt in, and
    /// how many of them one of its attempts passed (routing's success rate).
    pub fn profile_record(&mut self, profile: &str, kind: &str) -> Result<(u32, u32)> {
        self.retry(|conn| {
            conn.query_row(
                "SELECT count(DISTINCT a.run_id),
                        count(DISTINCT CASE WHEN a.outcome = 'ok' THEN a.run_id END)
                 FROM attempts AS a JOIN runs AS r ON r.run_id = a.run_id
                 WHERE a.profile = ?1 AND r.kind = ?2",
                [profile, kind],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })
    }

    /// Adds a verdict to run `run_id` and gives its whole history, oldest first.
    pub fn add_review(&mut self, run_id: &str, entry: &ReviewEntry) -> Result<Vec<ReviewEntry>> {
        self.retry(|conn| {
            let tx = Transaction::new(conn, rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO reviews (run_id, verdict, reason, failure_mode, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run_id, entry.verdict, entry.reason, entry.failure_mode, entry.at],
            )?;
            let history = {
                let mut statement = tx.prepare(
                    "SELECT verdict, reason, failure_mode, at FROM reviews WHERE run_id = ?1 ORDER BY id",
                )?;
                statement
                    .query_map([run_id], |row| {
                        Ok(ReviewEntry {
                            verdict: row.get(0)?,
                            reason: row.get(1)?,
                            failure_mode: row.get(2)?,
                            at: row.get(3)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok(history)
        })
    }

    /// The current verdicts of the pair's reviewed runs, oldest run first; of one
    /// repository, or of all when `repo_id` is `None`.
    pub fn reviewed(
        &mut self,
        kind: &str,
        model: &str,
        repo_id: Option<&str>,
    ) -> Result<Vec<Reviewed>> {
        self.retry(|conn| {
            let mut statement = conn.prepare(
                "SELECT runs.run_id, current_reviews.verdict FROM runs
                 JOIN current_reviews ON current_reviews.run_id = runs.run_id
                 WHERE coalesce(runs.kind, '') = ?1 AND coalesce(runs.model, '') = ?2
                   AND (?3 IS NULL OR runs.repo_id = ?3)
                 ORDER BY runs.started_at, runs.run_id",
            )?;
            statement
                .query_map(params![kind, model, repo_id], |row| {
                    Ok(Reviewed {
                        run_id: row.get(0)?,
                        verdict: row.get(1)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    }
}

/// Which runs `stats` counts.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Runs started at or after this time (RFC 3339 text, or a date `2026-12-01`).
    pub since: Option<String>,
    pub kind: Option<String>,
    pub model: Option<String>,
    /// One repository's identity; all repositories when `None`.
    pub repo_id: Option<String>,
}

/// What `stats` needs of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatRow {
    pub kind: String,
    pub model: String,
    pub status: String,
    pub attempts: u32,
    pub test_ms: Option<u64>,
    /// The run's model time: its attempts' model calls summed; null when none was timed.
    pub model_ms: Option<u64>,
    pub local_tokens: u64,
    pub saved_gross: Option<u64>,
    pub saved_net: Option<i64>,
    /// The current verdict and its failure mode.
    pub verdict: Option<String>,
    pub failure_mode: Option<String>,
    /// The UTC day the run started, `2026-12-01`.
    pub day: String,
}

impl Ledger {
    /// The runs `filter` selects, oldest first.
    pub fn stat_rows(&mut self, filter: &Filter) -> Result<Vec<StatRow>> {
        self.retry(|conn| {
            let mut statement = conn.prepare(
                "SELECT coalesce(kind, ''), coalesce(model, ''), status, attempts, test_ms,
                    prompt_tokens + completion_tokens, saved_gross, saved_net,
                    current_reviews.verdict, current_reviews.failure_mode,
                    substr(runs.started_at, 1, 10),
                    (SELECT sum(attempts.model_ms) FROM attempts
                     WHERE attempts.run_id = runs.run_id)
                 FROM runs LEFT JOIN current_reviews ON current_reviews.run_id = runs.run_id
                 WHERE (?1 IS NULL OR runs.started_at >= ?1)
                   AND (?2 IS NULL OR runs.kind = ?2)
                   AND (?3 IS NULL OR runs.model = ?3)
                   AND (?4 IS NULL OR runs.repo_id = ?4)
                 ORDER BY runs.started_at, runs.run_id",
            )?;
            statement
                .query_map(
                    params![filter.since, filter.kind, filter.model, filter.repo_id],
                    |row| {
                        Ok(StatRow {
                            kind: row.get(0)?,
                            model: row.get(1)?,
                            status: row.get(2)?,
                            attempts: row.get(3)?,
                            test_ms: row.get(4)?,
                            local_tokens: row.get(5)?,
                            saved_gross: row.get(6)?,
                            saved_net: row.get(7)?,
                            verdict: row.get(8)?,
                            failure_mode: row.get(9)?,
                            day: row.get(10)?,
                            model_ms: row.get(11)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    }
}

/// A reviewed run's exchange, for `export`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub run_id: String,
    /// JSON array of `{role, content}`.
    pub messages: String,
    pub reply: String,
}

impl Ledger {
    /// The exchanges of runs whose current verdict is `verdict`, oldest first.
    pub fn exchanges(&mut self, verdict: &str, since: Option<&str>) -> Result<Vec<Exchange>> {
        self.retry(|conn| {
            let mut statement = conn.prepare(
                "SELECT runs.run_id, exchanges.messages, exchanges.reply FROM runs
                 JOIN exchanges ON exchanges.run_id = runs.run_id
                 JOIN current_reviews ON current_reviews.run_id = runs.run_id
                 WHERE current_reviews.verdict = ?1 AND (?2 IS NULL OR runs.started_at >= ?2)
                 ORDER BY runs.started_at, runs.run_id",
            )?;
            statement
                .query_map(params![verdict, since], |row| {
                    Ok(Exchange {
                        run_id: row.get(0)?,
                        messages: row.get(1)?,
                        reply: row.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    }
}

/// The columns of a [`LoggedRun`], for [`logged_run`].
const LOGGED: &str = "SELECT runs.run_id, batch_id, repo_root, task_id, kind, model, status,
    error_kind, attempts, test_passed, files_changed, lines_added, lines_removed,
    prompt_tokens, completion_tokens, started_at, duration_ms, current_reviews.verdict,
    review_required, CAST(triage_score AS INTEGER), triage_verdict, branch, base, commit_id
    FROM runs LEFT JOIN current_reviews ON current_reviews.run_id = runs.run_id";

fn logged_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<LoggedRun> {
    Ok(LoggedRun {
        run_id: row.get(0)?,
        batch_id: row.get(1)?,
        repo_root: row.get(2)?,
        task_id: row.get(3)?,
        kind: row.get(4)?,
        model: row.get(5)?,
        status: row.get(6)?,
        error_kind: row.get(7)?,
        attempts: row.get(8)?,
        test_passed: row.get(9)?,
        files_changed: row.get(10)?,
        lines_added: row.get(11)?,
        lines_removed: row.get(12)?,
        prompt_tokens: row.get(13)?,
        completion_tokens: row.get(14)?,
        started_at: row.get(15)?,
        duration_ms: row.get(16)?,
        verdict: row.get(17)?,
        review_required: row.get(18)?,
        triage_score: row.get(19)?,
        triage_verdict: row.get(20)?,
        branch: row.get(21)?,
        base: row.get(22)?,
        commit_id: row.get(23)?,
    })
}

fn insert_run(tx: &Transaction<'_>, run: &RunRecord) -> rusqlite::Result<()> {
    let added: u64 = run.files.iter().map(|f| f.lines_added).sum();
    let removed: u64 = run.files.iter().map(|f| f.lines_removed).sum();
    tx.execute(
        "INSERT INTO runs (run_id, batch_id, repo_root, repo_id, task_id, kind, spec_hash,
            profile, provider, model, endpoint, status, error_kind, error_message, summary,
            attempts, test_command, test_passed, test_ms, prompt_tokens, completion_tokens,
            tokens_estimated, files_changed, lines_added, lines_removed, branch,
            review_required, review_phase, started_at, ended_at, duration_ms, saved_gross,
            saved_net, route_reason, triage_score, triage_verdict)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33,
            ?34, ?35, ?36)",
        params![
            run.run_id,
            run.batch_id,
            run.repo_root,
            run.repo_id,
            run.task_id,
            run.kind,
            run.spec_hash,
            run.profile,
            run.provider,
            run.model,
            run.endpoint,
            run.status,
            run.error_kind,
            run.error_message,
            run.summary,
            run.attempts.len(),
            run.test_command,
            run.test_passed,
            run.test_ms,
            run.prompt_tokens,
            run.completion_tokens,
            run.tokens_estimated,
            run.files.len(),
            added,
            removed,
            run.branch,
            run.review_required,
            run.review_phase,
            run.started_at,
            run.ended_at,
            run.duration_ms,
            run.saved_gross,
            run.saved_net,
            run.route_reason,
            run.triage_score,
            run.triage_verdict,
        ],
    )?;
    for attempt in &run.attempts {
        tx.execute(
            "INSERT INTO attempts (run_id, n, outcome, error, profile, model, prompt_tokens,
                completion_tokens, model_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                run.run_id,
                attempt.n,
                attempt.outcome,
                attempt.error,
                attempt.profile,
                attempt.model,
                attempt.prompt_tokens,
                attempt.completion_tokens,
                attempt.model_ms,
            ],
        )?;
    }
    if let Some((messages, reply)) = &run.exchange {
        tx.execute(
            "INSERT INTO exchanges (run_id, messages, reply) VALUES (?1, ?2, ?3)",
            params![run.run_id, messages, reply],
        )?;
    }
    for file in &run.files {
        tx.execute(
            "INSERT INTO files (run_id, path, action, bytes, lines_added, lines_removed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run.run_id,
                file.path,
                file.action,
                file.bytes,
                file.lines_added,
                file.lines_removed,
            ],
        )?;
    }
    Ok(())
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// The time now as the ledger writes it: RFC 3339 in UTC to the millisecond, so the
/// text sorts as the time does.
pub fn now() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}

pub fn timestamp(at: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, started: &str) -> RunRecord {
        RunRecord {
            run_id: id.to_owned(),
            repo_root: "/r".to_owned(),
            repo_id: "r".to_owned(),
            kind: Some("code".to_owned()),
            model: Some("m".to_owned()),
            status: "success".to_owned(),
            started_at: started.to_owned(),
            ended_at: started.to_owned(),
            files: vec![FileRecord {
                path: "a.py".to_owned(),
                action: "created".to_owned(),
                bytes: 3,
                lines_added: 2,
                lines_removed: 0,
            }],
            ..RunRecord::default()
        }
    }

    #[test]
    fn a_new_ledger_has_the_current_schema_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("sub/ledger.db")).unwrap();
        let version: u32 = ledger
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, schema_version());
        ledger
            .record(&run("a", "2026-01-01T00:00:00.000Z"))
            .unwrap();
        ledger
            .record(&run("b", "2026-01-02T00:00:00.000Z"))
            .unwrap();
        let ids: Vec<_> = ledger
            .recent(10)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(ledger.run("a").unwrap().unwrap().lines_added, 2);
    }

    /// A database an older build made (here: before any migration, with a user's own
    /// table in it) is brought up to date and keeps what it held.
    #[test]
    fn an_older_schema_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE mine (x); INSERT INTO mine VALUES (1);")
                .unwrap();
        }
        let mut ledger = Ledger::open(&path).unwrap();
        ledger
            .record(&run("a", "2026-01-01T00:00:00.000Z"))
            .unwrap();
        let kept: i64 = ledger
            .conn
            .query_row("SELECT x FROM mine", [], |row| row.get(0))
            .unwrap();
        assert_eq!(kept, 1);
        drop(ledger);
        // Opening again applies nothing twice.
        Ledger::open(&path).unwrap();
    }

    /// A ledger of schema version 1 (before `exchanges`) with a run in it: opening it
    /// applies the later steps and keeps the run.
    #[test]
    fn a_ledger_of_version_one_is_migrated_and_keeps_its_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO runs (run_id, repo_root, repo_id, status, summary, attempts,
                    prompt_tokens, completion_tokens, tokens_estimated, files_changed,
                    lines_added, lines_removed, started_at, ended_at, duration_ms)
                 VALUES ('old', '/r', 'r', 'success', 's', 1, 1, 1, 0, 0, 0, 0,
                    '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 1)",
                [],
            )
            .unwrap();
        }
        let mut ledger = Ledger::open(&path).unwrap();
        let version: u32 = ledger
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, schema_version());
        assert!(ledger.run("old").unwrap().is_some());
        let mut run = run("new", "2026-01-02T00:00:00.000Z");
        run.exchange = Some(("[]".to_owned(), "reply".to_owned()));
        ledger.record(&run).unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }
        let Err(error) = Ledger::open(&path) else {
            panic!("a newer schema opened");
        };
        assert!(error.to_string().contains("999"), "{error}");
    }

    #[test]
    fn a_later_verdict_replaces_the_current_one_and_the_history_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger.db")).unwrap();
        ledger
            .record(&run("a", "2026-01-01T00:00:00.000Z"))
            .unwrap();
        let entry = |verdict: &str| ReviewEntry {
            verdict: verdict.to_owned(),
            reason: None,
            failure_mode: None,
            at: now(),
        };
        ledger.add_review("a", &entry("poor")).unwrap();
        let history = ledger.add_review("a", &entry("good")).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(
            ledger.run("a").unwrap().unwrap().verdict.as_deref(),
            Some("good")
        );
        let reviewed = ledger.reviewed("code", "m", None).unwrap();
        assert_eq!(reviewed.len(), 1);
        assert_eq!(reviewed[0].verdict, "good");
    }

    #[test]
    fn the_path_follows_the_variables() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            locate(&env(&[("LOCAL_TASK_LEDGER", "/x/l.db"), ("HOME", "/h")])).unwrap(),
            Path::new("/x/l.db")
        );
        assert_eq!(
            locate(&env(&[("XDG_DATA_HOME", "/d"), ("HOME", "/h")])).unwrap(),
            Path::new("/d/execute-local-task/ledger.db")
        );
        assert_eq!(
            locate(&env(&[("XDG_DATA_HOME", "rel"), ("HOME", "/h")])).unwrap(),
            Path::new("/h/.local/share/execute-local-task/ledger.db")
        );
        assert!(locate(&env(&[])).is_err());
    }
}
