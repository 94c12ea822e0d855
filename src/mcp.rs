//! The MCP server (`execute-local-task mcp`): the Model Context Protocol over stdin and
//! stdout with rmcp, its tools answering with the documents the command line prints.
//! Only the transport writes to stdout; progress goes to the client as notifications
//! (when it asked for them) and to stderr.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProgressToken, ServerCapabilities, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt as _};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, ReadBuf};

use crate::bring_in::Verb;
use crate::cli::{BringInArgs, CheckArgs, ModelsArgs, RollbackArgs, StatsArgs};
use crate::document::Document;
use crate::mcp_tools::{self, GetRunArgs};
use crate::pipeline::{self, Env, RunOptions};
use crate::run_registry::{Registry, Run, Waited};
use crate::{batch, mcp_results, plan};

/// The server's state: the runs it started.
#[derive(Clone)]
struct Server {
    env: Env,
    registry: Arc<Registry>,
}

/// Serves until stdin closes, then stops the runs still going (each undoes its attempt)
/// and returns the exit code: 0, or 2 when the transport could not start.
pub async fn serve(env: Env) -> u8 {
    let registry = Arc::new(Registry::default());
    let server = Server {
        env,
        registry: Arc::clone(&registry),
    };
    // The runs stop the moment stdin ends, not after rmcp's grace period for answers:
    // a client that went away is not waiting for them.
    let stdin = StopAtEof {
        inner: tokio::io::stdin(),
        registry: Arc::clone(&registry),
    };
    let service = match server.serve((stdin, tokio::io::stdout())).await {
        Ok(service) => service,
        Err(error) => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("error: mcp: cannot start the server: {error}\n").as_bytes(),
            );
            return 2;
        }
    };
    let _ = service.waiting().await;
    registry.stop_all().await;
    0
}

/// Stdin that stops every run when it ends.
struct StopAtEof {
    inner: tokio::io::Stdin,
    registry: Arc<Registry>,
}

impl AsyncRead for StopAtEof {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining());
        let poll = Pin::new(&mut self.inner).poll_read(context, buf);
        // Nothing read into room for something is the end of the input.
        if matches!(poll, Poll::Ready(Ok(()))) && room > 0 && buf.filled().len() == before {
            self.registry.stop_running();
        }
        poll
    }
}

/// Writes one line to stderr, ignoring a closed stderr.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A document as a tool's result: its JSON as structured content and as text (as the
/// command line prints it); a tool error when its status is `error` (bad input, the
/// model server, interrupted), not when a task ran and failed. The protocol's structured
/// content is an object: rmcp leaves an array (`models`, `log`) out, and the text stays.
fn result(document: &Document) -> CallToolResult {
    let value = serde_json::to_value(&document.json).unwrap_or_default();
    let text = serde_json::to_string_pretty(&document.json).unwrap_or_default();
    let is_error = value.get("status").and_then(Value::as_str) == Some("error")
        || !matches!(document.exit_code, 0 | 1);
    let mut result = if is_error {
        CallToolResult::structured_error(value)
    } else {
        CallToolResult::structured(value)
    };
    result.content = vec![ContentBlock::text(text)];
    result
}

