//! The JSON Schema of the config file (`schema config`): a mirror of the TOML types that
//! `config.rs` parses. Those hold every value in `toml::Spanned` (for the line an error
//! names), which schemars cannot describe, so the schema is generated from these plain
//! types instead. They cannot drift apart unnoticed: a test asks the real parser for the
//! keys it knows in every table (the "known keys" of its unknown-key error) and compares
//! them with this schema's.
//!
//! What the schema cannot say: cross-references (`default_profile`, `fallback` and
//! `escalate_to` name configured profiles, a `validator` a validator profile, no
//! `escalate_to` cycle), `endpoint` and
//! `endpoints` not together, and which keys only your own config may set (`api_key_env`,
//! `[ledger] path`). `config` checks those.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::spec::Kind;

/// `.execute-local-task/config.toml` (the repository's) or
/// `$XDG_CONFIG_HOME/execute-local-task/config.toml` (yours): every key optional.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "execute-local-task config.toml")]
pub struct ConfigFile {
    /// The profile a run uses when neither `--profile`, `LOCAL_TASK_PROFILE` nor the
    /// spec names one.
    pub default_profile: Option<String>,
    /// Named model servers and models.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileTable>,
    /// The thresholds of `check` and of every result's `triage`.
    #[serde(default)]
    pub triage: TriageTable,
    /// Where the run ledger lives (your own config only).
    #[serde(default)]
    pub ledger: LedgerTable,
    /// The trust lifecycle's numbers.
    #[serde(default)]
    pub trust: TrustTable,
    /// The savings estimate's rates.
    #[serde(default)]
    pub savings: SavingsTable,
    /// The shares `stats` marks as met or not.
    #[serde(default)]
    pub targets: TargetsTable,
    /// The validator checkpoint.
    #[serde(default)]
    pub validator: ValidatorTable,
    /// Routing, fallback and escalation's numbers.
    #[serde(default)]
    pub routing: RoutingTable,
    /// How runs are made when the command line does not say.
    #[serde(default)]
    pub run: RunTable,
}

/// One `[profiles.NAME]` table.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileTable {
    /// The protocol: `ollama` (native API), `openai` (OpenAI-compatible) or `auto`.
    pub provider: Option<Provider>,
    /// The server's URL (not together with `endpoints`).
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Several servers serving the same model (a pool; not together with `endpoint`).
    #[schemars(length(min = 1), inner(regex(pattern = r"^https?://")))]
    pub endpoints: Option<Vec<String>>,
    /// The model name the server knows.
    pub model: Option<String>,
    /// Tokens the model takes in, prompt and reply together.
    #[schemars(range(min = 1))]
    pub context_window: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[schemars(range(min = 0, max = 2))]
    pub temperature: Option<f64>,
    /// Cap on the reply's tokens.
    pub max_tokens: Option<u32>,
    /// Relative cost (default 1): routing prefers the cheapest profile for a task's kind.
    #[schemars(range(min = 0))]
    pub cost: Option<f64>,
    /// The task kinds the profile is for (unset: all).
    pub kinds: Option<Vec<Kind>>,
    /// The lowest triage score (0 to 10) routing picks this profile for.
    #[schemars(range(max = 10))]
    pub min_score: Option<u32>,
    /// The highest triage score (0 to 10) routing picks this profile for.
    #[schemars(range(max = 10))]
    pub max_score: Option<u32>,
    /// Profiles to try when this one's servers fail.
    pub fallback: Option<Vec<String>>,
    /// The stronger profile to climb to when this one's attempts fail.
    pub escalate_to: Option<String>,
    /// `writer` (default) or `validator`.
    pub role: Option<RoleName>,
    /// On a writer: the profile (with `role = "validator"`) that reviews each attempt's
    /// code before it is written.
    pub validator: Option<String>,
    /// The variable holding this profile's API key (your own config only).
    pub api_key_env: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Ollama,
    Openai,
    Auto,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Writer,
    Validator,
}

