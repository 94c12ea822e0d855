//! Talking to a model: the request and reply every provider shares, the fault classes, and
//! the client that dispatches to a provider, retries transient faults and records exchanges.

mod body;
mod http;
pub mod ollama;
pub mod openai;
pub mod recorded;
pub mod retry;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::result::Usage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: f64,
    pub max_tokens: Option<u32>,
    /// A JSON Schema the reply must follow, sent in the server's structured-output field
    /// (Ollama's `format`, the `OpenAI` API's `response_format`); absent for a code reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<ReplySchema>,
}

/// A named JSON Schema for a structured reply: the server constrains its sampling to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplySchema {
    /// The `OpenAI` API's `json_schema.name`: letters, digits, `_` and `-`.
    pub name: String,
    pub schema: serde_json::Value,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A natural end.
    Stop,
    /// Cut off by the server's token or context limit: the reply is incomplete.
    Length,
    Other(String),
}

impl Finish {
    pub fn from_reason(reason: &str) -> Self {
        match reason {
            // `eos_token`: older text-generation-inference releases (and IBM watsonx) at a natural end.
            "stop" | "eos" | "eos_token" | "end_turn" | "stop_sequence" => Self::Stop,
            "length" | "max_tokens" => Self::Length,
            other => Self::Other(other.to_owned()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatReply {
    pub content: String,
    pub finish: Finish,
    /// Token counts when the server reported them.
    pub usage: Option<TokenUsage>,
    /// Things worth knowing about the call that did not stop it (e.g. a retried fault).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl ChatReply {
    /// The reply's usage, estimated from text length (four bytes a token) and flagged as
    /// such when the server sent no counts.
    pub fn usage_for(&self, request: &ChatRequest) -> Usage {
        match self.usage {
            Some(usage) => Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                estimated: false,
            },
            None => Usage {
                prompt_tokens: estimate_tokens(
                    request.messages.iter().map(|m| m.content.len()).sum(),
                ),
                completion_tokens: estimate_tokens(self.content.len()),
                estimated: true,
            },
        }
    }
}

pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// The provider protocols the tool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI-compatible `/v1/chat/completions` with SSE streaming: LM Studio, llama.cpp
    /// server, vLLM, Ollama's `/v1`.
    OpenAi,
    /// Ollama's native `/api/chat` with NDJSON streaming (sends `num_ctx`).
    Ollama,
    /// Replies recorded earlier, served without a server (the demo, `--replay`).
    Recorded,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Ollama => "ollama",
            Self::Recorded => "recorded",
        }
    }
}

/// Time and size limits of one model call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    /// From sending the request until the model has generated its first piece of text: the
    /// response headers may come at once and the first token minutes later (a cold model
    /// loading, a long prompt being read).
    pub first_byte: Duration,
    /// Between two chunks of a stream, once the model is generating.
    pub idle: Duration,
    /// One model call in all, its retries and their waits included.
    pub total: Duration,
    /// A reply that never ends is cut here.
    pub max_reply_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect: defaults::CONNECT_TIMEOUT,
            first_byte: defaults::FIRST_BYTE_TIMEOUT,
            idle: defaults::IDLE_TIMEOUT,
            total: defaults::TOTAL_TIMEOUT,
            max_reply_bytes: defaults::MAX_REPLY_BYTES,
        }
    }
}

/// A model server that could not be used: the class, the server's own words, and a hint.
#[derive(Debug, Clone)]
pub struct ModelError {
    pub kind: ModelErrorKind,
    pub message: String,
    pub hint: Option<String>,
    /// From a `Retry-After` header.
    pub retry_after: Option<Duration>,
}

impl ModelError {
    pub fn new(kind: ModelErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            retry_after: None,
        }
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ModelError {}

/// The classes of model-server faults, as `error.kind` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelErrorKind {
    /// No endpoint given and none found on the usual local ports.
    NoServer,
    /// No model named and the server offers none or several.
    NoModel,
    ConnectionRefused,
    ConnectionReset,
    Dns,
    ConnectTimeout,
    FirstByteTimeout,
    IdleTimeout,
    TotalTimeout,
    ModelNotFound,
    /// The server runs but has no model loaded (LM Studio before `lms load`).
    ModelNotLoaded,
    ContextTooLong,
    RateLimited,
    Unavailable,
    HttpClientError,
    HttpServerError,
    StreamCut,
    MalformedStream,
    ReplyTooLarge,
    /// The recorded replies ran out or did not match the request.
    Replay,
    /// The exchanges of a run could not be saved to the `--record` file.
    Record,
}

