//! The repair conversation: the previous attempt as the model's own turn, and what went
//! wrong in the words the repair prompt uses.

use crate::extract;
use crate::prompt::{self, RepairView};
use crate::reply::Failure;
use crate::result::{Outcome, TestReport};
use crate::targets::{Target, fence_language};
use crate::test_run;

/// Bytes of test output a repair prompt gets: the failure lines and the end (see
/// [`test_run::failure_excerpt`]), about a thousand tokens.
const REPAIR_OUTPUT_BYTES: usize = 4 * 1024;

pub(crate) fn test_failure(test: &TestReport, timeout_secs: u64) -> Failure {
    let problem = if test.timed_out {
        format!(
            "the test `{}` did not finish within its limit of {timeout_secs} s and was stopped",
            test.command
        )
    } else {
        format!(
            "the test `{}` failed (exit {})",
            test.command,
            test.exit_code
                .map_or_else(|| "by signal".to_owned(), |c| c.to_string())
        )
    };
    let mut failure = Failure::new(Outcome::TestFailed, problem);
    failure.repair = RepairView {
        details: test_run::failure_excerpt(&test.output_tail, REPAIR_OUTPUT_BYTES),
        test_command: Some(test.command.clone()),
        exit_code: test.exit_code,
        timed_out: test.timed_out,
        ..failure.repair
    };
    failure
}

/// The previous attempt as the model's own turn in a repair conversation, when its code was
/// written and tested.
///
/// The model must see the code that failed, and the conversation already holds its reply:
/// sending that reply and the written files too would put the code in the prompt twice,
/// and local context windows are small. So the turn is the files exactly as written — the
/// bytes the test output is about, without the prose or thinking around them — and the
/// repair message refers to them instead of repeating them.
pub(crate) fn written_turn(
    files: &[(String, String)],
    targets: &[Target],
    language: &str,
) -> String {
    files
        .iter()
        .map(|(path, code)| {
            let fence = prompt::fence_for(code);
            let language = fence_language(path, language, targets.len());
            let code = code.strip_suffix('\n').unwrap_or(code);
            format!("{fence}{language} path={path}\n{code}\n{fence}")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Bytes of a cut-off reply kept in the repair conversation.
const TRUNCATED_TURN_BYTES: usize = 1024;

/// The previous attempt as the model's own turn when no code was written: the reply without
/// its thinking (prose without a block, or code a guard refused, which the model needs to
/// see to fix). A reply the server cut off keeps only its start: one that filled the token
/// limit would crowd the context the next reply needs.
pub(crate) fn reply_turn(reply: &str, truncated: bool) -> String {
    let reply = extract::strip_thinking(reply);
    let reply = reply.trim();
    if reply.is_empty() {
        // Some chat templates refuse an empty turn; a reply of only thinking says nothing.
        return "(no answer)".to_owned();
    }
    if !truncated || reply.len() <= TRUNCATED_TURN_BYTES {
        return reply.to_owned();
    }
    let mut end = TRUNCATED_TURN_BYTES;
    while !reply.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[… the rest of this reply was cut off …]",
        &reply[..end]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_written_turn_is_the_files_as_written() {
        let targets = [
            Target {
                path: "a.py".to_owned(),
                exists: false,
                before: None,
                real: PathBuf::from("a.py"),
                link: None,
            },
            Target {
                path: "README.md".to_owned(),
                exists: true,
                before: Some("old\n".to_owned()),
                real: PathBuf::from("README.md"),
                link: None,
            },
        ];
        let files = [
            ("a.py".to_owned(), "x = 1\n".to_owned()),
            ("README.md".to_owned(), "```sh\nrun\n```\n".to_owned()),
        ];
        assert_eq!(
            written_turn(&files, &targets, "python"),
            "```python path=a.py\nx = 1\n```\n\n````markdown path=README.md\n```sh\nrun\n```\n````"
        );
    }

    #[test]
    fn a_reply_turn_drops_thinking_and_most_of_a_cut_off_reply() {
        assert_eq!(
            reply_turn("<think>long musing</think>\nI need more details.", false),
            "I need more details."
        );
        assert_eq!(reply_turn("<think>never finished", true), "(no answer)");
        let cut = reply_turn(&"é".repeat(5000), true);
        assert!(cut.len() < TRUNCATED_TURN_BYTES + 60, "{}", cut.len());
        assert!(cut.ends_with("cut off …]"), "{cut}");
        let long = "word ".repeat(5000);
        assert_eq!(reply_turn(&long, false), long.trim());
    }
}
