//! The OpenAI-compatible chat-completions client (LM Studio, llama.cpp server, vLLM,
//! Ollama's `/v1`), streaming over server-sent events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::http::{Pace, check_status, clip, error_text, http_client, send, transport_error};
use super::{ChatReply, ChatRequest, Finish, Limits, ModelError, ModelErrorKind, TokenUsage, body};

pub struct OpenAi {
    http: reqwest::Client,
    /// Where requests go: may carry basic-auth credentials.
    base_url: String,
    /// The same with its secrets masked: what messages and results show.
    shown: String,
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
            shown: crate::endpoint::redact(base_url.trim_end_matches('/')),
            api_key,
            limits,
        })
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The API root as shown: credentials masked.
    pub fn endpoint(&self) -> &str {
        &self.shown
    }

    /// The URL a request to `path` goes to, and the same as shown in messages.
    fn target(&self, path: &str) -> (String, String) {
        (
            format!("{}{path}", self.base_url),
            format!("{}{path}", self.shown),
        )
    }

    /// Lists the model ids the server offers (`GET /models`).
    pub async fn list_models(&self) -> Result<Vec<String>, ModelError> {
        let (target, url) = self.target("/models");
        let mut request = self.http.get(&target).timeout(self.limits.first_byte);
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
        let (target, url) = self.target("/chat/completions");
        let mut http_request = self.http.post(&target).json(&request_body(request));
        if let Some(key) = &self.api_key {
            http_request = http_request.bearer_auth(key);
        }
        let mut pace = Pace::start(&self.limits);
        let response = send(&self.limits, &pace, &url, http_request).await?;
        self.read_stream(&url, response, &mut pace, request).await
    }

    /// The streamed reply (or the whole one, from a server that does not stream).
    async fn read_stream(
        &self,
        url: &str,
        response: reqwest::Response,
        pace: &mut Pace,
        request: &ChatRequest,
    ) -> Result<ChatReply, ModelError> {
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.contains("event-stream"));
        if !is_stream {
            // Some servers ignore `stream: true` and answer with one JSON document.
            return self.whole_reply(url, response, pace).await;
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
            let next = pace.next(url, reply.content.len(), events.next()).await?;
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
            if reply.apply_chunk(url, data)? {
                pace.flowing();
            }
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
        let (target, _) = self.target("/chat/completions");
        let mut http_request = http_client(self.limits.connect)?.post(&target).json(&body);
        if let Some(key) = &self.api_key {
            http_request = http_request.bearer_auth(key);
        }
        let mut pace = Pace::start(&self.limits);
        let response = send(&self.limits, &pace, url, http_request).await?;
        self.whole_reply(url, response, &mut pace).await
    }

    async fn whole_reply(
        &self,
        url: &str,
        response: reqwest::Response,
        pace: &mut Pace,
    ) -> Result<ChatReply, ModelError> {
        let bytes = body::read_paced(url, response, &self.limits, pace).await?;
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
    // The shape llama.cpp's server, vLLM and LM Studio accept, as OpenAI defines it.
    if let Some(schema) = &request.schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": schema.name, "strict": true, "schema": schema.schema},
        });
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
    /// Applies one event; true when it carried something the model generated (text of any
    /// kind, or a finish reason), as opposed to a bare role or usage announcement.
    fn apply_chunk(&mut self, url: &str, data: &str) -> Result<bool, ModelError> {
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
        let mut generated = false;
        if let Some(choice) = first {
            generated = choice["finish_reason"].is_string()
                || choice["delta"].as_object().is_some_and(|delta| {
                    delta.iter().any(|(name, value)| {
                        name != "role" && value.as_str().is_some_and(|text| !text.is_empty())
                    })
                });
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
        Ok(generated)
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