/// Lines that are not one JSON document (`export`'s JSON Lines): as text only, exactly as
/// the command line prints them.
fn json_lines(lines: &[String]) -> CallToolResult {
    let text = lines.iter().fold(String::new(), |mut text, line| {
        text.push_str(line);
        text.push('\n');
        text
    });
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn tool(name: &'static str, description: &'static str, schema: Map<String, Value>) -> Tool {
    Tool::new(name, description, schema)
}

fn tools() -> Vec<Tool> {
    use mcp_tools::schema_of;
    vec![
        tool(
            "run_task",
            "Run one task spec on the local model: write, test, repair, and answer with the result JSON. Takes the command line's run options by their names. Waits up to wait_seconds, then answers {\"status\": \"running\", \"run_id\"}; call get_run with that id.",
            mcp_tools::run_task_schema(),
        ),
        tool(
            "run_batch",
            "Run a directory (or list) of task specs in depends_on order (in place, or each on its own branch with branch: true or the config's [run] branch), or with only_failed the tasks of an earlier batch that did not succeed, and answer with the batch summary JSON. Waits up to wait_seconds, then answers {\"status\": \"running\", \"run_id\": BATCH_ID}; call get_run with that id.",
            mcp_tools::run_batch_schema(),
        ),
        tool(
            "get_run",
            "Wait up to wait_seconds more for a run that run_task answered `running` for; answers its result JSON, or `running` again.",
            schema_of::<GetRunArgs>(),
        ),
        tool(
            "rollback",
            "Undo a run's writes byte for byte and delete the files it created.",
            schema_of::<RollbackArgs>(),
        ),
        tool(
            "apply",
            "Put a branch run's change into the working tree as uncommitted changes.",
            schema_of::<BringInArgs>(),
        ),
        tool(
            "merge",
            "Merge a branch run's commit into the current branch (fast-forward when possible).",
            schema_of::<BringInArgs>(),
        ),
        tool(
            "discard",
            "Delete a branch run's branch and any worktree it left.",
            schema_of::<BringInArgs>(),
        ),
        tool(
            "models",
            "List reachable local model servers and their models.",
            schema_of::<ModelsArgs>(),
        ),
        tool(
            "check",
            "Triage task specs without calling a model: a score 0-10 with reasons, a verdict (delegate, delegate_with_care, keep) and the profile routing would pick. A spec that cannot run makes it a tool error.",
            schema_of::<CheckArgs>(),
        ),
        tool(
            "config",
            "The effective configuration: every value with where it came from (`config --json`); with check: true, each profile's server and model probed (`config --check --json`).",
            schema_of::<crate::cli::ConfigArgs>(),
        ),
        tool(
            "review",
            "Record your verdict on a run (good, acceptable, poor) in the run ledger; a later verdict replaces the earlier one.",
            mcp_tools::review_schema(),
        ),
        tool(
            "log",
            "Recent runs from the run ledger, newest first (what `log --json` prints).",
            schema_of::<crate::cli::LogArgs>(),
        ),
        tool(
            "stats",
            "Figures from the run ledger per task kind and model, against your targets (what `stats --json` prints).",
            schema_of::<StatsArgs>(),
        ),
        tool(
            "export",
            "Reviewed runs as chat-format JSON Lines for fine-tuning, one run a line (what `export` prints), as text.",
            schema_of::<crate::cli::ExportArgs>(),
        ),
    ]
}

impl ServerHandler for Server {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "execute-local-task",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Delegate small, atomic coding tasks to a local model: run_task with a spec; if it answers `running`, call get_run with the run_id until it answers the result.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let arguments = request.arguments.unwrap_or_default();
        let document = match &*request.name {
            "run_task" => self.run_task(&arguments, &context).await,
            "run_batch" => self.run_batch(&arguments, &context).await,
            "get_run" => self.get_run(&arguments, &context).await,
            "rollback" => mcp_tools::rollback(&arguments, &self.env).await,
            "apply" => mcp_tools::bring_in(Verb::Apply, &arguments, &self.env).await,
            "merge" => mcp_tools::bring_in(Verb::Merge, &arguments, &self.env).await,
            "discard" => mcp_tools::bring_in(Verb::Discard, &arguments, &self.env).await,
            "models" => mcp_tools::models(&arguments, &self.env).await,
            "check" => mcp_tools::check(&arguments, &self.env).await,
            "config" => mcp_tools::config(&arguments, &self.env).await,
            "review" => mcp_tools::review(&arguments, &self.env),
            "log" => mcp_tools::log(&arguments, &self.env),
            "stats" => mcp_tools::stats(&arguments, &self.env),
            "export" => match mcp_tools::export(&arguments, &self.env) {
                Ok(lines) => return Ok(json_lines(&lines).into()),
                Err(document) => *document,
            },
            other => {
                return Err(McpError::invalid_params(format!("no tool `{other}`"), None));
            }
        };
        Ok(result(&document).into())
    }
}

