//! Ollama's native API: `/api/chat` streaming newline-delimited JSON, `/api/tags` for the
//! model list, `/api/version` to recognise the server.
//!
//! Spoken instead of Ollama's `/v1` because only here can the context window be set per
//! request: Ollama otherwise cuts a long prompt to its small default window without an
//! error, and the model answers a task it never fully saw.

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::http::{Pace, check_status, http_client, send, transport_error};
use super::{ChatReply, ChatRequest, Finish, Limits, ModelError, ModelErrorKind, TokenUsage, body};

/// Tokens reserved for the reply when no `--max-tokens` is given: room for a whole file.
pub const DEFAULT_REPLY_TOKENS: u64 = 4096;
/// The window is rounded up to this, so similar prompts reuse one loaded model instance.
const WINDOW_STEP: u64 = 2048;

pub struct Ollama {
    http: reqwest::Client,
    /// Where requests go: may carry basic-auth credentials.
    base_url: String,
    /// The same with its secrets masked: what messages and results show.
    shown: String,
    limits: Limits,
}

impl Ollama {
    /// `base_url` is the server root, e.g. `http://127.0.0.1:11434`.
    pub fn new(base_url: &str, limits: Limits) -> Result<Self, ModelError> {
        Ok(Self {
            http: http_client(limits.connect)?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            shown: crate::endpoint::redact(base_url.trim_end_matches('/')),
            limits,
        })
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The server root as shown: credentials masked.
    pub fn endpoint(&self) -> &str {
        &self.shown
    }

    /// The server's version (`GET /api/version`): only Ollama answers it.
    pub async fn version(&self) -> Result<String, ModelError> {
        let body = self.get_json("/api/version").await?;
        body["version"].as_str().map(str::to_owned).ok_or_else(|| {
            ModelError::new(
                ModelErrorKind::MalformedStream,
                format!("{}/api/version: no `version` in the answer", self.shown),
            )
        })
    }

    /// The models pulled into the server (`GET /api/tags`).
    pub async fn list_models(&self) -> Result<Vec<String>, ModelError> {
        let body = self.get_json("/api/tags").await?;
        Ok(body["models"]
            .as_array()
            .map(|models| {
                models
                    .iter()
                    .filter_map(|m| m["name"].as_str().or_else(|| m["model"].as_str()))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn get_json(&self, path: &str) -> Result<Value, ModelError> {
        let url = format!("{}{path}", self.shown);
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .timeout(self.limits.first_byte)
            .send()
            .await
            .map_err(|e| transport_error(&url, &e))?;
        let response = check_status(&url, response, &self.limits)
            .await
            .map_err(not_ollama)?;
        body::read_json(&url, response, &self.limits, "the answer").await
    }

    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        let url = format!("{}/api/chat", self.shown);
        let target = format!("{}/api/chat", self.base_url);
        let mut pace = Pace::start(&self.limits);
        let response = send(
            &self.limits,
            &pace,
            &url,
            self.http.post(target).json(&request_body(request)),
        )
        .await
        .map_err(not_ollama)?;
        self.read_stream(&url, response, &mut pace).await
    }

    async fn read_stream(
        &self,
        url: &str,
        response: reqwest::Response,
        pace: &mut Pace,
    ) -> Result<ChatReply, ModelError> {
        let mut bytes = response.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        let mut reply = Streamed::default();
        loop {
            let next = pace.next(url, reply.content.len(), bytes.next()).await?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|error| {
                ModelError::new(
                    ModelErrorKind::StreamCut,
                    format!(
                        "{url}: the stream broke off after {} bytes: {}",
                        reply.content.len(),
                        transport_error(url, &error).message
                    ),
                )
            })?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if reply.apply_line(url, &line)? {
                    return Ok(reply.finish());
                }
                // Ollama streams nothing before the first token, so a whole line is the
                // model at work.
                pace.flowing();
            }
            // A line that never ends is a reply that never ends.
            if reply.content.len() + pending.len() > self.limits.max_reply_bytes {
                return Err(ModelError::new(
                    ModelErrorKind::ReplyTooLarge,
                    format!(
                        "{url}: the reply passed {} bytes without ending",
                        self.limits.max_reply_bytes
                    ),
                ));
            }
        }
        // The last line may lack its newline.
        if reply.apply_line(url, &pending)? {
            return Ok(reply.finish());
        }
        Err(ModelError::new(
            ModelErrorKind::StreamCut,
            format!(
                "{url}: the stream ended after {} bytes without `\"done\": true`",
                reply.content.len()
            ),
        ))
    }
}

/// The JSON body of a streaming `/api/chat` request.
///
/// `num_ctx` is always sent, sized to the prompt plus the expected reply: without it Ollama
/// uses its small default window and silently drops the start of a longer prompt. The
/// temperature is explicit because Ollama's default differs from model to model.
pub fn request_body(request: &ChatRequest) -> Value {
    let mut options = json!({
        "temperature": request.temperature,
        "num_ctx": context_window(request),
    });
    if let Some(max_tokens) = request.max_tokens {
        options["num_predict"] = json!(max_tokens);
    }
    let mut body = json!({
        "model": request.model,
        "messages": request.messages,
        "stream": true,
        "options": options,
    });
    // Ollama 0.5 and later constrain the reply to a JSON Schema given as `format`.
    if let Some(schema) = &request.schema {
        body["format"] = schema.schema.clone();
    }
    body
}

/// The context window for `request`: its prompt, estimated generously (three bytes a token,
/// as code tokenizes densely), plus the reply's budget, rounded up.
pub fn context_window(request: &ChatRequest) -> u64 {
    let prompt_bytes: usize = request.messages.iter().map(|m| m.content.len() + 16).sum();
    let prompt = (prompt_bytes as u64).div_ceil(3);
    let reply = request.max_tokens.map_or(DEFAULT_REPLY_TOKENS, u64::from);
    (prompt + reply).div_ceil(WINDOW_STEP) * WINDOW_STEP
}

#[derive(Default)]
struct Streamed {
    content: String,
    finish: Option<Finish>,
    usage: Option<TokenUsage>,
}

impl Streamed {
    /// Applies one NDJSON line; true when it was the last (`"done": true`).
    fn apply_line(&mut self, url: &str, line: &[u8]) -> Result<bool, ModelError> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return Ok(false);
        }
        let chunk: Value = serde_json::from_str(text).map_err(|error| {
            ModelError::new(
                ModelErrorKind::MalformedStream,
                format!(
                    "{url}: a stream line is not JSON ({error}): {}",
                    text.chars().take(200).collect::<String>()
                ),
            )
        })?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(ModelError::new(
                ModelErrorKind::HttpServerError,
                format!("{url}: the server reported an error mid-stream: {message}"),
            ));
        }
        if let Some(piece) = chunk["message"]["content"].as_str() {
            self.content.push_str(piece);
        }
        if chunk["done"].as_bool() != Some(true) {
            return Ok(false);
        }
        self.finish = Some(
            chunk["done_reason"]
                .as_str()
                .map_or(Finish::Stop, Finish::from_reason),
        );
        // Ollama leaves `prompt_eval_count` out when the whole prompt came from its cache;
        // then the counts are estimated rather than half-reported.
        if let (Some(prompt), Some(completion)) = (
            chunk["prompt_eval_count"].as_u64(),
            chunk["eval_count"].as_u64(),
        ) {
            self.usage = Some(TokenUsage {
                prompt_tokens: prompt,
                completion_tokens: completion,
            });
        }
        Ok(true)
    }

    fn finish(self) -> ChatReply {
        ChatReply {
            content: self.content,
            finish: self.finish.unwrap_or(Finish::Stop),
            usage: self.usage,
            notes: Vec::new(),
        }
    }
}

/// A plain 404 from an `/api/*` path means the server is not Ollama: say which flag fits.
fn not_ollama(error: ModelError) -> ModelError {
    if error.kind == ModelErrorKind::HttpClientError && error.message.contains("HTTP 404") {
        error.with_hint(
            "this server does not answer Ollama's API; for an OpenAI-compatible server use --provider openai (or auto)",
        )
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;

    #[test]
    fn the_window_holds_the_prompt_and_the_reply() {
        let request = ChatRequest {
            model: "m".to_owned(),
            messages: vec![Message::user("x".repeat(30_000))],
            temperature: 0.2,
            max_tokens: None,
            schema: None,
        };
        let window = context_window(&request);
        assert!(window >= 10_000 + DEFAULT_REPLY_TOKENS, "{window}");
        assert_eq!(window % WINDOW_STEP, 0);
        let body = request_body(&request);
        assert_eq!(body["options"]["num_ctx"], window);
        assert!((body["options"]["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    }
}
