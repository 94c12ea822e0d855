//! Review verdicts: the supervisor's judgement of a run (`good`, `acceptable`, `poor`,
//! with a reason and a failure mode), recorded in the ledger. A later verdict for the same
//! run replaces the current one; every verdict stays in the run's history.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ledger::{self, Ledger, ReviewEntry};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Good,
    Acceptable,
    Poor,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Acceptable => "acceptable",
            Self::Poor => "poor",
        }
    }
}

/// What went wrong with a result judged less than good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureMode {
    Hallucination,
    Incomplete,
    WrongFormat,
    OffTopic,
    BrokeTests,
    Other,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hallucination => "hallucination",
            Self::Incomplete => "incomplete",
            Self::WrongFormat => "wrong-format",
            Self::OffTopic => "off-topic",
            Self::BrokeTests => "broke-tests",
            Self::Other => "other",
        }
    }
}

/// Which run a verdict is for.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    Id(&'a str),
    /// The newest run in the ledger.
    Last,
}

/// What `review` recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewReport {
    pub run_id: String,
    pub verdict: String,
    pub reason: Option<String>,
    pub failure_mode: Option<String>,
    /// The verdict this one replaced, null for the run's first.
    pub replaced: Option<String>,
    /// Every verdict of the run, oldest first; the last is the current one.
    pub history: Vec<ReviewEntry>,
}

impl ReviewReport {
    /// One line for a person.
    pub fn describe(&self) -> String {
        match &self.replaced {
            Some(old) => format!("run {} reviewed {} (was {old})", self.run_id, self.verdict),
            None => format!("run {} reviewed {}", self.run_id, self.verdict),
        }
    }
}

/// Records `verdict` for the run `which` names.
pub fn review(
    env: &dyn Fn(&str) -> Option<String>,
    which: Which<'_>,
    verdict: Verdict,
    reason: Option<String>,
    failure_mode: Option<FailureMode>,
) -> Result<ReviewReport> {
    let mut ledger = Ledger::open_default(env)?;
    let run = match which {
        Which::Id(id) => ledger.run(id)?.ok_or_else(|| Error::UnknownRun {
            run_id: id.to_owned(),
            ledger: ledger.path().to_path_buf(),
        })?,
        Which::Last => ledger
            .recent(1)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Ledger {
                path: ledger.path().to_path_buf(),
                message: "holds no runs yet, so --last names none".to_owned(),
            })?,
    };
    let entry = ReviewEntry {
        verdict: verdict.as_str().to_owned(),
        reason: reason.filter(|r| !r.trim().is_empty()),
        failure_mode: failure_mode.map(|m| m.as_str().to_owned()),
        at: ledger::now(),
    };
    let history = ledger.add_review(&run.run_id, &entry)?;
    Ok(ReviewReport {
        run_id: run.run_id,
        verdict: entry.verdict,
        reason: entry.reason,
        failure_mode: entry.failure_mode,
        replaced: run.verdict,
        history,
    })
}
