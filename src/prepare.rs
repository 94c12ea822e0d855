//! The stages before the model, which run alone too (a dry run, a spec check): the spec,
//! the repository, the targets, the context, the prompt, the model choice, the
//! configuration and the task's triage ([`crate::triage`]), and the checks that refuse a
//! run before any model call.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::config::Config;
use crate::context;
use crate::cooldown::Cooldowns;
use crate::error::{Error, Result};
use crate::language;
use crate::model::{ChatRequest, Message};
use crate::options::RunOptions;
use crate::prompt::Templates;
use crate::repo::Repo;
use crate::result::GitInfo;
use crate::route::{self, Route};
use crate::server::{self, ModelChoice};
use crate::spec::{self, TaskSpec};
use crate::targets::{self, Target};
use crate::triage::{self, Triage};

/// Where a run's spec comes from. Errors about it name its file, or its label.
#[derive(Debug, Clone)]
pub enum SpecInput {
    /// A spec file.
    File(PathBuf),
    /// A spec given as text (a batch entry, an MCP call), named in errors by `label`,
    /// such as `<mcp>`.
    Text { label: String, text: String },
}

impl SpecInput {
    fn load(&self) -> Result<TaskSpec> {
        match self {
            Self::File(path) => spec::load(path),
            Self::Text { label, text } => spec::parse(Path::new(label), text),
        }
    }

    /// The `task_id` of a spec that may not validate, so an error result can still name it.
    pub fn peek_task_id(&self) -> Option<String> {
        match self {
            Self::File(path) => spec::peek_task_id(path),
            Self::Text { text, .. } => {
                let value: serde_json::Value = serde_json::from_str(text).ok()?;
                let id = value.get("task_id")?.as_str()?;
                spec::valid_task_id(id).then(|| id.to_owned())
            }
        }
    }
}

impl From<PathBuf> for SpecInput {
    fn from(path: PathBuf) -> Self {
        Self::File(path)
    }
}

impl From<&Path> for SpecInput {
    fn from(path: &Path) -> Self {
        Self::File(path.to_path_buf())
    }
}

/// A run ready for its model: everything the attempts need, checked.
pub struct Prepared {
    /// Shared with the work done off the async threads (extraction, the diff).
    pub spec: Arc<TaskSpec>,
    pub repo: Repo,
    /// The repository's HEAD and branch, for the result.
    pub git: GitInfo,
    pub(crate) targets: Arc<[Target]>,
    pub(crate) templates: Templates,
    /// The fence language of the outputs.
    pub language: String,
    /// The first request's messages: the task, its outputs and its context.
    pub first_messages: Vec<Message>,
    pub max_attempts: u32,
    /// The server, protocol and model asked for, before anything is probed: the routed
    /// profile's, merged with the flags, spec and environment ([`crate::route::choice`]).
    pub choice: ModelChoice,
    /// The choice without any profile (flags, spec, environment): what another profile
    /// of the ladder is merged with.
    pub base_choice: ModelChoice,
    /// How the profile was picked; `None` when the configuration has no profiles.
    pub route: Option<Route>,
    /// The cool-down of failed servers this run reads and marks.
    pub cooldowns: Cooldowns,
    /// The configuration files, merged and validated.
    pub config: Config,
    /// How well the task suits a local model; advice, never a refusal.
    pub triage: Triage,
    /// The validator checkpoint's reviewer, when the run has one.
    pub validator: Option<Box<crate::validator::Plan>>,
}

/// A run that could not be prepared, with what was learnt before the error, for its result.
pub struct Unprepared {
    pub error: Error,
    pub task_id: Option<String>,
    pub git: Option<GitInfo>,
}

