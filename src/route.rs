//! Routing: which profile a task runs with and why, the profiles passed over, and the
//! model choice a profile gives a run. One function ([`decide`]) serves a run, its dry
//! run, `check` and triage, so all of them show the same pick.
//!
//! The order: a run pinned by the command line (`--endpoint` or `--model`) uses no
//! profile; else `--profile`, `LOCAL_TASK_PROFILE`, the spec's `profile`; else the
//! writer profiles that fit the task — its kind in the profile's `kinds`, its triage
//! score within `min_score..=max_score`, a ledger record for the kind at or above
//! `routing.min_success_rate` once it has `routing.min_runs` runs, a server not cooling
//! down — `default_profile` first, then the cheapest. A profile picked by name whose
//! server cools down gives way to the first of its `fallback` that does not.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::cooldown::Cooldowns;
use crate::endpoint;
use crate::profile::Profile;
use crate::server::ModelChoice;
use crate::spec::TaskSpec;

/// How a run's profile was picked; every result of a run that got this far carries it
/// when the configuration has profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Null when no profile is used (pinned by the command line, or none fits).
    pub profile: Option<String>,
    /// The model the run asks for; null when the server's only model is taken.
    pub model: Option<String>,
    /// The endpoint (credentials masked); null when discovery finds the server.
    pub endpoint: Option<String>,
    pub reason: String,
    /// The profiles considered before the pick and passed over.
    pub candidates: Vec<Candidate>,
}

/// A profile routing passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub profile: String,
    pub why_not: String,
}

/// What routing reads besides the configuration and the spec.
pub struct Looks<'a> {
    /// The flag that pins the run's server or model (`--endpoint`, `--model`).
    pub pinned_by: Option<&'static str>,
    /// The task's triage score; `None` before triage (kinds only).
    pub score: Option<u32>,
    /// A profile's ledger record for the task's kind: runs, and runs it succeeded in.
    pub record: &'a dyn Fn(&str) -> Option<(u32, u32)>,
    pub cooldowns: &'a Cooldowns,
}

/// The profile a task runs with, and why (model and endpoint are filled by [`choice`]).
pub fn decide(config: &Config, spec: &TaskSpec, looks: &Looks) -> Route {
    let route = |profile: Option<&str>, reason: String, candidates| Route {
        profile: profile.map(str::to_owned),
        model: None,
        endpoint: None,
        reason,
        candidates,
    };
    if let Some(flag) = looks.pinned_by {
        return route(None, format!("pinned by the command line ({flag})"), vec![]);
    }
    let named = config
        .selected
        .as_ref()
        .map(|s| {
            (
                s.value.clone(),
                format!("picked by {}", s.describe_source()),
            )
        })
        .or_else(|| {
            spec.profile
                .clone()
                .map(|name| (name, "named by the spec".to_owned()))
        });
    if let Some((name, reason)) = named {
        return named_route(config, &name, reason, looks.cooldowns);
    }
    let kind = spec.kind;
    let default = config.default_profile.as_ref().map(|d| d.value.as_str());
    let mut writers: Vec<&Profile> = config.profiles.values().filter(|p| p.is_writer()).collect();
    // `default_profile` first, then the cheapest; the name breaks ties, so a route is
    // the same every time.
    writers.sort_by(|a, b| {
        let not_default = |p: &Profile| Some(p.name.as_str()) != default;
        not_default(a)
            .cmp(&not_default(b))
            .then(cost(a).total_cmp(&cost(b)))
            .then(a.name.cmp(&b.name))
    });
    let mut candidates = Vec::new();
    for profile in writers {
        if let Some(why_not) = why_not(config, profile, kind, looks) {
            candidates.push(Candidate {
                profile: profile.name.clone(),
                why_not,
            });
            continue;
        }
        let score = looks
            .score
            .map_or_else(String::new, |s| format!(" at score {s}"));
        let reason = if Some(profile.name.as_str()) == default {
            format!("default_profile, fits kind `{}`{score}", kind.as_str())
        } else {
            format!(
                "the cheapest writer that fits kind `{}`{score}",
                kind.as_str()
            )
        };
        return route(Some(&profile.name), reason, candidates);
    }
    match default {
        Some(name) => route(
            Some(name),
            format!("default_profile (no profile fits kind `{}`)", kind.as_str()),
            candidates,
        ),
        None => route(
            None,
            "no profile fits: the run's own choice (flags, spec, environment, discovery)"
                .to_owned(),
            candidates,
        ),
    }
}

