//! `stats`: the ledger's figures per (task kind, model) and in total, against the user's
//! targets for delegating (delegation rate ≥ 70%, first-pass success ≥ 80%, supervisor
//! tokens saved ≥ 60%, no regressions), as JSON (its schema: `schema stats`) or a table
//! of 80 columns.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::error::{Error, Result};
use crate::ledger::{Filter, Ledger, StatRow};
use crate::repo::Repo;
use crate::result::Phase;
use crate::trust::{self, Thresholds};

/// The figures of a set of runs: one (kind, model) pair's, or the total.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Figures {
    /// Empty in the total.
    pub kind: String,
    /// Empty in the total.
    pub model: String,
    pub runs: u64,
    /// Runs that did not escalate, over all runs (null without runs).
    pub delegation_rate: Option<f64>,
    /// Runs that succeeded on their first attempt, over all runs.
    pub first_pass_rate: Option<f64>,
    pub first_pass: u64,
    /// Runs that succeeded after one or more repairs.
    pub after_repair: u64,
    pub escalations: u64,
    pub good: u64,
    pub acceptable: u64,
    pub poor: u64,
    /// The pair's trust phase (null in the total).
    pub phase: Option<Phase>,
    /// A run's model time is its attempts' `model_ms` summed; null when no run has one.
    pub median_model_ms: Option<u64>,
    /// Null when no test ran.
    pub median_test_ms: Option<u64>,
    pub local_tokens: u64,
    pub saved_gross: u64,
    pub saved_net: i64,
}

/// One of the user's targets, with the current figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `delegation_rate`, `first_pass_rate`, `saved_share` or `regressions`.
    pub name: String,
    /// What it must reach: at least this rate, or for `regressions` at most this count.
    pub goal: f64,
    /// Null when there is nothing to measure yet.
    pub value: Option<f64>,
    pub met: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// `all repositories`, or the repository's root.
    pub scope: String,
    pub since: Option<String>,
    pub pairs: Vec<Figures>,
    pub total: Figures,
    pub targets: Vec<Target>,
}

/// What `stats` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub since: Option<String>,
    pub kind: Option<String>,
    pub model: Option<String>,
    /// The repository whose runs count; all repositories when `None`.
    pub repo_dir: Option<std::path::PathBuf>,
}

pub fn stats(env: &dyn Fn(&str) -> Option<String>, request: &Request) -> Result<Stats> {
    stats_and_rows(env, request).map(|(stats, _)| stats)
}

/// The stats, and the runs they count (oldest first), for the page's charts.
pub fn stats_and_rows(
    env: &dyn Fn(&str) -> Option<String>,
    request: &Request,
) -> Result<(Stats, Vec<StatRow>)> {
    let since = request.since.as_deref().map(check_since).transpose()?;
    let (scope, repo_id) = match &request.repo_dir {
        Some(dir) => {
            let repo = Repo::discover(dir)?;
            let id = crate::record::identity(repo.root(), &repo.state_dir());
            (repo.root().display().to_string(), Some(id))
        }
        None => ("all repositories".to_owned(), None),
    };
    let mut ledger = Ledger::open_default(env)?;
    let filter = Filter {
        since: since.clone(),
        kind: request.kind.clone(),
        model: request.model.clone(),
        repo_id: repo_id.clone(),
    };
    let rows = ledger.stat_rows(&filter)?;
    let t = Thresholds::default();
    let mut phase_error = None;
    let summary = summarize(&rows, |kind, model| {
        match trust::pair_standing(&mut ledger, kind, model, repo_id.as_deref(), &t) {
            Ok((standing, _)) => Some(standing.phase),
            Err(error) => {
                phase_error = Some(error);
                None
            }
        }
    });
    if let Some(error) = phase_error {
        return Err(error);
    }
    Ok((
        Stats {
            scope,
            since,
            ..summary
        },
        rows,
    ))
}

/// `--since`: a date (`2026-12-01`, from its start in UTC) or an RFC 3339 time, as the
/// ledger writes times, so the two compare as text.
pub(crate) fn check_since(since: &str) -> Result<String> {
    let date = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(since, &date) {
        return Ok(crate::ledger::timestamp(date.midnight().assume_utc()));
    }
    if let Ok(at) =
        time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
    {
        return Ok(crate::ledger::timestamp(at));
    }
    Err(Error::Usage(format!(
        "--since `{since}` is not a date (2026-12-01) or an RFC 3339 time"
    )))
}

