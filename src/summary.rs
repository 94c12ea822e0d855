//! The words and numbers of a result: each file's change and diff, and the one-line
//! summaries of success and escalation.

use crate::result::{Attempt, FileAction, FileChange, Outcome, TestReport};
use crate::spec::TaskSpec;
use crate::targets::{Target, before_of};
use crate::write::Journal;

pub(crate) fn file_changes(
    journal: &Journal,
    targets: &[Target],
    files: &[(String, String)],
) -> Vec<FileChange> {
    files
        .iter()
        .map(|(path, code)| {
            let target = targets.iter().find(|t| &t.path == path);
            let before = before_of(targets, path);
            let action = match before {
                // A symlink stood there: the run replaced it (see `replaced_link_notes`).
                None if target.is_some_and(|t| t.link.is_some()) => FileAction::Modified,
                None => FileAction::Created,
                Some(old) if old == code => FileAction::Unchanged,
                Some(_) => FileAction::Modified,
            };
            let diff = crate::diff::file_diff(path, before, code);
            FileChange {
                path: path.clone(),
                action,
                bytes: code.len() as u64,
                lines_added: diff.added,
                lines_removed: diff.removed,
                backup: journal
                    .written_backup_path(path)
                    .map(|p| p.display().to_string()),
                diff: diff.unified,
            }
        })
        .collect()
}

/// Notes for the outputs that were symlinks: the result says the link was replaced (its
/// backup is null because a link has no bytes; `rollback` puts the link back).
pub(crate) fn replaced_link_notes(targets: &[Target], files: &[(String, String)]) -> Vec<String> {
    targets
        .iter()
        .filter(|t| files.iter().any(|(path, _)| path == &t.path))
        .filter_map(|t| {
            t.link.as_ref().map(|link| {
                format!(
                    "`{}` was a symlink to `{link}`; it was replaced by a regular file, not written through (`rollback` restores the symlink)",
                    t.path
                )
            })
        })
        .collect()
}

pub(crate) fn success_summary(
    changes: &[FileChange],
    test: Option<&TestReport>,
    n: u32,
    max: u32,
) -> String {
    let verdict = match test {
        Some(test) => format!("test `{}` passed", test.command),
        None => "UNTESTED: no test command ran, review the code carefully".to_owned(),
    };
    // A file whose reply was what it held already was not written: never "wrote" it.
    let (same, written): (Vec<FileChange>, Vec<FileChange>) = changes
        .iter()
        .cloned()
        .partition(|c| c.action == FileAction::Unchanged);
    let mut parts = Vec::new();
    if !written.is_empty() {
        parts.push(format!("wrote {}", describe_changes(&written)));
    }
    if !same.is_empty() {
        let names = same
            .iter()
            .map(|c| c.path.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let nothing = if written.is_empty() {
            ", nothing was written"
        } else {
            ""
        };
        let held = if same.len() == 1 { "held" } else { "each held" };
        parts.push(format!("{names} already {held} that code{nothing}"));
    }
    format!("{}; {verdict} (attempt {n} of {max})", parts.join("; "))
}

pub(crate) fn describe_changes(changes: &[FileChange]) -> String {
    changes
        .iter()
        .map(|c| match c.action {
            FileAction::Unchanged => format!("{} (already held that code)", c.path),
            _ => format!("{} (+{} -{})", c.path, c.lines_added, c.lines_removed),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What was tried and what failed last, for a supervisor deciding to do the task itself.
pub(crate) fn escalate_summary(
    spec: &TaskSpec,
    attempts: &[Attempt],
    max_tokens: Option<u32>,
) -> String {
    let outcomes = attempts
        .iter()
        .map(|a| outcome_name(a.outcome))
        .collect::<Vec<_>>()
        .join(", ");
    let last = attempts
        .last()
        .and_then(|a| a.error.clone())
        .unwrap_or_default();
    // Replies cut short under a --max-tokens cap will be cut again: say what to change.
    let advice = match max_tokens {
        Some(cap) if attempts.iter().all(|a| a.outcome == Outcome::Truncated) => {
            format!("; every reply was cut short: --max-tokens {cap} is too low for this task")
        }
        _ => String::new(),
    };
    format!(
        "escalate: the local model did not complete {} in {} attempt{} ({outcomes}); last: {last}{advice}",
        spec.task_id,
        attempts.len(),
        if attempts.len() == 1 { "" } else { "s" },
    )
}

/// The outcome as the result JSON spells it.
fn outcome_name(outcome: Outcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}