/// The profile the task's kind alone routes to (no score, record or cool-down), and why:
/// what triage first reads a profile's window from.
pub fn by_kind(config: &Config, spec: &TaskSpec) -> Option<(String, String)> {
    let none = Cooldowns::none();
    let route = decide(
        config,
        spec,
        &Looks {
            pinned_by: None,
            score: None,
            record: &|_: &str| None,
            cooldowns: &none,
        },
    );
    route.profile.map(|profile| (profile, route.reason))
}

/// A profile picked by name, or when its server cools down the first of its fallbacks
/// whose server does not.
fn named_route(config: &Config, name: &str, reason: String, cooldowns: &Cooldowns) -> Route {
    let mut candidates = Vec::new();
    let mut order = vec![name.to_owned()];
    if let Some(fallback) = config.profile(name).and_then(|p| p.fallback.as_ref()) {
        order.extend(fallback.value.iter().cloned());
    }
    for (i, candidate) in order.iter().enumerate() {
        let cooling = config
            .profile(candidate)
            .and_then(|p| cooling(p, cooldowns));
        match cooling {
            Some(why_not) if i + 1 < order.len() => candidates.push(Candidate {
                profile: candidate.clone(),
                why_not,
            }),
            _ => {
                let reason = if i == 0 {
                    reason
                } else {
                    format!("fallback of `{name}` ({reason}), whose server cools down")
                };
                return Route {
                    profile: Some(candidate.clone()),
                    model: None,
                    endpoint: None,
                    reason,
                    candidates,
                };
            }
        }
    }
    unreachable_route(name, reason)
}

/// `order` always holds the named profile, so [`named_route`] returns from its loop;
/// this keeps the function total without a panic.
fn unreachable_route(name: &str, reason: String) -> Route {
    Route {
        profile: Some(name.to_owned()),
        model: None,
        endpoint: None,
        reason,
        candidates: Vec::new(),
    }
}

/// Why `profile` does not fit the task, or `None` when it does.
fn why_not(
    config: &Config,
    profile: &Profile,
    kind: crate::spec::Kind,
    looks: &Looks,
) -> Option<String> {
    if !profile.serves(kind) {
        return Some(format!("not for kind `{}`", kind.as_str()));
    }
    if let Some(score) = looks.score {
        let (min, max) = band(profile);
        if score < min {
            return Some(format!("score {score} is below its min_score {min}"));
        }
        if score > max {
            return Some(format!("score {score} is above its max_score {max}"));
        }
    }
    if let Some((runs, succeeded)) = (looks.record)(&profile.name) {
        let routing = &config.routing;
        let rate = f64::from(succeeded) / f64::from(runs.max(1));
        if runs >= routing.min_runs.value && rate < routing.min_success_rate.value {
            return Some(format!(
                "succeeded in {succeeded} of its {runs} `{}` runs ({:.0}%), below routing.min_success_rate {:.0}%",
                kind.as_str(),
                rate * 100.0,
                routing.min_success_rate.value * 100.0
            ));
        }
    }
    cooling(profile, looks.cooldowns)
}

/// The triage score band a profile is for.
fn band(profile: &Profile) -> (u32, u32) {
    (
        profile.min_score.as_ref().map_or(0, |s| s.value),
        profile.max_score.as_ref().map_or(10, |s| s.value),
    )
}

/// Why `profile`'s server is passed over now, when it cools down.
pub fn cooling(profile: &Profile, cooldowns: &Cooldowns) -> Option<String> {
    let endpoint = profile.endpoints.as_ref()?.value.first()?;
    cooldowns.cooling(endpoint)
}

fn cost(profile: &Profile) -> f64 {
    profile.cost.as_ref().map_or(1.0, |c| c.value)
}