/// The figures of `rows` per pair and in total; `phase` gives a pair's phase.
pub fn summarize(rows: &[StatRow], mut phase: impl FnMut(&str, &str) -> Option<Phase>) -> Stats {
    let mut pairs: BTreeMap<(String, String), Vec<&StatRow>> = BTreeMap::new();
    for row in rows {
        pairs
            .entry((row.kind.clone(), row.model.clone()))
            .or_default()
            .push(row);
    }
    let pairs: Vec<Figures> = pairs
        .into_iter()
        .map(|((kind, model), rows)| Figures {
            phase: phase(&kind, &model),
            ..figures(kind, model, &rows)
        })
        .collect();
    let all: Vec<&StatRow> = rows.iter().collect();
    let total = figures(String::new(), String::new(), &all);
    let regressions = rows
        .iter()
        .filter(|row| row.failure_mode.as_deref() == Some("broke-tests"))
        .count();
    #[allow(clippy::cast_precision_loss)] // Token counts far below 2^52.
    let saved_share =
        (total.saved_gross > 0).then(|| total.saved_net as f64 / total.saved_gross as f64);
    let at_least = |name: &str, goal: f64, value: Option<f64>| Target {
        name: name.to_owned(),
        goal,
        value,
        met: value.is_some_and(|value| value >= goal),
    };
    #[allow(clippy::cast_precision_loss)]
    let targets = vec![
        at_least(
            "delegation_rate",
            defaults::TARGET_DELEGATION_RATE,
            total.delegation_rate,
        ),
        at_least(
            "first_pass_rate",
            defaults::TARGET_FIRST_PASS_RATE,
            total.first_pass_rate,
        ),
        at_least("saved_share", defaults::TARGET_SAVED_SHARE, saved_share),
        Target {
            name: "regressions".to_owned(),
            goal: 0.0,
            value: Some(regressions as f64),
            met: regressions == 0,
        },
    ];
    Stats {
        scope: String::new(),
        since: None,
        pairs,
        total,
        targets,
    }
}

#[allow(clippy::cast_precision_loss)] // Run counts far below 2^52.
fn figures(kind: String, model: String, rows: &[&StatRow]) -> Figures {
    let runs = rows.len() as u64;
    let count =
        |keep: &dyn Fn(&StatRow) -> bool| rows.iter().filter(|row| keep(row)).count() as u64;
    let rate = |n: u64| (runs > 0).then(|| n as f64 / runs as f64);
    let escalations = count(&|row| row.status == "escalate");
    let first_pass = count(&|row| row.status == "success" && row.attempts == 1);
    let verdict = |name: &str| count(&|row| row.verdict.as_deref() == Some(name));
    Figures {
        kind,
        model,
        runs,
        delegation_rate: rate(runs - escalations),
        first_pass_rate: rate(first_pass),
        first_pass,
        after_repair: count(&|row| row.status == "success" && row.attempts > 1),
        escalations,
        good: verdict("good"),
        acceptable: verdict("acceptable"),
        poor: verdict("poor"),
        phase: None,
        median_model_ms: median(rows.iter().filter_map(|row| row.model_ms).collect()),
        median_test_ms: median(rows.iter().filter_map(|row| row.test_ms).collect()),
        local_tokens: rows.iter().map(|row| row.local_tokens).sum(),
        saved_gross: rows.iter().filter_map(|row| row.saved_gross).sum(),
        saved_net: rows.iter().filter_map(|row| row.saved_net).sum(),
    }
}

/// The median (the lower middle of an even count).
fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// `stats` for a person: the pairs, the total, and the targets, in 80 columns.
pub fn table(stats: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} run{} in {}{}",
        stats.total.runs,
        if stats.total.runs == 1 { "" } else { "s" },
        stats.scope,
        stats
            .since
            .as_deref()
            .map_or_else(String::new, |since| format!(" since {since}"))
    );
    let _ = writeln!(
        out,
        "{:<8} {:<12} {:>5} {:>6} {:>5} {:>4} {:>4} {:<7} {:<9} {:>9}",
        "KIND", "MODEL", "RUNS", "DELEG", "1ST", "REP", "ESC", "G/A/P", "PHASE", "NET SAVED"
    );
    for pair in stats.pairs.iter().chain(std::iter::once(&stats.total)) {
        let (kind, model) = if pair.kind.is_empty() && pair.model.is_empty() {
            ("total", "")
        } else {
            (pair.kind.as_str(), pair.model.as_str())
        };
        let _ = writeln!(
            out,
            "{:<8} {:<12} {:>5} {:>6} {:>5} {:>4} {:>4} {:<7} {:<9} {:>9}",
            fit(kind, 8),
            fit(model, 12),
            pair.runs,
            percent(pair.delegation_rate),
            percent(pair.first_pass_rate),
            pair.after_repair,
            pair.escalations,
            fit(
                &format!("{}/{}/{}", pair.good, pair.acceptable, pair.poor),
                7
            ),
            pair.phase.map_or("", Phase::as_str),
            pair.saved_net,
        );
    }
    let total = &stats.total;
    let _ = writeln!(
        out,
        "local tokens {}; gross saved {}; median model {}, test {}",
        total.local_tokens,
        total.saved_gross,
        total
            .median_model_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
        total
            .median_test_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"))
    );
    for target in &stats.targets {
        let (label, goal, value) = if target.name == "regressions" {
            (
                "no regressions (broke-tests)",
                "0".to_owned(),
                target
                    .value
                    .map_or_else(|| "-".to_owned(), |v| format!("{v}")),
            )
        } else {
            let label = match target.name.as_str() {
                "delegation_rate" => "delegation rate",
                "first_pass_rate" => "first-pass success",
                _ => "supervisor tokens saved",
            };
            (
                label,
                format!(">= {}", percent(Some(target.goal))),
                percent(target.value),
            )
        };
        let met = if target.met { "met" } else { "not met" };
        let _ = writeln!(out, "target {label:<29} {goal:>7} now {value:>6}  {met}");
    }
    out
}

