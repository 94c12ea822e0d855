//! The configuration files: the repository's `.execute-local-task/config.toml` and the
//! user's `$XDG_CONFIG_HOME/execute-local-task/config.toml`, read bounded, parsed with
//! spans, merged per key (the repository's wins), and validated (references, cycles),
//! with every value keeping where it came from.
//!
//! A mistake is an [`Error::Config`] naming the file, the line and the key, with the
//! nearest known key for a typo. What is not checked here: that servers answer (that is
//! `config --check`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::defaults;
use crate::error::{Error, Result};
use crate::input_file;
use crate::profile::{self, Origin, Profile, Role, Setting};
use crate::spec::Kind;

/// The largest config file read: a config is a few kilobytes; a megabyte is a mistake.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The repository's config, relative to its root.
pub const REPO_CONFIG: &str = ".execute-local-task/config.toml";
/// The variable that picks a profile.
pub const PROFILE_VARIABLE: &str = "LOCAL_TASK_PROFILE";

/// The effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// The files looked for, in precedence order (the repository's first).
    pub files: Vec<ConfigFile>,
    /// The profile `--profile` or `LOCAL_TASK_PROFILE` picked.
    pub selected: Option<Setting<String>>,
    pub default_profile: Option<Setting<String>>,
    pub profiles: BTreeMap<String, Profile>,
    pub triage: Thresholds,
    /// The run ledger's file, from the user's config only (`LOCAL_TASK_LEDGER` wins).
    /// Boxed, as these four are: a run's future carries the configuration and must stay
    /// small.
    pub ledger_path: Option<Box<Setting<PathBuf>>>,
    pub trust: Box<Trust>,
    pub savings: Box<SavingsRates>,
    pub targets: Box<Targets>,
    /// `[run]`: the defaults of a run's command-line options.
    pub run: Box<RunDefaults>,
    /// The validator checkpoint's settings (`[validator]`).
    pub validator: Box<ValidatorSettings>,
    /// Routing, fallback and escalation's numbers (see [`crate::route`]).
    pub routing: Box<Routing>,
}

/// The `[routing]` table: what moves a route, bounds a ladder and cools a failed server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Routing {
    /// Runs of a profile for a kind the ledger must hold before its record counts.
    pub min_runs: Setting<u32>,
    /// The share of those runs a profile must have succeeded in to be picked by routing.
    pub min_success_rate: Setting<f64>,
    /// Writer model calls one task may make in all, across fallbacks and escalations (a
    /// validator's review is not counted: at most two calls per attempt it sees).
    pub max_calls: Setting<u32>,
    /// Seconds a server that failed is passed over by every run.
    pub cooldown_secs: Setting<u32>,
}

/// `[run]`: whether a run goes on a task branch when neither `--branch` nor
/// `--no-branch` is given, and the directories a task worktree links (with `--link`'s).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunDefaults {
    pub branch: Setting<bool>,
    pub link: Setting<Vec<PathBuf>>,
}

/// The validator checkpoint's settings (see [`crate::validator`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidatorSettings {
    /// A verdict less confident than this fails the attempt.
    pub min_confidence: Setting<f64>,
}

/// The trust lifecycle's numbers (see [`crate::trust`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trust {
    pub calibrate_runs: Setting<u32>,
    pub establish_runs: Setting<u32>,
    pub good_percent: Setting<u32>,
    pub sample_percent: Setting<u32>,
    pub relapse_poor: Setting<u32>,
    pub relapse_window: Setting<u32>,
    pub max_changed_lines: Setting<u32>,
    pub repository_runs: Setting<u32>,
}

/// The savings estimate's rates (see [`crate::savings`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavingsRates {
    pub cost_ratio: Setting<u32>,
    pub bytes_per_token: Setting<u32>,
}

/// The user's targets `stats` compares its figures against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Targets {
    pub delegation_rate: Setting<f64>,
    pub first_pass_rate: Setting<f64>,
    pub saved_share: Setting<f64>,
}

/// What the ledger's readers and writers need of the configuration, as plain values.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerSettings {
    pub path: Option<PathBuf>,
    pub trust: crate::trust::Thresholds,
    pub cost_ratio: u64,
    pub bytes_per_token: u64,
    /// `delegation_rate`, `first_pass_rate`, `saved_share`.
    pub targets: [f64; 3],
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            path: None,
            trust: crate::trust::Thresholds::default(),
            cost_ratio: defaults::SAVINGS_COST_RATIO,
            bytes_per_token: defaults::SAVINGS_BYTES_PER_TOKEN,
            targets: [
                defaults::TARGET_DELEGATION_RATE,
                defaults::TARGET_FIRST_PASS_RATE,
                defaults::TARGET_SAVED_SHARE,
            ],
        }
    }
}

/// A config file looked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigFile {
    pub source: Origin,
    pub path: PathBuf,
    pub found: bool,
}

