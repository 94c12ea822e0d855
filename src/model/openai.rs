//! The OpenAI-compatible chat-completions client (LM Studio, llama.cpp server, vLLM,
//! Ollama's `/v1`), streaming over server-sent events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::http::{
    check_status, clip, error_text, http_client, seconds, send, transport_error, within_total,
};
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