impl ModelErrorKind {
    /// What to do about a fault of this class, when the error itself says nothing better.
    pub fn default_hint(self) -> Option<&'static str> {
        Some(match self {
            Self::NoServer | Self::ConnectionRefused | Self::ConnectTimeout | Self::Dns => {
                "is the model server running? Start Ollama or LM Studio's server, or pass --endpoint URL; `execute-local-task models` shows what is reachable"
            }
            Self::NoModel | Self::ModelNotFound => {
                "choose a model with --model NAME; `execute-local-task models` lists them"
            }
            Self::ModelNotLoaded => {
                "load a model in the server (LM Studio: `lms load NAME`), then run again"
            }
            Self::RateLimited | Self::Unavailable => {
                "the server is busy or still loading; try again, or raise --retries / --retry-max-wait"
            }
            Self::FirstByteTimeout => {
                "a large model may still be loading; try again or raise --first-byte-timeout"
            }
            Self::Replay => {
                "the run no longer matches its cassette; record it again with --record FILE"
            }
            Self::ContextTooLong => {
                "the prompt does not fit the model's context: name fewer context files or load the model with a larger context"
            }
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoServer => "no_server",
            Self::NoModel => "no_model",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionReset => "connection_reset",
            Self::Dns => "dns",
            Self::ConnectTimeout => "connect_timeout",
            Self::FirstByteTimeout => "first_byte_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::TotalTimeout => "total_timeout",
            Self::ModelNotFound => "model_not_found",
            Self::ModelNotLoaded => "model_not_loaded",
            Self::ContextTooLong => "context_too_long",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::HttpClientError => "http_client_error",
            Self::HttpServerError => "http_server_error",
            Self::StreamCut => "stream_cut",
            Self::MalformedStream => "malformed_stream",
            Self::ReplyTooLarge => "reply_too_large",
            Self::Replay => "replay",
            Self::Record => "record",
        }
    }

    /// Faults worth another try: the server may answer the same request a moment later.
    /// Everything else (a refused connection, a missing model, a prompt too long, a
    /// timeout that already waited its full limit) would fail the same way again.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::ConnectionReset
                | Self::RateLimited
                | Self::Unavailable
                | Self::HttpServerError
                | Self::StreamCut
        )
    }
}

/// One protocol to one server (or the recorded replies standing in for it).
pub enum Backend {
    OpenAi(openai::OpenAi),
    Ollama(ollama::Ollama),
    Recorded(recorded::Replayer),
}

/// A configured connection to one model: the backend, how transient faults are retried,
/// and where exchanges are recorded.
pub struct Client {
    backend: Backend,
    retry: retry::RetryPolicy,
    recorder: Option<recorded::Recorder>,
}

impl Client {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            retry: retry::RetryPolicy::default(),
            recorder: None,
        }
    }

    #[must_use]
    pub fn with_retry(mut self, retry: retry::RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    #[must_use]
    pub fn with_recorder(mut self, recorder: recorded::Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn provider(&self) -> Provider {
        match &self.backend {
            Backend::OpenAi(_) => Provider::OpenAi,
            Backend::Ollama(_) => Provider::Ollama,
            Backend::Recorded(_) => Provider::Recorded,
        }
    }

    /// The endpoint as shown and stored (result, progress, cassettes): credentials masked.
    pub fn endpoint(&self) -> String {
        match &self.backend {
            Backend::OpenAi(client) => client.endpoint().to_owned(),
            Backend::Ollama(client) => client.endpoint().to_owned(),
            Backend::Recorded(replayer) => replayer.source().to_owned(),
        }
    }

    /// The exact JSON body this client would send, for `--dry-run`.
    pub fn request_body(&self, request: &ChatRequest) -> serde_json::Value {
        request_body(self.provider(), request)
    }

    /// One model call: retried while its faults are transient and the total limit allows,
    /// recorded when asked.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        if let Backend::Recorded(replayer) = &self.backend {
            // A recorded fault is the outcome after the recorded run's own retries:
            // retrying it here would consume the next exchange.
            return replayer.next_reply(request);
        }
        let total = match &self.backend {
            Backend::OpenAi(client) => client.limits().total,
            Backend::Ollama(client) => client.limits().total,
            Backend::Recorded(_) => defaults::TOTAL_TIMEOUT,
        };
        let deadline = retry::Deadline::after(total, self.endpoint());
        let outcome = self.retry.run(&deadline, || self.chat_once(request)).await;
        if let Some(recorder) = &self.recorder {
            recorder.record(request, &outcome)?;
        }
        outcome
    }

    async fn chat_once(&self, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        match &self.backend {
            Backend::OpenAi(client) => client.chat(request).await,
            Backend::Ollama(client) => client.chat(request).await,
            Backend::Recorded(replayer) => replayer.next_reply(request),
        }
    }
}

/// The JSON body `provider` would be sent for `request`.
pub fn request_body(provider: Provider, request: &ChatRequest) -> serde_json::Value {
    match provider {
        Provider::Ollama => ollama::request_body(request),
        Provider::OpenAi | Provider::Recorded => openai::request_body(request),
    }
}
