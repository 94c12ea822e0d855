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
    /// The endpoint probed (a pool's first member); null when discovery found none.
    pub endpoint: Option<String>,
    pub reachable: bool,
    pub model: Option<String>,
    /// Whether the server lists the model; null when the server was not reached or the
    /// profile names no model.
    pub model_present: Option<bool>,
    /// The configured window; probing the server for it (Ollama's `/api/show`) is not
    /// built yet.
    pub context_window: Option<u32>,
    pub context_window_known: bool,
    /// Whether an API key was sent with the probe (the key rule).
    pub key_sent: bool,
    pub error: Option<String>,
}

impl ProfileProbe {
    pub fn ok(&self) -> bool {
        self.reachable && self.model_present != Some(false)
    }
}

/// Probes every profile's server and model, with the key the key rule allows.
pub async fn probe(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<ProfileProbe> {
    // A profile without an endpoint uses what a run would: the variables, else discovery.
    let usual = ModelChoice::resolve(&ModelChoice::default(), None, env).unwrap_or_default();
    let mut probes = Vec::new();
    for profile in config.profiles.values() {
        let endpoint = profile
            .endpoints
            .as_ref()
            .and_then(|e| e.value.first().cloned())
            .or_else(|| usual.endpoint.clone());
        let provider = profile.provider.as_ref().map(|p| p.value.as_str());
        let key = profile.api_key(env);
        let key_sent = key.is_some();
        let reports = discovery::survey(
            endpoint.as_deref(),
            provider,
            key.map(|(k, _)| k),
            &usual.ports,
        )
        .await;
        let found = reports.iter().find(|r| r.reachable);
        let model = profile.model.as_ref().map(|m| m.value.clone());
        probes.push(ProfileProbe {
            profile: profile.name.clone(),
            endpoint: found.map_or(endpoint, |r| Some(r.endpoint.clone())),
            reachable: found.is_some(),
            model_present: found
                .zip(model.as_ref())
                .map(|(r, m)| r.models.iter().any(|listed| listed == m)),
            model,
            context_window: profile.context_window.as_ref().map(|w| w.value),
            context_window_known: profile.context_window.is_some(),
            key_sent,
            error: if found.is_some() {
                None
            } else {
                reports.iter().find_map(|r| r.error.clone())
            },
        });
    }
    probes
}
