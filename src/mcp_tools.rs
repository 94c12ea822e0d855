//! The MCP tools' arguments, their input schemas, and the library calls behind them: each
//! answers with the [`Document`] the matching command prints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::bring_in::{self, Verb};
use crate::cli::RunArgs;
use crate::document::Document;
use crate::error::Error;
use crate::pipeline::{Env, RunOptions, SpecInput};
use crate::{batch, rollback};

/// How long a call waits for a run when it does not say.
pub const WAIT_SECONDS: u64 = 20;
/// The longest a call waits: well under the minute after which some clients give up on a
/// tool call.
pub const MAX_WAIT_SECONDS: u64 = 50;

/// The command line's run options that only a batch uses.
const BATCH_ONLY: &[&str] = &["jobs", "fail_fast", "summary_only", "glob", "only_failed"];

/// `run_task`'s own arguments; the rest are [`RunArgs`], the command line's run options.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTaskExtra {
    /// The task spec: the spec itself as a JSON object, or the path of a spec file.
    pub spec: SpecArg,
    /// Seconds to wait for the run to end before answering `{"status": "running",
    /// "run_id": …}` (then `get_run` waits again); 0 to 50, default 20.
    pub wait_seconds: Option<u64>,
}

/// A spec given inline or by path.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SpecArg {
    Path(PathBuf),
    Inline(Map<String, Value>),
}

/// `run_batch`'s own arguments; the rest are the run options, as for `run_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBatchExtra {
    /// A directory of specs (every `*.json` below it), or a list of spec files and
    /// directories; the tasks run in `depends_on` order. Give this or `only_failed`.
    pub specs: Option<SpecsArg>,
    /// Run again the tasks of batch `BATCH_ID` that did not succeed (its successes count
    /// as met dependencies). Give this or `specs`.
    pub only_failed: Option<String>,
    /// Only the specs whose path below the directory matches this glob.
    pub glob: Option<String>,
    /// Model calls at once, 1 to 256 (default 1); up to as many more tasks prepare or
    /// finish meanwhile; writes and tests take turns.
    pub jobs: Option<u16>,
    /// Start no task after the first that did not succeed.
    #[serde(default)]
    pub fail_fast: bool,
    /// Seconds to wait for the batch to end before answering `{"status": "running",
    /// "run_id": BATCH_ID}`; 0 to 50, default 20.
    pub wait_seconds: Option<u64>,
}

/// One spec path or directory, or several.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SpecsArg {
    One(PathBuf),
    Several(Vec<PathBuf>),
}

/// What `run_batch` runs, checked by the command line's parsers.
pub struct BatchInput {
    pub paths: Vec<PathBuf>,
    pub glob: Option<String>,
    /// `--only-failed`: the batch whose failures run again, instead of `paths`.
    pub only_failed: Option<String>,
    pub options: RunOptions,
    pub how: batch::BatchOptions,
    pub wait: Duration,
}

/// `get_run`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRunArgs {
    /// The `run_id` that `run_task` answered (or `run_batch`, a batch's id). A run an
    /// earlier server finished is answered from what that server kept.
    pub run_id: String,
    /// Seconds to wait for the run to end; 0 to 50, default 20.
    pub wait_seconds: Option<u64>,
    /// The repository the run was in, for a run an earlier server finished (default: the
    /// one containing the server's current directory).
    pub repo: Option<PathBuf>,
}

