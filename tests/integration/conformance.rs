//! The conformance tier: the real binary against a real llama.cpp-based server
//! (llama-cpp-python's OpenAI-compatible server) running a tiny generated model.
//!
//! Each test writes the reply it wants, turns it into a GGUF model with
//! `conformance/make_model.py` (greedy decoding of that model yields exactly the reply,
//! whatever the prompt), starts the server on a free loopback port, and runs the tool
//! against it. So the tokenizer, chat template, sampler, context limit, streaming and
//! HTTP layer are a real server's, while the answer stays under the test's control.
//!
//! The server comes from `conformance/install.sh`: the venv `.venv-conformance/` at the
//! repository root, or the Python named by `LOCAL_TASK_CONFORMANCE_PYTHON`. Where neither
//! exists, `build.rs` leaves `cfg(conformance_tier)` unset and the tier's tests are
//! ignored with the reason (listed as ignored, not counted as passed); under CI (`CI` set)
//! the cfg is set anyway, so a missing server fails every test and the tier cannot
//! silently stop running.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use execute_local_task::result::{FileAction, Outcome, Status};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

use crate::harness::{BINARY_DEADLINE, Run, Script, Test, spec};

/// The name the server gives its one model (`--model_alias`).
const ALIAS: &str = "scripted-coder";
/// Starting a real server: importing llama-cpp-python and loading a tiny model takes about
/// a second; a server that never answers gets the harness's deadline for a whole run.
const START_LIMIT: Duration = BINARY_DEADLINE;
const POLL: Duration = Duration::from_millis(50);
/// Names the server's Python when it is not in the default venv (read by `build.rs` too).
const PYTHON_ENV: &str = "LOCAL_TASK_CONFORMANCE_PYTHON";

// ---------------------------------------------------------------------------------------
// Finding and running the server
// ---------------------------------------------------------------------------------------

/// The venv's Python. Missing, it fails the test: `build.rs` only lets the tier run when
/// the server is installed, or under CI, where the tier must run.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let (python, source) = match std::env::var_os(PYTHON_ENV) {
            Some(path) if !path.is_empty() => (PathBuf::from(path), PYTHON_ENV),
            _ => (
                Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-conformance/bin/python"),
                "the default venv",
            ),
        };
        let ci = if under_ci() {
            " (CI is set, so the tier must run)"
        } else {
            ""
        };
        assert!(
            python.exists(),
            "conformance tier: no llama.cpp server at {} ({source}); run \
             `conformance/install.sh` to install it into .venv-conformance/, or set \
             {PYTHON_ENV} to a venv's bin/python{ci}",
            python.display()
        );
        python
    })
}

/// The same test of `CI` as `build.rs` makes.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"))
}

/// A llama-cpp-python server with a scripted model, killed (its whole process group) on drop.
struct RealServer {
    // Dropped first: the server stops before its model file goes.
    process: Process,
    /// `http://127.0.0.1:PORT/v1`
    url: String,
    _dir: tempfile::TempDir,
}

impl RealServer {
    /// Starts a server whose model answers every chat with exactly `reply`, with a context
    /// window of `n_ctx` tokens.
    ///
    /// `n_ctx` must be a multiple of 256: llama.cpp rounds the window up to one, while
    /// llama-cpp-python sizes its own buffers by the number given and fails with HTTP 500
    /// once generation passes it.
    fn start(reply: &str, n_ctx: u32) -> Self {
        Self::start_with(reply, n_ctx, &[])
    }

