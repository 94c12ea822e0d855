//! The integration-test harness: a [`Test`] builder that owns a hermetic temporary git
//! repository, a spec, and a scripted in-process model server, runs the real binary and
//! hands back its exit code, stdout, stderr, the typed result and the requests the server got.

// A toolkit: not every test module uses every part.
#![allow(dead_code)]

use std::fmt::Write as _;

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use execute_local_task::result::TaskResult;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_execute-local-task");
pub const MODEL: &str = "test-model";

/// How long one run of the binary may take before the test kills it and fails: a
/// regression that hangs (a test process never killed) must fail the suite, not hang CI.
pub const BINARY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// The file modes the tests expect are those of umask 022, whatever the machine's is.
/// Process-wide, so set once; every test sets the same value, and children inherit it.
pub fn hermetic_umask() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    });
}

/// Waits for a started binary, within [`BINARY_DEADLINE`]; past it the binary is killed
/// and the test fails.
pub fn finish(child: std::process::Child) -> std::process::Output {
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    if let Ok(output) = receiver.recv_timeout(BINARY_DEADLINE) {
        return output.expect("wait for the binary");
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    panic!("the binary ran past {BINARY_DEADLINE:?} and was killed");
}

/// Runs a command for the binary to its end, within [`BINARY_DEADLINE`].
pub fn output(command: &mut Command) -> std::process::Output {
    finish(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary"),
    )
}

// ---------------------------------------------------------------------------------------
// The scripted model server
// ---------------------------------------------------------------------------------------

/// What the server does with one chat request.
#[derive(Debug, Clone)]
pub enum Script {
    /// An OpenAI-style SSE stream of `text`.
    Chat(Chat),
    /// An HTTP error status with a body.
    Status {
        code: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// Exactly these bytes, then the connection closes.
    Raw(Vec<u8>),
    /// Reads the request and never answers (until the client gives up).
    Hang,
    /// Reads the request and closes the connection without a word.
    Reset,
    /// Answers 200 with the protocol's streaming headers and these body bytes, then
    /// holds the connection open without sending more (a stalled stream).
    Stall(String),
    /// Streams `piece` as content every `every_ms` milliseconds and never finishes.
    Drip { piece: String, every_ms: u64 },
    /// Answers 200 with the protocol's streaming headers and exactly this body, then closes.
    Body(String),
    /// Creates the file `arrived` when the request comes, then holds the reply until the
    /// file `release` exists (a test's go-ahead), then streams `chat`.
    Held {
        arrived: PathBuf,
        release: PathBuf,
        chat: Chat,
    },
    /// Sends the streaming headers at once, waits `wait_ms` (a model reading a long
    /// prompt before its first token), then streams the reply.
    Prefill { wait_ms: u64, chat: Chat },
    /// Waits until the file exists (something the test or the tool creates), then plays
    /// the script: a reply that arrives only once the tool has reached some point.
    After(PathBuf, Box<Script>),
    /// Plays the script if no process holds the lock on the file (a repository's lock)
    /// when the request comes; otherwise answers 409, which fails the call: a model call
    /// that must never run under the repository lock.
    Unlocked(PathBuf, Box<Script>),
}

/// Which API the scripted server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// OpenAI-compatible: `/v1/models`, `/v1/chat/completions` (SSE). `/api/*` is 404.
    #[default]
    OpenAi,
    /// Ollama's native API: `/api/version`, `/api/tags`, `/api/chat` (NDJSON). It also
    /// answers `/v1/*` like Ollama does.
    Ollama,
}

#[derive(Debug, Clone)]
pub struct Chat {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Option<(u64, u64)>,
    /// Bytes of content per SSE event.
    pub chunk: usize,
    pub done: bool,
}

impl Script {
    pub fn reply(text: &str) -> Self {
        Self::Chat(Chat {
            text: text.to_owned(),
            finish_reason: Some("stop".to_owned()),
            usage: Some((100, 50)),
            chunk: 7,
            done: true,
        })
    }

    /// A reply in one fenced block for `path`.
    pub fn code(path: &str, code: &str) -> Self {
        Self::reply(&format!("Here is `{path}`:\n\n```\n{code}```\n"))
    }

    pub fn status(code: u16, body: &str) -> Self {
        Self::Status {
            code,
            body: body.to_owned(),
            headers: Vec::new(),
        }
    }

    /// An error status with extra headers (e.g. `Retry-After`).
    pub fn status_with(code: u16, body: &str, headers: &[(&str, &str)]) -> Self {
        Self::Status {
            code,
            body: body.to_owned(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// A reply with these settings changed.
    pub fn chat(text: &str, change: impl FnOnce(&mut Chat)) -> Self {
        let mut chat = Chat {
            text: text.to_owned(),
            finish_reason: Some("stop".to_owned()),
            usage: Some((100, 50)),
            chunk: 7,
            done: true,
        };
        change(&mut chat);
        Self::Chat(chat)
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl Request {
    /// The text of every message, in order.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .map(|messages| {
                messages
                    .iter()
                    .map(|m| {
                        (
                            m["role"].as_str().unwrap_or_default().to_owned(),
                            m["content"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn last_user_message(&self) -> String {
        self.messages()
            .into_iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map(|(_, text)| text)
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct ServerState {
    script: VecDeque<Script>,
    /// Replies for requests whose body holds the needle, before the plain script: runs at
    /// once (a batch) get their own replies whatever order they ask in.
    routes: Vec<(String, VecDeque<Script>)>,
    requests: Vec<Request>,
    models: Vec<String>,
    protocol: Protocol,
    /// Chat requests being answered now, and the most ever at once.
    in_flight: usize,
    max_in_flight: usize,
    /// The first `gate` chat requests are held until that many are in flight at once:
    /// overlap is shown deterministically, with no timing.
    gate: usize,
    gated: usize,
    gate_open: bool,
    /// Like a real server: at most `slots` replies are worked on at once (0: no limit),
    /// each taking `latency` before it is sent.
    slots: usize,
    busy: usize,
    latency: std::time::Duration,
    /// The model's context window the server reports: Ollama's `/api/show`, llama.cpp's
    /// `/props`. Unset: both are 404, as from a server that does not say.
    context_length: Option<u64>,
    /// vLLM's way to say it: `max_model_len` on each model in `/models`.
    max_model_len: Option<u64>,
}

#[derive(Clone)]
pub struct ModelServer {
    pub url: String,
    state: Arc<Mutex<ServerState>>,
    arrived: Arc<std::sync::Condvar>,
}

impl ModelServer {
    pub fn start(script: Vec<Script>, models: Vec<String>) -> Self {
        Self::start_speaking(Protocol::OpenAi, script, models)
    }

    pub fn start_speaking(protocol: Protocol, script: Vec<Script>, models: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the scripted server");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(ServerState {
            script: script.into(),
            models,
            protocol,
            ..ServerState::default()
        }));
        let shared = Arc::clone(&state);
        let arrived = Arc::new(std::sync::Condvar::new());
        let signal = Arc::clone(&arrived);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (shared, signal) = (Arc::clone(&shared), Arc::clone(&signal));
                std::thread::spawn(move || serve(stream, &shared, &signal));
            }
        });
        Self {
            url,
            state,
            arrived,
        }
    }

    /// Replies to requests whose body contains `needle`, in order, before the plain script.
    pub fn route(&self, needle: &str, script: Vec<Script>) {
        self.state
            .lock()
            .unwrap()
            .routes
            .push((needle.to_owned(), script.into()));
    }

    /// Holds the first `n` chat requests until `n` are in flight at once.
    pub fn gate(&self, n: usize) {
        self.state.lock().unwrap().gate = n;
    }

    /// At most `slots` replies at once, each after `latency` (a model's time).
    pub fn slots(&self, slots: usize, latency: std::time::Duration) {
        let mut state = self.state.lock().unwrap();
        state.slots = slots;
        state.latency = latency;
    }

    /// Reports this context window for the model (`/api/show` or `/props`).
    pub fn context_length(&self, tokens: u64) {
        self.state.lock().unwrap().context_length = Some(tokens);
    }

    /// Reports this context window as vLLM does: `max_model_len` in `/models`.
    pub fn max_model_len(&self, tokens: u64) {
        self.state.lock().unwrap().max_model_len = Some(tokens);
    }

    /// The most chat requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// The chat requests received (model listings are not recorded).
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<ServerState>, arrived: &std::sync::Condvar) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    if answered_question(&mut stream, state, &request) {
        return;
    }
    let protocol = state.lock().unwrap().protocol;
    let native = protocol == Protocol::Ollama && request.path == "/api/chat";
    if !native && !request.path.ends_with("/chat/completions") {
        respond(
            &mut stream,
            404,
            "application/json",
            &[],
            br#"{"error":"not found"}"#,
        );
        return;
    }
    let script = {
        let mut guard = state.lock().unwrap();
        let body = request.body.to_string();
        let routed = guard
            .routes
            .iter_mut()
            .find(|(needle, _)| body.contains(needle.as_str()))
            .map(|(_, script)| script.pop_front());
        guard.requests.push(request);
        guard.in_flight += 1;
        guard.max_in_flight = guard.max_in_flight.max(guard.in_flight);
        if guard.gated < guard.gate {
            guard.gated += 1;
            if guard.in_flight >= guard.gate {
                guard.gate_open = true;
                arrived.notify_all();
            }
            while !guard.gate_open {
                guard = arrived.wait(guard).unwrap();
            }
        }
        let script = match routed {
            Some(script) => script,
            None => guard.script.pop_front(),
        };
        if guard.slots > 0 {
            while guard.busy >= guard.slots {
                guard = arrived.wait(guard).unwrap();
            }
            guard.busy += 1;
        }
        (script, guard.slots > 0, guard.latency)
    };
    let (script, slotted, latency) = script;
    if slotted {
        std::thread::sleep(latency);
    }
    play(stream, released(script), native);
    let mut guard = state.lock().unwrap();
    guard.in_flight -= 1;
    if slotted {
        guard.busy -= 1;
        arrived.notify_all();
    }
}

/// Answers what is not a chat request: the model list (Ollama's `/api/tags` and
/// `/api/version`, or `/models`) and the context window; false for anything else.
fn answered_question(
    stream: &mut TcpStream,
    state: &Mutex<ServerState>,
    request: &Request,
) -> bool {
    if answered_window(stream, state, request) {
        return true;
    }
    let protocol = state.lock().unwrap().protocol;
    if protocol == Protocol::Ollama && request.method == "GET" {
        let body = match request.path.as_str() {
            "/api/version" => Some(json!({"version": "0.6.0"})),
            "/api/tags" => {
                let models = state.lock().unwrap().models.clone();
                let models: Vec<Value> = models
                    .iter()
                    .map(|name| json!({"name": name, "model": name, "size": 1}))
                    .collect();
                Some(json!({"models": models}))
            }
            _ => None,
        };
        if let Some(body) = body {
            respond(
                stream,
                200,
                "application/json",
                &[],
                body.to_string().as_bytes(),
            );
            return true;
        }
    }
    if request.method == "GET" && request.path.ends_with("/models") {
        let (models, max_model_len) = {
            let state = state.lock().unwrap();
            (state.models.clone(), state.max_model_len)
        };
        let data: Vec<Value> = models
            .iter()
            .map(|id| {
                let mut model = json!({"id": id, "object": "model", "owned_by": "test"});
                if let Some(tokens) = max_model_len {
                    model["max_model_len"] = json!(tokens);
                }
                model
            })
            .collect();
        respond(
            stream,
            200,
            "application/json",
            &[],
            json!({"object": "list", "data": data})
                .to_string()
                .as_bytes(),
        );
        return true;
    }
    false
}

/// Answers a question about the model's context window (Ollama's `/api/show`,
/// llama.cpp's `/props`) when the server was given one to report.
fn answered_window(stream: &mut TcpStream, state: &Mutex<ServerState>, request: &Request) -> bool {
    let (protocol, context_length) = {
        let state = state.lock().unwrap();
        (state.protocol, state.context_length)
    };
    let window = match (protocol, request.method.as_str(), request.path.as_str()) {
        (Protocol::Ollama, "POST", "/api/show") => context_length.map(|n| {
            json!({"details": {"family": "qwen2"}, "model_info": {
                "general.architecture": "qwen2", "qwen2.context_length": n,
                "qwen2.embedding_length": 3584}})
        }),
        (Protocol::OpenAi, "GET", "/props") => context_length
            .map(|n| json!({"default_generation_settings": {"n_ctx": n}, "total_slots": 1})),
        _ => None,
    };
    let Some(body) = window else { return false };
    respond(
        stream,
        200,
        "application/json",
        &[],
        body.to_string().as_bytes(),
    );
    true
}

/// A [`Script::Held`] once its test lets it go: its chat; a [`Script::Unlocked`]: its
/// script, or a 409 when the lock is held.
fn released(script: Option<Script>) -> Option<Script> {
    match script {
        Some(Script::Unlocked(lock, script)) => Some(if is_locked(&lock) {
            Script::status(
                409,
                r#"{"error":{"message":"this call came while the repository lock was held"}}"#,
            )
        } else {
            *script
        }),
        Some(Script::Held {
            arrived,
            release,
            chat,
        }) => {
            std::fs::write(&arrived, b"").unwrap();
            wait_for_file(&release);
            Some(Script::Chat(chat))
        }
        other => other,
    }
}

/// Answers one chat request as `script` says, in the protocol's framing.
fn play(mut stream: TcpStream, script: Option<Script>, native: bool) {
    let stream_head: &[u8] = if native {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    };
    match script {
        None => respond(
            &mut stream,
            500,
            "application/json",
            &[],
            br#"{"error":{"message":"the test script has no reply left"}}"#,
        ),
        Some(Script::Chat(chat)) => {
            let body = if native {
                ndjson_body(&chat)
            } else {
                sse_body(&chat)
            };
            let _ = stream.write_all(stream_head);
            let _ = stream.write_all(body.as_bytes());
            let _ = stream.flush();
            let _ = stream.shutdown(Shutdown::Write);
        }
        Some(Script::Status {
            code,
            body,
            headers,
        }) => {
            respond(
                &mut stream,
                code,
                "application/json",
                &headers,
                body.as_bytes(),
            );
        }
        Some(Script::Raw(bytes)) => {
            let _ = stream.write_all(&bytes);
            let _ = stream.shutdown(Shutdown::Both);
        }
        Some(Script::After(marker, script)) => {
            while !marker.exists() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            play(stream, Some(*script), native);
        }
        Some(Script::Hang) => hold(&mut stream),
        Some(Script::Held { .. } | Script::Unlocked(..)) => {
            unreachable!("played as what it became above")
        }
        Some(Script::Reset) => {
            let _ = stream.shutdown(Shutdown::Both);
        }
        Some(Script::Stall(body)) => {
            let _ = stream.write_all(stream_head);
            let _ = stream.write_all(body.as_bytes());
            let _ = stream.flush();
            hold(&mut stream);
        }
        Some(Script::Body(body)) => {
            let _ = stream.write_all(stream_head);
            let _ = stream.write_all(body.as_bytes());
            let _ = stream.flush();
            let _ = stream.shutdown(Shutdown::Both);
        }
        Some(Script::Prefill { wait_ms, chat }) => {
            let _ = stream.write_all(stream_head);
            let _ = stream.flush();
            std::thread::sleep(std::time::Duration::from_millis(wait_ms));
            let body = if native {
                ndjson_body(&chat)
            } else {
                sse_body(&chat)
            };
            let _ = stream.write_all(body.as_bytes());
            let _ = stream.flush();
            let _ = stream.shutdown(Shutdown::Write);
        }
        Some(Script::Drip { piece, every_ms }) => {
            let _ = stream.write_all(stream_head);
            let event = if native {
                format!(
                    "{}\n",
                    json!({"model": MODEL, "message": {"role": "assistant", "content": piece}, "done": false})
                )
            } else {
                format!(
                    "data: {}\n\n",
                    json!({"id": "c1", "object": "chat.completion.chunk", "model": MODEL,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
                )
            };
            // Until the client hangs up: a server that never stops talking.
            while stream.write_all(event.as_bytes()).is_ok() && stream.flush().is_ok() {
                std::thread::sleep(std::time::Duration::from_millis(every_ms));
            }
        }
    }
}

/// Whether another process holds the lock on the file at `path` (none when it is missing).
pub fn is_locked(path: &Path) -> bool {
    let Ok(file) = std::fs::File::options().write(true).open(path) else {
        return false;
    };
    // Taken here means free there; dropping the file lets it go again at once.
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// Returns once `path` exists: a marker another party creates.
pub fn wait_for_file(path: &Path) {
    while !path.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Holds the connection open until the client goes away.
fn hold(stream: &mut TcpStream) {
    let mut sink = [0u8; 64];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// The NDJSON lines Ollama's `/api/chat` streams for `chat`.
pub fn ndjson_body(chat: &Chat) -> String {
    let mut body = String::new();
    let chars: Vec<char> = chat.text.chars().collect();
    for piece in chars.chunks(chat.chunk.max(1)) {
        let piece: String = piece.iter().collect();
        body.push_str(
            &json!({"model": MODEL, "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": piece}, "done": false})
            .to_string(),
        );
        body.push('\n');
    }
    if chat.done {
        let mut last = json!({"model": MODEL, "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""}, "done": true,
            "done_reason": chat.finish_reason.clone().unwrap_or_else(|| "stop".to_owned()),
            "total_duration": 1000, "eval_duration": 500});
        if let Some((prompt, completion)) = chat.usage {
            last["prompt_eval_count"] = json!(prompt);
            last["eval_count"] = json!(completion);
        }
        body.push_str(&last.to_string());
        body.push('\n');
    }
    body
}

/// The SSE events a streaming OpenAI-compatible server sends for `chat`.
pub fn sse_body(chat: &Chat) -> String {
    let mut body = String::new();
    let mut event = |value: Value| {
        body.push_str("data: ");
        body.push_str(&value.to_string());
        body.push_str("\n\n");
    };
    event(
        json!({"id": "c1", "object": "chat.completion.chunk", "model": MODEL,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
    );
    let chars: Vec<char> = chat.text.chars().collect();
    for piece in chars.chunks(chat.chunk.max(1)) {
        let piece: String = piece.iter().collect();
        event(
            json!({"id": "c1", "object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}),
        );
    }
    if let Some(reason) = &chat.finish_reason {
        event(
            json!({"id": "c1", "object": "chat.completion.chunk", "model": MODEL,
            "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}),
        );
    }
    if let Some((prompt, completion)) = chat.usage {
        event(
            json!({"id": "c1", "object": "chat.completion.chunk", "model": MODEL, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}),
        );
    }
    if chat.done {
        body.push_str("data: [DONE]\n\n");
    }
    body
}

fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    headers: &[(String, String)],
    body: &[u8],
) {
    let mut head = format!(
        "HTTP/1.1 {code} Status\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// A loopback address whose listener accepts no more connections: a connection attempt
/// waits until it times out. The address stays that way while this value lives.
pub struct Unresponsive {
    pub url: String,
    _listener: socket2::Socket,
    _held: Vec<TcpStream>,
}

pub fn unresponsive_url() -> Unresponsive {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let address: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&address.into()).unwrap();
    socket.listen(0).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue; once a connection attempt times out, every later one will.
    let mut held = Vec::new();
    while let Ok(stream) =
        TcpStream::connect_timeout(&address, std::time::Duration::from_millis(100))
    {
        held.push(stream);
        assert!(held.len() < 64, "the backlog does not fill up");
    }
    Unresponsive {
        url: format!("http://{address}"),
        _listener: socket,
        _held: held,
    }
}

/// A loopback URL where nothing listens. The port stays bound, never listening, for the
/// life of the test process: connections are refused, and no other test's server can be
/// given the port meanwhile (as it could be after a plain bind and release).
pub fn closed_port_url() -> String {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
    socket.bind(&any_port.into()).expect("bind a loopback port");
    let address = socket
        .local_addr()
        .ok()
        .and_then(|address| address.as_socket())
        .expect("the bound address");
    std::mem::forget(socket);
    format!("http://{address}")
}

// ---------------------------------------------------------------------------------------
// The test builder
// ---------------------------------------------------------------------------------------

pub struct Test {
    dir: tempfile::TempDir,
    committed: Vec<(String, Vec<u8>)>,
    uncommitted: Vec<(String, Vec<u8>)>,
    spec: Option<String>,
    script: Vec<Script>,
    models: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    endpoint: Option<String>,
    /// Turns the scripted server's URL into the endpoint given to the tool.
    endpoint_from: Option<fn(&str) -> String>,
    git: bool,
    protocol: Protocol,
    /// Discovery instead of an endpoint: the scripted server's port, then these.
    discovery: Option<Vec<u16>>,
    /// The environment variable that gets the scripted server's URL.
    url_variable: String,
    /// Acts on the binary while it runs.
    during: Option<Act>,
    /// The binary's stderr is a pipe whose reading end is closed at once.
    closed_stderr: bool,
    /// The binary's stdin is a pipe [`Running`] hands to the act.
    interactive: bool,
    /// Where the git directory lives relative to the working tree.
    layout: Layout,
    /// Acts on the repository once it is built, before the binary runs.
    before: Option<Setup>,
    /// A program (with its arguments) that starts the binary, such as `setpriv`.
    wrapper: Vec<String>,
    /// Replies by needle (see [`ModelServer::route`]).
    routes: Vec<(String, Vec<Script>)>,
    /// See [`ModelServer::gate`].
    gate: usize,
    /// See [`ModelServer::slots`].
    slots: Option<(usize, std::time::Duration)>,
    /// Files written below the run's `HOME` (a user config, say).
    home_files: Vec<(String, Vec<u8>)>,
    /// See [`ModelServer::context_length`].
    context_length: Option<u64>,
}

/// How the test repository's working tree and git directory are laid out. In every
/// layout but [`Layout::Plain`] the working tree's `.git` is not the git directory
/// itself, and the git directory's parent is not the working tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `repo/.git` is the git directory.
    Plain,
    /// `git init --separate-git-dir`: `repo/.git` is a file naming `gitdir/`.
    SeparateGitDir,
    /// `repo/.git` is a symlink to `gitdir/`.
    SymlinkedGitDir,
    /// `repo` is a submodule of `super/`: its git directory is `super/.git/modules/repo`.
    Submodule,
    /// `repo` is a linked worktree (`git worktree add`) of `main/`.
    LinkedWorktree,
}

/// What [`Test::before`] does to the repository before the binary runs.
type Setup = Box<dyn FnOnce(&Path)>;

/// What [`Test::during`] does to the running binary.
type Act = Box<dyn FnOnce(&Running)>;

/// The binary while it runs, for [`Test::during`].
pub struct Running<'a> {
    pub pid: u32,
    /// With [`Test::interactive`]: the binary's stdin and stdout, for the act to take.
    pub stdin: std::sync::Mutex<Option<std::process::ChildStdin>>,
    pub stdout: std::sync::Mutex<Option<std::process::ChildStdout>>,
    server: &'a ModelServer,
}

impl Running<'_> {
    /// How many chat requests the scripted server has received so far.
    pub fn chat_requests(&self) -> usize {
        self.server.requests().len()
    }

    /// Sends `signal` to the binary.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap()),
            signal,
        )
        .expect("signal the binary");
    }
}

impl Test {
    pub fn new() -> Self {
        hermetic_umask();
        Self {
            dir: tempfile::tempdir().expect("create a temp dir"),
            committed: vec![("README.md".to_owned(), b"# project\n".to_vec())],
            uncommitted: Vec::new(),
            spec: None,
            script: Vec::new(),
            models: vec![MODEL.to_owned()],
            args: Vec::new(),
            env: Vec::new(),
            endpoint: None,
            endpoint_from: None,
            git: true,
            protocol: Protocol::OpenAi,
            discovery: None,
            url_variable: "LOCAL_TASK_ENDPOINT".to_owned(),
            during: None,
            closed_stderr: false,
            interactive: false,
            layout: Layout::Plain,
            before: None,
            wrapper: Vec::new(),
            routes: Vec::new(),
            gate: 0,
            slots: None,
            home_files: Vec::new(),
            context_length: None,
        }
    }

    /// Calls `act` with the working tree once the repository is built, before the
    /// snapshot and the binary (to make a branch, say).
    pub fn before(mut self, act: impl FnOnce(&Path) + 'static) -> Self {
        self.before = Some(Box::new(act));
        self
    }

    /// Starts the binary through `program args… BIN` (to change its privileges, say).
    pub fn wrapped_in(mut self, program: &[&str]) -> Self {
        self.wrapper = program.iter().map(|word| (*word).to_owned()).collect();
        self
    }

    /// Lays the repository out this way (the files are committed either way).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Calls `act` once the binary has started, then waits for it to end.
    /// Runs the binary with a stderr nobody reads: every write to it fails.
    /// Gives [`Test::during`]'s act the binary's stdin and stdout (a protocol client).
    pub fn interactive(mut self) -> Self {
        self.interactive = true;
        self
    }

    pub fn closed_stderr(mut self) -> Self {
        self.closed_stderr = true;
        self
    }

    pub fn during(mut self, act: impl FnOnce(&Running) + 'static) -> Self {
        self.during = Some(Box::new(act));
        self
    }

    /// Hands the scripted server's URL, as `host:port` without a scheme, to the tool
    /// in `variable` (e.g. `OLLAMA_HOST`) instead of `LOCAL_TASK_ENDPOINT`.
    pub fn server_url_in(mut self, variable: &str) -> Self {
        variable.clone_into(&mut self.url_variable);
        self
    }

    /// The scripted server speaks Ollama's native API (and `/v1`, like Ollama).
    pub fn ollama(mut self) -> Self {
        self.protocol = Protocol::Ollama;
        self
    }

    /// No endpoint is set: the tool discovers servers on the scripted server's port
    /// followed by `more_ports` (through the hidden port-list override).
    pub fn discovery(mut self, more_ports: &[u16]) -> Self {
        self.discovery = Some(more_ports.to_vec());
        self
    }

    /// A file committed in the repository before the run.
    pub fn file(mut self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.committed
            .push((path.to_owned(), content.as_ref().to_vec()));
        self
    }

    /// A file written after the commit: an uncommitted change.
    /// A file below the run's `HOME`, e.g. `.config/execute-local-task/config.toml`.
    pub fn home_file(mut self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.home_files
            .push((path.to_owned(), content.as_ref().to_vec()));
        self
    }

    pub fn uncommitted(mut self, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.uncommitted
            .push((path.to_owned(), content.as_ref().to_vec()));
        self
    }

    pub fn spec(mut self, spec: impl serde::Serialize) -> Self {
        self.spec = Some(serde_json::to_string_pretty(&spec).unwrap());
        self
    }

    /// A spec file with exactly this text (for malformed specs).
    pub fn spec_text(mut self, text: &str) -> Self {
        self.spec = Some(text.to_owned());
        self
    }

    pub fn reply(self, text: &str) -> Self {
        self.script(Script::reply(text))
    }

    pub fn script(mut self, script: Script) -> Self {
        self.script.push(script);
        self
    }

    /// Replies to the requests whose body contains `needle` (a task's own words), in order.
    pub fn route(mut self, needle: &str, script: Vec<Script>) -> Self {
        self.routes.push((needle.to_owned(), script));
        self
    }

    /// The server works on at most `slots` replies at once, each taking `latency`.
    pub fn slots(mut self, slots: usize, latency: std::time::Duration) -> Self {
        self.slots = Some((slots, latency));
        self
    }

    /// The server reports this context window for the model.
    pub fn context_length(mut self, tokens: u64) -> Self {
        self.context_length = Some(tokens);
        self
    }

    /// The server holds the first `n` chat requests until `n` are in flight at once.
    pub fn gate(mut self, n: usize) -> Self {
        self.gate = n;
        self
    }

    pub fn models(mut self, models: &[&str]) -> Self {
        self.models = models.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Point the tool at this URL instead of the scripted server.
    pub fn endpoint(mut self, url: &str) -> Self {
        self.endpoint = Some(url.to_owned());
        self
    }

    /// Point the tool at the scripted server through `shape(server_url)`, e.g. with
    /// credentials or a path added.
    pub fn endpoint_from(mut self, shape: fn(&str) -> String) -> Self {
        self.endpoint_from = Some(shape);
        self
    }

    /// Run outside any git repository.
    pub fn no_git(mut self) -> Self {
        self.git = false;
        self
    }

    /// The repository lock's file (in the plain layout), which runs hold while they write.
    pub fn lock_path(&self) -> PathBuf {
        self.repo_path().join(".git/execute-local-task/lock")
    }

    /// The working tree the binary runs in.
    pub fn repo_path(&self) -> PathBuf {
        match self.layout {
            Layout::Submodule => self.dir.path().join("super/repo"),
            _ => self.dir.path().join("repo"),
        }
    }

    /// The `HOME` the binary runs with.
    pub fn home_path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Builds the repository and spec, starts the server, runs the binary with the spec.
    pub fn run(self) -> Run {
        let args = self.args.clone();
        let spec_given = self.spec.is_some();
        self.run_with(|spec| {
            let mut all = Vec::new();
            if spec_given {
                all.push(spec.display().to_string());
            }
            all.extend(args);
            all
        })
    }

    /// The scripted server's routes, gate, slots and window, as the test asked.
    fn configure(&mut self, server: &ModelServer) {
        for (needle, script) in std::mem::take(&mut self.routes) {
            server.route(&needle, script);
        }
        server.gate(self.gate);
        if let Some(tokens) = self.context_length {
            server.context_length(tokens);
        }
        if let Some((slots, latency)) = self.slots {
            server.slots(slots, latency);
        }
    }

    /// Like [`Test::run`], with the arguments given exactly (a subcommand, say).
    pub fn run_with(mut self, args: impl FnOnce(&Path) -> Vec<String>) -> Run {
        let repo = self.repo_path();
        if self.git {
            lay_out(self.layout, self.dir.path(), &self.committed);
        } else {
            std::fs::create_dir_all(&repo).unwrap();
            for (path, bytes) in &self.committed {
                write_file(&repo.join(path), bytes);
            }
        }
        for (path, bytes) in &self.uncommitted {
            write_file(&repo.join(path), bytes);
        }
        if let Some(before) = self.before.take() {
            before(&repo);
        }
        let spec_path = self.dir.path().join("spec.json");
        if let Some(spec) = &self.spec {
            std::fs::write(&spec_path, spec).unwrap();
        }
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        for (path, bytes) in &self.home_files {
            write_file(&home.join(path), bytes);
        }

        let server = ModelServer::start_speaking(
            self.protocol,
            std::mem::take(&mut self.script),
            std::mem::take(&mut self.models),
        );
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| self.endpoint_from.map(|shape| shape(&server.url)));
        self.configure(&server);
        let before = snapshot(&repo);
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        command
            .args(args(&spec_path))
            .current_dir(&repo)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("LANG", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
            .env("LOCAL_TASK_MODEL", MODEL)
            .stdin(Stdio::null());
        if self.url_variable == "LOCAL_TASK_ENDPOINT" {
            command.env(
                "LOCAL_TASK_ENDPOINT",
                endpoint.as_deref().unwrap_or(&server.url),
            );
        } else {
            let url = endpoint.as_deref().unwrap_or(&server.url);
            command.env(&self.url_variable, url.trim_start_matches("http://"));
        }
        if let Some(more) = &self.discovery {
            let ports: Vec<String> = std::iter::once(server.port())
                .chain(more.iter().copied())
                .map(|port| port.to_string())
                .collect();
            command
                .env_remove("LOCAL_TASK_ENDPOINT")
                .env("LOCAL_TASK_DISCOVERY_PORTS", ports.join(","));
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let started = std::time::Instant::now();
        let flags = (self.closed_stderr, self.interactive);
        let output = launch(&mut command, self.during, flags, &server);
        let elapsed = started.elapsed();
        Run {
            elapsed,
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            requests: server.requests(),
            max_in_flight: server.max_in_flight(),
            before,
            repo,
            spec_path,
            home,
            _dir: self.dir,
        }
    }
}

/// Runs the binary: plainly, with a stderr nobody reads, or with an act on it meanwhile.
fn launch(
    command: &mut Command,
    during: Option<Act>,
    (closed_stderr, interactive): (bool, bool),
    server: &ModelServer,
) -> std::process::Output {
    match during {
        None if closed_stderr => {
            let mut child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the binary");
            drop(child.stderr.take());
            finish(child)
        }
        None => output(command),
        Some(act) => {
            if interactive {
                command.stdin(Stdio::piped());
            }
            let child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the binary");
            let mut child = child;
            let running = Running {
                pid: child.id(),
                stdin: std::sync::Mutex::new(child.stdin.take()),
                // Otherwise stdout stays the child's, for the result.
                stdout: std::sync::Mutex::new(if interactive {
                    child.stdout.take()
                } else {
                    None
                }),
                server,
            };
            // A failed check must not leave the binary running behind the test.
            if let Err(panic) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| act(&running)))
            {
                let _ = child.kill();
                let _ = child.wait();
                std::panic::resume_unwind(panic);
            }
            finish(child)
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// Runs `git` in `dir` without user or system configuration, and checks it succeeded.
pub fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds the repository of `layout` under `dir` with `files` committed in its working
/// tree (see [`Test::repo_path`]).
fn lay_out(layout: Layout, dir: &Path, files: &[(String, Vec<u8>)]) {
    let fill = |tree: &Path| {
        std::fs::create_dir_all(tree).unwrap();
        for (path, bytes) in files {
            write_file(&tree.join(path), bytes);
        }
    };
    match layout {
        Layout::Plain => {
            fill(&dir.join("repo"));
            init_and_commit(&dir.join("repo"));
        }
        Layout::SeparateGitDir => {
            fill(&dir.join("repo"));
            git(dir, &["init", "-q", "--separate-git-dir=gitdir", "repo"]);
            git(&dir.join("repo"), &["add", "-A"]);
            git(&dir.join("repo"), &["commit", "-q", "-m", "initial"]);
        }
        Layout::SymlinkedGitDir => {
            fill(&dir.join("repo"));
            init_and_commit(&dir.join("repo"));
            std::fs::rename(dir.join("repo/.git"), dir.join("gitdir")).unwrap();
            std::os::unix::fs::symlink(dir.join("gitdir"), dir.join("repo/.git")).unwrap();
        }
        Layout::Submodule => {
            fill(&dir.join("origin"));
            init_and_commit(&dir.join("origin"));
            write_file(&dir.join("super/README.md"), b"# super\n");
            init_and_commit(&dir.join("super"));
            git(
                &dir.join("super"),
                &["submodule", "add", "-q", "../origin", "repo"],
            );
            git(&dir.join("super"), &["commit", "-q", "-m", "submodule"]);
        }
        Layout::LinkedWorktree => {
            fill(&dir.join("main"));
            init_and_commit(&dir.join("main"));
            git(
                &dir.join("main"),
                &["worktree", "add", "-q", "-b", "linked", "../repo"],
            );
        }
    }
}

/// `git init` and one commit of everything, with a fixed identity and no user config.
pub fn init_and_commit(repo: &Path) {
    let git = git2::Repository::init(repo).unwrap();
    let mut index = git.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = git.find_tree(index.write_tree().unwrap()).unwrap();
    let signature = git2::Signature::new(
        "Test",
        "test@example.invalid",
        &git2::Time::new(1_700_000_000, 0),
    )
    .unwrap();
    git.commit(Some("HEAD"), &signature, &signature, "initial", &tree, &[])
        .unwrap();
}

/// Every file of the working tree (not `.git`) with its bytes.
pub fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    if !root.exists() {
        return files;
    }
    for entry in walkdir(root) {
        let relative = entry
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if let Ok(bytes) = std::fs::read(&entry) {
            files.insert(relative, bytes);
        }
    }
    files
}

fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                out.push(path.join(""));
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Checks a printed result against `schema result`'s schema (the same types), so every
/// result the suite reads is also a check of the published schema.
fn assert_matches_result_schema(stdout: &str) {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema = serde_json::json!(schemars::schema_for!(TaskResult));
        jsonschema::validator_for(&schema).expect("the result schema compiles")
    });
    let Ok(value) = serde_json::from_str::<Value>(stdout) else {
        return; // result() reports what is not JSON.
    };
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the result does not match `schema result`: {errors:?}\n{stdout}"
    );
}

/// Checks one line a batch printed (a task's result or the summary) against `schema
/// batch`'s schema, so every batch document the suite reads checks the published schema.
pub fn assert_matches_batch_schema(line: &str) {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(&execute_local_task::batch::line_schema())
            .expect("the batch schema compiles")
    });
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|error| panic!("a batch line is not JSON ({error}): {line}"));
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the batch line does not match `schema batch`: {errors:?}\n{line}"
    );
}

pub struct Run {
    /// Wall time of the binary alone.
    pub elapsed: std::time::Duration,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub requests: Vec<Request>,
    /// The most chat requests the server was answering at once.
    pub max_in_flight: usize,
    before: BTreeMap<String, Vec<u8>>,
    pub repo: PathBuf,
    pub spec_path: PathBuf,
    home: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    /// The result JSON on stdout, deserialised into the contract's type (unknown fields fail).
    pub fn result(&self) -> TaskResult {
        assert_matches_result_schema(&self.stdout);
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not a result ({error}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}):\n{}", self.stdout))
    }

    /// The task message of a `--dry-run`'s (OpenAI-compatible) request: the prompt the
    /// model would be given.
    pub fn dry_run_prompt(&self) -> String {
        let printed = self.json();
        let request = if printed["request"].is_object() {
            &printed["request"]
        } else {
            &printed["requests"]["openai"]["request"]
        };
        request["messages"][1]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no task message in:\n{}", self.stdout))
            .to_owned()
    }

    pub fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.repo.join(path)).ok()
    }

    /// Asserts the exit code, showing everything when it differs.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts an error result with this exit code and kind, and returns the error.
    #[track_caller]
    pub fn assert_error(&self, code: i32, kind: &str) -> execute_local_task::result::ErrorInfo {
        self.assert_code(code);
        let result = self.result();
        assert_eq!(result.status, execute_local_task::result::Status::Error);
        let error = result.error.expect("an error object");
        assert_eq!(error.kind, kind, "{}", error.message);
        error
    }

    /// The working tree holds exactly what it held before the run.
    #[track_caller]
    pub fn assert_unchanged(&self) {
        let after = snapshot(&self.repo);
        let changed: Vec<&String> = after
            .keys()
            .chain(self.before.keys())
            .filter(|path| after.get(*path) != self.before.get(*path))
            .collect();
        assert!(
            changed.is_empty(),
            "the tree changed: {changed:?}\nstderr:\n{}",
            self.stderr
        );
    }

    /// The home directory the binary ran with.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The run ledger at its default place under the run's home directory.
    pub fn ledger_path(&self) -> PathBuf {
        self.home.join(".local/share/execute-local-task/ledger.db")
    }

    /// The runs the ledger holds, newest first (none when it does not exist).
    pub fn ledger_runs(&self) -> Vec<execute_local_task::ledger::LoggedRun> {
        let path = self.ledger_path();
        if !path.exists() {
            return Vec::new();
        }
        execute_local_task::ledger::Ledger::open(&path)
            .expect("open the ledger")
            .recent(1000)
            .expect("read the ledger")
    }

    /// Starts the binary again in the same repository with piped stdin and stdout (a
    /// second MCP server, say), in the environment [`Run::again_with`] gives it.
    pub fn spawn_again(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        Command::new(BIN)
            .args(args)
            .current_dir(&self.repo)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("LANG", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary again")
    }

    /// Runs the binary again in the same repository (e.g. `rollback`).
    pub fn again(&self, args: &[&str]) -> (i32, String, String) {
        self.again_with(args, &[])
    }

    /// Like [`Run::again`], with these environment variables (a server's endpoint).
    pub fn again_with(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let output = output(
            command_in(&self.repo, &self.home)
                .args(args)
                .envs(env.iter().copied()),
        );
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// The binary in `repo` with `home`, in the hermetic environment of [`Run::again`]: for a
/// second process beside a running one.
pub fn command_in(repo: &Path, home: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(repo)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LANG", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null());
    command
}

/// A spec with the given output file and any extra fields.
pub fn spec(output: &str, extra: &Value) -> Value {
    let mut spec = json!({
        "task_id": "T-001",
        "description": "Do the task.",
        "output_file": output,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            spec.insert(key.clone(), value.clone());
        }
    }
    spec
}