/// Input schema of a tool whose arguments are `T`.
pub fn schema_of<T: JsonSchema>() -> Map<String, Value> {
    let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    match schema {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// `run_task`'s input schema: the command line's run options (less the positional spec
/// and `--quiet`), with `spec` and `wait_seconds`.
pub fn run_task_schema() -> Map<String, Value> {
    let mut schema = schema_of::<RunArgs>();
    let extra = schema_of::<RunTaskExtra>();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.remove("quiet");
        properties.remove("spec");
        properties.remove("specs");
        // A batch's own options: `run_task` runs one spec.
        for batch_only in BATCH_ONLY {
            properties.remove(*batch_only);
        }
        if let Some(Value::Object(more)) = extra.get("properties") {
            properties.extend(more.clone());
        }
    }
    // Clap's defaults fill what is not given, so nothing but the spec is required.
    schema.insert("required".to_owned(), Value::from(vec!["spec"]));
    if let Some(Value::Object(definitions)) = extra.get("definitions") {
        schema.insert("definitions".to_owned(), Value::Object(definitions.clone()));
    }
    schema.insert("title".to_owned(), Value::from("run_task"));
    schema
}

/// A bad argument: the message of the usage document the command line prints for one.
fn usage(tool: &str, message: &str) -> String {
    format!("{tool}: {message}")
}

/// The usage document for a message from [`decode`], [`wait_of`] or [`run_task_input`].
pub fn bad_input(message: &str) -> Document {
    Document::usage(message)
}

/// Decodes a tool's arguments, or the usage document naming what was wrong.
pub fn decode<T: serde::de::DeserializeOwned>(
    tool: &str,
    arguments: &Map<String, Value>,
) -> Result<T, String> {
    serde_path_to_error::deserialize(Value::Object(arguments.clone())).map_err(|error| {
        let path = error.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        usage(tool, &format!("bad arguments{at}: {}", error.inner()))
    })
}

/// The wait a call asked for, checked like a command-line value.
pub fn wait_of(tool: &str, seconds: Option<u64>) -> Result<Duration, String> {
    match seconds.unwrap_or(WAIT_SECONDS) {
        seconds @ 0..=MAX_WAIT_SECONDS => Ok(Duration::from_secs(seconds)),
        seconds => Err(usage(
            tool,
            &format!("wait_seconds must be 0 to {MAX_WAIT_SECONDS}, not {seconds}"),
        )),
    }
}

/// `run_task`'s spec and run options, checked by the command line's own parsers.
pub fn run_task_input(
    arguments: &Map<String, Value>,
) -> Result<(SpecInput, RunOptions, Duration), String> {
    let (own, words) = split("run_task", arguments, &["spec", "wait_seconds"])?;
    let extra: RunTaskExtra = decode("run_task", &own)?;
    let wait = wait_of("run_task", extra.wait_seconds)?;
    let options = RunArgs::parse_options(&words).map_err(|message| usage("run_task", &message))?;
    let spec = match extra.spec {
        SpecArg::Path(path) => SpecInput::File(path),
        SpecArg::Inline(spec) => SpecInput::Text {
            label: "<mcp>".to_owned(),
            text: Value::Object(spec).to_string(),
        },
    };
    Ok((spec, options, wait))
}

/// `run_batch`'s specs, batch options and run options.
pub fn run_batch_input(arguments: &Map<String, Value>) -> Result<BatchInput, String> {
    let own_names = [
        "specs",
        "only_failed",
        "glob",
        "jobs",
        "fail_fast",
        "wait_seconds",
    ];
    let (own, mut words) = split("run_batch", arguments, &own_names)?;
    let extra: RunBatchExtra = decode("run_batch", &own)?;
    let wait = wait_of("run_batch", extra.wait_seconds)?;
    let jobs = extra.jobs.unwrap_or(1);
    // The command line's range check for `--jobs`.
    words.push(format!("--jobs={jobs}"));
    let options = RunArgs::parse_options(&words).map_err(|message| usage("run_batch", &message))?;
    // As on the command line, where `--only-failed` conflicts with spec paths.
    let paths = match (extra.specs, &extra.only_failed) {
        (Some(SpecsArg::One(path)), None) => vec![path],
        (Some(SpecsArg::Several(paths)), None) => paths,
        (None, Some(_)) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err(usage(
                "run_batch",
                "give `specs` or `only_failed`, not both",
            ));
        }
        (None, None) => return Err(usage("run_batch", "give `specs` or `only_failed`")),
    };
    if options.dry_run || options.connection.record.is_some() || options.connection.replay.is_some()
    {
        return Err(usage(
            "run_batch",
            "a batch takes neither dry_run, record nor replay; use run_task for those",
        ));
    }
    Ok(BatchInput {
        paths,
        only_failed: extra.only_failed,
        glob: extra.glob,
        options,
        how: batch::BatchOptions {
            jobs: usize::from(jobs),
            fail_fast: extra.fail_fast,
        },
        wait,
    })
}

