//! The MCP server (`execute-local-task mcp`) driven by a small MCP client speaking
//! JSON-RPC lines over the real binary's stdin and stdout, against the scripted model
//! server: tools and schemas, a run to the end, the `running` → `get_run` path, a
//! cancellation, two calls at once, tool errors, and stdin closing mid-run.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::sync::mpsc;

use execute_local_task::result::{Status, TaskResult};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::harness::{Chat, Run, Running, Script, Test, spec, wait_for_file};

/// A tool call's result, as the protocol carries it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ToolResult {
    pub(crate) content: Vec<Content>,
    /// Absent when the answer is not a JSON object (`log`'s array, `export`'s lines).
    #[serde(default)]
    pub(crate) structured_content: Value,
    #[serde(default)]
    pub(crate) is_error: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Content {
    #[serde(rename = "type")]
    kind: String,
    text: String,
}

/// The answer for a run still going.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StillRunning {
    status: String,
    run_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedTool {
    name: String,
    input_schema: Value,
}

/// A minimal MCP client over the binary's stdin and stdout.
pub(crate) struct Client {
    stdin: Option<ChildStdin>,
    messages: mpsc::Receiver<Value>,
    /// Messages read while waiting for another.
    unread: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    /// Takes the binary's pipes and completes the `initialize` handshake.
    fn connect(running: &Running) -> Self {
        let stdin = running.stdin.lock().unwrap().take().expect("a piped stdin");
        let stdout = running
            .stdout
            .lock()
            .unwrap()
            .take()
            .expect("a piped stdout");
        Self::over(stdin, stdout)
    }

    /// Completes the handshake over a server's stdin and stdout.
    fn over(stdin: ChildStdin, stdout: std::process::ChildStdout) -> Self {
        let (sender, messages) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let message: Value = serde_json::from_str(&line).unwrap_or_else(|error| {
                    panic!("stdout carried a non-JSON line {line:?}: {error}")
                });
                if sender.send(message).is_err() {
                    break;
                }
            }
        });
        let mut client = Self {
            stdin: Some(stdin),
            messages,
            unread: VecDeque::new(),
            next_id: 0,
        };
        let id = client.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "test-client", "version": "1"}}),
        );
        let answer = client.response(id);
        assert_eq!(answer["result"]["serverInfo"]["name"], "execute-local-task");
        client.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        client
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method});
        message["params"] = params;
        self.send(&message);
        id
    }

    /// Starts a tool call; `progress` asks for progress notifications under that token.
    fn call(&mut self, tool: &str, arguments: Value, progress: Option<&str>) -> u64 {
        let mut params = json!({ "name": tool });
        params["arguments"] = arguments;
        if let Some(token) = progress {
            params["_meta"] = json!({"progressToken": token});
        }
        self.request("tools/call", params)
    }

    fn next_message(&mut self) -> Value {
        self.messages
            .recv()
            .expect("the server ended without answering")
    }

    /// The response to request `id`; other messages are kept for later.
    fn response(&mut self, id: u64) -> Value {
        if let Some(at) = self.unread.iter().position(|m| m["id"] == id) {
            return self.unread.remove(at).unwrap();
        }
        loop {
            let message = self.next_message();
            if message["id"] == id && message.get("method").is_none() {
                return message;
            }
            self.unread.push_back(message);
        }
    }

    fn tool_result(&mut self, id: u64) -> ToolResult {
        let response = self.response(id);
        serde_json::from_value(response["result"].clone())
            .unwrap_or_else(|error| panic!("not a tool result: {response}: {error}"))
    }

    /// Calls a tool and waits for its result.
    pub(crate) fn call_and_wait(&mut self, tool: &str, arguments: Value) -> ToolResult {
        let id = self.call(tool, arguments, None);
        self.tool_result(id)
    }

    /// The progress notifications received so far for `token`, their messages in order.
    fn progress(&mut self, token: &str) -> Vec<String> {
        while let Ok(message) = self.messages.try_recv() {
            self.unread.push_back(message);
        }
        self.unread
            .iter()
            .filter(|m| {
                m["method"] == "notifications/progress" && m["params"]["progressToken"] == token
            })
            .map(|m| {
                m["params"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// Closes stdin: the end of the session.
    fn close(&mut self) {
        drop(self.stdin.take());
    }
}

impl ToolResult {
    /// The run's result, checked to be the same document as text and as structured content.
    fn task_result(&self) -> TaskResult {
        assert_eq!(self.content.len(), 1);
        assert_eq!(self.content[0].kind, "text");
        let text: Value = serde_json::from_str(&self.content[0].text).unwrap();
        assert_eq!(
            text, self.structured_content,
            "text and structured content differ"
        );
        serde_json::from_value(self.structured_content.clone())
            .unwrap_or_else(|error| panic!("not a result: {}: {error}", self.structured_content))
    }

    fn running(&self) -> StillRunning {
        assert!(!self.is_error);
        let running: StillRunning = serde_json::from_value(self.structured_content.clone())
            .unwrap_or_else(|error| panic!("not `running`: {}: {error}", self.structured_content));
        assert_eq!(running.status, "running");
        running
    }
}

/// Runs `execute-local-task mcp` in `test`'s repository with a connected client, calls
/// `act` with it, closes stdin, and waits for the server to end.
pub(crate) fn session<T: 'static>(
    test: Test,
    act: impl FnOnce(&mut Client) -> T + 'static,
) -> (Run, T) {
    let out = std::rc::Rc::new(std::cell::RefCell::new(None));
    let put = std::rc::Rc::clone(&out);
    let run = test
        .interactive()
        .during(move |running| {
            let mut client = Client::connect(running);
            let value = act(&mut client);
            client.close();
            *put.borrow_mut() = Some(value);
        })
        .run_with(|_| vec!["mcp".to_owned()]);
    let value = out.borrow_mut().take().expect("the session's act ended");
    (run, value)
}

/// Markers in a scratch directory: `arrived` when the model was asked, `release` to let
/// the reply go.
struct Markers {
    _dir: tempfile::TempDir,
    arrived: PathBuf,
    release: PathBuf,
}

impl Markers {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            arrived: dir.path().join("arrived"),
            release: dir.path().join("release"),
            _dir: dir,
        }
    }

    fn held(&self, chat: Chat) -> Script {
        Script::Held {
            arrived: self.arrived.clone(),
            release: self.release.clone(),
            chat,
        }
    }
}