/// Runs the stages before the model. Nothing is written and no server is called.
pub fn prepare(
    input: &SpecInput,
    options: &RunOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Prepared, Box<Unprepared>> {
    open(input, options)?.prepare(options, env)
}

/// A spec and its repository: the first stages, after which a run is in a repository and
/// can record itself there before any later stage can fail.
pub struct Opened {
    pub spec: TaskSpec,
    pub repo: Repo,
}

/// Loads the spec and finds its repository.
pub fn open(
    input: &SpecInput,
    options: &RunOptions,
) -> std::result::Result<Opened, Box<Unprepared>> {
    let spec = input
        .load()
        .map_err(|error| unprepared(error, input.peek_task_id(), None))?;
    let repo =
        open_repo(options).map_err(|error| unprepared(error, Some(spec.task_id.clone()), None))?;
    Ok(Opened { spec, repo })
}

fn unprepared(error: Error, task_id: Option<String>, git: Option<GitInfo>) -> Box<Unprepared> {
    Box::new(Unprepared {
        error,
        task_id,
        git,
    })
}

impl Opened {
    /// The stages after the repository: targets, context, prompt, model choice, checks.
    pub fn prepare(
        self,
        options: &RunOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> std::result::Result<Prepared, Box<Unprepared>> {
        let Self { spec, repo } = self;
        let git = repo.info();
        let (task_id, known) = (spec.task_id.clone(), git.clone());
        stages(spec, repo, git, options, env)
            .map_err(|error| unprepared(error, Some(task_id), Some(known)))
    }
}

/// The stages after the repository, in order: targets, context, prompt, model choice,
/// configuration, triage and route, the validator, and the checks that refuse a run.
fn stages(
    task: TaskSpec,
    repo: Repo,
    git: GitInfo,
    options: &RunOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Prepared> {
    let spec = &task;
    let bounds = repo.bounds();
    let targets = targets::read_targets(&bounds, spec)?;
    let context = context::gather(
        &bounds,
        &spec.context_files,
        &spec.outputs,
        options.max_context_bytes,
    )?;
    let templates = Templates::load(&bounds, spec.kind, options.template.as_deref())?;
    let language = spec
        .language
        .clone()
        .unwrap_or_else(|| language::for_path(&spec.outputs[0]).to_owned());
    let first_messages =
        templates.task_messages(spec, &targets::output_views(&targets, &language), &context)?;
    let choice = ModelChoice::resolve(&options.model_flags, spec.model.as_deref(), env)?;
    let config = Config::load(Some(repo.root()), options.profile.as_deref(), env)?;
    if let Some(name) = &spec.profile
        && config.profile(name).is_none()
    {
        return Err(Error::spec(
            &spec.source,
            Some("profile"),
            format!(
                "unknown profile `{name}`; `execute-local-task config` lists the configured ones"
            ),
        ));
    }
    if let Some(why) = spec
        .profile
        .as_deref()
        .and_then(|name| config.not_a_writer(name))
    {
        return Err(Error::spec(&spec.source, Some("profile"), why));
    }
    let inputs = triage::Inputs {
        spec,
        targets: &targets,
        context: &context,
        prompt_chars: first_messages.iter().map(|m| m.content.len()).sum(),
    };
    let cooldowns = Cooldowns::beside_ledger(
        env,
        &config.ledger_settings(),
        config.routing.cooldown_secs.value,
    );
    let (triage, route) = routed_triage(&inputs, &config, options, &cooldowns, env);
    let base_choice = choice.clone();
    let (choice, route) = match route {
        Some(route) => {
            let choice = route
                .profile
                .as_deref()
                .and_then(|name| config.profile(name))
                .map_or_else(
                    || base_choice.clone(),
                    |profile| route::choice(profile, &options.model_flags, &base_choice, env),
                );
            let route = route.with_choice(&choice);
            (choice, Some(route))
        }
        None => (choice, None),
    };
    let routed = route.as_ref().and_then(|route| route.profile.as_deref());
    let validator = crate::validator::plan(&config, routed, options, &choice, env)?.map(Box::new);
    // Before the dry run too: it should refuse what the real run would refuse.
    if !options.force {
        targets::check_clean_targets(&repo, &targets)?;
    }
    let connection = &options.connection;
    crate::model::recorded::check_files(
        connection.record.as_deref(),
        connection.replay.as_deref(),
        &spec.source,
        repo.root(),
        &spec.outputs,
    )?;
    let max_attempts = options
        .max_attempts
        .or(spec.max_attempts)
        .unwrap_or(spec::DEFAULT_MAX_ATTEMPTS)
        .clamp(1, spec::MAX_MAX_ATTEMPTS);
    Ok(Prepared {
        spec: Arc::new(task),
        repo,
        git,
        targets: targets.into(),
        templates,
        language,
        first_messages,
        max_attempts,
        choice,
        base_choice,
        route,
        cooldowns,
        config,
        triage,
        validator,
    })
}

/// The task's triage and route: routing reads the score, and triage the routed profile's
/// context window, so the kinds-only pick is triaged first and the score's pick again
/// when it differs. `check`, the dry run and the run all come through here. No route
/// without profiles, where runs go as they always did.
fn routed_triage(
    inputs: &triage::Inputs,
    config: &Config,
    options: &RunOptions,
    cooldowns: &Cooldowns,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Triage, Option<Route>) {
    let first = triage::assess(inputs, config, None);
    if config.profiles.is_empty() {
        return (first, None);
    }
    let flags = &options.model_flags;
    let pinned_by = if flags.endpoint.is_some() {
        Some("--endpoint")
    } else if flags.model.is_some() {
        Some("--model")
    } else {
        None
    };
    let kind = inputs.spec.kind.as_str();
    let ledger = ledger_for_routing(config, env);
    let record = |profile: &str| {
        let mut ledger = ledger.as_ref()?.borrow_mut();
        ledger.profile_record(profile, kind).ok()
    };
    let route = route::decide(
        config,
        inputs.spec,
        &route::Looks {
            pinned_by,
            score: Some(first.score),
            record: &record,
            cooldowns,
        },
    );
    let triage = if route.profile == first.profile {
        first
    } else {
        triage::assess(
            inputs,
            config,
            Some((route.profile.clone(), route.reason.clone())),
        )
    };
    let triage = Triage {
        profile: route.profile.clone(),
        profile_reason: Some(route.reason.clone()),
        ..triage
    };
    (triage, Some(route))
}

/// The run ledger, for routing to read profiles' records; `None` when there is none yet
/// (routing never creates it) or it cannot be opened: no record moves the route then.
fn ledger_for_routing(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<std::cell::RefCell<crate::ledger::Ledger>> {
    let settings = config.ledger_settings();
    let path = crate::ledger::locate_configured(env, settings.path.as_deref()).ok()?;
    if !path.exists() {
        return None;
    }
    crate::ledger::Ledger::open(&path)
        .ok()
        .map(std::cell::RefCell::new)
}

impl Prepared {
    /// What `--dry-run` prints: the exact request a run would send first, and the
    /// task's triage.
    pub fn dry_run(&self, options: &RunOptions) -> serde_json::Value {
        let profile = self
            .route
            .as_ref()
            .and_then(|route| route.profile.as_deref())
            .and_then(|name| self.config.profile(name));
        let mut printed = dry_run_request(
            &self.spec,
            &self.choice,
            route::sampling(profile, options),
            self.first_messages.clone(),
        );
        if let (Some(printed), Ok(triage)) =
            (printed.as_object_mut(), serde_json::to_value(&self.triage))
        {
            printed.insert("triage".to_owned(), triage);
        }
        if let (Some(printed), Some(route)) = (printed.as_object_mut(), &self.route)
            && let Ok(route) = serde_json::to_value(route)
        {
            printed.insert("route".to_owned(), route);
        }
        printed
    }
}

fn open_repo(options: &RunOptions) -> Result<Repo> {
    let start = match &options.repo_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|error| Error::io("read current directory", ".", error))?,
    };
    Repo::discover(&start)
}

fn dry_run_request(
    spec: &TaskSpec,
    choice: &ModelChoice,
    (temperature, max_tokens): (f64, Option<u32>),
    messages: Vec<Message>,
) -> serde_json::Value {
    let request = ChatRequest {
        model: choice
            .model
            .clone()
            .unwrap_or_else(|| "(the server's only model)".to_owned()),
        messages,
        temperature,
        max_tokens,
        schema: None,
    };
    let mut printed = json!({"status": "dry_run", "dry_run": true, "task_id": spec.task_id});
    if let (Some(printed), serde_json::Value::Object(target)) =
        (printed.as_object_mut(), server::dry_run(choice, &request))
    {
        printed.extend(target);
    }
    printed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_given_as_text_is_named_by_its_label() {
        let input = SpecInput::Text {
            label: "<mcp>".to_owned(),
            text: r#"{"task_id": "T-1", "description": "d"}"#.to_owned(),
        };
        let Err(unprepared) = prepare(&input, &RunOptions::new(), &|_: &str| None) else {
            panic!("a spec without an output file was accepted");
        };
        assert!(
            unprepared.error.to_string().starts_with("<mcp>"),
            "{}",
            unprepared.error
        );
        assert_eq!(unprepared.task_id.as_deref(), Some("T-1"));
    }
}
