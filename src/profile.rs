//! A model profile as the configuration resolved it: each value with where it came from,
//! and whether an API key may be sent to its endpoints.
//!
//! The key rule lives here, on the resolved profile, so whatever later uses a profile
//! (routing, fallback, a pool, a validator) gets it with the profile and cannot forget
//! it: a key from the environment or the user's config goes only to endpoints the user
//! named (in the user's config, the environment or a flag). A repository's config may
//! name endpoints — a team shares its proxy that way — but a cloned repository must not
//! be able to collect the user's keys by pointing a profile at its own server.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::window::Window;
use crate::server::ModelChoice;
use crate::spec::Kind;

/// Where a configured value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The repository's `.execute-local-task/config.toml`.
    Repository,
    /// The user's `config.toml`.
    User,
    Environment,
    Flag,
    Default,
}

/// One configured value and its provenance: the file and line, or the variable or flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting<T> {
    pub value: T,
    pub source: Origin,
    /// The config file, or the variable or flag's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl<T> Setting<T> {
    pub fn default(value: T) -> Self {
        Self {
            value,
            source: Origin::Default,
            file: None,
            line: None,
        }
    }

    /// A value from a variable or a flag, named by `name`.
    pub fn named(value: T, source: Origin, name: &str) -> Self {
        Self {
            value,
            source,
            file: Some(PathBuf::from(name)),
            line: None,
        }
    }

    /// Where the value came from, for a table or a message: `repository FILE:LINE`,
    /// `environment NAME`, `default`.
    pub fn describe_source(&self) -> String {
        let origin = match self.source {
            Origin::Repository => "repository",
            Origin::User => "user",
            Origin::Environment => "environment",
            Origin::Flag => "flag",
            Origin::Default => "default",
        };
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{origin} {}:{line}", file.display()),
            (Some(file), None) => format!("{origin} {}", file.display()),
            _ => origin.to_owned(),
        }
    }
}

/// What a profile is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Writes the code (the default).
    #[default]
    Writer,
    /// Reviews another profile's code (the validator checkpoint, [`crate::validator`]).
    Validator,
}

/// A profile with every value resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    /// `ollama`, `openai` or `auto`; unset means the run's own choice.
    pub provider: Option<Setting<String>>,
    /// One endpoint, or several serving the same model: a pool ([`crate::model::pool`]).
    pub endpoints: Option<Setting<Vec<String>>>,
    pub model: Option<Setting<String>>,
    /// Tokens the model can take in, prompt and reply together; a run uses the smaller of
    /// this and what the server reports ([`crate::model::window`]).
    pub context_window: Option<Setting<u32>>,
    pub temperature: Option<Setting<f64>>,
    pub max_tokens: Option<Setting<u32>>,
    /// Relative cost: among profiles that fit a task, the cheapest is preferred.
    pub cost: Option<Setting<f64>>,
    /// The task kinds this profile is for; unset means every kind.
    pub kinds: Option<Setting<Vec<Kind>>>,
    /// The lowest triage score routing picks this profile for (0 to 10); unset: 0.
    #[serde(default)]
    pub min_score: Option<Setting<u32>>,
    /// The highest triage score routing picks this profile for; unset: 10.
    #[serde(default)]
    pub max_score: Option<Setting<u32>>,
    /// Profiles to try, in order, when this one's servers fail.
    pub fallback: Option<Setting<Vec<String>>>,
    /// The stronger profile to climb to when this one's attempts fail.
    pub escalate_to: Option<Setting<String>>,
    pub role: Setting<Role>,
    /// The validator profile that reviews this profile's code before it is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<Setting<String>>,
    /// The variable holding this profile's API key; only the user's config may set it.
    pub api_key_env: Option<Setting<String>>,
    /// Whether any API key may be sent to this profile's endpoints.
    pub key: KeyRule,
}

/// Whether a profile's endpoints may receive an API key, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRule {
    pub allowed: bool,
    pub reason: String,
}

impl Profile {
    /// Whether the profile is for tasks of `kind`.
    pub fn serves(&self, kind: Kind) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|kinds| kinds.value.contains(&kind))
    }

    pub fn is_writer(&self) -> bool {
        self.role.value == Role::Writer
    }

    /// The API key to send to this profile's endpoints and the variable it came from:
    /// its `api_key_env`, else `LOCAL_TASK_API_KEY`; none at all when the key rule
    /// forbids it, whatever the environment holds.
    pub fn api_key(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
        if !self.key.allowed {
            return None;
        }
        let variable = self
            .api_key_env
            .as_ref()
            .map_or("LOCAL_TASK_API_KEY", |setting| setting.value.as_str());
        env(variable)
            .filter(|key| !key.trim().is_empty())
            .map(|key| (key, variable.to_owned()))
    }
}