fn code(path: &str, text: &str) -> Chat {
    match Script::code(path, text) {
        Script::Chat(chat) => chat,
        _ => unreachable!(),
    }
}

/// A test command that marks `started` and waits for `release`: the attempt's code is
/// in the tree while it waits.
fn waiting_test(started: &Path, release: &Path) -> String {
    format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.01; done",
        started.display(),
        release.display()
    )
}

#[test]
fn mcp_lists_its_tools_with_the_command_lines_options_as_schemas() {
    let (run, tools) = session(Test::new(), |client| {
        let id = client.request("tools/list", json!({}));
        let listed = client.response(id);
        let tools: Vec<ListedTool> =
            serde_json::from_value(listed["result"]["tools"].clone()).unwrap();
        tools
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "run_task",
            "run_batch",
            "get_run",
            "rollback",
            "apply",
            "merge",
            "discard",
            "models",
            "check",
            "config",
            "review",
            "log",
            "stats",
            "export"
        ]
    );
    for tool in &tools {
        assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
    }
    let schema = &tools[0].input_schema;
    let properties = schema["properties"].as_object().unwrap();
    for option in [
        "spec",
        "wait_seconds",
        "endpoint",
        "model",
        "provider",
        "max_attempts",
        "no_test",
        "force",
        "branch",
        "dry_run",
        "temperature",
        "max_tokens",
        "repo",
    ] {
        assert!(properties.contains_key(option), "run_task lacks `{option}`");
    }
    for not_here in ["quiet", "specs", "jobs", "fail_fast", "glob"] {
        assert!(
            !properties.contains_key(not_here),
            "run_task has `{not_here}`"
        );
    }
    assert_eq!(schema["required"], json!(["spec"]));
    // The descriptions are the command line's help texts.
    let no_test = properties["no_test"]["description"].as_str().unwrap();
    assert!(no_test.contains("Do not run the test command"), "{no_test}");
}