/// `run_batch`'s input schema: `run_task`'s run options with the batch's own.
pub fn run_batch_schema() -> Map<String, Value> {
    let mut schema = run_task_schema();
    let extra = schema_of::<RunBatchExtra>();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.remove("spec");
        if let Some(Value::Object(more)) = extra.get("properties") {
            properties.extend(more.clone());
        }
    }
    schema.remove("required");
    if let Some(Value::Object(definitions)) = extra.get("definitions") {
        schema.insert("definitions".to_owned(), Value::Object(definitions.clone()));
    }
    schema.insert("title".to_owned(), Value::from("run_batch"));
    schema
}

/// A tool's arguments split into its own (`own_names`) and the run options, as
/// command-line words checked against the command line's options.
fn split(
    tool: &str,
    arguments: &Map<String, Value>,
    own_names: &[&str],
) -> Result<(Map<String, Value>, Vec<String>), String> {
    let mut own = Map::new();
    let mut rest = Map::new();
    for (name, value) in arguments {
        if own_names.contains(&name.as_str()) {
            own.insert(name.clone(), value.clone());
        } else {
            rest.insert(name.clone(), value.clone());
        }
    }
    // `quiet` is the command line's own: the server sends no progress to stdout anyway.
    let words = words_of(tool, &rest, |name, flag| {
        RunArgs::takes_value(flag).filter(|_| name != "quiet" && !BATCH_ONLY.contains(&name))
    })?;
    Ok((own, words))
}

/// A subcommand's arguments from a tool's (`{"limit": 5}`, `{"run_id": "…"}`), parsed by
/// the command line's own parser for them (`--limit=5`, `-- …`): the same checks,
/// defaults, conflicts and messages. A positional argument is given by its name. Only the
/// names in the tool's schema are taken: what the type skips there (`json`, `html`) is the
/// command line's own, since a tool always answers JSON and writes no files.
pub fn parse_like_cli<T: clap::Args + clap::FromArgMatches + JsonSchema>(
    tool: &'static str,
    arguments: &Map<String, Value>,
) -> Result<T, String> {
    let mut command = T::augment_args(clap::Command::new(tool)).no_binary_name(true);
    // Numbers the positional arguments, which the words must put in their order.
    command.build();
    let schema = schema_of::<T>();
    let known = |name: &str| {
        schema
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|properties| properties.contains_key(name))
    };
    let positional = |name: &str| {
        command
            .get_positionals()
            .find(|arg| arg.get_id().as_str() == name)
            .and_then(clap::Arg::get_index)
    };
    let (mut positionals, mut flags) = (Vec::new(), Map::new());
    for (name, value) in arguments {
        match positional(name).filter(|_| known(name)) {
            Some(index) => positionals.push((index, value)),
            None => {
                flags.insert(name.clone(), value.clone());
            }
        }
    }
    let mut words = words_of(tool, &flags, |name, flag| {
        command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag) && known(name))
            .map(|arg| arg.get_action().takes_values())
    })?;
    // After `--`, so a value that starts with `-` is a value, as `cmd -- -x` takes it.
    positionals.sort_by_key(|(index, _)| *index);
    let values: Vec<String> = positionals
        .into_iter()
        .flat_map(|(_, value)| match value {
            Value::Null => Vec::new(),
            Value::Array(items) => items.iter().map(scalar).collect(),
            value => vec![scalar(value)],
        })
        .collect();
    if !values.is_empty() {
        words.push("--".to_owned());
        words.extend(values);
    }
    let refused = |error: clap::Error| usage(tool, &crate::cli::clap_message(&error));
    let matches = command.try_get_matches_from(words).map_err(refused)?;
    T::from_arg_matches(&matches).map_err(refused)
}

/// Tool arguments as command-line words: `true` a bare flag, a list one word a value;
/// `takes_value(name, flag)` says whether the option exists and takes a value.
fn words_of(
    tool: &str,
    arguments: &Map<String, Value>,
    takes_value: impl Fn(&str, &str) -> Option<bool>,
) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    for (name, value) in arguments {
        let flag = name.replace('_', "-");
        match (takes_value(name, &flag), value) {
            (None, _) => return Err(usage(tool, &format!("unknown argument `{name}`"))),
            (Some(false), Value::Bool(true)) => words.push(format!("--{flag}")),
            (Some(false), Value::Bool(false)) | (Some(true), Value::Null) => {}
            (Some(false), _) => {
                return Err(usage(tool, &format!("`{name}` must be true or false")));
            }
            (Some(true), Value::Array(items)) => {
                for item in items {
                    words.push(format!("--{flag}={}", scalar(item)));
                }
            }
            (Some(true), value) => words.push(format!("--{flag}={}", scalar(value))),
        }
    }
    Ok(words)
}