    fn start_with(reply: &str, n_ctx: u32, extra_args: &[&str]) -> Self {
        assert_eq!(n_ctx % 256, 0, "n_ctx {n_ctx} is not a multiple of 256");
        let python = python();
        let dir = tempfile::tempdir().unwrap();
        let model = make_model(python, dir.path(), reply);
        // A port taken between choosing and binding makes the server exit at once; try again.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = dir.path().join(format!("server-{port}.log"));
            let output = File::create(&log).unwrap();
            let mut command = Command::new(python);
            command
                .args(["-m", "llama_cpp.server", "--model"])
                .arg(&model)
                .args(["--model_alias", ALIAS, "--n_ctx", &n_ctx.to_string()])
                .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
                .args(extra_args)
                .stdin(Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                // Its own process group, so drop can end it and anything it started.
                .process_group(0);
            // Being in its own group, it would not see a Ctrl-C of `cargo test`: have the
            // kernel kill it when the test that started it goes away without dropping it.
            // SAFETY: the closure runs in the forked child and only makes one system call.
            #[cfg(target_os = "linux")]
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
                });
            }
            let child = command
                .spawn()
                .unwrap_or_else(|error| panic!("start {}: {error}", python.display()));
            let mut process = Process { child, log };
            match process.wait_until_ready(port) {
                Ok(()) => {
                    return Self {
                        process,
                        url: format!("http://127.0.0.1:{port}/v1"),
                        _dir: dir,
                    };
                }
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("the llama.cpp server did not start: {log}"),
            }
        }
        panic!("the llama.cpp server found no free port: {last_log}");
    }

    /// Asserts the exit code, showing the server's log too when it differs.
    #[track_caller]
    fn assert_code(&self, run: &Run, code: i32) {
        if run.code != code {
            let log = std::fs::read_to_string(&self.process.log).unwrap_or_default();
            panic!(
                "exit code {} (expected {code})\nstdout:\n{}\nstderr:\n{}\nserver log:\n{log}",
                run.code, run.stdout, run.stderr
            );
        }
    }
}

/// The server process, in its own process group.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Polls `GET /v1/models` until it answers 200; the end of the server's log when the
    /// server exits or the limit passes first.
    fn wait_until_ready(&mut self, port: u16) -> Result<(), String> {
        let started = Instant::now();
        let mut exited = None;
        while started.elapsed() < START_LIMIT {
            if models_answer(port) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(POLL);
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        Err(match exited {
            Some(status) => format!("it exited early ({status}); its log ends:\n{tail}"),
            None => {
                format!("no answer on port {port} after {START_LIMIT:?}; its log ends:\n{tail}")
            }
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // The server starts no processes of its own: once it has exited (and been
            // reaped here, after which its id may be reused) its group is empty.
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// True when `GET /v1/models` on `port` answers 200.
fn models_answer(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Writes `reply` to a file and has `conformance/make_model.py` turn it into a GGUF model.
fn make_model(python: &Path, dir: &Path, reply: &str) -> PathBuf {
    let reply_file = dir.join("reply.txt");
    std::fs::write(&reply_file, reply).unwrap();
    let model = dir.join("model.gguf");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/make_model.py");
    let output = Command::new(python)
        .arg(&script)
        .arg("--reply-file")
        .arg(&reply_file)
        .arg("--out")
        .arg(&model)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("run {}: {error}", python.display()));
    assert!(
        output.status.success(),
        "make_model.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    model
}

/// A reply in one fenced block for `path`, as a helpful model writes it.
fn code_reply(path: &str, code: &str) -> String {
    format!("Here is `{path}`:\n\n```python\n{code}```\n\nThe function is complete.")
}

const ADD: &str = "def add(a, b):\n    return a + b\n";

// ---------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------

#[test]
#[cfg_attr(
    not(conformance_tier),
    ignore = "needs the llama.cpp server: run conformance/install.sh .venv-conformance"
)]
fn a_task_succeeds_end_to_end() {
    let server = RealServer::start(&code_reply("src/add.py", ADD), 4096);
    let run = Test::new()
        .spec(spec(
            "src/add.py",
            &json!({"test_command": "grep -qx '    return a + b' src/add.py"}),
        ))
        .endpoint(&server.url)
        .args(&["--model", ALIAS])
        .run();
    server.assert_code(&run, 0);
    let result = run.result();
    assert_eq!(result.status, Status::Success, "{}", result.summary);
    assert_eq!(run.read("src/add.py").as_deref(), Some(ADD));
    let [file] = result.files.as_slice() else {
        panic!("one file expected: {:?}", result.files)
    };
    assert_eq!(
        (file.path.as_str(), file.action),
        ("src/add.py", FileAction::Created)
    );
    let test = result.test.expect("the test ran");
    assert!(test.passed && test.exit_code == Some(0), "{test:?}");
    let outcomes: Vec<Outcome> = result.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, [Outcome::Ok]);
    let model = result.model.expect("model info");
    assert_eq!(
        (
            model.provider.as_str(),
            model.endpoint.as_str(),
            model.name.as_str()
        ),
        ("openai", server.url.as_str(), ALIAS)
    );
}

#[test]
#[cfg_attr(
    not(conformance_tier),
    ignore = "needs the llama.cpp server: run conformance/install.sh .venv-conformance"
)]
fn usage_missing_from_the_stream_is_estimated_and_flagged() {
    // llama-cpp-python sends no usage in a stream, even when asked with
    // `stream_options.include_usage`.
    let reply = code_reply("add.py", ADD);
    let server = RealServer::start(&reply, 4096);
    let run = Test::new()
        .spec(spec("add.py", &json!({})))
        .endpoint(&server.url)
        .run();
    server.assert_code(&run, 0);
    let result = run.result();
    let usage = &result.usage;
    assert!(usage.estimated, "{usage:?}");
    // Four bytes a token, from the reply the server streamed, byte for byte.
    assert_eq!(usage.completion_tokens, reply.len().div_ceil(4) as u64);
    assert!(usage.prompt_tokens > 0, "{usage:?}");
    assert!(result.attempts[0].usage.estimated);
}