#[test]
fn mcp_runs_a_task_to_the_end_with_progress_and_the_clis_result() {
    let test = Test::new()
        .file("out.txt", "old\n")
        .script(Script::code("out.txt", "new\n"));
    let (run, (answer, progress)) = session(test, |client| {
        let id = client.call(
            "run_task",
            json!({"spec": spec("out.txt", &json!({})), "no_test": true, "wait_seconds": 50}),
            Some("p1"),
        );
        let answer = client.tool_result(id);
        (answer, client.progress("p1"))
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!answer.is_error);
    let result = answer.task_result();
    assert_eq!(result.status, Status::Success, "{result:?}");
    assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
    assert_eq!(run.requests.len(), 1);
    assert!(!progress.is_empty(), "no progress notifications");
    // And nothing else reached stdout: the client's reader fails on any line that is not
    // a JSON-RPC message.
}

/// `run_task` takes `validate` as the command line takes `--validate`.
#[test]
fn mcp_run_task_takes_a_validator() {
    let test = Test::new()
        .models(&[crate::harness::MODEL, "reviewer-model"])
        .file(
            ".execute-local-task/config.toml",
            "[profiles.reviewer]\nrole = \"validator\"\nmodel = \"reviewer-model\"\n",
        )
        .route(
            "reviewer-model",
            vec![Script::reply(
                r#"{"pass": true, "issues": [], "confidence": 1}"#,
            )],
        )
        .script(Script::code("out.txt", "new\n"));
    let (run, answer) = session(test, |client| {
        let arguments = json!({"spec": spec("out.txt", &json!({})), "validate": "reviewer", "wait_seconds": 50});
        let id = client.call("run_task", arguments, None);
        client.tool_result(id)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    let result = answer.task_result();
    assert_eq!(result.status, Status::Success, "{result:?}");
    let report = result.attempts[0].validator.as_ref().expect("a review");
    assert_eq!(report.pass, Some(true));
    assert_eq!(run.requests.len(), 2);
}

#[test]
fn mcp_answers_running_and_get_run_waits_for_the_real_run_id() {
    let markers = Markers::new();
    let (arrived, release) = (markers.arrived.clone(), markers.release.clone());
    let test = Test::new()
        .file("out.txt", "old\n")
        .script(markers.held(code("out.txt", "new\n")));
    let (run, (first, again, done, undone)) = session(test, move |client| {
        let first = client.call_and_wait(
            "run_task",
            json!({"spec": spec("out.txt", &json!({})), "no_test": true, "wait_seconds": 0}),
        );
        let first = first.running();
        wait_for_file(&arrived);
        // Held at the model: `running` again, under the same id.
        let again = client.call_and_wait(
            "get_run",
            json!({"run_id": first.run_id, "wait_seconds": 0}),
        );
        std::fs::write(&release, b"").unwrap();
        let done = client.call_and_wait(
            "get_run",
            json!({"run_id": first.run_id, "wait_seconds": 50}),
        );
        let undone = client.call_and_wait("rollback", json!({"run_id": first.run_id}));
        (first, again.running(), done.task_result(), undone)
    });
    drop(markers);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(done.status, Status::Success);
    assert_eq!(again.run_id, first.run_id);
    assert_eq!(
        done.run_id, first.run_id,
        "the id given out is the run's own"
    );
    assert!(!undone.is_error, "{:?}", undone.structured_content);
    assert_eq!(undone.structured_content["run_id"], json!(first.run_id));
    assert_eq!(run.read("out.txt").as_deref(), Some("old\n"));
}

#[test]
fn mcp_cancellation_stops_the_run_and_undoes_its_attempt() {
    let scratch = tempfile::tempdir().unwrap();
    let (started, never) = (scratch.path().join("started"), scratch.path().join("never"));
    let test = Test::new()
        .file("out.txt", "old\n")
        .script(Script::code("out.txt", "new\n"));
    let out = test.repo_path().join("out.txt");
    let (run, (during_test, ended)) = session(test, move |client| {
        let spec = spec(
            "out.txt",
            &json!({"test_command": waiting_test(&started, &never)}),
        );
        let first = client.call_and_wait("run_task", json!({"spec": spec, "wait_seconds": 0}));
        let run_id = first.running().run_id;
        wait_for_file(&started);
        let during_test = std::fs::read_to_string(&out).ok();
        let waiting = client.call(
            "get_run",
            json!({"run_id": run_id, "wait_seconds": 50}),
            None,
        );
        client.send(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": waiting, "reason": "the user stopped it"}}),
        );
        let ended = client.call_and_wait("get_run", json!({"run_id": run_id, "wait_seconds": 50}));
        (during_test, ended)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        during_test.as_deref(),
        Some("new\n"),
        "the attempt was in the tree"
    );
    assert!(ended.is_error, "an interrupted run is a tool error");
    let ended = ended.task_result();
    assert_eq!(ended.status, Status::Error);
    assert_eq!(ended.error.unwrap().kind, "interrupted");
    run.assert_unchanged();
}

#[test]
fn mcp_serves_two_calls_at_once() {
    let markers = Markers::new();
    let (arrived, release) = (markers.arrived.clone(), markers.release.clone());
    let test = Test::new()
        .script(markers.held(code("a.txt", "A\n")))
        .script(Script::code("b.txt", "B\n"));
    let (run, (first, second)) = session(test, move |client| {
        let a = client.call(
            "run_task",
            json!({"spec": spec("a.txt", &json!({"task_id": "a"})), "no_test": true, "wait_seconds": 50}),
            None,
        );
        wait_for_file(&arrived);
        // The first call is held at the model; the second runs to its end meanwhile.
        let second = client.call_and_wait(
            "run_task",
            json!({"spec": spec("b.txt", &json!({"task_id": "b"})), "no_test": true, "wait_seconds": 50}),
        );
        std::fs::write(&release, b"").unwrap();
        (client.tool_result(a), second)
    });
    drop(markers);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(first.task_result().status, Status::Success);
    assert_eq!(second.task_result().status, Status::Success);
    assert_eq!(run.read("a.txt").as_deref(), Some("A\n"));
    assert_eq!(run.read("b.txt").as_deref(), Some("B\n"));
}

#[test]
fn mcp_bad_input_is_a_tool_error_with_the_clis_kind() {
    let (run, answers) = session(Test::new(), |client| {
        let mut answers = Vec::new();
        for arguments in [
            json!({"spec": {"task_id": "x"}}),
            json!({"spec": {"task_id": "x"}, "max_attempts": 9}),
            json!({"spec": {"task_id": "x"}, "no_such_option": 1}),
            json!({"spec": {"task_id": "x"}, "wait_seconds": 600}),
        ] {
            answers.push(client.call_and_wait("run_task", arguments));
        }
        answers.push(client.call_and_wait("get_run", json!({"run_id": "nope"})));
        answers.push(client.call_and_wait("rollback", json!({"run_id": "nope"})));
        answers
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    let kinds: Vec<&str> = answers
        .iter()
        .map(|answer| {
            assert!(answer.is_error, "{:?}", answer.structured_content);
            answer.structured_content["error"]["kind"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        kinds,
        ["spec", "usage", "usage", "usage", "usage", "rollback"]
    );
    let spec_error = answers[0].task_result().error.unwrap();
    assert!(
        spec_error.message.contains("description"),
        "{}",
        spec_error.message
    );
    let range = answers[1].structured_content["error"]["message"]
        .as_str()
        .unwrap();
    assert!(range.contains("1..=5"), "{range}");
}

#[test]
fn mcp_stdin_closing_stops_a_running_task_and_restores_the_tree() {
    let scratch = tempfile::tempdir().unwrap();
    let (started, never) = (scratch.path().join("started"), scratch.path().join("never"));
    let test = Test::new()
        .file("out.txt", "old\n")
        .script(Script::code("out.txt", "new\n"));
    // The session closes stdin while the run's test waits.
    let (run, ()) = session(test, move |client| {
        let spec = spec(
            "out.txt",
            &json!({"test_command": waiting_test(&started, &never)}),
        );
        client
            .call_and_wait("run_task", json!({"spec": spec, "wait_seconds": 0}))
            .running();
        wait_for_file(&started);
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("SIGTERM") || run.stderr.contains("interrupted"),
        "{}",
        run.stderr
    );
    run.assert_unchanged();
}

#[test]
fn mcp_records_a_review_and_reports_stats_from_the_ledger() {
    let test = Test::new().script(Script::code("out.txt", "new\n"));
    let (run, (result, reviewed, stats, bad)) = session(test, |client| {
        let result = client
            .call_and_wait(
                "run_task",
                json!({"spec": spec("out.txt", &json!({})), "no_test": true, "wait_seconds": 50}),
            )
            .task_result();
        let reviewed = client.call_and_wait(
            "review",
            json!({"run_id": result.run_id, "verdict": "good", "reason": "as asked"}),
        );
        let stats = client.call_and_wait("stats", json!({}));
        let bad = client.call_and_wait("review", json!({"last": true, "verdict": "great"}));
        (result, reviewed, stats, bad)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(result.status, Status::Success);
    assert!(!reviewed.is_error, "{:?}", reviewed.structured_content);
    assert_eq!(reviewed.structured_content["run_id"], json!(result.run_id));
    assert_eq!(reviewed.structured_content["verdict"], "good");
    assert!(!stats.is_error, "{:?}", stats.structured_content);
    let stats: execute_local_task::stats::Stats =
        serde_json::from_value(stats.structured_content).unwrap();
    assert_eq!(stats.total.runs, 1, "{stats:?}");
    assert!(bad.is_error);
    assert_eq!(bad.structured_content["error"]["kind"], "usage");
}

#[test]
fn mcp_checks_specs_like_the_command_line() {
    let test = Test::new()
        .file(
            "specs/good.json",
            spec("a.txt", &json!({"task_id": "good"})).to_string(),
        )
        .file("specs/bad.json", r#"{"task_id": "bad"}"#);
    let (run, (good, all)) = session(test, |client| {
        let good = client.call_and_wait(
            "check",
            json!({"path": "specs/good.json", "validate_only": true}),
        );
        let all = client.call_and_wait("check", json!({"path": "specs", "validate_only": true}));
        (good, all)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!good.is_error, "{:?}", good.structured_content);
    let good: execute_local_task::check::CheckReport =
        serde_json::from_value(good.structured_content).unwrap();
    assert_eq!(good.status, "ok");
    assert!(all.is_error, "a spec that cannot run is a tool error");
    let all: execute_local_task::check::CheckReport =
        serde_json::from_value(all.structured_content).unwrap();
    assert_eq!(all.status, "error");
    assert_eq!(all.specs.len(), 2);
}

/// What `mcp_sdk_client.py` prints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SdkSession {
    tools: Vec<String>,
    is_error: bool,
    result: TaskResult,
    progress: Vec<Option<String>>,
    config_files: usize,
    logged: Vec<String>,
    restarted: TaskResult,
}

/// The Python with the official MCP SDK, as `build.rs` found it.
fn sdk_python() -> PathBuf {
    match std::env::var_os("LOCAL_TASK_MCP_PYTHON") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-mcp/bin/python"),
    }
}

#[test]
#[cfg_attr(
    not(mcp_sdk_tier),
    ignore = "needs the MCP Python SDK: python3 -m venv .venv-mcp && .venv-mcp/bin/pip install mcp"
)]
fn mcp_the_official_python_sdk_lists_the_tools_and_runs_a_task() {
    let python = sdk_python();
    assert!(python.exists(), "no MCP SDK Python at {}", python.display());
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/mcp_sdk_client.py");
    let run = Test::new()
        .file("out.txt", "old\n")
        .spec(spec("out.txt", &json!({})))
        .script(Script::code("out.txt", "new\n"))
        .wrapped_in(&[python.to_str().unwrap(), client.to_str().unwrap()])
        .run();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let session: SdkSession = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|error| panic!("{}: {error}\n{}", run.stdout, run.stderr));
    assert!(session.tools.iter().any(|tool| tool == "run_task"));
    assert!(session.tools.iter().any(|tool| tool == "get_run"));
    assert!(!session.is_error);
    assert_eq!(session.result.status, Status::Success);
    assert!(!session.progress.is_empty(), "no progress reached the SDK");
    assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
    assert!(session.config_files >= 1, "{session:?}");
    assert_eq!(session.logged, std::slice::from_ref(&session.result.run_id));
    assert_eq!(session.restarted.run_id, session.result.run_id);
    assert_eq!(session.restarted.status, Status::Success);
}

#[test]
fn mcp_runs_a_batch_and_rolls_it_back_by_its_id() {
    let test = Test::new()
        .file(
            "specs/a.json",
            spec("a.txt", &json!({"task_id": "a"})).to_string(),
        )
        .file(
            "specs/b.json",
            spec("b.txt", &json!({"task_id": "b"})).to_string(),
        )
        .script(Script::code("a.txt", "A\n"))
        .script(Script::code("b.txt", "B\n"));
    let repo = test.repo_path();
    let (run, (summary, written, undone)) = session(test, move |client| {
        let summary = client.call_and_wait(
            "run_batch",
            json!({"specs": "specs", "no_test": true, "wait_seconds": 50}),
        );
        let written = (
            std::fs::read_to_string(repo.join("a.txt")).ok(),
            std::fs::read_to_string(repo.join("b.txt")).ok(),
        );
        let batch_id = summary.structured_content["batch_id"].clone();
        let undone = client.call_and_wait("rollback", json!({"run_id": batch_id}));
        (summary, written, undone)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!summary.is_error, "{:?}", summary.structured_content);
    crate::harness::assert_matches_batch_schema(&summary.content[0].text);
    let summary: execute_local_task::batch::BatchSummary =
        serde_json::from_value(summary.structured_content).unwrap();
    assert_eq!(
        summary.status,
        execute_local_task::batch::BatchStatus::Success
    );
    assert_eq!(summary.counts.success, 2, "{summary:?}");
    assert_eq!(written, (Some("A\n".to_owned()), Some("B\n".to_owned())));
    assert!(!undone.is_error, "{:?}", undone.structured_content);
    assert_eq!(run.read("a.txt"), None);
    assert_eq!(run.read("b.txt"), None);
}

/// `run_task` follows the configuration's `[run] branch` as the command line does, and
/// its `no_branch` beats it.
#[test]
fn mcp_run_task_follows_the_configs_branch_default() {
    let test = Test::new()
        .file(".execute-local-task/config.toml", "[run]\nbranch = true\n")
        .file("out.txt", "old\n")
        .script(Script::code("out.txt", "new\n"))
        .script(Script::code("out.txt", "new\n"));
    let (run, (on_branch, in_place)) = session(test, |client| {
        let call = |client: &mut Client, extra: Value| {
            let mut arguments =
                json!({"spec": spec("out.txt", &json!({})), "no_test": true, "wait_seconds": 50});
            arguments
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            client.call_and_wait("run_task", arguments).task_result()
        };
        let on_branch = call(client, json!({}));
        let in_place = call(client, json!({"no_branch": true}));
        (on_branch, in_place)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(on_branch.branch.as_deref(), Some("local-task/T-001"));
    assert_eq!(in_place.status, Status::Success, "{in_place:?}");
    assert_eq!(in_place.branch, None);
    assert_eq!(run.read("out.txt").as_deref(), Some("new\n"));
}

impl ToolResult {
    /// The answer's text: what the command line prints.
    fn text(&self) -> &str {
        assert_eq!(self.content.len(), 1);
        &self.content[0].text
    }

    /// The answer's text as JSON (an array has no structured content).
    fn text_json(&self) -> Value {
        serde_json::from_str(self.text())
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }
}

#[test]
fn mcp_config_log_and_export_answer_what_the_command_line_prints() {
    let test = Test::new().script(Script::code("out.txt", "new\n"));
    let (run, answers) = session(test, |client| {
        let result = client
            .call_and_wait(
                "run_task",
                json!({"spec": spec("out.txt", &json!({})), "no_test": true, "wait_seconds": 50}),
            )
            .task_result();
        assert_eq!(result.status, Status::Success);
        let reviewed = client.call_and_wait(
            "review",
            json!({"run_id": result.run_id, "verdict": "good"}),
        );
        assert!(!reviewed.is_error, "{:?}", reviewed.structured_content);
        let mut answers = Vec::new();
        for (tool, arguments) in [
            ("config", json!({})),
            ("config", json!({"check": true})),
            ("log", json!({"limit": 5})),
            ("export", json!({"reviewed": "good"})),
            ("export", json!({"reviewed": "poor", "since": "2026-01-01"})),
            ("log", json!({"limit": "many"})),
            ("log", json!({"json": true})),
            ("export", json!({"reviewed": "great"})),
            ("config", json!({"profile": "nowhere"})),
        ] {
            answers.push(client.call_and_wait(tool, arguments));
        }
        answers
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    let cli = |args: &[&str]| {
        let (code, stdout, stderr) = run.again(args);
        (code, stdout, stderr)
    };

    let (code, stdout, _) = cli(&["config", "--json"]);
    assert_eq!(code, 0);
    assert!(!answers[0].is_error);
    assert_eq!(
        answers[0].structured_content,
        serde_json::from_str::<Value>(&stdout).unwrap()
    );
    let (code, stdout, _) = cli(&["config", "--check", "--json"]);
    assert_eq!(code, 0, "no profile: nothing to probe");
    assert_eq!(
        answers[1].text_json(),
        serde_json::from_str::<Value>(&stdout).unwrap()
    );

    let (_, stdout, _) = cli(&["log", "--limit", "5", "--json"]);
    assert!(!answers[2].is_error);
    let logged: Vec<execute_local_task::ledger::LoggedRun> =
        serde_json::from_value(answers[2].text_json()).unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(
        answers[2].text_json(),
        serde_json::from_str::<Value>(&stdout).unwrap()
    );

    let (code, stdout, _) = cli(&["export", "--reviewed", "good"]);
    assert_eq!(code, 0);
    assert!(!answers[3].is_error);
    assert_eq!(
        answers[3].text(),
        stdout,
        "export answers its JSON Lines as text"
    );
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(answers[4].text(), "", "no run was judged poor");

    for (answer, kind, says) in [
        (&answers[5], "usage", "many"),
        (&answers[6], "usage", "json"),
        (&answers[7], "usage", "great"),
        (&answers[8], "usage", "nowhere"),
    ] {
        assert!(answer.is_error, "{:?}", answer.structured_content);
        assert_eq!(answer.structured_content["error"]["kind"], kind);
        let message = answer.structured_content["error"]["message"]
            .as_str()
            .unwrap();
        assert!(message.contains(says), "{message}");
    }
}

#[test]
fn mcp_run_batch_only_failed_runs_again_what_did_not_succeed() {
    let test = Test::new()
        .file(
            "specs/a.json",
            spec(
                "a.txt",
                &json!({"task_id": "a", "description": "Task <<A>>."}),
            )
            .to_string(),
        )
        .file(
            "specs/b.json",
            spec(
                "b.txt",
                &json!({"task_id": "b", "description": "Task <<B>>.", "max_attempts": 1,
                        "test_command": "grep -q fixed b.txt"}),
            )
            .to_string(),
        )
        .route("<<A>>", vec![Script::code("a.txt", "A\n")])
        .route(
            "<<B>>",
            vec![
                Script::code("b.txt", "broken\n"),
                Script::code("b.txt", "fixed\n"),
            ],
        );
    let (run, (first, again, both, neither)) = session(test, |client| {
        let first =
            client.call_and_wait("run_batch", json!({"specs": "specs", "wait_seconds": 50}));
        let batch_id = first.structured_content["batch_id"].clone();
        let again = client.call_and_wait(
            "run_batch",
            json!({"only_failed": batch_id, "wait_seconds": 50}),
        );
        let both = client.call_and_wait(
            "run_batch",
            json!({"specs": "specs", "only_failed": batch_id}),
        );
        let neither = client.call_and_wait("run_batch", json!({}));
        (first, again, both, neither)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    let first: execute_local_task::batch::BatchSummary =
        serde_json::from_value(first.structured_content).unwrap();
    assert_eq!(first.counts.success, 1, "{first:?}");
    assert!(!again.is_error, "{:?}", again.structured_content);
    crate::harness::assert_matches_batch_schema(again.text());
    let again: execute_local_task::batch::BatchSummary =
        serde_json::from_value(again.structured_content).unwrap();
    assert_eq!(again.counts.success, 1, "{again:?}");
    let ids: Vec<_> = again
        .tasks
        .iter()
        .filter_map(|t| t.task_id.as_deref())
        .collect();
    assert_eq!(ids, ["b"]);
    assert_eq!(run.read("b.txt").as_deref(), Some("fixed\n"));
    for answer in [both, neither] {
        assert!(answer.is_error);
        assert_eq!(answer.structured_content["error"]["kind"], "usage");
    }
}

#[test]
fn mcp_get_run_answers_a_run_an_earlier_server_finished() {
    let scratch = tempfile::tempdir().unwrap();
    let (started, never) = (scratch.path().join("started"), scratch.path().join("never"));
    let test = Test::new()
        .file("out.txt", "old\n")
        .script(Script::code("out.txt", "new\n"))
        .script(Script::code("other.txt", "other\n"));
    let (run, (done, stopped_id)) = session(test, move |client| {
        let done = client.call_and_wait(
            "run_task",
            json!({"spec": spec("out.txt", &json!({})), "no_test": true, "wait_seconds": 50}),
        );
        // A second run still testing when the session ends: stopped, its attempt undone.
        let waiting = spec(
            "other.txt",
            &json!({"task_id": "T-002", "test_command": waiting_test(&started, &never)}),
        );
        let stopped = client
            .call_and_wait("run_task", json!({"spec": waiting, "wait_seconds": 0}))
            .running();
        wait_for_file(&started);
        (done, stopped.run_id)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    let first = done.task_result();
    assert_eq!(first.status, Status::Success);

    // A new server, as a restarted client would start.
    let mut child = run.spawn_again(&["mcp"], &[]);
    let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut client = Client::over(stdin, stdout);
    let again = client.call_and_wait("get_run", json!({"run_id": first.run_id}));
    let stopped = client.call_and_wait("get_run", json!({"run_id": stopped_id}));
    let unknown =
        client.call_and_wait("get_run", json!({"run_id": "20261202T000000000Z-00000000"}));
    client.close();
    let ended = crate::harness::finish(child);
    assert_eq!(ended.status.code(), Some(0));

    assert!(!again.is_error);
    assert_eq!(again.structured_content, done.structured_content);
    assert_eq!(
        again.text(),
        done.text(),
        "the same text, fields in the same order"
    );
    assert_eq!(again.task_result().run_id, first.run_id);
    assert!(stopped.is_error, "an interrupted run is a tool error");
    let stopped = stopped.task_result();
    assert_eq!(stopped.error.unwrap().kind, "interrupted");
    assert!(unknown.is_error);
    assert_eq!(unknown.structured_content["error"]["kind"], "usage");
    assert_eq!(run.read("other.txt"), None);
}

/// The MCP tools the skill and the slash commands name (the code spans of their
/// paragraphs that speak of MCP) are the server's.
#[test]
fn mcp_lists_every_tool_the_skill_and_slash_commands_name() {
    let mut named = std::collections::BTreeSet::new();
    for (_, text) in crate::skill_commands::doc_texts() {
        for paragraph in text.split("\n\n").filter(|p| p.contains("MCP")) {
            for (index, span) in paragraph.split('`').enumerate() {
                if index % 2 == 1 && span.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    named.insert(span.to_owned());
                }
            }
        }
    }
    assert!(
        named.contains("run_task") && named.contains("get_run"),
        "{named:?}"
    );
    let (run, tools) = session(Test::new(), |client| {
        let id = client.request("tools/list", json!({}));
        let listed = client.response(id);
        let tools: Vec<ListedTool> =
            serde_json::from_value(listed["result"]["tools"].clone()).unwrap();
        tools
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed: std::collections::BTreeSet<String> =
        tools.into_iter().map(|tool| tool.name).collect();
    let missing: Vec<&String> = named.difference(&listed).collect();
    assert!(missing.is_empty(), "named but not served: {missing:?}");
    // And the skill names every tool the server has.
    let unnamed: Vec<&String> = listed.difference(&named).collect();
    assert!(
        unnamed.is_empty(),
        "served but not in the skill: {unnamed:?}"
    );
}

#[test]
fn mcp_runs_a_batch_on_branches_and_applies_it_by_its_id() {
    let test = Test::new()
        .file(
            "specs/a.json",
            spec(
                "a.txt",
                &json!({"task_id": "a", "description": "Task <<A>>."}),
            )
            .to_string(),
        )
        .file(
            "specs/b.json",
            spec(
                "b.txt",
                &json!({"task_id": "b", "description": "Task <<B>>."}),
            )
            .to_string(),
        )
        .route("<<A>>", vec![Script::code("a.txt", "A\n")])
        .route("<<B>>", vec![Script::code("b.txt", "B\n")]);
    let repo = test.repo_path();
    let (run, (summary, untouched, applied)) = session(test, move |client| {
        let summary = client.call_and_wait(
            "run_batch",
            json!({"specs": "specs", "branch": true, "no_test": true, "jobs": 2, "wait_seconds": 50}),
        );
        let untouched = !repo.join("a.txt").exists() && !repo.join("b.txt").exists();
        let batch_id = summary.structured_content["batch_id"].clone();
        let applied = client.call_and_wait("apply", json!({"run_id": batch_id}));
        (summary, untouched, applied)
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!summary.is_error, "{:?}", summary.structured_content);
    let summary: execute_local_task::batch::BatchSummary =
        serde_json::from_value(summary.structured_content).unwrap();
    assert_eq!(summary.counts.success, 2, "{summary:?}");
    assert!(untouched, "a branch batch wrote into the working tree");
    assert!(!applied.is_error, "{:?}", applied.structured_content);
    assert_eq!(run.read("a.txt").as_deref(), Some("A\n"));
    assert_eq!(run.read("b.txt").as_deref(), Some("B\n"));
}