/// The model choice of a run with `profile`: the command line's flags beat the profile,
/// the profile beats the spec's `model` and the `LOCAL_TASK_*` variables (`base`, the
/// choice without profiles), and what the profile leaves unset comes from `base`. An
/// endpoint the profile names gets only the key its key rule allows, whatever `base` or
/// the flags hold; without one, `base`'s endpoint and key rules apply.
pub fn choice(
    profile: &Profile,
    flags: &ModelChoice,
    base: &ModelChoice,
    env: &dyn Fn(&str) -> Option<String>,
) -> ModelChoice {
    let own = profile.choice(env);
    // A pool goes with the profile's endpoint: the other members serve its model.
    let pool = if own.endpoint.is_some() {
        own.pool.clone()
    } else {
        base.pool.clone()
    };
    let (endpoint, api_key, api_key_source) = match own.endpoint {
        Some(endpoint) => {
            let flag_key = flags
                .api_key
                .clone()
                .filter(|_| profile.key.allowed)
                .map(|key| (key, flags.api_key_source.clone()));
            let (key, source) = match flag_key {
                Some((key, source)) => (Some(key), source.or_else(|| Some("flag".to_owned()))),
                None => (own.api_key, own.api_key_source),
            };
            (Some(endpoint), key, source)
        }
        None => (
            base.endpoint.clone(),
            base.api_key.clone(),
            base.api_key_source.clone(),
        ),
    };
    ModelChoice {
        endpoint,
        provider: flags
            .provider
            .clone()
            .filter(|p| p != "auto")
            .or(own.provider)
            .or_else(|| base.provider.clone()),
        model: own.model.or_else(|| base.model.clone()),
        api_key,
        api_key_source,
        ports: base.ports.clone(),
        pool,
        context_window: own.context_window.or_else(|| base.context_window.clone()),
    }
}

/// The temperature and reply cap a run with `profile` sends: the command line's, else the
/// profile's, else the defaults.
pub fn sampling(
    profile: Option<&Profile>,
    options: &crate::options::RunOptions,
) -> (f64, Option<u32>) {
    let temperature = match profile.and_then(|p| p.temperature.as_ref()) {
        Some(t) if !options.temperature_pinned => t.value,
        _ => options.temperature,
    };
    let max_tokens = options
        .max_tokens
        .or_else(|| profile.and_then(|p| p.max_tokens.as_ref()).map(|m| m.value));
    (temperature, max_tokens)
}

impl Route {
    /// The route with the model and endpoint the run asks for.
    #[must_use]
    pub fn with_choice(mut self, choice: &ModelChoice) -> Self {
        self.model.clone_from(&choice.model);
        self.endpoint = choice.endpoint.as_deref().map(endpoint::redact);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Origin, Setting};

    fn profile(allowed: bool) -> Profile {
        let mut profile = Profile {
            provider: Some(Setting::default("openai".to_owned())),
            endpoints: Some(Setting {
                value: vec!["http://team-proxy:4000/v1".to_owned()],
                source: Origin::Repository,
                file: None,
                line: None,
            }),
            model: Some(Setting::default("profile-model".to_owned())),
            ..Profile::bare("p")
        };
        profile.key.allowed = allowed;
        profile
    }

    #[test]
    fn no_key_of_any_source_goes_to_an_endpoint_the_key_rule_forbids() {
        let env = |name: &str| (name == "LOCAL_TASK_API_KEY").then(|| "env-key".to_owned());
        let flags = ModelChoice {
            api_key: Some("flag-key".to_owned()),
            ..ModelChoice::default()
        };
        let base = ModelChoice {
            endpoint: Some("http://mine:1".to_owned()),
            model: Some("env-model".to_owned()),
            api_key: Some("env-key".to_owned()),
            ..ModelChoice::default()
        };
        let forbidden = choice(&profile(false), &flags, &base, &env);
        assert_eq!(
            forbidden.endpoint.as_deref(),
            Some("http://team-proxy:4000/v1")
        );
        assert_eq!(forbidden.model.as_deref(), Some("profile-model"));
        assert_eq!(forbidden.api_key, None);
        let allowed = choice(&profile(true), &flags, &base, &env);
        assert_eq!(allowed.api_key.as_deref(), Some("flag-key"));
        let no_flag = choice(&profile(true), &ModelChoice::default(), &base, &env);
        assert_eq!(no_flag.api_key.as_deref(), Some("env-key"));
    }
}