/// The triage thresholds; their defaults are the atomic-task criteria.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Thresholds {
    /// Lines of output a task is expected to stay under.
    pub max_lines: Setting<u32>,
    /// Imports the target may have.
    pub max_imports: Setting<u32>,
    /// Output files a task may write.
    pub max_files: Setting<u32>,
    /// The share of the context window the prompt and the reply may fill comfortably.
    pub window_share: Setting<f64>,
    /// A score at or above this is `delegate`.
    pub delegate_at: Setting<u32>,
    /// A score at or above this (and below `delegate_at`) is `delegate_with_care`.
    pub care_at: Setting<u32>,
    /// Words in the description that mark design work.
    pub design_words: Setting<Vec<String>>,
    /// Words that mark a task that is not stateless.
    pub state_words: Setting<Vec<String>>,
}

/// One file as written: every key optional, unknown keys refused.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default_profile: Option<Spanned<String>>,
    #[serde(default)]
    profiles: BTreeMap<String, Spanned<RawProfile>>,
    #[serde(default)]
    triage: RawTriage,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    savings: RawSavings,
    #[serde(default)]
    targets: RawTargets,
    #[serde(default)]
    run: RawRun,
    #[serde(default)]
    validator: RawValidator,
    #[serde(default)]
    routing: RawRouting,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRun {
    branch: Option<Spanned<bool>>,
    link: Option<Spanned<Vec<PathBuf>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawValidator {
    min_confidence: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    min_runs: Option<Spanned<u32>>,
    min_success_rate: Option<Spanned<f64>>,
    max_calls: Option<Spanned<u32>>,
    cooldown_secs: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    path: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    calibrate_runs: Option<Spanned<u32>>,
    establish_runs: Option<Spanned<u32>>,
    good_percent: Option<Spanned<u32>>,
    sample_percent: Option<Spanned<u32>>,
    relapse_poor: Option<Spanned<u32>>,
    relapse_window: Option<Spanned<u32>>,
    max_changed_lines: Option<Spanned<u32>>,
    repository_runs: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSavings {
    cost_ratio: Option<Spanned<u32>>,
    bytes_per_token: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTargets {
    delegation_rate: Option<Spanned<f64>>,
    first_pass_rate: Option<Spanned<f64>>,
    saved_share: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    provider: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    endpoints: Option<Spanned<Vec<String>>>,
    model: Option<Spanned<String>>,
    context_window: Option<Spanned<u32>>,
    temperature: Option<Spanned<f64>>,
    max_tokens: Option<Spanned<u32>>,
    cost: Option<Spanned<f64>>,
    kinds: Option<Spanned<Vec<Kind>>>,
    min_score: Option<Spanned<u32>>,
    max_score: Option<Spanned<u32>>,
    fallback: Option<Spanned<Vec<String>>>,
    escalate_to: Option<Spanned<String>>,
    role: Option<Spanned<Role>>,
    validator: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTriage {
    max_lines: Option<Spanned<u32>>,
    max_imports: Option<Spanned<u32>>,
    max_files: Option<Spanned<u32>>,
    window_share: Option<Spanned<f64>>,
    delegate_at: Option<Spanned<u32>>,
    care_at: Option<Spanned<u32>>,
    design_words: Option<Spanned<Vec<String>>>,
    state_words: Option<Spanned<Vec<String>>>,
}

/// A file that was found: its text and what it holds.
struct Parsed {
    origin: Origin,
    path: PathBuf,
    text: String,
    raw: RawFile,
}

impl Parsed {
    fn setting<T: Clone>(&self, spanned: &Spanned<T>) -> Setting<T> {
        Setting {
            value: spanned.get_ref().clone(),
            source: self.origin,
            file: Some(self.path.clone()),
            line: Some(line_of(&self.text, spanned.span().start)),
        }
    }
}

/// The ledger settings for a command that reads the ledger outside a run: the config of
/// the repository at `dir` (the working directory when `None`, none outside a repository)
/// and the user's.
pub fn ledger_settings(
    dir: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LedgerSettings> {
    let repo = crate::repo::Repo::discover(dir.unwrap_or(Path::new("."))).ok();
    let config = Config::load(repo.as_ref().map(crate::repo::Repo::root), None, env)?;
    Ok(config.ledger_settings())
}

/// Where the two files live for the repository at `root` (none outside a repository).
pub fn locations(root: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Vec<ConfigFile> {
    let mut files = Vec::new();
    if let Some(root) = root {
        files.push(ConfigFile {
            source: Origin::Repository,
            path: root.join(REPO_CONFIG),
            found: false,
        });
    }
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")));
    if let Some(base) = base {
        files.push(ConfigFile {
            source: Origin::User,
            path: base.join("execute-local-task").join("config.toml"),
            found: false,
        });
    }
    files
}

impl Config {
    /// Reads, merges and validates the configuration for the repository at `root`;
    /// `profile_flag` is `--profile`. No file at all is an empty configuration.
    pub fn load(
        root: Option<&Path>,
        profile_flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut files = locations(root, env);
        let mut parsed = Vec::new();
        for file in &mut files {
            if file.source == Origin::Repository
                && let Some(root) = root
            {
                check_inside(root, &file.path)?;
            }
            if let Some(found) = read(file.source, &file.path)? {
                file.found = true;
                parsed.push(found);
            }
        }
        let repo = parsed.iter().find(|p| p.origin == Origin::Repository);
        let user = parsed.iter().find(|p| p.origin == Origin::User);
        let selected = match profile_flag.filter(|p| !p.trim().is_empty()) {
            Some(name) => Some(Setting::named(name.to_owned(), Origin::Flag, "--profile")),
            None => env(PROFILE_VARIABLE)
                .filter(|p| !p.trim().is_empty())
                .map(|name| Setting::named(name, Origin::Environment, PROFILE_VARIABLE)),
        };
        let user_named = user_endpoints(user, env);
        let names: BTreeSet<&String> = parsed.iter().flat_map(|p| p.raw.profiles.keys()).collect();
        let mut profiles = BTreeMap::new();
        for name in names {
            let profile = merge_profile(name, repo, user, &user_named)?;
            profiles.insert(name.clone(), profile);
        }
        let default_profile = pick(repo, user, |raw| raw.default_profile.as_ref());
        if let Some(repo) = repo
            && let Some(path) = &repo.raw.ledger.path
        {
            return Err(config_error(
                &repo.setting(path),
                "ledger.path",
                "only your own config may move the run ledger: a repository must not choose where your runs are recorded".to_owned(),
            ));
        }
        let config = Self {
            files,
            selected,
            default_profile,
            profiles,
            triage: thresholds(repo, user),
            ledger_path: user
                .and_then(|u| u.raw.ledger.path.as_ref().map(|p| Box::new(u.setting(p)))),
            trust: Box::new(trust(repo, user)),
            savings: Box::new(savings(repo, user)),
            targets: Box::new(targets(repo, user)),
            run: Box::new(RunDefaults {
                branch: pick(repo, user, |r| r.run.branch.as_ref())
                    .unwrap_or_else(|| Setting::default(false)),
                link: pick(repo, user, |r| r.run.link.as_ref())
                    .unwrap_or_else(|| Setting::default(Vec::new())),
            }),
            validator: Box::new(ValidatorSettings {
                min_confidence: pick(repo, user, |r| r.validator.min_confidence.as_ref())
                    .unwrap_or_else(|| Setting::default(defaults::VALIDATOR_MIN_CONFIDENCE)),
            }),
            routing: Box::new(routing(repo, user)),
        };
        config.validate()?;
        config.check_ledger_ranges()?;
        for variable in config
            .profiles
            .values()
            .filter_map(|p| p.api_key_env.as_ref())
        {
            crate::test_run::withhold(&variable.value);
        }
        Ok(config)
    }

    /// The ledger's place and numbers as the ledger's readers and writers use them.
    pub fn ledger_settings(&self) -> LedgerSettings {
        let t = &self.trust;
        let size = |s: &Setting<u32>| s.value as usize;
        LedgerSettings {
            // A relative path is the config file's neighbour, not the working directory's.
            path: self.ledger_path.as_ref().map(|p| match &p.file {
                Some(file) if p.value.is_relative() => {
                    file.parent().unwrap_or(Path::new("")).join(&p.value)
                }
                _ => p.value.clone(),
            }),
            trust: crate::trust::Thresholds {
                calibrate_runs: size(&t.calibrate_runs),
                establish_runs: size(&t.establish_runs),
                good_percent: size(&t.good_percent),
                sample_percent: u64::from(t.sample_percent.value),
                relapse_poor: size(&t.relapse_poor),
                relapse_window: size(&t.relapse_window),
                max_changed_lines: u64::from(t.max_changed_lines.value),
                repository_runs: size(&t.repository_runs),
            },
            cost_ratio: u64::from(self.savings.cost_ratio.value),
            bytes_per_token: u64::from(self.savings.bytes_per_token.value),
            targets: [
                self.targets.delegation_rate.value,
                self.targets.first_pass_rate.value,
                self.targets.saved_share.value,
            ],
        }
    }

    /// Ranges of `[trust]`, `[savings]`, `[targets]` and `[validator]`: a value that would
    /// make the lifecycle, the estimate or the checkpoint meaningless (a percentage over
    /// 100, a ratio of 0, a share above 1).
    fn check_ledger_ranges(&self) -> Result<()> {
        let t = &self.trust;
        let percent = [
            (&t.good_percent, "trust.good_percent"),
            (&t.sample_percent, "trust.sample_percent"),
        ];
        for (setting, key) in percent {
            if setting.value > 100 {
                return Err(config_error(
                    setting,
                    key,
                    "must be between 0 and 100".to_owned(),
                ));
            }
        }
        let positive = [
            (&t.relapse_poor, "trust.relapse_poor"),
            (&t.relapse_window, "trust.relapse_window"),
            (&self.savings.cost_ratio, "savings.cost_ratio"),
            (&self.savings.bytes_per_token, "savings.bytes_per_token"),
        ];
        for (setting, key) in positive {
            if setting.value == 0 {
                return Err(config_error(setting, key, "must be more than 0".to_owned()));
            }
        }
        if t.relapse_poor.value > t.relapse_window.value {
            return Err(config_error(
                &t.relapse_poor,
                "trust.relapse_poor",
                format!(
                    "must be at most trust.relapse_window ({})",
                    t.relapse_window.value
                ),
            ));
        }
        let r = &self.routing;
        if !(0.0..=1.0).contains(&r.min_success_rate.value) {
            return Err(config_error(
                &r.min_success_rate,
                "routing.min_success_rate",
                "must be a share between 0 and 1 (0.6 is 60%)".to_owned(),
            ));
        }
        if r.max_calls.value == 0 {
            return Err(config_error(
                &r.max_calls,
                "routing.max_calls",
                "must be more than 0".to_owned(),
            ));
        }
        let g = &self.targets;
        for (setting, key) in [
            (&g.delegation_rate, "targets.delegation_rate"),
            (&g.first_pass_rate, "targets.first_pass_rate"),
            (&g.saved_share, "targets.saved_share"),
            (&self.validator.min_confidence, "validator.min_confidence"),
        ] {
            if !(0.0..=1.0).contains(&setting.value) {
                return Err(config_error(
                    setting,
                    key,
                    "must be a share between 0 and 1 (0.7 is 70%)".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The profile `name`, when configured.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// References, cycles and ranges: every mistake names its file, line and key.
    /// Why profile `name` cannot write a task — it is a validator, which only reviews —
    /// naming the writers there are; `None` for a writer or an unknown name.
    pub fn not_a_writer(&self, name: &str) -> Option<String> {
        let profile = self.profiles.get(name).filter(|p| !p.is_writer())?;
        let writers: Vec<&str> = self
            .profiles
            .values()
            .filter(|p| p.is_writer())
            .map(|p| p.name.as_str())
            .collect();
        Some(format!(
            "`{}` is a validator profile (role = \"validator\"): it reviews, it does not write; writer profiles: {}",
            profile.name,
            if writers.is_empty() {
                "none".to_owned()
            } else {
                writers.join(", ")
            }
        ))
    }

    fn validate(&self) -> Result<()> {
        let known = |name: &str| self.profiles.contains_key(name);
        if let Some(default) = &self.default_profile
            && !known(&default.value)
        {
            return Err(self.unknown(default, "default_profile", &default.value));
        }
        if let Some(default) = &self.default_profile
            && let Some(why) = self.not_a_writer(&default.value)
        {
            return Err(config_error(default, "default_profile", why));
        }
        if let Some(selected) = &self.selected
            && !known(&selected.value)
        {
            let names: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            return Err(Error::Usage(format!(
                "{}: unknown profile `{}`; configured profiles: {}",
                selected.describe_source(),
                selected.value,
                if names.is_empty() {
                    "none (see `execute-local-task config`)".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        }
        if let Some(selected) = &self.selected
            && let Some(why) = self.not_a_writer(&selected.value)
        {
            return Err(Error::Usage(format!(
                "{}: {why}",
                selected.describe_source()
            )));
        }
        for profile in self.profiles.values() {
            let key = |field: &str| format!("profiles.{}.{field}", profile.name);
            if let Some(fallback) = &profile.fallback {
                for name in &fallback.value {
                    if !known(name) || *name == profile.name {
                        return Err(self.unknown(fallback, &key("fallback"), name));
                    }
                    if let Some(why) = self.not_a_writer(name) {
                        return Err(config_error(fallback, &key("fallback"), why));
                    }
                }
            }
            if let Some(escalate) = &profile.escalate_to
                && !known(&escalate.value)
            {
                return Err(self.unknown(escalate, &key("escalate_to"), &escalate.value));
            }
            if let Some(escalate) = &profile.escalate_to
                && let Some(why) = self.not_a_writer(&escalate.value)
            {
                return Err(config_error(escalate, &key("escalate_to"), why));
            }
            self.check_validator(profile)?;
            check_ranges(profile)?;
        }
        self.check_ladders()
    }

    /// A profile's `validator` names a configured profile whose role is `validator`, and
    /// only a writer has one: a reviewer reviewing itself, or a writer's code reviewed by
    /// another writer's prompt, is a mistake in the file, found before any run.
    fn check_validator(&self, profile: &Profile) -> Result<()> {
        let Some(validator) = &profile.validator else {
            return Ok(());
        };
        let key = format!("profiles.{}.validator", profile.name);
        if !profile.is_writer() {
            return Err(config_error(
                validator,
                &key,
                "a validator profile does not have a validator of its own; name it on a writer profile".to_owned(),
            ));
        }
        match self.profiles.get(&validator.value) {
            None => Err(self.unknown(validator, &key, &validator.value)),
            Some(named) if named.is_writer() => Err(config_error(
                validator,
                &key,
                format!(
                    "profile `{}` is a writer; a validator must have `role = \"validator\"`",
                    named.name
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// A profile whose `escalate_to` ladder comes back to itself would climb for ever.
    fn check_ladders(&self) -> Result<()> {
        for start in self.profiles.values() {
            let mut seen = vec![start.name.as_str()];
            let mut current = start;
            while let Some(next) = &current.escalate_to {
                if next.value == start.name {
                    seen.push(&next.value);
                    return Err(config_error(
                        next,
                        &format!("profiles.{}.escalate_to", current.name),
                        format!("escalation cycle: {}", seen.join(" -> ")),
                    ));
                }
                let Some(profile) = self.profiles.get(&next.value) else {
                    break;
                };
                if seen.contains(&profile.name.as_str()) {
                    // A cycle not through `start`: reported when it is the start.
                    break;
                }
                seen.push(&profile.name);
                current = profile;
            }
        }
        Ok(())
    }

    fn unknown<T>(&self, at: &Setting<T>, key: &str, name: &str) -> Error {
        let names: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        let advice = nearest(name, &names).map_or_else(
            || format!("configured profiles: {}", names.join(", ")),
            |near| format!("did you mean `{near}`?"),
        );
        config_error(at, key, format!("unknown profile `{name}`; {advice}"))
    }
}

impl Config {
    /// The effective configuration as aligned lines: key, value, where it came from.
    pub fn table(&self) -> Vec<String> {
        let mut rows: Vec<[String; 3]> = Vec::new();
        for file in &self.files {
            let state = if file.found { "read" } else { "not found" };
            rows.push([
                format!("file ({})", describe_origin(file.source)),
                file.path.display().to_string(),
                state.to_owned(),
            ]);
        }
        let mut row = |key: String, value: String, source: String| {
            rows.push([key, value, source]);
        };
        if let Some(selected) = &self.selected {
            let (value, source) = show(selected);
            row("profile".to_owned(), value, source);
        }
        if let Some(default) = &self.default_profile {
            let (value, source) = show(default);
            row("default_profile".to_owned(), value, source);
        }
        for profile in self.profiles.values() {
            for (field, value, source) in profile_rows(profile) {
                row(format!("profiles.{}.{field}", profile.name), value, source);
            }
        }
        for (field, value, source) in threshold_rows(&self.triage) {
            row(format!("triage.{field}"), value, source);
        }
        for (field, value, source) in ledger_rows(self) {
            row(field.to_owned(), value, source);
        }
        let (value, source) = show(&self.run.branch);
        row("run.branch".to_owned(), value, source);
        let (value, source) = show(&self.run.link);
        row("run.link".to_owned(), value, source);
        align(&rows)
    }
}

type Row = (&'static str, String, String);

/// A value as JSON writes it (`"writer"`, `["code", "test"]`), as the config spells it.
fn show<T: Serialize>(setting: &Setting<T>) -> (String, String) {
    let value = serde_json::to_string(&setting.value).unwrap_or_default();
    (value.replace("\",\"", "\", \""), setting.describe_source())
}

fn profile_rows(profile: &Profile) -> Vec<Row> {
    let mut rows = Vec::new();
    macro_rules! add {
        ($($field:ident),*) => {$(
            if let Some(setting) = &profile.$field {
                let (value, source) = show(setting);
                rows.push((stringify!($field), value, source));
            }
        )*};
    }
    add!(
        provider,
        endpoints,
        model,
        context_window,
        temperature,
        max_tokens,
        cost,
        kinds,
        min_score,
        max_score,
        fallback,
        escalate_to
    );
    let (value, source) = show(&profile.role);
    rows.push(("role", value, source));
    add!(validator, api_key_env);
    rows.push((
        "key_allowed",
        profile.key.allowed.to_string(),
        profile.key.reason.clone(),
    ));
    rows
}

fn threshold_rows(t: &Thresholds) -> Vec<Row> {
    let mut rows = Vec::new();
    macro_rules! add {
        ($($field:ident),*) => {$(
            let (value, source) = show(&t.$field);
            rows.push((stringify!($field), value, source));
        )*};
    }
    add!(
        max_lines,
        max_imports,
        max_files,
        window_share,
        delegate_at,
        care_at,
        design_words,
        state_words
    );
    rows
}

fn ledger_rows(config: &Config) -> Vec<Row> {
    let mut rows = Vec::new();
    match &config.ledger_path {
        Some(path) => {
            let (value, source) = show(path.as_ref());
            rows.push(("ledger.path", value, source));
        }
        None => rows.push((
            "ledger.path",
            "(LOCAL_TASK_LEDGER, else the XDG data directory)".to_owned(),
            "default".to_owned(),
        )),
    }
    macro_rules! add {
        ($section:ident: $($field:ident),*) => {$(
            let (value, source) = show(&config.$section.$field);
            rows.push((concat!(stringify!($section), ".", stringify!($field)), value, source));
        )*};
    }
    add!(trust: calibrate_runs, establish_runs, good_percent, sample_percent, relapse_poor,
        relapse_window, max_changed_lines, repository_runs);
    add!(savings: cost_ratio, bytes_per_token);
    add!(targets: delegation_rate, first_pass_rate, saved_share);
    add!(validator: min_confidence);
    add!(routing: min_runs, min_success_rate, max_calls, cooldown_secs);
    rows
}

fn describe_origin(origin: Origin) -> String {
    Setting {
        value: (),
        source: origin,
        file: None,
        line: None,
    }
    .describe_source()
}

/// Columns padded to their widest cell, the middle one to at most 40 characters so one
/// long list does not push every source off the screen.
fn align(rows: &[[String; 3]]) -> Vec<String> {
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (first, second) = (width(0), width(1).min(40));
    rows.iter()
        .map(|[a, b, c]| {
            format!("{a:first$}  {b:second$}  {c}")
                .trim_end()
                .to_owned()
        })
        .collect()
}

/// `config --check`'s probes as aligned lines.
pub fn probe_table(probes: &[crate::check::ProfileProbe]) -> Vec<String> {
    let mut rows = vec![[
        "profile".to_owned(),
        "endpoint / model".to_owned(),
        "state".to_owned(),
    ]];
    for probe in probes {
        let failing = probe
            .members
            .iter()
            .filter(|m| !m.reachable || m.model_present == Some(false))
            .count();
        let state = if !probe.reachable {
            format!(
                "not reachable ({})",
                probe.error.as_deref().unwrap_or("no answer")
            )
        } else if probe.model_present == Some(false) {
            "reachable, model not listed".to_owned()
        } else if failing > 0 {
            format!("{failing} of {} pool members failing", probe.members.len())
        } else {
            let window = probe.context_window.map_or_else(
                || "context window unknown".to_owned(),
                |w| format!("context window {w}"),
            );
            format!("ok, {window}")
        };
        rows.push([
            probe.profile.clone(),
            format!(
                "{} {}",
                probe.endpoint.as_deref().unwrap_or("(none)"),
                probe
                    .model
                    .as_deref()
                    .unwrap_or("(the server's only model)")
            ),
            state,
        ]);
    }
    align(&rows)
}

fn check_ranges(profile: &Profile) -> Result<()> {
    let key = |field: &str| format!("profiles.{}.{field}", profile.name);
    if let Some(provider) = &profile.provider
        && !crate::server::PROVIDERS.contains(&provider.value.as_str())
    {
        return Err(config_error(
            provider,
            &key("provider"),
            format!(
                "`{}` is not one of {}",
                provider.value,
                crate::server::PROVIDERS.join(", ")
            ),
        ));
    }
    if let Some(endpoints) = &profile.endpoints {
        if endpoints.value.is_empty() {
            return Err(config_error(
                endpoints,
                &key("endpoints"),
                "lists no endpoint".to_owned(),
            ));
        }
        for endpoint in &endpoints.value {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(config_error(
                    endpoints,
                    &key("endpoint"),
                    format!("`{endpoint}` is not an http:// or https:// URL"),
                ));
            }
        }
    }
    if let Some(t) = &profile.temperature
        && !(0.0..=2.0).contains(&t.value)
    {
        return Err(config_error(
            t,
            &key("temperature"),
            "must be between 0 and 2".to_owned(),
        ));
    }
    if let Some(c) = &profile.cost
        && !(c.value >= 0.0 && c.value.is_finite())
    {
        return Err(config_error(
            c,
            &key("cost"),
            "must be 0 or more".to_owned(),
        ));
    }
    for (band, field) in [
        (&profile.min_score, "min_score"),
        (&profile.max_score, "max_score"),
    ] {
        if let Some(band) = band
            && band.value > 10
        {
            return Err(config_error(
                band,
                &key(field),
                "must be a score from 0 to 10".to_owned(),
            ));
        }
    }
    if let (Some(min), Some(max)) = (&profile.min_score, &profile.max_score)
        && min.value > max.value
    {
        return Err(config_error(
            max,
            &key("max_score"),
            format!("is below min_score ({}): no task could fit", min.value),
        ));
    }
    if let Some(w) = &profile.context_window
        && w.value == 0
    {
        return Err(config_error(
            w,
            &key("context_window"),
            "must be more than 0".to_owned(),
        ));
    }
    Ok(())
}

fn config_error<T>(at: &Setting<T>, key: &str, message: String) -> Error {
    Error::Config {
        path: at.file.clone().unwrap_or_default(),
        line: at.line,
        key: Some(key.to_owned()),
        message,
    }
}

/// The repository's value of a key, else the user's.
fn pick<T: Clone>(
    repo: Option<&Parsed>,
    user: Option<&Parsed>,
    get: impl Fn(&RawFile) -> Option<&Spanned<T>>,
) -> Option<Setting<T>> {
    [repo, user]
        .into_iter()
        .flatten()
        .find_map(|file| get(&file.raw).map(|spanned| file.setting(spanned)))
}

/// Endpoints the user named: in their own config, or in the environment.
fn user_endpoints(user: Option<&Parsed>, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut named: Vec<String> = ["LOCAL_TASK_ENDPOINT", "OPENAI_BASE_URL"]
        .iter()
        .filter_map(|name| env(name))
        .collect();
    if let Some(user) = user {
        for profile in user.raw.profiles.values() {
            let profile = profile.get_ref();
            named.extend(profile.endpoint.iter().map(|e| e.get_ref().clone()));
            named.extend(profile.endpoints.iter().flat_map(|e| e.get_ref().clone()));
        }
    }
    named
}

fn profile_in<'a>(
    file: Option<&'a Parsed>,
    name: &str,
) -> Option<(&'a Parsed, &'a Spanned<RawProfile>)> {
    file.and_then(|f| f.raw.profiles.get(name).map(|p| (f, p)))
}

fn merge_profile(
    name: &str,
    repo: Option<&Parsed>,
    user: Option<&Parsed>,
    user_named: &[String],
) -> Result<Profile> {
    let (repo_profile, user_profile) = (profile_in(repo, name), profile_in(user, name));
    for (file, profile) in [repo_profile, user_profile].into_iter().flatten() {
        let raw = profile.get_ref();
        let key = |field: &str| format!("profiles.{name}.{field}");
        if let (Some(_), Some(both)) = (&raw.endpoint, &raw.endpoints) {
            return Err(config_error(
                &file.setting(both),
                &key("endpoints"),
                "give `endpoint` or `endpoints`, not both".to_owned(),
            ));
        }
        if file.origin == Origin::Repository
            && let Some(variable) = &raw.api_key_env
        {
            return Err(config_error(
                &file.setting(variable),
                &key("api_key_env"),
                "only your own config may name the variable holding an API key: a repository must not choose which secret is sent where".to_owned(),
            ));
        }
    }
    // Per key, the repository's value first.
    let files: Vec<(&Parsed, &RawProfile)> = [repo_profile, user_profile]
        .into_iter()
        .flatten()
        .map(|(file, profile)| (file, profile.get_ref()))
        .collect();
    macro_rules! pick_field {
        ($field:ident) => {
            files
                .iter()
                .find_map(|(file, raw)| raw.$field.as_ref().map(|s| file.setting(s)))
        };
    }
    let endpoints = files.iter().find_map(|(file, raw)| {
        raw.endpoint
            .as_ref()
            .map(|one| {
                let setting = file.setting(one);
                Setting {
                    value: vec![setting.value],
                    source: setting.source,
                    file: setting.file,
                    line: setting.line,
                }
            })
            .or_else(|| raw.endpoints.as_ref().map(|many| file.setting(many)))
    });
    let key = profile::key_rule(endpoints.as_ref(), user_named);
    Ok(Profile {
        name: name.to_owned(),
        provider: pick_field!(provider),
        endpoints,
        model: pick_field!(model),
        context_window: pick_field!(context_window),
        temperature: pick_field!(temperature),
        max_tokens: pick_field!(max_tokens),
        cost: pick_field!(cost),
        kinds: pick_field!(kinds),
        min_score: pick_field!(min_score),
        max_score: pick_field!(max_score),
        fallback: pick_field!(fallback),
        escalate_to: pick_field!(escalate_to),
        role: pick_field!(role).unwrap_or_else(|| Setting::default(Role::Writer)),
        validator: pick_field!(validator),
        api_key_env: pick_field!(api_key_env),
        key,
    })
}

fn thresholds(repo: Option<&Parsed>, user: Option<&Parsed>) -> Thresholds {
    let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    Thresholds {
        max_lines: pick(repo, user, |r| r.triage.max_lines.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TRIAGE_MAX_LINES)),
        max_imports: pick(repo, user, |r| r.triage.max_imports.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TRIAGE_MAX_IMPORTS)),
        max_files: pick(repo, user, |r| r.triage.max_files.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TRIAGE_MAX_FILES)),
        window_share: pick(repo, user, |r| r.triage.window_share.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TRIAGE_WINDOW_SHARE)),
        delegate_at: pick(repo, user, |r| r.triage.delegate_at.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TRIAGE_DELEGATE_AT)),
        care_at: pick(repo, user, |r| r.triage.care_at.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TRIAGE_CARE_AT)),
        design_words: pick(repo, user, |r| r.triage.design_words.as_ref())
            .unwrap_or_else(|| Setting::default(words(defaults::TRIAGE_DESIGN_WORDS))),
        state_words: pick(repo, user, |r| r.triage.state_words.as_ref())
            .unwrap_or_else(|| Setting::default(words(defaults::TRIAGE_STATE_WORDS))),
    }
}

/// A `u64`/`usize` default as the `u32` a config file holds (the defaults are small).
fn small(value: impl TryInto<u32>) -> u32 {
    value.try_into().unwrap_or(u32::MAX)
}

fn trust(repo: Option<&Parsed>, user: Option<&Parsed>) -> Trust {
    macro_rules! field {
        ($field:ident, $default:expr) => {
            pick(repo, user, |r| r.trust.$field.as_ref())
                .unwrap_or_else(|| Setting::default(small($default)))
        };
    }
    Trust {
        calibrate_runs: field!(calibrate_runs, defaults::TRUST_CALIBRATE_RUNS),
        establish_runs: field!(establish_runs, defaults::TRUST_ESTABLISH_RUNS),
        good_percent: field!(good_percent, defaults::TRUST_GOOD_PERCENT),
        sample_percent: field!(sample_percent, defaults::TRUST_SAMPLE_PERCENT),
        relapse_poor: field!(relapse_poor, defaults::TRUST_RELAPSE_POOR),
        relapse_window: field!(relapse_window, defaults::TRUST_RELAPSE_WINDOW),
        max_changed_lines: field!(max_changed_lines, defaults::TRUST_MAX_CHANGED_LINES),
        repository_runs: field!(repository_runs, defaults::TRUST_REPOSITORY_RUNS),
    }
}

fn savings(repo: Option<&Parsed>, user: Option<&Parsed>) -> SavingsRates {
    SavingsRates {
        cost_ratio: pick(repo, user, |r| r.savings.cost_ratio.as_ref())
            .unwrap_or_else(|| Setting::default(small(defaults::SAVINGS_COST_RATIO))),
        bytes_per_token: pick(repo, user, |r| r.savings.bytes_per_token.as_ref())
            .unwrap_or_else(|| Setting::default(small(defaults::SAVINGS_BYTES_PER_TOKEN))),
    }
}

fn routing(repo: Option<&Parsed>, user: Option<&Parsed>) -> Routing {
    Routing {
        min_runs: pick(repo, user, |r| r.routing.min_runs.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::ROUTE_MIN_RUNS)),
        min_success_rate: pick(repo, user, |r| r.routing.min_success_rate.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::ROUTE_MIN_SUCCESS_RATE)),
        max_calls: pick(repo, user, |r| r.routing.max_calls.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::MAX_CALLS)),
        cooldown_secs: pick(repo, user, |r| r.routing.cooldown_secs.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::COOLDOWN_SECS)),
    }
}

fn targets(repo: Option<&Parsed>, user: Option<&Parsed>) -> Targets {
    Targets {
        delegation_rate: pick(repo, user, |r| r.targets.delegation_rate.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TARGET_DELEGATION_RATE)),
        first_pass_rate: pick(repo, user, |r| r.targets.first_pass_rate.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TARGET_FIRST_PASS_RATE)),
        saved_share: pick(repo, user, |r| r.targets.saved_share.as_ref())
            .unwrap_or_else(|| Setting::default(defaults::TARGET_SAVED_SHARE)),
    }
}

/// Refuses a repository config that is a symlink (or below a symlinked directory) that
/// leads outside the repository: a cloned repository must not make the tool read, and
/// print parts of, a file of the user's elsewhere. The files a repository holds are
/// static, so resolving the path and then opening it leaves no race an attacker controls.
fn check_inside(root: &Path, path: &Path) -> Result<()> {
    // Nothing there (or a dangling link): reading finds nothing or fails alike.
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    if real.starts_with(&root) && !real.starts_with(root.join(".git")) {
        return Ok(());
    }
    Err(Error::Config {
        path: path.to_path_buf(),
        line: None,
        key: None,
        message: format!(
            "is a symlink that leads outside the repository (to {}); a repository's config must be a file in it",
            real.display()
        ),
    })
}

/// The file at `path` parsed, or `None` when there is none.
fn read(origin: Origin, path: &Path) -> Result<Option<Parsed>> {
    let text = match input_file::read_text(path, MAX_CONFIG_BYTES) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(Error::Config {
                path: path.to_path_buf(),
                line: None,
                key: None,
                message: format!("cannot read it: {error}"),
            });
        }
    };
    let raw = parse(path, &text)?;
    Ok(Some(Parsed {
        origin,
        path: path.to_path_buf(),
        text,
        raw,
    }))
}

/// Parses one file; a mistake names its line, its key, and for a typo the nearest key.
fn parse(path: &Path, text: &str) -> Result<RawFile> {
    toml::from_str::<RawFile>(text).map_err(|error| {
        let offset = error.span().map(|span| span.start);
        let message = error.message().trim().to_owned();
        let message = match unknown_field(&message) {
            Some((field, expected)) => {
                let known: Vec<&str> = expected.iter().map(String::as_str).collect();
                match nearest(&field, &known) {
                    Some(near) => format!("unknown key `{field}`; did you mean `{near}`?"),
                    None => format!("unknown key `{field}`; known keys: {}", known.join(", ")),
                }
            }
            None => message,
        };
        Error::Config {
            path: path.to_path_buf(),
            line: offset.map(|offset| line_of(text, offset)),
            key: offset.and_then(|offset| key_at(text, offset)),
            message,
        }
    })
}

/// serde's "unknown field `x`, expected one of `a`, `b`" as `x` and its known fields.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), expected))
}

/// The known name closest to `name`, when one is close enough to be the likely fix.
fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), *k))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score > 0.8)
        .map(|(_, k)| k)
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// The dotted key written at `offset`: the table header above it joined with the key
/// before `=` on its line (or the header itself, on a header's line).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("").trim();
    let header = |line: &str| {
        let line = line.trim();
        line.starts_with('[').then(|| {
            line.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
    };
    if let Some(own) = header(line) {
        return Some(own);
    }
    let key = line.split('=').next()?.trim().trim_matches('"').to_owned();
    let table = text[..start].lines().rev().find_map(header);
    Some(match table {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistake_names_its_line_and_key() {
        let text =
            "default_profile = \"a\"\n\n[profiles.a]\nmodel = \"m\"\ntemperature = \"hot\"\n";
        let error = parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert!(
            error.starts_with("c.toml:5: key `profiles.a.temperature`: "),
            "{error}"
        );
    }

    #[test]
    fn a_typo_gets_the_nearest_key() {
        let text = "[profiles.a]\nmodle = \"m\"\n";
        let error = parse(Path::new("c.toml"), text).unwrap_err().to_string();
        assert_eq!(
            error,
            "c.toml:2: key `profiles.a.modle`: unknown key `modle`; did you mean `model`?"
        );
    }
}