#[allow(clippy::cast_possible_truncation)] // A rounded percentage.
fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(
        || "-".to_owned(),
        |rate| format!("{}%", (rate * 100.0).round() as i64),
    )
}

fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, model: &str, status: &str, attempts: u32) -> StatRow {
        StatRow {
            kind: kind.to_owned(),
            model: model.to_owned(),
            status: status.to_owned(),
            attempts,
            test_ms: Some(u64::from(attempts) * 100),
            model_ms: Some(u64::from(attempts) * 300),
            local_tokens: 1000,
            saved_gross: Some(if status == "success" { 500 } else { 0 }),
            saved_net: Some(if status == "success" { 200 } else { -300 }),
            ..StatRow::default()
        }
    }

    /// A hand-computed fixture: four code runs by m1 (two first-pass successes, one after
    /// a repair, one escalation) and one test run by m2 that errored.
    #[test]
    fn the_figures_match_a_hand_computed_fixture() {
        let mut rows = vec![
            row("code", "m1", "success", 1),
            row("code", "m1", "success", 1),
            row("code", "m1", "success", 2),
            row("code", "m1", "escalate", 2),
            row("test", "m2", "error", 1),
        ];
        rows[0].verdict = Some("good".to_owned());
        rows[2].verdict = Some("poor".to_owned());
        rows[2].failure_mode = Some("broke-tests".to_owned());
        let stats = summarize(&rows, |_, _| Some(Phase::Calibrate));
        let code = &stats.pairs[0];
        assert_eq!((code.kind.as_str(), code.runs), ("code", 4));
        assert_eq!(code.delegation_rate, Some(0.75));
        assert_eq!(code.first_pass_rate, Some(0.5));
        assert_eq!((code.after_repair, code.escalations), (1, 1));
        assert_eq!((code.good, code.acceptable, code.poor), (1, 0, 1));
        // Test times 100, 100, 200, 200: the lower middle.
        assert_eq!(code.median_test_ms, Some(100));
        // Model times 300, 300, 600, 600; with the errored run's 300: 300 overall.
        assert_eq!(code.median_model_ms, Some(300));
        assert_eq!(stats.total.median_model_ms, Some(300));
        assert_eq!((code.saved_gross, code.saved_net), (1500, 300));
        let total = &stats.total;
        assert_eq!(total.runs, 5);
        assert_eq!(total.delegation_rate, Some(0.8));
        assert_eq!(total.first_pass_rate, Some(0.4));
        assert_eq!(total.local_tokens, 5000);
        assert_eq!((total.saved_gross, total.saved_net), (1500, 0));
        let met: Vec<(&str, bool)> = stats
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.met))
            .collect();
        assert_eq!(
            met,
            [
                ("delegation_rate", true),
                ("first_pass_rate", false),
                ("saved_share", false),
                ("regressions", false)
            ]
        );
        for line in table(&stats).lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
    }

    #[test]
    fn since_takes_a_date_or_a_time_and_names_a_bad_one() {
        assert_eq!(
            check_since("2026-12-01").unwrap(),
            "2026-12-01T00:00:00.000Z"
        );
        assert_eq!(
            check_since("2026-12-01T10:00:00+02:00").unwrap(),
            "2026-12-01T08:00:00.000Z"
        );
        let error = check_since("yesterday").unwrap_err();
        assert!(error.to_string().contains("`yesterday`"), "{error}");
    }
}
