//! Triage: before any model call, how well a task suits a local model — a score 0–10
//! with its reasons, a verdict (`delegate`, `delegate_with_care`, `keep`) and the profile
//! routing would pick.
//!
//! The score starts at 10 and each departure from the atomic-task criteria (about 50
//! lines, at most 2 imports, one file, stateless, tested; the thresholds are in the
//! config) costs points, each named in `reasons`. It is a heuristic read from the spec,
//! the target's text and the context — no model is asked — so it is advice: a `keep`
//! never blocks a run. The one hard fact is the context window: a prompt and reply that
//! cannot fit a profile's configured window make the task unable to run there.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Thresholds};
use crate::context::ContextFile;
use crate::defaults;
use crate::spec::TaskSpec;
use crate::targets::Target;

/// A task's triage, as `check` prints it and every run's result carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Triage {
    /// 0 (keep it) to 10 (an atomic task).
    pub score: u32,
    pub verdict: Verdict,
    /// Each departure from the atomic-task criteria and the points it cost.
    pub reasons: Vec<Reason>,
    /// The profile routing picks (the result's `route.profile`); null
    /// without profiles.
    pub profile: Option<String>,
    /// Why that profile.
    pub profile_reason: Option<String>,
    pub estimate: Estimate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An atomic task: hand it to the local model.
    Delegate,
    /// Delegable, but review the result closely.
    DelegateWithCare,
    /// The supervisor should do it (or cut it smaller); the run is not blocked.
    Keep,
}

/// One reason a task lost points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// `size`, `files`, `imports`, `design`, `state`, `no_test`, `window`.
    pub factor: String,
    /// Negative: the points it cost.
    pub points: i32,
    pub detail: String,
}

/// What the score was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Estimate {
    /// Lines the output is expected to have: the existing files' lines plus what the
    /// description suggests (one line per 8 characters for a new file).
    pub output_lines: u64,
    pub output_files: u64,
    /// Import lines in the targets as they are.
    pub target_imports: u64,
    /// Import lines in the context files.
    pub context_imports: u64,
    pub context_files: u64,
    pub context_bytes: u64,
    /// The first request's tokens, estimated as the run's check before the call does
    /// ([`crate::model::window::tokens_in`]).
    pub prompt_tokens: u64,
    /// The reply's tokens, estimated at 12 a line of output.
    pub reply_tokens: u64,
    /// The picked profile's context window, else the assumed default.
    pub window: u64,
    /// Whether `window` is configured (false: assumed).
    pub window_known: bool,
    /// Whether prompt and reply fit the window.
    pub fits: bool,
}

impl Triage {
    /// False when the task cannot run with its profile: it cannot fit the profile's
    /// configured window. An assumed window only flags it.
    pub fn can_run(&self) -> bool {
        self.estimate.fits || !self.estimate.window_known
    }
}

/// What triage reads: the spec and what the stages before the model gathered.
pub struct Inputs<'a> {
    pub spec: &'a TaskSpec,
    pub(crate) targets: &'a [Target],
    pub context: &'a [ContextFile],
    /// Characters of the first request's messages.
    pub prompt_chars: usize,
}

/// The triage of a prepared task for the profile `routed` (name and reason), or when
/// `None` for the profile the task's kind alone would route to.
pub fn assess(
    inputs: &Inputs,
    config: &Config,
    routed: Option<(Option<String>, String)>,
) -> Triage {
    let limits = &config.triage;
    let route = match routed {
        Some((profile, reason)) => profile.map(|profile| (profile, reason)),
        None => crate::route::by_kind(config, inputs.spec),
    };
    let window_setting = route
        .as_ref()
        .and_then(|(name, _)| config.profile(name))
        .and_then(|p| p.context_window.as_ref())
        .map(|w| w.value);
    let estimate = estimate(inputs, window_setting);
    let mut reasons = Vec::new();
    shape_reasons(&estimate, limits, &mut reasons);
    wording_reasons(inputs.spec, limits, &mut reasons);
    window_reason(&estimate, limits, &mut reasons);
    finish(estimate, reasons, route, limits)
}

/// The output's size, its files, its imports.
fn shape_reasons(estimate: &Estimate, limits: &Thresholds, reasons: &mut Vec<Reason>) {
    let mut cost =
        |factor: &str, points: i32, detail: String| cost(reasons, factor, points, detail);
    let max_lines = u64::from(limits.max_lines.value);
    if estimate.output_lines > max_lines {
        let points = if estimate.output_lines > 3 * max_lines {
            -4
        } else {
            -2
        };
        cost(
            "size",
            points,
            format!(
                "about {} lines of output, over the {max_lines} of an atomic task",
                estimate.output_lines
            ),
        );
    }
    let max_files = u64::from(limits.max_files.value);
    if estimate.output_files > max_files {
        let extra = i32::try_from(estimate.output_files - max_files).unwrap_or(2);
        cost(
            "files",
            -(2 * extra).min(4),
            format!("{} output files, over {max_files}", estimate.output_files),
        );
    }
    let max_imports = u64::from(limits.max_imports.value);
    if estimate.target_imports > max_imports {
        cost(
            "imports",
            -1,
            format!(
                "the target has {} imports, over {max_imports}",
                estimate.target_imports
            ),
        );
    }
    if estimate.target_imports + estimate.context_imports > 4 * max_imports.max(1) {
        cost(
            "imports",
            -1,
            format!(
                "{} imports across target and context: a wide dependency surface",
                estimate.target_imports + estimate.context_imports
            ),
        );
    }
}