#[test]
#[cfg_attr(
    not(conformance_tier),
    ignore = "needs the llama.cpp server: run conformance/install.sh .venv-conformance"
)]
fn models_lists_the_servers_alias() {
    let server = RealServer::start("unused", 256);
    let url = server.url.clone();
    let run = Test::new().run_with(|_| {
        ["models", "--endpoint", url.as_str(), "--json"]
            .map(str::to_owned)
            .to_vec()
    });
    server.assert_code(&run, 0);
    let reports = run.json();
    assert_eq!(
        (
            &reports[0]["endpoint"],
            &reports[0]["reachable"],
            &reports[0]["models"]
        ),
        (&json!(server.url), &json!(true), &json!([ALIAS])),
        "{reports}"
    );

    let table = Test::new().run_with(|_| {
        ["models", "--endpoint", url.as_str()]
            .map(str::to_owned)
            .to_vec()
    });
    server.assert_code(&table, 0);
    assert!(
        table.stdout.lines().any(|line| line.trim() == ALIAS),
        "{}",
        table.stdout
    );
}

#[test]
#[cfg_attr(
    not(conformance_tier),
    ignore = "needs the llama.cpp server: run conformance/install.sh .venv-conformance"
)]
fn an_over_long_prompt_gets_the_servers_context_error() {
    // The prompt (system text, instructions, this context file) is far beyond 256 tokens.
    // Streamed, the server answers 200 with an empty body; the tool asks again without
    // streaming to get the server's own error.
    let server = RealServer::start(&code_reply("a.py", ADD), 256);
    let run = Test::new()
        .file(
            "notes.txt",
            "a line of context that the model should read\n".repeat(40),
        )
        .spec(spec("a.py", &json!({"context_files": ["notes.txt"]})))
        .endpoint(&server.url)
        .run();
    server.assert_code(&run, 3);
    let result = run.result();
    assert_eq!(result.status, Status::Error);
    let error = result.error.expect("an error");
    assert_eq!(error.kind, "context_too_long", "{}", error.message);
    assert!(
        error
            .message
            .contains("maximum context length is 256 tokens"),
        "the server's own words are kept: {}",
        error.message
    );
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
    run.assert_unchanged();
}

