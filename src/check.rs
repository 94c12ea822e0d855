//! `check <SPEC|DIR>`: every spec read, validated and triaged by the stages before the
//! model ([`crate::prepare`]), with no model call and nothing written; and
//! `config --check`'s probe of each profile's server and model.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::discovery;
use crate::error::Result;
use crate::options::RunOptions;
use crate::prepare::{SpecInput, prepare};
use crate::result::ErrorInfo;
use crate::server::ModelChoice;
use crate::spec;
use crate::triage::Triage;

/// What `check` found, spec by spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    /// `ok` when every spec can run, else `error`.
    pub status: String,
    pub specs: Vec<SpecCheck>,
}

/// One spec's check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecCheck {
    pub spec: PathBuf,
    pub task_id: Option<String>,
    /// The spec parses and validates, and (without `--validate-only`) its repository,
    /// outputs, context, template and config do.
    pub valid: bool,
    /// Valid, and it fits its profile's configured context window.
    pub can_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Null with `--validate-only` or an invalid spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triage: Option<Triage>,
    /// The route a run would take (the same function decides both); absent without
    /// profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<crate::route::Route>,
}

impl CheckReport {
    /// The specs that cannot run.
    pub fn failing(&self) -> impl Iterator<Item = &SpecCheck> {
        self.specs.iter().filter(|s| !s.can_run)
    }
}

/// Checks the spec at `path`, or every `*.json` below the directory `path` (hidden
/// directories skipped). Targets with uncommitted changes are not held against a spec:
/// that is the working tree's state when it runs, not the spec's.
pub fn check(
    paths: &[PathBuf],
    options: &RunOptions,
    validate_only: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CheckReport> {
    let mut files = Vec::new();
    for path in paths {
        files.extend(spec_files(path)?);
    }
    let options = RunOptions {
        force: true,
        ..options.clone()
    };
    let specs: Vec<SpecCheck> = files
        .into_iter()
        .map(|file| {
            let input = SpecInput::File(file.clone());
            let outcome = if validate_only {
                spec::load(&file).map(|spec| (Some(spec.task_id), None, None))
            } else {
                prepare(&input, &options, env)
                    .map(|prepared| {
                        (
                            Some(prepared.spec.task_id.clone()),
                            Some(prepared.triage),
                            prepared.route,
                        )
                    })
                    .map_err(|unprepared| unprepared.error)
            };
            match outcome {
                Ok((task_id, triage, route)) => SpecCheck {
                    route,
                    spec: file,
                    task_id,
                    valid: true,
                    can_run: triage.as_ref().is_none_or(Triage::can_run),
                    error: None,
                    triage,
                },
                Err(error) => SpecCheck {
                    task_id: input.peek_task_id(),
                    spec: file,
                    valid: false,
                    can_run: false,
                    error: Some(ErrorInfo {
                        kind: error.kind().to_owned(),
                        message: error.to_string(),
                    }),
                    triage: None,
                    route: None,
                },
            }
        })
        .collect();
    let ok = specs.iter().all(|s| s.can_run);
    Ok(CheckReport {
        status: if ok { "ok" } else { "error" }.to_owned(),
        specs,
    })
}

/// The specs `path` names: itself when it is not a directory (a missing one is checked as
/// a spec, so loading it says what is wrong, naming the file), else the ones a batch over
/// it would run.
fn spec_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !std::fs::metadata(path).is_ok_and(|metadata| metadata.is_dir()) {
        return Ok(vec![path.to_path_buf()]);
    }
    crate::plan::find_specs(&[path.to_path_buf()], None)
}

/// `config --check`: one profile's server and model as probed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileProbe {
    pub profile: String,
    /// The endpoint that answered (a pool's first member that did), else the first
    /// probed; null when discovery found none.
    pub endpoint: Option<String>,
    /// Some member answered.
    pub reachable: bool,
    pub model: Option<String>,
    /// Whether the server lists the model; null when the server was not reached or the
    /// profile names no model.
    pub model_present: Option<bool>,
    /// The window a run must fit: the smaller of what the server reports for the model
    /// (Ollama's `/api/show`, vLLM's `max_model_len`, llama.cpp's `/props`) and the
    /// profile's `context_window`.
    pub context_window: Option<u32>,
    pub context_window_known: bool,
    /// Where `context_window` came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window_source: Option<String>,
    /// A pool's members, each probed: empty for a single endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberProbe>,
    /// Whether an API key was sent with the probe (the key rule).
    pub key_sent: bool,
    pub error: Option<String>,
}

/// One pool member as `config --check` probed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberProbe {
    pub endpoint: String,
    pub reachable: bool,
    /// Whether this member lists the profile's model; null as in [`ProfileProbe`].
    pub model_present: Option<bool>,
    pub error: Option<String>,
}

