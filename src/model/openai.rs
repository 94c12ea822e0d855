//! The OpenAI-compatible chat-completions client (LM Studio, llama.cpp server, vLLM,
//! Ollama's `/v1`), streaming over server-sent events.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{ChatReply, ChatRequest, Finish, Limits, ModelError, ModelErrorKind, TokenUsage, body};

pub struct OpenAi {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    limits: Limits,
}

impl OpenAi {
    /// `base_url` ends in the API root, e.g. `http://127.0.0.1:1234/v1`.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        limits: Limits,
    ) -> Result<Self, ModelError> {
        let http = http_client(limits.connect)?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            limits,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Lists the model ids the server offers (`GET /models`).
    pub async fn list_models(&self) -> Result<Vec<String>, ModelError> {
        let url = format!("{}/models", self.base_url);
        let mut request = self.http.get(&url).timeout(self.limits.first_byte);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&url, &e))?;
        let response = check_status(&url, response, &self.limits).await?;
        let body = body::read_json(&url, response, &self.limits, "the model list").await?;
        Ok(body["data"]
            .as_array()
            .map(|models| {
                models
                    .iter()
                    .filter_map(|model| model["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        let url = format!("{}/chat/completions", self.base_url);
        within_total(&self.limits, &url, self.stream_chat(&url, request)).await
    }

    async fn stream_chat(&self, url: &str, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        let mut http_request = self.http.post(url).json(&request_body(request));
        if let Some(key) = &self.api_key {
            http_request = http_request.bearer_auth(key);
        }
        let response = send(&self.limits, url, http_request).await?;

        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.contains("event-stream"));
        if !is_stream {
            // Some servers ignore `stream: true` and answer with one JSON document.
            return self.whole_reply(url, response).await;
        }

        // Bytes since the last whole event: a line that never ends is a reply that never
        // ends, and must hit the size cap even though no event completes.
        let unparsed = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&unparsed);
        let cap = self.limits.max_reply_bytes;
        let mut events = response
            .bytes_stream()
            .map(move |chunk| {
                let chunk = chunk.map_err(Source::Http)?;
                if counter.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len() > cap {
                    return Err(Source::TooLarge);
                }
                Ok(chunk)
            })
            .eventsource();
        let mut reply = StreamedReply::default();
        let mut any_event = false;
        loop {
            let next = tokio::time::timeout(self.limits.idle, events.next())
                .await
                .map_err(|_| {
                    ModelError::new(
                        ModelErrorKind::IdleTimeout,
                        format!(
                            "{url}: the stream stalled for {} after {} bytes",
                            seconds(self.limits.idle),
                            reply.content.len()
                        ),
                    )
                })?;
            let Some(event) = next else { break };
            any_event = true;
            let event =
                event.map_err(|error| stream_error(url, reply.content.len(), cap, error))?;
            unparsed.store(0, Ordering::Relaxed);
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                reply.done = true;
                break;
            }
            if event.event == "error" {
                return Err(StreamedReply::error_event(url, data));
            }
            reply.apply_chunk(url, data)?;
            if reply.content.len() > self.limits.max_reply_bytes {
                return Err(ModelError::new(
                    ModelErrorKind::ReplyTooLarge,
                    format!(
                        "{url}: the reply passed {} bytes without ending",
                        self.limits.max_reply_bytes
                    ),
                ));
            }
        }
        if !any_event {
            return self.resend_without_streaming(url, request).await;
        }
        reply.finish(url)
    }

    /// Some servers (llama-cpp-python's, for one) refuse a streamed request with an
    /// empty `200` stream instead of an error, e.g. when the prompt exceeds the context
    /// window. The same request without streaming gets the server's own error (or its
    /// reply), so the user learns what went wrong instead of "the stream ended".
    async fn resend_without_streaming(
        &self,
        url: &str,
        request: &ChatRequest,
    ) -> Result<ChatReply, ModelError> {
        let mut body = request_body(request);
        body["stream"] = json!(false);
        // Servers such as vLLM reject `stream_options` on a request that does not stream.
        if let Some(fields) = body.as_object_mut() {
            fields.remove("stream_options");
        }
        // A fresh connection: the server may close the one that carried the empty stream
        // (llama-cpp-python does, as it fails the request), and reusing it would only
        // report "connection closed".
        let mut http_request = http_client(self.limits.connect)?.post(url).json(&body);
        if let Some(key) = &self.api_key {
            http_request = http_request.bearer_auth(key);
        }
        let response = send(&self.limits, url, http_request).await?;
        self.whole_reply(url, response).await
    }

    async fn whole_reply(
        &self,
        url: &str,
        response: reqwest::Response,
    ) -> Result<ChatReply, ModelError> {
        let bytes = body::read(url, response, &self.limits).await?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|error| {
            ModelError::new(
                ModelErrorKind::MalformedStream,
                format!("{url}: the reply is neither a stream nor JSON: {error}"),
            )
        })?;
        let choice = &body["choices"][0];
        let content = choice["message"]["content"].as_str().ok_or_else(|| {
            ModelError::new(
                ModelErrorKind::MalformedStream,
                format!("{url}: the reply has no choices[0].message.content"),
            )
        })?;
        Ok(ChatReply {
            content: content.to_owned(),
            finish: choice["finish_reason"]
                .as_str()
                .map_or(Finish::Stop, Finish::from_reason),
            usage: parse_usage(&body["usage"]),
            notes: Vec::new(),
        })
    }
}