impl Server {
    async fn run_task(
        &self,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Document {
        let (spec, options, wait) = match mcp_tools::run_task_input(arguments) {
            Ok(input) => input,
            Err(message) => return mcp_tools::bad_input(&message),
        };
        let env = Arc::clone(&self.env);
        let options = match crate::run_defaults::settle(options, &env).await {
            Ok(options) => options,
            Err(error) => return Document::error(&error),
        };
        let run = self.registry.start(move |feed| async move {
            let options = RunOptions {
                cancel: feed.cancel.clone(),
                run_id_sink: Some(Arc::clone(&feed.id)),
                ..options
            };
            let progress = |line: &str| {
                say(&format!("execute-local-task: {line}"));
                feed.progress(line);
            };
            let output = if options.branch {
                crate::branch::run(&spec, &options, None, &env, &progress).await
            } else {
                pipeline::run(&spec, &options, None, &env, &progress).await
            };
            let document = Document::run(output);
            // The summary and hints a terminal would show, for the client's server log.
            for line in &document.stderr {
                say(line);
            }
            keep(
                options.repo_dir.as_deref(),
                feed.id_of(&document),
                &document,
            );
            feed.finish(document);
        });
        follow(&run, wait, context).await
    }

    async fn run_batch(
        &self,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Document {
        let input = match mcp_tools::run_batch_input(arguments) {
            Ok(input) => input,
            Err(message) => return mcp_tools::bad_input(&message),
        };
        let env = Arc::clone(&self.env);
        let wait = input.wait;
        let options = match crate::run_defaults::settle(input.options, &env).await {
            Ok(options) => options,
            Err(error) => return Document::error(&error),
        };
        let run = self.registry.start(move |feed| async move {
            let feed = Arc::new(feed);
            let options = RunOptions {
                cancel: feed.cancel.clone(),
                run_id_sink: Some(Arc::clone(&feed.id)),
                ..options
            };
            let lines = Arc::clone(&feed);
            let observe: batch::Observer = Arc::new(move |event| match event {
                batch::Event::Line { task_id, line } => {
                    let line = format!("{task_id}: {line}");
                    say(&format!("execute-local-task: {line}"));
                    lines.progress(&line);
                }
                batch::Event::Note(line) => say(&format!("execute-local-task: {line}")),
                batch::Event::Started { .. } | batch::Event::Finished { .. } => {}
            });
            let planned = match &input.only_failed {
                Some(batch_id) => {
                    let dir = options.repo_dir.clone().unwrap_or_else(|| ".".into());
                    batch::plan_again(&dir, batch_id)
                }
                None => plan::find_specs(&input.paths, input.glob.as_deref())
                    .and_then(|paths| plan::plan(&paths, &std::collections::BTreeSet::new())),
            };
            let document = match planned {
                Ok(planned) => {
                    let runner = if options.branch {
                        batch::on_branches(Arc::clone(&env))
                    } else {
                        batch::in_place(Arc::clone(&env))
                    };
                    match batch::run(planned, &options, input.how, runner, observe).await {
                        Ok(outcome) => Document::batch(&outcome.summary()),
                        Err(error) => Document::error(&error),
                    }
                }
                Err(error) => Document::error(&error),
            };
            for line in &document.stderr {
                say(line);
            }
            keep(
                options.repo_dir.as_deref(),
                feed.id_of(&document),
                &document,
            );
            feed.finish(document);
        });
        follow(&run, wait, context).await
    }

    async fn get_run(
        &self,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Document {
        let args: GetRunArgs = match mcp_tools::decode("get_run", arguments) {
            Ok(args) => args,
            Err(message) => return mcp_tools::bad_input(&message),
        };
        let wait = match mcp_tools::wait_of("get_run", args.wait_seconds) {
            Ok(wait) => wait,
            Err(message) => return mcp_tools::bad_input(&message),
        };
        if let Some(run) = self.registry.find(&args.run_id) {
            return follow(&run, wait, context).await;
        }
        // A run an earlier server (of this repository) finished.
        let dir = args.repo.unwrap_or_else(|| ".".into());
        mcp_results::find(&dir, &args.run_id)
            .unwrap_or_else(|| mcp_tools::unknown_run(&args.run_id))
    }
}

/// Keeps a finished run's document for `get_run` after a restart (see `mcp_results`); a
/// failure costs only that, and is said on stderr.
fn keep(repo_dir: Option<&std::path::Path>, id: Option<String>, document: &Document) {
    let Some(id) = id else { return };
    let dir = repo_dir.unwrap_or(std::path::Path::new("."));
    if let Err(error) = mcp_results::keep(dir, &id, document) {
        say(&format!(
            "warning: the result of {id} was not kept for a later server's get_run: {error}"
        ));
    }
}

/// Waits on `run` for a call: forwards its progress lines as notifications when the
/// client gave a progress token, stops the run when the client cancels the call, and
/// answers the finished document or `running` with the run's id.
async fn follow(
    run: &Arc<Run>,
    wait: std::time::Duration,
    context: &RequestContext<RoleServer>,
) -> Document {
    let token = context.meta.get_progress_token();
    let forward = async {
        let mut seen = 0;
        loop {
            run.more_lines(seen).await;
            let lines = run.lines_from(seen);
            for line in lines {
                seen += 1;
                if let Some(token) = &token {
                    notify(context, token, seen, line).await;
                }
            }
        }
    };
    let stop_on_cancel = async {
        context.ct.cancelled().await;
        run.stop();
        std::future::pending::<()>().await;
    };
    let waited = tokio::select! {
        biased;
        waited = run.wait(wait) => waited,
        () = forward => unreachable!("forwarding never ends"),
        () = stop_on_cancel => unreachable!("waits for the run"),
    };
    match waited {
        Waited::Done(document) => (*document).clone(),
        Waited::Running(id) => Document::running(&id),
    }
}

async fn notify(
    context: &RequestContext<RoleServer>,
    token: &ProgressToken,
    seen: usize,
    line: String,
) {
    #[allow(clippy::cast_precision_loss)] // A count of lines.
    let param = ProgressNotificationParam::new(token.clone(), seen as f64).with_message(line);
    let _ = context.peer.notify_progress(param).await;
}