#[test]
#[cfg_attr(
    not(conformance_tier),
    ignore = "needs the llama.cpp server: run conformance/install.sh .venv-conformance"
)]
fn a_reply_cut_by_the_context_limit_is_never_written() {
    // 300 distinct lines: about 470 tokens, more than the room the window below leaves.
    let mut code = String::new();
    for i in 0..300 {
        writeln!(code, "def f{i}(x):\n    return x * {i} + {}", i * 7).unwrap();
    }
    let old = "def f0(x):\n    return 0\n";
    let build = || {
        Test::new()
            .file("big.py", old)
            .spec(spec("big.py", &json!({"max_attempts": 1})))
            .args(&["--model", ALIAS])
    };
    // The exact prompt, to size the window: with this model's byte-level vocabulary every
    // prompt byte is at most one token, and the chat template adds two role markers per
    // message and one to open the reply.
    let dry = build().arg("--dry-run").run();
    dry.assert_code(0);
    // The harness's endpoint is a bare host:port, so the dry run shows both candidates.
    let messages = dry.json()["requests"]["openai"]["request"]["messages"]
        .as_array()
        .expect("messages")
        .clone();
    let prompt_tokens_at_most = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().len() + 2)
        .sum::<usize>()
        + 1;
    // The prompt fits with at least 16 tokens to spare, and at most 256 + 16 (the window
    // is a multiple of 256); the reply needs far more.
    let n_ctx = u32::try_from(prompt_tokens_at_most + 16)
        .unwrap()
        .next_multiple_of(256);
    let server = RealServer::start(&code_reply("big.py", &code), n_ctx);
    let run = build().endpoint(&server.url).run();
    server.assert_code(&run, 1);
    let result = run.result();
    assert_eq!(result.status, Status::Escalate, "{}", result.summary);
    let [attempt] = result.attempts.as_slice() else {
        panic!("one attempt expected: {:?}", result.attempts)
    };
    assert_eq!(attempt.outcome, Outcome::Truncated, "{attempt:?}");
    assert!(
        attempt
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cut off")),
        "{attempt:?}"
    );
    assert!(result.files.is_empty());
    assert_eq!(run.read("big.py").as_deref(), Some(old));
    run.assert_unchanged();
}

#[test]
#[cfg_attr(
    not(conformance_tier),
    ignore = "needs the llama.cpp server: run conformance/install.sh .venv-conformance"
)]
fn two_concurrent_tasks_against_one_server_both_succeed() {
    // llama-cpp-python serves one request at a time. By default (`--interrupt_requests`)
    // it also cuts a running stream short the moment another request arrives, ending it
    // with `[DONE]` and no finish reason: with the default, one of these two runs gets
    // empty replies and escalates (`no_code`). Turned off, the second request waits its
    // turn, which is the setup to recommend when several runs share one server.
    let server = RealServer::start_with(
        &code_reply("add.py", ADD),
        4096,
        &["--interrupt_requests", "False"],
    );
    let barrier = Barrier::new(2);
    let runs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["T-A", "T-B"]
            .map(|task_id| {
                let (barrier, url) = (&barrier, server.url.as_str());
                scope.spawn(move || {
                    let test = Test::new()
                        .spec(spec(
                            "add.py",
                            &json!({"task_id": task_id, "test_command": "grep -q 'return a + b' add.py"}),
                        ))
                        .endpoint(url);
                    barrier.wait();
                    test.run()
                })
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        server.assert_code(run, 0);
        let result = run.result();
        assert_eq!(result.status, Status::Success, "{}", result.summary);
        assert_eq!(run.read("add.py").as_deref(), Some(ADD));
    }
}

/// The server behaviour the real-server cases found, replayed by the scripted server so it
/// is covered where llama-cpp-python is not installed: a streamed request refused with an
/// empty `200` stream, and the server's own error when asked again without streaming.
#[test]
fn an_empty_stream_is_asked_again_without_streaming() {
    let refusal = r#"{"error":{"message":"This model's maximum context length is 256 tokens. However, you requested 5032 tokens (5032 in the messages, None in the completion). Please reduce the length of the messages or completion.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let run = Test::new()
        .spec(spec("a.py", &json!({})))
        .script(Script::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ))
        .script(Script::status(400, refusal))
        .run();
    run.assert_code(3);
    let error = run.result().error.expect("an error");
    assert_eq!(error.kind, "context_too_long", "{}", error.message);
    assert!(
        error.message.contains("maximum context length is 256"),
        "{}",
        error.message
    );
    let [streamed, plain] = run.requests.as_slice() else {
        panic!("two requests expected: {:?}", run.requests)
    };
    assert_eq!(streamed.body["stream"], true);
    assert_eq!(plain.body["stream"], false);
    assert!(plain.body.get("stream_options").is_none(), "{}", plain.body);
    assert_eq!(plain.body["messages"], streamed.body["messages"]);
    run.assert_unchanged();
}
