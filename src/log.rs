//! The `log` listing: the ledger's recent runs as a table that fits 80 columns (the JSON
//! is the ledger's own [`LoggedRun`]s).

use std::fmt::Write as _;

use crate::ledger::LoggedRun;

/// Column headings and widths; the last column is not padded. 28 + 8 + 8 + 10 + 11 + 10
/// and five single spaces between them make 80.
const COLUMNS: [(&str, usize); 6] = [
    ("RUN ID", 28),
    ("STATUS", 8),
    ("KIND", 8),
    ("TASK", 10),
    ("MODEL", 11),
    ("REVIEW", 10),
];

/// `runs` as a table, a heading first; a line saying so when there are none.
pub fn table(runs: &[LoggedRun]) -> String {
    if runs.is_empty() {
        return "no runs recorded yet\n".to_owned();
    }
    let mut out = String::new();
    line(&mut out, &COLUMNS.map(|(heading, _)| heading.to_owned()));
    for run in runs {
        let review = match (&run.verdict, run.review_required) {
            (Some(verdict), _) => verdict.clone(),
            (None, Some(true)) => "needed".to_owned(),
            (None, _) => "-".to_owned(),
        };
        line(
            &mut out,
            &[
                run.run_id.clone(),
                run.status.clone(),
                run.kind.clone().unwrap_or_default(),
                run.task_id.clone().unwrap_or_default(),
                run.model.clone().unwrap_or_default(),
                review,
            ],
        );
    }
    out
}

fn line(out: &mut String, cells: &[String; 6]) {
    let last = cells.len() - 1;
    for (n, (cell, (_, width))) in cells.iter().zip(COLUMNS).enumerate() {
        let cell = fit(cell, width);
        if n == last {
            let _ = writeln!(out, "{cell}");
        } else {
            let _ = write!(out, "{cell:<width$} ");
        }
    }
}

/// `text` cut to `width` characters, ending in `…` when cut.
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

    #[test]
    fn every_line_fits_80_columns() {
        let run = LoggedRun {
            run_id: "20261120T220512123Z-3f9a1c2e".to_owned(),
            batch_id: None,
            repo_root: "/r".to_owned(),
            task_id: Some("a-very-long-task-identifier".to_owned()),
            kind: Some("refactor".to_owned()),
            model: Some("qwen2.5-coder:32b-instruct".to_owned()),
            status: "escalate".to_owned(),
            error_kind: None,
            attempts: 2,
            test_passed: Some(false),
            files_changed: 1,
            lines_added: 1,
            lines_removed: 1,
            prompt_tokens: 1,
            completion_tokens: 1,
            started_at: "2026-11-20T22:05:12.123Z".to_owned(),
            duration_ms: 1,
            verdict: Some("acceptable".to_owned()),
            review_required: Some(true),
            triage_score: Some(8),
            triage_verdict: Some("delegate".to_owned()),
            branch: None,
            base: None,
            commit_id: None,
        };
        let table = table(&[run]);
        for line in table.lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
        assert!(
            table.contains("a-very-lo… qwen2.5-co… acceptable"),
            "{table}"
        );
    }
}
