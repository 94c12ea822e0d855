//! The supervisor tokens a run saved, estimated from sizes: gross, what the supervisor
//! would have written itself (the accepted code), and net, gross less what delegating
//! cost it (writing the spec, reading the result with its diff). Counted in tokens the
//! supervisor reads: a token it writes counts [`crate::defaults::SAVINGS_COST_RATIO`]
//! times. Tokens are estimated as bytes / [`crate::defaults::SAVINGS_BYTES_PER_TOKEN`].
//!
//! Only a successful run's code was accepted: any other run saves nothing, and its
//! overhead counts against the total. A later `poor` verdict does not change a run's
//! estimate.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::result::{Status, TaskResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Savings {
    /// Tokens the local model read and wrote.
    pub local_tokens: u64,
    /// The accepted code's tokens (the lines the diff adds); 0 unless the run succeeded.
    pub code_tokens: u64,
    /// `code_tokens` weighted by the output/input cost ratio.
    pub gross: u64,
    /// The spec's tokens weighted by the ratio, plus the result's tokens.
    pub overhead: u64,
    /// `gross - overhead`; negative when delegating cost more than it saved.
    pub net: i64,
}

/// The savings of `result`, whose spec had `spec_bytes` bytes.
pub fn estimate(result: &TaskResult, spec_bytes: u64) -> Savings {
    let ratio = defaults::SAVINGS_COST_RATIO;
    let tokens = |bytes: u64| bytes.div_ceil(defaults::SAVINGS_BYTES_PER_TOKEN);
    let code_bytes: u64 = if result.status == Status::Success {
        result
            .files
            .iter()
            .map(|file| added_bytes(&file.diff))
            .sum()
    } else {
        0
    };
    let code_tokens = tokens(code_bytes);
    let result_bytes = serde_json::to_vec(result).map_or(0, |json| json.len() as u64);
    let gross = code_tokens * ratio;
    let overhead = tokens(spec_bytes) * ratio + tokens(result_bytes);
    Savings {
        local_tokens: result.usage.prompt_tokens + result.usage.completion_tokens,
        code_tokens,
        gross,
        overhead,
        net: i64::try_from(gross).unwrap_or(i64::MAX) - i64::try_from(overhead).unwrap_or(i64::MAX),
    }
}

/// The bytes of the lines a unified diff adds (without their `+`).
fn added_bytes(diff: &str) -> u64 {
    diff.lines()
        .filter(|line| line.starts_with('+') && !line.starts_with("+++"))
        .map(|line| line.len() as u64 - 1)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{FileAction, FileChange};

    /// The README's worked example.
    #[test]
    fn gross_and_net_follow_the_documented_method() {
        let mut result = TaskResult::new(
            "r".to_owned(),
            Some("T-1".to_owned()),
            Status::Success,
            "s".to_owned(),
        );
        // Two added lines of 40 bytes each (and their `+`): 80 bytes, 20 tokens.
        let line = "x".repeat(40);
        result.files.push(FileChange {
            path: "a.py".to_owned(),
            action: FileAction::Created,
            bytes: 82,
            lines_added: 2,
            lines_removed: 0,
            backup: None,
            diff: format!("--- /dev/null\n+++ b/a.py\n@@ -0,0 +1,2 @@\n+{line}\n+{line}\n"),
        });
        let result_bytes = serde_json::to_vec(&result).unwrap().len() as u64;
        let savings = estimate(&result, 400);
        assert_eq!(savings.code_tokens, 20);
        assert_eq!(savings.gross, 100);
        assert_eq!(savings.overhead, 100 * 5 + result_bytes.div_ceil(4));
        assert_eq!(savings.net, 100 - i64::try_from(savings.overhead).unwrap());

        result.status = Status::Escalate;
        let escalated = estimate(&result, 400);
        assert_eq!((escalated.code_tokens, escalated.gross), (0, 0));
        assert!(escalated.net < 0);
    }
}
