//! HTTP plumbing both providers share: the client, the pace a reply must keep (the
//! first-byte limit until the model generates, then the idle limit), and turning a
//! transport fault or an error status into its fault class. The total limit is the
//! client's ([`super::retry::Deadline`]): it spans the retries.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use super::{Limits, ModelError, ModelErrorKind};

/// How much of an error response is kept: enough for the server's own words.
const ERROR_BODY_BYTES: usize = 64 * 1024;

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

/// When the next piece of a reply must arrive. Until the model has produced something,
/// the first-byte limit runs from the moment the request is sent: a server may send its
/// headers at once and then read a long prompt for minutes before the first token, and
/// that wait is the model loading and reading, not a stalled stream. After the first
/// generated piece, each further piece must follow within the idle limit.
pub(crate) struct Pace {
    first_deadline: tokio::time::Instant,
    first_byte: Duration,
    idle: Duration,
    flowing: bool,
}

impl Pace {
    /// Starts the first-byte clock now: call it just before sending the request.
    pub(crate) fn start(limits: &Limits) -> Self {
        Self {
            first_deadline: tokio::time::Instant::now() + limits.first_byte,
            first_byte: limits.first_byte,
            idle: limits.idle,
            flowing: false,
        }
    }

    /// The model has produced something: from now on the idle limit applies.
    pub(crate) fn flowing(&mut self) {
        self.flowing = true;
    }

    /// `next` within the limit that applies now; `received` (bytes of reply so far) is
    /// for the message.
    pub(crate) async fn next<T>(
        &self,
        url: &str,
        received: usize,
        next: impl std::future::Future<Output = T>,
    ) -> Result<T, ModelError> {
        if self.flowing {
            tokio::time::timeout(self.idle, next).await.map_err(|_| {
                ModelError::new(
                    ModelErrorKind::IdleTimeout,
                    format!(
                        "{url}: the stream stalled for {} after {received} bytes",
                        seconds(self.idle)
                    ),
                )
            })
        } else {
            tokio::time::timeout_at(self.first_deadline, next)
                .await
                .map_err(|_| {
                    ModelError::new(
                        ModelErrorKind::FirstByteTimeout,
                        format!(
                            "{url}: the model did not start answering within {}",
                            seconds(self.first_byte)
                        ),
                    )
                })
        }
    }
}

/// Sends a request and waits for the response headers within the first-byte limit;
/// transport faults and error statuses become their fault classes.
pub(crate) async fn send(
    limits: &Limits,
    pace: &Pace,
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ModelError> {
    let response = pace
        .next(url, 0, request.send())
        .await?
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
        .and_then(|v| super::retry::retry_after(v, std::time::SystemTime::now()));
    let body = read_error_text(response, limits).await;
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

pub(crate) fn error_text(error: &Value) -> String {
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
    // reqwest's words may name the URL, with a key in its query.
    let detail = match error.url() {
        Some(target) => detail.replace(target.as_str(), &crate::endpoint::redact(target.as_str())),
        None => detail,
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

pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// As much of an error response's text as arrives in time, cut to a readable size: the
/// status already says what went wrong, so a stalled or endless error body must not turn
/// it into a different fault.
async fn read_error_text(response: reqwest::Response, limits: &Limits) -> String {
    let cap = ERROR_BODY_BYTES.min(limits.max_reply_bytes);
    let mut chunks = response.bytes_stream();
    let mut body = Vec::new();
    while body.len() < cap {
        match tokio::time::timeout(limits.idle, chunks.next()).await {
            Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(cap);
    String::from_utf8_lossy(&body).into_owned()
}