/// The JSON body of a streaming chat-completions request.
pub fn request_body(request: &ChatRequest) -> Value {
    let mut body = json!({
        "model": request.model,
        "messages": request.messages,
        "temperature": request.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(max_tokens) = request.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// Why the bytes under the event stream stopped.
#[derive(Debug)]
enum Source {
    Http(reqwest::Error),
    TooLarge,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(error) => write!(f, "{error}"),
            Self::TooLarge => f.write_str("too large"),
        }
    }
}

fn stream_error(
    url: &str,
    received: usize,
    cap: usize,
    error: EventStreamError<Source>,
) -> ModelError {
    match error {
        EventStreamError::Transport(Source::TooLarge) => ModelError::new(
            ModelErrorKind::ReplyTooLarge,
            format!("{url}: the reply passed {cap} bytes without ending"),
        ),
        EventStreamError::Transport(Source::Http(error)) => ModelError::new(
            ModelErrorKind::StreamCut,
            format!(
                "{url}: the stream broke off after {received} bytes: {}",
                transport_error(url, &error).message
            ),
        ),
        other => ModelError::new(
            ModelErrorKind::MalformedStream,
            format!("{url}: the stream is not server-sent events after {received} bytes: {other}"),
        ),
    }
}

#[derive(Default)]
struct StreamedReply {
    content: String,
    finish: Option<Finish>,
    usage: Option<TokenUsage>,
    done: bool,
}

impl StreamedReply {
    fn apply_chunk(&mut self, url: &str, data: &str) -> Result<(), ModelError> {
        let chunk: Value = serde_json::from_str(data).map_err(|error| {
            ModelError::new(
                ModelErrorKind::MalformedStream,
                format!(
                    "{url}: a stream event is not JSON ({error}): {}",
                    clip(data, 200)
                ),
            )
        })?;
        if let Some(error) = chunk.get("error") {
            return Err(ModelError::new(
                ModelErrorKind::HttpServerError,
                format!(
                    "{url}: the server reported an error mid-stream: {}",
                    error_text(error)
                ),
            ));
        }
        // Only choice 0 is the reply: a server sending several choices (n > 1) interleaves
        // their deltas, and appending them all mixed other answers into the code.
        let first = chunk["choices"].as_array().and_then(|choices| {
            choices
                .iter()
                .find(|choice| choice["index"].as_u64().unwrap_or(0) == 0)
        });
        if let Some(choice) = first {
            if let Some(text) = choice["delta"]["content"].as_str() {
                self.content.push_str(text);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish = Some(Finish::from_reason(reason));
            }
        }
        if let Some(usage) = parse_usage(&chunk["usage"]) {
            self.usage = Some(usage);
        }
        Ok(())
    }

    /// An SSE `event: error`: its data is the server's message, as JSON (`{"message"}` or
    /// `{"error": …}`) or as plain text. Read as a chunk it was lost, and the run reported
    /// only a stream cut without a finish reason.
    fn error_event(url: &str, data: &str) -> ModelError {
        let message = match serde_json::from_str::<Value>(data) {
            Ok(Value::Object(object)) => {
                let value = Value::Object(object);
                error_text(value.get("error").unwrap_or(&value))
            }
            Ok(other) => error_text(&other),
            Err(_) => clip(data, 500),
        };
        ModelError::new(
            ModelErrorKind::HttpServerError,
            format!("{url}: the server reported an error mid-stream: {message}"),
        )
    }

    fn finish(self, url: &str) -> Result<ChatReply, ModelError> {
        match self.finish {
            Some(finish) => Ok(ChatReply {
                content: self.content,
                finish,
                usage: self.usage,
                notes: Vec::new(),
            }),
            // Every server we know ends a complete reply with a finish reason. `[DONE]`
            // without one is what llama-cpp-python sends when it interrupts a stream for
            // another request: the reply is cut and must never be written.
            None if self.done => Err(ModelError::new(
                ModelErrorKind::StreamCut,
                format!(
                    "{url}: the server ended the stream after {} bytes without a finish reason (the reply was interrupted)",
                    self.content.len()
                ),
            )
            .with_hint("llama-cpp-python's server interrupts a stream when another request arrives; start it with --interrupt_requests False")),
            None => Err(ModelError::new(
                ModelErrorKind::StreamCut,
                format!(
                    "{url}: the stream ended after {} bytes without a finish reason",
                    self.content.len()
                ),
            )),
        }
    }
}

fn parse_usage(usage: &Value) -> Option<TokenUsage> {
    Some(TokenUsage {
        prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
        completion_tokens: usage.get("completion_tokens")?.as_u64()?,
    })
}

pub(crate) fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, ModelError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("execute-local-task/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| {
            ModelError::new(
                ModelErrorKind::HttpClientError,
                format!("cannot build the HTTP client: {error}"),
            )
        })
}