/// A JSON value as the command line would have written it.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

pub async fn rollback(arguments: &Map<String, Value>, env: &Env) -> Document {
    let args: crate::cli::RollbackArgs = match parse_like_cli("rollback", arguments) {
        Ok(args) => args,
        Err(message) => return bad_input(&message),
    };
    let wait = Duration::from_secs(args.lock_timeout);
    let dir = args.repo.unwrap_or_else(|| PathBuf::from("."));
    let (env, force) = (Arc::clone(env), args.force);
    // The ledger's rollbacks hold the environment (not `Sync`) across their waits, so
    // they run to their end on a thread of their own rather than among the server's tasks.
    let undone = tokio::task::spawn_blocking(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                return Document::error(&Error::io("start a runtime for", &dir, error));
            }
        };
        runtime.block_on(async {
            // As on the command line: a batch's id undoes the batch; both are recorded.
            if let Some(batch_id) = args
                .run_id
                .as_deref()
                .filter(|id| batch::valid_batch_id(id))
            {
                let (report, missing) =
                    crate::record::rollback_batch(&dir, batch_id, force, wait, &*env).await;
                let mut document = match report {
                    Ok(report) => Document::batch_rollback(&report),
                    Err(error) => Document::error(&error),
                };
                document
                    .stderr
                    .extend(missing.into_iter().map(|m| format!("note: {m}")));
                return document;
            }
            let which = match args.run_id.as_deref() {
                Some(id) if !args.last => rollback::Which::Id(id),
                _ => rollback::Which::Last,
            };
            match crate::record::rollback(&dir, which, force, wait, &*env).await {
                Ok((report, missing)) => {
                    let mut document = Document::rollback(&report);
                    document
                        .stderr
                        .extend(missing.map(|m| format!("note: {m}")));
                    document
                }
                Err(error) => Document::error(&error),
            }
        })
    })
    .await;
    undone.unwrap_or_else(|error| bad_input(&format!("rollback: {error}")))
}

/// `check`: triage without a model, as `check` prints it; `path` (one) is the name this
/// tool took before it took the command line's `paths`, and still works.
pub async fn check(arguments: &Map<String, Value>, env: &Env) -> Document {
    let mut arguments = arguments.clone();
    if !arguments.contains_key("paths")
        && let Some(path) = arguments.remove("path")
    {
        arguments.insert("paths".to_owned(), path);
    }
    match parse_like_cli::<crate::cli::CheckArgs>("check", &arguments) {
        Ok(args) => crate::cli::check_document(args, env).await,
        Err(message) => bad_input(&message),
    }
}

/// `review`'s input schema: the command line's arguments, its positional words named
/// `run_id` and `verdict`.
pub fn review_schema() -> Map<String, Value> {
    let mut schema = schema_of::<crate::cli::ReviewArgs>();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.remove("args");
        properties.insert(
            "run_id".to_owned(),
            serde_json::json!({"type": "string", "description": "The run's id (from its result); or `last: true`."}),
        );
        properties.insert(
            "verdict".to_owned(),
            serde_json::json!({"type": "string", "enum": ["good", "acceptable", "poor"], "description": "The verdict."}),
        );
    }
    schema.insert("required".to_owned(), Value::from(vec!["verdict"]));
    schema.insert("title".to_owned(), Value::from("review"));
    schema
}