impl Profile {
    /// The server this profile names, as a run's model choice: its endpoints (the first,
    /// and a pool's other members for the pool to balance), provider, model, context
    /// window, and the API key only when the key rule allows one — one rule for every
    /// member, as the rule looks at them all. What the profile leaves unset stays unset,
    /// so the run's own rules (environment, discovery) fill it.
    pub fn choice(&self, env: &dyn Fn(&str) -> Option<String>) -> ModelChoice {
        let (api_key, api_key_source) = self
            .api_key(env)
            .map_or((None, None), |(key, variable)| (Some(key), Some(variable)));
        ModelChoice {
            endpoint: self
                .endpoints
                .as_ref()
                .and_then(|endpoints| endpoints.value.first().cloned()),
            provider: self
                .provider
                .as_ref()
                .map(|provider| provider.value.clone())
                .filter(|provider| provider != "auto"),
            model: self.model.as_ref().map(|model| model.value.clone()),
            api_key,
            api_key_source,
            ports: Vec::new(),
            pool: self
                .endpoints
                .as_ref()
                .map(|endpoints| endpoints.value.iter().skip(1).cloned().collect())
                .unwrap_or_default(),
            context_window: self.context_window.as_ref().map(|window| Window {
                tokens: u64::from(window.value),
                source: format!(
                    "profile `{}` context_window, {}",
                    self.name,
                    window.describe_source()
                ),
            }),
        }
    }
}

#[cfg(test)]
impl Profile {
    /// A writer profile named `name` with nothing else set and no key allowed, for a test
    /// to fill in what it is about.
    pub(crate) fn bare(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            provider: None,
            endpoints: None,
            model: None,
            context_window: None,
            temperature: None,
            max_tokens: None,
            cost: None,
            kinds: None,
            min_score: None,
            max_score: None,
            fallback: None,
            escalate_to: None,
            role: Setting::default(Role::Writer),
            validator: None,
            api_key_env: None,
            key: KeyRule {
                allowed: false,
                reason: String::new(),
            },
        }
    }
}

/// The key rule for a profile whose endpoints are `endpoints`: allowed unless an endpoint
/// came from the repository's config and the user never named it (in their config, in
/// `LOCAL_TASK_ENDPOINT` or `OPENAI_BASE_URL`).
pub fn key_rule(endpoints: Option<&Setting<Vec<String>>>, user_named: &[String]) -> KeyRule {
    let Some(endpoints) = endpoints else {
        return KeyRule {
            allowed: true,
            reason: "no endpoint configured: the run's own endpoint and key rules apply".to_owned(),
        };
    };
    if endpoints.source != Origin::Repository {
        return KeyRule {
            allowed: true,
            reason: format!("endpoint from {}", endpoints.describe_source()),
        };
    }
    let unknown: Vec<&String> = endpoints
        .value
        .iter()
        .filter(|endpoint| {
            !user_named
                .iter()
                .any(|named| same_endpoint(named, endpoint))
        })
        .collect();
    if unknown.is_empty() {
        KeyRule {
            allowed: true,
            reason: "the repository's endpoint is one the user named too".to_owned(),
        }
    } else {
        KeyRule {
            allowed: false,
            reason: format!(
                "only the repository's config names {}: no API key is sent there (name it in your own config to allow one)",
                unknown
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Two spellings of one endpoint: a trailing slash and the scheme and host's case aside.
fn same_endpoint(a: &str, b: &str) -> bool {
    a.trim()
        .trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(origin: Origin, endpoint: &str) -> Setting<Vec<String>> {
        Setting {
            value: vec![endpoint.to_owned()],
            source: origin,
            file: Some(PathBuf::from("config.toml")),
            line: Some(3),
        }
    }

    #[test]
    fn a_key_goes_only_where_the_user_pointed() {
        let repo = from(Origin::Repository, "http://collector.example:8080/v1");
        assert!(!key_rule(Some(&repo), &[]).allowed);
        let named = ["http://COLLECTOR.example:8080/v1/".to_owned()];
        assert!(key_rule(Some(&repo), &named).allowed);
        let user = from(Origin::User, "http://gpu-box:8000/v1");
        assert!(key_rule(Some(&user), &[]).allowed);
        assert!(key_rule(None, &[]).allowed);
    }

    #[test]
    fn a_profile_choice_carries_a_key_only_where_the_rule_allows() {
        let env = |name: &str| (name == "LOCAL_TASK_API_KEY").then(|| "secret".to_owned());
        let mut profile = Profile {
            provider: Some(Setting::default("ollama".to_owned())),
            endpoints: Some(from(Origin::Repository, "http://collector.example:8080")),
            model: Some(Setting::default("qwen".to_owned())),
            ..Profile::bare("small")
        };
        let choice = profile.choice(&env);
        assert_eq!(
            choice.endpoint.as_deref(),
            Some("http://collector.example:8080")
        );
        assert_eq!(choice.model.as_deref(), Some("qwen"));
        assert_eq!(choice.provider.as_deref(), Some("ollama"));
        assert_eq!(choice.api_key, None);
        assert!(choice.pool.is_empty() && choice.context_window.is_none());
        profile.key.allowed = true;
        assert_eq!(profile.choice(&env).api_key.as_deref(), Some("secret"));

        // A pool: the first endpoint, the others as its pool; the window with its source.
        profile.endpoints = Some(Setting {
            value: vec!["http://a:11434".to_owned(), "http://b:11434".to_owned()],
            ..from(Origin::User, "")
        });
        profile.context_window = Some(Setting::default(16384));
        let choice = profile.choice(&env);
        assert_eq!(choice.endpoint.as_deref(), Some("http://a:11434"));
        assert_eq!(choice.pool, ["http://b:11434"]);
        let window = choice.context_window.unwrap();
        assert_eq!(window.tokens, 16384);
        assert_eq!(window.source, "profile `small` context_window, default");
    }
}