/// Runs a whole model call under the total time limit.
pub(crate) async fn within_total<T>(
    limits: &Limits,
    url: &str,
    call: impl std::future::Future<Output = Result<T, ModelError>>,
) -> Result<T, ModelError> {
    tokio::time::timeout(limits.total, call)
        .await
        .unwrap_or_else(|_| {
            Err(ModelError::new(
                ModelErrorKind::TotalTimeout,
                format!("{url}: no complete reply within {}", seconds(limits.total)),
            ))
        })
}

/// Sends a request and waits for the response headers within the first-byte limit;
/// transport faults and error statuses become their fault classes.
pub(crate) async fn send(
    limits: &Limits,
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ModelError> {
    let response = tokio::time::timeout(limits.first_byte, request.send())
        .await
        .map_err(|_| {
            ModelError::new(
                ModelErrorKind::FirstByteTimeout,
                format!(
                    "{url}: the server did not start answering within {}",
                    seconds(limits.first_byte)
                ),
            )
        })?
        .map_err(|error| transport_error(url, &error))?;
    check_status(url, response, limits).await
}

/// Turns a non-success status into the fault class it stands for, with the server's words.
pub(crate) async fn check_status(
    url: &str,
    response: reqwest::Response,
    limits: &Limits,
) -> Result<reqwest::Response, ModelError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = body::read_error_text(response, limits).await;
    let server_says = serde_json::from_str::<Value>(&body).ok().map_or_else(
        || body.trim().to_owned(),
        |json| {
            json.get("error")
                .or_else(|| json.get("message"))
                .or_else(|| json.get("detail"))
                .map_or_else(|| json.to_string(), error_text)
        },
    );
    // OpenAI-style bodies name the class in `error.code`; the others only in words.
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|json| json["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let lower = server_says.to_lowercase();
    let kind = match status.as_u16() {
        429 => ModelErrorKind::RateLimited,
        _ if code == "context_length_exceeded"
            || (lower.contains("context")
                && (lower.contains("length")
                    || lower.contains("exceed")
                    || lower.contains("too long")
                    || lower.contains("window"))) =>
        {
            ModelErrorKind::ContextTooLong
        }
        _ if code == "model_not_found" => ModelErrorKind::ModelNotFound,
        // LM Studio with nothing loaded: "No models loaded. Please load a model ...".
        400..=499 if lower.contains("no models loaded") || lower.contains("model not loaded") => {
            ModelErrorKind::ModelNotLoaded
        }
        503 => ModelErrorKind::Unavailable,
        400 | 404
            if lower.contains("model")
                && (lower.contains("not found")
                    || lower.contains("does not exist")
                    || lower.contains("try pulling")) =>
        {
            ModelErrorKind::ModelNotFound
        }
        404 if lower.contains("model") => ModelErrorKind::ModelNotFound,
        400..=499 => ModelErrorKind::HttpClientError,
        _ => ModelErrorKind::HttpServerError,
    };
    let mut error = ModelError::new(
        kind,
        format!("{url}: HTTP {status}: {}", clip(&server_says, 1000)),
    );
    error.retry_after = retry_after;
    Err(match kind {
        ModelErrorKind::ModelNotFound => {
            error.with_hint("list the server's models with `execute-local-task models` and pass --model NAME")
        }
        ModelErrorKind::ModelNotLoaded => error.with_hint(
            "load a model in the server first (LM Studio: `lms load NAME` or the Developer tab), or pass --model NAME",
        ),
        ModelErrorKind::ContextTooLong => error.with_hint(
            "the prompt does not fit the model's context window: name fewer context files, or load the model with a larger context",
        ),
        _ => error,
    })
}

fn error_text(error: &Value) -> String {
    match error {
        Value::String(text) => text.clone(),
        Value::Object(object) => object
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned),
        other => other.to_string(),
    }
}