impl ProfileProbe {
    /// Reachable with its model, and every pool member too: a dead member is worth
    /// fixing even while the others serve.
    pub fn ok(&self) -> bool {
        self.problem().is_none()
    }

    /// What is wrong, in a sentence: the server, the model, or the pool members that
    /// failed.
    pub fn problem(&self) -> Option<String> {
        let model = self.model.as_deref().unwrap_or("");
        if !self.reachable {
            return Some(
                self.error
                    .clone()
                    .unwrap_or_else(|| "no server answered".to_owned()),
            );
        }
        if self.model_present == Some(false) {
            return Some(format!("the server does not list model `{model}`"));
        }
        let failing: Vec<String> = self
            .members
            .iter()
            .filter_map(|member| {
                let fault = if member.reachable {
                    (member.model_present == Some(false))
                        .then(|| format!("does not list model `{model}`"))
                } else {
                    Some(
                        member
                            .error
                            .clone()
                            .unwrap_or_else(|| "no answer".to_owned()),
                    )
                }?;
                Some(format!("pool member {}: {fault}", member.endpoint))
            })
            .collect();
        (!failing.is_empty()).then(|| failing.join("; "))
    }
}

/// Probes every profile's server and model, with the key the key rule allows.
pub async fn probe(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<ProfileProbe> {
    // A profile without an endpoint uses what a run would: the variables, else discovery.
    let usual = ModelChoice::resolve(&ModelChoice::default(), None, env).unwrap_or_default();
    let mut probes = Vec::new();
    for profile in config.profiles.values() {
        probes.push(probe_profile(profile, &usual, env).await);
    }
    probes
}

/// One profile: every endpoint of its pool (or the run's own endpoint, or discovery),
/// then the model's context window from the first member that answered.
async fn probe_profile(
    profile: &crate::profile::Profile,
    usual: &ModelChoice,
    env: &dyn Fn(&str) -> Option<String>,
) -> ProfileProbe {
    let endpoints: Vec<Option<String>> = match &profile.endpoints {
        Some(endpoints) if !endpoints.value.is_empty() => {
            endpoints.value.iter().cloned().map(Some).collect()
        }
        _ => vec![usual.endpoint.clone()],
    };
    let provider = profile.provider.as_ref().map(|p| p.value.as_str());
    let key = profile.api_key(env).map(|(key, _)| key);
    let model = profile.model.as_ref().map(|m| m.value.clone());
    let lists = |report: &discovery::ServerReport| {
        model
            .as_ref()
            .map(|m| report.models.iter().any(|listed| listed == m))
    };
    let mut members = Vec::new();
    let mut found = None;
    let mut first_error = None;
    for endpoint in &endpoints {
        let reports =
            discovery::survey(endpoint.as_deref(), provider, key.clone(), &usual.ports).await;
        let reached = reports.iter().find(|r| r.reachable).cloned();
        let error = reports.iter().find_map(|r| r.error.clone());
        members.push(MemberProbe {
            endpoint: reached.as_ref().map_or_else(
                || {
                    endpoint
                        .as_deref()
                        .map(crate::endpoint::redact)
                        .unwrap_or_default()
                },
                |r| r.endpoint.clone(),
            ),
            reachable: reached.is_some(),
            model_present: reached.as_ref().and_then(lists),
            error: if reached.is_some() {
                None
            } else {
                error.clone()
            },
        });
        if found.is_none() {
            found = reached.map(|report| (endpoint.clone(), report));
        }
        if first_error.is_none() {
            first_error = error;
        }
    }
    let reported = match (&found, &model) {
        (Some((endpoint, report)), Some(model)) => {
            let target = endpoint.clone().unwrap_or_else(|| report.endpoint.clone());
            crate::server::reported_window(
                report.provider.as_deref().unwrap_or("openai"),
                &target,
                key.clone(),
                model,
            )
            .await
        }
        _ => None,
    };
    let configured = profile
        .context_window
        .as_ref()
        .map(|w| crate::model::window::Window {
            tokens: u64::from(w.value),
            source: format!("profile context_window, {}", w.describe_source()),
        });
    let window = crate::model::window::Window::smaller(reported, configured);
    ProfileProbe {
        profile: profile.name.clone(),
        endpoint: found
            .as_ref()
            .map(|(_, r)| r.endpoint.clone())
            .or_else(|| endpoints[0].as_deref().map(crate::endpoint::redact)),
        reachable: found.is_some(),
        model_present: found.as_ref().and_then(|(_, r)| lists(r)),
        model,
        context_window: window
            .as_ref()
            .map(|w| u32::try_from(w.tokens).unwrap_or(u32::MAX)),
        context_window_known: window.is_some(),
        context_window_source: window.map(|w| w.source),
        members: if endpoints.len() > 1 {
            members
        } else {
            Vec::new()
        },
        key_sent: key.is_some(),
        error: if found.is_some() { None } else { first_error },
    }
}