/// Pushes a reason that cost `points`.
fn cost(reasons: &mut Vec<Reason>, factor: &str, points: i32, detail: String) {
    reasons.push(Reason {
        factor: factor.to_owned(),
        points,
        detail,
    });
}

/// What the description and spec say: design work, state, a test or not.
fn wording_reasons(spec: &TaskSpec, limits: &Thresholds, reasons: &mut Vec<Reason>) {
    let mut cost =
        |factor: &str, points: i32, detail: String| cost(reasons, factor, points, detail);
    let description = spec.description.to_lowercase();
    let found = |words: &[String]| -> Vec<String> {
        words
            .iter()
            .filter(|w| description.contains(&w.to_lowercase()))
            .cloned()
            .collect()
    };
    let design = found(&limits.design_words.value);
    if !design.is_empty() {
        cost(
            "design",
            -4,
            format!(
                "the description speaks of design work: {}",
                design.join(", ")
            ),
        );
    }
    let state = found(&limits.state_words.value);
    if !state.is_empty() {
        cost(
            "state",
            -1,
            format!("the task may not be stateless: {}", state.join(", ")),
        );
    }
    if spec.test_command.is_none() {
        cost(
            "no_test",
            -2,
            "no test_command: nothing checks the model's code".to_owned(),
        );
    }
}

/// Whether prompt and reply fit the window, and comfortably.
fn window_reason(estimate: &Estimate, limits: &Thresholds, reasons: &mut Vec<Reason>) {
    let mut cost =
        |factor: &str, points: i32, detail: String| cost(reasons, factor, points, detail);
    let needed = estimate.prompt_tokens + estimate.reply_tokens;
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let comfortable = (estimate.window as f64 * limits.window_share.value) as u64;
    if !estimate.fits {
        let known = if estimate.window_known {
            ""
        } else {
            " (assumed)"
        };
        cost(
            "window",
            -10,
            format!(
                "about {needed} tokens of prompt and reply cannot fit the {}-token window{known}",
                estimate.window
            ),
        );
    } else if needed > comfortable {
        cost(
            "window",
            -2,
            format!(
                "about {needed} tokens fill more than {:.0}% of the {}-token window",
                limits.window_share.value * 100.0,
                estimate.window
            ),
        );
    }
}

fn finish(
    estimate: Estimate,
    reasons: Vec<Reason>,
    route: Option<(String, String)>,
    limits: &Thresholds,
) -> Triage {
    let lost: i32 = reasons.iter().map(|r| r.points).sum();
    let score = u32::try_from((10 + lost).max(0)).unwrap_or(0);
    let verdict = if !estimate.fits {
        Verdict::Keep
    } else if score >= limits.delegate_at.value {
        Verdict::Delegate
    } else if score >= limits.care_at.value {
        Verdict::DelegateWithCare
    } else {
        Verdict::Keep
    };
    let (profile, profile_reason) = route.unzip();
    Triage {
        score,
        verdict,
        reasons,
        profile,
        profile_reason,
        estimate,
    }
}

fn estimate(inputs: &Inputs, window: Option<u32>) -> Estimate {
    let existing: u64 = inputs
        .targets
        .iter()
        .filter_map(|t| t.before.as_deref())
        .map(|text| text.lines().count() as u64)
        .sum();
    let described = inputs.spec.description.chars().count() as u64 / 8;
    let output_lines = if existing > 0 {
        existing + described / 2
    } else {
        described.max(10)
    };
    let target_imports = inputs
        .targets
        .iter()
        .filter_map(|t| t.before.as_deref())
        .map(imports)
        .sum();
    let context_imports = inputs.context.iter().map(|c| imports(&c.content)).sum();
    let prompt_tokens = crate::model::window::tokens_in(inputs.prompt_chars);
    let reply_tokens = output_lines * 12;
    let window_known = window.is_some();
    let window = u64::from(window.unwrap_or(defaults::ASSUMED_CONTEXT_WINDOW));
    Estimate {
        output_lines,
        output_files: inputs.spec.outputs.len() as u64,
        target_imports,
        context_imports,
        context_files: inputs.context.len() as u64,
        context_bytes: inputs.context.iter().map(|c| c.content.len() as u64).sum(),
        prompt_tokens,
        reply_tokens,
        window,
        window_known,
        fits: prompt_tokens + reply_tokens <= window,
    }
}

/// Import lines in `text`, in the common languages' spellings.
fn imports(text: &str) -> u64 {
    text.lines()
        .map(str::trim_start)
        .filter(|line| {
            line.starts_with("import ")
                || (line.starts_with("from ") && line.contains(" import "))
                || line.starts_with("use ")
                || line.starts_with("pub use ")
                || line.starts_with("#include")
                || line.starts_with("extern crate ")
                || line.starts_with("using ")
                || line.contains("require(")
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_imports_in_several_languages() {
        let text = "import os\nfrom a import b\nuse std::fs;\n#include <x.h>\nconst f = require('f');\nx = 1\n";
        assert_eq!(imports(text), 5);
    }
}