/// Classifies a transport failure (no HTTP status) by walking its source chain.
pub(crate) fn transport_error(url: &str, error: &reqwest::Error) -> ModelError {
    use std::error::Error as _;
    let mut io_kind = None;
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = error.source();
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        chain = current.to_string();
        source = current.source();
    }
    let lower = format!("{error} {chain}").to_lowercase();
    let kind = if error.is_timeout() && error.is_connect() {
        ModelErrorKind::ConnectTimeout
    } else if lower.contains("dns error") || lower.contains("failed to lookup") {
        ModelErrorKind::Dns
    } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused) {
        ModelErrorKind::ConnectionRefused
    } else if matches!(
        io_kind,
        Some(
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        )
    ) || lower.contains("connection closed")
        || lower.contains("reset")
    {
        ModelErrorKind::ConnectionReset
    } else if error.is_timeout() {
        ModelErrorKind::ConnectTimeout
    } else if error.is_connect() {
        ModelErrorKind::ConnectionRefused
    } else {
        ModelErrorKind::StreamCut
    };
    let detail = if chain.is_empty() {
        error.to_string()
    } else {
        chain
    };
    let error = ModelError::new(kind, format!("{url}: {detail}"));
    match kind {
        ModelErrorKind::ConnectionRefused | ModelErrorKind::ConnectTimeout | ModelErrorKind::Dns => error.with_hint(
            "is the model server running? Start Ollama (`ollama serve`) or LM Studio's server, or point --endpoint at yours; `execute-local-task models` shows what it can reach",
        ),
        _ => error,
    }
}

pub(crate) fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs_f64())
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