/// `review`: `run_id` and `verdict` become the command line's words `RUN_ID VERDICT`, in
/// that order, and the command's own parser and checks take it from there.
pub fn review(arguments: &Map<String, Value>, env: &Env) -> Document {
    if arguments.contains_key("args") {
        return bad_input(&usage("review", "unknown argument `args`"));
    }
    let mut arguments = arguments.clone();
    let words: Vec<Value> = ["run_id", "verdict"]
        .into_iter()
        .filter_map(|name| arguments.remove(name))
        .filter(|value| !value.is_null())
        .collect();
    arguments.insert("args".to_owned(), Value::Array(words));
    let args: crate::cli::ReviewArgs = match parse_like_cli("review", &arguments) {
        Ok(args) => args,
        Err(message) => return bad_input(&message),
    };
    match crate::cli::review_document(args, env) {
        Ok(document) => document,
        Err(message) => bad_input(&usage("review", &message)),
    }
}

pub fn stats(arguments: &Map<String, Value>, env: &Env) -> Document {
    let args: crate::cli::StatsArgs = match parse_like_cli("stats", arguments) {
        Ok(args) => args,
        Err(message) => return bad_input(&message),
    };
    match crate::stats::stats(&**env, &args.request()) {
        Ok(stats) => Document::stats(stats),
        Err(error) => Document::error(&error),
    }
}

pub async fn bring_in(verb: Verb, arguments: &Map<String, Value>, env: &Env) -> Document {
    let tool = match verb {
        Verb::Apply => "apply",
        Verb::Merge => "merge",
        Verb::Discard => "discard",
    };
    let args: crate::cli::BringInArgs = match parse_like_cli(tool, arguments) {
        Ok(args) => args,
        Err(message) => return bad_input(&message),
    };
    let wait = Duration::from_secs(args.lock_timeout);
    let id = args.run_id.as_deref().filter(|_| !args.last);
    let dir = args.repo.unwrap_or_else(|| PathBuf::from("."));
    bring_in::perform(verb, &dir, id, wait, &**env).await
}

/// `models`: what discovery sees, as `models --json` prints it.
pub async fn models(arguments: &Map<String, Value>, env: &Env) -> Document {
    let args: crate::cli::ModelsArgs = match parse_like_cli("models", arguments) {
        Ok(args) => args,
        Err(message) => return bad_input(&message),
    };
    match crate::cli::model_reports(&args, env).await {
        Ok(reports) => Document::models(&reports),
        Err(document) => document,
    }
}

/// The document for a `get_run` of an id this server did not start.
pub fn unknown_run(id: &str) -> Document {
    Document::error(&Error::Usage(format!(
        "get_run: no run `{id}` was started by this server, nor kept by an earlier one in this repository (`repo` names another; `rollback` takes any run's id)"
    )))
}

/// `config`: the effective configuration with each value's source, or with `check` each
/// profile's probe, as `config --json` prints them.
pub async fn config(arguments: &Map<String, Value>, env: &Env) -> Document {
    let args = match parse_like_cli::<crate::cli::ConfigArgs>("config", arguments) {
        Ok(args) => args,
        Err(message) => return bad_input(&message),
    };
    let env = Arc::clone(env);
    // The probes hold the environment (not `Sync`) across their waits, so they run on a
    // thread of their own, as `rollback` does.
    let probed = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(crate::cli::config_document(&args, &env)))
    })
    .await;
    match probed {
        Ok(Ok(document)) => document,
        Ok(Err(error)) => bad_input(&format!("config: cannot start a runtime: {error}")),
        Err(error) => bad_input(&format!("config stopped: {error}")),
    }
}

/// `log`: the ledger's recent runs, as `log --json` prints them.
pub fn log(arguments: &Map<String, Value>, env: &Env) -> Document {
    let args: crate::cli::LogArgs = match parse_like_cli("log", arguments) {
        Ok(args) => args,
        Err(message) => return bad_input(&message),
    };
    match crate::ledger::Ledger::open_default(&**env).and_then(|mut l| l.recent(args.limit)) {
        Ok(runs) => Document::log(runs),
        Err(error) => Document::error(&error),
    }
}

/// `export`: the JSON Lines `export` prints, or the error document.
pub fn export(arguments: &Map<String, Value>, env: &Env) -> Result<Vec<String>, Box<Document>> {
    let args: crate::cli::ExportArgs =
        parse_like_cli("export", arguments).map_err(|m| Box::new(bad_input(&m)))?;
    crate::export::export(&**env, args.reviewed, args.since.as_deref())
        .map_err(|error| Box::new(Document::error(&error)))
}
