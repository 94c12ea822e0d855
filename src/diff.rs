//! The change a run made to one file, as the result reports it: lines added and removed,
//! and the unified diff a reviewer reads.
//!
//! Myers' algorithm costs time in proportion to the file's size times the number of
//! changed lines, so a large rewrite (150 000 changed lines) took minutes after the model
//! had already answered. The search is bounded by a deadline; past it the remaining
//! stretch is reported as removed and re-added. The diff is then coarser than the
//! smallest one, never wrong: applying it to the old text gives the new text.

use std::time::Duration;

use similar::{Algorithm, ChangeTag, TextDiff};

/// How long the search for the smallest diff may take before the rest is reported whole.
const SEARCH_BUDGET: Duration = Duration::from_millis(500);

/// The change from `before` (None for a new file) to `after`, for the file at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    pub added: u64,
    pub removed: u64,
    /// Headed `a/<path>` (or `/dev/null` for a new file) and `b/<path>`, three lines of
    /// context.
    pub unified: String,
}

pub fn file_diff(path: &str, before: Option<&str>, after: &str) -> FileDiff {
    let diff = TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .timeout(SEARCH_BUDGET)
        .diff_lines(before.unwrap_or_default(), after);
    let (mut added, mut removed) = (0, 0);
    for change in diff.iter_all_changes() {
        match change.tag() {
            ChangeTag::Insert => added += 1,
            ChangeTag::Delete => removed += 1,
            ChangeTag::Equal => {}
        }
    }
    let old_header = if before.is_some() {
        format!("a/{path}")
    } else {
        "/dev/null".to_owned()
    };
    let unified = diff
        .unified_diff()
        .context_radius(3)
        .header(&old_header, &format!("b/{path}"))
        .to_string();
    FileDiff {
        added,
        removed,
        unified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a unified diff of whole lines to `old`, checking every context and removed
    /// line against it.
    fn apply(old: &str, diff: &str) -> String {
        let old: Vec<&str> = old.split_inclusive('\n').collect();
        let mut out = String::new();
        let mut at = 0;
        let mut lines = diff.split_inclusive('\n').skip(2).peekable();
        while let Some(header) = lines.next() {
            let start: usize = header
                .trim_start_matches("@@ -")
                .split([',', ' '])
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a hunk header");
            let start = start.saturating_sub(1).max(at);
            out.extend(old[at..start].iter().copied());
            at = start;
            while let Some(line) = lines.next_if(|line| !line.starts_with("@@")) {
                let (tag, text) = line.split_at(1);
                let text = match lines.next_if(|next| next.starts_with('\\')) {
                    Some(_) => text.trim_end_matches('\n'),
                    None => text,
                };
                match tag {
                    " " | "-" => {
                        assert_eq!(old[at], text, "line {at} of the old text");
                        at += 1;
                        if tag == " " {
                            out.push_str(text);
                        }
                    }
                    "+" => out.push_str(text),
                    other => panic!("unexpected diff line tag {other:?}"),
                }
            }
        }
        out.extend(old[at..].iter().copied());
        out
    }

    #[test]
    fn counts_and_headers() {
        let diff = file_diff("a.py", Some("x = 1\ny = 2\n"), "x = 1\ny = 3\n");
        assert_eq!((diff.added, diff.removed), (1, 1));
        assert!(diff.unified.starts_with("--- a/a.py\n+++ b/a.py\n@@"));
        let created = file_diff("b.py", None, "z = 0\n");
        assert_eq!((created.added, created.removed), (1, 0));
        assert!(created.unified.starts_with("--- /dev/null\n+++ b/b.py\n"));
        assert_eq!(apply("", &created.unified), "z = 0\n");
        let no_newline = file_diff("c", Some("a\nb"), "a\nc");
        assert_eq!(apply("a\nb", &no_newline.unified), "a\nc");
    }

    /// A rewrite of 150 000 lines took minutes with an unbounded search; the suite's
    /// deadline catches that. The bounded diff must still turn the old text into the new.
    #[test]
    fn a_large_rewrite_gives_a_correct_diff_in_bounded_time() {
        let (mut old, mut new) = (String::new(), String::new());
        for i in 0..150_000 {
            let line = format!("value_{i} = compute({i})");
            old.push_str(&line);
            old.push('\n');
            new.push_str(&line);
            new.push_str(if i % 100 == 0 { "\n" } else { " + 1\n" });
        }
        let diff = file_diff("big.py", Some(&old), &new);
        assert!(diff.added >= 148_500 && diff.added == diff.removed);
        assert_eq!(apply(&old, &diff.unified), new);
    }
}