/// `[triage]`: the atomic-task criteria `check` scores against.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriageTable {
    /// Lines of output a task is expected to stay under (default 50).
    pub max_lines: Option<u32>,
    /// Imports the target may have (default 2).
    pub max_imports: Option<u32>,
    /// Output files a task may write (default 1).
    pub max_files: Option<u32>,
    /// The share of the context window the prompt and reply may fill comfortably (0.75).
    pub window_share: Option<f64>,
    /// A score at or above this is `delegate` (7).
    pub delegate_at: Option<u32>,
    /// A score at or above this is `delegate_with_care` (4).
    pub care_at: Option<u32>,
    /// Words in the description that mark design work.
    pub design_words: Option<Vec<String>>,
    /// Words that mark a task that is not stateless.
    pub state_words: Option<Vec<String>>,
}

/// `[ledger]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerTable {
    /// The ledger's file; relative to the config file's directory. Your own config only
    /// (`LOCAL_TASK_LEDGER` wins).
    pub path: Option<PathBuf>,
}

/// `[trust]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustTable {
    /// Reviewed runs of a (kind, model) pair in `calibrate`, every run reviewed (5).
    pub calibrate_runs: Option<u32>,
    /// Reviewed runs for `trust` (20).
    pub establish_runs: Option<u32>,
    /// The percentage of reviewed runs good or acceptable for `trust` (80).
    #[schemars(range(max = 100))]
    pub good_percent: Option<u32>,
    /// The share of `establish` runs sampled for review, in percent (15).
    #[schemars(range(max = 100))]
    pub sample_percent: Option<u32>,
    /// This many `poor` verdicts among the last `relapse_window` send a pair back (2).
    #[schemars(range(min = 1))]
    pub relapse_poor: Option<u32>,
    /// See `relapse_poor` (10).
    #[schemars(range(min = 1))]
    pub relapse_window: Option<u32>,
    /// In `trust`, a run changing more lines is still reviewed (200).
    pub max_changed_lines: Option<u32>,
    /// Reviewed runs a repository needs to be judged by its own record (5).
    pub repository_runs: Option<u32>,
}

/// `[savings]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SavingsTable {
    /// What a token the supervisor writes costs in tokens it reads (5).
    #[schemars(range(min = 1))]
    pub cost_ratio: Option<u32>,
    /// Bytes per estimated token (4).
    #[schemars(range(min = 1))]
    pub bytes_per_token: Option<u32>,
}

/// `[targets]`: shares between 0 and 1.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetsTable {
    /// (0.7)
    #[schemars(range(min = 0, max = 1))]
    pub delegation_rate: Option<f64>,
    /// (0.8)
    #[schemars(range(min = 0, max = 1))]
    pub first_pass_rate: Option<f64>,
    /// (0.6)
    #[schemars(range(min = 0, max = 1))]
    pub saved_share: Option<f64>,
}

/// `[validator]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatorTable {
    /// A verdict less confident than this fails the attempt, 0 to 1.
    #[schemars(range(min = 0, max = 1))]
    pub min_confidence: Option<f64>,
}

/// `[routing]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingTable {
    /// Runs of a profile for a kind the ledger must hold before its record counts.
    pub min_runs: Option<u32>,
    /// The share of those runs, 0 to 1, a profile must have succeeded in to be picked.
    #[schemars(range(min = 0, max = 1))]
    pub min_success_rate: Option<f64>,
    /// Writer model calls one task may make in all, across fallbacks and escalations; a
    /// validator's review is not counted.
    #[schemars(range(min = 1))]
    pub max_calls: Option<u32>,
    /// Seconds a server that failed is passed over by every run.
    pub cooldown_secs: Option<u32>,
}

/// `[run]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTable {
    /// Run every task on its task branch, as `--branch` does; `--branch`/`--no-branch`
    /// beat it (false).
    pub branch: Option<bool>,
    /// Ignored directories of the main tree to link into a task worktree, before
    /// `--link`'s and `LOCAL_TASK_LINK`'s ([]).
    pub link: Option<Vec<PathBuf>>,
}

/// The schema `schema config` prints.
pub fn json_schema() -> Value {
    serde_json::json!(schemars::schema_for!(ConfigFile))
}
