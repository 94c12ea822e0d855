//! Checking a model's reply: how it ended, the code extracted from it, and the guards,
//! giving the files to write or the [`Failure`] that goes back to the model.

use crate::content;
use crate::extract::{self, ExtractError};
use crate::model::{ChatReply, Finish};
use crate::prompt::RepairView;
use crate::result::Outcome;
use crate::spec::TaskSpec;
use crate::targets::{Target, before_of};

/// Why an attempt did not succeed, in the words the repair prompt and the result use.
pub(crate) struct Failure {
    pub(crate) outcome: Outcome,
    pub(crate) repair: RepairView,
}

impl Failure {
    pub(crate) fn new(outcome: Outcome, problem: impl AsRef<str>) -> Self {
        Self {
            outcome,
            repair: RepairView {
                problem: one_line(problem.as_ref()),
                ..RepairView::default()
            },
        }
    }

    pub(crate) fn with_details(mut self, details: impl Into<String>) -> Self {
        self.repair.details = details.into();
        self
    }
}

/// Extraction and guards: the files to write, or why the reply cannot be used.
pub(crate) fn check_reply(
    reply: &ChatReply,
    spec: &TaskSpec,
    targets: &[Target],
    language: &str,
    notes: &mut Vec<String>,
) -> std::result::Result<Vec<(String, String)>, Failure> {
    match &reply.finish {
        Finish::Stop => {}
        Finish::Length => {
            return Err(Failure::new(
                Outcome::Truncated,
                "the reply was cut off by the server's token limit before it ended",
            )
            .with_details(
                "Give a complete but shorter answer: only the requested files, no explanations.",
            ));
        }
        // A content filter, an aborted request, a tool call: the reply did not end
        // naturally, so even balanced fences may hold a partial file.
        Finish::Other(reason) => {
            return Err(Failure::new(
                Outcome::Truncated,
                format!(
                    "the reply ended with finish reason `{reason}` instead of a natural stop, so it may be incomplete"
                ),
            )
            .with_details("Give the complete answer: only the requested files, no explanations."));
        }
    }
    let mut extracted = extract::extract_against(&reply.content, &spec.outputs, language, |path| {
        before_of(targets, path)
    })
    .map_err(|error| match error {
        ExtractError::Truncated(reason) => Failure::new(Outcome::Truncated, reason),
        ExtractError::NoCode(reason) => Failure::new(Outcome::NoCode, reason),
        missing @ ExtractError::MissingFiles(_) => {
            Failure::new(Outcome::NoCode, missing.to_string())
        }
    })?;
    extracted.keep_own_path_comments(|path| before_of(targets, path));
    notes.extend(extracted.notes);
    // Replies come with LF line ends; a file written with CRLF throughout keeps them, so
    // its diff shows the real changes instead of every line.
    let files: Vec<(String, String)> = extracted
        .files
        .into_iter()
        .map(|(path, code)| {
            let crlf = before_of(targets, &path).is_some_and(|before| {
                before.contains('\n')
                    && before.matches("\r\n").count() == before.matches('\n').count()
            });
            let code = if crlf && !code.contains('\r') {
                code.replace('\n', "\r\n")
            } else {
                code
            };
            (path, code)
        })
        .collect();
    for (path, code) in &files {
        if let Some(line) = content::find_elision(path, code) {
            return Err(Failure::new(
                Outcome::GuardRefused,
                format!("the code for `{path}` leaves code out (`{line}`)"),
            )
            .with_details(
                "Write out every line of the file; placeholders for omitted code are rejected.",
            ));
        }
        if let Some(reason) = before_of(targets, path)
            .and_then(|before| content::find_removed_definition(path, before, code))
        {
            return Err(Failure::new(Outcome::GuardRefused, reason).with_details(
                "Write out every line of the file, including the definitions you did not change; placeholders for omitted code are rejected.",
            ));
        }
        if !spec.allow_shrink
            && let Some(before) = before_of(targets, path)
        {
            content::check_shrink(path, before.len(), code.len())
                .map_err(|reason| Failure::new(Outcome::GuardRefused, reason))?;
        }
    }
    Ok(files)
}

/// Collapses a message onto one line: an attempt's error and a repair's first line are one
/// line each, whatever the command or the reply held.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_one_line() {
        let failure = Failure::new(Outcome::TestFailed, "the test `a &&\n  b` failed");
        assert_eq!(failure.repair.problem, "the test `a && b` failed");
    }
}
